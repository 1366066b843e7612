"""The inbox: which files are new, changed, unchanged, still arriving or gone.

The inbox is a local folder or an ``s3://bucket/prefix/`` (``inbox.folder``), listed through
:class:`geofg.io.store.Folder`; the rules are the same for both.

Fingerprints of local files: an unchanged ``(size, mtime_ns, inode, ctime_ns)`` since the last scan is the
pre-filter that lets a scan skip hashing (``ctime`` changes on any write or replace, even when a
copy keeps size and mtime, so ``cp -p`` of new content is still caught); anything else is hashed
(sha256) and compared with the content hash the last scan recorded, so a mere ``touch`` or move
is not reprocessed. ``verify: always`` hashes every file every time. An object on S3 is never
downloaded to be hashed: its size and ETag (from the LIST) are the pre-filter, and its ETag is its
content id (``etag:…``, :func:`geofg.io.paths.content_id`), so an object rewritten with other
bytes is "changed" and one re-uploaded with the same bytes (same ETag) is "unchanged".

A file whose mtime (an object's LastModified, against the server's clock) is younger than the quiet period, or that lacks its ``<file>.done`` sentinel
where the config asks for one, is *deferred* (reported, retried next scan), never failed.

The state of the last scan lives in ``<mosaic>/.geofg/scan/inbox.json`` (on S3 too) and is written
(temp, fsync, rename; one PUT on S3) only when it changes, so a scan with nothing new leaves the mosaic untouched.
"""

from __future__ import annotations

import dataclasses

import contextlib
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from geofg.errors import ConfigError, ForbiddenPathError, InputError
from geofg.io.store import Folder, Target, folder_target
from geofg.scan.config import DateConfig, InboxConfig

STATE_SCHEMA = 1
SENTINEL = ".done"
_EPOCH = date(1970, 1, 1)


@dataclass
class Entry:
    """One inbox file as seen by a scan."""

    name: str  # path relative to the inbox folder (prefix)
    location: str  # local path or s3://bucket/key
    stat: list[Any]  # the pre-filter (geofg.io.store.Listed.key)
    status: str  # unchanged | candidate | deferred
    reason: str = ""
    previous: dict[str, Any] | None = None  # its record in the last scan's state
    folder: Folder | None = field(default=None, repr=False)  # the inbox it was listed in


@dataclass
class Survey:
    """What the inbox holds now compared with the last scan's state."""

    entries: list[Entry] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def by_status(self, status: str) -> list[Entry]:
        """Entries with that status, in name order."""
        return [e for e in self.entries if e.status == status]


def survey(cfg: InboxConfig, state: dict[str, Any], now: float | None = None) -> Survey:
    """List every inbox file matching the glob and sort it into unchanged/candidate/deferred.

    The inbox is a local folder or an ``s3://`` prefix (:class:`geofg.io.store.Folder`): on S3 the
    pre-filter is ``[size, "etag:ETAG"]`` and the quiet period counts from LastModified on the
    server's clock.

    Raises:
        ConfigError: the inbox folder does not exist or is not a folder.
    """
    folder = inbox_folder(cfg)
    files, names, server_now = folder.listing(cfg.glob)
    now = server_now if now is None else now
    known: dict[str, dict[str, Any]] = state.get("scenes", {})
    out = Survey()
    seen = set()
    for f in files:
        if f.name.endswith(SENTINEL):
            continue
        seen.add(f.name)
        prev = known.get(f.name)
        e = Entry(f.name, f.location, f.key, "candidate", previous=prev, folder=folder)
        age = now - f.mtime_s
        base = f.name.rsplit("/", 1)[-1]
        if cfg.require_done and f.name + SENTINEL not in names and not folder.has(f.name + SENTINEL):
            e.status, e.reason = "deferred", f"no {base}{SENTINEL} sentinel yet"
        elif age < cfg.quiet_period_s:
            e.status = "deferred"
            e.reason = (f"modified {max(age, 0):.0f} s ago, within the {cfg.quiet_period_s:g} s "
                        "quiet period (may still be copying)")  # fmt: skip
        elif (prev is not None and cfg.verify == "prefilter" and prev.get("stat") == f.key
              and prev.get("status") != "deleted"):  # fmt: skip
            e.status = "unchanged"
        out.entries.append(e)
    out.deleted = sorted(n for n, r in known.items() if n not in seen and r.get("status") != "deleted")
    return out


def key_now(entry: Entry) -> list[Any] | None:
    """The entry's pre-filter now (a stat, or a HEAD on S3); None when it is gone."""
    assert entry.folder is not None
    return entry.folder.key_of(entry.name)


def inbox_folder(cfg: InboxConfig) -> Folder:
    """The inbox as a :class:`~geofg.io.store.Folder`, checked to exist.

    A local inbox must be an existing folder; an ``s3://`` one needs an existing bucket the
    credentials may list (an empty prefix is an empty inbox).

    Raises:
        ConfigError: no such folder or bucket, a malformed URL, refused credentials (exit 3).
        StorageUnreachableError: the S3 endpoint does not answer (exit 5).
    """
    raw = cfg.folder
    try:
        folder = Folder(folder_target(raw))
    except ForbiddenPathError as e:
        raise ConfigError(f"inbox.folder: {e}") from None
    if folder.obj is not None:
        folder.obj = dataclasses.replace(folder.obj, reads_only=True)  # errors ask for read access
        try:
            folder.obj.check_bucket()
        except InputError as e:
            raise ConfigError(f"inbox.folder: {e}") from None
        return folder
    if not folder.is_dir():
        path = Path(raw)
        unset = " (an environment variable in it is not set)" if "$" in raw else ""
        raise ConfigError(f"inbox.folder {path}: expected an existing folder, found "
                          f"{'a file' if path.exists() else 'nothing'}{unset}; create it or fix the path")  # fmt: skip
    return folder


def scene_date(name: str, tags: dict[str, str], cfg: DateConfig) -> int:
    """Return the acquisition date of a scene as days since 1970-01-01.

    Raises:
        InputError: no date found where the config says to look, or it does not parse.
    """
    if cfg.source == "filename":
        m = re.search(cfg.pattern, Path(name).name)
        if not m:
            raise InputError(f"{name}: expected a date in the file name matching inbox.date.pattern "
                             f"{cfg.pattern!r}, found none; rename the file or fix the pattern")  # fmt: skip
        text = m.group("date") if "date" in m.re.groupindex else m.group(0)
        try:
            d = datetime.strptime(text, cfg.format).date()
        except ValueError:
            raise InputError(f"{name}: expected a date like format {cfg.format!r} in {text!r}, found "
                             "something else; fix inbox.date.format or .pattern") from None  # fmt: skip
        return (d - _EPOCH).days
    for tag in cfg.tags:
        if tag in tags:
            text = tags[tag].strip()
            for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d", "%Y%m%d"):
                with contextlib.suppress(ValueError):
                    return (datetime.strptime(text[: len(datetime(2000, 1, 1).strftime(fmt))], fmt).date()
                            - _EPOCH).days  # fmt: skip
            with contextlib.suppress(ValueError):
                return (datetime.fromisoformat(text).date() - _EPOCH).days
            raise InputError(f"{name}: expected a date in tag {tag}, found {text!r}; fix the tag "
                             "or use inbox.date.source: filename")  # fmt: skip
    raise InputError(f"{name}: expected an acquisition date in one of the tags {', '.join(cfg.tags)}, "
                     "found none; set one or use inbox.date.source: filename with a pattern")  # fmt: skip


def day_str(days: int) -> str:
    """ISO date of days since 1970-01-01.

    Examples:
        >>> day_str(0), day_str(17029)
        ('1970-01-01', '2016-08-16')
    """
    return date.fromordinal(_EPOCH.toordinal() + days).isoformat()


STATE_NAME = ".geofg/scan/inbox.json"
"""Where the inbox state lives, below the mosaic (a local folder or an ``s3://`` prefix)."""


def load_state(mosaic: Target) -> dict[str, Any]:
    """The last scan's state, or an empty one (an unreadable state means: treat all as new)."""
    try:
        data = json.loads(Folder(mosaic).read_text(STATE_NAME))
    except FileNotFoundError:
        return {"schema": STATE_SCHEMA, "scenes": {}}
    except (OSError, ValueError):
        return {"schema": STATE_SCHEMA, "scenes": {}}
    if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
        return {"schema": STATE_SCHEMA, "scenes": {}}
    return data


def save_state(mosaic: Target, state: dict[str, Any]) -> bool:
    """Write the state durably if it differs from what is stored; return True if written."""
    folder = Folder(mosaic)
    text = json.dumps(state, indent=1, sort_keys=True) + "\n"
    with contextlib.suppress(OSError):
        if folder.read_text(STATE_NAME) == text:
            return False
    folder.write_text(STATE_NAME, text)
    return True

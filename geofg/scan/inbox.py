"""The inbox: which files are new, changed, unchanged, still arriving or gone.

Fingerprints: an unchanged ``(size, mtime_ns, inode, ctime_ns)`` since the last scan is the
pre-filter that lets a scan skip hashing (``ctime`` changes on any write or replace, even when a
copy keeps size and mtime, so ``cp -p`` of new content is still caught); anything else is hashed
(sha256) and compared with the content hash the last scan recorded, so a mere ``touch`` or move
is not reprocessed. ``verify: always`` hashes every file every time.

A file whose mtime is younger than the quiet period, or that lacks its ``<file>.done`` sentinel
where the config asks for one, is *deferred* (reported, retried next scan), never failed.

The state of the last scan lives in ``<mosaic>/.geofg/scan/inbox.json`` and is written (temp,
fsync, rename) only when it changes, so a scan with nothing new leaves the mosaic untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from geofg.errors import ConfigError, InputError
from geofg.io.atomic import atomic_write
from geofg.scan.config import DateConfig, InboxConfig

STATE_SCHEMA = 1
SENTINEL = ".done"
_EPOCH = date(1970, 1, 1)


def stat_key(st: os.stat_result) -> list[int]:
    """The pre-filter fingerprint: size, mtime, inode, ctime (all ns where it applies)."""
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


@dataclass
class Entry:
    """One inbox file as seen by a scan."""

    name: str  # path relative to the inbox folder
    path: Path
    stat: list[int]
    status: str  # unchanged | candidate | deferred
    reason: str = ""
    previous: dict[str, Any] | None = None  # its record in the last scan's state


@dataclass
class Survey:
    """What the inbox holds now compared with the last scan's state."""

    entries: list[Entry] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def by_status(self, status: str) -> list[Entry]:
        """Entries with that status, in name order."""
        return [e for e in self.entries if e.status == status]


def survey(cfg: InboxConfig, state: dict[str, Any], now: float | None = None) -> Survey:
    """Stat every inbox file matching the glob and sort it into unchanged/candidate/deferred.

    Raises:
        ConfigError: the inbox folder does not exist or is not a folder.
    """
    folder = Path(cfg.folder)
    if not folder.is_dir():
        unset = " (an environment variable in it is not set)" if "$" in str(folder) else ""
        raise ConfigError(f"inbox.folder {folder}: expected an existing folder, found "
                          f"{'a file' if folder.exists() else 'nothing'}{unset}; create it or fix the path")  # fmt: skip
    now = time.time() if now is None else now
    known: dict[str, dict[str, Any]] = state.get("scenes", {})
    out = Survey()
    seen = set()
    for path in sorted(folder.glob(cfg.glob)):
        name = path.relative_to(folder).as_posix()
        if path.name.startswith(".") or path.name.endswith(SENTINEL) or not path.is_file():
            continue
        try:
            st = path.stat()
        except FileNotFoundError:  # removed while we looked
            continue
        seen.add(name)
        prev = known.get(name)
        key = stat_key(st)
        e = Entry(name, path, key, "candidate", previous=prev)
        age = now - st.st_mtime_ns / 1e9
        if cfg.require_done and not Path(str(path) + SENTINEL).is_file():
            e.status, e.reason = "deferred", f"no {path.name}{SENTINEL} sentinel yet"
        elif age < cfg.quiet_period_s:
            e.status = "deferred"
            e.reason = (f"modified {max(age, 0):.0f} s ago, within the {cfg.quiet_period_s:g} s "
                        "quiet period (may still be copying)")  # fmt: skip
        elif (prev is not None and cfg.verify == "prefilter" and prev.get("stat") == key
              and prev.get("status") != "deleted"):  # fmt: skip
            e.status = "unchanged"
        out.entries.append(e)
    out.deleted = sorted(n for n, r in known.items() if n not in seen and r.get("status") != "deleted")
    return out


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


def state_path(mosaic: Path) -> Path:
    """Where the inbox state of a mosaic lives."""
    return mosaic / ".geofg" / "scan" / "inbox.json"


def load_state(mosaic: Path) -> dict[str, Any]:
    """The last scan's state, or an empty one (an unreadable state means: treat all as new)."""
    p = state_path(mosaic)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        return {"schema": STATE_SCHEMA, "scenes": {}}
    except (OSError, ValueError):
        return {"schema": STATE_SCHEMA, "scenes": {}}
    if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
        return {"schema": STATE_SCHEMA, "scenes": {}}
    return data


def save_state(mosaic: Path, state: dict[str, Any]) -> bool:
    """Write the state durably if it differs from what is stored; return True if written."""
    p = state_path(mosaic)
    text = json.dumps(state, indent=1, sort_keys=True) + "\n"
    with contextlib.suppress(OSError):
        if p.read_text() == text:
            return False
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, text)
    return True

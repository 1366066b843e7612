"""The unit ledger: the only source of truth for "this unit is done".

A mosaic's ledger lives in ``<mosaic>/.geofg/units/``, one small JSON file per unit of work,
``<unit_id>.json``. A record is written **after** the unit's chunks, and durably: temp file in the
same directory, ``fsync(file)``, ``os.replace`` onto the final name, ``fsync(directory)``. So a
record on disk always means the unit's data was written before it, and after a crash or power loss
a record is either the old one, the new one, or absent; never half of one.

Why a ledger at all: zarr's local store writes each chunk atomically (temp + rename) but never
fsyncs, skips chunks that hold only the fill value and deletes a chunk overwritten with the fill
value. A chunk file existing therefore says nothing about whether a unit is done, and a unit with
no valid pixel has no chunk at all. See ``docs/durability.md`` for the full reasoning.

Readers are forgiving: a record that cannot be read or parsed (a truncated file after a crash, bit
rot, a stray file) is skipped with a logged warning, so that unit counts as not done and is redone.
Redoing a unit is always safe because unit writes are whole aligned chunks and idempotent.

This module imports nothing from geofg and nothing outside the standard library.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

#: Version of the record format, stored as ``"schema"`` in every record file.
SCHEMA_VERSION = 1

#: Unit ids are file names: a letter or digit first, then letters, digits, ``_``, ``-`` or ``.``.
UNIT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")

Status = Literal["done", "failed"]
_STATUSES = ("done", "failed")
_RECORD_SUFFIX = ".json"
_TEMP_SUFFIX = ".tmp"


def _temp_name(unit_id: str) -> str:
    """A fresh temp file name for a record of ``unit_id``: ``.<unit_id>.<uuid hex>.tmp``."""
    return f".{unit_id}.{uuid.uuid4().hex}{_TEMP_SUFFIX}"


def _temp_unit(name: str) -> str | None:
    """The unit id of a :func:`_temp_name`, None for any other name."""
    if not (name.startswith(".") and name.endswith(_TEMP_SUFFIX)):
        return None
    return name[1 : -len(_TEMP_SUFFIX)].rsplit(".", 1)[0]
_TRASH_PREFIX = ".units-removed-"  # remove_all() renames units/ to this before deleting it
_PARALLEL_MIN = 256  # load() reads at least this many records on threads (cold caches, NFS)
_BATCH = 256
_READERS = 8
_STR_FIELDS = ("unit_id", "input_fingerprint", "model_sha256", "config_hash", "run_id", "finished_at")


@dataclass(frozen=True, slots=True)
class UnitRecord:
    """The outcome of one unit of work, as stored in the ledger.

    Attributes:
        unit_id: the unit's id, e.g. ``"r0003_c0012"``; also the record's file name.
        status: ``"done"`` (data written) or ``"failed"`` (see ``error``).
        input_fingerprint: sha256 hex of the inputs the unit was computed from.
        model_sha256: sha256 hex of the model bundle.
        config_hash: hash of the job config fields that change the output.
        attempt: 1-based count of attempts at this unit across runs.
        empty: True when the unit had no valid pixel, so no chunk file exists for it.
        stats: small JSON-able numbers, e.g. ``{"valid_px": 12, "class_counts": [...]}``.
        run_id: the run that wrote the record.
        finished_at: ISO 8601 UTC time the unit finished.
        error: one-line cause for a failed unit, else None.
        chunks: the chunk keys the unit wrote (paths under the mosaic, e.g. ``class/c/3/12``) and
            their file sizes in bytes, 0 for no file (a fill-only chunk); None in records written
            before geofg recorded them. A re-run and ``geofg info --verify`` compare them with
            the files on disk, and redo a unit whose chunk is missing or damaged.

    Raises:
        ValueError: on construction, when a field has the wrong type or value.
    """

    unit_id: str
    status: Status
    input_fingerprint: str
    model_sha256: str
    config_hash: str
    attempt: int
    empty: bool
    stats: dict[str, Any] = field(hash=False)
    run_id: str
    finished_at: str
    error: str | None = None
    chunks: dict[str, int] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        """Reject records that could not be stored or read back faithfully."""
        for name in _STR_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"UnitRecord.{name} must be a str, got {getattr(self, name)!r}")
        if not UNIT_ID_PATTERN.fullmatch(self.unit_id):
            raise ValueError(
                f"unit id {self.unit_id!r} is not a safe file name: expected letters, digits, '_', "
                "'-' or '.', starting with a letter or digit, at most 200 characters"
            )
        if self.status not in _STATUSES:
            raise ValueError(f"unit {self.unit_id}: status must be 'done' or 'failed', got {self.status!r}")
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int) or self.attempt < 1:
            raise ValueError(f"unit {self.unit_id}: attempt must be an int >= 1, got {self.attempt!r}")
        if not isinstance(self.empty, bool):
            raise ValueError(f"unit {self.unit_id}: empty must be a bool, got {self.empty!r}")
        if not isinstance(self.stats, dict):
            raise ValueError(f"unit {self.unit_id}: stats must be a dict, got {type(self.stats).__name__}")
        if self.error is not None and not isinstance(self.error, str):
            raise ValueError(f"unit {self.unit_id}: error must be a str or None, got {self.error!r}")
        if self.chunks is not None and not (
            isinstance(self.chunks, dict)
            and all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in self.chunks.items())
        ):
            raise ValueError(f"unit {self.unit_id}: chunks must map chunk keys to sizes >= 0")

    def to_json(self) -> str:
        """Return the record as one line of strict JSON (no NaN), keys sorted.

        Raises:
            ValueError: if ``stats`` holds NaN or infinity.
            TypeError: if ``stats`` holds something JSON cannot represent.
        """
        payload: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        payload["schema"] = SCHEMA_VERSION
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> UnitRecord:
        """Parse a record written by :meth:`to_json`.

        Raises:
            ValueError: if ``text`` is not a complete, valid record of this schema version.
        """
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"not a ledger record: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"not a ledger record: expected a JSON object, got {type(data).__name__}")
        schema = data.pop("schema", None)
        if schema != SCHEMA_VERSION:
            raise ValueError(f"ledger record schema {schema!r} is not the supported {SCHEMA_VERSION}")
        unknown = sorted(set(data) - _FIELD_NAMES)
        missing = sorted(_FIELD_NAMES - set(data) - {"error", "chunks"})
        if unknown or missing:
            raise ValueError(f"ledger record has unknown fields {unknown} / lacks fields {missing}")
        return cls(**data)


_FIELD_NAMES = frozenset(f.name for f in fields(UnitRecord))


class Ledger:
    """The per-unit records of one mosaic, stored under ``<root>/units/``.

    Args:
        root: the mosaic's metadata folder, ``<mosaic>/.geofg``. Nothing is created until the
            first :meth:`write`.

    Writers must hold the mosaic's run lock (:class:`geofg.io.lock.RunLock`); several processes of
    that run may write different (or even the same) units at once.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.units_dir = self.root / "units"

    def path_for(self, unit_id: str) -> Path:
        """Return the record file of ``unit_id`` (which may not exist)."""
        return self.units_dir / f"{unit_id}{_RECORD_SUFFIX}"

    def read(self, unit_id: str) -> UnitRecord | None:
        """Return the record of ``unit_id``, or None when it has none or it cannot be read."""
        try:
            return _parse_record(str(self.path_for(unit_id)), _read_bytes(str(self.path_for(unit_id))))
        except OSError:
            return None

    def write(self, record: UnitRecord) -> None:
        """Store ``record`` durably and atomically, replacing any earlier record of its unit.

        Call it only after the unit's data is written. On return the record survives a crash or
        power loss; if the process dies inside, the old record (or none) stays and at most a temp
        file is left for :meth:`sweep_temp`.

        Raises:
            OSError: if the record cannot be written (nothing is replaced then).
            ValueError: if the record's stats are not strict JSON.
        """
        data = (record.to_json() + "\n").encode("utf-8")
        self._ensure_units_dir()
        tmp = self.units_dir / _temp_name(record.unit_id)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path_for(record.unit_id))
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(self.units_dir)

    def load(self) -> dict[str, UnitRecord]:
        """Return every valid record, by unit id.

        Files that cannot be read or parsed, records stored under another unit's name, and temp
        files of interrupted writes are skipped with a logged warning: those units count as not
        done. A missing ledger is an empty one.
        """
        records: dict[str, UnitRecord] = {}
        n_temp = 0
        paths: list[str] = []
        try:
            entries = os.scandir(self.units_dir)
        except FileNotFoundError:
            return records
        with entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    n_temp += _temp_unit(name) is not None
                elif not name.endswith(_RECORD_SUFFIX):
                    log.warning("%s: ignoring %s, which is not a ledger record", self.units_dir, name)
                else:
                    paths.append(entry.path)
        for path, data in _read_many(paths):
            record = _parse_record(path, data)
            if record is not None:
                records[record.unit_id] = record
        if n_temp:
            log.warning(
                "%s: ignoring %d temp file(s) left by interrupted ledger writes; those units count "
                "as not done unless they have a record (Ledger.sweep_temp() removes the files)",
                self.units_dir,
                n_temp,
            )
        return records

    def is_current(
        self,
        record: UnitRecord | None,
        *,
        input_fingerprint: str,
        model_sha256: str,
        config_hash: str,
    ) -> bool:
        """Return True if ``record`` says the unit is done for these inputs, model and config.

        A failed record, a missing one, or one made from another input, model or config is not
        current: the unit must be (re)done.
        """
        return (
            record is not None
            and record.status == "done"
            and record.input_fingerprint == input_fingerprint
            and record.model_sha256 == model_sha256
            and record.config_hash == config_hash
        )

    def remove_all(self) -> None:
        """Delete every record (for ``--overwrite``), atomically: the ledger empties in one step.

        ``units/`` is renamed away and the rename made durable before anything is deleted, so a
        crash in the middle never leaves a partial ledger that could vouch for data about to be
        wiped. Call it before wiping the mosaic's data, under the run lock.
        """
        self._remove_trash()
        trash = self.root / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
        try:
            os.rename(self.units_dir, trash)
        except FileNotFoundError:
            return
        _fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def sweep_temp(self, *, min_age_s: float = 0.0, units: Iterable[str] | None = None) -> int:
        """Delete temp files left by killed ledger writers; return how many were deleted.

        Also deletes what an interrupted :meth:`remove_all` left (counted as one each). Call it
        under the run lock before any writer of this run starts; with ``min_age_s`` > 0 only files
        older than that are deleted, which spares writers that may still be running. With
        ``units``, only the temp files of those unit ids go (nothing else): for units whose
        writer died while other writers go on (a lost Ray actor's).
        """
        only = None if units is None else set(units)
        removed = 0 if only is not None else self._remove_trash()
        try:
            entries = list(os.scandir(self.units_dir))
        except FileNotFoundError:
            return removed
        cutoff = time.time() - min_age_s
        for entry in entries:
            unit = _temp_unit(entry.name)
            if unit is None or (only is not None and unit not in only):
                continue
            try:
                if min_age_s > 0 and entry.stat(follow_symlinks=False).st_mtime > cutoff:
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed += 1
        if removed:
            log.info("%s: removed %d leftover temp file(s)", self.units_dir, removed)
        return removed

    def _remove_trash(self) -> int:
        count = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if entry.name.startswith(_TRASH_PREFIX) and entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                    count += 1
        return count

    def _ensure_units_dir(self) -> None:
        """Create ``units/`` (and missing parents), making each new directory entry durable."""
        if self.units_dir.is_dir():
            return
        missing: list[Path] = []
        path = self.units_dir
        while not path.exists() and path.parent != path:
            missing.append(path)
            path = path.parent
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                directory.mkdir()
            _fsync_dir(directory.parent)


def _read_many(paths: list[str]) -> Iterator[tuple[str, bytes | OSError]]:
    """Yield each file's bytes (or the error reading it); threads overlap the I/O of many files."""
    if len(paths) < _PARALLEL_MIN:
        yield from ((path, _read_or_error(path)) for path in paths)
        return
    batches = [paths[i : i + _BATCH] for i in range(0, len(paths), _BATCH)]
    with ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix="geofg-ledger-load") as pool:
        for batch, contents in zip(batches, pool.map(_read_batch, batches)):
            yield from zip(batch, contents)


def _read_batch(paths: list[str]) -> list[bytes | OSError]:
    return [_read_or_error(path) for path in paths]


def _read_or_error(path: str) -> bytes | OSError:
    try:
        return _read_bytes(path)
    except OSError as e:
        return e


def _parse_record(path: str, data: bytes | OSError) -> UnitRecord | None:
    """Return the record read from ``path``, or None (with a warning) if it is not usable."""
    unit_id = os.path.basename(path)[: -len(_RECORD_SUFFIX)]
    try:
        if isinstance(data, OSError):
            raise data
        record = UnitRecord.from_json(data)
    except (OSError, ValueError) as e:
        log.warning("%s: ignoring unreadable ledger record (%s); unit %s counts as not done",
                    path, e, unit_id)
        return None
    if record.unit_id != unit_id:
        log.warning(
            "%s: ignoring record of unit %s stored under the name of unit %s", path, record.unit_id, unit_id
        )
        return None
    return record


def _read_bytes(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory; nothing more can be done there
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
        log.debug("%s: directory fsync not supported (%s)", path, e)
    finally:
        os.close(fd)

"""The unit ledger of a mosaic on S3: create-only "done" records, the newest record wins.

The same records as :class:`geofg.io.ledger.Ledger` (:class:`~geofg.io.ledger.UnitRecord`, one
line of strict JSON), stored as objects below ``<mosaic>/.geofg/units/<unit_id>/``::

    000002.done.json     written with If-None-Match: *  (create-only: never overwritten)
    000003.failed.json   a plain PUT (a failed attempt may be recorded again)

named by the record's attempt. A unit's record is its highest attempt; at one attempt a
``failed`` record beats a ``done`` one (``geofg info --verify`` marks a damaged done unit failed at
its attempt), so when in doubt the unit is redone. Why create-only: two runs that both believe they
own a unit (a lease taken over from a holder that was only paused, docs/scaling.md) write the same
key; exactly one PUT succeeds and the other finds the key taken (412) and leaves it, so a record
is never replaced under a reader and never vouches for chunks another run is still writing. Both
runs wrote the same chunk bytes (same inputs, model and config, or the record is stale anyway).

A PUT is atomic and S3 lists and reads after writes consistently, so a record is either present and
whole or absent: no temp files, nothing to sweep. The record is written after the unit's chunks
(:class:`geofg.io.sink.UnitSink`), as on disk.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from geofg.io.ledger import UnitRecord
from geofg.io.objstore import ObjectPrefix

log = logging.getLogger(__name__)

UNITS = ".geofg/units"
_NAME = re.compile(r"^(?P<unit>[A-Za-z0-9][A-Za-z0-9_.-]{0,199})/(?P<attempt>\d{6,})\.(?P<status>done|failed)\.json$")
_READERS = 16


def record_name(record: UnitRecord) -> str:
    """The record's object name below ``.geofg/units/``: ``<unit_id>/<attempt>.<status>.json``."""
    return f"{record.unit_id}/{record.attempt:06d}.{record.status}.json"


class ObjectLedger:
    """The per-unit records of a mosaic on S3 (the interface of :class:`geofg.io.ledger.Ledger`).

    Args:
        prefix: the mosaic's prefix (``s3://bucket/out.zarr``).
    """

    def __init__(self, prefix: ObjectPrefix) -> None:
        self.prefix = prefix

    def write(self, record: UnitRecord) -> bool:
        """Store ``record``; a done record only if none exists at its attempt.

        Returns:
            True if this call stored it; False if a done record of that unit and attempt was
            already there (another writer won the race; it is left as it was).

        Raises:
            ValueError: the record's stats are not strict JSON.
            InputError, StorageUnreachableError: S3 refused the write or did not answer.
        """
        data = (record.to_json() + "\n").encode("utf-8")
        name = f"{UNITS}/{record_name(record)}"
        if record.status == "done":
            created = self.prefix.put_if_absent(name, data) is not None
            if not created:
                log.info("%s/%s: a done record of this attempt exists already (another writer); kept it",
                         self.prefix.url, name)
            return created
        self.prefix.put(name, data)
        return True

    def load(self) -> dict[str, UnitRecord]:
        """Return each unit's current record (its highest attempt; failed over done at one attempt).

        Objects that are not records, or records that cannot be parsed, are skipped with a warning:
        their units count as not done.
        """
        best: dict[str, tuple[int, int, str]] = {}
        for name in self.prefix.sizes(UNITS):
            rank = _rank(name)
            if rank[0] < 0:
                log.warning("%s/%s/%s: ignoring an object that is not a ledger record", self.prefix.url, UNITS, name)
                continue
            unit = name.split("/", 1)[0]
            if unit not in best or rank > best[unit]:
                best[unit] = rank
        names = [r[2] for r in best.values()]
        records: dict[str, UnitRecord] = {}
        with ThreadPoolExecutor(max_workers=_READERS, thread_name_prefix="geofg-ledger-load") as pool:
            for name, found in zip(names, pool.map(lambda n: self.prefix.get(f"{UNITS}/{n}"), names)):
                rec = _parse(self.prefix, name, found[0] if found is not None else None)
                if rec is not None:
                    records[rec.unit_id] = rec
        return records

    def read(self, unit_id: str) -> UnitRecord | None:
        """Return the current record of ``unit_id`` (one LIST of its records, one GET), or None."""
        best = max((_rank(f"{unit_id}/{n}") for n in self.prefix.sizes(f"{UNITS}/{unit_id}")), default=None)
        if best is None or best[0] < 0:
            return None
        found = self.prefix.get(f"{UNITS}/{best[2]}")
        return _parse(self.prefix, best[2], found[0] if found is not None else None)

    def is_current(self, record: UnitRecord | None, *, input_fingerprint: str, model_sha256: str,
                   config_hash: str) -> bool:  # fmt: skip
        """Return True if ``record`` says the unit is done for these inputs, model and config."""
        return (record is not None and record.status == "done" and record.input_fingerprint == input_fingerprint
                and record.model_sha256 == model_sha256 and record.config_hash == config_hash)  # fmt: skip

    def remove_all(self) -> None:
        """Delete every record (``--overwrite``, under the run lock, before the data is replaced)."""
        self.prefix.delete_all([f"{UNITS}/{n}" for n in self.prefix.sizes(UNITS)])

    def sweep_temp(self, *, min_age_s: float = 0.0, units: Iterable[str] | None = None) -> int:  # noqa: ARG002
        """Nothing to sweep: a PUT leaves no temp object (kept for the :class:`Ledger` interface)."""
        return 0


def _rank(name: str) -> tuple[int, bool, str]:
    """How a record object ranks among its unit's: (attempt, failed, name); attempt -1: not a record."""
    m = _NAME.match(name)
    return (-1, False, name) if m is None else (int(m["attempt"]), m["status"] == "failed", name)


def _parse(prefix: ObjectPrefix, name: str, data: bytes | None) -> UnitRecord | None:
    unit = name.split("/", 1)[0]
    if data is None:
        return None  # deleted between the listing and the read
    try:
        record = UnitRecord.from_json(data)
    except ValueError as e:
        log.warning("%s/%s/%s: ignoring unreadable ledger record (%s); unit %s counts as not done",
                    prefix.url, UNITS, name, e, unit)
        return None
    if record.unit_id != unit or record_name(record) != name:
        log.warning("%s/%s/%s: ignoring a record stored under another unit's or attempt's name",
                    prefix.url, UNITS, name)
        return None
    return record

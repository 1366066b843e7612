"""Where finished units go: the mosaic's chunks first, then the ledger record.

The record lists the unit's chunk keys and their sizes, so a lost or truncated chunk is found and
its unit redone (:func:`geofg.io.mosaic.check_chunks`).

The ledger record is written only after the unit's data, so a record always means the data is
stored (fsynced on disk; on S3 each chunk PUT has returned); a unit killed between the two is simply redone (its chunk writes are idempotent). An empty
unit (no valid pixel) writes the fill value, which makes zarr delete any older chunk there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
import numpy as np

from geofg.grid import WorkUnit
from geofg.io.ledger import UnitRecord
from geofg.io.mosaic import FILL, Mosaic
from geofg.io.store import Target, ledger_for


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class UnitSink:
    """Writes units of one run into one mosaic (one sink per process)."""

    path: Target
    run_id: str
    input_fingerprint: str
    model_sha256: str
    config_hash: str

    def __post_init__(self) -> None:
        self.mosaic = Mosaic(self.path)
        self.ledger = ledger_for(self.path)

    def _record(self, unit: WorkUnit, status: str, attempt: int, empty: bool, stats: dict,
                error: str | None = None, chunks: dict[str, int] | None = None) -> UnitRecord:
        return UnitRecord(
            unit_id=unit.id,
            status=status,  # type: ignore[arg-type]
            input_fingerprint=self.input_fingerprint,
            model_sha256=self.model_sha256,
            config_hash=self.config_hash,
            attempt=attempt,
            empty=empty,
            stats=stats,
            run_id=self.run_id,
            finished_at=_now(),
            error=error,
            chunks=chunks,
        )

    def done(self, unit: WorkUnit, layers: dict[str, np.ndarray] | None, stats: dict,
             attempt: int) -> UnitRecord:
        """Write a unit's layers (fill when ``layers`` is None) and then its ledger record."""
        empty = layers is None
        if layers is None:
            shape = (unit.core.height, unit.core.width)
            layers = {name: np.full(shape, FILL, dtype=np.uint8) for name in self.mosaic.layers}
        self.mosaic.write_unit(unit, layers)
        self.mosaic.sync_unit(unit)  # the record must never vouch for data still in the page cache
        chunks = self.mosaic.chunk_sizes(unit)  # what a re-run checks the unit's files against
        rec = self._record(unit, "done", attempt, empty, stats, chunks=chunks)
        self.ledger.write(rec)
        return rec

    def failed(self, unit: WorkUnit, error: str, attempt: int) -> UnitRecord:
        """Record a failed unit (its chunks are left as they were)."""
        rec = self._record(unit, "failed", attempt, False, {}, error=error)
        self.ledger.write(rec)
        return rec

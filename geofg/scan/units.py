"""One scan unit, wherever it runs: what a scan passes to the runners (its source and its sink).

A scan unit is one grid chunk of one acquisition date. The scan runs each date's units with the
same runners as classify (:mod:`geofg.runners.base`: the local loop, or Ray actors for
``runner.kind: ray``); only what it passes in differs: a :class:`ScanSource` (the date's scenes
warped onto the grid, the scan's model) and a :class:`ScanSink`, which finishes each unit with
:func:`finish_unit` (slice chunks -> ``latest_*`` chunks -> fsync -> the ledger record after the
data), so a Ray scan writes the same bytes as a local one. Units are :class:`DatedUnit` values (a few
ints). Dates run one after another (one run per date), because a unit's ``latest_*`` chunks
depend on every date's slice of that chunk: two dates of one chunk must never be written at once.

This module does not import ray (only :mod:`geofg.runners` and the Ray Tune search do; the
contracts in pyproject.toml check it).
"""

from __future__ import annotations

import hashlib
import logging
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, UTC
from typing import TYPE_CHECKING, Any

import numpy as np

from geofg.errors import UNIT_ERRORS, WeightsChecksumError, stops_run
from geofg.grid import WorkUnit
from geofg.io import mosaic as mz
from geofg.io import timeseries
from geofg.io.ledger import UnitRecord
from geofg.io.store import Target, ledger_for
from geofg.models.inference.bundle import bundle_sha256
from geofg.pipeline import UnitOutput
from geofg.scan import inbox as ib
from geofg.scan.warp import Scene, SceneWindowReader

if TYPE_CHECKING:
    from geofg.scan.run import ScanPlan

__all__ = ["DatedUnit", "ScanSink", "ScanSource", "finish_unit", "scene_key", "unit_id", "unit_record"]

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def unit_id(day: int, unit: WorkUnit) -> str:
    """Ledger id of a unit of one date, e.g. ``d20160816_r0000_c0001``."""
    return f"d{ib.day_str(day).replace('-', '')}_{WorkUnit.id.fget(unit)}"  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class DatedUnit(WorkUnit):
    """A grid unit of one acquisition date; its ``id`` is the ledger id (:func:`unit_id`)."""

    day: int = 0

    @property
    def id(self) -> str:  # noqa: D102 (documented in the class)
        return unit_id(self.day, self)


def scene_key(scenes: Sequence[Scene]) -> list[str]:
    """The scenes a unit was computed from, as sorted short content hashes (kept in its record)."""
    return sorted({s.sha256[:16] for s in scenes})


def covering(scenes: Sequence[Scene], unit: WorkUnit) -> list[Scene]:
    """The scenes whose footprint meets the unit's core."""
    return [s for s in scenes if s.cover.intersection(unit.core) is not None]


def key_fingerprint(key: list[str]) -> str:
    """The record's input fingerprint: sha256 of the scene key."""
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def unit_record(uid: str, status: str, fp: str, model_sha256: str, config_hash: str, attempt: int,
                empty: bool, stats: dict, run_id: str, error: str | None = None,
                chunks: dict[str, int] | None = None) -> UnitRecord:  # fmt: skip
    """A ledger record of a scan unit."""
    return UnitRecord(unit_id=uid, status=status, input_fingerprint=fp,  # type: ignore[arg-type]
                      model_sha256=model_sha256, config_hash=config_hash, attempt=attempt,
                      empty=empty, stats=stats, run_id=run_id, finished_at=_now(), error=error,
                      chunks=chunks)  # fmt: skip


def finish_unit(tm: timeseries.TimeMosaic, t: int, dates: list[int], unit: WorkUnit, day: int, o: UnitOutput,
                key: list[str], attempt: int, run_id: str, model_sha256: str, config_hash: str) -> UnitRecord:  # fmt: skip
    """Write a unit's slice ``t`` and its ``latest_*`` chunks, fsync them; return its done record.

    The caller writes the record to the ledger (after this returns: the record vouches for data
    already on disk).
    """
    layers = o.layers
    if layers is None:
        shape = (unit.core.height, unit.core.width)
        layers = {n: np.full(shape, mz.FILL, np.uint8) for n in tm.layers}
    tm.write_slice(t, unit, layers)
    tm.update_latest(unit, dates)
    tm.sync_unit(unit, t)
    stats = {**o.stats, "scenes": key, "date": day}
    # the slice's chunks only: the latest_* chunks change with every later date
    chunks = mz.chunk_sizes(tm.path, mz.unit_chunk_keys(tm.layers, unit.row, unit.col, t))
    return unit_record(unit_id(day, unit), "done", key_fingerprint(key), model_sha256, config_hash,
                       attempt, o.empty, stats, run_id, chunks=chunks)  # fmt: skip


@dataclass(frozen=True)
class ScanSource:
    """A date's :class:`~geofg.runners.base.Source`: its scenes warped onto the grid, the scan's model.

    Small (the plan and the scenes' file records), so it travels to Ray actors.
    """

    plan: ScanPlan
    scenes: tuple[Scene, ...]

    def open_reader(self, cache_bytes: int | None = None) -> SceneWindowReader:
        """A reader of the date's composite with its own dataset handles (GDAL's default cache)."""
        return SceneWindowReader(self.scenes, self.plan.grid, self.plan.job.grid.resampling)

    def cache_bytes(self, reader: Any, units: Sequence[WorkUnit] | None, readers: int) -> None:
        """GDAL's default block cache (warped reads do not walk a file's blocks in order)."""
        return None

    def load_predictor(self, device: str, check: bool = False) -> Any:
        """The scan's model on ``device``.

        Raises:
            WeightsChecksumError: ``check`` and the bundle here is not the one planned with.
        """
        p = self.plan
        if check:
            found = bundle_sha256(p.model_path)
            if found != p.model_sha256:
                raise WeightsChecksumError(
                    f"{p.model_path} on node {socket.gethostname()}: expected the bundle the "
                    f"driver planned with (sha256 {p.model_sha256[:12]}...), found sha256 "
                    f"{found[:12]}...; put the same bundle on every node"
                )
        from geofg.models.inference.predictor import load_predictor

        return load_predictor(p.model_path, device, compile=p.job.model.compile)


@dataclass
class ScanSink:
    """A date's :class:`~geofg.runners.base.Sink`: slice ``t`` and the latest view, then the record.

    The driver's and each actor's (built from these fields); the records go to the mosaic's ledger.
    """

    path: Target  # a local path or s3://bucket/prefix
    run_id: str
    model_sha256: str
    config_hash: str
    day: int
    t: int  # the date's slice index
    dates: tuple[int, ...]  # every slice's date (for the latest view)
    scenes: tuple[Scene, ...]

    def __post_init__(self) -> None:
        self.ledger = ledger_for(self.path)
        self._tm: timeseries.TimeMosaic | None = None

    def done(self, unit: WorkUnit, layers: dict[str, np.ndarray] | None, stats: dict,
             attempt: int) -> UnitRecord:
        """Write the unit's slice and latest chunks (:func:`finish_unit`), then its record.

        A write that fails (other than a full or read-only disk, :func:`~geofg.errors.stops_run`)
        fails only this unit, recorded here; the next scan retries its date.
        """
        key = scene_key(covering(self.scenes, unit))
        try:
            if self._tm is None:
                self._tm = timeseries.TimeMosaic(self.path)
            rec = finish_unit(self._tm, self.t, list(self.dates), unit, self.day, UnitOutput(layers, stats),
                              key, attempt, self.run_id, self.model_sha256, self.config_hash)  # fmt: skip
        except UNIT_ERRORS as e:
            if stops_run(e):
                raise
            log.error("unit %s failed: %s", unit.id, e)
            return self.failed(unit, f"{type(e).__name__}: {e}".splitlines()[0], attempt)
        self.ledger.write(rec)
        return rec

    def failed(self, unit: WorkUnit, error: str, attempt: int) -> UnitRecord:
        """Record a failed unit (its chunks are left as they were); the next scan retries its date."""
        key = scene_key(covering(self.scenes, unit))
        rec = unit_record(unit_id(self.day, unit), "failed", key_fingerprint(key), self.model_sha256,
                          self.config_hash, attempt, False, {"date": self.day, "scenes": []},
                          self.run_id, error)  # fmt: skip
        self.ledger.write(rec)
        return rec

"""One scan unit, wherever it runs: the local loop in :mod:`geofg.scan.run` or a Ray actor.

A scan unit is one grid chunk of one acquisition date. Both runners finish it with the same
function, :func:`finish_unit` (slice chunks -> ``latest_*`` chunks -> fsync -> the ledger record
after the data), so a Ray scan writes the same bytes as a local one.

For ``runner.kind: ray`` the scan hands each date's units to :func:`geofg.runners.ray.run_ray`
with :class:`ScanUnitWorker` as the actor class: what travels is a :class:`ScanTask` (the plan,
the date, its slice index and its scenes' file records; put once in the object store), one
:class:`DatedUnit` (a few ints) per call and one small :class:`ScanUnitOutcome` back. Each actor
loads the model once, opens its own datasets on its own read threads and writes its units'
chunks and ledger records itself. Dates run one after another (one Ray run per date), because a
unit's ``latest_*`` chunks depend on every date's slice of that chunk: two dates of one chunk
must never be written at once.

This module does not import ray (only :mod:`geofg.runners` and the Ray Tune search do; the
contracts in pyproject.toml check it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geofg.errors import UNIT_ERRORS, WeightsChecksumError, stops_run
from geofg.grid import WorkUnit
from geofg.io import mosaic as mz
from geofg.io.ledger import Ledger, UnitRecord
from geofg.io.read import gdal_env
from geofg.models.bundle import bundle_sha256
from geofg.pipeline import UnitOutput, infer_unit, prepare_unit
from geofg.pipeline import finish_unit as unit_layers
from geofg.scan import inbox as ib
from geofg.scan.warp import Scene, SceneWindowReader

if TYPE_CHECKING:
    from geofg.scan.run import ScanPlan

__all__ = ["DatedUnit", "ScanSink", "ScanTask", "ScanUnitOutcome", "ScanUnitWorker", "finish_unit",
           "scene_key", "unit_id", "unit_record"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


def finish_unit(tm: mz.TimeMosaic, t: int, dates: list[int], unit: WorkUnit, day: int, o: UnitOutput,
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
class ScanTask:
    """What every actor of one date's Ray run needs (small: configs and file records, no pixels).

    ``job`` and ``model_path`` are what :mod:`geofg.runners.ray` reads to size and check actors.
    """

    plan: ScanPlan
    day: int
    t: int  # the date's slice index
    dates: tuple[int, ...]  # every slice's date (for the latest view)
    scenes: tuple[Scene, ...]

    @property
    def job(self) -> Any:
        """The scan config (runner and model settings)."""
        return self.plan.job

    @property
    def model_path(self) -> str:
        """The bundle's absolute path."""
        return self.plan.model_path


@dataclass
class ScanSink:
    """Records of scan units in one mosaic's ledger (the driver's and each actor's)."""

    path: Path
    run_id: str
    model_sha256: str
    config_hash: str

    def __post_init__(self) -> None:
        self.ledger = Ledger(Path(self.path) / mz.META_DIR)

    def failed(self, unit: DatedUnit, error: str, attempt: int) -> UnitRecord:
        """Record a failed unit (its chunks are left as they were); the next scan retries its date."""
        rec = unit_record(unit.id, "failed", key_fingerprint([]), self.model_sha256, self.config_hash,
                          attempt, False, {"date": unit.day, "scenes": []}, self.run_id, error)  # fmt: skip
        self.ledger.write(rec)
        return rec


@dataclass(frozen=True, slots=True)
class ScanUnitOutcome:
    """What an actor returns for one unit: its record (done) or a one-line error, and timings."""

    unit_id: str
    record: UnitRecord | None
    error: str | None
    seconds: dict[str, float]


def _failed(unit: DatedUnit, e: BaseException, seconds: dict[str, float]) -> ScanUnitOutcome:
    return ScanUnitOutcome(unit.id, None, f"{type(e).__name__}: {e}".splitlines()[0], seconds)


class ScanUnitWorker:
    """A Ray actor's body for scan units (constructor as :class:`geofg.runners.ray.UnitWorker`).

    Args:
        task: the date's :class:`ScanTask`.
        sink_args: the fields of the driver's :class:`ScanSink` (mosaic path, run id, ...).
        device: ``"cuda"`` or ``"cpu"`` (chosen by the driver from the cluster's resources).
        predictor_factory: builds the predictor from the :class:`~geofg.scan.run.ScanPlan`
            instead of loading the bundle (tests); it travels pickled.

    Raises:
        WeightsChecksumError: the bundle on this node is not the one the driver planned with.
    """

    def __init__(self, task: ScanTask, sink_args: dict[str, Any], device: str,
                 predictor_factory: Callable[[ScanPlan], Any] | None = None) -> None:  # fmt: skip
        self._task = task
        self._env = contextlib.ExitStack()
        self._env.enter_context(gdal_env())
        if predictor_factory is None:
            found = bundle_sha256(task.model_path)
            if found != task.plan.model_sha256:
                raise WeightsChecksumError(
                    f"{task.model_path} on node {socket.gethostname()}: expected the bundle the "
                    f"driver planned with (sha256 {task.plan.model_sha256[:12]}...), found sha256 "
                    f"{found[:12]}...; put the same bundle on every node"
                )
            from geofg.models.predictor import load_predictor

            self._predictor = load_predictor(task.model_path, device, compile=task.job.model.compile)
        else:
            self._predictor = predictor_factory(task.plan)
        self._sink = ScanSink(**sink_args)
        self._tm = mz.TimeMosaic(Path(self._sink.path))
        self._dates = list(task.dates)
        self._local = threading.local()
        self._readers: list[SceneWindowReader] = []
        self._readers_lock = threading.Lock()
        from geofg.runners.ray import ActorReads, WriteBehind, actor_read_threads, actor_write_threads

        self._reads = ActorReads(actor_read_threads(task.job.runner, device), self._read, "geofg-scan-read")
        self._writes = WriteBehind(actor_write_threads(task.job.runner, device))

    def pid(self) -> int:
        """Return the actor's process id."""
        return os.getpid()

    def _read(self, unit: WorkUnit) -> tuple[np.ndarray, np.ndarray, float]:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            plan = self._task.plan
            reader = self._local.reader = SceneWindowReader(self._task.scenes, plan.grid,
                                                            plan.job.grid.resampling)  # fmt: skip
            with self._readers_lock:
                self._readers.append(reader)
        t = time.perf_counter()
        data, valid = reader.read(unit.read)
        return data, valid, time.perf_counter() - t

    def process(self, unit: DatedUnit, attempt: int, upcoming: Sequence[DatedUnit] = (),
                lanes: dict[str, int] | None = None) -> list[ScanUnitOutcome]:
        """Read (or take the prefetched read of), predict and write one unit; prefetch ``upcoming``.

        ``lanes`` and the outcomes returned: as :meth:`geofg.runners.ray.UnitWorker.process` (with
        write threads, the unit's layers, slices and record are written on them).
        """
        seconds = {"read": 0.0, "wait_read": 0.0, "compute": 0.0, "write": 0.0}
        fut = self._reads.take(unit, upcoming, lanes or {})
        plan = self._task.plan
        try:
            t0 = time.perf_counter()
            data, valid, seconds["read"] = fut.result()
            seconds["wait_read"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            x = prepare_unit(unit, data, valid, plan)  # type: ignore[arg-type]
            probs = None if x is None else infer_unit(x, valid, self._predictor, plan)  # type: ignore[arg-type]
            del x
            seconds["compute"] = time.perf_counter() - t0
        except UNIT_ERRORS as e:
            if stops_run(e):
                raise
            return [*self._writes.finished(), _failed(unit, e, seconds)]
        return self._writes.submit(self._write, unit, probs, data, valid, attempt, seconds)

    def _write(self, unit: DatedUnit, probs: np.ndarray | None, data: np.ndarray, valid: np.ndarray,
               attempt: int, seconds: dict[str, float]) -> ScanUnitOutcome:
        """The unit's layers, its date's slice and the latest chunks, then its ledger record."""
        task, sink = self._task, self._sink
        try:
            t0 = time.perf_counter()
            o = unit_layers(unit, probs, data, valid, task.plan)  # type: ignore[arg-type]
            del probs, data, valid
            key = scene_key(covering(task.scenes, unit))
            rec = finish_unit(self._tm, task.t, self._dates, unit, task.day, o, key, attempt,
                              sink.run_id, sink.model_sha256, sink.config_hash)  # fmt: skip
            sink.ledger.write(rec)
            seconds["write"] = time.perf_counter() - t0
        except UNIT_ERRORS as e:
            if stops_run(e):
                raise
            return _failed(unit, e, seconds)
        return ScanUnitOutcome(unit.id, rec, None, seconds)

    def drain(self) -> list[ScanUnitOutcome]:
        """Wait for every unit left to the write threads; their outcomes, oldest first."""
        return self._writes.drain()

    def close(self) -> None:
        """Finish the writes, drop prefetched reads, stop the threads, close the readers, leave
        the GDAL env."""
        self._writes.close()
        self._reads.close()
        for reader in self._readers:
            reader.close()
        self._env.close()

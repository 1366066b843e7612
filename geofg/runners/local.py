"""The in-process runner: a reader thread pool and a writer thread overlap I/O with compute.

Reads run ahead on ``read_workers`` threads (each with its own dataset handles; GDAL datasets
are never shared between threads), at most ``prefetch`` units beyond the one being computed.
The model runs in the calling thread. Writes (zarr chunks, then the ledger record) run on one
writer thread with at most two units queued. Memory is therefore bounded by
``prefetch + read_workers + 3`` units in flight, whatever the raster size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from geofg.errors import GeofgError
from geofg.grid import WorkUnit
from geofg.io.ledger import UnitRecord
from geofg.io.read import RasterReader
from geofg.io.sink import UnitSink
from geofg.pipeline import Plan, Predictor, process_unit

log = logging.getLogger(__name__)

OnUnit = Callable[[UnitRecord], None]


class Profile:
    """Seconds spent per stage, summed over units (thread-safe)."""

    STAGES = ("read", "wait_read", "compute", "write", "wait_write")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds = dict.fromkeys(self.STAGES, 0.0)

    def add(self, stage: str, seconds: float) -> None:
        """Add time to a stage."""
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


def run_local(
    p: Plan,
    units: Sequence[WorkUnit],
    predictor: Predictor,
    sink: UnitSink,
    on_unit: OnUnit,
    attempts: dict[str, int] | None = None,
    profile: Profile | None = None,
) -> None:
    """Process ``units`` in order; every unit ends as a ledger record passed to ``on_unit``."""
    prof = profile or Profile()
    attempts = attempts or {}
    local = threading.local()
    readers: list[RasterReader] = []
    readers_lock = threading.Lock()

    def read(unit: WorkUnit) -> tuple[np.ndarray, np.ndarray]:
        reader = getattr(local, "reader", None)
        if reader is None:
            reader = local.reader = RasterReader(p.info, p.band_indices)
            with readers_lock:
                readers.append(reader)
        t = time.perf_counter()
        out = reader.read(unit.read)
        prof.add("read", time.perf_counter() - t)
        return out

    def write(unit: WorkUnit, layers: dict | None, stats: dict, attempt: int) -> UnitRecord:
        t = time.perf_counter()
        rec = sink.done(unit, layers, stats, attempt)
        prof.add("write", time.perf_counter() - t)
        return rec

    max_attempts = p.job.runner.max_attempts
    ahead = p.job.runner.prefetch + p.job.runner.read_workers
    with (
        ThreadPoolExecutor(p.job.runner.read_workers, thread_name_prefix="geofg-read") as rpool,
        ThreadPoolExecutor(1, thread_name_prefix="geofg-write") as wpool,
    ):
        todo = deque(units)
        reads: deque[tuple[WorkUnit, Future]] = deque()
        writes: deque[Future] = deque()

        def top_up() -> None:
            while todo and len(reads) < ahead:
                u = todo.popleft()
                reads.append((u, rpool.submit(read, u)))

        def drain(limit: int) -> None:
            while len(writes) > limit:
                t = time.perf_counter()
                rec = writes.popleft().result()
                prof.add("wait_write", time.perf_counter() - t)
                on_unit(rec)

        top_up()
        while reads:
            unit, fut = reads.popleft()
            top_up()
            attempt = attempts.get(unit.id, 0) + 1
            try:
                t = time.perf_counter()
                data, valid = _result_with_retry(fut, lambda u=unit: read(u), max_attempts)
                prof.add("wait_read", time.perf_counter() - t)
                t = time.perf_counter()
                out = process_unit(unit, data, valid, predictor, p)
                prof.add("compute", time.perf_counter() - t)
                del data, valid
            except (GeofgError, OSError, RuntimeError, ValueError, MemoryError) as e:
                log.error("unit %s failed: %s", unit.id, e, exc_info=log.isEnabledFor(logging.DEBUG))
                drain(0)
                on_unit(sink.failed(unit, f"{type(e).__name__}: {e}".splitlines()[0], attempt))
                continue
            writes.append(wpool.submit(write, unit, out.layers, out.stats, attempt))
            drain(2)
        drain(0)
    for r in readers:
        r.close()


def _result_with_retry(fut: Future, again: Callable[[], tuple], max_attempts: int) -> tuple:
    """Return a read's result, re-reading on OSError up to ``max_attempts`` reads in all."""
    for i in range(max_attempts):
        try:
            return fut.result() if i == 0 else again()
        except OSError:
            if i == max_attempts - 1:
                raise
            log.warning("read failed, retrying (%d/%d)", i + 1, max_attempts)
    raise AssertionError("unreachable")

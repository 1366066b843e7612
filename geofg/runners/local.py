"""The in-process runner: reader threads and a writer thread overlap I/O with compute streams.

* **Reads** run ahead on ``read_workers`` threads. Each reader owns its dataset handles (GDAL
  datasets are never shared between threads) and reads its own bands of two unit rows, column by
  column: ``(r, c), (r+1, c), (r, c+1), (r+1, c+1), ...`` (:func:`reader_plan`; bands are cut
  into runs of columns when there are fewer bands than readers). GDAL's block
  cache is sized to hold the blocks of the last two units each reader read, so the blocks a unit
  shares with the unit above it and with the one to its left are decoded once, not two or three
  times (measured: 238 -> 99 ms of decoding per 1152² unit of a 13-band deflate GeoTIFF, see
  benchmarks/HISTORY.md).
* **The stages of a unit run on different threads**, so they overlap: the reader reads
  (:func:`~geofg.pipeline.prepare_unit`), the compute threads normalise, run the model and blend
  (:func:`~geofg.pipeline.infer_unit`), and the writers turn probabilities into layers
  (:func:`~geofg.pipeline.finish_unit`) before writing the zarr chunks and then the ledger record,
  at most one unit queued beyond those being written. Units never share a chunk and each record is
  a file of its own, so several writers work independently; progress is still reported in order.
* **How many** readers and writers: :meth:`~geofg.config.RunnerConfig.io_threads` for the
  predictor's device (2 and 1 on CPU; on a GPU most of the cores, which the model leaves free).
* **Compute** runs in ``streams`` threads at once, each calling ``predictor.predict`` on its own
  unit. Without a choice (``runner.compute_streams`` None): one stream with all of torch's
  threads where the heap is reused (``geofg classify``, :func:`geofg.memory.reuse_heap`:
  two streams interleaving their activations in one heap fragment it, and peak RSS crept up
  with the raster); otherwise the predictor's choice, which on CPU is one single-threaded stream
  per torch thread. On CUDA, and for predictors without a ``streams`` hook (ONNX), one stream.

Memory is bounded by ``max(prefetch, readers) + streams + writers + 2`` units in flight plus GDAL's
block cache (two units' blocks per reader, at most :data:`GDAL_CACHE_MAX_BYTES` each), whatever the
raster size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from geofg.errors import UNIT_ERRORS, WeightsChecksumError, stops_run
from geofg.grid import WorkUnit, plan_units
from geofg.io.ledger import UnitRecord
from geofg.io.read import GDAL_CACHE_BYTES, GDAL_CACHE_MAX_BYTES
from geofg.io.reader import RasterReader
from geofg.memory import heap_reused, trim_heap
from geofg.models.inference.bundle import bundle_sha256
from geofg.pipeline import Plan, Predictor, RawWindow, finish_unit, infer_unit, prepare_unit, takes_raw
from geofg.runners.base import RunTimes, Sink, Source
from geofg.signals import STOP

log = logging.getLogger(__name__)

OnUnit = Callable[[UnitRecord], None]
_Stage = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]
_Read = tuple[np.ndarray, np.ndarray, "np.ndarray | RawWindow | None"]
"""A unit between stages: raw data, validity, and the model input (after the reader) or the
probabilities (after compute); None when its core has no valid pixel."""


class Profile:
    """Seconds spent per stage, summed over units and threads (thread-safe)."""

    THREADS = {"read": "reader", "normalise": "reader", "wait_read": "compute", "compute": "compute",
               "mask": "writer", "layers": "writer", "write": "writer", "wait_write": "main"}
    """Each stage, in pipeline order, and the thread it runs on."""
    STAGES = tuple(THREADS)
    COMPUTE_PARTS = ("forward", "blend")
    """Parts of ``compute`` (not added to totals a second time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds = dict.fromkeys(self.STAGES, 0.0)
        self.cpu: dict[str, float] = {"reader": 0.0, "writer": 0.0}
        """CPU seconds of the reader and writer threads (their own, ``time.thread_time``), and,
        set by :func:`run_local`: ``process`` (every thread of the process, torch's included),
        ``wall`` (seconds of the unit loop) and ``cores`` (the CPUs the process may use)."""

    def add(self, stage: str, seconds: float) -> None:
        """Add time to a stage."""
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def thread_cpu(self, thread: str) -> Iterator[None]:
        """Add the calling thread's CPU seconds inside the block to ``cpu[thread]``."""
        start = time.thread_time()
        try:
            yield
        finally:
            with self._lock:
                self.cpu[thread] = self.cpu.get(thread, 0.0) + time.thread_time() - start


BAND_ROWS = 2
"""Unit rows a reader walks together, column by column."""


def reader_plan(units: Sequence[WorkUnit], readers: int) -> list[tuple[WorkUnit, int]]:
    """The read order of ``units`` and the reader (0 .. ``readers`` - 1) of each.

    Units are cut into bands of :data:`BAND_ROWS` unit rows that a reader walks column by
    column, top to bottom, so the blocks a unit shares with its neighbours above and to the left
    are still in that reader's block cache. With fewer bands than readers (a GPU host's 11
    readers on a raster 8 units high), each band is cut into runs of columns so that more readers
    get work: ``readers // bands`` runs per band. Runs go to readers in turn, ``readers`` runs at
    a time (a wave), and the order steps through a wave's runs side by side, one unit at a time,
    so the first ``readers`` reads go to different readers and all of them start at once.

    Examples:
        >>> from geofg.grid import plan_units
        >>> [(u.id, k) for u, k in reader_plan(plan_units(3, 2, 1, 0), 1)][:3]
        [('r0000_c0000', 0), ('r0001_c0000', 0), ('r0000_c0001', 0)]
        >>> sorted({k for _, k in reader_plan(plan_units(4, 8, 1, 0), 4)})  # 2 bands, 2 runs each
        [0, 1, 2, 3]
    """
    bands: dict[int, list[WorkUnit]] = {}
    for u in units:
        bands.setdefault(u.row // BAND_ROWS, []).append(u)
    pieces = max(1, readers // len(bands)) if bands else 1
    runs: list[list[WorkUnit]] = []
    for b in sorted(bands):
        cols = sorted({u.col for u in bands[b]})
        n = min(pieces, len(cols))
        for i in range(n):
            part = set(cols[i * len(cols) // n : (i + 1) * len(cols) // n])
            runs.append(sorted((u for u in bands[b] if u.col in part), key=lambda u: (u.col, u.row)))
    keyed = []
    for i, run in enumerate(runs):
        wave, k = divmod(i, readers)
        first = run[0].col
        keyed += [((wave, u.col - first, u.row % BAND_ROWS, k), u, k) for u in run]
    keyed.sort(key=lambda t: t[0])
    return [(u, k) for _, u, k in keyed]


class ReadLanes:
    """``n`` read threads ("lanes"), each running the reads routed to it in the order they come.

    A lane opens its own dataset handles on first use (GDAL datasets are never shared between
    threads), so the units :func:`reader_plan` gives one reader, read on one lane, find the blocks
    they share still in that lane's block cache. Reads with no lane go to the lanes in turn.
    """

    def __init__(self, n: int, prefix: str) -> None:
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix=f"{prefix}{k}") for k in range(max(1, n))]
        self._turn = 0

    def __len__(self) -> int:
        return len(self._pools)

    def submit(self, lane: int | None, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on ``lane`` (modulo the lanes there are; None: the next in turn)."""
        if lane is None:
            lane, self._turn = self._turn, (self._turn + 1) % len(self._pools)
        return self._pools[lane % len(self._pools)].submit(fn, *args)

    def shutdown(self) -> None:
        """Drop the reads not started, wait for the running ones, stop the threads."""
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)


def block_cache_bytes(reader: RasterReader, units: Sequence[WorkUnit], readers: int) -> int:
    """GDAL block cache for ``readers`` walking :func:`reader_plan`: two units' blocks each.

    Never below :data:`GDAL_CACHE_BYTES`, never above :data:`GDAL_CACHE_MAX_BYTES` per reader;
    it depends on the unit size, the file's blocks and the readers, never on the raster size.
    """
    if not units:
        return GDAL_CACHE_BYTES
    largest = max(units, key=lambda u: u.read.height * u.read.width).read
    need = readers * 2 * reader.block_bytes(largest)
    return max(GDAL_CACHE_BYTES, min(readers * GDAL_CACHE_MAX_BYTES, need))


@dataclass(frozen=True)
class RasterSource:
    """Classify's :class:`~geofg.runners.base.Source`: the plan's raster and model bundle(s)."""

    plan: Plan

    def open_reader(self, cache_bytes: int | None = None) -> RasterReader:
        """A reader of the bands the model and the mask read, with its own dataset handles."""
        return RasterReader(self.plan.info, self.plan.read_indices, cache_bytes)

    def cache_bytes(self, reader: RasterReader, units: Sequence[WorkUnit] | None, readers: int) -> int:
        """:func:`block_cache_bytes` for ``units``; with none (a Ray actor has no unit list), for
        a 3 x 3-chunk corner of the grid, which has edge and interior units like the real ones."""
        if units is None:
            p = self.plan
            chunk = p.job.tile.chunk
            units = plan_units(min(p.info.height, 3 * chunk), min(p.info.width, 3 * chunk), chunk, p.halo)
        return block_cache_bytes(reader, units, readers)

    def load_predictor(self, device: str, check: bool = False) -> Predictor:
        """The plan's model(s) (an ensemble, TTA, compiled: as planned) on ``device``.

        Raises:
            WeightsChecksumError: ``check`` and the bundle here is not the one planned with.
        """
        from geofg.models.inference.ensemble import load_models, models_sha256

        p = self.plan
        if check:
            found = models_sha256([bundle_sha256(m) for m in p.model_paths], p.job.model.tta)
            if found != p.model_sha256:
                raise WeightsChecksumError(
                    f"{p.model_path} on node {socket.gethostname()}: expected the bundle the driver "
                    f"planned with (sha256 {p.model_sha256[:12]}...), found sha256 {found[:12]}...; "
                    "put the same bundle on every node"
                )
        return load_models(p.model_paths, device, tta=p.job.model.tta, compile=p.job.model.compile)


class LocalRunner:
    """The in-process :class:`~geofg.runners.base.Runner`: :func:`run_local`.

    The predictor is loaded on the first run (``model.device``) and kept for the next (a scan runs
    one per date).
    """

    def __init__(self, predictor_factory: Callable[[Any], Any] | None = None) -> None:
        self._factory = predictor_factory
        self._predictor: Predictor | None = None

    def prepare(self, source: Source) -> None:
        """Load the model now (a scan, before it writes its first date's slice)."""
        self.predictor(source)

    def predictor(self, source: Source) -> Predictor:
        """The model, loaded once (by the factory, else by the source)."""
        if self._predictor is None:
            p = source.plan
            self._predictor = (self._factory(p) if self._factory is not None
                               else source.load_predictor(p.job.model.device))
        return self._predictor

    def run(self, source: Source, units: Sequence[WorkUnit], sink: Sink, on_unit: OnUnit,
            attempts: dict[str, int] | None = None) -> RunTimes:
        """:func:`run_local` with this runner's predictor; the profile's seconds and CPU time."""
        prof = Profile()
        run_local(source, units, self.predictor(source), sink, on_unit, attempts, prof)
        return RunTimes(dict(prof.seconds), dict(prof.cpu))


@contextlib.contextmanager
def compute_streams(predictor: Predictor, want: int | None) -> Iterator[int]:
    """Yield how many ``predict`` calls may run at once, letting the predictor prepare for them.

    ``want`` None lets the predictor choose (a torch CPU predictor: one per intra-op thread).
    """
    hook: Any = getattr(predictor, "streams", None)
    if want is None and heap_reused():
        want = 1  # streams interleaving their activations in one reused heap fragment it
    if hook is None:
        yield 1
        return
    with hook(want) as n:
        yield n


def run_local(
    source: Source,
    units: Sequence[WorkUnit],
    predictor: Predictor,
    sink: Sink,
    on_unit: OnUnit,
    attempts: dict[str, int] | None = None,
    profile: Profile | None = None,
) -> None:
    """Process ``units``; every unit ends as a ledger record passed to ``on_unit``.

    Once :data:`geofg.signals.STOP` is set (SIGTERM/SIGINT), no new unit is started: the units
    being computed or written finish, reads not yet computed are dropped, and it returns. An
    input that changed or a full disk (:func:`geofg.errors.stops_run`) raises at once.
    """
    prof = profile or Profile()
    attempts = attempts or {}
    p = source.plan
    cfg = p.job.runner
    device = getattr(predictor, "device", "cpu")
    n_readers, n_writers = cfg.io_threads(device)
    # the reads queued ahead hold the bands as read, not float32 copies (twice the bytes of
    # uint16): normalised on the compute thread on CPU, on the device by a CUDA predictor that
    # takes raw samples; a GPU fed float32 keeps its readers normalising, off the compute thread
    defer = device == "cpu"
    handles: dict[int, Any] = {}
    handles_lock = threading.Lock()
    lanes = ReadLanes(n_readers, "geofg-read")

    def read(k: int, unit: WorkUnit) -> _Read:
        """Read (and normalise, unless deferred) on reader thread ``k`` with its own handle."""
        with prof.thread_cpu("reader"):
            reader = handles.get(k)
            if reader is None:
                reader = source.open_reader()
                cache = source.cache_bytes(reader, units, n_readers)
                if cache is not None:
                    reader.cache_bytes = cache
                with handles_lock:
                    handles[k] = reader
            t = time.perf_counter()
            data, valid = reader.read(unit.read)
            prof.add("read", time.perf_counter() - t)
            return data, valid, prepare_unit(unit, data, valid, p, prof.add,
                                             raw=defer or takes_raw(predictor, data.dtype))

    def compute(unit: WorkUnit, k: int, fut: Future) -> _Stage:
        t = time.perf_counter()
        again = lambda: lanes.submit(k, read, k, unit).result()  # noqa: E731 - same reader thread
        data, valid, x = _result_with_retry(fut, again, cfg.max_attempts)
        prof.add("wait_read", time.perf_counter() - t)
        if x is None:
            return data, valid, None
        t = time.perf_counter()
        probs = infer_unit(x, valid, predictor, p, prof.add)
        del x
        trim_heap()
        prof.add("compute", time.perf_counter() - t)
        return data, valid, probs

    def write(unit: WorkUnit, computed: _Stage, attempt: int) -> UnitRecord:
        """Layers from the probabilities, then the chunks and the ledger record (writer thread)."""
        with prof.thread_cpu("writer"):
            data, valid, probs = computed
            del computed
            try:
                out = finish_unit(unit, probs, data, valid, p, prof.add)
            except UNIT_ERRORS as e:
                if stops_run(e):
                    raise
                return _failed(unit, e, attempt)
            del data, valid, probs
            t = time.perf_counter()
            rec = sink.done(unit, out.layers, out.stats, attempt)
            prof.add("write", time.perf_counter() - t)
            return rec

    def _failed(unit: WorkUnit, e: BaseException, attempt: int) -> UnitRecord:
        log.error("unit %s failed: %s", unit.id, e, exc_info=log.isEnabledFor(logging.DEBUG))
        return sink.failed(unit, f"{type(e).__name__}: {e}".splitlines()[0], attempt)

    order = deque(reader_plan(units, n_readers))
    ahead = max(cfg.prefetch, n_readers)  # reads queued beyond the units being computed
    ru, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    try:
        with (
            compute_streams(predictor, cfg.compute_streams) as n_streams,
            ThreadPoolExecutor(n_streams, thread_name_prefix="geofg-compute") as cpool,
            ThreadPoolExecutor(n_writers, thread_name_prefix="geofg-write") as wpool,
        ):
            reads: deque[tuple[WorkUnit, int, Future]] = deque()
            computing: dict[Future, WorkUnit] = {}
            writes: deque[Future] = deque()

            def top_up() -> None:
                while order and len(reads) < ahead and not STOP.is_set():
                    u, k = order.popleft()
                    reads.append((u, k, lanes.submit(k, read, k, u)))

            def drain(limit: int) -> None:
                while len(writes) > limit:
                    t = time.perf_counter()
                    rec = writes.popleft().result()
                    prof.add("wait_write", time.perf_counter() - t)
                    on_unit(rec)

            def finish(fut: Future) -> None:
                unit = computing.pop(fut)
                attempt = attempts.get(unit.id, 0) + 1
                try:
                    out = fut.result()
                except UNIT_ERRORS as e:
                    if stops_run(e):
                        raise
                    drain(0)
                    on_unit(_failed(unit, e, attempt))
                    return
                writes.append(wpool.submit(write, unit, out, attempt))
                drain(n_writers + 1)

            top_up()
            while computing or (reads and not STOP.is_set()):
                while reads and len(computing) < n_streams and not STOP.is_set():
                    unit, k, fut = reads.popleft()
                    computing[cpool.submit(compute, unit, k, fut)] = unit
                    top_up()
                if not computing:
                    continue
                done, _ = wait(list(computing), return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: computing[f].id):
                    finish(fut)
            drain(0)
    finally:
        lanes.shutdown()
        for h in handles.values():
            h.close()
        end = resource.getrusage(resource.RUSAGE_SELF)
        prof.cpu.update(process=end.ru_utime + end.ru_stime - ru.ru_utime - ru.ru_stime,
                        wall=time.perf_counter() - wall, cores=len(os.sched_getaffinity(0)))


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

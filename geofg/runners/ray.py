"""The Ray runner: the local runner's units on Ray actors, one per GPU (one per core without GPUs).

This is the only geofg module that imports ray; :func:`geofg.runners.make_runner` imports it
lazily. Classify and scans run the same actor (:class:`UnitWorker`) with their own source and sink
(:mod:`geofg.runners.base`); a scan runs one Ray run per date inside one :func:`session`.

What travels between processes is small: the source (its plan without its unit list; put
once in the object store and shared by every actor), one :class:`~geofg.grid.WorkUnit` (a
few ints) per call, and one :class:`UnitOutcome` (a ledger record and a few timings) per result.
Pixels never go through the object store: each actor reads its units' windows itself and writes
their chunks and ledger records itself, through its own sink (built from the driver's fields).

Actors
    :class:`UnitWorker` loads the predictor once in ``__init__`` (a restarted actor reloads it;
    nothing assumes earlier state), checks the bundle's sha256 against the plan's, enters its own
    GDAL environment, and reads on threads of its own (:func:`actor_read_threads`), each with its own
    reader from the source (GDAL datasets are never shared between threads). Each
    call names the unit to process and the next units the driver has reserved for this actor
    (``runner.prefetch``, at least one per read thread: :func:`actor_prefetch`); the actor starts reading those before computing the current one, so the model
    does not wait on reads. Which units, and on which read thread: the driver cuts the units with
    the local runner's :func:`~geofg.runners.local.reader_plan` for all the actors' read threads
    together, gives each actor its share in that order (reader *k*: actor *k* mod *n*, its thread
    *k* // *n*) and names each unit's thread in the call, so a thread walks neighbouring units and
    decodes the blocks they share once (with a block cache sized as the local runner's). An actor
    that runs out takes from the end of the share of the actor with most left; re-queued units
    go first to whichever actor asks. The driver keeps :data:`QUEUED_PER_ACTOR` calls queued per actor, so an
    actor does not sit idle waiting for the driver between units. This bookkeeping (shares,
    stealing, what a lost actor costs) is :class:`geofg.runners.schedule.Scheduler`, plain Python
    tested without Ray; this module gives it the actors (:class:`_RayPool`). GPU actors reserve a CPU per
    read thread: ``runner.read_workers``, else :meth:`~geofg.config.RunnerConfig.io_threads`'s
    readers for the cluster's CPUs per GPU. CPU actors take one core each and read on 2 threads.

    GPU actors leave each unit's layers and writes to write threads of their own
    (:func:`actor_write_threads`, :class:`WriteBehind`) and take the next unit while they run: a
    call returns once the model has run, and later replies carry the outcomes of the units
    written meanwhile (a final ``drain`` call collects the last). CPU actors write on the thread
    that ran the model. Every actor process starts with one reused glibc heap
    (:func:`geofg.runtime.worker_env`) and keeps one GDAL block-cache size for its whole life
    (:func:`geofg.runners.actor_sizing.actor_cache_bytes`).

Failures (../shared/RELIABILITY.md R1-R8)
    * An exception inside a unit (a corrupt block, a model error) comes back as a failure and the
      driver records the unit failed at once, as the local runner does (reads are first retried on
      ``OSError``, as there).
    * A lost actor (any ``RayActorError``, i.e. ``ActorDiedError`` *or* ``ActorUnavailableError``;
      also a worker killed for memory or a lost node) costs one attempt to the unit it was
      running (with none running, the oldest unit still being written without a record); the
      units queued behind it go back to the queue without charge. Which unit was
      running is read from the ledger: the actor's calls run in order, and a call whose reply died
      with the actor but whose record is on disk (this run, this attempt) finished. The actor is killed
      for good and replaced (up to a budget) and the unit goes to the front of the queue. After
      ``runner.max_attempts`` losses the driver records the unit failed and the run goes on; the
      run then ends with exit 4 through :class:`~geofg.errors.RunFailedUnitsError`.
    * Actors run with ``max_restarts=0`` and ``max_task_retries=0``: Ray never re-runs a call
      behind the driver's back, so every attempt is one the driver counted. A unit that runs twice
      (its actor killed after the chunks were written) is harmless: unit writes are whole chunks
      and idempotent, the ledger record comes after the data, and there is one record per unit.
    * An actor that cannot start (the bundle or an input missing or different on a node) ends the
      run with :class:`~geofg.errors.ClusterError` (exit 5): every retry would fail the same way.

Connecting (RELIABILITY.md R10)
    With no address (``runner.address`` or ``RAY_ADDRESS``) a local Ray is started with one CPU
    per core and token authentication on; when no token exists yet, geofg writes one to
    ``~/.ray/auth_token`` with mode 0600 (Ray itself would write it 0644). With an address, geofg
    first checks the port is reachable (an unreachable GCS makes ``ray.init`` retry for minutes),
    connects, and then sends one *unauthenticated* ``GET /api/jobs/`` to the cluster's dashboard:
    an answer of 200 means token authentication is off and anyone who can reach the cluster can run
    code on it, so the run stops with :class:`~geofg.errors.InsecureClusterError` (exit 5) before
    any actor starts, unless ``runner.allow_insecure_cluster``. If this process is already
    connected to Ray (a notebook, a test), that connection is used as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import (
    AuthenticationError,
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    RayActorError,
    WorkerCrashedError,
)

from geofg.config import RunnerConfig
from geofg import signals
from geofg.errors import UNIT_ERRORS, ClusterError, InputChangedError, stops_run
from geofg.grid import WorkUnit
from geofg.io.ledger import UnitRecord
from geofg.io.read import GDAL_OPTIONS, gdal_env
from geofg.runtime import worker_env
from geofg.pipeline import Predictor, finish_unit, infer_unit, prepare_unit, takes_raw
from geofg.runners.cluster import check_cluster_auth, ensure_token_file, probe
from geofg.runners.actor_sizing import (  # re-exported: tests
    _actor_shape,
    actor_prefetch,
    actor_read_threads,
    actor_write_threads,
)
from geofg.runners.base import RunTimes, Source
from geofg.runners.local import _result_with_retry
from geofg.runners.schedule import QUEUED_PER_ACTOR, Scheduler, last_line
from geofg.runners.schedule import actor_shares  # noqa: F401 (re-exported: tests, benchmarks)
from geofg.runners.threads import ActorReads, WriteBehind

__all__ = [
    "ACTOR_OPTIONS",
    "QUEUED_PER_ACTOR",
    "WORKER_ENV",
    "UnitOutcome",
    "RayRunner",
    "UnitWorker",
    "jobs_client",
    "run_ray",
    "session",
]

log = logging.getLogger(__name__)

OnUnit = Callable[[UnitRecord], None]
PredictorFactory = Callable[[Any], Predictor]

#: Errors meaning "the unit's worker is gone" (the unit may or may not have run): retried.
LOST = (RayActorError, OutOfMemoryError, ObjectLostError, WorkerCrashedError, NodeDiedError,
        GetTimeoutError)

#: Seconds a lost actor's replacement waits for the cluster to free its resources (see _RayPool.can_start).
ROOM_WAIT_S = 5.0

#: Ray options of every actor. No restarts and no task retries: the driver does all retrying.
ACTOR_OPTIONS: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0,
                                 "scheduling_strategy": "SPREAD"}

#: Environment of every actor process (``runtime_env.env_vars``), on top of the job's: geofg's
#: GDAL options (no sidecars, no network, no credential lookups; see docs/input.md) hold in the
#: whole process even before the actor enters its own ``rasterio.Env``. The driver adds
#: :func:`geofg.runtime.worker_env` (one reused glibc heap, as ``geofg classify`` has).
WORKER_ENV: dict[str, str] = {**GDAL_OPTIONS, "HF_HUB_OFFLINE": "1"}

STAGES = ("read", "read_cpu", "wait_read", "compute", "write")
"""Seconds an actor reports per unit: read includes normalising (on the read thread), and
read_cpu is that read thread's CPU time for it (decoding; under contention, read > read_cpu)."""


@dataclasses.dataclass(frozen=True, slots=True)
class UnitOutcome:
    """What an actor returns for one unit: its record (done) or a one-line error, and timings."""

    unit_id: str
    record: UnitRecord | None
    error: str | None
    seconds: dict[str, float]


class UnitWorker:
    """One Ray actor: a model loaded once, its own read threads and GDAL env, its own sink.

    The same actor runs classify and scan units: they differ only in the source and the sink.

    Args:
        source: where units are read from and which model runs (:class:`~geofg.runners.base.Source`:
            classify's :class:`~geofg.runners.local.RasterSource`, its plan without units, or a
            scan date's :class:`~geofg.scan.units.ScanSource`).
        sink_type: the driver's sink class (:class:`~geofg.io.sink.UnitSink`,
            :class:`~geofg.scan.units.ScanSink`); the actor builds its own from ``sink_args``.
        sink_args: the fields of the driver's sink.
        device: ``"cuda"`` (Ray shows a GPU actor only its own GPU) or ``"cpu"``.
        predictor_factory: builds the predictor from the plan instead of the source loading the
            model file (tests and custom models); it travels pickled, so it must be a function,
            never a loaded model.

    Raises:
        WeightsChecksumError: the bundle on this node is not the one the driver planned with.
        InputError: an input is missing or changed on this node.
    """

    def __init__(self, source: Source, sink_type: type, sink_args: dict[str, Any], device: str,
                 predictor_factory: PredictorFactory | None = None) -> None:
        self._source = source
        self._plan = p = source.plan
        self._env = contextlib.ExitStack()
        lanes = actor_read_threads(p.job.runner, device)
        # rasterio sets GDAL's block cache process-wide on entering an env and restores it on
        # leaving, shrinking (flushing) the cache then: the actor's env and every read's use the
        # same size, or each read would leave the cache at the outer size and its lanes' shared
        # blocks would be decoded again (measured: 250 ms of read CPU per 1152² unit, not ~110)
        probe = source.open_reader()  # inputs missing or changed: fail now
        try:
            self._cache_bytes = source.cache_bytes(probe, None, lanes)
        finally:
            probe.close()
        self._env.enter_context(gdal_env(self._cache_bytes))
        if predictor_factory is None:
            self._predictor: Predictor = source.load_predictor(device, check=True)
        else:
            self._predictor = predictor_factory(p)
        self._local = threading.local()
        self._readers: list[Any] = []
        self._readers_lock = threading.Lock()
        self._reads = ActorReads(lanes, self._read, "geofg-read")
        self._sink = sink_type(**sink_args)
        self._writes = WriteBehind(actor_write_threads(p.job.runner, device))

    def pid(self) -> int:
        """Return the actor's process id (tests kill it with it)."""
        return os.getpid()

    def _read(self, unit: WorkUnit) -> tuple[Any, Any, Any, float, float]:
        """Read and normalise a unit's window on a read thread, with that thread's own reader.

        Normalising here keeps it off the thread that drives the device.
        """
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = self._source.open_reader(self._cache_bytes)
            with self._readers_lock:
                self._readers.append(reader)
        t, cpu = time.perf_counter(), time.thread_time()
        data, valid = reader.read(unit.read)
        x = prepare_unit(unit, data, valid, self._plan, raw=takes_raw(self._predictor, data.dtype))
        return data, valid, x, time.perf_counter() - t, time.thread_time() - cpu

    def process(self, unit: WorkUnit, attempt: int, upcoming: Sequence[WorkUnit] = (),
                lanes: dict[str, int] | None = None) -> list[UnitOutcome]:
        """Read (or take the prefetched read of), predict and write one unit; prefetch ``upcoming``.

        ``lanes`` names the read thread of each unit (the driver's :func:`reader_plan`), so that
        each thread walks its own run of neighbouring units and reuses their shared blocks.

        With write threads (:func:`actor_write_threads`: GPU actors), the unit's layers, chunks
        and ledger record are left to them, and the call returns once the model has run, so the
        device computes the next unit while this one is written. At most as many units as there
        are write threads are left being written when a call returns.

        Returns:
            Outcomes, oldest first: of this unit when written here or failed before writing, and of
            the units the write threads finished since the last call. An outcome holds the unit's
            ledger record (written after its chunks) or a one-line error (the driver records the
            failure).
        """
        seconds = dict.fromkeys(STAGES, 0.0)
        lanes = lanes or {}
        fut = self._reads.take(unit, upcoming, lanes)
        try:
            t = time.perf_counter()
            again = lambda u=unit: self._reads.read(u, lanes).result()  # noqa: E731
            data, valid, x, seconds["read"], seconds["read_cpu"] = _result_with_retry(
                fut, again, self._plan.job.runner.max_attempts
            )
            seconds["wait_read"] = time.perf_counter() - t
            t = time.perf_counter()
            probs = None if x is None else infer_unit(x, valid, self._predictor, self._plan)
            del x
            seconds["compute"] = time.perf_counter() - t
        except UNIT_ERRORS as e:
            if stops_run(e):  # a changed input or a full disk stops the run on the driver
                raise
            return [*self._writes.finished(), _failed(unit, e, seconds)]
        return self._writes.submit(self._write, unit, probs, data, valid, attempt, seconds)

    def _write(self, unit: WorkUnit, probs: Any, data: Any, valid: Any, attempt: int,
               seconds: dict[str, float]) -> UnitOutcome:
        """A unit's layers from its probabilities, then its chunks and ledger record."""
        try:
            t = time.perf_counter()
            out = finish_unit(unit, probs, data, valid, self._plan)
            del probs, data, valid
            rec = self._sink.done(unit, out.layers, out.stats, attempt)
            seconds["write"] = time.perf_counter() - t
        except UNIT_ERRORS as e:
            if stops_run(e):
                raise
            return _failed(unit, e, seconds)
        return UnitOutcome(unit.id, rec, None, seconds)

    def drain(self) -> list[UnitOutcome]:
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


def _failed(unit: WorkUnit, e: BaseException, seconds: dict[str, float]) -> UnitOutcome:
    log.error("unit %s failed: %s", unit.id, e, exc_info=log.isEnabledFor(logging.DEBUG))
    return UnitOutcome(unit.id, None, f"{type(e).__name__}: {e}".splitlines()[0], seconds)


# --- connecting --------------------------------------------------------------------------------


def _connect(cfg: RunnerConfig) -> bool:
    """Join or start Ray; return True when this call connected (and must disconnect after)."""
    if ray.is_initialized():
        log.info("using this process's existing Ray connection")
        return False
    try:
        return _init(cfg)
    finally:
        signals.install()  # ray.init replaces the SIGTERM handler with one that exits at once


def _init(cfg: RunnerConfig) -> bool:
    """Connect as :func:`_connect` says (no connection yet)."""
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local"):
        if not (os.environ.get("RAY_AUTH_MODE") or os.environ.get("RAY_AUTH_TOKEN")
                or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            ensure_token_file(Path.home() / ".ray" / "auth_token")
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 logging_level=logging.WARNING)
        return True
    probe(address)
    try:
        ctx = ray.init(address=address, logging_level=logging.WARNING)
    except AuthenticationError as e:
        raise ClusterError(
            f"the Ray cluster at {address} refused this driver's token ({str(e).splitlines()[0]}); "
            "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(
            f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}; check "
            "--ray-address or RAY_ADDRESS and that the head node is up"
        ) from None
    if not cfg.allow_insecure_cluster:
        try:
            check_cluster_auth(ctx.dashboard_url)
        except BaseException:
            ray.shutdown()
            raise
    return True


def jobs_client(address: str | None) -> Any:
    """Return a ``ray.job_submission.JobSubmissionClient`` for a cluster's Jobs API.

    Args:
        address: the dashboard URL (``http://head:8265``); None uses ``RAY_API_SERVER_ADDRESS``
            or ``RAY_ADDRESS`` as Ray does. With token auth on, the client sends the token found
            in ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` when
            ``RAY_AUTH_MODE=token``.

    Raises:
        ClusterError: unreachable, or the cluster refused the request (exit 5).
    """
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as e:
        msg = last_line(str(e)) or type(e).__name__
        hint = ("; the cluster wants a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or "
                "RAY_AUTH_TOKEN_PATH" if "401" in msg or "uthenticat" in msg else
                "; check --address (the dashboard URL, e.g. http://head:8265) or RAY_ADDRESS")
        raise ClusterError(f"cannot reach the Ray Jobs API at {address or 'RAY_ADDRESS'}: {msg}{hint}") from None


# --- the driver --------------------------------------------------------------------------------


class _RayPool:
    """The :class:`~geofg.runners.schedule.Pool` of one Ray run: actors of one class and options."""

    lost = LOST

    def __init__(self, source: Source, sink: Any, device: str, resources: dict[str, float],
                 predictor_factory: PredictorFactory | None) -> None:
        self.source_ref = ray.put(dataclasses.replace(source, plan=_slim(source.plan)))  # type: ignore[type-var]
        self.sink_type = type(sink)
        self.sink_args = {f.name: getattr(sink, f.name) for f in dataclasses.fields(sink)}
        if not isinstance(sink.path, str) or not sink.path.startswith("s3://"):  # s3:// stays a URL
            self.sink_args["path"] = Path(sink.path).resolve()
        self.worker = ray.remote(UnitWorker)
        self.run_id = sink.run_id
        self.batch = uuid.uuid4().hex[:6]  # several drivers in one run (a scan's dates): unique names
        env = {**WORKER_ENV, **worker_env()}  # glibc and torch read these when the process starts
        self.options = {**resources, **ACTOR_OPTIONS, "runtime_env": {"env_vars": env}}
        self.device = device
        self.factory = predictor_factory
        self.started = 0

    def can_start(self) -> bool:
        """Whether the cluster has the CPUs (and GPUs) for one more actor, waiting up to
        :data:`ROOM_WAIT_S` for a dead actor's resources to be released. A node that died takes its
        resources with it: a replacement asked for then would never be placed (seen with a second
        node's raylet killed: two units stayed queued on the pending actor and the run hung)."""
        need = {"CPU": float(self.options.get("num_cpus", 0) or 0), "GPU": float(self.options.get("num_gpus", 0) or 0)}
        deadline = time.monotonic() + ROOM_WAIT_S
        while True:
            free = ray.available_resources()
            if all(free.get(k, 0.0) >= v for k, v in need.items() if v):
                return True
            if time.monotonic() > deadline:
                log.warning("no room in the Ray cluster for a replacement actor (free: %s); the actors left "
                            "take over its units", {k: free.get(k, 0.0) for k in need})
                return False
            time.sleep(0.2)

    def start(self) -> tuple[Any, str]:
        name = f"geofg-{self.run_id}-{self.batch}-{self.started}"
        self.started += 1
        actor = self.worker.options(name=name, **self.options).remote(
            self.source_ref, self.sink_type, self.sink_args, self.device, self.factory)
        return actor, name

    def process(self, worker: Any, unit: WorkUnit, attempt: int, upcoming: list[WorkUnit],
                lanes: dict[str, int]) -> Any:
        return worker.process.remote(unit, attempt, upcoming, lanes)

    def drain(self, worker: Any) -> Any:
        return worker.drain.remote()

    def wait(self, calls: list[Any]) -> Any:
        ready, _ = ray.wait(calls, num_returns=1)
        return ready[0]

    def get(self, call: Any, timeout: float | None = None) -> Any:
        return ray.get(call, timeout=timeout)

    def start_failure(self, error: BaseException) -> BaseException | None:
        if not (isinstance(error, RayActorError) and error.actor_init_failed):
            return None
        changed = re.search(r"InputChangedError: (.+)", str(error))
        if changed:  # the input changed under the run before this actor started: exit 3
            return InputChangedError(changed.group(1).strip())
        return ClusterError(
            f"a Ray actor could not start: {last_line(str(error))}; every node needs geofg, "
            "the model bundle and the inputs at the same paths as the driver"
        )

    def kill(self, worker: Any) -> None:
        with contextlib.suppress(Exception):
            ray.kill(worker, no_restart=True)

    def close(self, workers: list[Any]) -> None:
        closing = [w.close.remote() for w in workers]
        with contextlib.suppress(Exception):
            ray.wait(closing, num_returns=len(closing), timeout=30)


def _run_on_actors(source: Source, units: Sequence[WorkUnit], on_unit: OnUnit, attempts: dict[str, int],
                   sink: Any, predictor_factory: PredictorFactory | None) -> dict[str, float]:
    """Size the actors for the connected cluster and run ``units`` on them."""
    p = source.plan
    device, n, resources = _actor_shape(p, len(units))
    prefetch = actor_prefetch(p.job.runner, device, resources)
    lanes = actor_read_threads(p.job.runner, device, resources.get("num_cpus", 1))
    pool = _RayPool(source, sink, device, resources, predictor_factory)
    scheduler = Scheduler(pool, units, n, lanes, prefetch, p.job.runner.max_attempts, attempts,
                          on_unit, sink, STAGES)
    log.info("Ray runner: %d %s actor(s) for %d units", n, device.upper(), len(units))
    return scheduler.run()


def _slim(p: Any) -> Any:
    """The plan as actors get it: without its unit list, the model path absolute (when a file)."""
    names = {f.name for f in dataclasses.fields(p)}
    changes: dict[str, Any] = {"units": ()} if "units" in names else {}
    model = Path(p.model_path)
    if "model_path" in names and model.is_file():
        changes["model_path"] = str(model.resolve())
    return dataclasses.replace(p, **changes) if changes else p


def run_ray(
    source: Source,
    units: Sequence[WorkUnit],
    on_unit: OnUnit,
    attempts: dict[str, int] | None,
    sink: Any,
    predictor_factory: PredictorFactory | None = None,
) -> dict[str, float]:
    """Process ``units`` on Ray actors; every unit ends as a ledger record passed to ``on_unit``.

    Args:
        source: where units are read from and which model runs (a dataclass with a ``plan``
            field: its unit list, if any, stays on the driver).
        units: the units to run (those without a current ledger record).
        on_unit: called on the driver with each unit's record, done or failed.
        attempts: the units' attempt counts from earlier runs (the ledger).
        sink: the driver's sink (a dataclass: :class:`~geofg.io.sink.UnitSink` or
            :class:`~geofg.scan.units.ScanSink`); it records failed units, and its type and fields
            tell each actor how and where to write.
        predictor_factory: see :class:`UnitWorker`.

    Returns:
        Seconds per stage, summed over units and actors (read, read_cpu, wait_read, compute, write).

    Raises:
        ClusterError: the cluster is unreachable, every actor died, or actors cannot start (5).
        InsecureClusterError: the cluster accepts unauthenticated requests (5).
    """
    connected = _connect(source.plan.job.runner)
    try:
        return _run_on_actors(source, units, on_unit, attempts or {}, sink, predictor_factory)
    finally:
        if connected:
            ray.shutdown()


class RayRunner:
    """The Ray :class:`~geofg.runners.base.Runner`: :func:`run_ray`."""

    def __init__(self, predictor_factory: PredictorFactory | None = None) -> None:
        self._factory = predictor_factory

    def prepare(self, source: Source) -> None:
        """Nothing: each actor loads its own model."""

    def run(self, source: Source, units: Sequence[WorkUnit], sink: Any, on_unit: OnUnit,
            attempts: dict[str, int] | None = None) -> RunTimes:
        """:func:`run_ray`; the seconds per stage (no CPU times)."""
        return RunTimes(run_ray(source, units, on_unit, attempts, sink, self._factory))


@contextlib.contextmanager
def session(cfg: RunnerConfig) -> Iterator[None]:
    """Stay connected to Ray (joined or started as :func:`run_ray` does) for several runs.

    :func:`run_ray` calls inside use this connection instead of connecting and shutting down
    each time (a scan runs one per date). A connection this process already had is left open.

    Raises:
        ClusterError, InsecureClusterError: as :func:`run_ray` (exit 5).
    """
    connected = _connect(cfg)
    try:
        yield
    finally:
        if connected:
            ray.shutdown()

"""Run a job end to end on the driver: plan, prepare the mosaic, run units, finalize, report.

Order matters for safety:

1. :func:`geofg.pipeline.plan` checks inputs and model; nothing is written yet (exit 3 leaves no
   output).
2. The output is checked read-only (another grid -> exit 3, untouched), then the run lock is taken
   (held by a live run -> exit 6), then the mosaic is created or opened ``r+``.
3. Units without a current ledger record run; each writes its chunks, then its record. A unit
   whose record is current but whose chunks are missing or not the size it wrote runs again
   (:attr:`RunResult.repaired`).
4. Provenance is written; metadata is consolidated only when every unit is done.

How faults end (docs/reliability.md): an input changed during the run stops it with exit 3
(:class:`~geofg.errors.InputChangedError`); a write the disk refuses (full, read-only) with exit
7 (:class:`~geofg.errors.OutputWriteError`); SIGTERM/SIGINT with exit 8 after the units in flight
(:mod:`geofg.signals`). The lock is released in every case and the next run resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geofg.config import JobConfig
from geofg.errors import (
    ClusterError,
    GeofgError,
    InputChangedError,
    MosaicExistsError,
    MosaicLockedError,
    OutputWriteError,
    RunFailedUnitsError,
    RunInterruptedError,
)
from geofg.io import mosaic as mz
from geofg.io.ledger import UnitRecord
from geofg.io.sink import UnitSink
from geofg.io.store import Folder, Target, is_object_target, ledger_for, lock_for, output_target
from geofg.pipeline import Plan, plan
from geofg.report import RunSummary, summarise
from geofg.signals import STOP, interrupted_error, stop_on_signals

log = logging.getLogger(__name__)

OnProgress = Callable[[int, int, float], None]  # (units done, units total, km² done)


@dataclass
class RunResult:
    """What a run did: its plan, the units it ran, and the mosaic-wide summary."""

    plan: Plan
    run_id: str
    ran: list[str] = field(default_factory=list)
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    repaired: dict[str, str] = field(default_factory=dict)
    """Units whose record was current but whose chunks were missing or damaged (redone), with why."""
    summary: RunSummary | None = None
    quicklook: Path | None = None
    profile: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds by thread of the local runner's unit loop (:attr:`geofg.runners.local.Profile.cpu`)."""


def run_job(
    job: JobConfig,
    on_progress: OnProgress | None = None,
    predictor_factory: Callable[[Plan], object] | None = None,
) -> RunResult:
    """Run ``job`` and return what happened.

    Raises:
        GeofgError: rejected input or an input changed during the run (3), locked mosaic (6),
            failed units (4, after finishing the rest; the mosaic is consistent and a re-run
            resumes), a write the disk refused (7) or SIGTERM/SIGINT (8; both resumable).
    """
    out = output_target(job.write.output)
    p = plan(job)
    overwrite = job.write.mode == "overwrite"
    existed = mz.check_output(out, p.spec, overwrite, (*job.read.inputs, *p.info.paths))
    folder_existed = Folder(out).is_dir() if not is_object_target(out) else True
    run_id = uuid.uuid4().hex[:12]
    lost: list[str] = []

    def on_lost() -> None:  # the lock's lease was taken over: stop, exit 6
        lost.append(run_id)
        STOP.set("the loss of the lock's lease")

    lock = take_lock(out, run_id, job.write.break_lock, on_lost=on_lost)
    try:
        try:
            with stop_on_signals():
                return _run_locked(p, out, existed, overwrite, run_id, on_progress, predictor_factory)
        finally:
            lock.release()
    except RunInterruptedError:
        if lost:  # the lease was taken over by another run (S3): it stopped this one
            raise MosaicLockedError(
                f"{out}: run {run_id} lost the lock's lease to another run while writing and stopped; "
                "units recorded so far are kept; let that run finish (or re-run to resume)") from None
        raise
    except InputChangedError as e:
        raise InputChangedError(_one_line(getattr(e, "cause", None) or e)) from None
    except ClusterError:
        if not existed:  # nothing ran: leave no empty mosaic behind
            mz.remove_unused(out, p.spec, keep_folder=folder_existed)
        raise
    except OSError as e:
        if isinstance(e, GeofgError):
            raise
        raise output_error(out, getattr(e, "cause", None) or e) from None


def verify_mosaic(path: Target, break_lock: bool = False) -> dict[str, str]:
    """Check every done unit's chunks (size as written, decodable with a valid crc32c); return the
    damaged units with why, after marking them failed in the ledger so the next run redoes them.

    Takes the run lock while it checks (a run writing the mosaic meanwhile -> exit 6).

    Raises:
        MosaicExistsError, MosaicDamagedError: not a mosaic, or its metadata is damaged (3).
        MosaicLockedError: another run holds the lock (6).
    """
    if not mz.is_mosaic(path):
        raise MosaicExistsError(f"{path}: expected a geofg mosaic (a Zarr group with geofg:grid), "
                                "found none; give the -o path of a geofg run")
    mz.open_checked(path)
    ledger = ledger_for(path)
    lock = lock_for(path, uuid.uuid4().hex[:12])
    try:
        lock.acquire(break_foreign=break_lock)
    except OSError as e:
        if isinstance(e, GeofgError):
            raise
        raise output_error(path, e) from None
    damaged: dict[str, str] = {}
    try:
        listing = mz.list_chunks(path)
        for uid, rec in sorted(ledger.load().items()):
            if rec.status != "done" or not rec.chunks:
                continue
            why = mz.check_chunks(path, rec.chunks, decode=True, listing=listing)
            if why is not None:
                damaged[uid] = why
                ledger.write(dataclasses.replace(
                    rec, status="failed", error=f"damaged chunk found by geofg info --verify: {why}"))
    finally:
        lock.release()
    return damaged


def _one_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def take_lock(out: Target, run_id: str, break_foreign: bool, on_lost: Callable[[], object] | None = None) -> Any:
    """Take the mosaic's run lock (classify and scan): a lock file on disk, a lease on S3.

    ``on_lost`` is called when another run takes an S3 lease over (see :mod:`geofg.io.lease`).

    Raises:
        MosaicLockedError: another run holds the lock (exit 6).
        OutputWriteError: the folder or the lock cannot be written (exit 7).
    """
    try:
        lock = lock_for(out, run_id, **({"on_lost": on_lost} if is_object_target(out) else {}))
        lock.acquire(break_foreign=break_foreign)
    except OSError as e:
        if isinstance(e, GeofgError):
            raise
        raise output_error(out, e) from None
    return lock


def output_error(out: Target, e: OSError) -> OutputWriteError:
    """The one-line error of a write the file system refused (exit 7)."""
    where = f" {e.filename}" if e.filename else ""
    return OutputWriteError(
        f"{out}: could not write{where} ({e.strerror or e}); units written so far are recorded and "
        "the mosaic is consistent: free space or make it writable, then re-run the same command to "
        "resume (or --overwrite to replace it)"
    )


def _run_locked(
    p: Plan,
    out: Target,
    existed: bool,
    overwrite: bool,
    run_id: str,
    on_progress: OnProgress | None,
    predictor_factory: Callable[[Plan], object] | None,
) -> RunResult:
    ledger = ledger_for(out)
    if existed and not overwrite:
        mz.check_output(out, p.spec, overwrite=False)  # re-check under the lock
        mz.drop_consolidated(out)
        mz.sweep_partials(out)
        ledger.sweep_temp()
    else:
        ledger.remove_all()
        mz.create(out, p.spec, p.provenance())
    records = ledger.load()
    key = {
        "input_fingerprint": p.info.fingerprint,
        "model_sha256": p.model_sha256,
        "config_hash": p.config_hash,
    }
    pending, repaired = [], {}
    listing = mz.list_chunks(out) if records else None  # S3: one LIST instead of a HEAD per chunk
    for u in p.units:
        r = records.get(u.id)
        if not ledger.is_current(r, **key):
            pending.append(u)
        elif r is not None and r.chunks and (why := mz.check_chunks(out, r.chunks, listing=listing)) is not None:
            repaired[u.id] = why
            pending.append(u)
    if repaired:
        log.warning("%d unit(s) recorded done had missing or damaged chunks; redoing them: %s",
                    len(repaired), "; ".join(f"{k} ({v})" for k, v in list(repaired.items())[:5]))
    attempts = {uid: r.attempt for uid, r in records.items()}
    result = RunResult(plan=p, run_id=run_id, skipped=len(p.units) - len(pending), repaired=repaired)
    log.info("%d units planned, %d already done, %d to run", len(p.units), result.skipped, len(pending))

    km2_per_px = p.pixel_area_m2 / 1e6
    done_px = sum(u.core.size for u in p.units if u not in pending)
    progress = [result.skipped, done_px]

    def on_unit(rec: UnitRecord) -> None:
        records[rec.unit_id] = rec
        result.ran.append(rec.unit_id)
        if rec.status == "failed":
            result.failed[rec.unit_id] = rec.error or "failed"
        unit = units_by_id[rec.unit_id]
        progress[0] += 1
        progress[1] += unit.core.size
        if on_progress:
            on_progress(progress[0], len(p.units), progress[1] * km2_per_px)

    units_by_id = {u.id: u for u in p.units}
    if on_progress:
        on_progress(progress[0], len(p.units), progress[1] * km2_per_px)
    if pending:
        sink = UnitSink(out, run_id, **key)
        _execute(p, pending, sink, on_unit, attempts, result, predictor_factory)

    result.summary = summarise(p, records)
    stopped = STOP.is_set()
    complete = not stopped and not result.failed and all(
        ledger.is_current(records.get(u.id), **key) for u in p.units
    )
    mz.finalize(out, {**p.provenance(), "geofg:summary": result.summary.to_dict()}, complete)
    if p.job.write.quicklook and complete:
        result.quicklook = _quicklook(out)
    if stopped:
        err = interrupted_error(f"{out}: {len(result.ran)} units finished this run, "
                                f"{len(p.units) - progress[0]} left")
        err.result = result  # type: ignore[attr-defined]
        raise err
    if result.failed:
        ids = ", ".join(sorted(result.failed)[:10])
        more = f" (+{len(result.failed) - 10} more)" if len(result.failed) > 10 else ""
        first = next(iter(result.failed.values()))
        err = RunFailedUnitsError(
            f"{out}: {len(result.failed)} of {len(p.units)} units failed: {ids}{more} "
            f"(first cause: {first}); fix the cause and re-run the same command to retry only those"
        )
        err.result = result  # type: ignore[attr-defined]
        raise err
    return result


def _quicklook(out: Target) -> Path | None:
    """Write the quicklook PNG beside the mosaic (on S3: the object ``PREFIX.png``)."""
    from geofg.io.export import quicklook_path, write_quicklook

    if not is_object_target(out):
        return write_quicklook(out, quicklook_path(out))
    import tempfile

    from geofg.io.objstore import ObjectPrefix

    with tempfile.TemporaryDirectory(prefix="geofg-quicklook-") as tmp:
        png = write_quicklook(out, Path(tmp) / "quicklook.png")
        root = ObjectPrefix.of(str(out))
        ObjectPrefix(root.bucket, root.prefix + ".png").put("", png.read_bytes())
    return None


def _execute(p: Plan, pending: list, sink: UnitSink, on_unit: Callable[[UnitRecord], None],
             attempts: dict[str, int], result: RunResult,
             predictor_factory: Callable[[Plan], object] | None) -> None:
    from geofg.runners import make_runner  # ray is imported only in runners/ (pyproject contracts)
    from geofg.runners.local import RasterSource

    times = make_runner(p.job.runner.kind, predictor_factory).run(RasterSource(p), pending, sink,
                                                                 on_unit, attempts)
    result.profile, result.cpu = times.seconds, times.cpu

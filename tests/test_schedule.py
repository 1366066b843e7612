"""The Ray driver's bookkeeping (geofg.runners.schedule) on fake workers: no Ray, no rasters.

A :class:`FakePool` runs each worker's calls in order, in this process, when the scheduler asks
for a reply; a script says what each (worker, unit, attempt) does: finish, fail, kill its worker,
or write its record and then kill its worker (the reply dies, the record is on disk). Workers may
leave units to write threads (``writers``): a call then replies with the outcomes of the units
written since, as :class:`geofg.runners.ray.UnitWorker` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from geofg import signals
from geofg.errors import ClusterError
from geofg.grid import WorkUnit, plan_units
from geofg.io.ledger import Ledger, UnitRecord
from geofg.runners.schedule import QUEUED_PER_ACTOR, Scheduler, actor_shares

RUN = "run0"


class Lost(Exception):
    """A fake worker's death, as Ray's ``RayActorError``."""


def record(unit_id: str, status: str, attempt: int, error: str | None = None) -> UnitRecord:
    return UnitRecord(unit_id=unit_id, status=status, input_fingerprint="f", model_sha256="m",  # type: ignore[arg-type]
                      config_hash="c", attempt=attempt, empty=False, stats={}, run_id=RUN,
                      finished_at="2026-01-01T00:00:00+00:00", error=error)


@dataclasses.dataclass
class Sink:
    ledger: Ledger
    run_id: str = RUN

    def failed(self, unit: WorkUnit, error: str, attempt: int) -> UnitRecord:
        rec = record(unit.id, "failed", attempt, error)
        self.ledger.write(rec)
        return rec


@dataclasses.dataclass(frozen=True)
class Outcome:
    unit_id: str
    record: UnitRecord | None
    error: str | None
    seconds: dict[str, float]


@dataclasses.dataclass(eq=False)
class Call:
    worker: FakeWorker
    unit: WorkUnit | None  # None: drain
    attempt: int = 0
    upcoming: tuple[WorkUnit, ...] = ()
    lanes: dict[str, int] = dataclasses.field(default_factory=dict)
    done: bool = False
    reply: Any = None
    lost: bool = False


@dataclasses.dataclass(eq=False)
class FakeWorker:
    index: int  # the order it was started in
    writers: int
    queue: list[Call] = dataclasses.field(default_factory=list)
    held: list[Outcome] = dataclasses.field(default_factory=list)  # units left to its write threads
    dead: bool = False
    closed: bool = False


Script = Callable[[int, WorkUnit, int], str]  # (worker index, unit, attempt) -> what happens


class FakePool:
    """Workers that run their calls in order; ``wait`` returns the oldest call, or the oldest of
    the workers in ``prefer`` when they have any (the others are slow)."""

    lost = (Lost,)

    def __init__(self, ledger: Ledger, script: Script | None = None, writers: int = 0,
                 prefer: tuple[int, ...] = (), fatal: BaseException | None = None,
                 newest_first: bool = False) -> None:
        self.ledger = ledger
        self.newest_first = newest_first  # wait hands out the newest call (Ray may: replies race)
        self.script = script or (lambda w, u, a: "ok")
        self.writers = writers
        self.prefer = prefer
        self.fatal = fatal
        self.workers: list[FakeWorker] = []
        self.calls: list[Call] = []
        self.killed: list[int] = []
        self.room = True  # can_start: the cluster has resources for a replacement

    def can_start(self) -> bool:
        return self.room

    def start(self) -> tuple[Any, str]:
        w = FakeWorker(len(self.workers), self.writers)
        self.workers.append(w)
        return w, f"w{w.index}"

    def process(self, worker: FakeWorker, unit: WorkUnit, attempt: int, upcoming: list[WorkUnit],
                lanes: dict[str, int]) -> Call:
        assert not worker.dead
        call = Call(worker, unit, attempt, tuple(upcoming), dict(lanes))
        worker.queue.append(call)
        self.calls.append(call)
        return call

    def drain(self, worker: FakeWorker) -> Call:
        assert len(self.calls) < 1000, "the driver is spinning (drains answered with nothing)"
        call = Call(worker, None)
        worker.queue.append(call)
        self.calls.append(call)
        return call

    def wait(self, calls: list[Call]) -> Call:
        for index in self.prefer:
            mine = [c for c in calls if c.worker.index == index]
            if mine:
                return mine[0]
        return calls[-1] if self.newest_first else calls[0]

    def get(self, call: Call, timeout: float | None = None) -> Any:
        for c in call.worker.queue:  # a worker runs its calls in order
            if not c.done:
                self._run(c)
            if c is call:
                break
        if call.lost:
            raise Lost(f"Traceback...\nworker {call.worker.index} died")
        return call.reply

    def _run(self, c: Call) -> None:
        c.done = True
        w = c.worker
        if w.dead:
            c.lost = True
            return
        if c.unit is None:
            c.reply, w.held = w.held, []
            return
        what = self.script(w.index, c.unit, c.attempt)
        if what in ("die", "record-then-die"):
            if what == "record-then-die":
                self.ledger.write(record(c.unit.id, "done", c.attempt))
            w.dead = c.lost = True
            return
        if what == "fail":
            outcome = Outcome(c.unit.id, None, "ValueError: bad block", {"read": 1.0})
        else:
            rec = record(c.unit.id, "done", c.attempt)
            self.ledger.write(rec)
            outcome = Outcome(c.unit.id, rec, None, {"read": 1.0, "compute": 2.0})
        if w.writers:  # the unit is left to a write thread; earlier ones come back now
            c.reply, w.held = w.held, [outcome]
        else:
            c.reply = outcome

    def start_failure(self, error: BaseException) -> BaseException | None:
        return self.fatal

    def kill(self, worker: FakeWorker) -> None:
        worker.dead = True
        self.killed.append(worker.index)

    def close(self, workers: list[FakeWorker]) -> None:
        for w in workers:
            w.closed = True

    def ran(self, worker: int) -> list[str]:
        """The units worker ``worker`` was sent, in order."""
        return [c.unit.id for c in self.calls if c.worker.index == worker and c.unit is not None]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / ".geofg")


def run(ledger: Ledger, pool: FakePool, units: list[WorkUnit], workers: int = 2, lanes: int = 1,
        prefetch: int = 1, max_attempts: int = 3, attempts: dict[str, int] | None = None,
        ) -> tuple[Scheduler, list[UnitRecord], dict[str, float]]:
    got: list[UnitRecord] = []
    s = Scheduler(pool, units, workers, lanes, prefetch, max_attempts, attempts or {}, got.append,
                  Sink(ledger), ("read", "compute"))
    seconds = s.run()
    return s, got, seconds


def units_of(rows: int, cols: int) -> list[WorkUnit]:
    return plan_units(rows * 10, cols * 10, 10, 2)


def test_every_unit_runs_once_on_its_share_with_its_lanes(ledger: Ledger) -> None:
    units = units_of(8, 4)
    pool = FakePool(ledger)
    s, got, seconds = run(ledger, pool, units, workers=2, lanes=2, prefetch=2)
    assert sorted(r.unit_id for r in got) == sorted(u.id for u in units)
    assert all(r.status == "done" and r.attempt == 1 for r in got)
    shares, lane = actor_shares(units, 2, 2)
    # oldest-first replies keep the two workers in step: each runs exactly its own share, in order
    assert [pool.ran(k) for k in (0, 1)] == [[u.id for u in share] for share in shares]
    for c in pool.calls:  # each call names its unit's and its reserved units' read threads
        assert c.lanes == {u.id: lane[u.id] for u in (c.unit, *c.upcoming)}
        assert len(c.upcoming) <= 2
    for k in (0, 1):  # each worker reads on both its threads, each walking whole bands of 2 rows
        used = {c.lanes[c.unit.id] for c in pool.calls if c.worker.index == k}
        assert used == {0, 1}
    assert seconds == {"read": 32.0, "compute": 64.0}
    assert all(w.closed for w in pool.workers) and sorted(pool.killed) == [0, 1]
    assert max(len(w.queue) for w in pool.workers) <= len(units)


def test_prefetch_reserves_the_next_units_of_the_share(ledger: Ledger) -> None:
    units = units_of(4, 4)
    pool = FakePool(ledger)
    run(ledger, pool, units, workers=1, lanes=1, prefetch=3)
    first = pool.calls[0]
    share = [u.id for u in actor_shares(units, 1, 1)[0][0]]
    assert first.unit.id == share[0] and [u.id for u in first.upcoming] == share[1:4]
    second = pool.calls[1]  # queued before the first replied: the reserved ones come next
    assert second.unit.id == share[1] and [u.id for u in second.upcoming] == share[2:5]
    assert len({c.unit.id for c in pool.calls}) == len(pool.calls)


def test_a_worker_that_runs_out_steals_the_tail_of_the_others_share(ledger: Ledger) -> None:
    units = units_of(8, 2)
    pool = FakePool(ledger, prefer=(0,))  # worker 1 is slow: its replies come only when 0 has none
    s, got, _ = run(ledger, pool, units, workers=2, prefetch=1)
    shares, _ = actor_shares(units, 2, 1)
    own0, own1 = ([u.id for u in share] for share in shares)
    ran0, ran1 = pool.ran(0), pool.ran(1)
    assert sorted(r.unit_id for r in got) == sorted(u.id for u in units)
    assert len(ran0) + len(ran1) == len(units)
    assert ran0[: len(own0)] == own0  # its own share first, in order
    stolen = ran0[len(own0):]
    assert stolen and set(stolen) <= set(own1)
    assert stolen == own1[::-1][: len(stolen)]  # from the end of the other's share, last first
    assert ran1 == own1[: len(ran1)]  # the slow one kept the head of its share
    assert not set(ran1) & set(own0)


def test_a_lost_worker_charges_only_its_running_unit_and_is_replaced(ledger: Ledger) -> None:
    units = units_of(4, 4)
    victim = actor_shares(units, 2, 1)[0][0][2].id  # the third unit of worker 0's share
    pool = FakePool(ledger, script=lambda w, u, a: "die" if u.id == victim and a == 1 else "ok")
    s, got, _ = run(ledger, pool, units, workers=2, prefetch=2, max_attempts=3)
    assert sorted(r.unit_id for r in got) == sorted(u.id for u in units)
    by_id = {r.unit_id: r for r in got}
    assert by_id[victim].status == "done" and by_id[victim].attempt == 2
    assert all(r.attempt == 1 for uid, r in by_id.items() if uid != victim)  # re-queued, not charged
    assert s.losses == {victim: 1}
    assert len(pool.workers) == 3 and 0 in pool.killed  # replaced once
    retried = [c for c in pool.calls if c.unit is not None and c.unit.id == victim]
    assert [c.attempt for c in retried] == [1, 2]
    # the units queued behind the victim on the dead worker were each run again exactly once
    assert len([c for c in pool.calls if c.unit is not None]) - len(units) <= 1 + QUEUED_PER_ACTOR + 2


def test_a_lost_worker_is_not_replaced_without_room_and_the_others_run_its_units(ledger: Ledger) -> None:
    """A node lost with its worker: no room for a replacement, which would hold the units queued to
    it for ever (issue 19: a second Ray node's raylet killed, the run hung on two units)."""
    units = units_of(4, 4)
    victim = actor_shares(units, 2, 1)[0][0][2].id
    pool = FakePool(ledger, script=lambda w, u, a: "die" if u.id == victim and a == 1 else "ok")
    pool.room = False
    s, got, _ = run(ledger, pool, units, workers=2, prefetch=2, max_attempts=3)
    assert sorted(r.unit_id for r in got) == sorted(u.id for u in units)
    assert len(pool.workers) == 2 and 0 in pool.killed  # not replaced
    assert all(c.worker.index == 1 for c in pool.calls if c.unit is not None and c.unit.id == victim and c.attempt == 2)


def test_a_unit_that_kills_every_worker_fails_after_max_attempts_the_rest_done(ledger: Ledger) -> None:
    units = units_of(4, 2)
    bad = units[3].id
    pool = FakePool(ledger, script=lambda w, u, a: "die" if u.id == bad else "ok")
    s, got, _ = run(ledger, pool, units, workers=2, prefetch=1, max_attempts=3)
    by_id = {r.unit_id: r for r in got}
    assert sorted(by_id) == sorted(u.id for u in units) and len(got) == len(units)
    assert by_id[bad].status == "failed" and "lost its Ray worker 3 times" in by_id[bad].error
    assert "worker" in by_id[bad].error and "died" in by_id[bad].error  # the last line of the cause
    assert all(r.status == "done" for uid, r in by_id.items() if uid != bad)
    assert s.losses[bad] == 3 and len([c for c in pool.calls if c.unit and c.unit.id == bad]) == 3
    assert len(pool.workers) == 2 + 2  # replaced after each loss but the last (nothing left then)
    assert UnitRecord.from_json(ledger.path_for(bad).read_bytes()).status == "failed"


def test_a_unit_whose_record_is_on_disk_is_not_charged_or_rerun(ledger: Ledger) -> None:
    units = units_of(2, 2)
    first, second = (u.id for u in actor_shares(units, 1, 1)[0][0][:2])
    pool = FakePool(ledger, script=lambda w, u, a: "record-then-die" if u.id == first and w == 0 else "ok")
    s, got, _ = run(ledger, pool, units, workers=1, prefetch=1)
    assert sorted(r.unit_id for r in got) == sorted(u.id for u in units) and len(got) == len(units)
    assert len([c for c in pool.calls if c.unit and c.unit.id == first]) == 1  # its record counts
    # the oldest call without a record is taken for the one running: the second unit is charged
    assert s.losses == {second: 1}
    assert {r.unit_id: r.attempt for r in got} == {u.id: 2 if u.id == second else 1 for u in units}


def test_a_stale_record_of_an_earlier_attempt_does_not_count_as_finished(ledger: Ledger) -> None:
    units = units_of(2, 2)
    first = actor_shares(units, 1, 1)[0][0][0].id
    ledger.write(record(first, "done", 1))  # an earlier run's record: attempt 1, this run's is 2
    pool = FakePool(ledger, script=lambda w, u, a: "die" if u.id == first and w == 0 else "ok")
    s, got, _ = run(ledger, pool, units, workers=1, prefetch=1, attempts={first: 1})
    assert s.losses == {first: 1}
    assert {r.unit_id: r.attempt for r in got}[first] == 3


def test_write_threads_outcomes_come_later_and_a_drain_collects_the_last(ledger: Ledger) -> None:
    units = units_of(4, 2)
    pool = FakePool(ledger, writers=1)
    s, got, _ = run(ledger, pool, units, workers=2, prefetch=1)
    assert sorted(r.unit_id for r in got) == sorted(u.id for u in units) and len(got) == len(units)
    drains = [c for c in pool.calls if c.unit is None]
    assert sorted(c.worker.index for c in drains) == [0, 1]  # one per worker, after its last unit
    for w in pool.workers:
        assert w.queue[-1].unit is None


@pytest.mark.parametrize("writers", [0, 1, 2])
def test_replies_handed_out_newest_first_are_settled_in_call_order(ledger: Ledger, writers: int) -> None:
    """Ray may deliver a worker's later reply before an earlier one (seen after a lost actor, with
    write threads: the driver then waited for ever on a unit whose outcome it had already had)."""
    units = units_of(4, 4)
    pool = FakePool(ledger, writers=writers, newest_first=True)
    s, got, _ = run(ledger, pool, units, workers=2, prefetch=2)
    assert sorted(r.unit_id for r in got) == sorted(u.id for u in units)  # each unit, once
    assert all(r.status == "done" and r.attempt == 1 for r in got)
    assert len(pool.calls) <= len(units) + 2  # one drain per worker at most


def test_a_worker_lost_with_units_left_to_its_writers_charges_the_oldest(ledger: Ledger) -> None:
    units = units_of(4, 1)
    order = [u.id for u in actor_shares(units, 1, 1)[0][0]]
    # worker 0 leaves unit 0 to its writer (not yet recorded), then dies on unit 1
    script = lambda w, u, a: "die" if w == 0 and u.id == order[1] else "ok"  # noqa: E731
    pool = FakePool(ledger, script=script, writers=1)
    # unit 0's record is written at once by the fake; remove it to mimic a write still in flight
    orig = pool._run

    def run_call(c: Call) -> None:
        orig(c)
        if c.worker.index == 0 and c.unit is not None and c.unit.id == order[0]:
            ledger.path_for(order[0]).unlink()
    pool._run = run_call  # type: ignore[method-assign]
    s, got, _ = run(ledger, pool, units, workers=1, prefetch=1, max_attempts=3)
    by_id = {r.unit_id: r for r in got}
    assert sorted(by_id) == sorted(order)
    # unit 1's call died with no record, so unit 1 (the oldest unsettled call) is charged
    assert s.losses == {order[1]: 1}
    assert by_id[order[1]].attempt == 2 and by_id[order[0]].attempt == 1


def test_a_worker_that_cannot_start_ends_the_run(ledger: Ledger) -> None:
    pool = FakePool(ledger, script=lambda w, u, a: "die", fatal=ClusterError("a Ray actor could not start"))
    with pytest.raises(ClusterError, match="could not start"):
        run(ledger, pool, units_of(2, 2), workers=1)
    assert all(w.dead for w in pool.workers)


def test_every_worker_lost_with_units_left_is_a_cluster_error(ledger: Ledger) -> None:
    pool = FakePool(ledger, script=lambda w, u, a: "die")
    with pytest.raises(ClusterError, match=r"every Ray actor died \(2 started"):
        run(ledger, pool, units_of(3, 1), workers=1, prefetch=1, max_attempts=1)


def test_a_unit_error_is_recorded_failed_without_a_retry(ledger: Ledger) -> None:
    units = units_of(2, 2)
    bad = units[1].id
    pool = FakePool(ledger, script=lambda w, u, a: "fail" if u.id == bad else "ok")
    s, got, _ = run(ledger, pool, units, workers=2)
    by_id = {r.unit_id: r for r in got}
    assert by_id[bad].status == "failed" and by_id[bad].error == "ValueError: bad block"
    assert len([c for c in pool.calls if c.unit and c.unit.id == bad]) == 1 and not s.losses
    assert len(pool.workers) == 2


def test_stop_sends_no_new_unit(ledger: Ledger) -> None:
    units = units_of(4, 4)
    seen: list[str] = []

    def script(w: int, u: WorkUnit, a: int) -> str:
        seen.append(u.id)
        if len(seen) == 3:
            signals.STOP.set("SIGTERM")
        return "ok"
    pool = FakePool(ledger, script=script)
    try:
        s, got, _ = run(ledger, pool, units, workers=1, prefetch=1)
    finally:
        signals.STOP.clear()
    # the calls already queued when the signal came finish; nothing after them is sent
    assert len(got) == len(pool.calls) <= 3 + QUEUED_PER_ACTOR - 1
    assert len(got) < len(units)

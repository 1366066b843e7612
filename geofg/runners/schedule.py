"""Which unit runs on which remote worker, and what a lost worker costs: the Ray driver's
bookkeeping, without Ray.

:class:`Scheduler` drives a :class:`Pool` of workers (Ray actors in :mod:`geofg.runners.ray`; fake
ones in tests/test_schedule.py). Everything here is plain Python: the pool starts workers, sends
calls and waits on them; this module decides what is sent, to whom, and what each reply or loss
means for the units and the ledger.

Shares and locality
    The units are cut with the local runner's :func:`~geofg.runners.local.reader_plan` for all the
    workers' read threads together (:func:`actor_shares`): reader *k* is read thread *k* // *n* of
    worker *k* mod *n*, so each thread walks neighbouring units and decodes the blocks they share
    once. Each call names the unit to run, the next units reserved for that worker (``prefetch``)
    and each one's read thread.

Stealing
    A worker that runs out of its own share takes from the end of the share of the live worker
    with most left (its tail, which that worker would reach last); with no share left anywhere,
    the last unit reserved by the worker holding most. Re-queued units go first to whichever
    worker asks. :data:`QUEUED_PER_ACTOR` calls are kept queued per worker.

Replies
    A worker runs its calls one at a time, in order, and each reply is settled in that order: when
    the pool hands out a later reply of a worker first (Ray can deliver replies out of order), the
    worker's oldest call is settled first. With write threads a reply carries the outcomes of
    earlier units, so settling out of order would lose track of which units are still being
    written.

Losses (../shared/RELIABILITY.md R1-R8)
    A lost worker costs one attempt to the unit it was running: calls run one at a time, in order,
    so that is the oldest call whose unit left no ledger record of this run and attempt (with none,
    the oldest unit left to the worker's write threads without a record). The units queued behind
    it go back to the front of the queue without charge. After ``max_attempts`` losses the unit is
    recorded failed. The worker is replaced (up to ``workers * max_attempts`` replacements) and
    the replacement takes over its share; with no budget left, the other workers get it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from geofg import signals
from geofg.errors import ClusterError
from geofg.grid import WorkUnit
from geofg.io.ledger import UnitRecord
from geofg.runners.local import reader_plan

__all__ = ["QUEUED_PER_ACTOR", "Pool", "Scheduler", "Slot", "actor_shares"]

log = logging.getLogger(__name__)

#: Calls queued on one worker (the running one plus the next, whose window it is prefetching).
QUEUED_PER_ACTOR = 2

RESOLVE_TIMEOUT_S = 60.0
"""Seconds to wait for each other call of a lost worker (a dead actor's resolve well within)."""


class Pool(Protocol):
    """Remote workers as the scheduler sees them: handles it starts, calls it sends and awaits.

    A call is an opaque handle (a Ray ``ObjectRef``); a reply is what the worker's ``process`` or
    ``drain`` returned: one outcome or a list, each with ``unit_id``, ``record``, ``error`` and
    ``seconds``.
    """

    lost: tuple[type[BaseException], ...]
    """Errors of :meth:`get` meaning "the worker is gone" (its unit may or may not have run)."""

    def start(self) -> tuple[Any, str]:
        """Start a worker; return its handle and name."""
        ...

    def can_start(self) -> bool:
        """Whether the cluster can place one more worker now (False: a lost node took its room)."""
        ...

    def process(self, worker: Any, unit: WorkUnit, attempt: int, upcoming: list[WorkUnit],
                lanes: dict[str, int]) -> Any:
        """Send ``worker.process(unit, attempt, upcoming, lanes)``; return the call."""
        ...

    def drain(self, worker: Any) -> Any:
        """Send ``worker.drain()`` (collect the units its write threads still hold)."""
        ...

    def wait(self, calls: list[Any]) -> Any:
        """Block until one of ``calls`` has a reply (or error); return it (not necessarily the
        oldest of its worker: the scheduler then settles that worker's oldest call first)."""
        ...

    def get(self, call: Any, timeout: float | None = None) -> Any:
        """The reply of ``call``; raises one of :attr:`lost` when its worker is gone."""
        ...

    def start_failure(self, error: BaseException) -> BaseException | None:
        """The error that ends the run when ``error`` says a worker could not start, else None."""
        ...

    def kill(self, worker: Any) -> None:
        """Kill a worker for good (never raises)."""
        ...

    def close(self, workers: list[Any]) -> None:
        """Ask live ``workers`` to finish their writes and close (briefly waited on; never raises)."""
        ...


class Sink(Protocol):
    """What the scheduler needs of the driver's sink: failed records, the ledger, the run id."""

    run_id: str
    ledger: Any

    def failed(self, unit: Any, error: str, attempt: int) -> UnitRecord:
        """Record ``unit`` failed (in the ledger) and return the record."""
        ...


@dataclasses.dataclass(eq=False)
class Slot:
    """One worker as the driver sees it: its queued calls (oldest first) and its reserved units."""

    worker: Any
    name: str
    calls: deque = dataclasses.field(default_factory=deque)
    ahead: deque = dataclasses.field(default_factory=deque)  # reserved units, being prefetched
    own: deque = dataclasses.field(default_factory=deque)  # its share of the read plan, in order
    writing: dict = dataclasses.field(default_factory=dict)  # unit id -> unit left to its writers
    dead: bool = False


def actor_shares(units: Sequence[WorkUnit], actors: int, lanes: int) -> tuple[list[list[WorkUnit]], dict[str, int]]:
    """Each actor's share of ``units``, in read order, and the read thread ("lane") of each unit.

    :func:`~geofg.runners.local.reader_plan` for ``actors * lanes`` readers; reader *k* is lane
    *k* // ``actors`` of actor *k* % ``actors``, so the first runs go to different actors.

    Examples:
        >>> from geofg.grid import plan_units
        >>> shares, lane = actor_shares(plan_units(4, 2, 1, 0), 2, 1)  # two bands, one per actor
        >>> [[(u.row, u.col) for u in share] for share in shares]
        [[(0, 0), (1, 0), (0, 1), (1, 1)], [(2, 0), (3, 0), (2, 1), (3, 1)]]
    """
    shares: list[list[WorkUnit]] = [[] for _ in range(actors)]
    lane: dict[str, int] = {}
    for u, k in reader_plan(units, actors * lanes):
        shares[k % actors].append(u)
        lane[u.id] = k // actors
    return shares, lane


class Scheduler:
    """The unit <-> call bookkeeping of one run on a :class:`Pool` (see the module docstring).

    Args:
        pool: starts the workers and carries the calls.
        units: the units to run.
        workers: how many workers to start.
        lanes: read threads per worker.
        prefetch: units reserved ahead of each worker's current one.
        max_attempts: losses of a unit's worker before the unit is recorded failed.
        attempts: the units' attempt counts from earlier runs (the ledger).
        on_unit: called with each unit's record, done or failed.
        sink: records failed units; its ledger tells which lost calls had finished.
        stages: the timing stages the replies' ``seconds`` are summed into.
    """

    def __init__(self, pool: Pool, units: Sequence[WorkUnit], workers: int, lanes: int, prefetch: int,
                 max_attempts: int, attempts: dict[str, int], on_unit: Callable[[UnitRecord], None],
                 sink: Sink, stages: Sequence[str] = ()) -> None:
        self.pool = pool
        self.on_unit = on_unit
        self.sink = sink
        self.max_attempts = max_attempts
        self.prefetch = prefetch
        self.todo: deque[WorkUnit] = deque()  # re-queued units, before any worker's own
        self.attempt = {u.id: attempts.get(u.id, 0) + 1 for u in units}
        self.losses: Counter[str] = Counter()
        self.inflight: dict[Any, tuple[WorkUnit | None, Slot]] = {}  # None: a drain call
        self.seconds = dict.fromkeys(stages, 0.0)
        self.replacements = workers * max_attempts
        self.started = 0
        self.slots = [self._start() for _ in range(workers)]
        shares, self.lane = actor_shares(units, workers, lanes)
        for slot, share in zip(self.slots, shares, strict=True):
            slot.own.extend(share)

    def _start(self) -> Slot:
        worker, name = self.pool.start()
        self.started += 1
        return Slot(worker, name)

    def run(self) -> dict[str, float]:
        """Run every unit; return the seconds per stage summed over the replies."""
        try:
            self._fill()
            while self.inflight:
                slot = self.inflight[self.pool.wait(list(self.inflight))][1]
                # Settle a worker's replies in call order: a worker runs its calls in order, so its
                # oldest call is done too, but Ray may deliver a later reply first (seen after a
                # lost actor: a reply carrying a unit's outcome from its write thread came before
                # the reply of the call that ran the unit, which was then waited for as "still
                # being written" for ever, each drain answering nothing)
                ref = slot.calls[0]
                try:
                    outcome = self.pool.get(ref)
                except self.pool.lost as e:
                    self._lost(slot, e)
                else:
                    self._finish(ref, slot, outcome)
                self._fill()
        finally:
            self.pool.close([s.worker for s in self.slots if not s.dead])
            for s in self.slots:
                self.pool.kill(s.worker)
        return self.seconds

    def _fill(self) -> None:
        for s in self.slots:
            while not s.dead and len(s.calls) < QUEUED_PER_ACTOR and not signals.STOP.is_set():
                unit = s.ahead.popleft() if s.ahead else self._take(s)
                if unit is None:
                    if s.writing and not s.calls:  # nothing left to run: collect its last writes
                        ref = self.pool.drain(s.worker)
                        s.calls.append(ref)
                        self.inflight[ref] = (None, s)
                    break
                while len(s.ahead) < self.prefetch and (u := self._next(s)) is not None:
                    s.ahead.append(u)
                lanes = {u.id: self.lane[u.id] for u in (unit, *s.ahead)}
                ref = self.pool.process(s.worker, unit, self.attempt[unit.id], list(s.ahead), lanes)
                s.calls.append(ref)
                self.inflight[ref] = (unit, s)

    def _next(self, slot: Slot) -> WorkUnit | None:
        """A unit for ``slot`` to reserve: a re-queued one, else its own next, else the last of the
        live worker with most left of its own (its tail, which it would reach last)."""
        if self.todo:
            return self.todo.popleft()
        if slot.own:
            return slot.own.popleft()
        return self._steal(slot, lambda s: s.own)

    def _take(self, slot: Slot) -> WorkUnit | None:
        """Next unit for a worker with none reserved: :meth:`_next`, else the last one reserved
        by the worker holding most (near the end of a run, so no worker idles while another has a
        backlog; the donor's early read of it is wasted, nothing else)."""
        unit = self._next(slot)
        return unit if unit is not None else self._steal(slot, lambda s: s.ahead)

    def _steal(self, slot: Slot, queue: Callable[[Slot], deque]) -> WorkUnit | None:
        """The last unit of ``queue`` (a worker's own share, or its reserved units) of the live
        worker other than ``slot`` with the most in it; None when they are all empty."""
        donors = [s for s in self.slots if s is not slot and not s.dead and queue(s)]
        return queue(max(donors, key=lambda s: len(queue(s)))).pop() if donors else None

    def _finish(self, ref: Any, slot: Slot, reply: Any) -> None:
        """Settle a call's reply: the outcomes it carries (one, or a list: its unit's and those of
        units its worker's write threads finished); a unit without one is still being written."""
        unit, _ = self.inflight.pop(ref)
        slot.calls.remove(ref)
        outcomes = reply if isinstance(reply, list) else [reply]
        answered = {o.unit_id for o in outcomes}
        if unit is not None and unit.id not in answered:
            slot.writing[unit.id] = unit
        if unit is None and not answered >= slot.writing.keys():
            # a drain answers for every unit left to the worker's writers: anything else is a bug
            # here, and another drain would answer nothing again (a driver spinning for ever)
            raise RuntimeError(f"geofg bug: worker {slot.name} drained without the outcomes of "
                               f"{sorted(slot.writing.keys() - answered)}; please report it with the run's log")
        for outcome in outcomes:
            done = slot.writing.pop(outcome.unit_id, None) or unit
            for k, v in outcome.seconds.items():
                self.seconds[k] = self.seconds.get(k, 0.0) + v
            if outcome.record is not None:
                self.on_unit(outcome.record)
            else:
                self.on_unit(self.sink.failed(done, outcome.error or "failed", self.attempt[done.id]))

    def _lost(self, slot: Slot, error: BaseException) -> None:
        """Retire a dead worker: settle its calls, charge the unit it was running, replace it."""
        slot.dead = True
        self.pool.kill(slot.worker)
        fatal = self.pool.start_failure(error)
        if fatal is not None:
            raise fatal
        first = last_line(str(error)) or type(error).__name__
        unsettled: list[WorkUnit] = []  # the units of calls whose replies died, oldest first
        for ref in list(slot.calls):
            unit = self.inflight[ref][0]
            try:
                reply = self.pool.get(ref, timeout=RESOLVE_TIMEOUT_S)
            except self.pool.lost:
                del self.inflight[ref]
                slot.calls.remove(ref)
                if unit is not None:  # not a drain call
                    unsettled.append(unit)
            else:
                self._finish(ref, slot, reply)
        # Calls run one at a time, in order: the oldest whose unit left no ledger record was the one
        # running (a finished call's reply can die with the worker; its record says it finished).
        # With no such call, the oldest unit left to the worker's write threads without a record.
        unsettled += slot.writing.values()
        slot.writing.clear()
        # a record the worker was writing when it died leaves a temp file; no one else writes these
        self.sink.ledger.sweep_temp(units=[u.id for u in unsettled])
        requeue: list[WorkUnit] = []
        charged: WorkUnit | None = None
        for unit in unsettled:
            done = self._recorded(unit)
            if done is not None:
                self.on_unit(done)
                continue
            if charged is not None:
                requeue.append(unit)
                continue
            charged = unit
            self.losses[unit.id] += 1
            if self.losses[unit.id] >= self.max_attempts:
                msg = (f"{type(error).__name__}: lost its Ray worker {self.losses[unit.id]} times "
                       f"(last: {first})")
                self.on_unit(self.sink.failed(unit, msg, self.attempt[unit.id]))
            else:
                self.attempt[unit.id] += 1
                requeue.append(unit)
        requeue.extend(slot.ahead)
        slot.ahead.clear()
        log.warning("actor %s lost (%s) while running unit %s (loss %d of %d allowed); %d unit(s) "
                    "re-queued", slot.name, type(error).__name__, charged.id if charged else "-",
                    self.losses[charged.id] if charged else 0, self.max_attempts, len(requeue))
        self.todo.extendleft(reversed(requeue))
        self.slots.remove(slot)
        # a replacement the cluster cannot place (its node is gone, the others are full) would hold
        # the units queued to it for ever: then the workers left share them (the last is always replaced)
        if self.replacements > 0 and (self.todo or self.inflight or slot.own
                                      or any(s.own for s in self.slots)) and (not self.slots or self.pool.can_start()):
            self.replacements -= 1
            self.slots.append(self._start())
            self.slots[-1].own = slot.own  # its share of the plan, in order
        else:
            self.todo.extend(slot.own)  # for the workers left
        if not self.slots and self.todo:
            raise ClusterError(
                f"every Ray actor died ({self.started} started; last: {first}); {len(self.todo)} "
                "units were not run; the mosaic is consistent: re-run to resume"
            )

    def _recorded(self, unit: WorkUnit) -> UnitRecord | None:
        """The ledger record this run's current attempt of ``unit`` wrote, if any."""
        rec = self.sink.ledger.read(unit.id)  # a local or an S3 ledger (geofg.io.store)
        if rec is None:
            return None
        ok = (rec.status == "done" and rec.run_id == self.sink.run_id
              and rec.attempt == self.attempt[unit.id])
        return rec if ok else None


def last_line(text: str) -> str:
    """The last non-blank line of ``text`` (of a remote traceback: the error itself)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


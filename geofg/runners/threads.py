"""An actor's read-ahead and write-behind threads (:class:`geofg.runners.ray.UnitWorker`); no ray.

:class:`ActorReads` reads the units the driver says come next on the actor's read threads
(:class:`~geofg.runners.local.ReadLanes`), before the model needs them; :class:`WriteBehind`
writes units the model is done with on write threads while the next unit computes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from geofg.runners.local import ReadLanes

__all__ = ["ActorReads", "WriteBehind"]

_MAX_PREFETCHED = 4


class ActorReads:
    """An actor's reads: its read threads (:class:`~geofg.runners.local.ReadLanes`) and the units
    the driver said come next, read ahead. ``read(unit)`` runs on a lane and returns what the
    actor needs of the unit."""

    def __init__(self, lanes: int, read: Callable[[Any], Any], prefix: str) -> None:
        self._lanes = ReadLanes(lanes, prefix)
        self._read = read
        self._ahead: dict[str, Future] = {}

    def read(self, unit: Any, lanes: dict[str, int]) -> Future:
        """Start reading ``unit`` on its lane (``lanes``: unit id -> lane; others in turn)."""
        return self._lanes.submit(lanes.get(unit.id), self._read, unit)

    def take(self, unit: Any, upcoming: Sequence[Any], lanes: dict[str, int]) -> Future:
        """The read of ``unit`` (started earlier, or now); start reading ``upcoming`` too."""
        fut = self._ahead.pop(unit.id, None) or self.read(unit, lanes)
        for u in upcoming:
            if u.id not in self._ahead:
                self._ahead[u.id] = self.read(u, lanes)
        while len(self._ahead) > max(_MAX_PREFETCHED, len(upcoming)):  # stale hints
            self._ahead.pop(next(iter(self._ahead))).cancel()
        return fut

    def close(self) -> None:
        """Drop the reads ahead, stop the lanes."""
        for fut in self._ahead.values():
            fut.cancel()
        self._ahead.clear()
        self._lanes.shutdown()


class WriteBehind:
    """An actor's write threads: units are handed to them once the model has run, and their
    outcomes collected oldest first. With no threads, a unit is written at once, on the caller's."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="geofg-write") if threads else None
        self._writing: deque[Future] = deque()

    def submit(self, write: Callable[..., Any], *args: Any) -> list[Any]:
        """Write a unit (``write(*args)`` returns its outcome); the outcomes finished, oldest first,
        having waited until at most :attr:`threads` units are left being written."""
        if self._pool is None:
            return [write(*args)]
        self._writing.append(self._pool.submit(write, *args))
        return self._collect(self.threads)

    def finished(self) -> list[Any]:
        """The outcomes finished so far, oldest first, without waiting."""
        return self._collect(len(self._writing))

    def drain(self) -> list[Any]:
        """Wait for every unit left; their outcomes, oldest first."""
        return self._collect(0)

    def _collect(self, pending: int) -> list[Any]:
        done = []
        while self._writing and (len(self._writing) > pending or self._writing[0].done()):
            done.append(self._writing.popleft().result())
        return done

    def close(self) -> None:
        """Let the writes left finish, then stop the threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

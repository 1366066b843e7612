"""Stop a run cleanly on SIGTERM or SIGINT (Kubernetes, systemd, Ray and Ctrl-C send these).

Inside :func:`stop_on_signals`, the first SIGTERM or SIGINT sets :data:`STOP`: runners stop taking
new units, let the units in flight finish (their chunks and ledger records are written), and return;
the run then raises :class:`~geofg.errors.RunInterruptedError` (exit 8) after releasing its lock,
so the next run, under any host name, resumes without ``--break-lock``. A second signal raises
:class:`~geofg.errors.RunInterruptedError` at once (the units in flight are abandoned: they have
no ledger record, so the next run redoes them). Handlers can only be installed from the main
thread; elsewhere the context does nothing.

This module imports nothing from geofg but its error tree.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

from geofg.errors import RunInterruptedError

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    """Set by the first signal; runners poll :meth:`is_set` before taking each unit."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def set(self, name: str) -> None:
        """Ask the run to stop (``name``: the signal, e.g. ``"SIGTERM"``)."""
        self.signal_name = name
        self._event.set()

    def is_set(self) -> bool:
        """True once a stop was asked for."""
        return self._event.is_set()

    def clear(self) -> None:
        """Forget a stop (a new run starts)."""
        self.signal_name = None
        self._event.clear()


STOP = StopFlag()
_active = [False]


def _handler(signum: int, frame: Any) -> None:  # noqa: ARG001
    name = signal.Signals(signum).name
    if STOP.is_set():
        raise RunInterruptedError(f"stopped at once by a second {name}; the units in flight were "
                                  "abandoned and are redone by the next run")
    STOP.set(name)
    log.warning("%s received: finishing the units in flight, then stopping (send it again to stop "
                "at once)", name)


def install() -> None:
    """(Re)install the handlers while :func:`stop_on_signals` is active (``ray.init`` replaces
    the SIGTERM handler with one that exits at once)."""
    if _active[0] and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _handler)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Inside, SIGTERM and SIGINT set :data:`STOP` instead of killing the process."""
    if threading.current_thread() is not threading.main_thread() or _active[0]:
        yield STOP
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    STOP.clear()
    _active[0] = True
    install()
    try:
        yield STOP
    finally:
        _active[0] = False
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def interrupted_error(what: str) -> RunInterruptedError:
    """The one-line error of a run :data:`STOP` ended (``what``: the mosaic and counts)."""
    return RunInterruptedError(
        f"{what}: stopped by {STOP.signal_name or 'a signal'} after finishing the units in flight; "
        "the lock is released: re-run the same command to resume"
    )

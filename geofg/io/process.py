"""Who this process is, for the run lock: host, pid, the kernel's boot id and the pid's start time.

Linux records the boot id (``/proc/sys/kernel/random/boot_id``) and each process's start time in
clock ticks (``/proc/PID/stat``), so :mod:`geofg.io.lock` can tell a lock left by a dead process, or
by a machine that rebooted, from one held by a live process whose pid was reused. Standard library
only.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass



@dataclass(frozen=True)
class ProcessIdentity:
    """A process as the lock records it: host, pid, boot id and the pid's start time (Linux)."""

    host: str
    pid: int
    boot_id: str | None
    pid_start: int | None

    @classmethod
    def current(cls) -> ProcessIdentity:
        """This process."""
        pid = os.getpid()
        stat = proc_stat(pid)
        return cls(socket.gethostname(), pid, boot_id(), stat[1] if stat else None)


def boot_id() -> str | None:
    """The kernel's boot id, None where /proc does not have it."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def proc_stat(pid: int) -> tuple[str, int] | None:
    """Return (state, start time in clock ticks since boot) of ``pid`` from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode("ascii", "replace")
        rest = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
        return rest[0], int(rest[19])
    except (OSError, ValueError, IndexError):
        return None

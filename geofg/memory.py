"""glibc heap policy for geofg's own processes: reuse freed memory, or hand it back between units.

A forward pass allocates and frees its activations (hundreds of MB) every call, and reads and
normalisation add tens of MB per unit. glibc serves blocks over its mmap threshold (at most
32 MiB) with fresh ``mmap`` calls and unmaps them on free, so every unit page-faults all of that
memory in again: on the 2-core VM a third of the CPU went to the kernel (benchmarks/HISTORY.md).

* :func:`reuse_heap` (``geofg classify``, ``segment`` and ``scan`` call it at start-up through
  :func:`geofg.runtime.tune_process`, before any thread exists; training and the other commands
  keep glibc's defaults):
  every allocation comes from one heap that is never unmapped or trimmed, so a unit reuses the
  pages the previous one freed. With one compute stream (the local runner's default then), peak
  RSS is the high-water mark of the units in flight and does not grow with the raster; two
  streams interleaving their activations fragment the heap. ``GEOFG_MALLOC_REUSE=0`` turns it
  off.
* :func:`heap_env`: the same policy for a process yet to start, as glibc environment variables
  (read once, at start-up, before any thread exists). The Ray runner starts its actors with it
  (:func:`geofg.runtime.worker_env`), whoever started the driver: without it, each actor
  page-faulted its forward's activations in again every unit (benchmarks/HISTORY.md, "Ray actors").
* :func:`trim_heap` after each unit: without the reused heap (library use) ``malloc_trim(0)``
  returns free pages, so peak RSS follows the units in flight rather than the per-thread heaps'
  accumulated high-water marks. With it, only once more than :data:`REUSE_SLACK_BYTES` (256 MiB)
  lie free in the heap: a unit's freed pages still serve the next, but holes that fragmentation
  leaves between live blocks go back (``landcover-s2`` at the defaults, 4096²: 2.02 GiB peak
  RSS without, 1.83 with; about 3 % more wall time on 2 cores, benchmarks/HISTORY.md).
  ``GEOFG_MALLOC_TRIM=0`` turns it off, ``GEOFG_HEAP_SLACK_MB`` sets the slack.

Nothing happens at import: libc is looked up at the first call, and only :func:`reuse_heap` changes
the heap's policy. torch's huge-page setting, which goes with the policy, is
:mod:`geofg.runtime`'s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks",
                                                "keepcost")]  # fmt: skip


@functools.cache
def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl and others lack it)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        if hasattr(libc, "mallinfo2"):  # glibc 2.33+
            libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):
        return None
    return libc


_reusing = False

#: The reused-heap policy: (mallopt parameter, its glibc environment variable, value).
_POLICY = (
    (_M_MMAP_MAX, "MALLOC_MMAP_MAX_", 0),  # no mmap per block: everything from the heap
    (_M_ARENA_MAX, "MALLOC_ARENA_MAX", 1),  # one heap for all threads (others cannot grow past 64 MiB)
    (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 2**31 - 1),  # never give the heap's top back
)


def _reuse_wanted() -> bool:
    return os.environ.get("GEOFG_MALLOC_REUSE", "1") != "0"


def reuse_heap() -> bool:
    """Keep freed memory in one glibc heap for reuse; True when applied.

    Call it at process start, before threads start (glibc fixes the number of heaps when the
    first extra one is created), through :func:`geofg.runtime.tune_process`, which also turns
    torch's huge pages off with it (2 MiB-aligned blocks waste space in a reused heap).
    """
    global _reusing
    libc = _glibc()
    if libc is None or not _reuse_wanted():
        return False
    ok = all(libc.mallopt(param, value) == 1 for param, _, value in _POLICY)
    _reusing = ok
    return ok


def heap_env() -> dict[str, str]:
    """Environment variables that give a new process :func:`reuse_heap`'s policy from its start.

    glibc reads ``MALLOC_*`` once when the process starts, so this works where calling
    :func:`reuse_heap` would come too late (a Ray worker has its threads and heaps before an actor's
    code runs). Empty where ``GEOFG_MALLOC_REUSE=0``. :func:`geofg.runtime.worker_env` adds torch's
    huge-page setting.

    Examples:
        >>> sorted(heap_env())[:3]
        ['MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_']
    """
    if not _reuse_wanted():
        return {}
    return {name: str(value) for _, name, value in _POLICY}


def heap_reused() -> bool:
    """True once :func:`reuse_heap` has been applied in this process."""
    return _reusing


REUSE_SLACK_BYTES = 256 * 2**20
"""Free bytes the reused heap may keep between units before :func:`trim_heap` hands them back
(``GEOFG_HEAP_SLACK_MB`` overrides it)."""


def heap_free_bytes() -> int | None:
    """Bytes free inside glibc's heaps (``mallinfo2``'s ``fordblks``); None without glibc 2.33+."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    return int(libc.mallinfo2().fordblks)


@functools.cache
def _slack(text: str | None) -> int:
    if text is None:
        return REUSE_SLACK_BYTES
    if not text.strip().isdigit():
        log.warning("GEOFG_HEAP_SLACK_MB: expected a whole number of MiB, found %r; using %d",
                    text, REUSE_SLACK_BYTES // 2**20)
        return REUSE_SLACK_BYTES
    return int(text) * 2**20


def trim_heap() -> bool:
    """Return freed heap pages to the OS; True when it did.

    Without the reused heap: after every unit. With it: only once more than
    :data:`REUSE_SLACK_BYTES` lie free in it, so the pages a unit frees are reused by the next
    (no page faults) while a heap that fragmented, its free space growing unit after unit,
    still gives that space back. False where this is not glibc or ``GEOFG_MALLOC_TRIM=0``.
    """
    libc = _glibc()
    if libc is None or os.environ.get("GEOFG_MALLOC_TRIM", "1") == "0":
        return False
    if _reusing:
        free = heap_free_bytes()
        if free is None or free <= _slack(os.environ.get("GEOFG_HEAP_SLACK_MB")):
            return False
    libc.malloc_trim(0)
    return True

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
* :func:`trim_heap` otherwise (library use): ``malloc_trim(0)`` after each unit
  returns free pages, so peak RSS follows the units in flight rather than the per-thread heaps'
  accumulated high-water marks. ``GEOFG_MALLOC_TRIM=0`` turns it off. It does nothing while the
  heap is reused.

Nothing happens at import: libc is looked up at the first call, and only :func:`reuse_heap` changes
the heap's policy. torch's huge-page setting, which goes with the policy, is
:mod:`geofg.runtime`'s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>


@functools.cache
def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl and others lack it)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
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


def trim_heap() -> bool:
    """Return freed heap pages to the OS; False where this is not glibc, turned off or reusing."""
    libc = _glibc()
    if libc is None or _reusing or os.environ.get("GEOFG_MALLOC_TRIM", "1") == "0":
        return False
    libc.malloc_trim(0)
    return True

"""Process-wide tuning, applied once when a geofg process starts, never at import.

Importing any geofg module changes no environment variable and no allocator setting (a library
user's process stays theirs). What geofg tunes for its own processes is here:

* torch's huge pages for CPU buffers (``THP_MEM_ALLOC_ENABLE``, read by torch once, at its first
  allocation): on (1) for the commands that keep glibc's heap defaults, because a CNN forward
  allocates and frees its activations every call and with 4 KiB pages each one page-faults again
  (measured: 20x the faults, half the forward speed on the 2-core VM, benchmarks/HISTORY.md); off (0)
  where the heap is reused (2 MiB-aligned blocks waste a reused heap: 3.1 vs 2.6 GB peak). A value
  the user set is always kept.
* glibc's heap policy (:mod:`geofg.memory`): one reused heap for the tile-pipeline commands.

:func:`tune_process` is what the ``geofg`` command calls before torch, GDAL or any thread starts
(``geofg.cli.main``); :func:`worker_env` is the same tuning for a process yet to start, given to
every Ray actor as its ``runtime_env`` (glibc and torch read these variables when the process
starts, before any actor code runs).
"""

from __future__ import annotations

import os

from geofg import memory

THP_ENV = "THP_MEM_ALLOC_ENABLE"
_thp_set_here = False  # True once tune_process chose THP_ENV (then it is geofg's, not the user's)


def _user_thp() -> str | None:
    """The huge-page setting the user gave (None: none, or geofg's own choice)."""
    return None if _thp_set_here else os.environ.get(THP_ENV)


def tune_process(*, reuse_heap: bool) -> bool:
    """Tune this process for geofg: heap policy, then torch's huge pages; True when the heap is reused.

    Call it once at process start, before torch allocates and before any thread exists (glibc
    fixes its heaps when the first thread allocates; torch reads ``THP_MEM_ALLOC_ENABLE`` once).

    Args:
        reuse_heap: keep freed memory in one glibc heap (:func:`geofg.memory.reuse_heap`; the
            ``classify``, ``segment`` and ``scan`` commands); ``GEOFG_MALLOC_REUSE=0`` overrides it.
    """
    global _thp_set_here
    reused = memory.reuse_heap() if reuse_heap else False
    if _user_thp() is None:
        os.environ[THP_ENV] = "0" if reused else "1"
        _thp_set_here = True
    return reused


def worker_env() -> dict[str, str]:
    """Environment variables giving a new worker process (a Ray actor) geofg's tuning from its start.

    One reused heap (:func:`geofg.memory.heap_env`; none where ``GEOFG_MALLOC_REUSE=0``) and
    torch's huge pages off with it (on without it), unless the user set them.

    Examples:
        >>> sorted(worker_env())  # doctest: +SKIP
        ['MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_', 'THP_MEM_ALLOC_ENABLE']
    """
    env = memory.heap_env()
    user = _user_thp()
    env[THP_ENV] = user if user is not None else ("0" if env else "1")
    return env

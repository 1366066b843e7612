"""Hand freed heap memory back to the OS between units (glibc only).

A unit's buffers (normalised input, activations, probabilities) are allocated and freed by
several compute and reader threads, each with its own glibc heap; freed space stays resident in
whichever heap held it. ``malloc_trim(0)`` after each unit returns those free pages, so peak RSS
follows the units in flight rather than the heaps' accumulated high-water marks. Measured in
docs/performance.md. ``GEOFG_MALLOC_TRIM=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable


def _load_trim() -> Callable[[], None] | None:
    if os.environ.get("GEOFG_MALLOC_TRIM", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl and others lack it)
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    return lambda: fn(0)


_TRIM = _load_trim()


def trim_heap() -> bool:
    """Return freed heap pages to the OS; False where this is not glibc or it is turned off."""
    if _TRIM is None:
        return False
    _TRIM()
    return True

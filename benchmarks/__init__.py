"""geofg benchmarks (run by hand; see benchmarks/README.md).

Every benchmark process allocates memory as ``geofg classify`` does (one reused heap,
:func:`geofg.memory.reuse_heap`, before torch loads), so the bare forward, geofg and the baseline
are measured under the same allocator.
"""

from geofg.memory import reuse_heap

HEAP_REUSED = reuse_heap()

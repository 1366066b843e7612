"""geofg benchmarks (run by hand; see benchmarks/README.md).

Every benchmark process allocates memory as ``geofg classify`` does (one reused heap,
:func:`geofg.runtime.tune_process`, before torch loads), so the bare forward, geofg and the baseline
are measured under the same allocator.
"""

from geofg.runtime import tune_process

HEAP_REUSED = tune_process(reuse_heap=True)

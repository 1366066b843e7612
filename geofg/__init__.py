"""geofg: land-cover and crop-health maps from satellite rasters, tile by tile, into Zarr mosaics.

Nothing heavy is imported eagerly: ``import geofg`` is instant and pulls in neither torch nor ray.
The public entry points are :func:`geofg.run.run_job` with a :class:`geofg.config.JobConfig`,
and the ``geofg`` command line.
"""

import os

# torch's CPU allocator backs buffers of 2 MiB and more with transparent huge pages when this is
# set before its first allocation (it is read once). A CNN forward allocates and frees its
# activations every call; with 4 KiB pages each one page-faults again (measured: 20x the faults,
# half the forward speed on the 2-core VM, docs/performance.md). Set it to 0 to opt out. The
# geofg classify/segment/scan commands reuse one heap instead (geofg.memory.reuse_heap) and
# turn this off again.
THP_DEFAULTED = "THP_MEM_ALLOC_ENABLE" not in os.environ
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"

__all__ = ["__version__"]

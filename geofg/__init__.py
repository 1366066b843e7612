"""geofg: land-cover and crop-health maps from satellite rasters, tile by tile, into Zarr mosaics.

Nothing heavy is imported eagerly: ``import geofg`` is instant and pulls in neither torch nor ray.
The public entry points are :func:`geofg.run.run_job` with a :class:`geofg.config.JobConfig`,
and the ``geofg`` command line. Importing geofg changes no environment variable and no allocator
setting: the process tuning of geofg's own processes is :mod:`geofg.runtime`, applied by the command
line and the Ray actors.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

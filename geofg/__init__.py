"""geofg: land-cover and crop-health maps from satellite rasters, tile by tile, into Zarr mosaics.

Nothing is imported eagerly: ``import geofg`` is instant and pulls in neither torch nor ray.
The public entry points are :func:`geofg.run.run_job` with a :class:`geofg.config.JobConfig`,
and the ``geofg`` command line.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""Open a geofg mosaic with xarray, check its georeferencing and compute statistics lazily.

    python examples/open_mosaic.py out/T33UUU.zarr

Everything here is dask-backed: chunks are read as needed, never the whole mosaic at once.
"""

from __future__ import annotations

import sys

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr


def main(path: str = "out/T33UUU.zarr") -> None:
    """Print CRS, transform, per-class areas, the crop-health mix and the mean NDVI of the mosaic at ``path``."""
    ds = xr.open_zarr(path, decode_coords="all", mask_and_scale=False)
    print(ds)
    print("CRS:", ds.rio.crs, "\ntransform:", tuple(ds.rio.transform())[:6])
    names = ds["class"].attrs["class_names"]
    pixel_ha = abs(ds.rio.resolution()[0] * ds.rio.resolution()[1]) / 10_000
    counts = xr.apply_ufunc(
        lambda a: np.bincount(a.ravel(), minlength=256)[None, None],
        ds["class"], dask="parallelized", output_dtypes=[np.int64],
        output_core_dims=[["bin"]], dask_gufunc_kwargs={"output_sizes": {"bin": 256}},
    ).sum(["y", "x"]).values
    for i, n in enumerate(names):
        print(f"{n:22s} {counts[i] * pixel_ha:10.1f} ha")
    health = ds["health"].where(ds["health"] != 255)
    print("crop-health zone mean (0 bare .. 3 vigorous, index-based):", float(health.mean().compute()))
    if "ndvi" in ds:  # uint8 codes here (mask_and_scale=False); xarray's default decoding gives NDVI
        code = ds["ndvi"]
        ndvi = code.where(code != 255) * code.attrs["scale_factor"] + code.attrs["add_offset"]
        print("mean NDVI of the clear pixels (any class):", round(float(ndvi.mean().compute()), 3))


if __name__ == "__main__":
    main(*sys.argv[1:])

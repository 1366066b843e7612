"""Render a window of a mosaic's class layer at full resolution, coloured by its legend.

    python examples/plot_mosaic.py out/T33UUU.zarr out/window.png 0 0 512 512

(row offset, column offset, height, width). Only that window is read.
"""

from __future__ import annotations

import sys

import numpy as np
import xarray as xr
from PIL import Image


def main(path: str, png: str, row: str = "0", col: str = "0", h: str = "512", w: str = "512") -> None:
    """Write the class layer of the given window of ``path`` to ``png``."""
    ds = xr.open_zarr(path, mask_and_scale=False)
    cls = ds["class"].isel(y=slice(int(row), int(row) + int(h)), x=slice(int(col), int(col) + int(w))).values
    lut = np.zeros((256, 3), np.uint8)
    for i, c in enumerate(ds["class"].attrs["colours"]):
        lut[i] = [int(c[k : k + 2], 16) for k in (1, 3, 5)]
    Image.fromarray(lut[cls]).save(png)
    print(f"wrote {png} ({cls.shape[0]}x{cls.shape[1]})")


if __name__ == "__main__":
    main(*sys.argv[1:])

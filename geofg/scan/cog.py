"""Export one layer of a mosaic as a Cloud-Optimized GeoTIFF or a PNG quicklook.

``geofg export MOSAIC --cog OUT.tif [--time DATE] [--layer class|health|confidence|ndvi|mask]``: the
layer (of the latest view, one date of a scan mosaic, or a classify mosaic) becomes a single-band
uint8 COG with the mosaic's CRS and transform, nodata 255, a colour table for class, health and
mask, and overviews (nearest: classes are categories). Beside it go the legend's sidecars
(:mod:`geofg.scan.legend`): ``OUT.tif.aux.xml`` (GDAL category names and a raster attribute
table) and ``OUT.qml`` (QGIS style). In a health export, pixels without a zone carry the reason
(not a crop class, cloud, shadow, snow/ice, out of season) as values 250-254. The ``ndvi`` index
layer keeps its uint8 codes with the band's scale 0.01 and offset -1 set (``gdalinfo`` shows
"Offset: -1, Scale: 0.01"; rasterio's ``scales``/``offsets``, QGIS and ``gdal_translate -unscale``
apply them), nodata 255, and no legend sidecars (a continuous index has no classes). It is written block by block into a temporary
tiled GeoTIFF, then GDAL's COG driver copies it (tiles, overviews, header first); only one mosaic
chunk is in memory at a time. The result replaces ``OUT.tif`` atomically.

``--png OUT.png`` writes the quicklook with legend (:func:`geofg.io.export.write_quicklook`) of the
layer's latest view (scan mosaics) or of the layer (classify mosaics).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from affine import Affine
from rasterio.crs import CRS

from geofg.errors import ConfigError, InputError
from geofg.health import INDEX, INDEX_OFFSET, INDEX_SCALE
from geofg.io import mosaic as mz
from geofg.io.read import gdal_env
from geofg.scan.legend import Legend, health_codes, write_sidecars
from geofg.scan.stats import _source

LAYERS = ("class", "health", "confidence", INDEX, "mask")


def _open(mosaic: Path) -> zarr.Group:
    if not mz.is_mosaic(mosaic):
        raise InputError(f"{mosaic}: expected a geofg mosaic (a Zarr group written by classify or "
                         "scan), found none; give the mosaic's path")  # fmt: skip
    return mz.open_checked(mosaic)


def _check_out(out: Path, suffixes: tuple[str, ...], overwrite: bool) -> None:
    if out.suffix.lower() not in suffixes:
        raise ConfigError(f"{out}: expected a {' or '.join(suffixes)} file name, found "
                          f"{out.suffix or 'no extension'}; change the extension")  # fmt: skip
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: the file exists; pass --overwrite to replace it or choose another path")


def export_cog(mosaic: Path, out: Path, *, when: str | None = None, layer: str = "class",
               overwrite: bool = False) -> Path:  # fmt: skip
    """Write ``layer`` of ``mosaic`` (latest view, date ``when``, or 2-D) as a COG at ``out``.

    Raises:
        InputError: not a mosaic. ConfigError: unknown layer or date, bad or existing output.
    """
    group = _open(mosaic)
    grid = group.attrs["geofg:grid"]
    have = [n for n in LAYERS if n in grid["layers"]]
    if layer not in have:
        raise ConfigError(f"--layer {layer}: expected one of {', '.join(have)} (the layers of this mosaic)")
    _check_out(out, (".tif", ".tiff"), overwrite)
    arrays, t, label = _source(group, when)
    arr = arrays[layer]
    attrs = arr.attrs
    legend = None
    if "colours" in attrs:
        legend = Legend.of_layer(layer, list(attrs["class_names"]), list(attrs["colours"]), health=layer == "health")
    season = group.attrs.get("geofg:health") or {}
    in_season = not (isinstance(season, dict) and season.get("assessed") is False)
    height, width, chunk = grid["height"], grid["width"], grid["chunk"]
    a, b, c, d, e, f = grid["transform"]
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": 1, "dtype": "uint8",
        "crs": CRS.from_wkt(grid["crs_wkt"]), "transform": Affine(a, b, c, d, e, f), "nodata": mz.FILL,
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.src.tif")
    part = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp.tif")
    try:
        with gdal_env(), rasterio.open(tmp, "w", **profile) as dst:
            for r0 in range(0, height, chunk):
                for c0 in range(0, width, chunk):
                    rows, cols = slice(r0, min(r0 + chunk, height)), slice(c0, min(c0 + chunk, width))
                    try:
                        block = _block(arrays, layer, t, rows, cols, in_season)
                    except mz.DECODE_ERRORS as e:
                        raise mz.damaged_chunk_error(mosaic, layer if t is None else f"{layer}[{t}]",
                                                     arr, e) from None
                    win = rasterio.windows.Window(c0, r0, cols.stop - c0, rows.stop - r0)
                    dst.write(np.asarray(block, np.uint8), 1, window=win)
            if legend is not None:
                dst.write_colormap(1, legend.colormap())
            if layer == INDEX:
                dst.scales, dst.offsets = (INDEX_SCALE,), (INDEX_OFFSET,)
            dst.set_band_description(1, f"{layer} ({label or 'mosaic'})")
            dst.update_tags(GEOFG_LAYER=layer, GEOFG_DATE=label or "", GEOFG_MOSAIC=str(mosaic),
                            GEOFG_CLASSES=",".join(attrs.get("class_names", [])))  # fmt: skip
        with gdal_env():
            rasterio.shutil.copy(tmp, part, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512,
                                 OVERVIEW_RESAMPLING="NEAREST", RESAMPLING="NEAREST")  # fmt: skip
        if legend is not None:
            write_sidecars(out, legend, f"{layer} ({label or 'mosaic'})")
        os.replace(part, out)
    finally:
        for p in (tmp, part):
            if p.exists():
                p.unlink()
    return out


def _block(arrays: dict, layer: str, t: int | None, rows: slice, cols: slice, in_season: bool) -> np.ndarray:
    """One block of the exported band; a health block gets its not-assessed reasons."""
    def read(name: str) -> np.ndarray:
        return arrays[name][rows, cols] if t is None else arrays[name][t, rows, cols]

    if layer != "health":
        return read(layer)
    return health_codes(read("health"), read("class"), read("mask") if "mask" in arrays else None, in_season)


def export_png(mosaic: Path, out: Path, *, when: str | None = None, layer: str = "class",
               overwrite: bool = False) -> Path:  # fmt: skip
    """Write the quicklook PNG (with legend) of ``layer``'s latest view or 2-D layer (``ndvi`` in
    the five NDVI classes of :data:`geofg.io.export.INDEX_BINS`).

    Raises:
        ConfigError: ``when`` given (one date's PNG is not built: export that date with --cog),
            unknown layer, bad or existing output.
    """
    from geofg.io.export import write_quicklook

    group = _open(mosaic)
    if layer not in ("class", "health", INDEX):
        raise ConfigError(f"--layer {layer}: a PNG quicklook shows class, health or {INDEX}")
    _check_out(out, (".png",), overwrite)
    timed = bool(group.attrs["geofg:grid"].get("time"))
    if when is not None:
        raise ConfigError(f"--png with --time {when}: a PNG of one date is not built yet; export that "
                          "date with --cog OUT.tif, or drop --time for the latest view")  # fmt: skip
    return write_quicklook(mosaic, out, layer=(mz.LATEST + layer) if timed else layer)

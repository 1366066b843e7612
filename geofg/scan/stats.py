"""Per-field statistics of a mosaic: ``geofg stats MOSAIC --fields FIELDS.geojson -o OUT``.

For every polygon of a GeoJSON file: its area, the area per land-cover class and per health
class, the majority class and the mean confidence, read from one layer set of the mosaic: the
``latest_*`` view of a scan mosaic (default), one of its dates (``--time``), or the layers of a
``classify`` mosaic. Output: CSV (one row per field) or GeoJSON (the input features with these
properties added), written atomically.

Coverage-weighted (``exactextract``): a pixel counts by the share of its area inside the field,
so areas are the fields' real areas and a field smaller than a pixel is measured, where counting
the pixels whose centre is inside (what this command did before) misses it or counts a whole
pixel; on fields of many pixels the two agree within the edge pixels (tests/scan/test_scan_stats.py
keeps the pixel-centre count as its reference). ``pixels`` is the field's area inside the grid in
pixels (a real number); ``area_ha`` that area. When the mosaic has a ``mask`` layer
(:mod:`geofg.masks`), each row also has ``clear_ha``, ``cloud_ha``, ``cloud_shadow_ha`` and
``snow_ice_ha``: masked pixels carry no class (255), so ``valid_ha`` and the class areas cover
clear pixels only. exactextract reads each layer through GDAL's Zarr driver window by window, so
memory follows the largest field, not the mosaic. Invalid polygons are repaired with
``shapely.make_valid``. Geometries are GeoJSON lon/lat (RFC 7946) unless
the file names another CRS in a legacy ``crs`` member; they are transformed to the mosaic's CRS.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform_geom

from geofg.errors import ConfigError, InputError
from geofg.io import mosaic as mz
from geofg.io.atomic import atomic_write
from geofg.io.store import zarr_store
from geofg.masks import MASK_CLASSES

FILL = 255


def _load_fields(path: Path) -> tuple[list[dict[str, Any]], CRS]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: expected a GeoJSON file of field polygons, found nothing; "
                         "fix the --fields path") from None  # fmt: skip
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: expected GeoJSON, found unreadable JSON ({str(e).splitlines()[0]}); "
                         "give a FeatureCollection of polygons") from None  # fmt: skip
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, dict) and doc.get("type") == "FeatureCollection" and isinstance(doc.get("features"), list):
        feats = doc["features"]
    else:
        raise InputError(f"{path}: expected a GeoJSON FeatureCollection or Feature, found "
                         f"{type(doc).__name__ if not isinstance(doc, dict) else doc.get('type')!r}; "
                         "give a FeatureCollection of polygons")  # fmt: skip
    crs = CRS.from_epsg(4326)
    name = (((doc.get("crs") or {}).get("properties") or {}).get("name")) if isinstance(doc, dict) else None
    if name:
        try:
            crs = CRS.from_user_input(name.replace("urn:ogc:def:crs:OGC:1.3:CRS84", "OGC:CRS84"))
        except CRSError:
            raise InputError(f"{path}: expected a CRS in crs.properties.name, found {name!r}; use e.g. "
                             "urn:ogc:def:crs:EPSG::32633 or drop it for lon/lat") from None  # fmt: skip
    for i, f in enumerate(feats):
        g = f.get("geometry") if isinstance(f, dict) else None
        if not isinstance(g, dict) or g.get("type") not in ("Polygon", "MultiPolygon"):
            kind = g.get("type") if isinstance(g, dict) else type(g).__name__
            raise InputError(f"{path}: expected Polygon or MultiPolygon geometries, found {kind} in "
                             f"feature {i}; keep only field polygons")  # fmt: skip
    return feats, crs


def _field_id(f: dict[str, Any], i: int) -> str:
    props = f.get("properties") or {}
    for k in ("id", "field_id", "name"):
        if props.get(k) not in (None, ""):
            return str(props[k])
    return str(f.get("id", i))


def _source(group: zarr.Group, when: str | None) -> tuple[dict[str, Any], int | None, str | None]:
    """The arrays to read, the time index (None: 2-D), and the date label."""
    grid = group.attrs["geofg:grid"]
    if not grid.get("time"):
        if when is not None:
            raise ConfigError(f"--time {when}: this mosaic has no time axis (it was written by "
                              "classify); drop --time")  # fmt: skip
        return {n: group[n] for n in grid["layers"]}, None, None
    if when is None:
        return {n: group[mz.LATEST + n] for n in grid["layers"]}, None, "latest"
    from datetime import date

    days = [int(v) for v in group["time"][:]]
    try:
        want = (date.fromisoformat(when) - date(1970, 1, 1)).days
    except ValueError:
        raise ConfigError(f"--time {when!r}: expected a date like 2020-08-31") from None
    if want not in days:
        have = ", ".join(sorted(str(date.fromordinal(date(1970, 1, 1).toordinal() + d)) for d in days if d != mz.TIME_FILL))
        raise ConfigError(f"--time {when}: the mosaic has no slice for that date (it has {have or 'none'}); "
                          "give one of those or drop --time for the latest view")  # fmt: skip
    return {n: group[n] for n in grid["layers"]}, days.index(want), when


def field_stats(mosaic: Path, fields: Path, *, when: str | None = None) -> list[dict[str, Any]]:
    """Compute one row of statistics per field (see the module docstring).

    Raises:
        InputError: not a mosaic, unreadable or non-polygon GeoJSON (exit 3).
        ConfigError: ``when`` is not a date of the mosaic (exit 3).
    """
    import geopandas as gpd
    import shapely
    from shapely.geometry import shape

    if not mz.is_mosaic(mosaic):
        raise InputError(f"{mosaic}: expected a geofg mosaic (a Zarr group written by classify or "
                         "scan), found none; give the mosaic's path")  # fmt: skip
    group = zarr.open_group(zarr_store(mosaic, read_only=True), mode="r", use_consolidated=False)
    grid = group.attrs["geofg:grid"]
    arrays, t, label = _source(group, when)
    feats, src_crs = _load_fields(fields)
    dst_crs = CRS.from_wkt(grid["crs_wkt"])
    a, _, c, _, e, f0 = grid["transform"]
    names, hnames = grid["class_names"], grid["health_names"]
    px_area = abs(a * e)
    px_ha = px_area / 1e4
    geoms = [shape(transform_geom(src_crs, dst_crs, feat["geometry"]) if src_crs != dst_crs
                                    else feat["geometry"]) for feat in feats]  # fmt: skip
    geoms = [shapely.make_valid(g) if not g.is_valid else g for g in geoms]
    extent = shapely.box(c, f0 + e * grid["height"], c + a * grid["width"], f0)
    inside = shapely.area(shapely.intersection(np.asarray(geoms, dtype=object), extent))
    work = gpd.GeoDataFrame({"_row": np.arange(len(geoms))}, geometry=geoms, crs=dst_crs.to_wkt())
    counts = {n: _coverage_counts(mosaic, arr, t, work) for n, arr in arrays.items()
              if n in ("class", "health", "confidence", "mask")}  # fmt: skip
    rows = []
    for i, feat in enumerate(feats):
        cls_n = counts["class"][i][: len(names)]
        valid = float(cls_n.sum())
        row: dict[str, Any] = {
            "field_id": _field_id(feat, i),
            "date": label,
            "pixels": round(float(inside[i]) / px_area, 4),
            "area_ha": round(float(inside[i]) / 1e4, 4),
            "valid_ha": round(valid * px_ha, 4),
            "majority_class": names[int(cls_n.argmax())] if valid > 0 else None,
            "mean_confidence": None,
        }
        if "confidence" in counts and valid > 0:
            conf = counts["confidence"][i][:251]
            row["mean_confidence"] = round(float(conf @ np.arange(251)) / float(conf.sum()) / 250, 4) if conf.sum() > 0 else None
        row.update({f"{n}_ha": round(float(k) * px_ha, 4) for n, k in zip(names, cls_n, strict=True)})
        h_n = counts["health"][i][: len(hnames)] if "health" in counts else np.zeros(len(hnames))
        row.update({f"health_{n}_ha": round(float(k) * px_ha, 4) for n, k in zip(hnames, h_n, strict=True)})
        if "mask" in counts:
            m_n = counts["mask"][i][: len(MASK_CLASSES)]
            row.update({f"{_column(n)}_ha": round(float(k) * px_ha, 4)
                        for (n, _), k in zip(MASK_CLASSES, m_n, strict=True)})  # fmt: skip
        rows.append(row)
    return rows


def _coverage_counts(mosaic: Path, arr: zarr.Array, t: int | None, work: Any) -> list[np.ndarray]:
    """Per feature: coverage-weighted pixel count of each value 0..254 of ``arr`` (slice ``t``).

    exactextract reads the layer through GDAL's Zarr driver (fill 255 is its nodata).
    """
    import rasterio
    from exactextract import exact_extract
    from exactextract.raster import RasterioRasterSource

    from geofg.io.store import zarr_gdal_env

    with zarr_gdal_env(mosaic) as where, rasterio.open(f'ZARR:"{where}":/{arr.path}') as ds:
        df = exact_extract(RasterioRasterSource(ds, band_idx=1 if t is None else t + 1), work,
                           ["unique", "frac", "count"], include_cols=["_row"], output="pandas",
                           strategy="feature-sequential")  # fmt: skip
    out = []
    for _, r in df.sort_values("_row").iterrows():
        n = np.zeros(FILL, np.float64)
        values = np.asarray(r["unique"], dtype=np.int64)
        keep = (values >= 0) & (values < FILL)
        np.add.at(n, values[keep], np.asarray(r["frac"], dtype=np.float64)[keep] * float(r["count"]))
        out.append(n)
    return out


def _column(name: str) -> str:
    """``cloud shadow`` -> ``cloud_shadow``, ``snow/ice`` -> ``snow_ice``."""
    return name.replace(" ", "_").replace("/", "_")


def write_stats(rows: list[dict[str, Any]], fields: Path, out: Path, overwrite: bool = False) -> Path:
    """Write rows as CSV (``.csv``) or as the input features plus properties (``.geojson``).

    Raises:
        ConfigError: unknown extension, or ``out`` exists without ``overwrite`` (exit 3).
    """
    kind = out.suffix.lower()
    if kind not in (".csv", ".geojson", ".json"):
        raise ConfigError(f"-o {out}: expected a .csv or .geojson output, found {kind or 'no extension'}; "
                          "change the extension")  # fmt: skip
    if out.exists() and not overwrite:
        raise ConfigError(f"-o {out}: the file exists; pass --overwrite to replace it or choose another path")
    if kind == ".csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["field_id"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        text = buf.getvalue()
    else:
        doc = json.loads(fields.read_text())
        feats = [doc] if doc.get("type") == "Feature" else doc["features"]
        for feat, row in zip(feats, rows, strict=True):
            feat["properties"] = {**(feat.get("properties") or {}), **{f"geofg_{k}": v for k, v in row.items()}}
        text = json.dumps(doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text)
    return out

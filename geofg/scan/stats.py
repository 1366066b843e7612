"""Per-field statistics of a mosaic: ``geofg stats MOSAIC --fields FIELDS.geojson -o OUT``.

For every polygon of a GeoJSON file: its area, the area per land-cover class and per health
class, the majority class and the mean confidence, read from one layer set of the mosaic: the
``latest_*`` view of a scan mosaic (default), one of its dates (``--time``), or the layers of a
``classify`` mosaic. Output: CSV (one row per field) or GeoJSON (the input features with these
properties added), written atomically.

Pixels count as inside a field when their centre is (``rasterio.features.rasterize``,
``all_touched=False``). When the mosaic has a ``mask`` layer (:mod:`geofg.masks`), each row also
has ``clear_ha``, ``cloud_ha``, ``cloud_shadow_ha`` and ``snow_ice_ha``: masked pixels carry no
class (255), so ``valid_ha`` and the class areas cover clear pixels only. Fields are read block by block (at most one mosaic chunk per layer at a
time), so a field's size never sets the memory. Geometries are GeoJSON lon/lat (RFC 7946) unless
the file names another CRS in a legacy ``crs`` member; they are transformed to the mosaic's CRS.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.features import rasterize
from rasterio.warp import transform_geom

from geofg.errors import ConfigError, InputError
from geofg.io import mosaic as mz
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


def _bounds(geom: dict[str, Any]) -> tuple[float, float, float, float]:
    xs: list[float] = []
    ys: list[float] = []

    def walk(c: Any) -> None:
        if c and isinstance(c[0], int | float):
            xs.append(float(c[0]))
            ys.append(float(c[1]))
        else:
            for x in c:
                walk(x)

    walk(geom["coordinates"])
    return min(xs), min(ys), max(xs), max(ys)


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
    if not mz.is_mosaic(mosaic):
        raise InputError(f"{mosaic}: expected a geofg mosaic (a Zarr group written by classify or "
                         "scan), found none; give the mosaic's path")  # fmt: skip
    group = zarr.open_group(str(mosaic), mode="r", use_consolidated=False)
    grid = group.attrs["geofg:grid"]
    arrays, t, label = _source(group, when)
    feats, src_crs = _load_fields(fields)
    dst_crs = CRS.from_wkt(grid["crs_wkt"])
    a, _, c, _, e, f0 = grid["transform"]
    height, width, chunk = grid["height"], grid["width"], grid["chunk"]
    names, hnames = grid["class_names"], grid["health_names"]
    px_ha = abs(a * e) / 1e4
    rows = []
    for i, feat in enumerate(feats):
        geom = transform_geom(src_crs, dst_crs, feat["geometry"]) if src_crs != dst_crs else feat["geometry"]
        minx, miny, maxx, maxy = _bounds(geom)
        c0, c1 = max(0, math.floor((minx - c) / a)), min(width, math.ceil((maxx - c) / a))
        r0, r1 = max(0, math.floor((maxy - f0) / e)), min(height, math.ceil((miny - f0) / e))
        px = valid = conf = 0
        cls_n = np.zeros(len(names), np.int64)
        h_n = np.zeros(len(hnames), np.int64)
        m_n = np.zeros(len(MASK_CLASSES), np.int64)
        for br in range((r0 // chunk) * chunk, r1, chunk):
            for bc in range((c0 // chunk) * chunk, c1, chunk):
                rs, re_ = max(br, r0), min(br + chunk, r1)
                cs, ce = max(bc, c0), min(bc + chunk, c1)
                if rs >= re_ or cs >= ce:
                    continue
                from affine import Affine

                inside = rasterize([(geom, 1)], out_shape=(re_ - rs, ce - cs), fill=0, dtype="uint8",
                                   transform=Affine(a, 0, c + cs * a, 0, e, f0 + rs * e)).astype(bool)  # fmt: skip
                if not inside.any():
                    continue
                sl = (slice(rs, re_), slice(cs, ce)) if t is None else (t, slice(rs, re_), slice(cs, ce))
                cls = arrays["class"][sl][inside]
                ok = cls != FILL
                px += int(inside.sum())
                valid += int(ok.sum())
                cls_n += np.bincount(cls[ok], minlength=len(names))[: len(names)]
                if "health" in arrays:
                    hv = arrays["health"][sl][inside]
                    h_n += np.bincount(hv[hv != FILL], minlength=len(hnames))[: len(hnames)]
                if "confidence" in arrays:
                    conf += int(arrays["confidence"][sl][inside][ok].sum(dtype=np.int64))
                if "mask" in arrays:
                    mv = arrays["mask"][sl][inside]
                    m_n += np.bincount(mv[mv != FILL], minlength=len(MASK_CLASSES))[: len(MASK_CLASSES)]
        row: dict[str, Any] = {
            "field_id": _field_id(feat, i),
            "date": label,
            "pixels": px,
            "area_ha": round(px * px_ha, 4),
            "valid_ha": round(valid * px_ha, 4),
            "majority_class": names[int(cls_n.argmax())] if valid else None,
            "mean_confidence": round(conf / valid / 250, 4) if valid else None,
        }
        row.update({f"{n}_ha": round(int(k) * px_ha, 4) for n, k in zip(names, cls_n, strict=True)})
        row.update({f"health_{n}_ha": round(int(k) * px_ha, 4) for n, k in zip(hnames, h_n, strict=True)})
        if "mask" in arrays:
            row.update({f"{_column(n)}_ha": round(int(k) * px_ha, 4)
                        for (n, _), k in zip(MASK_CLASSES, m_n, strict=True)})  # fmt: skip
        rows.append(row)
    return rows


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
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return out

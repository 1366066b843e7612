"""Management zones inside fields: ``geofg zones MOSAIC --fields FIELDS -n 3..5 -o OUT``.

The index. By default the mosaic's own index layer, ``ndvi`` (:mod:`geofg.health`: NDVI of every
clear pixel in steps of 0.01; the latest view of a scan mosaic, or ``--time``'s slice), fine
enough to split a field whose NDVI runs from 0.62 to 0.78 where the four health zones (0.2 wide)
see one "vigorous" block. ``--image`` instead recomputes NDVI from an image at full precision (red
and near-infrared found by band name, ``--bands`` names them for files without band
descriptions), resampled onto the mosaic's grid (``average``): for a mosaic without an index layer
(a model without red/NIR bands, or written before mosaic schema 3) or another image of the same
area. Either way only pixels the mosaic classed (not cloud, cloud shadow, snow/ice nor outside the
input) give index values.

Per field (pixels on the mosaic grid):

1. index values: NDVI of the pixels whose centre is inside the field and that are clear;
2. smoothing: a Gaussian of ``smooth_px`` pixels (normalised by the clear pixels, so masked and
   outside pixels do not drag the edge down);
3. holes filled: every pixel touching the field that has no value (cloud, no data, boundary
   pixels) takes the smoothed value of the nearest clear pixel, so the zones cover the field;
4. zones: quantile breaks of the smoothed values (equal-area classes), zone 1 the lowest NDVI;
5. minimum zone area: patches (4-connected) below ``min_area_m2`` join the neighbouring zone
   they share most border with, smallest first; if a field still has more than
   ``max_polygons`` patches the minimum area doubles until it has no more (a field made of more
   than ``max_polygons`` separate parts keeps one patch per part);
6. the count: with a range ``-n 3..5`` the largest count whose zones all survive step 5, else the
   smallest count's result (a uniform or small field keeps fewer zones);
7. polygons: the patches traced (``rasterio.features.shapes``) and clipped to the field, so the
   zones of a field tile it exactly.

Output (GeoPackage ``.gpkg`` or Shapefile ``.shp``), one feature per patch, in the mosaic's CRS
(or ``crs``): ``field_id`` (text), ``field_no`` (integer, 1-based row of the fields file),
``zone`` (integer, 1 = lowest NDVI), ``n_zones`` (integer), ``ndvi_mean`` (real, the zone's
mean unsmoothed NDVI over its clear pixels) and ``area_ha`` (real, the patch). Numeric columns
are numeric in the DBF and every name has at most 10 characters, as Shapefile readers and farm
terminals need. Written to a temporary file (a temporary folder for the Shapefile's parts) beside
OUT and renamed into place.

Bad input is refused with one line (exit 3) before anything is written: the fields file as in
:func:`geofg.products.fields.read_fields`, a mosaic without an index layer and no ``--image``, an
image without red or NIR, an image not overlapping the mosaic, a bad ``-n``, an unknown output extension. Fields outside the mosaic or without a
clear pixel get no zones and are named in a warning.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from geofg.errors import ConfigError, FieldsWarning, InputError
from geofg.health import INDEX, decode_index
from geofg.io import mosaic as mz
from geofg.products.fields import _names, check_output, read_fields
from geofg.io.atomic import atomic_path

OUTPUTS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile"}
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")
COLUMNS = ("field_id", "field_no", "zone", "n_zones", "ndvi_mean", "area_ha")


@dataclass(frozen=True, slots=True)
class ZoneRules:
    """How zones are drawn (see the module docstring); areas in the mosaic CRS's units (m)."""

    n_min: int = 3
    n_max: int = 5
    min_area_m2: float = 2500.0
    smooth_px: float = 1.0
    max_polygons: int = 100


def parse_count(text: str) -> tuple[int, int]:
    """``"4"`` -> (4, 4); ``"3..5"`` -> (3, 5).

    Raises:
        ConfigError: not a count or range of counts within 2..9.

    Examples:
        >>> parse_count("3..5")
        (3, 5)
    """
    parts = text.split("..")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, -1)
    except ValueError:
        lo, hi = 0, -1
    if not 2 <= lo <= hi <= 9:
        raise ConfigError(f"-n {text!r}: expected a zone count or range between 2 and 9 (e.g. 4 or 3..5), "
                          "found something else; fix -n")  # fmt: skip
    return lo, hi


def _index_bands(image: Path, bands: list[str] | None) -> tuple[tuple[str, int], tuple[str, int], Any]:
    """``(path, band)`` of red and of NIR in ``image``, and its nodata.

    Raises:
        InputError: unreadable image, or no band named as red or NIR.
    """
    from geofg.health import band_roles
    from geofg.io.read import open_raster

    info = open_raster([image], bands)
    roles = band_roles(info.band_names or ())
    if "red" not in roles or "nir" not in roles:
        found = ",".join(info.band_names) if info.band_names else f"{info.count} unnamed bands"
        raise InputError(f"{image}: expected a red and a near-infrared band (named B04/RED/R and "
                         f"B08/B8A/NIR/N), found {found}; name the bands with --bands, e.g. "
                         "--bands R,G,B,NIR")  # fmt: skip
    return info.band_files[roles["red"]], info.band_files[roles["nir"]], info.nodata


def _clear_layer(group: Any, grid: dict[str, Any], when: str | None, name: str = "class") -> tuple[Any, int | None]:
    """The layer ``name`` (class: it says which pixels are clear) of the view, and its time index (None: 2-D)."""
    if not grid.get("time"):
        if when is not None:
            raise ConfigError(f"--time {when}: this mosaic has no time axis (written by classify); drop --time")
        return group[name], None
    if when is None:
        return group[mz.LATEST + name], None
    try:
        want = (date.fromisoformat(when) - date(1970, 1, 1)).days
    except ValueError:
        raise ConfigError(f"--time {when!r}: expected a date like 2020-08-31, found something else") from None
    days = [int(v) for v in group["time"][:]]
    if want not in days:
        raise ConfigError(f"--time {when}: the mosaic has no slice for that date; give one of its dates "
                          "(geofg info MOSAIC) or drop --time for the latest view")  # fmt: skip
    return group[name], days.index(want)


def smooth(values: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing normalised by the valid pixels (float64 (rows, cols); NaN where invalid).

    Examples:
        >>> v = np.array([[1.0, 1.0, 9.0]]); ok = np.array([[True, True, False]])
        >>> smooth(v, ok, 1.0)[0, :2].tolist()
        [1.0, 1.0]
    """
    from scipy.ndimage import gaussian_filter

    w = valid.astype(np.float64)
    if sigma <= 0:
        return np.where(valid, values, np.nan)
    num = gaussian_filter(np.where(valid, values, 0.0), sigma, mode="constant")
    den = gaussian_filter(w, sigma, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid & (den > 0), num / den, np.nan)


def fill_nearest(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each invalid pixel takes the value of the nearest valid one (``valid`` must have one)."""
    from scipy.ndimage import distance_transform_edt

    _, (r, c) = distance_transform_edt(~valid, return_indices=True)
    return values[r, c]


def classify_quantiles(values: np.ndarray, inside: np.ndarray, n: int) -> np.ndarray:
    """Zone 1..n by quantile breaks of ``values[inside]`` (0 outside), int32 (rows, cols)."""
    breaks = np.quantile(values[inside], np.arange(1, n) / n)
    zones = np.where(inside, np.searchsorted(breaks, values, side="right") + 1, 0)
    return zones.astype(np.int32)


def merge_small(zones: np.ndarray, min_px: float, weight: np.ndarray | None = None) -> np.ndarray:
    """Merge 4-connected patches smaller than ``min_px`` pixels into their main neighbour zone.

    Smallest patch first; a patch joins the zone it shares most border pixels with; a patch with
    no neighbour (a field of one patch) stays. ``zones`` is int (rows, cols), 0 = outside;
    ``weight`` (float (rows, cols), default 1) is each pixel's share inside the field, so a patch
    is measured by the area it keeps once clipped to the field.

    Examples:
        >>> z = np.array([[1, 1, 1], [1, 2, 1], [1, 1, 1]])
        >>> merge_small(z, 2).tolist()
        [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
    """
    from scipy.ndimage import binary_dilation, label

    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    zones = zones.copy()
    stuck: set[tuple[int, int]] = set()
    while True:
        small = []
        for v in np.unique(zones[zones > 0]):
            lab, n = label(zones == v, structure=cross)
            sizes = np.bincount(lab.ravel(), weights=None if weight is None else weight.ravel(), minlength=n + 1)
            for k in np.flatnonzero(sizes[1:] < min_px) + 1:
                first = np.flatnonzero(lab.ravel() == k)[0]
                if (int(v), int(first)) not in stuck:
                    small.append((float(sizes[k]), int(v), int(first), lab == k))
        if not small:
            return zones
        small.sort(key=lambda s: (s[0], s[2]))
        touched = np.zeros(zones.shape, bool)  # patches grown in this pass are measured again next pass
        for _, v, first, patch in small:
            ring = binary_dilation(patch, structure=cross) & ~patch & (zones > 0)
            if (touched & (patch | ring)).any():
                continue
            if not ring.any():
                stuck.add((v, first))
                continue
            zones[patch] = int(np.bincount(zones[ring]).argmax())
            touched |= patch | ring


def _patches(zones: np.ndarray) -> int:
    from scipy.ndimage import label

    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    return sum(label(zones == v, structure=cross)[1] for v in np.unique(zones[zones > 0]))


def zone_field(values: np.ndarray, valid: np.ndarray, cover: np.ndarray, rules: ZoneRules,
               px_area: float, weight: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Zones 1..k (ascending mean NDVI) on ``cover`` from index ``values`` valid on ``valid``.

    Args:
        values: float (rows, cols) index values.
        valid: bool (rows, cols), where ``values`` count (a subset of ``cover``, not empty).
        cover: bool (rows, cols), the pixels the zones must cover.
        rules: the zone rules.
        px_area: pixel area in CRS units squared.
        weight: float (rows, cols), each pixel's share inside the field (default 1).

    Returns:
        int32 (rows, cols): 0 outside ``cover``.
    """
    smoothed = fill_nearest(smooth(values, valid, rules.smooth_px), valid)
    best = np.zeros(cover.shape, np.int32)
    for n in range(rules.n_max, rules.n_min - 1, -1):
        min_px = rules.min_area_m2 / px_area
        z = merge_small(classify_quantiles(smoothed, cover, n), min_px, weight)
        while _patches(z) > rules.max_polygons and min_px <= cover.sum():  # bound: a field of many parts
            min_px = max(2 * min_px, 1.0)
            z = merge_small(z, min_px, weight)
        best = z
        if len(np.unique(z[cover])) == n:
            break
    present = [v for v in np.unique(best[cover])]
    means = [float(np.mean(values[valid & (best == v)])) if (valid & (best == v)).any() else math.inf
             for v in present]  # fmt: skip
    out = np.zeros_like(best)
    for new, k in enumerate(np.argsort(means, kind="stable"), start=1):
        out[best == present[k]] = new
    return out


def _coverage(geom: Any, shape: tuple[int, int], transform: Any, k: int = 4) -> np.ndarray:
    """Share of each pixel inside ``geom`` (float (rows, cols)), from a k x k supersampled rasterisation."""
    from rasterio.features import rasterize

    fine = rasterize([(geom, 1)], out_shape=(shape[0] * k, shape[1] * k), dtype="uint8",
                     transform=transform * transform.scale(1 / k))  # fmt: skip
    return fine.reshape(shape[0], k, shape[1], k).mean(axis=(1, 3))


def field_zones(mosaic: Path, fields: Path, image: Path | None = None, *, bands: list[str] | None = None,
                rules: ZoneRules | None = None, when: str | None = None) -> Any:  # fmt: skip
    """Management zones of every field (a GeoDataFrame in the mosaic's CRS; see the module docstring).

    ``image`` None takes the index from the mosaic's ``ndvi`` layer, else recomputes NDVI from it.

    Raises:
        InputError: not a mosaic, bad fields or image, no index layer and no image, nothing overlapping.
        ConfigError: ``when`` not a date of the mosaic.
    """
    import geopandas as gpd
    import rasterio
    import rasterio.warp
    import shapely
    import shapely.geometry
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.features import rasterize, shapes
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    from geofg.io.read import gdal_env

    rules = rules or ZoneRules()
    if not mz.is_mosaic(mosaic):
        raise InputError(f"{mosaic}: expected a geofg mosaic (a Zarr group written by classify or scan), "
                         "found none; give the mosaic's path")  # fmt: skip
    group = mz.open_checked(mosaic)
    grid = group.attrs["geofg:grid"]
    layer, t = _clear_layer(group, grid, when)
    if image is None and INDEX not in grid["layers"]:
        raise InputError(f"{mosaic}: expected a mosaic with the {INDEX} index layer, found layers "
                         f"{','.join(grid['layers'])} (a model without red/NIR bands, or a mosaic older than "
                         "schema 3); pass --image with the image it was made from to compute NDVI")  # fmt: skip
    if image is None and bands:
        raise ConfigError("--bands names the bands of --image; give --image too, or drop --bands")
    gdf = read_fields(fields, grid["crs_wkt"])
    a, _, c, _, e, f = grid["transform"]
    height, width = grid["height"], grid["width"]
    px_area = abs(a * e)
    extent = shapely.box(c, f + e * height, c + a * width, f)
    rows: list[dict[str, Any]] = []
    geoms: list[Any] = []
    skipped: list[str] = []
    with gdal_env(), ExitStack() as stack:
        if image is None:
            index, _ = _clear_layer(group, grid, when, INDEX)

            def read_ndvi(win: Window, sl: tuple) -> np.ndarray:
                return decode_index(index[sl])
        else:
            (red_path, red_b), (nir_path, nir_b), nodata = _index_bands(image, bands)
            rsrc = stack.enter_context(rasterio.open(red_path))
            nsrc = stack.enter_context(rasterio.open(nir_path))
            vrt = {"crs": rasterio.crs.CRS.from_wkt(grid["crs_wkt"]), "transform": Affine(a, 0, c, 0, e, f),
                   "width": width, "height": height, "resampling": Resampling.average}  # fmt: skip
            if nodata is not None:
                vrt["src_nodata"] = vrt["nodata"] = nodata
            red_vrt = stack.enter_context(WarpedVRT(rsrc, **vrt))
            nir_vrt = stack.enter_context(WarpedVRT(nsrc, **vrt))
            img_box = shapely.box(*rasterio.warp.transform_bounds(rsrc.crs, vrt["crs"], *rsrc.bounds))
            if not img_box.intersects(extent):
                raise InputError(f"{image}: expected an image overlapping the mosaic, found bounds "
                                 f"{tuple(round(v) for v in img_box.bounds)} outside the mosaic's "
                                 f"{tuple(round(v) for v in extent.bounds)}; give the mosaic's input image")  # fmt: skip

            def read_ndvi(win: Window, sl: tuple) -> np.ndarray:
                red = red_vrt.read(red_b, window=win, masked=True).astype(np.float64)
                nir = nir_vrt.read(nir_b, window=win, masked=True).astype(np.float64)
                total = red.filled(0) + nir.filled(0)
                ok = ~np.ma.getmaskarray(red) & ~np.ma.getmaskarray(nir) & (total > 0)
                with np.errstate(invalid="ignore", divide="ignore"):
                    return np.where(ok, (nir.filled(0) - red.filled(0)) / total, np.nan)

        for no, (fid, geom) in enumerate(zip(gdf["field_id"], gdf.geometry, strict=True), start=1):
            part = shapely.intersection(geom, extent)
            if part.is_empty:
                skipped.append(str(fid))
                continue
            minx, miny, maxx, maxy = part.bounds
            c0, c1 = max(0, math.floor((minx - c) / a)), min(width, math.ceil((maxx - c) / a))
            r0, r1 = max(0, math.floor((maxy - f) / e)), min(height, math.ceil((miny - f) / e))
            if c1 <= c0 or r1 <= r0:
                skipped.append(str(fid))
                continue
            win = Window(c0, r0, c1 - c0, r1 - r0)
            tr = Affine(a, 0, c + c0 * a, 0, e, f + r0 * e)
            shape = (r1 - r0, c1 - c0)
            centre = rasterize([(part, 1)], out_shape=shape, transform=tr, dtype="uint8").astype(bool)
            cover = rasterize([(part, 1)], out_shape=shape, transform=tr, dtype="uint8",
                              all_touched=True).astype(bool)  # fmt: skip
            sl = (slice(r0, r1), slice(c0, c1)) if t is None else (t, slice(r0, r1), slice(c0, c1))
            ndvi = read_ndvi(win, sl)
            ok = (layer[sl] != mz.FILL) & np.isfinite(ndvi)
            ndvi[~ok] = np.nan
            valid = ok & centre
            if not valid.any():
                valid = ok & cover  # a field smaller than a pixel: the pixels it touches
            if not valid.any():
                skipped.append(str(fid))
                continue
            z = zone_field(ndvi, valid, cover, rules, px_area, _coverage(part, shape, tr))
            k = int(z.max())
            means = {v: float(np.mean(ndvi[valid & (z == v)])) if (valid & (z == v)).any() else None
                     for v in range(1, k + 1)}  # fmt: skip
            for poly, v in shapes(z, mask=cover, transform=tr, connectivity=4):
                clipped = shapely.intersection(shapely.geometry.shape(poly), part)
                if clipped.is_empty or clipped.area <= 0:
                    continue
                rows.append({"field_id": str(fid), "field_no": no, "zone": int(v), "n_zones": k,
                             "ndvi_mean": None if means[int(v)] is None else round(means[int(v)], 4),
                             "area_ha": round(clipped.area / 1e4, 4)})  # fmt: skip
                geoms.append(clipped)
    if not rows:
        raise InputError(f"{fields}: expected fields with clear pixels inside the mosaic, found none "
                         f"(mosaic bounds {extent.bounds} in its CRS); check the fields, image and mosaic")  # fmt: skip
    if skipped:
        warnings.warn(f"{fields}: field(s) {_names(skipped)} lie outside the mosaic or have no clear pixel; "
                      "they get no zones", FieldsWarning, stacklevel=2)  # fmt: skip
    return gpd.GeoDataFrame(rows, columns=list(COLUMNS), geometry=geoms, crs=gdf.crs)


def write_zones(table: Any, out: Path, *, crs: str | None = None, overwrite: bool = False) -> Path:
    """Write zones as GeoPackage (``.gpkg``) or Shapefile (``.shp``), atomically; ``crs`` reprojects.

    Raises:
        ConfigError: unknown extension, bad ``crs``, or ``out`` exists without ``overwrite``.
    """
    driver = check_output(out, overwrite, OUTPUTS, ".gpkg (GeoPackage) or .shp (Shapefile)")
    if crs is not None:
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            target = CRS.from_user_input(crs)
        except CRSError:
            raise ConfigError(f"--crs {crs!r}: expected a CRS such as EPSG:4326, found something else; fix --crs") from None
        table = table.to_crs(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex
    if driver == "GPKG":
        with atomic_path(out) as tmp:
            tmp.unlink()  # GDAL's GPKG driver creates the file itself
            table.to_file(tmp, driver=driver, engine="pyogrio", layer="zones")
        return out
    folder = out.with_name(f".{out.stem}.{tag}.tmp")
    folder.mkdir()
    try:
        table.to_file(folder / out.name, driver=driver, engine="pyogrio", encoding="UTF-8")
        for ext in SHAPEFILE_PARTS:
            part = (folder / out.name).with_suffix(ext)
            if part.exists():
                os.replace(part, out.with_suffix(ext))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out

"""Per-field tables of a mosaic: ``geofg fields MOSAIC --fields FIELDS -o OUT``.

FIELDS is GeoJSON, GeoPackage, Shapefile, FlatGeobuf (read by pyogrio) or GeoParquet (read by
geopandas/pyarrow); OUT's extension picks the format: ``.parquet`` GeoParquet 1.1 (the default
kind), ``.gpkg`` GeoPackage, ``.fgb`` FlatGeobuf, ``.csv`` (no geometry). One row per field and
date, long form: a classify mosaic has one date (``date`` empty), a scan mosaic one row per slice
of its time axis, sorted by date.

Statistics are coverage-weighted (``exactextract``): a pixel counts by the share of its area
inside the polygon, so a field of a few pixels is measured by its real area, where counting the
pixels whose centre falls inside can miss it or double it (``geofg stats`` is coverage-weighted too). exactextract reads the
layers through GDAL's Zarr driver (``ZARR:"MOSAIC":/class``; a time layer is one band per
slice), window by window, so memory follows the largest field, not the mosaic.

Columns:

``field_id``      the ``id``/``field_id``/``name`` attribute, else the row number
``date``          ISO date of the slice (scan mosaics), empty for a classify mosaic
``area_ha``       polygon area (in the mosaic's CRS)
``inside_ha``     the part of it inside the mosaic's grid
``clear_share``   share of ``inside_ha`` whose pixels have a land-cover class (not cloud, cloud
                  shadow, snow/ice, nor outside the input)
``dominant_class``  the class with the largest coverage-weighted share
``share_<class>``   share of the classified area in each class (they add up to 1)
``health_assessed_share``  share of the classified area with a health zone
``health_<zone>_share``    share of the assessed area in each zone (they add up to 1)
``ndvi_median``   the coverage-weighted median NDVI of the field's clear pixels (the mosaic's
                  ``ndvi`` layer, steps of 0.01)
``ndvi_mean``     their coverage-weighted mean NDVI

The index columns cover every clear pixel of the field, whatever its class (a field is the
farmer's unit: a harvested or flooded part lowers its median), while the health-zone shares cover
only the crop/grass pixels assessed that date; on a field that is all crop they describe the same
pixels. A mosaic without an ``ndvi`` layer (a model without red/NIR bands, or written before
mosaic schema 3) gives empty index columns. The median *zone* column ``health_median`` of earlier
versions is gone: ``ndvi_median`` is the value it approximated to 0.2.

Bad input is refused with one line and exit 3 before anything is written: a missing or
unreadable file, no features, no CRS, a geometry that is not a polygon (named by its field id),
or no field overlapping the mosaic. Fields in another CRS are reprojected. Invalid polygons
(self-intersections, bow-ties) are repaired with ``shapely.make_valid`` and a warning naming the
fields; fields wholly or partly outside the mosaic are kept (their rows say so) with a warning
naming them. The output is written to a temporary file beside OUT and renamed into place.
"""

from __future__ import annotations

import warnings
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from geofg.errors import ConfigError, FieldsWarning, InputError
from geofg.health import INDEX
from geofg.io import mosaic as mz
from geofg.io import timeseries
from geofg.io.atomic import atomic_path

#: Output extension -> (kind, pyogrio driver or None).
OUTPUTS = {".parquet": "GeoParquet", ".geoparquet": "GeoParquet", ".gpkg": "GPKG", ".fgb": "FlatGeobuf",
           ".csv": "CSV"}  # fmt: skip
ID_COLUMNS = ("id", "field_id", "name")
_SHOWN = 5


def _names(ids: list[str]) -> str:
    more = f" (+{len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else ""
    return ", ".join(ids[:_SHOWN]) + more


def read_fields(path: Path, crs_wkt: str) -> Any:
    """The field polygons of ``path`` in the mosaic's CRS, with a ``field_id`` column (a GeoDataFrame).

    Raises:
        InputError: missing, unreadable or empty file; no CRS; a non-polygon geometry.
    """
    import geopandas as gpd
    import shapely
    from pyproj import CRS

    if not path.is_file():
        raise InputError(f"{path}: expected a file of field polygons (GeoJSON, GeoPackage, Shapefile, "
                         "GeoParquet), found nothing; fix the --fields path")  # fmt: skip
    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            gdf = gpd.read_parquet(path)
        else:
            gdf = gpd.read_file(path, engine="pyogrio", on_invalid="ignore")
    except Exception as e:  # noqa: BLE001 - pyogrio, GDAL, pyarrow and json raise many kinds
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise InputError(f"{path}: expected field polygons (GeoJSON, GeoPackage, Shapefile, FlatGeobuf or "
                         f"GeoParquet), found a file that cannot be read ({first}); check its format "
                         "and text encoding (UTF-8)") from None  # fmt: skip
    if len(gdf) == 0:
        raise InputError(f"{path}: expected at least one field polygon, found none; give a file with fields")
    if gdf.crs is None:
        raise InputError(f"{path}: expected a CRS, found none; set it (e.g. `ogr2ogr -a_srs EPSG:4326 "
                         "fixed.gpkg FIELDS`) and pass the result")  # fmt: skip
    gdf = gdf.reset_index(drop=True)
    idcol = next((c for c in ID_COLUMNS if c in gdf.columns), None)
    ids = gdf[idcol].astype(str) if idcol is not None else gdf.index.astype(str)
    gdf = gdf.assign(field_id=ids.to_numpy())
    geoms = gdf.geometry.to_numpy()
    kinds = shapely.get_type_id(geoms)
    bad = [str(i) for i, k, g in zip(gdf["field_id"], kinds, geoms, strict=True) if g is None or k not in (3, 6)]
    if bad:
        raise InputError(f"{path}: expected Polygon or MultiPolygon geometries, found others or none in "
                         f"field(s) {_names(bad)}; keep only field polygons")  # fmt: skip
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        fixed = shapely.make_valid(geoms[invalid])
        fixed = np.array([_polygons(g) for g in fixed], dtype=object)
        geoms = geoms.copy()
        geoms[invalid] = fixed
        gdf = gdf.set_geometry(gpd.GeoSeries(geoms, crs=gdf.crs, index=gdf.index))
        warnings.warn(f"{path}: repaired invalid polygon(s) (self-intersecting or similar) of field(s) "
                      f"{_names(list(gdf['field_id'][invalid]))} with shapely.make_valid", FieldsWarning, stacklevel=2)  # fmt: skip
    target = CRS.from_wkt(crs_wkt)
    if not CRS(gdf.crs).equals(target):
        gdf = gdf.to_crs(target)
    return gdf


def _polygons(geom: Any) -> Any:
    """The polygonal part of a repaired geometry (make_valid may add lines or points)."""
    import shapely

    if shapely.get_type_id(geom) in (3, 6):
        return geom
    parts = [g for g in shapely.get_parts(geom) if shapely.get_type_id(g) in (3, 6)]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _dates(mosaic: Path, timed: bool) -> list[str]:
    """ISO date of each slice, in slice order ([""] for a mosaic without a time axis)."""
    if not timed:
        return [""]
    epoch = date(1970, 1, 1)
    return [str(epoch + timedelta(days=d)) if d != mz.TIME_FILL else "" for d in timeseries.time_slices(mosaic)]


def field_table(mosaic: Path | str, fields: Path) -> Any:
    """The per-field, per-date table (a GeoDataFrame in the mosaic's CRS; see the module docstring).

    Raises:
        InputError: not a mosaic, bad fields (see :func:`read_fields`), no field inside the mosaic.
    """
    import geopandas as gpd
    import pandas as pd
    import rasterio
    import shapely
    from exactextract import exact_extract

    from geofg.io.store import zarr_gdal_env

    if not mz.is_mosaic(mosaic):
        raise InputError(f"{mosaic}: expected a geofg mosaic (a Zarr group written by classify or scan), "
                         "found none; give the mosaic's path")  # fmt: skip
    group = mz.open_checked(mosaic)
    grid = group.attrs["geofg:grid"]
    gdf = read_fields(fields, grid["crs_wkt"])
    a, _, c, _, e, f = grid["transform"]
    extent = shapely.box(c, f + e * grid["height"], c + a * grid["width"], f)
    inside = shapely.intersection(gdf.geometry.to_numpy(), extent)
    inside_area = shapely.area(inside)
    out = [str(i) for i, x, t in zip(gdf["field_id"], inside_area, shapely.area(gdf.geometry.to_numpy()), strict=True)
           if x < t * (1 - 1e-9)]  # fmt: skip
    if out and len(out) == len(gdf):
        raise InputError(f"{fields}: expected fields overlapping the mosaic, found none inside it (mosaic "
                         f"bounds {extent.bounds} in its CRS); check the fields file and the mosaic")  # fmt: skip
    if out:
        warnings.warn(f"{fields}: field(s) {_names(out)} lie wholly or partly outside the mosaic; their "
                      "rows cover only the part inside (inside_ha)", FieldsWarning, stacklevel=2)  # fmt: skip
    names, hnames = list(grid["class_names"]), list(grid["health_names"])
    timed = bool(grid.get("time"))
    dates = _dates(mosaic, timed)
    px_area = abs(a * e)
    work = gpd.GeoDataFrame({"_row": np.arange(len(gdf))}, geometry=gdf.geometry.to_numpy(), crs=gdf.crs)
    stats: dict[str, Any] = {}
    has_index = INDEX in grid["layers"]
    with zarr_gdal_env(mosaic) as where:  # a local path, or /vsis3/ for a mosaic on S3
        for layer in ("class", "health"):
            with rasterio.open(f'ZARR:"{where}":/{layer}') as src:
                stats[layer] = exact_extract(src, work, ["unique", "frac", "count"], include_cols=["_row"],
                                             output="pandas", strategy="feature-sequential")  # fmt: skip
        if has_index:  # exactextract applies the band's scale and offset: values are NDVI
            with rasterio.open(f'ZARR:"{where}":/{INDEX}') as src:
                stats[INDEX] = exact_extract(src, work, ["median", "mean"], include_cols=["_row"],
                                             output="pandas", strategy="feature-sequential")  # fmt: skip
    rows = []
    for i in range(len(gdf)):
        area = float(gdf.geometry.iloc[i].area)
        for b, when in enumerate(dates):
            row: dict[str, Any] = {"field_id": gdf["field_id"].iloc[i], "date": when,
                                   "area_ha": round(area / 1e4, 6), "inside_ha": round(inside_area[i] / 1e4, 6)}  # fmt: skip
            cls_n = _counts(stats["class"], i, b, timed, len(names))
            h_n = _counts(stats["health"], i, b, timed, len(hnames))
            total = float(cls_n.sum())
            row["clear_share"] = round(total * px_area / inside_area[i], 6) if inside_area[i] > 0 else None
            row["dominant_class"] = names[int(cls_n.argmax())] if total > 0 else None
            for n, k in zip(names, cls_n, strict=True):
                row[f"share_{_column(n)}"] = round(k / total, 6) if total > 0 else None
            hsum = float(h_n.sum())
            row["health_assessed_share"] = round(hsum / total, 6) if total > 0 else None
            for n, k in zip(hnames, h_n, strict=True):
                row[f"health_{_column(n)}_share"] = round(k / hsum, 6) if hsum > 0 else None
            for op in ("median", "mean"):
                row[f"ndvi_{op}"] = _index_stat(stats.get(INDEX), i, b, timed, op)
            rows.append(row)
    table = pd.DataFrame(rows)
    if timed:
        table = table.sort_values(["field_id", "date"], kind="stable").reset_index(drop=True)
    geom = gdf.set_index("field_id").geometry
    return gpd.GeoDataFrame(table, geometry=geom.loc[table["field_id"]].to_numpy(), crs=gdf.crs)


def _counts(df: Any, i: int, band: int, timed: bool, n: int) -> np.ndarray:
    """Coverage-weighted pixel count per value 0..n-1 of feature ``i`` (band ``band`` when timed)."""
    row = df.iloc[i]
    pre = _prefix(row, band, timed)
    values = np.asarray(row[pre + "unique"], dtype=np.int64)
    frac = np.asarray(row[pre + "frac"], dtype=np.float64)
    count = float(row[pre + "count"])
    out = np.zeros(n, np.float64)
    keep = (values >= 0) & (values < n)
    np.add.at(out, values[keep], frac[keep] * count)
    return out


def _prefix(row: Any, band: int, timed: bool) -> str:
    """exactextract's column prefix of band ``band``: ``band_N_`` with several bands, none with one
    (a classify mosaic, or a scan mosaic of a single date)."""
    pre = f"band_{band + 1}_"
    return pre if timed and any(str(k).startswith(pre) for k in row.index) else ""


def _index_stat(df: Any, i: int, band: int, timed: bool, op: str) -> float | None:
    """Feature ``i``'s ``op`` (median, mean) of the index (band ``band`` when timed), None if none."""
    if df is None:
        return None
    row = df.iloc[i]
    v = row[_prefix(row, band, timed) + op]
    return round(float(v), 4) if v is not None and np.isfinite(v) else None


def _column(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def check_output(out: Path, overwrite: bool = False, outputs: dict[str, str] | None = None,
                 expected: str = ".parquet (GeoParquet), .gpkg, .fgb or .csv", option: str = "-o") -> str:
    """The writer for ``out``'s extension among ``outputs`` (default: the table formats), checked
    before any work; every product command (fields, zones, alerts, polygons) refuses the same way.

    Raises:
        ConfigError: unknown extension, or ``out`` exists without ``overwrite``.
    """
    kind = (OUTPUTS if outputs is None else outputs).get(out.suffix.lower())
    if kind is None:
        raise ConfigError(f"{option} {out}: expected {expected}, found "
                          f"{out.suffix or 'no extension'}; change the extension")  # fmt: skip
    if out.exists() and not overwrite:
        raise ConfigError(f"-o {out}: the file exists; pass --overwrite to replace it or choose another path")
    return kind


def write_table(table: Any, out: Path, overwrite: bool = False) -> Path:
    """Write ``table`` by ``out``'s extension (GeoParquet 1.1, GeoPackage, FlatGeobuf, CSV), atomically.

    Raises:
        ConfigError: unknown extension, or ``out`` exists without ``overwrite``.
    """
    kind = check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if kind == "GeoParquet":
            table.to_parquet(tmp, schema_version="1.1.0", write_covering_bbox=True, index=False)
        elif kind == "CSV":
            table.drop(columns=table.geometry.name).to_csv(tmp, index=False)
        else:
            tmp.unlink()  # GDAL's GPKG/FlatGeobuf drivers create the file themselves
            table.to_file(tmp, driver=kind, engine="pyogrio", layer="fields")
    return out

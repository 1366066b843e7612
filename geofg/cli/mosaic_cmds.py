"""``geofg stats``, ``fields``, ``alerts``, ``zones`` and ``info``: commands that read a finished mosaic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from geofg.cli.common import (
    BreakLock,
    Quiet,
    Verbose,
    _configure,
    _fail,
    _mosaic,
    app,
    err,
    out,
)
from geofg.errors import ConfigError, GeofgError


@app.command()
def stats(
    mosaic: Annotated[str, typer.Argument(help="A geofg mosaic (from classify or scan): a path or s3://BUCKET/PREFIX.zarr.")],
    fields: Annotated[Path, typer.Option("--fields", help="GeoJSON of field polygons (lon/lat, or a legacy crs member).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="OUT.csv (a row per field) or OUT.geojson (the fields with statistics).")],
    time: Annotated[Optional[str], typer.Option("--time", help="A date of a scan mosaic, e.g. 2020-08-31 (default: the latest view).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Per-field area per class and health class, majority class and mean confidence of a mosaic."""
    _configure(verbose, quiet)
    from geofg.scan.stats import field_stats, write_stats

    try:
        rows = field_stats(_mosaic(mosaic), fields, when=time)
        path = write_stats(rows, fields, output, overwrite=overwrite)
    except GeofgError as e:
        raise _fail(e) from None
    if not quiet:
        out.print(f"{len(rows)} fields -> {path}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def fields(
    mosaic: Annotated[str, typer.Argument(help="A geofg mosaic (from classify or scan): a path or s3://BUCKET/PREFIX.zarr.")],
    fields_file: Annotated[Path, typer.Option("--fields", help="Field polygons: GeoJSON, GeoPackage, Shapefile, FlatGeobuf or GeoParquet (any CRS).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="OUT.parquet (GeoParquet 1.1), OUT.gpkg, OUT.fgb or OUT.csv: a row per field and date.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Per-field, per-date table: area, clear share, class shares, dominant class, health-zone shares, median and mean NDVI (coverage-weighted)."""
    _configure(verbose, quiet)
    from geofg.products.fields import check_output, field_table, write_table

    try:
        check_output(output, overwrite)
        table = field_table(_mosaic(mosaic), fields_file)
        path = write_table(table, output, overwrite=overwrite)
    except GeofgError as e:
        raise _fail(e) from None
    if not quiet:
        out.print(f"{table['field_id'].nunique()} fields x {table['date'].nunique()} date(s) -> {path}",
                  highlight=False, markup=False, soft_wrap=True)


@app.command()
def alerts(
    mosaic: Annotated[str, typer.Argument(help="A scan mosaic (with a time axis): a path or s3://BUCKET/PREFIX.zarr.")],
    fields_file: Annotated[Path, typer.Option("--fields", help="Field polygons: GeoJSON, GeoPackage, Shapefile, FlatGeobuf or GeoParquet (any CRS).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="OUT.csv, OUT.parquet, OUT.gpkg or OUT.fgb: one row per alert.")],
    series: Annotated[Optional[Path], typer.Option("--series", help="Also write the per-field, per-date table (as `geofg fields`) here.")] = None,
    drop: Annotated[float, typer.Option("--drop", help="Alert when the field's median NDVI falls this much below its baseline.")] = 0.1,
    min_clear: Annotated[float, typer.Option("--min-clear", help="Least clear share of a field for a date to count.")] = 0.7,
    min_assessed_ha: Annotated[float, typer.Option("--min-assessed", help="Least assessed crop/grass area (ha) of a field for a date to count.")] = 1.0,
    window: Annotated[int, typer.Option("--window", help="The baseline is the median of this many latest earlier counted dates.")] = 3,
    min_history: Annotated[int, typer.Option("--min-history", help="Earlier counted dates a baseline needs.")] = 3,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Alert list: fields whose median NDVI drops against their recent clear baseline (scan mosaics)."""
    _configure(verbose, quiet)
    from geofg.products.alerts import AlertRules, mosaic_alerts
    from geofg.products.fields import check_output, write_table

    try:
        rules = AlertRules(drop=drop, min_clear=min_clear, min_assessed_ha=min_assessed_ha, window=window,
                           min_history=min_history)  # fmt: skip
        for path in (output, series):
            if path is not None:
                check_output(path, overwrite)
        table, found = mosaic_alerts(_mosaic(mosaic), fields_file, rules)
        if series is not None:
            write_table(table, series, overwrite=overwrite)
        path = write_table(found, output, overwrite=overwrite)
    except GeofgError as e:
        raise _fail(e) from None
    if not quiet:
        out.print(f"{len(found)} alert(s) in {table['field_id'].nunique()} fields x {table['date'].nunique()} "
                  f"dates -> {path}", highlight=False, markup=False, soft_wrap=True)


@app.command()
def zones(
    mosaic: Annotated[Path, typer.Argument(help="A geofg mosaic (from classify or scan): its class layer says which pixels are clear.")],
    fields_file: Annotated[Path, typer.Option("--fields", help="Field polygons: GeoJSON, GeoPackage, Shapefile, FlatGeobuf or GeoParquet (any CRS).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="OUT.gpkg (GeoPackage) or OUT.shp (Shapefile): a polygon per zone patch.")],
    image: Annotated[Optional[Path], typer.Option("--image", help="Recompute NDVI from this image's red and NIR bands (full precision) instead of the mosaic's ndvi layer; needed for mosaics without one.")] = None,
    n: Annotated[str, typer.Option("-n", "--zones", help="Zones per field: a count (4) or a range (3..5: the most that survive the minimum area).")] = "3..5",
    bands: Annotated[Optional[str], typer.Option("--bands", help="Band names of --image in file order, e.g. R,G,B,NIR (when it has no band descriptions).")] = None,
    min_area_ha: Annotated[float, typer.Option("--min-area", help="Minimum zone patch area in ha; smaller patches join their neighbour.")] = 0.25,
    smooth_px: Annotated[float, typer.Option("--smooth", help="Gaussian smoothing of the NDVI, sigma in mosaic pixels (0: none).")] = 1.0,
    time: Annotated[Optional[str], typer.Option("--time", help="A scan mosaic's date whose mask to use (default: the latest view).")] = None,
    crs: Annotated[Optional[str], typer.Option("--crs", help="Write in this CRS (e.g. EPSG:4326 for terminals that want lon/lat); default: the mosaic's.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Management zones inside each field from the mosaic's NDVI (smoothed, minimum area, holes filled) as GeoPackage or Shapefile."""
    _configure(verbose, quiet)
    from geofg.products.zones import ZoneRules, field_zones, parse_count, write_zones

    try:
        lo, hi = parse_count(n)
        if not min_area_ha >= 0 or not smooth_px >= 0:
            raise ConfigError(f"--min-area {min_area_ha} / --smooth {smooth_px}: expected numbers >= 0; fix them")
        rules = ZoneRules(n_min=lo, n_max=hi, min_area_m2=min_area_ha * 1e4, smooth_px=smooth_px)
        names = [b.strip() for b in bands.split(",")] if bands else None
        table = field_zones(mosaic, fields_file, image, bands=names, rules=rules, when=time)
        path = write_zones(table, output, crs=crs, overwrite=overwrite)
    except GeofgError as e:
        raise _fail(e) from None
    if not quiet:
        out.print(f"{table['field_id'].nunique()} fields, {len(table)} zone polygons -> {path}",
                  highlight=False, markup=False, soft_wrap=True)


@app.command()
def info(mosaic: Annotated[str, typer.Argument(help="A geofg Zarr mosaic: a path or s3://BUCKET/PREFIX.zarr.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
         verify: Annotated[bool, typer.Option("--verify", help="Check every done unit's chunks (present, the size written, decodable with a valid checksum); mark damaged units failed so the next run redoes them; exit 4 if any.")] = False,
         break_lock: BreakLock = False) -> None:
    """Describe a mosaic: grid, CRS, arrays, provenance, units done, lock."""
    from geofg.cli_output import describe_mosaic, print_info

    _configure(0, False)
    try:
        mosaic = _mosaic(mosaic)
        damaged = None
        if verify:
            from geofg.run import verify_mosaic

            damaged = verify_mosaic(mosaic, break_lock=break_lock)
        desc = describe_mosaic(mosaic)
    except GeofgError as e:
        raise _fail(e) from None
    if damaged is not None:
        desc["verify"] = damaged
    if as_json:
        import json

        out.print_json(json.dumps(desc))
    else:
        print_info(out, desc)
    if damaged:
        ids = ", ".join(sorted(damaged)[:10])
        err.print(f"geofg: error: {len(damaged)} unit(s) have missing or damaged chunks ({ids}); "
                  "they are marked failed: re-run the command that made the mosaic to redo them",
                  highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(4)

"""The ``geofg`` command line: parse -> JobConfig -> one library call -> render -> exit code.

Exit codes live in one table, :data:`EXIT_CODES` (each GeofgError class carries its code):
0 done, 2 usage, 3 input/config/weights rejected before any write (or an input changed during
the run), 4 finished with failed units (or damaged units found by ``info --verify``), 5 cluster
unreachable or insecure, 6 mosaic locked by another run, 7 output could not be written (disk full,
read-only), 8 interrupted by SIGTERM/SIGINT (lock released, re-run resumes). Error lines are cut
to :data:`MAX_ERROR_CHARS`. Unexpected exceptions keep their traceback. Heavy imports (torch, rasterio, zarr) happen inside commands so ``--help`` is instant.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from geofg import __version__
from geofg.errors import ConfigError, GeofgError
from geofg.models.registry import DEFAULT_MODEL

EXIT_CODES = {
    "done": 0,
    "usage": 2,
    "rejected before any write": 3,
    "finished with failed units": 4,
    "cluster unreachable or insecure": 5,
    "mosaic locked by another run": 6,
    "output could not be written (disk full, read-only); re-run resumes": 7,
    "interrupted by SIGTERM or SIGINT (lock released); re-run resumes": 8,
}
MAX_ERROR_CHARS = 600
"""Longest error line printed (a hostile config must not print megabytes)."""

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Land-cover and crop-health maps from satellite rasters, tile by tile, into Zarr mosaics.",
)
models_app = typer.Typer(no_args_is_help=True, help="Model bundles.")
app.add_typer(models_app, name="models")
out = Console()
err = Console(stderr=True)


def _configure(verbose: int, quiet: bool) -> None:
    level = logging.WARNING - 10 * verbose if not quiet else logging.ERROR
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
        if not quiet or not issubclass(category, UserWarning):
            err.print(f"[yellow]warning:[/] {message}", highlight=False)

    warnings.showwarning = show


def _fail(e: GeofgError) -> typer.Exit:
    line = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
    if len(line) > MAX_ERROR_CHARS:
        line = line[: MAX_ERROR_CHARS - 25] + f" ... ({len(line):,} chars cut)"
    err.print(f"[red]geofg: error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return typer.Exit(e.exit_code)


Inputs = Annotated[list[str], typer.Argument(help="A GeoTIFF/COG (local or s3://BUCKET/KEY), a STAC Item or ItemCollection (.json, local or s3://), a Sentinel-2 band-file folder or files, or several scenes: files, a quoted glob, or a manifest (@list.txt, one path per line) written into one mosaic on their union grid.")]
Output = Annotated[Optional[str], typer.Option("-o", "--output", help="Output Zarr mosaic: a local path or s3://BUCKET/PREFIX.zarr.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Bundle name or .safetensors path.")]
ModelsOpt = Annotated[list[str], typer.Option("--model", "-m", help="Bundle name, .safetensors or exported .onnx path; repeat to average an ensemble's probabilities.")]
Tta = Annotated[bool, typer.Option("--tta", help="Average over the 8 flips/rot90s of each tile (8x the compute).")]
Compile = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the network: faster forwards after a one-off compilation (about "
    "40 s on 2 CPU cores, seconds once torch's disk cache has it); pays off from a few hundred "
    "units. Outputs may differ in the last bits.")]
Bands = Annotated[Optional[str], typer.Option(help="Band names, comma-separated, e.g. B02,B03,B04,B08.")]
TileSize = Annotated[Optional[int], typer.Option("--tile-size", help="Model tile edge (px).")]
Halo = Annotated[Optional[int], typer.Option(help="Context pixels read around each unit.")]
Chunk = Annotated[int, typer.Option(help="Mosaic chunk edge = unit size (px).")]
Batch = Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
Resume = Annotated[bool, typer.Option("--resume/--overwrite", help="Resume an existing mosaic, or replace it.")]
BreakLock = Annotated[bool, typer.Option("--break-lock", help="Take over a lock held by a run on another host.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the plan and exit; write nothing.")]
Verbose = Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logging (-vv for debug).")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar or tables.")]
AssumeCrs = Annotated[Optional[str], typer.Option("--assume-crs", help="CRS for inputs that have none, e.g. EPSG:32633.")]
MaxPixels = Annotated[int, typer.Option("--max-pixels", help="Refuse inputs declaring more pixels x bands.")]
MaxRatio = Annotated[float, typer.Option("--max-compression-ratio", help="Refuse inputs declaring more than this many times their file size (decompression bombs).")]
Profile = Annotated[bool, typer.Option("--profile", help="Print seconds per stage (read, compute, write).")]
Runner = Annotated[Optional[str], typer.Option("--runner", help="local (default: in this process) or ray (Ray actors, one per GPU); --ray-address implies ray.")]
RayAddress = Annotated[Optional[str], typer.Option("--ray-address", envvar="RAY_ADDRESS", help="Ray cluster to run on: host:6379, ray://host:10001 or auto (default: RAY_ADDRESS; none starts a local Ray).")]
Mask = Annotated[Optional[bool], typer.Option("--mask/--no-mask", help="Mask clouds, cloud shadows and snow/ice (ukis-csmask + NDSI); default: on for Sentinel-2 band names, off otherwise. --mask refuses inputs it cannot mask.")]
AllowInsecure = Annotated[bool, typer.Option("--allow-insecure-cluster", help="Run on a Ray cluster even if it accepts unauthenticated requests (token auth off).")]


def _job(task: str, inputs: list[str], output: str | Path | None, model: str, bands: str | None,
         tile_size: int | None, halo: int | None, chunk: int, batch_size: int, device: str,
         resume: bool, break_lock: bool, assume_crs: str | None, max_pixels: int,
         max_compression_ratio: float, runner: str | None, ray_address: str | None = None,
         allow_insecure_cluster: bool = False, tta: bool = False,
         compile: bool = False, mask: bool | None = None):  # noqa: ANN202, A002
    from geofg.config import build_job

    models = [model] if isinstance(model, str) else list(model)

    if output is None:
        first = Path(inputs[0])
        output = Path((first.name if first.is_dir() else first.stem) + f".{task}.zarr")
    return build_job(
        {
            "task": task,
            "read": {
                "inputs": [str(p) for p in inputs],
                "bands": [b.strip() for b in bands.split(",")] if bands else None,
                "assume_crs": assume_crs,
                "max_pixels": max_pixels,
                "max_compression_ratio": max_compression_ratio,
            },
            "tile": {"chunk": chunk, "tile_size": tile_size, "halo": halo, "batch_size": batch_size},
            "model": {"model": models[0], "ensemble": models[1:], "tta": tta, "device": device,
                      "compile": compile},
            "write": {"output": str(output), "mode": "resume" if resume else "overwrite",
                      "break_lock": break_lock},
            "runner": {"kind": runner or ("ray" if ray_address else "local"), "address": ray_address,
                       "allow_insecure_cluster": allow_insecure_cluster},
            "mask": {"mode": "auto" if mask is None else ("on" if mask else "off")},
        }
    )


def _run(task: str, dry_run: bool, quiet: bool, profile: bool, **kw) -> None:  # noqa: ANN003
    from geofg.cli_output import print_dry_run, print_result, progress_bar

    try:
        job = _job(task, **kw)
        if dry_run:
            from geofg.pipeline import plan

            print_dry_run(out, plan(job))
            return
        from geofg.run import run_job

        with progress_bar(out, disabled=quiet) as on_progress:
            result = run_job(job, on_progress=on_progress)
        if not quiet:
            print_result(out, result, profile)
    except GeofgError as e:
        result = getattr(e, "result", None)
        if result is not None and not quiet:
            print_result(out, result, profile)
        raise _fail(e) from None


@app.command()
def classify(
    inputs: Inputs, output: Output = None, model: ModelsOpt = [DEFAULT_MODEL], bands: Bands = None,
    tile_size: TileSize = None, halo: Halo = None, chunk: Chunk = 1024, batch_size: Batch = 1,
    device: Device = "auto", resume: Resume = True, break_lock: BreakLock = False,
    assume_crs: AssumeCrs = None, max_pixels: MaxPixels = 20_000_000_000,
    max_compression_ratio: MaxRatio = 2000.0, runner: Runner = None, ray_address: RayAddress = None,
    allow_insecure_cluster: AllowInsecure = False, tta: Tta = False, compile: Compile = False,  # noqa: A002
    mask: Mask = None,
    dry_run: DryRun = False, profile: Profile = False, verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Map land cover, crop health and confidence over INPUTS into a Zarr mosaic."""
    _configure(verbose, quiet)
    _run("classify", dry_run, quiet, profile, inputs=inputs, output=output, model=model,
         bands=bands, tile_size=tile_size, halo=halo, chunk=chunk, batch_size=batch_size,
         device=device, resume=resume, break_lock=break_lock, assume_crs=assume_crs,
         max_pixels=max_pixels, max_compression_ratio=max_compression_ratio, runner=runner,
         ray_address=ray_address, allow_insecure_cluster=allow_insecure_cluster, tta=tta,
         compile=compile, mask=mask)


@app.command()
def segment(
    inputs: Inputs, model: ModelsOpt, output: Output = None, bands: Bands = None,
    tile_size: TileSize = None, halo: Halo = None, chunk: Chunk = 1024, batch_size: Batch = 1,
    device: Device = "auto", resume: Resume = True, break_lock: BreakLock = False,
    assume_crs: AssumeCrs = None, max_pixels: MaxPixels = 20_000_000_000,
    max_compression_ratio: MaxRatio = 2000.0, runner: Runner = None, ray_address: RayAddress = None,
    allow_insecure_cluster: AllowInsecure = False, tta: Tta = False, compile: Compile = False,  # noqa: A002
    mask: Mask = None,
    dry_run: DryRun = False, profile: Profile = False, verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Run a segmentation bundle over INPUTS into a Zarr mosaic."""
    _configure(verbose, quiet)
    _run("segment", dry_run, quiet, profile, inputs=inputs, output=output, model=model,
         bands=bands, tile_size=tile_size, halo=halo, chunk=chunk, batch_size=batch_size,
         device=device, resume=resume, break_lock=break_lock, assume_crs=assume_crs,
         max_pixels=max_pixels, max_compression_ratio=max_compression_ratio, runner=runner,
         ray_address=ray_address, allow_insecure_cluster=allow_insecure_cluster, tta=tta,
         compile=compile, mask=mask)


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    args: Annotated[list[str], typer.Argument(help="`geofg classify` arguments after --: INPUTS -o OUTPUT [options]; paths as the cluster sees them.")],
    address: Annotated[Optional[str], typer.Option("--address", help="The cluster's Jobs API (dashboard) URL, e.g. http://head:8265 (default: RAY_API_SERVER_ADDRESS or RAY_ADDRESS).")] = None,
    submission_id: Annotated[Optional[str], typer.Option("--submission-id", help="Job id (default: derived from the job's config and inputs, so a repeated submit runs once).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the job and exit with its exit code.")] = True,
    runtime_env: Annotated[Optional[Path], typer.Option("--runtime-env", help="runtime_env YAML, e.g. cluster/runtime_env.yaml.")] = None,
    allow_insecure_cluster: AllowInsecure = False, verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Submit `geofg classify ARGS --runner ray` to a Ray cluster; exit with the job's own exit code."""
    _configure(verbose, quiet)
    import click
    import yaml

    from geofg.submit import classify_entrypoint
    from geofg.submit import submit as submit_job

    command = typer.main.get_command(app).get_command(click.Context(click.Command("geofg")), "classify")
    params = command.make_context("classify", list(args)).params  # the same options as classify
    for name in ("dry_run", "profile", "verbose", "quiet"):
        params.pop(name, None)
    try:
        job = _job("classify", **{**params, "runner": "ray"})
        env = yaml.safe_load(runtime_env.read_text()) if runtime_env else None
        res = submit_job(job, classify_entrypoint(list(args)), address=address, submission_id=submission_id,
                         wait=wait, runtime_env=env, allow_insecure_cluster=allow_insecure_cluster)
    except GeofgError as e:
        raise _fail(e) from None
    if res.logs and not quiet:
        out.print(res.logs.rstrip()[-8000:], highlight=False, markup=False)
    err.print(f"geofg: job {res.submission_id}: {res.message or res.status}, exit {res.exit_code}",
              highlight=False, markup=False)
    raise typer.Exit(res.exit_code)


@app.command()
def scan(
    config: Annotated[Optional[Path], typer.Argument(help="Scan config, YAML (docs/scan.md, examples/scan.yaml).")] = None,
    break_lock: BreakLock = False,
    print_schema: Annotated[bool, typer.Option("--print-schema", help="Print the config's JSON schema and exit.")] = False,
    runner: Annotated[Optional[str], typer.Option("--runner", help="local or ray (each date's units on Ray actors); overrides runner.kind of the config.")] = None,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Process only new or changed inbox scenes onto a fixed grid: one time slice per date, a latest view, a run report."""
    _configure(verbose, quiet)
    import json

    from geofg.scan.config import ScanConfig, load_scan

    if print_schema:
        out.print_json(json.dumps(ScanConfig.model_json_schema()))
        return
    if config is None:
        err.print("geofg: error: give the scan config: geofg scan SCAN.yaml", highlight=False)
        raise typer.Exit(2)
    from geofg.scan.run import run_scan

    try:
        cfg = load_scan(config)
        if runner is not None:
            from geofg.scan.config import with_runner

            cfg = with_runner(cfg, runner, source=f"{config} (--runner)")
        result = run_scan(cfg, break_lock=break_lock)
    except GeofgError as e:
        result = getattr(e, "result", None)
        if result is not None and not quiet:
            _print_scan(result)
        raise _fail(e) from None
    if not quiet:
        _print_scan(result)


def _print_scan(r) -> None:  # noqa: ANN001
    counts = ", ".join(f"{r.count(s)} {s}" for s in ("processed", "skipped", "deferred", "failed", "deleted"))
    out.print(f"scenes: {counts}", highlight=False, soft_wrap=True)
    for s in r.scenes:
        if s.status in ("deferred", "failed", "deleted") or (s.status == "skipped" and "outside" in s.reason):
            out.print(f"  {s.name}: {s.status}: {s.reason}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"units: {r.units_ran} ran ({r.units_empty} empty), {r.units_skipped} current, "
              f"{len(r.units_failed)} failed; {r.km2_processed:.3f} km² processed; dates written: "
              f"{', '.join(r.dates_touched) or 'none'}", highlight=False, soft_wrap=True)
    if r.report_paths:
        out.print(f"report: {r.report_paths[1]}", highlight=False, markup=False, soft_wrap=True)


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
    """Per-field, per-date table: area, clear share, class shares, dominant class, health-zone shares (coverage-weighted)."""
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
    mosaic: Annotated[Path, typer.Argument(help="A scan mosaic (with a time axis).")],
    fields_file: Annotated[Path, typer.Option("--fields", help="Field polygons: GeoJSON, GeoPackage, Shapefile, FlatGeobuf or GeoParquet (any CRS).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="OUT.csv, OUT.parquet, OUT.gpkg or OUT.fgb: one row per alert.")],
    series: Annotated[Optional[Path], typer.Option("--series", help="Also write the per-field, per-date table (as `geofg fields`) here.")] = None,
    drop: Annotated[float, typer.Option("--drop", help="Alert when the median health zone falls this many zones below the baseline.")] = 1.0,
    min_clear: Annotated[float, typer.Option("--min-clear", help="Least clear share of a field for a date to count.")] = 0.7,
    min_assessed_ha: Annotated[float, typer.Option("--min-assessed", help="Least assessed crop/grass area (ha) of a field for a date to count.")] = 1.0,
    window: Annotated[int, typer.Option("--window", help="The baseline is the median of this many latest earlier counted dates.")] = 3,
    min_history: Annotated[int, typer.Option("--min-history", help="Earlier counted dates a baseline needs.")] = 3,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Alert list: fields whose median health zone drops against their recent baseline (scan mosaics)."""
    _configure(verbose, quiet)
    from geofg.products.alerts import AlertRules, mosaic_alerts
    from geofg.products.fields import check_output, write_table

    try:
        rules = AlertRules(drop=drop, min_clear=min_clear, min_assessed_ha=min_assessed_ha, window=window,
                           min_history=min_history)  # fmt: skip
        for path in (output, series):
            if path is not None:
                check_output(path, overwrite)
        table, found = mosaic_alerts(mosaic, fields_file, rules)
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
    image: Annotated[Path, typer.Option("--image", help="The image the mosaic (or --time's slice) was made from: NDVI comes from its red and NIR bands.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="OUT.gpkg (GeoPackage) or OUT.shp (Shapefile): a polygon per zone patch.")],
    n: Annotated[str, typer.Option("-n", "--zones", help="Zones per field: a count (4) or a range (3..5: the most that survive the minimum area).")] = "3..5",
    bands: Annotated[Optional[str], typer.Option("--bands", help="Band names of --image in file order, e.g. R,G,B,NIR (when it has no band descriptions).")] = None,
    min_area_ha: Annotated[float, typer.Option("--min-area", help="Minimum zone patch area in ha; smaller patches join their neighbour.")] = 0.25,
    smooth_px: Annotated[float, typer.Option("--smooth", help="Gaussian smoothing of the NDVI, sigma in mosaic pixels (0: none).")] = 1.0,
    time: Annotated[Optional[str], typer.Option("--time", help="A scan mosaic's date whose mask to use (default: the latest view).")] = None,
    crs: Annotated[Optional[str], typer.Option("--crs", help="Write in this CRS (e.g. EPSG:4326 for terminals that want lon/lat); default: the mosaic's.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Management zones inside each field from NDVI (smoothed, minimum area, holes filled) as GeoPackage or Shapefile."""
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


@models_app.command("list")
def models_list() -> None:
    """List installed bundles with their bands, classes and held-out metrics."""
    from geofg.models.registry import list_models

    models = list_models()
    if not models:
        out.print("no bundles found; pass --model PATH to a .safetensors bundle")
    for path, card in models:
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in card.metrics.items() if isinstance(v, float))
        out.print(f"[bold]{card.name}[/bold]  {card.task}, {len(card.bands)} bands, {len(card.classes)} classes")
        out.print(f"  bands:   {','.join(card.bands)}", soft_wrap=True)
        out.print(f"  classes: {', '.join(c.name for c in card.classes)}", soft_wrap=True)
        out.print(f"  held-out metrics: {metrics or '-'}", soft_wrap=True)
        out.print(f"  path:    {path}", soft_wrap=True, highlight=False)


train_app = typer.Typer(no_args_is_help=True, help="Train models: a classifier on labelled chips, a segmenter on a labelled scene.")
app.add_typer(train_app, name="train")


@train_app.command("classifier")
def train_classifier_cmd(
    data: Annotated[Path, typer.Option("--data", help="Chips: a folder with labels.csv (file,label,split), a labels .csv, or one sub-folder per class.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The bundle to write (.safetensors).")],
    name: Annotated[Optional[str], typer.Option(help="Bundle name (default: the output's stem).")] = None,
    bands: Bands = None,
    scale: Annotated[Optional[float], typer.Option(help="Input scale: model input = DN * scale (default: 1e-4 for uint16, 1/255 for uint8).")] = None,
    encoder: Annotated[str, typer.Option(help="smp encoder without squeeze-excitation.")] = "tu-mobilenetv4_conv_small",
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 150,
    patience: Annotated[int, typer.Option(help="Early stopping: evaluations without val improvement (0 = off).")] = 5,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Epochs between val evaluations (and checkpoints).")] = 5,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine).")] = 2e-3,
    crop_px: Annotated[int, typer.Option("--crop-px", help="Random crops: shift chips by up to this many px.")] = 4,
    class_weighting: Annotated[bool, typer.Option("--class-weighting/--no-class-weighting", help="Weight the loss by inverse class frequency.")] = True,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Val share drawn per class when the data has no split.")] = 0.15,
    crop_classes: Annotated[Optional[str], typer.Option("--crop-classes", help="Classes where crop health applies, comma-separated.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 13,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 2,
    device: Device = "auto",
    checkpoint_dir: Annotated[Optional[Path], typer.Option("--checkpoint-dir", help="Save resumable state here; a re-run with the same arguments resumes from it.")] = None,
    init: Annotated[Optional[str], typer.Option("--init", help="Start from this bundle (same bands and encoder): transfer learning.")] = None,
    freeze_encoder: Annotated[bool, typer.Option("--freeze-encoder", help="With --init: train only the head and spectral branch.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output bundle.")] = False,
    search: Annotated[Optional[Path], typer.Option("--search", help="Hyper-parameter search (Ray Tune) over the space in this YAML (examples/search.yaml); the best trial on val is written to -o, a report to OUT.search.json/.md.")] = None,
    trials: Annotated[Optional[int], typer.Option("--trials", help="With --search (random): number of trials.")] = None,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Train a patch classifier (dense over scenes) on labelled chips and write a bundle."""
    _configure(verbose, quiet)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from geofg.models.train import TrainConfig, train_bundle

    cfg = TrainConfig(encoder=encoder, epochs=epochs, patience=patience, eval_every=eval_every,
                      lr=lr, crop_px=crop_px, class_weighting=class_weighting, seed=seed,
                      threads=threads, device=device)
    if freeze_encoder and not init:
        err.print("[red]geofg: error:[/] --freeze-encoder needs --init BUNDLE; add --init")
        raise typer.Exit(2)
    crops = [c.strip() for c in crop_classes.split(",")] if crop_classes else []
    if search is not None or trials is not None:
        _search_cmd(search, trials, data, output, cfg, name=name, crop_classes=crops, scale=scale,
                    bands=[b.strip() for b in bands.split(",")] if bands else None,
                    val_fraction=val_fraction, init=init, freeze_encoder=freeze_encoder,
                    overwrite=overwrite, checkpoint_dir=checkpoint_dir, quiet=quiet)
        return
    bar = Progress(TextColumn("[bold]epochs"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                   TimeRemainingColumn(), console=out, disable=quiet)
    task = bar.add_task("train", total=epochs, info="")
    state = {"val": "", "started": False}

    def on_epoch(rec: dict) -> None:  # the bar starts with training, after every input check
        if not state["started"]:
            bar.start()
            state["started"] = True
        if "resumed_from" in rec:
            bar.update(task, completed=rec["resumed_from"])
            bar.console.print(f"resumed from the checkpoint after epoch {rec['resumed_from']}")
            return
        if "val_accuracy" in rec:
            state["val"] = f"val acc {rec['val_accuracy']:.3f} nll {rec['val_nll']:.3f}"
        bar.update(task, completed=rec["epoch"], info=f"loss {rec['loss']:.3f}  {state['val']}")

    try:
        res = train_bundle(data, output, cfg, name=name,
                           bands=[b.strip() for b in bands.split(",")] if bands else None,
                           scale=scale, crop_classes=crops, val_fraction=val_fraction,
                           checkpoint_dir=checkpoint_dir, init=init,
                           freeze_encoder=freeze_encoder, overwrite=overwrite, on_epoch=on_epoch)
    except GeofgError as e:
        raise _fail(e) from None
    finally:
        if state["started"]:
            bar.stop()
    rec, card = res["record"], res["card"]
    for note in res["notes"]:
        out.print(f"note: {note}", highlight=False)
    val = card.metrics.get("val_accuracy")
    out.print(f"wrote {res['bundle']} (sha256 {res['sha256'][:12]}): {len(card.bands)} bands, "
              f"{len(card.classes)} classes, best epoch {rec['best_epoch']} of {rec['epochs_run']}"
              f"{' (stopped early)' if rec['stopped_early'] else ''}, "
              f"val accuracy {'-' if val is None else f'{val:.3f}'}, {rec['train_seconds']:.0f} s on {rec['device']}",
              highlight=False, soft_wrap=True)


def _search_cmd(search: Optional[Path], trials: Optional[int], data: Path, output: Path, cfg,  # noqa: ANN001
                checkpoint_dir: Optional[Path], quiet: bool, **kw) -> None:  # noqa: ANN003
    """``geofg train classifier --search``: geofg.models.search, a table of the trials."""
    from rich.table import Table

    from geofg.models.search import format_params, load_space, search_bundle, trial_table

    def on_trial(t: dict) -> None:
        if not quiet:
            acc = t.get("val_accuracy")
            out.print(f"trial {t['trial']} {t['status']}: {format_params(t['config'])}"
                      f"{'' if acc is None else f', val accuracy {acc:.3f}'}", highlight=False)

    try:
        if search is None:
            raise ConfigError("--trials needs --search SPACE.yaml; add --search")
        if checkpoint_dir is not None:
            raise ConfigError("--checkpoint-dir does not apply to --search (each trial is a fresh"
                              " run); drop it")
        space = load_space(search, trials=trials, epochs=cfg.epochs,
                           freeze_encoder=kw["freeze_encoder"])
        report = search_bundle(data, output, cfg, space, space_path=search, on_trial=on_trial, **kw)
    except GeofgError as e:
        report = getattr(e, "report", None)
        if report is None:
            raise _fail(e) from None
        failed = e
    else:
        failed = None
    if not quiet:
        headers, rows = trial_table(report)
        table = Table(*headers, title=f"search: {len(rows)} trials, best on val")
        for row in rows:
            table.add_row(*row)
        out.print(table)
    best = report["best"]
    out.print(f"wrote {report['bundle']} (sha256 {report['sha256'][:12]}): trial {best['index']},"
              f" val accuracy {best['val_accuracy']:.3f}; report {report['report_md']}",
              highlight=False, soft_wrap=True)
    if failed is not None:
        raise _fail(failed)


@train_app.command("segmenter")
def train_segmenter_cmd(
    image: Annotated[Path, typer.Option("--image", help="The scene to train on (GeoTIFF/COG or Sentinel-2 band files).")],
    labels: Annotated[Path, typer.Option("--labels", help="Dense labels: polygons (.gpkg/.geojson/.shp/.fgb, class in --class-field) or a class mask (.tif on the image's grid).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The bundle to write (.safetensors).")],
    init: Annotated[Optional[str], typer.Option("--init", help="Start the U-Net's encoder from this bundle (e.g. eurosat-13): transfer learning; the bundle's bands, scale and mean/std are used.")] = None,
    class_field: Annotated[Optional[str], typer.Option("--class-field", help="Polygons: the attribute holding each polygon's class.")] = None,
    class_map: Annotated[Optional[str], typer.Option("--class-map", help="SOURCE=CLASS,... (SOURCE=- leaves it unlabelled); several sources may share a class. Default: each value is a class.")] = None,
    region: Annotated[Optional[str], typer.Option("--region", help="Train only inside minx,miny,maxx,maxy (image CRS); hold the rest out.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Bundle name (default: the output's stem).")] = None,
    bands: Bands = None,
    crop_classes: Annotated[Optional[str], typer.Option("--crop-classes", help="Classes where crop health applies, comma-separated.")] = None,
    encoder: Annotated[str, typer.Option(help="smp encoder without --init (no squeeze-excitation).")] = "tu-mobilenetv4_conv_small",
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 300,
    window: Annotated[int, typer.Option(help="Training window edge (px, multiple of 32).")] = 128,
    decoder_channels: Annotated[str, typer.Option("--decoder-channels", help="U-Net decoder widths, deepest first, comma-separated.")] = "128,64,32,16,8",
    batch: Annotated[int, typer.Option(help="Windows per step.")] = 8,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine).")] = 1e-3,
    min_labelled: Annotated[float, typer.Option("--min-labelled", help="Sample windows with at least this share of labelled pixels.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed (same seed: same windows).")] = 13,
    threads: Annotated[int, typer.Option(help="CPU threads for torch.")] = 1,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output bundle.")] = False,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Fine-tune a U-Net segmenter on one labelled scene (random windows from the labelled area) and write a bundle."""
    _configure(verbose, quiet)
    from geofg.models.seg_labels import parse_class_map
    from geofg.models.segment import SegTrainConfig, train_segmenter_bundle

    try:
        widths = tuple(int(c) for c in decoder_channels.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 5 or min(widths) < 1:
        raise _fail(ConfigError(f"--decoder-channels: expected 5 positive integers, found "
                                f"{decoder_channels!r}; pass e.g. 128,64,32,16,8"))
    cfg = SegTrainConfig(window=window, batch=batch, steps=steps, lr=lr, min_labelled=min_labelled,
                         seed=seed, threads=threads, device=device, decoder_channels=widths)

    def on_step(rec: dict) -> None:
        if not quiet:
            out.print(f"step {rec['step']}/{steps}: loss {rec['loss']:.4f} ({rec['seconds']:.0f} s)",
                      highlight=False)

    try:
        res = train_segmenter_bundle(
            image, labels, output, cfg, init=init, name=name,
            bands=[b.strip() for b in bands.split(",")] if bands else None, region=region,
            class_field=class_field, class_map=parse_class_map(class_map),
            crop_classes=[c.strip() for c in crop_classes.split(",")] if crop_classes else (),
            encoder=encoder, overwrite=overwrite, on_step=on_step)
    except GeofgError as e:
        raise _fail(e) from None
    card, rec = res["card"], res["record"]
    for note in res["notes"]:
        out.print(f"note: {note}", highlight=False)
    t = rec.get("transfer")
    init_txt = (f", encoder from {init} ({t['copied_encoder']}/{t['encoder_tensors']} tensors)"
                if t else ", from scratch")
    out.print(f"wrote {res['bundle']} (sha256 {res['sha256'][:12]}): unet/{card.encoder}, "
              f"{len(card.bands)} bands, classes {', '.join(card.class_names)}{init_txt}; "
              f"{rec['config']['steps']} steps in {rec['train_seconds']:.0f} s on {rec['device']}",
              highlight=False, soft_wrap=True)


@app.command()
def evaluate(
    bundle: Annotated[str, typer.Argument(help="Bundle name or .safetensors path.")],
    report: Annotated[Path, typer.Option("--report", help="Folder for report.json, confusion_matrix.png, report.md.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Labelled chips (as for geofg train classifier).")] = None,
    split: Annotated[str, typer.Option(help="Split to score: test, val or train.")] = "test",
    bands: Bands = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average the 8 flips/90-degree rotations of each chip.")] = False,
    image: Annotated[Optional[Path], typer.Option("--image", help="Segmentation: the scene to predict (with --labels instead of --data).")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Segmentation: polygons or a class mask to score against (IoU per class, mIoU).")] = None,
    region: Annotated[Optional[str], typer.Option("--region", help="Segmentation: score only inside minx,miny,maxx,maxy (image CRS), e.g. a held-out part.")] = None,
    class_field: Annotated[Optional[str], typer.Option("--class-field", help="Segmentation, polygons: the class attribute (default: the bundle's training one).")] = None,
    class_map: Annotated[Optional[str], typer.Option("--class-map", help="Segmentation: SOURCE=CLASS,... onto the bundle's classes (default: the bundle's training map).")] = None,
    chunk: Annotated[int, typer.Option(help="Segmentation: unit size (px), as geofg classify.")] = 1024,
    device: Device = "auto", verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Score a bundle: on labelled chips (--data; accuracy, F1) or on a scene against dense labels (--image --labels; IoU per class, mIoU, optionally within --region). Writes a report."""
    _configure(verbose, quiet)
    if (data is None) == (image is None or labels is None):
        err.print("[red]geofg: error:[/] give either --data CHIPS, or --image SCENE with --labels"
                  " POLYGONS|MASK", highlight=False)
        raise typer.Exit(2)
    if image is not None:
        _evaluate_segmentation(bundle, report, image, labels, region, class_field, class_map,
                               bands, chunk, device, quiet)
        return
    from geofg.models.evaluate import evaluate_bundle, write_report

    try:
        rep = evaluate_bundle(bundle, data, split=split,
                              bands=[b.strip() for b in bands.split(",")] if bands else None,
                              device=device, tta=tta)
        written = write_report(rep, report)
    except GeofgError as e:
        raise _fail(e) from None
    if not quiet:
        out.print(f"{rep['bundle_name']} on {rep['split']} ({rep['n']} chips): accuracy "
                  f"{rep['accuracy']:.4f}, macro F1 {rep['macro_f1']:.4f}", highlight=False)
        out.print(f"report: {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)


def _evaluate_segmentation(bundle: str, report: Path, image: Path, labels: Path,
                           region: str | None, class_field: str | None, class_map: str | None,
                           bands: str | None, chunk: int, device: str, quiet: bool) -> None:
    from geofg.models.seg_eval import evaluate_segmentation, write_seg_report
    from geofg.models.seg_labels import parse_class_map

    try:
        rep = evaluate_segmentation(
            bundle, image, labels, region=region, class_field=class_field,
            class_map=parse_class_map(class_map),
            bands=[b.strip() for b in bands.split(",")] if bands else None, device=device,
            chunk=chunk)
        written = write_seg_report(rep, report)
    except GeofgError as e:
        raise _fail(e) from None
    if not quiet:
        ious = ", ".join(f"{n} {c['iou']:.3f}" for n, c in rep["per_class"].items()
                         if c["iou"] is not None)
        out.print(f"{rep['bundle_name']} on {rep['n']:,} labelled px"
                  f"{' in the region' if rep['region'] else ''}: mIoU {rep['miou']:.4f}, pixel "
                  f"accuracy {rep['pixel_accuracy']:.4f}, kappa {rep['kappa']:.4f}; IoU {ious}", highlight=False, soft_wrap=True)
        out.print(f"report: {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)


def _export_mosaic(mosaic: str, cog: Path | None, png: Path | None, time: str | None, layer: str,
                   overwrite: bool, quiet: bool, polygons: Path | None = None) -> None:
    from geofg.scan.cog import export_cog, export_png

    try:
        mosaic = _mosaic(mosaic)
        written = []
        if cog is not None:
            written.append(export_cog(mosaic, cog, when=time, layer=layer, overwrite=overwrite))
        if png is not None:
            written.append(export_png(mosaic, png, when=time, layer=layer, overwrite=overwrite))
        if polygons is not None:
            from geofg.products.polygons import export_polygons

            path, n = export_polygons(mosaic, polygons, when=time, layer=layer, overwrite=overwrite)
            written.append(f"{path} ({n} polygons)")
    except GeofgError as e:
        raise _fail(e) from None
    if not quiet:
        for w in written:
            out.print(f"wrote {w}", highlight=False, markup=False, soft_wrap=True)


def _mosaic(raw: str):  # noqa: ANN202
    """A mosaic argument: a local Path, or ``s3://bucket/prefix`` (ForbiddenPathError for other URLs)."""
    from geofg.io.store import output_target

    return output_target(raw)


def _is_model(source: str) -> bool:
    """True when `geofg export SOURCE` names a model (a bundle name, .safetensors, or weights file)."""
    from geofg.models.bundle import PICKLED_SUFFIXES

    p = Path(source)
    if p.suffix.lower() in {".safetensors", *PICKLED_SUFFIXES}:
        return True
    return not p.exists() and "/" not in source  # a bundle name


@app.command()
def export(
    source: Annotated[str, typer.Argument(help="What to export: a model bundle (name or .safetensors path).")],
    onnx: Annotated[Optional[Path], typer.Option("--onnx", help="Write the bundle as an ONNX model (OUT.onnx) for `classify --model OUT.onnx`.")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="With --onnx: int8 quantisation (onnxruntime static, calibrated on the train split of --data).")] = False,
    data: Annotated[Optional[Path], typer.Option("--data", help="Labelled chips (labels.csv with train/test splits): calibrates --int8, measures test accuracy. Default: $GEOFG_DATA/eurosat_ms when present.")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for torch and onnxruntime in the speed measurement.")] = 2,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    cog: Annotated[Optional[Path], typer.Option("--cog", help="SOURCE a mosaic: write one layer as a Cloud-Optimized GeoTIFF (OUT.tif).")] = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="SOURCE a mosaic: write the quicklook with legend (OUT.png) of the latest view.")] = None,
    polygons: Annotated[Optional[Path], typer.Option("--polygons", help="SOURCE a mosaic: write the layer's patches as polygons (OUT.parquet, GeoParquet 1.1), streamed chunk row by chunk row.")] = None,
    time: Annotated[Optional[str], typer.Option("--time", help="SOURCE a scan mosaic: the date to export, e.g. 2020-08-31 (default: the latest view).")] = None,
    layer: Annotated[str, typer.Option("--layer", help="SOURCE a mosaic: class, health, confidence or mask (with --cog: OUT.tif.aux.xml category names and OUT.qml QGIS style beside it).")] = "class",
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Export SOURCE: a model bundle to ONNX (--onnx, optionally --int8), with measured accuracy and speed-up; or a mosaic layer as a COG (--cog), PNG (--png) or polygons (--polygons)."""
    _configure(verbose, quiet)
    if not _is_model(source) and (cog is not None or png is not None or polygons is not None):
        _export_mosaic(source, cog, png, time, layer, overwrite, quiet, polygons)
        return
    if not _is_model(source):
        err.print(f"[red]geofg: error:[/] {source}: expected a model bundle (.safetensors or a bundle"
                  " name); only model export is available; give a bundle", highlight=False)
        raise typer.Exit(2)
    if onnx is None:
        err.print("[red]geofg: error:[/] exporting a bundle needs --onnx OUT.onnx; add it", highlight=False)
        raise typer.Exit(2)
    from geofg.models.onnx import export_onnx, load_split
    from geofg.models.registry import read_model_card, resolve_model

    try:
        card = read_model_card(resolve_model(source))
        if data is None and os.environ.get("GEOFG_DATA"):
            guess = Path(os.environ["GEOFG_DATA"]) / "eurosat_ms"
            data = guess if (guess / "labels.csv").is_file() else None
        calib = load_split(data, "train", card)[0] if (int8 and data is not None) else None
        evaluation = load_split(data, "test", card) if data is not None else None
        if calib is not None:
            from geofg.models.onnx import chip_canvases

            calib = chip_canvases(calib, 3)
        rep = export_onnx(source, onnx, int8=int8, calibration=calib, evaluation=evaluation,
                          threads=threads, overwrite=overwrite)
    except GeofgError as e:
        raise _fail(e) from None
    mb = 1024 * 1024
    out.print(f"wrote {rep.output} ({rep.precision}, {rep.size_bytes / mb:.2f} MiB; bundle "
              f"{rep.source_size_bytes / mb:.2f} MiB); max |p_onnx - p_bundle| on a check batch "
              f"{rep.max_abs_prob_diff:.2e}", highlight=False, soft_wrap=True)
    if rep.accuracy:
        a = rep.accuracy
        out.print(f"test accuracy ({a['n']} chips): fp32 bundle {a['fp32_bundle']:.3f}, {rep.precision} "
                  f"ONNX {a['onnx']:.3f} ({a['onnx'] - a['fp32_bundle']:+.3f}); same class on "
                  f"{a['agreement']:.1%} of chips", highlight=False, soft_wrap=True)
    else:
        out.print("test accuracy: not measured (no --data with a test split)", highlight=False)
    s = rep.speed
    if s:
        line = (f"speed, batch {'x'.join(map(str, s['batch']))}, {s['threads']} threads, median of "
                f"{s['runs']}: torch fp32 {s['torch_fp32_s']:.3f} s, ONNX {rep.precision} "
                f"{s['onnx_s']:.3f} s: {s['speedup_vs_torch']:.2f}x")
        if "onnx_fp32_s" in s:
            line += f" (vs ONNX fp32 {s['onnx_fp32_s']:.3f} s: {s['speedup_vs_onnx_fp32']:.2f}x)"
        out.print(line, highlight=False, soft_wrap=True)


@app.command()
def explain(
    bundle: Annotated[str, typer.Argument(help="Bundle name or .safetensors path.")],
    inputs: Inputs,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Chip: a .png; scene: a .tif (quicklook beside it). Default: INPUT.gradcam.png/.tif.")] = None,
    class_name: Annotated[Optional[str], typer.Option("--class", help="Class to explain (default: the predicted one).")] = None,
    stage: Annotated[Optional[int], typer.Option(help="Encoder stage (1..5; k = stride 2^k); default 3 (stride 8) for chips, 5 for scenes.")] = None,
    mode: Annotated[str, typer.Option(help="auto (chip when both sides <= 2x the patch size), chip or scene.")] = "auto",
    bands: Bands = None, chunk: Chunk = 512, device: Device = "cpu",
    halo: Annotated[Optional[int], typer.Option(help="Scene: context pixels around each unit (default 3x the card's halo).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Grad-CAM maps: a PNG overlay for a chip, a georeferenced GeoTIFF (tiled like prediction) for a scene."""
    _configure(verbose, quiet)
    from geofg.models.explain import explain as run_explain

    try:
        res = run_explain(bundle, [str(p) for p in inputs], output, class_name=class_name,
                          stage=stage, bands=[b.strip() for b in bands.split(",")] if bands else None,
                          mode=mode, chunk=chunk, halo=halo, device=device, overwrite=overwrite)
    except GeofgError as e:
        raise _fail(e) from None
    what = (f"class {res.class_name} (p = {res.probability:.3f})" if res.mode == "chip"
            else f"class {res.class_name or 'predicted per pixel'}")
    out.print(f"Grad-CAM ({res.mode}, stage {res.stage}, {what}): {', '.join(res.outputs)}",
              highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"geofg {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False) -> None:
    """geofg."""


_TILE_COMMANDS = frozenset({"classify", "segment", "scan"})
"""Commands that run the tile pipeline: they reuse one heap (benchmarks/HISTORY.md, section 0)."""


def main() -> None:
    """Console-script entry point."""
    from geofg.runtime import tune_process

    command = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    tune_process(reuse_heap=command in _TILE_COMMANDS)  # before torch, GDAL or any thread starts
    app(prog_name="geofg")


if __name__ == "__main__":
    sys.exit(main())

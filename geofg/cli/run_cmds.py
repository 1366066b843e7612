"""``geofg classify``, ``segment``, ``submit`` and ``scan``: the commands that run the tile pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from geofg.cli.common import (
    AllowInsecure,
    AssumeCrs,
    Bands,
    Batch,
    BreakLock,
    Chunk,
    Compile,
    Device,
    DryRun,
    Halo,
    Inputs,
    Mask,
    MaxPixels,
    MaxRatio,
    ModelsOpt,
    Output,
    Profile,
    Quiet,
    RayAddress,
    Resume,
    Runner,
    TileSize,
    Tta,
    Verbose,
    _configure,
    _fail,
    _job,
    _run,
    app,
    err,
    out,
)
from geofg.errors import GeofgError
from geofg.models.inference.registry import DEFAULT_MODEL


@app.command()
def classify(
    inputs: Inputs, output: Output = None, model: ModelsOpt = [DEFAULT_MODEL], bands: Bands = None,
    tile_size: TileSize = None, halo: Halo = None, chunk: Chunk = None, batch_size: Batch = 1,
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
    tile_size: TileSize = None, halo: Halo = None, chunk: Chunk = None, batch_size: Batch = 1,
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

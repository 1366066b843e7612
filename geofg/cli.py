"""The ``geofg`` command line: parse -> JobConfig -> one library call -> render -> exit code.

Exit codes live in one table, :data:`EXIT_CODES` (each GeofgError class carries its code):
0 done, 2 usage, 3 input/config/weights rejected before any write, 4 finished with failed units,
5 cluster unreachable or insecure, 6 mosaic locked by another run. Unexpected exceptions keep their
traceback. Heavy imports (torch, rasterio, zarr) happen inside commands so ``--help`` is instant.
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

from geofg import __version__
from geofg.errors import GeofgError

EXIT_CODES = {
    "done": 0,
    "usage": 2,
    "rejected before any write": 3,
    "finished with failed units": 4,
    "cluster unreachable or insecure": 5,
    "mosaic locked by another run": 6,
}

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
    err.print(f"[red]geofg: error:[/] {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              highlight=False, soft_wrap=True)
    return typer.Exit(e.exit_code)


Inputs = Annotated[list[Path], typer.Argument(help="A GeoTIFF/COG, or a Sentinel-2 band-file folder or files.")]
Output = Annotated[Optional[Path], typer.Option("-o", "--output", help="Output Zarr mosaic.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Bundle name or .safetensors path.")]
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
AllowInsecure = Annotated[bool, typer.Option("--allow-insecure-cluster", help="Run on a Ray cluster even if it accepts unauthenticated requests (token auth off).")]


def _job(task: str, inputs: list[Path], output: Path | None, model: str, bands: str | None,
         tile_size: int | None, halo: int | None, chunk: int, batch_size: int, device: str,
         resume: bool, break_lock: bool, assume_crs: str | None, max_pixels: int,
         max_compression_ratio: float, runner: str | None, ray_address: str | None = None,
         allow_insecure_cluster: bool = False):  # noqa: ANN202
    from geofg.config import build_job

    if output is None:
        first = inputs[0]
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
            "model": {"model": model, "device": device},
            "write": {"output": str(output), "mode": "resume" if resume else "overwrite",
                      "break_lock": break_lock},
            "runner": {"kind": runner or ("ray" if ray_address else "local"), "address": ray_address,
                       "allow_insecure_cluster": allow_insecure_cluster},
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
    inputs: Inputs, output: Output = None, model: ModelOpt = "eurosat-13", bands: Bands = None,
    tile_size: TileSize = None, halo: Halo = None, chunk: Chunk = 1024, batch_size: Batch = 1,
    device: Device = "auto", resume: Resume = True, break_lock: BreakLock = False,
    assume_crs: AssumeCrs = None, max_pixels: MaxPixels = 20_000_000_000,
    max_compression_ratio: MaxRatio = 2000.0, runner: Runner = None, ray_address: RayAddress = None,
    allow_insecure_cluster: AllowInsecure = False,
    dry_run: DryRun = False, profile: Profile = False, verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Map land cover, crop health and confidence over INPUTS into a Zarr mosaic."""
    _configure(verbose, quiet)
    _run("classify", dry_run, quiet, profile, inputs=inputs, output=output, model=model,
         bands=bands, tile_size=tile_size, halo=halo, chunk=chunk, batch_size=batch_size,
         device=device, resume=resume, break_lock=break_lock, assume_crs=assume_crs,
         max_pixels=max_pixels, max_compression_ratio=max_compression_ratio, runner=runner,
         ray_address=ray_address, allow_insecure_cluster=allow_insecure_cluster)


@app.command()
def segment(
    inputs: Inputs, model: ModelOpt, output: Output = None, bands: Bands = None,
    tile_size: TileSize = None, halo: Halo = None, chunk: Chunk = 1024, batch_size: Batch = 1,
    device: Device = "auto", resume: Resume = True, break_lock: BreakLock = False,
    assume_crs: AssumeCrs = None, max_pixels: MaxPixels = 20_000_000_000,
    max_compression_ratio: MaxRatio = 2000.0, runner: Runner = None, ray_address: RayAddress = None,
    allow_insecure_cluster: AllowInsecure = False,
    dry_run: DryRun = False, profile: Profile = False, verbose: Verbose = 0, quiet: Quiet = False,
) -> None:
    """Run a segmentation bundle over INPUTS into a Zarr mosaic."""
    _configure(verbose, quiet)
    _run("segment", dry_run, quiet, profile, inputs=inputs, output=output, model=model,
         bands=bands, tile_size=tile_size, halo=halo, chunk=chunk, batch_size=batch_size,
         device=device, resume=resume, break_lock=break_lock, assume_crs=assume_crs,
         max_pixels=max_pixels, max_compression_ratio=max_compression_ratio, runner=runner,
         ray_address=ray_address, allow_insecure_cluster=allow_insecure_cluster)


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
def info(mosaic: Annotated[Path, typer.Argument(help="A geofg Zarr mosaic.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Describe a mosaic: grid, CRS, arrays, provenance, units done, lock."""
    from geofg.cli_output import describe_mosaic, print_info

    _configure(0, False)
    try:
        desc = describe_mosaic(mosaic)
    except GeofgError as e:
        raise _fail(e) from None
    if as_json:
        import json

        out.print_json(json.dumps(desc))
    else:
        print_info(out, desc)


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


def _version(value: bool) -> None:
    if value:
        out.print(f"geofg {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False) -> None:
    """geofg."""


def main() -> None:
    """Console-script entry point."""
    app(prog_name="geofg")


if __name__ == "__main__":
    sys.exit(main())

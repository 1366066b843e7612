"""Ray runner vs local runner: Mpx/s on the same raster, measured in one run on one machine.

    python -m benchmarks.ray_vs_local [--size 4096] [--chunk 1024] [--model eurosat-13] [--repeats 1]

Each run is a fresh subprocess (``--one``) that runs ``run_job`` with ``runner.kind`` local or ray
and records the time of every progress callback. Runs alternate local, ray, local, ray, ... so
slow drift on a shared machine hits both alike. Reported per run:

* wall s: the whole subprocess (imports, preflight with sha256 of the input, units, finalize);
* units s and Mpx/s: raster pixels / time from the start of the unit phase to the last unit
  (includes loading the model; for Ray also starting Ray and its actors);
* steady Mpx/s: pixels of all but the first finished unit / time from the first finished unit to
  the last (start-up excluded);
* ratio: Ray / local, on the medians of the runs.

The Ray run starts a local Ray with one CPU actor per core (``ray.init(num_cpus=os.cpu_count())``),
as ``geofg classify --runner ray`` does on a machine without a cluster. When the ``eurosat-13``
bundle is not installed, a bundle with its card and architecture and random weights is written to
the work folder (the same compute per pixel; predictions are meaningless). The two runs' mosaics
are compared array for array: on CPU they can differ in a few pixels by rounding, because torch's
results depend on its thread count (all cores in the local run, one per Ray actor).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import describe
from benchmarks.rasters import bench_raster

ROOT = Path(__file__).resolve().parent


def _bundle(model: str, workdir: Path) -> tuple[str, str]:
    """Return (bundle path or name, note): the named bundle, or a random-weight stand-in."""
    from geofg.errors import UnknownModelError
    from geofg.models.inference.registry import resolve_model

    try:
        return str(resolve_model(model)), model
    except UnknownModelError:
        if model != "eurosat-13":
            raise
    path = workdir / "eurosat-13-random.safetensors"
    if not path.exists():
        import torch
        from safetensors.numpy import save_file

        from geofg.models.inference.bundle import CARD_KEY
        from geofg.models.inference.nets import build_model
        from geofg.models.training.train import export_tensors, make_card

        card = make_card([0.12] * 13, [0.05] * 13, "tu-mobilenetv4_conv_small")
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(export_tensors(build_model(card).eval()), str(path), metadata={CARD_KEY: card.to_json()})
    return str(path), "eurosat-13 architecture, random weights (eurosat-13 bundle not installed)"


def run_one(kind: str, raster: str, out: str, model: str, chunk: int) -> dict:
    """Run one job in this process and return its timings (called in a fresh subprocess)."""
    t0 = time.perf_counter()
    from geofg.config import build_job
    from geofg.run import run_job

    shutil.rmtree(out, ignore_errors=True)
    job = build_job({
        "read": {"inputs": [raster]},
        "tile": {"chunk": chunk},
        "model": {"model": model, "device": "cpu"},
        "write": {"output": out, "quicklook": False},
        "runner": {"kind": kind},
    })
    marks: list[tuple[float, int]] = []

    def on_progress(done: int, total: int, km2: float) -> None:
        marks.append((time.perf_counter(), done))

    result = run_job(job, on_progress=on_progress)
    t1 = time.perf_counter()
    p = result.plan
    px = p.info.height * p.info.width
    unit_px = px / len(p.units)
    start, first, last = marks[0][0], marks[1][0], marks[-1][0]
    return {
        "runner": kind, "units": len(p.units), "tile_size": p.tile_size, "halo": p.halo,
        "wall_s": t1 - t0, "units_s": last - start, "mpx_s": px / (last - start) / 1e6,
        "steady_mpx_s": (px - unit_px) / (last - first) / 1e6 if last > first else float("nan"),
        "profile": result.profile,
    }


def _differing_pixels(a: Path, b: Path) -> dict[str, int]:
    """Pixels that differ between two mosaics, per layer."""
    import numpy as np
    import zarr

    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    return {n: int(np.count_nonzero(ga[n][:] != gb[n][:])) for n in ("class", "health", "confidence")}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table."""
    ap = argparse.ArgumentParser(description="geofg Ray runner vs local runner throughput")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--model", default="eurosat-13")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    ap.add_argument("--one", nargs=5, metavar=("KIND", "RASTER", "OUT", "MODEL", "CHUNK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        kind, raster, out, model, chunk = args.one
        print(json.dumps(run_one(kind, raster, out, model, int(chunk))))
        return 0

    raster = bench_raster(args.workdir, args.size)
    model, note = _bundle(args.model, args.workdir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # local Ray with token auth, no token file written
    env.pop("RAY_ADDRESS", None)
    runs: list[dict] = []
    for _ in range(args.repeats):
        for kind in ("local", "ray"):
            out = args.workdir / f"s2_{args.size}.{kind}.zarr"
            cmd = [sys.executable, "-m", "benchmarks.ray_vs_local", "--one", kind, str(raster), str(out), model,
                   str(args.chunk)]
            t = time.perf_counter()
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT.parent)
            if r.returncode:
                print(r.stderr[-4000:], file=sys.stderr)
                return r.returncode
            rec = json.loads(r.stdout.strip().splitlines()[-1])
            rec["process_s"] = time.perf_counter() - t
            runs.append(rec)
            print(f"{kind:5s} units {rec['units']:3d}  wall {rec['wall_s']:6.1f} s  units {rec['units_s']:6.1f} s  "
                  f"{rec['mpx_s']:5.2f} Mpx/s  steady {rec['steady_mpx_s']:5.2f} Mpx/s", flush=True)
    diff = _differing_pixels(args.workdir / f"s2_{args.size}.local.zarr", args.workdir / f"s2_{args.size}.ray.zarr")

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["runner"] == kind)

    ratio = med("ray", "mpx_s") / med("local", "mpx_s")
    ratio_steady = med("ray", "steady_mpx_s") / med("local", "steady_mpx_s")
    print(f"\nraster {args.size}x{args.size}x13, chunk {args.chunk}, model: {note}, cpus {os.cpu_count()}")
    print(f"Ray / local Mpx/s: {ratio:.2f} (with start-up)  {ratio_steady:.2f} (steady)  target >= 0.8")
    print(f"pixels differing between the two mosaics: {diff}")
    if any(diff.values()):
        print("  (torch's CPU results depend on its thread count: the local run uses every core in one "
              "process, each Ray actor one thread; with OMP_NUM_THREADS=1 for the local run they match)")
    (ROOT / "results").mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (ROOT / "results" / f"ray_vs_local-{stamp}.json").write_text(json.dumps({
        "machine": describe(),
        "size": args.size, "chunk": args.chunk, "model": note, "runs": runs,
        "ratio": ratio, "ratio_steady": ratio_steady, "differing_pixels": diff,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ray actors with a stand-in device: does the model wait while the actor writes?

    python -m benchmarks.ray_device [--size 8000] [--device-ms 100] [--writers 0 2] [--repeats 1]

There is no GPU on the development machine, so the model is replaced by one that behaves like a
device from the CPU's side: each ``predict`` call sleeps ``--device-ms`` per tile (the GIL
released, no CPU used, as while a GPU computes) and returns the fixed probabilities of
:class:`benchmarks.io_ceiling.NullPredictor`. Everything else is ``geofg classify --runner ray``
with one actor: reads and normalisation on its read threads, layers, chunks and ledger records.

``--writers 0`` writes each unit on the thread that ran the model, before the actor takes the
next unit (what CPU actors do, and what GPU actors did before they had write threads);
``--writers N`` gives the actor N write threads. Runs alternate between the settings in one Ray
session. Printed per run: the steady rate (units after the first, as the main harness) and how
busy the stand-in device was (its sleeping time over the steady window).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks.rasters import bench_raster, real_scene

ROOT = Path(__file__).resolve().parent


def sleeping_factory(device_s: float):  # noqa: ANN201
    """A predictor factory for the actors: ``device_s`` of sleep per tile, fixed probabilities."""

    def factory(p):  # noqa: ANN001, ANN202 (runs in the actor; defined here so it travels by value)
        import time as _time

        from benchmarks.io_ceiling import NullPredictor  # Ray puts the driver's path on the actor's

        class Sleeping(NullPredictor):
            def predict(self, x):  # noqa: ANN001, ANN202
                _time.sleep(device_s * x.shape[0])
                return super().predict(x)

        return Sleeping(p.card)

    return factory


def run_once(raster: Path, out: Path, writers: int, device_s: float) -> dict:
    """One ``run_job`` on Ray with one actor; steady Mpx/s and the device's busy share."""
    from geofg.config import build_job
    from geofg.run import run_job

    shutil.rmtree(out, ignore_errors=True)
    job = build_job({
        "read": {"inputs": [str(raster)]},
        "model": {"model": "eurosat-13", "device": "cpu"},
        "write": {"output": str(out), "quicklook": False},
        "runner": {"kind": "ray", "num_actors": 1, "write_workers": writers or None},
    })
    marks: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    result = run_job(job, on_progress=lambda done, total, km2: marks.append((time.perf_counter(), km2)),
                     predictor_factory=sleeping_factory(device_s))
    wall = time.perf_counter() - t0
    (t_first, km2_first), (t_last, km2_last) = marks[1], marks[-1]  # after the first unit
    px = result.plan.info.height * result.plan.info.width
    steady_units = len(marks) - 2
    return {
        "writers": writers, "units": len(result.ran), "failed": len(result.failed), "wall_s": wall,
        "steady_s": t_last - t_first,
        "steady_mpx_s": px * (km2_last - km2_first) / km2_last / (t_last - t_first) / 1e6,
        # each unit is one tile at batch 1: the device slept device_s per unit
        "device_busy": steady_units * device_s / (t_last - t_first),
        "profile": result.profile,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the settings alternately and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8000)
    ap.add_argument("--device-ms", type=float, default=100.0)
    ap.add_argument("--writers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    raster = bench_raster(args.workdir, args.size, source=real_scene())  # the scene where there
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for _ in range(args.repeats):
            for w in args.writers:
                rows.append(run_once(raster, args.workdir / "ray_device.zarr", w, args.device_ms / 1000))
    finally:
        ray.shutdown()
    print(f"raster {raster.name} ({args.size}²), stand-in device {args.device_ms:.0f} ms per unit, "
          f"one Ray actor, {os.cpu_count()} CPUs")
    print(f"{'write threads':>13} {'units':>5} {'steady Mpx/s':>12} {'device busy':>11}  stages (s, summed)")
    for r in rows:
        prof = ", ".join(f"{k} {v:.1f}" for k, v in r["profile"].items())
        print(f"{r['writers']:>13} {r['units']:>5} {r['steady_mpx_s']:>12.3f} {r['device_busy']:>10.0%}  {prof}")
    res = ROOT / "results"
    res.mkdir(exist_ok=True)
    (res / f"ray_device_{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

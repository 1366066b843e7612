"""How much slower is predict() inside `geofg classify` than alone, by number of reader threads?

    python -m benchmarks.forward_in_pipeline [--size 1024] [--chunk 256] [--read-workers 2 1 2 1]

For each ``--read-workers`` value (run in this order, so alternating values interleave with
whatever else loads the machine), runs one classify job (``run_job``) and times every
``predict()`` call in it, then times ``predict()`` on the job's last tile 5 more times after the
job, in the same process, with the reader and writer threads gone. Prints the median of both and
their ratio. A ratio well above 1 that falls with fewer reader threads means the I/O threads take
CPU from the forward (benchmarks/HISTORY.md, section 1).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.rasters import bench_raster


def one(raster: Path, out: Path, chunk: int, read_workers: int) -> tuple[float, float, float]:
    """Return (job seconds, median in-pipeline predict s, median predict s alone after the job)."""
    from geofg.config import build_job
    from geofg.models.inference.predictor import load_predictor
    from geofg.run import run_job

    calls: list[float] = []
    held: dict = {}

    def factory(p):  # noqa: ANN001, ANN202
        pred = load_predictor(p.model_path, "cpu")
        plain = pred.predict

        def timed(x):  # noqa: ANN001, ANN202
            t = time.perf_counter()
            y = plain(x)
            calls.append(time.perf_counter() - t)
            held["x"], held["plain"] = x, plain
            return y

        pred.predict = timed
        return pred

    shutil.rmtree(out, ignore_errors=True)
    job = build_job({
        "read": {"inputs": [str(raster)]}, "tile": {"chunk": chunk, "batch_size": 1},
        "model": {"model": "eurosat-13", "device": "cpu"},
        "write": {"output": str(out), "quicklook": False},
        "runner": {"read_workers": read_workers},
    })
    t = time.perf_counter()
    run_job(job, predictor_factory=factory)
    job_s = time.perf_counter() - t
    alone = []
    for _ in range(5):
        t = time.perf_counter()
        held["plain"](held["x"])
        alone.append(time.perf_counter() - t)
    return job_s, statistics.median(calls), statistics.median(alone)


def main() -> None:
    """Run the comparison for each reader-thread count and print one line each."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--read-workers", type=int, nargs="+", default=[2, 1, 2, 1])
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    a = ap.parse_args()
    raster = bench_raster(a.workdir, a.size)
    print(f"{a.size}² raster, chunk {a.chunk}, eurosat-13 on CPU")
    for rw in a.read_workers:
        job_s, inside, alone = one(raster, a.workdir / "forward_in_pipeline.zarr", a.chunk, rw)
        print(f"read_workers {rw}: job {job_s:6.1f} s, predict() median in pipeline {inside:.3f} s,"
              f" alone {alone:.3f} s, ratio {inside / alone:.2f}  (load {os.getloadavg()[0]:.2f})",
              flush=True)


if __name__ == "__main__":
    main()

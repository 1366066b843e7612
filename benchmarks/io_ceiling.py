"""The pipeline without the model: how fast reads and writes alone go, and their CPU per unit.

    python -m benchmarks.io_ceiling [--size 8000] [--threads 1x1 2x1 2x2 gpu] [--compress deflate]

Runs ``geofg classify``'s job (``run_job``, local runner) on a generated 13-band raster with a
predictor that costs nothing (it returns the same probabilities every call), once per
``READERSxWRITERS`` pair. Everything else is the real pipeline: reads and normalisation on the
read threads, layers, chunks and ledger records on the write threads.

For each pair it prints the end-to-end Mpx/s (raster pixels, steady state as in the main
harness) and the CPU milliseconds per unit spent on each kind of thread, from
``/proc/self/task``. That CPU per unit is what sizes a GPU host: a device that runs the model at
F Mpx/s is kept busy only by about ``F x (read + write ms per unit) / 1000`` cores of I/O
(benchmarks/HISTORY.md, section 0a).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.rasters import bench_raster, scene_source

TICK = os.sysconf("SC_CLK_TCK")
GROUPS = ("geofg-read", "geofg-write", "geofg-compute", "MainThread")


class NullPredictor:
    """Returns fixed class probabilities of the input's shape (computed once per shape).

    The probabilities vary smoothly, so the class map is made of patches tens to hundreds of
    pixels across and the layers compress like a real map's (random ones would not compress).
    """

    def __init__(self, card, raw: bool = False) -> None:  # noqa: ANN001
        self.card = card
        self.device = "cpu"
        self.raw = raw  # take the bands as read, as the CUDA path does (no host normalisation)
        self._cache: dict[tuple, np.ndarray] = {}

    def takes_raw(self, dtype: np.dtype) -> bool:
        """What the CUDA predictor answers for the readers' samples when ``raw``."""
        return self.raw

    def predict_raw(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """:meth:`predict` of raw samples (the device would normalise them)."""
        return self.predict(data)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, K, H, W) float32 probabilities, the same for every call with this shape."""
        if x.shape not in self._cache:
            n, _, h, w = x.shape
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            k = len(self.card.classes)
            logits = np.stack([np.sin(xx / (40 + 13 * i) + i) * np.cos(yy / (55 + 11 * i) - i)
                               for i in range(k)]) * 3
            p = np.exp(logits - logits.max(axis=0))
            p = (p / p.sum(axis=0)).astype(np.float32)
            self._cache[x.shape] = np.broadcast_to(p, (n, k, h, w))
        return self._cache[x.shape]


class ThreadCpu:
    """Every thread's CPU seconds from /proc/self/task, grouped by Python thread name.

    ``mark()`` takes a snapshot; :meth:`between` gives the seconds per group between two of them.
    Threads that ended between snapshots keep their last reading, so call ``mark`` often.
    """

    def __init__(self) -> None:
        self.groups: dict[int, str] = {}

    def _group(self, tid: int) -> str:
        for t in threading.enumerate():
            if t.native_id == tid:
                return next((g for g in GROUPS if t.name.startswith(g)), "other")
        return "other"  # threads Python does not know: torch's, GDAL's, zarr's event loop

    def mark(self, last: dict[int, int] | None = None) -> dict[int, int]:
        """CPU ticks of every thread (``last``'s value for threads gone since)."""
        ticks = dict(last or {})
        for name in os.listdir("/proc/self/task"):
            try:
                fields = Path(f"/proc/self/task/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            tid = int(name)
            if tid not in self.groups:
                self.groups[tid] = self._group(tid)
            ticks[tid] = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks

    def between(self, a: dict[int, int], b: dict[int, int]) -> Counter:
        """CPU seconds per group from snapshot ``a`` to snapshot ``b``."""
        out: Counter = Counter()
        for tid, ticks in b.items():
            out[self.groups[tid]] += (ticks - a.get(tid, 0)) / TICK
        return out


def run_pair(raster: Path, out: Path, readers: int, writers: int, model: str = "eurosat-13",
             raw: bool = False) -> dict:
    """Run the null-model job with ``readers`` read and ``writers`` write threads.

    ``model``: whose card (bands, classes, halo, cloud mask) the job plans with; ``raw``: the
    units reach the model as read, not normalised (the CUDA path, :meth:`TorchPredictor.takes_raw`).
    """
    from geofg.config import build_job
    from geofg.models.inference.bundle import read_card
    from geofg.models.inference.registry import resolve_model
    from geofg.run import run_job

    shutil.rmtree(out, ignore_errors=True)
    job = build_job({"read": {"inputs": [str(raster)]}, "model": {"model": model},
                     "write": {"output": str(out), "quicklook": False},
                     "runner": {"read_workers": readers, "write_workers": writers}})
    card = read_card(resolve_model(model))
    cpu = ThreadCpu()
    marks: dict[str, tuple] = {}

    def on_progress(done: int, total: int, km2: float) -> None:
        # steady state: from the first unit finished to the last (preflight and start-up excluded)
        now = (time.perf_counter(), km2, done, cpu.mark(marks.get("last", (0, 0, 0, {}))[3]))
        marks.setdefault("first", now)
        marks["last"] = now

    res = run_job(job, on_progress=on_progress, predictor_factory=lambda p: NullPredictor(card, raw))
    (t0, k0, n0, c0), (t1, k1, n1, c1) = marks["first"], marks["last"]
    px = res.plan.info.height * res.plan.info.width
    secs = cpu.between(c0, c1)
    return {"readers": readers, "writers": writers, "units": n1 - n0,
            "e2e_mpx_s": px * (k1 - k0) / k1 / (t1 - t0) / 1e6,
            "cpu_ms_per_unit": {g: 1000 * secs[g] / (n1 - n0) for g in (*GROUPS, "other")},
            "profile": res.profile}


def gpu_threads() -> tuple[int, int]:
    """(readers, writers) the local runner uses for a model on a GPU of this host."""
    from geofg.config import RunnerConfig

    return RunnerConfig().io_threads("cuda")


def main(argv: list[str] | None = None) -> int:
    """Print the null-model pipeline's throughput and CPU per unit for each thread pair."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8000)
    ap.add_argument("--threads", nargs="+", default=["1x1", "2x1", "2x2"],
                    help="READERSxWRITERS pairs to run; 'gpu': as the runner sizes them for a GPU here")
    ap.add_argument("--compress", default="deflate", choices=["deflate", "none"])
    ap.add_argument("--source", default="synthetic", choices=["synthetic", "scene"],
                    help="raster content, as for python -m benchmarks")
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    args = ap.parse_args(argv)
    raster = bench_raster(args.workdir, args.size, args.compress, scene_source(args.source))
    print(f"{raster.name}: model replaced by fixed probabilities; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'readers':>7} {'writers':>7} {'e2e Mpx/s':>9}  CPU ms per unit: {'read':>6} {'write':>6} "
          f"{'main':>6} {'other':>6} {'total':>6}")
    for pair in args.threads:
        r, w = gpu_threads() if pair == "gpu" else (int(v) for v in pair.split("x"))
        row = run_pair(raster, args.workdir / f"{raster.stem}.io.zarr", r, w)
        ms = row["cpu_ms_per_unit"]
        print(f"{r:>7} {w:>7} {row['e2e_mpx_s']:>9.3f}  {'':>16}{ms['geofg-read']:>6.0f} "
              f"{ms['geofg-write']:>6.0f} {ms['MainThread']:>6.0f} {ms['other'] + ms['geofg-compute']:>6.0f} "
              f"{sum(ms.values()):>6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

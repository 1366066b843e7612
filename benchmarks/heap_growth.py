"""The reused heap and RSS of one classify job, every 16 units: does memory settle as units go by?

    python -m benchmarks.heap_growth --size 24000 --streams 2 [--source scene]

Runs the job in this process (one reused heap, as ``geofg classify``) on the benchmarks' raster
of ``--size``² and prints, every 16 finished units: seconds since the start, the heap's size
(glibc ``mallinfo2().arena``: what the heap holds from the kernel), the bytes in use in it
(``uordblks``) and the resident set. The heap never shrinks while reused, so a heap that keeps
growing at a steady number of units in flight is fragmenting (benchmarks/HISTORY.md).
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import shutil
import sys
import time
from pathlib import Path

from benchmarks import HEAP_REUSED
from benchmarks.rasters import bench_raster, scene_source


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]  # fmt: skip


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main(argv: list[str] | None = None) -> int:
    """Classify one raster and print heap and RSS every 16 units."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16000)
    ap.add_argument("--streams", type=int, default=0, help="compute streams (0: geofg's choice)")
    ap.add_argument("--model", default="eurosat-13")
    ap.add_argument("--source", choices=["synthetic", "scene"], default="scene")
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    args = ap.parse_args(argv)
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2

    from geofg.config import build_job
    from geofg.run import run_job

    raster = bench_raster(args.workdir, args.size, source=scene_source(args.source))
    out = args.workdir / "heap_growth.zarr"
    shutil.rmtree(out, ignore_errors=True)
    job = build_job({"read": {"inputs": [str(raster)]}, "model": {"model": args.model, "device": "cpu"},
                     "write": {"output": str(out), "quicklook": False},
                     "runner": {"compute_streams": args.streams or None}})  # fmt: skip
    print(f"{raster.name}, streams {args.streams or 'auto'}, heap reused: {HEAP_REUSED}")
    print(f"{'units':>6} {'s':>7} {'heap MB':>8} {'in use MB':>9} {'RSS MB':>7}")
    t0, done = time.perf_counter(), 0

    def on_progress(_done: int, total: int, _km2: float) -> None:
        nonlocal done
        done += 1
        if done % 16 == 0 or done == total:
            m = libc.mallinfo2()
            print(f"{done:>6} {time.perf_counter() - t0:>7.1f} {m.arena / 2**20:>8.0f} "
                  f"{m.uordblks / 2**20:>9.0f} {_rss_mb():>7.0f}", flush=True)

    run_job(job, on_progress=on_progress)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

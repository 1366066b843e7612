"""Run one `geofg classify` job in this process and print JSON timings and peak RSS.

Used by the harness in a fresh subprocess per raster so each peak RSS stands alone.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time


def main(inp: str, out: str, model: str, chunk: int, batch: int, device: str) -> None:
    """Classify ``inp`` into ``out`` and print timings, unit profile and peak RSS as JSON."""
    t0 = time.perf_counter()
    from geofg.config import build_job
    from geofg.run import run_job

    shutil.rmtree(out, ignore_errors=True)
    job = build_job({
        "read": {"inputs": [inp]},
        "tile": {"chunk": chunk, "batch_size": batch},
        "model": {"model": model, "device": device},
        "write": {"output": out, "quicklook": True},
    })
    marks: dict[str, float] = {}

    def on_progress(done: int, total: int, km2: float) -> None:
        now = time.perf_counter()
        if "first_progress" not in marks:
            marks["first_progress"], marks["first_km2"] = now, km2
        marks["last_progress"], marks["last_km2"] = now, km2

    result = run_job(job, on_progress=on_progress)
    t1 = time.perf_counter()
    p = result.plan
    print(json.dumps({
        "height": p.info.height, "width": p.info.width, "units": len(p.units),
        "tile_size": p.tile_size, "halo": p.halo, "chunk": chunk, "batch": batch,
        "wall_s": t1 - t0,
        # the steady-state window: units finished after the first one, over the time they took
        "units_s": marks["last_progress"] - marks["first_progress"],
        "units_fraction": (marks["last_km2"] - marks["first_km2"]) / marks["last_km2"],
        "profile": result.profile,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5])

"""Run one `geofg classify` job in this process and print JSON timings and peak RSS.

Used by the harness in a fresh subprocess per raster so each peak RSS stands alone.

    python -m benchmarks.run_one INPUT OUT MODEL CHUNK BATCH DEVICE [compile] [streams=N] [ray]

``ray``: run the units on Ray actors (a local Ray this process starts, one CPU actor per core);
peak RSS is then this driver's alone, and ``ray_peak_anon_mb`` the largest sum, sampled every
0.25 s, of the anonymous resident memory of every process this one started (Ray's GCS, raylet,
agents and workers): what the Ray mode costs the machine beside the driver.

``profile`` is the runner's own (what ``geofg classify --profile`` prints); ``stages`` picks
the per-unit work from it: read and normalise (reader threads), forward and tile+blend (compute
threads), layers (argmax, confidence, crop health) and write (writer thread).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import threading
import time


def _descendants_anon_mb(root: int) -> float:
    """Anonymous resident MB (heap, stacks: resident minus file-backed and shared pages, from
    ``statm``) of every process below ``root``. Libraries mapped by several processes are not
    counted once per process, as a sum of RSS would; reading ``statm`` costs little, unlike
    ``smaps_rollup`` (which took a quarter of a core here at 4 samples a second)."""
    parent = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    below, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - below
        below |= frontier
    pages = 0
    for p in below:
        try:
            with open(f"/proc/{p}/statm") as f:
                fields = f.read().split()
            pages += int(fields[1]) - int(fields[2])
        except (OSError, ValueError, IndexError):
            continue
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class _PeakSampler(threading.Thread):
    """Largest :func:`_descendants_anon_mb` of this process, sampled until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self._done = 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.25):
            self.peak = max(self.peak, _descendants_anon_mb(os.getpid()))

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def main(inp: str, out: str, model: str, chunk: int, batch: int, device: str,
         compile_: bool = False, streams: int | None = None, ray: bool = False,
         mask: str = "auto") -> None:
    """Classify ``inp`` into ``out`` and print timings, unit profile and peak RSS as JSON."""
    t0 = time.perf_counter()
    from geofg.config import build_job
    from geofg.run import run_job

    shutil.rmtree(out, ignore_errors=True)
    job = build_job({
        "read": {"inputs": [inp]},
        "tile": {"chunk": chunk, "batch_size": batch},
        "model": {"model": model, "device": device, "compile": compile_},
        "write": {"output": out, "quicklook": True},
        "runner": {"compute_streams": streams, "kind": "ray" if ray else "local"},
        "mask": {"mode": mask},
    })
    marks: dict[str, float] = {}

    def on_progress(done: int, total: int, km2: float) -> None:
        now = time.perf_counter()
        if "first_progress" not in marks:
            marks["first_progress"], marks["first_km2"] = now, km2
        elif "first_unit" not in marks:  # the first unit finished: model loaded (and compiled)
            marks["first_unit"], marks["first_unit_km2"] = now, km2
        marks["last_progress"], marks["last_km2"] = now, km2

    t_job = time.perf_counter()
    sampler = _PeakSampler()
    if ray:
        sampler.start()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    result = run_job(job, on_progress=on_progress)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    ray_peak = sampler.stop() if ray else None
    t1 = time.perf_counter()
    p = result.plan
    prof = result.profile
    # the runner's own profile: reader (read, normalise), compute (forward, blend), writer
    # (layers, write); seconds summed over units and threads
    split = {k: prof.get(k, 0.0) for k in ("read", "normalise", "forward", "blend", "layers", "write")}
    split["tile+blend"] = split.pop("blend")
    gpu_peak_mb = None
    if device.startswith("cuda"):
        import torch

        gpu_peak_mb = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({
        "height": p.info.height, "width": p.info.width, "units": len(p.units),
        "tile_size": p.tile_size, "halo": p.halo, "chunk": chunk, "batch": batch,
        "wall_s": t1 - t0,
        "job_s": t1 - t_job,  # run_job: preflight, model load, units, finalize, quicklook
        # the steady-state window: units finished after the first one, over the time they took
        "units_s": marks["last_progress"] - marks["first_progress"],
        "units_fraction": (marks["last_km2"] - marks["first_km2"]) / marks["last_km2"],
        # after the first unit: without model loading, compilation and the first read
        "steady_s": marks["last_progress"] - marks.get("first_unit", marks["first_progress"]),
        "steady_fraction": (marks["last_km2"] - marks.get("first_unit_km2", marks["first_km2"]))
        / marks["last_km2"],
        "profile": prof,
        "cpu_threads": result.cpu,  # CPU s of reader and writer threads, the process, wall, cores
        "stages": split,
        "compiled": compile_,
        "compute_streams": streams,
        "gpu_peak_mb": gpu_peak_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "runner": "ray" if ray else "local",
        "ray_peak_anon_mb": ray_peak,
        # CPU seconds of run_job, all threads: user (compute, decode) and system (page faults, I/O)
        "cpu_user_s": ru1.ru_utime - ru0.ru_utime,
        "cpu_sys_s": ru1.ru_stime - ru0.ru_stime,
        "minor_faults": ru1.ru_minflt - ru0.ru_minflt,
    }))


if __name__ == "__main__":
    a = sys.argv[1:]
    n = next((int(x.split("=", 1)[1]) for x in a[6:] if x.startswith("streams=")), None)
    main(a[0], a[1], a[2], int(a[3]), int(a[4]), a[5], "compile" in a[6:], n, "ray" in a[6:],
         "off" if "no-mask" in a[6:] else "auto")

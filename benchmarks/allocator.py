"""Bare forward speed, page faults and kernel CPU under each heap policy (benchmarks/HISTORY.md, 0).

    python -m benchmarks.allocator [--model eurosat-13] [--tile 1152] [--repeats 4]

Each policy runs in its own subprocess, because glibc's heap settings and torch's huge-page
switch only take effect before the first thread and the first allocation:

* ``glibc``: glibc's defaults (``GEOFG_MALLOC_REUSE=0``, ``THP_MEM_ALLOC_ENABLE=0``);
* ``thp``: torch backs its large buffers with transparent huge pages (what ``import geofg`` sets);
* ``reuse``: one reused heap (:func:`geofg.memory.reuse_heap`, what ``geofg classify`` does).

For each, one stream with all torch threads and as many single-threaded streams as threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

POLICIES = {
    "glibc": {"GEOFG_MALLOC_REUSE": "0", "THP_MEM_ALLOC_ENABLE": "0"},
    "thp": {"GEOFG_MALLOC_REUSE": "0", "THP_MEM_ALLOC_ENABLE": "1"},
    "reuse": {"GEOFG_MALLOC_REUSE": "1"},
}


def child(model: str, tile: int, repeats: int, streams: int) -> dict:
    """Time ``repeats`` forwards per stream after a warm-up; CPU and faults from getrusage."""
    import resource
    import threading
    import time

    import numpy as np

    import benchmarks  # noqa: F401 - the heap policy of this process, before torch
    from geofg.memory import heap_reused
    from geofg.models.inference.predictor import load_predictor
    from geofg.models.inference.registry import resolve_model

    pred = load_predictor(resolve_model(model), "cpu")
    x = np.random.default_rng(0).normal(0, 1, (1, len(pred.card.bands), tile, tile)).astype(np.float32)
    with pred.streams(streams) as n:
        def loop(k: int) -> None:
            for _ in range(k):
                pred.predict(x)

        def run(k: int) -> None:
            ts = [threading.Thread(target=loop, args=(k,)) for _ in range(n)]
            [t.start() for t in ts], [t.join() for t in ts]

        run(1)  # warm-up, every thread
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        run(repeats)
        dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"streams": n, "mpx_s": n * repeats * tile * tile / dt / 1e6, "s_per_tile": dt / repeats,
            "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
            "minor_faults": r1.ru_minflt - r0.ru_minflt, "peak_rss_mb": r1.ru_maxrss / 1024,
            "heap_reused": heap_reused(), "thp": os.environ.get("THP_MEM_ALLOC_ENABLE")}


def main(argv: list[str] | None = None) -> int:
    """Run every policy x stream setting and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="eurosat-13")
    ap.add_argument("--tile", type=int, default=1152)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.model, args.tile, args.repeats, args.child)))
        return 0
    import torch

    threads = torch.get_num_threads()
    print(f"{args.model}, {args.tile}² tiles, {args.repeats} forwards per stream, {threads} torch threads")
    print(f"{'policy':>6} {'streams':>7} {'Mpx/s':>7} {'s/tile':>7} {'user s':>7} {'sys s':>6} "
          f"{'faults':>10} {'RSS MB':>7}")
    base = {k: v for k, v in os.environ.items() if k not in ("GEOFG_MALLOC_REUSE", "THP_MEM_ALLOC_ENABLE")}
    for name, env in POLICIES.items():
        for n in sorted({1, threads}, reverse=True):
            cmd = [sys.executable, "-m", "benchmarks.allocator", "--model", args.model, "--tile",
                   str(args.tile), "--repeats", str(args.repeats), "--child", str(n)]
            out = subprocess.run(cmd, env={**base, **env, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                                 text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{name:>6} {r['streams']:>7} {r['mpx_s']:>7.3f} {r['s_per_tile']:>7.3f} "
                  f"{r['user_s']:>7.1f} {r['sys_s']:>6.1f} {r['minor_faults']:>10,} {r['peak_rss_mb']:>7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

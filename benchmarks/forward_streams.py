"""Bare forward throughput by torch threads x concurrent streams (the compute_streams choice).

    python -m benchmarks.forward_streams [--model eurosat-13] [--tile 1152] [--repeats 6]

Each stream is a Python thread calling ``predict`` on its own (1, C, tile, tile) batch; the
table gives seconds per tile (wall / tiles) and Mpx/s for each (threads, streams) pair.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="eurosat-13")
    ap.add_argument("--tile", type=int, default=1152)
    ap.add_argument("--repeats", type=int, default=6)
    a = ap.parse_args(argv)

    import torch

    from geofg.models.inference.predictor import load_predictor

    pred = load_predictor(a.model, device="cpu")
    x = np.random.default_rng(0).normal(size=(1, len(pred.card.bands), a.tile, a.tile)).astype(np.float32)
    cores = torch.get_num_threads()

    def loop(n: int) -> None:
        for _ in range(n):
            pred.predict(x)

    print(f"{'threads':>7} {'streams':>7} {'s/tile':>7} {'Mpx/s':>7}")
    for threads, streams in [(cores, 1), (1, cores), (1, 1), (cores, cores)]:
        torch.set_num_threads(threads)
        loop(1)
        t = time.perf_counter()
        ts = [threading.Thread(target=loop, args=(a.repeats,)) for _ in range(streams)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        dt = time.perf_counter() - t
        tiles = a.repeats * streams
        print(f"{threads:>7} {streams:>7} {dt / tiles:>7.3f} {tiles * a.tile**2 / dt / 1e6:>7.3f}")
    torch.set_num_threads(cores)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

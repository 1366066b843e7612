"""The peer baseline: sliding windows + the same model + a full-scene probability accumulator.

    python -m benchmarks.baseline INPUT OUT.tif MODEL TILE OVERLAP BATCH DEVICE [--mem-cap-mb N]

This is how Raster Vision (``SemanticSegmentationSmoothLabels``: score sums + hit counts over the
whole extent) and TerraTorch (``tiled_inference``: an output tensor and a weight tensor the size
of the input) predict a large scene, written here without either library:

1. windows of ``TILE`` px with ``OVERLAP`` px overlap cover the raster (the last window of a row
   or column ends at the edge); each is read with a rasterio windowed read, in sequence;
2. normalised with the model card's statistics, zero-padded to the tile size at the edges,
   batched, and predicted with the *same* predictor geofg uses (``load_predictor``);
3. probabilities times the same cosine blend weights go into a float32 ``(K, H, W)`` accumulator,
   the weights into a float32 ``(H, W)`` accumulator, both for the full scene;
4. at the end: divide, argmax, write a uint8 class GeoTIFF (tiled, deflate).

It writes only the class layer (geofg also writes confidence and crop health, and a ledger
record per unit), so it does less work per pixel than geofg. Memory grows with the scene: the
accumulators alone are ``(K + 1) * H * W * 4`` bytes.

Prints one JSON line: status (``ok`` or ``oom``), timings, accumulator size, peak RSS. With
``--mem-cap-mb`` the process's private writable memory is capped (``RLIMIT_DATA``, see
:func:`set_memory_cap`) before anything is allocated, so "runs out of memory" is a real
``MemoryError``, reported as ``status: oom``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time


def set_memory_cap(cap_mb: int | None) -> None:
    """Cap this process's private writable memory at ``cap_mb`` MiB; ``None``: no cap.

    ``RLIMIT_DATA`` (Linux >= 4.7 counts heap and private writable mappings, i.e. every numpy
    and torch buffer), not ``RLIMIT_AS``: importing torch alone maps ~3.6 GB of address space
    (shared libraries) while ~0.9 GB of it is data, so an address-space cap would measure
    libraries, not the working set.
    """
    if cap_mb:
        cap = cap_mb * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))


def window_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Offsets of windows of ``tile`` px stepping ``tile - overlap``; the last one ends at the edge.

    Examples:
        >>> window_starts(2000, 1152, 128)
        [0, 848]
        >>> window_starts(500, 1152, 128)
        [0]
    """
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    return [*starts, size - tile]


def run(inp: str, out: str, model: str, tile: int, overlap: int, batch: int, device: str,
        rec: dict) -> dict:
    """Predict ``inp`` with a full-scene accumulator and write ``out``; fill ``rec`` with timings.

    ``rec`` is filled as the run goes, so what was known before a ``MemoryError`` (the raster
    and accumulator sizes) survives it.
    """
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from geofg.models.inference.predictor import load_predictor
    from geofg.stitch import cosine_weights

    t0 = time.perf_counter()
    pred = load_predictor(model, device)
    card = pred.card
    t_load = time.perf_counter() - t0
    rec.update(status="ok", tile=tile, overlap=overlap, batch=batch)
    t1 = time.perf_counter()
    with rasterio.open(inp) as src:
        names = list(src.descriptions)
        bands = [names.index(b) + 1 if b in names else i + 1 for i, b in enumerate(card.bands)]
        h, w, k = src.height, src.width, len(card.classes)
        rec.update(height=h, width=w, accumulator_mb=(k + 1) * h * w * 4 / 2**20)
        scale = np.float32(card.scale)
        mean = np.asarray(card.mean, np.float32)[:, None, None]
        std = np.asarray(card.std, np.float32)[:, None, None]
        weights = cosine_weights(tile, overlap)
        probs = np.zeros((k, h, w), np.float32)  # the full-scene accumulators
        wsum = np.zeros((h, w), np.float32)
        stages = dict.fromkeys(("read", "normalise", "forward", "blend", "finalize"), 0.0)
        windows = [(r, c) for r in window_starts(h, tile, overlap) for c in window_starts(w, tile, overlap)]
        rec["tiles"] = len(windows)
        for i in range(0, len(windows), batch):
            group = windows[i : i + batch]
            x = np.zeros((len(group), len(bands), tile, tile), np.float32)
            for j, (r, c) in enumerate(group):
                t = time.perf_counter()
                raw = src.read(bands, window=Window(c, r, min(tile, w - c), min(tile, h - r)))
                stages["read"] += time.perf_counter() - t
                t = time.perf_counter()
                x[j, :, : raw.shape[1], : raw.shape[2]] = (raw.astype(np.float32) * scale - mean) / std
                stages["normalise"] += time.perf_counter() - t
            t = time.perf_counter()
            p = pred.predict(x)
            stages["forward"] += time.perf_counter() - t
            t = time.perf_counter()
            for j, (r, c) in enumerate(group):
                th, tw = min(tile, h - r), min(tile, w - c)
                wt = weights[:th, :tw]
                probs[:, r : r + th, c : c + tw] += p[j, :, :th, :tw] * wt
                wsum[r : r + th, c : c + tw] += wt
            stages["blend"] += time.perf_counter() - t
        t = time.perf_counter()
        probs /= wsum
        cls = probs.argmax(axis=0).astype(np.uint8)
        profile = {**src.profile, "count": 1, "dtype": "uint8", "nodata": 255, "tiled": True,
                   "blockxsize": 512, "blockysize": 512, "compress": "deflate", "predictor": 1}
        profile.pop("BIGTIFF", None)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(cls, 1)
        stages["finalize"] += time.perf_counter() - t
    rec.update(load_s=t_load, run_s=time.perf_counter() - t1, profile=stages)
    return rec


def main(argv: list[str] | None = None) -> int:
    """Run the baseline once and print one JSON line (status ok or oom)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("model")
    ap.add_argument("tile", type=int)
    ap.add_argument("overlap", type=int)
    ap.add_argument("batch", type=int)
    ap.add_argument("device")
    ap.add_argument("--mem-cap-mb", type=int, default=None)
    a = ap.parse_args(argv)
    set_memory_cap(a.mem_cap_mb)
    t0 = time.perf_counter()
    rec: dict = {}
    try:
        run(a.input, a.output, a.model, a.tile, a.overlap, a.batch, a.device, rec)
    except MemoryError as e:
        rec.update(status="oom", error=f"MemoryError: {e}".splitlines()[0])
    except RuntimeError as e:  # torch's allocator says so in a RuntimeError
        if "allocate" not in str(e):
            raise
        rec.update(status="oom", error=f"RuntimeError: {e}".splitlines()[0])
    rec.update(wall_s=time.perf_counter() - t0, mem_cap_mb=a.mem_cap_mb,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())

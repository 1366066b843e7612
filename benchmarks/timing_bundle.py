"""A U-Net bundle with RANDOM, UNTRAINED weights, for timing only.

    python -m benchmarks.timing_bundle [--encoder resnet18] [--out .bench/...safetensors]

It exists so the benchmarks can time a second, heavier encoder (an ``smp.Unet``) through exactly
the code path of a real bundle. Its outputs mean nothing: it is not a model, it is never shipped
(it is written under ``.bench/``, which git ignores) and its card says so in its name, its
version, its training record and its metrics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.rasters import S2

TIMING_NAME = "TIMING-ONLY-untrained-unet"


def make_timing_unet(path: Path, encoder: str = "resnet18", seed: int = 0) -> Path:
    """Write (once) a 13-band, 10-class U-Net bundle with random weights to ``path``."""
    if path.exists():
        return path
    import torch

    from geofg.models.inference.bundle import read_card, write_bundle
    from geofg.models.inference.card import ModelCard
    from geofg.models.inference.nets import build_model
    from geofg.models.inference.registry import resolve_model

    # eurosat-13: the 13 bands of S2 with their statistics (the default model reads 9 bands)
    ref = read_card(resolve_model("eurosat-13"))
    card = ModelCard(
        name=f"{TIMING_NAME}-{encoder}", version="0.0.0-timing-only", task="segmentation",
        architecture="unet", encoder=encoder, bands=list(S2), scale=ref.scale,
        mean=list(ref.mean), std=list(ref.std), classes=list(ref.classes),
        tile_size=512, halo=64,
        training={"note": "NOT TRAINED: random weights (torch.manual_seed"
                          f"({seed})), for timing benchmarks only; outputs are meaningless"},
        metrics={}, made_by="benchmarks/timing_bundle.py",
    )
    torch.manual_seed(seed)
    net = build_model(card).eval()
    write_bundle(path, {k: v.numpy() for k, v in net.state_dict().items()}, card)
    return path


def main() -> None:
    """Write the timing-only bundle and print its path."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    out = a.out or Path(".bench") / f"{TIMING_NAME}-{a.encoder}.safetensors"
    print(make_timing_unet(out, a.encoder))


if __name__ == "__main__":
    main()

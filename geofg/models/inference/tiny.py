"""Deterministic numpy predictors for tests and smoke runs (never presented as models).

* :class:`IdentityPredictor` returns its input as "probabilities" (K = C), so a pipeline run with
  it must reproduce the input: the end-to-end check of tiling, halo and blending.
* :class:`ThresholdPredictor` splits pixels into two classes by the sign of band 0 (normalised),
  with probabilities from a logistic of it: a cheap, exactly known land-cover map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geofg.models.inference.card import ClassInfo, ModelCard

_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def tiny_card(
    bands: Sequence[str], classes: Sequence[str], *, task: str = "patch-classification",
    crop_classes: Sequence[str] = (), tile_size: int = 64, halo: int = 8, scale: float = 1.0,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None, tile_multiple: int = 1,
) -> ModelCard:
    """Return a card for a tiny test predictor."""
    n = len(bands)
    return ModelCard(
        name="tiny", version="0", task=task, architecture="tiny", encoder="none", bands=list(bands),
        scale=scale, mean=list(mean or [0.0] * n), std=list(std or [1.0] * n),
        classes=[ClassInfo(name=c, colour=_COLOURS[i % len(_COLOURS)]) for i, c in enumerate(classes)],
        crop_classes=list(crop_classes), tile_multiple=tile_multiple, tile_size=tile_size, halo=halo,
    )


class IdentityPredictor:
    """Returns the input unchanged; ``card.classes`` must have one entry per band."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self.calls = 0
        self.seen_nan = False

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) -> the same array as float32."""
        self.calls += 1
        self.seen_nan |= bool(np.isnan(x).any())
        return x.astype(np.float32, copy=True)


class ThresholdPredictor:
    """Two classes: 1 where band 0 > 0 (normalised), else 0; confidence from a logistic."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self.calls = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) -> (N, 2, H, W) probabilities."""
        self.calls += 1
        p1 = 1.0 / (1.0 + np.exp(-4.0 * x[:, 0].astype(np.float32)))
        return np.stack([1.0 - p1, p1], axis=1).astype(np.float32)

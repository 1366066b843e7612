"""Blending of overlapping tile predictions inside one work unit.

A blend method is a pure function ``(tile, overlap) -> (tile, tile) float32 weights``. Weights are
strictly positive everywhere (so every predicted pixel counts) and the accumulator divides by their
sum, so blended values are convex combinations of the tiles' values: an identity model blends back
to its input. Methods live in one dict, :data:`BLEND_METHODS`, which the CLI reads for its choices.

Shapes: tiles are ``(K, tile, tile)`` (classes or bands first), accumulators ``(K, H, W)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from geofg.errors import ConfigError
from geofg.grid import Window

_EPS = 1e-3


def cosine_weights(tile: int, overlap: int) -> np.ndarray:
    """Return a cosine ramp over ``overlap`` pixels at each tile edge, 1 inside, > 0 everywhere.

    Examples:
        >>> w = cosine_weights(16, 4)
        >>> w.shape, bool(w.min() > 0), float(w[8, 8])
        ((16, 16), True, 1.0)
    """
    ramp = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        pos = (np.arange(overlap) + 0.5) / overlap  # (0, 1)
        edge = 0.5 - 0.5 * np.cos(np.pi * pos)
        ramp[:overlap] = edge
        ramp[tile - overlap :] = edge[::-1]
    ramp = np.maximum(ramp, _EPS)
    return np.outer(ramp, ramp).astype(np.float32)


def centre_weights(tile: int, overlap: int) -> np.ndarray:
    """Return weights that keep each tile's centre: 1 inside the overlap margin, tiny outside.

    Where tiles overlap, the pixel farther from its tile's edge wins almost entirely
    (raster-vision's ``crop_sz``), while the tiny edge weight keeps every pixel covered.
    """
    ramp = np.ones(tile, dtype=np.float32)
    m = overlap // 2
    if m:
        ramp[:m] = _EPS
        ramp[tile - m :] = _EPS
    return np.outer(ramp, ramp)


BLEND_METHODS: dict[str, Callable[[int, int], np.ndarray]] = {
    "cosine": cosine_weights,
    "centre": centre_weights,
}


def blend_weights(method: str, tile: int, overlap: int) -> np.ndarray:
    """Look up a blend method by name and build its weights."""
    try:
        fn = BLEND_METHODS[method]
    except KeyError:
        raise ConfigError(
            f"unknown blend method {method!r}; choose one of {', '.join(BLEND_METHODS)}"
        ) from None
    return fn(tile, overlap)


class Accumulator:
    """Weighted sum of tile predictions over one unit's (padded) read window.

    Args:
        channels: K, classes or bands per pixel.
        height: rows of the window.
        width: columns of the window.
    """

    def __init__(self, channels: int, height: int, width: int) -> None:
        self.scores = np.zeros((channels, height, width), dtype=np.float32)
        self.weights = np.zeros((height, width), dtype=np.float32)

    def add(self, tile: Window, values: np.ndarray, weights: np.ndarray) -> None:
        """Add ``values`` (K, th, tw) at ``tile`` (offsets within the window) with ``weights`` (th, tw)."""
        rs, cs = slice(tile.row_off, tile.row_end), slice(tile.col_off, tile.col_end)
        self.scores[:, rs, cs] += values * weights
        self.weights[rs, cs] += weights

    def result(self, region: Window) -> np.ndarray:
        """Return the normalised scores (K, h, w) of ``region`` (offsets within the window).

        Pixels no tile covered are 0.
        """
        rs, cs = slice(region.row_off, region.row_end), slice(region.col_off, region.col_end)
        w = self.weights[rs, cs]
        out = self.scores[:, rs, cs] / np.where(w > 0, w, 1.0)
        return out

"""Turn raw windows into model input: normalise with the model card's global statistics, pad.

No per-tile statistics: every unit is normalised with the same card values, so seams cannot come
from brightness jumps. Invalid pixels (nodata, NaN, outside the raster) become 0 after
normalisation, i.e. the training mean, and never reach the model as values. No torch here.

Shapes: windows are ``(C, H, W)``, batches ``(N, C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def normalise(
    data: np.ndarray, valid: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Return ``(data * scale - mean) / std`` as float32 (C, H, W), 0 where not ``valid``.

    Examples:
        >>> x = np.array([[[100, 200]]], dtype=np.uint16)
        >>> normalise(x, np.array([[True, False]]), 0.01, [1.0], [0.5]).tolist()
        [[[0.0, 0.0]]]
    """
    c = data.shape[0]
    a = (np.float32(scale) / np.asarray(std, dtype=np.float32)).reshape(c, 1, 1)
    b = (np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)).reshape(c, 1, 1)
    # cast, then scale and shift in place: a multiply that casts as it goes (dtype=float32) uses
    # numpy's buffered loop and took 11.7 ms per 13 x 1152² unit against 8.6 ms for these three
    out = data.astype(np.float32)
    out *= a
    out -= b
    if not valid.all():
        out[:, ~valid] = 0.0
    # NaN can only be at invalid pixels (the reader marks them), already zeroed.
    return out


def pad_to(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pad (C, h, w) at the bottom/right up to (C, height, width); no copy if already that size."""
    c, h, w = x.shape
    if h == height and w == width:
        return x
    out = np.zeros((c, max(h, height), max(w, width)), dtype=x.dtype)
    out[:, :h, :w] = x
    return out


def round_up(n: int, multiple: int) -> int:
    """Round ``n`` up to a multiple of ``multiple``.

    Examples:
        >>> round_up(1088, 32), round_up(1089, 32)
        (1088, 1120)
    """
    return -(-n // multiple) * multiple

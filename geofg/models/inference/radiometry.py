"""Per-band linear radiometric maps between sensors, fitted by matching band quantiles.

The ``naip-4band`` bundle (scripts/train_naip4.py, docs/models.md) is trained on EuroSAT
Sentinel-2 L1C chips (top-of-atmosphere reflectance x 10 000, 10 m) but runs on NAIP (uint8
digital numbers, R, G, B, NIR). There is no published calibration from NAIP DN to reflectance
(NAIP tiles are colour-balanced per acquisition), so a per-band linear map

    reflectance_b = gain_b * DN_b + offset_b

is fitted by making two quantiles of the NAIP pixels (``anchors``, e.g. the 2nd and 98th
percentile: dark water / bright soil) land on the same quantiles of the EuroSAT *train* pixels.
The map is applied the other way round, to the training chips (:meth:`LinearMap.inverse`): the
EuroSAT chips are rendered as NAIP-like uint8 DN and the model is trained on those, so its card
takes NAIP DN as they are (``scale = 1/255``, mean/std of the rendered train chips). This keeps
the pipeline unchanged *and* keeps the network's normalised-difference indices (NDVI, NDWI,
computed from the card's mean/std) in the same units at training and at run time; storing the map
only in the card's mean/std would not, since indices are not invariant to per-band offsets.

Pure numpy; no torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geofg.errors import ConfigError

__all__ = ["LinearMap", "band_quantiles", "fit_quantile_map"]


@dataclass(frozen=True)
class LinearMap:
    """``target_b = gain_b * source_b + offset_b`` for each band ``b`` (gains > 0)."""

    gain: tuple[float, ...]
    offset: tuple[float, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Map source values ``(N, C, ...)`` or ``(C, ...)`` (channel axis -3 or 0) to target.

        Examples:
            >>> m = LinearMap((2.0, 10.0), (1.0, -5.0))
            >>> m.apply(np.array([[[3.0]], [[1.0]]])).ravel().tolist()
            [7.0, 5.0]
        """
        return x * self._col(self.gain, x) + self._col(self.offset, x)

    def inverse(self) -> LinearMap:
        """The map from target back to source.

        Examples:
            >>> LinearMap((2.0,), (1.0,)).inverse()
            LinearMap(gain=(0.5,), offset=(-0.5,))
        """
        return LinearMap(tuple(1.0 / g for g in self.gain),
                         tuple(-o / g for g, o in zip(self.gain, self.offset, strict=True)))

    def _col(self, v: tuple[float, ...], x: np.ndarray) -> np.ndarray:
        axis = 0 if x.ndim == 3 else 1
        shape = [1] * x.ndim
        shape[axis] = len(v)
        if x.shape[axis] != len(v):
            raise ConfigError(f"the radiometric map has {len(v)} bands, the data {x.shape[axis]} "
                              f"(shape {x.shape}); give data with one channel per band")
        return np.asarray(v, dtype=np.float64).reshape(shape)

    def to_json(self) -> dict[str, list[float]]:
        """Plain lists for a model card (full precision: a card's map reproduces the training data)."""
        return {"gain": list(self.gain), "offset": list(self.offset)}


def band_quantiles(pixels: Sequence[np.ndarray], percentiles: Sequence[float]) -> np.ndarray:
    """Per-band percentiles of valid pixels pooled over several arrays.

    Args:
        pixels: arrays ``(C, n_i)`` of valid pixel values (same ``C``), e.g. one per scene.
        percentiles: in 0..100.

    Returns:
        float64 ``(C, len(percentiles))``.

    Examples:
        >>> band_quantiles([np.array([[0.0, 10.0]]), np.array([[20.0]])], [0, 50, 100]).tolist()
        [[0.0, 10.0, 20.0]]
    """
    stacked = np.concatenate([np.asarray(p, dtype=np.float64) for p in pixels], axis=1)
    if stacked.shape[1] == 0:
        raise ConfigError("no valid pixels to take quantiles of; give scenes with valid data")
    return np.percentile(stacked, list(percentiles), axis=1).T


def fit_quantile_map(source_q: np.ndarray, target_q: np.ndarray) -> LinearMap:
    """Fit, per band, the line through two (source, target) quantile pairs.

    Args:
        source_q: ``(C, 2)`` source values at the low and high anchor percentile.
        target_q: ``(C, 2)`` target values at the same percentiles.

    Raises:
        ConfigError: a band's source anchors are equal or reversed (no usable contrast).

    Examples:
        >>> fit_quantile_map(np.array([[10.0, 110.0]]), np.array([[100.0, 2100.0]]))
        LinearMap(gain=(20.0,), offset=(-100.0,))
    """
    s, t = np.asarray(source_q, np.float64), np.asarray(target_q, np.float64)
    if s.shape != t.shape or s.ndim != 2 or s.shape[1] != 2:
        raise ConfigError(f"expected (bands, 2) anchor quantiles for source and target, found "
                          f"{s.shape} and {t.shape}; pass the low and high anchor of each band")
    gains, offsets = [], []
    for b in range(s.shape[0]):
        ds, dt = s[b, 1] - s[b, 0], t[b, 1] - t[b, 0]
        if not (ds > 0 and dt > 0):
            raise ConfigError(f"band {b}: the anchor quantiles do not increase (source {s[b].tolist()}, "
                              f"target {t[b].tolist()}); choose anchors further apart")
        g = dt / ds
        gains.append(float(g))
        offsets.append(float(t[b, 0] - g * s[b, 0]))
    return LinearMap(tuple(gains), tuple(offsets))

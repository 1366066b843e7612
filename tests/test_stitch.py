"""Blend weights and the accumulator (geofg.stitch)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geofg.errors import ConfigError
from geofg.grid import Window, plan_tiles
from geofg.stitch import BLEND_METHODS, Accumulator, blend_weights


@pytest.mark.parametrize("method", sorted(BLEND_METHODS))
@given(tile=st.integers(1, 64), data=st.data())
def test_weights_positive(method: str, tile: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    w = blend_weights(method, tile, overlap)
    assert w.shape == (tile, tile) and w.dtype == np.float32
    assert (w > 0).all() and np.isfinite(w).all()


@pytest.mark.parametrize("method", sorted(BLEND_METHODS))
@given(h=st.integers(1, 90), w=st.integers(1, 90), tile=st.integers(2, 40), data=st.data())
def test_normalised_weights_sum_to_one_and_identity_blends_back(
    method: str, h: int, w: int, tile: int, data: st.DataObject
) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    ph, pw = max(h, tile), max(w, tile)
    rng = np.random.default_rng(h * 1000 + w)
    field = rng.integers(0, 1000, (3, ph, pw)).astype(np.float32)
    acc = Accumulator(3, ph, pw)
    ones = Accumulator(1, ph, pw)
    wts = blend_weights(method, tile, overlap)
    for t in plan_tiles(ph, pw, tile, overlap):
        sl = (slice(None), slice(t.row_off, t.row_end), slice(t.col_off, t.col_end))
        acc.add(t, field[sl], wts)
        ones.add(t, np.ones((1, tile, tile), np.float32), wts)
    region = Window(0, 0, h, w)
    np.testing.assert_allclose(ones.result(region), 1.0, rtol=1e-5)
    np.testing.assert_allclose(acc.result(region), field[:, :h, :w], rtol=1e-4)


def test_unknown_blend_method() -> None:
    with pytest.raises(ConfigError, match="cosine"):
        blend_weights("nope", 8, 2)

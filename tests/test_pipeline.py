"""The whole read -> tile -> predict -> blend -> core path with an identity model.

For any raster size, chunk, tile and halo, stitching the units' cores must reproduce the input:
exactly for integer rasters (after rounding), to float precision for float rasters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geofg.batch import normalise
from geofg.grid import plan_units
from geofg.io.read import RasterReader, open_raster, select_bands
from geofg.models.tiny import IdentityPredictor, tiny_card
from geofg.pipeline import predict_window
from rasters import write_raster


def stitch_identity(path: Path, chunk: int, halo: int, tile: int, batch: int = 2, blend: str = "cosine"):  # noqa: ANN201
    info = open_raster([path])
    card = tiny_card(list(info.band_names), list(info.band_names), tile_size=tile, halo=halo)
    idx = select_bands(info, card.bands)
    pred = IdentityPredictor(card)
    out = np.full((len(idx), info.height, info.width), np.nan, dtype=np.float32)
    with RasterReader(info, idx) as reader:
        for u in plan_units(info.height, info.width, chunk, halo):
            data, valid = reader.read(u.read)
            x = normalise(data, valid, 1.0, card.mean, card.std)
            probs = predict_window(x, valid, pred, tile, min(2 * halo, tile // 2), batch, blend)
            rs, cs = u.core.relative_to(u.read)
            c = u.core
            out[:, c.row_off : c.row_end, c.col_off : c.col_end] = probs[:, rs, cs]
    return out, pred


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    h=st.integers(1, 70), w=st.integers(1, 70), chunk=st.integers(4, 40), halo=st.integers(0, 12),
    tile=st.integers(4, 48), blend=st.sampled_from(["cosine", "centre"]),
)
def test_identity_reproduces_integer_input(tmp_path: Path, h: int, w: int, chunk: int, halo: int,
                                           tile: int, blend: str) -> None:
    data = np.random.default_rng(h * 71 + w).integers(0, 10000, (2, h, w)).astype("uint16")
    path = write_raster(tmp_path / f"in_{h}_{w}.tif", data, descriptions=["B04", "B08"])
    got, _ = stitch_identity(path, chunk, halo, tile, blend=blend)
    np.testing.assert_array_equal(np.rint(got).astype("uint16"), data)


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (64, 64), (65, 63)])
def test_identity_reproduces_float_input_and_edge_shapes(tmp_path: Path, shape: tuple[int, int]) -> None:
    data = np.random.default_rng(0).normal(0, 100, (3, *shape)).astype("float32")
    path = write_raster(tmp_path / "f.tif", data, descriptions=["B02", "B03", "B04"])
    got, pred = stitch_identity(path, chunk=32, halo=8, tile=32)
    np.testing.assert_allclose(got, data, rtol=1e-5, atol=1e-3)
    assert pred.calls > 0


def test_nodata_and_nan_never_reach_the_model(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(0, 1, (2, 40, 40)).astype("float32")
    data[:, 5:15, 5:15] = np.nan
    data[:, 30:, 30:] = -9999.0
    path = write_raster(tmp_path / "nan.tif", data, nodata=-9999.0, descriptions=["B04", "B08"])
    got, pred = stitch_identity(path, chunk=16, halo=4, tile=16)
    assert not pred.seen_nan
    # invalid pixels were given to the model as 0 (the training mean), never as NaN or -9999
    assert np.all(got[:, 5:15, 5:15] == 0) and np.all(got[:, 30:, 30:] == 0)

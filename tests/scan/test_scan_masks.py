"""Scans mask clouds per date and assess crop health per date (geofg.masks, geofg.season)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from rasterio.transform import from_origin
from scanhelp import ORIGIN, config, predictor, threshold_bundle

from geofg import masks
from geofg.masks import CLEAR, CLOUD
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan
from rasters import write_raster

S2 = ["B04", "B08", "B02", "B03", "B11", "B12"]  # band 0 (red) drives ThresholdPredictor's class
H, W = 48, 64


def _bright_blue_is_cloud(refl: np.ndarray, level: str, threads: int = 0) -> np.ndarray:
    """Stand-in for the detector (its network is tested in tests/test_masks*.py): blue > 0.3."""
    return (refl[0] > 0.3).astype(np.uint8)


def _scene(inbox: Path, name: str, cloud_rows: int = 0) -> None:
    px = np.array([500, 3500, 400, 700, 2000, 1000], np.uint16)  # green vegetation
    data = np.broadcast_to(px[:, None, None], (6, H, W)).copy()
    data[0, :, W // 2:] = 1500  # the east half is "crop" for the threshold model
    data[2, :cloud_rows, :] = 6000  # a cloud: bright blue
    inbox.mkdir(exist_ok=True)
    write_raster(inbox / name, data, nodata=0, descriptions=S2, transform=from_origin(*ORIGIN, 10.0, 10.0))


@pytest.fixture
def scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setattr(masks, "cloud_shadow", _bright_blue_is_cloud)
    model = threshold_bundle(tmp_path, S2)
    return tmp_path, build_scan(config(tmp_path, model))


def test_a_cloudy_date_is_masked_counted_apart_and_the_latest_view_keeps_the_clear_date(scan) -> None:  # noqa: ANN001
    tmp, cfg = scan
    _scene(tmp / "inbox", "S_20200601.tif")
    _scene(tmp / "inbox", "S_20200715.tif", cloud_rows=18)  # 6 whole 3 x 3 blocks of the detector
    r = run_scan(cfg, predictor_factory=predictor)
    assert r.count("processed") == 2
    ds = xr.open_zarr(tmp / "m.zarr", decode_coords="all", mask_and_scale=False)
    order = {str(np.datetime_as_string(t, "D")): i for i, t in enumerate(ds.time.values)}
    june, july = order["2020-06-01"], order["2020-07-15"]
    mask = ds["mask"].values
    assert (mask[june] == CLEAR).all()
    assert (mask[july, :18] == CLOUD).all() and (mask[july, 18:] == CLEAR).all()
    cls = ds["class"].values
    assert (cls[july, :18] == 255).all() and (ds["health"].values[july, :18] == 255).all()
    assert (cls[july, 18:] == cls[june, 18:]).all() and (cls[june] < 255).all()
    # under the July cloud the latest view is June's class, from June
    assert (ds["latest_class"].values == cls[june]).all()
    lt = ds["latest_time"].values
    assert (lt[:18] == np.datetime64("2020-06-01")).all() and (lt[18:] == np.datetime64("2020-07-15")).all()
    rows = {row["date"]: row for row in r.summary["dates"]}
    km2 = 1e-4  # 10 m pixels
    assert rows["2020-07-15"]["masked_km2"]["cloud"] == pytest.approx(18 * W * km2)
    assert rows["2020-06-01"]["masked_km2"]["cloud"] == 0
    assert sum(rows["2020-07-15"]["classes"].values()) == pytest.approx((H - 18) * W * km2)
    # both dates are in season at 52 deg N with green canopy: health assessed
    assert not any("health_not_assessed" in row for row in rows.values())
    assert (ds["health"].values[july, 18:, W // 2:] < 255).all()
    report = next(Path(p) for p in r.report_paths if p.endswith(".md")).read_text()
    assert "cloud (masked, not classified)" in report


def test_a_winter_date_gets_no_health_and_the_report_says_why(scan) -> None:  # noqa: ANN001
    tmp, cfg = scan
    _scene(tmp / "inbox", "S_20200210.tif")
    r = run_scan(cfg, predictor_factory=predictor)
    row = r.summary["dates"][0]
    assert "outside the growing season" in row["health_not_assessed"]
    assert sum(row["health"].values()) == 0
    ds = xr.open_zarr(tmp / "m.zarr", decode_coords="all", mask_and_scale=False)
    assert (ds["health"].values == 255).all() and (ds["class"].values < 255).all()
    report = next(Path(p) for p in r.report_paths if p.endswith(".md")).read_text()
    assert "Crop health not assessed: acquired 2020-02-10, outside the growing season" in report


def test_mask_off_writes_no_mask_layer_and_is_a_different_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(masks, "cloud_shadow", _bright_blue_is_cloud)
    model = threshold_bundle(tmp_path, S2)
    on = build_scan(config(tmp_path, model))
    off = build_scan({**config(tmp_path, model), "mask": {"mode": "off"}})
    from geofg.scan.run import make_plan

    (tmp_path / "inbox").mkdir()
    assert make_plan(on).mask is not None and make_plan(off).mask is None
    assert make_plan(on).config_hash != make_plan(off).config_hash
    assert "mask" not in make_plan(off).spec.layers and "mask" in make_plan(on).spec.layers


def _relative(refl: np.ndarray, level: str, threads: int = 0) -> np.ndarray:
    """A detector that looks at context, as the real one does: cloud where blue is above the mean
    blue of the array it is given (its answer for a pixel depends on what it is given around it)."""
    return (refl[0] > refl[0].mean() + 0.01).astype(np.uint8)


def test_the_scan_mask_of_a_pixel_does_not_depend_on_the_grid_chunk(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The scan masks as classify does (issue 15): the detector's tiles sit on the grid's 30 m
    blocks and each unit warps the window its tiles need, so grid chunks 16 and 48 give the same
    mask slice. With each unit masked from its own window (before), the two differed."""
    monkeypatch.setattr(masks, "cloud_shadow", _relative)
    monkeypatch.setattr(masks, "TILE", 8)
    monkeypatch.setattr(masks, "MARGIN", 2)
    h, w = 48, 96
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(5)
    px = np.array([500, 3500, 400, 700, 2000, 1000], np.uint16)
    data = np.broadcast_to(px[:, None, None], (6, h, w)).copy()
    data[2] = (300 + 40 * xx + 20 * yy + 300 * rng.random((h, w))).astype(np.uint16)  # blue: a ramp, noise
    got = []
    for chunk in (16, 48):
        root = tmp_path / f"c{chunk}"
        (root / "inbox").mkdir(parents=True)
        write_raster(root / "inbox" / "S_20200715.tif", data, nodata=0, descriptions=S2,
                     transform=from_origin(*ORIGIN, 10.0, 10.0))  # fmt: skip
        cfg = build_scan(config(root, threshold_bundle(root, S2), height=h, width=w, chunk=chunk))
        assert run_scan(cfg, predictor_factory=predictor).count("processed") == 1
        got.append(zarr.open_group(str(root / "m.zarr"), mode="r")["mask"][0])
    assert 0.2 < (got[0] == CLOUD).mean() < 0.8  # the stand-in flags part of the scene
    assert np.array_equal(got[0], got[1]), int((got[0] != got[1]).sum())
    assert len(masks.tile_spans(w // 3)) > 2  # several detector tiles across

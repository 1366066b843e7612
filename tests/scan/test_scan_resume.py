"""Failures and interruptions: failed units are retried by the next scan, an interrupted scan
resumes where it stopped, a new model reprocesses every date; dates from metadata; alpha masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from scanhelp import BANDS, ORIGIN, Dies, config, expected_class, predictor, threshold_bundle

from geofg.io.ledger import Ledger
from geofg.scan.config import build_scan
from geofg.scan.run import ScanFailuresError, run_scan
from rasters import write_raster


def _data(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 3000, (2, h, w)).astype("uint16")


def _scene(inbox: Path, name: str, data: np.ndarray, **kw) -> Path:  # noqa: ANN003
    inbox.mkdir(exist_ok=True)
    kw.setdefault("transform", from_origin(*ORIGIN, 10.0, 10.0))
    kw.setdefault("nodata", 0)
    return write_raster(inbox / name, data, descriptions=BANDS, **kw)


def test_corrupt_block_fails_its_units_the_next_scan_retries_only_those(tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    cfg = build_scan(config(tmp_path, model))
    data = _data(7)
    p = _scene(tmp_path / "inbox", "S_20200601.tif", data, block=16)
    with rasterio.open(p) as src:  # zero one compressed block (x=1, y=2) of band 1
        off = int(src.get_tag_item("BLOCK_OFFSET_1_2", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_2", "TIFF", bidx=1))
    raw = bytearray(p.read_bytes())
    raw[off : off + size] = bytes(size)
    p.write_bytes(bytes(raw))
    with pytest.raises(ScanFailuresError) as ei:
        run_scan(cfg, predictor_factory=predictor)
    failed = set(ei.value.result.units_failed)
    assert ei.value.exit_code == 4 and 0 < len(failed) < 12
    with pytest.raises(ScanFailuresError) as ei:  # same file: only the failed units are tried again
        run_scan(cfg, predictor_factory=predictor)
    assert ei.value.result.units_ran == len(failed) and set(ei.value.result.units_failed) == failed
    _scene(tmp_path / "inbox", "S_20200601.tif", data)  # the delivery is repaired
    r = run_scan(cfg, predictor_factory=predictor)
    assert not r.units_failed
    recs = Ledger(tmp_path / "m.zarr" / ".geofg").load()
    assert {x.status for x in recs.values()} == {"done"} and len(recs) == 12
    cls = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["class"][0]
    np.testing.assert_array_equal(cls, expected_class(data, np.ones(data.shape[1:], bool)))


def test_an_interrupted_scan_resumes_with_the_units_it_had_not_finished(tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    cfg = build_scan(config(tmp_path, model))
    data = _data(8)
    _scene(tmp_path / "inbox", "S_20200601.tif", data)
    with pytest.raises(KeyboardInterrupt):
        run_scan(cfg, predictor_factory=lambda p: Dies(p.card, 5))
    assert not (tmp_path / "m.zarr" / ".geofg" / "lock").exists()  # released on the way out
    assert len(Ledger(tmp_path / "m.zarr" / ".geofg").load()) == 4
    r = run_scan(cfg, predictor_factory=predictor)
    assert (r.units_ran, r.units_skipped, r.count("processed")) == (8, 4, 1)
    cls = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["class"][0]
    np.testing.assert_array_equal(cls, expected_class(data, np.ones(data.shape[1:], bool)))


def test_a_new_model_reprocesses_every_date(tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    _scene(tmp_path / "inbox", "S_20200601.tif", _data(1))
    _scene(tmp_path / "inbox", "S_20200701.tif", _data(2))
    assert run_scan(build_scan(config(tmp_path, model)), predictor_factory=predictor).units_ran == 24
    from geofg.models.inference.bundle import read_card, write_bundle

    other = tmp_path / "threshold-v2.safetensors"  # same card, other weights: another sha256
    write_bundle(other, {"unused": np.ones(1, np.float32)}, read_card(model))
    r = run_scan(build_scan(config(tmp_path, other)), predictor_factory=predictor)
    assert r.units_ran == 24 and sorted(r.dates_touched) == ["2020-06-01", "2020-07-01"]


def test_dates_from_metadata_tags(tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    p = _scene(tmp_path / "inbox", "scene-a.tif", _data(1))
    with rasterio.open(p, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2021:05:03 10:11:12")
    _scene(tmp_path / "inbox", "scene-b.tif", _data(2))  # no date tag: failed, the other goes on
    cfg = build_scan(config(tmp_path, model, date={"source": "metadata"}))
    with pytest.raises(ScanFailuresError) as ei:
        run_scan(cfg, predictor_factory=predictor)
    out = {s.name: s for s in ei.value.result.scenes}
    assert out["scene-a.tif"].status == "processed" and out["scene-a.tif"].date == "2021-05-03"
    assert out["scene-b.tif"].status == "failed" and "TIFFTAG_DATETIME" in out["scene-b.tif"].reason


def test_a_scene_without_nodata_in_another_crs_is_valid_only_inside_its_outline(tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    grid_t = from_origin(*ORIGIN, 10.0, 10.0)
    d = np.full((2, 48, 64), 2500, "uint16")
    src_crs, dst_crs = rasterio.crs.CRS.from_epsg(32633), rasterio.crs.CRS.from_epsg(32634)
    left, top = ORIGIN
    # only the western half of the grid, reprojected, with no nodata declared (alpha path)
    t, w, h = calculate_default_transform(src_crs, dst_crs, 32, 48, left, top - 480, left + 320, top, resolution=10.0)
    other = np.zeros((2, h, w), "uint16")
    reproject(d[:, :, :32], other, src_transform=grid_t, src_crs=src_crs, dst_transform=t, dst_crs=dst_crs,
              resampling=Resampling.nearest, dst_nodata=0)
    other[other == 0] = 2500  # no nodata anywhere: the outline, not a value, must bound it
    _scene(tmp_path / "inbox", "W_20200601.tif", other, crs="EPSG:32634", transform=t, nodata=None)
    r = run_scan(build_scan(config(tmp_path, model)), predictor_factory=predictor)
    assert not r.units_failed
    cls = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["class"][0]
    assert (cls[:, 40:] == 255).all()  # east of the scene's outline: no data, not zeros classified
    assert (cls[:, :28] == 1).mean() > 0.8  # inside: the scene's values


_CHILD = """
import sys, time
sys.path[:0] = [{tests!r}, {scan_tests!r}]
from geofg.models.inference.tiny import ThresholdPredictor
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan
import scanhelp

class Slow(ThresholdPredictor):
    def predict(self, x):
        time.sleep(0.15)
        return super().predict(x)

cfg = build_scan(scanhelp.config(__import__("pathlib").Path({tmp!r}), __import__("pathlib").Path({model!r})))
run_scan(cfg, predictor_factory=lambda p: Slow(p.card))
"""


def test_sigkill_mid_scan_then_the_next_scan_takes_the_lock_over_and_finishes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    model = threshold_bundle(tmp_path)
    data = _data(9)
    _scene(tmp_path / "inbox", "S_20200601.tif", data)
    here = Path(__file__).resolve().parent
    code = _CHILD.format(tests=str(here.parent), scan_tests=str(here), tmp=str(tmp_path), model=str(model))
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    units = tmp_path / "m.zarr" / ".geofg" / "units"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(units.glob("*.json")) if units.is_dir() else []) < 3:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done = len(list(units.glob("*.json")))
    assert 3 <= done < 12 and (tmp_path / "m.zarr" / ".geofg" / "lock").exists()  # killed mid-run
    with pytest.warns(UserWarning, match="(?i)stale|dead|took over|taken over"):
        r = run_scan(build_scan(config(tmp_path, model)), predictor_factory=predictor)
    assert r.units_ran == 12 - done and r.units_skipped == done and not r.units_failed
    cls = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["class"][0]
    np.testing.assert_array_equal(cls, expected_class(data, np.ones(data.shape[1:], bool)))


def test_a_unit_whose_chunk_write_fails_is_recorded_failed_and_the_rest_complete(
    tmp_path: Path, monkeypatch
) -> None:
    import threading

    import geofg.scan.units as scan_units

    model = threshold_bundle(tmp_path)
    cfg = build_scan(config(tmp_path, model))
    data = _data(9)
    _scene(tmp_path / "inbox", "S_20200601.tif", data)
    real, threads, broken = scan_units.finish_unit, set(), []

    def finish(tm, t, dates, unit, *a):  # noqa: ANN001, ANN002, ANN202
        threads.add(threading.current_thread().name)
        if unit.row == 1 and unit.col == 2:
            broken.append(unit)
            raise OSError("No space left on device")
        return real(tm, t, dates, unit, *a)

    monkeypatch.setattr(scan_units, "finish_unit", finish)
    with pytest.raises(ScanFailuresError) as ei:
        run_scan(cfg, predictor_factory=predictor)
    res = ei.value.result
    assert len(broken) == 1 and len(res.units_failed) == 1
    assert "OSError: No space left on device" in next(iter(res.units_failed.values()))
    assert res.units_ran == 12 and threads and all(n.startswith("geofg-write") for n in threads)
    recs = Ledger(tmp_path / "m.zarr" / ".geofg").load()
    assert sorted(r.status for r in recs.values()) == ["done"] * 11 + ["failed"]
    monkeypatch.setattr(scan_units, "finish_unit", real)
    r = run_scan(cfg, predictor_factory=predictor)  # the next scan retries only that unit
    assert r.units_ran == 1 and not r.units_failed
    cls = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["class"][0]
    np.testing.assert_array_equal(cls, expected_class(data, np.ones(data.shape[1:], bool)))

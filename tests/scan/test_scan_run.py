"""run_scan end to end on generated scenes: time slices, latest view, only-new, report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
import zarr
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scanhelp import BANDS, ORIGIN, config, expected_class, predictor, threshold_bundle, tree_digest

from geofg.errors import MosaicLockedError
from geofg.io.lock import RunLock
from geofg.scan.config import build_scan
from geofg.scan.run import ScanFailuresError, run_scan
from rasters import write_raster


def _scene(inbox: Path, name: str, data: np.ndarray, **kw) -> Path:  # noqa: ANN003
    inbox.mkdir(exist_ok=True)
    kw.setdefault("transform", from_origin(*ORIGIN, 10.0, 10.0))
    return write_raster(inbox / name, data, nodata=0, descriptions=BANDS, **kw)


def _data(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 3000, (2, h, w)).astype("uint16")


@pytest.fixture
def setup(tmp_path: Path):  # noqa: ANN201
    model = threshold_bundle(tmp_path)
    cfg = build_scan(config(tmp_path, model))
    return tmp_path, cfg


def test_two_nights_give_two_slices_latest_view_report_and_nothing_new_is_byte_identical(setup) -> None:  # noqa: ANN001
    tmp, cfg = setup
    inbox = tmp / "inbox"
    a = _data(1)
    a[:, :20, :] = 0  # the first date sees only the bottom rows
    _scene(inbox, "S_20200601.tif", a)
    r1 = run_scan(cfg, predictor_factory=predictor)
    assert (r1.count("processed"), r1.units_ran) == (1, 12)

    b = _data(2)
    b[:, 30:, :] = 0  # the second date sees only the top rows
    _scene(inbox, "S_20200715.tif", b)
    r2 = run_scan(cfg, predictor_factory=predictor)
    assert (r2.count("processed"), r2.count("skipped"), r2.dates_touched) == (1, 1, ["2020-07-15"])
    # the footprint is the raster's extent: all 12 units run, the 4 of chunk row 2 (rows 32..47,
    # all nodata on this date) are empty and keep the first date's pixels in the latest view
    assert (r2.units_ran, r2.units_empty) == (12, 4)

    ds = xr.open_zarr(tmp / "m.zarr", decode_coords="all", mask_and_scale=False)
    assert ds.rio.crs == CRS.from_epsg(32633)
    assert [str(t)[:10] for t in ds.time.values] == ["2020-06-01", "2020-07-15"]
    ca, cb = expected_class(a, (a != 0).all(0)), expected_class(b, (b != 0).all(0))
    np.testing.assert_array_equal(ds["class"].values[0], ca)
    np.testing.assert_array_equal(ds["class"].values[1], cb)
    latest = np.where(cb != 255, cb, ca)  # newest valid pixel wins
    np.testing.assert_array_equal(ds["latest_class"].values, latest)
    when = ds["latest_time"].values
    assert (when[:30] == when[0, 0]).all() and str(when[0, 0])[:10] == "2020-07-15"
    assert str(when[40, 5])[:10] == "2020-06-01"

    # the report: JSON and Markdown, areas per class per date, change against the previous date
    rep = json.loads(Path(r2.report_paths[0]).read_text())
    assert rep["scenes"]["processed"] == 1 and rep["units"]["ran"] == 12
    d1, d2 = rep["areas"]["dates"]
    px_km2 = 100 / 1e6
    assert d1["classes"]["crop"] == pytest.approx((ca == 1).sum() * px_km2)
    assert d2["change"]["classes"]["crop"] == pytest.approx(((cb == 1).sum() - (ca == 1).sum()) * px_km2)
    md = Path(r2.report_paths[1]).read_text()
    assert "change since 2020-06-01" in md and "S_20200715.tif | processed" in md

    # a scan with nothing new exits cleanly and leaves the mosaic byte-for-byte as it was
    before = tree_digest(tmp / "m.zarr")
    r3 = run_scan(cfg, predictor_factory=predictor)
    assert (r3.units_ran, r3.count("processed"), r3.wrote) == (0, 0, False)
    assert tree_digest(tmp / "m.zarr") == before


def test_same_mtime_new_content_reprocesses_only_that_dates_units_touch_and_delete_do_not(setup) -> None:  # noqa: ANN001
    tmp, cfg = setup
    inbox = tmp / "inbox"
    _scene(inbox, "S_20200601.tif", _data(1))
    p2 = _scene(inbox, "S_20200715.tif", _data(2))
    r1 = run_scan(cfg, predictor_factory=predictor)
    assert r1.units_ran == 24

    st = p2.stat()
    new = _data(3)
    _scene(inbox, "S_20200715.tif", new)
    os.utime(p2, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, new bytes (cp -p / rsync -t)
    r2 = run_scan(cfg, predictor_factory=predictor)
    assert r2.dates_touched == ["2020-07-15"] and r2.units_ran == 12
    assert [s.reason for s in r2.scenes if s.name == "S_20200715.tif"] == ["changed"]
    g = zarr.open_group(str(tmp / "m.zarr"), mode="r")
    np.testing.assert_array_equal(g["class"][1], expected_class(new, np.ones(new.shape[1:], bool)))

    os.utime(inbox / "S_20200601.tif")  # touch: new mtime, same content
    (inbox / "S_20200715.tif").unlink()
    r3 = run_scan(cfg, predictor_factory=predictor)
    assert r3.units_ran == 0
    outcome = {s.name: (s.status, s.reason) for s in r3.scenes}
    assert outcome["S_20200601.tif"][0] == "skipped" and "touched" in outcome["S_20200601.tif"][1]
    assert outcome["S_20200715.tif"][0] == "deleted"
    r4 = run_scan(cfg, predictor_factory=predictor)  # a deletion is reported once
    assert [s.status for s in r4.scenes] == ["skipped"]


def test_quiet_period_and_done_sentinel_defer_a_file_until_it_has_arrived(tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    inbox = tmp_path / "inbox"
    p = _scene(inbox, "S_20200601.tif", _data(1))
    cfg = build_scan({**config(tmp_path, model), "inbox": {"folder": str(inbox), "quiet_period_s": 600}})
    r = run_scan(cfg, predictor_factory=predictor)
    assert [s.status for s in r.scenes] == ["deferred"] and "quiet period" in r.scenes[0].reason
    assert r.units_ran == 0
    r = run_scan(cfg, predictor_factory=predictor, now=p.stat().st_mtime + 601)
    assert [s.status for s in r.scenes] == ["processed"] and r.units_ran == 12

    cfg2 = build_scan({**config(tmp_path, model), "mosaic": str(tmp_path / "m2.zarr"),
                       "inbox": {"folder": str(inbox), "quiet_period_s": 0, "require_done": True}})
    r = run_scan(cfg2, predictor_factory=predictor)
    assert [s.status for s in r.scenes] == ["deferred"] and ".done" in r.scenes[0].reason
    (inbox / "S_20200601.tif.done").touch()
    r = run_scan(cfg2, predictor_factory=predictor)
    assert [s.status for s in r.scenes] == ["processed"]


def test_outside_the_extent_is_reported_and_skipped_and_a_corrupt_scene_fails_alone(setup) -> None:  # noqa: ANN001
    tmp, cfg = setup
    inbox = tmp / "inbox"
    _scene(inbox, "far_20200601.tif", _data(1), transform=from_origin(600000.0, 5800000.0, 10.0, 10.0))
    _scene(inbox, "S_20200602.tif", _data(2))
    (inbox / "bad_20200603.tif").write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(ScanFailuresError) as ei:
        run_scan(cfg, predictor_factory=predictor)
    assert ei.value.exit_code == 4 and "bad_20200603.tif" in str(ei.value)
    r = ei.value.result
    outcome = {s.name: (s.status, s.reason) for s in r.scenes}
    assert outcome["far_20200601.tif"] == ("skipped", "outside the grid extent")
    assert outcome["S_20200602.tif"][0] == "processed" and outcome["bad_20200603.tif"][0] == "failed"
    assert r.units_ran == 12
    r2 = run_scan(cfg, predictor_factory=predictor)  # unchanged failures are reported, not re-failed
    assert {s.name: s.status for s in r2.scenes}["bad_20200603.tif"] == "failed" and r2.units_ran == 0


def test_a_second_scan_on_a_locked_mosaic_exits_6(setup) -> None:  # noqa: ANN001
    tmp, cfg = setup
    _scene(tmp / "inbox", "S_20200601.tif", _data(1))
    run_scan(cfg, predictor_factory=predictor)
    with RunLock(tmp / "m.zarr" / ".geofg" / "lock", "night-1"):
        with pytest.raises(MosaicLockedError) as ei:
            run_scan(cfg, predictor_factory=predictor)
    assert ei.value.exit_code == 6 and "night-1" in str(ei.value)

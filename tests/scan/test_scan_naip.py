"""The nightly scenario on real imagery: three NAIP dates arrive on three nights.

NAIP (../shared/data/naip_nd_opengeos): 4 bands R,G,B,NIR, uint8, 5 m, EPSG:26914, three dates
of the same North Dakota cropland; the three files sit on slightly different origins (485900.6,
485902.0, 485899.0), so each one is warped onto the fixed grid.

There is no trained 4-band (R,G,B,NIR) model in geofg yet. This scenario runs with
``NdviRulePredictor``, a **rule model** (vegetation where NDVI > 0.2, a logistic of the margin as
confidence), in a bundle named ``naip-ndvi-rule``; it tests the scan machinery, not a classifier.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from scanhelp import tree_digest

from geofg.models.bundle import write_bundle
from geofg.models.tiny import tiny_card
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan

pytestmark = pytest.mark.realdata

DATES = ("20160816", "20180716", "20200831")
NAMES = [f"m_4709963_se_14_1_{d}.tif" for d in DATES]


class NdviRulePredictor:
    """A rule, not a learned model: P(vegetation) = logistic(20 * (NDVI - 0.2)) from R and NIR."""

    def __init__(self, card) -> None:  # noqa: ANN001
        self.card = card

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, 4, H, W) R,G,B,NIR scaled to 0..1 -> (N, 2, H, W)."""
        r, nir = x[:, 0], x[:, 3]
        ndvi = np.where(nir + r > 0, (nir - r) / np.maximum(nir + r, 1e-6), 0.0)
        p = 1.0 / (1.0 + np.exp(-20.0 * (ndvi - 0.2)))
        return np.stack([1 - p, p], axis=1).astype(np.float32)


def _night(inbox: Path, src: Path) -> Path:
    """Deliver a scene: copy it in, then let it sit past the quiet period (mtime an hour ago)."""
    dst = inbox / src.name
    shutil.copyfile(src, dst)
    t = time.time() - 3600
    os.utime(dst, (t, t))
    return dst


def test_three_nights_of_naip_then_nothing_new_then_one_replaced_file(tmp_path: Path, data_root: Path) -> None:
    naip = data_root / "naip_nd_opengeos"
    if not all((naip / n).is_file() for n in NAMES):
        pytest.skip(f"NAIP scenes not found in {naip}")
    card = tiny_card(["R", "G", "B", "NIR"], ["other", "vegetation"], crop_classes=["vegetation"],
                     tile_size=64, halo=8, scale=1 / 255)
    card = card.model_copy(update={"name": "naip-ndvi-rule", "architecture": "rule",
                                   "encoder": "ndvi-threshold-0.2"})
    bundle = tmp_path / "naip-ndvi-rule.safetensors"
    write_bundle(bundle, {"unused": np.zeros(1, np.float32)}, card)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = build_scan({
        "inbox": {"folder": str(inbox), "glob": "m_*.tif", "bands": ["R", "G", "B", "NIR"],
                  "quiet_period_s": 600, "date": {"pattern": r"_(?P<date>\d{8})\.tif$"}},
        "mosaic": str(tmp_path / "nd.zarr"),
        "grid": {"crs": "EPSG:26914", "resolution": 5, "origin": [0, 0], "chunk": 256,
                 "extent": [485900, 5205630, 490570, 5209245]},
        "model": {"model": str(bundle), "device": "cpu"},
        "tile": {"tile_size": 272},
    })
    assert (cfg.grid.width, cfg.grid.height) == (934, 723)

    def scan():  # noqa: ANN202
        return run_scan(cfg, predictor_factory=NdviRulePredictor)

    results = []
    for name in NAMES:  # three nights, one new date each
        _night(inbox, naip / name)
        results.append(scan())
    for night, r in enumerate(results):
        assert r.count("processed") == 1 and r.count("skipped") == night and not r.units_failed
        assert r.units_ran == 12  # 4 x 3 chunks of 256 px
    g = zarr.open_group(str(tmp_path / "nd.zarr"), mode="r")
    assert g["class"].shape == (3, 723, 934)
    days = [int(v) for v in g["time"][:]]
    cls = g["class"][:]
    for t in range(3):  # each date covers the grid but for the warped scene's edge
        assert (cls[t] != 255).mean() > 0.99
    # the latest view takes the 2020 slice wherever it is valid
    latest = g["latest_class"][:]
    np.testing.assert_array_equal(latest[cls[2] != 255], cls[2][cls[2] != 255])

    # the report after the third night: areas per date from the ledger match the slices, and
    # the change against 2018 is the difference of the two dates' areas
    rep = json.loads(Path(results[2].report_paths[0]).read_text())
    rows = {row["date"]: row for row in rep["areas"]["dates"]}
    assert list(rows) == ["2016-08-16", "2018-07-16", "2020-08-31"]
    km2 = 25 / 1e6
    for t, d in enumerate(sorted(days)):
        row = rows[list(rows)[t]]
        assert row["classes"]["vegetation"] == pytest.approx((cls[days.index(d)] == 1).sum() * km2)
    ch = rows["2020-08-31"]["change"]
    assert ch["from"] == "2018-07-16"
    assert ch["classes"]["vegetation"] == pytest.approx(
        rows["2020-08-31"]["classes"]["vegetation"] - rows["2018-07-16"]["classes"]["vegetation"], abs=1e-6)
    assert sum(rows["2020-08-31"]["health"].values()) == pytest.approx(rows["2020-08-31"]["classes"]["vegetation"])
    md = Path(results[2].report_paths[1]).read_text()
    assert "change since 2018-07-16" in md

    # a fourth night with nothing new does nothing
    before = tree_digest(tmp_path / "nd.zarr")
    r4 = scan()
    assert (r4.units_ran, r4.count("processed"), r4.count("skipped"), r4.wrote) == (0, 0, 3, False)
    assert tree_digest(tmp_path / "nd.zarr") == before

    # replace the 2018 file's content, keeping its mtime: only the 2018 units run again
    p18 = inbox / NAMES[1]
    st = p18.stat()
    with rasterio.open(p18) as src:
        profile, data = src.profile, src.read()
    data[3, :360] = data[0, :360]  # NIR := red over the northern half: no vegetation there
    tmp = tmp_path / "replacement.tif"
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
    shutil.copyfile(tmp, p18)
    os.utime(p18, ns=(st.st_atime_ns, st.st_mtime_ns))
    r5 = scan()
    assert r5.dates_touched == ["2018-07-16"] and r5.units_ran == 12 and r5.count("processed") == 1
    after = tree_digest(tmp_path / "nd.zarr")
    t18 = days.index(sorted(days)[1])
    for t in range(3):
        prefix = f"class/c/{t}/"
        same = {k: v for k, v in after.items() if k.startswith(prefix)} == {
            k: v for k, v in before.items() if k.startswith(prefix)}
        assert same == (t != t18), t  # other dates' slices are byte-for-byte unchanged
    new18 = zarr.open_group(str(tmp_path / "nd.zarr"), mode="r")["class"][t18]
    assert (new18[:340] == 1).mean() < 0.01 < (cls[t18][:340] == 1).mean()

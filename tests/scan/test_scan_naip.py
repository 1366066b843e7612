"""The nightly scenario on real imagery: three NAIP dates arrive on three nights.

NAIP (../shared/data/naip_nd_opengeos): 4 bands R,G,B,NIR, uint8, 5 m, EPSG:26914, three dates
of the same North Dakota cropland; the three files sit on slightly different origins (485900.6,
485902.0, 485899.0), so each one is warped onto the fixed grid.

The model is the shipped ``naip-4band`` bundle (scripts/train_naip4.py, docs/models.md): ten
EuroSAT land-cover classes learned from EuroSAT chips rendered as NAIP DN, at 10 m. The grid is
therefore 10 m with ``average`` resampling (each grid pixel the mean of 2 x 2 NAIP pixels). The
scans run the real predictor (``load_predictor``), no stand-in.
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

from geofg.models.inference.registry import BUNDLE_DIR
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan

pytestmark = pytest.mark.realdata

DATES = ("20160816", "20180716", "20200831")
NAMES = [f"m_4709963_se_14_1_{d}.tif" for d in DATES]
BUNDLE = BUNDLE_DIR / "naip-4band.safetensors"


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
    if not BUNDLE.is_file():
        pytest.skip(f"{BUNDLE} not shipped")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = build_scan({
        "inbox": {"folder": str(inbox), "glob": "m_*.tif", "bands": ["R", "G", "B", "NIR"],
                  "quiet_period_s": 600, "date": {"pattern": r"_(?P<date>\d{8})\.tif$"}},
        "mosaic": str(tmp_path / "nd.zarr"),
        "grid": {"crs": "EPSG:26914", "resolution": 10, "origin": [0, 0], "chunk": 128,
                 "extent": [485900, 5205630, 490570, 5209240], "resampling": "average"},
        "model": {"model": "naip-4band", "device": "cpu"},
    })
    assert (cfg.grid.width, cfg.grid.height) == (467, 361)

    results = []
    for name in NAMES:  # three nights, one new date each
        _night(inbox, naip / name)
        results.append(run_scan(cfg))
    for night, r in enumerate(results):
        assert r.count("processed") == 1 and r.count("skipped") == night and not r.units_failed
        assert r.units_ran == 12  # 4 x 3 chunks of 128 px
    g = zarr.open_group(str(tmp_path / "nd.zarr"), mode="r")
    assert g["class"].shape == (3, 361, 467)
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
    classes = rep["areas"]["class_names"]
    assert len(classes) == 10
    rows = {row["date"]: row for row in rep["areas"]["dates"]}
    assert list(rows) == ["2016-08-16", "2018-07-16", "2020-08-31"]
    km2 = 100 / 1e6
    for t, d in enumerate(sorted(days)):
        row = rows[list(rows)[t]]
        for k, c in enumerate(classes):
            assert row["classes"][c] == pytest.approx((cls[days.index(d)] == k).sum() * km2), c
    ch = rows["2020-08-31"]["change"]
    assert ch["from"] == "2018-07-16"
    for c in classes:
        assert ch["classes"][c] == pytest.approx(rows["2020-08-31"]["classes"][c] - rows["2018-07-16"]["classes"][c],
                                                 abs=1e-6)
    crop = ("AnnualCrop", "PermanentCrop", "Pasture", "HerbaceousVegetation")  # the card's crop classes
    for row in rows.values():  # health (index-based) exists exactly on crop-class pixels
        assert sum(row["health"].values()) == pytest.approx(sum(row["classes"][c] for c in crop))
    md = Path(results[2].report_paths[1]).read_text()
    assert "change since 2018-07-16" in md

    # the index layer: NDVI wherever a class is (any class), the latest view from the same date
    ndvi = g["ndvi"][:]
    assert ((ndvi != 255) == (cls != 255)).mean() > 0.999  # 255 also where red + NIR = 0
    np.testing.assert_array_equal(g["latest_ndvi"][:][cls[2] != 255], ndvi[2][cls[2] != 255])
    water = np.isin(cls, [classes.index("River"), classes.index("SeaLake")])
    crop = np.isin(cls, [classes.index(c) for c in ("AnnualCrop", "Pasture")])
    assert np.median(ndvi[water & (ndvi != 255)]) < np.median(ndvi[crop & (ndvi != 255)])
    _naip_alerts(tmp_path, tmp_path / "nd.zarr")

    # a fourth night with nothing new does nothing
    before = tree_digest(tmp_path / "nd.zarr")
    r4 = run_scan(cfg)
    assert (r4.units_ran, r4.count("processed"), r4.count("skipped"), r4.wrote) == (0, 0, 3, False)
    assert tree_digest(tmp_path / "nd.zarr") == before

    # replace the 2018 file's content, keeping its mtime: only the 2018 units run again
    p18 = inbox / NAMES[1]
    st = p18.stat()
    with rasterio.open(p18) as src:
        profile, data = src.profile, src.read()
    data[3, :360] = data[0, :360]  # NIR := red over the northern half: no vegetation signal there
    tmp = tmp_path / "replacement.tif"
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
    shutil.copyfile(tmp, p18)
    os.utime(p18, ns=(st.st_atime_ns, st.st_mtime_ns))
    r5 = run_scan(cfg)
    assert r5.dates_touched == ["2018-07-16"] and r5.units_ran == 12 and r5.count("processed") == 1
    after = tree_digest(tmp_path / "nd.zarr")
    t18 = days.index(sorted(days)[1])
    for t in range(3):
        prefix = f"class/{t}/"
        same = {k: v for k, v in after.items() if k.startswith(prefix)} == {
            k: v for k, v in before.items() if k.startswith(prefix)}
        assert same == (t != t18), t  # other dates' slices are byte-for-byte unchanged
    g = zarr.open_group(str(tmp_path / "nd.zarr"), mode="r")
    north = slice(0, 170)  # 5 m rows 0..359 are 10 m rows 0..179 (the scene starts 8 m lower)
    new18 = g["class"][t18]
    assert (new18[north] != cls[t18][north]).mean() > 0.1  # the edit changed the classes there
    # units whose read window (core + 64 px halo) misses the edit: recomputed, the same pixels
    np.testing.assert_array_equal(new18[256:], cls[t18][256:])
    # the index-based health on crop classes: NDVI = 0 where NIR = red, i.e. bare/stressed (0)
    h18 = g["health"][t18][north]
    assert (h18 != 255).any() and set(np.unique(h18[h18 != 255]).tolist()) == {0}
    n18 = g["ndvi"][t18][north]  # and the index is NDVI 0 (code 100) on every class there
    assert (n18 != 255).mean() > 0.99 and set(np.unique(n18[n18 != 255]).tolist()) == {100}


def _naip_alerts(tmp: Path, mosaic: Path) -> None:
    """geofg alerts on the three dates (docs/products.md): 88 quarter-quarter squares of 402 m."""
    import geopandas as gpd
    import pandas as pd
    import shapely
    from typer.testing import CliRunner

    from geofg.cli import app

    side, x0, y0 = 402.336, 485900.0, 5209240.0
    fields = tmp / "fields.gpkg"
    gpd.GeoDataFrame({"id": [f"Q{r:02d}{c:02d}" for r in range(8) for c in range(11)]},
                     geometry=[shapely.box(x0 + c * side, y0 - (r + 1) * side, x0 + (c + 1) * side, y0 - r * side)
                               for r in range(8) for c in range(11)], crs="EPSG:26914").to_file(fields)  # fmt: skip
    out, series = tmp / "alerts.csv", tmp / "series.parquet"
    r = CliRunner().invoke(app, ["alerts", str(mosaic), "--fields", str(fields), "-o", str(out), "--series",
                                 str(series), "--min-history", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    s = gpd.read_parquet(series)
    assert len(s) == 88 * 3 and s["ndvi_median"].notna().all() and s["ndvi_median"].between(-1, 1).all()
    a = pd.read_csv(out)
    assert len(a) >= 1 and (a["date"] == "2020-08-31").all() and (a["drop"] >= 0.1).all()
    for _, row in a.iterrows():  # the baseline: the median of the two earlier dates, never 2020 itself
        earlier = s.query("field_id == @row.field_id and date < '2020-08-31'")["ndvi_median"]
        assert row["baseline"] == pytest.approx(np.median(earlier), abs=1e-4)
        assert row["drop"] == pytest.approx(row["baseline"] - row["ndvi_median"], abs=1e-4)

"""`geofg alerts`: per-field time series of a scan and drops against the recent baseline (issue 18, item 5)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
import zarr
from rasterio.transform import from_origin
from scanhelp import BANDS, ORIGIN, config, predictor, threshold_bundle, scan_without_index
from typer.testing import CliRunner

from geofg.cli import app
from geofg.errors import ConfigError
from geofg.products.alerts import AlertRules, field_alerts
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan
from rasters import write_raster

runner = CliRunner()
X0, Y0 = ORIGIN


def _series(field: str, medians: list[float | None], clear: list[float] | None = None,
            assessed: float = 1.0, inside_ha: float = 10.0) -> list[dict]:  # fmt: skip
    clear = clear or [1.0] * len(medians)
    return [{"field_id": field, "date": f"2020-0{i + 1}-01", "clear_share": c, "inside_ha": inside_ha,
             "health_assessed_share": assessed, "ndvi_median": m} for i, (m, c) in enumerate(zip(medians, clear, strict=True))]  # fmt: skip


def _table(*series: list[dict]) -> gpd.GeoDataFrame:
    rows = [r for s in series for r in s]
    return gpd.GeoDataFrame(rows, geometry=[shapely.box(0, 0, 1, 1)] * len(rows), crs="EPSG:32633")


def test_a_drop_against_the_median_of_enough_clear_earlier_dates_alerts() -> None:
    t = _table(_series("drop", [0.72, 0.7, 0.74, 0.5]),
               _series("cloudy", [0.7, 0.7, 0.7, 0.1, 0.7], clear=[1, 1, 1, 0.5, 1]),  # the cloudy low is no observation
               _series("short", [0.7, 0.7, 0.3]),  # two earlier dates: no baseline under min_history 3
               _series("tiny", [0.7, 0.7, 0.7, 0.1], assessed=0.05),  # 0.5 ha assessed: too little to count
               _series("gap", [0.7, None, 0.7, 0.7, 0.6]),  # a date without pixels is skipped; 0.1 is enough
               _series("noise", [0.7, 0.66, 0.74, 0.63]))  # 0.07 below the baseline: within the jitter  # fmt: skip
    a = field_alerts(t, AlertRules())
    assert a[["field_id", "date"]].values.tolist() == [["drop", "2020-04-01"], ["gap", "2020-05-01"]]
    first = a.iloc[0]
    assert (first["ndvi_median"], first["baseline"], first["drop"], first["n_baseline"]) == (0.5, 0.72, 0.22, 3)
    assert field_alerts(t, AlertRules(drop=0.15))["field_id"].tolist() == ["drop"]
    assert "noise" in field_alerts(t, AlertRules(drop=0.05))["field_id"].tolist()
    short = field_alerts(t, AlertRules(min_history=2, window=3))
    assert ["short", "2020-03-01"] in short[["field_id", "date"]].values.tolist()
    assert ["cloudy", "2020-04-01"] in field_alerts(t, AlertRules(min_clear=0.4))[["field_id", "date"]].values.tolist()


def test_the_baseline_is_the_median_not_the_mean_and_never_holds_the_date_itself() -> None:
    t = _table(_series("f", [0.8, 0.8, 0.2, 0.65]))  # median 0.8, mean 0.6 of the three before
    a = field_alerts(t, AlertRules())
    assert a["date"].tolist() == ["2020-04-01"] and (a["baseline"].iloc[0], a["drop"].iloc[0]) == (0.8, 0.15)
    low = _table(_series("g", [0.5, 0.5, 0.38]))  # with the date in its baseline: median(0.5, 0.38), 0.06
    assert field_alerts(low, AlertRules(window=2, min_history=2))["drop"].tolist() == [pytest.approx(0.12)]


def test_the_baseline_is_the_recent_window_and_cloudy_dates_count_when_allowed() -> None:
    t = _table(_series("f", [0.2, 0.2, 0.2, 0.8, 0.8, 0.6]))
    assert field_alerts(t, AlertRules(window=2, min_history=2))["date"].tolist() == ["2020-06-01"]  # median(.8, .8)
    assert field_alerts(t, AlertRules(window=5, min_history=3)).empty  # median(.2, .2, .2, .8, .8) = .2
    cloudy = _table(_series("c", [0.6, 0.6, 0.6, 0.2], clear=[1, 1, 1, 0.6]))
    assert field_alerts(cloudy, AlertRules()).empty
    assert field_alerts(cloudy, AlertRules(min_clear=0.5))["date"].tolist() == ["2020-04-01"]
    with pytest.raises(ConfigError):
        AlertRules(window=2, min_history=3)


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three dates over a 48 x 64 grid; the east half loses its vigour on the last date."""
    tmp = tmp_path_factory.mktemp("alerts")
    model = threshold_bundle(tmp)
    (tmp / "inbox").mkdir()
    for day, east_nir in (("20200501", 9000), ("20200601", 9000), ("20200701", 2500), ("20200801", 2500)):
        nir = np.full((48, 64), 9000)
        nir[:, 32:] = east_nir
        data = np.stack([np.full((48, 64), 1500), nir]).astype("uint16")  # NDVI 0.71 or 0.25
        write_raster(tmp / "inbox" / f"S_{day}.tif", data, nodata=0, descriptions=BANDS,
                     transform=from_origin(*ORIGIN, 10.0, 10.0))  # fmt: skip
    run_scan(build_scan(config(tmp, model)), predictor_factory=predictor)
    return tmp / "m.zarr"


def _box(c0: float, r0: float, c1: float, r1: float) -> shapely.Polygon:
    return shapely.box(X0 + 10 * c0, Y0 - 10 * r1, X0 + 10 * c1, Y0 - 10 * r0)


def test_alerts_on_a_scan_name_the_field_that_dropped_and_write_the_series(tmp_path: Path, scan: Path) -> None:
    f = tmp_path / "f.gpkg"
    gpd.GeoDataFrame({"id": ["west", "east"]}, geometry=[_box(2, 2, 30, 46), _box(34, 2, 62, 46)],
                     crs="EPSG:32633").to_file(f)  # fmt: skip
    out, series = tmp_path / "a.csv", tmp_path / "s.parquet"
    r = runner.invoke(app, ["alerts", str(scan), "--fields", str(f), "-o", str(out), "--series", str(series),
                            "--min-history", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    a = pd.read_csv(out)
    assert a[["field_id", "date"]].values.tolist() == [["east", "2020-07-01"], ["east", "2020-08-01"]]
    assert (a["ndvi_median"].iloc[0], a["baseline"].iloc[0]) == (0.25, 0.71)  # NDVI 0.71 -> 0.25
    s = gpd.read_parquet(series)
    assert len(s) == 8 and s.query("field_id == 'west'")["ndvi_median"].tolist() == [0.71] * 4
    g = zarr.open_group(str(scan), mode="r")
    days = [int(v) for v in g["time"][:]]
    july = days.index((np.datetime64("2020-07-01") - np.datetime64("1970-01-01")).astype(int))
    code = g["ndvi"][july, 2:46, 34:62]
    assert s.query("field_id == 'east' and date == '2020-07-01'")["ndvi_median"].iloc[0] == \
        pytest.approx(np.median(code[code != 255]) * 0.01 - 1)  # fmt: skip
    r = runner.invoke(app, ["alerts", str(scan), "--fields", str(f), "-o", str(tmp_path / "b.csv")])
    assert r.exit_code == 0, r.output  # min_history 3: 07-01 has two dates behind it, 08-01 three (3, 3, 1)
    assert pd.read_csv(tmp_path / "b.csv")[["field_id", "date"]].values.tolist() == [["east", "2020-08-01"]]


def test_bad_rules_and_outputs_are_one_line_exit_3(tmp_path: Path, scan: Path) -> None:
    f = tmp_path / "f.geojson"
    gpd.GeoDataFrame({"id": ["a"]}, geometry=[_box(2, 2, 30, 46)], crs="EPSG:32633").to_file(f)
    out = tmp_path / "a.csv"
    out.write_text("keep")
    for extra, needle in ((["--window", "2"], "min_history <= window"), ([], "the file exists"),
                          (["--overwrite", "--min-clear", "2"], "min_clear <= 1")):  # fmt: skip
        r = runner.invoke(app, ["alerts", str(scan), "--fields", str(f), "-o", str(out), *extra])
        assert r.exit_code == 3, r.output
        assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1 and needle in " ".join(r.output.split())
        assert out.read_text() == "keep"


def test_a_scan_without_an_index_layer_is_refused_in_one_line(tmp_path: Path) -> None:
    scan_without_index(tmp_path)  # tmp_path/m.zarr, no ndvi layer
    f = tmp_path / "f.geojson"
    gpd.GeoDataFrame({"id": ["a"]}, geometry=[_box(2, 2, 30, 46)], crs="EPSG:32633").to_file(f)
    r = runner.invoke(app, ["alerts", str(tmp_path / "m.zarr"), "--fields", str(f), "-o", str(tmp_path / "a.csv")])
    assert r.exit_code == 3, r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1
    assert "expected a mosaic with the ndvi index layer" in " ".join(r.output.split())
    assert not (tmp_path / "a.csv").exists()

"""`geofg stats`: per-field numbers equal a direct count over the mosaic; bad input exits 3."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform_geom
from scanhelp import BANDS, ORIGIN, config, pixel_centre_stats, predictor, threshold_bundle
from typer.testing import CliRunner

from geofg.cli import app
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan
from rasters import write_raster

runner = CliRunner()
X0, Y0 = ORIGIN


def _box(x0: float, y0: float, x1: float, y1: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One scan mosaic (two dates) shared by the module's tests, which only read it."""
    tmp_path = tmp_path_factory.mktemp("scanned")
    model = threshold_bundle(tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    data = {}
    for i, name in enumerate(("S_20200601.tif", "S_20200701.tif")):
        d = np.random.default_rng(i).integers(1, 3000, (2, 48, 64)).astype("uint16")
        write_raster(inbox / name, d, nodata=0, descriptions=BANDS, transform=from_origin(X0, Y0, 10.0, 10.0))
        data[name] = d
    run_scan(build_scan(config(tmp_path, model)), predictor_factory=predictor)
    return tmp_path / "m.zarr", data


def _shares(mosaic: Path, geom: dict, t: int | None) -> tuple[float, dict]:
    """Exact answer for a rectangle: each pixel weighted by the share of it inside (numpy)."""
    import zarr

    g = zarr.open_group(str(mosaic), mode="r")
    cls = g["latest_class"][:] if t is None else g["class"][t]
    (x0, y0), _, (x1, y1) = geom["coordinates"][0][:3]
    cols = np.clip(np.minimum(max(x0, x1), X0 + 10 * (np.arange(64) + 1)) - np.maximum(min(x0, x1), X0 + 10 * np.arange(64)), 0, 10) / 10
    rows = np.clip(np.minimum(max(y0, y1), Y0 - 10 * np.arange(48)) - np.maximum(min(y0, y1), Y0 - 10 * (np.arange(48) + 1)), 0, 10) / 10
    w = rows[:, None] * cols[None, :]
    return float(w.sum()), {"crop_ha": float(w[cls == 1].sum()) * 0.01, "valid_ha": float(w[cls != 255].sum()) * 0.01}


def test_stats_are_coverage_weighted_and_agree_with_pixel_centres_on_large_fields(tmp_path: Path, scanned) -> None:  # noqa: ANN001
    mosaic, _ = scanned
    a = _box(X0 + 12, Y0 - 302, X0 + 252, Y0 - 42)  # UTM, crosses chunk borders; edges off pixel centres
    b = _box(X0 + 400, Y0 - 470, X0 + 900, Y0 - 300)  # partly off the grid (east)
    tiny = _box(X0 + 101, Y0 - 104, X0 + 104, Y0 - 101)  # 3 x 3 m inside one pixel, off its centre
    far = _box(X0 + 5000, Y0 - 500, X0 + 5100, Y0 - 400)
    utm = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
           "features": [{"type": "Feature", "properties": {"id": n}, "geometry": g}
                        for n, g in (("A", a), ("B", b), ("tiny", tiny), ("far", far))]}
    fields = tmp_path / "fields.geojson"
    fields.write_text(json.dumps(utm))
    out = tmp_path / "stats.csv"
    r = runner.invoke(app, ["stats", str(mosaic), "--fields", str(fields), "-o", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = {row["field_id"]: row for row in csv.DictReader(out.open())}
    for name, geom in (("A", a), ("B", b)):
        centre = pixel_centre_stats(mosaic, geom)
        px, exact = _shares(mosaic, geom, None)
        assert float(rows[name]["pixels"]) == pytest.approx(px, abs=1e-3)
        assert float(rows[name]["crop_ha"]) == pytest.approx(exact["crop_ha"], abs=1e-3)
        assert float(rows[name]["valid_ha"]) == pytest.approx(exact["valid_ha"], abs=1e-3)
        # the pixel-centre count agrees within the edge pixels (a few per cent on fields of > 100 px)
        assert float(rows[name]["pixels"]) == pytest.approx(centre["pixels"], rel=0.05) and centre["pixels"] > 100
        assert float(rows[name]["crop_ha"]) == pytest.approx(centre["crop_ha"], rel=0.1)
        assert float(rows[name]["mean_confidence"]) == pytest.approx(centre["mean_confidence"], abs=0.02)
        assert rows[name]["majority_class"] == centre["majority_class"] and rows[name]["date"] == "latest"
    assert pixel_centre_stats(mosaic, tiny)["pixels"] == 0  # pixel centres: no field at all
    assert float(rows["tiny"]["area_ha"]) == pytest.approx(0.0009) and float(rows["tiny"]["pixels"]) == pytest.approx(0.09)
    import zarr

    cls = zarr.open_group(str(mosaic), mode="r")["latest_class"][10, 10]
    assert rows["tiny"]["majority_class"] == ["water", "crop"][cls]
    assert float(rows["far"]["pixels"]) == 0 and rows["far"]["majority_class"] == ""

    # the same field given in lon/lat (RFC 7946 default) on one date, as GeoJSON
    ll = transform_geom(CRS.from_epsg(32633), CRS.from_epsg(4326), a)
    fields_ll = tmp_path / "ll.geojson"
    fields_ll.write_text(json.dumps({"type": "FeatureCollection",
                                     "features": [{"type": "Feature", "properties": {"name": "A"}, "geometry": ll}]}))
    out2 = tmp_path / "stats.geojson"
    r = runner.invoke(app, ["stats", str(mosaic), "--fields", str(fields_ll), "-o", str(out2), "--time", "2020-07-01"])
    assert r.exit_code == 0, r.output
    props = json.loads(out2.read_text())["features"][0]["properties"]
    days = [int(v) for v in zarr.open_group(str(mosaic), mode="r")["time"][:]]
    px, exact = _shares(mosaic, a, days.index(18444))  # 2020-07-01
    assert props["name"] == "A" and props["geofg_date"] == "2020-07-01"
    assert props["geofg_pixels"] == pytest.approx(px, abs=0.1)  # lon/lat round trip: edges move by millimetres
    assert props["geofg_crop_ha"] == pytest.approx(exact["crop_ha"], abs=1e-3)


@pytest.mark.parametrize(
    ("what", "needle"),
    [("not-mosaic", "expected a geofg mosaic"), ("bad-json", "expected GeoJSON"), ("points", "Point"),
     ("no-date", "2020-06-01, 2020-07-01"), ("exists", "--overwrite"), ("ext", ".csv or .geojson")],
)
def test_stats_bad_input_exits_3_with_one_line(tmp_path: Path, scanned, what: str, needle: str) -> None:  # noqa: ANN001
    mosaic, _ = scanned
    fields = tmp_path / "f.geojson"
    fields.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": _box(15.0, 52.3, 15.001, 52.301)}]}))
    out = tmp_path / "o.csv"
    args = ["stats", str(mosaic), "--fields", str(fields), "-o", str(out)]
    if what == "not-mosaic":
        args[1] = str(tmp_path)
    elif what == "bad-json":
        fields.write_text("{not json")
    elif what == "points":
        fields.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [15, 52]}}))
    elif what == "no-date":
        args += ["--time", "2019-01-01"]
    elif what == "exists":
        out.write_text("keep me")
    elif what == "ext":
        args[-1] = str(tmp_path / "o.xlsx")
    r = runner.invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 3, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
    assert what != "exists" or out.read_text() == "keep me"

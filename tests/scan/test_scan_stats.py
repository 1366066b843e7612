"""`geofg stats`: per-field numbers equal a direct count over the mosaic; bad input exits 3."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.warp import transform_geom
from scanhelp import BANDS, ORIGIN, config, predictor, threshold_bundle
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


def _direct(mosaic: Path, geom_utm: dict, t: int | None) -> dict:
    import zarr

    g = zarr.open_group(str(mosaic), mode="r")
    cls = g["latest_class"][:] if t is None else g["class"][t]
    conf = g["latest_confidence"][:] if t is None else g["confidence"][t]
    inside = rasterize([(geom_utm, 1)], out_shape=cls.shape, transform=Affine(10, 0, X0, 0, -10, Y0)).astype(bool)
    ok = inside & (cls != 255)
    return {"pixels": int(inside.sum()), "crop_ha": round(int((cls[ok] == 1).sum()) * 0.01, 4),
            "mean_confidence": round(int(conf[ok].sum()) / ok.sum() / 250, 4)}


def test_stats_csv_and_geojson_match_a_direct_count(tmp_path: Path, scanned) -> None:  # noqa: ANN001
    mosaic, _ = scanned
    a = _box(X0 + 12, Y0 - 302, X0 + 252, Y0 - 42)  # UTM, crosses chunk borders; edges off pixel centres
    b = _box(X0 + 400, Y0 - 470, X0 + 900, Y0 - 300)  # partly off the grid (east)
    far = _box(X0 + 5000, Y0 - 500, X0 + 5100, Y0 - 400)
    utm = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
           "features": [{"type": "Feature", "properties": {"id": n}, "geometry": g}
                        for n, g in (("A", a), ("B", b), ("far", far))]}
    fields = tmp_path / "fields.geojson"
    fields.write_text(json.dumps(utm))
    out = tmp_path / "stats.csv"
    r = runner.invoke(app, ["stats", str(mosaic), "--fields", str(fields), "-o", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = {row["field_id"]: row for row in csv.DictReader(out.open())}
    for name, geom in (("A", a), ("B", b)):
        want = _direct(mosaic, geom, None)
        assert int(rows[name]["pixels"]) == want["pixels"] > 0
        assert float(rows[name]["crop_ha"]) == pytest.approx(want["crop_ha"])
        assert float(rows[name]["mean_confidence"]) == pytest.approx(want["mean_confidence"], abs=1e-4)
        assert rows[name]["date"] == "latest"
    assert rows["far"]["pixels"] == "0" and rows["far"]["majority_class"] == ""

    # the same field given in lon/lat (RFC 7946 default) on one date, as GeoJSON
    ll = transform_geom(CRS.from_epsg(32633), CRS.from_epsg(4326), a)
    fields_ll = tmp_path / "ll.geojson"
    fields_ll.write_text(json.dumps({"type": "FeatureCollection",
                                     "features": [{"type": "Feature", "properties": {"name": "A"}, "geometry": ll}]}))
    out2 = tmp_path / "stats.geojson"
    r = runner.invoke(app, ["stats", str(mosaic), "--fields", str(fields_ll), "-o", str(out2), "--time", "2020-06-01"])
    assert r.exit_code == 0, r.output
    props = json.loads(out2.read_text())["features"][0]["properties"]
    want = _direct(mosaic, a, 0)
    assert props["name"] == "A" and props["geofg_date"] == "2020-06-01"
    assert abs(props["geofg_pixels"] - want["pixels"]) <= 2  # lon/lat round trip: edge pixels only
    assert props["geofg_crop_ha"] == pytest.approx(want["crop_ha"], abs=0.03)


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

"""`geofg fields`: per-field, per-date tables, coverage-weighted, in GIS formats (issue 18, item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
import zarr
from pyproj import CRS
from rasterio.transform import from_origin
from scanhelp import BANDS, ORIGIN, config, pixel_centre_stats, predictor, threshold_bundle, scan_without_index
from typer.testing import CliRunner

from geofg.cli import app
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan
from rasters import write_raster

runner = CliRunner()
X0, Y0 = ORIGIN  # grid top-left, EPSG:32633, 10 m pixels, 48 x 64


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fields")
    model = threshold_bundle(tmp)
    (tmp / "inbox").mkdir()
    for i, day in enumerate(("20200701", "20200601")):  # arrival order is not date order
        d = np.random.default_rng(i).integers(1, 3000, (2, 48, 64)).astype("uint16")
        if i == 0:
            d[:, :24] = 0  # the later date has no data in the top half
        write_raster(tmp / "inbox" / f"S_{day}.tif", d, nodata=0, descriptions=BANDS,
                     transform=from_origin(*ORIGIN, 10.0, 10.0))  # fmt: skip
        run_scan(build_scan(config(tmp, model)), predictor_factory=predictor)
    return tmp / "m.zarr"


def _box(c0: float, r0: float, c1: float, r1: float) -> shapely.Polygon:
    """A rectangle in pixel units (columns, rows) of the grid."""
    return shapely.box(X0 + 10 * c0, Y0 - 10 * r1, X0 + 10 * c1, Y0 - 10 * r0)


def _fields(path: Path, geoms: dict[str, object], crs: str = "EPSG:32633", **kw: object) -> Path:
    gpd.GeoDataFrame({"id": list(geoms)}, geometry=list(geoms.values()), crs="EPSG:32633").to_crs(crs).to_file(path, **kw)
    return path


def _run(mosaic: Path, fields: Path, out: Path, *extra: str):  # noqa: ANN202
    return runner.invoke(app, ["fields", str(mosaic), "--fields", str(fields), "-o", str(out), *extra])


def test_pixel_aligned_field_gives_exact_shares_per_date_sorted_by_date(tmp_path: Path, mosaic: Path) -> None:
    f = _fields(tmp_path / "f.geojson", {"a": _box(2, 20, 30, 40)}, crs="EPSG:4326")  # reprojected back
    r = _run(mosaic, f, tmp_path / "t.csv")
    assert r.exit_code == 0, r.output
    import pandas as pd

    t = pd.read_csv(tmp_path / "t.csv")
    assert t["date"].tolist() == ["2020-06-01", "2020-07-01"]
    g = zarr.open_group(str(mosaic), mode="r")
    days = [int(v) for v in g["time"][:]]
    for _, row in t.iterrows():
        slot = days.index((np.datetime64(row["date"]) - np.datetime64("1970-01-01")).astype(int))
        cls = g["class"][slot, 20:40, 2:30]
        valid = cls != 255
        assert row["area_ha"] == pytest.approx(28 * 20 * 100 / 1e4, rel=1e-6)  # reprojection round trip
        assert row["clear_share"] == pytest.approx(valid.mean(), abs=2e-3)
        assert row["share_crop"] == pytest.approx((cls[valid] == 1).mean(), abs=2e-3)
        h = g["health"][slot, 20:40, 2:30]
        assessed = h != 255
        assert row["health_assessed_share"] == pytest.approx(assessed.sum() / valid.sum(), abs=2e-3)
        assert row["health_bare_stressed_share"] == pytest.approx((h[assessed] == 0).mean(), abs=2e-3)
        assert row["dominant_class"] == ("crop" if (cls[valid] == 1).mean() > 0.5 else "water")
    assert t.loc[t["date"] == "2020-07-01", "clear_share"].iloc[0] == pytest.approx(0.8, abs=2e-3)  # rows 24..40 of 20..40


def _ndvi(g: zarr.Group, slot: int, rows: slice, cols: slice) -> np.ndarray:
    code = g["ndvi"][slot, rows, cols]
    return code[code != 255] * 0.01 - 1.0


def test_index_median_and_mean_per_field_and_date_from_the_ndvi_layer(tmp_path: Path, mosaic: Path) -> None:
    """The index columns are the decoded ``ndvi`` layer's statistics over the field's clear pixels."""
    f = _fields(tmp_path / "f.geojson", {"a": _box(2, 20, 30, 40), "b": _box(40, 2, 41, 3)})  # b: one pixel
    r = _run(mosaic, f, tmp_path / "t.csv")
    assert r.exit_code == 0, r.output
    import pandas as pd

    t = pd.read_csv(tmp_path / "t.csv")
    assert "health_median" not in t.columns
    g = zarr.open_group(str(mosaic), mode="r")
    days = [int(v) for v in g["time"][:]]
    for _, row in t.iterrows():
        slot = days.index((np.datetime64(row["date"]) - np.datetime64("1970-01-01")).astype(int))
        box = (slice(20, 40), slice(2, 30)) if row["field_id"] == "a" else (slice(2, 3), slice(40, 41))
        v = _ndvi(g, slot, *box)
        if v.size == 0:  # the later date has no data in the top half
            assert np.isnan(row["ndvi_median"]) and np.isnan(row["ndvi_mean"])
            continue
        assert row["ndvi_mean"] == pytest.approx(v.mean(), abs=1e-4)
        lo, hi = np.quantile(v, [0.45, 0.55])  # the median, not the mean: within the middle tenth
        assert lo - 1e-4 <= row["ndvi_median"] <= hi + 1e-4
        assert abs(row["ndvi_median"] - np.median(v)) <= 0.0051  # half a code step (weighted median)
    skewed = t.query("field_id == 'a'")  # uniform random bands: the mean and the median differ
    assert (skewed["ndvi_median"] - skewed["ndvi_mean"]).abs().min() > 0.005


def test_a_mosaic_without_an_index_layer_gives_empty_index_columns(tmp_path: Path) -> None:
    scan_without_index(tmp_path)  # tmp_path/m.zarr, no ndvi layer
    m = tmp_path / "m.zarr"
    assert "ndvi" not in zarr.open_group(str(m), mode="r").attrs["geofg:grid"]["layers"]
    r = _run(m, _fields(tmp_path / "f.geojson", {"a": _box(2, 20, 30, 40)}), tmp_path / "t.csv")
    assert r.exit_code == 0, r.output
    import pandas as pd

    t = pd.read_csv(tmp_path / "t.csv")
    assert len(t) == 1 and t["ndvi_median"].isna().all() and t["ndvi_mean"].isna().all()
    assert t["clear_share"].iloc[0] == pytest.approx(1.0)


def test_coverage_weighting_agrees_with_pixel_centres_on_large_fields_and_not_on_tiny_ones(
        tmp_path: Path, mosaic: Path) -> None:  # fmt: skip
    """Counting pixels whose centre is inside (the old geofg stats) vs exactextract's covered shares."""
    geoms = {"large": _box(3.3, 10.6, 40.4, 45.2),  # ~1300 pixels, edges through pixels
             "small": _box(10.55, 30.55, 11.45, 31.45),  # 0.9 x 0.9 px over four pixels: no centre inside
             "sliver": _box(20.45, 5.0, 21.55, 5.9)}  # 1.1 x 0.9 px: two centres inside, two pixels counted
    f = _fields(tmp_path / "f.geojson", geoms)
    assert _run(mosaic, f, tmp_path / "t.parquet").exit_code == 0
    exact = gpd.read_parquet(tmp_path / "t.parquet").query("date == '2020-06-01'").set_index("field_id")
    g = zarr.open_group(str(mosaic), mode="r")
    june = [int(v) for v in g["time"][:]].index(18414)  # 2020-06-01
    centre = {k: pixel_centre_stats(mosaic, geom, june) for k, geom in geoms.items()}
    area = {k: shapely.area(g) / 1e4 for k, g in geoms.items()}
    big = centre["large"]
    assert big["area_ha"] == pytest.approx(area["large"], rel=0.03)  # centres: within a pixel row of edges
    assert exact.loc["large", "share_crop"] == pytest.approx(big["crop_ha"] / big["valid_ha"], abs=0.01)
    assert exact.loc["large", "dominant_class"] == big["majority_class"]
    assert centre["small"]["pixels"] == 0 and exact.loc["small", "clear_share"] == pytest.approx(1.0)
    assert exact.loc["small", "area_ha"] == pytest.approx(area["small"])  # centres: no field at all
    assert centre["sliver"]["area_ha"] == pytest.approx(0.02) and area["sliver"] == pytest.approx(0.0099)
    assert exact.loc["sliver", "area_ha"] == pytest.approx(0.0099)
    four = g["class"][june, 30:32, 10:12]  # equal shares of the small field: their mean
    assert exact.loc["small", "share_crop"] == pytest.approx((four == 1).mean(), abs=1e-6)


def test_geoparquet_is_1_1_with_the_mosaic_crs_and_other_formats_open_with_pyogrio(tmp_path: Path, mosaic: Path) -> None:
    f = _fields(tmp_path / "f.gpkg", {"a": _box(2, 2, 20, 20), "b": _box(30, 30, 60, 45)}, crs="EPSG:3857")
    for ext in ("parquet", "gpkg", "fgb"):
        assert _run(mosaic, f, tmp_path / f"t.{ext}").exit_code == 0
    meta = json.loads(pq.read_schema(tmp_path / "t.parquet").metadata[b"geo"])
    col = meta["columns"][meta["primary_column"]]
    assert meta["version"] == "1.1.0" and col["encoding"] == "WKB"
    assert set(col["geometry_types"]) <= {"Polygon", "MultiPolygon"} and col["geometry_types"]
    assert CRS.from_json_dict(col["crs"]) == CRS.from_epsg(32633)
    assert len(col["bbox"]) == 4 and "covering" in col  # bbox column for spatial filtering
    back = gpd.read_parquet(tmp_path / "t.parquet")
    assert back.crs == CRS.from_epsg(32633) and len(back) == 4
    for ext in ("gpkg", "fgb"):
        info = pyogrio.read_info(tmp_path / f"t.{ext}")
        assert CRS.from_user_input(info["crs"]) == CRS.from_epsg(32633) and info["features"] == 4


def _bad(tmp_path: Path, mosaic: Path, fields: Path, needle: str) -> str:
    out = tmp_path / "o.parquet"
    out.write_bytes(b"keep")
    r = _run(mosaic, fields, out, "--overwrite")
    assert r.exit_code == 3, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and str(fields) in lines[0].replace("\n", ""), r.output
    assert out.read_bytes() == b"keep" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file (hidden) left
    return lines[0]


def test_bad_fields_files_are_one_line_exit_3_and_leave_the_output_alone(tmp_path: Path, mosaic: Path) -> None:
    runner.mix_stderr = False if hasattr(runner, "mix_stderr") else None  # noqa: B010
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    _bad(tmp_path, mosaic, empty, "found none")
    shp = _fields(tmp_path / "nocrs.shp", {"a": _box(2, 2, 20, 20)})
    shp.with_suffix(".prj").unlink()
    _bad(tmp_path, mosaic, shp, "expected a CRS")
    far = _fields(tmp_path / "far.geojson", {"x": _box(500, 500, 510, 510)})
    _bad(tmp_path, mosaic, far, "none inside it")
    pts = tmp_path / "pts.geojson"
    gpd.GeoDataFrame({"id": ["p7"]}, geometry=[shapely.Point(X0 + 5, Y0 - 5)], crs="EPSG:32633").to_file(pts)
    _bad(tmp_path, mosaic, pts, "p7")
    garbage = tmp_path / "garbage.geojson"
    garbage.write_bytes(b'{"type": "FeatureCollection", "features": [ \xff\xfe')
    _bad(tmp_path, mosaic, garbage, "cannot be read")


def test_repaired_and_partly_outside_fields_are_named_in_warnings(tmp_path: Path, mosaic: Path) -> None:
    bowtie = shapely.Polygon([(X0 + 20, Y0 - 20), (X0 + 200, Y0 - 200), (X0 + 200, Y0 - 20), (X0 + 20, Y0 - 200)])
    f = _fields(tmp_path / "f.geojson", {"bow-1": bowtie, "edge-2": _box(50, 40, 80, 60), "ok": _box(1, 1, 5, 5)})
    r = _run(mosaic, f, tmp_path / "t.csv")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "repaired" in text and "bow-1" in text and "edge-2" in text and "outside" in text
    import pandas as pd

    t = pd.read_csv(tmp_path / "t.csv").set_index(["field_id", "date"])
    assert t.loc[("bow-1", "2020-06-01"), "area_ha"] == pytest.approx(2 * 0.5 * 180 * 90 / 1e4)  # two triangles
    assert t.loc[("edge-2", "2020-06-01"), "inside_ha"] == pytest.approx(14 * 8 * 100 / 1e4)


def test_latin1_shapefile_attributes_are_read_by_their_declared_encoding(tmp_path: Path, mosaic: Path) -> None:
    f = _fields(tmp_path / "l1.shp", {"Feld Müller": _box(2, 2, 20, 20)}, encoding="latin1")
    assert b"M\xfcller" in f.with_suffix(".dbf").read_bytes()  # really latin-1 on disk
    assert _run(mosaic, f, tmp_path / "t.csv").exit_code == 0
    assert "Feld Müller" in (tmp_path / "t.csv").read_text(encoding="utf-8")

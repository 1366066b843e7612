"""`geofg zones`: management zones inside fields from NDVI, for farm software (issue 18, item 4)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
import zarr
from pyproj import CRS
from rasterio.transform import from_origin
from scanhelp import BANDS, ORIGIN, config, predictor, threshold_bundle, scan_without_index
from typer.testing import CliRunner

from geofg.cli import app
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan
from rasters import write_raster

runner = CliRunner()
X0, Y0 = ORIGIN  # grid top-left, EPSG:32633, 10 m pixels, 48 x 64
SPECK = (slice(20, 22), slice(8, 10))  # 2 x 2 px of very high NDVI in the low part
HOLE = (slice(30, 33), slice(24, 27))  # 3 x 3 px of no data


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A scan mosaic of one image whose NDVI rises from west to east, with a speck and a hole."""
    tmp = tmp_path_factory.mktemp("zones")
    model = threshold_bundle(tmp)
    (tmp / "inbox").mkdir()
    cols = np.arange(64, dtype=np.float64)
    red = np.full((48, 64), 1500.0)
    nir = np.broadcast_to(1500.0 + 60.0 * cols, (48, 64)).copy()
    nir[SPECK] = 9000.0
    data = np.stack([red, nir]).astype("uint16")
    data[:, HOLE[0], HOLE[1]] = 0
    image = tmp / "inbox" / "S_20200601.tif"
    write_raster(image, data, nodata=0, descriptions=BANDS, transform=from_origin(*ORIGIN, 10.0, 10.0))
    run_scan(build_scan(config(tmp, model)), predictor_factory=predictor)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = (nir - red) / (nir + red)
    ndvi[HOLE] = np.nan
    return tmp / "m.zarr", image, ndvi


def _box(c0: float, r0: float, c1: float, r1: float) -> shapely.Polygon:
    """A rectangle in pixel units (columns, rows) of the grid."""
    return shapely.box(X0 + 10 * c0, Y0 - 10 * r1, X0 + 10 * c1, Y0 - 10 * r0)


FIELD = _box(2.5, 4.3, 44.5, 40.7)  # 42 x 36.4 px = 15.3 ha, edges through pixels


def _fields(path: Path, geoms: dict[str, object]) -> Path:
    gpd.GeoDataFrame({"id": list(geoms)}, geometry=list(geoms.values()), crs="EPSG:32633").to_file(path)
    return path


def _zones(mosaic: Path, image: Path | None, fields: Path, out: Path, *extra: str):  # noqa: ANN202
    """`geofg zones`; ``image`` None: the index from the mosaic's ndvi layer (the default)."""
    src = [] if image is None else ["--image", str(image)]
    return runner.invoke(app, ["zones", str(mosaic), "--fields", str(fields), *src, "-o", str(out), *extra])


@pytest.mark.parametrize("source", ["mosaic", "image"])
def test_zones_follow_ndvi_tile_the_field_and_merge_specks_in_a_shapefile(tmp_path: Path, scene, source: str) -> None:  # noqa: ANN001
    mosaic, image, ndvi = scene
    if source == "mosaic":  # the index the zones see: the mosaic's layer, in hundredths
        code = zarr.open_group(str(mosaic), mode="r")["latest_ndvi"][:]
        assert np.nanmax(np.abs(np.where(code == 255, np.nan, code * 0.01 - 1) - ndvi)) <= 0.005 + 1e-6
        ndvi = np.where(code == 255, np.nan, code * 0.01 - 1)
        image = None
    f = _fields(tmp_path / "f.gpkg", {"north-40": FIELD})
    r = _zones(mosaic, image, f, tmp_path / "z.shp", "-n", "5")
    assert r.exit_code == 0, r.output
    info = pyogrio.read_info(tmp_path / "z.shp")
    assert all(len(n) <= 10 for n in info["fields"])
    types = dict(zip(info["fields"], info["dtypes"], strict=True))
    assert types["zone"].startswith("int") and types["field_no"].startswith("int")
    assert types["ndvi_mean"].startswith("float") and types["area_ha"].startswith("float")
    z = gpd.read_file(tmp_path / "z.shp")
    assert sorted(z["zone"].unique()) == [1, 2, 3, 4, 5] and (z["n_zones"] == 5).all()
    assert len(z) == 5  # one strip per zone: the speck joined its strip, the hole is covered
    z = z.sort_values("zone")
    assert z["ndvi_mean"].is_monotonic_increasing
    assert (np.diff([g.centroid.x for g in z.geometry]) > 0).all()  # zone 1 in the west
    union = shapely.union_all(z.geometry.to_numpy())
    assert union.symmetric_difference(FIELD).area == pytest.approx(0, abs=1e-3)
    assert z["area_ha"].sum() == pytest.approx(FIELD.area / 1e4, rel=1e-6)
    first = z.iloc[0].geometry  # zone 1's mean: the raw NDVI of the clear pixels whose centre is in it
    rows, cols = np.mgrid[0:48, 0:64]
    centres = shapely.points(X0 + 10 * cols + 5, Y0 - 10 * rows - 5)
    inside = shapely.contains(first, centres) & shapely.contains(FIELD, centres) & ~np.isnan(ndvi)
    assert z.iloc[0]["ndvi_mean"] == pytest.approx(ndvi[inside].mean(), abs=1e-4)
    r = _zones(mosaic, image, f, tmp_path / "raw.gpkg", "-n", "5", "--min-area", "0", "--smooth", "0")
    raw = gpd.read_file(tmp_path / "raw.gpkg")
    assert len(raw) > 5  # without the minimum area the speck is its own patch

    def zone_at(row: float, col: float) -> int:
        p = shapely.Point(X0 + 10 * col, Y0 - 10 * row)
        return int(raw[raw.geometry.contains(p)]["zone"].iloc[0])

    assert zone_at(20.5, 8.5) == 5  # the speck: the highest NDVI
    hole = zone_at(31.5, 25.5)  # no data there: it takes its neighbours' zone
    assert hole in {zone_at(31.5, 23.5), zone_at(31.5, 27.5)} and hole > 1


def test_a_range_keeps_the_most_zones_that_survive_the_minimum_area(tmp_path: Path, scene) -> None:  # noqa: ANN001
    mosaic, _, _ = scene
    image = None  # the mosaic's index layer
    f = _fields(tmp_path / "f.geojson", {"a": FIELD, "small": _box(50, 10, 58, 16)})  # small: 0.48 ha
    assert _zones(mosaic, image, f, tmp_path / "z.gpkg", "-n", "3..5").exit_code == 0
    z = gpd.read_file(tmp_path / "z.gpkg").set_index("field_id")
    assert z.loc["a", "n_zones"].max() == 5
    assert set(z.loc[["small"], "zone"]) == {1}  # two 0.24 ha halves: below 0.25 ha, one zone
    for min_ha, want in (("4.5", [1, 2, 3]), ("6", [1])):  # 15.3 ha: three zones of 5.1 ha, not four
        out = tmp_path / f"big{min_ha}.gpkg"
        assert _zones(mosaic, image, f, out, "-n", "3..5", "--min-area", min_ha).exit_code == 0
        a = gpd.read_file(out).query("field_id == 'a'")
        assert sorted(a["zone"]) == want and (a["n_zones"] == len(want)).all()
        assert a["area_ha"].sum() == pytest.approx(FIELD.area / 1e4, rel=1e-6)


def test_noisy_index_gives_at_most_100_polygons_per_field_and_lonlat_on_request(tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    (tmp_path / "inbox").mkdir()
    rng = np.random.default_rng(3)
    data = np.stack([np.full((48, 64), 1500), rng.integers(1600, 6000, (48, 64))]).astype("uint16")
    image = tmp_path / "inbox" / "S_20200601.tif"
    write_raster(image, data, nodata=0, descriptions=BANDS, transform=from_origin(*ORIGIN, 10.0, 10.0))
    run_scan(build_scan(config(tmp_path, model)), predictor_factory=predictor)
    f = _fields(tmp_path / "f.gpkg", {"noisy": _box(0, 0, 64, 48)})
    out = tmp_path / "z.gpkg"
    r = _zones(tmp_path / "m.zarr", image, f, out, "--smooth", "0", "--min-area", "0", "--crs", "EPSG:4326")
    assert r.exit_code == 0, r.output
    z = gpd.read_file(out)
    assert CRS(z.crs) == CRS.from_epsg(4326)
    assert 20 < len(z) <= 100  # unmerged noise gives hundreds of patches


def _bad(tmp_path: Path, mosaic: Path, image: Path | None, fields: Path, needle: str, *extra: str,
         out: str = "o.shp") -> None:  # fmt: skip
    target = tmp_path / out
    target.write_bytes(b"keep")
    r = _zones(mosaic, image, fields, target, "--overwrite", *extra)
    assert r.exit_code == 3, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in " ".join(r.output.split()), r.output
    assert target.read_bytes() == b"keep" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file (hidden) left


def test_bad_input_is_one_line_exit_3_and_the_output_is_left_alone(tmp_path: Path, scene) -> None:  # noqa: ANN001
    mosaic, image, _ = scene
    f = _fields(tmp_path / "f.gpkg", {"a": FIELD})
    _bad(tmp_path, mosaic, image, f, "expected a zone count", "-n", "1..12")
    _bad(tmp_path, mosaic, image, f, "expected a red and a near-infrared band", "--bands", "G,SWIR")
    _bad(tmp_path, mosaic, image, f, "expected .gpkg (GeoPackage) or .shp", out="o.kml")
    far = tmp_path / "far.tif"
    write_raster(far, np.ones((2, 8, 8), "uint16"), descriptions=BANDS, transform=from_origin(X0 + 1e5, Y0, 10.0, 10.0))
    _bad(tmp_path, mosaic, far, f, "expected an image overlapping the mosaic")
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    _bad(tmp_path, mosaic, image, empty, "found none")
    outside = _fields(tmp_path / "out.gpkg", {"x": _box(500, 500, 510, 510)})
    _bad(tmp_path, mosaic, image, outside, "found none")
    _bad(tmp_path, mosaic, None, outside, "found none")
    _bad(tmp_path, mosaic, None, f, "--bands names the bands of --image", "--bands", "R,NIR")


def test_a_mosaic_without_an_index_layer_needs_the_image(tmp_path: Path) -> None:
    scan_without_index(tmp_path)  # tmp_path/m.zarr, no ndvi layer
    (tmp_path / "out").mkdir()
    f = _fields(tmp_path / "f.gpkg", {"a": FIELD})
    _bad(tmp_path / "out", tmp_path / "m.zarr", None, f, "expected a mosaic with the ndvi index layer")
    assert "pass --image" in _zones(tmp_path / "m.zarr", None, f, tmp_path / "z.gpkg").output

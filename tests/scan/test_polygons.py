"""`geofg export MOSAIC --polygons`: chunk-by-chunk tracing gives the polygons of the whole layer (issue 18, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio.features
import shapely
import zarr
from affine import Affine
from pyproj import CRS
from rasterio.transform import from_origin
from scanhelp import BANDS, ORIGIN, config, predictor, threshold_bundle
from typer.testing import CliRunner

from geofg.cli import app
from geofg.products import polygons as poly
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan
from rasters import write_raster

runner = CliRunner()


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 x 64 px in 16-px chunks; smooth blobs so patches cross chunk edges, in U shapes too."""
    tmp = tmp_path_factory.mktemp("poly")
    model = threshold_bundle(tmp)
    (tmp / "inbox").mkdir()
    yy, xx = np.mgrid[0:48, 0:64]
    field = np.sin(xx / 5.0) + np.cos(yy / 4.0) + 0.3 * np.sin((xx + yy) / 3.0)
    b0 = np.where(field > 0.2, 2500, 500).astype("uint16")  # threshold model: class 1 where b0 > 1000
    d = np.stack([b0, b0])
    d[:, 40:, 50:] = 0  # a nodata corner
    write_raster(tmp / "inbox" / "S_20200601.tif", d, nodata=0, descriptions=BANDS,
                 transform=from_origin(*ORIGIN, 10.0, 10.0))  # fmt: skip
    run_scan(build_scan(config(tmp, model)), predictor_factory=predictor)
    return tmp / "m.zarr"


def _whole(mosaic: Path) -> list[tuple[int, shapely.Polygon]]:
    cls = zarr.open_group(str(mosaic), mode="r")["latest_class"][:]
    t = Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
    return [(int(v), shapely.geometry.shape(g))
            for g, v in rasterio.features.shapes(cls, mask=cls != 255, connectivity=4, transform=t)]


def test_polygons_streamed_by_chunk_rows_equal_the_whole_layer_traced_at_once(tmp_path: Path, mosaic: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(poly, "BATCH", 3)  # several row groups
    out = tmp_path / "p.parquet"
    r = runner.invoke(app, ["export", str(mosaic), "--polygons", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    got = gpd.read_parquet(out)
    want = _whole(mosaic)
    assert got.crs == CRS.from_epsg(32633) and pq.ParquetFile(out).num_row_groups > 1
    assert len(want) > 6 and any(g.bounds[3] - g.bounds[1] > 160 for _, g in want)  # some cross chunk rows
    assert len(got) == len(want)
    key = lambda v, g: (v, round(g.area), tuple(round(x) for x in g.bounds))  # noqa: E731
    assert sorted(key(v, g) for v, g in zip(got["value"], got.geometry, strict=True)) == sorted(key(v, g) for v, g in want)
    for v, g in want:  # each whole-layer patch is one polygon, equal in shape
        match = [h for u, h in zip(got["value"], got.geometry, strict=True) if u == v and h.equals(g)]
        assert len(match) == 1
    assert set(got["name"]) <= {"water", "crop"} and np.allclose(got["area_m2"], got.geometry.area)
    meta = json.loads(pq.read_schema(out).metadata[b"geo"])
    assert meta["version"] == "1.1.0" and meta["columns"]["geometry"]["encoding"] == "WKB"


def test_polygons_refuse_other_extensions_and_existing_outputs(tmp_path: Path, mosaic: Path) -> None:
    r = runner.invoke(app, ["export", str(mosaic), "--polygons", str(tmp_path / "p.shp")])
    assert r.exit_code == 3 and "GeoParquet" in r.output
    (tmp_path / "p.parquet").write_bytes(b"keep")
    r = runner.invoke(app, ["export", str(mosaic), "--polygons", str(tmp_path / "p.parquet")])
    assert r.exit_code == 3 and (tmp_path / "p.parquet").read_bytes() == b"keep"

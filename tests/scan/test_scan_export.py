"""`geofg export MOSAIC --cog/--png`: a valid COG equal to the mosaic's layer, georeferenced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scanhelp import BANDS, ORIGIN, config, predictor, threshold_bundle
from typer.testing import CliRunner

from geofg.cli import app
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan
from rasters import write_raster

runner = CliRunner()


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One scan mosaic (two dates) shared by the module's tests, which only read it."""
    tmp_path = tmp_path_factory.mktemp("mosaic")
    model = threshold_bundle(tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, name in enumerate(("S_20200601.tif", "S_20200701.tif")):
        d = np.random.default_rng(i).integers(1, 3000, (2, 48, 64)).astype("uint16")
        if i == 1:
            d[:, 30:] = 0  # the second date leaves the bottom rows to the first in the latest view
        write_raster(inbox / name, d, nodata=0, descriptions=BANDS, transform=from_origin(*ORIGIN, 10.0, 10.0))
    run_scan(build_scan(config(tmp_path, model)), predictor_factory=predictor)
    return tmp_path / "m.zarr"


def test_cog_of_latest_and_of_one_date_equals_the_mosaic(tmp_path: Path, mosaic: Path) -> None:
    g = zarr.open_group(str(mosaic), mode="r")
    for args, want in (([], g["latest_class"][:]), (["--time", "2020-07-01"], g["class"][1])):
        out = tmp_path / f"c{len(args)}.tif"
        r = runner.invoke(app, ["export", str(mosaic), "--cog", str(out), *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        with rasterio.open(out) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"  # GDAL's own COG check
            assert ds.crs == CRS.from_epsg(32633) and tuple(ds.transform)[:6] == (10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
            assert ds.nodata == 255 and ds.colormap(1)[1][:3] == (0xD9, 0x5F, 0x02)
            np.testing.assert_array_equal(ds.read(1), want)
    png = tmp_path / "q.png"
    r = runner.invoke(app, ["export", str(mosaic), "--png", str(png)], catch_exceptions=False)
    assert r.exit_code == 0 and png.stat().st_size > 200


def test_cog_of_the_index_layer_keeps_codes_with_scale_and_offset(tmp_path: Path, mosaic: Path) -> None:
    g = zarr.open_group(str(mosaic), mode="r")
    out = tmp_path / "ndvi.tif"
    r = runner.invoke(app, ["export", str(mosaic), "--cog", str(out), "--layer", "ndvi", "--time", "2020-07-01"],
                      catch_exceptions=False)  # fmt: skip
    assert r.exit_code == 0, r.output
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and ds.dtypes[0] == "uint8"
        assert (ds.nodata, ds.scales[0], ds.offsets[0]) == (255, 0.01, -1.0)
        code = ds.read(1)
    np.testing.assert_array_equal(code, g["ndvi"][1])
    assert (code != 255).any() and not (tmp_path / "ndvi.qml").exists()


def test_png_of_the_index_layer_shows_five_ndvi_classes(tmp_path: Path, mosaic: Path) -> None:
    """`--png --layer ndvi`: each pixel in the colour of its NDVI class (codes binned at NDVI 0, 0.2,
    0.4, 0.6), no data black, the five classes in the legend."""
    from PIL import Image

    from geofg.io.export import INDEX_BINS

    g = zarr.open_group(str(mosaic), mode="r")
    code = g["latest_ndvi"][:]
    png = tmp_path / "ndvi.png"
    r = runner.invoke(app, ["export", str(mosaic), "--png", str(png), "--layer", "ndvi"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rgb = np.asarray(Image.open(png).convert("RGB"))[: code.shape[0], : code.shape[1]]  # 1x: no reduction
    value = code.astype(float) * 0.01 - 1.0
    want = np.zeros((*code.shape, 3), np.uint8)  # no data: black
    lower = -np.inf
    for upper, _, colour in INDEX_BINS:
        inside = (code != 255) & (value >= lower - 1e-9) & (value < upper - 1e-9)
        want[inside] = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
        lower = upper
    assert len(np.unique(code[code != 255] // 20)) >= 3  # the random scenes span several classes
    np.testing.assert_array_equal(rgb, want)


@pytest.mark.parametrize(("args", "needle"), [
    (["--time", "1999-01-01"], "2020-06-01, 2020-07-01"),
    (["--layer", "nope"], "--layer"),
    (["--cog-exists"], "--overwrite"),
    (["--png-time"], "--cog"),
])
def test_export_bad_requests_exit_3(tmp_path: Path, mosaic: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "o.tif"
    cmd = ["export", str(mosaic), "--cog", str(out)]
    if args == ["--cog-exists"]:
        out.write_text("keep")
        args = []
    elif args == ["--png-time"]:
        cmd = ["export", str(mosaic), "--png", str(tmp_path / "o.png")]
        args = ["--time", "2020-06-01"]
    r = runner.invoke(app, [*cmd, *args], catch_exceptions=False)
    assert r.exit_code == 3, r.output
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()
    assert not out.exists() or out.read_text() == "keep"

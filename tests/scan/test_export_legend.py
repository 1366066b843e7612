"""COG exports carry their legend: category names, RAT, colour table, nodata, a QGIS style (issue 18, item 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin
from scanhelp import BANDS, ORIGIN, config, predictor, threshold_bundle
from typer.testing import CliRunner

from geofg.cli import app
from geofg.health import HEALTH_CLASSES
from geofg.scan.legend import NOT_CROP, NOT_IN_SEASON, health_codes
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan
from rasters import write_raster

runner = CliRunner()
HEALTH = [n for n, _ in HEALTH_CLASSES]


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("legend")
    model = threshold_bundle(tmp)
    (tmp / "inbox").mkdir()
    d = np.random.default_rng(4).integers(1, 3000, (2, 48, 64)).astype("uint16")
    d[:, :8, :8] = 0
    write_raster(tmp / "inbox" / "S_20200601.tif", d, nodata=0, descriptions=BANDS,
                 transform=from_origin(*ORIGIN, 10.0, 10.0))  # fmt: skip
    run_scan(build_scan(config(tmp, model)), predictor_factory=predictor)
    return tmp / "m.zarr"


def _export(mosaic: Path, out: Path, layer: str) -> None:
    r = runner.invoke(app, ["export", str(mosaic), "--cog", str(out), "--layer", layer], catch_exceptions=False)
    assert r.exit_code == 0, r.output


def test_health_codes_say_why_a_pixel_was_not_assessed() -> None:
    health = np.array([[0, 3, 255, 255, 255, 255, 255]], np.uint8)
    cls = np.array([[1, 1, 0, 255, 255, 255, 255]], np.uint8)
    mask = np.array([[0, 0, 0, 1, 2, 3, 255]], np.uint8)
    assert health_codes(health, cls, mask, True).tolist() == [[0, 3, NOT_CROP, 251, 252, 253, 255]]
    assert health_codes(health, cls, mask, False).tolist() == [[0, 3, NOT_IN_SEASON, 251, 252, 253, 255]]
    assert health_codes(health, cls, None, True).tolist() == [[0, 3, NOT_CROP, 255, 255, 255, 255]]


@pytest.mark.parametrize("layer", ["class", "health"])
def test_sidecars_hold_names_colours_and_the_qml_palette(tmp_path: Path, mosaic: Path, layer: str) -> None:
    out = tmp_path / f"{layer}.tif"
    _export(mosaic, out, layer)
    g = zarr.open_group(str(mosaic), mode="r")
    names = list(g["latest_" + layer].attrs["class_names"])
    band = ET.parse(f"{out}.aux.xml").getroot().find("PAMRasterBand")
    cats = [c.text or "" for c in band.find("CategoryNames")]
    assert cats[: len(names)] == names
    rows = [[f.text for f in row] for row in band.find("GDALRasterAttributeTable").findall("Row")]
    assert [r[1] for r in rows][: len(names)] == names
    palette = ET.parse(out.with_suffix(".qml")).getroot().findall(".//paletteEntry")
    with rasterio.open(out) as ds:
        cmap = ds.colormap(1)
        assert ds.nodata == 255 and cmap[255][3] == 0
        for e in palette:  # the QGIS colours are the GeoTIFF's colour table
            v = int(e.get("value"))
            assert tuple(int(e.get("color")[i: i + 2], 16) for i in (1, 3, 5)) == cmap[v][:3]
        values = ds.read(1)
    labels = {int(e.get("value")): e.get("label") for e in palette}
    if layer == "health":  # crop pixels keep their zone, water pixels say why they have none
        cls, health = g["latest_class"][:], g["latest_health"][:]
        assert (values[health != 255] == health[health != 255]).all()
        assert set(np.unique(values[(cls == 0)]).tolist()) == {NOT_CROP}
        assert labels[NOT_CROP].startswith("not assessed") and cats[NOT_CROP] == labels[NOT_CROP]
        assert (values[cls == 255] == 255).all()
    assert all(labels[i] == n for i, n in enumerate(names))


def _gdalinfo(path: Path) -> dict:
    env = {**os.environ, "GDAL_PAM_ENABLED": "YES"}  # as QGIS or a shell runs it (the tests turn PAM off)
    r = subprocess.run(["gdalinfo", "-json", str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="gdalinfo not installed (apt-get install gdal-bin)")
def test_gdalinfo_lists_category_names_colour_table_nodata_and_rat(tmp_path: Path, mosaic: Path) -> None:
    out = tmp_path / "health.tif"
    _export(mosaic, out, "health")
    band = _gdalinfo(out)["bands"][0]
    assert band["noDataValue"] == 255
    assert band["categories"][: len(HEALTH)] == HEALTH
    assert band["categories"][NOT_CROP] == "not assessed: not a crop or grass class"
    assert band["categories"][NOT_IN_SEASON] == "not assessed: out of the growing season"
    entries = band["colorTable"]["entries"]
    assert entries[0][:3] == [int(HEALTH_CLASSES[0][1][i: i + 2], 16) for i in (1, 3, 5)]
    rat = band.get("rat") or _gdalinfo(out).get("rat")
    assert rat["tableType"] == "thematic" and [f["name"] for f in rat["fieldDefn"]][:2] == ["Value", "Name"]
    assert [r["f"][1] for r in rat["row"]][: len(HEALTH)] == HEALTH

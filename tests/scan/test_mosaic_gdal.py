"""GDAL opens every layer of a classify mosaic and a scan mosaic (issue 18, item 1).

rasterio's GDAL (3.10 in the wheel) opens each array as ``ZARR:"MOSAIC":/LAYER``; CRS, transform,
nodata, dtype and values must match what xarray/rioxarray read. Debian's ``gdalinfo`` (GDAL 3.6,
which needs ``:T`` for one slice of a time layer) is checked when it is installed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scanhelp import BANDS, ORIGIN, config, predictor, threshold_bundle

from geofg.config import build_job
from geofg.health import INDEX_MAX_CODE, INDEX_OFFSET, INDEX_SCALE
from geofg.models.inference.tiny import ThresholdPredictor
from geofg.run import run_job
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan
from rasters import write_raster


def _classify(tmp: Path) -> Path:
    rng = np.random.default_rng(3)
    data = rng.integers(1, 3000, (2, 45, 37)).astype("uint16")
    data[:, :5, :5] = 0
    inp = write_raster(tmp / "in.tif", data, nodata=0, descriptions=BANDS, crs="EPSG:32633",
                       transform=from_origin(600000.0, 5700000.0, 20.0, 20.0))  # fmt: skip
    model = threshold_bundle(tmp)
    out = tmp / "c.zarr"
    run_job(build_job({"read": {"inputs": [str(inp)]}, "tile": {"chunk": 16},
                       "model": {"model": str(model), "device": "cpu"},
                       "write": {"output": str(out), "quicklook": False}}),
            predictor_factory=lambda p: ThresholdPredictor(p.card))  # fmt: skip
    return out


def _scan(tmp: Path) -> Path:
    model = threshold_bundle(tmp)
    (tmp / "inbox").mkdir()
    for i, day in enumerate(("20200601", "20200701")):
        data = np.random.default_rng(i).integers(1, 3000, (2, 48, 64)).astype("uint16")
        data[:, : 10 * i, :7] = 0
        write_raster(tmp / "inbox" / f"S_{day}.tif", data, nodata=0, descriptions=BANDS,
                     transform=from_origin(*ORIGIN, 10.0, 10.0))  # fmt: skip
    run_scan(build_scan(config(tmp, model)), predictor_factory=predictor)
    return tmp / "m.zarr"


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"classify": _classify(tmp_path_factory.mktemp("classify")),
            "scan": _scan(tmp_path_factory.mktemp("scan"))}  # fmt: skip


def _layers(ds: xr.Dataset) -> list[str]:
    return sorted(n for n, v in ds.data_vars.items() if {"y", "x"} <= set(v.dims))


@pytest.mark.parametrize("kind", ["classify", "scan"])
def test_rasterio_opens_every_layer_with_xarrays_crs_transform_fill_and_values(
        mosaics: dict[str, Path], kind: str) -> None:  # fmt: skip
    path = mosaics[kind]
    ds = xr.open_zarr(path, decode_coords="all", mask_and_scale=False, decode_times=False, consolidated=False)
    names = _layers(ds)
    want = {"classify": {"class", "health", "confidence", "ndvi"},
            "scan": {"class", "health", "confidence", "ndvi", "latest_class", "latest_health",
                     "latest_confidence", "latest_ndvi", "latest_time"}}[kind]  # fmt: skip
    assert set(names) == want
    for name in names:
        var = ds[name]
        with rasterio.open(f'ZARR:"{path}":/{name}') as src:
            assert src.crs == CRS.from_wkt(ds.rio.crs.to_wkt()) and src.crs == ds.rio.crs, name
            assert src.transform.almost_equals(ds.rio.transform()), name
            assert src.nodata == var.attrs.get("_FillValue", var.encoding.get("_FillValue")), name
            assert src.dtypes[0] == str(var.dtype), name
            values = src.read()
        expect = var.values if var.ndim == 3 else var.values[None]
        assert values.shape == expect.shape, name  # a time layer: one band per date
        np.testing.assert_array_equal(values, expect, err_msg=name)
        assert (expect != src.nodata).any(), name
        if name in ("class", "confidence", "ndvi"):
            assert (expect == src.nodata).any(), name  # the nodata corner reads as nodata


@pytest.mark.parametrize("kind", ["classify", "scan"])
def test_the_index_layer_decodes_to_ndvi_in_xarray_and_gdal(mosaics: dict[str, Path], kind: str) -> None:
    """CF scale_factor/add_offset: xarray gives NDVI (NaN for 255), GDAL the same scale and offset."""
    path = mosaics[kind]
    raw = xr.open_zarr(path, mask_and_scale=False, decode_times=False, consolidated=False)
    ds = xr.open_zarr(path, decode_times=False, consolidated=False)
    for name in ("ndvi",) + (("latest_ndvi",) if kind == "scan" else ()):
        code, value = raw[name].values, ds[name].values
        assert raw[name].dtype == np.uint8 and code[code != 255].max() <= 200, name
        np.testing.assert_allclose(value[code != 255], code[code != 255] * 0.01 - 1.0, atol=1e-6)
        assert np.isnan(value[code == 255]).all() and (code != 255).any(), name
        assert name == "latest_ndvi" or (code == 255).any()  # the nodata corner
        with rasterio.open(f'ZARR:"{path}":/{name}') as src:
            assert (src.scales[0], src.offsets[0]) == (0.01, -1.0), name
        a = raw[name].attrs  # the layer's attributes say what geofg.health writes
        assert (a["scale_factor"], a["add_offset"], a["valid_max"]) == (INDEX_SCALE, INDEX_OFFSET, INDEX_MAX_CODE)


def _gdalinfo(target: str) -> dict:
    r = subprocess.run(["gdalinfo", "-json", target], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="gdalinfo not installed (apt-get install gdal-bin)")
@pytest.mark.parametrize("kind", ["classify", "scan"])
def test_gdalinfo_sees_crs_transform_and_nodata_of_every_layer(mosaics: dict[str, Path], kind: str) -> None:
    path = mosaics[kind]
    ds = xr.open_zarr(path, decode_coords="all", mask_and_scale=False, decode_times=False, consolidated=False)
    t = ds.rio.transform()
    for name in _layers(ds):
        target = f'ZARR:"{path}":/{name}' + (":0" if ds[name].ndim == 3 else "")  # GDAL < 3.8: slice index
        info = _gdalinfo(target)
        assert CRS.from_wkt(info["coordinateSystem"]["wkt"]) == ds.rio.crs, name
        assert np.allclose(info["geoTransform"], [t.c, t.a, t.b, t.f, t.d, t.e]), name
        assert info["bands"][0]["noDataValue"] == ds[name].attrs.get("_FillValue", ds[name].encoding.get("_FillValue"))
        assert info["size"] == [ds.sizes["x"], ds.sizes["y"]], name

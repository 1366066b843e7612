"""Scenes in other CRSs and resolutions are warped onto the fixed grid, never mis-placed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import zarr
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from scanhelp import BANDS, ORIGIN, config, expected_class, predictor, threshold_bundle

from geofg.grid import Window
from geofg.io.read import open_raster
from geofg.scan.config import build_scan
from geofg.scan.run import make_plan, run_scan
from geofg.scan.warp import footprint
from rasters import write_raster

H = W = 64


def _blocks(seed: int) -> np.ndarray:
    """(2, 64, 64) uint16 in 8 px blocks, band 0 either side of the threshold (1000)."""
    rng = np.random.default_rng(seed)
    b0 = rng.choice([500, 2500], (H // 8, W // 8)).repeat(8, 0).repeat(8, 1)
    return np.stack([b0, np.full_like(b0, 3000)]).astype("uint16")


def test_other_resolution_and_other_crs_land_on_the_same_grid_pixels(tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    d = _blocks(5)
    grid_t = from_origin(*ORIGIN, 10.0, 10.0)
    write_raster(inbox / "native_20200601.tif", d, nodata=0, descriptions=BANDS, transform=grid_t)
    # the same ground at 20 m: every 2x2 of a block holds the block's value
    write_raster(inbox / "coarse_20200602.tif", d[:, ::2, ::2].copy(), nodata=0, descriptions=BANDS,
                 transform=from_origin(*ORIGIN, 20.0, 20.0))
    # the same ground in the neighbouring UTM zone at 7 m
    src_crs, dst_crs = CRS.from_epsg(32633), CRS.from_epsg(32634)
    left, top = ORIGIN
    t, w, h = calculate_default_transform(src_crs, dst_crs, W, H, left, top - 10 * H, left + 10 * W, top,
                                          resolution=7.0)
    other = np.zeros((2, h, w), "uint16")
    reproject(d, other, src_transform=grid_t, src_crs=src_crs, dst_transform=t, dst_crs=dst_crs,
              resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
    write_raster(inbox / "utm34_20200603.tif", other, crs="EPSG:32634", transform=t, nodata=0,
                 descriptions=BANDS)

    cfg = build_scan(config(tmp_path, model, height=H, width=W, chunk=32))
    r = run_scan(cfg, predictor_factory=predictor)
    assert r.count("processed") == 3 and not r.units_failed
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    days = list(g["time"][:])
    cls = {n: g["class"][days.index(v)] for n, v in zip(("native", "coarse", "utm34"), sorted(days))}
    truth = expected_class(d, np.ones((H, W), bool))
    np.testing.assert_array_equal(cls["native"], truth)
    np.testing.assert_array_equal(cls["coarse"], truth)  # 20 m blocks fall exactly on 10 m pixels
    both = cls["utm34"] != 255
    assert both[4:-4, 4:-4].all()  # the interior is covered (edges may fall outside the tilted scene)
    agree = (cls["utm34"][both] == truth[both]).mean()
    assert agree > 0.95, agree  # only block edges differ (nearest, twice); a shift would halve this


def test_footprint_of_a_scene_in_another_crs_contains_its_outline(tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    (tmp_path / "inbox").mkdir()
    cfg = build_scan(config(tmp_path, model, height=H, width=W))
    p = make_plan(cfg)
    from rasterio.warp import transform as warp_xy

    (lon,), (lat,) = warp_xy(CRS.from_epsg(32633), CRS.from_epsg(4326), [ORIGIN[0] + 200], [ORIGIN[1] - 200])
    lon_lat = write_raster(tmp_path / "ll.tif", np.ones((2, 10, 10), "uint16"), crs="EPSG:4326",
                           transform=from_origin(lon, lat, 0.0001, 0.0001), descriptions=BANDS)
    fp = footprint(open_raster([str(lon_lat)], None), p.grid)
    with rasterio.open(lon_lat) as ds:
        corners = [warp_xy(ds.crs, CRS.from_epsg(32633), [x], [y])
                   for x in (ds.bounds.left, ds.bounds.right) for y in (ds.bounds.bottom, ds.bounds.top)]
    a, _, c, _, e, f = p.grid.transform
    for (x,), (y,) in corners:  # every corner of the scene lies inside its footprint on the grid
        col, row = (x - c) / a, (y - f) / e
        assert fp.col_off <= col <= fp.col_end and fp.row_off <= row <= fp.row_end
    # 10 x 10 px of 0.0001 deg at 52 N is about 68 m x 111 m: 7 x 12 grid px, plus edge rounding
    assert fp.row_off in (19, 20) and fp.col_off in (19, 20) and fp.height <= 13 and fp.width <= 8
    far = write_raster(tmp_path / "far.tif", np.ones((2, 10, 10), "uint16"),
                       transform=from_origin(ORIGIN[0] + 10 * W + 50, ORIGIN[1], 10, 10), descriptions=BANDS)
    assert footprint(open_raster([str(far)], None), p.grid) is None
    half = write_raster(tmp_path / "half.tif", np.ones((2, 10, 10), "uint16"),
                        transform=from_origin(ORIGIN[0] - 50, ORIGIN[1] - 100, 10, 10), descriptions=BANDS)
    assert footprint(open_raster([str(half)], None), p.grid) == Window(10, 0, 10, 5)

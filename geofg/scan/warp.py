"""Scenes on the fixed grid: footprints, and lazy warped reads of exactly one unit's window.

A scene in any CRS or resolution is placed on the grid by GDAL's warper, never by assuming its
pixels line up: :func:`footprint` transforms the scene's bounds into the grid CRS (densified
edges) to find the grid pixels it may cover, and :class:`SceneWindowReader` opens, per unit and
per scene, a ``WarpedVRT`` whose output *is* the unit's read window (grid CRS, grid pixel size,
the window's transform). GDAL then warps only the source pixels that window needs: nothing holds
a whole scene. Several scenes of one date are composited first-valid-wins in file-name order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from geofg.errors import UnreadableRasterError
from geofg.grid import Window
from geofg.io.objects import is_remote
from geofg.io.paths import content_id, gdal_message, open_dataset
from geofg.io.read import RasterInfo, gdal_env

Affine6 = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class Grid:
    """The fixed output grid: CRS, north-up transform and size in pixels."""

    crs_wkt: str
    transform: Affine6
    height: int
    width: int

    @property
    def window(self) -> Window:
        """The whole grid as a window."""
        return Window(0, 0, self.height, self.width)

    def window_transform(self, w: Window) -> Affine6:
        """The affine of a window of the grid (may lie partly outside it)."""
        a, b, c, d, e, f = self.transform
        return (a, b, c + w.col_off * a, d, e, f + w.row_off * e)

    @property
    def pixel_area_m2(self) -> float:
        """Area of one grid pixel in CRS units squared."""
        return abs(self.transform[0] * self.transform[4])


@dataclass(frozen=True)
class Scene:
    """One validated scene ready to read: its info (from preflight) and the bands to use."""

    name: str
    info: RasterInfo
    band_indices: tuple[int, ...]
    cover: Window  # grid pixels it may cover (clipped to the grid)

    @property
    def sha256(self) -> str:
        """Content id of the scene's file: its sha256, or ``etag:…`` for an object on S3."""
        return content_id(self.info.files[0])


def footprint(info: RasterInfo, grid: Grid) -> Window | None:
    """Return the grid pixels ``info``'s raster may cover (clipped to the grid), or None if none.

    The bounds are transformed with densified edges, so a scene in another CRS gets a window
    that contains its whole (curved) outline; the warper decides which of those pixels it fills.

    Examples:
        >>> g = Grid(CRS.from_epsg(32633).to_wkt(), (10, 0, 0, 0, -10, 100), 10, 10)
        >>> info = RasterInfo(("x",), None, (("x", 1),), g.crs_wkt, (20, 0, 40, 0, -20, 60), 2, 2,
        ...                   "uint8", None, "", ())
        >>> footprint(info, g)
        Window(row_off=4, col_off=4, height=4, width=4)
    """
    left, bottom, right, top = info.bounds()
    src, dst = CRS.from_wkt(info.crs_wkt), CRS.from_wkt(grid.crs_wkt)
    if src != dst:
        try:
            left, bottom, right, top = transform_bounds(src, dst, left, bottom, right, top, densify_pts=21)
        except (RasterioError, ValueError):
            return None
        if not all(math.isfinite(v) for v in (left, bottom, right, top)):
            return None
    a, _, c, _, e, f = grid.transform
    eps = 1e-6
    c0 = math.floor((left - c) / a + eps)
    c1 = math.ceil((right - c) / a - eps)
    r0 = math.floor((top - f) / e + eps)
    r1 = math.ceil((bottom - f) / e - eps)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(r0, c0, r1 - r0, c1 - c0).intersection(grid.window)


RESAMPLING = {
    "nearest": Resampling.nearest,
    "bilinear": Resampling.bilinear,
    "cubic": Resampling.cubic,
    "average": Resampling.average,
}


class SceneWindowReader:
    """Warped, composited reads of grid windows from the scenes of one date.

    Opens its own dataset handles (one reader per thread; never pickled). ``read(window)``
    returns ``(data (C, h, w) float32, valid (h, w) bool)`` with channels in the model's order;
    ``data`` is 0 where not valid.
    """

    def __init__(self, scenes: Sequence[Scene], grid: Grid, resampling: str) -> None:
        self._grid = grid
        self._crs = CRS.from_wkt(grid.crs_wkt)
        self._resampling = RESAMPLING[resampling]
        self._scenes = sorted(scenes, key=lambda s: s.name)
        self._ds: dict[str, object] = {}
        self._remote = any(is_remote(s.info.files[0]["path"]) for s in self._scenes)
        try:
            with gdal_env(remote=self._remote):
                for s in self._scenes:
                    rec = s.info.files[0]
                    self._ds[s.name] = open_dataset(Path(rec["path"]), rec["driver"], rec["path"])
        except BaseException:
            self.close()
            raise

    def scenes_for(self, window: Window) -> list[Scene]:
        """The scenes whose footprint meets ``window``."""
        return [s for s in self._scenes if s.cover.intersection(window) is not None]

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Warp every scene meeting ``window`` onto it and composite them (first valid wins)."""
        channels = len(self._scenes[0].band_indices) if self._scenes else 0
        data = np.zeros((channels, window.height, window.width), np.float32)
        valid = np.zeros((window.height, window.width), bool)
        with gdal_env(remote=self._remote):
            for s in self.scenes_for(window):
                part, ok = self._warp(s, window)
                take = ok & ~valid
                data[:, take] = part[:, take]
                valid |= take
                if valid.all():
                    break
        return data, valid

    def _warp(self, s: Scene, window: Window) -> tuple[np.ndarray, np.ndarray]:
        ds = self._ds[s.name]
        nodata = s.info.nodata
        indexes = [s.info.band_files[i][1] for i in s.band_indices]
        try:
            with WarpedVRT(
                ds, crs=self._crs, transform=_affine(self._grid.window_transform(window)),
                width=window.width, height=window.height, resampling=self._resampling,
                src_nodata=nodata, nodata=nodata, add_alpha=nodata is None,
            ) as vrt:  # fmt: skip
                part = vrt.read(indexes, out_dtype="float32")
                # without nodata the added alpha band (the last) marks what the scene covers (its
                # mask flags still say all_valid, so dataset_mask() would not); with nodata, GDAL
                # fills uncovered pixels with it and the value test below finds them
                ok = vrt.read(vrt.count) > 0 if nodata is None else np.ones(part.shape[1:], bool)
        except RasterioError as exc:
            raise UnreadableRasterError(
                f"{s.info.paths[0]}: expected readable pixels for grid rows {window.row_off}.."
                f"{window.row_end} cols {window.col_off}..{window.col_end}, found a read error: "
                f"{gdal_message(exc)}; the file may be truncated or corrupt: re-deliver it"
            ) from exc
        if nodata is not None and not math.isnan(nodata):
            ok &= ~(part == np.float32(nodata)).any(axis=0)
        ok &= np.isfinite(part).all(axis=0)  # NaN and +-Inf are no data
        return part, ok

    def close(self) -> None:
        """Close the dataset handles (idempotent)."""
        ds, self._ds = self._ds, {}
        with gdal_env(remote=getattr(self, "_remote", False)):
            for d in ds.values():
                d.close()  # type: ignore[attr-defined]

    def __enter__(self) -> SceneWindowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _affine(t: Affine6):  # noqa: ANN202
    from affine import Affine

    return Affine(*t)

"""Raster factories for the reader tests: GeoTIFF stacks, Sentinel-2-like band-file sets."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

ORIGIN = (300000.0, 5000040.0)  # UL corner shared by every band of a set


def write_tif(path: Path, data: np.ndarray, *, crs: str | None = "EPSG:32633",
              transform: object = None, res: float = 10.0, nodata: float | None = None,
              descriptions: list[str] | None = None, driver: str = "GTiff",
              mask: np.ndarray | None = None, **profile: object) -> Path:  # fmt: skip
    """Write ``(C, H, W)`` data (no sidecars) and return the path."""
    count, height, width = data.shape
    opts: dict = {"driver": driver, "height": height, "width": width, "count": count,
                  "dtype": data.dtype.name, "crs": crs,
                  "transform": transform or Affine(res, 0.0, ORIGIN[0], 0.0, -res, ORIGIN[1])}  # fmt: skip
    if nodata is not None:
        opts["nodata"] = nodata
    if driver == "GTiff" and "tiled" not in profile and height >= 16 and width >= 16:
        opts.update(tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    opts.update(profile)
    with warnings.catch_warnings(), rasterio.Env(GDAL_PAM_ENABLED="NO", GDAL_TIFF_INTERNAL_MASK="YES"):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # tests write identity on purpose
        with rasterio.open(path, "w", **opts) as dst:
            dst.write(data)
            for i, d in enumerate(descriptions or [], 1):
                dst.set_band_description(i, d)
            if mask is not None:
                dst.write_mask(mask.astype(np.uint8) * 255)
    return path


@pytest.fixture
def tif_writer() -> Callable[..., Path]:
    """The :func:`write_tif` function (test modules do not import conftest)."""
    return write_tif


@pytest.fixture
def grid_origin() -> tuple[float, float]:
    """UL corner (x, y) every synthetic raster shares."""
    return ORIGIN


@pytest.fixture
def s2_set() -> dict[str, tuple[int, str]]:
    """Band -> (resolution m, extension) of the default synthetic band-file set."""
    return dict(S2_SET)


@pytest.fixture
def make_tif(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_tif(name, data=None, count=3, height=32, width=40, dtype=..., **write_tif)``.

    Random data from ``np.random.default_rng(seed)``, values 1..4000 (never 0) for integers.
    """

    def make(name: str = "stack.tif", data: np.ndarray | None = None, *, count: int = 3,
             height: int = 32, width: int = 40, dtype: str = "uint16", seed: int = 0,
             **kw: object) -> Path:  # fmt: skip
        if data is None:
            rng = np.random.default_rng(seed)
            if np.dtype(dtype).kind == "f":
                data = rng.normal(0, 1, (count, height, width)).astype(dtype)
            else:
                data = rng.integers(1, 4000, (count, height, width)).astype(dtype)
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_tif(path, data, **kw)  # type: ignore[arg-type]

    return make


#: band -> (resolution m, extension) of the synthetic Sentinel-2 set: 10 m is 60 x 60 pixels
S2_SET = {"B02": (10, ".tif"), "B03": (10, ".jp2"), "B05": (20, ".tif"), "B01": (60, ".tif"),
          "B8A": (20, ".tiff")}  # fmt: skip


@pytest.fixture
def make_band_set(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, np.ndarray]]]:
    """Factory: ``make_band_set(folder="IMG_DATA", bands=S2_SET, size_10m=60, prefix=...)``.

    Writes one single-band file per band, all sharing the UL corner, at 10/20/60 m (the .jp2 is
    lossless), and returns ``(folder, {band: native array (H, W)})``.
    """

    def make(folder: str = "IMG_DATA", bands: dict[str, tuple[int, str]] | None = None,
             size_10m: int = 60, prefix: str = "T33UUU_20170216T102101_",
             seed: int = 1) -> tuple[Path, dict[str, np.ndarray]]:  # fmt: skip
        root = tmp_path / folder
        root.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        arrays = {}
        for band, (res, ext) in (bands or S2_SET).items():
            n = size_10m * 10 // res
            arr = rng.integers(1, 4000, (1, n, n)).astype("uint16")
            extra = {"driver": "JP2OpenJPEG", "QUALITY": 100, "REVERSIBLE": True} if ext == ".jp2" else {}
            write_tif(root / f"{prefix}{band}{ext}", arr, res=float(res), **extra)  # type: ignore[arg-type]
            arrays[band] = arr[0]
        return root, arrays

    return make

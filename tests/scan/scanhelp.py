"""Shared helpers for the scan tests (importable as ``scanhelp``; tests/scan is on sys.path)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from geofg.models.inference.tiny import ThresholdPredictor
from rasters import write_threshold_bundle

BANDS = ["B04", "B08"]
ORIGIN = (500000.0, 5800000.0)  # grid top-left, EPSG:32633, 10 m


def threshold_bundle(folder: Path, bands: list[str] = BANDS, name: str = "threshold") -> Path:
    """A bundle whose card describes ThresholdPredictor: class 1 where band 0 * 1e-4 > 0.1."""
    return write_threshold_bundle(folder, bands, name=name)


class Dies(ThresholdPredictor):
    """Interrupts the scan (like a SIGINT) at its ``n``-th forward."""

    def __init__(self, card, n: int) -> None:  # noqa: ANN001
        super().__init__(card)
        self.n = n

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.calls + 1 == self.n:
            raise KeyboardInterrupt
        return super().predict(x)


def predictor(p: object) -> ThresholdPredictor:
    """predictor_factory for run_scan."""
    return ThresholdPredictor(p.card)  # type: ignore[attr-defined]


def config(tmp: Path, model: Path, *, height: int = 48, width: int = 64, chunk: int = 16,
           **inbox: object) -> dict:
    """A scan config dict: inbox tmp/inbox, mosaic tmp/m.zarr, grid EPSG:32633 10 m."""
    x0, y0 = ORIGIN
    return {
        "inbox": {"folder": str(tmp / "inbox"), "quiet_period_s": 0, **inbox},
        "mosaic": str(tmp / "m.zarr"),
        "grid": {"crs": "EPSG:32633", "resolution": 10, "origin": [0, 0], "chunk": chunk,
                 "extent": [x0, y0 - 10 * height, x0 + 10 * width, y0], "resampling": "nearest"},
        "model": {"model": str(model), "device": "cpu"},
        "runner": {"read_workers": 1, "prefetch": 1},
    }


def expected_class(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The class ThresholdPredictor gives raw (C, H, W) data, 255 where not valid."""
    x0 = (data[0].astype(np.float32) * np.float32(1e-4) - np.float32(0.1)) / np.float32(0.05)
    cls = (x0 > 0).astype(np.uint8)
    cls[~valid] = 255
    return cls


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path (the byte-for-byte identity)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def pixel_centre_stats(mosaic: Path, geom: object, t: int | None = None) -> dict:
    """The reference ``geofg stats`` used to be: count the pixels whose centre is in ``geom``.

    ``geom`` is a shapely or GeoJSON polygon in the mosaic's CRS; ``t`` a time slice (None: the
    latest view of a scan, or the layers of a classify mosaic). Areas in ha.
    """
    import zarr
    from affine import Affine
    from rasterio.features import rasterize

    g = zarr.open_group(str(mosaic), mode="r")
    grid = g.attrs["geofg:grid"]
    timed = bool(grid.get("time"))
    name = ("latest_" if timed and t is None else "") + "{}"
    cls = g[name.format("class")][:] if t is None else g["class"][t]
    conf = g[name.format("confidence")][:] if t is None else g["confidence"][t]
    a, _, c, _, e, f = grid["transform"]
    inside = rasterize([(geom, 1)], out_shape=cls.shape, transform=Affine(a, 0, c, 0, e, f)).astype(bool)
    ok = inside & (cls != 255)
    px_ha = abs(a * e) / 1e4
    names = grid["class_names"]
    n = np.bincount(cls[ok], minlength=len(names))[: len(names)]
    out = {"pixels": int(inside.sum()), "area_ha": round(int(inside.sum()) * px_ha, 4),
           "valid_ha": round(int(ok.sum()) * px_ha, 4),
           "majority_class": names[int(n.argmax())] if ok.any() else None,
           "mean_confidence": round(int(conf[ok].sum()) / ok.sum() / 250, 4) if ok.any() else None}
    out.update({f"{k}_ha": round(int(v) * px_ha, 4) for k, v in zip(names, n, strict=True)})
    return out


def scan_without_index(tmp: Path) -> Path:
    """A one-date scan mosaic ``tmp/m.zarr`` whose model has no red/NIR bands (B02, B03): no ndvi layer."""
    from rasterio.transform import from_origin
    from rasters import write_raster

    from geofg.scan.config import build_scan
    from geofg.scan.run import run_scan

    model = threshold_bundle(tmp, bands=["B02", "B03"])
    (tmp / "inbox").mkdir()
    d = np.random.default_rng(0).integers(1, 3000, (2, 48, 64)).astype("uint16")
    write_raster(tmp / "inbox" / "S_20200601.tif", d, nodata=0, descriptions=["B02", "B03"],
                 transform=from_origin(*ORIGIN, 10.0, 10.0))  # fmt: skip
    run_scan(build_scan(config(tmp, model)), predictor_factory=predictor)
    return tmp / "m.zarr"

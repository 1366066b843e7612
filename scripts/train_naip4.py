"""Train ``naip-4band``: a 4-band (R, G, B, NIR) land-cover bundle for NAIP, from EuroSAT chips.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_naip4.py \
        --out geofg/models/bundles/naip-4band.safetensors --init eurosat-13

There are no NAIP labels. The model learns the ten EuroSAT classes from the EuroSAT-MS chips'
bands B04, B03, B02, B08 as NAIP's R, G, B, NIR (the card names them so, in NAIP's file order), train
split for fitting, val for every choice, test scored once at the end (``--no-test`` for tuning
runs). NAIP is uint8 DN at 5 m, EuroSAT top-of-atmosphere reflectance x 10 000 at 10 m:

* radiometry: a per-band linear map DN -> reflectance that puts the ``--anchors`` percentiles of the
  NAIP scenes (``--naip``, read at 10 m with average resampling, pooled over all scenes) on the
  same percentiles of the EuroSAT train pixels (:mod:`geofg.models.inference.radiometry`). Its inverse
  renders every EuroSAT chip as NAIP-like uint8 DN (rounded, clipped to 0..255), and the network
  trains on those: the card's ``scale = 1/255`` and mean/std (of the rendered train chips) then
  take NAIP DN unchanged;
* resolution: the card says ``resolution_m = 10``; run NAIP on a 10 m grid (a scan grid with
  ``resolution: 10, resampling: average``), not at 5 m.

``--init eurosat-13`` starts the encoder, spectral branch and deep projection from the shipped
``eurosat-13`` bundle, keeping the input channels of the four bands (and of NDVI/NDWI in the
spectral branch); the heads start fresh. ``--init scratch`` starts from random weights.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BANDS = ["R", "G", "B", "NIR"]  # the card's bands: NAIP's, in NAIP's file order
S2_BANDS = ["B04", "B03", "B02", "B08"]  # the EuroSAT (Sentinel-2) bands that play their roles
PERCENTILES = (1, 2, 5, 10, 25, 50, 75, 90, 95, 98, 99)


def naip_pixels(paths: list[Path], factor: int = 2) -> tuple[list, list[dict]]:
    """Valid pixels ``(4, n)`` of each scene read at ``factor`` x its pixel size (average)."""
    import numpy as np
    import rasterio
    from rasterio.enums import Resampling

    out, meta = [], []
    for p in paths:
        with rasterio.open(p) as src:
            if src.count != 4 or src.dtypes[0] != "uint8":
                raise SystemExit(f"{p}: expected a 4-band uint8 NAIP scene (R, G, B, NIR), found "
                                 f"{src.count} bands of {src.dtypes[0]}; pass NAIP scenes with --naip")
            shape = (4, src.height // factor, src.width // factor)
            a = src.read(out_shape=shape, resampling=Resampling.average, masked=True)
            res = src.res[0] * src.width / shape[2]
        valid = ~np.ma.getmaskarray(a).any(axis=0)
        out.append(np.asarray(a.data)[:, valid].astype(np.float64))
        meta.append({"file": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                     "read_at_m": round(res, 3), "valid_px": int(valid.sum())})
    return out, meta


def subset_init(card, dst: Path) -> dict:  # noqa: ANN001
    """Write an init bundle for ``card`` from eurosat-13: its encoder, spectral branch and deep
    projection, input channels reduced to the four bands (and NDVI, NDWI); return a record."""
    import numpy as np

    from geofg.models.inference.bundle import load_tensors, read_card, write_bundle
    from geofg.models.inference.nets import build_model, spectral_index_bands
    from geofg.models.inference.registry import resolve_model

    src_path = resolve_model("eurosat-13")
    src_card = read_card(src_path)
    src = load_tensors(src_path)
    own = build_model(card).state_dict()
    band_idx = [src_card.bands.index(b) for b in S2_BANDS]
    src_idx_names = [n for n, _, _ in spectral_index_bands(src_card.bands)]
    own_idx_names = [n for n, _, _ in spectral_index_bands(card.bands)]
    spec_idx = band_idx + [len(src_card.bands) + src_idx_names.index(n) for n in own_idx_names]
    tensors, reduced = {}, []
    for name, t in own.items():
        if not name.startswith(("encoder.", "spectral.", "deep.")) or name not in src:
            continue
        v = np.asarray(src[name])
        if tuple(v.shape) == tuple(t.shape):
            tensors[name] = v
        elif v.ndim == 4 and v.shape[1] == len(src_card.bands) and t.shape[1] == len(band_idx):
            tensors[name] = np.ascontiguousarray(v[:, band_idx])
            reduced.append(name)
        elif v.ndim == 4 and v.shape[1] == len(src_card.bands) + len(src_idx_names) and t.shape[1] == len(spec_idx):
            tensors[name] = np.ascontiguousarray(v[:, spec_idx])
            reduced.append(name)
    write_bundle(dst, tensors, card)
    return {"from": "eurosat-13", "sha256": hashlib.sha256(src_path.read_bytes()).hexdigest(),
            "tensors_copied": len(tensors), "input_channels_reduced": reduced,
            "kept_channels": {"bands": S2_BANDS, "indices": own_idx_names},
            "heads": "re-initialised (not copied)"}


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915
    """Parse arguments, fit the radiometric map, train, evaluate and write the bundle."""
    data_root = Path(os.environ.get("GEOFG_DATA", "../shared/data"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_root / "eurosat_ms",
                    help="EuroSAT-MS folder with labels.csv (default: $GEOFG_DATA/eurosat_ms)")
    ap.add_argument("--naip", type=Path, default=data_root / "naip_nd_opengeos",
                    help="folder of NAIP scenes (*.tif) whose quantiles fix the radiometric map")
    ap.add_argument("--out", type=Path, default=Path("geofg/models/bundles/naip-4band.safetensors"))
    ap.add_argument("--init", choices=["scratch", "eurosat-13"], default="eurosat-13")
    ap.add_argument("--anchors", default="2,98", help="low,high percentiles matched (default 2,98)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field")
    ap.add_argument("--no-test", action="store_true", help="tuning run: do not score the test split")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from geofg.models.inference.bundle import write_bundle
    from geofg.models.training.chips import ChipSet, LabelledChips
    from geofg.models.training.features import fit_fusion, spectral_baseline
    from geofg.models.inference.predictor import load_predictor
    from geofg.models.inference.radiometry import band_quantiles, fit_quantile_map
    from geofg.models.inference.registry import publish_bundle
    from geofg.models.training.train import (
        CROP_CLASSES,
        EUROSAT_BANDS,
        EUROSAT_CLASSES,
        TrainConfig,
        band_stats,
        build_card,
        evaluate_chips,
        export_tensors,
        load_eurosat,
        normalise,
        run_summary,
        train_classifier,
    )

    cfg = TrainConfig(threads=1)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    for item in args.set:
        key, _, value = item.partition("=")
        if not hasattr(cfg, key):
            ap.error(f"unknown TrainConfig field {key!r}")
        current = getattr(cfg, key)
        setattr(cfg, key, tuple(int(v) for v in value.split(",")) if isinstance(current, tuple)
                else type(current)(value))
    torch.set_num_threads(cfg.threads)
    lo, hi = (float(v) for v in args.anchors.split(","))
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    t_all = time.perf_counter()

    # --- radiometry: NAIP DN -> EuroSAT reflectance (x 1e4), fitted on NAIP pixels + EuroSAT train
    eurosat = load_eurosat(args.data)
    sel = [EUROSAT_BANDS.index(b) for b in S2_BANDS]
    refl = {s: d.x[:, sel].astype(np.float64) for s, d in eurosat.items()}
    naip_files = sorted(args.naip.glob("*.tif"))
    if not naip_files:
        raise SystemExit(f"{args.naip}: expected NAIP scenes (*.tif), found none; pass --naip FOLDER")
    naip_px, naip_meta = naip_pixels(naip_files)
    train_px = [refl["train"].transpose(1, 0, 2, 3).reshape(len(BANDS), -1)]
    anchors_naip = band_quantiles(naip_px, [lo, hi])
    anchors_es = band_quantiles(train_px, [lo, hi])
    dn_to_refl = fit_quantile_map(anchors_naip, anchors_es)
    to_dn = dn_to_refl.inverse()
    rendered, clipped = {}, {}
    for s, x in refl.items():
        dn = to_dn.apply(x)
        clipped[s] = round(float(((dn < 0) | (dn > 255)).mean()), 5)
        rendered[s] = np.clip(np.rint(dn), 0, 255).astype(np.uint8)
    radiometry = {
        "model": "reflectance_x1e4[b] = gain[b] * NAIP_DN[b] + offset[b]; its inverse renders the "
                 "EuroSAT chips as uint8 NAIP DN (rounded, clipped) for training",
        "bands": dict(zip(BANDS, S2_BANDS, strict=True)),
        "anchors_percentiles": [lo, hi],
        "naip_anchor_dn": anchors_naip.round(2).tolist(),
        "eurosat_train_anchor_reflectance_x1e4": anchors_es.round(1).tolist(),
        **dn_to_refl.to_json(),
        "naip_scenes": naip_meta,
        "naip_percentiles": {"p": list(PERCENTILES),
                             "per_scene": [band_quantiles([p], PERCENTILES).round(1).tolist() for p in naip_px]},
        "eurosat_train_percentiles_x1e4": band_quantiles(train_px, PERCENTILES).round(0).tolist(),
        "rendered_fraction_clipped": clipped,
    }
    print(f"radiometric map (refl x1e4 = gain * DN + offset): {dn_to_refl.to_json()}", flush=True)
    print(f"clipped fraction of rendered chips: {clipped}", flush=True)

    classes = list(EUROSAT_CLASSES)
    splits = {s: ChipSet(rendered[s], d.y, d.files) for s, d in eurosat.items()}
    chips = LabelledChips(splits, classes, BANDS, args.data, "uint8", "EuroSAT rendered as NAIP DN")
    scale = 1.0 / 255.0
    mean, std = band_stats(splits["train"].x, scale)
    card = build_card(name=args.out.stem, bands=BANDS, class_names=classes,
                      colours=list(EUROSAT_CLASSES.values()), mean=mean, std=std, scale=scale,
                      encoder=cfg.encoder, patch_size=64, crop_classes=CROP_CLASSES, resolution_m=10.0)
    baseline = spectral_baseline(splits, BANDS, scale, classes, evaluate_test=not args.no_test)
    print(f"baseline (logistic regression on chip statistics): {baseline}", flush=True)

    def on_epoch(rec: dict) -> None:
        if "epoch" not in rec:
            return
        extra = f" val_acc={rec['val_accuracy']:.3f} val_nll={rec['val_nll']:.3f}" if "val_accuracy" in rec else ""
        print(f"epoch {rec['epoch']:3d}/{cfg.epochs} loss={rec['loss']:.4f} t={rec['seconds']:.0f}s{extra}",
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        init_record, init_path = None, None
        if args.init == "eurosat-13":
            init_path = Path(tmp) / "init.safetensors"
            init_record = subset_init(card, init_path)
            print(f"init: {init_record}", flush=True)
        model, card, record = train_classifier(chips, cfg, on_epoch, card=card, init=init_path)
        t_fit = time.perf_counter()
        fusion = fit_fusion(model, normalise(splits["train"].x, card), splits["train"].y,
                            normalise(splits["val"].x, card), splits["val"].y, k=len(classes), seed=cfg.seed)
        fusion["seconds"] = round(time.perf_counter() - t_fit, 1)
        print(f"fusion head: {fusion}", flush=True)
        tensors = export_tensors(model)
        draft = Path(tmp) / "draft.safetensors"
        write_bundle(draft, tensors, card)
        predictor = load_predictor(draft, device="cpu")
    val = evaluate_chips(predictor.predict, splits["val"], card)
    metrics = {
        "evaluation": "EuroSAT chips rendered as NAIP DN; chip class = argmax of the mean of "
                      "predict()'s probability map over each 64x64 chip (stored fp16 weights, CPU)",
        "val_accuracy": round(val["accuracy"], 6),
        "val_macro_f1": round(val["macro_f1"], 6),
        "baseline_spectral_logreg": baseline,
        "baseline_val_accuracy": float(baseline["val_accuracy"]),
        "naip_accuracy": "not measured: there are no NAIP labels",
    }
    print(f"val accuracy {val['accuracy']:.4f} macro-F1 {val['macro_f1']:.4f}", flush=True)
    # robustness to NAIP's year-to-year radiometry: val chips rendered with one date's own anchors
    per_date = {}
    for meta, px in zip(naip_meta, naip_px, strict=True):
        m_date = fit_quantile_map(band_quantiles([px], [lo, hi]), anchors_es).inverse()
        dn = np.clip(np.rint(m_date.apply(refl["val"])), 0, 255).astype(np.uint8)
        per_date[meta["file"]] = round(evaluate_chips(predictor.predict, ChipSet(dn, splits["val"].y, splits["val"].files),
                                                      card)["accuracy"], 4)
    metrics["val_accuracy_rendered_per_naip_date"] = per_date
    print(f"val accuracy with each NAIP date's own radiometric map: {per_date}", flush=True)
    if not args.no_test:
        test = evaluate_chips(predictor.predict, splits["test"], card)
        metrics.update({
            "test_accuracy": round(test["accuracy"], 6),
            "test_macro_f1": round(test["macro_f1"], 6),
            "test_f1_per_class": test["f1"],
            "test_confusion": {"rows": "true class", "cols": "predicted class",
                               "classes": card.class_names, "matrix": test["confusion"]},
            "baseline_test_accuracy": float(baseline["test_accuracy"]),
        })
        print(f"test accuracy {test['accuracy']:.4f} macro-F1 {test['macro_f1']:.4f}", flush=True)
    wall = round(time.perf_counter() - t_all, 1)
    training = {
        "data": str(args.data),
        "dataset": "EuroSAT-MS subset (Sentinel-2 L1C, 64x64 px at 10 m), bands B04,B03,B02,B08 "
                   "as R,G,B,NIR rendered as NAIP uint8 DN; labels.csv splits (train fits, val selects)",
        "splits": {s: len(d.y) for s, d in splits.items()},
        "normalisation": "per-band mean/std of rendered DN / 255 over the train split only",
        "radiometry": radiometry,
        "input": "NAIP R,G,B,NIR uint8 DN as delivered, on a 10 m grid (average resampling); bands "
                 "named R,G,B,NIR (e.g. a scan's inbox.bands) or unnamed in that order",
        "init": init_record or "scratch (random weights)",
        "fusion": fusion,
        **run_summary(cfg, record, wall),
    }
    final = card.model_copy(update={"training": training, "metrics": metrics,
                                    "made_by": f"scripts/train_naip4.py: {command}",
                                    "created": dt.date.today().isoformat()})
    final = type(card)(**final.model_dump())
    sha, pinned = publish_bundle(args.out, tensors, final)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) sha256 {sha}"
          f"{', pinned in MANIFEST.json' if pinned else ''}", flush=True)
    print(f"wall time {wall:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

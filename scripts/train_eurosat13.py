"""Re-create the default model bundle ``eurosat-13`` from EuroSAT-MS.

    .venv/bin/python scripts/train_eurosat13.py --data /work/shared/data/eurosat_ms \
        --out geofg/models/bundles/eurosat-13.safetensors

Trains the dense chip classifier on the train split (normalisation from train only), evaluates the
final bundle on val and, once, on test through ``TorchPredictor.predict`` (chip class = argmax of
the mean probability map over the 64x64 chip), computes the spectral-statistics logistic-regression
baseline, writes the bundle with its card and updates ``MANIFEST.json`` when the bundle goes into
the packaged bundle folder. Prints one line per epoch. ``--no-test`` is for tuning runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, evaluate and write the bundle; return the exit code."""
    default_data = Path(os.environ.get("GEOFG_DATA", "../shared/data")) / "eurosat_ms"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data,
                    help="EuroSAT-MS folder with labels.csv (default: $GEOFG_DATA/eurosat_ms)")
    ap.add_argument("--out", type=Path, default=Path("geofg/models/bundles/eurosat-13.safetensors"))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--encoder", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field (tuning runs)")
    ap.add_argument("--no-test", action="store_true",
                    help="tuning run: do not evaluate the test split")
    args = ap.parse_args(argv)

    import torch

    from geofg.models.inference.bundle import write_bundle
    from geofg.models.inference.predictor import load_predictor
    from geofg.models.inference.registry import publish_bundle
    from geofg.models.training.train import (
        EUROSAT_BANDS,
        EUROSAT_CLASSES,
        SCALE,
        TrainConfig,
        evaluate_chips,
        export_tensors,
        load_eurosat,
        run_summary,
        spectral_baseline,
        train_classifier,
    )

    cfg = TrainConfig()
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.seed is not None:
        cfg.seed = args.seed
    if args.encoder is not None:
        cfg.encoder = args.encoder
    for item in args.set:
        key, _, value = item.partition("=")
        if not hasattr(cfg, key):
            ap.error(f"unknown TrainConfig field {key!r}")
        current = getattr(cfg, key)
        if isinstance(current, tuple):
            setattr(cfg, key, tuple(int(v) for v in value.split(",")))
        else:
            setattr(cfg, key, type(current)(value))
    from geofg.models.training.features import fit_fusion
    from geofg.models.training.train import normalise

    torch.set_num_threads(cfg.threads)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])

    t_all = time.perf_counter()
    data = load_eurosat(args.data)
    sizes = {s: len(d.y) for s, d in data.items()}
    print(f"data {args.data}: {sizes}", flush=True)

    baseline = None
    if not args.no_test:
        baseline = spectral_baseline(data, EUROSAT_BANDS, SCALE, list(EUROSAT_CLASSES))
        print(f"baseline (logistic regression on chip statistics): {baseline}", flush=True)

    def on_epoch(rec: dict) -> None:
        extra = (f" val_acc={rec['val_accuracy']:.3f} val_nll={rec['val_nll']:.3f}"
                 if "val_accuracy" in rec else "")
        print(f"epoch {rec['epoch']:3d}/{cfg.epochs} loss={rec['loss']:.4f}"
              f" t={rec['seconds']:.0f}s{extra}", flush=True)

    model, card, record = train_classifier(data, cfg, on_epoch=on_epoch)
    t_fit = time.perf_counter()
    fusion = fit_fusion(model, normalise(data["train"].x, card), data["train"].y,
                        normalise(data["val"].x, card), data["val"].y, k=len(card.classes))
    fusion["seconds"] = round(time.perf_counter() - t_fit, 1)
    print(f"fusion head: {fusion}", flush=True)
    tensors = export_tensors(model)

    # Evaluate the stored (fp16) weights through the pipeline's predict() path; the card is
    # completed afterwards (the tensors, hence the predictions, do not change).
    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp) / "draft.safetensors"
        write_bundle(draft, tensors, card)
        predictor = load_predictor(draft, device="cpu")
    val = evaluate_chips(predictor.predict, data["val"], card)
    metrics = {
        "evaluation": "chip class = argmax of the mean of predict()'s probability map over each"
                      " 64x64 chip (stored fp16 weights, CPU, float32)",
        "val_accuracy": round(val["accuracy"], 6),
        "val_macro_f1": round(val["macro_f1"], 6),
    }
    print(f"val accuracy {val['accuracy']:.4f} macro-F1 {val['macro_f1']:.4f}", flush=True)
    if not args.no_test:
        test = evaluate_chips(predictor.predict, data["test"], card)
        metrics.update({
            "test_accuracy": round(test["accuracy"], 6),
            "test_macro_f1": round(test["macro_f1"], 6),
            "test_f1_per_class": test["f1"],
            "test_confusion": {"rows": "true class", "cols": "predicted class",
                               "classes": card.class_names, "matrix": test["confusion"]},
            "baseline_spectral_logreg": baseline,
            "baseline_val_accuracy": float(baseline["val_accuracy"]),
            "baseline_test_accuracy": float(baseline["test_accuracy"]),
        })
        print(f"test accuracy {test['accuracy']:.4f} macro-F1 {test['macro_f1']:.4f}", flush=True)
    wall = round(time.perf_counter() - t_all, 1)
    training = {
        "data": str(args.data),
        "dataset": "EuroSAT-MS subset (Sentinel-2 L1C, 13 bands, 64x64 px), labels.csv splits",
        "splits": sizes,
        "normalisation": "per-band mean/std of reflectance (DN * 1e-4) over the train split only",
        "fusion": fusion,
        **run_summary(cfg, record, wall),
    }
    final = card.model_copy(update={
        "training": training,
        "metrics": metrics,
        "made_by": f"scripts/train_eurosat13.py: {command}",
        "created": dt.date.today().isoformat(),
    })
    final = type(card)(**final.model_dump())  # re-validate
    sha, pinned = publish_bundle(args.out, tensors, final)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) sha256 {sha}"
          f"{', pinned in MANIFEST.json' if pinned else ''}", flush=True)
    print(f"wall time {wall:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

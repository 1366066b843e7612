"""Measure what --tta and ensembles change on a labelled split (run by hand; no assertions).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tta_ensemble.py \
        --data ../shared/data/eurosat_ms --model eurosat-13 --model /tmp/seed14.safetensors ...

Each chip goes through ``predict`` as one 64 x 64 input (normalised with the first card); the chip
class is the argmax of the mean probability map (docs/models.md). Prints accuracy, macro-F1 and
mean negative log-likelihood of: each member, each member with TTA, the ensemble of all members,
and the ensemble with TTA; plus how many chips changed class against the first member, and
seconds per 100 chips. ``.onnx`` models are accepted too.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _scores(p: np.ndarray, y: np.ndarray, k: int) -> dict[str, float]:
    pred = p.argmax(1)
    f1 = []
    for c in range(k):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    nll = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean())
    return {"acc": float((pred == y).mean()), "f1": float(np.mean(f1)), "nll": nll}


def main() -> None:
    """Parse arguments and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from geofg.models.inference.ensemble import EnsemblePredictor, TTAPredictor, load_one
    from geofg.models.tools.export import load_split
    from geofg.models.inference.registry import resolve_model

    torch.set_num_threads(args.threads)
    paths = [resolve_model(m) for m in args.model]
    members = [load_one(p, "cpu") for p in paths]
    x, y = load_split(args.data, args.split, members[0].card)
    k = len(members[0].card.classes)

    def chip_probs(pred) -> tuple[np.ndarray, float]:  # noqa: ANN001
        t0 = time.perf_counter()
        out = np.concatenate([pred.predict(x[i : i + 25]).mean(axis=(2, 3))
                              for i in range(0, len(x), 25)])
        return out, (time.perf_counter() - t0) * 100 / len(x)

    rows = []
    base = None
    variants = []
    for p, m in zip(paths, members, strict=True):
        variants += [(p.name, m), (f"{p.name} +tta", TTAPredictor(m))]
    if len(members) > 1:
        ens = EnsemblePredictor(members, [str(p) for p in paths])
        variants += [(f"ensemble of {len(members)}", ens),
                     (f"ensemble of {len(members)} +tta", TTAPredictor(ens))]
    for name, pred in variants:
        probs, secs = chip_probs(pred)
        if base is None:
            base = probs.argmax(1)
        s = _scores(probs, y, k)
        rows.append((name, s["acc"], s["f1"], s["nll"], int((probs.argmax(1) != base).sum()), secs))
    print(f"{args.split} split of {args.data}: {len(y)} chips, {args.threads} threads")
    print(f"{'model':<40} {'acc':>6} {'macroF1':>8} {'NLL':>6} {'changed':>8} {'s/100':>6}")
    for name, acc, f1, nll, changed, secs in rows:
        print(f"{name:<40} {acc:6.3f} {f1:8.3f} {nll:6.3f} {changed:8d} {secs:6.2f}")


if __name__ == "__main__":
    main()

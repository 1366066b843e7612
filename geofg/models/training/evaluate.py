"""Evaluate a patch-classification bundle on labelled chips: ``geofg evaluate``.

Each chip goes through :meth:`~geofg.models.inference.predictor.TorchPredictor.predict` (the path
``geofg classify`` uses), normalised with the bundle's card; the chip's class is the argmax of the
mean probability map over the chip. With ``tta=True`` the probability maps of the 8 dihedral
transforms of each chip are averaged first.

The report folder receives ``report.json`` (``accuracy``, ``macro_f1``, ``per_class`` name ->
``precision``/``recall``/``f1``/``support``, ``confusion_matrix`` with rows = true class and
columns = predicted class, ``class_names``, and provenance), ``confusion_matrix.png`` and
``report.md``. Every input is checked (and every prediction made) before the first file is
written; each file is written to a temporary name and renamed, so a report is never half written.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geofg.batch import normalise
from geofg.errors import ConfigError, InputError, MissingBandsError
from geofg.io.atomic import atomic_write

__all__ = ["chip_probabilities", "confusion_metrics", "evaluate_bundle", "write_report"]

REPORT_FILES = ("report.json", "confusion_matrix.png", "report.md")


def confusion_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                      class_names: Sequence[str]) -> dict[str, Any]:
    """Return accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        y_true: int ``(N,)`` true class indices.
        y_pred: int ``(N,)`` predicted class indices.
        class_names: Names in index order (``K`` classes).

    Returns:
        ``{"accuracy", "macro_f1", "per_class", "confusion_matrix", "class_names", "n"}``; the
        matrix is ``K x K`` with rows = true class, columns = predicted class. Macro F1 averages
        over classes with support > 0 (a class absent from the split is not scored).
    """
    k = len(class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    tp = np.diag(cm).astype(np.float64)
    pred_n, true_n = cm.sum(0), cm.sum(1)
    prec = np.divide(tp, pred_n, out=np.zeros(k), where=pred_n > 0)
    rec = np.divide(tp, true_n, out=np.zeros(k), where=true_n > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(k), where=(prec + rec) > 0)
    present = true_n > 0
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            n: {"precision": round(float(p), 4), "recall": round(float(r), 4),
                "f1": round(float(f), 4), "support": int(s)}
            for n, p, r, f, s in zip(class_names, prec, rec, f1, true_n, strict=True)
        },
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "n": int(cm.sum()),
    }


def _dihedral(x: np.ndarray, i: int) -> np.ndarray:
    """The ``i``-th of the 8 dihedral transforms of ``(N, C, H, W)`` (rotations, then flipped)."""
    y = np.rot90(x, i % 4, axes=(2, 3))
    return np.ascontiguousarray(y[..., ::-1] if i >= 4 else y)


def chip_probabilities(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                       batch: int = 64, tta: bool = False) -> np.ndarray:
    """Return chip class probabilities ``(N, K)``: the mean of ``predict``'s map over each chip.

    Args:
        predict: ``predict(x) -> (N, K, H, W)`` probabilities (e.g. ``TorchPredictor.predict``).
        x: float32 normalised chips ``(N, C, H, W)``.
        batch: Chips per call.
        tta: Average over the 8 dihedral transforms (flips and 90-degree rotations).
    """
    out = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        views = range(8) if tta else range(1)
        probs = sum(predict(_dihedral(xb, v)).mean(axis=(2, 3)) for v in views)
        out.append(np.asarray(probs, dtype=np.float64) / len(views))
    return np.concatenate(out)


def _select_bands(chip_bands: list[str], card_bands: list[str], where: str) -> list[int]:
    missing = [b for b in card_bands if b not in chip_bands]
    if missing:
        raise MissingBandsError(f"{where}: the model needs bands {card_bands}, the chips have"
                                f" {chip_bands} (missing {missing}); name the chip bands with"
                                " --bands or use a model for these bands")
    return [chip_bands.index(b) for b in card_bands]


def evaluate_bundle(bundle: str | Path, data: str | Path, *, split: str = "test",
                    bands: Sequence[str] | None = None, device: str = "auto",
                    batch: int = 64, tta: bool = False) -> dict[str, Any]:
    """Evaluate a bundle on one split of labelled chips (see the module docstring).

    Args:
        bundle: Bundle path or installed name.
        data: Chips (see :func:`geofg.models.training.chips.load_chips`).
        split: Which split to score (``test``, ``val``, ``train``).
        bands: Chip band names in file order; default: band descriptions, or, when the chips
            have none and as many bands as the model, the model's bands.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch: Chips per forward pass.
        tta: Average the 8 dihedral transforms of every chip.

    Returns:
        The report dict (what ``report.json`` holds).

    Raises:
        GeofgError: subclasses with exit code 3 for every bad input (nothing is written).
    """
    from geofg.models.inference.bundle import bundle_sha256
    from geofg.models.inference.predictor import load_predictor
    from geofg.models.inference.registry import resolve_model
    from geofg.models.training.chips import load_chips

    path = resolve_model(bundle)
    predictor = load_predictor(path, device=device)
    card = predictor.card
    if card.task != "patch-classification":
        raise ConfigError(f"{path}: expected a patch-classification bundle, found task"
                          f" {card.task!r}; evaluate segmentation bundles on label rasters")
    chips = load_chips(data, bands=bands, class_names=card.class_names, splits=[split],
                       default_bands=card.bands)
    if split not in chips.splits:
        raise InputError(f"{data}: expected a {split!r} split, found {sorted(chips.splits)};"
                         " pass --split")
    sel = _select_bands(chips.bands, card.bands, str(data))
    cs = chips.splits[split]
    m = card.tile_multiple
    if cs.x.shape[-1] % m:
        raise InputError(f"{data}: chips of {cs.x.shape[-1]} px; the model needs multiples of {m}"
                         f" px (it was trained on {card.patch_size} px); crop or pad the chips")
    x = normalise(cs.x[:, sel], np.ones(cs.x.shape[-2:], dtype=bool), card.scale, card.mean,
                  card.std, card.normalisation)
    probs = chip_probabilities(predictor.predict, x, batch=batch, tta=tta)
    pred = probs.argmax(1)
    report = confusion_metrics(cs.y, pred, card.class_names)
    wrong = [{"file": f, "true": card.class_names[t], "predicted": card.class_names[p],
              "probability": round(float(probs[i, p]), 3)}
             for i, (f, t, p) in enumerate(zip(cs.files, cs.y, pred, strict=True)) if t != p]
    report.update({
        "bundle": str(path),
        "bundle_name": card.name,
        "bundle_sha256": bundle_sha256(path),
        "data": str(data),
        "split": split,
        "tta": tta,
        "device": predictor.device,
        "method": "chip class = argmax of the mean of predict()'s probability map over the chip"
                  + (", averaged over the 8 dihedral transforms" if tta else ""),
        "card_metrics": {k: v for k, v in card.metrics.items() if isinstance(v, float)},
        "misclassified": wrong,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    })
    return report


def _confusion_png(report: dict[str, Any]) -> bytes:
    """Render the confusion matrix (row-normalised colour, counts as text) as PNG bytes."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    names = report["class_names"]
    cm = np.asarray(report["confusion_matrix"], dtype=np.float64)
    k = len(names)
    cell = 36
    font = ImageFont.load_default()
    label_w = 8 + 7 * max(len(n) for n in names)
    top = 40 + 7 * max(len(n) for n in names)
    title = f"rows: true class, columns: predicted; accuracy {report['accuracy']:.3f}"
    width = max(label_w + k * cell + 20, 7 * len(title) + 12)
    img = Image.new("RGB", (width, top + k * cell + 20), "white")
    draw = ImageDraw.Draw(img)
    rows = np.maximum(cm.sum(1, keepdims=True), 1)
    frac = cm / rows
    for i in range(k):
        draw.text((4, top + i * cell + cell // 2 - 5), names[i], fill="black", font=font)
        for j in range(k):
            v = frac[i, j]
            colour = (int(255 - 215 * v), int(255 - 150 * v), int(255 - 40 * v))
            x0, y0 = label_w + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline="#bbbbbb")
            text = str(int(cm[i, j]))
            draw.text((x0 + cell // 2 - 3 * len(text), y0 + cell // 2 - 5), text,
                      fill="white" if v > 0.6 else "black", font=font)
    for j, n in enumerate(names):  # column labels, rotated
        lab = Image.new("RGBA", (7 * len(n) + 6, 14), (255, 255, 255, 0))
        ImageDraw.Draw(lab).text((2, 1), n, fill="black", font=font)
        lab = lab.rotate(90, expand=True)
        img.paste(lab, (label_w + j * cell + cell // 2 - 7, top - lab.size[1] - 4), lab)
    draw.text((4, 4), title, fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _markdown(report: dict[str, Any]) -> str:
    names = report["class_names"]
    lines = [
        f"# Evaluation of `{report['bundle_name']}` on the {report['split']} split",
        "",
        f"* bundle: `{report['bundle']}` (sha256 `{report['bundle_sha256'][:16]}…`)",
        f"* data: `{report['data']}`, {report['n']} chips",
        f"* method: {report['method']}",
        "",
        f"**accuracy {report['accuracy']:.4f}**, macro F1 {report['macro_f1']:.4f}",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    for n in names:
        c = report["per_class"][n]
        lines.append(f"| {n} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} |"
                     f" {c['support']} |")
    lines += ["", "Confusion matrix (rows = true, columns = predicted; `confusion_matrix.png`):",
              "", "| true \\ predicted | " + " | ".join(names) + " |",
              "| --- |" + " --- |" * len(names)]
    for n, row in zip(names, report["confusion_matrix"], strict=True):
        lines.append(f"| {n} | " + " | ".join(str(v) for v in row) + " |")
    if report.get("misclassified"):
        lines += ["", "Misclassified chips:", "", "| file | true | predicted | p |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {w['file']} | {w['true']} | {w['predicted']} | {w['probability']:.2f} |"
                  for w in report["misclassified"]]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], report_dir: str | Path,
                 markdown: Callable[[dict[str, Any]], str] | None = None) -> list[Path]:
    """Write ``report.json``, ``confusion_matrix.png`` and ``report.md`` into ``report_dir``.

    Everything is rendered first; each file goes to a temporary name in the folder and is renamed
    into place. ``markdown`` renders report.md (default: the chip classification report).
    Returns the written paths.
    """
    report_dir = Path(report_dir)
    if report_dir.exists() and not report_dir.is_dir():
        raise ConfigError(f"{report_dir}: expected a folder for the report, found a file;"
                          " pass another --report")
    blobs = {
        "report.json": (json.dumps(report, indent=2) + "\n").encode(),
        "confusion_matrix.png": _confusion_png(report),
        "report.md": (markdown or _markdown)(report).encode(),
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, blob in blobs.items():
        atomic_write(report_dir / name, blob)
        written.append(report_dir / name)
    return written

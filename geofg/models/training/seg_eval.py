"""Evaluate a per-pixel model against dense labels: IoU per class and mIoU, optionally in a region.

``geofg evaluate BUNDLE --image SCENE --labels POLYGONS|MASK [--region minx,miny,maxx,maxy]``.

**Prediction path.** The scene is cut into the same units as ``geofg classify`` (``chunk`` px
cores, the card's halo around each, boundless reads, one tile per unit by default), normalised with
the card and run through :meth:`~geofg.models.inference.predictor.TorchPredictor.predict` and
:func:`geofg.pipeline.predict_window`; the class of a pixel is the argmax of its probabilities.
So the metrics are those of the map a user gets. Only units whose core meets the region are run,
and memory is bounded by one unit (the labels are rasterised unit by unit too).

**Metrics** over the labelled, valid pixels inside the region (unlabelled pixels, see
:mod:`geofg.models.training.seg_labels`, are ignored): confusion matrix (rows = label, columns =
prediction), per class ``IoU = TP / (TP + FP + FN)``, precision (user's accuracy), recall
(producer's accuracy) and support, pixel accuracy (overall agreement), Cohen's kappa, and ``mIoU`` = mean IoU over the classes with ``TP + FP + FN > 0`` (a class neither
labelled nor predicted in the region is not scored; one predicted but never labelled scores 0).

The report folder receives ``report.json``, ``report.md`` and ``confusion_matrix.png``, rendered
first and each renamed into place, after every prediction is made; a bad input writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geofg.errors import ConfigError, InputError
from geofg.models.training.seg_labels import IGNORE, load_labels, parse_region, region_window

__all__ = ["evaluate_segmentation", "iou_metrics", "write_seg_report"]

SEG_REPORT_FILES = ("report.json", "confusion_matrix.png", "report.md")


def iou_metrics(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class IoU/precision/recall/support, mIoU and pixel accuracy from a confusion matrix.

    Args:
        cm: ``(K, K)`` counts, rows = label, columns = prediction.
        class_names: ``K`` names.
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    gt, pred = cm.sum(1).astype(np.float64), cm.sum(0).astype(np.float64)
    union = gt + pred - tp
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)
    prec = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    rec = np.divide(tp, gt, out=np.zeros_like(tp), where=gt > 0)
    scored = union > 0
    n = int(cm.sum())
    agree = float(tp.sum() / n) if n else 0.0
    chance = float((gt * pred).sum() / n**2) if n else 0.0
    return {
        "miou": float(iou[scored].mean()) if scored.any() else 0.0,
        "pixel_accuracy": agree,
        "kappa": (agree - chance) / (1 - chance) if chance < 1 else 0.0,
        "per_class": {
            name: {"iou": round(float(i), 4) if s else None, "precision": round(float(p), 4),
                   "recall": round(float(r), 4), "support": int(g), "predicted": int(q)}
            for name, i, p, r, g, q, s in zip(class_names, iou, prec, rec, gt, pred, scored,
                                               strict=True)
        },
        "scored_classes": [name for name, s in zip(class_names, scored, strict=True) if s],
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "n": n,
    }


def evaluate_segmentation(
    bundle: str | Path, image: str | Path | Sequence[str | Path], labels: str | Path, *,
    region: str | Sequence[float] | None = None, bands: Sequence[str] | None = None,
    class_field: str | None = None, class_map: dict[str, str | None] | None = None,
    device: str = "auto", chunk: int = 1024, halo: int | None = None, batch_size: int = 1,
    predictor: Any = None, on_unit: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Score a per-pixel bundle on a scene against dense labels (see the module docstring).

    Args:
        bundle: Bundle name or path (any task: a patch classifier's dense map can be scored too).
        image: The scene.
        labels: Polygons or a class mask.
        region: Bounds ``minx,miny,maxx,maxy`` in the image CRS (default: the whole image).
        bands: Image band names in file order (default: band descriptions).
        class_field, class_map: How labels become the model's classes; default: the bundle's own
            (``card.training``), else label values equal to class names (polygons) or class
            indices (mask).
        device: ``auto``, ``cpu`` or ``cuda``.
        chunk, halo, batch_size: Tiling, as ``geofg classify`` (halo: the card's by default).
        predictor: Use this predictor instead of loading ``bundle`` (tests, ensembles).
        on_unit: Called with ``(done, total)`` after each unit.

    Returns:
        The report dict (what ``report.json`` holds).

    Raises:
        GeofgError: exit-code-3 errors for a bad bundle, image, labels or region.
    """
    from geofg.batch import normalise
    from geofg.batch import round_up as _round_up
    from geofg.grid import plan_units
    from geofg.io.read import gdal_env, open_raster, select_bands
    from geofg.io.reader import RasterReader
    from geofg.models.inference.bundle import bundle_sha256
    from geofg.models.inference.predictor import load_predictor
    from geofg.models.inference.registry import resolve_model
    from geofg.pipeline import predict_window

    path = resolve_model(bundle)
    pred = predictor if predictor is not None else load_predictor(path, device=device)
    card = pred.card
    info = open_raster(image if isinstance(image, list | tuple) else [image], bands)
    indices = select_bands(info, card.bands)
    bounds = parse_region(region)
    win = region_window(info.transform, info.height, info.width, bounds)
    trained = card.training or {}
    if class_field is None:
        class_field = trained.get("class_field")
    if class_map is None and isinstance(trained.get("class_map"), dict):
        class_map = dict(trained["class_map"])
    lab = load_labels(labels, crs_wkt=info.crs_wkt, transform=info.transform, height=info.height,
                      width=info.width, class_field=class_field, class_map=class_map,
                      class_names=card.class_names)
    if chunk <= 0 or chunk % card.tile_multiple:
        raise ConfigError(f"--chunk {chunk}: expected a positive multiple of"
                          f" {card.tile_multiple}")
    halo = card.halo if halo is None else halo
    if halo < 0:
        raise ConfigError(f"--halo {halo}: expected >= 0 pixels")
    tile = _round_up(chunk + 2 * halo, card.tile_multiple)
    overlap = min(2 * halo, tile // 2)
    units = [u for u in plan_units(info.height, info.width, chunk, halo)
             if u.core.intersection(win) is not None]
    k = len(card.classes)
    cm = np.zeros((k, k), np.int64)
    with gdal_env(), RasterReader(info, indices) as reader:
        for i, unit in enumerate(units):
            part = unit.core.intersection(win)
            assert part is not None
            y = lab.rasterise(part)
            data, valid = reader.read(unit.read)
            rel = part.relative_to(unit.read)
            keep = (y != IGNORE) & valid[rel]
            if keep.any():
                x = normalise(data, valid, card.scale, card.mean, card.std, card.normalisation)
                probs = predict_window(x, valid, pred, tile, overlap, batch_size)
                cls = probs[(slice(None), *rel)].argmax(axis=0)
                np.add.at(cm, (y[keep].astype(np.int64), cls[keep].astype(np.int64)), 1)
            if on_unit is not None:
                on_unit(i + 1, len(units))
    if cm.sum() == 0:
        raise InputError(f"{labels}: expected labelled pixels inside the image"
                         f"{' region' if bounds else ''}, found none; the labels do not overlap"
                         " the evaluated area: check --region and the labels' extent")
    report = iou_metrics(cm, card.class_names)
    report["accuracy"] = report["pixel_accuracy"]  # for the confusion-matrix title
    report.update({
        "bundle": str(path),
        "bundle_name": card.name,
        "bundle_sha256": bundle_sha256(path) if Path(path).is_file() else None,
        "task": card.task,
        "image": info.label(),
        "labels": str(labels),
        "labels_kind": lab.kind,
        "class_field": lab.class_field,
        "class_map": lab.class_map,
        "region": list(bounds) if bounds else None,
        "region_window": {"row_off": win.row_off, "col_off": win.col_off,
                          "height": win.height, "width": win.width},
        "tiling": {"chunk": chunk, "halo": halo, "tile": tile},
        "device": getattr(pred, "device", None),
        "method": "pixel class = argmax of predict()'s probabilities, scene tiled as geofg"
                  " classify does; unlabelled pixels ignored; mIoU over classes with"
                  " TP+FP+FN > 0",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    })
    return report


def _markdown(rep: dict[str, Any]) -> str:
    names = rep["class_names"]
    region = ("whole image" if rep["region"] is None
              else ",".join(f"{v:g}" for v in rep["region"]))
    lines = [
        f"# Segmentation evaluation of `{rep['bundle_name']}`",
        "",
        f"* bundle: `{rep['bundle']}`" + (f" (sha256 `{rep['bundle_sha256'][:16]}…`)"
                                          if rep.get("bundle_sha256") else ""),
        f"* image: `{rep['image']}`; labels: `{rep['labels']}` ({rep['labels_kind']}"
        + (f", class attribute `{rep['class_field']}`" if rep.get("class_field") else "") + ")",
        f"* region: {region} (window {rep['region_window']})",
        f"* {rep['n']:,} labelled pixels scored; method: {rep['method']}",
        "",
        f"**mIoU {rep['miou']:.4f}**, pixel accuracy (agreement) {rep['pixel_accuracy']:.4f},"
        f" Cohen's kappa {rep['kappa']:.4f}",
        "",
        "| class | IoU | precision (user's acc.) | recall (producer's acc.) | labelled px |"
        " predicted px |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        c = rep["per_class"][n]
        iou = "–" if c["iou"] is None else f"{c['iou']:.3f}"
        lines.append(f"| {n} | {iou} | {c['precision']:.3f} | {c['recall']:.3f} |"
                     f" {c['support']:,} | {c['predicted']:,} |")
    lines += ["", "Confusion matrix (pixels; rows = label, columns = prediction):", "",
              "| label \\ predicted | " + " | ".join(names) + " |",
              "| --- |" + " --- |" * len(names)]
    for n, row in zip(names, rep["confusion_matrix"], strict=True):
        lines.append(f"| {n} | " + " | ".join(str(v) for v in row) + " |")
    if rep.get("class_map"):
        lines += ["", "Class map: " + ", ".join(f"{s} → {d or '(unlabelled)'}"
                                                 for s, d in rep["class_map"].items())]
    return "\n".join(lines) + "\n"


def write_seg_report(report: dict[str, Any], report_dir: str | Path) -> list[Path]:
    """Write ``report.json``, ``confusion_matrix.png`` and ``report.md`` into ``report_dir``."""
    from geofg.models.training.evaluate import write_report

    return write_report(report, report_dir, markdown=_markdown)


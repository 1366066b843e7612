"""Train the default patch classifier (``eurosat-13``) and its spectral baseline on EuroSAT-MS.

Library code behind ``scripts/train_eurosat13.py``. The data are the EuroSAT-MS chips described in
``../shared/data/README.md``: 64x64 px Sentinel-2 L1C, 13 bands (uint16 reflectance x 10000) in
file order ``B01..B12, B8A``, with a ``labels.csv`` giving ``file,label,split``.

Rules kept here: normalisation statistics come from the *train* split only; hyper-parameters were
chosen on *val*; *test* is evaluated once, on the final bundle, through the same
:meth:`~geofg.models.predictor.TorchPredictor.predict` path the pipeline uses.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geofg.errors import ConfigError
from geofg.models.card import ClassInfo, ModelCard
from geofg.models.nets import SPECTRAL_INDICES, build_model

__all__ = [
    "EUROSAT_BANDS",
    "EUROSAT_CLASSES",
    "EuroSat",
    "TrainConfig",
    "classification_metrics",
    "evaluate_chips",
    "load_eurosat",
    "spectral_baseline",
    "train_classifier",
]

log = logging.getLogger(__name__)

EUROSAT_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
                 "B12", "B8A"]  # fmt: skip
"""Band order of the EuroSAT-MS GeoTIFFs (B8A last)."""

EUROSAT_CLASSES: dict[str, str] = {
    "AnnualCrop": "#e6c229",  # arable land: yellow
    "Forest": "#1b5e20",  # dark green
    "HerbaceousVegetation": "#9ccc65",  # light green
    "Highway": "#757575",  # grey
    "Industrial": "#8e24aa",  # purple-magenta (industrial/commercial)
    "Pasture": "#c5e1a5",  # pale green
    "PermanentCrop": "#f57c00",  # orchards/vineyards: orange
    "Residential": "#d32f2f",  # red
    "River": "#4fc3f7",  # light blue
    "SeaLake": "#0d47a1",  # dark blue
}
"""EuroSAT classes (label names as in labels.csv) and their display colours."""

CROP_CLASSES = ["AnnualCrop", "PermanentCrop", "Pasture", "HerbaceousVegetation"]
SCALE = 1e-4


@dataclass
class EuroSat:
    """EuroSAT-MS chips of one split.

    Attributes:
        x: uint16 ``(N, 13, 64, 64)`` raw digital numbers, bands in :data:`EUROSAT_BANDS` order.
        y: int64 ``(N,)`` class index into :data:`EUROSAT_CLASSES`.
        files: relative file names, same order.
    """

    x: np.ndarray
    y: np.ndarray
    files: list[str]


def load_eurosat(data_dir: str | Path) -> dict[str, EuroSat]:
    """Read every chip listed in ``labels.csv`` into memory, grouped by split.

    Raises:
        ConfigError: The folder, ``labels.csv`` or a chip is missing, or a chip has another shape.
    """
    import rasterio

    root = Path(data_dir)
    labels = root / "labels.csv"
    if not labels.is_file():
        raise ConfigError(
            f"expected EuroSAT-MS with labels.csv in {root}, found no such file; pass --data"
            " <shared>/data/eurosat_ms or set GEOFG_DATA"
        )
    names = list(EUROSAT_CLASSES)
    rows: dict[str, list[tuple[str, int]]] = {}
    with labels.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["label"] not in names:
                raise ConfigError(f"{labels}: unknown label {row['label']!r}; expected {names}")
            rows.setdefault(row["split"], []).append((row["file"], names.index(row["label"])))
    out = {}
    for split, items in rows.items():
        xs = []
        for rel, _ in items:
            with rasterio.open(root / rel) as ds:
                arr = ds.read()
            if arr.shape != (13, 64, 64):
                raise ConfigError(f"{root / rel}: expected 13x64x64, found {arr.shape}")
            xs.append(arr)
        out[split] = EuroSat(
            np.stack(xs).astype(np.uint16),
            np.array([c for _, c in items], dtype=np.int64),
            [f for f, _ in items],
        )
    return out


def band_stats(x: np.ndarray, scale: float = SCALE) -> tuple[list[float], list[float]]:
    """Return per-band mean and std of ``x * scale`` over all chips and pixels (train split)."""
    v = x.astype(np.float64) * scale
    mean = v.mean(axis=(0, 2, 3))
    std = v.std(axis=(0, 2, 3))
    return [float(m) for m in mean], [float(max(s, 1e-6)) for s in std]


# --- metrics --------------------------------------------------------------------------------


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           class_names: Sequence[str]) -> dict[str, Any]:
    """Return accuracy, macro F1, per-class F1 and the confusion matrix (rows = truth)."""
    k = len(class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(np.float64)
    prec = np.divide(tp, cm.sum(0), out=np.zeros(k), where=cm.sum(0) > 0)
    rec = np.divide(tp, cm.sum(1), out=np.zeros(k), where=cm.sum(1) > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(k), where=(prec + rec) > 0)
    return {
        "accuracy": float(tp.sum() / cm.sum()),
        "macro_f1": float(f1.mean()),
        "f1": {n: round(float(v), 4) for n, v in zip(class_names, f1, strict=True)},
        "confusion": cm.tolist(),
    }


# --- spectral-statistics logistic regression baseline -----------------------------------------


def chip_statistics(x: np.ndarray, bands: Sequence[str] = EUROSAT_BANDS,
                    scale: float = SCALE) -> np.ndarray:
    """Per-chip features: mean and std of every band and of every spectral index; ``(N, F)``."""
    refl = x.astype(np.float64) * scale
    feats = [refl.mean(axis=(2, 3)), refl.std(axis=(2, 3))]
    for a, b in SPECTRAL_INDICES.values():
        ra, rb = refl[:, bands.index(a)], refl[:, bands.index(b)]
        nd = np.clip((ra - rb) / np.maximum(np.abs(ra + rb), 1e-3), -1, 1)
        feats += [nd.mean(axis=(1, 2))[:, None], nd.std(axis=(1, 2))[:, None]]
    return np.concatenate(feats, axis=1)


def _fit_logreg(f: np.ndarray, y: np.ndarray, k: int, l2: float) -> tuple[torch.Tensor, ...]:
    """Fit multinomial logistic regression with L2 by L-BFGS (full batch, deterministic)."""
    xt = torch.from_numpy(f)
    yt = torch.from_numpy(y)
    w = torch.zeros(f.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w + b, yt) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def spectral_baseline(data: dict[str, EuroSat], l2_grid: Sequence[float] = (
        1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)) -> dict[str, Any]:
    """Logistic regression on per-chip band and index statistics; L2 tuned on val, test once.

    Returns:
        ``{"features", "l2", "val_accuracy", "test_accuracy", "test_macro_f1", "seconds"}``.
    """
    t0 = time.perf_counter()
    names = list(EUROSAT_CLASSES)
    feats = {s: chip_statistics(d.x) for s, d in data.items()}
    mu, sd = feats["train"].mean(0), feats["train"].std(0) + 1e-9
    z = {s: (f - mu) / sd for s, f in feats.items()}
    best = None
    for l2 in l2_grid:
        w, b = _fit_logreg(z["train"], data["train"].y, len(names), l2)
        pred = (torch.from_numpy(z["val"]) @ w + b).argmax(1).numpy()
        acc = float((pred == data["val"].y).mean())
        log.info("baseline l2=%g val_accuracy=%.3f", l2, acc)
        if best is None or acc > best[0]:
            best = (acc, l2, w, b)
    assert best is not None
    acc, l2, w, b = best
    pred = (torch.from_numpy(z["test"]) @ w + b).argmax(1).numpy()
    m = classification_metrics(data["test"].y, pred, names)
    return {
        "model": "multinomial logistic regression (L-BFGS, L2 tuned on val)",
        "features": f"per-chip mean and std of 13 bands and {len(SPECTRAL_INDICES)} indices"
                    f" ({', '.join(SPECTRAL_INDICES)}) = {z['train'].shape[1]} features",
        "l2": l2,
        "val_accuracy": round(acc, 4),
        "test_accuracy": round(m["accuracy"], 4),
        "test_macro_f1": round(m["macro_f1"], 4),
        "seconds": round(time.perf_counter() - t0, 2),
    }


# --- the CNN ----------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_classifier` (chosen on the val split)."""

    encoder: str = "tu-mobilenetv4_conv_small"
    epochs: int = 150
    chips_per_step: int = 36  # divisible by 1, 4 and 9: one step = 36 chips in any mosaic size
    mosaic: tuple[int, ...] = (1, 2, 3)  # canvas sizes in chips per side, cycled step by step
    lr: float = 2e-3
    weight_decay: float = 0.3
    label_smoothing: float = 0.1
    warmup_epochs: int = 5
    ema_decay: float = 0.99
    gain_sigma: float = 0.02  # per-band multiplicative noise on reflectance
    global_gain_sigma: float = 0.05  # one brightness factor per chip
    offset_sigma: float = 0.001  # per-band additive noise on reflectance (scaled units)
    seed: int = 13
    threads: int = 2
    eval_every: int = 10


def mosaic_batch(x: torch.Tensor, g: int) -> torch.Tensor:
    """Tile chips ``(B * g * g, C, P, P)`` into canvases ``(B, C, g * P, g * P)``, row-major."""
    n, c, p, _ = x.shape
    b = n // (g * g)
    return x.view(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * p, g * p)


def mosaic_chip_logits(model: torch.nn.Module, canvas: torch.Tensor, g: int) -> torch.Tensor:
    """Logits of the chips of :func:`mosaic_batch` canvases through the *dense* path.

    The windows aligned with the chips (every ``window_cells``-th window) are the chips' logits;
    returns ``(B * g * g, K)`` in the chips' original order.
    """
    win = model.window_logits(canvas)  # (B, K, g*k - k + 1, ...)
    k = model.window_cells
    aligned = win[:, :, ::k, ::k]  # (B, K, g, g)
    return aligned.permute(0, 2, 3, 1).reshape(-1, aligned.shape[1])


def make_card(mean: list[float], std: list[float], encoder: str, **extra: Any) -> ModelCard:
    """Return the eurosat-13 card skeleton (metrics and provenance are filled in later)."""
    return ModelCard(
        name="eurosat-13",
        version="1.0.0",
        task="patch-classification",
        architecture="fcn-classifier",
        encoder=encoder,
        bands=EUROSAT_BANDS,
        scale=SCALE,
        mean=mean,
        std=std,
        classes=[ClassInfo(name=n, colour=c) for n, c in EUROSAT_CLASSES.items()],
        crop_classes=CROP_CLASSES,
        tile_multiple=32,
        tile_size=512,
        halo=64,
        patch_size=64,
        resolution_m=10.0,
        **extra,
    )


def _augment(refl: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random dihedral transform and radiometric jitter of a reflectance batch ``(N, C, H, W)``."""
    n, c = refl.shape[:2]
    out = torch.empty_like(refl)
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    for i in range(n):
        img = torch.rot90(refl[i], int(k[i]), dims=(1, 2))
        out[i] = torch.flip(img, dims=(2,)) if flip[i] else img
    gain = 1 + cfg.gain_sigma * torch.randn(n, c, 1, 1, generator=gen)
    gain = gain * (1 + cfg.global_gain_sigma * torch.randn(n, 1, 1, 1, generator=gen))
    offset = cfg.offset_sigma * torch.randn(n, c, 1, 1, generator=gen)
    return out * gain + offset


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def chip_predict(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                 batch: int = 50) -> np.ndarray:
    """Chip classes through the dense path: argmax of the mean probability map of each chip.

    Args:
        predict: A ``predict(x) -> (N, K, H, W)`` probability function (e.g. TorchPredictor).
        x: float32 normalised chips ``(N, C, 64, 64)``.
    """
    preds = []
    for i in range(0, len(x), batch):
        probs = predict(x[i : i + batch])
        preds.append(probs.mean(axis=(2, 3)).argmax(1))
    return np.concatenate(preds)


def normalise(x: np.ndarray, card: ModelCard) -> np.ndarray:
    """Return ``(x * scale - mean) / std`` as float32 ``(N, C, H, W)``."""
    mean = np.asarray(card.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(card.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((x.astype(np.float32) * np.float32(card.scale)) - mean) / std


def evaluate_chips(predict: Callable[[np.ndarray], np.ndarray], data: EuroSat,
                   card: ModelCard) -> dict[str, Any]:
    """Metrics of the chip predictions of ``predict`` on one split (dense path, mean prob map)."""
    pred = chip_predict(predict, normalise(data.x, card))
    return classification_metrics(data.y, pred, card.class_names)


def train_classifier(data: dict[str, EuroSat], cfg: TrainConfig,
                     on_epoch: Callable[[dict[str, Any]], None] | None = None,
                     ) -> tuple[torch.nn.Module, ModelCard, dict[str, Any]]:
    """Train the dense chip classifier on the train split.

    Returns:
        The EMA model (eval mode, float32), the card skeleton (train-split normalisation) and a
        training record (epochs, seconds, val accuracy history).
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = data["train"]
    mean, std = band_stats(train.x)
    card = make_card(mean, std, cfg.encoder)
    model = build_model(card)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    refl = torch.from_numpy(train.x.astype(np.float32) * np.float32(SCALE))
    labels = torch.from_numpy(train.y)
    val_x = torch.from_numpy(normalise(data["val"].x, card))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    if any(cfg.chips_per_step % (g * g) for g in cfg.mosaic):
        raise ConfigError(f"chips_per_step {cfg.chips_per_step} must be divisible by g*g for"
                          f" every mosaic size g in {cfg.mosaic}")
    n = len(labels)
    steps_per_epoch = n // cfg.chips_per_step  # whole steps only (BatchNorm)
    total = steps_per_epoch * cfg.epochs
    k = len(card.classes)
    step = 0
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        run_loss = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.chips_per_step : (s + 1) * cfg.chips_per_step]
            xb = (_augment(refl[idx], cfg, gen) - mean_t) / std_t
            yb = F.one_hot(labels[idx], k).float()
            yb = yb * (1 - cfg.label_smoothing) + cfg.label_smoothing / k
            g = cfg.mosaic[step % len(cfg.mosaic)]
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, cfg.warmup_epochs * steps_per_epoch, cfg.lr)
            logits = mosaic_chip_logits(model, mosaic_batch(xb, g), g)
            loss = torch.sum(-yb * F.log_softmax(logits, dim=1), dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            d = min(cfg.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - d)
                for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
                    be.copy_(bm)
            run_loss += float(loss.detach())
        rec: dict[str, Any] = {"epoch": epoch, "loss": round(run_loss / steps_per_epoch, 4),
                               "seconds": round(time.perf_counter() - t0, 1)}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            with torch.inference_mode():
                probs = torch.softmax(ema(val_x), dim=1).mean(dim=(2, 3))
            yv = torch.from_numpy(data["val"].y)
            rec["val_accuracy"] = round(float((probs.argmax(1) == yv).float().mean()), 4)
            rec["val_nll"] = round(float(-probs[torch.arange(len(yv)), yv].clamp_min(1e-8).log()
                                         .mean()), 4)
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
    record = {
        "config": asdict(cfg),
        "epochs": cfg.epochs,
        "steps": step,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "val_history": [(h["epoch"], h["val_accuracy"]) for h in history if "val_accuracy" in h],
    }
    return ema.float().eval(), card, record


def export_tensors(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Return the model's state dict as numpy, floating tensors stored as float16."""
    out = {}
    for k, v in model.state_dict().items():
        t = v.detach().cpu()
        if t.is_floating_point():
            f16 = t.to(torch.float16)
            if not torch.isfinite(f16).all():
                raise ConfigError(f"tensor {k!r} overflows float16; store it as float32")
            t = f16
        out[k] = t.numpy().copy()
    return out

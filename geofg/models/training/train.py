"""Train patch classifiers (``geofg train classifier``), including the default ``eurosat-13``.

Data are labelled chips (:mod:`geofg.models.training.chips`): a labels CSV or a folder per class, any band
count, bands named. The network is the dense chip classifier ``fcn-classifier``
(:class:`~geofg.models.inference.nets.DenseChipClassifier`), trained through its *dense* path on mosaics of
chips so that it also works over whole scenes (docs/models.md).

Rules kept here: normalisation statistics come from the *train* split only and go into the card;
the val split picks the best epoch (early stopping) and nothing else is fitted on it; the test
split is never read by training. Training is deterministic for a given seed and device, and
resumable: with a checkpoint folder, the state is saved (safetensors + JSON, never pickles) at
every evaluation and a restarted run continues from the last one with identical results.

Augmentation for overhead imagery: the 8 dihedral transforms (flips, 90-degree rotations), random
crops (shifts of up to ``crop_px`` with reflected borders), per-band and per-chip gain and
per-band offset noise on reflectance. Class weighting: inverse class frequency in the loss.
On CUDA the forward runs under bf16 autocast (mixed precision); on CPU in float32.
"""

from __future__ import annotations

import copy
import hashlib
import json
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

from geofg.batch import normalise as batch_normalise
from geofg.errors import BandCountMismatchError, ConfigError, MissingBandsError
from geofg.models.inference.card import ClassInfo, ModelCard
from geofg.models.training.chips import ChipSet, LabelledChips, default_scale, load_chips
from geofg.models.training.evaluate import confusion_metrics
from geofg.models.training.features import chip_statistics, spectral_baseline
from geofg.models.inference.nets import build_model

__all__ = [
    "EUROSAT_BANDS",
    "EUROSAT_CLASSES",
    "EuroSat",
    "TrainConfig",
    "build_card",
    "chip_statistics",
    "classification_metrics",
    "evaluate_chips",
    "export_tensors",
    "load_eurosat",
    "make_card",
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

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
           "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]  # fmt: skip
"""Display colours for classes without one (tab20), cycled."""

EuroSat = ChipSet
"""The chips of one EuroSAT split (kept name; see :class:`~geofg.models.training.chips.ChipSet`)."""


def load_eurosat(data_dir: str | Path) -> dict[str, ChipSet]:
    """Read the EuroSAT-MS chips listed in ``labels.csv``, grouped by split (13 bands, 64 px)."""
    chips = load_chips(data_dir, bands=EUROSAT_BANDS, class_names=list(EUROSAT_CLASSES))
    return chips.splits


def band_stats(x: np.ndarray, scale: float = SCALE) -> tuple[list[float], list[float]]:
    """Return per-band mean and std of ``x * scale`` over all chips and pixels (train split)."""
    v = x.astype(np.float64) * scale
    mean = v.mean(axis=(0, 2, 3))
    std = v.std(axis=(0, 2, 3))
    return [float(m) for m in mean], [float(max(s, 1e-6)) for s in std]


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           class_names: Sequence[str]) -> dict[str, Any]:
    """Return accuracy, macro F1, per-class F1 and the confusion matrix (rows = truth)."""
    m = confusion_metrics(y_true, y_pred, class_names)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "f1": {n: v["f1"] for n, v in m["per_class"].items()},
            "confusion": m["confusion_matrix"]}


# --- cards ------------------------------------------------------------------------------------


def build_card(*, name: str, bands: Sequence[str], class_names: Sequence[str], mean: list[float],
               std: list[float], scale: float, encoder: str, patch_size: int,
               colours: Sequence[str] | None = None, crop_classes: Sequence[str] = (),
               resolution_m: float | None = None, **extra: Any) -> ModelCard:
    """Return a patch-classifier card skeleton (metrics and provenance are filled in later)."""
    colours = list(colours) if colours else [PALETTE[i % len(PALETTE)]
                                             for i in range(len(class_names))]
    return ModelCard(
        name=name, version="1.0.0", task="patch-classification", architecture="fcn-classifier",
        encoder=encoder, bands=list(bands), scale=scale, mean=mean, std=std,
        classes=[ClassInfo(name=n, colour=c) for n, c in zip(class_names, colours, strict=True)],
        crop_classes=list(crop_classes), tile_multiple=32, tile_size=512,
        halo=max(64, patch_size), patch_size=patch_size, resolution_m=resolution_m, **extra,
    )


def make_card(mean: list[float], std: list[float], encoder: str, **extra: Any) -> ModelCard:
    """Return the eurosat-13 card skeleton (metrics and provenance are filled in later)."""
    return build_card(name="eurosat-13", bands=EUROSAT_BANDS, class_names=list(EUROSAT_CLASSES),
                      colours=list(EUROSAT_CLASSES.values()), mean=mean, std=std, scale=SCALE,
                      encoder=encoder, patch_size=64, crop_classes=CROP_CLASSES,
                      resolution_m=10.0, **extra)


# --- the training loop ------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_classifier` (the defaults are the eurosat-13 recipe)."""

    encoder: str = "tu-mobilenetv4_conv_small"
    epochs: int = 120
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
    crop_px: int = 4  # random crop: shift by up to this many px, borders reflected
    class_weighting: bool = True  # inverse class frequency in the loss
    patience: int = 0  # early stopping: evaluations without val improvement (0 = off)
    seed: int = 13
    threads: int = 2
    eval_every: int = 10
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto"


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


def _augment(refl: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random dihedral transform, crop (shift) and radiometric jitter of ``(N, C, H, W)``."""
    n, c, h, w = refl.shape
    out = torch.empty_like(refl)
    k = torch.randint(0, 4, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    r = cfg.crop_px
    shift = torch.randint(0, 2 * r + 1, (n, 2), generator=gen) if r else None
    padded = F.pad(refl, (r, r, r, r), mode="reflect") if r else refl
    for i in range(n):
        img = padded[i]
        if shift is not None:
            dy, dx = int(shift[i, 0]), int(shift[i, 1])
            img = img[:, dy : dy + h, dx : dx + w]
        img = torch.rot90(img, int(k[i]), dims=(1, 2))
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


def normalise(x: np.ndarray, card: ModelCard) -> np.ndarray:
    """Return chips ``(N, C, H, W)`` normalised as the card says (:func:`geofg.batch.normalise`)."""
    valid = np.ones(x.shape[-2:], dtype=bool)
    return batch_normalise(x, valid, card.scale, card.mean, card.std, card.normalisation)


def chip_predict(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                 batch: int = 50) -> np.ndarray:
    """Chip classes through the dense path: argmax of the mean probability map of each chip."""
    preds = []
    for i in range(0, len(x), batch):
        preds.append(predict(x[i : i + batch]).mean(axis=(2, 3)).argmax(1))
    return np.concatenate(preds)


def evaluate_chips(predict: Callable[[np.ndarray], np.ndarray], data: ChipSet,
                   card: ModelCard) -> dict[str, Any]:
    """Metrics of the chip predictions of ``predict`` on one split (dense path, mean prob map)."""
    pred = chip_predict(predict, normalise(data.x, card))
    return classification_metrics(data.y, pred, card.class_names)


def _fingerprint(chips: LabelledChips, cfg: TrainConfig, card: ModelCard,
                 init: str | None, freeze_encoder: bool) -> str:
    h = hashlib.sha256()
    for split in ("train", "val"):
        if split in chips.splits:
            cs = chips.splits[split]
            h.update(split.encode())
            h.update(json.dumps([cs.files, cs.y.tolist()]).encode())
            h.update(hashlib.sha256(np.ascontiguousarray(cs.x).tobytes()).digest())
    cfg_d = {k: v for k, v in asdict(cfg).items() if k not in ("epochs", "threads", "device")}
    h.update(json.dumps([cfg_d, card.bands, card.class_names, card.encoder, init,
                         freeze_encoder], sort_keys=True, default=list).encode())
    return h.hexdigest()


def _load_init(model: torch.nn.Module, init: str | Path, card: ModelCard) -> list[str]:
    """Copy an existing bundle's weights into ``model``; return the names of skipped tensors.

    Raises:
        MissingBandsError / BandCountMismatchError: The bundle expects other bands.
        ConfigError: Another architecture or encoder.
    """
    from geofg.models.inference.bundle import load_tensors, read_card
    from geofg.models.inference.registry import resolve_model

    path = resolve_model(init)
    src = read_card(path)
    if src.bands != card.bands:
        cls = BandCountMismatchError if len(src.bands) != len(card.bands) else MissingBandsError
        raise cls(f"{path}: --init bundle expects bands {src.bands}, the data has {card.bands};"
                  " use a bundle for these bands or name the chip bands with --bands")
    if (src.architecture, src.encoder) != ("fcn-classifier", card.encoder):
        raise ConfigError(f"{path}: --init bundle is {src.architecture}/{src.encoder}, expected"
                          f" fcn-classifier/{card.encoder}; pass --encoder {src.encoder}")
    tensors = load_tensors(path)
    own = model.state_dict()
    state, skipped = {}, []
    for k, v in tensors.items():
        t = torch.from_numpy(np.array(v))
        if k in own and own[k].shape == t.shape:
            state[k] = t.to(own[k].dtype)
        else:
            skipped.append(k)
    model.load_state_dict(state, strict=False)
    return skipped


def train_classifier(
    data: LabelledChips | dict[str, ChipSet],
    cfg: TrainConfig,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    *,
    card: ModelCard | None = None,
    checkpoint_dir: str | Path | None = None,
    init: str | Path | None = None,
    freeze_encoder: bool = False,
) -> tuple[torch.nn.Module, ModelCard, dict[str, Any]]:
    """Train the dense chip classifier on the train split (module docstring has the rules).

    Args:
        data: Labelled chips (or EuroSAT splits, which get the eurosat-13 card).
        cfg: Hyper-parameters.
        on_epoch: Called after every epoch with ``{"epoch", "loss", "seconds"[, "val_accuracy",
            "val_nll", "best"]}`` (and ``{"resumed_from": epoch}`` once when resuming).
        card: Card skeleton to train for; default: built from the data with train statistics.
        checkpoint_dir: Save resumable state here at every evaluation; resume from it if present.
        init: Bundle to start from (transfer learning); same bands and encoder.
        freeze_encoder: Train only the non-encoder parts (encoder BatchNorm kept in eval mode).

    Returns:
        The best model by val accuracy (EMA weights, eval mode, float32, on CPU), its card and a
        training record.
    """
    from geofg.models.training.checkpoint import load_checkpoint, restore_optimizer, save_checkpoint
    from geofg.models.inference.predictor import resolve_device

    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if isinstance(data, dict):
        chips = LabelledChips(data, list(EUROSAT_CLASSES), EUROSAT_BANDS, Path("."), "uint16",
                              "EuroSAT")
    else:
        chips = data
    train = chips.splits["train"]
    if card is None:
        mean, std = band_stats(train.x)
        card = make_card(mean, std, cfg.encoder)
    if any(cfg.chips_per_step % (g * g) for g in cfg.mosaic):
        raise ConfigError(f"chips_per_step {cfg.chips_per_step} must be divisible by g*g for"
                          f" every mosaic size g in {cfg.mosaic}")
    model = build_model(card)
    skipped = _load_init(model, init, card) if init is not None else []
    model = model.to(device)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    if freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    mean_t = torch.tensor(card.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(card.std, dtype=torch.float32).view(1, -1, 1, 1)
    refl = torch.from_numpy(train.x.astype(np.float32) * np.float32(card.scale))
    labels = torch.from_numpy(train.y)
    k = len(card.classes)
    counts = torch.bincount(labels, minlength=k).double()
    class_w = (len(labels) / (k * counts.clamp_min(1))).float() if cfg.class_weighting else (
        torch.ones(k))
    val = chips.splits.get("val")
    val_x = torch.from_numpy(normalise(val.x, card)) if val is not None else None
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    n = len(labels)
    cps = cfg.chips_per_step
    steps_per_epoch = max(1, n // cps)  # whole steps only (BatchNorm)
    total = steps_per_epoch * cfg.epochs
    fingerprint = _fingerprint(chips, cfg, card, str(init) if init else None, freeze_encoder)
    step, start_epoch, history, best, best_state, since_best = 0, 1, [], None, None, 0
    t_prev = 0.0
    if checkpoint_dir is not None:
        loaded = load_checkpoint(checkpoint_dir)
        if loaded is not None:
            st, tens = loaded
            if st.get("fingerprint") != fingerprint:
                raise ConfigError(f"{checkpoint_dir}: the checkpoint was made with other data,"
                                  " bands, classes or settings; delete it or pass another"
                                  " --checkpoint-dir")
            model.load_state_dict(tens["model"])
            ema.load_state_dict(tens["ema"])
            best_state = tens["best"] or None
            restore_optimizer(opt, st, tens["opt"])
            gen.set_state(tens["rng"]["gen"])
            torch.set_rng_state(tens["rng"]["torch"])
            step, start_epoch, history = st["step"], st["epoch"] + 1, st["history"]
            best, since_best, t_prev = st["best"], st["since_best"], st["seconds"]
            if on_epoch is not None:
                on_epoch({"resumed_from": st["epoch"]})
    t0 = time.perf_counter() - t_prev
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs + 1):
        if best is not None and cfg.patience and since_best >= cfg.patience:
            stopped_early = True
            break
        model.train()
        if freeze_encoder:
            model.encoder.eval()
        perm = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-cps // n))])
        run_loss = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * cps : (s + 1) * cps] if n >= cps else perm[:cps]
            xb = ((_augment(refl[idx], cfg, gen) - mean_t) / std_t).to(device)
            yb = F.one_hot(labels[idx], k).float()
            yb = (yb * (1 - cfg.label_smoothing) + cfg.label_smoothing / k).to(device)
            wb = class_w[labels[idx]].to(device)
            g = cfg.mosaic[step % len(cfg.mosaic)]
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, cfg.warmup_epochs * steps_per_epoch, cfg.lr)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                logits = mosaic_chip_logits(model, mosaic_batch(xb, g), g)
            ce = torch.sum(-yb * F.log_softmax(logits.float(), dim=1), dim=1)
            loss = (ce * wb).sum() / wb.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            ema_update(ema, model, step, cfg.ema_decay)
            run_loss += float(loss.detach())
        rec: dict[str, Any] = {"epoch": epoch, "loss": round(run_loss / steps_per_epoch, 4),
                               "seconds": round(time.perf_counter() - t0, 1)}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            if val_x is not None:
                probs = _chip_probs(ema, val_x, device)
                yv = torch.from_numpy(val.y)
                acc = float((probs.argmax(1) == yv).float().mean())
                nll = float(-probs[torch.arange(len(yv)), yv].clamp_min(1e-8).log().mean())
                rec.update(val_accuracy=round(acc, 4), val_nll=round(nll, 4))
                score = [acc, -nll]
            else:
                score = [float(epoch), 0.0]  # no val split: the last epoch is the best
            if best is None or score > best:
                best, since_best = score, 0
                best_state = {kk: v.detach().cpu().clone() for kk, v in ema.state_dict().items()}
                rec["best"] = True
            else:
                since_best += 1
            if checkpoint_dir is not None:
                save_checkpoint(
                    checkpoint_dir, model=model, ema=ema, best=best_state, opt=opt,
                    generators={"gen": gen.get_state(), "torch": torch.get_rng_state()},
                    state={"fingerprint": fingerprint, "epoch": epoch, "step": step,
                           "history": [*history, rec], "best": best, "since_best": since_best,
                           "seconds": rec["seconds"], "config": asdict(cfg)})
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
    if best_state is not None:
        ema.load_state_dict(best_state)
    best_epoch = max((h["epoch"] for h in history if h.get("best")), default=None)
    record = {
        "config": asdict(cfg),
        "epochs": cfg.epochs,
        "epochs_run": history[-1]["epoch"] if history else 0,
        "best_epoch": best_epoch,
        "stopped_early": stopped_early,
        "steps": step,
        "class_weights": [round(float(v), 4) for v in class_w],
        "train_seconds": round(time.perf_counter() - t0, 1),
        "device": device,
        "mixed_precision": "bf16 autocast" if device.startswith("cuda") else "off (float32)",
        "init": str(init) if init else None,
        "init_skipped_tensors": skipped,
        "freeze_encoder": freeze_encoder,
        "val_history": [(h["epoch"], h["val_accuracy"]) for h in history if "val_accuracy" in h],
    }
    return ema.float().cpu().eval(), card, record


def _chip_probs(model: torch.nn.Module, x: torch.Tensor, device: str,
                batch: int = 64) -> torch.Tensor:
    """Chip probabilities ``(N, K)`` of normalised chips through the dense path (eval mode)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = x[i : i + batch].to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                logits = model(xb)
            out.append(torch.softmax(logits.float(), dim=1).mean(dim=(2, 3)).cpu())
    return torch.cat(out)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, steps_done: int, decay: float) -> None:
    """Move ``ema``'s weights towards ``model``'s after ``steps_done`` optimiser steps.

    The decay ramps up as ``(1 + n) / (10 + n)`` to ``decay``, so early steps are not averaged
    with the initial weights for long; buffers (BatchNorm statistics) are copied.
    """
    d = min(decay, (1 + steps_done) / (10 + steps_done))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1 - d)
        for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
            be.copy_(bm)


def run_summary(cfg: TrainConfig, record: dict[str, Any], wall_seconds: float) -> dict[str, Any]:
    """The fields a training script records in a card's ``training`` to make its run repeatable."""
    import os
    import platform

    return {
        "epochs": cfg.epochs, "steps": record["steps"], "seed": cfg.seed, "threads": cfg.threads,
        "train_seconds": record["train_seconds"], "wall_seconds": wall_seconds,
        "val_history": record["val_history"], "best_epoch": record["best_epoch"],
        "config": record["config"], "torch": torch.__version__,
        "python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "weights_dtype": "float16 (cast to float32 on load)",
    }


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


# --- the `geofg train classifier` entry point -------------------------------------------------


def train_bundle(data: str | Path, output: str | Path, cfg: TrainConfig, *,
                 name: str | None = None, bands: Sequence[str] | None = None,
                 scale: float | None = None, crop_classes: Sequence[str] = (),
                 val_fraction: float = 0.15, checkpoint_dir: str | Path | None = None,
                 init: str | Path | None = None, freeze_encoder: bool = False,
                 overwrite: bool = False,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train a patch classifier on labelled chips and write it as a bundle (``geofg train``).

    Every input is checked before training starts; the bundle is written atomically at the end,
    so an interrupted run leaves no bundle (only its checkpoint, when ``checkpoint_dir`` is set).

    Returns:
        ``{"bundle", "sha256", "card", "record", "notes"}``.

    Raises:
        GeofgError: exit-code-3 errors for bad data, bands, ``init`` bundle or output path.
    """
    from geofg.models.inference.bundle import BUNDLE_SUFFIX, read_card, write_bundle
    from geofg.models.inference.registry import resolve_model

    output = Path(output)
    if output.suffix != BUNDLE_SUFFIX:
        raise ConfigError(f"{output}: expected an output ending in {BUNDLE_SUFFIX}, found"
                          f" {output.suffix or 'no suffix'}; pass -o NAME.safetensors")
    if output.exists() and not overwrite:
        raise ConfigError(f"{output}: exists; pass --overwrite to replace it")
    init_card = read_card(resolve_model(init)) if init is not None else None
    chips = load_chips(data, bands=bands, val_fraction=val_fraction, seed=cfg.seed,
                       default_bands=init_card.bands if init_card else None)
    patch = chips.patch_size
    if patch % 32:
        raise ConfigError(f"{data}: chips of {patch} px; the dense chip classifier needs a"
                          " multiple of 32 px; crop the chips (e.g. to 32 or 64 px)")
    unknown = [c for c in crop_classes if c not in chips.class_names]
    if unknown:
        raise ConfigError(f"--crop-classes {unknown} are not classes of the data"
                          f" ({chips.class_names}); fix the names")
    scale = scale if scale is not None else default_scale(chips.dtype)
    mean, std = band_stats(chips.splits["train"].x, scale)
    encoder = init_card.encoder if init_card is not None else cfg.encoder
    card = build_card(name=name or output.stem, bands=chips.bands, class_names=chips.class_names,
                      mean=mean, std=std, scale=scale, encoder=encoder, patch_size=patch,
                      crop_classes=crop_classes,
                      resolution_m=init_card.resolution_m if init_card else None)
    cfg = copy.copy(cfg)
    cfg.encoder = encoder
    model, card, record = train_classifier(chips, cfg, on_epoch, card=card,
                                           checkpoint_dir=checkpoint_dir, init=init,
                                           freeze_encoder=freeze_encoder)
    metrics: dict[str, Any] = {}
    if "val" in chips.splits and hasattr(model, "fusion_weight"):
        from geofg.models.training.features import fit_fusion

        record["fusion"] = fit_fusion(
            model, normalise(chips.splits["train"].x, card), chips.splits["train"].y,
            normalise(chips.splits["val"].x, card), chips.splits["val"].y, k=len(card.classes),
            seed=cfg.seed)
    if "val" in chips.splits:
        probs = _chip_probs(model, torch.from_numpy(normalise(chips.splits["val"].x, card)), "cpu")
        m = confusion_metrics(chips.splits["val"].y, probs.argmax(1).numpy(), card.class_names)
        metrics = {"val_accuracy": round(m["accuracy"], 6), "val_macro_f1": round(m["macro_f1"], 6),
                   "evaluation": "val split, chip class = argmax of the mean probability map"}
    sizes = {s: len(c.y) for s, c in chips.splits.items()}
    training = {
        "data": str(data), "layout": chips.layout, "splits": sizes, "notes": chips.notes,
        "normalisation": f"per-band mean/std of reflectance (DN * {scale:g}) over the train split",
        **record,
    }
    final = card.model_copy(update={
        "training": training, "metrics": metrics,
        "made_by": "geofg train classifier", "created": time.strftime("%Y-%m-%d"),
    })
    final = type(card)(**final.model_dump())
    sha = write_bundle(output, export_tensors(model), final)
    return {"bundle": str(output), "sha256": sha, "card": final, "record": record,
            "notes": chips.notes}

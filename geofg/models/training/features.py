"""Hand-made chip features and the spectral-statistics baseline classifier.

:func:`chip_statistics` gives per-chip mean and std of every band and of the normalised-difference
indices of :data:`geofg.models.inference.nets.SPECTRAL_INDICES` whose bands the data names
(:func:`~geofg.models.inference.nets.spectral_index_bands`).
:func:`spectral_baseline` fits multinomial logistic regression on them (L-BFGS, L2 chosen on the
val split): the baseline every learned model is compared with in its card.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geofg.models.inference.nets import spectral_index_bands

__all__ = ["chip_statistics", "fit_logreg", "spectral_baseline"]


def chip_statistics(x: np.ndarray, bands: Sequence[str], scale: float) -> np.ndarray:
    """Per-chip features ``(N, F)``: mean and std of every band and every available index.

    Args:
        x: Raw chips ``(N, C, H, W)``; reflectance is ``x * scale``.
        bands: Band names of the ``C`` channels.
        scale: Input scale (card ``scale``).
    """
    refl = x.astype(np.float64) * scale
    feats = [refl.mean(axis=(2, 3)), refl.std(axis=(2, 3))]
    for _, ia, ib in spectral_index_bands(bands):
        ra, rb = refl[:, ia], refl[:, ib]
        nd = np.clip((ra - rb) / np.maximum(np.abs(ra + rb), 1e-3), -1, 1)
        feats += [nd.mean(axis=(1, 2))[:, None], nd.std(axis=(1, 2))[:, None]]
    return np.concatenate(feats, axis=1)


def fit_logreg(f: np.ndarray, y: np.ndarray, k: int, l2: float,
               weights: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit multinomial logistic regression with L2 on the weights by L-BFGS (deterministic).

    Args:
        f: float64 features ``(N, F)`` (standardise them first).
        y: int64 labels ``(N,)``.
        k: Number of classes.
        l2: L2 penalty on the weight matrix (not the bias).
        weights: Optional per-sample loss weights ``(N,)``.

    Returns:
        ``(w (F, K), b (K,))`` float64.
    """
    xt = torch.from_numpy(np.ascontiguousarray(f, dtype=np.float64))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    sw = None if weights is None else torch.from_numpy(np.asarray(weights, dtype=np.float64))
    w = torch.zeros(f.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        ce = F.cross_entropy(xt @ w + b, yt, reduction="none")
        ce = ce.mean() if sw is None else (ce * sw).sum() / sw.sum()
        loss = ce + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def spectral_baseline(splits: dict[str, Any], bands: Sequence[str], scale: float,
                      class_names: Sequence[str], evaluate_test: bool = True,
                      l2_grid: Sequence[float] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
                      ) -> dict[str, Any]:
    """Logistic regression on :func:`chip_statistics`; L2 tuned on val, test scored once.

    Args:
        splits: split name -> object with ``x`` (raw chips) and ``y`` (labels); needs ``train``
            and ``val``; ``test`` is scored when present and ``evaluate_test``.
        bands: Band names; scale: input scale; class_names: classes in index order.

    Returns:
        ``{"model", "features", "l2", "val_accuracy", ["test_accuracy", "test_macro_f1"],
        "seconds"}``.
    """
    from geofg.models.training.evaluate import confusion_metrics

    t0 = time.perf_counter()
    k = len(class_names)
    feats = {s: chip_statistics(d.x, bands, scale) for s, d in splits.items()}
    mu, sd = feats["train"].mean(0), feats["train"].std(0) + 1e-9
    z = {s: (f - mu) / sd for s, f in feats.items()}
    best = None
    for l2 in l2_grid:
        w, b = fit_logreg(z["train"], splits["train"].y, k, l2)
        pred = (torch.from_numpy(z["val"]) @ w + b).argmax(1).numpy()
        acc = float((pred == splits["val"].y).mean())
        if best is None or acc > best[0]:
            best = (acc, l2, w, b)
    if best is None:
        raise ValueError("l2_grid is empty")
    acc, l2, w, b = best
    n_idx = (feats["train"].shape[1] - 2 * len(bands)) // 2
    out: dict[str, Any] = {
        "model": "multinomial logistic regression (L-BFGS, L2 tuned on val)",
        "features": f"per-chip mean and std of {len(bands)} bands and {n_idx} indices"
                    f" = {z['train'].shape[1]} features",
        "l2": l2,
        "val_accuracy": round(acc, 4),
    }
    if evaluate_test and "test" in splits:
        pred = (torch.from_numpy(z["test"]) @ w + b).argmax(1).numpy()
        m = confusion_metrics(splits["test"].y, pred, class_names)
        out.update(test_accuracy=round(m["accuracy"], 4), test_macro_f1=round(m["macro_f1"], 4))
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _window_features(model: torch.nn.Module, x: np.ndarray, batch: int = 64) -> torch.Tensor:
    """Window (= chip) features of normalised chips ``(N, C, P, P)`` -> ``(N, D)`` (eval mode)."""
    out = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            cells = model.cell_features(torch.from_numpy(x[i : i + batch]))
            out.append(model.window_features(cells.mean(dim=(2, 3), keepdim=True)).flatten(1))
    return torch.cat(out).double()


def fit_fusion(model: torch.nn.Module, x_train: np.ndarray, y_train: np.ndarray,
               x_val: np.ndarray, y_val: np.ndarray, *, k: int,
               l2_grid: Sequence[float] = (3e-4, 1e-3, 3e-3, 1e-2),
               weights: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
               folds: int = 4, seed: int = 0) -> dict[str, Any]:
    """Fit the linear head of a :class:`~geofg.models.inference.nets.FusionChipClassifier` and its weight.

    The linear head is multinomial logistic regression on the window's hand-made features of the
    *train* chips (standardised with train statistics, stored in the model); its L2 is chosen by
    ``folds``-fold cross-validation on train; the fusion weight is then chosen on *val* (best
    accuracy, then lowest NLL). The model is updated in place.

    Returns:
        A record: ``{"l2", "cv_accuracy", "fusion_weight", "val": [(weight, acc, nll), ...]}``.
    """
    ft = model.hand_features(_window_features(model, x_train))
    fv_all = _window_features(model, x_val)
    mu, sd = ft.mean(0), ft.std(0).clamp_min(1e-6)
    zt = ((ft - mu) / sd).numpy()
    perm = np.random.default_rng(seed).permutation(len(y_train))
    cv = []
    for l2 in l2_grid:
        correct = 0
        for f in range(folds):
            te = perm[f::folds]
            tr = np.setdiff1d(perm, te)
            w, b = fit_logreg(zt[tr], y_train[tr], k, l2)
            correct += int(((torch.from_numpy(zt[te]) @ w + b).argmax(1).numpy()
                            == y_train[te]).sum())
        cv.append(correct / len(y_train))
    l2 = l2_grid[int(np.argmax(cv))]
    w, b = fit_logreg(zt, y_train, k, l2)
    with torch.no_grad():
        model.hand_mean.copy_(mu.float().view(1, -1, 1, 1))
        model.hand_std.copy_(sd.float().view(1, -1, 1, 1))
        model.linear.weight.copy_(w.T.float().reshape(k, -1, 1, 1))
        model.linear.bias.copy_(b.float())
    scores = []
    yv = torch.from_numpy(y_val)
    for a in weights:
        with torch.no_grad():
            model.fusion_weight.fill_(a)
            logits = model.fuse(fv_all.float()[:, :, None, None]).flatten(1)
        p = torch.softmax(logits, dim=1)
        acc = float((p.argmax(1) == yv).float().mean())
        nll = float(-p[torch.arange(len(yv)), yv].clamp_min(1e-8).log().mean())
        scores.append((a, round(acc, 4), round(nll, 4)))
    best = max(scores, key=lambda s: (s[1], -s[2]))
    with torch.no_grad():
        model.fusion_weight.fill_(best[0])
    return {"l2": l2, "cv_accuracy": [round(c, 4) for c in cv], "fusion_weight": best[0],
            "val": scores, "features": int(ft.shape[1])}

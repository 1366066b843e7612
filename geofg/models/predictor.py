"""Load a bundle into a ready-to-run predictor: normalised batches in, class probabilities out.

The pipeline normalises and pads; a predictor only runs the network::

    predictor = load_predictor("eurosat-13")          # a bundle name or a .safetensors path
    probs = predictor.predict(x)   # x: float32 (N, C, H, W) -> float32 (N, K, H, W), softmax over K

Weights are read only from safetensors (:func:`geofg.models.bundle.load_tensors`), stored as fp16 or
fp32 and cast to float32; ``load_state_dict(strict=True)`` makes any mismatch between the card's
architecture and the file's tensors a :class:`~geofg.errors.WeightsError`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from geofg.errors import ConfigError, WeightsError
from geofg.models.bundle import load_tensors, read_card
from geofg.models.card import ModelCard
from geofg.models.nets import build_model
from geofg.models.registry import resolve_model

__all__ = ["Predictor", "TorchPredictor", "load_predictor", "resolve_device"]

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """What the pipeline needs from a model."""

    card: ModelCard

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return class probabilities ``(N, K, H, W)`` float32 for a normalised ``(N, C, H, W)``."""
        ...


def resolve_device(device: str = "auto") -> str:
    """Turn ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:N"`` into a usable torch device string.

    Raises:
        ConfigError: CUDA was asked for but is not available, or the name is unknown.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} requested but CUDA is not available (torch"
                f" {torch.__version__}); use --device cpu or --device auto"
            )
        return device
    raise ConfigError(f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


class TorchPredictor:
    """A bundle's network in eval mode on one device.

    Attributes:
        card: The bundle's model card.
        device: The torch device string the network runs on (``"cpu"``, ``"cuda"``, ...).
        path: The bundle file.
    """

    def __init__(self, card: ModelCard, model: torch.nn.Module, device: str, path: Path) -> None:
        """Wrap an already loaded network (use :func:`load_predictor`)."""
        self.card = card
        self.model = model
        self.device = device
        self.path = path
        self._n_bands = len(card.bands)
        self._n_classes = len(card.classes)

    def _check(self, x: np.ndarray) -> None:
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise ConfigError(
                f"predict() expects a float32 array (N, C, H, W), found"
                f" {getattr(x, 'shape', type(x).__name__)}"
            )
        n, c, h, w = x.shape
        m = self.card.tile_multiple
        if c != self._n_bands:
            raise ConfigError(
                f"model {self.card.name!r} expects {self._n_bands} bands"
                f" ({','.join(self.card.bands)}), found {c} channels; select the card's bands"
            )
        if n == 0 or h == 0 or w == 0 or h % m or w % m:
            raise ConfigError(
                f"predict() needs a non-empty batch with H and W multiples of {m}, found"
                f" {x.shape}; pad tiles to a multiple of {m}"
            )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return per-pixel class probabilities.

        Args:
            x: Normalised input, float32 ``(N, C, H, W)`` with ``C == len(card.bands)`` and ``H``,
                ``W`` multiples of ``card.tile_multiple``.

        Returns:
            float32 ``(N, K, H, W)``, softmax over ``K == len(card.classes)``.

        Raises:
            ConfigError: Wrong rank, band count or tile size.
        """
        self._check(x)
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            if self.device.startswith("cuda"):
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = self.model(batch)
            else:
                logits = self.model(batch)
            probs = torch.softmax(logits.float(), dim=1)
        return probs.cpu().numpy()

    def __repr__(self) -> str:
        """Describe the predictor (bundle name, architecture, device)."""
        return (f"TorchPredictor({self.card.name!r}, {self.card.architecture}/{self.card.encoder},"
                f" device={self.device!r})")


def load_predictor(path: str | Path, device: str = "auto") -> TorchPredictor:
    """Load a bundle (a path or an installed bundle name) into a :class:`TorchPredictor`.

    Args:
        path: ``.safetensors`` bundle path or bundle name (see :mod:`geofg.models.registry`).
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        UnknownModelError: A name that no installed bundle has.
        UnsafeWeightsFormatError: Not a safetensors file.
        WeightsError: Corrupt file, invalid card, or tensors that do not fit the architecture.
        ConfigError: Unknown architecture or encoder, or CUDA requested but unavailable.
    """
    bundle = resolve_model(path)
    card = read_card(bundle)
    dev = resolve_device(device)
    tensors = load_tensors(bundle)
    model = build_model(card)
    state = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def _few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

        found = "; ".join(
            part for part in (
                f"missing {len(missing)}: {_few(missing)}" if missing else "",
                f"unexpected {len(unexpected)}: {_few(unexpected)}" if unexpected else "",
                f"wrong shape {len(wrong)}: {_few(wrong)}" if wrong else "",
            ) if part
        )
        raise WeightsError(
            f"{bundle}: expected the tensors of {card.architecture}/{card.encoder} with"
            f" {len(card.bands)} bands and {len(card.classes)} classes, found {found};"
            " the weights do not match the card; rebuild the bundle"
        )
    for k, v in state.items():
        if v.is_floating_point():
            state[k] = v.float()
    model.load_state_dict(state, strict=True)
    model = model.float().to(dev).eval()
    log.debug("loaded %s (%s/%s) on %s", bundle, card.architecture, card.encoder, dev)
    return TorchPredictor(card, model, dev, Path(bundle))

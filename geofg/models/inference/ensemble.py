"""Test-time augmentation and ensembles: predictors that wrap predictors, same ``predict`` contract.

* :class:`TTAPredictor` runs its model on the 8 dihedral transforms of the batch (rot90 k = 0..3,
  each with and without a left-right flip), transforms each probability map *back* before
  averaging, so pixel ``(i, j)`` of every term refers to the same ground pixel: dense outputs stay
  aligned and tiling is unchanged. 8 forwards per batch.
* :class:`EnsemblePredictor` averages the probabilities of several models that share bands (same
  names, same order), classes (same names, same order) and task; anything else is refused with a
  :class:`~geofg.errors.ConfigError` (exit 3) before a forward pass. Members may normalise
  differently: the batch arrives normalised with the *first* card's scale/mean/std and is
  re-normalised exactly for each member (the map is affine per band).
* :func:`load_models` builds the predictor for ``--model A [--model B ...] [--tta]``: each path is a
  ``.safetensors`` bundle (:func:`geofg.models.inference.predictor.load_predictor`) or an exported ``.onnx``
  model (:func:`geofg.models.inference.onnx.load_onnx_predictor`). :func:`combined_card` is the card the
  pipeline plans with; :func:`models_sha256` the identity recorded in the ledger (a single model
  without TTA keeps its file's sha256, so existing ledgers stay valid).

This module imports neither torch nor onnxruntime at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from geofg.errors import ConfigError
from geofg.models.inference.card import ModelCard

__all__ = [
    "DIHEDRAL",
    "EnsemblePredictor",
    "TTAPredictor",
    "check_compatible",
    "combined_card",
    "load_models",
    "models_sha256",
]


class _Predictor(Protocol):
    card: ModelCard

    def predict(self, x: np.ndarray) -> np.ndarray: ...


DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, f) for k in range(4) for f in (False, True))
"""The 8 transforms as ``(quarter turns, flip left-right after turning)``; (0, False) is identity."""


def transform(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Apply ``rot90`` by ``k`` quarter turns over the last two axes, then an optional lr-flip."""
    y = np.rot90(x, k, axes=(-2, -1))
    return y[..., ::-1] if flip else y


def untransform(y: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Invert :func:`transform` (``untransform(transform(x, k, f), k, f) == x``)."""
    if flip:
        y = y[..., ::-1]
    return np.rot90(y, -k, axes=(-2, -1))


@contextlib.contextmanager
def shared_streams(preds: Sequence[_Predictor], want: int | None) -> Iterator[int]:
    """Concurrent ``predict`` calls for predictors that wrap ``preds`` (see ``TorchPredictor.streams``).

    Torch's thread count is process-wide, so one member's hook prepares them all; a member
    without the hook (ONNX) means one stream.
    """
    hooks: list[Any] = [getattr(m, "streams", None) for m in preds]
    if not hooks or any(h is None for h in hooks):
        yield 1
        return
    with hooks[0](want) as n:
        yield n


class TTAPredictor:
    """Average of a predictor's probabilities over the 8 dihedral transforms (un-transformed).

    Args:
        inner: Any predictor; its tile multiple applies to both axes, so rotated tiles stay valid.
    """

    def __init__(self, inner: _Predictor) -> None:
        self.inner = inner
        self.card = inner.card
        self.device = getattr(inner, "device", "cpu")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return ``(N, K, H, W)`` float32: the mean of the 8 un-transformed probability maps."""
        acc: np.ndarray | None = None
        for k, flip in DIHEDRAL:
            p = untransform(self.inner.predict(np.ascontiguousarray(transform(x, k, flip))), k, flip)
            acc = p.astype(np.float32, copy=True) if acc is None else acc + p
        assert acc is not None
        acc /= len(DIHEDRAL)
        return acc

    def streams(self, want: int | None = None) -> contextlib.AbstractContextManager[int]:
        """How many ``predict`` calls may run at once (:func:`shared_streams`)."""
        return shared_streams([self.inner], want)

    def __repr__(self) -> str:
        """Describe the wrapper."""
        return f"TTAPredictor({self.inner!r}, 8 dihedral transforms)"


def check_compatible(cards: Sequence[ModelCard], labels: Sequence[str]) -> None:
    """Refuse an ensemble whose members differ in bands, classes or task.

    Raises:
        ConfigError: One line naming the first mismatching member, what differs and the fix.
    """
    first = cards[0]
    for card, label in zip(cards[1:], labels[1:], strict=True):
        for what, a, b in (
            ("bands", first.bands, card.bands),
            ("classes", first.class_names, card.class_names),
            ("task", first.task, card.task),
        ):
            if a != b:
                raise ConfigError(
                    f"{label}: an ensemble needs the same {what} in every model; expected"
                    f" {a} (from {labels[0]}), found {b}; give --model bundles trained on the same"
                    f" {what}"
                )


def combined_card(cards: Sequence[ModelCard], labels: Sequence[str] | None = None) -> ModelCard:
    """The card an ensemble is planned with: the first card, with the largest halo and tile size,
    the least common multiple of the tile multiples, and a name listing the members.

    Raises:
        ConfigError: The members are not compatible (:func:`check_compatible`).
    """
    if len(cards) == 1:
        return cards[0]
    check_compatible(cards, labels or [c.name for c in cards])
    first = cards[0]
    mult = math.lcm(*(c.tile_multiple for c in cards))
    tile = max(c.tile_size for c in cards)
    name = "ensemble-" + "-".join(c.name for c in cards)
    return first.model_copy(update={
        "name": name[:120],
        "halo": max(c.halo for c in cards),
        "tile_multiple": mult,
        "tile_size": -(-tile // mult) * mult,
        "patch_size": max((c.patch_size or 0) for c in cards) or None,
        "metrics": {},
        "made_by": "probability average of " + ", ".join(f"{c.name} {c.version}" for c in cards),
    })


class EnsemblePredictor:
    """Average of several predictors' probabilities; see the module docstring.

    Args:
        members: Predictors with compatible cards (the first one's normalisation is the input's).
        labels: Names for messages (paths), one per member.
    """

    def __init__(self, members: Sequence[_Predictor], labels: Sequence[str] | None = None) -> None:
        if not members:
            raise ConfigError("an ensemble needs at least one model, found none; give --model")
        cards = [m.card for m in members]
        self.card = combined_card(cards, labels)
        self.members = list(members)
        self.device = getattr(members[0], "device", "cpu")
        ref = cards[0]
        self._affine: list[tuple[np.ndarray, np.ndarray] | None] = []
        for c in cards:
            if (c.scale, c.mean, c.std) == (ref.scale, ref.mean, ref.std):
                self._affine.append(None)
                continue
            # x_ref = (raw * s0 - m0) / d0  ->  x_c = (raw * s - m) / d = x_ref * a + b
            s0, m0, d0 = ref.scale, np.asarray(ref.mean), np.asarray(ref.std)
            s, m, d = c.scale, np.asarray(c.mean), np.asarray(c.std)
            r = s / s0
            a = (d0 * r / d).astype(np.float32).reshape(1, -1, 1, 1)
            b = ((m0 * r - m) / d).astype(np.float32).reshape(1, -1, 1, 1)
            self._affine.append((a, b))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return the mean of the members' ``(N, K, H, W)`` probabilities, float32."""
        acc: np.ndarray | None = None
        for member, affine in zip(self.members, self._affine, strict=True):
            xi = x if affine is None else (x * affine[0] + affine[1]).astype(np.float32)
            p = member.predict(xi)
            acc = p.astype(np.float32, copy=True) if acc is None else acc + p
        assert acc is not None
        acc /= len(self.members)
        return acc

    def streams(self, want: int | None = None) -> contextlib.AbstractContextManager[int]:
        """How many ``predict`` calls may run at once (:func:`shared_streams`)."""
        return shared_streams(self.members, want)

    def __repr__(self) -> str:
        """Describe the ensemble."""
        return f"EnsemblePredictor({', '.join(repr(m) for m in self.members)})"


def load_one(path: str | Path, device: str = "auto", compile: bool = False) -> _Predictor:  # noqa: A002
    """Load one ``.safetensors`` bundle (torch) or exported ``.onnx`` model (onnxruntime).

    ``compile`` wraps a torch network in ``torch.compile``.

    Raises:
        ConfigError: ``compile`` for an ONNX model.
    """
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        if compile:
            raise ConfigError(f"{p}: --compile expects a .safetensors bundle (torch), found an ONNX "
                              "model; drop --compile or give the bundle it was exported from")
        from geofg.models.inference.onnx import load_onnx_predictor
        return load_onnx_predictor(p, device)
    from geofg.models.inference.predictor import load_predictor

    return load_predictor(p, device, compile=compile)


def load_models(paths: Sequence[str | Path], device: str = "auto", tta: bool = False,
                compile: bool = False) -> _Predictor:  # noqa: A002
    """Build the predictor for one or several models, optionally with test-time augmentation.

    Args:
        paths: Resolved model files (``.safetensors`` or ``.onnx``); several are averaged.
        device: As :func:`geofg.models.inference.predictor.load_predictor`.
        tta: Wrap in :class:`TTAPredictor` (outside the ensemble: 8 x members forwards).
        compile: ``torch.compile`` each member (torch bundles only).

    Raises:
        ConfigError: Incompatible members, an unusable device, or ``compile`` for an ONNX model.
        WeightsError: A model file is refused (see :mod:`geofg.models.inference.bundle`, :mod:`.onnx`).
    """
    if not paths:
        raise ConfigError("expected at least one --model, found none")
    if len(paths) > 1:
        from geofg.models.inference.registry import read_model_card

        check_compatible([read_model_card(p) for p in paths], [str(p) for p in paths])
    members = [load_one(p, device, compile) for p in paths]
    pred: _Predictor = members[0] if len(members) == 1 else EnsemblePredictor(
        members, [str(p) for p in paths])
    return TTAPredictor(pred) if tta else pred


def models_sha256(shas: Sequence[str], tta: bool = False) -> str:
    """Identity of what runs: a single model's own sha256, else a hash of the members and TTA."""
    if len(shas) == 1 and not tta:
        return shas[0]
    text = "geofg-ensemble-v1:" + ",".join(shas) + (":tta-d8" if tta else "")
    return hashlib.sha256(text.encode()).hexdigest()

"""Find model bundles by name or path.

Bundles live in :data:`BUNDLE_DIR` (shipped with geofg) and in the folders listed in the
environment variable ``GEOFG_MODEL_PATH`` (``os.pathsep``-separated), searched in that order. A
bundle's name is its card's ``name`` (or, failing that, its file stem). Shipped bundles are pinned
by sha256 in ``bundles/MANIFEST.json`` (``{"<name>": "<sha256>"}``) and verified when resolved.
A path ending in ``.onnx`` (a model made by ``geofg export``) is resolved like a bundle path;
:func:`read_model_card` reads the card of either kind.

This module does not import torch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from geofg.errors import ModelError, UnknownModelError, WeightsError
from geofg.models.inference.bundle import (
    BUNDLE_SUFFIX,
    PICKLED_SUFFIXES,
    read_card,
    verify_checksum,
    write_bundle,
)
from geofg.models.inference.card import ModelCard

__all__ = [
    "BUNDLE_DIR",
    "DEFAULT_MODEL",
    "MODEL_PATH_ENV",
    "list_models",
    "manifest",
    "model_dirs",
    "publish_bundle",
    "read_model_card",
    "resolve_model",
]

log = logging.getLogger(__name__)

BUNDLE_DIR = Path(__file__).parent.parent / "bundles"
MANIFEST_PATH = BUNDLE_DIR / "MANIFEST.json"
MODEL_PATH_ENV = "GEOFG_MODEL_PATH"
DEFAULT_MODEL = "landcover-s2"
ONNX_SUFFIX = ".onnx"


def model_dirs() -> list[Path]:
    """Return the folders searched for bundles: :data:`BUNDLE_DIR`, then ``GEOFG_MODEL_PATH``."""
    dirs = [BUNDLE_DIR]
    for item in os.environ.get(MODEL_PATH_ENV, "").split(os.pathsep):
        if item.strip():
            p = Path(item).expanduser()
            if p not in dirs:
                dirs.append(p)
    return dirs


def manifest() -> dict[str, str]:
    """Return the shipped bundles' pinned checksums, ``{name: sha256}`` (empty if none)."""
    try:
        data = json.loads(MANIFEST_PATH.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(
            f"{MANIFEST_PATH}: expected a JSON object name -> sha256, found unreadable content"
            f" ({err}); reinstall geofg"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise WeightsError(
            f"{MANIFEST_PATH}: expected a JSON object name -> sha256; reinstall geofg"
        )
    return data


def publish_bundle(path: Path, tensors: dict, card: ModelCard) -> tuple[str, bool]:
    """Write a bundle; return its sha256 and whether it was pinned in ``MANIFEST.json``.

    A bundle written into :data:`BUNDLE_DIR` is pinned under its file stem, the key
    :func:`resolve_model` verifies shipped bundles against (the training scripts use this).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sha = write_bundle(path, tensors, card)
    shipped = path.resolve().parent == BUNDLE_DIR.resolve()
    if shipped:
        entries = json.loads(MANIFEST_PATH.read_text()) if MANIFEST_PATH.exists() else {}
        entries[path.stem] = sha
        MANIFEST_PATH.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return sha, shipped


def list_models() -> list[tuple[Path, ModelCard]]:
    """Return ``(path, card)`` for every readable bundle in :func:`model_dirs`.

    Bundles whose card cannot be read are skipped with a warning in the log.
    """
    found: list[tuple[Path, ModelCard]] = []
    for folder in model_dirs():
        if not folder.is_dir():
            if folder != BUNDLE_DIR:
                log.warning("model folder %s from %s does not exist; skipped", folder,
                            MODEL_PATH_ENV)
            continue
        for path in sorted(folder.glob(f"*{BUNDLE_SUFFIX}")):
            try:
                found.append((path, read_card(path)))
            except ModelError as err:
                log.warning("skipping unreadable bundle: %s", err)
    return found


def _looks_like_path(text: str) -> bool:
    lower = text.lower()
    return (
        os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or "/" in text
        or lower.endswith((BUNDLE_SUFFIX, ONNX_SUFFIX, *PICKLED_SUFFIXES))
        or Path(text).exists()
    )


def _verify_if_shipped(path: Path) -> None:
    """Verify a bundle inside :data:`BUNDLE_DIR` against MANIFEST.json when it is listed there."""
    try:
        inside = path.resolve().parent == BUNDLE_DIR.resolve()
    except OSError:
        return
    if inside and path.suffix == BUNDLE_SUFFIX:
        expected = manifest().get(path.stem)
        if expected is not None:
            verify_checksum(path, expected)


def resolve_model(name_or_path: str | Path) -> Path:
    """Turn a bundle name or a path into the bundle's path.

    A value that exists on disk, contains a path separator or ends in a weights extension is a
    path and is returned as is (:func:`~geofg.models.inference.bundle.read_card` validates it later).
    Anything else is a bundle name, matched against each card's ``name`` and each file stem.

    Raises:
        UnknownModelError: No installed bundle has that name.
        WeightsChecksumError: A shipped bundle does not match its pinned sha256.
    """
    if isinstance(name_or_path, Path) or _looks_like_path(str(name_or_path)):
        path = Path(name_or_path).expanduser()
        if path.is_file():
            _verify_if_shipped(path)
        return path
    name = str(name_or_path)
    models = list_models()
    matches = [p for p, card in models if card.name == name]
    if not matches:
        matches = [p for p, _ in models if p.stem == name]
    if not matches:
        names = sorted({card.name for _, card in models})
        raise UnknownModelError(
            f"unknown model {name!r}; installed: {', '.join(names) or '(none)'}; give a bundle"
            f" name or a path to a .safetensors file (more folders via {MODEL_PATH_ENV})"
        )
    if len(matches) > 1:
        log.warning("model name %r matches %d bundles; using %s", name, len(matches), matches[0])
    _verify_if_shipped(matches[0])
    return matches[0]


def read_model_card(path: str | Path) -> ModelCard:
    """Read the card of a ``.safetensors`` bundle or of an ``.onnx`` model made by ``geofg export``.

    Raises:
        UnsafeWeightsFormatError: Neither kind (pickles and anything else are refused).
        WeightsError: Missing, corrupt, or no geofg card.
    """
    if Path(path).suffix.lower() == ONNX_SUFFIX:
        from geofg.models.inference.onnx import read_onnx_card
        return read_onnx_card(path)
    return read_card(path)

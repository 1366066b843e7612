"""Model bundles, cards and predictors.

Importing this package does not import torch: cards (:mod:`.card`), bundles (:mod:`.bundle`) and
the registry (:mod:`.registry`) are pure Python + numpy. The torch side lives in :mod:`.nets` and
:mod:`.predictor` (``from geofg.models.predictor import load_predictor``).
"""

from geofg.models.bundle import CARD_KEY, read_card, write_bundle
from geofg.models.card import ClassInfo, ModelCard
from geofg.models.registry import DEFAULT_MODEL, list_models, resolve_model

__all__ = [
    "CARD_KEY",
    "DEFAULT_MODEL",
    "ClassInfo",
    "ModelCard",
    "list_models",
    "read_card",
    "resolve_model",
    "write_bundle",
]

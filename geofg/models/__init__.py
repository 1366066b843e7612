"""Models by role: :mod:`.inference` (run a bundle), :mod:`.training` (make one), :mod:`.tools`.

* :mod:`geofg.models.inference`: cards, bundles, the registry, the networks, predictors (torch
  and ONNX), TTA and ensembles, the radiometric maps between sensors. The pipeline uses only these.
* :mod:`geofg.models.training`: labelled chips and dense labels, ``geofg train classifier`` /
  ``segmenter``, checkpoints, the hyper-parameter search (Ray Tune), ``geofg evaluate``.
* :mod:`geofg.models.tools`: Grad-CAM (``geofg explain``) and the ONNX export / int8 quantisation
  (``geofg export``).

The shipped bundles are package data in ``geofg/models/bundles``. Importing this package does not
import torch: cards, bundles and the registry are pure Python + numpy; the torch side lives in
:mod:`.inference.nets` and :mod:`.inference.predictor`. Layers (pyproject.toml, ``lint-imports``):
training and tools sit above the pipeline and the runners, inference below them.
"""

from geofg.models.inference.bundle import CARD_KEY, read_card, write_bundle
from geofg.models.inference.card import ClassInfo, ModelCard
from geofg.models.inference.registry import DEFAULT_MODEL, list_models, resolve_model

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

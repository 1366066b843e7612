"""Run exported ``.onnx`` models on onnxruntime, and read the card they carry.

``geofg classify --model OUT.onnx`` runs a model made by ``geofg export`` (the export and int8
quantisation are in :mod:`geofg.models.tools.export`) without torch:

* **The card travels inside the model**: ONNX ``metadata_props`` hold the bundle's card as JSON
  under :data:`CARD_KEY` (the same key as in a bundle header), so bands, scale, mean/std, classes
  and halo are known to ``classify``; :data:`EXPORT_KEY` holds the export report.
* **Dynamic batch, height and width** (multiples of ``card.tile_multiple``). The graph returns
  logits; :class:`OnnxPredictor` applies the softmax in fp32.
* **Safety.** An ONNX file is a protobuf (no pickle, no code). :func:`read_onnx_card` still refuses
  models that reference external data files (a path outside the file; onnxruntime would open it)
  and files without a geofg card.

Reading a card needs ``onnx`` only; running needs ``onnxruntime`` (the [onnx] extra).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from geofg.errors import ConfigError, MissingExtraError, WeightsError
from geofg.extras import install_command
from geofg.models.inference.bundle import CARD_KEY
from geofg.models.inference.card import ModelCard, check_input_batch

__all__ = [
    "CARD_KEY",
    "EXPORT_KEY",
    "ONNX_SUFFIX",
    "OnnxPredictor",
    "load_onnx_predictor",
    "load_onnx_proto",
    "need_package",
    "onnx_metadata",
    "read_export_report",
    "read_onnx_card",
]

ONNX_SUFFIX = ".onnx"
EXPORT_KEY = "geofg.export"
"""ONNX metadata key holding the export report (JSON): source sha256, precision, measurements."""


def need_package(module: str) -> Any:
    """Import an [onnx]-extra package, or raise MissingExtraError with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"ONNX support needs the Python package {module!r}, found it "
                                f"missing; install it with: {install_command('onnx')}") from None


def _fail(path: Path, expected: str, found: str, fix: str) -> WeightsError:
    return WeightsError(f"{path}: expected {expected}, found {found}; {fix}")


# --- reading ------------------------------------------------------------------------------------


def load_onnx_proto(path: Path) -> Any:
    """Parse an ONNX file without loading external data; refuse what geofg will not run."""
    onnx = need_package("onnx")
    if path.suffix.lower() != ONNX_SUFFIX:
        raise _fail(path, "a .onnx file", f"extension {path.suffix or '(none)'!r}",
                    "give a model exported by geofg export")
    if not path.is_file():
        raise _fail(path, "an ONNX model file", "no such file",
                    "give an existing path (geofg export BUNDLE --onnx OUT.onnx makes one)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises DecodeError, ValueError, ...
        raise _fail(path, "an ONNX protobuf", f"unparsable bytes ({type(err).__name__})",
                    "re-export the model with geofg export") from None
    ext = onnx.TensorProto.EXTERNAL
    if any(t.data_location == ext for t in model.graph.initializer):
        raise _fail(path, "all weights inside the .onnx file", "tensors in external data files",
                    "re-export with geofg export (it writes one self-contained file)")
    return model


def onnx_metadata(model: Any) -> dict[str, str]:
    """Return an ONNX model's ``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def read_onnx_card(path: str | Path) -> ModelCard:
    """Return the geofg model card stored in an ONNX model's ``metadata_props``.

    Raises:
        WeightsError: Not a readable self-contained ONNX file, or no valid geofg card in it.
        MissingExtraError: The ``onnx`` package is not installed (the [onnx] extra).
    """
    path = Path(path)
    meta = onnx_metadata(load_onnx_proto(path))
    if CARD_KEY not in meta:
        raise _fail(path, f"a geofg model card in ONNX metadata_props[{CARD_KEY!r}]", "no card",
                    "export the model with geofg export BUNDLE --onnx OUT.onnx")
    try:
        return ModelCard.from_json(meta[CARD_KEY])
    except ConfigError as err:
        raise WeightsError(f"{path}: {err}") from None


def read_export_report(path: str | Path) -> dict[str, Any]:
    """Return the export report stored by :func:`export_onnx` (empty dict when absent)."""
    meta = onnx_metadata(load_onnx_proto(Path(path)))
    try:
        return json.loads(meta.get(EXPORT_KEY, "{}"))
    except json.JSONDecodeError:
        return {}


# --- running ------------------------------------------------------------------------------------


class OnnxPredictor:
    """An exported model on onnxruntime, with the :class:`~geofg.models.inference.predictor.TorchPredictor`
    contract: normalised float32 ``(N, C, H, W)`` in, softmax probabilities ``(N, K, H, W)`` out.

    Attributes:
        card: The model card from the file's metadata.
        device: ``"cpu"`` (or ``"cuda"`` when onnxruntime has the CUDA provider and it was asked for).
        path: The ``.onnx`` file.
    """

    def __init__(self, path: Path, card: ModelCard, session: Any, device: str) -> None:
        """Wrap an inference session (use :func:`load_onnx_predictor`)."""
        self.path = path
        self.card = card
        self.device = device
        self._session = session
        self._input = session.get_inputs()[0].name

    def _check(self, x: np.ndarray) -> None:
        check_input_batch(self.card, x)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Return the graph's logits ``(N, K, H, W)`` float32."""
        self._check(x)
        (out,) = self._session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})
        return np.asarray(out, dtype=np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return per-pixel class probabilities ``(N, K, H, W)`` float32 (softmax over K)."""
        z = self.logits(x)
        z = z - z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def __repr__(self) -> str:
        """Describe the predictor."""
        return f"OnnxPredictor({self.card.name!r}, {self.path.name}, device={self.device!r})"


def load_onnx_predictor(path: str | Path, device: str = "auto",
                        threads: int | None = None) -> OnnxPredictor:
    """Load an exported ``.onnx`` model into an :class:`OnnxPredictor`.

    Args:
        path: The ``.onnx`` file (made by :func:`export_onnx`).
        device: ``"auto"``/``"cpu"`` run on the CPU; ``"cuda"`` needs onnxruntime's CUDA provider.
        threads: onnxruntime intra-op threads (None: onnxruntime's default, one per core).

    Raises:
        WeightsError: Unreadable file, external data, or no geofg card.
        ConfigError: onnxruntime missing, or CUDA asked for but not available to onnxruntime.
    """
    path = Path(path)
    card = read_onnx_card(path)
    ort = need_package("onnxruntime")
    providers = ["CPUExecutionProvider"]
    dev = "cpu"
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                f"device {device!r} requested but onnxruntime {ort.__version__} has no CUDA"
                " provider; use --device cpu (or install onnxruntime-gpu)"
            )
        providers, dev = ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda"
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise _fail(path, "an ONNX model onnxruntime can run", f"{type(err).__name__}: {first}",
                    "re-export it with geofg export") from None
    return OnnxPredictor(path, card, session, dev)

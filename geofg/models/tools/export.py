"""ONNX export (fp32 or int8) of a bundle: ``geofg export BUNDLE --onnx OUT.onnx [--int8]``.

The exported model runs with :mod:`geofg.models.inference.onnx` (``geofg classify --model
OUT.onnx``, no torch):

* **The card travels inside the model**: ONNX ``metadata_props`` hold the bundle's card as JSON
  under :data:`CARD_KEY`. The card's ``name`` gets a ``-onnx`` or ``-int8`` suffix and its
  ``made_by`` says how the file was made; :data:`EXPORT_KEY` holds the export report (source
  bundle sha256, precision, measured accuracy and speed).
* **Dynamic batch, height and width** (multiples of ``card.tile_multiple``): the patch classifier
  is fully convolutional and runs densely over tiles of any size, so the export keeps all three
  axes symbolic. The graph returns logits.
* **int8** is onnxruntime static quantisation (QDQ, per-channel int8 weights, uint8 activations,
  MinMax ranges) of the *encoder* only, calibrated on *train*-split EuroSAT chips assembled into
  3 x 3 canvases (192 px, so activation ranges come from chips with neighbours, as on tiles; see
  docs/models.md on mosaic training). Never the test split. The spectral branch, the window
  moments (a variance from E[x²] - E[x]²), the head and the upsampling stay fp32.
* A file is written atomically (temp file, fsync, rename).

This module imports torch only inside :func:`export_onnx`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geofg.batch import normalise
from geofg.errors import ConfigError
from geofg.io.atomic import atomic_path
from geofg.models.inference.bundle import CARD_KEY, bundle_sha256
from geofg.models.inference.card import ModelCard
from geofg.models.inference.onnx import (
    EXPORT_KEY,
    ONNX_SUFFIX,
    OnnxPredictor,
    load_onnx_predictor,
    load_onnx_proto,
    need_package,
    onnx_metadata,
)

__all__ = ["ExportReport", "export_onnx", "load_split", "quantise_onnx"]

log = logging.getLogger(__name__)

OPSET = 18

@dataclass
class ExportReport:
    """What :func:`export_onnx` made and measured (all numbers measured in that call).

    Attributes:
        output: The written ``.onnx`` file.
        precision: ``"fp32"`` or ``"int8"``.
        source: The bundle exported; ``source_sha256`` its sha256.
        size_bytes: Size of the written file; ``source_size_bytes`` of the bundle (fp16 on disk).
        max_abs_prob_diff: Largest |p_onnx - p_torch| over the check batch (a 2 x 2 chip canvas).
        accuracy: ``{"fp32_bundle": .., "onnx": .., "agreement": .., "n": ..}`` on the test split,
            or empty when no evaluation data was given.
        speed: Seconds per batch (median) and the speed-up, on ``speed_batch`` tiles.
    """

    output: str
    precision: str
    source: str
    source_sha256: str
    size_bytes: int = 0
    source_size_bytes: int = 0
    max_abs_prob_diff: float = 0.0
    accuracy: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise as compact JSON."""
        return json.dumps(asdict(self), separators=(",", ":"))


def _export_fp32(model: Any, card: ModelCard, dest: Path) -> None:
    """torch.onnx.export (dynamo) with symbolic batch, height and width."""
    import torch

    m = card.tile_multiple
    side = max(card.patch_size or 0, 2 * m, 64)
    side = -(-side // m) * m
    example = torch.zeros(1, len(card.bands), side, side)
    dim = torch.export.Dim
    # H and W symbolic multiples of the tile multiple (the net's pooling needs them divisible)
    hq, wq = dim("hq", min=1, max=512), dim("wq", min=1, max=512)
    shapes = {"x": {0: dim("batch", min=1, max=1024), 2: m * hq, 3: m * wq}}
    with torch.no_grad():
        program = torch.onnx.export(
            model, (example,), None, input_names=["x"], output_names=["logits"],
            opset_version=OPSET, dynamo=True, dynamic_shapes=shapes, external_data=False,
            optimize=True, verbose=False,
        )
    program.save(str(dest), external_data=False)


def _set_metadata(path: Path, items: dict[str, str]) -> None:
    onnx = need_package("onnx")
    model = onnx.load(str(path), load_external_data=False)
    old = {p.key: p.value for p in model.metadata_props}
    old.update(items)
    del model.metadata_props[:]
    for k, v in old.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = k, v
    onnx.save(model, str(path))


class _Calibration:
    """onnxruntime CalibrationDataReader over a list of float32 batches."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]) -> None:
        self._items = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def chip_canvases(x: np.ndarray, g: int = 3) -> np.ndarray:
    """Assemble chips ``(N, C, s, s)`` into ``(N // g², C, g s, g s)`` canvases (row-major)."""
    n, c, s, _ = x.shape
    k = n // (g * g)
    if k == 0:
        raise ConfigError(f"need at least {g * g} calibration chips for {g}x{g} canvases, found {n}")
    x = x[: k * g * g].reshape(k, g, g, c, s, s)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 4, 2, 5).reshape(k, c, g * s, g * s))


def encoder_nodes(path: str | Path) -> list[str] | None:
    """Names of the nodes that compute the encoder's deepest features (the ancestors of the first
    Conv whose weight is named ``deep.*``, i.e. the fcn-classifier's 1x1 conv on the encoder
    output, that conv included); None when there is no such conv (e.g. ``unet``)."""
    onnx = need_package("onnx")
    model = onnx.load(str(path), load_external_data=False)
    producer = {out: n for n in model.graph.node for out in n.output}
    target = next((n for n in model.graph.node
                   if n.op_type == "Conv" and len(n.input) > 1 and n.input[1].startswith("deep.")),
                  None)
    if target is None:
        return None
    seen: dict[str, Any] = {}
    stack = [target]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen[node.name] = node
        stack.extend(producer[i] for i in node.input if i in producer)
    return sorted(seen)


def quantise_onnx(fp32: str | Path, dest: str | Path, calibration: np.ndarray, *,
                  encoder_only: bool = True) -> dict[str, Any]:
    """Static QDQ int8 quantisation of the ONNX model ``fp32`` into ``dest``.

    Args:
        fp32: An fp32 model (e.g. from :func:`export_onnx`); its metadata (card) is copied.
        dest: Output path (overwritten; callers write to a temp path and rename).
        calibration: Normalised float32 inputs ``(N, C, H, W)``, fed 4 at a time (train split).
        encoder_only: Quantise only the encoder (:func:`encoder_nodes`); the spectral branch,
            window moments (a variance from E[x²] - E[x]², which int8 ranges destroy), head and
            upsampling stay fp32. They are a small share of the compute. Chosen on the val
            split (docs/compression.md): quantising everything cost 16 points of val accuracy.

    Returns:
        A description of the calibration (method, batches, input shape).
    """
    fp32, dest = Path(fp32), Path(dest)
    need_package("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dest.with_name(dest.stem + ".pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        source = pre
    except Exception as err:  # noqa: BLE001 - pre-processing is an optimisation only
        log.info("quantisation pre-processing skipped: %s", err)
        source = fp32
    batches = [calibration[i : i + 4] for i in range(0, len(calibration), 4)]
    nodes = encoder_nodes(source) if encoder_only else None
    quantize_static(
        str(source), str(dest), _Calibration("x", batches),
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, per_channel=True,
        calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=nodes,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    pre.unlink(missing_ok=True)
    meta = onnx_metadata(load_onnx_proto(fp32))
    if CARD_KEY in meta:
        card = ModelCard.from_json(meta[CARD_KEY])
        base = card.name.removesuffix("-onnx")
        meta[CARD_KEY] = card.model_copy(update={
            "name": f"{base}-int8", "made_by": f"{card.made_by} + int8 (static QDQ)".lstrip(" +"),
        }).to_json()
    if meta:
        _set_metadata(dest, meta)
    return {"method": "static QDQ, per-channel int8 weights, uint8 activations, MinMax",
            "quantised": "encoder only" if nodes else "all supported ops",
            "quantised_nodes": len(nodes) if nodes else None,
            "batches": len(batches), "inputs": list(calibration.shape)}


def _median_seconds(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def export_onnx(
    bundle: str | Path,
    output: str | Path,
    *,
    int8: bool = False,
    calibration: np.ndarray | None = None,
    evaluation: tuple[np.ndarray, np.ndarray] | None = None,
    speed_batch: tuple[int, int] | None = (2, 512),
    speed_runs: int = 5,
    threads: int | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Export a ``.safetensors`` bundle to ONNX (fp32, or int8 when ``int8``) and measure it.

    Args:
        bundle: A bundle name or ``.safetensors`` path.
        output: Destination ``.onnx`` path (written atomically; refused if it exists unless
            ``overwrite``).
        int8: Quantise with onnxruntime static quantisation; needs ``calibration``.
        calibration: Normalised float32 calibration inputs ``(N, C, H, W)`` (train split only).
        evaluation: Normalised test chips ``(N, C, s, s)`` and labels ``(N,)``: accuracy of the
            bundle (torch, fp32) and of the ONNX model on them, chip class = argmax of the mean
            probability map (as in docs/models.md).
        speed_batch: ``(n, side)``: time ``predict`` on a random ``(n, C, side, side)`` batch for
            both; None skips it.
        speed_runs: Timed runs after one warm-up (the median is reported).
        threads: Threads for both torch and onnxruntime during the measurement.
        overwrite: Replace an existing output.

    Returns:
        The :class:`ExportReport`, also stored in the ONNX metadata under :data:`EXPORT_KEY`.

    Raises:
        UnsafeWeightsFormatError, WeightsError: The bundle is not a readable safetensors bundle
            (nothing is written).
        ConfigError: Bad output path, int8 without calibration data, missing ONNX packages.
    """
    import torch

    from geofg.models.inference.predictor import load_predictor
    from geofg.models.inference.registry import resolve_model

    src = resolve_model(bundle)
    out = Path(output)
    if out.suffix.lower() != ONNX_SUFFIX:
        raise ConfigError(f"{out}: expected an output path ending in .onnx, found"
                          f" {out.suffix or 'no extension'!r}; name it e.g. model.onnx")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: expected a new output path, found an existing file;"
                          " remove it or pass --overwrite")
    if not out.parent.is_dir():
        raise ConfigError(f"{out}: expected an existing folder {out.parent}, found none;"
                          " create it first")
    if int8 and calibration is None:
        raise ConfigError("--int8 needs calibration data (EuroSAT train chips), found none;"
                          " pass --data DIR with labels.csv or set GEOFG_DATA")
    for mod in ("onnx", "onnxruntime", "onnxscript"):
        need_package(mod)
    torch_pred = load_predictor(src, device="cpu")  # every safety check on the bundle
    card = torch_pred.card
    if card.tile_multiple < 1:
        raise ConfigError(f"{src}: tile_multiple must be >= 1")
    precision = "int8" if int8 else "fp32"
    new_card = card.model_copy(update={
        "name": f"{card.name}-{'int8' if int8 else 'onnx'}",
        "made_by": f"geofg export {src.name} --onnx {out.name}{' --int8' if int8 else ''}"
                   f" (from {card.name} {card.version}, sha256 {bundle_sha256(src)[:16]})",
    })
    report = ExportReport(output=str(out), precision=precision, source=str(src),
                          source_sha256=bundle_sha256(src), source_size_bytes=src.stat().st_size)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fp32 = work / "fp32.onnx"
        _export_fp32(torch_pred.model, card, fp32)
        _set_metadata(fp32, {CARD_KEY: new_card.to_json()})
        final = fp32
        if int8:
            assert calibration is not None
            final = work / "int8.onnx"
            report.calibration = quantise_onnx(fp32, final, calibration.astype(np.float32))
        _set_metadata(final, {CARD_KEY: new_card.to_json()})
        onnx_pred = load_onnx_predictor(final, "cpu", threads=threads)
        check = _check_batch(card)
        report.max_abs_prob_diff = float(np.abs(onnx_pred.predict(check)
                                                - torch_pred.predict(check)).max())
        if evaluation is not None:
            report.accuracy = _accuracy(torch_pred, onnx_pred, *evaluation)
        if speed_batch is not None:
            report.speed = _speed(torch_pred, onnx_pred, card, speed_batch, speed_runs,
                                  fp32 if int8 else None, threads)
        report.size_bytes = final.stat().st_size
        _set_metadata(final, {EXPORT_KEY: report.to_json()})
        report.size_bytes = final.stat().st_size
        with atomic_path(out) as tmp:
            os.replace(final, tmp)
    finally:
        torch.set_num_threads(old_threads)
        for p in work.glob("*"):
            p.unlink(missing_ok=True)
        work.rmdir()
    return report


def _check_batch(card: ModelCard) -> np.ndarray:
    side = max(card.patch_size or 64, card.tile_multiple) * 2
    side = -(-side // card.tile_multiple) * card.tile_multiple
    return np.random.default_rng(0).normal(0, 1, (2, len(card.bands), side, side)).astype(np.float32)


def _chip_classes(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.concatenate([predict(x[i : i + 25]).mean(axis=(2, 3)).argmax(1)
                           for i in range(0, len(x), 25)])


def _accuracy(torch_pred: Any, onnx_pred: OnnxPredictor, x: np.ndarray,
              y: np.ndarray) -> dict[str, Any]:
    a = _chip_classes(torch_pred.predict, x)
    b = _chip_classes(onnx_pred.predict, x)
    return {"n": len(y), "fp32_bundle": float((a == y).mean()), "onnx": float((b == y).mean()),
            "agreement": float((a == b).mean())}


def _speed(torch_pred: Any, onnx_pred: OnnxPredictor, card: ModelCard, batch: tuple[int, int],
           runs: int, fp32_onnx: Path | None, threads: int | None) -> dict[str, Any]:
    n, side = batch
    side = -(-side // card.tile_multiple) * card.tile_multiple
    x = np.random.default_rng(1).normal(0, 1, (n, len(card.bands), side, side)).astype(np.float32)
    t_torch = _median_seconds(lambda: torch_pred.predict(x), runs)
    t_onnx = _median_seconds(lambda: onnx_pred.predict(x), runs)
    res = {"batch": [n, len(card.bands), side, side], "runs": runs, "threads": threads,
           "torch_fp32_s": round(t_torch, 4), "onnx_s": round(t_onnx, 4),
           "speedup_vs_torch": round(t_torch / t_onnx, 3)}
    if fp32_onnx is not None:
        ref = load_onnx_predictor(fp32_onnx, "cpu", threads=threads)
        t_ref = _median_seconds(lambda: ref.predict(x), runs)
        res["onnx_fp32_s"] = round(t_ref, 4)
        res["speedup_vs_onnx_fp32"] = round(t_ref / t_onnx, 3)
    return res


# --- labelled chips for calibration and evaluation -------------------------------------------------

EUROSAT_FILE_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11",
                      "B12", "B8A")
"""Band order of EuroSAT-MS GeoTIFFs (B8A last), used when a chip file names no bands."""


def load_split(data_dir: str | Path, split: str, card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """Read the ``split`` chips of a EuroSAT-style folder, normalised for ``card``.

    The folder holds ``labels.csv`` (columns ``file``, ``label``, ``split``) and the chip
    GeoTIFFs; bands are taken by name (band descriptions, else :data:`EUROSAT_FILE_BANDS`).

    Returns:
        ``(x, y)``: float32 ``(N, C, H, W)`` normalised with the card, int64 class indices.

    Raises:
        ConfigError: No labels.csv, no chip of that split, a label the card lacks, a band the
            chips lack, or chips of different sizes.
    """
    import csv

    import rasterio

    root = Path(data_dir)
    labels = root / "labels.csv"
    if not labels.is_file():
        raise ConfigError(f"{labels}: expected a labels.csv (file,label,split) of labelled chips,"
                          " found no such file; pass --data DIR (e.g. <shared>/data/eurosat_ms)")
    names = card.class_names
    xs, ys = [], []
    with labels.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("split") != split:
                continue
            if row["label"] not in names:
                raise ConfigError(f"{labels}: expected labels among the model's classes"
                                  f" ({', '.join(names)}), found {row['label']!r}; use data with"
                                  " the model's classes")
            with rasterio.open(root / row["file"]) as ds:
                arr = ds.read()
                desc = ds.descriptions
            have = list(desc) if all(desc) else list(EUROSAT_FILE_BANDS[: arr.shape[0]])
            missing = [b for b in card.bands if b not in have]
            if missing:
                raise ConfigError(f"{root / row['file']}: expected bands {','.join(card.bands)},"
                                  f" found {','.join(have)} (missing {','.join(missing)}); use"
                                  " chips with the model's bands")
            xs.append(arr[[have.index(b) for b in card.bands]])
            ys.append(names.index(row["label"]))
    if not xs:
        raise ConfigError(f"{labels}: expected chips with split {split!r}, found none; use a"
                          " labels.csv with train and test splits")
    if len({a.shape for a in xs}) > 1:
        raise ConfigError(f"{labels}: expected chips of one size, found {sorted({a.shape for a in xs})}")
    x = np.stack(xs)
    valid = np.ones(x.shape[-2:], dtype=bool)
    x = normalise(x, valid, card.scale, card.mean, card.std, card.normalisation)
    return x, np.asarray(ys, dtype=np.int64)

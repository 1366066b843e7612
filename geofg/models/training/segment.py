"""Fine-tune a U-Net segmenter on one labelled scene: ``geofg train segmenter``.

Steps (every check happens before training starts; the bundle is written atomically at the end):

1. **Inputs.** The image is opened like any ``geofg classify`` input
   (:func:`geofg.io.read.open_raster`, same checks). The labels (polygons or a class mask,
   :mod:`geofg.models.training.seg_labels`) are bound to the image's grid. With ``init`` the model's
   bands, band order, scale, mean and std are the init bundle's (so the transferred encoder sees
   inputs normalised as in its own training); the image must have those bands. Without
   ``init``: the image's bands, and per-band mean/std of the training region's valid pixels.
2. **Training region.** ``region`` (bounds in the image CRS) limits everything training reads:
   the imagery and labels of that window are read once into memory (bounded by
   :data:`MAX_REGION_PIXELS`) and windows are sampled fully inside it, so nothing outside it,
   not even as context, reaches the network. This is how a scene is split into a training part
   and a held-out part (``docs/models.md``, "Segmenter").
3. **Windows.** Candidate windows (``window`` px square, origins on a ``stride`` px grid) are those
   with at least ``min_labelled`` of their pixels labelled and valid; each step draws ``batch`` of
   them uniformly with a seeded generator, so two runs with the same seed, data and config see the
   same windows in the same order (used to compare transfer learning with training from scratch).
4. **Network.** ``smp.Unet`` (:func:`geofg.models.inference.nets.build_unet`) on the card's encoder. With
   ``init`` every tensor whose name and shape match is copied from the init bundle: from an
   ``fcn-classifier`` that is its whole encoder (the U-Net's ``encoder.*`` tensors have the same
   names and shapes, both come from ``smp.encoders.get_encoder`` with depth 5), from a ``unet``
   also the decoder (and the head when the classes agree).
5. **Loss and optimisation.** Cross-entropy with ``ignore_index`` = :data:`IGNORE` (unlabelled
   pixels contribute nothing), class weights ``(n / (K n_c)) ** class_weight_power`` over the
   labelled training pixels, normalised to mean 1; AdamW with linear warm-up and cosine decay; an
   EMA of the weights is what is returned and stored. Augmentation: the 8 dihedral transforms
   (image and labels together), per-band gain N(1, 0.02), per-window gain N(1, 0.05), per-band
   offset N(0, 0.001) on reflectance. There is no validation split and no early stopping: the
   schedule is fixed, so held-out data is never used to pick anything.

Training is deterministic for a given seed, device and thread count. On CUDA the forward runs
under bf16 autocast.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geofg.errors import BandCountMismatchError, ConfigError, InputError, MissingBandsError
from geofg.grid import Window
from geofg.models.inference.card import ClassInfo, ModelCard
from geofg.models.training.seg_labels import (
    IGNORE,
    Labels,
    class_colours,
    load_labels,
    parse_region,
    region_window,
)

__all__ = [
    "MAX_REGION_PIXELS",
    "SegTrainConfig",
    "SegmentationData",
    "candidate_windows",
    "prepare_segmentation_data",
    "train_segmenter",
    "train_segmenter_bundle",
]

log = logging.getLogger(__name__)

MAX_REGION_PIXELS = 64_000_000
"""Training reads its region into memory; larger regions are refused (pass --region)."""


@dataclass
class SegTrainConfig:
    """Hyper-parameters of :func:`train_segmenter`."""

    window: int = 128  # training window edge, px (a multiple of the model's 32)
    batch: int = 8  # windows per step
    steps: int = 300
    stride: int = 16  # grid of candidate window origins, px
    min_labelled: float = 0.1  # a candidate window has at least this share labelled
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    ema_decay: float = 0.99
    class_weight_power: float = 0.5  # 0: no class weighting, 1: inverse frequency
    gain_sigma: float = 0.02
    global_gain_sigma: float = 0.05
    offset_sigma: float = 0.001
    seed: int = 13
    threads: int = 1
    device: str = "cpu"
    # U-Net decoder widths, deepest first: a quarter of smp's default (256, ..., 16) parameters
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)


@dataclass
class SegmentationData:
    """The training region, read and labelled, plus the card skeleton it will be trained for.

    ``x`` is the raw region ``(C, H, W)`` in the model's band order, ``valid`` ``(H, W)``,
    ``y`` ``(H, W)`` uint8 class indices (:data:`IGNORE` where unlabelled or invalid).
    """

    x: np.ndarray
    valid: np.ndarray
    y: np.ndarray
    card: ModelCard
    labels: Labels
    image: str
    region: tuple[float, float, float, float] | None
    window: Window
    init: str | None = None
    notes: list[str] = field(default_factory=list)

    def class_pixels(self) -> dict[str, int]:
        """Labelled pixels per class in the training region."""
        counts = np.bincount(self.y[self.y != IGNORE], minlength=len(self.card.classes))
        return {n: int(c) for n, c in zip(self.card.class_names, counts, strict=False)}


def _band_stats(x: np.ndarray, valid: np.ndarray, scale: float) -> tuple[list[float], list[float]]:
    v = x[:, valid].astype(np.float64) * scale
    if v.shape[1] == 0:
        raise InputError("the training region has no valid pixel; choose another --region")
    return [float(m) for m in v.mean(1)], [float(max(s, 1e-6)) for s in v.std(1)]


def prepare_segmentation_data(
    image: str | Path | Sequence[str | Path], labels: str | Path, *,
    bands: Sequence[str] | None = None, region: str | Sequence[float] | None = None,
    class_field: str | None = None, class_map: dict[str, str | None] | None = None,
    init: str | Path | None = None, name: str = "segmenter",
    encoder: str = "tu-mobilenetv4_conv_small",
    scale: float | None = None, crop_classes: Sequence[str] = (),
    normalisation: tuple[float, Sequence[float], Sequence[float]] | None = None,
    tile_size: int = 512, halo: int = 64, min_window: int = 32,
    decoder_channels: Sequence[int] | None = None,
) -> SegmentationData:
    """Check every input and read the training region (see the module docstring, steps 1-2).

    Args:
        image: The scene (anything ``geofg classify`` reads).
        labels: Polygons or a class mask (:func:`geofg.models.training.seg_labels.load_labels`).
        bands: Band names of the image, in file order (default: band descriptions).
        region: Training bounds ``minx,miny,maxx,maxy`` in the image CRS (default: all of it).
        class_field, class_map: How labels become classes.
        init: Bundle whose encoder (and bands, scale, mean, std) the segmenter starts from.
        name, encoder, crop_classes, tile_size, halo: Card values (``encoder`` is the init
            bundle's when ``init`` is given).
        scale: Input scale (default: the init bundle's, or 1e-4 for uint16, 1/255 for uint8).
        normalisation: ``(scale, mean, std)`` to use instead of the init bundle's or the region's
            statistics (e.g. to train from scratch with exactly the transfer run's inputs).
        min_window: Smallest region side accepted (the training window).

    Raises:
        GeofgError: exit-code-3 errors naming the file, expected vs found and the fix.
    """
    from geofg.io.read import gdal_env, open_raster, select_bands
    from geofg.io.reader import RasterReader
    from geofg.models.inference.bundle import read_card
    from geofg.models.training.chips import default_scale
    from geofg.models.inference.registry import resolve_model

    init_card = None
    if init is not None:
        init_path = resolve_model(init)
        init_card = read_card(init_path)  # refuses pickles and corrupt files before anything else
        if init_card.architecture not in ("fcn-classifier", "unet"):
            raise ConfigError(f"{init_path}: --init bundle is a {init_card.architecture}, expected"
                              " an fcn-classifier or unet bundle")
    info = open_raster(image if isinstance(image, list | tuple) else [image], bands)
    if init_card is not None:
        if info.band_names is None and info.count != len(init_card.bands):
            raise BandCountMismatchError(
                f"{info.label()}: the --init bundle {init_card.name!r} needs {len(init_card.bands)}"
                f" bands ({','.join(init_card.bands)}), the image has {info.count} unnamed bands;"
                " give an image with those bands or name them with --bands")
        model_bands = list(init_card.bands)
        try:
            indices = select_bands(info, model_bands)
        except MissingBandsError as err:
            raise MissingBandsError(f"--init {init_card.name}: {err}") from None
    else:
        if info.band_names is None:
            raise MissingBandsError(f"{info.label()}: expected named bands, found none; name them"
                                    " with --bands (one name per band, in file order)")
        model_bands = list(info.band_names)
        indices = tuple(range(info.count))
    bounds = parse_region(region)
    win = region_window(info.transform, info.height, info.width, bounds)
    if win.height < min_window or win.width < min_window:
        raise ConfigError(f"--region gives a {win.height} x {win.width} px window, expected at"
                          f" least {min_window} x {min_window} (the training window); enlarge it")
    if win.height * win.width > MAX_REGION_PIXELS:
        raise ConfigError(f"{info.label()}: the training region has {win.height * win.width:,}"
                          f" pixels, expected at most {MAX_REGION_PIXELS:,} (it is read into"
                          " memory); pass a smaller --region")
    lab = load_labels(labels, crs_wkt=info.crs_wkt, transform=info.transform, height=info.height,
                      width=info.width, class_field=class_field, class_map=class_map)
    if len(lab.class_names) < 2:
        raise InputError(f"{labels}: expected at least 2 classes, found {lab.class_names}; map"
                         " more source values to classes with --class-map")
    unknown = [c for c in crop_classes if c not in lab.class_names]
    if unknown:
        raise ConfigError(f"--crop-classes {unknown} are not classes of the labels"
                          f" ({lab.class_names}); fix the names")
    y = lab.rasterise(win)
    with gdal_env(), RasterReader(info, indices) as reader:
        x, valid = reader.read(win)
    y[~valid] = IGNORE
    if not (y != IGNORE).any():
        raise InputError(f"{labels}: expected labelled pixels inside the image"
                         f"{' region' if bounds else ''}, found none; the labels do not overlap"
                         " the training area: check --region and the labels' extent")
    if normalisation is not None:
        sc, mean, std = normalisation[0], list(normalisation[1]), list(normalisation[2])
    elif init_card is not None:
        sc, mean, std = init_card.scale, list(init_card.mean), list(init_card.std)
    else:
        sc = scale if scale is not None else default_scale(info.dtype)
        mean, std = _band_stats(x, valid, sc)
    if scale is not None and init_card is not None and normalisation is None and scale != sc:
        raise ConfigError(f"--scale {scale:g} differs from the --init bundle's {sc:g}; drop"
                          " --scale (the encoder expects its own input scaling)")
    names = lab.class_names
    card = ModelCard(
        name=name, version="1.0.0", task="segmentation", architecture="unet",
        encoder=init_card.encoder if init_card is not None else encoder, bands=model_bands,
        scale=sc, mean=mean, std=std,
        classes=[ClassInfo(name=n, colour=c) for n, c in zip(names, class_colours(names),
                                                              strict=True)],
        crop_classes=list(crop_classes), tile_multiple=32, tile_size=tile_size, halo=halo,
        decoder_channels=list(decoder_channels) if decoder_channels else None,
        resolution_m=abs(info.transform[0]),
    )
    return SegmentationData(x=x, valid=valid, y=y, card=card, labels=lab,
                            image=info.label(), region=bounds, window=win,
                            init=str(init) if init is not None else None, notes=list(lab.notes))


def candidate_windows(labelled: np.ndarray, window: int, stride: int,
                      min_labelled: float) -> np.ndarray:
    """Return ``(M, 2)`` top-left ``(row, col)`` of windows fully inside ``labelled``'s extent
    with at least ``min_labelled`` of their pixels labelled (origins on a ``stride`` grid)."""
    h, w = labelled.shape
    if h < window or w < window:
        return np.zeros((0, 2), np.int64)
    ii = np.zeros((h + 1, w + 1), np.int64)
    ii[1:, 1:] = labelled.astype(np.int64).cumsum(0).cumsum(1)
    rows = np.arange(0, h - window + 1, stride)
    cols = np.arange(0, w - window + 1, stride)
    r0, c0 = np.meshgrid(rows, cols, indexing="ij")
    r1, c1 = r0 + window, c0 + window
    n = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
    ok = n >= min_labelled * window * window
    return np.stack([r0[ok], c0[ok]], axis=1)


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def init_from_bundle(model: Any, init: str | Path, card: ModelCard) -> dict[str, Any]:
    """Copy every tensor of ``init`` whose name and shape match into ``model``.

    Returns ``{"from", "copied", "copied_encoder", "encoder_tensors", "skipped",
    "skipped_modules"}`` (counts, and the top-level modules of the tensors not copied).

    Raises:
        MissingBandsError / BandCountMismatchError: The bundle has other bands.
        ConfigError: Another encoder, or no encoder tensor matched.
    """
    import torch

    from geofg.models.inference.bundle import load_tensors, read_card
    from geofg.models.inference.registry import resolve_model

    path = resolve_model(init)
    src = read_card(path)
    if src.bands != card.bands:
        cls = BandCountMismatchError if len(src.bands) != len(card.bands) else MissingBandsError
        raise cls(f"{path}: --init bundle expects bands {src.bands}, the segmenter has"
                  f" {card.bands}; use a bundle for these bands")
    if src.encoder != card.encoder:
        raise ConfigError(f"{path}: --init bundle has encoder {src.encoder}, expected"
                          f" {card.encoder}")
    own = model.state_dict()
    state, skipped = {}, []
    for k, v in load_tensors(path).items():
        t = torch.from_numpy(np.array(v))
        if k in own and own[k].shape == t.shape:
            state[k] = t.to(own[k].dtype)
        else:
            skipped.append(k)
    n_enc = sum(1 for k in state if k.startswith("encoder."))
    if n_enc == 0:
        raise ConfigError(f"{path}: no encoder tensor of the --init bundle fits the U-Net's"
                          f" {card.encoder} encoder; use a bundle with that encoder")
    model.load_state_dict(state, strict=False)
    return {"from": src.name, "copied": len(state), "copied_encoder": n_enc,
            "encoder_tensors": sum(1 for k in own if k.startswith("encoder.")),
            "skipped": len(skipped),
            "skipped_modules": sorted({k.split(".")[0] for k in skipped})}


def _dihedral(x: Any, y: Any, k: int, flip: bool) -> tuple[Any, Any]:
    import torch

    x, y = torch.rot90(x, k, dims=(-2, -1)), torch.rot90(y, k, dims=(-2, -1))
    if flip:
        x, y = torch.flip(x, dims=(-1,)), torch.flip(y, dims=(-1,))
    return x, y


def train_segmenter(
    data: SegmentationData, cfg: SegTrainConfig, *, init: str | Path | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train the U-Net on ``data`` (module docstring, steps 3-5).

    Returns:
        The EMA model (eval mode, float32, CPU) and a training record.

    Raises:
        InputError: No window of ``cfg.window`` px with enough labelled pixels.
        ConfigError: Bad config values, or ``init`` does not fit.
    """
    import torch
    import torch.nn.functional as F

    from geofg.models.inference.nets import build_model
    from geofg.models.inference.predictor import resolve_device
    from geofg.models.training.train import ema_update

    card = data.card
    if cfg.window % card.tile_multiple or cfg.window <= 0:
        raise ConfigError(f"--window {cfg.window}: expected a positive multiple of"
                          f" {card.tile_multiple} px")
    if cfg.steps < 1 or cfg.batch < 1:
        raise ConfigError(f"expected --steps >= 1 and --batch >= 1, found {cfg.steps} and"
                          f" {cfg.batch}")
    labelled = data.y != IGNORE
    cands = candidate_windows(labelled, cfg.window, cfg.stride, cfg.min_labelled)
    if len(cands) == 0:
        raise InputError(f"{data.labels.path}: expected {cfg.window} x {cfg.window} px windows"
                         f" inside the training region with at least {cfg.min_labelled:.0%}"
                         " labelled pixels, found none; lower --min-labelled or --window, or"
                         " enlarge --region")
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build_model(card)
    transfer = init_from_bundle(model, init, card) if init is not None else None
    model = model.to(device)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    k = len(card.classes)
    counts = np.bincount(data.y[labelled], minlength=k)[:k].astype(np.float64)
    if cfg.class_weight_power:
        w = (labelled.sum() / (k * np.maximum(counts, 1))) ** cfg.class_weight_power
        w = w / w.mean()
    else:
        w = np.ones(k)
    class_w = torch.tensor(w, dtype=torch.float32, device=device)
    scale = np.float32(card.scale)
    mean = torch.tensor(card.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(card.std, dtype=torch.float32).view(1, -1, 1, 1)
    x_all = torch.from_numpy(data.x.astype(np.float32) * scale)  # reflectance
    v_all = torch.from_numpy(data.valid)
    y_all = torch.from_numpy(data.y.astype(np.int64))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    ws, c = cfg.window, x_all.shape[0]
    cands_t = torch.from_numpy(cands)
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    run_loss, n_loss = 0.0, 0
    model.train()
    for step in range(cfg.steps):
        pick = cands_t[torch.randint(0, len(cands_t), (cfg.batch,), generator=gen)]
        rot = torch.randint(0, 4, (cfg.batch,), generator=gen)
        flip = torch.rand(cfg.batch, generator=gen) < 0.5
        xs, ys, vs = [], [], []
        for (r, cc), kk, ff in zip(pick.tolist(), rot.tolist(), flip.tolist(), strict=True):
            xb, yb = _dihedral(x_all[:, r : r + ws, cc : cc + ws], y_all[r : r + ws, cc : cc + ws],
                               kk, ff)
            vb, _ = _dihedral(v_all[r : r + ws, cc : cc + ws], yb, kk, ff)
            xs.append(xb)
            ys.append(yb)
            vs.append(vb)
        xb, yb, vb = torch.stack(xs), torch.stack(ys), torch.stack(vs)
        gain = 1 + cfg.gain_sigma * torch.randn(cfg.batch, c, 1, 1, generator=gen)
        gain = gain * (1 + cfg.global_gain_sigma * torch.randn(cfg.batch, 1, 1, 1, generator=gen))
        offset = cfg.offset_sigma * torch.randn(cfg.batch, c, 1, 1, generator=gen)
        # invalid pixels are 0 after normalisation, as in the pipeline (geofg.batch.normalise)
        xb = (((xb * gain + offset - mean) / std) * vb[:, None]).to(device)
        yb = yb.to(device)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.steps, cfg.warmup_steps, cfg.lr)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb, weight=class_w, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, model, step + 1, cfg.ema_decay)
        run_loss += float(loss.detach())
        n_loss += 1
        if (step + 1) % 25 == 0 or step + 1 == cfg.steps:
            rec = {"step": step + 1, "loss": round(run_loss / n_loss, 4),
                   "seconds": round(time.perf_counter() - t0, 1)}
            history.append(rec)
            run_loss, n_loss = 0.0, 0
            if on_step is not None:
                on_step(rec)
    seconds = round(time.perf_counter() - t0, 1)
    record = {
        "config": asdict(cfg),
        "train_seconds": seconds,
        "device": device,
        "threads": cfg.threads,
        "mixed_precision": "bf16 autocast" if device.startswith("cuda") else "off (float32)",
        "candidate_windows": len(cands),
        "class_weights": {n: round(float(v), 4) for n, v in zip(card.class_names, w, strict=True)},
        "loss_history": history,
        "init": str(init) if init is not None else None,
        "transfer": transfer,
    }
    return ema.float().cpu().eval(), record


def train_segmenter_bundle(
    image: str | Path, labels: str | Path, output: str | Path, cfg: SegTrainConfig, *,
    init: str | Path | None = None, name: str | None = None, bands: Sequence[str] | None = None,
    region: str | Sequence[float] | None = None, class_field: str | None = None,
    class_map: dict[str, str | None] | None = None, crop_classes: Sequence[str] = (),
    scale: float | None = None,
    normalisation: tuple[float, Sequence[float], Sequence[float]] | None = None,
    encoder: str = "tu-mobilenetv4_conv_small", overwrite: bool = False,
    extra_training: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
    made_by: str = "geofg train segmenter",
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Check inputs, train a U-Net segmenter and write it as a bundle (``geofg train segmenter``).

    Returns:
        ``{"bundle", "sha256", "card", "record", "notes", "class_pixels"}``.

    Raises:
        GeofgError: exit-code-3 errors for bad image, labels, init bundle, region or output; no
            file is written then.
    """
    from geofg.models.inference.bundle import BUNDLE_SUFFIX, write_bundle
    from geofg.models.training.train import export_tensors

    output = Path(output)
    if output.suffix != BUNDLE_SUFFIX:
        raise ConfigError(f"{output}: expected an output ending in {BUNDLE_SUFFIX}, found"
                          f" {output.suffix or 'no suffix'}; pass -o NAME.safetensors")
    if output.exists() and not overwrite:
        raise ConfigError(f"{output}: exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise ConfigError(f"{output}: expected an existing folder {output.parent}, found none;"
                          " create it first")
    data = prepare_segmentation_data(
        image, labels, bands=bands, region=region, class_field=class_field, class_map=class_map,
        init=init, name=name or output.stem, encoder=encoder, scale=scale,
        crop_classes=crop_classes, normalisation=normalisation, min_window=cfg.window,
        decoder_channels=cfg.decoder_channels)
    model, record = train_segmenter(data, cfg, init=init, on_step=on_step)
    card = data.card
    training = {
        "image": str(image), "labels": str(labels), "labels_kind": data.labels.kind,
        "class_field": data.labels.class_field, "class_map": data.labels.class_map,
        "region": list(data.region) if data.region else None,
        "region_window": {"row_off": data.window.row_off, "col_off": data.window.col_off,
                          "height": data.window.height, "width": data.window.width},
        "class_pixels": data.class_pixels(), "notes": data.notes,
        "normalisation": ("init bundle's mean/std" if init is not None and normalisation is None
                          else "given" if normalisation is not None
                          else "per-band mean/std of the training region's valid pixels"),
        **record, **(extra_training or {}),
    }
    final = ModelCard(**{**card.model_dump(), "training": training, "metrics": metrics or {},
                         "made_by": made_by, "created": time.strftime("%Y-%m-%d")})
    sha = write_bundle(output, export_tensors(model), final)
    return {"bundle": str(output), "sha256": sha, "card": final, "record": record,
            "notes": data.notes, "class_pixels": data.class_pixels()}

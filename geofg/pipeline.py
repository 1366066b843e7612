"""Plan a job and process one unit: read -> normalise -> predict tiles -> blend -> layers.

:func:`plan` is the preflight: it opens and checks every input and the model bundle, maps the
input's bands to the model's, sizes tiles, and plans the units. It writes nothing, so any
rejection leaves no output behind.

:func:`process_unit` is what every runner calls per unit. It holds nothing beyond the unit's
window, so memory is bounded by units in flight, never by raster size. No ray, click or progress
bars here.

Clouds, shadows and snow/ice (:mod:`geofg.masks`) are masked per unit from the unit's own read
window; where the mask is not clear, ``class``, ``health``, ``confidence`` and ``ndvi`` are no
data (255) and the unit's statistics count those pixels apart (``mask_counts``), so no summary ever
reports cloud as land cover. Crop health is assessed only when :mod:`geofg.season` says the scene
is in the growing season (decided once, at preflight); otherwise ``health`` is 255 everywhere. The
index layer ``ndvi`` (:mod:`geofg.health`; only for models whose bands include red and NIR) holds
every clear pixel's NDVI, any class, any season.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from geofg import __version__
from geofg.batch import normalise, pad_to, round_up
from geofg.config import JobConfig, ModelConfig, RunnerConfig, TileConfig
from geofg.errors import ConfigError, GeofgWarning, InputError
from geofg.extras import require_extra
from geofg.grid import Window, WorkUnit, aligned_chunk, plan_tiles, plan_units
from geofg.health import HEALTH_CLASSES, INDEX, band_roles, health_layer, index_layer, index_layers, ndvi
from geofg.io.mosaic import FILL, LAYERS, MosaicSpec
from geofg.io.read import RasterInfo, open_raster, select_bands
from geofg.io.reader import RasterReader
from geofg.masks import (
    CLEAR,
    MARGIN,
    SHADOW,
    TILE,
    MaskPlan,
    mask_counts,
    mask_read_window,
    mask_window,
    plan_mask,
    pool_factor,
    release_water_shadow,
)
from geofg.models.inference.bundle import bundle_sha256
from geofg.models.inference.card import ModelCard, check_resolution
from geofg.models.inference.ensemble import combined_card, models_sha256
from geofg.models.inference.registry import read_model_card, resolve_model
from geofg.season import HealthSeason, assess_season
from geofg.stitch import Accumulator, blend_weights

log = logging.getLogger(__name__)

CONFIDENCE_SCALE = 250


class BandOrderAssumedWarning(GeofgWarning):
    """The input names no bands; the model's band order was assumed."""


class HaloBelowCardWarning(GeofgWarning):
    """``--halo`` is less than the model card's: unit edges may show."""


class Predictor(Protocol):
    """What process_unit needs from a model (see geofg.models.inference.predictor)."""

    card: ModelCard

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Map (N, C, H, W) float32 normalised input to (N, K, H, W) float32 probabilities."""
        ...


class UnitJob(Protocol):
    """The settings of a job that the unit stages and the runners read (classify's
    :class:`~geofg.config.JobConfig` and the scan's :class:`~geofg.scan.config.ScanConfig`)."""

    @property
    def tile(self) -> TileConfig: ...  # noqa: D102
    @property
    def model(self) -> ModelConfig: ...  # noqa: D102
    @property
    def runner(self) -> RunnerConfig: ...  # noqa: D102


class UnitPlan(Protocol):
    """What :func:`prepare_unit`, :func:`infer_unit` and :func:`finish_unit` read of a plan:
    classify's :class:`Plan` and the scan's :class:`~geofg.scan.run.ScanPlan` both are one."""

    @property
    def job(self) -> UnitJob: ...  # noqa: D102
    @property
    def card(self) -> ModelCard: ...  # noqa: D102
    @property
    def tile_size(self) -> int: ...  # noqa: D102
    @property
    def overlap(self) -> int: ...  # noqa: D102
    @property
    def mask(self) -> MaskPlan | None: ...  # noqa: D102
    @property
    def mask_channels(self) -> tuple[int, ...]: ...  # noqa: D102
    @property
    def season(self) -> HealthSeason | None: ...  # noqa: D102


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs, small and picklable (no datasets, no model)."""

    job: JobConfig
    info: RasterInfo
    card: ModelCard
    model_path: str
    model_sha256: str
    band_indices: tuple[int, ...]
    tile_size: int
    halo: int
    overlap: int
    config_hash: str
    units: tuple[WorkUnit, ...] = field(repr=False)
    extra_model_paths: tuple[str, ...] = ()
    """Ensemble members after ``model_path`` (``--model`` given several times)."""
    mask: MaskPlan | None = None
    """The cloud mask this run applies (None: no mask layer)."""
    mask_indices: tuple[int, ...] = ()
    """Indices into ``info.band_files`` of ``mask.bands``, in that order."""
    season: HealthSeason | None = None
    """Whether crop health is assessed, and why (None: assessed, no decision recorded)."""

    @property
    def read_indices(self) -> tuple[int, ...]:
        """The bands a unit reads: the model's, then any the mask needs that the model does not."""
        return self.band_indices + tuple(
            dict.fromkeys(i for i in self.mask_indices if i not in self.band_indices))

    @property
    def mask_channels(self) -> tuple[int, ...]:
        """Positions of ``mask.bands`` among the channels a unit reads (:attr:`read_indices`)."""
        read = self.read_indices
        return tuple(read.index(i) for i in self.mask_indices)

    @property
    def raster_shape(self) -> tuple[int, int]:
        """The raster's (height, width): the mask's tiles sit on it (:mod:`geofg.masks`)."""
        return self.info.height, self.info.width

    def read_mask(self, core: Window) -> tuple[np.ndarray, np.ndarray, Window]:
        """The mask bands over the window that gives ``core``'s mask, read with a reader of its own:
        ``(data, valid, window)`` (:func:`geofg.masks.mask_read_window`; ``core`` on the raster grid)."""
        assert self.mask is not None
        window = mask_read_window(core, self.info.height, self.info.width, self.mask.pixel_m)
        with RasterReader(self.info, self.mask_indices) as reader:
            data, valid = reader.read(window)
        return data, valid, window

    @property
    def model_paths(self) -> tuple[str, ...]:
        """Every model file this plan runs (one, or an ensemble's members)."""
        return (self.model_path, *self.extra_model_paths)

    @property
    def spec(self) -> MosaicSpec:
        """The mosaic this plan writes."""
        return MosaicSpec(
            height=self.info.height,
            width=self.info.width,
            chunk=self.job.tile.chunk,
            crs_wkt=self.info.crs_wkt,
            transform=self.info.transform,
            class_names=tuple(c.name for c in self.card.classes),
            class_colours=tuple(c.colour for c in self.card.classes),
            health_names=tuple(n for n, _ in HEALTH_CLASSES),
            health_colours=tuple(c for _, c in HEALTH_CLASSES),
            layers=LAYERS + index_layers(self.card.bands) + (("mask",) if self.mask else ()),
        )

    @property
    def pixel_area_m2(self) -> float:
        """Area of one pixel in CRS units squared (m² for projected CRSs)."""
        a, b, _, d, e, _ = self.info.transform
        return abs(a * e - b * d)

    def peak_memory_bytes(self) -> int:
        """Rough upper bound of the memory of the local runner's units in flight.

        Per unit: input, normalised input, probabilities, weights. Units: reads queued, one
        computing, writes queued and being written (:mod:`geofg.runners.local`), with the read and
        write threads sized for ``model.device`` (``auto`` counted as CPU). Each write thread
        also holds a unit's mask read (:func:`geofg.masks.mask_read_window`) while it masks.
        """
        side = round_up(max(self.job.tile.chunk + 2 * self.halo, self.tile_size), 32)
        c, k = len(self.read_indices), len(self.card.classes)
        per_unit = side * side * (c * (8 + 4) + k * 4 + 8)
        readers, writers = self.job.runner.io_threads(self.job.model.device)
        mask = 0
        if self.mask is not None:
            span = self.job.tile.chunk + pool_factor(self.mask.pixel_m) * (TILE - 2 * MARGIN)  # any core's tiles
            core = Window(0, 0, min(span, self.info.height), min(span, self.info.width))
            mw = mask_read_window(core, self.info.height, self.info.width, self.mask.pixel_m)
            mask = mw.height * mw.width * (len(self.mask.bands) * (4 + 4) + 1)  # raw, reflectance, valid
        return per_unit * (max(self.job.runner.prefetch, readers) + 1 + writers + 1) + mask * writers

    def provenance(self) -> dict:
        """Attributes recorded in the mosaic."""
        return {
            "geofg:version": __version__,
            "geofg:model": {
                "name": self.card.name,
                "version": self.card.version,
                "sha256": self.model_sha256,
                "task": self.card.task,
                "bands": list(self.card.bands),
                "metrics": self.card.metrics,
            },
            "geofg:config_hash": self.config_hash,
            "geofg:config": self.job.model_dump(mode="json"),
            "geofg:tiling": {"tile_size": self.tile_size, "halo": self.halo, "overlap": self.overlap},
            "geofg:inputs": {"fingerprint": self.info.fingerprint, "files": list(self.info.files)},
            "geofg:layers": {
                "class": "learned (CNN land-cover class)",
                "confidence": "learned (top-class probability x 250)",
                "health": "index-based (NDVI zones, NDMI/NDRE adjusted) inside crop classes, "
                          "clear pixels only, in the growing season only",
                **({"ndvi": "index-based (NDVI of every clear pixel, any class or season; "
                            "uint8 code x 0.01 - 1)"} if index_layers(self.card.bands) else {}),
                **({"mask": "learned (ukis-csmask cloud/shadow) and index-based (NDSI snow/ice); "
                            "class, health and confidence are no data where it is not clear"}
                   if self.mask else {}),
            },
            "geofg:mask": self.mask.describe() if self.mask else None,
            "geofg:health": self.season.to_dict() if self.season else None,
        }


def _check_projected(info: RasterInfo) -> None:
    """Refuse a geographic grid: its pixels are degrees, so areas would be wrong (not metres).

    The alternative, a geodesic area per pixel row, would also need per-row counts in every
    ledger record; the models are trained on metric pixels anyway, so the input is refused with
    the fix (``geofg scan`` refuses geographic grids the same way).
    """
    from rasterio.crs import CRS

    crs = CRS.from_wkt(info.crs_wkt)
    if crs.is_geographic:
        raise InputError(
            f"{info.label()}: expected a projected CRS (metres), found a geographic one "
            f"({crs.to_string()}): pixel areas in degrees cannot give hectares; warp it to a "
            "projected CRS first, e.g. gdalwarp -t_srs EPSG:326xx (its UTM zone) -tr 10 10"
        )


def plan(job: JobConfig) -> Plan:
    """Preflight and plan a job without writing anything.

    Raises:
        InputError, ModelError, ConfigError: anything that makes the job impossible (exit 3).
    """
    if job.runner.kind == "ray":
        require_extra("ray", "--runner ray (or --ray-address)")
    model_paths = [resolve_model(m) for m in (job.model.model, *job.model.ensemble)]
    model_path = model_paths[0]
    card = combined_card([read_model_card(m) for m in model_paths], [str(m) for m in model_paths])
    if job.task == "segment" and card.task != "segmentation":
        raise ConfigError(
            f"{model_path}: `geofg segment` expects a segmentation bundle, found task "
            f"{card.task!r}; use `geofg classify` or give a segmentation bundle with --model"
        )
    info = open_raster(
        job.read.inputs,
        job.read.bands,
        max_pixels=job.read.max_pixels,
        assume_crs=job.read.assume_crs,
        max_compression_ratio=job.read.max_compression_ratio,
    )
    _check_projected(info)
    indices = select_bands(info, card.bands)
    check_resolution(info.label(), max(abs(info.transform[0]), abs(info.transform[4])), card)
    if info.band_names is None:
        warnings.warn(
            f"{info.paths[0]}: no band names; assuming the model's order {','.join(card.bands)} "
            "(name them with --bands to be sure)",
            BandOrderAssumedWarning,
            stacklevel=2,
        )
    halo = unit_halo(job.tile.halo, card)
    mult = card.tile_multiple
    tile = job.tile.tile_size or round_up(job.tile.chunk + 2 * halo, mult)
    if tile % mult:
        raise ConfigError(
            f"--tile-size {tile} must be a multiple of {mult} for model {card.name}; "
            f"use {round_up(tile, mult)}"
        )
    overlap = min(2 * halo, tile // 2)
    if card.patch_size and tile < card.patch_size:
        raise ConfigError(
            f"--tile-size {tile} is smaller than the model's patch size {card.patch_size}; "
            f"use at least {card.patch_size}"
        )
    job = _align_chunk(job, tile, halo, overlap)
    units = plan_units(info.height, info.width, job.tile.chunk, halo)
    mask, mask_indices = _plan_mask(job, info, card)
    roles = band_roles(card.bands)
    season = assess_season(
        info,
        indices[roles["red"]] if "red" in roles else None,
        indices[roles["nir"]] if "nir" in roles else None,
    )
    return Plan(
        job=job,
        info=info,
        card=card,
        model_path=str(model_path),
        model_sha256=models_sha256([bundle_sha256(m) for m in model_paths], job.model.tta),
        band_indices=tuple(indices),
        tile_size=tile,
        halo=halo,
        overlap=overlap,
        config_hash=job.output_hash(tile, halo, mask.describe() if mask else None),
        units=tuple(units),
        extra_model_paths=tuple(str(m.resolve()) for m in model_paths[1:]),
        mask=mask,
        mask_indices=mask_indices,
        season=season,
    )


def unit_halo(requested: int | None, card: ModelCard) -> int:
    """The context read around each unit: ``requested`` (``--halo`` / ``tile.halo``) or the
    card's. Less than the card's is allowed, with a :class:`HaloBelowCardWarning`: the card's halo
    covers the network's receptive field, so less lets a unit's edge pixels see padding (on
    T33UUU, 256 px tiles with ``--halo 16`` changed class across a unit edge on 6.4 % of rows,
    the default map at that column on 4.2 %; with the card's 32 the unit edge matched the default)."""
    if requested is None:
        return card.halo
    if requested < card.halo:
        warnings.warn(
            f"--halo {requested} is less than model {card.name}'s {card.halo} px (its card's context, "
            f"at least its receptive field): class changes may line up along unit edges; use --halo "
            f"{card.halo} or more, or leave it to the card",
            HaloBelowCardWarning,
            stacklevel=3,
        )
    return requested


def _align_chunk(job: JobConfig, tile: int, halo: int, overlap: int) -> JobConfig:
    """``job`` with its chunk set to a whole number of tiles a side (:func:`geofg.grid.aligned_chunk`)
    when a tile size was given and the chunk was not: 256 px tiles with a 16 px halo make
    896 px units of 4 x 4 tiles, where 1024 needs 5 x 5 (1.56 times the unit's pixels predicted
    instead of 1.31). A chunk given by the user is kept."""
    if job.tile.tile_size is None or "chunk" in job.tile.model_fields_set:
        return job
    chunk = aligned_chunk(tile, halo, overlap, limit=job.tile.chunk)
    if chunk is None or chunk == job.tile.chunk:
        return job
    return job.model_copy(update={"tile": job.tile.model_copy(update={"chunk": chunk})})


def _plan_mask(job: JobConfig, info: RasterInfo, card: ModelCard,
               ) -> tuple[MaskPlan | None, tuple[int, ...]]:  # fmt: skip
    """The run's cloud mask and the indices of its bands, or (None, ()) (see geofg.masks)."""
    from rasterio.crs import CRS

    names = info.band_names
    if names is None and len(card.bands) == info.count:
        names = tuple(card.bands)  # the model's order is assumed (and warned about)
    pixel_m = info.resolution_m()
    if CRS.from_wkt(info.crs_wkt).is_geographic:
        pixel_m *= 111_320.0
    mask = plan_mask(names, job.mask.mode, label=info.label(), paths=info.paths,
                     dtype=info.dtype, pixel_m=pixel_m)  # fmt: skip
    if mask is None:
        return None, ()
    index = {n.casefold(): i for i, n in enumerate(names or ())}
    return mask, tuple(index[b.casefold()] for b in mask.bands)


@dataclass(frozen=True)
class RawWindow:
    """A unit's model bands as read, ``data`` (C, H, W), with ``valid`` (H, W), not normalised yet.

    :func:`prepare_unit` returns one for a predictor that normalises where its network runs
    (``takes_raw``: the CUDA path sends uint16 as it is, half the bytes of float32), where
    :func:`predict_window` hands its tiles to ``predictor.predict_raw``; and for the local
    runner on CPU, which defers the normalisation to :func:`infer_unit` on the compute thread
    (the reads queued ahead then hold uint16, not float32).
    """

    data: np.ndarray
    valid: np.ndarray


def takes_raw(predictor: object, dtype: np.dtype) -> bool:
    """True when ``predictor`` normalises raw samples of ``dtype`` itself (``predict_raw``)."""
    hook = getattr(predictor, "takes_raw", None)
    return bool(hook is not None and hook(dtype))


def predict_window(
    x: np.ndarray | RawWindow,
    valid: np.ndarray,
    predictor: Predictor,
    tile: int,
    overlap: int,
    batch_size: int,
    blend: str = "cosine",
    fixed_tile: bool = False,
) -> np.ndarray:
    """Predict every tile covering ``x`` (C, H, W) and blend them into (K, H, W) float32.

    Tiles without any valid pixel are skipped (their pixels are all invalid). ``x`` is padded up
    to at least one tile; the result is cropped back to (H, W). A window smaller than ``tile``
    both ways gets a smaller tile, unless ``fixed_tile`` (a compiled network: each new shape
    would compile it again). A :class:`RawWindow` goes to ``predictor.predict_raw`` tile by
    tile with its validity (padding invalid), to be normalised there.
    """
    raw = x if isinstance(x, RawWindow) else None
    arr = x.data if isinstance(x, RawWindow) else x
    _, h, w = arr.shape
    mult = getattr(predictor.card, "tile_multiple", 1)
    if not fixed_tile:
        tile = min(tile, round_up(max(h, w), mult))
    ph, pw = max(h, tile), max(w, tile)
    xp = pad_to(arr, ph, pw)
    vp = np.zeros((ph, pw), dtype=bool)
    vp[:h, :w] = valid
    tiles = [t for t in plan_tiles(ph, pw, tile, min(overlap, tile - 1)) if vp[_sl(t)].any()]

    def run(group: list[Window]) -> np.ndarray:
        batch = np.stack([xp[(slice(None), *_sl(t))] for t in group])
        if raw is None:
            return predictor.predict(batch)
        return predictor.predict_raw(batch, np.stack([vp[_sl(t)] for t in group]))  # type: ignore[attr-defined]

    if len(tiles) == 1 and tiles[0] == Window(0, 0, ph, pw):
        # one tile covers the window (the default: tile = chunk + 2 * halo): nothing to blend
        return run(tiles)[0][:, :h, :w]
    k = len(predictor.card.classes)
    acc = Accumulator(k, ph, pw)
    weights = blend_weights(blend, tile, min(overlap, tile - 1))
    for i in range(0, len(tiles), batch_size):
        group = tiles[i : i + batch_size]
        probs = run(group)
        for t, p in zip(group, probs, strict=True):
            acc.add(t, p, weights)
    return acc.result(Window(0, 0, h, w))


def _sl(t: Window) -> tuple[slice, slice]:
    return slice(t.row_off, t.row_end), slice(t.col_off, t.col_end)


@dataclass(frozen=True)
class UnitOutput:
    """What one unit produced: its layers (None when empty) and small statistics."""

    layers: dict[str, np.ndarray] | None
    stats: dict

    @property
    def empty(self) -> bool:
        """True when the unit had no valid pixel."""
        return self.layers is None


def layers_from_probs(
    probs: np.ndarray, raw: np.ndarray, valid: np.ndarray, card: ModelCard,
    mask: np.ndarray | None = None, assess_health: bool = True,
) -> tuple[dict[str, np.ndarray], dict]:
    """Turn core probabilities (K, h, w) and raw core data (C, h, w) into uint8 layers + stats.

    ``raw`` holds the model's bands (``card.bands``). ``mask`` (h, w) uint8 (:mod:`geofg.masks`,
    255 where not ``valid``) makes class, health, confidence and the index no data wherever it is
    not clear and adds the ``mask`` layer; ``assess_health`` False leaves health no data
    everywhere (the index layer ``ndvi``, written when the bands have red and NIR, stays).
    """
    cls, top = _top_class(probs)
    np.multiply(top, CONFIDENCE_SCALE, out=top)
    np.rint(top, out=top)
    conf = top.clip(0, CONFIDENCE_SCALE).astype(np.uint8)
    names = [c.name for c in card.classes]
    crop_ids = [names.index(n) for n in card.crop_classes] if assess_health else []
    roles = band_roles(card.bands)
    value = ndvi(raw, roles)
    health = health_layer(raw, cls, crop_ids, roles, value)
    index = index_layer(raw, roles, value)
    del value
    shown = valid if mask is None else mask == CLEAR  # pixels that carry a class
    all_shown = bool(shown.all())
    if not all_shown:
        for layer in (cls, conf, health, index):
            if layer is not None:
                layer[~shown] = FILL
    k = len(names)
    stats = {
        "valid_px": int(valid.sum()),
        # FILL (255) is never a class or health zone: count everything, keep the real codes
        "class_counts": _counts(cls, k),
        "health_counts": _counts(health, len(HEALTH_CLASSES)),
        "confidence_sum": int((conf if all_shown else conf[shown]).sum(dtype=np.int64)),
    }
    layers = {"class": cls, "health": health, "confidence": conf}
    if index is not None:
        layers[INDEX] = index
    if mask is not None:
        stats["mask_counts"] = mask_counts(mask)
        layers["mask"] = mask
    return layers, stats


def _top_class(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (argmax over K as uint8, max over K as float32) of ``probs`` (K, h, w).

    One pass per class instead of numpy's argmax and max over axis 0 (each a strided reduction,
    3x slower together on a 10 x 1024² unit). Ties go to the lower class, as with argmax.
    """
    top = probs[0].astype(np.float32, copy=True)
    cls = np.zeros(top.shape, dtype=np.uint8)
    better = np.empty(top.shape, dtype=bool)
    for i in range(1, probs.shape[0]):
        np.greater(probs[i], top, out=better)
        np.copyto(cls, i, where=better)
        np.maximum(top, probs[i], out=top)
    return cls, top


def _counts(layer: np.ndarray, n: int) -> list[int]:
    """Pixels of each code 0..n-1 in a uint8 ``layer``."""
    return np.bincount(layer.ravel(), minlength=256)[:n].tolist()


class _TimedPredictor:
    """A predictor whose ``predict`` calls add their seconds to ``forward``."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self.card = inner.card
        self.forward = 0.0

    def predict(self, x: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        try:
            return self.inner.predict(x)
        finally:
            self.forward += time.perf_counter() - t

    def predict_raw(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        try:
            return self.inner.predict_raw(data, valid)  # type: ignore[attr-defined]
        finally:
            self.forward += time.perf_counter() - t


Timer = Callable[[str, float], None]
"""Receives (stage, seconds): normalise, forward, blend (tiling and blending), mask, layers."""


def _no_timer(stage: str, seconds: float) -> None:
    pass


def prepare_unit(unit: WorkUnit, data: np.ndarray, valid: np.ndarray, p: UnitPlan,
                 timer: Timer = _no_timer, raw: bool = False) -> np.ndarray | RawWindow | None:
    """The model input (C, H, W) of a unit's read window, or None when its core has no valid pixel.

    ``raw``: the model's bands as read, in a :class:`RawWindow`, instead of the normalised float32
    input (for a predictor that normalises on its device, :func:`takes_raw`, or to normalise
    later, in :func:`infer_unit`).
    """
    core = unit.core.relative_to(unit.read)
    if not valid[core].any():
        return None
    n = len(p.card.bands)  # the model's channels come first (Plan.read_indices)
    bands = data[:n] if data.shape[0] > n else data
    if raw:
        return RawWindow(bands, valid)
    return _normalised(bands, valid, p.card, timer)


def _normalised(bands: np.ndarray, valid: np.ndarray, card: ModelCard, timer: Timer) -> np.ndarray:
    t = time.perf_counter()
    x = normalise(bands, valid, card.scale, card.mean, card.std, card.normalisation)
    timer("normalise", time.perf_counter() - t)
    return x


def infer_unit(x: np.ndarray | RawWindow, valid: np.ndarray, predictor: Predictor, p: UnitPlan,
               timer: Timer = _no_timer) -> np.ndarray:
    """Blended probabilities (K, H, W) over a unit's read window from :func:`prepare_unit`'s input.

    A :class:`RawWindow` the predictor cannot take is normalised here, on the host.
    """
    if isinstance(x, RawWindow) and not takes_raw(predictor, x.data.dtype):
        x = _normalised(x.data, x.valid, p.card, timer)
    timed = _TimedPredictor(predictor)
    t = time.perf_counter()
    probs = predict_window(x, valid, timed, p.tile_size, p.overlap, p.job.tile.batch_size,
                           p.job.tile.blend, fixed_tile=p.job.model.compile)
    timer("forward", timed.forward)
    timer("blend", time.perf_counter() - t - timed.forward)
    return probs


def finish_unit(unit: WorkUnit, probs: np.ndarray | None, data: np.ndarray, valid: np.ndarray,
                p: UnitPlan, timer: Timer = _no_timer) -> UnitOutput:
    """The unit's layers and statistics from its window's probabilities and raw data.

    ``probs`` None (nothing was predicted: no valid pixel in the core) gives an empty output.
    """
    if probs is None:
        return UnitOutput(None, {"valid_px": 0})
    core = unit.core.relative_to(unit.read)
    mask = None
    mp = getattr(p, "mask", None)
    if mp is not None:
        t = time.perf_counter()
        read_mask = getattr(p, "read_mask", None)  # a wider read of the mask bands (geofg.masks)
        if read_mask is not None:
            mdata, mvalid, window = read_mask(unit.core)
            raster: tuple[int, int] | None = p.raster_shape  # type: ignore[attr-defined]
        else:  # a plan without a wider read: the unit's own window
            mdata, mvalid, window, raster = data[list(p.mask_channels)], valid, unit.read, None
        mask = mask_window(
            mdata, mp.bands, mvalid, level=mp.level, scale=mp.scale, pixel_m=mp.pixel_m,
            origin=(window.row_off, window.col_off), raster=raster,
            region=Window(unit.core.row_off - window.row_off, unit.core.col_off - window.col_off,
                          unit.core.height, unit.core.width),
        )
        del mdata, mvalid
        names = [c.name for c in p.card.classes]
        shadow = mask == SHADOW
        if "water" in names and shadow.any():  # shadow the model sees as water: a lake (geofg.masks)
            top = np.zeros_like(shadow)  # the top class, on the shadow pixels only
            top[shadow] = probs[(slice(None), *core)][:, shadow].argmax(0) == names.index("water")
            mc = list(p.mask_channels)  # B02, B03, B04, B08...: green and NIR (NDWI's sign: any scale)
            mask = release_water_shadow(mask, top, data[mc[1]][core], data[mc[3]][core])
        timer("mask", time.perf_counter() - t)
    season = getattr(p, "season", None)
    n = len(p.card.bands)
    t = time.perf_counter()
    layers, stats = layers_from_probs(
        probs[(slice(None), *core)], data[(slice(n), *core)], valid[core], p.card, mask,
        assess_health=season is None or season.assessed,
    )
    timer("layers", time.perf_counter() - t)
    if season is not None and not season.assessed:
        stats["health_not_assessed"] = season.reason
    return UnitOutput(layers, stats)


def process_unit(
    unit: WorkUnit, data: np.ndarray, valid: np.ndarray, predictor: Predictor, p: UnitPlan,
    timer: Timer = _no_timer,
) -> UnitOutput:
    """Process one unit from its read window's data (C, H, W) and validity (H, W).

    The three stages in one call; the local runner runs them on its reader, compute and writer
    threads instead. ``timer`` receives the seconds of each stage (``geofg classify --profile``).
    """
    x = prepare_unit(unit, data, valid, p, timer, raw=takes_raw(predictor, data.dtype))
    return predict_unit(unit, x, data, valid, predictor, p, timer)


def predict_unit(unit: WorkUnit, x: np.ndarray | RawWindow | None, data: np.ndarray, valid: np.ndarray,
                 predictor: Predictor, p: UnitPlan, timer: Timer = _no_timer) -> UnitOutput:
    """:func:`infer_unit` then :func:`finish_unit` on :func:`prepare_unit`'s output ``x``."""
    probs = None if x is None else infer_unit(x, valid, predictor, p, timer)
    del x
    return finish_unit(unit, probs, data, valid, p, timer)

"""Clouds, cloud shadows and snow/ice: a per-pixel mask computed unit by unit before anything is reported.

The mask is one uint8 layer (:data:`MASK_CLASSES`): 0 clear, 1 cloud, 2 cloud shadow, 3 snow/ice,
255 no data. Where it is not clear, the mosaic's ``class``, ``health`` and ``confidence`` are 255
(no data): cloud, shadow or snow is never counted as a land-cover area. Areas of each mask code
are reported apart (run summary, ``geofg info``, ``geofg stats``).

**Clouds and shadows: ukis-csmask** (DLR, Apache-2.0, https://github.com/dlr-eoc/ukis-csmask),
whose ONNX U-Nets (EfficientNet-B4 encoder) ship inside its wheel: one per product level (L1C,
L2A) and band set (6 bands B02,B03,B04,B08,B11,B12, or 4 bands B02,B03,B04,B08). Chosen over
``s2cloudless`` 1.7.3 by measurement on the T33UUU scene (docs/masks.md): s2cloudless has no
shadow class (the shadow over the southern lake stays unmasked), needs B01, B09 and B10 (absent
from every L2A product), flagged dark conifer stands and bright fields as cloud, and took 8.1 s per
megapixel against 0.7 s.

The models were trained on ~30 m input, so the pixels are averaged in ``f x f`` blocks
(``f = round(30 m / pixel size)``: 3 at 10 m), predicted, and repeated back. Blocks are aligned
to the raster grid (``origin``), not to the window. geofg runs the packaged ONNX model itself
(:func:`cloud_shadow`, normalised with the statistics of the model's json), on
:data:`TILE` x :data:`TILE`-block tiles fixed on the raster's block grid (:func:`tile_spans`): a
block takes the code of the tile whose centre part (the tile less :data:`MARGIN` blocks each
side) holds it. So a pixel's code depends on the raster, never on the unit: a unit reads the
mask bands over the window its core's tiles need (:func:`mask_read_window`, a second read beside
its own) and keeps its core (issue 15: ukis-csmask's own tiling starts at the array's origin and
pads small arrays by mirroring, so each unit's window gave another mask). Tiles shared by
neighbouring units run once per process (a cache keyed by the tile's content, :data:`CACHE_TILES`).
The mask needs no full-scene state.

**Open water is not shadow.** The detector calls dark lakes shadow, the more so the less
context it has (with each unit's own window as context, before the fixed tiles, 3,459 of the
5,717 OSM lake pixels of T33UUU's east unit), and a real
shadow over a lake leaves water looking like water. So a shadow pixel whose NDWI
``(B03 - B08) / (B03 + B08)`` exceeds :data:`WATER_NDWI` (0.2) stays clear and is classified. On
T33UUU (whole-scene mask) that releases 29,016 shadow pixels: of the OSM-labelled ones 1,919 are
water and 114 land; all 904 hand-drawn lake pixels under the southern cloud's shadow (NDWI
0.26-0.41) are released, and the default model calls every one water. Lakes with murkier water
(NDWI 0-0.2) are released when the land-cover model also calls them water
(:func:`release_water_shadow`, applied by the pipeline for models with a class named ``water``):
on T33UUU's default run that clears 7,108 more shadow pixels, 3,897 of them OSM water and 424
OSM land (325 forest).

**Snow/ice: an NDSI rule** (Hall et al. 1995, the thresholds of the MODIS/Landsat snow products):
``NDSI = (B03 - B11) / (B03 + B11) > 0.4`` and ``B08 > 0.11`` and ``B03 > 0.10`` (reflectance).
The NIR test keeps water out; the green test dark pixels. It needs B03, B08 and B11; without B11
no pixel is flagged snow/ice. Precedence where several apply: no data, cloud, shadow (not over
open water), snow/ice.

**Which inputs are masked** (:func:`plan_mask`): masking is on by default (``mode="auto"``) for
inputs whose bands all carry Sentinel-2 names (B01..B12, B8A); other inputs (NAIP R,G,B,NIR,
unnamed bands) are not masked unless ``mode="on"``, which then refuses them. A Sentinel-2 input
without B02, B03, B04 and B08 cannot be masked: by default it runs unmasked with a warning that
says so (:class:`MaskBandsWarning`, and the mosaic has no ``mask`` layer); with ``mode="on"``
(``--mask``) it is refused before anything is written (exit 3, one line). Without B11 or B12 the
4-band model runs, with a warning. The product level
is read from the file names (``MSIL1C``, ``_L2A_``, ``S2L2A``...), else L1C when B10 is present
and L2A when it is not (L2A products drop B10). Pixel values: integer inputs are reflectance x
10000 (the Sentinel-2 DN convention; the PB 04.00 offset of -1000 is not removed), float inputs
reflectance.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geofg.errors import ConfigError, GeofgWarning, MissingBandsError, WeightsError
from geofg.grid import Window

log = logging.getLogger(__name__)

CLEAR, CLOUD, SHADOW, SNOW = 0, 1, 2, 3
FILL = 255
#: Mask codes 0..3: name and quicklook colour.
MASK_CLASSES: tuple[tuple[str, str], ...] = (
    ("clear", "#ffffff"),
    ("cloud", "#e6e6e6"),
    ("cloud shadow", "#4b4b78"),
    ("snow/ice", "#7fdbff"),
)
DETECTOR = "ukis-csmask"
S2_NAMES = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
            "B09", "B10", "B11", "B12")  # fmt: skip
#: ukis-csmask's band roles, in the order its band_order names them.
_ROLES = (("blue", "B02"), ("green", "B03"), ("red", "B04"), ("nir", "B08"),
          ("swir16", "B11"), ("swir22", "B12"))  # fmt: skip
NDSI_MIN, NIR_MIN, GREEN_MIN = 0.4, 0.11, 0.10
WATER_NDWI = 0.2
"""Shadow pixels with NDWI = (B03 - B08) / (B03 + B08) above this are open water: not masked."""
MODEL_PIXEL_M = 30.0
TILE = 256
"""The detector's input side (30 m blocks): the size it was trained on and its ONNX input."""
MARGIN = 64
"""Blocks at each side of a tile whose codes are not kept (the next tile's centre has them)."""
_LEVEL = re.compile(r"(?:^|[_\-.]|MSI|S2)L(1C|2A)(?:$|[_\-.])", re.IGNORECASE)

MaskMode = Literal["auto", "on", "off"]


class MaskBandsWarning(GeofgWarning):
    """The cloud mask runs with fewer bands than it prefers (4-band model, no snow/ice)."""


@dataclass(frozen=True, slots=True)
class MaskPlan:
    """How a run masks clouds: which bands (names, in the order the mask reads them), model, level.

    ``bands`` is B02,B03,B04,B08 then B11,B12 when present: the channel order
    :func:`mask_window` expects from the caller.
    """

    bands: tuple[str, ...]
    level: Literal["l1c", "l2a"]
    scale: float
    pixel_m: float

    @property
    def variant(self) -> str:
        """``6b`` or ``4b``: which ukis-csmask model runs."""
        return "6b" if len(self.bands) == 6 else "4b"

    @property
    def has_snow(self) -> bool:
        """Whether the NDSI rule can run (it needs B11)."""
        return "B11" in self.bands

    def describe(self) -> dict:
        """Provenance for the mosaic's attributes."""
        from importlib.metadata import version

        return {
            "detector": f"{DETECTOR} {version('ukis-csmask')}",
            "model": f"model_{self.variant}_{self.level}",
            "bands": list(self.bands),
            "pooled_to_m": MODEL_PIXEL_M,
            "snow_ice": (f"NDSI (B03-B11)/(B03+B11) > {NDSI_MIN}, B08 > {NIR_MIN}, B03 > {GREEN_MIN}"
                         if self.has_snow else "not flagged (no B11)"),
        }


def is_sentinel2(band_names: Sequence[str] | None) -> bool:
    """True when every band carries a Sentinel-2 name (B01..B12, B8A), case-insensitively.

    Examples:
        >>> is_sentinel2(["B02", "b8a"]), is_sentinel2(["R", "G", "B", "NIR"]), is_sentinel2(None)
        (True, False, False)
    """
    return bool(band_names) and all(str(b).upper() in S2_NAMES for b in band_names)  # type: ignore[union-attr]


def product_level(paths: Sequence[str], band_names: Sequence[str]) -> Literal["l1c", "l2a"]:
    """L1C or L2A: from the file names when they say (``MSIL2A``, ``_L1C_``), else B10 means L1C.

    Examples:
        >>> product_level(["/d/S2A_MSIL2A_20170613T101031_87_48_B02.tif"], ["B02"])
        'l2a'
        >>> product_level(["/d/worldcereal_S2L2A_2021-07_9band.tif"], ["B02"])
        'l2a'
        >>> product_level(["/d/T33UUU_20170216T102101_B02.jp2"], ["B02", "B10"])
        'l1c'
    """
    for p in paths:
        for part in str(p).replace("\\", "/").split("/")[-2:]:
            m = _LEVEL.search(part.rsplit(".", 1)[0] if "." in part else part)
            if m:
                return "l1c" if m.group(1).upper() == "1C" else "l2a"
    return "l1c" if any(str(b).upper() == "B10" for b in band_names) else "l2a"


def plan_mask(band_names: Sequence[str] | None, mode: MaskMode, *, label: str,
              paths: Sequence[str] = (), dtype: str = "uint16", pixel_m: float = 10.0,
              ) -> MaskPlan | None:  # fmt: skip
    """Preflight the cloud mask: which bands it reads, or None when this input is not masked.

    Args:
        band_names: the input's band names (None when it names none).
        mode: ``auto`` (mask Sentinel-2 inputs), ``on`` (mask, or refuse the input), ``off``.
        label: the input as named in messages.
        paths: the input files (their names may carry the product level).
        dtype: the input's dtype (integers are reflectance x 10000).
        pixel_m: the output pixel size (metres).

    Raises:
        MissingBandsError: ``mode="on"`` and B02, B03, B04 or B08 is missing (exit 3); with
            ``auto`` a :class:`MaskBandsWarning` says the input runs unmasked.
        ConfigError: ``mode="on"`` for an input without Sentinel-2 band names (exit 3).
    """
    if mode == "off":
        return None
    if not is_sentinel2(band_names):
        if mode == "auto":
            return None
        found = ",".join(band_names) if band_names else "no band names"
        raise ConfigError(
            f"{label}: --mask needs Sentinel-2 bands named B02,B03,B04,B08 (and B11,B12), found "
            f"{found}; name the bands with --bands or drop --mask"
        )
    have = {str(b).upper() for b in band_names or ()}
    need = [b for _, b in _ROLES[:4] if b not in have]
    if need and mode == "auto":
        warnings.warn(MaskBandsWarning(
            f"{label}: clouds are NOT masked: the cloud mask ({DETECTOR}) needs bands "
            f"{','.join(need)} (expected B02,B03,B04,B08), input has {','.join(band_names or ())}; "
            "cloud and shadow pixels will be classified as land cover (pass --no-mask to "
            "silence this, --mask to refuse such inputs)"), stacklevel=2)  # fmt: skip
        return None
    if need:
        raise MissingBandsError(
            f"{label}: the cloud mask ({DETECTOR}) needs bands {','.join(need)} (expected "
            f"B02,B03,B04,B08, better with B11,B12), input has {','.join(band_names or ())}; give "
            "an input with those bands or pass --no-mask to run without cloud masking"
        )
    six = all(b in have for b in ("B11", "B12"))
    bands = tuple(b for _, b in (_ROLES if six else _ROLES[:4]))
    if not six:
        warnings.warn(MaskBandsWarning(
            f"{label}: no B11/B12, so the cloud mask runs {DETECTOR}'s 4-band model (less "
            "accurate for haze and shadows) and flags no snow/ice"), stacklevel=2)  # fmt: skip
    scale = 1e-4 if np.dtype(dtype).kind in "ui" else 1.0
    plan = MaskPlan(bands, product_level(paths, list(band_names or ())), scale, float(pixel_m))
    check_detector(plan.variant, plan.level, label=label)
    return plan


def detector_files(variant: str, level: str) -> tuple[str, str]:
    """The packaged ONNX model and json of ``variant``/``level`` (paths; they may not exist)."""
    import importlib.util

    spec = importlib.util.find_spec("ukis_csmask")
    if spec is None or not spec.submodule_search_locations:
        return (f"ukis_csmask/model_{variant}_{level}.onnx", f"ukis_csmask/model_{variant}_{level}.json")
    base = Path(next(iter(spec.submodule_search_locations)))
    return str(base / f"model_{variant}_{level}.onnx"), str(base / f"model_{variant}_{level}.json")


def check_detector(variant: str, level: str, *, label: str) -> None:
    """Refuse (exit 3, before anything is written) when the mask's model or its runtime is missing.

    Raises:
        WeightsError: ukis-csmask, its model file or its json, or onnxruntime is not installed.
    """
    import importlib.util

    missing = [f for f in detector_files(variant, level) if not Path(f).is_file()]
    if importlib.util.find_spec("onnxruntime") is None:
        missing.append("onnxruntime (the package)")
    if missing:
        raise WeightsError(
            f"{label}: the cloud mask needs {DETECTOR}'s packaged model, expected "
            f"{', '.join(missing)}, found none; reinstall it with "
            f"pip install --force-reinstall '{DETECTOR}[cpu]>=1.0,<1.1' or pass --no-mask"
        )


def pool_factor(pixel_m: float) -> int:
    """Block size that brings ``pixel_m`` pixels nearest to the model's 30 m.

    Examples:
        >>> pool_factor(10.0), pool_factor(20.0), pool_factor(60.0), pool_factor(5.0)
        (3, 2, 1, 6)
    """
    return max(1, int(MODEL_PIXEL_M / pixel_m + 0.5))


def _pooled(x: np.ndarray, f: int, origin: tuple[int, int], valid: np.ndarray | None = None,
            ) -> tuple[np.ndarray, tuple[int, int]]:  # fmt: skip
    """Average (C, H, W) in f x f blocks aligned to the raster grid; return blocks and the pads.

    The window is padded (edge values) before its first block boundary and after its last, so
    block ``(i, j)`` always covers raster rows ``f*i .. f*i+f-1`` whatever the window. With
    ``valid`` (H, W) a block averages its valid pixels only (no data outside the raster or in a
    scene's nodata does not darken a cloud at the edge); a block without one is 0.
    """
    c, h, w = x.shape
    r0, c0 = origin[0] % f, origin[1] % f
    r1, c1 = (-(r0 + h)) % f, (-(c0 + w)) % f
    pads = ((r0, r1), (c0, c1))
    if valid is None:
        valid = np.ones((h, w), bool)
    padded = bool(r0 or r1 or c0 or c1)
    vp = np.pad(valid, pads, mode="edge") if padded else valid
    hp, wp = vp.shape[0] // f, vp.shape[1] // f
    total = np.empty((c, hp, wp), np.float32)
    for i in range(c):  # a band at a time: the padded copy is one band, not all of them
        xp = np.pad(x[i : i + 1] * valid, ((0, 0), *pads), mode="edge") if padded else x[i : i + 1] * valid
        total[i] = xp.reshape(1, hp, f, wp, f).sum(axis=(2, 4), dtype=np.float32)[0]
    n = vp.reshape(hp, f, wp, f).sum(axis=(1, 3), dtype=np.float32)
    return total / np.maximum(n, 1.0), (r0, c0)


def tile_spans(n: int, tile: int | None = None, margin: int | None = None) -> list[tuple[int, int, int, int]]:
    """The detector's tiles along one raster axis of ``n`` blocks: ``(start, end, keep0, keep1)``.

    Tile ``k`` keeps blocks ``k*s .. (k+1)*s - 1`` (``s = tile - 2*margin``) and sees ``margin``
    blocks more each side; tiles are moved inward at the raster's edges (never past them), so a
    kept block is at least ``margin`` blocks from its tile's edge unless the raster ends there.
    An axis of at most ``tile`` blocks is one tile. A function of ``n`` only: never of a window.
    ``tile`` and ``margin`` default to :data:`TILE` and :data:`MARGIN`.

    Examples:
        >>> tile_spans(512)
        [(0, 256, 0, 128), (64, 320, 128, 256), (192, 448, 256, 384), (256, 512, 384, 512)]
        >>> tile_spans(300)
        [(0, 256, 0, 128), (44, 300, 128, 300)]
        >>> tile_spans(100)
        [(0, 100, 0, 100)]
    """
    tile = TILE if tile is None else tile
    margin = MARGIN if margin is None else margin
    if n <= tile:
        return [(0, n, 0, n)]
    step = tile - 2 * margin
    spans: list[tuple[int, int, int, int]] = []
    for k in range(-(-n // step)):
        start = min(max(k * step - margin, 0), n - tile)
        if spans and spans[-1][0] == start:  # moved onto the previous tile: it keeps these blocks too
            spans[-1] = (start, start + tile, spans[-1][2], min((k + 1) * step, n))
        else:
            spans.append((start, start + tile, k * step, min((k + 1) * step, n)))
    return spans


def _spans_for(n: int, b0: int, b1: int) -> list[tuple[int, int, int, int]]:
    """The tiles of :func:`tile_spans` whose kept blocks meet blocks ``b0 .. b1 - 1``."""
    return [t for t in tile_spans(n) if t[2] < b1 and t[3] > b0]


def mask_read_window(core: Window, height: int, width: int, pixel_m: float) -> Window:
    """The window (raster pixels, inside the raster) whose data gives the mask of ``core``.

    The union of the detector's tiles (:func:`tile_spans` on the raster's blocks) that keep a
    block of ``core``: read it for the mask bands and pass it to :func:`mask_window` with
    ``raster=(height, width)`` and ``region`` = ``core`` relative to it.
    """
    f = pool_factor(pixel_m)
    rows = _spans_for(-(-height // f), core.row_off // f, -(-core.row_end // f))
    cols = _spans_for(-(-width // f), core.col_off // f, -(-core.col_end // f))
    r0, c0 = rows[0][0] * f, cols[0][0] * f
    return Window(r0, c0, min(rows[-1][1] * f, height) - r0, min(cols[-1][1] * f, width) - c0)


@functools.lru_cache(maxsize=8)
def _session(variant: str, level: str, threads: int) -> tuple[Any, dict]:
    """The packaged ONNX model of ``variant``/``level`` and its band statistics (mean, std, names)."""
    import json

    import onnxruntime as ort

    model, meta = detector_files(variant, level)
    stats = json.loads(Path(meta).read_text())["data"]["dataset_statistics"]
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.enable_cpu_mem_arena = False  # the process heap serves it: no second cache of freed memory
    sess = ort.InferenceSession(model, sess_options=so,
                                providers=["CPUExecutionProvider"])  # fmt: skip
    return sess, stats


def cloud_shadow(refl: np.ndarray, level: str, threads: int = 0) -> np.ndarray:
    """Run ukis-csmask's packaged ONNX model on one tile: reflectance (C, h, w) float32
    (B02,B03,B04,B08[,B11,B12]), h and w at most :data:`TILE` -> (h, w) uint8.

    Codes: 0 clear, 1 cloud, 2 shadow. A tile smaller than :data:`TILE` is padded (symmetric) to
    it; the input is normalised with the band statistics of the model's json.
    """
    c, h, w = refl.shape
    sess, stats = _session("6b" if c == 6 else "4b", level, threads)
    names = [r for r, _ in _ROLES[:c]]
    order = [names.index(b) for b in stats["band_names"]]
    mean = np.asarray(stats["img"][0], np.float32)[:, None, None]
    std = np.asarray(stats["img"][1], np.float32)[:, None, None]
    x = (refl[order].astype(np.float32) - mean) / std
    if h < TILE or w < TILE:
        x = np.pad(x, ((0, 0), (0, TILE - h), (0, TILE - w)), mode="symmetric")
    logits = sess.run(None, {sess.get_inputs()[0].name: x[None]})[0][0]
    return logits.argmax(0).astype(np.uint8)[:h, :w]


_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_TILES = 256
"""Tiles whose codes a process keeps (64 KiB each): neighbouring units share tiles."""


def _cached_cloud_shadow(tile: np.ndarray, level: str, threads: int) -> np.ndarray:
    """:func:`cloud_shadow` of ``tile``, remembered by its content (a hash of its bytes), so a tile
    that neighbouring units share runs once per process while it is among the last
    :data:`CACHE_TILES` used."""
    key = (cloud_shadow, level, tile.shape, hashlib.blake2b(tile.tobytes(), digest_size=16).digest())
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    cs = cloud_shadow(tile, level, threads)
    with _CACHE_LOCK:
        _CACHE[key] = cs
        while len(_CACHE) > CACHE_TILES:
            _CACHE.popitem(last=False)
    return cs


def _cloud_shadow_tiled(pooled: np.ndarray, first: tuple[int, int], blocks: tuple[int, int],
                        region: tuple[int, int, int, int], level: str, threads: int,
                        ) -> np.ndarray:  # fmt: skip
    """Cloud/shadow codes of the raster blocks ``region`` (r0, r1, c0, c1), from the fixed tiles.

    ``pooled`` (C, hb, wb) holds raster blocks from ``first`` (row, col) on; ``blocks`` is the
    raster's size in blocks. Each block takes the code its tile's centre part gives it
    (:func:`tile_spans`); a tile part outside ``pooled`` is left out (the tile is cut there).
    """
    r0, r1, c0, c1 = region
    out = np.zeros((r1 - r0, c1 - c0), np.uint8)
    hb, wb = pooled.shape[1:]
    for ts, te, k0, k1 in _spans_for(blocks[0], r0, r1):
        for us, ue, j0, j1 in _spans_for(blocks[1], c0, c1):
            a, b = max(ts - first[0], 0), min(te - first[0], hb)
            c, d = max(us - first[1], 0), min(ue - first[1], wb)
            cs = _cached_cloud_shadow(np.ascontiguousarray(pooled[:, a:b, c:d]), level, threads)
            ka, kb = max(k0, r0), min(k1, r1)
            ja, jb = max(j0, c0), min(j1, c1)
            out[ka - r0 : kb - r0, ja - c0 : jb - c0] = cs[ka - first[0] - a : kb - first[0] - a,
                                                          ja - first[1] - c : jb - first[1] - c]  # fmt: skip
    return out


def normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(a - b) / (a + b)`` as float32, 0 where ``a + b <= 0`` (NDSI, NDWI)."""
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    total = a + b
    out = np.zeros_like(a)
    np.divide(a - b, total, out=out, where=total > 0)
    return out


def snow_ice(green: np.ndarray, nir: np.ndarray, swir: np.ndarray) -> np.ndarray:
    """The NDSI snow/ice rule on reflectance arrays (h, w) -> bool (h, w).

    Examples:
        >>> snow_ice(np.array([0.8, 0.05]), np.array([0.7, 0.02]), np.array([0.1, 0.01]))
        array([ True, False])
    """
    return (normalised_difference(green, swir) > NDSI_MIN) & (nir > NIR_MIN) & (green > GREEN_MIN)


def open_water(green: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """NDWI > :data:`WATER_NDWI` on reflectance arrays (h, w) -> bool (h, w): water, shadowed or not.

    Examples:
        >>> open_water(np.array([0.05, 0.05]), np.array([0.02, 0.2]))
        array([ True, False])
    """
    return normalised_difference(green, nir) > WATER_NDWI


def mask_window(data: np.ndarray, band_names: Sequence[str], valid: np.ndarray, *,
                level: str = "l1c", scale: float = 1e-4, pixel_m: float = 10.0,
                origin: tuple[int, int] = (0, 0), raster: tuple[int, int] | None = None,
                region: Window | None = None, threads: int = 0) -> np.ndarray:  # fmt: skip
    """Return the mask (h, w) uint8 of ``region``: 0 clear, 1 cloud, 2 shadow, 3 snow/ice, 255 nodata.

    A pure function of the window: ``data`` (C, H, W) holds raw pixels of the bands named by
    ``band_names`` (at least B02, B03, B04, B08; B11 and B12 are used when present, any other band
    is ignored), ``valid`` (H, W) bool marks pixels with data. ``origin`` is the window's
    ``(row_off, col_off)`` on the raster grid (block alignment, see the module docstring) and
    ``raster`` the raster's ``(height, width)``: the detector runs on tiles fixed on the raster's
    blocks (:func:`tile_spans`), so a pixel's code does not depend on the window as long as the
    window holds the tiles of ``region`` (:func:`mask_read_window`); tile parts outside it are
    left out. ``raster`` None: the window is the whole raster. ``region`` (relative to the window,
    default all of it) is the part returned. ``scale`` turns raw values into reflectance.

    Raises:
        MissingBandsError: one of B02, B03, B04, B08 is not in ``band_names``.
    """
    index = {str(n).upper(): i for i, n in enumerate(band_names)}
    missing = [b for _, b in _ROLES[:4] if b not in index]
    if missing:
        raise MissingBandsError(f"mask_window: expected bands B02,B03,B04,B08 among the window's "
                                f"bands, found {','.join(band_names)}; pass those bands")  # fmt: skip
    six = "B11" in index and "B12" in index
    order = [index[b] for _, b in (_ROLES if six else _ROLES[:4])]
    region = region or Window(0, 0, *valid.shape)
    rows, cols = region.row_off, region.col_off
    core = (slice(rows, region.row_end), slice(cols, region.col_end))
    out = np.zeros((region.height, region.width), np.uint8)
    v = valid[core]
    if not v.any():
        out[:] = FILL
        return out
    if raster is None:
        origin = (origin[0] % pool_factor(pixel_m), origin[1] % pool_factor(pixel_m))
        raster = (origin[0] + valid.shape[0], origin[1] + valid.shape[1])
    f = pool_factor(pixel_m)
    refl = data[order].astype(np.float32) * np.float32(scale)
    pooled, _ = _pooled(refl, f, origin, valid) if f > 1 else (refl, (0, 0))
    first = (origin[0] // f, origin[1] // f)
    top, left = origin[0] + rows, origin[1] + cols  # the region on the raster grid
    blocks = (top // f, -(-(top + region.height) // f), left // f, -(-(left + region.width) // f))
    cs = _cloud_shadow_tiled(pooled, first, (-(-raster[0] // f), -(-raster[1] // f)), blocks, level,
                             threads)  # fmt: skip
    if f > 1:
        cs = np.repeat(np.repeat(cs, f, axis=0), f, axis=1)
    cs = cs[top - blocks[0] * f : top - blocks[0] * f + region.height,
            left - blocks[2] * f : left - blocks[2] * f + region.width]  # fmt: skip
    r = refl[(slice(None), *core)]
    if "B03" in index and "B08" in index and "B11" in index:
        snow = snow_ice(r[1], r[3], data[index["B11"]][core].astype(np.float32) * np.float32(scale))
        out[snow] = SNOW
    out[(cs == 2) & ~open_water(r[1], r[3])] = SHADOW
    out[cs == 1] = CLOUD
    out[~v] = FILL
    return out


def release_water_shadow(mask: np.ndarray, model_water: np.ndarray, green: np.ndarray,
                         nir: np.ndarray) -> np.ndarray:  # fmt: skip
    """Clear the shadow pixels the land-cover model calls water and whose NDWI is above 0.

    The second open-water rule (the module docstring): ``mask`` (H, W) from :func:`mask_window`,
    ``model_water`` (H, W) bool where the model's top class is water, ``green``/``nir`` (H, W)
    in any common scale (reflectance or DN: only the sign of NDWI counts). Returns a new mask.

    Examples:
        >>> m = np.array([SHADOW, SHADOW, SHADOW, CLOUD], np.uint8)
        >>> release_water_shadow(m, np.array([True, True, False, True]),
        ...                      np.array([0.05, 0.05, 0.05, 0.5]), np.array([0.04, 0.2, 0.02, 0.1])).tolist()
        [0, 2, 2, 1]
    """
    g = green.astype(np.float32)
    n = nir.astype(np.float32)
    out = mask.copy()
    out[(mask == SHADOW) & model_water & (g > n)] = CLEAR
    return out


def mask_counts(mask: np.ndarray) -> list[int]:
    """Pixels of each code 0..3 (clear, cloud, shadow, snow/ice) in ``mask``."""
    return np.bincount(mask.ravel(), minlength=256)[: len(MASK_CLASSES)].tolist()

"""Sentinel-2 band-file sets: which files are band files, and how their grids line up.

A *band-file set* is one single-band raster per spectral band, at 10, 20 or 60 m, as in a
Sentinel-2 ``IMG_DATA`` folder (``T33UUU_20170216T102101_B8A.jp2``) or a BigEarthNet patch
(``…_B02.tif``). A file is a band file when its stem ends in ``B01``…``B12`` or ``B8A`` after a
``_`` (or is exactly that), case-insensitively, optionally followed by an L2A resolution suffix
(``_B02_10m``), with extension ``.jp2``, ``.tif`` or ``.tiff``: see :data:`BAND_FILE_STEM`.

:func:`gather_inputs` decides whether the user's inputs are a band-file set (one folder holding
band files, or several band files) or a single GeoTIFF. :func:`stack_band_files` checks a set and
picks its output grid: the finest band's. Every other band must be on the same CRS, with pixel
sizes an integer multiple ``f`` of the finest and its origin a whole number of fine pixels away
(:func:`place_on_grid`), so output pixel ``(row, col)`` maps exactly to the band's pixel
``((row - row_off) // f_rows, (col - col_off) // f_cols)``: nearest-neighbour upsampling by
repetition (:func:`upsample`), exact and cheap. Anything else raises
:class:`~geofg.errors.GridMismatchError`.

Landsat band files share the ``B10``/``B11`` names with Sentinel-2 but not the bands (Landsat's
are thermal infrared, Sentinel-2's cirrus and SWIR), and number the others ``B1``…``B9``. Files
that can only be Landsat's (:func:`is_landsat_file`) are never band files here: a folder or list
holding them is refused with :class:`~geofg.errors.InputError` (:func:`gather_inputs`), rather
than read as a Sentinel-2 set of two bands with the rest silently left out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geofg.errors import GridMismatchError, InputError, UnreadableRasterError
from geofg.grid import Window
from geofg.io.paths import FileFacts

#: stem pattern of a band file; group 1 is the band name
BAND_FILE_STEM = re.compile(r"(?:^|_)(B\d\d|B8A)(?:_(?:10|20|60)m)?$", re.IGNORECASE)
BAND_FILE_EXTENSIONS = (".jp2", ".tif", ".tiff")
#: ESA band order; names outside it sort after, by name
S2_BAND_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
                 "B09", "B10", "B11", "B12")  # fmt: skip
_TOLERANCE_PX = 1e-4  # how far (in fine pixels) a grid may be from exact alignment
#: Landsat product ids (``LC08_L1TP_…``, ``LT05_…``), older scene ids (``LC80440342014…``) and the
#: short forms of test data (``l8_B1.tif``)
LANDSAT_PREFIX = re.compile(r"^(?:L[COTEM]0[4-9]_|L[COTEM][4-9]\d{6}|L[4-9]_)", re.IGNORECASE)
#: stem endings of Landsat band, QA and metadata files
LANDSAT_STEM = re.compile(r"(?:^|_)(?:B\d{1,2}|BQA|QA_[A-Z]+|MTL|ANG)$", re.IGNORECASE)
#: ... of which these never name a Sentinel-2 file (one-digit bands, Landsat's QA and MTL files)
LANDSAT_ONLY_STEM = re.compile(r"(?:^|_)(?:B[1-9]|BQA|QA_PIXEL|QA_RADSAT|MTL)$", re.IGNORECASE)


def is_landsat_file(path: str | os.PathLike[str]) -> bool:
    """Return True for a file name only Landsat uses: a band, QA or MTL file (not a user's stack).

    Examples:
        >>> [is_landsat_file(n) for n in ("l8_B10.tif", "LC08_L1TP_044034_20140318_B1.TIF",
        ...                               "l8_MTL.txt", "T33UUU_20170216T102101_B10.jp2",
        ...                               "B10.tif", "LC08_region_stack.tif")]
        [True, True, True, False, False, False]
    """
    stem = Path(path).stem
    return bool(LANDSAT_ONLY_STEM.search(stem)
                or (LANDSAT_PREFIX.match(Path(path).name) and LANDSAT_STEM.search(stem)))


def _refuse_landsat(raw: str, found: Sequence[str]) -> InputError:
    shown = ", ".join(Path(n).name for n in found[:4]) + (", ..." if len(found) > 4 else "")
    return InputError(
        f"{raw}: expected a GeoTIFF or Sentinel-2 band files (*_B01 ... *_B12, *_B8A), found "
        f"Landsat files ({shown}); Landsat's band numbers are not Sentinel-2's (its B10 and B11 "
        "are thermal), so they are not read as band files and geofg ships no Landsat model: to "
        "run a model trained on Landsat bands, stack them into one GeoTIFF and name each band "
        "with --bands"
    )


def band_name_of(path: str | os.PathLike[str]) -> str | None:
    """Return the band name a file name claims (``"B8A"``), or None when it is not a band file.

    Examples:
        >>> band_name_of("T33UUU_20170216T102101_b8a.jp2"), band_name_of("B02.tif")
        ('B8A', 'B02')
        >>> band_name_of("T33UUU_20170216T102101_TCI.jp2") is None
        True
        >>> band_name_of("LC08_L1TP_044034_20140318_20170306_01_T1_B10.TIF") is None  # Landsat's
        True
    """
    p = Path(path)
    if p.suffix.lower() not in BAND_FILE_EXTENSIONS or is_landsat_file(p):
        return None
    match = BAND_FILE_STEM.search(p.stem)
    return match.group(1).upper() if match else None


def band_sort_key(name: str) -> tuple[int, str]:
    """Sort key putting band names in ESA order (B8A after B08), unknown names last."""
    upper = name.upper()
    rank = S2_BAND_ORDER.index(upper) if upper in S2_BAND_ORDER else len(S2_BAND_ORDER)
    return rank, upper


def scan_folder(folder: Path) -> tuple[list[tuple[str, Path]], list[Path], list[str]]:
    """List a folder's band files, its other GeoTIFFs, and every visible entry name.

    Hidden entries (``.name``, e.g. macOS ``._B02.jp2``) and sub-folders are ignored.

    Returns:
        ``(band_files, other_tiffs, names)``: ``band_files`` as ``(band name, path)`` pairs,
        paths as listed (not resolved); ``names`` sorted, for error messages.
    """
    bands: list[tuple[str, Path]] = []
    tiffs: list[Path] = []
    names: list[str] = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_file():
                continue
            names.append(entry.name)
            path = folder / entry.name
            band = band_name_of(path)
            if band is not None:
                bands.append((band, path))
            elif path.suffix.lower() in (".tif", ".tiff"):
                tiffs.append(path)
    return bands, tiffs, names


def check_unique_bands(bands: list[tuple[str, Path]]) -> None:
    """Refuse two files claiming one band name.

    Raises:
        InputError: naming both files.
    """
    seen: dict[str, Path] = {}
    for name, path in bands:
        if name in seen:
            raise InputError(
                f"{path}: expected one file per band, found band {name} also in {seen[name]}; "
                "pass only one file for each band"
            )
        seen[name] = path


Affine6 = tuple[float, float, float, float, float, float]


@dataclass(frozen=True, slots=True)
class BandPlacement:
    """Where one band file sits on the output grid (all in output pixels).

    Output pixel ``(row, col)`` reads the file's pixel
    ``((row - row_off) // f_rows, (col - col_off) // f_cols)``.
    """

    f_rows: int
    f_cols: int
    row_off: int
    col_off: int


def _integer(value: float, what: str, label: str) -> int:
    nearest = round(value)
    if abs(value - nearest) > _TOLERANCE_PX:
        raise GridMismatchError(
            f"{label}: expected {what} to be a whole number, found {value:.6g}; "
            "resample the band files onto one 10/20/60 m grid family (e.g. with gdalwarp -tap)"
        )
    return int(nearest)


def place_on_grid(fine: Affine6, band: Affine6, label: str) -> BandPlacement:
    """Return how a band's grid (affine ``band``) sits on the output grid (affine ``fine``).

    Both transforms are north-up (``b == d == 0``, ``a > 0``, ``e < 0``).

    Raises:
        GridMismatchError: the pixel size is not an integer multiple of the output's, or the
            origin is not a whole number of output pixels away.

    Examples:
        >>> place_on_grid((10, 0, 300000, 0, -10, 5000000), (60, 0, 300000, 0, -60, 5000000), "B01")
        BandPlacement(f_rows=6, f_cols=6, row_off=0, col_off=0)
    """
    a0, _, c0, _, e0, f0 = fine
    a1, _, c1, _, e1, f1 = band
    f_cols = _integer(a1 / a0, f"the pixel width ratio to the finest band ({a1:g}/{a0:g})", label)
    f_rows = _integer(e1 / e0, f"the pixel height ratio to the finest band ({e1:g}/{e0:g})", label)
    if f_cols < 1 or f_rows < 1:
        raise GridMismatchError(f"{label}: expected pixels no finer than the output grid's "
                                f"{a0:g} x {abs(e0):g}, found {a1:g} x {abs(e1):g}; resample the "
                                "band files onto one 10/20/60 m grid family")  # fmt: skip
    col_off = _integer((c1 - c0) / a0, "the origin's column offset from the finest band", label)
    row_off = _integer((f1 - f0) / e0, "the origin's row offset from the finest band", label)
    return BandPlacement(f_rows, f_cols, row_off, col_off)


def gather_inputs(
    raws: Sequence[str], resolve: Callable[[str], Path]
) -> tuple[list[tuple[str, Path]], bool]:
    """Resolve the user's inputs to ``(shown name, resolved path)`` files; say if they are a set.

    One folder holding band files is a band-file set (other files in it are ignored); one folder
    holding no band files and exactly one .tif/.tiff is that GeoTIFF; one file is a GeoTIFF (or
    JPEG2000); several files must all be band files. Landsat files are refused wherever they are.

    Raises:
        UnreadableRasterError: a folder with neither band files nor exactly one GeoTIFF.
        InputError: a folder inside a list, a file without a band name in a list, or Landsat
            band, QA or metadata files (in the folder or the list).
    """
    resolved = [(raw, resolve(raw)) for raw in raws]
    if len(resolved) == 1 and resolved[0][1].is_dir():
        raw, folder = resolved[0]
        bands, tiffs, names = scan_folder(folder)
        landsat = [n for n in names if is_landsat_file(n)]
        if landsat:
            raise _refuse_landsat(raw, landsat)
        if bands:
            return [(str(p), resolve(str(p))) for _, p in bands], True
        if len(tiffs) == 1:
            return [(str(tiffs[0]), resolve(str(tiffs[0])))], False
        listing = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "nothing"
        raise UnreadableRasterError(
            f"{raw}: expected Sentinel-2 band files (*_B01 ... *_B12, *_B8A as .jp2/.tif/.tiff) "
            f"or exactly one .tif, found {len(tiffs)} .tif without a band name among: {listing}; "
            "pass the GeoTIFF itself, or the IMG_DATA folder of a Sentinel-2 product"
        )
    landsat = [raw for raw, _ in resolved if is_landsat_file(raw)]
    if landsat:
        raise _refuse_landsat(landsat[0], landsat)
    for raw, path in resolved:
        if path.is_dir():
            raise InputError(f"{raw}: expected a file in a list of inputs, found a folder; "
                             "pass one folder alone, or a list of band files")  # fmt: skip
    if len(resolved) > 1:
        for raw, _ in resolved:
            if band_name_of(raw) is None:
                raise InputError(
                    f"{raw}: expected band files named like *_B02.jp2 when several inputs are "
                    "given, found a name without a band; pass one multi-band GeoTIFF instead"
                )
    return resolved, len(resolved) > 1


@dataclass(frozen=True, slots=True)
class BandGrid:
    """One band file's grid, as read at preflight."""

    name: str
    shown: str
    transform: Affine6
    height: int
    width: int


def stack_grid(bands: Sequence[BandGrid]) -> BandGrid:
    """Check a band-file set lines up and return the band whose grid is the output grid.

    The output grid is the finest band's (ties: the first in ESA order); every band must sit on it
    by an integer factor and offset (:func:`place_on_grid`) and overlap it.

    Raises:
        GridMismatchError: naming the band that does not line up.
    """
    finest = min(bands, key=lambda b: (b.transform[0], band_sort_key(b.name)))
    extent = Window(0, 0, finest.height, finest.width)
    for b in bands:
        p = place_on_grid(finest.transform, b.transform, f"{b.shown} ({b.name})")
        cover = Window(p.row_off, p.col_off, b.height * p.f_rows, b.width * p.f_cols)
        if cover.intersection(extent) is None:
            raise GridMismatchError(
                f"{b.shown}: expected band {b.name} to overlap the grid of {finest.shown}, "
                "found no overlap; pass band files of one scene"
            )
    return finest


def upsample(native: np.ndarray, f_rows: int, f_cols: int, row: int, col: int, height: int,
             width: int) -> np.ndarray:  # fmt: skip
    """Repeat each pixel ``f_rows`` x ``f_cols`` times (nearest) and crop to a window.

    Args:
        native: ``(..., rows, cols)`` pixels read on the coarse grid.
        f_rows: vertical factor (>= 1).
        f_cols: horizontal factor (>= 1).
        row: first row of the crop, in upsampled pixels.
        col: first column of the crop, in upsampled pixels.
        height: rows of the crop.
        width: columns of the crop.

    Returns:
        ``(..., height, width)``; a view of a new array, never of ``native``.

    Examples:
        >>> upsample(np.array([[1, 2], [3, 4]]), 2, 2, 1, 1, 2, 3)
        array([[1, 2, 2],
               [3, 4, 4]])
    """
    rows = np.repeat(native, f_rows, axis=-2)[..., row : row + height, :]
    return np.repeat(rows, f_cols, axis=-1)[..., col : col + width]


def stack_band_files(
    facts: Sequence[FileFacts], crs: Sequence[object], names: Sequence[str] | None = None
) -> tuple[list[tuple[str, FileFacts]], FileFacts]:
    """Order a band-file set by band and check it stacks; return ``(named files, finest)``.

    ``crs[i]`` is the CRS of ``facts[i]`` (its own, or the assumed one); ``names[i]`` its band
    name when the caller knows it (a STAC asset), else the band in its file name.

    Raises:
        InputError: two files claim one band, or a band file has several bands.
        GridMismatchError: files on different CRSs, or grids that do not line up.
    """
    for f, c in zip(facts, crs, strict=True):
        if c != crs[0]:
            raise GridMismatchError(
                f"{f.shown}: expected every band file on {crs[0]} like {facts[0].shown}, "
                f"found {c}; reproject them onto one CRS first"
            )
    given = names if names is not None else [band_name_of(f.shown) or "" for f in facts]
    named = sorted(zip(given, facts, strict=True), key=lambda nf: band_sort_key(nf[0]))
    check_unique_bands([(n, Path(f.shown)) for n, f in named])
    for name, f in named:
        if f.count != 1:
            raise InputError(f"{f.shown}: expected one band in band file {name}, found "
                             f"{f.count}; pass a single multi-band GeoTIFF on its own instead")
    finest = stack_grid([BandGrid(n, f.shown, f.transform, f.height, f.width) for n, f in named])
    return named, next(f for n, f in named if n == finest.name)

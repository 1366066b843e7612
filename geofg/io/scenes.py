"""Many scenes in one job: input lists, globs and manifests, and the union grid they share.

``geofg classify`` (and the Ray runner through the same plan) accepts, as INPUT:

* one raster, one band-file folder, or a list of Sentinel-2 band files (one scene, see
  :func:`geofg.io.sentinel2.gather_inputs`);
* several scenes: files or folders given one after another, a quoted glob (``"scenes/*.tif"``,
  expanded by geofg in sorted order), or a manifest (``@list.txt``, or a file ending ``.txt`` /
  ``.manifest``) holding one path per line.

A manifest is resolved safely: each line is a local path relative to the manifest's folder and
must stay inside it (``..`` or a symlink that escapes is refused), URL schemes and GDAL ``/vsi``
prefixes are refused, blank lines and ``#`` comments are skipped, and a manifest never names
another manifest or a glob.

Several scenes are written into **one mosaic on the union of their grids**. They must already
share a grid: the same CRS and pixel size, origins a whole number of pixels apart, the same band
names and dtype. Scenes in other CRSs or resolutions need warping onto a fixed grid, which is what
``geofg scan`` does; they are refused here with that advice rather than silently mis-placed. Where
scenes overlap, the first scene in input order (manifest order, sorted glob order) that has a valid
pixel provides it; later scenes fill only pixels still without data. Each scene keeps its own
nodata and masks.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence
from pathlib import Path

from rasterio.crs import CRS

from geofg.errors import ConfigError, GridMismatchError, InputError, RasterTooLargeError
from geofg.io.paths import check_not_remote, fingerprint, resolve_input
from geofg.io.read import RasterInfo
from geofg.io.sentinel2 import band_name_of

MANIFEST_SUFFIXES = (".txt", ".manifest")
MAX_MANIFEST_BYTES = 4 * 2**20
_GLOB_CHARS = set("*?[")


def is_glob(raw: str) -> bool:
    """Return True when ``raw`` holds glob characters (``*``, ``?``, ``[``)."""
    return bool(_GLOB_CHARS & set(raw))


def is_manifest(raw: str) -> bool:
    """Return True for ``@path`` or a path ending in a manifest suffix."""
    return raw.startswith("@") or Path(raw).suffix.lower() in MANIFEST_SUFFIXES


def read_manifest(raw: str) -> list[str]:
    """Return the resolved paths listed in a manifest, one per non-blank, non-comment line.

    Raises:
        InputError: unreadable, too large or empty manifest; a line that is a URL, a glob, a
            manifest, or a path escaping the manifest's folder (naming file and line).
    """
    path = resolve_input(raw[1:] if raw.startswith("@") else raw)
    if path.is_dir():
        raise InputError(f"{raw}: expected a manifest file (one path per line), found a folder; "
                         "pass the folder itself as INPUT, or a manifest file")  # fmt: skip
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise InputError(f"{path}: expected a manifest under {MAX_MANIFEST_BYTES // 2**20} MiB, "
                         f"found {size:,} bytes; split it or check it is a manifest")  # fmt: skip
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: expected a UTF-8 text manifest (one path per line), found "
                         "binary content; pass the raster itself, not as a manifest") from None  # fmt: skip
    out: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            check_not_remote(entry)
        except InputError as exc:
            raise type(exc)(f"{where}: {exc}") from None
        if is_glob(entry) or is_manifest(entry):
            raise InputError(f"{where}: expected a raster path, found {entry!r} (a glob or a "
                             "manifest); list the files themselves")  # fmt: skip
        try:
            out.append(str(resolve_input(entry, root=path.parent)))
        except InputError as exc:
            raise type(exc)(f"{where}: {exc}") from None
    if not out:
        raise InputError(f"{path}: expected at least one raster path in the manifest, found none; "
                         "list one path per line")  # fmt: skip
    return out


def expand_inputs(raws: Sequence[str]) -> list[str]:
    """Expand manifests and globs in the user's inputs; other entries pass through unchanged.

    Raises:
        InputError: a glob matching nothing, or a bad manifest.
    """
    out: list[str] = []
    for raw in raws:
        if is_manifest(raw):
            out.extend(read_manifest(raw))
        elif is_glob(raw) and not os.path.exists(raw):
            check_not_remote(raw)
            matches = sorted(glob.glob(os.path.expanduser(raw)))
            if not matches:
                raise InputError(f"{raw}: expected the pattern to match raster files, found none; "
                                 "check the pattern and the current directory")  # fmt: skip
            out.extend(matches)
        else:
            out.append(raw)
    return out


def is_scene_list(raws: Sequence[str]) -> bool:
    """Return True when ``raws`` names several scenes rather than one scene's band files."""
    if len(raws) < 2:
        return False
    return any(os.path.isdir(r) or band_name_of(r) is None for r in raws)


def union_info(scenes: Sequence[RasterInfo], max_pixels: int) -> RasterInfo:
    """Return the description of one grid covering every scene (which must share a grid).

    Raises:
        GridMismatchError: another CRS, pixel size, a grid offset by a fraction of a pixel,
            other band names or another dtype than the first scene (naming the scene).
        RasterTooLargeError: the union grid exceeds ``max_pixels``.
        ConfigError: no scene.
    """
    if not scenes:
        raise ConfigError("no scene given: expected one or more rasters")
    first = scenes[0]
    crs0 = CRS.from_wkt(first.crs_wkt)
    a, _, c0, _, e, f0 = first.transform
    left, right, top, bottom = c0, c0, f0, f0
    for s in scenes:
        label = s.label()
        if CRS.from_wkt(s.crs_wkt) != crs0:
            raise GridMismatchError(
                f"{label}: expected the CRS of {first.label()} ({crs0.to_string()}), found "
                f"{CRS.from_wkt(s.crs_wkt).to_string()}; scenes in several CRSs need warping onto "
                "one grid: use `geofg scan` with a fixed grid, or classify them separately"
            )
        sa, sb, sc, sd, se, sf = s.transform
        if sb or sd or not (math.isclose(sa, a, rel_tol=1e-9) and math.isclose(se, e, rel_tol=1e-9)):
            raise GridMismatchError(
                f"{label}: expected {a:g} x {abs(e):g} pixels like {first.label()}, found "
                f"{sa:g} x {abs(se):g}; resample it, or use `geofg scan` with a fixed grid"
            )
        for offset, what in (((sc - c0) / a, "column"), ((sf - f0) / e, "row")):
            if abs(offset - round(offset)) > 1e-6:
                raise GridMismatchError(
                    f"{label}: expected its origin a whole number of pixels from {first.label()}'s, "
                    f"found a {what} offset of {offset:.4f} px; resample it onto the same pixel "
                    "grid, or use `geofg scan` with a fixed grid"
                )
        if s.band_names != first.band_names or s.count != first.count:
            raise GridMismatchError(
                f"{label}: expected the bands of {first.label()} "
                f"({','.join(first.band_names or ['unnamed'] * first.count)}), found "
                f"{','.join(s.band_names or ['unnamed'] * s.count)}; give scenes of one product type"
            )
        if s.dtype != first.dtype:
            raise GridMismatchError(f"{label}: expected {first.dtype} pixels like {first.label()}, "
                                    f"found {s.dtype}; convert it")  # fmt: skip
        sl, sbm, sr, st = s.bounds()
        left, right, top, bottom = min(left, sl), max(right, sr), max(top, st), min(bottom, sbm)
    width = round((right - left) / a)
    height = round((bottom - top) / e)
    if height * width * first.count > max_pixels:
        raise RasterTooLargeError(
            f"{first.label()} and {len(scenes) - 1} more scenes: expected at most {max_pixels:,} "
            f"pixels on their union grid, found {width}x{height}x{first.count} bands; classify "
            "them in groups or raise --max-pixels"
        )
    files = tuple(r for s in scenes for r in s.files)
    return RasterInfo(
        paths=tuple(p for s in scenes for p in s.paths), band_names=first.band_names,
        band_files=first.band_files, crs_wkt=first.crs_wkt,
        transform=(a, 0.0, left, 0.0, e, top), height=height, width=width, dtype=first.dtype,
        nodata=first.nodata, fingerprint=fingerprint(files), files=files, scenes=tuple(scenes),
    )  # fmt: skip


def scene_offset(grid: RasterInfo, scene: RasterInfo) -> tuple[int, int]:
    """Return the ``(row, col)`` of ``scene``'s top-left pixel on ``grid``."""
    a, _, c, _, e, f = grid.transform
    return round((scene.transform[5] - f) / e), round((scene.transform[2] - c) / a)

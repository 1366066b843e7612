"""Raster preflight (:func:`open_raster`); the boundless reads are in :mod:`geofg.io.reader`.

Two steps, two places:

* :func:`open_raster` runs once, on the driver, before any output exists. It opens every input
  with an explicit driver inside :func:`gdal_env`, validates it (format, size, CRS, geotransform,
  grids, bands), hashes it, and returns a small picklable :class:`RasterInfo`. Every rejection is a
  :class:`~geofg.errors.InputError` subclass (exit 3) with a one-line message naming the file.
* :class:`~geofg.io.reader.RasterReader` runs in each worker thread or process: it opens its own dataset handles
  and reads windows of the output grid, boundless, as ``(data (C, h, w), valid (h, w))``. Memory is
  bounded by the window: only the window's intersection with the raster is ever read.

What is accepted, the nodata rules and the security choices are in ``docs/input.md``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.session import DummySession

from geofg.errors import (
    BandCountMismatchError,
    ConfigError,
    InputError,
    MissingBandsError,
    MissingCRSError,
    NodataAssumedWarning,
    RasterTooLargeError,
    UnsupportedGeoTransformError,
)
from geofg.io import objects
from geofg.io import sentinel2 as s2
from geofg.io.paths import (
    MAX_COMPRESSION_RATIO,
    FileFacts,
    check_file_size,
    file_record,
    fingerprint,
    inspect_file,
    resolve_input,
)

log = logging.getLogger(__name__)

#: GDAL configuration every geofg read runs under (see docs/input.md, "Security").
GDAL_OPTIONS: dict[str, str] = {
    "GDAL_PAM_ENABLED": "NO",  # never write .aux.xml beside inputs; ignore planted ones
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no sibling probing: .ovr/.msk/.aux.xml/.tfw
    "GDAL_GEOREF_SOURCES": "INTERNAL",  # georeferencing only from inside the file
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".geofg-remote-reads-disabled",  # /vsicurl/ sees nothing
    "GDAL_HTTP_MAX_RETRY": "0",
    "GDAL_HTTP_TIMEOUT": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "1",
    "GDAL_HTTP_NETRC": "NO",  # never read ~/.netrc credentials
    "AWS_NO_SIGN_REQUEST": "YES",  # never look up cloud credentials or metadata endpoints
    "GS_NO_SIGN_REQUEST": "YES",
    "AZURE_NO_SIGN_REQUEST": "YES",
    "CPL_AWS_AUTODETECT_EC2": "NO",
    "CPL_MACHINE_IS_GCE": "NO",
    "GDAL_VRT_ENABLE_PYTHON": "NO",
}

#: GDAL's block cache (bytes). Its default is 5 % of RAM and it fills with every block read, so
#: peak memory grew with the raster up to that cap (measured: 1.58 GB for 2000², 2.82 GB for
#: 16000²). This is the floor; the local runner raises it to what its readers reuse (see
#: :meth:`RasterReader.block_bytes`), never by raster size. rasterio applies it with
#: GDALSetCacheMax64 (process-wide).
GDAL_CACHE_BYTES = 96 * 2**20
#: The most a runner raises the block cache to, per reader thread (strip-organised files would ask
#: for whole strips): 512 MiB for the 2 readers of a CPU run, more on a GPU host with more readers.
GDAL_CACHE_MAX_BYTES = 256 * 2**20


def gdal_env(cache_bytes: int | None = None, *, remote: bool = False) -> rasterio.Env:
    """Return the ``rasterio.Env`` geofg reads under; enter it in every thread that opens or reads.

    rasterio sets the options process-wide when entered from the main thread and thread-locally
    from any other thread, and GDAL's own worker threads see only the process-wide ones; hence each
    reader thread enters it itself. No AWS session is created, whatever the environment holds,
    unless ``remote`` (inputs on S3): then the AWS credential chain and GDAL's remote-COG settings
    apply (:func:`geofg.io.objects.gdal_env`). ``cache_bytes`` sets GDAL's block cache (default
    :data:`GDAL_CACHE_BYTES`).
    """
    cache = GDAL_CACHE_BYTES if cache_bytes is None else cache_bytes
    if remote:
        return objects.gdal_env(cache, GDAL_OPTIONS)
    return rasterio.Env(session=DummySession(), GDAL_CACHEMAX=cache, **GDAL_OPTIONS)


def _resolve(raw: str) -> Path:
    """Resolve a user's input: an ``s3://`` URL to its ``/vsis3/`` path (after a HEAD), else local."""
    if objects.is_s3_url(raw):
        path = objects.gdal_path(raw)
        objects.head(path)  # clear errors (credentials, bucket, key, endpoint) before GDAL
        return Path(path)
    return resolve_input(raw)


@dataclass(frozen=True)
class RasterInfo:
    """Small, picklable description of a validated input; travels to worker processes.

    ``transform``, ``height`` and ``width`` describe the output grid (the finest band's grid for a
    band-file set); ``band_files[i]`` is ``(path, 1-based band index)`` of available band ``i``,
    named ``band_names[i]`` (None when the input names no bands). ``fingerprint`` is the sha256 of
    the sorted per-file ``(realpath, size, mtime_ns, sha256)`` records as compact JSON.
    """

    paths: tuple[str, ...]
    band_names: tuple[str, ...] | None
    band_files: tuple[tuple[str, int], ...]
    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    height: int
    width: int
    dtype: str
    nodata: float | None
    fingerprint: str
    files: tuple[dict[str, Any], ...]
    scenes: tuple[RasterInfo, ...] = ()
    """For several scenes on one grid (:mod:`geofg.io.scenes`): each scene, in priority order;
    the fields above then describe their union grid (bands, dtype and nodata of the first)."""

    def __hash__(self) -> int:  # the dicts in ``files`` are unhashable; equal infos share these
        return hash((self.fingerprint, self.band_names, self.crs_wkt, self.transform))

    @property
    def count(self) -> int:
        """Number of available bands."""
        return len(self.band_files)

    def resolution_m(self) -> float:
        """Return the output pixel width ``abs(a)`` in CRS units (metres for projected CRSs)."""
        return abs(self.transform[0])

    def bounds(self) -> tuple[float, float, float, float]:
        """Return ``(left, bottom, right, top)`` of the output grid in CRS units."""
        a, _, c, _, e, f = self.transform
        return c, f + e * self.height, c + a * self.width, f

    def label(self) -> str:
        """Return a short name for messages: the file, or the folder of a band-file set."""
        if self.scenes:
            return f"{self.scenes[0].label()} and {len(self.scenes) - 1} more scenes"
        if len(self.paths) == 1:
            return objects.s3_url(self.paths[0])
        return f"{objects.s3_url(os.path.commonpath(self.paths))} ({len(self.paths)} band files)"


def _check_georef(f: FileFacts, assume_crs: CRS | None) -> CRS:
    a, b, _, d, e, _ = f.transform
    if f.transform == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0):
        how = f"ground control points only ({f.gcp_count} GCPs)" if f.gcp_count else "none"
        raise UnsupportedGeoTransformError(
            f"{f.shown}: expected a north-up geotransform, found {how}; "
            "georeference it first (e.g. gdalwarp -t_srs EPSG:xxxx)"
        )
    crs = f.crs or assume_crs
    if crs is None:
        raise MissingCRSError(
            f"{f.shown}: expected a coordinate reference system, found none; "
            "pass --assume-crs EPSG:xxxx (assume_crs=) if you know it"
        )
    if f.crs is not None and assume_crs is not None and f.crs != assume_crs:
        log.warning("%s has its own CRS; --assume-crs %s is ignored", f.shown, assume_crs)
    if b != 0 or d != 0 or a <= 0 or e >= 0:
        raise UnsupportedGeoTransformError(
            f"{f.shown}: expected a north-up geotransform (b = d = 0, a > 0, e < 0), found "
            f"a={a:g} b={b:g} d={d:g} e={e:g} (rotated, skewed or flipped); "
            "warp it to north-up first (gdalwarp)"
        )
    return crs


def _common_dtype(f: FileFacts, dtypes: Sequence[str]) -> str:
    dtype = np.result_type(*[np.dtype(t) for t in dtypes])
    if dtype.kind not in "uif":
        raise InputError(
            f"{f.shown}: expected integer or float pixels, found {dtype}; convert it first"
        )
    return dtype.name


def _one_nodata(values: Sequence[tuple[str, float | None]]) -> float | None:
    declared = {}
    for shown, value in values:
        if value is not None:
            declared.setdefault("nan" if np.isnan(value) else value, (shown, value))
    if len(declared) > 1:
        (first, v1), (other, v2) = list(declared.values())[:2]
        raise InputError(
            f"{other}: expected one nodata value for every band, found {v2:g} here and {v1:g} "
            f"in {first}; rewrite the files with one nodata (gdal_translate -a_nodata)"
        )
    return next(iter(declared.values()))[1] if declared else None


def _stack_names(f: FileFacts, bands: Sequence[str] | None) -> tuple[str, ...] | None:
    if bands is not None:
        if len(bands) != f.count:
            raise BandCountMismatchError(
                f"{f.shown}: --bands names {len(bands)} bands ({','.join(bands)}) but the file "
                f"has {f.count}; give exactly one name per band, in file order"
            )
        names = tuple(str(b) for b in bands)
    elif all(f.descriptions):
        names = tuple(str(d) for d in f.descriptions)
    elif f.count == 1 and (name := s2.band_name_of(f.path)) is not None:
        names = (name,)
    else:
        return None
    dup = sorted({n for n in names if [m.casefold() for m in names].count(n.casefold()) > 1})
    if dup:
        raise InputError(
            f"{f.shown}: expected distinct band names, found {','.join(dup)} more than once in "
            f"{','.join(names)}; name the bands with --bands"
        )
    return names


def open_raster(
    inputs: Sequence[str | Path] | str | Path,
    bands: Sequence[str] | None = None,
    *,
    max_pixels: int = 20_000_000_000,
    assume_crs: str | None = None,
    max_compression_ratio: float | None = MAX_COMPRESSION_RATIO,
) -> RasterInfo:
    """Preflight: open, validate and fingerprint the input(s); return their description.

    Args:
        inputs: one multi-band GeoTIFF/COG; or a Sentinel-2 band-file set given as one folder or
            a list of band files (``*_B02.jp2``, ``B8A.tif``, ...) at 10/20/60 m. A folder holding
            no band files and exactly one .tif is read as that GeoTIFF.
        bands: names of the bands of a single GeoTIFF, one per band in file order (overrides
            band descriptions). Band files are named by their file names.
        max_pixels: limit on width x height x bands (of the output grid for a band-file set).
        assume_crs: CRS (e.g. ``"EPSG:32633"``) used for inputs that declare none.
        max_compression_ratio: refuse files declaring over 64 MiB at more than this ratio of
            declared to on-disk bytes (decompression bombs); None turns the check off.

    Returns:
        The :class:`RasterInfo`; nothing stays open.

    Raises:
        InputError: a subclass naming the file, what was expected, what was found and the fix.
        ConfigError: no input, or ``assume_crs`` is not a CRS.
    """
    assumed = None
    if assume_crs is not None:
        try:
            assumed = CRS.from_user_input(assume_crs)
        except (CRSError, ValueError) as exc:  # "EPSG:4326x" raises ValueError from int()
            raise ConfigError(f"--assume-crs {assume_crs!r} is not a CRS ({str(exc)[:120]}); "
                              "give e.g. EPSG:32633") from None  # fmt: skip
    raws = [os.fspath(i) for i in ([inputs] if isinstance(inputs, str | os.PathLike) else inputs)]
    if not raws:
        raise ConfigError("no input given: expected a GeoTIFF, a band-file folder or band files")
    from geofg.io import scenes as sc
    from geofg.io import stac

    raws = sc.expand_inputs(raws)
    if any(stac.is_stac(r) for r in raws):
        one = {"max_pixels": max_pixels, "assume_crs": assume_crs,
               "max_compression_ratio": max_compression_ratio}  # fmt: skip
        if bands is not None:
            raise InputError(f"{raws[0]}: --bands names the bands of one multi-band file, found "
                             "a STAC input whose assets name their bands; drop --bands")  # fmt: skip
        sets = [s for r in raws for s in stac.band_sets(r)]
        infos = [_open_named_set(s, **one) for s in sets]
        return infos[0] if len(infos) == 1 else sc.union_info(infos, max_pixels)
    if sc.is_scene_list(raws):
        one = {"max_pixels": max_pixels, "assume_crs": assume_crs,
               "max_compression_ratio": max_compression_ratio}  # fmt: skip
        return sc.union_info([open_raster([r], bands, **one) for r in raws], max_pixels)
    files, is_set = s2.gather_inputs(raws, _resolve)
    with gdal_env(remote=any(objects.is_remote(p) for _, p in files)):
        facts = [inspect_file(raw, path) for raw, path in files]
    for f in facts:
        check_file_size(f, max_pixels, max_compression_ratio)
    crs = [_check_georef(f, assumed) for f in facts]
    if is_set:
        if bands is not None:
            raise InputError(
                f"{facts[0].shown}: --bands names the bands of one multi-band file, found a "
                "band-file set whose bands are named by file name; drop --bands"
            )
        return _band_file_set(facts, crs, max_pixels)
    f = facts[0]
    return _make_info(
        facts, crs[0], f.transform, f.height, f.width, _stack_names(f, bands),
        tuple((str(f.path), i + 1) for i in range(f.count)), _common_dtype(f, f.dtypes),
        _one_nodata([(f.shown, v) for v in f.nodatavals]),
    )  # fmt: skip


def _open_named_set(bands: Sequence[tuple[str, str]], *, max_pixels: int, assume_crs: str | None,
                    max_compression_ratio: float | None) -> RasterInfo:
    """Preflight a band-file set whose band names are given (``(name, s3:// URL or local path)``)."""
    assumed = None if assume_crs is None else CRS.from_user_input(assume_crs)
    files = [(raw, _resolve(raw)) for _, raw in bands]
    with gdal_env(remote=any(objects.is_remote(p) for _, p in files)):
        facts = [inspect_file(raw, path) for raw, path in files]
    for f in facts:
        check_file_size(f, max_pixels, max_compression_ratio)
    crs = [_check_georef(f, assumed) for f in facts]
    return _band_file_set(facts, crs, max_pixels, [name for name, _ in bands])


def _band_file_set(facts: list[FileFacts], crs: list[CRS], max_pixels: int,
                   names: Sequence[str] | None = None) -> RasterInfo:  # fmt: skip
    named, finest = s2.stack_band_files(facts, crs, names)
    height, width = finest.height, finest.width
    if height * width * len(named) > max_pixels:
        raise RasterTooLargeError(
            f"{finest.shown}: expected at most {max_pixels:,} pixels on the stacked grid, found "
            f"{width}x{height}x{len(named)} bands; raise --max-pixels if this is genuine"
        )
    nodata = _one_nodata([(f.shown, f.nodatavals[0]) for _, f in named])
    if nodata is None:
        nodata = 0.0
        warnings.warn(NodataAssumedWarning(
            f"{objects.s3_url(finest.path.parent)}: band files declare no nodata; using DN 0 as nodata "
            "(the Sentinel-2 L1C/L2A convention)"), stacklevel=3)  # fmt: skip
    return _make_info(
        [f for _, f in named], crs[0], finest.transform, height, width,
        tuple(n for n, _ in named), tuple((str(f.path), 1) for _, f in named),
        _common_dtype(finest, [f.dtypes[0] for _, f in named]), nodata,
    )  # fmt: skip


def _make_info(facts: Sequence[FileFacts], crs: CRS, transform: tuple[float, ...], height: int,
               width: int, names: tuple[str, ...] | None, band_files: tuple[tuple[str, int], ...],
               dtype: str, nodata: float | None) -> RasterInfo:  # fmt: skip
    records = tuple(file_record(f.path, f.driver) for f in facts)
    return RasterInfo(
        paths=tuple(str(f.path) for f in facts), band_names=names, band_files=band_files,
        crs_wkt=crs.to_wkt(),
        transform=tuple(float(v) for v in transform),  # type: ignore[arg-type]
        height=height, width=width, dtype=dtype,
        nodata=None if nodata is None else float(nodata),
        fingerprint=fingerprint(records), files=records,
    )  # fmt: skip


def select_bands(info: RasterInfo, wanted: Sequence[str]) -> tuple[int, ...]:
    """Map the model's band names to indices into ``info.band_files``, in the model's order.

    Names match case-insensitively. When the input names no bands and ``len(wanted)`` equals the
    band count, the file order is assumed (``range(count)``); the caller should warn about it.

    Raises:
        MissingBandsError: a wanted band is absent, or unnamed bands do not match in number.

    Examples:
        >>> info = RasterInfo(("/x.tif",), ("B02", "B03", "B04"), (("/x.tif", 1), ("/x.tif", 2),
        ...     ("/x.tif", 3)), "", (10, 0, 0, 0, -10, 0), 1, 1, "uint16", None, "", ())
        >>> select_bands(info, ["b04", "B02"])
        (2, 0)
    """
    wanted = [str(w) for w in wanted]
    if info.band_names is None:
        if len(wanted) == info.count:
            return tuple(range(info.count))
        raise MissingBandsError(
            f"{info.label()}: model needs {len(wanted)} bands ({','.join(wanted)}), input has "
            f"{info.count} unnamed bands; give an input with those bands or name the bands with "
            "--bands (one name per band, in file order)"
        )
    index = {n.casefold(): i for i, n in enumerate(info.band_names)}
    missing = [w for w in wanted if w.casefold() not in index]
    if missing:
        raise MissingBandsError(
            f"{info.label()}: model needs bands {','.join(missing)} (expected "
            f"{','.join(wanted)}), input has {','.join(info.band_names)}; give an input with "
            "those bands or name the bands with --bands"
        )
    return tuple(index[w.casefold()] for w in wanted)

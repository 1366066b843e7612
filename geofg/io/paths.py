"""Input files: local paths only, known formats only, no decompression bombs; their identity.

Every input path goes through :func:`resolve_input` before GDAL sees it:

1. A string with a URL scheme (``http://``, ``s3://``, ``gs://``, ``file://``, ``zip+file://``, …)
   or a GDAL virtual-file prefix (``/vsicurl/``, ``/vsizip/``, ``/vsimem/``, …) is refused with
   :class:`~geofg.errors.ForbiddenPathError` *before anything is opened*: such strings make GDAL
   go to the network or into archives.
2. The path is resolved to an absolute real path (symlinks followed). A missing path raises
   :class:`~geofg.errors.RasterNotFoundError`. With ``root``, the resolved path must lie inside it
   (a ``..`` or a symlink that escapes raises ``ForbiddenPathError``).
3. Only the resolved string is ever passed to rasterio, never the user's string.

``s3://`` inputs never come here: :func:`geofg.io.read.open_raster` sends them to
:mod:`geofg.io.objects`, which validates the URL and makes the ``/vsis3/`` path itself; for such
objects :func:`file_record` and :func:`file_state` use a HEAD (size, ETag) instead of the disk.

Files are opened (:func:`open_dataset`) with an explicit driver chosen from the extension
(:data:`DRIVERS`), so a VRT, a CSV or any other format renamed ``.tif`` cannot reach another GDAL
driver; :func:`sniff_format` names what a refused file really is, for the error message.
:func:`inspect_file` reads the header facts preflight checks, :func:`check_file_size` refuses
oversized files and decompression bombs, and :func:`file_record` / :func:`fingerprint` identify
the files by content.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from geofg.errors import (
    ForbiddenDriverError,
    ForbiddenPathError,
    InputError,
    RasterNotFoundError,
    RasterTooLargeError,
    UnreadableRasterError,
)
from geofg.io import objects

#: extension (lower case) -> the only GDAL driver geofg opens it with
DRIVERS: dict[str, str] = {".tif": "GTiff", ".tiff": "GTiff", ".jp2": "JP2OpenJPEG"}

MAX_COMPRESSION_RATIO = 2000.0  #: declared bytes / bytes on disk above which a file is a bomb
BOMB_FLOOR_BYTES = 64 * 2**20  #: ... checked only for files declaring more than this
_HASH_BLOCK = 2**20
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_KNOWN_SCHEMES = ("file", "zip", "tar", "gzip", "http", "https", "ftp", "s3", "gs", "az", "oss")


def check_not_remote(raw: str) -> None:
    """Refuse URL schemes and GDAL ``/vsi…`` prefixes in a user-given path string.

    Raises:
        ForbiddenPathError: the string names a remote or virtual resource.

    Examples:
        >>> check_not_remote("scene/B02.jp2")
        >>> check_not_remote("/vsicurl/http://host/x.tif")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        geofg.errors.ForbiddenPathError: /vsicurl/http://host/x.tif: expected a local file path, ...
    """
    text = raw.strip()
    is_vsi = text.lower().startswith("/vsi")
    if "://" in text or is_vsi:
        kind = "a GDAL virtual-file path (/vsi...)" if is_vsi else "a URL"
        raise ForbiddenPathError(
            f"{raw}: expected a local file path, found {kind}; "
            "copy the file to local disk and pass its path"
        )
    match = _SCHEME.match(text)
    if match and match.group(0)[:-1].lower().split("+")[-1] in _KNOWN_SCHEMES:
        raise ForbiddenPathError(
            f"{raw}: expected a local file path, found a '{match.group(0)}' URL prefix; "
            "copy the file to local disk and pass its path"
        )


def resolve_input(
    raw: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
) -> Path:
    """Return the absolute real path of a local input, refusing remote, virtual and missing paths.

    Args:
        raw: the path as the user gave it (CLI argument or manifest entry).
        root: if given, the resolved path must lie inside this directory (after resolving it too).

    Returns:
        The resolved absolute path (symlinks followed). Pass ``str()`` of it to rasterio.

    Raises:
        ForbiddenPathError: URL scheme, ``/vsi`` prefix, NUL byte, or a path escaping ``root``.
        RasterNotFoundError: nothing exists at the path.
    """
    text = os.fspath(raw)
    check_not_remote(text)
    if "\x00" in text:
        raise ForbiddenPathError(f"{text!r}: expected a file path, found a NUL byte; fix the path")
    base = Path(root).resolve() if root is not None else None
    candidate = Path(text).expanduser()
    if base is not None and not candidate.is_absolute():
        candidate = base / candidate
    try:
        resolved = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise RasterNotFoundError(
            f"{text}: expected an existing raster file or folder, found nothing at "
            f"{candidate.absolute()}; check the path and the current directory"
        ) from None
    except (OSError, RuntimeError) as exc:  # loops, permission on a parent, name too long
        raise RasterNotFoundError(
            f"{text}: expected a readable path, found an error resolving it ({exc}); fix the path"
        ) from None
    if str(resolved).startswith("/vsi"):
        raise ForbiddenPathError(
            f"{text}: resolves to {resolved}, a GDAL virtual-file prefix; rename the folder"
        )
    if base is not None and not resolved.is_relative_to(base):
        raise ForbiddenPathError(
            f"{text}: expected a path inside {base}, found one that resolves to {resolved}; "
            "use a path (and symlinks) that stay inside the input root"
        )
    return resolved


def driver_for(path: Path, shown: str | os.PathLike[str] | None = None) -> str:
    """Return the only GDAL driver geofg opens ``path`` with, chosen from its extension.

    Both the name as given (``shown``) and the resolved target must have an allowed extension, so
    a symlink ``x.tif -> secret.vrt`` is refused too.

    Raises:
        ForbiddenDriverError: the extension is not .tif, .tiff or .jp2.

    Examples:
        >>> driver_for(Path("/d/T33UUU_B8A.JP2"))
        'JP2OpenJPEG'
    """
    names = [Path(os.fspath(shown)), path] if shown is not None else [path]
    for name in names:
        if name.suffix.lower() not in DRIVERS:
            raise ForbiddenDriverError(
                f"{shown or path}: expected a GeoTIFF/COG (.tif, .tiff) or JPEG2000 (.jp2) file, "
                f"found extension '{name.suffix or '(none)'}' ({name.name}); "
                "convert it with gdal_translate -of COG and pass the .tif"
            )
    return DRIVERS[path.suffix.lower()]


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"<VRTDataset", "a GDAL VRT (XML that can read other files and URLs)"),
    (b"<?xml", "an XML document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89HDF", "an HDF5/netCDF4 file"),
    (b"CDF\x01", "a netCDF file"),
    (b"CDF\x02", "a netCDF file"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF"),
    (b"MM\x00*", "a TIFF"),
    (b"II+\x00", "a BigTIFF"),
    (b"MM\x00+", "a BigTIFF"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG2000 file"),
    (b"\xff\x4f\xff\x51", "a JPEG2000 codestream"),
)


def sniff_format(path: Path) -> str | None:
    """Name the format of ``path`` from its first bytes, or None when unknown (or unreadable)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return None
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def open_dataset(path: Path, driver: str, shown: str | os.PathLike[str]) -> Any:
    """Open ``path`` read-only with exactly ``driver``; map failures to geofg errors.

    Call inside :func:`geofg.io.read.gdal_env`. The caller closes the returned dataset.

    Raises:
        ForbiddenDriverError: the file is another format (e.g. a VRT or PNG renamed .tif).
        UnreadableRasterError: GDAL cannot parse it (empty, header only, text, truncated).
    """
    try:
        return rasterio.open(str(path), driver=driver, sharing=False)
    except RasterioError as exc:
        message = " ".join(str(exc).split())
    expected = "a GeoTIFF/COG" if driver == "GTiff" else "a JPEG2000 file"
    if objects.is_remote(path):  # preflight's HEAD found it: GDAL cannot parse what is there
        raise UnreadableRasterError(
            f"{shown}: expected {expected} ({driver}), found an object GDAL cannot read: "
            f"{message}; check that the object is complete and of that format"
        )
    found = sniff_format(path)
    if found is not None and "TIFF" not in found and "JPEG2000" not in found:
        raise ForbiddenDriverError(
            f"{shown}: expected {expected} ({driver}), found {found}; geofg opens only "
            "GeoTIFF/COG and JPEG2000: convert it with gdal_translate -of COG"
        )
    if found is not None and ("TIFF" in found) != (driver == "GTiff"):
        raise ForbiddenDriverError(
            f"{shown}: expected {expected} ({driver}), found {found}; "
            "rename it with the extension of its format (.tif or .jp2)"
        )
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    what = "an empty file (0 bytes)" if size == 0 else f"{size:,} bytes GDAL cannot read"
    raise UnreadableRasterError(
        f"{shown}: expected {expected} ({driver}), found {what}: {message}; "
        "check that the file is complete (re-download or re-export it)"
    )


@dataclass(frozen=True)
class FileFacts:
    """What preflight learns from opening one file (``shown`` is the name as the user gave it)."""

    path: Path
    shown: str
    driver: str
    crs: CRS | None
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    nodatavals: tuple[float | None, ...]
    descriptions: tuple[str | None, ...]
    gcp_count: int


def gdal_message(exc: BaseException) -> str:
    """Return an exception's message and its causes' (GDAL's detail) on one line."""
    parts = []
    while exc is not None and len(parts) < 4:
        parts.append(" ".join(str(exc).split()))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return " <- ".join(p for p in parts if p and "See previous exception" not in p) or "unknown"


def inspect_file(raw: str, path: Path) -> FileFacts:
    """Open ``path`` with the driver its extension allows, read its header facts, close it.

    Call inside :func:`geofg.io.read.gdal_env`.

    Raises:
        ForbiddenDriverError, UnreadableRasterError: see :func:`driver_for`, :func:`open_dataset`.
    """
    driver = driver_for(path, raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with open_dataset(path, driver, raw) as ds:
            return FileFacts(
                path=path, shown=raw, driver=driver, crs=ds.crs, width=ds.width,
                height=ds.height, count=ds.count, dtypes=tuple(ds.dtypes),
                transform=tuple(ds.transform)[:6],  # type: ignore[arg-type]
                nodatavals=tuple(ds.nodatavals), descriptions=tuple(ds.descriptions),
                gcp_count=len(ds.gcps[0]),
            )  # fmt: skip


def check_file_size(
    f: FileFacts, max_pixels: int, max_ratio: float | None = MAX_COMPRESSION_RATIO
) -> None:
    """Refuse a file declaring more than ``max_pixels`` or compressed like a decompression bomb.

    DEFLATE cannot pass about 1000:1 even on constant data, so only sparse files (empty blocks)
    or exotic codecs on empty data reach the default 2000:1. ``max_ratio=None`` skips that check.

    Raises:
        RasterTooLargeError: width x height x bands > ``max_pixels``, or more than
            :data:`BOMB_FLOOR_BYTES` declared at over ``max_ratio`` times its size on disk.
    """
    pixels = f.width * f.height * f.count
    if pixels > max_pixels:
        raise RasterTooLargeError(
            f"{f.shown}: expected at most {max_pixels:,} pixels (width x height x bands), found "
            f"{f.width}x{f.height}x{f.count} = {pixels:,}; raise --max-pixels if this is genuine"
        )
    declared = pixels * max(np.dtype(d).itemsize for d in f.dtypes)
    on_disk = max(file_state(f.path)[0], 1)
    if max_ratio is not None and declared > max(BOMB_FLOOR_BYTES, max_ratio * on_disk):
        raise RasterTooLargeError(
            f"{f.shown}: expected at most {max_ratio:g}x compression, found "
            f"{f.width}x{f.height}x{f.count} pixels ({declared / 2**30:.1f} GiB) declared in a "
            f"{on_disk:,}-byte file, which looks like a decompression bomb; if it is genuine, "
            "rewrite it with gdal_translate -co COMPRESS=DEFLATE (no sparse blocks) or turn "
            "the check off (max_compression_ratio=None)"
        )


def file_record(path: Path, driver: str) -> dict[str, Any]:
    """Return ``{"path", "size", "mtime_ns", "inode", "sha256", "driver"}``, hashing 1 MiB at a time.

    Size, mtime and inode are what readers re-check after every unit's read (an input rewritten
    or replaced during a run stops it). An object on S3 (``/vsis3/…``) is identified by its size
    and ETag instead (``{"path", "size", "mtime_ns", "etag", "driver"}``): hashing it would read
    the whole object at preflight, and the ETag changes whenever its content does.

    Raises:
        InputError: the file changed while it was hashed (still being copied).
    """
    if objects.is_remote(path):
        state = objects.head(str(path))
        return {"path": str(path), "size": state.size, "mtime_ns": state.mtime_ns,
                "etag": state.etag, "driver": driver}  # fmt: skip
    before = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    after = path.stat()
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise InputError(
            f"{path}: expected a file that is not being written, found it changed while geofg "
            "read it; wait until the copy finishes and run again"
        )
    return {"path": str(path), "size": after.st_size, "mtime_ns": after.st_mtime_ns,
            "inode": after.st_ino, "sha256": digest.hexdigest(), "driver": driver}  # fmt: skip


def fingerprint(files: Sequence[dict[str, Any]]) -> str:
    """Return the sha256 of the sorted ``[file name, size, content sha256]`` rows as JSON.

    Content, not timestamps: a ``touch`` or a copy to another folder keeps every ledger record
    current, while new bytes under the same mtime (``cp -p``, ``rsync -t``) make them stale. The
    file name stays in because it names the band of a band-file set.
    """
    rows = sorted([os.path.basename(r["path"]), r["size"], content_id(r)] for r in files)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def content_id(record: dict[str, Any]) -> str:
    """Return what names a file record's content: its sha256, or ``etag:…`` for an S3 object."""
    return record.get("sha256") or f"etag:{record['etag']}"


def file_state(path: str | os.PathLike[str]) -> tuple[int, object, int]:
    """Return ``(size, mtime_ns or ETag, inode)`` of a local file or an S3 object now.

    Raises:
        FileNotFoundError: a local file is gone (an S3 object raises RasterNotFoundError).
    """
    if objects.is_remote(path):
        state = objects.head(os.fspath(path))
        return state.size, state.etag, 0
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def record_state(record: dict[str, Any], now: tuple[int, object, int]) -> tuple[int, object, int]:
    """Return a file record's ``(size, mtime_ns or ETag, inode)`` to compare with :func:`file_state`."""
    if "etag" in record:
        return record["size"], record["etag"], 0
    return record["size"], record["mtime_ns"], record.get("inode", now[2])

"""Chunk-level helpers of a mosaic: chunk keys and sizes, checking and writing whole chunks, fsync.

Used by :mod:`geofg.io.mosaic` (which re-exports them), the sinks and the time-series mosaic
(:mod:`geofg.io.timeseries`). A *target* is a local :class:`~pathlib.Path` or an ``s3://`` prefix
(:mod:`geofg.io.store`): sizes come from ``stat`` on disk and from one LIST (or a HEAD) on S3,
where a PUT needs no fsync.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from geofg.errors import MosaicDamagedError
from geofg.io.objstore import ObjectPrefix, is_object_target
from geofg.io.store import zarr_store

log = logging.getLogger(__name__)

#: What zarr raises on metadata or chunks it cannot decode (garbage JSON, truncated zstd frame,
#: crc32c mismatch, a missing array folder).
DECODE_ERRORS = (ValueError, KeyError, TypeError, RuntimeError, OSError)



def _short(v: object) -> str:
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def unit_chunk_keys(layers: tuple[str, ...], row: int, col: int, t: int | None = None) -> list[str]:
    """The chunk keys (paths under the mosaic) of unit ``(row, col)`` in ``layers`` (slice ``t``)."""
    lead = "" if t is None else f"{t}/"
    return [f"{name}/{lead}{row}/{col}" for name in layers]


def _size(path: Any, key: str, listing: dict[str, int] | None) -> int:
    if listing is not None:
        return listing.get(key, 0)
    if is_object_target(path):
        stat = ObjectPrefix.of(str(path)).head(key)
        return 0 if stat is None else stat.size
    try:
        return os.stat(Path(path) / key).st_size
    except FileNotFoundError:
        return 0


def list_chunks(path: Any) -> dict[str, int] | None:
    """Every object's size below an ``s3://`` mosaic (one paginated LIST), None for a local one.

    Given to :func:`check_chunks`, it saves a HEAD per chunk when a run re-checks every done unit.
    """
    return ObjectPrefix.of(str(path)).sizes() if is_object_target(path) else None


def chunk_sizes(path: Any, keys: list[str]) -> dict[str, int]:
    """Bytes of each chunk file (object on S3); 0 for none (the chunk holds only the fill value)."""
    return {key: _size(path, key, None) for key in keys}


def check_chunks(path: Any, chunks: dict[str, int], decode: bool = False,
                 listing: dict[str, int] | None = None) -> str | None:  # fmt: skip
    """Why a unit's recorded chunks are not intact (None when they are).

    Compares each chunk file's size with the one recorded when the unit was written (a deleted or
    truncated chunk); with ``decode``, also decodes each chunk, which checks its crc32c (bit rot).
    ``listing`` (:func:`list_chunks`) gives the sizes of a mosaic on S3 without a request each.
    """
    for key, size in sorted(chunks.items()):
        got = _size(path, key, listing)
        if got != size:
            return f"{key}: {'missing' if got == 0 else f'{got} bytes'}, written with {size} bytes"
    if decode:
        group = zarr.open_group(zarr_store(path, read_only=True), mode="r", use_consolidated=False)
        for key, size in sorted(chunks.items()):
            name, *idx = key.split("/")
            if size == 0:
                continue
            try:
                group[name].get_block_selection(tuple(int(i) for i in idx))
            except DECODE_ERRORS as e:
                return f"{key}: cannot be decoded ({type(e).__name__}: {_short(str(e))})"
    return None


def first_damaged_chunk(arr: zarr.Array) -> tuple[str, BaseException] | None:
    """The key (``c/...``) and error of the first chunk of ``arr`` that cannot be decoded."""
    import itertools

    grid = [range(-(-n // c)) for n, c in zip(arr.shape, arr.chunks, strict=True)]
    for idx in itertools.product(*grid):
        try:
            arr.get_block_selection(idx)
        except DECODE_ERRORS as e:
            return "/".join(map(str, idx)), e
    return None


def damaged_chunk_error(path: Any, name: str, arr: zarr.Array, cause: BaseException) -> MosaicDamagedError:
    """A one-line error naming the damaged chunk of ``arr`` (layer ``name``), its unit and the fix."""
    found = first_damaged_chunk(arr)
    key, e = found if found is not None else ("(unknown chunk)", cause)
    idx = key.split("/")
    unit = f" (unit r{int(idx[-2]):04d}_c{int(idx[-1]):04d})" if len(idx) >= 2 else ""
    return MosaicDamagedError(
        f"{path}: chunk {name}/{key}{unit} is damaged ({type(e).__name__}: "
        f"{_short(str(e).splitlines()[0] if str(e) else '')}); run `geofg info --verify {path}`, "
        "then re-run the command that made the mosaic to redo that unit"
    )


def sweep_partials(path: Any) -> int:
    """Delete ``*.partial`` files zarr's atomic writes leave when a writer is killed (none on S3)."""
    n = 0
    if is_object_target(path):
        return 0
    path = Path(path)
    for p in path.rglob("*.partial"):
        try:
            p.unlink()
            n += 1
        except FileNotFoundError:
            pass
    if n:
        log.info("removed %d orphaned partial chunk files from %s", n, path)
    return n



def write_region(arr: zarr.Array, region: tuple[int | slice, ...], value: np.ndarray) -> None:
    """Write ``value`` into ``region`` of ``arr``; a value all at the fill value stores no chunk.

    zarr compares every chunk it writes with the fill value, to leave fill-only chunks out. Its
    comparison (``np.array_equal`` with ``equal_nan``) makes boolean copies of the chunk: a third
    to a half of the CPU of writing a unit's three layers (``python -m benchmarks.unit_costs``,
    docs/performance.md). Here one ``min``/``max`` over the value decides, and a value holding
    data is written without zarr's check. Read back, the two are the same; only an all-fill chunk
    inside a larger, partly filled region is then stored rather than left out.
    """
    if value.size and not value.min() == value.max() == arr.fill_value:
        arr = arr.with_config({"write_empty_chunks": True})
    arr[region] = value



def _fsync_path(target: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(target, flags)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        _fsync_path(p, directory=p.is_dir())
    _fsync_path(folder, directory=True)

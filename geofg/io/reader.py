"""Boundless window reads on the output grid of a preflighted raster (:class:`RasterReader`).

Preflight (:func:`geofg.io.read.open_raster`) runs once in the driver and checks everything it
can; a :class:`RasterReader` runs in each worker thread or process: it opens its own dataset
handles, reads windows (zero-padded past the raster's edge) and checks after every read that no
input file changed since preflight. Memory is bounded by the windows in flight, never by raster
size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.enums import Interleaving, MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window as RioWindow

from geofg.errors import (
    ConfigError,
    InputChangedError,
    RasterNotFoundError,
    UnreadableRasterError,
)
from geofg.grid import Window
from geofg.io import objects
from geofg.io import sentinel2 as s2
from geofg.io.paths import (
    file_state,
    gdal_message,
    open_dataset,
    record_state,
)
from geofg.io.read import RasterInfo, gdal_env


@dataclass(frozen=True)
class _Group:
    """The requested bands that live in one file, and how that file sits on the output grid."""

    ds: Any
    path: str
    channels: tuple[int, ...]  # output channels, ascending
    indexes: tuple[int, ...]  # the file's 1-based band indexes, one per channel
    place: s2.BandPlacement
    cover: Window | None  # output pixels the file covers (clipped to the grid)
    mask_bands: tuple[int, ...]  # bands whose GDAL mask must be read (internal/alpha masks)
    same_dtype: bool

    @property
    def out(self) -> slice | list[int]:
        """The channels as a slice when contiguous (so a read can land in place)."""
        c = self.channels
        return slice(c[0], c[-1] + 1) if c == tuple(range(c[0], c[-1] + 1)) else list(c)


class RasterReader:
    """Boundless window reads on the output grid of a :class:`RasterInfo`.

    Opens its own dataset handles, so create one reader per thread (or process): never share one
    between threads and never pickle it. Use as a context manager, or call :meth:`close`.

    Args:
        info: from :func:`open_raster` (possibly in another process).
        band_indices: indices into ``info.band_files``, in the order the caller wants channels
            (e.g. from :func:`select_bands`).
        cache_bytes: GDAL's block cache while this reader reads (default :data:`GDAL_CACHE_BYTES`).

    Raises:
        ConfigError: an index is out of range.
        InputChangedError: a file changed (size, mtime or inode) since preflight; :meth:`read`
            checks again after every read, so no pixel of a changed file is ever returned.
        InputError: a file no longer opens.
    """

    def __init__(self, info: RasterInfo, band_indices: Sequence[int],
                 cache_bytes: int | None = None) -> None:
        self._info = info
        self.cache_bytes = cache_bytes
        """GDAL's block cache while this reader reads (None: :data:`GDAL_CACHE_BYTES`)."""
        self._dtype = np.dtype(info.dtype)
        self._grid = Window(0, 0, info.height, info.width)
        self._bands = tuple(int(i) for i in band_indices)
        if not self._bands or not all(0 <= i < info.count for i in self._bands):
            raise ConfigError(f"band indices must be in 0..{info.count - 1}, got {self._bands}")
        self._groups: list[_Group] = []
        self._scenes: list[tuple[Window, RasterInfo]] = []
        self._subs: dict[int, RasterReader] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._remote = any(objects.is_remote(p) for p in info.paths) and not info.scenes
        if info.scenes:
            from geofg.io.scenes import scene_offset

            for s in info.scenes:
                row, col = scene_offset(info, s)
                self._scenes.append((Window(row, col, s.height, s.width), s))
            return
        records = {r["path"]: r for r in info.files}
        by_path: dict[str, list[tuple[int, int]]] = {}
        for channel, i in enumerate(self._bands):
            path, band = info.band_files[i]
            by_path.setdefault(path, []).append((channel, band))
        try:
            with gdal_env(self.cache_bytes, remote=self._remote):
                for path, pairs in by_path.items():
                    self._groups.append(self._plan(path, records[path], pairs))
        except BaseException:
            self.close()
            raise

    def _plan(self, path: str, record: dict[str, Any], pairs: list[tuple[int, int]]) -> _Group:
        try:
            state = file_state(path)
        except FileNotFoundError:
            raise RasterNotFoundError(f"{path}: expected the file checked at preflight, found "
                                      "nothing; restore it or run again") from None  # fmt: skip
        self._records[path] = record
        self._check_unchanged(path, state)
        ds = open_dataset(Path(path), record["driver"], path)
        try:
            place = s2.place_on_grid(self._info.transform, tuple(ds.transform)[:6], path)
            cover = Window(place.row_off, place.col_off,
                           ds.height * place.f_rows, ds.width * place.f_cols)  # fmt: skip
            flags = [ds.mask_flag_enums[b - 1] for _, b in pairs]
            masked = [b for (_, b), f in zip(pairs, flags, strict=True)
                      if MaskFlags.per_dataset in f or MaskFlags.alpha in f]  # fmt: skip
            if any(MaskFlags.per_dataset in f for f in flags):
                masked = masked[:1]  # one mask shared by all bands
            return _Group(
                ds, path, tuple(c for c, _ in pairs), tuple(b for _, b in pairs), place,
                cover.intersection(self._grid), tuple(masked),
                all(ds.dtypes[b - 1] == self._dtype.name for _, b in pairs),
            )  # fmt: skip
        except BaseException:
            ds.close()
            raise

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Read ``window`` (output-grid pixels; may extend past any edge) of the chosen bands.

        Returns:
            ``(data, valid)``: ``data`` of shape ``(C, h, w)`` in ``info.dtype``, channels in the
            order of ``band_indices``; ``valid`` of shape ``(h, w)``, bool, True where the pixel
            is inside the raster (and every band file) and, in every band, not nodata, finite (not
            NaN or +-Inf) and not masked. ``data`` is 0 wherever ``valid`` is False (never NaN).

        Raises:
            UnreadableRasterError: GDAL failed to read a block (truncated or corrupt file).
        """
        shape = (len(self._bands), window.height, window.width)
        if self._scenes:
            return self._read_scenes(window, shape)
        common = window.intersection(self._grid)
        for g in self._groups:
            common = None if common is None or g.cover is None else common.intersection(g.cover)
        if common is None:
            return np.zeros(shape, self._dtype), np.zeros(shape[1:], bool)
        inside = common == window
        data = np.empty(shape, self._dtype) if inside else np.zeros(shape, self._dtype)
        valid = np.zeros(shape[1:], bool)
        rows, cols = common.relative_to(window)
        part, ok = data[:, rows, cols], valid[rows, cols]
        ok[...] = True
        with gdal_env(self.cache_bytes, remote=self._remote):
            for g in self._groups:
                try:
                    self._read_group(g, common, part, ok)
                except RasterioError as exc:
                    if self._remote:  # an unreachable endpoint or a vanished object says so;
                        objects.clear_cache(g.path)  # and failed ranges must not stay cached
                        file_state(g.path)
                    raise UnreadableRasterError(
                        f"{g.path}: expected readable pixels in rows {common.row_off}.."
                        f"{common.row_end} cols {common.col_off}..{common.col_end}, found a read "
                        f"error: {gdal_message(exc)}; the file may be truncated or "
                        "corrupt: re-download it"
                    ) from exc
        for g in self._groups:  # after the read: pixels read from a changed file are never used
            try:
                self._check_unchanged(g.path, file_state(g.path))
            except (FileNotFoundError, RasterNotFoundError):
                raise InputChangedError(f"{g.path}: expected the file checked at preflight, found "
                                        "it deleted during the run; restore it and run again") from None
        self._check_values(part, ok)
        if not ok.all():
            part[:, ~ok] = 0
        return data, valid

    def _check_unchanged(self, path: str, state: tuple[int, object, int]) -> None:
        """Raise when ``path``'s size, mtime or inode (an object's ETag) differs from its record."""
        rec = self._records[path]
        if state != record_state(rec, state):
            raise InputChangedError(
                f"{objects.s3_url(path)}: expected the file checked at preflight ({rec['size']:,} "
                f"bytes), found it changed during the run ({state[0]:,} bytes, new mtime, inode or "
                "ETag); nothing read after the change was recorded: run again once the file is final"
            )

    def block_bytes(self, window: Window) -> int:
        """Bytes of the file blocks a read of ``window``'s size can touch (0 for scene mosaics).

        Blocks hold every band of a pixel-interleaved file, the requested ones otherwise; a
        window not aligned to the blocks touches one more block each way. A runner sizes GDAL's
        block cache from this so the blocks a unit shares with its neighbours are decoded once.
        """
        total = 0
        for g in self._groups:
            bh, bw = g.ds.block_shapes[0]
            h = -(-window.height // g.place.f_rows)
            w = -(-window.width // g.place.f_cols)
            blocks = (-(-h // bh) + 1) * (-(-w // bw) + 1)
            bands = g.ds.count if g.ds.interleaving == Interleaving.pixel else len(g.indexes)
            total += blocks * bh * bw * bands * np.dtype(g.ds.dtypes[g.indexes[0] - 1]).itemsize
        return total

    def _read_scenes(self, window: Window, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Fill ``window`` from each overlapping scene in turn; earlier scenes take precedence.

        A scene's datasets are opened on first use and kept for this reader's lifetime.
        """
        data = np.zeros(shape, self._dtype)
        valid = np.zeros(shape[1:], bool)
        for i, (cover, scene) in enumerate(self._scenes):
            common = window.intersection(cover)
            if common is None:
                continue
            sub = self._subs.get(i)
            if sub is None:
                sub = self._subs[i] = RasterReader(scene, self._bands, self.cache_bytes)
            local = Window(common.row_off - cover.row_off, common.col_off - cover.col_off,
                           common.height, common.width)  # fmt: skip
            d, v = sub.read(local)
            rows, cols = common.relative_to(window)
            take = v & ~valid[rows, cols]
            data[:, rows, cols][:, take] = d[:, take]
            valid[rows, cols] |= take
        return data, valid

    def _read_group(self, g: _Group, common: Window, part: np.ndarray, ok: np.ndarray) -> None:
        p = g.place
        r0, c0 = common.row_off - p.row_off, common.col_off - p.col_off  # in output pixels
        if p.f_rows == 1 and p.f_cols == 1:
            win = RioWindow(c0, r0, common.width, common.height)
            if g.same_dtype and isinstance(g.out, slice):
                g.ds.read(list(g.indexes), window=win, out=part[g.out])
            else:
                part[g.out] = g.ds.read(list(g.indexes), window=win, out_dtype=self._dtype)
            for b in g.mask_bands:
                ok &= g.ds.read_masks(b, window=win) != 0
            return
        n_r0, n_c0 = r0 // p.f_rows, c0 // p.f_cols
        n_r1 = -(-(r0 + common.height) // p.f_rows)
        n_c1 = -(-(c0 + common.width) // p.f_cols)
        win = RioWindow(n_c0, n_r0, n_c1 - n_c0, n_r1 - n_r0)
        crop = (r0 - n_r0 * p.f_rows, c0 - n_c0 * p.f_cols, common.height, common.width)
        native = g.ds.read(list(g.indexes), window=win, out_dtype=self._dtype)
        part[g.out] = s2.upsample(native, p.f_rows, p.f_cols, *crop)
        for b in g.mask_bands:
            mask = g.ds.read_masks(b, window=win)
            ok &= s2.upsample(mask, p.f_rows, p.f_cols, *crop) != 0

    def _check_values(self, part: np.ndarray, ok: np.ndarray) -> None:
        """Clear ``ok`` where any band holds nodata, NaN or +-Inf."""
        nodata = self._info.nodata
        is_float = self._dtype.kind == "f"
        compare = nodata is not None and not np.isnan(nodata)
        if compare and not is_float:
            limits = np.iinfo(self._dtype)
            compare = float(nodata).is_integer() and limits.min <= nodata <= limits.max
        value = self._dtype.type(nodata) if compare else None
        for band in part:
            if compare:
                ok &= band != value
            if is_float:
                ok &= np.isfinite(band)  # NaN and +-Inf are no data

    def close(self) -> None:
        """Close the dataset handles (idempotent)."""
        subs, self._subs = getattr(self, "_subs", {}), {}
        for sub in subs.values():
            sub.close()
        groups, self._groups = getattr(self, "_groups", []), []
        with gdal_env(self.cache_bytes, remote=getattr(self, "_remote", False)):
            for g in groups:
                g.ds.close()

    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "RasterReader holds open GDAL datasets and cannot be pickled; send the RasterInfo "
            "and open a reader in the worker"
        )

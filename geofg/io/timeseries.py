"""Time-series mosaics (``geofg scan``): the time axis, appending a date's slice, the ``latest`` view.

The layout is described in :mod:`geofg.io.mosaic` (which also creates these arrays); this module
writes into an existing one, a local folder or an ``s3://`` prefix (:mod:`geofg.io.store`; on
S3 a PUT is durable when it returns, so the fsyncs are for local folders only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from geofg.errors import MosaicDamagedError
from geofg.grid import WorkUnit
from geofg.io.chunks import _fsync_path, _fsync_tree, write_region
from geofg.io.mosaic import FILL, LATEST, LAYERS, TIME_FILL
from geofg.io.store import Folder, Target, is_object_target, zarr_store

log = logging.getLogger(__name__)


DATES_ATTR = "geofg:dates"
"""Group attribute with a copy of the time axis: it repairs a lost ``time`` chunk."""


def _time_axis(group: zarr.Group) -> list[int]:
    """The time axis, with dates a lost ``time`` chunk dropped restored from :data:`DATES_ATTR`."""
    values = [int(v) for v in group["time"][:]]
    kept = group.attrs.get(DATES_ATTR)
    if isinstance(kept, list):
        for i, d in enumerate(kept[: len(values)]):
            if values[i] == TIME_FILL and isinstance(d, int) and d != TIME_FILL:
                values[i] = d
    return values


def _sync_tree(path: Target, name: str) -> None:
    """fsync ``name`` (a file or a folder's tree) below a local mosaic; nothing on S3."""
    if is_object_target(path):
        return
    target = Path(path) / name
    if target.is_dir():
        _fsync_tree(target)
    else:
        _fsync_path(target)


def time_slices(path: Target) -> list[int]:
    """Return the time axis of a time-series mosaic: days since 1970-01-01, in slice order."""
    group = zarr.open_group(zarr_store(path, read_only=True), mode="r", use_consolidated=False)
    return _time_axis(group)


def append_time(path: Target, days: int, layers: tuple[str, ...] = LAYERS) -> int:
    """Add a slice for ``days`` (days since 1970-01-01) and return its index.

    Metadata only: the layers grow by one (fill-valued, no chunk written), the group attribute
    :data:`DATES_ATTR` gets the date, and the time value is written last, so a crash in between
    leaves at most a slice without a date, which the next call reuses (its index is the first
    slice holding the fill value). A ``time`` chunk lost later is rewritten from the attribute.

    Raises:
        MosaicDamagedError: a slice holds data but its date is lost (no copy to restore it from).
    """
    group = zarr.open_group(zarr_store(path), mode="r+", use_consolidated=False)
    tarr = group["time"]
    stored = [int(v) for v in tarr[:]]
    values = _time_axis(group)
    if values != stored:
        log.warning("%s: the time axis had lost dates (a missing time chunk); restored %s from the "
                    "group attributes", path, [i for i, (a, b) in enumerate(zip(values, stored)) if a != b])
        tarr[:] = np.asarray(values, np.int32)
        _sync_tree(path, "time")
    if days in values:
        return values.index(days)
    t = values.index(TIME_FILL) if TIME_FILL in values else len(values)
    if t < len(values):
        folder = Folder(path)
        for name in layers:
            if folder.names(f"{name}/{t}"):
                raise MosaicDamagedError(
                    f"{path}: time slice {t} holds data but its date is lost (the time chunk is "
                    "missing and the mosaic has no copy of the axis); nothing was written: "
                    "restore time/c/0 from a backup or rebuild the mosaic with a new path"
                )
    for name in layers:
        arr = group[name]
        if arr.shape[0] <= t:
            arr.resize((t + 1, *arr.shape[1:]))
    if tarr.shape[0] <= t:
        tarr.resize((t + 1,))
    axis = values + [TIME_FILL] * (t + 1 - len(values))
    axis[t] = days
    group.attrs.update({DATES_ATTR: axis})
    tarr[t] = days
    _sync_tree(path, "time")
    _sync_tree(path, ".zattrs")
    return t


@dataclass
class TimeMosaic:
    """An open time-series mosaic that scan units write into (one handle per thread)."""

    path: Target
    _group: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._group = zarr.open_group(zarr_store(self.path), mode="r+", use_consolidated=False)
        self.layers: tuple[str, ...] = tuple(self._group.attrs["geofg:grid"]["layers"])

    def write_slice(self, t: int, unit: WorkUnit, layers: dict[str, np.ndarray]) -> None:
        """Write the unit's core of time slice ``t`` (whole chunks only) for every layer."""
        c = unit.core
        for name in self.layers:
            write_region(self._group[name], (t, slice(c.row_off, c.row_end), slice(c.col_off, c.col_end)),
                         layers[name])

    def update_latest(self, unit: WorkUnit, dates: list[int]) -> None:
        """Recompute the unit's ``latest_*`` chunks from its slices, newest date first.

        ``dates[t]`` is slice ``t``'s date. Reads one chunk per layer per slice, and stops as soon
        as every pixel has a valid class, so memory is a few chunks whatever the length of the
        time axis.
        """
        c = unit.core
        rows, cols = slice(c.row_off, c.row_end), slice(c.col_off, c.col_end)
        shape = (c.height, c.width)
        best = {n: np.full(shape, FILL, np.uint8) for n in self.layers}
        when = np.full(shape, TIME_FILL, np.int32)
        order = sorted((d, t) for t, d in enumerate(dates) if d != TIME_FILL)
        for d, t in reversed(order):
            need = best["class"] == FILL
            if not need.any():
                break
            cls = self._group["class"][t, rows, cols]
            take = need & (cls != FILL)
            if not take.any():
                continue
            for name in self.layers:
                layer = cls if name == "class" else self._group[name][t, rows, cols]
                best[name][take] = layer[take]
            when[take] = d
        for name in self.layers:
            write_region(self._group[LATEST + name], (rows, cols), best[name])
        write_region(self._group["latest_time"], (rows, cols), when)

    def sync_unit(self, unit: WorkUnit, t: int) -> None:
        """fsync the unit's chunk files (slice ``t`` and the latest view) and their folders (on S3
        nothing: a PUT is durable when it returns)."""
        if is_object_target(self.path):
            return
        key = [str(unit.row), str(unit.col)]
        root = Path(self.path)
        targets = [root / n / str(t) / Path(*key) for n in self.layers]
        targets += [root / (LATEST + n) / Path(*key) for n in self.layers]
        targets.append(root / "latest_time" / Path(*key))
        for chunk in targets:
            _fsync_path(chunk)
            _fsync_path(chunk.parent, directory=True)

    def read(self, name: str, t: int | None, rows: slice, cols: slice) -> np.ndarray:
        """Read a region of a layer: slice ``t``, or the 2-D array when ``t`` is None."""
        arr = self._group[name]
        return arr[rows, cols] if t is None else arr[t, rows, cols]



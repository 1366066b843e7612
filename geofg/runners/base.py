"""What every runner takes and does: units from a source, through the per-unit stages, into a sink.

Classify and scan differ only in what they pass in. A :class:`Source` says where a unit's window
is read from and which model runs (classify: one raster, :class:`geofg.runners.local.RasterSource`;
scan: one date's scenes warped onto the grid, :class:`geofg.scan.units.ScanSource`); a
:class:`Sink` writes a unit's layers and then its ledger record (classify:
:class:`geofg.io.sink.UnitSink`; scan: :class:`geofg.scan.units.ScanSink`, the date's slice and the
latest view). Between them every runner calls the same stages of :mod:`geofg.pipeline`
(``prepare_unit`` on a read thread, ``infer_unit``, ``finish_unit`` on a write thread).

A :class:`Runner` is the local one (:class:`geofg.runners.local.LocalRunner`) or the Ray one
(:class:`geofg.runners.ray.RayRunner`); :func:`geofg.runners.make_runner` picks one from ``runner.kind``.
Sources and sinks travel to Ray actors, so they hold only small picklable values (plans, paths,
file records), never open datasets or models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from geofg.grid import Window, WorkUnit
from geofg.io.ledger import UnitRecord
from geofg.pipeline import Predictor, UnitPlan

OnUnit = Callable[[UnitRecord], None]


class WindowReader(Protocol):
    """Reads windows for one thread (its own dataset handles); closed when the run ends."""

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """``(data (C, h, w), valid (h, w) bool)`` of ``window``."""
        ...

    def close(self) -> None:
        """Close the dataset handles."""
        ...


class Source(Protocol):
    """Where units are read from and which model runs on them (small and picklable)."""

    @property
    def plan(self) -> UnitPlan:
        """The plan the per-unit stages read."""
        ...

    def open_reader(self, cache_bytes: int | None = None) -> WindowReader:
        """A reader with its own dataset handles (one per read thread)."""
        ...

    def cache_bytes(self, reader: Any, units: Sequence[WorkUnit] | None, readers: int) -> int | None:
        """GDAL's block cache for ``readers`` threads reading ``units`` (None: an actor, which has
        no unit list); None for GDAL's default."""
        ...

    def load_predictor(self, device: str, check: bool = False) -> Predictor:
        """Load the model on ``device``; ``check``: first make sure the file here is the one
        planned with (a Ray node's copy)."""
        ...


class Sink(Protocol):
    """Writes finished units: data first, then the ledger record."""

    run_id: str
    ledger: Any

    def done(self, unit: WorkUnit, layers: dict[str, np.ndarray] | None, stats: dict,
             attempt: int) -> UnitRecord:
        """Write a unit's layers (fill when None), then its done record; return the record."""
        ...

    def failed(self, unit: WorkUnit, error: str, attempt: int) -> UnitRecord:
        """Record a failed unit; return the record."""
        ...


@dataclass
class RunTimes:
    """Seconds per stage summed over units, and CPU seconds by thread (local runner only)."""

    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


class Runner(Protocol):
    """Runs units: every unit ends as a ledger record passed to ``on_unit``."""

    def prepare(self, source: Source) -> None:
        """Load what runs here before anything is written (local: the model; Ray: nothing, each
        actor loads its own)."""
        ...

    def run(self, source: Source, units: Sequence[WorkUnit], sink: Sink, on_unit: OnUnit,
            attempts: dict[str, int] | None = None) -> RunTimes:
        """Run ``units`` (``attempts``: their attempt counts from earlier runs)."""
        ...

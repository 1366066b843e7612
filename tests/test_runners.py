"""The runner interface (geofg.runners.base): any source and sink through the local runner.

Classify and scan differ only in the source and sink they hand the runner; here both are in
memory (no raster, no mosaic), so these tests pin what the engine itself does with them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from geofg.config import ModelConfig, RunnerConfig, TileConfig
from geofg.grid import Window, WorkUnit, plan_units
from geofg.io.ledger import UnitRecord
from geofg.models.inference.tiny import ThresholdPredictor, tiny_card
from geofg.pipeline import process_unit
from geofg.runners import make_runner
from geofg.runners.local import LocalRunner

CHUNK, HALO = 16, 4


@dataclass(frozen=True)
class Plan:
    """Only what the unit stages read (geofg.pipeline.UnitPlan)."""

    job: Any
    card: Any
    tile_size: int = 32
    overlap: int = 8
    mask: Any = None
    mask_channels: tuple[int, ...] = ()
    season: Any = None


def make_plan(**runner: Any) -> Plan:
    job = SimpleNamespace(tile=TileConfig(chunk=CHUNK), model=ModelConfig(device="cpu"),
                          runner=RunnerConfig(**runner))
    return Plan(job, tiny_card(["a", "b"], ["water", "crop"], tile_size=32, halo=HALO))


IMAGE = np.random.default_rng(3).normal(0, 1, (2, 40, 56)).astype(np.float32)


def window(w: Window) -> tuple[np.ndarray, np.ndarray]:
    """Boundless read of IMAGE (zeros, not valid, outside)."""
    data = np.zeros((2, w.height, w.width), np.float32)
    valid = np.zeros((w.height, w.width), bool)
    r0, c0 = max(w.row_off, 0), max(w.col_off, 0)
    r1, c1 = min(w.row_off + w.height, IMAGE.shape[1]), min(w.col_off + w.width, IMAGE.shape[2])
    data[:, r0 - w.row_off:r1 - w.row_off, c0 - w.col_off:c1 - w.col_off] = IMAGE[:, r0:r1, c0:c1]
    valid[r0 - w.row_off:r1 - w.row_off, c0 - w.col_off:c1 - w.col_off] = True
    return data, valid


class Reader:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.closed = False
        self.threads: set[str] = set()

    def read(self, w: Window) -> tuple[np.ndarray, np.ndarray]:
        self.threads.add(threading.current_thread().name)
        key = (w.row_off, w.col_off)
        with self.source.lock:
            self.source.reads[key] = self.source.reads.get(key, 0) + 1
            n = self.source.reads[key]
        if key in self.source.broken:
            raise ValueError("corrupt block")
        if key in self.source.flaky and n == 1:
            raise OSError("transient read error")
        return window(w)

    def close(self) -> None:
        self.closed = True


@dataclass(eq=False)
class Source:
    plan: Plan
    broken: set = field(default_factory=set)
    flaky: set = field(default_factory=set)
    readers: list = field(default_factory=list)
    reads: dict = field(default_factory=dict)
    lock: Any = field(default_factory=threading.Lock)
    loaded: list = field(default_factory=list)

    def open_reader(self, cache_bytes: int | None = None) -> Reader:
        r = Reader(self)
        self.readers.append(r)
        return r

    def cache_bytes(self, reader: Any, units: Any, readers: int) -> None:
        return None

    def load_predictor(self, device: str, check: bool = False) -> ThresholdPredictor:
        self.loaded.append(device)
        return ThresholdPredictor(self.plan.card)


@dataclass
class Sink:
    run_id: str = "r1"
    ledger: Any = None
    layers: dict = field(default_factory=dict)
    failures: dict = field(default_factory=dict)

    def _rec(self, unit: WorkUnit, status: str, attempt: int, error: str | None = None) -> UnitRecord:
        return UnitRecord(unit_id=unit.id, status=status, input_fingerprint="f", model_sha256="m",  # type: ignore[arg-type]
                          config_hash="c", attempt=attempt, empty=False, stats={}, run_id=self.run_id,
                          finished_at="2026-01-01T00:00:00+00:00", error=error)

    def done(self, unit: WorkUnit, layers: Any, stats: dict, attempt: int) -> UnitRecord:
        self.layers[unit.id] = layers
        return self._rec(unit, "done", attempt)

    def failed(self, unit: WorkUnit, error: str, attempt: int) -> UnitRecord:
        self.failures[unit.id] = error
        return self._rec(unit, "failed", attempt, error)


UNITS = plan_units(IMAGE.shape[1], IMAGE.shape[2], CHUNK, HALO)


def test_the_local_runner_runs_any_source_into_any_sink_as_process_unit_does() -> None:
    plan = make_plan(read_workers=2, write_workers=2)
    source, sink, got = Source(plan), Sink(), []
    times = make_runner("local").run(source, UNITS, sink, got.append, {UNITS[0].id: 2})
    assert sorted(r.unit_id for r in got) == sorted(u.id for u in UNITS) and not sink.failures
    assert {r.unit_id: r.attempt for r in got}[UNITS[0].id] == 3  # earlier attempts carried on
    pred = ThresholdPredictor(plan.card)
    for u in UNITS:  # the same stages as process_unit, on the source's reads, into the sink
        data, valid = window(u.read)
        want = process_unit(u, data, valid, pred, plan)
        assert sink.layers[u.id].keys() == want.layers.keys()
        for name, arr in want.layers.items():
            np.testing.assert_array_equal(sink.layers[u.id][name], arr, err_msg=f"{u.id} {name}")
    assert source.loaded == ["cpu"]  # the model from the source, once, on model.device
    assert len(source.readers) == 2 and all(r.closed for r in source.readers)  # one per read thread
    assert all(len(r.threads) == 1 for r in source.readers)
    assert times.seconds["compute"] > 0 and "reader" in times.cpu


def test_a_unit_error_goes_to_the_sink_as_failed_and_a_transient_read_is_retried() -> None:
    broken, flaky = UNITS[1], UNITS[2]
    source = Source(make_plan(), broken={(broken.read.row_off, broken.read.col_off)},
                    flaky={(flaky.read.row_off, flaky.read.col_off)})
    sink, got = Sink(), []
    LocalRunner().run(source, UNITS, sink, got.append)
    status = {r.unit_id: r.status for r in got}
    assert status[broken.id] == "failed" and sink.failures[broken.id] == "ValueError: corrupt block"
    assert status[flaky.id] == "done" and source.reads[(flaky.read.row_off, flaky.read.col_off)] == 2
    assert sum(s == "done" for s in status.values()) == len(UNITS) - 1


def test_a_runner_loads_its_model_once_for_several_runs_and_a_factory_wins() -> None:
    plan = make_plan()
    runner = LocalRunner()
    first, second = Source(plan), Source(plan)
    runner.prepare(first)
    runner.run(first, UNITS[:2], Sink(), lambda r: None)
    runner.run(second, UNITS[2:4], Sink(), lambda r: None)  # a scan's next date
    assert first.loaded == ["cpu"] and second.loaded == []
    made: list[Any] = []
    factory = lambda p: made.append(p) or ThresholdPredictor(p.card)  # noqa: E731
    source = Source(plan)
    make_runner("local", factory).run(source, UNITS[:1], Sink(), lambda r: None)
    assert made == [plan] and source.loaded == []


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_make_runner_picks_the_kind(kind: str) -> None:
    if kind == "ray":
        pytest.importorskip("ray", reason="ray is not installed")
    runner = make_runner(kind)
    assert type(runner).__name__ == {"local": "LocalRunner", "ray": "RayRunner"}[kind]

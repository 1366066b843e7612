"""The predictor's two paths: CPU output unchanged (bit-identical to a plain fp32 forward), and
the staged path's bookkeeping (sub-batches, reused double buffers) plus batch sizing, checked on
CPU. The CUDA specifics (bf16 autocast, channels_last, pinned memory, streams) run only on a GPU:
``benchmarks/gpu_check.sh`` checks them there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from geofg.models.inference.bundle import write_bundle  # noqa: E402
from geofg.models.inference.card import ClassInfo, ModelCard  # noqa: E402
from geofg.models.inference.nets import ARCHITECTURES, build_model  # noqa: E402
from geofg.models.inference.predictor import (  # noqa: E402
    TorchPredictor,
    batch_slices,
    fit_batch_size,
    load_predictor,
)

BANDS = ["B02", "B03", "B04", "B08", "B11"]


def _card(architecture: str) -> ModelCard:
    return ModelCard(
        name=f"paths-{architecture}", version="0",
        task="patch-classification" if architecture == "fcn-classifier" else "segmentation",
        architecture=architecture, encoder="tu-mobilenetv4_conv_small", bands=BANDS, scale=1e-4,
        mean=[0.1, 0.1, 0.1, 0.3, 0.2], std=[0.05, 0.05, 0.05, 0.1, 0.08],
        classes=[ClassInfo(name=n, colour="#123456") for n in ("water", "forest", "crop")],
        tile_size=128, halo=32, patch_size=64 if architecture == "fcn-classifier" else None,
    )


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(7)
    torch.set_num_threads(2)
    net = build_model(_card(request.param)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("b") / f"{request.param}.safetensors"
    write_bundle(path, {k: v.numpy() for k, v in net.state_dict().items()}, _card(request.param))
    return path


def _x(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (n, len(BANDS), h, w)).astype(np.float32)


def test_cpu_output_is_a_plain_fp32_forward(bundle: Path) -> None:
    """CPU predict() == softmax(model(x)) in fp32, bit for bit: the GPU work changed nothing."""
    pred = load_predictor(bundle, device="cpu")
    assert not pred._staged
    x = _x(3, 96, 128, seed=1)
    with torch.inference_mode():
        want = torch.softmax(pred.model(torch.from_numpy(x)), dim=1).numpy()
    got = pred.predict(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_compile_is_off_by_default(bundle: Path) -> None:
    pred = load_predictor(bundle, device="cpu")
    assert isinstance(pred.model, torch.nn.Module)
    assert not hasattr(pred.model, "_orig_mod")  # what torch.compile's wrapper carries


@pytest.mark.parametrize("max_batch", [2, 3])
def test_staged_path_matches_plain_path(bundle: Path, max_batch: int) -> None:
    """Sub-batching through two reused slots returns the same array as one plain forward.

    Shapes change between calls (buffers grow, then are reused as views), and the batch does not
    divide evenly, so a slot reused before its previous result was copied out would show.
    """
    plain = load_predictor(bundle, device="cpu")
    staged = TorchPredictor(plain.card, plain.model, "cpu", plain.path, max_batch, _staged=True)
    for n, h, w, seed in [(5, 64, 64, 2), (3, 96, 64, 3), (1, 64, 64, 4)]:
        x = _x(n, h, w, seed)
        want = np.concatenate([plain.predict(x[i : i + 1]) for i in range(n)])
        # atol: convolution algorithms may differ by batch size in the last bits
        np.testing.assert_allclose(staged.predict(x), want, rtol=0, atol=1e-5)


def test_fit_batch_size_arithmetic() -> None:
    gib = 2**30
    assert fit_batch_size(10 * gib, gib) == 8  # 80 % of 10 GiB
    assert fit_batch_size(10 * gib, gib, fraction=1.0) == 10
    assert fit_batch_size(gib, 2 * gib) == 0  # nothing fits: caller raises
    assert fit_batch_size(80 * gib, 1, cap=64) == 64
    assert fit_batch_size(0, 1) == 0
    for bad in [(gib, 0), (-1, 1), (gib, 1, 0.0), (gib, 1, 1.5), (gib, 1, 0.8, 0)]:
        with pytest.raises(ValueError, match="expected per_sample_bytes > 0"):
            fit_batch_size(*bad)


def test_batch_slices_cover_in_order() -> None:
    for n in range(0, 12):
        for step in range(1, 6):
            sl = batch_slices(n, step)
            assert [i for s in sl for i in range(s.start, s.stop)] == list(range(n))
            assert all(0 < s.stop - s.start <= step for s in sl)
    with pytest.raises(ValueError):
        batch_slices(3, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_cpu(bundle: Path) -> None:
    cpu = load_predictor(bundle, device="cpu")
    gpu = load_predictor(bundle, device="cuda")
    x = _x(4, 128, 128, seed=9)
    agree = (cpu.predict(x).argmax(1) == gpu.predict(x).argmax(1)).mean()
    assert agree >= 0.995

"""Dynamic World's port: the published reference logits, the normalisation, the self-check that
refuses a card whose normalisation no longer matches the weights, and the receptive field."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from geofg.batch import normalise  # noqa: E402
from geofg.errors import WeightsError  # noqa: E402
from geofg.models.inference.bundle import load_tensors, read_card, write_bundle  # noqa: E402
from geofg.models.inference.card import ModelCard  # noqa: E402
from geofg.models.inference import dynamicworld as dw  # noqa: E402
from geofg.models.inference.dynamicworld import RECEPTIVE_MARGIN, DynamicWorldNet, downsample2  # noqa: E402
from geofg.models.inference.predictor import load_predictor  # noqa: E402
from geofg.models.inference.registry import resolve_model  # noqa: E402

DATA = Path(os.environ.get("GEOFG_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
REFERENCE = DATA / "pretrained" / "dynamicworld" / "reference"


@pytest.mark.realdata
@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"no Dynamic World reference pair at {REFERENCE}")
def test_bundle_reproduces_tensorflow_reference_logits() -> None:
    """ref_out.npy is what TensorFlow 2.21 computes from ref_in.npy with model/forward."""
    pred = load_predictor("dynamic-world", device="cpu")
    x = np.load(REFERENCE / "ref_in.npy", allow_pickle=False)  # NHWC, normalised
    want = np.load(REFERENCE / "ref_out.npy", allow_pickle=False)
    with torch.inference_mode():
        got = pred.model(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert np.abs(got - want).max() <= 1e-4


def test_log_sigmoid_normalisation_matches_the_notebook_formula() -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 12000, size=(3, 5, 7)).astype(np.uint16)
    mean, std = [1.74, 1.72, 1.68], [2.02, 2.04, 2.18]
    got = normalise(raw, np.ones((5, 7), bool), 0.005, mean, std, "log-sigmoid")
    v = (np.log(raw * 0.005 + 1) - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    e = np.exp(v * 5 - 1)
    np.testing.assert_allclose(got, e / (e + 1), rtol=1e-5, atol=1e-6)
    invalid = np.ones((5, 7), bool)
    invalid[2, 3] = False
    raw_f = raw.astype(np.float32)
    raw_f[:, 2, 3] = np.inf
    out = normalise(raw_f, invalid, 0.005, mean, std, "log-sigmoid")
    assert np.isfinite(out).all() and (out[:, 2, 3] == 0).all()


def test_downsample_matches_tensorflow_antialiased_resize_weights() -> None:
    """Interior: [1,3,3,1]/8 taps; edge: the taps inside the image renormalised."""
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, :, 3] = 1.0  # a vertical line at column 3
    y = downsample2(x)[0, 0, 2]
    np.testing.assert_allclose(y.numpy(), [0, 3 / 8, 1 / 8, 0], atol=1e-7)
    const = downsample2(torch.full((1, 2, 6, 10), 7.0))
    np.testing.assert_allclose(const.numpy(), 7.0, rtol=1e-6)  # edges not darkened


def test_receptive_field_is_within_the_documented_margin() -> None:
    torch.manual_seed(0)
    net = DynamicWorldNet().eval()
    x = torch.zeros(1, 9, 96, 96, requires_grad=True)
    net(x)[0, :, 48, 48].sum().backward()
    rows, cols = np.nonzero(x.grad[0].abs().sum(0).numpy())
    reach = max(48 - rows.min(), rows.max() - 48, 48 - cols.min(), cols.max() - 48)
    assert 18 <= reach <= RECEPTIVE_MARGIN


def test_card_with_changed_normalisation_is_refused(tmp_path: Path) -> None:
    src = resolve_model("dynamic-world")
    card, tensors = read_card(src), load_tensors(src)
    ok = tmp_path / "ok.safetensors"
    write_bundle(ok, tensors, card)
    load_predictor(ok, device="cpu")  # the untouched copy loads
    for change in ({"normalisation": "linear"},
                   {"mean": [m + 0.2 for m in card.mean]},
                   {"scale": card.scale * 2}):
        bad = tmp_path / "bad.safetensors"
        write_bundle(bad, tensors, ModelCard(**{**card.model_dump(), **change}))
        with pytest.raises(WeightsError, match="normalisation does not match the weights"):
            load_predictor(bad, device="cpu")


def test_card_carries_licence_attribution_and_receptive_field() -> None:
    card = read_card(resolve_model("dynamic-world"))
    assert card.licence == "Apache-2.0"
    assert "National Geographic and the World Resources Institute" in card.attribution
    assert card.normalisation == "log-sigmoid" and card.halo >= RECEPTIVE_MARGIN
    assert card.bands == ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]


def _random_net(seed: int) -> DynamicWorldNet:
    """A network whose batch norms do something (the folded batch norm is part of the lean path)."""
    torch.manual_seed(seed)
    net = DynamicWorldNet().eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


@pytest.mark.parametrize(("n", "h", "w", "strip"), [(2, 130, 96, 32), (1, 64, 38, 4), (1, 20, 20, 1)])
def test_lean_inference_forward_equals_the_autograd_forward(
    n: int, h: int, w: int, strip: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inference runs the full-resolution layers in row strips (the last one partial here) with
    batch norm folded and mish in place; the values are those of the plain graph that training
    and Grad-CAM run."""
    monkeypatch.setattr(dw, "STRIP_ROWS", strip)
    net = _random_net(n * h + w)
    x = torch.randn(n, 9, h, w)
    with torch.inference_mode():
        assert dw._lean()
        lean = net(x)
    plain = net(x.requires_grad_())
    assert plain.requires_grad and lean.shape == plain.shape == (n, 9, h, w)
    np.testing.assert_allclose(lean.numpy(), plain.detach().numpy(), rtol=0, atol=2e-5)


def test_lean_forward_is_off_with_autograd_and_while_tracing() -> None:
    """ONNX export and torch.compile need one graph for every tile size: no strips there."""
    seen: list[bool] = []
    net = DynamicWorldNet().eval()
    net.register_forward_pre_hook(lambda _m, _a: seen.append(dw._lean()))
    assert not dw._lean()  # autograd on
    with torch.no_grad(), warnings.catch_warnings():
        assert dw._lean()
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python values
        torch.jit.trace(net, torch.randn(1, 9, 16, 16), check_trace=False)
    assert seen == [False]

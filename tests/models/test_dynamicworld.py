"""Dynamic World's port: the published reference logits, the normalisation, the self-check that
refuses a card whose normalisation no longer matches the weights, and the receptive field."""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from geofg.batch import normalise  # noqa: E402
from geofg.errors import ConfigError, WeightsError  # noqa: E402
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


def test_lowered_matmul_precision_is_named_not_blamed_on_the_card() -> None:
    """Importing TerraTorch 1.2 sets torch's float32 matmul precision to "medium" (bfloat16
    matmuls on this CPU: the landcover-s2 self-check was off by 0.022): the error says so, and
    how to fix it, instead of blaming the card."""
    from geofg.models.inference.predictor import run_selfcheck

    src = resolve_model("landcover-s2")
    card, tensors = read_card(src), load_tensors(src)
    model = load_predictor(src, device="cpu").model
    check = {"selfcheck.raw": tensors["selfcheck.raw"],
             "selfcheck.logits": np.asarray(tensors["selfcheck.logits"]) + 0.05}  # off, as in bf16
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with pytest.raises(WeightsError, match=r"matmul precision at 'medium'.*set_float32_matmul_precision\('highest'\)"):
            run_selfcheck(src, card, model, check)
        torch.set_float32_matmul_precision("highest")
        with pytest.raises(WeightsError, match="normalisation does not match the weights"):
            run_selfcheck(src, card, model, check)
    finally:
        torch.set_float32_matmul_precision(before)


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


@pytest.mark.parametrize(("h", "budget"), [(200, 1), (130, 200_000)])
def test_row_bands_keep_the_whole_tiles_logits(h: int, budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a small workspace budget the lean forward runs row bands that read the receptive
    margin beyond the rows they keep; the logits are the whole tile's."""
    monkeypatch.setattr(dw, "WORKSPACE_BYTES", budget)
    net = _random_net(h)
    x = torch.randn(1, 9, h, 64)
    bands = net.row_bands(x.shape)
    assert len(bands) > 1
    assert [k for _, _, k, _ in bands] == sorted({k for _, _, k, _ in bands})  # kept rows tile the input
    assert bands[0][2] == 0 and bands[-1][3] == h and all(b[3] == c[2] for b, c in zip(bands, bands[1:]))
    assert all(i0 % 2 == 0 and (k0 - i0 >= dw.BAND_MARGIN or i0 == 0) for i0, _, k0, _ in bands)
    with torch.inference_mode():
        banded = net(x)
    whole = net(x.clone().requires_grad_())
    np.testing.assert_allclose(banded.numpy(), whole.detach().numpy(), rtol=0, atol=2e-5)


def test_default_unit_tile_runs_in_two_bands_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    net = DynamicWorldNet()
    bands = net.row_bands((1, 9, 1088, 1088))
    assert bands == [(0, 568, 0, 544), (520, 1088, 544, 1088)]
    assert net.workspace_elements((1, 9, 568, 1088)) * 4 <= dw.WORKSPACE_BYTES
    assert net.workspace_elements((1, 9, 1088, 1088)) * 4 > dw.WORKSPACE_BYTES
    monkeypatch.setenv("GEOFG_DW_WORKSPACE_MB", "0")  # no limit
    assert net.row_bands((1, 9, 1088, 1088)) == [(0, 1088, 0, 1088)]
    monkeypatch.setenv("GEOFG_DW_WORKSPACE_MB", "260")
    assert len(net.row_bands((1, 9, 1088, 1088))) == 3
    monkeypatch.setenv("GEOFG_DW_WORKSPACE_MB", "lots")
    with pytest.raises(ConfigError, match=r"^GEOFG_DW_WORKSPACE_MB: expected a whole number of MiB .* found 'lots'"):
        net.row_bands((1, 9, 1088, 1088))


def test_workspace_reuses_its_buffer_from_the_second_forward_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first forward sizes the buffer before it runs (no tensor outside it); a tensor given
    back is handed out again; a forward that outgrows the buffer gets ordinary tensors and the
    next one a buffer of its high-water mark."""
    monkeypatch.setattr(dw, "_workspaces", threading.local())  # this thread's, new
    net = _random_net(3)
    x = torch.randn(2, 9, 48, 40)
    ws = dw.workspace()
    with torch.inference_mode():
        net(x)
        buf = ws.buffer
        assert buf.numel() == net.workspace_elements(x.shape) == ws.high
        net(x)
        assert ws.buffer is buf  # not reallocated
    ws.start(x, 100)
    a = ws.take((1, 10), x)
    ptr = a.data_ptr()
    ws.give(a)
    assert ws.take((1, 10), x).data_ptr() == ptr
    big = ws.take((1, ws.buffer.numel()), x)  # past the end: an ordinary tensor
    assert not (buf.data_ptr() <= big.data_ptr() < buf.data_ptr() + 4 * buf.numel())
    high = ws.high
    ws.start(x)
    assert ws.buffer.numel() == high
    seen: list[dw.Workspace] = []
    t = threading.Thread(target=lambda: seen.append(dw.workspace()))
    t.start()
    t.join()
    assert seen[0] is not ws  # one per thread: two compute streams never share one

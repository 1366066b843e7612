"""Grad-CAM: the formula checked on a network where it has a closed form, chip PNGs and georeferenced
scene layers through the CLI, tiling-independence of the scene layer, refusals (exit 3, nothing
written)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from geofg.cli import app  # noqa: E402
from geofg.models.tools import explain as explain_mod  # noqa: E402
from geofg.models.inference.bundle import write_bundle  # noqa: E402
from geofg.models.inference.card import ClassInfo, ModelCard  # noqa: E402
from geofg.models.tools.explain import chip_gradcam, explain, tile_hirescam  # noqa: E402
from geofg.models.inference.nets import build_model  # noqa: E402
from geofg.models.inference.tiny import tiny_card  # noqa: E402
from rasters import write_raster  # noqa: E402

BANDS = ["B02", "B03", "B04", "B08", "B11"]
runner = CliRunner()


class _Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(len(BANDS), 4, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, torch.relu(self.conv(x))]


class PixelNet(torch.nn.Module):
    """1x1 convs only: logit_c = w_c . A + b_c per pixel, so Grad-CAM has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = _Encoder()
        self.head = torch.nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[-1])


def closed_form(net: PixelNet, x: np.ndarray, cls: np.ndarray | int) -> np.ndarray:
    """relu(logit_c - b_c) per pixel, c = cls (per pixel or one class)."""
    with torch.no_grad():
        z = net(torch.from_numpy(x)).numpy()
    b = net.head.bias.detach().numpy().reshape(1, -1, 1, 1)
    c = np.broadcast_to(np.asarray(cls), (x.shape[0], x.shape[2], x.shape[3]))
    return np.maximum(np.take_along_axis(z - b, c[:, None], axis=1)[:, 0], 0)


def test_chip_gradcam_matches_closed_form() -> None:
    net = PixelNet().eval()
    x = np.random.default_rng(0).normal(0, 1, (2, 5, 16, 16)).astype(np.float32)
    cams, classes, probs = chip_gradcam(net, x, target=None, stage=1)
    with torch.no_grad():
        want_cls = torch.softmax(net(torch.from_numpy(x)), 1).mean((2, 3)).argmax(1).numpy()
    np.testing.assert_array_equal(classes, want_cls)
    for i in range(2):
        ref = closed_form(net, x[i : i + 1], int(classes[i]))[0]
        np.testing.assert_allclose(cams[i], ref / ref.max(), atol=1e-5)
    assert probs.shape == (2, 3) and cams.min() >= 0 and np.isclose(cams.max(), 1)
    cams2, classes2, _ = chip_gradcam(net, x, target=2, stage=1)
    assert (classes2 == 2).all()
    ref = closed_form(net, x[:1], 2)[0]
    np.testing.assert_allclose(cams2[0], ref / max(ref.max(), 1e-12), atol=1e-5)


def test_tile_hirescam_is_the_predicted_class_evidence() -> None:
    net = PixelNet().eval()
    x = np.random.default_rng(1).normal(0, 1, (1, 5, 12, 20)).astype(np.float32)
    with torch.no_grad():
        pred = net(torch.from_numpy(x)).argmax(1).numpy()
    np.testing.assert_allclose(tile_hirescam(net, x, None, 1)[:, 0], closed_form(net, x, pred),
                               atol=1e-5)


class _FakePredictor:
    def __init__(self, card: ModelCard) -> None:
        self.card, self.model = card, PixelNet().eval()


def test_scene_layer_is_georeferenced_tiling_independent_and_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card = tiny_card(BANDS, ["a", "b", "c"], tile_size=64, halo=8, tile_multiple=1, scale=1e-3)
    monkeypatch.setattr("geofg.models.inference.predictor.load_predictor",
                        lambda *a, **k: _FakePredictor(card))
    rng = np.random.default_rng(2)
    data = rng.integers(1, 3000, (5, 90, 130)).astype("uint16")
    data[:, :10, :20] = 0
    scene = write_raster(tmp_path / "s.tif", data, descriptions=BANDS, nodata=0)
    maps = []
    for chunk in (32, 200):
        out = tmp_path / f"cam{chunk}.tif"
        res = explain("fake", [str(scene)], out, chunk=chunk, stage=1)
        assert res.mode == "scene" and Path(f"{out}.png").is_file()
        with rasterio.open(out) as ds, rasterio.open(scene) as src:
            assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
            assert ds.dtypes[0] == "float32" and ds.descriptions[0] == "gradcam"
            maps.append(ds.read(1))
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-4, equal_nan=True)
    valid = (data != 0).all(axis=0)
    assert np.isnan(maps[0][~valid]).all() and not np.isnan(maps[0][valid]).any()
    x = (data.astype(np.float32) * 1e-3)[None]
    with torch.no_grad():
        pred = PixelNet()(torch.from_numpy(x)).argmax(1).numpy()
    ref = closed_form(PixelNet(), x, pred)[0]
    np.testing.assert_allclose(maps[0][valid], ref[valid], atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cam200.tif", "cam200.tif.png", "cam32.tif", "cam32.tif.png", "s.tif"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    card = ModelCard(
        name="tiny-fcn", version="0", task="patch-classification", architecture="fcn-classifier",
        encoder="tu-mobilenetv4_conv_small", bands=BANDS, scale=1e-4,
        mean=[0.1, 0.1, 0.1, 0.3, 0.2], std=[0.05, 0.05, 0.05, 0.1, 0.08],
        classes=[ClassInfo(name=n, colour="#123456") for n in ("water", "forest", "crop")],
        tile_size=128, halo=32, patch_size=64,
    )
    torch.manual_seed(0)
    net = build_model(card).eval()
    path = tmp_path_factory.mktemp("b") / "tiny.safetensors"
    write_bundle(path, {k: v.numpy() for k, v in net.state_dict().items()}, card)
    return path


def test_explain_chip_cli_writes_png_overlay(bundle: Path, tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(200, 4000, (5, 64, 64)).astype("uint16")
    chip = write_raster(tmp_path / "chip.tif", data, descriptions=BANDS)
    r = runner.invoke(app, ["explain", str(bundle), str(chip), "--class", "crop"])
    assert r.exit_code == 0, r.output
    png = tmp_path / "chip.gradcam.png"
    img = Image.open(png)
    assert img.size == (4 * 130, 4 * 64) and img.mode == "RGB"
    meta = json.loads(img.text["geofg:gradcam"])
    assert meta["class"] == "crop" and meta["model"] == "tiny-fcn" and 0 <= meta["probability"] <= 1
    assert "class crop" in r.output
    r = runner.invoke(app, ["explain", str(bundle), str(chip)])  # exists: refused
    assert r.exit_code == 3 and "--overwrite" in r.output


def test_explain_refusals_write_nothing(bundle: Path, tmp_path: Path) -> None:
    chip = write_raster(tmp_path / "chip.tif", np.ones((5, 64, 64), "uint16"), descriptions=BANDS)
    canary = tmp_path / "canary"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (canary.write_text, ("pwned",))

    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps(Evil(), protocol=4))
    cases = [
        ([str(bad), str(chip)], "pickle"),
        ([str(bundle), str(chip), "--class", "urban"], "not a class"),
        ([str(bundle), str(chip), "-o", str(tmp_path / "x.jpg")], "expected a .png"),
    ]
    for args, words in cases:
        r = runner.invoke(app, ["explain", *args])
        assert r.exit_code == 3, r.output
        assert words in r.output and len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chip.tif", "evil.safetensors"]
    assert not canary.exists()


def test_module_does_not_import_torch_at_import_time() -> None:
    assert "torch" not in explain_mod.__dict__

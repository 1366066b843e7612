"""Test-time augmentation (8 dihedral transforms, un-transformed before averaging) and ensembles
(probabilities averaged over compatible bundles; incompatible ones refused with exit 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from geofg.cli import app
from geofg.errors import ConfigError
from geofg.models.inference.bundle import bundle_sha256
from geofg.models.inference.card import ClassInfo
from geofg.models.inference.ensemble import (
    DIHEDRAL,
    EnsemblePredictor,
    TTAPredictor,
    combined_card,
    models_sha256,
    transform,
    untransform,
)
from geofg.models.inference.tiny import ThresholdPredictor, tiny_card
from rasters import write_raster

runner = CliRunner()

SIDES = st.integers(1, 6)


@given(h=SIDES, w=SIDES, n=st.integers(1, 2), c=st.integers(1, 3))
def test_untransform_inverts_every_dihedral_transform(h: int, w: int, n: int, c: int) -> None:
    x = np.arange(n * c * h * w, dtype=np.float32).reshape(n, c, h, w)
    outs = set()
    for k, flip in DIHEDRAL:
        t = transform(x, k, flip)
        assert t.shape[-2:] == ((h, w) if k % 2 == 0 else (w, h))
        np.testing.assert_array_equal(untransform(t, k, flip), x)
        outs.add(t.tobytes() + bytes(t.shape))
    if h > 1 and w > 1:
        assert len(outs) == 8  # eight distinct transforms of a generic array


class PositionPredictor:
    """Not equivariant: class-1 probability grows with the column index of the *given* array."""

    def __init__(self) -> None:
        self.card = tiny_card(["a", "b"], ["left", "right"], tile_multiple=1)
        self.shapes: list[tuple[int, ...]] = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.shapes.append(x.shape)
        n, _, h, w = x.shape
        p1 = np.broadcast_to(np.linspace(0.0, 1.0, w, dtype=np.float32), (n, h, w))
        return np.stack([1 - p1, p1], axis=1).astype(np.float32)


def test_tta_of_a_pixelwise_model_is_the_model() -> None:
    inner = ThresholdPredictor(tiny_card(["a", "b"], ["no", "yes"]))
    x = np.random.default_rng(0).normal(0, 1, (2, 2, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(TTAPredictor(inner).predict(x), inner.predict(x), atol=1e-6)
    assert inner.calls == 9


def test_tta_aligns_outputs_before_averaging() -> None:
    inner = PositionPredictor()
    x = np.zeros((1, 2, 4, 6), np.float32)
    got = TTAPredictor(inner).predict(x)
    expect = np.mean([untransform(inner.predict(transform(x, k, f)), k, f) for k, f in DIHEDRAL],
                     axis=0)
    np.testing.assert_allclose(got, expect, atol=1e-6)
    # averaged over the dihedral group, the column ramp becomes symmetric under every transform
    for k, f in DIHEDRAL[1:]:
        if k % 2 == 0:
            np.testing.assert_allclose(transform(got, k, f), got, atol=1e-6)
    assert {s[-2:] for s in inner.shapes} == {(4, 6), (6, 4)}


def _two(card_kw: dict | None = None) -> tuple[ThresholdPredictor, ThresholdPredictor]:
    a = ThresholdPredictor(tiny_card(["a", "b"], ["no", "yes"]))
    b = ThresholdPredictor(tiny_card(["a", "b"], ["no", "yes"], **(card_kw or {})))
    return a, b


def test_ensemble_averages_and_renormalises_per_member() -> None:
    x = np.random.default_rng(1).normal(0, 1, (1, 2, 4, 4)).astype(np.float32)
    a, b = _two()
    np.testing.assert_allclose(EnsemblePredictor([a, b]).predict(x), a.predict(x), atol=1e-6)
    # b normalises with other statistics: it must see (raw - 1) / 2 where a sees raw
    a, b = _two({"mean": [1.0, 0.0], "std": [2.0, 1.0]})
    ens = EnsemblePredictor([a, b], ["a", "b"])
    raw = x
    expect = (a.predict(raw) + b.predict((raw - np.array([1.0, 0.0]).reshape(1, 2, 1, 1))
                                         / np.array([2.0, 1.0]).reshape(1, 2, 1, 1))) / 2
    np.testing.assert_allclose(ens.predict(x), expect, atol=1e-6)
    assert ens.card.name.startswith("ensemble-")


@pytest.mark.parametrize(("kw", "what"), [
    ({"bands": ["a", "c"]}, "bands"),
    ({"classes": ["no", "maybe"]}, "classes"),
    ({"task": "segmentation"}, "task"),
])
def test_incompatible_members_are_refused(kw: dict, what: str) -> None:
    base = dict(bands=["a", "b"], classes=["no", "yes"])
    c1 = tiny_card(**base)
    c2 = tiny_card(**{**base, **kw})
    with pytest.raises(ConfigError, match=f"same {what}"):
        combined_card([c1, c2], ["one.safetensors", "two.safetensors"])


def test_combined_card_takes_the_safest_tiling() -> None:
    c1 = tiny_card(["a"], ["x", "y"], tile_size=64, halo=8, tile_multiple=4)
    c2 = tiny_card(["a"], ["x", "y"], tile_size=96, halo=16, tile_multiple=6)
    card = combined_card([c1, c2])
    assert (card.halo, card.tile_multiple, card.tile_size) == (16, 12, 96)
    assert card.classes[0] == ClassInfo(name="x", colour=c1.classes[0].colour)


def test_models_sha256_keeps_single_model_identity() -> None:
    assert models_sha256(["ab" * 32]) == "ab" * 32
    assert models_sha256(["ab" * 32], tta=True) != "ab" * 32
    assert models_sha256(["ab" * 32, "cd" * 32]) != models_sha256(["cd" * 32, "ab" * 32], tta=True)


# --- the CLI with real (tiny, random-weight) bundles ------------------------------------------------

torch = pytest.importorskip("torch")
from geofg.models.inference.bundle import write_bundle  # noqa: E402
from geofg.models.inference.card import ModelCard  # noqa: E402
from geofg.models.inference.nets import build_model  # noqa: E402
from geofg.models.inference.predictor import load_predictor  # noqa: E402

BANDS = ["B02", "B03", "B04", "B08", "B11"]


def tiny_bundle(path: Path, seed: int, classes: tuple[str, ...] = ("water", "forest", "crop"),
                mean: float = 0.1) -> Path:
    card = ModelCard(
        name=path.stem, version="0", task="patch-classification", architecture="fcn-classifier",
        encoder="tu-mobilenetv4_conv_small", bands=BANDS, scale=1e-4, mean=[mean] * 5,
        std=[0.05, 0.05, 0.05, 0.1, 0.08], classes=[ClassInfo(name=n, colour="#123456")
                                                    for n in classes],
        tile_size=128, halo=32, patch_size=64,
    )
    torch.manual_seed(seed)
    net = build_model(card).eval()
    write_bundle(path, {k: v.numpy() for k, v in net.state_dict().items()}, card)
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ens")
    return {"a": tiny_bundle(d / "a.safetensors", 0), "b": tiny_bundle(d / "b.safetensors", 1, mean=0.2),
            "odd": tiny_bundle(d / "odd.safetensors", 2, classes=("water", "urban", "crop"))}


def test_tta_and_ensemble_through_the_real_predictor(bundles: dict[str, Path]) -> None:
    torch.set_num_threads(2)
    a, b = (load_predictor(bundles[k], "cpu") for k in "ab")
    x = np.random.default_rng(0).normal(0, 1, (1, 5, 64, 96)).astype(np.float32)
    ens = EnsemblePredictor([a, b]).predict(x)
    shift = (0.1 - 0.2) / np.asarray(b.card.std, np.float32).reshape(1, -1, 1, 1)
    np.testing.assert_allclose(ens, (a.predict(x) + b.predict(x * 1.0 + shift)) / 2, atol=1e-5)
    tta = TTAPredictor(a).predict(x)
    assert tta.shape == x.shape[:1] + (3,) + x.shape[2:]
    np.testing.assert_allclose(tta.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(tta, a.predict(x), atol=1e-3)  # the CNN is not rotation invariant


def test_classify_with_tta_and_two_models(bundles: dict[str, Path], tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(200, 4000, (5, 80, 96)).astype("uint16")
    scene = write_raster(tmp_path / "s.tif", data, descriptions=BANDS)
    out = tmp_path / "e.zarr"
    r = runner.invoke(app, ["classify", str(scene), "-o", str(out), "--model", str(bundles["a"]),
                            "--model", str(bundles["b"]), "--tta", "--chunk", "64",
                            "--device", "cpu", "-q", "--no-mask"])  # the ensemble is the subject
    assert r.exit_code == 0, r.output
    g = zarr.open_group(str(out), mode="r")
    model = dict(g.attrs)["geofg:model"]
    assert model["name"] == "ensemble-a-b"
    shas = [bundle_sha256(bundles[k]) for k in "ab"]
    assert model["sha256"] == models_sha256(shas, tta=True)
    assert dict(g.attrs)["geofg:config"]["model"]["tta"] is True
    assert g["class"][:].max() < 3


def test_classify_refuses_incompatible_ensemble_before_writing(bundles: dict[str, Path],
                                                               tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "s.tif", np.ones((5, 64, 64), "uint16"), descriptions=BANDS)
    out = tmp_path / "x.zarr"
    r = runner.invoke(app, ["classify", str(scene), "-o", str(out), "--model", str(bundles["a"]),
                            "--model", str(bundles["odd"]), "-q"])
    assert r.exit_code == 3, r.output
    assert "same classes" in r.output and "odd.safetensors" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.slow
@pytest.mark.realdata
def test_tta_accuracy_on_eurosat_test_split(data_root: Path) -> None:
    """TTA on the packaged bundle: measured, within 5 points of the plain model (100 chips)."""
    from geofg.models.tools.export import load_split
    from geofg.models.inference.registry import resolve_model

    pred = load_predictor(resolve_model("eurosat-13"), "cpu")
    x, y = load_split(data_root / "eurosat_ms", "test", pred.card)
    plain = pred.predict(x).mean(axis=(2, 3)).argmax(1)
    tta = TTAPredictor(pred).predict(x).mean(axis=(2, 3)).argmax(1)
    assert abs((tta == y).mean() - (plain == y).mean()) <= 0.05

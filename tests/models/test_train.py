"""`geofg train classifier`: data layouts, the checks done before anything is trained, the trained
bundle (train-split normalisation, learns a separable task), resume and transfer learning."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chipdata import BANDS, CLASSES, make_chips, rewrite_csv  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from geofg.cli import app  # noqa: E402
from geofg.errors import InputError  # noqa: E402
from geofg.models.inference.bundle import load_tensors, read_card  # noqa: E402
from geofg.models.training.chips import load_chips  # noqa: E402
from geofg.models.training.train import TrainConfig, _augment, train_classifier  # noqa: E402

runner = CliRunner()
FAST = ["--epochs", "4", "--eval-every", "2", "--threads", "2", "--device", "cpu"]


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def chips_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chips(tmp_path_factory.mktemp("chips"))


@pytest.fixture(scope="module")
def trained(chips_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "syn.safetensors"
    r = invoke("train", "classifier", "--data", chips_dir, "-o", out, "--epochs", "8",
               "--eval-every", "2", "--device", "cpu", "--crop-classes", "crop", "-q")
    assert r.exit_code == 0, r.output
    return out


# --- data layouts -----------------------------------------------------------------------------


def test_csv_and_folder_layouts_read_the_same_chips(tmp_path: Path) -> None:
    a = load_chips(make_chips(tmp_path / "csv", {"train": 3, "val": 1, "test": 1}))
    b = load_chips(make_chips(tmp_path / "dirs", {"train": 3, "val": 1, "test": 1},
                              layout="folders"))
    assert a.class_names == b.class_names == CLASSES and a.bands == b.bands == BANDS
    for split in ("train", "val", "test"):
        assert np.array_equal(a.splits[split].x, b.splits[split].x)
        assert np.array_equal(a.splits[split].y, b.splits[split].y)


def test_folder_per_class_without_splits_draws_a_stratified_val(tmp_path: Path) -> None:
    root = make_chips(tmp_path / "d", {"all": 10}, layout="folders")
    c = load_chips(root, val_fraction=0.2, seed=1)
    assert set(c.splits) == {"train", "val"} and "no test split" in c.notes[0]
    assert np.bincount(c.splits["val"].y).tolist() == [2, 2, 2]
    assert np.bincount(c.splits["train"].y).tolist() == [8, 8, 8]
    again = load_chips(root, val_fraction=0.2, seed=1)
    assert again.splits["val"].files == c.splits["val"].files


# --- bad input: one line, exit 3, nothing written ---------------------------------------------


def _bad(tmp_path: Path, root: Path, *extra: str, match: str) -> None:
    out = tmp_path / "out.safetensors"
    r = invoke("train", "classifier", "--data", root, "-o", out, *FAST, *extra)
    assert r.exit_code == 3, r.output
    assert match in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [root.name]


def test_label_naming_a_missing_file(tmp_path: Path) -> None:
    root = make_chips(tmp_path / "c", {"train": 2, "val": 1})
    rewrite_csv(root, lambda rows: [*rows, {**rows[0], "file": "crop/nope.tif"}])
    _bad(tmp_path, root, match="names a file that does not exist: crop/nope.tif")


def test_class_with_no_training_chips(tmp_path: Path) -> None:
    root = make_chips(tmp_path / "c", {"train": 2, "val": 1})
    rewrite_csv(root, lambda rows: [r for r in rows
                                    if not (r["label"] == "water" and r["split"] == "train")])
    _bad(tmp_path, root, match="classes ['water'] have no training chips")


def test_empty_class_folder(tmp_path: Path) -> None:
    root = make_chips(tmp_path / "c", {"all": 3}, layout="folders")
    (root / "urban").mkdir()
    _bad(tmp_path, root, match="classes ['urban'] have no training chips")


def test_test_chip_in_the_training_split(tmp_path: Path) -> None:
    root = make_chips(tmp_path / "c", {"train": 2, "val": 1, "test": 1})
    rewrite_csv(root, lambda rows: [*rows, {**[r for r in rows if r["split"] == "test"][0],
                                            "split": "train"}])
    _bad(tmp_path, root, match="in the train split and in the test split")


def test_test_pixels_copied_into_training(tmp_path: Path) -> None:
    root = make_chips(tmp_path / "c", {"train": 2, "val": 1, "test": 1})
    shutil.copy(root / "crop/crop_test_0.tif", root / "crop/copy.tif")
    rewrite_csv(root, lambda rows: [*rows, {"file": "crop/copy.tif", "label": "crop",
                                            "split": "train"}])
    _bad(tmp_path, root, match="same pixels as a test chip")


def test_unnamed_bands_need_bands_option(tmp_path: Path) -> None:
    root = make_chips(tmp_path / "c", {"train": 2, "val": 1}, descriptions=False)
    _bad(tmp_path, root, match="name them with --bands")
    _bad(tmp_path, root, "--bands", "B02,B03", match="--bands names 2 bands, the chips have 4")


def test_init_bundle_with_other_bands(tmp_path: Path, trained: Path) -> None:
    root = make_chips(tmp_path / "c", {"train": 2, "val": 1}, descriptions=False)
    _bad(tmp_path, root, "--bands", "B02,B03,B04,B11", "--init", trained,
         match="--init bundle expects bands ['B02', 'B03', 'B04', 'B08']")


def test_init_weights_that_are_not_safetensors(tmp_path: Path) -> None:
    root = make_chips(tmp_path / "c", {"train": 2, "val": 1})
    evil = tmp_path / "c" / "model.pt"
    evil.write_bytes(pickle.dumps({"w": 1}))
    _bad(tmp_path, root, "--init", evil, match="pickled checkpoints are refused")


# --- training ---------------------------------------------------------------------------------


def test_trained_bundle_card_and_accuracy(trained: Path, chips_dir: Path) -> None:
    card = read_card(trained)
    chips = load_chips(chips_dir)
    refl = chips.splits["train"].x.astype(np.float64) * 1e-4
    assert card.scale == 1e-4 and card.bands == BANDS and card.class_names == CLASSES
    np.testing.assert_allclose(card.mean, refl.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(card.std, refl.std(axis=(0, 2, 3)), rtol=1e-9)
    assert card.crop_classes == ["crop"] and card.patch_size == 32
    assert card.training["splits"] == {"train": 36, "val": 12, "test": 12}
    assert card.training["class_weights"] == [1.0, 1.0, 1.0]
    assert card.metrics["val_accuracy"] >= 0.9  # spectrally separable classes
    assert all(v.dtype == np.float16 for v in load_tensors(trained).values()
               if v.dtype.kind == "f")


def test_resume_continues_to_the_same_weights(tmp_path: Path) -> None:
    """A run stopped after epoch 2 and resumed ends with the weights of an uninterrupted run."""
    chips = load_chips(make_chips(tmp_path / "c", {"train": 4, "val": 2}))
    cfg = TrainConfig(epochs=4, eval_every=1, chips_per_step=12, mosaic=(1, 2), warmup_epochs=1)

    class Stop(Exception):
        pass

    def stop_at_2(rec: dict) -> None:
        if rec.get("epoch") == 2:
            raise Stop

    straight, _, rec_a = train_classifier(chips, cfg, card=_card(chips))
    with pytest.raises(Stop):
        train_classifier(chips, cfg, stop_at_2, card=_card(chips), checkpoint_dir=tmp_path / "ck")
    state = json.loads((tmp_path / "ck" / "last.json").read_text())
    assert state["epoch"] == 2
    seen = []
    resumed, _, rec_b = train_classifier(chips, cfg, seen.append, card=_card(chips),
                                         checkpoint_dir=tmp_path / "ck")
    assert seen[0] == {"resumed_from": 2} and [r["epoch"] for r in seen[1:]] == [3, 4]
    assert rec_a["val_history"] == rec_b["val_history"]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    other = TrainConfig(**{**cfg.__dict__, "lr": 1e-3})
    with pytest.raises(Exception, match="checkpoint was made with other data"):
        train_classifier(chips, other, card=_card(chips), checkpoint_dir=tmp_path / "ck")


def _card(chips):  # noqa: ANN001, ANN202
    from geofg.models.training.train import band_stats, build_card

    mean, std = band_stats(chips.splits["train"].x)
    return build_card(name="t", bands=chips.bands, class_names=chips.class_names, mean=mean,
                      std=std, scale=1e-4, encoder="tu-mobilenetv4_conv_small", patch_size=32)


def test_init_and_freeze_encoder_keep_the_encoder(tmp_path: Path, trained: Path) -> None:
    root = make_chips(tmp_path / "c", {"train": 4, "val": 2}, seed=5)
    out = tmp_path / "ft.safetensors"
    r = invoke("train", "classifier", "--data", root, "-o", out, "--init", trained,
               "--freeze-encoder", "--epochs", "2", "--eval-every", "1", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    before, after = load_tensors(trained), load_tensors(out)
    enc = [k for k in before if k.startswith("encoder.")]
    assert enc and all(np.array_equal(before[k], after[k]) for k in enc)
    assert not np.array_equal(before["head.2.weight"], after["head.2.weight"])
    assert read_card(out).training["freeze_encoder"] is True


def test_augment_is_a_dihedral_transform_without_noise() -> None:
    cfg = TrainConfig(gain_sigma=0, global_gain_sigma=0, offset_sigma=0, crop_px=0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    y = _augment(x, cfg, torch.Generator().manual_seed(0))
    for i in range(2):
        views = [torch.rot90(x[i], k, (1, 2)) for k in range(4)]
        views += [torch.flip(v, (2,)) for v in views]
        assert any(torch.equal(y[i], v) for v in views)
    shifted = _augment(x, TrainConfig(gain_sigma=0, global_gain_sigma=0, offset_sigma=0,
                                      crop_px=2), torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape


def test_load_chips_rejects_mixed_shapes(tmp_path: Path) -> None:
    root = make_chips(tmp_path / "c", {"train": 2, "val": 1})
    from rasters import write_raster

    write_raster(root / "crop" / "crop_train_0.tif", np.ones((4, 16, 16), np.uint16),
                 descriptions=BANDS)
    with pytest.raises(InputError, match="all chips must have one shape"):
        load_chips(root)


def test_fusion_network_is_dense_and_fits_its_linear_head(tmp_path: Path) -> None:
    """FusionChipClassifier: fit_fusion fills the linear head and the weight (chosen on val), and
    with a non-zero weight a chip's dense map still equals its chip logits, and every window of a
    larger tile is the fused heads on the mean of its 2x2 cells."""
    from geofg.models.training.features import fit_fusion
    from geofg.models.inference.nets import FusionChipClassifier
    from geofg.models.training.train import normalise

    chips = load_chips(make_chips(tmp_path / "c", {"train": 8, "val": 4}, size=64))
    card = _card(chips).model_copy(update={"patch_size": 64})
    torch.manual_seed(0)
    net = FusionChipClassifier(card).eval()
    xt, xv = normalise(chips.splits["train"].x, card), normalise(chips.splits["val"].x, card)
    rec = fit_fusion(net, xt, chips.splits["train"].y, xv, chips.splits["val"].y, k=3,
                     weights=(0.0, 0.5, 1.0))
    # an untrained CNN is at chance; the linear head on spectral features separates the classes
    assert dict((a, acc) for a, acc, _ in rec["val"])[1.0] == 1.0
    assert float(net.fusion_weight) in (0.5, 1.0) and rec["fusion_weight"] == float(
        net.fusion_weight)
    assert torch.all(net.hand_std > 0) and net.linear.weight.abs().sum() > 0
    with torch.inference_mode():
        x = torch.from_numpy(xv)
        dense = torch.softmax(net(x), dim=1)
        chip = torch.softmax(net.chip_logits(x), dim=1)
        torch.testing.assert_close(dense, chip[:, :, None, None].expand_as(dense), atol=1e-5,
                                   rtol=1e-5)
        big = torch.randn(1, len(card.bands), 96, 128)
        grid, cells = net.window_logits(big), net.cell_features(big)
        for i in range(grid.shape[2]):
            for j in range(grid.shape[3]):
                window = cells[:, :, i : i + 2, j : j + 2].mean(dim=(2, 3), keepdim=True)
                want = net.fuse(net.window_features(window))[0, :, 0, 0]
                torch.testing.assert_close(grid[0, :, i, j], want, atol=1e-5, rtol=1e-5)

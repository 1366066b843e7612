"""`geofg evaluate`: metrics against hand-computed values, the report files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chipdata import CLASSES, make_chips, rewrite_csv  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from geofg.cli import app  # noqa: E402
from geofg.models.inference.bundle import read_card  # noqa: E402
from geofg.models.training.chips import load_chips  # noqa: E402
from geofg.models.training.evaluate import chip_probabilities, confusion_metrics  # noqa: E402
from geofg.models.inference.predictor import load_predictor  # noqa: E402
from geofg.models.training.train import normalise  # noqa: E402

runner = CliRunner()


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = make_chips(tmp_path_factory.mktemp("chips"), {"train": 8, "val": 2, "test": 4})
    out = tmp_path_factory.mktemp("b") / "m.safetensors"
    r = invoke("train", "classifier", "--data", root, "-o", out, "--epochs", "4",
               "--eval-every", "2", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    return root, out


def test_confusion_metrics_by_hand() -> None:
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 2, 2])
    m = confusion_metrics(y, p, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": round(2 / 3, 4),
                                   "f1": 0.8, "support": 3}
    assert m["per_class"]["b"]["precision"] == 0.5 and m["per_class"]["b"]["recall"] == 0.5
    f1_c = 2 * 0.5 * 1.0 / 1.5
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + f1_c) / 3)
    absent = confusion_metrics(np.array([0, 0]), np.array([0, 1]), ["a", "b"])
    assert absent["macro_f1"] == pytest.approx(2 / 3)  # class b has no support: not scored


def test_evaluate_writes_the_report(setup: tuple[Path, Path], tmp_path: Path) -> None:
    root, bundle = setup
    rep_dir = tmp_path / "rep"
    r = invoke("evaluate", bundle, "--data", root, "--split", "test", "--report", rep_dir,
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    rep = json.loads((rep_dir / "report.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix", "class_names"} <= rep.keys()
    assert rep["class_names"] == CLASSES and rep["split"] == "test" and rep["n"] == 12
    assert set(rep["per_class"]) == set(CLASSES)
    assert all(v["support"] == 4 for v in rep["per_class"].values())
    cm = np.array(rep["confusion_matrix"])
    assert cm.sum() == 12 and rep["accuracy"] == pytest.approx(np.trace(cm) / 12)
    # the same numbers computed independently through the predictor
    pred = load_predictor(bundle, device="cpu")
    chips = load_chips(root, splits=["test"])
    probs = pred.predict(normalise(chips.splits["test"].x, read_card(bundle)))
    truth = chips.splits["test"].y
    assert rep["accuracy"] == pytest.approx(float((probs.mean(axis=(2, 3)).argmax(1) == truth)
                                                  .mean()))
    assert len(rep["misclassified"]) == 12 - np.trace(cm)
    with Image.open(rep_dir / "confusion_matrix.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    md = (rep_dir / "report.md").read_text()
    assert f"accuracy {rep['accuracy']:.4f}" in md and "| water |" in md
    assert sorted(p.name for p in rep_dir.iterdir()) == ["confusion_matrix.png", "report.json",
                                                         "report.md"]


def test_tta_averages_the_dihedral_views() -> None:
    calls = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(x.copy())
        p = np.stack([x[:, 0], 1 - x[:, 0]], axis=1)  # depends on pixel positions
        return p

    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 4, 4)).astype(np.float32)
    plain = chip_probabilities(predict, x)
    tta = chip_probabilities(predict, x, tta=True)
    assert len(calls) == 9 and tta.shape == (3, 2)
    np.testing.assert_allclose(tta, plain, rtol=1e-6)  # mean over a chip is view-invariant


def _bad(tmp_path: Path, *args: str, match: str) -> None:
    rep = tmp_path / "rep"
    r = invoke("evaluate", *args, "--report", rep, "--device", "cpu")
    assert r.exit_code == 3, r.output
    assert match in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not rep.exists()


def test_missing_split(setup: tuple[Path, Path], tmp_path: Path) -> None:
    root = make_chips(tmp_path / "c", {"train": 1, "val": 1})
    _bad(tmp_path, setup[1], "--data", root, match="expected chips in split(s) ['test']")


def test_labels_the_model_does_not_know(setup: tuple[Path, Path], tmp_path: Path) -> None:
    root = make_chips(tmp_path / "c", {"test": 1})
    rewrite_csv(root, lambda rows: [*rows[:-1], {**rows[-1], "label": "urban"}])
    _bad(tmp_path, setup[1], "--data", root, match="labels ['urban'] are not classes")


def test_chips_missing_a_model_band(setup: tuple[Path, Path], tmp_path: Path) -> None:
    root = make_chips(tmp_path / "c", {"test": 1}, descriptions=False)
    _bad(tmp_path, setup[1], "--data", root, "--bands", "B02,B03,B04,B05",
         match="missing ['B08']")


def test_weights_that_are_not_safetensors(setup: tuple[Path, Path], tmp_path: Path) -> None:
    evil = tmp_path / "m.pth"
    evil.write_bytes(b"\x80\x04K\x01.")
    _bad(tmp_path, evil, "--data", setup[0], match="pickled checkpoints are refused")

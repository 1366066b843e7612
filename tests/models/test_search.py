"""`geofg train classifier --search SPACE.yaml --trials N` (geofg.models.training.search, Ray Tune).

The space checks run without Ray. The one real search (2 trials, 1 epoch, 36 generated 32-px
chips) lets geofg start its own local Ray (token from RAY_AUTH_TOKEN, so nothing is written to
~/.ray) and checks that it is shut down again: no Ray process is left among this process's
children.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from chipdata import make_chips  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from geofg.cli import app  # noqa: E402
from geofg.errors import ConfigError  # noqa: E402
from geofg.models.training.search import (  # noqa: E402
    SEARCH_KEYS,
    default_point,
    grid_points,
    load_space,
    trial_config,
)
from geofg.models.training.train import TrainConfig  # noqa: E402

runner = CliRunner()


def invoke(*args: object):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def chips_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chips(tmp_path_factory.mktemp("chips"), {"train": 12, "val": 4})


# --- the space: bad input is one line, exit 3, nothing written ---------------------------------

BAD = {
    "unknown top-level key": ("method: random\ntrials: 2\nsampler: tpe\nparams:\n  lr: {choice: [0.001]}\n", "'sampler'"),
    "unknown parameter": ("trials: 2\nparams:\n  learning_rate: {loguniform: [1.0e-4, 1.0e-2]}\n", "params.learning_rate"),
    "not searchable": ("trials: 2\nparams:\n  seed: {choice: [1, 2]}\n", "params.seed"),
    "low above high": ("trials: 2\nparams:\n  lr: {loguniform: [1.0e-2, 1.0e-4]}\n", "params.lr.loguniform"),
    "loguniform from 0": ("trials: 2\nparams:\n  weight_decay: {loguniform: [0.0, 0.3]}\n", "params.weight_decay.loguniform"),
    "negative lr": ("trials: 2\nparams:\n  lr: {choice: [0.001, -0.1]}\n", "params.lr.choice"),
    "uniform on an integer": ("trials: 2\nparams:\n  crop_px: {uniform: [0, 8]}\n", "params.crop_px"),
    "unknown distribution": ("trials: 2\nparams:\n  lr: {normal: [0.001, 0.1]}\n", "params.lr"),
    "grid with choice": ("method: grid\nparams:\n  lr: {choice: [0.001, 0.01]}\n", "params.lr"),
    "bad method": ("method: bayes\ntrials: 2\nparams:\n  lr: {choice: [0.001]}\n", "method"),
    "bare list": ("trials: 2\nparams:\n  lr: [0.001, 0.01]\n", "params.lr"),
    "freeze beyond epochs": ("trials: 2\nparams:\n  freeze_epochs: {choice: [0, 9]}\n", "params.freeze_epochs"),
    "aug_strength and crop_px": ("trials: 2\nparams:\n  aug_strength: {uniform: [0.0, 2.0]}\n  crop_px: 2\n", "params.aug_strength"),
    "no trials": ("params:\n  lr: {choice: [0.001, 0.01]}\n", "trials"),
    "not a mapping": ("- lr\n", "mapping"),
    "chips_per_step vs mosaic": ("trials: 2\nparams:\n  chips_per_step: {choice: [36, 20]}\n", "params.chips_per_step"),
    "freeze without --init": ("trials: 2\nparams:\n  freeze_epochs: {choice: [0, 2]}\n", "needs --init"),
    "unknown encoder": ("trials: 2\nparams:\n  encoder: {choice: [tu-mobilenetv4_conv_small, no-such-net]}\n", "no-such-net"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_space_is_one_line_exit_3_and_nothing_written(case: str, chips_dir: Path,
                                                          tmp_path: Path) -> None:
    text, key = BAD[case]
    space = tmp_path / "space.yaml"
    space.write_text(text)
    out = tmp_path / "best.safetensors"
    r = invoke("train", "classifier", "--data", chips_dir, "-o", out, "--search", space,
               "--epochs", "3", "--device", "cpu")
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert key in r.output and str(space) in r.output.replace("\n", ""), r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


def test_trials_without_search_and_grid_with_other_trial_count(chips_dir: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "best.safetensors"
    r = invoke("train", "classifier", "--data", chips_dir, "-o", out, "--trials", "3")
    assert r.exit_code == 3 and "--trials needs --search" in r.output, r.output
    space = tmp_path / "grid.yaml"
    space.write_text("method: grid\nparams:\n  lr: {grid: [0.001, 0.003]}\n"
                     "  crop_px: {grid: [0, 2, 4]}\n")
    assert load_space(space).grid_size() == 6
    r = invoke("train", "classifier", "--data", chips_dir, "-o", out, "--search", space,
               "--trials", "4")
    assert r.exit_code == 3 and "6 trials" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]


def test_space_values_are_checked_and_normalised(tmp_path: Path) -> None:
    space = tmp_path / "s.yaml"
    space.write_text("trials: 4\nparams:\n  lr: {loguniform: ['1e-4', 1.0e-2]}\n"
                     "  encoder: {choice: [tu-mobilenetv4_conv_small]}\n  weight_decay: 0.1\n")
    s = load_space(space, trials=7)
    assert s.trials == 7  # --trials wins over trials:
    assert s.params["lr"] == {"loguniform": [1e-4, 1e-2]}  # YAML's string '1e-4' -> float
    assert s.fixed() == {"weight_decay": 0.1} and set(s.searched()) == {"lr", "encoder"}
    assert "seed" not in SEARCH_KEYS and "threads" not in SEARCH_KEYS
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "missing.yaml")


def test_trial_config_scales_augmentation_and_splits_off_the_freeze_schedule() -> None:
    base = TrainConfig(lr=2e-3, crop_px=4, gain_sigma=0.02, global_gain_sigma=0.05,
                       offset_sigma=0.001)
    cfg, freeze = trial_config(vars(base), {"aug_strength": 0.5, "lr": 1e-3, "freeze_epochs": 3})
    assert (cfg.crop_px, cfg.gain_sigma, cfg.global_gain_sigma) == (2, 0.01, 0.025)
    assert cfg.offset_sigma == pytest.approx(0.0005) and cfg.lr == 1e-3 and freeze == 3
    cfg0, freeze0 = trial_config(vars(base), {"aug_strength": 0.0})
    assert (cfg0.crop_px, cfg0.gain_sigma, freeze0) == (0, 0.0, 0)


def test_defaults_point_is_the_hand_set_config(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("trials: 3\nparams:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
                 "  aug_strength: {uniform: [0.0, 2.0]}\n  freeze_epochs: {choice: [0, 2]}\n")
    base = vars(TrainConfig(lr=5e-3))
    point = default_point(load_space(p), base)
    assert point == {"lr": 5e-3, "aug_strength": 1.0, "freeze_epochs": 0}
    cfg, freeze = trial_config(base, point)
    assert cfg == TrainConfig(lr=5e-3) and freeze == 0


def test_grid_points_run_every_combination_with_the_defaults_first_once(tmp_path: Path) -> None:
    p = tmp_path / "g.yaml"
    p.write_text("method: grid\nparams:\n  lr: {grid: [0.001, 0.002]}\n"
                 "  freeze_epochs: {grid: [0, 2, 4]}\n")
    space = load_space(p)
    assert len(grid_points(space, None)) == 6
    inside = default_point(space, vars(TrainConfig(lr=0.002)))  # lr 0.002, freeze 0: in the grid
    pts = grid_points(space, inside)
    assert pts[0] == inside and len(pts) == 6 and pts.count(inside) == 1
    outside = default_point(space, vars(TrainConfig(lr=0.005)))
    assert grid_points(space, outside)[0] == outside and len(grid_points(space, outside)) == 7


# --- a real (tiny) search ----------------------------------------------------------------------


def _ray_children() -> list[str]:
    import psutil

    names = []
    for c in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(c.cmdline())
        except psutil.Error:
            continue
        if re.search(r"raylet|gcs_server|ray::|default_worker|dashboard|log_monitor", cmd):
            names.append(cmd[:80])
    return names


@pytest.fixture(scope="module")
def init_bundle(chips_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch bundle on the same chips, for --init (the freeze schedule needs one)."""
    from geofg.models.training.train import train_bundle

    out = tmp_path_factory.mktemp("init") / "init.safetensors"
    train_bundle(chips_dir, out, TrainConfig(epochs=1, threads=1, device="cpu"))
    return out


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_tiny_search_writes_the_argmax_trial_and_a_table_of_every_trial(
        chips_dir: Path, init_bundle: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    import secrets

    from geofg.models.inference.bundle import read_card

    if ray.is_initialized():
        pytest.skip("another test left a Ray connection open")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))  # nothing written to ~/.ray
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE"):  # ray.init sets RAY_AUTH_MODE itself
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    space = tmp_path / "space.yaml"
    space.write_text("method: grid\ninclude_defaults: false\nmax_concurrent: 2\nnum_cpus: 2\n"
                     "params:\n  lr: {grid: [1.0e-5, 5.0e-3]}\n  weight_decay: 0.1\n"
                     "  freeze_epochs: 1\n")
    out = tmp_path / "best.safetensors"
    # Ray caches the auth token per process: reset it around this Ray (other modules' tokens)
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()
    try:
        r = invoke("train", "classifier", "--data", chips_dir, "-o", out, "--search", space,
                   "--init", init_bundle, "--epochs", "2", "--eval-every", "1", "--device", "cpu")
    finally:
        reset_auth_token_state()
    assert r.exit_code == 0, r.output
    assert _ray_children() == []  # geofg's Ray was shut down
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.safetensors", "best.search.json", "best.search.md", "space.yaml"]  # no staging

    report = json.loads((tmp_path / "best.search.json").read_text())
    trials = report["trials"]
    assert [t["status"] for t in trials] == ["done", "done"]
    assert sorted(t["params"]["lr"] for t in trials) == [1e-5, 5e-3]
    # the selection rule: highest val accuracy, then macro-F1, then the lower trial number
    want = max(trials, key=lambda t: (t["val_accuracy"], t["val_macro_f1"], -t["index"]))
    assert report["best"]["index"] == want["index"]
    card = read_card(out)
    assert card.metrics["val_accuracy"] == want["val_accuracy"]
    assert card.training["config"]["lr"] == want["params"]["lr"]
    assert card.training["config"]["weight_decay"] == 0.1  # the fixed value reached the trial
    assert card.training["search"]["best_trial"] == want["index"]
    assert card.name == "best" and "test_accuracy" not in card.metrics
    # the freeze schedule: 1 epoch with the --init encoder frozen, then 1 with all trainable
    phases = [{"epochs": 1, "encoder_frozen": True}, {"epochs": 1, "encoder_frozen": False}]
    assert card.training["search"]["phases"] == phases
    assert card.training["init"] == str(init_bundle) and card.training["freeze_encoder"] is False
    for t in trials:
        assert t["phases"] == phases and t["epochs_run"] == 2 and t["seconds"] > 0
        assert [e for e, _ in t["val_history"]] == [1, 2]  # val reported for every epoch
    # every trial in the Markdown table and in the printed table
    md = (tmp_path / "best.search.md").read_text()
    rows = [ln for ln in md.splitlines() if re.match(r"\| \d", ln)]
    assert len(rows) == 2 and "1e-05" in md and "0.005" in md
    assert sum("best" in ln for ln in rows) == 1
    assert "1e-05" in r.output and "0.005" in r.output and "wrote" in r.output

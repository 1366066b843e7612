"""`geofg scan` through the CLI: exit codes 0 / 3 (naming the key) / 4 / 6, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from rasterio.transform import from_origin
from scanhelp import BANDS, ORIGIN, config, threshold_bundle
from typer.testing import CliRunner

from geofg.cli import app
from geofg.io.lock import RunLock
from geofg.scan.config import ScanConfig
from rasters import write_raster

runner = CliRunner()


@pytest.fixture(scope="module")
def unet_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-band smp U-Net with random weights: exercises the real torch predictor path."""
    import torch

    from geofg.models.inference.bundle import write_bundle
    from geofg.models.inference.nets import build_model
    from geofg.models.inference.tiny import tiny_card

    card = tiny_card(BANDS, ["water", "crop"], task="segmentation", crop_classes=["crop"], tile_size=64,
                     halo=16, scale=1e-4, tile_multiple=32)
    card = card.model_copy(update={"architecture": "unet", "encoder": "resnet18", "name": "test-unet"})
    torch.manual_seed(0)
    net = build_model(card)
    path = tmp_path_factory.mktemp("bundle") / "unet.safetensors"
    write_bundle(path, {k: v.numpy() for k, v in net.state_dict().items()}, card)
    return path


def _write_cfg(tmp: Path, cfg: dict) -> Path:
    p = tmp / "scan.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_scan_runs_then_has_nothing_new_then_is_locked(tmp_path: Path, unet_bundle: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    data = np.random.default_rng(0).integers(1, 3000, (2, 64, 64)).astype("uint16")
    write_raster(inbox / "S_20200601.tif", data, nodata=0, descriptions=BANDS,
                 transform=from_origin(*ORIGIN, 10.0, 10.0))
    cfg = _write_cfg(tmp_path, config(tmp_path, unet_bundle, height=64, width=64, chunk=32))
    r = invoke("scan", str(cfg))
    assert r.exit_code == 0, r.output
    assert "1 processed" in r.output and "4 ran" in r.output and "2020-06-01" in r.output
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")
    assert g["class"].shape == (1, 64, 64) and g["class"][0].max() <= 1
    reports = sorted((tmp_path / "m.zarr.reports").glob("*.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["units"]["ran"] == 4

    r = invoke("scan", str(cfg))
    assert r.exit_code == 0 and "0 processed, 1 skipped" in r.output and "dates written: none" in r.output
    r = invoke("info", str(tmp_path / "m.zarr"))
    assert r.exit_code == 0 and "time: 1 dates" in r.output and "4/4 done" in r.output

    with RunLock(tmp_path / "m.zarr" / ".geofg" / "lock", "other-scan"):
        r = invoke("scan", str(cfg))
    assert r.exit_code == 6 and "other-scan" in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"inbox": {"folder": "IN", "colour": "red"}}, "inbox.colour"),
        ({"grdi": {}}, "grdi"),
        ({"grid": {"crs": "EPSG:32633", "resolution": 10, "origin": [0, 0], "extent": [500003, 0, 500640, 640]}},
         "extent left"),
        ({"grid": {"crs": "EPSG:32633", "resolution": 10, "origin": [0, 0], "extent": [10, 0, 0, 640]}},
         "left < right"),
        ({"grid": {"crs": "EPSG:4326", "resolution": 0.1, "origin": [0, 0], "extent": [0, 0, 1, 1]}}, "grid.crs"),
        ({"tile": {"chunk": 64}}, "grid.chunk"),
        ({"runner": {"kind": "dask"}}, "runner.kind"),
    ],
)
def test_bad_config_exits_3_naming_the_key_and_writes_nothing(tmp_path: Path, change: dict, key: str) -> None:
    model = threshold_bundle(tmp_path)
    (tmp_path / "inbox").mkdir()
    cfg = config(tmp_path, model)
    if "inbox" in change:
        change = {"inbox": {**change["inbox"], "folder": str(tmp_path / "inbox")}}
    cfg.update(change)
    r = invoke("scan", str(_write_cfg(tmp_path, cfg)))
    assert r.exit_code == 3, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "scan.yaml" in lines[0], r.stderr
    assert not (tmp_path / "m.zarr").exists()


def test_missing_inbox_exits_3_and_schema_is_printable(tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    r = invoke("scan", str(_write_cfg(tmp_path, config(tmp_path, model))))
    assert r.exit_code == 3 and "inbox.folder" in r.stderr and not (tmp_path / "m.zarr").exists()
    r = invoke("scan", "--print-schema")
    assert r.exit_code == 0 and json.loads(r.output) == ScanConfig.model_json_schema()


def test_runner_flag_overrides_the_config_and_is_validated(tmp_path: Path) -> None:
    from geofg.scan.config import build_scan, with_runner

    model = threshold_bundle(tmp_path)
    (tmp_path / "inbox").mkdir()
    path = _write_cfg(tmp_path, config(tmp_path, model))
    r = invoke("scan", str(path), "--runner", "dask")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 3 and len(lines) == 1 and "runner.kind" in lines[0] and "--runner" in lines[0], r.stderr
    assert not (tmp_path / "m.zarr").exists()
    cfg = build_scan(config(tmp_path, model))
    ray_cfg = with_runner(cfg, "ray")
    assert ray_cfg.runner.kind == "ray" and ray_cfg.runner.read_workers == cfg.runner.read_workers == 1
    assert ray_cfg.model_copy(update={"runner": cfg.runner}) == cfg  # nothing else changed

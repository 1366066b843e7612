"""JobConfig / ScanConfig: every setting that changes output pixels changes a unit's identity.

A unit is resumed only when its ledger record matches the run's model sha256 and config hash
(geofg.io.ledger.Ledger.is_current), so a setting missing from both would resume a mosaic made with
another value of it (issue 17: tile_size, halo, blend and chunk could be dropped from the hash
unnoticed). Each case below changes one setting from a baseline and plans the job (no write).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from geofg.config import build_job
from geofg.pipeline import plan
from rasters import write_raster, write_threshold_bundle

BANDS = ["B02", "B03", "B04", "B08"]  # Sentinel-2 names: the cloud mask applies in mode auto


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("hash")
    data = np.random.default_rng(0).integers(1, 3000, (4, 96, 96)).astype("uint16")
    return {
        "input": str(write_raster(d / "in.tif", data, descriptions=BANDS)),
        "model": str(write_threshold_bundle(d, BANDS)),
        "other": str(write_threshold_bundle(d, BANDS, mean=[0.2] * 4, name="other")),
        "out": str(d / "out.zarr"),
    }


def _base(f: dict[str, str]) -> dict:
    return {
        "read": {"inputs": [f["input"]]},
        "tile": {"chunk": 32},
        "model": {"model": f["model"], "device": "cpu"},
        "write": {"output": f["out"]},
    }


def _identity(data: dict) -> tuple[str, str]:
    p = plan(build_job(data))
    return p.model_sha256, p.config_hash


#: (section, key, value) -> the output changes, so the unit identity must. task and
#: read.assume_crs cannot vary on this input (a classifier bundle; a raster with a CRS):
#: test_hash_fields checks them on output_hash itself.
CHANGES = [
    ("read", "bands", ["B02", "B03", "B04", "B08"][::-1]),
    ("tile", "chunk", 48),
    ("tile", "tile_size", 32),
    ("tile", "halo", 8),
    ("tile", "blend", "centre"),
    ("model", "model", "other"),
    ("model", "ensemble", ["other"]),
    ("model", "tta", True),
    ("model", "compile", True),
    ("mask", "mode", "off"),
]
#: settings that only change where, how fast or whether a run happens: same identity (else every
#: resume would redo all units).
SAME = [
    ("tile", "batch_size", 4),
    ("model", "device", "auto"),
    ("read", "max_pixels", 10**9),
    ("read", "max_compression_ratio", 100.0),
    ("runner", "read_workers", 3),
    ("runner", "compute_streams", 2),
    ("runner", "max_attempts", 5),
    ("write", "quicklook", False),
    ("write", "mode", "overwrite"),
]


def _changed(f: dict[str, str], section: str, key: str, value: object) -> dict:
    data = copy.deepcopy(_base(f))
    value = f.get(value, value) if isinstance(value, str) else value
    if isinstance(value, list):
        value = [f.get(v, v) for v in value]
    data.setdefault(section, {})[key] = value
    return data


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("section", "key", "value"), CHANGES, ids=[f"{s}.{k}" for s, k, _ in CHANGES])
def test_each_output_setting_changes_the_unit_identity(
    files: dict[str, str], section: str, key: str, value: object
) -> None:
    assert _identity(_changed(files, section, key, value)) != _identity(_base(files))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("section", "key", "value"), SAME, ids=[f"{s}.{k}" for s, k, _ in SAME])
def test_settings_that_keep_outputs_keep_the_identity(
    files: dict[str, str], section: str, key: str, value: object
) -> None:
    assert _identity(_changed(files, section, key, value)) == _identity(_base(files))


@pytest.mark.parametrize(
    "change",
    [{"task": "segment"}, {"read": {"assume_crs": "EPSG:32632"}}, {"read": {"bands": ["x", "y"]}},
     {"tile": {"chunk": 64}}, {"tile": {"blend": "centre"}}, {"model": {"compile": True}}],
)
def test_hash_fields(change: dict) -> None:
    """The fields plan() cannot vary on this input (task, assume_crs) straight on output_hash."""
    base = {"read": {"inputs": ["a.tif"]}, "write": {"output": "o.zarr"}}
    data = copy.deepcopy(base)
    for k, v in change.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    assert build_job(data).output_hash(64, 8) != build_job(base).output_hash(64, 8)
    job = build_job(base)
    assert job.output_hash(64, 8) != job.output_hash(96, 8) != job.output_hash(96, 16)
    assert job.output_hash(64, 8) != job.output_hash(64, 8, {"detector": "x"})


def test_eager_hash_is_unchanged_by_the_compile_field() -> None:
    """Mosaics made before compile entered the hash keep resuming (eager runs' hash is the old one)."""
    import hashlib
    import json

    job = build_job({"read": {"inputs": ["a.tif"]}, "write": {"output": "o.zarr"}})
    old = {"task": "classify", "bands": None, "assume_crs": None, "chunk": 1024, "tile_size": 1152,
           "halo": 64, "blend": "cosine"}
    assert job.output_hash(1152, 64) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]


def test_scan_hash_has_compile_and_refuses_what_scans_do_not_run() -> None:
    from geofg.errors import ConfigError
    from geofg.scan.config import build_scan

    base = {"inbox": {"folder": "in"}, "mosaic": "m.zarr",
            "grid": {"crs": "EPSG:32633", "resolution": 10, "origin": [500000, 5800000],
                     "extent": [500000, 5799000, 501000, 5800000], "chunk": 32}}
    cfg = build_scan(base)
    for change in ({"model": {"compile": True}}, {"tile": {"blend": "centre"}},
                   {"inbox": {"folder": "in", "bands": ["B04"]}},
                   {"grid": {**base["grid"], "resampling": "nearest"}}):
        assert build_scan({**base, **change}).output_hash(64, 8) != cfg.output_hash(64, 8)
    assert cfg.output_hash(64, 8) != cfg.output_hash(96, 8) != cfg.output_hash(96, 16)
    for change in ({"tta": True}, {"ensemble": ["x"]}):
        with pytest.raises(ConfigError, match=f"model.{next(iter(change))}"):
            build_scan({**base, "model": change})

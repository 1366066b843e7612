"""Ray actors read an S3 input themselves (their own AWS environment) and write the local mosaic."""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from catalog import write_band_cogs
from rasters import write_threshold_bundle

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")

from geofg.config import build_job  # noqa: E402
from geofg.models.inference.tiny import ThresholdPredictor  # noqa: E402
from geofg.run import run_job  # noqa: E402
from test_s3_inputs import assert_same_mosaic  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


TOKEN = secrets.token_hex(32)  # one token for this module's Ray runtimes; no ~/.ray/auth_token


@pytest.mark.parametrize("mosaic_on", ["disk", "s3"])
def test_ray_actors_read_s3_and_equal_local(s3, tmp_path: Path, data_root: Path, mosaic_on: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Actors read the S3 input; the mosaic on disk, or on S3 too (no path shared by the actors)."""
    folder = tmp_path / "bands"
    cogs = write_band_cogs(data_root, folder, bands=["B04", "B08"])
    url = s3.put("scene/B04.tif", cogs["B04"])  # one single-band COG, read by 2 actors
    bundle = write_threshold_bundle(tmp_path, ["B04"])
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # a token of its own, as the other Ray tests (none: Ray would read ~/.ray/auth_token); Ray caches
    # the token per process, so the cache is reset on the way in and out (scan/test_scan_ray.py)
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    # started after the s3 fixture set AWS_*: the actors inherit them, as nodes with credentials do
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             _temp_dir=(temp := tempfile.mkdtemp(prefix="r", dir="/tmp")))  # socket paths < 107 bytes
    try:
        outs = {}
        out = {"ray": s3.url("ray.zarr") if mosaic_on == "s3" else str(tmp_path / "ray.zarr"),
               "local": str(tmp_path / "local.zarr")}
        for kind, src in (("ray", url), ("local", str(cogs["B04"]))):
            job = build_job({"read": {"inputs": [src]}, "tile": {"chunk": 64}, "mask": {"mode": "off"},
                             "model": {"model": str(bundle), "device": "cpu"},
                             "write": {"output": out[kind], "quicklook": False},
                             "runner": {"kind": kind, **({"num_actors": 2} if kind == "ray" else {})}})  # fmt: skip
            outs[kind] = run_job(job, predictor_factory=lambda p: ThresholdPredictor(p.card))
    finally:
        ray.shutdown()
        reset_auth_token_state()
        shutil.rmtree(temp, ignore_errors=True)
    assert len(outs["ray"].ran) == 16 and not outs["ray"].failed
    if mosaic_on == "s3":
        from geofg.io.objledger import ObjectLedger
        from geofg.io.objstore import ObjectPrefix
        from geofg.io.store import zarr_store

        assert len(ObjectLedger(ObjectPrefix(s3.name, "ray.zarr")).load()) == 16
        got = zarr.open_group(zarr_store(out["ray"], read_only=True), mode="r")
        want = zarr.open_group(out["local"], mode="r")
        for name in ("class", "health", "confidence"):
            np.testing.assert_array_equal(got[name][:], want[name][:], err_msg=name)
        return
    assert_same_mosaic(tmp_path / "ray.zarr", tmp_path / "local.zarr")

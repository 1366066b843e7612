"""Checks on a Ray cluster before geofg trusts it; no ray import (usable by geofg.submit too).

* :func:`probe` fails fast on an unreachable ``host:port``: ``ray.init`` itself retries an
  unreachable GCS for minutes.
* :func:`check_cluster_auth` sends one *unauthenticated* ``GET /api/jobs/`` to the cluster's
  dashboard: 200 means token authentication is off and anyone who can reach the cluster can run
  code on it (../shared/RELIABILITY.md R10), so geofg stops with exit 5 unless told otherwise.
* :func:`ensure_token_file` writes a Ray token readable only by its owner; Ray's own ``ray.init``
  writes ``~/.ray/auth_token`` with mode 0644.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import urllib.error
import urllib.request
from pathlib import Path

from geofg.errors import ClusterError, InsecureClusterError

__all__ = ["PROBE_TIMEOUT_S", "check_cluster_auth", "ensure_token_file", "probe"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0


def ensure_token_file(path: Path) -> bool:
    """Create a Ray auth token at ``path`` with mode 0600 unless one exists; True if created.

    Ray's own ``ray.init`` writes ``~/.ray/auth_token`` world-readable (0644, RELIABILITY.md
    fact 14); writing it first, 0600, keeps the token to its owner. An existing token readable by
    others is left alone with a warning (it may be shared on purpose).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users; chmod 600 it (it lets anyone who reads it "
                        "run code on your Ray clusters)", path)
        return False
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return True


def check_cluster_auth(dashboard_url: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse a cluster whose dashboard answers an unauthenticated ``GET /api/jobs/`` with 200.

    Raises:
        InsecureClusterError: token authentication is off (HTTP 200), or it cannot be checked (no
            dashboard, unreachable, or an unexpected answer). Exit 5.
    """
    fix = "or pass --allow-insecure-cluster (allow_insecure_cluster: true) if you accept the risk"
    if not dashboard_url:
        raise InsecureClusterError(
            "cannot check the Ray cluster's token authentication: it reports no dashboard; "
            f"run the head with its dashboard (cluster/README.md) {fix}"
        )
    base = dashboard_url if "://" in dashboard_url else f"http://{dashboard_url}"
    url = base.rstrip("/") + "/api/jobs/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(urllib.request.Request(url), timeout=timeout_s) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise InsecureClusterError(
            f"cannot check the Ray cluster's token authentication: {url} unreachable ({reason}); "
            f"let the driver reach the dashboard {fix}"
        ) from None
    if status in (401, 403):
        return
    if status == 200:
        raise InsecureClusterError(
            f"the Ray cluster at {base} answered an unauthenticated request to /api/jobs/ (HTTP "
            "200): token authentication is off and anyone who can reach it can run code; restart "
            f"it with RAY_AUTH_MODE=token (cluster/README.md) {fix}"
        )
    raise InsecureClusterError(
        f"cannot check the Ray cluster's token authentication: {url} answered HTTP {status}, "
        f"expected 401 (token auth on) {fix}"
    )


def probe(address: str) -> None:
    """Fail fast on an unreachable ``host:port`` (``ray.init`` itself retries for minutes)."""
    scheme, _, rest = address.rpartition("://")
    if scheme in ("http", "https"):
        raise ClusterError(
            f"--ray-address {address} looks like a dashboard (Jobs API) URL; give the cluster "
            "address host:6379, ray://host:10001 or auto (use the dashboard URL with geofg submit)"
        )
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except ValueError:
        raise ClusterError(f"--ray-address {address}: expected host:port, found port {port!r}") from None
    except OSError as e:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({e.strerror or e}); check --ray-address "
            "or RAY_ADDRESS and that the head node is up"
        ) from None

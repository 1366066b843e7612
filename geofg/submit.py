"""Submit a geofg job to a Ray cluster's Jobs API; exit with the job driver's real exit code.

``ray job submit`` turns every failing entrypoint into exit 1, ``--no-wait`` exits 0 even when the
job then fails, and ``ray job status`` exits 0 for a FAILED job; the driver's own exit code is only
in ``JobInfo.driver_exit_code`` (../shared/RELIABILITY.md R9). :func:`submit` uses it, so a
scheduler sees geofg's exit codes (0 done, 3 rejected, 4 failed units, 5 cluster, 6 locked).

The submission id is deterministic: ``geofg-<task>-<16 hex>`` from the job's configuration and
its inputs' stamps (resolved path, size, mtime where the submitting machine can see the input;
the path alone where it cannot). The Jobs API refuses a second job with the same id, so a
scheduler firing twice runs the job once: the second submit reports "already submitted" and exits
0. New or changed inputs give a new id. Give ``submission_id`` explicitly for other schemes (e.g.
``geofg-nightly-<date>-<region>``).

This module does not import ray; the client comes from :func:`geofg.runners.ray.jobs_client`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geofg.config import JobConfig
from geofg.errors import ClusterError
from geofg.extras import require_extra

log = logging.getLogger(__name__)

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
NOT_STARTED_EXIT = 5  # the job ended without a driver exit code: it never ran (or was stopped)


@dataclass(frozen=True)
class Submitted:
    """The outcome of one submit: the job's id, final status and the exit code to pass on."""

    submission_id: str
    status: str
    exit_code: int
    already: bool = False
    message: str = ""
    logs: str = ""


def _stamp(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError:
        return [path]
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def submission_id_for(job: JobConfig) -> str:
    """Return ``geofg-<task>-<hash>`` of the job's config (runner settings aside) and inputs.

    Examples:
        >>> from geofg.config import build_job
        >>> j = build_job({"read": {"inputs": ["/no/such.tif"]}, "write": {"output": "/o.zarr"}})
        >>> submission_id_for(j) == submission_id_for(j), submission_id_for(j)[:15]
        (True, 'geofg-classify-')
    """
    key = {
        "job": job.model_dump(mode="json", exclude={"runner"}),
        "inputs": [_stamp(p) for p in job.read.inputs],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"geofg-{job.task}-{digest}"


def classify_entrypoint(args: list[str], python: str = "python") -> str:
    """Return the shell command a job runs: ``geofg classify ARGS --runner ray`` on the cluster."""
    extra = [] if any(a == "--runner" or a.startswith("--runner=") for a in args) else ["--runner", "ray"]
    return shlex.join([python, "-m", "geofg.cli", "classify", *args, *extra])


def exit_code_of(status: str, driver_exit_code: int | None) -> int:
    """Map a finished job to the exit code to pass on: the driver's own when it ran.

    Examples:
        >>> exit_code_of("FAILED", 4), exit_code_of("SUCCEEDED", None), exit_code_of("FAILED", None)
        (4, 0, 5)
    """
    if driver_exit_code is not None:
        return int(driver_exit_code)
    return 0 if status == "SUCCEEDED" else NOT_STARTED_EXIT


def submit(
    job: JobConfig,
    entrypoint: str,
    *,
    address: str | None = None,
    submission_id: str | None = None,
    wait: bool = True,
    runtime_env: dict[str, Any] | None = None,
    allow_insecure_cluster: bool = False,
    poll_s: float = 2.0,
    client: Any = None,
) -> Submitted:
    """Submit ``entrypoint`` for ``job`` and (by default) wait for it to finish.

    Args:
        job: the job the entrypoint runs (its config and inputs give the submission id).
        entrypoint: the shell command (see :func:`classify_entrypoint`).
        address: the cluster's dashboard URL; None uses ``RAY_API_SERVER_ADDRESS``/``RAY_ADDRESS``.
        submission_id: overrides the derived id.
        wait: poll until the job ends; with False, return once it is accepted (exit code 0).
        runtime_env: the job's runtime_env (e.g. cluster/runtime_env.yaml, loaded).
        allow_insecure_cluster: submit even if the Jobs API answers unauthenticated requests.
        poll_s: seconds between status polls.
        client: a JobSubmissionClient-like object (tests); None connects to ``address``.

    Raises:
        ClusterError: unreachable cluster or a refused submission (exit 5).
        InsecureClusterError: the cluster has token authentication off (exit 5).
    """
    from geofg.runners.cluster import check_cluster_auth

    if client is None:
        require_extra("ray", "geofg submit")
    from geofg.runners.ray import jobs_client

    sid = submission_id or submission_id_for(job)
    client = client or jobs_client(address)
    if not allow_insecure_cluster:
        check_cluster_auth(client.get_address())
    try:
        client.submit_job(entrypoint=entrypoint, submission_id=sid, runtime_env=runtime_env,
                          metadata={"geofg:task": job.task, "geofg:output": job.write.output})
    except RuntimeError as e:
        if "already exists" not in str(e):
            raise ClusterError(f"the Ray cluster refused job {sid}: {str(e).splitlines()[0]}") from None
        status = str(client.get_job_status(sid))
        log.info("job %s already submitted (%s); not submitting it again", sid, status)
        return Submitted(sid, status, 0, already=True, message=f"already submitted ({status})")
    if not wait:
        return Submitted(sid, "PENDING", 0, message="submitted; not waiting")
    status = ""
    while status not in TERMINAL:
        time.sleep(poll_s)
        status = str(client.get_job_status(sid))
    info = client.get_job_info(sid)
    code = exit_code_of(status, info.driver_exit_code)
    try:
        logs = client.get_job_logs(sid)
    except Exception as e:  # noqa: BLE001 (logs are a courtesy; the exit code is what matters)
        logs = f"(job logs unavailable: {e})"
    return Submitted(sid, status, code, message=info.message or "", logs=logs)

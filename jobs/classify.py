"""Ray job entrypoint: ``geofg classify`` on the cluster the job runs in (``--runner ray``).

    ray job submit --address http://HEAD:8265 --submission-id geofg-nightly-2026-11-26-north \\
        --runtime-env cluster/runtime_env.yaml -- \\
        python jobs/classify.py /data/scenes/north.tif -o /data/mosaics/north.zarr --chunk 1024

Same options as ``geofg classify`` (``python jobs/classify.py --help``). Inside a Ray job,
``RAY_ADDRESS`` names the job's cluster, so the run joins it; ``--runner ray`` is added unless
given. The process exits with geofg's exit code (0 done, 3 rejected, 4 failed units, 5 cluster,
6 locked, 7 disk full or read-only, 8 SIGTERM/SIGINT; docs/reliability.md). ``ray job submit`` reports any failure as 1; ``geofg submit`` (or
``JobSubmissionClient.get_job_info(id).driver_exit_code``) gives the real code.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Run ``geofg classify ARGV --runner ray`` and exit with its code."""
    from geofg.cli import app

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args += ["--runner", "ray"]
    app(["classify", *args], prog_name="jobs/classify.py")


if __name__ == "__main__":
    main()

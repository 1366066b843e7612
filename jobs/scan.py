"""Ray job entrypoint: ``geofg scan SCAN.yaml`` inside a Ray job (the nightly CronJob's payload).

    ray job submit --address http://HEAD:8265 --submission-id geofg-scan-2026-11-26-north \\
        --runtime-env cluster/runtime_env.yaml -- python jobs/scan.py /data/scan/north.yaml

Same arguments as ``geofg scan`` (``python jobs/scan.py --help``). With ``runner: {kind: ray}``
in the config (or ``--runner ray``) each date's units run on Ray actors of the job's cluster
(``RAY_ADDRESS`` names it inside a job; one actor per GPU, or per CPU without GPUs) and the driver
only plans, records and reports: submit it without entrypoint GPUs (a GPU held by the driver is one
no actor can use). With the local runner the scan runs in the job's driver, which then needs the
model's device: give the entrypoint the resources, e.g. ``--entrypoint-num-gpus 1``. The process
exits with geofg's exit code (0 done or nothing new, 3 rejected, 4 failed scenes or units,
6 mosaic locked by another scan, 7 disk full or read-only, 8 SIGTERM/SIGINT); ``ray job submit`` reports any failure as 1, and the driver's
own code is ``JobSubmissionClient.get_job_info(id).driver_exit_code``. The run report lands beside
the mosaic (``<mosaic>.reports/``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Run ``geofg scan ARGV`` and exit with its code."""
    from geofg.cli import app

    args = list(sys.argv[1:] if argv is None else argv)
    app(["scan", *args], prog_name="jobs/scan.py")


if __name__ == "__main__":
    main()

"""cluster/: every manifest parses, has what its tool needs, and agrees with jobs/, the Ray pin and
the GDAL settings geofg reads under (no Ray, no cluster, no network needed)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest
import typer.main
import yaml

from geofg.cli import app
from geofg.io.read import GDAL_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"


def _load(path: Path) -> dict:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1 and isinstance(docs[0], dict), path
    return docs[0]


def _ray_pin() -> str:
    """The Ray minor version pyproject pins for the `ray` extra, e.g. '2.60'."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (req,) = extras["ray"]
    assert req in extras["test"]  # CI installs .[test] and runs the Ray tests
    m = re.fullmatch(r"ray\[default\]>=(\d+\.\d+),<\d+\.\d+", req)
    assert m, req
    return m.group(1)


def _images() -> dict[str, set[str]]:
    """Every container image named in cluster/, by file."""
    found: dict[str, set[str]] = {}

    def walk(node: object, into: set[str]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "image" and isinstance(v, str):
                    into.add(v)
                walk(v, into)
        elif isinstance(node, list):
            for v in node:
                walk(v, into)

    for path in [CLUSTER / "ray-cluster.yaml", *sorted(KUBERAY.glob("*.yaml"))]:  # scan/*.yaml: no image
        walk(_load(path), found.setdefault(path.name, set()))
    return found


def _image() -> str:
    (image,) = set().union(*_images().values())
    return image


def _classify_params(argv: list[str]) -> dict:
    """Parse ``argv`` exactly as `geofg classify` (and jobs/classify.py) would; UsageError if not."""
    cmd = typer.main.get_command(app).get_command(click.Context(click.Command("geofg")), "classify")
    return cmd.make_context("classify", list(argv)).params


def test_every_yaml_parses_and_names_one_image_everywhere() -> None:
    images = _images()
    assert set(images) == {"ray-cluster.yaml", "raycluster.yaml", "rayjob.yaml", "nightly-cronjob.yaml"}
    assert all(images.values()), images  # each file names the image
    image = _image()
    pin = _ray_pin()
    assert f"ray{pin}." in image and "py311" in image
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(pin)}\.\d+-py311-gpu$", dockerfile, re.M)
    assert image in dockerfile  # the build command in the Dockerfile tags this image
    assert "COPY --chown=ray:users jobs ./jobs" in dockerfile and "WORKDIR /app" in dockerfile


def test_runtime_env_sets_geofgs_gdal_options() -> None:
    env = _load(CLUSTER / "runtime_env.yaml")["env_vars"]
    assert {k: env[k] for k in GDAL_OPTIONS} == GDAL_OPTIONS
    assert all(isinstance(v, str) for v in env.values())  # Ray needs strings
    assert "RAY_AUTH_MODE" not in env  # cannot be set per job; documented in README instead
    job_env = yaml.safe_load(_load(KUBERAY / "rayjob.yaml")["spec"]["runtimeEnvYAML"])["env_vars"]
    assert job_env == env


def test_cluster_launcher_has_gpu_workers_token_auth_and_private_dashboard() -> None:
    cfg = _load(CLUSTER / "ray-cluster.yaml")
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type",
                "head_start_ray_commands", "worker_start_ray_commands", "docker"):
        assert key in cfg, key
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t["max_workers"] >= t["min_workers"] >= 1 for t in gpu)
    head = " ".join(cfg["head_start_ray_commands"])
    workers = " ".join(cfg["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token ray start --address=" in workers
    assert "0.0.0.0" not in head
    assert any("auth_token" in dst for dst in cfg["file_mounts"])
    assert any("chmod 600" in c for c in cfg["setup_commands"])


def test_raycluster_uses_token_auth_gpu_workers_and_the_pinned_ray() -> None:
    rc = _load(KUBERAY / "raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    spec = rc["spec"]
    assert spec["rayVersion"].startswith(_ray_pin() + ".")
    assert spec["authOptions"]["mode"] == "token" and spec["authOptions"]["secretName"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265}
    groups = spec["workerGroupSpecs"]
    gpus = [g for g in groups
            if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu") == "1"]
    assert gpus and all(g["maxReplicas"] >= g["replicas"] >= g["minReplicas"] >= 1 for g in gpus)
    for pod in [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in groups)]:
        assert {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} >= {"/data"}


def test_rayjob_runs_jobs_classify_with_options_the_cli_accepts() -> None:
    rj = _load(KUBERAY / "rayjob.yaml")
    assert rj["apiVersion"] == "ray.io/v1" and rj["kind"] == "RayJob"
    spec = rj["spec"]
    rc = _load(KUBERAY / "raycluster.yaml")
    assert spec["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "/app/jobs/classify.py"]
    assert (ROOT / "jobs" / "classify.py").is_file()  # the Dockerfile copies jobs/ to /app/jobs
    params = _classify_params(argv[2:])
    assert params["output"] and str(params["inputs"][0]).startswith("/data/")
    assert params["device"] == "cuda"


def _scan_params(argv: list[str]) -> dict:
    """Parse ``argv`` exactly as `geofg scan` (and jobs/scan.py) would; UsageError if not."""
    cmd = typer.main.get_command(app).get_command(click.Context(click.Command("geofg")), "scan")
    return cmd.make_context("scan", list(argv)).params


def _cronjob_argv() -> list[str]:
    cj = _load(KUBERAY / "nightly-cronjob.yaml")
    (c,) = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return shlex.split(c["args"][0].replace("$(date -u +%F)", "2026-01-01"))


def test_nightly_cronjob_submits_a_dated_scan_job_with_the_clusters_token() -> None:
    cj = _load(KUBERAY / "nightly-cronjob.yaml")
    assert cj["apiVersion"] == "batch/v1" and cj["kind"] == "CronJob"
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and cj["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    rc = _load(KUBERAY / "raycluster.yaml")
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == rc["spec"]["authOptions"]["secretName"]
    argv = _cronjob_argv()
    assert argv[:4] == ["exec", "ray", "job", "submit"]
    assert argv[argv.index("--address") + 1] == f"http://{rc['metadata']['name']}-head-svc:8265"
    assert argv[argv.index("--submission-id") + 1] == "geofg-scan-2026-01-01-north"
    assert argv[argv.index("--runtime-env") + 1] == "/app/cluster/runtime_env.yaml"
    entry = argv[argv.index("--") + 1 :]
    assert entry[:2] == ["python", "/app/jobs/scan.py"]  # the Dockerfile copies jobs/ to /app/jobs
    assert (ROOT / "jobs" / "scan.py").is_file()
    _scan_params(entry[2:])


def _cron_argv() -> tuple[list[str], list[str]]:
    """(the five schedule fields, the command argv) of the crontab's one job line."""
    lines = [ln for ln in (CLUSTER / "cron" / "geofg-scan.crontab").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    jobs = [ln for ln in lines if not re.match(r"^[A-Z_]+=", ln)]
    assert len(jobs) == 1, jobs
    fields = jobs[0].split(None, 5)
    return fields[:5], shlex.split(fields[5])


def test_crontab_line_is_valid_cron() -> None:
    fields, argv = _cron_argv()
    ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    for f, (lo, hi) in zip(fields, ranges, strict=True):
        for part in f.split(","):
            base, _, step = part.partition("/")
            assert not step or step.isdigit(), f
            if base != "*":
                a, _, b = base.partition("-")
                assert a.isdigit() and lo <= int(a) <= hi and (not b or (b.isdigit() and int(a) <= int(b) <= hi)), f
    assert argv[0].startswith("/") and ">>" in argv  # absolute binary, output appended to a log


def _systemd(name: str):  # noqa: ANN202
    import configparser

    cp = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    cp.optionxform = str  # systemd keys are case-sensitive
    cp.read_string((CLUSTER / "systemd" / name).read_text())
    return cp


def test_systemd_service_and_timer_are_well_formed() -> None:
    svc, timer = _systemd("geofg-scan.service"), _systemd("geofg-scan.timer")
    assert svc.sections() == ["Unit", "Service"]
    assert svc["Service"]["Type"] == "oneshot" and svc["Service"]["ExecStart"].startswith("/")
    assert timer.sections() == ["Unit", "Timer", "Install"]
    assert timer["Timer"]["Unit"] == "geofg-scan.service" and timer["Timer"]["Persistent"] == "true"
    assert re.fullmatch(r"\*-\*-\* \d\d:\d\d:\d\d UTC", timer["Timer"]["OnCalendar"])
    assert timer["Install"]["WantedBy"] == "timers.target"
    hh, mm = timer["Timer"]["OnCalendar"].split()[1].split(":")[:2]
    fields, _ = _cron_argv()
    cj = _load(KUBERAY / "nightly-cronjob.yaml")["spec"]
    assert fields[:2] == [str(int(mm)), str(int(hh))] == cj["schedule"].split()[:2]  # same time everywhere


def test_every_schedule_runs_the_same_scan_of_a_valid_config() -> None:
    from geofg.scan.config import build_scan

    _, cron = _cron_argv()
    cron = cron[: cron.index(">>")]
    svc = shlex.split(_systemd("geofg-scan.service")["Service"]["ExecStart"])
    k8s = _cronjob_argv()
    k8s = k8s[k8s.index("--") + 1 :]
    assert cron[0].endswith("/geofg") and cron[1] == "scan"
    assert svc[0].endswith("/geofg") and svc[1] == "scan"
    assert k8s[:2] == ["python", "/app/jobs/scan.py"]  # jobs/scan.py runs `geofg scan ARGS`
    configs = {str(_scan_params(argv)["config"]) for argv in (cron[2:], svc[2:], k8s[2:])}
    assert configs == {"/data/scan/north.yaml"}
    shipped = CLUSTER / "scan" / "north.yaml"  # deployed to /data/scan/north.yaml
    cfg = build_scan(yaml.safe_load(shipped.read_text()), str(shipped))
    assert cfg.mosaic.startswith("/data/") and cfg.inbox.folder.startswith("/data/")


def test_readme_gives_the_commands_and_never_a_host_wide_ray_stop() -> None:
    readme = (CLUSTER / "README.md").read_text()
    for needle in ("geofg submit --address", "ray job submit", "RAY_AUTH_MODE=token", "ray up cluster/ray-cluster.yaml",
                   "kubectl apply -f cluster/kuberay/raycluster.yaml", "driver_exit_code"):
        assert needle in readme, needle
    for path in [*CLUSTER.rglob("*.yaml"), ROOT / "jobs" / "classify.py", ROOT / "jobs" / "scan.py",
                 *CLUSTER.glob("cron/*"), *CLUSTER.glob("systemd/*")]:
        text = path.read_text()
        if path.name != "ray-cluster.yaml":  # there it runs inside each node's own container
            assert "ray stop" not in text, path


@pytest.mark.parametrize("args", [["--help"]])
def test_jobs_classify_parses_like_the_cli(args: list[str]) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "jobs" / "classify.py"), *args], capture_output=True, text=True)
    assert r.returncode == 0 and "--ray-address" in r.stdout and "--chunk" in r.stdout


def test_jobs_scan_parses_like_the_cli() -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "jobs" / "scan.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--break-lock" in r.stdout and "--print-schema" in r.stdout


# --- object storage, no shared filesystem (cluster/kuberay/s3/, cluster/scan/north-s3.yaml) ---

S3_DIR = KUBERAY / "s3"


def _volumes(node: object) -> list[str]:
    """Every mountPath, hostPath and claimName in a manifest (a shared filesystem would show here)."""
    found: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("mountPath", "claimName", "path") and isinstance(v, str):
                found.append(v)
            found += _volumes(v)
    elif isinstance(node, list):
        for v in node:
            found += _volumes(v)
    return found


def test_s3_manifests_share_nothing_but_the_image_and_run_as_the_service_account() -> None:
    sa = _load(S3_DIR / "serviceaccount.yaml")
    assert sa["kind"] == "ServiceAccount" and "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    rc = _load(S3_DIR / "raycluster.yaml")
    pods = [rc["spec"]["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in rc["spec"]["workerGroupSpecs"]]
    for pod in pods:
        assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert rc["spec"]["authOptions"] == _load(KUBERAY / "raycluster.yaml")["spec"]["authOptions"]
    for name in ("raycluster.yaml", "rayjob.yaml", "nightly-cronjob.yaml"):
        doc = _load(S3_DIR / name)
        images: set[str] = set()
        text = (S3_DIR / name).read_text()

        def walk(node: object, into: set[str] = images) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    if k == "image":
                        into.add(v)
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(doc)
        assert images == {_image()}, name
        assert not any(v.startswith("/data") for v in _volumes(doc)), name  # no shared filesystem
        assert "/data/" not in text.split("\napiVersion:")[1], name
        assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*\S", text.split("\napiVersion:")[1]), name


def test_s3_rayjob_classifies_s3_to_s3_with_the_same_runtime_env() -> None:
    rj = _load(S3_DIR / "rayjob.yaml")
    assert rj["spec"]["clusterSelector"]["ray.io/cluster"] == _load(S3_DIR / "raycluster.yaml")["metadata"]["name"]
    assert rj["spec"]["runtimeEnvYAML"] == _load(KUBERAY / "rayjob.yaml")["spec"]["runtimeEnvYAML"]
    argv = shlex.split(rj["spec"]["entrypoint"])
    assert argv[:2] == ["python", "/app/jobs/classify.py"]
    params = _classify_params(argv[2:])
    assert all(str(i).startswith("s3://") for i in params["inputs"]) and str(params["output"]).startswith("s3://")


def test_s3_nightly_scan_runs_the_shipped_s3_config_on_the_s3_cluster() -> None:
    from geofg.scan.config import build_scan

    cj = _load(S3_DIR / "nightly-cronjob.yaml")
    (c,) = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    argv = shlex.split(c["args"][0].replace("$(date -u +%F)", "2026-01-01"))
    rc = _load(S3_DIR / "raycluster.yaml")
    assert argv[argv.index("--address") + 1] == f"http://{rc['metadata']['name']}-head-svc:8265"
    assert argv[argv.index("--submission-id") + 1] == "geofg-scan-2026-01-01-north-s3"
    entry = argv[argv.index("--") + 1 :]
    assert entry[:2] == ["python", "/app/jobs/scan.py"]
    config = str(_scan_params(entry[2:])["config"])
    assert config == "/app/cluster/scan/north-s3.yaml"  # the Dockerfile copies cluster/ to /app/cluster
    assert "COPY --chown=ray:users cluster ./cluster" in (CLUSTER / "Dockerfile").read_text()
    shipped = CLUSTER / "scan" / "north-s3.yaml"
    cfg = build_scan(yaml.safe_load(shipped.read_text()), str(shipped))
    assert cfg.inbox.folder.startswith("s3://") and cfg.mosaic.startswith("s3://") and cfg.report.folder is None
    north = build_scan(yaml.safe_load((CLUSTER / "scan" / "north.yaml").read_text()))
    assert cfg.grid == north.grid and cfg.inbox.date == north.inbox.date  # the same scan, on S3
    assert cfg.model.model == "naip-4band"  # packaged in the image: no shared model folder


def test_cluster_launcher_gives_workers_an_instance_profile_for_s3() -> None:
    cfg = _load(CLUSTER / "ray-cluster.yaml")
    assert "Arn" in cfg["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]

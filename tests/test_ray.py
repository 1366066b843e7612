"""The Ray runner (geofg.runners.ray) and `geofg submit` (../shared/RELIABILITY.md R1-R4, R9, R10).

In-process tests share one module-scoped ``ray.init(num_cpus=2)``; its actors build their own
predictors from a real bundle file (the eurosat-13 architecture with random weights), so the
equality test covers the whole actor path: load_predictor in ``__init__``, own reader and GDAL
env, own sink. The `geofg submit` test starts its own head on loopback with token auth, its own
ports and ``--temp-dir``, and stops it by its own process ids (never ``ray stop``, which would kill
every Ray process on the host).
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from typer.testing import CliRunner

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")

from geofg.cli import app  # noqa: E402
from geofg.config import build_job  # noqa: E402
from geofg.errors import ClusterError, InsecureClusterError, RunFailedUnitsError  # noqa: E402
from geofg.io.ledger import Ledger  # noqa: E402
from geofg.run import run_job  # noqa: E402
from geofg.runners import actor_sizing  # noqa: E402
from geofg.runners import cluster as rc  # noqa: E402
from geofg.runners import ray as rr  # noqa: E402
from rasters import S2_BANDS, s2_like, write_raster  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

TOKEN = secrets.token_hex(32)  # one token for this module's Ray runtimes; no ~/.ray/auth_token
LAYERS = ("class", "health", "confidence")
CHUNK, HALO = 32, 16  # 64-px model tiles: many small, fast units
runner = CliRunner()


def write_random_bundle(path: Path) -> Path:
    """Write a bundle with the eurosat-13 card and architecture and seeded random weights."""
    import torch
    from safetensors.numpy import save_file

    from geofg.models.inference.bundle import CARD_KEY
    from geofg.models.inference.nets import build_model
    from geofg.models.training.train import export_tensors, make_card

    card = make_card([0.12] * 13, [0.05] * 13, "tu-mobilenetv4_conv_small")
    torch.manual_seed(0)
    net = build_model(card).eval()
    # geofg.models.inference.bundle.write_bundle stores 0-d tensors (BatchNorm's num_batches_tracked) as
    # shape (1,) (np.ascontiguousarray), which load_predictor then rejects; save_file keeps them.
    save_file(export_tensors(net), str(path), metadata={CARD_KEY: card.to_json()})
    return path


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray for the module's in-process tests (2 CPUs, no dashboard, token auth), its
    session files under tmp_path (short: Ray's socket paths must stay under 107 bytes)."""
    from ray._private.authentication_test_utils import reset_auth_token_state

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("RAY_AUTH_TOKEN", TOKEN)
        mp.setenv("OMP_NUM_THREADS", "1")  # actors: one torch thread each, as the local runs below
        for name in ("RAY_ADDRESS", "RAY_AUTH_MODE"):  # ray.init sets RAY_AUTH_MODE=token itself;
            mp.setenv(name, "")  # the monkeypatch undoes that too
            mp.delenv(name)
        reset_auth_token_state()  # Ray caches the token per process (scan/test_scan_ray.py)
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")))
        try:
            yield ray
        finally:
            ray.shutdown()
            reset_auth_token_state()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_bundle(tmp_path_factory.mktemp("bundle") / "eurosat-random.safetensors")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", s2_like(190, 170), descriptions=S2_BANDS)


def _job(inp: Path, out: Path, model: Path, kind: str = "ray", mask: str = "off", **runner_cfg):  # noqa: ANN003, ANN202
    """The run these tests compare. The cloud mask is off unless asked for: it is the subject only
    of test_ray_mosaic_equals_local_array_for_array (made per unit, ~1.3 s of CPU per unit here)."""
    return build_job({
        "read": {"inputs": [str(inp)]},
        "tile": {"chunk": CHUNK, "halo": HALO},
        "model": {"model": str(model), "device": "cpu"},
        "mask": {"mode": mask},
        "write": {"output": str(out), "quicklook": False},
        "runner": {"kind": kind, **runner_cfg},
    })


def _layers(out: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(out), mode="r")
    return {name: g[name][:] for name in (*LAYERS, "ndvi", "mask") if name in g}  # ndvi: red+NIR; mask: S2_BANDS inputs


@contextlib.contextmanager
def torch_threads(n: int):  # noqa: ANN201
    """Run torch on ``n`` threads: on CPU its results depend on the thread count (docs/scaling.md),
    and each Ray actor here runs one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory, bundle: Path, scene: Path) -> dict[str, np.ndarray]:
    """The local runner's mosaic of ``scene`` (no faults, no cloud mask)."""
    out = tmp_path_factory.mktemp("golden") / "local.zarr"
    with torch_threads(1):
        run_job(_job(scene, out, bundle, kind="local"))
    return _layers(out)


@pytest.fixture(scope="module")
def golden_masked(tmp_path_factory: pytest.TempPathFactory, bundle: Path, scene: Path) -> dict[str, np.ndarray]:
    """The same with the cloud mask (the default for these Sentinel-2 band names)."""
    out = tmp_path_factory.mktemp("golden") / "local-masked.zarr"
    with torch_threads(1):
        run_job(_job(scene, out, bundle, kind="local", mask="auto"))
    return _layers(out)


def _assert_layers_equal(out: Path, expected: dict[str, np.ndarray]) -> None:
    got = _layers(out)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


# --- equality and failures (in-process Ray) ------------------------------------------------------


def test_ray_with_write_threads_equals_local(ray_session, tmp_path: Path, bundle: Path, scene: Path,
                                             golden: dict) -> None:
    """Actors with write threads (GPU actors have them) return before their units are written and
    report them in later replies: every unit is recorded once, and the mosaic is the same."""
    out = tmp_path / "ray.zarr"
    result = run_job(_job(scene, out, bundle, write_workers=2))
    assert not result.failed and sorted(result.ran) == sorted(u.id for u in result.plan.units)
    _assert_layers_equal(out, golden)
    recs = Ledger(out / ".geofg").load()
    assert len(recs) == 36 and {(r.status, r.attempt) for r in recs.values()} == {("done", 1)}


def test_ray_mosaic_equals_local_array_for_array(ray_session, tmp_path: Path, bundle: Path, scene: Path,
                                                 golden_masked: dict) -> None:
    """The command on Ray at its defaults (cloud mask on) equals the local runner, mask included."""
    golden = golden_masked
    out = tmp_path / "ray.zarr"
    r = runner.invoke(app, ["classify", str(scene), "-o", str(out), "--model", str(bundle), "--chunk",
                            str(CHUNK), "--halo", str(HALO), "--device", "cpu", "--runner", "ray",
                            "--profile"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    _assert_layers_equal(out, golden)
    # the actors' profile: the read threads' CPU beside their wall time, not added to the total
    assert "read_cpu" in r.output and "reader (CPU)" in r.output and "busy total" in r.output
    recs = Ledger(out / ".geofg").load()
    assert len(recs) == 36 and {(r.status, r.attempt) for r in recs.values()} == {("done", 1)}
    assert len({r.run_id for r in recs.values()}) == 1
    # every pixel valid: classified where the cloud mask is clear, masked (class 255) elsewhere
    assert ((golden["class"] < 10) == (golden["mask"] == 0)).all() and (golden["mask"] < 4).all()


@pytest.mark.parametrize(("max_restarts", "writers"), [(0, None), (1, None), (0, 2)],
                         ids=["ActorDiedError", "ActorUnavailableError", "write-threads"])
def test_sigkill_actor_mid_run_completes_and_equals_clean_run(
    ray_session, tmp_path: Path, bundle: Path, scene: Path, golden: dict, monkeypatch: pytest.MonkeyPatch,
    max_restarts: int, writers: int | None, caplog: pytest.LogCaptureFixture,
) -> None:
    """R1/R2: kill one actor's worker process mid-run; the run recovers. With max_restarts=1 Ray
    raises ActorUnavailableError instead of ActorDiedError: geofg must catch RayActorError. With
    write threads (as GPU actors have), units being written when the actor dies are re-run."""
    caplog.set_level(logging.WARNING, logger="geofg.runners.ray")
    monkeypatch.setitem(rr.ACTOR_OPTIONS, "max_restarts", max_restarts)
    before = set(ray.util.list_named_actors())
    enough = threading.Event()
    killed: list[int] = []
    problems: list[BaseException] = []

    def killer() -> None:
        try:
            deadline = time.monotonic() + 60
            names: list[str] = []
            while not names and time.monotonic() < deadline:
                names = sorted(n for n in ray.util.list_named_actors() if n.startswith("geofg-") and n not in before)
                time.sleep(0.02)
            pid = ray.get(ray.get_actor(names[0]).pid.remote(), timeout=60)  # the actor says who it is
            enough.wait(60)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except BaseException as e:  # noqa: BLE001 (reported by the test below)
            problems.append(e)

    def on_progress(done: int, total: int, km2: float) -> None:
        if done >= 6:
            enough.set()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = tmp_path / "chaos.zarr"
    result = run_job(_job(scene, out, bundle, write_workers=writers), on_progress=on_progress)
    thread.join(30)
    assert not problems and killed, problems
    assert not result.failed and len(result.ran) == 36
    _assert_layers_equal(out, golden)
    recs = Ledger(out / ".geofg").load()
    assert sorted(recs) == sorted(u.id for u in result.plan.units)  # every unit, each once
    assert {r.status for r in recs.values()} == {"done"}
    attempts = sorted(r.attempt for r in recs.values())
    lost = [r.getMessage() for r in caplog.records if " lost (" in r.getMessage()]
    # The unit running when the actor died is charged one attempt. None may be when the kill falls
    # between a unit's record and its reply (seen once with max_restarts=1 in a fresh-clone
    # .ci/run: every attempt was 1); never more than one.
    assert attempts in ([1] * 36, [1] * 35 + [2]), attempts
    assert len(lost) <= 1, lost
    if max_restarts == 0 or attempts[-1] == 2:
        assert len(lost) == 1, lost  # the driver saw the loss and replaced the actor
    assert len(list((out / ".geofg" / "units").iterdir())) == 36  # no stray temp records


def _corrupt_block(path: Path, bx: int, by: int) -> None:
    with rasterio.open(path) as src:
        off = int(src.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=1))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1))
    raw = bytearray(path.read_bytes())
    raw[off : off + size] = bytes(size)
    path.write_bytes(bytes(raw))


def test_corrupt_block_fails_its_units_and_exits_4_like_local(ray_session, tmp_path: Path, bundle: Path) -> None:
    inp = write_raster(tmp_path / "bad.tif", s2_like(128, 128, seed=2), descriptions=S2_BANDS, block=32)
    _corrupt_block(inp, 1, 2)
    with pytest.raises(RunFailedUnitsError, match="re-run") as ray_err:
        run_job(_job(inp, tmp_path / "ray.zarr", bundle))
    with pytest.raises(RunFailedUnitsError) as local_err, torch_threads(1):
        run_job(_job(inp, tmp_path / "local.zarr", bundle, kind="local"))
    failed = ray_err.value.result.failed
    assert failed and sorted(failed) == sorted(local_err.value.result.failed)
    assert all("UnreadableRasterError" in msg for msg in failed.values())
    recs = Ledger(tmp_path / "ray.zarr" / ".geofg").load()
    assert len(recs) == 16
    assert {r.attempt for r in recs.values()} == {1}  # input errors are not retried (R4)
    assert sum(r.status == "done" for r in recs.values()) == 16 - len(failed)
    _assert_layers_equal(tmp_path / "ray.zarr", _layers(tmp_path / "local.zarr"))
    assert RunFailedUnitsError.exit_code == 4


def test_unit_that_kills_its_actor_fails_after_max_attempts_rest_done(ray_session, tmp_path: Path) -> None:
    """A poison unit (its worker dies every time) is recorded failed after max_attempts; exit 4."""
    from geofg.models.inference.bundle import write_bundle
    from geofg.models.inference.tiny import ThresholdPredictor, tiny_card

    card = tiny_card(["B04", "B08"], ["water", "crop"], crop_classes=["crop"], tile_size=32, halo=4,
                     scale=1e-4, mean=[0.1, 0.1], std=[0.05, 0.05])
    model = tmp_path / "threshold.safetensors"
    write_bundle(model, {"unused": np.zeros(1, np.float32)}, card)
    data = np.random.default_rng(9).integers(1, 3000, (2, 64, 64)).astype("uint16")
    data[0, 40, 40] = 9999  # the middle of unit r0002_c0002, beyond its neighbours' 4-px halos
    inp = write_raster(tmp_path / "in.tif", data, descriptions=["B04", "B08"])

    def poison_factory(p):  # noqa: ANN001, ANN202 (defined here so it travels by value)
        class Poison(ThresholdPredictor):
            def predict(self, x):  # noqa: ANN001, ANN202
                if (x[:, 0] > 10).any():
                    os._exit(1)  # the worker process dies, as on a segfault
                return super().predict(x)

        return Poison(p.card)

    def job(out: Path, kind: str):  # noqa: ANN202
        return build_job({"read": {"inputs": [str(inp)]}, "tile": {"chunk": 16},
                          "model": {"model": str(model), "device": "cpu"},
                          "write": {"output": str(out), "quicklook": False},
                          "runner": {"kind": kind, "max_attempts": 2}})

    with pytest.raises(RunFailedUnitsError) as e:
        run_job(job(tmp_path / "ray.zarr", "ray"), predictor_factory=poison_factory)
    assert e.value.result.failed.keys() == {"r0002_c0002"}
    recs = Ledger(tmp_path / "ray.zarr" / ".geofg").load()
    bad = recs.pop("r0002_c0002")
    assert bad.status == "failed" and bad.attempt == 2 and "lost its Ray worker 2 times" in (bad.error or "")
    assert len(recs) == 15 and {r.status for r in recs.values()} == {"done"}
    # only the poison unit was charged: units queued behind it, or finished just before the actor
    # died (their replies lost with it, their records on disk), keep attempt 1
    assert {r.attempt for r in recs.values()} == {1}
    # the done units hold what the local runner writes with the plain threshold model
    run_job(job(tmp_path / "local.zarr", "local"), predictor_factory=lambda p: ThresholdPredictor(p.card))
    got, want = _layers(tmp_path / "ray.zarr"), _layers(tmp_path / "local.zarr")
    got["class"][32:48, 32:48] = want["class"][32:48, 32:48] = 0
    np.testing.assert_array_equal(got["class"], want["class"])


def test_actors_reuse_one_heap_like_the_command(ray_session, tmp_path: Path) -> None:
    """Ray actors start with geofg.runtime.worker_env: freed activations are reused, not faulted in
    again each unit (without it the Ray runner ran at 0.55x the local one, benchmarks/HISTORY.md)."""
    from geofg.models.inference.bundle import write_bundle
    from geofg.models.inference.tiny import ThresholdPredictor, tiny_card

    card = tiny_card(["B04", "B08"], ["water", "crop"], crop_classes=["crop"], tile_size=32, halo=4,
                     scale=1e-4, mean=[0.1, 0.1], std=[0.05, 0.05])
    model = tmp_path / "threshold.safetensors"
    write_bundle(model, {"unused": np.zeros(1, np.float32)}, card)
    data = np.random.default_rng(3).integers(1, 3000, (2, 32, 32)).astype("uint16")
    inp = write_raster(tmp_path / "in.tif", data, descriptions=["B04", "B08"])

    def checking_factory(p):  # noqa: ANN001, ANN202 (runs in the actor)
        import resource

        np._core.multiarray._set_madvise_hugepage(False)  # count 4 KiB faults
        a = np.ones(16 * 2**20)  # 128 MiB, as a forward's activations
        del a
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.ones(16 * 2**20)
        del a
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        if faults > 1000 or os.environ.get("MALLOC_ARENA_MAX") != "1":
            raise RuntimeError(f"actor heap not reused: {faults} page faults")
        return ThresholdPredictor(p.card)

    job = build_job({"read": {"inputs": [str(inp)]}, "tile": {"chunk": 16},
                     "model": {"model": str(model), "device": "cpu"},
                     "write": {"output": str(tmp_path / "ray.zarr"), "quicklook": False},
                     "runner": {"kind": "ray", "num_actors": 1}})
    result = run_job(job, predictor_factory=checking_factory)  # an actor failing to start: exit 5
    assert len(result.ran) == 4 and not result.failed


# --- connecting: unreachable and insecure clusters, tokens -----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("status", [200, 401, 403, 500])
def test_check_cluster_auth_refuses_a_dashboard_that_answers_anyone(status: int) -> None:
    """R10: an unauthenticated GET /api/jobs/ answered 200 means token auth is off -> exit 5."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(f"{self.path} auth={self.headers.get('Authorization')}")
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"127.0.0.1:{server.server_address[1]}"
        if status in (401, 403):
            rc.check_cluster_auth(url)
        else:
            with pytest.raises(InsecureClusterError, match="allow-insecure-cluster") as e:
                rc.check_cluster_auth(url)
            assert e.value.exit_code == 5 and ("token authentication is off" in str(e.value)) == (status == 200)
    finally:
        server.shutdown()
    assert seen == ["/api/jobs/ auth=None"]


def test_unreachable_cluster_is_exit_5_within_seconds(tmp_path: Path, scene: Path, bundle: Path) -> None:
    port = _free_port()  # nothing listens there
    t = time.monotonic()
    with pytest.raises(ClusterError, match="cannot reach the Ray cluster") as e:
        rc.probe(f"127.0.0.1:{port}")
    assert e.value.exit_code == 5
    with pytest.raises(ClusterError, match="dashboard"):
        rc.probe("http://127.0.0.1:8265")
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run([sys.executable, "-m", "geofg.cli", "classify", str(scene), "-o", str(tmp_path / "o.zarr"),
                        "--model", str(bundle), "--chunk", "32", "-q"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 5, r.stderr
    assert "cannot reach the Ray cluster" in r.stderr and time.monotonic() - t < 60
    sub = runner.invoke(app, ["submit", "--address", f"http://127.0.0.1:{port}", "--", str(scene), "-o",
                              str(tmp_path / "s.zarr")])
    assert sub.exit_code == 5, sub.output


def test_token_file_geofg_creates_is_private(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".ray" / "auth_token"
    assert rc.ensure_token_file(path) is True
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text()) == 64
    first = path.read_text()
    assert rc.ensure_token_file(path) is False and path.read_text() == first  # never replaced


def test_only_runners_ray_imports_ray() -> None:
    import ast

    import geofg

    root = Path(geofg.__file__).parent
    importers = set()
    for py in root.rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.add(py.relative_to(root).as_posix())
    # models/training/search.py is a Ray Tune program (geofg train classifier --search); it imports ray
    # only inside functions, so everything else still imports without ray (its module docstring)
    assert importers == {"runners/ray.py", "runners/actor_sizing.py", "models/training/search.py"}


# --- geofg submit against a head started by this test ---------------------------------------------


@pytest.fixture
def ray_head(tmp_path_factory: pytest.TempPathFactory):
    """A Ray head on loopback with token auth, own ports and --temp-dir; stopped by its own pids.

    Ray's GCS and raylet bind every interface whatever --node-ip-address says (RELIABILITY.md
    fact 14), so the head runs with RAY_AUTH_MODE=token: nothing it exposes answers without the
    token. The dashboard (Jobs API) binds 127.0.0.1.
    """
    temp = tmp_path_factory.mktemp("rh")  # short: Ray's socket paths must stay under 107 bytes
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0",
           "HF_HUB_OFFLINE": "1", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    env.pop("RAY_ADDRESS", None)
    dash = _free_port()
    ports = {"--port": _free_port(), "--dashboard-port": dash, "--ray-client-server-port": _free_port(),
             "--dashboard-agent-listen-port": _free_port(), "--dashboard-agent-grpc-port": _free_port(),
             "--metrics-export-port": _free_port(), "--runtime-env-agent-port": _free_port(),
             "--node-manager-port": _free_port(), "--object-manager-port": _free_port()}
    cmd = [str(Path(bin_dir) / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--temp-dir={temp}", "--num-cpus=2",
           "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())]
    log = open(temp / "head.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answers (401 without the token)
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"ray head did not start: {(temp / 'head.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield {"url": url, "env": env, "address": f"127.0.0.1:{ports['--port']}"}
    finally:
        _stop_session(proc)
        log.close()


def _stop_session(proc: subprocess.Popen) -> None:
    """Stop the head and every process it started (its session), by their ids only."""
    sid = os.getsid(proc.pid) if proc.poll() is None else proc.pid
    listed = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split("\n")
    pids = [int(p) for p, s in (line.split() for line in listed if line.strip()) if int(s) == sid]
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in pids if Path(f"/proc/{p}").exists()]
        for p in alive:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        if alive:
            time.sleep(2)
    proc.wait(5)


def _jobs(url: str) -> list[dict]:
    import json

    req = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_submit_passes_the_drivers_exit_code_and_runs_a_submission_once(ray_head: dict, tmp_path: Path,
                                                                        bundle: Path) -> None:
    """R9: the job's driver exits 4 (a corrupt block); `geofg submit` exits 4, not Ray's 1. The same
    submit again is "already submitted" (exit 0) and the job ran once."""
    inp = write_raster(tmp_path / "bad.tif", s2_like(160, 160, seed=3), descriptions=S2_BANDS, block=32)
    _corrupt_block(inp, 1, 1)
    out = tmp_path / "out.zarr"
    args = [sys.executable, "-m", "geofg.cli", "submit", "--address", ray_head["url"], "--", str(inp), "-o", str(out),
            "--model", str(bundle), "--chunk", "32", "--halo", "16", "--device", "cpu", "-q", "--no-mask"]
    # --no-mask: the exit code is the subject; with the mask on, every unit's detector tile (the
    # whole 160 px raster is one) reads the corrupt block, so all 25 units fail instead of 9
    first = subprocess.run(args, env=ray_head["env"], capture_output=True, text=True, timeout=180)
    assert first.returncode == 4, first.stdout[-3000:] + first.stderr[-3000:]
    assert "FAILED" in first.stderr or "failed" in first.stderr
    recs = Ledger(out / ".geofg").load()
    assert len(recs) == 25 and sum(r.status == "failed" for r in recs.values()) == 9
    again = subprocess.run(args, env=ray_head["env"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already submitted" in again.stderr, again.stderr[-2000:]
    ids = [j["submission_id"] for j in _jobs(ray_head["url"])]
    assert len(ids) == 1 and ids[0].startswith("geofg-classify-")
    assert len({r.run_id for r in Ledger(out / ".geofg").load().values()}) == 1  # one run wrote it
    # an unauthenticated client is refused by the head (token auth on)
    env = {k: v for k, v in ray_head["env"].items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    denied = subprocess.run([*args[:6], "--no-wait", "--submission-id", "other", "--", str(inp), "-o",
                             str(tmp_path / "x.zarr")], env=env, capture_output=True, text=True, timeout=120)
    assert denied.returncode == 5, denied.stderr[-2000:]


def test_driver_sigkilled_mid_run_then_rerun_resumes_and_equals_clean_run(
        ray_head: dict, tmp_path: Path, bundle: Path, scene: Path, golden: dict[str, np.ndarray]) -> None:
    """N3: SIGKILL the `geofg classify --ray-address` driver mid-run. Its actors die with it (their
    owner); the re-run takes over the dead driver's lock, redoes only the units without a record,
    and the mosaic equals the local runner's clean run array for array."""
    out = tmp_path / "killed.zarr"
    args = [sys.executable, "-m", "geofg.cli", "classify", str(scene), "-o", str(out), "--model", str(bundle),
            "--chunk", str(CHUNK), "--halo", str(HALO), "--device", "cpu", "--ray-address", ray_head["address"], "-q",
            "--no-mask"]
    env = {**ray_head["env"], "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    units = out / ".geofg" / "units"
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None and len(list(units.glob("*.json"))) < 6:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = Ledger(out / ".geofg").load()
    assert 0 < len(before) < 36, "the kill must land mid-run"

    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    after = Ledger(out / ".geofg").load()
    assert len(after) == 36 and all(r.status == "done" for r in after.values())
    assert all(after[u].run_id == before[u].run_id for u in before), "a unit done before the kill was redone"
    _assert_layers_equal(out, golden)


def test_actor_prefetch_gives_every_read_thread_a_unit() -> None:
    """The driver reserves at least one unit per read thread ahead of each actor's current one
    (a GPU actor with 11 read threads and prefetch 2 read on 3 of them)."""
    from geofg.config import RunnerConfig

    assert actor_sizing.actor_prefetch(RunnerConfig(), "cpu", {"num_cpus": 1}) == 2
    assert actor_sizing.actor_prefetch(RunnerConfig(), "cuda", {"num_gpus": 1, "num_cpus": 11}) == 11
    assert actor_sizing.actor_prefetch(RunnerConfig(prefetch=16), "cuda", {"num_gpus": 1, "num_cpus": 11}) == 16
    assert actor_sizing.actor_prefetch(RunnerConfig(read_workers=3), "cuda", {"num_gpus": 1, "num_cpus": 11}) == 3


@pytest.mark.parametrize(("rows", "actors", "lanes", "used"), [(16, 2, 2, 4), (8, 1, 11, 8), (8, 3, 11, 32)],
                         ids=["2-cpu-actors", "1-gpu-actor", "3-gpu-actors"])
def test_actor_shares_give_each_read_thread_a_run_of_neighbours(rows: int, actors: int, lanes: int,
                                                                used: int) -> None:
    """Each actor's read threads walk neighbouring units (their shared blocks decoded once), as the
    local runner's readers do; before, any thread of any actor read any unit."""
    from geofg.grid import plan_units

    units = plan_units(rows * 10, 16 * 10, 10, 2)
    shares, lane = rr.actor_shares(units, actors, lanes)
    assert len(shares) == actors
    assert sorted(u.id for s in shares for u in s) == sorted(u.id for u in units)
    assert set(lane.values()) <= set(range(lanes))
    walks = {}
    for a, share in enumerate(shares):
        assert len({lane[u.id] for u in share[:lanes]}) == min(lanes, len({lane[u.id] for u in share}))
        for u in share:
            walks.setdefault((a, lane[u.id]), []).append((u.row, u.col))
    assert len(walks) == used
    runs = []
    for cells in walks.values():  # a thread walks whole bands (or runs of them) one after another
        for i, (r, c) in enumerate(cells):
            if i == 0 or r // 2 != cells[i - 1][0] // 2:
                runs.append([])
            runs[-1].append((r, c))
    for run in runs:  # each: one band of two rows, column by column, no gaps, each unit once
        cols = [c for _, c in run]
        assert cols == sorted(cols) and cols[-1] - cols[0] + 1 == len(set(cols))
        assert len(set(run)) == len(run)
    sizes = [len(s) for s in shares]  # actors get equal shares, to a run
    assert max(sizes) - min(sizes) <= max(len(r) for r in runs)


@pytest.mark.parametrize(("size", "chunk", "halo"), [(400, 64, 8), (400, 96, 20), (100, 64, 8), (390, 80, 0)])
def test_actor_cache_is_the_local_runners_for_the_plans_units(tmp_path: Path, bundle: Path, size: int,
                                                              chunk: int, halo: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An actor has no unit list; its GDAL block cache is still the one the local runner gives
    the same units (two units' blocks per read thread)."""
    from geofg.io.reader import RasterReader
    from geofg.pipeline import plan
    from geofg.runners import local
    from geofg.runners.local import block_cache_bytes

    monkeypatch.setattr(local, "GDAL_CACHE_BYTES", 1)  # no floor: these rasters' blocks are small

    inp = write_raster(tmp_path / "t.tif", np.ones((13, size, size), np.uint16), block=16, descriptions=S2_BANDS)
    job = build_job({"read": {"inputs": [str(inp)]}, "tile": {"chunk": chunk, "halo": halo},
                     "model": {"model": str(bundle), "device": "cpu"},
                     "write": {"output": str(tmp_path / "o.zarr")}})
    p = plan(job)
    with RasterReader(p.info, p.band_indices) as r:
        largest = max(r.block_bytes(u.read) for u in p.units)
        for lanes in (1, 2, 11):
            assert actor_sizing.actor_cache_bytes(r, p, lanes) == block_cache_bytes(r, p.units, lanes) == 2 * lanes * largest


def test_write_behind_returns_outcomes_oldest_first_with_at_most_threads_pending() -> None:
    """What an actor's write threads promise the driver: a call returns with no more than
    ``threads`` units still being written, outcomes come back oldest first, none is lost."""
    gates = [threading.Event() for _ in range(5)]

    def write(i: int) -> int:
        gates[i].wait(10)
        return i

    wb = rr.WriteBehind(2)
    got: list[int] = []
    try:
        got += wb.submit(write, 0) + wb.submit(write, 1)  # two may be left pending
        assert got == []
        gates[1].set()  # the younger may finish first: it is held back behind the older
        got += wb.finished()
        assert got == []
        third: list[list[int]] = []
        caller = threading.Thread(target=lambda: third.append(wb.submit(write, 2)))
        caller.start()
        caller.join(0.3)
        assert caller.is_alive()  # a third unit waits while two are being written
        gates[0].set()
        caller.join(10)
        assert third and third[0][:1] == [0]
        got += third[0]
        for i in (2, 3, 4):
            gates[i].set()
        got += wb.submit(write, 3)
        got += wb.submit(write, 4)
        got += wb.drain()
        assert got == [0, 1, 2, 3, 4] and wb.drain() == []
    finally:
        for g in gates:
            g.set()
        wb.close()
    assert rr.WriteBehind(0).submit(write, 4) == [4]  # no threads: written at once, on this one


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_driver_signal_stops_cleanly_releases_the_lock_and_rerun_resumes(
        ray_head: dict, tmp_path: Path, bundle: Path, scene: Path, golden: dict[str, np.ndarray],
        sig: signal.Signals) -> None:
    """Issue 16 case 9 on Ray: SIGTERM to the driver gave exit 15 (Ray's handler) and left the
    lock. Now: no new units, those in flight finish, lock released, one line, exit 8; the re-run
    redoes nothing that was done and equals the clean run."""
    out = tmp_path / "stopped.zarr"
    args = [sys.executable, "-m", "geofg.cli", "classify", str(scene), "-o", str(out), "--model", str(bundle),
            "--chunk", str(CHUNK), "--halo", str(HALO), "--device", "cpu", "--ray-address", ray_head["address"], "-q",
            "--no-mask"]
    env = {**ray_head["env"], "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    units = out / ".geofg" / "units"
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None and len(list(units.glob("*.json"))) < 4:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 8, err[-3000:]
    assert "Traceback" not in err and f"stopped by {sig.name}" in err
    assert not (out / ".geofg" / "lock").exists()
    before = Ledger(out / ".geofg").load()
    assert 0 < len(before) < 36 and all(r.status == "done" for r in before.values())
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    after = Ledger(out / ".geofg").load()
    assert len(after) == 36 and all(after[u].run_id == before[u].run_id for u in before)
    _assert_layers_equal(out, golden)


def test_input_rewritten_mid_run_on_ray_stops_with_exit_3_and_records_only_old_reads(
        ray_session, tmp_path: Path) -> None:
    """Issue 16 case 2 on Ray: an actor that reads a changed input re-raises (it does not fail the
    unit), and the driver stops the run with one line naming the file; what was recorded came
    from the old content."""
    from geofg.errors import InputError
    from geofg.models.inference.bundle import write_bundle
    from geofg.models.inference.tiny import ThresholdPredictor, tiny_card

    card = tiny_card(["B04", "B08"], ["water", "crop"], crop_classes=["crop"], tile_size=32, halo=4,
                     scale=1e-4, mean=[0.1, 0.1], std=[0.05, 0.05])
    model = tmp_path / "threshold.safetensors"
    write_bundle(model, {"unused": np.zeros(1, np.float32)}, card)
    old = np.random.default_rng(4).integers(1, 3000, (2, 64, 64)).astype("uint16")
    inp = write_raster(tmp_path / "in.tif", old, descriptions=["B04", "B08"], compress=None)
    ref = write_raster(tmp_path / "ref.tif", old, descriptions=["B04", "B08"], compress=None)
    target = str(inp)

    def rewriting_factory(p):  # noqa: ANN001, ANN202 (defined here so it travels by value)
        class Rewriting(ThresholdPredictor):
            def predict(self, x):  # noqa: ANN001, ANN202
                if self.calls == 1:  # "dd conv=notrunc" after this actor's first unit
                    size = os.stat(target).st_size
                    with open(target, "r+b") as fh:
                        fh.seek(size // 2)
                        fh.write(bytes(range(256)) * 2)
                return super().predict(x)

        return Rewriting(p.card)

    def job(src: Path, out: Path, kind: str):  # noqa: ANN202
        return build_job({"read": {"inputs": [str(src)]}, "tile": {"chunk": 16},
                          "model": {"model": str(model), "device": "cpu"},
                          "write": {"output": str(out), "quicklook": False},
                          "runner": {"kind": kind}})

    out = tmp_path / "ray.zarr"
    with pytest.raises(InputError, match="changed during the run") as e:
        run_job(job(inp, out, "ray"), predictor_factory=rewriting_factory)
    msg = str(e.value)
    assert e.value.exit_code == 3 and target in msg and len(msg.splitlines()) == 1, msg
    assert not (out / ".geofg" / "lock").exists()
    run_job(job(ref, tmp_path / "ref.zarr", "local"), predictor_factory=lambda p: ThresholdPredictor(p.card))
    recs = Ledger(out / ".geofg").load()
    assert len(recs) < 16 and all(r.status == "done" for r in recs.values())
    got, want = _layers(out), _layers(tmp_path / "ref.zarr")
    for uid in recs:
        r, c = int(uid[1:5]), int(uid[7:])
        sl = (slice(16 * r, 16 * r + 16), slice(16 * c, 16 * c + 16))
        for name in LAYERS:
            np.testing.assert_array_equal(got[name][sl], want[name][sl], err_msg=f"{uid} {name}")


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_input_changed_between_preflight_and_the_first_read_is_exit_3_on_both_runners(
        ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Issue 16 case 2: on Ray the actors' start-up check saw the change and the run ended as
    'a Ray actor could not start' (exit 5); it is the input's fault: exit 3 naming the file."""
    import geofg.run as run_module
    from geofg.errors import InputError
    from geofg.models.inference.bundle import write_bundle
    from geofg.models.inference.tiny import ThresholdPredictor, tiny_card

    card = tiny_card(["B04", "B08"], ["water", "crop"], tile_size=32, halo=4, scale=1e-4)
    model = tmp_path / "threshold.safetensors"
    write_bundle(model, {"unused": np.zeros(1, np.float32)}, card)
    inp = write_raster(tmp_path / "in.tif", np.ones((2, 32, 32), "uint16"), descriptions=["B04", "B08"])
    planned = run_module.plan

    def plan_then_touch(job):  # noqa: ANN001, ANN202
        p = planned(job)
        os.utime(inp, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime after preflight
        return p

    monkeypatch.setattr(run_module, "plan", plan_then_touch)
    job = build_job({"read": {"inputs": [str(inp)]}, "tile": {"chunk": 16},
                     "model": {"model": str(model), "device": "cpu"},
                     "write": {"output": str(tmp_path / "o.zarr"), "quicklook": False},
                     "runner": {"kind": kind}})
    with pytest.raises(InputError, match="changed during the run") as e:
        run_job(job, predictor_factory=lambda p: ThresholdPredictor(p.card))
    assert e.value.exit_code == 3 and str(inp) in str(e.value) and len(str(e.value).splitlines()) == 1
    assert Ledger(tmp_path / "o.zarr" / ".geofg").load() == {}

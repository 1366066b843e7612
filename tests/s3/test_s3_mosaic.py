"""The mosaic on S3 (issue 19 item 2), against a real SeaweedFS server: the same arrays as on disk,
create-only ledger records, the run lock as a lease, resume after a kill, and bad output URLs.

Mosaics are made with the cheap threshold model (:class:`geofg.models.inference.tiny.ThresholdPredictor`)
through ``run_job``, or with the packaged ``eurosat-13`` through the CLI where the exit code and
the one-line error are the subject.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from rasters import s2_like, write_raster, write_threshold_bundle
from typer.testing import CliRunner

from geofg.cli import app
from geofg.config import build_job
from geofg.errors import MosaicLockedError, StaleLockWarning
from geofg.io.lease import LeaseLock, read_lease
from geofg.io.ledger import UnitRecord
from geofg.io.objledger import ObjectLedger
from geofg.io.objstore import ObjectPrefix
from geofg.io.store import zarr_store
from geofg.models.inference.tiny import ThresholdPredictor
from geofg.run import run_job

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
LAYERS = ("class", "health", "confidence")
CHEAP = ("--model", "eurosat-13", "--no-mask")
runner = CliRunner()

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", s2_like(96, 80, seed=4), descriptions=S2)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_threshold_bundle(tmp_path_factory.mktemp("bundle"), ["B04", "B08"])


def job(scene: Path, out: str, bundle: Path, **write: object):  # noqa: ANN201
    return build_job({"read": {"inputs": [str(scene)]}, "tile": {"chunk": 32}, "mask": {"mode": "off"},
                      "model": {"model": str(bundle), "device": "cpu"},
                      "write": {"output": out, "quicklook": False, **write}})  # fmt: skip


def run(scene: Path, out: str, bundle: Path):  # noqa: ANN201
    return run_job(job(scene, out, bundle), predictor_factory=lambda p: ThresholdPredictor(p.card))


def layers(target: str | Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(zarr_store(target, read_only=True), mode="r", use_consolidated=False)
    return {n: g[n][:] for n in (*LAYERS, "x", "y")}


def one_line(result, code: int) -> str:  # noqa: ANN001
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    msg = result.stderr.strip()
    assert msg.startswith("geofg: error:") and len(msg.splitlines()) == 1, msg
    return msg


def record(unit: str, run_id: str, attempt: int = 1, status: str = "done") -> UnitRecord:
    return UnitRecord(unit_id=unit, status=status, input_fingerprint="f", model_sha256="m",  # type: ignore[arg-type]
                      config_hash="c", attempt=attempt, empty=False, stats={}, run_id=run_id,
                      finished_at="2026-12-07T00:00:00+00:00", error=None if status == "done" else "x")  # fmt: skip


# --- the same mosaic; resume --------------------------------------------------------------------


def test_s3_mosaic_equals_local_array_for_array_and_resumes(s3, tmp_path: Path, scene: Path, bundle: Path) -> None:  # noqa: ANN001
    url = s3.url("out.zarr")
    first = run(scene, url, bundle)
    assert len(first.ran) == 9 and not first.failed
    run(scene, str(tmp_path / "local.zarr"), bundle)
    got, want = layers(url), layers(tmp_path / "local.zarr")
    assert (want["class"] != 255).any()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    keys = s3.keys()
    assert "out.zarr/.geofg/lock" not in keys  # released
    assert "out.zarr/.zmetadata" in keys  # complete: consolidated
    assert sum(k.startswith("out.zarr/.geofg/units/") and k.endswith(".done.json") for k in keys) == 9
    g = zarr.open_group(zarr_store(url, read_only=True), mode="r")
    assert g.attrs["geofg:grid"] == zarr.open_group(str(tmp_path / "local.zarr"), mode="r").attrs["geofg:grid"]
    again = run(scene, url, bundle)
    assert again.ran == [] and again.skipped == 9
    # a chunk deleted behind geofg's back: the re-run finds it (one LIST) and redoes only its unit
    s3.server.client().delete_object(Bucket=s3.name, Key="out.zarr/class/1/1")
    repaired = run(scene, url, bundle)
    assert repaired.ran == ["r0001_c0001"] and "r0001_c0001" in repaired.repaired
    np.testing.assert_array_equal(layers(url)["class"], want["class"])
    # --overwrite replaces it: every unit again, the old records gone (one done record per unit)
    s3.put("out.zarr/.geofg/units/r0000_c0000/000007.failed.json", b"{}")  # a stray record: removed too
    again = run_job(job(scene, url, bundle, mode="overwrite"), predictor_factory=lambda p: ThresholdPredictor(p.card))
    assert len(again.ran) == 9
    assert [k for k in s3.keys() if k.startswith("out.zarr/.geofg/units/")] == sorted(  # noqa: SIM118 (the fixture has keys(), no __iter__)
        f"out.zarr/.geofg/units/{u}/000001.done.json" for u in again.ran)
    np.testing.assert_array_equal(layers(url)["class"], want["class"])
    info = runner.invoke(app, ["info", "--json", url])
    assert info.exit_code == 0, info.output
    desc = json.loads(info.stdout)
    assert desc["units"]["done"] == 9 and desc["lock"] is None and desc["path"] == url


def test_unit_killed_before_its_chunks_are_written_is_redone(s3, tmp_path: Path, scene: Path, bundle: Path) -> None:  # noqa: ANN001
    """SIGKILL inside the 5th unit's chunk write (the process dies at once, no clean-up): the
    re-run (after the lease expired) redoes every unit without a record and ends with the clean
    mosaic. A record written before the chunks would vouch for a unit never written."""
    url = s3.url("killed.zarr")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
        from geofg.io import mosaic as mz
        from test_s3_mosaic import run
        from pathlib import Path
        calls = [0]
        write = mz.Mosaic.write_unit
        def dying(self, unit, layers):
            calls[0] += 1
            if calls[0] == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            write(self, unit, layers)
        mz.Mosaic.write_unit = dying
        run(Path({str(scene)!r}), {url!r}, Path({str(bundle)!r}))
    """)
    env = {**os.environ, "GEOFG_LEASE_S": "2", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    prefix = ObjectPrefix(s3.name, "killed.zarr")
    before = ObjectLedger(prefix).load()
    assert len(before) == 4 and read_lease(prefix) is not None  # the dead run's lease is left
    time.sleep(3.5)  # past its lease (2 s), by the server's clock
    with pytest.warns(StaleLockWarning, match="took over the lease"):
        rerun = run(scene, url, bundle)
    assert len(rerun.ran) == 5 and set(rerun.ran).isdisjoint(before)
    after = ObjectLedger(prefix).load()
    assert len(after) == 9 and all(after[u].run_id == before[u].run_id for u in before)
    run(scene, str(tmp_path / "clean.zarr"), bundle)
    got, want = layers(url), layers(tmp_path / "clean.zarr")
    for name in LAYERS:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_cli_run_sigkilled_mid_run_resumes_to_the_clean_mosaic(s3, tmp_path: Path) -> None:  # noqa: ANN001
    """`geofg classify -o s3://…` killed with SIGKILL from outside while units are being written."""
    src = write_raster(tmp_path / "big.tif", s2_like(256, 256, seed=2), descriptions=S2)
    url = s3.url("m.zarr")
    cmd = [sys.executable, "-m", "geofg.cli", "classify", str(src), "-o", url, "--chunk", "32", "--device",
           "cpu", "-q", *CHEAP]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GEOFG_LEASE_S": "3"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prefix = ObjectPrefix(s3.name, "m.zarr")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(prefix.sizes(".geofg/units")) < 6:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    done = ObjectLedger(prefix).load()
    assert 0 < len(done) < 64, "the run ended before the kill: make the scene larger"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 6 and "locked by run" in r.stderr, r.stderr  # its lease has not expired yet
    time.sleep(4.0)
    r = subprocess.run([a for a in cmd if a != "-q"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "took over the lease" in r.stderr
    after = ObjectLedger(prefix).load()
    assert len(after) == 64 and all(after[u].run_id == done[u].run_id for u in done)
    clean = tmp_path / "clean.zarr"
    subprocess.run([*cmd[:6], str(clean), *cmd[7:]], env=env, check=True)
    got, want = layers(url), layers(clean)
    for name in LAYERS:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# --- the lock as a lease ----------------------------------------------------------------------------


def test_lock_held_by_a_live_run_is_exit_6_and_nothing_is_written(s3, scene: Path) -> None:  # noqa: ANN001
    prefix = ObjectPrefix(s3.name, "held.zarr")
    holder = LeaseLock(prefix, "otherrun0001", lease_s=60)
    assert holder.acquire() is None
    try:
        r = runner.invoke(app, ["classify", str(scene), "-o", s3.url("held.zarr"), "--chunk", "32",
                                "--device", "cpu", "-q", *CHEAP])  # fmt: skip
        msg = one_line(r, 6)
        assert "otherrun0001" in msg and "--break-lock" in msg
        assert s3.keys() == ["held.zarr/.geofg/lock"]  # nothing else written
        assert read_lease(prefix).run_id == "otherrun0001"  # and the lease untouched
        with pytest.raises(MosaicLockedError):
            LeaseLock(prefix, "third", lease_s=60).acquire()
    finally:
        holder.release()
    assert s3.keys() == []


def test_expired_lease_is_taken_over_by_exactly_one_of_two_runs(s3) -> None:  # noqa: ANN001
    prefix = ObjectPrefix(s3.name, "stale.zarr")
    dead = LeaseLock(prefix, "deadrun00001", lease_s=1)
    dead.acquire()
    dead._stop.set()  # the holder dies: no more renewals, no release  # noqa: SLF001
    time.sleep(2.5)
    barrier, results, locks = threading.Barrier(2), {}, {}

    def take(name: str) -> None:
        lock = locks[name] = LeaseLock(prefix, name, lease_s=60)
        barrier.wait()
        try:
            results[name] = lock.acquire()
        except MosaicLockedError as e:
            results[name] = e

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StaleLockWarning)
        threads = [threading.Thread(target=take, args=(n,)) for n in ("takerA", "takerB")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    won = [n for n, v in results.items() if not isinstance(v, Exception)]
    assert len(won) == 1, results
    assert results[won[0]].run_id == "deadrun00001"  # what it took over
    assert read_lease(prefix).run_id == won[0]
    loser = next(n for n in results if n not in won)
    assert won[0] in str(results[loser])
    locks[won[0]].release()  # its heartbeat thread must not outlive the test


def test_renewed_lease_is_not_taken_and_a_holder_notices_a_takeover(s3) -> None:  # noqa: ANN001
    prefix = ObjectPrefix(s3.name, "renew.zarr")
    lost = threading.Event()
    holder = LeaseLock(prefix, "holder000001", lease_s=1.5, on_lost=lost.set)
    holder.acquire()
    time.sleep(3.5)  # more than twice the lease: only the renewals keep it
    with pytest.raises(MosaicLockedError, match="holder000001"):
        LeaseLock(prefix, "intruder", lease_s=60).acquire()
    breaker = LeaseLock(prefix, "breaker00001", lease_s=60)
    with pytest.warns(StaleLockWarning, match="--break-lock"):
        breaker.acquire(break_foreign=True)
    try:
        assert lost.wait(5) and not holder.is_held
        holder.release()  # must not delete the breaker's lease
        assert read_lease(prefix).run_id == "breaker00001"
    finally:
        breaker.release()  # its heartbeat thread must not outlive the test (and the test's endpoint)


# --- create-only records ---------------------------------------------------------------------------


def test_done_record_race_exactly_one_is_stored_and_kept(s3) -> None:  # noqa: ANN001
    prefix = ObjectPrefix(s3.name, "race.zarr")
    barrier, created = threading.Barrier(4), {}

    def write(run_id: str) -> None:
        ledger = ObjectLedger(prefix)
        barrier.wait()
        created[run_id] = ledger.write(record("r0000_c0000", run_id))

    threads = [threading.Thread(target=write, args=(f"run{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(created.values()) == [False, False, False, True], created
    winner = next(k for k, v in created.items() if v)
    ledger = ObjectLedger(prefix)
    assert ledger.load()["r0000_c0000"].run_id == winner
    assert ledger.write(record("r0000_c0000", "late")) is False  # a later writer never replaces it
    assert ledger.load()["r0000_c0000"].run_id == winner
    # the newest attempt wins; at one attempt, failed beats done (the unit is redone)
    ledger.write(record("r0000_c0000", "verify", attempt=1, status="failed"))
    assert ledger.load()["r0000_c0000"].status == "failed"
    ledger.write(record("r0000_c0000", "next", attempt=2))
    assert ledger.load()["r0000_c0000"].run_id == "next"
    # one unit's record, as the Ray driver reads it after losing an actor
    assert ledger.read("r0000_c0000") == ledger.load()["r0000_c0000"]
    assert ledger.read("r0009_c0009") is None


# --- bad output URLs: one line, the right exit code, nothing written --------------------------------


def test_missing_bucket_wrong_keys_and_dead_endpoint(s3, scene: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)

    def classify(url: str):  # noqa: ANN202
        return runner.invoke(app, ["classify", str(scene), "-o", url, "--chunk", "32", "--device", "cpu",
                                   "-q", *CHEAP])  # fmt: skip

    msg = one_line(classify("s3://no-such-bucket-geofg/out.zarr"), 3)
    assert "no-such-bucket-geofg" in msg and "bucket" in msg
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    msg = one_line(classify(s3.url("out.zarr")), 3)
    assert "credentials" in msg and "AWS_ACCESS_KEY_ID" in msg
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.server.secret_key)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    msg = one_line(classify(s3.url("out.zarr")), 5)
    assert f"127.0.0.1:{port}" in msg
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.server.endpoint)
    msg = one_line(classify("http://example.com/out.zarr"), 3)
    assert "s3://BUCKET/PREFIX" in msg
    assert s3.keys() == [] and list(tmp_path.iterdir()) == []

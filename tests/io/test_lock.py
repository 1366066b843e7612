"""Tests for geofg.io.lock: exclusion, stale takeover, races, heartbeat (RELIABILITY.md Z9, N3)."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from geofg.errors import MosaicLockedError, StaleLockWarning
from geofg.io import lock as lock_mod
from geofg.io.lock import LockInfo, RunLock, read_lock

REPO = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()
HAS_PROC = Path("/proc/self/stat").exists()

# A process that takes the lock, says "ready", and holds it until its stdin closes.
HOLDER = """
import sys
from geofg.io.lock import RunLock
lock = RunLock(sys.argv[1], sys.argv[2], heartbeat_s=float(sys.argv[3]))
lock.acquire()
print("ready", flush=True)
sys.stdin.read()
lock.release()
"""


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "mosaic.zarr" / ".geofg" / "lock"


@pytest.fixture
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def start_holder(path: Path, run_id: str, heartbeat_s: float = 10.0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), run_id, str(heartbeat_s)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def dead_pid() -> int:
    """Return the pid of a process that has exited and been reaped."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def write_lock(path: Path, **fields: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"schema": 1, "host": HOST, "pid": dead_pid(), "run_id": "old-run",
            "started": "2026-01-01T00:00:00.000Z", "heartbeat": "2026-01-01T00:05:00.000Z", **fields}
    path.write_text(json.dumps(data))


# --- exclusion -----------------------------------------------------------------------------------


def test_free_lock_is_taken_and_released(lock_path: Path, no_warnings: None) -> None:
    lock = RunLock(lock_path, "run-a")
    assert lock.acquire() is None
    info = read_lock(lock_path)
    assert info is not None
    assert (info.host, info.pid, info.run_id) == (HOST, os.getpid(), "run-a")
    assert info.started == info.heartbeat and info.started.endswith("Z")
    assert lock.is_held
    lock.release()
    lock.release()  # idempotent
    assert not lock_path.exists()
    assert read_lock(lock_path) is None
    assert not lock.is_held


def test_second_acquire_in_same_process_is_refused(lock_path: Path, no_warnings: None) -> None:
    with RunLock(lock_path, "run-a"):
        with pytest.raises(MosaicLockedError) as err:
            RunLock(lock_path, "run-b").acquire()
        info = read_lock(lock_path)
        assert info is not None
        expected = (
            f"{lock_path.parent.parent}: locked by run run-a (host {HOST}, pid {os.getpid()}) since "
            f"{info.started}, last heartbeat {info.heartbeat}; wait for it to finish"
        )
        assert str(err.value) == expected
        assert err.value.exit_code == 6
    assert RunLock(lock_path, "run-b").acquire() is None  # released: free again


def test_same_instance_cannot_acquire_twice(lock_path: Path) -> None:
    lock = RunLock(lock_path, "run-a")
    lock.acquire()
    with pytest.raises(RuntimeError):
        lock.acquire()
    lock.release()
    assert lock.acquire() is None  # a released RunLock can be taken again
    lock.release()


def test_lock_held_by_another_process_is_refused(lock_path: Path, no_warnings: None) -> None:
    proc = start_holder(lock_path, "run-sub")
    try:
        with pytest.raises(MosaicLockedError, match=rf"locked by run run-sub \(host .*, pid {proc.pid}\)"):
            RunLock(lock_path, "run-main").acquire()
    finally:
        proc.communicate(timeout=20)  # closes stdin: the holder releases and exits
    assert proc.returncode == 0
    assert not lock_path.exists()
    with RunLock(lock_path, "run-main"):
        assert read_lock(lock_path).run_id == "run-main"  # type: ignore[union-attr]


# --- stale locks on this host --------------------------------------------------------------------


def test_lock_of_sigkilled_process_is_taken_over(lock_path: Path) -> None:
    proc = start_holder(lock_path, "victim")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)  # reaps it and closes the pipes
    with pytest.warns(StaleLockWarning, match="victim"):
        taken = RunLock(lock_path, "rescuer").acquire()
    assert isinstance(taken, LockInfo)
    assert (taken.run_id, taken.pid, taken.host) == ("victim", proc.pid, HOST)
    assert read_lock(lock_path).run_id == "rescuer"  # type: ignore[union-attr]
    assert sorted(p.name for p in lock_path.parent.iterdir()) == ["lock", "lock.break"]


@pytest.mark.skipif(not HAS_PROC, reason="zombie detection reads /proc")
def test_lock_of_killed_but_unreaped_process_is_taken_over(lock_path: Path) -> None:
    proc = start_holder(lock_path, "zombie")
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while lock_mod._proc_stat(proc.pid)[0] != "Z":  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        with pytest.warns(StaleLockWarning):
            assert RunLock(lock_path, "rescuer").acquire().run_id == "zombie"  # type: ignore[union-attr]
    finally:
        proc.communicate(timeout=10)


@pytest.mark.skipif(not HAS_PROC, reason="boot id and start time come from /proc")
@pytest.mark.parametrize("clue", ["boot_id", "pid_start"])
def test_live_pid_from_an_older_life_is_stale(lock_path: Path, clue: str) -> None:
    """After a reboot, or once the pid was reused, the recorded pid is alive but not the holder."""
    me = lock_mod._Self.current()
    other = {"boot_id": "00000000-0000-0000-0000-000000000000", "pid_start": me.pid_start}
    if clue == "pid_start":
        other = {"boot_id": me.boot_id, "pid_start": (me.pid_start or 0) + 12345}
    write_lock(lock_path, pid=os.getpid(), **other)
    with pytest.warns(StaleLockWarning):
        assert RunLock(lock_path, "new").acquire() is not None


# --- other hosts ---------------------------------------------------------------------------------


def test_foreign_lock_is_refused_with_break_lock_hint(lock_path: Path) -> None:
    write_lock(lock_path, host="elsewhere.invalid", pid=1, run_id="far-run")
    with pytest.raises(MosaicLockedError, match="--break-lock") as err:
        RunLock(lock_path, "here").acquire()
    assert "far-run" in str(err.value) and "elsewhere.invalid" in str(err.value)
    assert "\n" not in str(err.value)
    assert read_lock(lock_path).run_id == "far-run"  # type: ignore[union-attr]


def test_foreign_lock_is_taken_with_break_foreign(lock_path: Path) -> None:
    write_lock(lock_path, host="elsewhere.invalid", pid=1, run_id="far-run")
    lock = RunLock(lock_path, "here")
    with pytest.warns(StaleLockWarning, match="far-run"):
        taken = lock.acquire(break_foreign=True)
    assert taken is not None and taken.host == "elsewhere.invalid"
    assert read_lock(lock_path).run_id == "here"  # type: ignore[union-attr]
    lock.release()


# --- empty or unparseable lock files ---------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b'{"host": "vm", "pi', b"[1, 2]", b'{"pid": 0}'])
def test_fresh_unparseable_lock_is_locked(lock_path: Path, content: bytes) -> None:
    lock_path.parent.mkdir(parents=True)
    lock_path.write_bytes(content)
    with pytest.raises(MosaicLockedError, match="empty or unreadable"):
        RunLock(lock_path, "run-a").acquire()
    assert lock_path.read_bytes() == content
    assert read_lock(lock_path) is None


def test_old_empty_lock_is_taken_over(lock_path: Path) -> None:
    lock_path.parent.mkdir(parents=True)
    lock_path.write_bytes(b"")
    old = time.time() - 25  # older than 2 * heartbeat_s
    os.utime(lock_path, (old, old))
    with pytest.warns(StaleLockWarning, match="empty or unreadable"):
        taken = RunLock(lock_path, "run-a", heartbeat_s=10).acquire()
    assert taken is not None and (taken.run_id, taken.pid, taken.host) == ("", 0, "")
    assert read_lock(lock_path).run_id == "run-a"  # type: ignore[union-attr]


# --- races -----------------------------------------------------------------------------------------


def _contend(path: str, run_id: str, barrier: object, results: object, done: object) -> None:
    lock = RunLock(path, run_id, heartbeat_s=30)
    barrier.wait()  # type: ignore[attr-defined]
    won = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StaleLockWarning)
            lock.acquire()
        won = True
        results.put(("won", run_id))  # type: ignore[attr-defined]
    except MosaicLockedError as e:
        results.put(("locked", str(e)))  # type: ignore[attr-defined]
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        results.put(("error", repr(e)))  # type: ignore[attr-defined]
    done.wait(30)  # type: ignore[attr-defined]  # hold until every contender has tried
    if won:
        lock.release()


def test_takeover_whose_moved_lock_is_swept_by_a_new_holder_reports_the_holder(
        lock_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen once in a clean-clone CI run of the test below (FileNotFoundError): a taker moved the
    stale lock aside; before it could delete it, another run created a lock in the free path and,
    holding it, swept the moved file as a takeover leftover. The taker must find that run."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path.write_bytes(b"")  # an empty, stale lock
    os.utime(lock_path, (time.time() - 100, time.time() - 100))
    other = RunLock(lock_path, "other", heartbeat_s=30)
    real_rename = os.rename

    def rename_then_other_takes_the_free_path(src, dst):  # noqa: ANN001, ANN202
        real_rename(src, dst)
        if Path(dst).name.startswith(f".{lock_path.name}.stale."):
            other.acquire()  # creates the lock, then sweeps leftovers: the moved file too

    monkeypatch.setattr(lock_mod.os, "rename", rename_then_other_takes_the_free_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StaleLockWarning)
            with pytest.raises(MosaicLockedError, match="other"):
                RunLock(lock_path, "taker", heartbeat_s=30).acquire()
        assert read_lock(lock_path).run_id == "other"  # type: ignore[union-attr]
    finally:
        other.release()


@pytest.mark.parametrize("stale", ["dead-pid", "empty-file"])
def test_concurrent_takeover_of_one_stale_lock_has_one_winner(lock_path: Path, stale: str) -> None:
    ctx = multiprocessing.get_context("fork")
    n = 4
    for trial in range(4):
        if stale == "dead-pid":
            write_lock(lock_path, run_id=f"dead-{trial}")
        else:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock_path.write_bytes(b"")
            os.utime(lock_path, (time.time() - 100, time.time() - 100))
        barrier, results, done = ctx.Barrier(n), ctx.Queue(), ctx.Event()
        procs = [
            ctx.Process(target=_contend, args=(str(lock_path), f"t{trial}-p{i}", barrier, results, done))
            for i in range(n)
        ]
        for p in procs:
            p.start()
        try:
            outcomes = [results.get(timeout=30) for _ in range(n)]
            winners = [who for kind, who in outcomes if kind == "won"]
            assert [kind for kind, _ in outcomes if kind == "error"] == [], outcomes
            assert len(winners) == 1, outcomes
            assert read_lock(lock_path).run_id == winners[0]  # type: ignore[union-attr]
            for kind, message in outcomes:
                if kind == "locked":
                    assert re.search(rf"locked by run {winners[0]} ", message), message
        finally:
            done.set()
            for p in procs:
                p.join(30)
        assert [p.exitcode for p in procs] == [0] * n
        assert not lock_path.exists()


# --- heartbeat -------------------------------------------------------------------------------------


def test_heartbeat_advances(lock_path: Path) -> None:
    with RunLock(lock_path, "run-a", heartbeat_s=0.1) as lock:
        first = read_lock(lock_path)
        assert first is not None
        deadline = time.monotonic() + 5
        beats = {first.heartbeat}
        while len(beats) < 3:
            assert time.monotonic() < deadline, "heartbeat did not advance"
            time.sleep(0.05)
            now = read_lock(lock_path)
            assert now is not None and now.started == first.started and now.run_id == "run-a"
            beats.add(now.heartbeat)
        assert max(beats) > first.heartbeat
        assert lock.is_held
    assert not lock_path.exists()
    assert [p.name for p in lock_path.parent.iterdir()] == ["lock.break"], "no heartbeat temp left"


def _take_over_by_hand(path: Path, run_id: str) -> bytes:
    """Replace the lock as another run's takeover would; return the new content."""
    data = json.dumps({"schema": 1, "host": HOST, "pid": os.getpid(), "run_id": run_id,
                       "started": "2026-06-01T00:00:00.000Z", "heartbeat": "2026-06-01T00:00:00.000Z"})
    tmp = path.with_name("takeover.tmp")
    tmp.write_text(data)
    os.replace(tmp, path)
    return data.encode()


def test_release_keeps_a_lock_another_run_took_over(lock_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = RunLock(lock_path, "run-a", heartbeat_s=60)
    lock.acquire()
    theirs = _take_over_by_hand(lock_path, "run-b")
    lock.release()
    assert lock_path.read_bytes() == theirs
    assert "run-b" in caplog.text


def test_heartbeat_stops_and_never_clobbers_a_lock_taken_over(lock_path: Path) -> None:
    lock = RunLock(lock_path, "run-a", heartbeat_s=0.05)
    lock.acquire()
    theirs = _take_over_by_hand(lock_path, "run-b")
    deadline = time.monotonic() + 5
    while lock.is_held:
        assert time.monotonic() < deadline, "heartbeat did not notice the takeover"
        time.sleep(0.02)
    time.sleep(0.2)  # several heartbeat periods
    assert lock_path.read_bytes() == theirs
    lock.release()
    assert lock_path.read_bytes() == theirs


def _release_in_child(lock: RunLock) -> None:
    lock.release()


def test_forked_child_does_not_remove_parents_lock(lock_path: Path) -> None:
    lock = RunLock(lock_path, "run-a")
    lock.acquire()
    child = multiprocessing.get_context("fork").Process(target=_release_in_child, args=(lock,))
    child.start()
    child.join(20)
    assert child.exitcode == 0
    assert read_lock(lock_path).run_id == "run-a"  # type: ignore[union-attr]
    lock.release()
    assert not lock_path.exists()


def test_read_lock_of_unreadable_file_is_none(lock_path: Path) -> None:
    lock_path.parent.mkdir(parents=True)
    lock_path.write_text("not json")
    assert read_lock(lock_path) is None


def test_invalid_heartbeat_is_rejected(lock_path: Path) -> None:
    with pytest.raises(ValueError):
        RunLock(lock_path, "run-a", heartbeat_s=0)


def test_taker_that_moved_a_fresh_lock_by_mistake_puts_it_back(
    lock_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another taker finishes its takeover between our check and our rename: we must restore its lock."""
    write_lock(lock_path, run_id="dead-run")
    real_rename = os.rename
    theirs: list[bytes] = []

    def rename(src: object, dst: object) -> None:
        if Path(str(src)) == lock_path and not theirs:
            theirs.append(_take_over_by_hand(lock_path, "quick-run"))  # lands just before our rename
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(MosaicLockedError, match="locked by run quick-run"):
        RunLock(lock_path, "slow-run").acquire()
    assert lock_path.read_bytes() == theirs[0]
    assert sorted(p.name for p in lock_path.parent.iterdir()) == ["lock", "lock.break"]

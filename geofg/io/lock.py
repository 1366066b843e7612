"""The run lock: at most one geofg run writes a mosaic at a time.

The lock is a file, ``<mosaic>/.geofg/lock``, created with ``O_CREAT | O_EXCL`` (atomic, also on
NFS v3+), holding one line of JSON: host, pid, run id, start time and a heartbeat that a daemon
thread refreshes every ``heartbeat_s`` seconds. Linux processes also record the kernel's boot id
and their own start time, so a lock left by a process that died (or by a machine that rebooted)
is recognised even when its pid now belongs to another process.

When the lock exists, :meth:`RunLock.acquire` decides:

* same host, holder alive -> :class:`~geofg.errors.MosaicLockedError` (exit 6);
* same host, holder dead -> take it over, with a :class:`~geofg.errors.StaleLockWarning`;
* another host -> MosaicLockedError (its liveness cannot be checked from here), unless
  ``break_foreign=True`` (``--break-lock``);
* empty or unparseable (holder killed between create and write) -> stale when older than
  ``2 * heartbeat_s``, else locked.

Taking over is race-safe: takers serialise on an ``flock`` of ``<lock>.break`` (released by the
kernel if a taker dies), re-read the lock, rename it to a unique name, check that what they moved
is the stale lock they judged (putting it back otherwise), delete it and retry the ``O_EXCL``
create. Losers read the winner's fresh lock and get MosaicLockedError. See ``docs/durability.md``.

POSIX only. This module imports nothing from geofg except :mod:`geofg.errors`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from geofg.errors import MosaicLockedError, StaleLockWarning
from geofg.io.process import ProcessIdentity as _Self
from geofg.io.process import proc_stat as _proc_stat

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: takeovers are not serialised
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_SCHEMA = 1
_MAX_TRIES = 20  # create/read/take-over rounds before giving up (only reached under heavy churn)
_BREAK_WAIT_S = 10.0  # how long a taker waits for another taker's flock (a takeover takes ms)
_SETTLE_S = 0.25  # how long to wait for a just-created empty lock to receive its content
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF}


@dataclass(frozen=True)
class LockInfo:
    """Who holds a mosaic's lock.

    Attributes:
        host: host name of the holder (``socket.gethostname()``).
        pid: process id of the holder on that host.
        run_id: the holder's run id.
        started: ISO 8601 UTC time the lock was taken.
        heartbeat: ISO 8601 UTC time of the holder's last heartbeat.
    """

    host: str
    pid: int
    run_id: str
    started: str
    heartbeat: str


@dataclass(frozen=True)
class _Snapshot:
    """One read of the lock file: its bytes, its identity and what they mean."""

    raw: bytes
    dev: int
    ino: int
    mtime: float
    info: LockInfo | None  # None: empty or unparseable
    boot_id: str | None
    pid_start: int | None

    def same_file(self, other: _Snapshot | None) -> bool:
        return other is not None and (self.dev, self.ino, self.raw) == (other.dev, other.ino, other.raw)


class RunLock:
    """The exclusive lock of one run on one mosaic.

    Args:
        path: the lock file, ``<mosaic>/.geofg/lock``. Its folder is created if missing.
        run_id: this run's id, written into the lock and shown to runs that find it held.
        heartbeat_s: seconds between heartbeats; an empty lock file older than twice this is stale.

    Examples:
        >>> with RunLock(path, run_id):  # doctest: +SKIP
        ...     write_units()
    """

    def __init__(self, path: str | Path, run_id: str, *, heartbeat_s: float = 10.0) -> None:
        if heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s must be > 0, got {heartbeat_s}")
        self.path = Path(path)
        self.run_id = run_id
        self.heartbeat_s = heartbeat_s
        self._info: LockInfo | None = None  # what we wrote, while held
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False
        self._me: _Self | None = None

    @property
    def is_held(self) -> bool:
        """True between a successful :meth:`acquire` and :meth:`release`, unless the heartbeat
        found the lock taken over by another run."""
        return self._info is not None and not self._lost and self._info.pid == os.getpid()

    @property
    def info(self) -> LockInfo | None:
        """What this run last wrote into the lock, while held."""
        return self._info

    def acquire(self, *, break_foreign: bool = False) -> LockInfo | None:
        """Take the lock, or raise if another run holds it.

        Args:
            break_foreign: take over a lock held by a run on another host (``--break-lock``); only
                safe when that run is known to be dead.

        Returns:
            None if the lock was free; else the stale lock that was taken over (a StaleLockWarning
            is also issued). For an empty or unparseable stale lock file the returned info has
            ``host=""``, ``pid=0``, ``run_id=""`` and the file's mtime as both times.

        Raises:
            MosaicLockedError: a live run (or one on another host) holds the lock.
            OSError: the lock file cannot be created or written.
            RuntimeError: this RunLock already holds the lock.
        """
        if self._info is not None:
            raise RuntimeError(f"{self.path}: run {self.run_id} already holds this lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = _Self.current()
        for _ in range(_MAX_TRIES):
            if self._claim(me):
                return None
            snap = self._settle(_read(self.path))
            if snap is None:
                continue  # released in between: try to create again
            stale = self._judge(snap, me, break_foreign)
            if self._take_over(snap, me):
                warnings.warn(StaleLockWarning(self._stale_message(stale)), stacklevel=2)
                return stale
        raise MosaicLockedError(
            f"{_mosaic_of(self.path)}: could not take the lock {self.path} after {_MAX_TRIES} tries "
            "because other runs kept taking it; wait for them to finish and re-run"
        )

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it still holds this run's id; idempotent.

        A lock another run took over is left alone (with a warning). Never raises on I/O errors: a
        lock that cannot be deleted is left for the next run to take over as stale.
        """
        info = self._info
        if info is None:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        self._info = None
        if info.pid != os.getpid():  # a forked child must not remove its parent's lock
            return
        try:
            with _takeover_guard(self.path, _BREAK_WAIT_S):
                snap = _read(self.path)
                if snap is not None and _holds(snap, info):
                    os.unlink(self.path)
                    _fsync_dir(self.path.parent)
                    return
            if snap is None:
                log.debug("%s: lock of run %s was already gone at release", self.path, info.run_id)
                return
            holder = snap.info.run_id if snap.info is not None else "?"
            log.warning("%s: not removing the lock: it no longer holds run %s (now: run %s)",
                        self.path, info.run_id, holder)
        except (OSError, TimeoutError) as e:
            log.warning("%s: could not remove the lock of run %s (%s); the next run will take it over "
                        "as stale", self.path, info.run_id, e)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- acquire helpers ------------------------------------------------------------------------

    def _judge(self, snap: _Snapshot, me: _Self, break_foreign: bool) -> LockInfo:
        """Return the stale lock's info if it may be taken over, else raise MosaicLockedError."""
        mosaic = _mosaic_of(self.path)
        info = snap.info
        if info is None:
            age = time.time() - snap.mtime
            if age <= 2 * self.heartbeat_s:
                raise MosaicLockedError(
                    f"{mosaic}: lock file {self.path} is empty or unreadable and only {age:.1f} s old, "
                    "so another run is probably starting; wait for it to finish, or retry in "
                    f"{2 * self.heartbeat_s:.0f} s if no other run is active"
                )
            mtime = _iso(snap.mtime)
            return LockInfo(host="", pid=0, run_id="", started=mtime, heartbeat=mtime)
        held = (
            f"{mosaic}: locked by run {info.run_id} (host {info.host}, pid {info.pid}) since "
            f"{info.started}, last heartbeat {info.heartbeat}"
        )
        if info.host == me.host:
            if _holder_alive(snap, me):
                raise MosaicLockedError(f"{held}; wait for it to finish")
            return info
        if not break_foreign:
            raise MosaicLockedError(
                f"{held}; that host is not this one ({me.host}), so geofg cannot tell whether the run "
                "is alive: wait for it to finish, or if that run is dead, re-run with --break-lock"
            )
        return info

    def _claim(self, me: _Self) -> bool:
        """Create the lock for this run with ``O_EXCL`` and start the heartbeat; False if it exists."""
        now = _utc_now()
        info = LockInfo(me.host, me.pid, self.run_id, now, now)
        if not _create(self.path, _encode(info, me)):
            return False
        self._me = me
        self._start(info)
        return True

    def _settle(self, snap: _Snapshot | None) -> _Snapshot | None:
        """Give a just-created, still empty lock a moment to receive its content, for a useful message."""
        deadline = time.monotonic() + min(_SETTLE_S, self.heartbeat_s)
        while (snap is not None and snap.info is None and time.time() - snap.mtime <= 2 * self.heartbeat_s
               and time.monotonic() < deadline):
            time.sleep(0.005)
            snap = _read(self.path)
        return snap

    def _take_over(self, snap: _Snapshot, me: _Self) -> bool:
        """Replace the stale lock ``snap`` by this run's; return True if this run now holds the lock.

        Returns False when the lock changed since ``snap`` was read, or when another run created it
        first after the stale one was gone; the caller then reads it again.
        """
        grave = self.path.with_name(f".{self.path.name}.stale.{uuid.uuid4().hex}")
        try:
            with _takeover_guard(self.path, _BREAK_WAIT_S):
                if not snap.same_file(_read(self.path)):
                    return False  # another taker won, the holder released, or a heartbeat landed
                try:
                    os.rename(self.path, grave)  # atomic: of several takers only one moves it
                except FileNotFoundError:
                    return False
                moved = _read(grave)
                if moved is None:  # a run that created the freed lock meanwhile swept it up
                    return False
                if not snap.same_file(moved):
                    _put_back(grave, self.path)  # we moved a lock we did not judge: restore it
                    return False
                with contextlib.suppress(FileNotFoundError):  # swept up the same way
                    os.unlink(grave)
                return self._claim(me)  # fsyncs the folder, making the removal durable too
        except TimeoutError:
            raise MosaicLockedError(
                f"{_mosaic_of(self.path)}: another run has been taking over the stale lock "
                f"{self.path} for {_BREAK_WAIT_S:.0f} s; wait for it to finish and re-run"
            ) from None

    def _stale_message(self, taken: LockInfo) -> str:
        mosaic = _mosaic_of(self.path)
        if not taken.run_id:
            return (f"{mosaic}: took over an empty or unreadable lock file (last written {taken.started}); "
                    "the run that created it died before writing it")
        return (
            f"{mosaic}: took over the stale lock of run {taken.run_id} (host {taken.host}, pid {taken.pid}, "
            f"since {taken.started}, last heartbeat {taken.heartbeat}), which is no longer running; units "
            "it had not recorded as done in the ledger will be redone"
        )

    # --- heartbeat ------------------------------------------------------------------------------

    def _start(self, info: LockInfo) -> None:
        self._info = info
        self._lost = False
        self._stop = threading.Event()
        _sweep_leftovers(self.path)
        self._thread = threading.Thread(
            target=self._beat_loop, name=f"geofg-lock-heartbeat-{self.run_id}", daemon=True
        )
        self._thread.start()

    def _beat_loop(self) -> None:
        stop = self._stop
        while not stop.wait(self.heartbeat_s):
            info = self._info
            if info is None:
                return
            try:
                beat = self._beat(info, stop)
            except (OSError, TimeoutError) as e:
                log.warning("%s: heartbeat failed (%s); will retry", self.path, e)
                continue
            if beat is None:
                self._lost = True
                log.error("%s: run %s lost its lock: another run took it over; stop writing",
                          self.path, info.run_id)
                return
            self._info = beat

    def _beat(self, info: LockInfo, stop: threading.Event) -> LockInfo | None:
        """Rewrite the heartbeat if the lock still holds ``info``; return the new info or None."""
        with _takeover_guard(self.path, self.heartbeat_s):
            snap = _read(self.path)
            if snap is None or not _holds(snap, info):
                return None
            if stop.is_set():  # released meanwhile: do not write a lock that is being removed
                return info
            new = replace(info, heartbeat=_utc_now())
            tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
            try:
                _write_new(tmp, _encode(new, self._me or _Self.current()))
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            return new


def read_lock(path: str | Path) -> LockInfo | None:
    """Return who holds the lock at ``path``, or None if it is free or unreadable (for ``geofg info``)."""
    snap = _read(Path(path))
    if snap is None:
        return None
    if snap.info is None:
        log.warning("%s: lock file is empty or unreadable", path)
    return snap.info


def _holder_alive(snap: _Snapshot, me: _Self) -> bool:
    """Return True unless the same-host holder of ``snap`` is known to be dead."""
    info = snap.info
    if info is None:
        return False
    if snap.boot_id and me.boot_id and snap.boot_id != me.boot_id:
        return False  # the machine rebooted since: every process of the old boot is gone
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    except OSError:
        return True  # cannot tell: assume alive
    stat = _proc_stat(info.pid)
    if stat is not None:
        state, start = stat
        if state in ("Z", "X"):
            return False  # killed, not yet reaped by its parent
        if snap.pid_start is not None and start != snap.pid_start:
            return False  # the pid now belongs to another process
    return True


# --- the lock file --------------------------------------------------------------------------------


def _encode(info: LockInfo, me: _Self) -> bytes:
    payload: dict[str, Any] = {
        "schema": _SCHEMA,
        "host": info.host,
        "pid": info.pid,
        "run_id": info.run_id,
        "started": info.started,
        "heartbeat": info.heartbeat,
        "boot_id": me.boot_id,
        "pid_start": me.pid_start,
    }
    return (json.dumps(payload, sort_keys=True) + "\n").encode("utf-8")


def _parse(raw: bytes) -> tuple[LockInfo, str | None, int | None] | None:
    """Parse lock bytes; None if they are not a lock. Unknown keys are ignored (newer writers)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    pid, strs = data.get("pid"), [data.get(k) for k in ("host", "run_id", "started", "heartbeat")]
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    if not all(isinstance(s, str) for s in strs):
        return None
    host, run_id, started, heartbeat = strs
    boot_id = data.get("boot_id") if isinstance(data.get("boot_id"), str) else None
    start = data.get("pid_start")
    pid_start = start if isinstance(start, int) and not isinstance(start, bool) else None
    return LockInfo(host, pid, run_id, started, heartbeat), boot_id, pid_start


def _read(path: Path) -> _Snapshot | None:
    """Read the lock file; None if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    parsed = _parse(raw)
    info, boot_id, pid_start = parsed if parsed is not None else (None, None, None)
    return _Snapshot(raw, st.st_dev, st.st_ino, st.st_mtime, info, boot_id, pid_start)


def _holds(snap: _Snapshot, info: LockInfo) -> bool:
    """Return True if the lock read as ``snap`` is the one written with ``info`` (any heartbeat)."""
    held = snap.info
    return held is not None and (held.host, held.pid, held.run_id, held.started) == (
        info.host, info.pid, info.run_id, info.started)


def _create(path: Path, data: bytes) -> bool:
    """Create the lock with ``data`` exclusively; return False if it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return False
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    _fsync_dir(path.parent)
    return True


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _put_back(moved: Path, path: Path) -> None:
    """Return a lock moved away by mistake to ``path``, never clobbering a newer lock there."""
    try:
        os.link(moved, path)  # fails if a lock exists there, unlike rename
    except FileNotFoundError:
        return  # swept up by a run that took the free lock meanwhile: nothing to put back
    except FileExistsError:
        log.error("%s: a lock moved aside during a takeover race could not be put back (a new lock "
                  "exists); its run will find it lost at its next heartbeat", path)
    except OSError:  # no hard links on this file system: best effort
        if not path.exists():
            os.rename(moved, path)
            return
    os.unlink(moved)


def _sweep_leftovers(path: Path) -> None:
    """Delete heartbeat temp files and takeover leftovers of killed processes (we hold the lock)."""
    prefix = f".{path.name}."
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            name = entry.name
            if name.startswith(prefix) and (name.endswith(".tmp") or name.startswith(f"{prefix}stale.")):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


@contextlib.contextmanager
def _takeover_guard(path: Path, wait_s: float) -> Iterator[None]:
    """Serialise takeovers, heartbeats and releases of ``path`` with an flock on ``<path>.break``.

    The kernel drops the flock when its holder dies, so a killed taker never blocks others. Where
    the file system has no flock (some network mounts) this does nothing and the identity checks
    in :meth:`RunLock._take_over` remain the only guard.

    Raises:
        TimeoutError: another process held the flock for ``wait_s`` seconds.
    """
    fd = -1
    if fcntl is not None:
        try:
            fd = os.open(path.with_name(path.name + ".break"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            log.debug("%s: cannot open the takeover guard (%s); going on without it", path, e)
    try:
        if fd >= 0 and not _flock(fd, wait_s):
            os.close(fd)
            fd = -1
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # closing drops the flock


def _flock(fd: int, wait_s: float) -> bool:
    """Take an exclusive flock on ``fd``, polling; False if the file system has no flock."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"takeover guard busy for {wait_s:.1f} s") from None
            time.sleep(0.002)
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            return False


# --- small helpers ----------------------------------------------------------------------------------


def _mosaic_of(path: Path) -> Path:
    return path.parent.parent if path.parent.name == ".geofg" else path.parent


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso(timestamp: float) -> str:
    when = datetime.fromtimestamp(timestamp, timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)

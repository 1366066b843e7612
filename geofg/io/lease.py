"""The run lock of a mosaic on S3: a lease created with ``If-None-Match: *`` and renewed with ``If-Match``.

An object store has no ``O_EXCL``, no ``flock`` and no pids to probe, so the lock on
``<mosaic>/.geofg/lock`` is a lease (docs/scaling.md, "The mosaic on S3"):

* **take**: a PUT with ``If-None-Match: *``. 412 means another run holds it.
* **hold**: the holder renews it every ``lease_s / 3`` with a PUT ``If-Match: <its ETag>``, which
  moves the object's ``Last-Modified``. A 412 there means another run took the lease over: the
  holder marks itself lost (:attr:`LeaseLock.is_held` turns False, ``on_lost`` is called) and the
  run stops handing out units.
* **expire**: a lease whose ``Last-Modified`` is more than its ``lease_s`` behind the server's own
  clock (the ``Date`` header of the same answer: one clock, the server's, never the taker's) is
  expired; its holder died or lost its connection.
* **take over**: a PUT ``If-Match: <the expired lease's ETag>``. Of several takers exactly one
  succeeds; the others get 412, read the winner's fresh lease and are locked out (exit 6).
* **release**: a DELETE ``If-Match: <its ETag>``, so a lease taken over is never deleted by the
  run that lost it.

``--break-lock`` takes over a lease that has not expired (the user knows its run is dead).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
import warnings
from collections.abc import Callable
from datetime import datetime, timezone

from geofg.errors import ConfigError, MosaicLockedError, StaleLockWarning
from geofg.io.lock import LockInfo
from geofg.io.objstore import ObjectPrefix

log = logging.getLogger(__name__)

LOCK = ".geofg/lock"
LEASE_S = 60.0
_MAX_TRIES = 10


class LeaseLock:
    """The exclusive lease of one run on a mosaic on S3 (the interface of :class:`~geofg.io.lock.RunLock`).

    Args:
        prefix: the mosaic's prefix.
        run_id: this run's id.
        lease_s: seconds a lease lasts without renewal; renewed every ``lease_s / 3``. Default:
            ``GEOFG_LEASE_S`` from the environment, else 60.
        on_lost: called once (on the heartbeat thread) when another run took the lease over.
    """

    def __init__(self, prefix: ObjectPrefix, run_id: str, *, lease_s: float | None = None,
                 on_lost: Callable[[], None] | None = None) -> None:  # fmt: skip
        lease_s = lease_s if lease_s is not None else default_lease_s()
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        self.prefix = prefix
        self.run_id = run_id
        self.lease_s = lease_s
        self.on_lost = on_lost
        self._info: LockInfo | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False

    @property
    def path(self) -> str:
        """The lock's URL (for messages)."""
        return f"{self.prefix.url}/{LOCK}"

    @property
    def is_held(self) -> bool:
        """True while this run holds the lease (False once a renewal found it taken over)."""
        return self._info is not None and not self._lost

    @property
    def info(self) -> LockInfo | None:
        """What this run last wrote into the lease, while held."""
        return self._info

    def acquire(self, *, break_foreign: bool = False) -> LockInfo | None:
        """Take the lease; return None if it was free, else the expired lease taken over.

        Raises:
            MosaicLockedError: another run holds a lease that has not expired (exit 6).
            InputError, StorageUnreachableError: S3 refused the request or did not answer.
            RuntimeError: this LeaseLock already holds the lease.
        """
        if self._info is not None:
            raise RuntimeError(f"{self.path}: run {self.run_id} already holds this lease")
        now = _utc_now()
        info = LockInfo(socket.gethostname(), os.getpid(), self.run_id, now, now)
        for _ in range(_MAX_TRIES):
            etag = self.prefix.put_if_absent(LOCK, self._encode(info))
            if etag is not None:
                self._start(info, etag)
                return None
            found = self.prefix.get(LOCK)
            if found is None:
                continue  # released in between
            raw, stat = found
            held, lease_s = _parse(raw)
            age = (stat.server_now - stat.modified).total_seconds()
            if age <= lease_s and not break_foreign:
                raise MosaicLockedError(self._locked_message(held, age, lease_s))
            etag = self.prefix.put_if_match(LOCK, self._encode(info), stat.etag)
            if etag is None:
                continue  # renewed, released or taken by another run meanwhile: look again
            self._start(info, etag)
            stale = held or LockInfo("", 0, "", _iso(stat.modified), _iso(stat.modified))
            warnings.warn(StaleLockWarning(
                f"{self.prefix.url}: took over the lease of run {stale.run_id or '?'} (host {stale.host}, "
                f"pid {stale.pid}, since {stale.started}), last renewed {age:.0f} s ago "
                f"({'--break-lock' if age <= lease_s else f'expired after {lease_s:.0f} s'}); units it had "
                "not recorded as done in the ledger will be redone"), stacklevel=2)
            return stale
        raise MosaicLockedError(f"{self.prefix.url}: could not take the lease {self.path} after "
                                f"{_MAX_TRIES} tries because other runs kept taking it; wait for them and re-run")

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this run's (If-Match); never raises."""
        info, etag = self._info, self._etag
        if info is None:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread, self._info = None, None
        if self._lost or etag is None:
            return
        try:
            if not self.prefix.delete(LOCK, etag):
                log.warning("%s: not removing the lease: it is no longer run %s's", self.path, info.run_id)
        except Exception as e:  # noqa: BLE001 (an unreachable store: the lease expires by itself)
            log.warning("%s: could not remove the lease of run %s (%s); it expires after %.0f s",
                        self.path, info.run_id, e, self.lease_s)

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def renew(self) -> bool:
        """Renew the lease now (If-Match its ETag); False when it was taken over (then lost)."""
        info, etag = self._info, self._etag
        if info is None or etag is None or self._lost:
            return False
        new = LockInfo(info.host, info.pid, info.run_id, info.started, _utc_now())
        fresh = self.prefix.put_if_match(LOCK, self._encode(new), etag)
        if fresh is None:
            self._lost = True
            log.error("%s: run %s lost its lease: another run took it over; stop writing", self.path, info.run_id)
            if self.on_lost is not None:
                self.on_lost()
            return False
        self._info, self._etag = new, fresh
        return True

    # --- helpers ----------------------------------------------------------------------------------

    def _encode(self, info: LockInfo) -> bytes:
        body = {"schema": 1, "host": info.host, "pid": info.pid, "run_id": info.run_id,
                "started": info.started, "heartbeat": info.heartbeat, "lease_s": self.lease_s,
                "nonce": uuid.uuid4().hex}  # fmt: skip
        return (json.dumps(body, sort_keys=True) + "\n").encode()

    def _locked_message(self, held: LockInfo | None, age: float, lease_s: float) -> str:
        who = (f"run {held.run_id} (host {held.host}, pid {held.pid}) since {held.started}" if held
               else "a run whose lease cannot be read")  # fmt: skip
        return (f"{self.prefix.url}: locked by {who}, lease renewed {age:.0f} s ago and valid for "
                f"{lease_s:.0f} s; wait for it to finish, or if that run is dead re-run after "
                f"{max(0.0, lease_s - age):.0f} s (or now with --break-lock)")

    def _start(self, info: LockInfo, etag: str) -> None:
        self._info, self._etag, self._lost = info, etag, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_loop, name=f"geofg-lease-{self.run_id}", daemon=True)
        self._thread.start()

    def _beat_loop(self) -> None:
        stop = self._stop
        while not stop.wait(self.lease_s / 3):
            try:
                if not self.renew():
                    return
            except Exception as e:  # noqa: BLE001 (the store may be back before the lease runs out)
                log.warning("%s: lease renewal failed (%s); will retry", self.path, e)


def default_lease_s() -> float:
    """``GEOFG_LEASE_S`` (seconds, > 0) when set, else :data:`LEASE_S`.

    Raises:
        ConfigError: ``GEOFG_LEASE_S`` is not a number > 0.
    """
    raw = os.environ.get("GEOFG_LEASE_S", "").strip()
    if not raw:
        return LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise ConfigError(f"GEOFG_LEASE_S: expected seconds between 0 and 3600, found {raw!r}; fix or unset it")
    return value


def read_lease(prefix: ObjectPrefix) -> LockInfo | None:
    """Return who holds the lease, or None when it is free or unreadable (``geofg info``)."""
    found = prefix.get(LOCK)
    return None if found is None else _parse(found[0])[0]


def _parse(raw: bytes) -> tuple[LockInfo | None, float]:
    try:
        d = json.loads(raw)
        info = LockInfo(str(d["host"]), int(d["pid"]), str(d["run_id"]), str(d["started"]), str(d["heartbeat"]))
        lease_s = float(d.get("lease_s", LEASE_S))
    except (ValueError, TypeError, KeyError):
        return None, LEASE_S
    return info, lease_s if lease_s > 0 else LEASE_S


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

"""One storage interface for a mosaic: a local folder or an ``s3://`` prefix, chosen by the ``-o`` value.

The run (:mod:`geofg.run`), the sinks that Ray actors rebuild, ``geofg info``, ``export`` and
``stats`` hold a *target*: a :class:`~pathlib.Path` or an ``s3://bucket/prefix`` string (both
picklable, so they travel to actors as they are). These functions give each target its ledger, its
run lock and its zarr store; :mod:`geofg.io.mosaic` takes either target too.

==================  ==========================================  =============================================
                    local folder                                ``s3://bucket/prefix``
==================  ==========================================  =============================================
zarr store          ``LocalStore`` (atomic rename per chunk)    ``ObjectStore`` over obstore's ``S3Store``
ledger              :class:`~geofg.io.ledger.Ledger`: temp,     :class:`~geofg.io.objledger.ObjectLedger`:
                    fsync, rename                               create-only PUT (``If-None-Match: *``)
run lock            :class:`~geofg.io.lock.RunLock`: O_EXCL,    :class:`~geofg.io.lease.LeaseLock`: a lease,
                    pid/boot-id liveness, flock'd takeover      ``If-Match`` renewal, expiry by server time
durability          fsync of chunks before the record           a PUT is durable and atomic when it returns
folder (`Folder`)   ``glob``, stat; temp, fsync, rename         one LIST (size, ETag, LastModified), HEAD, PUT
==================  ==========================================  =============================================

:class:`Folder` also serves a scan's inbox (:meth:`Folder.listing`, :meth:`Folder.key_of`: the
change pre-filter is ``stat`` on disk, size and ETag on S3, so no object is downloaded to be
hashed), its inbox state and its report folder (:meth:`Folder.write_text`,
:meth:`Folder.check_writable`), so :mod:`geofg.scan` has no S3 branch of its own.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geofg.io import objects

from geofg.io.ledger import Ledger
from geofg.io.lock import LockInfo, RunLock
from geofg.io.objstore import ObjectPrefix, is_object_target, output_target

__all__ = [
    "Folder",
    "Listed",
    "Target",
    "folder_target",
    "is_object_target",
    "ledger_for",
    "lock_for",
    "output_target",
    "read_lock_of",
    "zarr_gdal_env",
    "zarr_store",
]

Target = Path | str
"""A mosaic's location: a local path, or ``s3://bucket/prefix``."""

META_DIR = ".geofg"


def folder_target(raw: str) -> Target:
    """A folder's target: ``s3://bucket/prefix`` (normalised) or a local :class:`~pathlib.Path`.

    Raises:
        ForbiddenPathError: a malformed ``s3://`` URL or another URL scheme (exit 3).
    """
    return output_target(raw)


@dataclass(frozen=True)
class Listed:
    """One file (object) of a folder listing: what a scan's inbox survey needs of it.

    ``key`` is the change pre-filter: ``[size, mtime_ns, inode, ctime_ns]`` of a local file,
    ``[size, "etag:ETAG"]`` of an object (the ETag changes whenever the content does, so no object
    is downloaded to be hashed). ``location`` is what :func:`geofg.io.read.open_raster` takes: the
    local path, or ``s3://bucket/key``.
    """

    name: str
    location: str
    key: list[Any]
    mtime_s: float


def _glob_match(parts: list[str], pattern: list[str]) -> bool:
    """``Path.glob`` semantics on ``/``-separated parts: ``*`` stays in one part, ``**`` spans any."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(parts[1:], pattern[1:])


def ledger_for(target: Target) -> Any:
    """The mosaic's ledger: :class:`Ledger` on disk, :class:`~geofg.io.objledger.ObjectLedger` on S3."""
    if is_object_target(target):
        from geofg.io.objledger import ObjectLedger

        return ObjectLedger(ObjectPrefix.of(str(target)))
    return Ledger(Path(target) / META_DIR)


def lock_for(target: Target, run_id: str, **kw: Any) -> Any:
    """The mosaic's run lock (not yet taken): :class:`RunLock` on disk, a lease on S3."""
    if is_object_target(target):
        from geofg.io.lease import LeaseLock

        return LeaseLock(ObjectPrefix.of(str(target)), run_id, **kw)
    (Path(target) / META_DIR).mkdir(parents=True, exist_ok=True)
    return RunLock(Path(target) / META_DIR / "lock", run_id, **kw)


def read_lock_of(target: Target) -> LockInfo | None:
    """Who holds the mosaic's lock, or None (``geofg info``)."""
    if is_object_target(target):
        from geofg.io.lease import read_lease

        return read_lease(ObjectPrefix.of(str(target)))
    from geofg.io.lock import read_lock

    return read_lock(Path(target) / META_DIR / "lock")


def zarr_store(target: Target, read_only: bool = False) -> Any:
    """What ``zarr.open_group`` takes for the target: a path string, or an ``ObjectStore``."""
    if is_object_target(target):
        return ObjectPrefix.of(str(target)).zarr_store(read_only=read_only)
    return str(target)


class Folder:
    """A mosaic's top level seen as a folder, on disk or on S3 (what :mod:`geofg.io.mosaic` checks).

    Args:
        target: a local path or ``s3://bucket/prefix``.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.obj = ObjectPrefix.of(str(target)) if is_object_target(target) else None
        self.path = None if self.obj is not None else Path(target)

    @property
    def _local(self) -> Path:
        """The local path (only on the branches where :attr:`obj` is None)."""
        assert self.path is not None
        return self.path

    def exists(self) -> bool:
        """A file or folder at the path; any object below the prefix (the bucket is checked first)."""
        if self.obj is None:
            return self._local.exists()
        self.obj.check_bucket()
        return self.obj.exists()

    def is_dir(self) -> bool:
        """A folder at the path; on S3 any existing prefix."""
        return self._local.is_dir() if self.obj is None else self.obj.exists()

    def names(self, under: str = "") -> set[str]:
        """The entries directly below ``under`` (empty when it does not exist)."""
        if self.obj is not None:
            return self.obj.names(under)
        folder = self._local / under if under else self._local
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()

    def is_file(self, name: str) -> bool:
        """Return True when the file (object) ``name`` exists."""
        return (self._local / name).is_file() if self.obj is None else self.obj.head(name) is not None

    def read_text(self, name: str) -> str:
        """The text of ``name``.

        Raises:
            FileNotFoundError: no such file or object.
        """
        if self.obj is None:
            return (self._local / name).read_text()
        found = self.obj.get(name)
        if found is None:
            raise FileNotFoundError(f"{self.obj.url}/{name}")
        return found[0].decode("utf-8")

    def write_text(self, name: str, text: str) -> None:
        """Write ``name`` whole or not at all: temp, fsync, rename on disk; one PUT on S3."""
        if self.obj is not None:
            self.obj.put(name, text.encode("utf-8"))
            return
        from geofg.io.atomic import atomic_write

        path = self._local / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)

    def location(self, name: str) -> str:
        """``name`` as a local path or an ``s3://`` URL (for messages and reports)."""
        return str(self._local / name) if self.obj is None else f"{self.obj.url}/{name}"

    def check_writable(self) -> None:
        """Create the folder if needed and write and delete a probe file (object).

        Raises:
            OSError: on disk, the folder cannot be created or written.
            InputError, StorageUnreachableError: on S3, the bucket is missing, the credentials are
                refused (exit 3), or the endpoint does not answer (exit 5).
        """
        probe = f".geofg-write-test-{uuid.uuid4().hex}"
        if self.obj is not None:
            self.obj.check_bucket()
            self.obj.put(probe, b"")
            self.obj.delete(probe)
            return
        self._local.mkdir(parents=True, exist_ok=True)
        (self._local / probe).write_bytes(b"")
        (self._local / probe).unlink()

    def listing(self, pattern: str) -> tuple[list[Listed], set[str], float]:
        """The files (objects) matching the glob ``pattern``, every name seen, and the time now.

        Hidden names (starting with ``.``) and non-files are left out of the files but kept
        in the names (a scan looks for ``<file>.done`` sentinels there). On S3 one paginated LIST
        gives each object's size, ETag and LastModified, and "now" is the server's clock (the Date
        of that answer), so a quiet period compares two times of one clock.
        """
        if self.obj is None:
            return self._local_listing(pattern)
        names: set[str] = set()
        out: list[Listed] = []
        parts = pattern.split("/")
        for name, size, etag, modified in self.obj.objects():
            names.add(name)
            if name.rsplit("/", 1)[-1].startswith(".") or not _glob_match(name.split("/"), parts):
                continue
            out.append(Listed(name, f"{self.obj.url}/{name}", [size, f"etag:{etag}"], modified))
        return sorted(out, key=lambda e: e.name), names, self.obj.server_time()

    def _local_listing(self, pattern: str) -> tuple[list[Listed], set[str], float]:
        folder = self._local
        names: set[str] = set()
        out: list[Listed] = []
        for path in sorted(folder.glob(pattern)):
            name = path.relative_to(folder).as_posix()
            names.add(name)
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # removed while we looked
                continue
            out.append(Listed(name, str(path), [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns],
                              st.st_mtime_ns / 1e9))  # fmt: skip
        return out, names, time.time()

    def has(self, name: str) -> bool:
        """Whether the file (object) ``name`` exists (a HEAD on S3)."""
        return self.is_file(name)

    def key_of(self, name: str) -> list[Any] | None:
        """The change pre-filter of ``name`` now (see :class:`Listed`), None when it is gone."""
        if self.obj is not None:
            stat = self.obj.head(name)
            return None if stat is None else [stat.size, "etag:" + stat.etag.strip('"')]
        try:
            st = os.stat(self._local / name)
        except FileNotFoundError:
            return None
        return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]

    def remove(self, name: str) -> None:
        """Delete the file or folder (everything below the name) ``name``."""
        if self.obj is not None:
            self.obj.delete_under(name)
            return
        import shutil

        child = self._local / name
        shutil.rmtree(child) if child.is_dir() else child.unlink(missing_ok=True)


@contextlib.contextmanager
def zarr_gdal_env(target: Target) -> Iterator[str]:
    """Enter the GDAL environment that opens the mosaic with GDAL's Zarr driver; yield its path.

    A local mosaic is its path; one on S3 is ``/vsis3/bucket/prefix`` read with the AWS credential
    chain (:func:`geofg.io.objects.connection`), without geofg's COG-only extension filter (a
    Zarr store's keys have no extension).
    """
    from geofg.io.read import GDAL_CACHE_BYTES, GDAL_OPTIONS, gdal_env

    if not is_object_target(target):
        with gdal_env():
            yield str(target)
        return
    import rasterio

    conn = objects.connection()
    options = {**GDAL_OPTIONS, **objects.REMOTE_OPTIONS, **conn.gdal_options()}
    options.pop("CPL_VSIL_CURL_ALLOWED_EXTENSIONS", None)
    options["GDAL_DISABLE_READDIR_ON_OPEN"] = "NO"
    with rasterio.Env(session=conn.gdal_session, GDAL_CACHEMAX=GDAL_CACHE_BYTES, **options):
        yield objects.gdal_path(str(target))

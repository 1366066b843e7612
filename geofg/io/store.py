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
==================  ==========================================  =============================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geofg.io import objects

from geofg.io.ledger import Ledger
from geofg.io.lock import LockInfo, RunLock
from geofg.io.objstore import ObjectPrefix, is_object_target, output_target

__all__ = [
    "Folder",
    "Target",
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

"""A mosaic's prefix on S3: the few object operations the mosaic, its ledger and its lock need.

``geofg classify … -o s3://bucket/out.zarr`` keeps the whole mosaic under one prefix: the Zarr v2
group (written by zarr-python 3 through ``zarr.storage.ObjectStore`` on an obstore ``S3Store``),
``.geofg/units/`` (the ledger, :class:`geofg.io.objledger.ObjectLedger`) and ``.geofg/lock`` (the
run lock as a lease, :class:`geofg.io.lease.LeaseLock`). :class:`ObjectPrefix` is that prefix: a
small picklable value (bucket and key prefix) that Ray actors rebuild their clients from, with
their own AWS environment (:func:`geofg.io.objects.connection`: environment, profile, web identity,
instance role; the same endpoint and credentials for boto3 and obstore, never logged).

Writes that must not race use S3's conditional requests (AWS S3 since 2024-08 / 2024-11;
SeaweedFS, MinIO): :meth:`ObjectPrefix.put_if_absent` is a PUT with ``If-None-Match: *`` (412: it
exists), :meth:`ObjectPrefix.put_if_match` a PUT with ``If-Match: <ETag>`` (412: it changed).
A PUT is atomic (an object is whole or absent) and S3 is strongly consistent for reads after
writes and for listings, so no temp file, rename or fsync is needed.

Errors: a refused or missing credential, a missing bucket -> :class:`~geofg.errors.InputError`
(exit 3, before anything is written); an endpoint that does not answer or answers 5xx ->
:class:`~geofg.errors.StorageUnreachableError` (exit 5).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from geofg.errors import ForbiddenPathError, InputError, StorageUnreachableError
from geofg.io import objects

log = logging.getLogger(__name__)

_DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


def is_object_target(target: object) -> bool:
    """Return True for an ``s3://`` output (a string), False for a local path."""
    return isinstance(target, str) and objects.is_s3_url(target)


def output_target(raw: str) -> Any:
    """Return ``s3://bucket/prefix`` (normalised, no trailing ``/``) or a local :class:`~pathlib.Path`.

    Raises:
        ForbiddenPathError: an ``s3://`` URL without a valid bucket or prefix, or another URL scheme.
    """
    from pathlib import Path

    from geofg.io.paths import check_not_remote

    text = str(raw).strip()
    if objects.is_s3_url(text):
        bucket, key = objects.parse_s3_url(text.rstrip("/"))
        return f"s3://{bucket}/{key}"
    try:
        check_not_remote(text)
    except ForbiddenPathError as e:
        raise ForbiddenPathError(f"{e}; an output may be a local path or s3://BUCKET/PREFIX") from None
    return Path(text)


@dataclass(frozen=True)
class Stat:
    """An object's ETag, size and last-modified time (the server's clock), and the server's time now."""

    etag: str
    size: int
    modified: datetime
    server_now: datetime


@dataclass(frozen=True)
class ObjectPrefix:
    """The objects under ``s3://bucket/prefix/`` (keys below are relative to it).

    ``reads_only``: geofg only reads here (a scan's inbox); errors then ask for credentials
    allowed to read, not to write.
    """

    bucket: str
    prefix: str
    reads_only: bool = False

    @classmethod
    def of(cls, url: str) -> ObjectPrefix:
        """Return the prefix of ``s3://bucket/prefix``."""
        bucket, key = objects.parse_s3_url(url.rstrip("/"))
        return cls(bucket, key)

    @property
    def url(self) -> str:
        """``s3://bucket/prefix`` (for messages)."""
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, name: str) -> str:
        """The full object key of ``name`` below the prefix."""
        return f"{self.prefix}/{name}" if name else self.prefix

    # --- reads -----------------------------------------------------------------------------------

    def get(self, name: str) -> tuple[bytes, Stat] | None:
        """Return the object's bytes and :class:`Stat`, or None when it does not exist."""
        r = self._or_none(self._client().get_object, name)
        return None if r is None else (r["Body"].read(), _stat(r))

    def get_json(self, name: str) -> Any:
        """Return the parsed JSON object ``name``, None when it is missing or not JSON."""
        found = self.get(name)
        if found is None:
            return None
        try:
            return json.loads(found[0])
        except ValueError:
            return None

    def head(self, name: str) -> Stat | None:
        """Return the object's :class:`Stat`, or None when it does not exist."""
        r = self._or_none(self._client().head_object, name)
        return None if r is None else _stat(r)

    def _or_none(self, call: Any, name: str) -> Any:
        """``call(Bucket=..., Key=...)`` for ``name``: its answer, None when the object does not exist."""
        try:
            return call(Bucket=self.bucket, Key=self.key(name))
        except Exception as e:  # noqa: BLE001 (classified)
            if _code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self.error(e, name) from None

    def sizes(self, under: str = "") -> dict[str, int]:
        """Every object below ``under`` (name relative to ``under`` -> bytes), one paginated LIST."""
        base = self.key(under).rstrip("/") + "/"
        out: dict[str, int] = {}
        try:
            pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
            for page in pages:
                for o in page.get("Contents", []):
                    out[o["Key"][len(base) :]] = int(o["Size"])
        except Exception as e:  # noqa: BLE001 (classified)
            raise self.error(e, under) from None
        return out

    def objects(self) -> list[tuple[str, int, str, float]]:
        """Every object below the prefix: ``(name, size, ETag without quotes, LastModified as
        seconds since the epoch)``, one paginated LIST."""
        base = self.prefix.rstrip("/") + "/"
        out: list[tuple[str, int, str, float]] = []
        try:
            pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
            for page in pages:
                for o in page.get("Contents", []):
                    out.append((o["Key"][len(base):], int(o["Size"]), str(o.get("ETag", "")).strip('"'),
                                o["LastModified"].timestamp()))  # fmt: skip
        except Exception as e:  # noqa: BLE001 (classified)
            raise self.error(e, "") from None
        return out

    def server_time(self) -> float:
        """The server's clock now (the Date header of a HEAD on the bucket), seconds since the epoch."""
        try:
            r = self._client().head_bucket(Bucket=self.bucket)
        except Exception as e:  # noqa: BLE001 (classified)
            raise self.error(e, "") from None
        date = r.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        import time

        return parsedate_to_datetime(date).timestamp() if date else time.time()

    def names(self, under: str = "") -> set[str]:
        """The names directly below ``under`` (like a folder's entries): one LIST with a delimiter."""
        base = self.key(under).rstrip("/") + "/"
        out: set[str] = set()
        try:
            pages = self._client().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/")
            for page in pages:
                out.update(p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", []))
                out.update(o["Key"][len(base):] for o in page.get("Contents", []))
        except Exception as e:  # noqa: BLE001 (classified)
            raise self.error(e, under) from None
        return out

    def exists(self) -> bool:
        """Return True when any object lies below the prefix."""
        try:
            r = self._client().list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + "/", MaxKeys=1)
        except Exception as e:  # noqa: BLE001 (classified)
            raise self.error(e, "") from None
        return bool(r.get("KeyCount", 0))

    def check_bucket(self) -> None:
        """Check the bucket exists and the credentials may list it (before anything is written).

        Raises:
            InputError: no such bucket, or the credentials are refused (exit 3).
            StorageUnreachableError: the endpoint does not answer (exit 5).
        """
        try:
            self._client().head_bucket(Bucket=self.bucket)
        except Exception as e:  # noqa: BLE001 (classified)
            raise self.error(e, "") from None

    # --- writes ----------------------------------------------------------------------------------

    def put(self, name: str, data: bytes) -> str:
        """Write ``name`` (atomic: whole or absent); return its ETag."""
        try:
            r = self._client().put_object(Bucket=self.bucket, Key=self.key(name), Body=data)
        except Exception as e:  # noqa: BLE001 (classified)
            raise self.error(e, name) from None
        return str(r.get("ETag", ""))

    def put_if_absent(self, name: str, data: bytes) -> str | None:
        """Create ``name`` only if no object has that key (``If-None-Match: *``); its ETag, or None."""
        try:
            r = self._client().put_object(Bucket=self.bucket, Key=self.key(name), Body=data, IfNoneMatch="*")
        except Exception as e:  # noqa: BLE001 (classified)
            if _code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return None
            raise self.error(e, name) from None
        return str(r.get("ETag", ""))

    def put_if_match(self, name: str, data: bytes, etag: str) -> str | None:
        """Replace ``name`` only if its ETag is still ``etag`` (``If-Match``); the new ETag, or None."""
        try:
            r = self._client().put_object(Bucket=self.bucket, Key=self.key(name), Body=data, IfMatch=etag)
        except Exception as e:  # noqa: BLE001 (classified)
            if _code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "404", "NoSuchKey"):
                return None
            raise self.error(e, name) from None
        return str(r.get("ETag", ""))

    def delete(self, name: str, etag: str | None = None) -> bool:
        """Delete ``name`` (only if its ETag is ``etag``, when given); False when that did not hold."""
        kw = {"IfMatch": etag} if etag else {}
        try:
            self._client().delete_object(Bucket=self.bucket, Key=self.key(name), **kw)
        except Exception as e:  # noqa: BLE001 (classified)
            if _code(e) in ("PreconditionFailed", "412", "404", "NoSuchKey"):
                return False
            raise self.error(e, name) from None
        return True

    def delete_all(self, names: list[str]) -> int:
        """Delete ``names`` in batches of 1000; return how many were asked."""
        for i in range(0, len(names), _DELETE_BATCH):
            batch = [{"Key": self.key(n)} for n in names[i : i + _DELETE_BATCH]]
            try:
                self._client().delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as e:  # noqa: BLE001 (classified)
                raise self.error(e, names[i]) from None
        return len(names)

    def delete_under(self, under: str) -> int:
        """Delete ``under`` and every object below it (a top-level name)."""
        return self.delete_all([f"{under}/{n}" for n in self.sizes(under)] + [under])

    # --- zarr ------------------------------------------------------------------------------------

    def zarr_store(self, read_only: bool = False) -> Any:
        """Return a zarr ``ObjectStore`` over this prefix (obstore ``S3Store``, the same credentials)."""
        from obstore.store import S3Store
        from zarr.storage import ObjectStore

        conn = objects.connection()
        kw: dict[str, Any] = {"region": conn.region or "us-east-1"}
        if conn.endpoint is not None:
            kw["endpoint"] = conn.endpoint
            kw["client_options"] = {"allow_http": conn.endpoint.startswith("http://"), "timeout": "60s"}
        if conn.signed:
            from obstore.auth.boto3 import Boto3CredentialProvider

            kw["credential_provider"] = Boto3CredentialProvider(conn.session)
        else:
            kw["skip_signature"] = True
        kw["retry_config"] = {"max_retries": 3, "retry_timeout": timedelta(seconds=60),
                              "backoff": {"init_backoff": timedelta(seconds=0.2), "max_backoff": timedelta(seconds=5),
                                          "base": 2.0}}  # fmt: skip
        return ObjectStore(S3Store(self.bucket, prefix=self.prefix, **kw), read_only=read_only)

    # --- errors ----------------------------------------------------------------------------------

    def error(self, exc: BaseException, name: str) -> Exception:
        """The one-line geofg error for a failed request on ``name`` (see the module docstring)."""
        from botocore.exceptions import ClientError

        url = self.url + (f"/{name}" if name else "")
        conn = objects.connection()
        where = conn.endpoint or "AWS S3"
        if not isinstance(exc, ClientError):
            return StorageUnreachableError(
                f"{url}: expected an S3 endpoint answering at {where}, found none ({type(exc).__name__}: "
                f"{_first_line(exc)}); check AWS_ENDPOINT_URL and that the object store is up, then run again")
        code, status = _code(exc), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int) and status >= 500:
            return StorageUnreachableError(
                f"{url}: expected an answer from the S3 endpoint at {where}, found HTTP {status} "
                f"({code or 'server error'}); the object store is failing: run again once it is up")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
            how = "were refused" if conn.signed else "are missing (no AWS credentials found)"
            what, may = ("a bucket readable", "read") if self.reads_only else ("an output bucket writable", "write")
            return InputError(
                f"{url}: expected {what} with the AWS credentials from the environment, "
                f"found that they {how} (HTTP {status}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                f"AWS_PROFILE to credentials allowed to {may} it; nothing was written")
        if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and not name):
            return InputError(f"{url}: expected an existing bucket '{self.bucket}' at {where}, found none; "
                              "create it or fix the bucket name; nothing was written")
        return InputError(f"{url}: expected a writable S3 prefix, found S3 error {code or status} "
                          f"({_first_line(exc)}); check the URL and the credentials")

    def _client(self) -> Any:
        return objects.connection().client


def _code(e: BaseException) -> str:
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return ""
    code = str(response.get("Error", {}).get("Code", ""))
    return code or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _stat(r: dict[str, Any]) -> Stat:
    headers = r.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    now = parsedate_to_datetime(headers["date"]) if "date" in headers else r["LastModified"]
    return Stat(str(r.get("ETag", "")), int(r.get("ContentLength", 0)), r["LastModified"], now)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__

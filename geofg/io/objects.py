"""Inputs on S3 object storage: ``s3://`` URLs, one credential chain, GDAL's remote-read settings.

A user gives ``s3://bucket/key.tif`` (or a STAC item whose assets live there, :mod:`geofg.io.stac`).
geofg keeps the object internally as GDAL's ``/vsis3/bucket/key`` (:func:`gdal_path`) and reads it
windowed through rasterio, exactly like a local file. Users can never pass ``/vsi…`` strings
themselves (:func:`geofg.io.paths.check_not_remote`); only :func:`parse_s3_url` makes them.

Credentials and endpoint come from the standard AWS chain, resolved once by boto3 and handed to
GDAL, so preflight (HEAD) and the reads agree: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the shared config/credentials files, web identity
(Kubernetes service accounts) and the instance role. ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (or ``endpoint_url`` in the profile) select another S3 service (MinIO,
SeaweedFS, Ceph); geofg maps the resolved endpoint onto GDAL's ``AWS_S3_ENDPOINT`` (host:port),
``AWS_HTTPS`` (NO for ``http://``) and ``AWS_VIRTUAL_HOSTING=FALSE`` (path-style requests). With no
credentials at all, requests go unsigned (public buckets). Credentials are never logged or
written into provenance: an input's record holds its ``s3://`` path, size and ETag only.

Errors map to exit codes like local files: a refused key, a missing bucket or object is an
:class:`~geofg.errors.InputError` (3); an endpoint that does not answer is a
:class:`~geofg.errors.StorageUnreachableError` (5).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import rasterio

from geofg.errors import ForbiddenPathError, InputError, RasterNotFoundError, StorageUnreachableError

VSI_PREFIX = "/vsis3/"
#: GDAL settings for reading COGs over HTTP (on top of geofg's local-read options): one GET per
#: merged range, no directory listing, a bounded per-file block cache, retries with back-off.
REMOTE_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no LIST requests for sidecar files
    "GDAL_HTTP_MULTIRANGE": "YES",  # several block ranges in one request where the server can
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(32 * 2**20),  # per open file, bounded
    "CPL_VSIL_CURL_CACHE_SIZE": str(64 * 2**20),  # the /vsicurl/ region cache, process-wide
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.jp2,.TIF,.TIFF,.JP2",
    "CPL_VSIL_CURL_USE_HEAD": "NO",  # preflight already did the HEAD (size, ETag)
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "AWS_NO_SIGN_REQUEST": "NO",
}
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
#: ``https://BUCKET.s3[.-]REGION.amazonaws.com/KEY`` (virtual-hosted S3): the same object as s3://
_AWS_HOSTED = re.compile(r"^(?P<bucket>[a-z0-9][a-z0-9.\-]+)\.s3[.\-](?:[a-z0-9\-]+\.)?amazonaws\.com$")
_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION",
             "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
             "AWS_NO_SIGN_REQUEST")  # fmt: skip


def is_s3_url(raw: str) -> bool:
    """Return True for a string starting ``s3://`` (case-insensitive)."""
    return raw.strip().lower().startswith("s3://")


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Return True for an internal ``/vsis3/`` path made by :func:`parse_s3_url`."""
    return os.fspath(path).startswith(VSI_PREFIX)


def parse_s3_url(raw: str) -> tuple[str, str]:
    """Return ``(bucket, key)`` of ``s3://bucket/key``.

    Raises:
        ForbiddenPathError: not an ``s3://bucket/key`` URL with a valid bucket name and a key.

    Examples:
        >>> parse_s3_url("s3://sentinel-cogs/a/B02.tif")
        ('sentinel-cogs', 'a/B02.tif')
    """
    parts = urlsplit(raw.strip())
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if parts.scheme.lower() != "s3" or not _BUCKET.match(bucket) or not key or parts.query or parts.fragment:
        raise ForbiddenPathError(
            f"{raw}: expected s3://BUCKET/KEY (bucket 3-63 lower-case letters, digits, '.', '-'; "
            "a key; no query), found something else; fix the URL"
        )
    if "\x00" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise ForbiddenPathError(f"{raw}: expected an object key without empty, '.' or '..' parts; "
                                 "fix the URL")  # fmt: skip
    return bucket, key


def gdal_path(raw: str) -> str:
    """Return GDAL's ``/vsis3/bucket/key`` for ``s3://bucket/key`` (validated)."""
    bucket, key = parse_s3_url(raw)
    return f"{VSI_PREFIX}{bucket}/{key}"


def s3_url(path: str | os.PathLike[str]) -> str:
    """Return ``s3://bucket/key`` for an internal ``/vsis3/bucket/key`` path (for messages)."""
    text = os.fspath(path)
    return "s3://" + text[len(VSI_PREFIX):] if is_remote(text) else text


def https_to_s3(href: str) -> str | None:
    """Return ``s3://bucket/key`` for a virtual-hosted AWS S3 https URL, else None.

    Earth Search's Sentinel-2 L2A items point at ``https://sentinel-cogs.s3.us-west-2.amazonaws.com/…``,
    which is the object ``s3://sentinel-cogs/…``; geofg reads it through the S3 API (credentials,
    endpoint and retries as for any s3:// input) and never through plain HTTP.

    Examples:
        >>> https_to_s3("https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/B02.tif")
        's3://sentinel-cogs/x/B02.tif'
        >>> https_to_s3("https://example.com/B02.tif") is None
        True
    """
    parts = urlsplit(href)
    match = _AWS_HOSTED.match(parts.hostname or "")
    if parts.scheme != "https" or match is None or parts.query or not parts.path.strip("/"):
        return None
    return f"s3://{match.group('bucket')}/{parts.path.lstrip('/')}"


@dataclass(frozen=True)
class Connection:
    """The resolved S3 connection: a boto3 client and the matching GDAL options (no secrets kept)."""

    client: Any
    session: Any
    """The boto3 session the client came from (obstore's credential provider for the mosaic on S3)."""
    endpoint: str | None  # a non-AWS endpoint URL, None for AWS itself
    signed: bool
    region: str | None
    gdal_session: Any
    """A rasterio ``AWSSession`` over the same boto3 session: each ``rasterio.Env`` entry takes its
    current credentials (refreshed by boto3 when they expire). Made once: a boto3 session costs
    about 40 ms, and readers enter the environment around every read."""

    def gdal_options(self) -> dict[str, str]:
        """Return GDAL options for this endpoint (path-style, http when the URL says so)."""
        if self.endpoint is None:
            return {}
        return {"AWS_HTTPS": "NO" if self.endpoint.startswith("http://") else "YES",
                "AWS_VIRTUAL_HOSTING": "FALSE"}  # fmt: skip


def _host(endpoint: str | None) -> str | None:
    return None if endpoint is None else urlsplit(endpoint).netloc


def _boto_session() -> Any:
    try:
        import boto3
    except ImportError:  # pragma: no cover (boto3 is a dependency)
        raise InputError("s3:// inputs need boto3: pip install boto3") from None
    return boto3.Session()


_lock = threading.Lock()
_connections: dict[tuple[Any, ...], Connection] = {}
_etags: dict[str, str] = {}  # the ETag :func:`head` last saw per /vsis3/ path (this process)


def connection() -> Connection:
    """Return the S3 connection for the current AWS environment (cached per process and env)."""
    key = (os.getpid(), *(os.environ.get(k) for k in _ENV_KEYS))
    with _lock:
        found = _connections.get(key)
        if found is not None:
            return found
        from botocore import UNSIGNED
        from botocore.config import Config

        session = _boto_session()
        signed = session.get_credentials() is not None
        config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"},
                        max_pool_connections=32,  # the S3 ledger loads records on 16 threads
                        s3={"addressing_style": "path"}, **({} if signed else {"signature_version": UNSIGNED}))  # fmt: skip
        client = session.client("s3", config=config)
        url = client.meta.endpoint_url
        host = urlsplit(url).hostname or ""
        custom = not (host == "amazonaws.com" or host.endswith(".amazonaws.com"))
        from rasterio.session import AWSSession

        endpoint = url if custom else None
        gdal = AWSSession(session=session, aws_unsigned=not signed, region_name=session.region_name,
                          endpoint_url=_host(endpoint))  # fmt: skip
        found = Connection(client, session, endpoint, signed, session.region_name, gdal)
        _connections[key] = found
        return found


def gdal_env(cache_bytes: int, base_options: dict[str, str]) -> rasterio.Env:
    """Return the ``rasterio.Env`` for reading ``/vsis3/`` inputs: ``base_options`` + remote ones."""
    conn = connection()
    options = {**base_options, **REMOTE_OPTIONS, **conn.gdal_options()}
    return rasterio.Env(session=conn.gdal_session, GDAL_CACHEMAX=cache_bytes, **options)


def _gdal_library() -> Any:
    """Return GDAL's C library as rasterio loaded it (ctypes), or None when it cannot be found."""
    import ctypes
    import glob

    here = os.path.dirname(rasterio.__file__)
    found = glob.glob(os.path.join(here, os.pardir, "rasterio.libs", "libgdal*.so*"))
    if not found:  # a rasterio built against a system GDAL: the one this process mapped
        try:
            with open("/proc/self/maps") as maps:
                found = sorted({ln.split()[-1] for ln in maps if "libgdal" in ln and ln.split()[-1].startswith("/")})
        except OSError:
            found = []
    if not found:
        return None
    try:
        return ctypes.CDLL(found[0])  # already loaded: dlopen returns the same library
    except OSError:
        return None


def clear_cache(path: str) -> None:
    """Drop what GDAL's ``/vsicurl/`` cache holds for one object (best effort).

    A request that failed (the endpoint down, HTTP 5xx) leaves empty regions in GDAL's
    process-wide cache, so the same process would keep failing on those blocks after the store is
    back (seen in tests/s3/test_s3_restart.py): a Ray actor retrying a unit, or a re-run in one
    process. ``VSICurlPartialClearCache`` (GDAL C API) forgets the object; rasterio has no wrapper.
    """
    import ctypes

    lib = _gdal_library()
    if lib is None:
        return
    func = lib.VSICurlPartialClearCache
    func.argtypes, func.restype = [ctypes.c_char_p], None
    func(os.fspath(path).encode())


@dataclass(frozen=True)
class ObjectState:
    """What identifies an object's content: its size and ETag (and when it was last written)."""

    size: int
    etag: str
    mtime_ns: int


def _fail(url: str, exc: Exception, what: str) -> Exception:
    from botocore.exceptions import ClientError, EndpointConnectionError, ConnectTimeoutError

    conn = connection()
    where = conn.endpoint or "AWS S3"
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return StorageUnreachableError(
            f"{url}: expected an S3 endpoint answering at {where}, found none ({exc}); check "
            "AWS_ENDPOINT_URL and that the object store is up, then run again"
        )
    if not isinstance(exc, ClientError):
        return StorageUnreachableError(f"{url}: expected an answer from {where}, found an error "
                                       f"({type(exc).__name__}: {exc}); run again")  # fmt: skip
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if isinstance(status, int) and status >= 500:
        return StorageUnreachableError(
            f"{url}: expected an answer from the S3 endpoint at {where}, found HTTP {status} "
            f"({code or 'server error'}); the object store is failing: run again once it is up"
        )
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
        how = "were refused" if conn.signed else "are missing (no AWS credentials found)"
        return InputError(
            f"{url}: expected {what} readable with the AWS credentials from the environment, "
            f"found that they {how} (HTTP {status}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "or AWS_PROFILE to credentials allowed to read it"
        )
    if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
        bucket, key = parse_s3_url(url)
        if not bucket_exists(bucket):
            return RasterNotFoundError(f"{url}: expected an existing bucket '{bucket}' at {where}, "
                                       "found none; check the bucket name and AWS_ENDPOINT_URL")  # fmt: skip
        return RasterNotFoundError(f"{url}: expected an existing object, found no key '{key}' "
                                   f"in bucket '{bucket}'; check the path")  # fmt: skip
    return InputError(f"{url}: expected {what}, found S3 error {code or status}: "
                      f"{exc.response.get('Error', {}).get('Message', '')}; check the URL")  # fmt: skip


def bucket_exists(bucket: str) -> bool:
    """Return False only when the server says the bucket does not exist (404)."""
    from botocore.exceptions import ClientError

    try:
        connection().client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        return str(exc.response.get("Error", {}).get("Code", "")) not in ("404", "NoSuchBucket", "NotFound")
    except Exception:  # noqa: BLE001 (unreachable: the caller's error says so)
        return True
    return True


def head(path: str) -> ObjectState:
    """HEAD the object of ``s3://…`` or ``/vsis3/…``: its size, ETag and last-modified time.

    Raises:
        InputError: credentials refused or missing, no such bucket or key (exit 3).
        StorageUnreachableError: the endpoint does not answer (exit 5).
    """
    url = s3_url(path)
    bucket, key = parse_s3_url(url)
    try:
        meta = connection().client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:  # noqa: BLE001 (classified below)
        raise _fail(url, exc, "an object") from None
    modified = meta.get("LastModified")
    state = ObjectState(int(meta["ContentLength"]), str(meta.get("ETag", "")).strip('"'),
                        int(modified.timestamp() * 1e9) if modified is not None else 0)  # fmt: skip
    vsi = gdal_path(url)
    with _lock:
        before = _etags.get(vsi)
        _etags[vsi] = state.etag
    if before is not None and before != state.etag:
        # rewritten under the same key since this process last looked: GDAL's process-wide
        # /vsicurl/ cache would otherwise serve blocks of the old content (a scan's changed object;
        # seen in tests/s3/test_s3_scan.py). GDAL keys that cache by the endpoint's URL, so the
        # endpoint options must be set while it is cleared.
        conn = connection()
        with rasterio.Env(session=conn.gdal_session, **conn.gdal_options()):
            clear_cache(vsi)
    return state


def get_bytes(url: str, limit: int) -> bytes:
    """Return the body of a small object (a STAC item), refusing more than ``limit`` bytes.

    Raises:
        InputError, StorageUnreachableError: as :func:`head`; or the object is over ``limit``.
    """
    state = head(url)
    if state.size > limit:
        raise InputError(f"{url}: expected a JSON document under {limit // 2**20} MiB, found "
                         f"{state.size:,} bytes; pass the STAC item itself")  # fmt: skip
    bucket, key = parse_s3_url(url)
    try:
        return connection().client.get_object(Bucket=bucket, Key=key)["Body"].read(limit + 1)
    except Exception as exc:  # noqa: BLE001 (classified below)
        raise _fail(url, exc, "an object") from None

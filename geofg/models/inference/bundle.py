"""Model bundles: one ``.safetensors`` file whose header metadata holds the model card.

Layout (the safetensors format): 8 bytes little-endian header length ``n``, ``n`` bytes of JSON
header (tensor names -> dtype, shape, data offsets; plus ``__metadata__``, a str -> str map where
:data:`CARD_KEY` holds the card as JSON), then the raw tensor bytes.

Safety rules, applied by :func:`read_card` before anything is deserialised:

* only files named ``*.safetensors`` are opened; ``.pt``/``.pth``/``.bin``/``.ckpt``/``.pkl`` and
  anything else are refused (:class:`~geofg.errors.UnsafeWeightsFormatError`);
* the first bytes are sniffed: a pickle (``\\x80`` + protocol byte) or a zip (``PK``, the
  ``torch.save`` format) is refused even when named ``.safetensors``;
* the header is parsed here with ``json`` and checked completely (length within the file, every
  tensor's offsets inside the data section, sizes matching dtype x shape) so that truncated or
  hostile files fail with :class:`~geofg.errors.WeightsError` naming the file;
* if ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set (it re-enables unpickling in ``torch.load``), every
  bundle is refused.

Nothing in geofg ever calls ``torch.load`` or ``pickle``. This module does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from geofg.errors import (
    ConfigError,
    UnsafeWeightsFormatError,
    WeightsChecksumError,
    WeightsError,
)
from geofg.io.atomic import atomic_write
from geofg.models.inference.card import ModelCard

__all__ = [
    "CARD_KEY",
    "bundle_sha256",
    "load_tensors",
    "read_card",
    "verify_checksum",
    "write_bundle",
]

log = logging.getLogger(__name__)

CARD_KEY = "geofg.card"
"""Key in the safetensors ``__metadata__`` map that holds the model card as JSON."""

BUNDLE_SUFFIX = ".safetensors"
PICKLED_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar", ".zip"})
UNSAFE_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors reference limit
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_NUMPY_DTYPES = frozenset({"BOOL", "U8", "I8", "I16", "U16", "F16", "I32", "U32", "F32", "I64",
                           "U64", "F64"})  # fmt: skip


def _fail(path: Path, expected: str, found: str, fix: str) -> WeightsError:
    return WeightsError(f"{path}: expected {expected}, found {found}; {fix}")


def _check_environment() -> None:
    if os.environ.get(UNSAFE_ENV):
        raise WeightsError(
            f"environment variable {UNSAFE_ENV} is set, which re-enables unpickling in torch.load;"
            f" geofg refuses to load weights in this environment; unset {UNSAFE_ENV}"
        )


def _looks_like_pickle_or_zip(head: bytes) -> str | None:
    """Return a description if ``head`` starts like a pickle or a zip archive, else None."""
    if head[:2] == b"PK":
        return "a zip archive (torch.save checkpoint)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a pickle (protocol {head[1]})"
    return None


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Check and parse the safetensors header of ``path``.

    Returns:
        The header dict and the byte offset where the data section starts.

    Raises:
        WeightsError: The file is missing, unsafe, truncated or inconsistent.
    """
    _check_environment()
    suffix = path.suffix.lower()
    if suffix in PICKLED_SUFFIXES:
        raise UnsafeWeightsFormatError(
            f"{path}: pickled checkpoints are refused; convert to .safetensors"
            " (e.g. safetensors.torch.save_file(state_dict, 'model.safetensors') in a trusted"
            " environment) and add a geofg model card"
        )
    if suffix != BUNDLE_SUFFIX:
        raise UnsafeWeightsFormatError(
            f"{path}: expected a .safetensors file, found extension {suffix or '(none)'!r};"
            " only safetensors bundles are loaded; convert the weights to .safetensors"
        )
    if not path.exists():
        raise _fail(path, "a .safetensors model bundle", "no such file",
                    "give an existing path or an installed bundle name (geofg models list)")
    if not path.is_file():
        raise _fail(path, "a .safetensors file", "a directory or special file",
                    "give the path of the bundle file itself")
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _fail(path, "an 8-byte safetensors header length", f"a {size}-byte file",
                        "the file is truncated; copy or re-download the bundle")
        (n,) = struct.unpack("<Q", head)
        first = fh.read(1)
        plausible = 2 <= n <= size - 8 and n <= _MAX_HEADER_BYTES and first == b"{"
        unsafe = _looks_like_pickle_or_zip(head)
        if unsafe and not plausible:
            raise UnsafeWeightsFormatError(
                f"{path}: expected safetensors, found {unsafe}; pickled checkpoints are refused;"
                " convert to .safetensors"
            )
        if n > _MAX_HEADER_BYTES:
            raise _fail(path, f"a header length <= {_MAX_HEADER_BYTES} bytes",
                        f"{n} bytes", "the file is corrupt or not safetensors; rebuild the bundle")
        if n + 8 > size:
            raise _fail(path, f"a header of {n} bytes after the 8-byte length",
                        f"a file of only {size} bytes (truncated)",
                        "copy or re-download the bundle")
        if first != b"{":
            raise _fail(path, "a JSON header starting with '{'", f"byte {first!r}",
                        "the file is corrupt or not safetensors; rebuild the bundle")
        raw = first + fh.read(n - 1)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(path, "a JSON safetensors header", f"unparsable bytes ({err.__class__.__name__}:"
                    f" {str(err).splitlines()[0]})", "the file is corrupt; rebuild the bundle"
                    ) from None
    if not isinstance(header, dict):
        raise _fail(path, "a JSON object as header", type(header).__name__,
                    "the file is corrupt; rebuild the bundle")
    _check_tensor_entries(path, header, data_bytes=size - 8 - n)
    return header, 8 + n


def _check_tensor_entries(path: Path, header: dict[str, Any], data_bytes: int) -> None:
    """Check every tensor entry: known dtype, non-negative shape, offsets inside the data section."""
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise _fail(path, f"tensor {name!r} with dtype, shape and data_offsets",
                        repr(entry)[:80], "the file is corrupt; rebuild the bundle")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPE_BYTES:
            raise _fail(path, f"a known dtype for tensor {name!r}", repr(dtype),
                        "rebuild the bundle with standard dtypes")
        if (not isinstance(shape, list)
                or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and o >= 0 for o in offsets)):
            raise _fail(path, f"integer shape and data_offsets for tensor {name!r}",
                        f"shape={shape!r} data_offsets={offsets!r}",
                        "the file is corrupt; rebuild the bundle")
        begin, end = offsets
        want = math.prod(shape) * _DTYPE_BYTES[dtype]
        if end > data_bytes:
            raise _fail(path, f"tensor {name!r} to lie inside the file's {data_bytes} data bytes",
                        f"data_offsets [{begin}, {end}] ({want} bytes claimed)",
                        "the file is truncated or hostile; copy or rebuild the bundle")
        if end - begin != want or begin > end:
            raise _fail(path, f"{want} bytes for tensor {name!r} ({dtype} {shape})",
                        f"data_offsets [{begin}, {end}]", "the file is corrupt; rebuild the bundle")
        spans.append((begin, end, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise _fail(path, f"tensor {name!r} to start at data byte {cursor}",
                        f"byte {begin} (gap or overlap)", "the file is corrupt; rebuild the bundle")
        cursor = end
    if cursor != data_bytes:
        raise _fail(path, f"tensors covering all {data_bytes} data bytes",
                    f"{cursor} bytes covered", "the file is corrupt; rebuild the bundle")


def read_card(path: str | Path) -> ModelCard:
    """Read and validate the model card of a bundle, without deserialising any tensor.

    Args:
        path: Path to a ``.safetensors`` bundle.

    Returns:
        The bundle's :class:`ModelCard`.

    Raises:
        UnsafeWeightsFormatError: Not a ``.safetensors`` file, or its bytes are a pickle or zip.
        WeightsError: Missing, truncated or corrupt file, no card, an invalid card, or
            ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set in the environment.
    """
    path = Path(path)
    header, _ = _read_header(path)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or CARD_KEY not in meta:
        raise _fail(path, f"a model card in the header metadata key {CARD_KEY!r}",
                    "no card", "this is plain safetensors, not a geofg bundle; add a card with"
                    " geofg.models.inference.bundle.write_bundle")
    if not isinstance(meta[CARD_KEY], str):
        raise _fail(path, f"the card under {CARD_KEY!r} as a JSON string",
                    type(meta[CARD_KEY]).__name__, "rebuild the bundle")
    try:
        return ModelCard.from_json(meta[CARD_KEY])
    except ConfigError as err:
        raise WeightsError(f"{path}: {err}") from None


def bundle_sha256(path: str | Path) -> str:
    """Return the hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str | Path, expected_sha256: str) -> None:
    """Check the file's sha256 against ``expected_sha256``.

    Raises:
        WeightsChecksumError: The digests differ.
        WeightsError: The file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "a bundle file to checksum", "no such file", "reinstall geofg")
    found = bundle_sha256(path)
    if found.lower() != expected_sha256.lower():
        raise WeightsChecksumError(
            f"{path}: expected sha256 {expected_sha256}, found {found}; the file was modified or"
            " damaged; reinstall it or rebuild it and update MANIFEST.json"
        )


def write_bundle(path: str | Path, tensors: dict[str, np.ndarray], card: ModelCard) -> str:
    """Write ``tensors`` and ``card`` to a bundle atomically (temp file, fsync, rename).

    Args:
        path: Destination, must end in ``.safetensors``.
        tensors: Name -> array (any safetensors-supported numpy dtype).
        card: The model card stored in the header metadata under :data:`CARD_KEY`.

    Returns:
        The hex sha256 of the written file.

    Raises:
        ConfigError: The destination does not end in ``.safetensors``.
    """
    from safetensors.numpy import save

    path = Path(path)
    if path.suffix != BUNDLE_SUFFIX:
        raise ConfigError(f"bundle path must end in {BUNDLE_SUFFIX}, found {path.name!r}")
    # np.ascontiguousarray would turn 0-d tensors (BatchNorm's num_batches_tracked) into shape (1,)
    arrays = {k: np.array(v, order="C", copy=None) for k, v in tensors.items()}
    blob = save(arrays, metadata={CARD_KEY: card.to_json()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, blob)
    return hashlib.sha256(blob).hexdigest()


def load_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Load every tensor of a bundle as numpy arrays, after :func:`read_card`'s checks.

    Raises:
        WeightsError: As :func:`read_card`, or a tensor dtype numpy cannot hold (e.g. BF16).
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    header, _ = _read_header(path)
    odd = sorted({e["dtype"] for k, e in header.items()
                  if k != "__metadata__" and e["dtype"] not in _NUMPY_DTYPES})
    if odd:
        raise _fail(path, "numpy-compatible tensor dtypes (F16/F32/...)", f"{odd}",
                    "re-save the weights as float16 or float32")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise _fail(path, "a readable safetensors file", str(err).splitlines()[0],
                    "rebuild the bundle") from None

"""Write a file all at once or not at all: a temp file beside it, fsync, rename, fsync the folder.

Readers of ``path`` see either the old file or the new one, never a half-written one, and a crash
or an exception leaves nothing behind but the old file (the temp file is removed on error; a
SIGKILL can leave a hidden ``.NAME.*.partial`` file, never a damaged ``NAME``). The temp file is
in the same folder (``os.replace`` is atomic only within one filesystem) and gets the permissions
``open()`` would give (``0o666`` minus the umask; ``mkstemp`` makes ``0o600``).

* :func:`atomic_write` for bytes or text in memory;
* :func:`atomic_path` for writers that need a path (PIL, GDAL, onnx, a CSV writer): the block
  writes to the yielded temp path, which keeps ``path``'s suffix so format drivers see it.

Not for the ledger and the run lock (``io/ledger.py``, ``io/lock.py``), which need ``O_EXCL`` and
compare-and-swap semantics of their own.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write", "fsync_dir"]


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder so that a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit make it ``path`` (fsync, rename).

    On an exception in the block (or in the fsync/rename) the temp file is removed and the
    exception propagates; ``path`` is untouched. The folder must exist.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + path.suffix, dir=path.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        fd = -1
        yield tmp
        with open(tmp, "rb") as fh:  # the writer may have replaced the file: sync what is there
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically and durably."""
    blob = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)

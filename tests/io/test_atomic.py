"""geofg.io.atomic: the one write-to-temp-then-rename helper."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from geofg.io import atomic
from geofg.io.atomic import atomic_path, atomic_write


def test_atomic_write_replaces_fsyncs_file_and_folder_and_leaves_no_temp(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        assert Path(src).read_bytes() == b'{"a": 1}'  # complete before it takes the name
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    (src, dst), = replaced
    assert Path(src).parent == tmp_path and Path(src).name.startswith(".report.json.") and dst == str(target)
    assert synced[0] == src and synced[-1] == str(tmp_path)  # the data before the rename, the folder after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_permissions_are_those_of_open_not_mkstemps_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "b.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o644


@pytest.mark.parametrize("where", ["in the block", "at the rename"])
def test_an_error_leaves_the_old_file_and_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       where: str) -> None:
    target = tmp_path / "out.tif"
    target.write_bytes(b"old")
    if where == "at the rename":
        def fail(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".tif" and tmp.parent == tmp_path  # drivers see the format
            tmp.write_bytes(b"half")
            if where == "in the block":
                raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_a_writer_that_replaces_the_temp_file_is_still_synced_and_renamed(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "m.onnx") as tmp:
        tmp.unlink()  # as onnx.save / GDAL may: delete and create anew
        tmp.write_bytes(b"new")
    assert (tmp_path / "m.onnx").read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]

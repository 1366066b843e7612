"""Writing mosaic regions: the same values as zarr's own assignment, fill-only chunks left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.core.buffer.core import NDBuffer

from geofg.io.mosaic import FILL, KEY_ENCODING, ZARR_FORMAT, write_region


def _array(path: Path, shape: tuple[int, ...] = (8, 8), chunks: tuple[int, ...] = (4, 4)) -> zarr.Array:
    return zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint8", fill_value=FILL,
                             zarr_format=ZARR_FORMAT, chunk_key_encoding=KEY_ENCODING)  # as in a mosaic


def _chunk_files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")}


def test_values_read_back_as_zarr_writes_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ours, theirs = _array(tmp_path / "ours"), _array(tmp_path / "theirs")
    for region, shape in [((slice(0, 4), slice(0, 8)), (4, 8)), ((slice(4, 8), slice(4, 8)), (4, 4)),
                          ((slice(0, 4), slice(4, 8)), (4, 4))]:  # fmt: skip
        value = rng.choice(np.array([0, 3, 7, FILL], np.uint8), size=shape)
        write_region(ours, region, value)
        theirs[region] = value
    np.testing.assert_array_equal(ours[:], theirs[:])
    assert ours[4:8, 0:4].tolist() == [[FILL] * 4] * 4  # never written


def test_fill_only_value_stores_no_chunk_and_removes_an_old_one(tmp_path: Path) -> None:
    arr = _array(tmp_path / "a")
    write_region(arr, (slice(0, 4), slice(0, 4)), np.full((4, 4), 2, np.uint8))
    assert _chunk_files(tmp_path / "a") == {"0/0"}
    write_region(arr, (slice(0, 4), slice(0, 4)), np.full((4, 4), FILL, np.uint8))
    assert _chunk_files(tmp_path / "a") == set()
    assert (arr[:] == FILL).all()


def test_a_value_with_data_skips_zarrs_fill_comparison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # zarr's comparison copies the chunk several times over; it is half the CPU of a unit's write
    arr = _array(tmp_path / "a")

    def compared(self: NDBuffer, other: object, equal_nan: bool = True) -> bool:
        raise AssertionError("zarr compared a chunk holding data with the fill value")

    monkeypatch.setattr(NDBuffer, "all_equal", compared)
    value = np.full((4, 8), FILL, np.uint8)
    value[0, 0] = 1  # the second chunk of the region is all fill: stored, not left out
    write_region(arr, (slice(0, 4), slice(0, 8)), value)
    assert _chunk_files(tmp_path / "a") == {"0/0", "0/1"}
    np.testing.assert_array_equal(arr[0:4, :], value)


def test_time_slices_and_int32_fill(tmp_path: Path) -> None:
    arr = zarr.create_array(str(tmp_path / "t"), shape=(2, 4, 4), chunks=(1, 4, 4), dtype="int32",
                            fill_value=-(2**31), zarr_format=ZARR_FORMAT, chunk_key_encoding=KEY_ENCODING)  # fmt: skip
    write_region(arr, (1, slice(0, 4), slice(0, 4)), np.full((4, 4), 19000, np.int32))
    write_region(arr, (0, slice(0, 4), slice(0, 4)), np.full((4, 4), -(2**31), np.int32))
    assert _chunk_files(tmp_path / "t") == {"1/0/0"}
    assert (arr[1] == 19000).all() and (arr[0] == -(2**31)).all()

"""Properties of the pure tiling math (geofg.grid)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geofg.errors import ConfigError
from geofg.grid import Window, chunk_count, plan_tiles, plan_units, tile_offsets

SIZE = st.integers(1, 300)
CHUNK = st.integers(3, 128)
HALO = st.integers(0, 40)
TILE = st.integers(2, 96)


@given(SIZE, SIZE, CHUNK, HALO)
def test_cores_partition_the_raster(h: int, w: int, chunk: int, halo: int) -> None:
    hits = np.zeros((h, w), dtype=np.int32)
    for u in plan_units(h, w, chunk, halo):
        c = u.core
        assert 0 <= c.row_off and c.row_end <= h and 0 <= c.col_off and c.col_end <= w
        hits[c.row_off : c.row_end, c.col_off : c.col_end] += 1
    assert (hits == 1).all()


@given(SIZE, SIZE, CHUNK, HALO)
def test_each_unit_owns_exactly_one_chunk(h: int, w: int, chunk: int, halo: int) -> None:
    units = plan_units(h, w, chunk, halo)
    assert len(units) == chunk_count(h, chunk) * chunk_count(w, chunk)
    seen = set()
    for u in units:
        # the core starts on a chunk boundary and stays inside that chunk
        assert u.core.row_off % chunk == 0 and u.core.col_off % chunk == 0
        assert u.core.height <= chunk and u.core.width <= chunk
        assert (u.row, u.col) == (u.core.row_off // chunk, u.core.col_off // chunk)
        assert (u.row, u.col) not in seen
        seen.add((u.row, u.col))
        # read = core + halo on every side
        assert u.read == u.core.grow(halo)
        assert u.core.intersection(u.read) == u.core


@given(st.integers(1, 500), TILE, st.data())
def test_tiles_cover_axis_and_end_at_edge(length: int, tile: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    offs = tile_offsets(length, tile, overlap)
    if length <= tile:
        assert offs == [0]
        return
    assert offs[0] == 0 and offs[-1] + tile == length
    import math

    assert len(offs) == math.ceil((length - tile) / (tile - overlap)) + 1
    for a, b in zip(offs, offs[1:]):
        assert 0 < b - a <= tile - overlap  # overlap at least `overlap`, no gaps


@given(st.integers(1, 200), st.integers(1, 200), TILE, st.data())
def test_tiles_cover_every_pixel(h: int, w: int, tile: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    cover = np.zeros((max(h, tile), max(w, tile)), dtype=bool)
    for t in plan_tiles(h, w, tile, overlap):
        cover[t.row_off : t.row_end, t.col_off : t.col_end] = True
    assert cover[:h, :w].all()


def test_edge_cases_pinned() -> None:
    # 1x1 raster, raster smaller than one chunk, size = chunk + 1
    (u,) = plan_units(1, 1, 512, 32)
    assert u.core == Window(0, 0, 1, 1) and u.read == Window(-32, -32, 65, 65)
    assert [x.core for x in plan_units(1, 513, 512, 0)] == [Window(0, 0, 1, 512), Window(0, 512, 1, 1)]
    assert tile_offsets(65, 64, 0) == [0, 1]


@pytest.mark.parametrize("args", [(0, 5, 4, 0), (5, 5, 0, 0), (5, 5, 4, -1)])
def test_bad_plans_raise_config_error(args: tuple[int, int, int, int]) -> None:
    with pytest.raises(ConfigError):
        plan_units(*args)


def test_bad_tile_overlap() -> None:
    with pytest.raises(ConfigError, match="overlap < tile"):
        tile_offsets(10, 4, 4)

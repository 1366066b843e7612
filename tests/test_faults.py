"""Faults and hostile inputs on `geofg classify` (issue 16; the matrix is docs/reliability.md).

Each case ends one of three ways: refused (exit 3, nothing touched), repaired (the affected units
redone, and said so), or stopped cleanly (one line, a documented exit code, the lock released, and
a re-run that resumes). Resumed mosaics are compared with numpy against a clean run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from geofg.cli import app
from geofg.config import build_job
from geofg.errors import GeofgError, InputError
from geofg.io.ledger import Ledger
from geofg.io.read import open_raster
from geofg.io.reader import RasterReader
from geofg.models.inference.tiny import ThresholdPredictor
from geofg.run import run_job
from rasters import S2_BANDS, s2_like, write_raster, write_threshold_bundle

LAYERS = ("class", "health", "confidence")
# Faults are the subject, not the model: the cheap packaged `eurosat-13`, no mask (the default
# model and its mask cost about ten times as much per unit; docs/models.md, "Speed")
CHEAP = ("--model", "eurosat-13", "--no-mask")
runner = CliRunner()


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, list(args), catch_exceptions=False)


def classify(inp: Path, out: Path, *extra: str):  # noqa: ANN201
    return invoke("classify", str(inp), "-o", str(out), "--chunk", "32", "--device", "cpu", "-q", *CHEAP, *extra)


def layers(out: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(out), mode="r", use_consolidated=False)
    return {n: g[n][:] for n in LAYERS}


def assert_equal(out: Path, expected: dict[str, np.ndarray]) -> None:
    got = layers(out)
    for n in LAYERS:
        np.testing.assert_array_equal(got[n], expected[n], err_msg=n)


def one_line_error(r, code: int) -> str:  # noqa: ANN001
    """The single `geofg: error:` line of a run that exited ``code`` (no traceback)."""
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    msg = r.stderr.strip()
    assert msg.startswith("geofg: error:") and len(msg.splitlines()) == 1, msg
    return msg


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", s2_like(96, 80, seed=4), descriptions=S2_BANDS)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, scene: Path) -> dict[str, np.ndarray]:
    """The mosaic of ``scene`` from a run without faults (3 x 3 units of 32 px)."""
    out = tmp_path_factory.mktemp("clean") / "clean.zarr"
    assert classify(scene, out).exit_code == 0
    return layers(out)


# --- 1. --overwrite removes only what geofg wrote ---------------------------------------------


def test_overwrite_refuses_an_input_inside_the_mosaic_and_touches_nothing(tmp_path: Path, scene: Path) -> None:
    """Issue 16 case 1: `classify m.zarr/scene.tif -o m.zarr --overwrite` deleted the input."""
    out = tmp_path / "m.zarr"
    assert classify(scene, out).exit_code == 0
    inside = out / "scene.tif"
    shutil.copy(scene, inside)
    (out / "NOTES.txt").write_text("field notes")
    before = snapshot(out)
    msg = one_line_error(classify(inside, out, "--overwrite"), 3)
    assert "scene.tif" in msg and "inside" in msg
    assert snapshot(out) == before


def test_overwrite_refuses_a_folder_holding_other_files_and_touches_nothing(tmp_path: Path, scene: Path) -> None:
    out = tmp_path / "m.zarr"
    assert classify(scene, out).exit_code == 0
    (out / "NOTES.txt").write_text("field notes")
    (out / "extra").mkdir()
    before = snapshot(out)
    msg = one_line_error(classify(scene, out, "--overwrite"), 3)
    assert "NOTES.txt" in msg and "extra" in msg
    assert snapshot(out) == before


def test_overwrite_of_a_pure_mosaic_replaces_it(tmp_path: Path, scene: Path, clean: dict) -> None:
    out = tmp_path / "m.zarr"
    other = write_raster(tmp_path / "other.tif", s2_like(96, 80, seed=9), descriptions=S2_BANDS)
    assert classify(other, out).exit_code == 0
    assert classify(scene, out, "--overwrite").exit_code == 0
    assert_equal(out, clean)


# --- 2. an input rewritten during the run -----------------------------------------------------

BANDS = ["B04", "B08"]


@pytest.fixture
def threshold_bundle(tmp_path: Path) -> Path:
    return write_threshold_bundle(tmp_path, BANDS)


def _tjob(inp: Path, out: Path, model: Path, **write):  # noqa: ANN003, ANN202
    return build_job({"read": {"inputs": [str(inp)]}, "tile": {"chunk": 16},
                      "model": {"model": str(model), "device": "cpu"},
                      "write": {"output": str(out), "quicklook": False, **write}})


def _trun(job):  # noqa: ANN001, ANN202
    return run_job(job, predictor_factory=lambda p: ThresholdPredictor(p.card))


def test_input_rewritten_in_place_mid_run_stops_with_exit_3_and_records_nothing_after(
        tmp_path: Path, threshold_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Case 2: same size, `dd conv=notrunc` style, after the 3rd unit's read; the old reader
    checked size and mtime only when it opened the file, so 72 units mixed old and new content."""
    rng = np.random.default_rng(1)
    old = rng.integers(1, 3000, (2, 64, 64)).astype("uint16")
    inp = write_raster(tmp_path / "in.tif", old, descriptions=BANDS, compress=None)
    new = (3000 - old).astype("uint16")
    reference = tmp_path / "ref-old.tif"
    shutil.copy(inp, reference)
    _trun(_tjob(reference, tmp_path / "ref-old.zarr", threshold_bundle))
    calls = [0]
    original = RasterReader.read

    def read(self, window):  # noqa: ANN001, ANN202
        calls[0] += 1
        if calls[0] == 3:  # before the 3rd read, "dd conv=notrunc": same size, new bytes, same inode
            ino, size = os.stat(inp).st_ino, os.stat(inp).st_size
            with open(inp, "r+b") as fh:
                fh.seek(size // 2)
                fh.write(new.tobytes()[:512])
            assert (os.stat(inp).st_ino, os.stat(inp).st_size) == (ino, size)
        return original(self, window)

    monkeypatch.setattr(RasterReader, "read", read)
    out = tmp_path / "out.zarr"
    with pytest.raises(InputError, match="changed during the run") as e:  # InputChangedError
        _trun(_tjob(inp, out, threshold_bundle))
    msg = str(e.value)
    assert e.value.exit_code == 3 and str(inp) in msg and len(msg.splitlines()) == 1
    assert not (out / ".geofg" / "lock").exists()
    recs = Ledger(out / ".geofg").load()
    assert len(recs) <= 2, "a unit read after the change was recorded"
    ref = layers(tmp_path / "ref-old.zarr")
    got = layers(out)
    for uid in recs:  # what was recorded came from the old content, byte for byte
        r, c = int(uid[1:5]), int(uid[7:])
        sl = (slice(16 * r, 16 * r + 16), slice(16 * c, 16 * c + 16))
        for n in LAYERS:
            np.testing.assert_array_equal(got[n][sl], ref[n][sl])


# --- 3. missing or damaged chunks ---------------------------------------------------------------


def _damage(out: Path, how: str) -> Path:
    chunk = out / "class" / "1" / "1"
    data = chunk.read_bytes()
    if how == "delete":
        chunk.unlink()
    elif how == "truncate":
        chunk.write_bytes(data[: len(data) // 2])
    else:  # a flipped byte: same size, caught by the crc32c codec when decoded
        chunk.write_bytes(data[:20] + bytes([data[20] ^ 0xFF]) + data[21:])
    return chunk


@pytest.mark.parametrize("how", ["delete", "truncate"])
def test_rerun_finds_a_missing_or_truncated_chunk_and_redoes_only_its_unit(
        tmp_path: Path, scene: Path, clean: dict, how: str) -> None:
    """Case 3: after `rm class/1/1` the re-run exited 0, did nothing, and `class` held fill."""
    out = tmp_path / "m.zarr"
    assert classify(scene, out).exit_code == 0
    before = Ledger(out / ".geofg").load()
    _damage(out, how)
    r = invoke("classify", str(scene), "-o", str(out), "--chunk", "32", "--device", "cpu", *CHEAP)
    assert r.exit_code == 0, r.output
    assert "repaired" in r.output and "r0001_c0001" in r.output
    after = Ledger(out / ".geofg").load()
    redone = sorted(u for u in after if after[u].run_id != before[u].run_id)
    assert redone == ["r0001_c0001"]
    assert after["r0001_c0001"].attempt == 2
    assert_equal(out, clean)


@pytest.mark.parametrize("how", ["delete", "truncate", "flip"])
def test_info_verify_names_damaged_units_and_the_rerun_redoes_them(
        tmp_path: Path, scene: Path, clean: dict, how: str) -> None:
    out = tmp_path / "m.zarr"
    assert classify(scene, out).exit_code == 0
    assert invoke("info", str(out), "--verify").exit_code == 0
    _damage(out, how)
    r = invoke("info", str(out), "--verify")
    assert r.exit_code == 4 and "r0001_c0001" in r.stderr and "Traceback" not in r.output
    assert Ledger(out / ".geofg").load()["r0001_c0001"].status == "failed"
    assert classify(scene, out).exit_code == 0
    assert_equal(out, clean)
    assert invoke("info", str(out), "--verify").exit_code == 0


def test_records_carry_chunk_keys_and_sizes(tmp_path: Path, scene: Path) -> None:
    out = tmp_path / "m.zarr"
    assert classify(scene, out).exit_code == 0
    rec = Ledger(out / ".geofg").load()["r0002_c0001"]
    layers = [*LAYERS, "ndvi", *(["mask"] if (out / "mask").is_dir() else [])]  # red/NIR; Sentinel-2 band names
    assert set(rec.chunks) == {f"{n}/2/1" for n in layers}
    for key, size in rec.chunks.items():
        assert size == ((out / key).stat().st_size if (out / key).exists() else 0)


def test_orphaned_partial_chunk_files_are_swept_on_resume(tmp_path: Path, scene: Path, clean: dict) -> None:
    """RELIABILITY Z1: a writer killed inside zarr's atomic write leaves `<key>.<uuid>.partial`."""
    out = tmp_path / "m.zarr"
    assert classify(scene, out).exit_code == 0
    orphan = out / "class" / "0" / "0.3e1bdeadbeef.partial"
    orphan.write_bytes(b"\0" * 1000)
    (out / ".geofg" / "units" / "r0000_c0000.json").unlink()  # that unit was in flight
    assert classify(scene, out).exit_code == 0
    assert not list(out.rglob("*.partial"))
    assert_equal(out, clean)


# --- 8. detected corruption: one line, never a traceback ----------------------------------------


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_chunk_in_quicklook_and_export_is_one_line_naming_the_unit(
        tmp_path: Path, scene: Path, how: str) -> None:
    """Case 8: a truncated chunk gave a checksum ValueError traceback in the quicklook and export."""
    out = tmp_path / "m.zarr"
    assert classify(scene, out).exit_code == 0
    _damage(out, how)
    for args in (["--png", str(tmp_path / "q.png")], ["--cog", str(tmp_path / "q.tif")]):
        msg = one_line_error(invoke("export", str(out), *args), 3)
        assert "class/1/1" in msg and "r0001_c0001" in msg and "--verify" in msg
    assert not (tmp_path / "q.png").exists() and not (tmp_path / "q.tif").exists()


def test_garbage_array_metadata_is_one_line_in_info_and_classify_and_overwrite_replaces(
        tmp_path: Path, scene: Path, clean: dict) -> None:
    """Case 8: a garbage class/.zarray (zarr.json in Zarr v3) gave JSONDecodeError tracebacks in info and classify."""
    out = tmp_path / "m.zarr"
    assert classify(scene, out).exit_code == 0
    (out / "class" / ".zarray").write_bytes(b"\x00garbage{")
    before = snapshot(out)
    assert "class/.zarray" in one_line_error(invoke("info", str(out)), 3)
    assert "class/.zarray" in one_line_error(classify(scene, out), 3)
    assert snapshot(out) == before
    assert classify(scene, out, "--overwrite").exit_code == 0
    assert_equal(out, clean)


# --- 5. non-finite pixels -------------------------------------------------------------------------


def test_inf_pixels_are_invalid_like_nan_and_nodata(tmp_path: Path, threshold_bundle: Path) -> None:
    """Case 5: 5,000 Inf pixels counted as valid (class 0, confidence 0)."""
    rng = np.random.default_rng(2)
    data = rng.uniform(100, 3000, (2, 48, 48)).astype("float32")
    data[0, 3:9, 4:12] = np.inf
    data[1, 20:25, 30:40] = -np.inf
    data[0, 40:44, 0:5] = np.nan
    inp = write_raster(tmp_path / "f.tif", data, descriptions=BANDS)
    with RasterReader(open_raster(inp), [0, 1]) as rd:
        from geofg.grid import Window

        got, valid = rd.read(Window(0, 0, 48, 48))
    bad = ~np.isfinite(data).all(axis=0)
    np.testing.assert_array_equal(valid, ~bad)
    assert np.isfinite(got).all()
    out = tmp_path / "o.zarr"
    result = _trun(_tjob(inp, out, threshold_bundle))
    cls = layers(out)["class"]
    assert (cls[bad] == 255).all() and (cls[~bad] != 255).all()
    assert result.summary.valid_px == int((~bad).sum())


# --- 6. geographic grids ------------------------------------------------------------------------


def test_geographic_input_is_refused_with_a_hint(tmp_path: Path) -> None:
    """Case 6: EPSG:4326 gave 0.00 ha for every class, exit 0. geofg refuses (like `scan`)."""
    from rasterio.transform import from_origin

    inp = write_raster(tmp_path / "ll.tif", s2_like(40, 40), descriptions=S2_BANDS, crs="EPSG:4326",
                       transform=from_origin(13.0, 52.5, 0.0001, 0.0001))
    out = tmp_path / "o.zarr"
    msg = one_line_error(classify(inp, out), 3)
    assert "ll.tif" in msg and "projected" in msg and "gdalwarp" in msg
    assert not out.exists()


# --- 7. disk full and read-only outputs --------------------------------------------------------


META = r"(^|/)\.z"  # store keys of Zarr v2 metadata (.zgroup, .zattrs, .zarray)
CHUNK = r"/\d+$"  # store keys of chunks (LAYER/ROW/COL, x/0)


class _FullAfter:
    """Make zarr's store writes fail with ENOSPC once ``n`` writes whose key matches succeeded."""

    def __init__(self, n: int, match: str = "") -> None:
        self.n, self.match, self.seen = n, match, 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from zarr.storage import LocalStore

        original = LocalStore.set

        async def set_(store, key, value):  # noqa: ANN001, ANN202
            if re.search(self.match, key):
                self.seen += 1
                if self.seen > self.n:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
            return await original(store, key, value)

        monkeypatch.setattr(LocalStore, "set", set_)


@pytest.mark.parametrize(("n", "match"), [(0, META), (3, META), (2, CHUNK), (9, CHUNK)])
def test_disk_full_is_exit_7_one_line_lock_released_and_the_rerun_completes(
        tmp_path: Path, threshold_bundle: Path, monkeypatch: pytest.MonkeyPatch, n: int, match: str) -> None:
    """Case 7: ENOSPC during mosaic creation (.zgroup/.zattrs/.zarray) or unit writes (chunks). Creation used to
    leave a half-made mosaic every later run refused (KeyError 'confidence'), and a unit write a
    traceback with exit 1."""
    rng = np.random.default_rng(5)
    inp = write_raster(tmp_path / "in.tif", rng.integers(1, 3000, (2, 64, 64)).astype("uint16"),
                       descriptions=BANDS)
    _trun(_tjob(inp, tmp_path / "clean.zarr", threshold_bundle))
    out = tmp_path / "out.zarr"
    with monkeypatch.context() as mp:
        _FullAfter(n, match).install(mp)
        with pytest.raises(GeofgError) as e:  # OutputWriteError, not an OSError traceback
            _trun(_tjob(inp, out, threshold_bundle))
    assert e.value.exit_code == 7 and "No space left" in str(e.value) and len(str(e.value).splitlines()) == 1
    assert not (out / ".geofg" / "lock").exists()
    _trun(_tjob(inp, out, threshold_bundle))  # space freed: the same command resumes
    assert_equal(out, layers(tmp_path / "clean.zarr"))
    out2 = tmp_path / "out2.zarr"
    with monkeypatch.context() as mp:
        _FullAfter(n, match).install(mp)
        with pytest.raises(GeofgError):
            _trun(_tjob(inp, out2, threshold_bundle))
    _trun(_tjob(inp, out2, threshold_bundle, mode="overwrite"))  # or --overwrite replaces it
    assert_equal(out2, layers(tmp_path / "clean.zarr"))


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (root only; skips elsewhere)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("free_kb", [0, 40, 80])
def test_real_full_tmpfs_is_exit_7_and_resumes_after_space_is_freed(
        tmp_path: Path, scene: Path, clean: dict, free_kb: int) -> None:
    with tmpfs(tmp_path / "fs", "1M") as fs:
        filler = fs / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill it, then give back free_kb
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\1" * 4096)
        os.close(fd)
        if free_kb:
            os.truncate(filler, filler.stat().st_size - free_kb * 1024)
        out = fs / "m.zarr"
        msg = one_line_error(classify(scene, out), 7)
        assert "No space left" in msg
        assert not (out / ".geofg" / "lock").exists()
        filler.unlink()
        assert classify(scene, out).exit_code == 0
        assert_equal(out, clean)


def test_read_only_output_is_exit_7_one_line_and_works_once_writable(tmp_path: Path, scene: Path, clean: dict) -> None:
    """Case 7: a read-only output folder gave a traceback and exit 1."""
    with tmpfs(tmp_path / "fs", "8M") as fs:
        out = fs / "m.zarr"
        assert classify(scene, out).exit_code == 0
        (out / "class" / "0" / "0").unlink()  # something left to do
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
        try:
            assert "Read-only" in one_line_error(classify(scene, out), 7)
            assert "Read-only" in one_line_error(classify(scene, fs / "new.zarr"), 7)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(fs)], check=True)
        assert classify(scene, out).exit_code == 0
        assert_equal(out, clean)


# --- 9. SIGTERM and SIGINT ------------------------------------------------------------------------


def _geofg(*args: str) -> list[str]:
    return [sys.executable, "-m", "geofg.cli", *args]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A 64-unit scene and its clean mosaic (in a subprocess, as the interrupted runs)."""
    d = tmp_path_factory.mktemp("big")
    scene = write_raster(d / "big.tif", s2_like(256, 256, seed=2), descriptions=S2_BANDS)
    out = d / "clean.zarr"
    subprocess.run(_geofg("classify", str(scene), "-o", str(out), "--chunk", "32", "--device", "cpu", "-q", *CHEAP),
                   check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return scene, layers(out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_releases_the_lock_and_the_rerun_resumes(
        tmp_path: Path, big: tuple[Path, dict], sig: signal.Signals) -> None:
    """Case 9: SIGTERM gave exit 143, no message, and a lock the next pod (another host) could
    not take without --break-lock."""
    scene, expected = big
    out = tmp_path / "m.zarr"
    cmd = _geofg("classify", str(scene), "-o", str(out), "--chunk", "32", "--device", "cpu", "-q", *CHEAP)
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    units = out / ".geofg" / "units"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(units.glob("*.json"))) < 6:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 8, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("geofg: error:") and sig.name in lines[0], err
    assert "Traceback" not in err
    assert not (out / ".geofg" / "lock").exists()
    assert not (out / ".zmetadata").exists()  # only complete runs (Z5)
    done = Ledger(out / ".geofg").load()
    assert 0 < len(done) < 64 and all(r.status == "done" for r in done.values())
    r = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    after = Ledger(out / ".geofg").load()
    assert len(after) == 64 and all(after[u].run_id == done[u].run_id for u in done)
    assert_equal(out, expected)


# --- 11. hostile options ------------------------------------------------------------------------


def test_bad_assume_crs_is_one_line_exit_3(tmp_path: Path) -> None:
    """Case 11: `--assume-crs EPSG:4326x` gave a ValueError traceback."""
    inp = write_raster(tmp_path / "nocrs.tif", s2_like(20, 20), crs=None, descriptions=S2_BANDS)
    msg = one_line_error(classify(inp, tmp_path / "o.zarr", "--assume-crs", "EPSG:4326x"), 3)
    assert "EPSG:4326x" in msg and not (tmp_path / "o.zarr").exists()


@pytest.mark.ray
def test_cluster_error_leaves_no_empty_mosaic_behind(tmp_path: Path, scene: Path, monkeypatch) -> None:  # noqa: ANN001
    """Case 11: an exit-5 run left an empty mosaic folder behind."""
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    out = tmp_path / "o.zarr"
    one_line_error(classify(scene, out), 5)
    assert not out.exists()
    out.mkdir()  # a folder the user made stays, empty
    one_line_error(classify(scene, out), 5)
    assert out.is_dir() and not any(out.iterdir())

"""Faults and hostile inputs on `geofg scan` (issue 16; the matrix is docs/reliability.md)."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from rasterio.transform import from_origin
from scanhelp import BANDS, ORIGIN, config, expected_class, predictor, threshold_bundle
from typer.testing import CliRunner

from geofg.cli import app
from geofg.config import load_job
from geofg.errors import ConfigError, GeofgError
from geofg.io import timeseries
from geofg.scan.config import build_scan, load_scan
from geofg.scan.run import ScanFailuresError, run_scan
from rasters import write_raster

runner = CliRunner()


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, list(args), catch_exceptions=False)


def _scene(inbox: Path, name: str, data: np.ndarray) -> Path:
    inbox.mkdir(exist_ok=True)
    return write_raster(inbox / name, data, nodata=0, descriptions=BANDS,
                        transform=from_origin(*ORIGIN, 10.0, 10.0))


def _data(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 3000, (2, 48, 64)).astype("uint16")


# --- 4. a lost time chunk -----------------------------------------------------------------------


def test_lost_time_chunk_does_not_make_the_next_date_overwrite_slice_0(tmp_path: Path) -> None:
    """Issue 16 case 4: with `time/0` gone, the next date took slice 0 (its date read as the
    fill value) and overwrote the first date's pixels; report and info still named the old date."""
    model = threshold_bundle(tmp_path)
    cfg = build_scan(config(tmp_path, model))
    a, b = _data(1), _data(2)
    _scene(tmp_path / "inbox", "S_20200601.tif", a)
    run_scan(cfg, predictor_factory=predictor)
    out = tmp_path / "m.zarr"
    first = zarr.open_group(str(out), mode="r")["class"][0]
    (out / "time" / "0").unlink()
    _scene(tmp_path / "inbox", "S_20200715.tif", b)
    r = run_scan(cfg, predictor_factory=predictor)
    assert r.dates_touched == ["2020-07-15"]
    g = zarr.open_group(str(out), mode="r", use_consolidated=False)
    assert g["class"].shape[0] == 2
    np.testing.assert_array_equal(g["class"][0], first)
    np.testing.assert_array_equal(g["class"][0], expected_class(a, (a != 0).all(0)))
    np.testing.assert_array_equal(g["class"][1], expected_class(b, (b != 0).all(0)))
    assert timeseries.time_slices(out) == [18414, 18458]  # 2020-06-01, 2020-07-15
    assert [int(v) for v in g["time"][:]] == [18414, 18458]  # the chunk was rewritten
    info = invoke("info", str(out), "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["time"] == ["2020-06-01", "2020-07-15"]


def test_lost_time_chunk_without_a_copy_is_refused_not_overwritten(tmp_path: Path) -> None:
    """A mosaic from before the axis copy existed: slice 0 holds data of an unknown date."""
    model = threshold_bundle(tmp_path)
    cfg = build_scan(config(tmp_path, model))
    _scene(tmp_path / "inbox", "S_20200601.tif", _data(1))
    run_scan(cfg, predictor_factory=predictor)
    out = tmp_path / "m.zarr"
    g = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    g.attrs.pop("geofg:dates", None)  # mz.DATES_ATTR
    (out / "time" / "0").unlink()
    before = zarr.open_group(str(out), mode="r")["class"][0]
    _scene(tmp_path / "inbox", "S_20200715.tif", _data(2))
    with pytest.raises(GeofgError, match="slice 0 holds data but its date is lost"):
        run_scan(cfg, predictor_factory=predictor)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["class"][0], before)
    assert not (out / ".geofg" / "lock").exists()


# --- 10. report folder unwritable -------------------------------------------------------------------


def test_unwritable_report_folder_is_refused_before_anything_and_the_night_is_kept(tmp_path: Path) -> None:
    """Case 10: the scan saved the mosaic and inbox state, then died writing the report; the next
    scan reported "0 processed" and that night's record was lost."""
    model = threshold_bundle(tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the report folder should be")
    bad = build_scan({**config(tmp_path, model), "report": {"folder": str(blocker / "reports")}})
    _scene(tmp_path / "inbox", "S_20200601.tif", _data(1))
    with pytest.raises(ConfigError, match="report.folder") as e:
        run_scan(bad, predictor_factory=predictor)
    assert e.value.exit_code == 3
    assert not (tmp_path / "m.zarr").exists()  # nothing scanned or written
    good = build_scan({**config(tmp_path, model), "report": {"folder": str(tmp_path / "reports")}})
    r = run_scan(good, predictor_factory=predictor)
    assert r.count("processed") == 1 and r.units_ran == 12
    assert "S_20200601.tif | processed" in Path(r.report_paths[1]).read_text()


# --- 7. disk full during a scan ------------------------------------------------------------------


@pytest.mark.parametrize(("n", "match"), [(2, r"(^|/)\.z"), (3, r"/\d+$")])
def test_disk_full_in_a_scan_is_exit_7_and_the_next_scan_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, match: str) -> None:
    """Case 7: a scan that ran out of space creating its mosaic left one every later scan refused
    (KeyError: 'time')."""
    from zarr.storage import LocalStore

    model = threshold_bundle(tmp_path)
    cfg = build_scan(config(tmp_path, model))
    a = _data(1)
    _scene(tmp_path / "inbox", "S_20200601.tif", a)
    original, seen = LocalStore.set, [0]

    async def full(store, key, value):  # noqa: ANN001, ANN202
        if re.search(match, key):
            seen[0] += 1
            if seen[0] > n:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), key)
        return await original(store, key, value)

    with monkeypatch.context() as mp:
        mp.setattr(LocalStore, "set", full)
        with pytest.raises(GeofgError) as e:  # OutputWriteError
            run_scan(cfg, predictor_factory=predictor)
    assert e.value.exit_code == 7 and len(str(e.value).splitlines()) == 1
    r = run_scan(cfg, predictor_factory=predictor)
    assert r.count("processed") == 1
    g = zarr.open_group(str(tmp_path / "m.zarr"), mode="r", use_consolidated=False)
    np.testing.assert_array_equal(g["class"][0], expected_class(a, (a != 0).all(0)))


# --- 11. hostile configs and names ----------------------------------------------------------------

BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
inbox: *g
"""


def test_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path: Path) -> None:
    """Case 11: a 701-byte alias bomb gave a 312 MB error line (2.6 GB RSS)."""
    cfg = tmp_path / "scan.yaml"
    cfg.write_text(BOMB)
    r = invoke("scan", str(cfg))
    assert r.exit_code == 3 and "Traceback" not in r.output
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1 and len(msg) < 700 and "aliases" in msg, msg[:300]
    with pytest.raises(ConfigError, match="aliases"):
        load_job(cfg)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    text = yaml.safe_dump(config(tmp_path, model)) + f"mosaic: {tmp_path / 'other.zarr'}\n"
    cfg = tmp_path / "scan.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="'mosaic' is given twice"):
        load_scan(cfg)
    job = tmp_path / "job.yaml"
    job.write_text("read:\n  inputs: [a.tif]\nread:\n  inputs: [b.tif]\n")
    with pytest.raises(ConfigError, match="'read' is given twice"):
        load_job(job)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_refused_in_extent_and_elsewhere(tmp_path: Path, value: str) -> None:
    """Case 11: `extent` with inf gave a traceback."""
    model = threshold_bundle(tmp_path)
    d = config(tmp_path, model)
    text = yaml.safe_dump(d).replace(f"- {d['grid']['extent'][2]}", f"- {value}")
    assert value in text
    cfg = tmp_path / "scan.yaml"
    cfg.write_text(text)
    r = invoke("scan", str(cfg))
    assert r.exit_code == 3 and "Traceback" not in r.output
    assert "grid.extent" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    q = dict(d, inbox={**d["inbox"], "quiet_period_s": float(value.replace(".", "", 1).replace("nan", "nan"))})
    with pytest.raises(ConfigError, match="quiet_period_s"):
        build_scan(q)


def test_long_values_are_cut_in_error_messages(tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    d = config(tmp_path, model)
    d["grid"]["chunk"] = "x" * 100_000
    with pytest.raises(ConfigError) as e:
        build_scan(d)
    assert len(str(e.value)) < 600 and "100,002 chars" in str(e.value)


def test_file_names_cannot_inject_rows_or_headings_into_the_report(tmp_path: Path) -> None:
    """Case 11: names with `|` or newlines added rows and headings to the Markdown report."""
    model = threshold_bundle(tmp_path)
    cfg = build_scan(config(tmp_path, model, glob="*"))
    inbox = tmp_path / "inbox"
    _scene(inbox, "S_20200601.tif", _data(1))
    evil = "x | failed | - | pwned |\n# Injected heading\n| y.tif"
    (inbox / evil).write_bytes(b"not a raster")
    with pytest.raises(ScanFailuresError) as e:  # the evil file is not a raster: that scene fails
        run_scan(cfg, predictor_factory=predictor)
    md = Path(e.value.result.report_paths[1]).read_text()
    assert "\n# Injected" not in md
    lines = md.splitlines()
    start = lines.index("## Scenes") + 2
    table = lines[start: lines.index("", start)]
    assert len(table) == 2 + 2, table  # header, separator, one row per inbox file
    assert all(len(re.findall(r"(?<!\\)\|", ln)) == 5 for ln in table), table  # 4 cells each


# --- 9. SIGTERM during a scan ------------------------------------------------------------------


def test_sigterm_mid_scan_stops_cleanly_and_the_next_scan_finishes(tmp_path: Path) -> None:
    """Case 9 for scans: stop taking units, keep those done, release the lock, exit 8, and leave
    the inbox state unsaved so the next scan plans the units that did not run."""
    import signal

    from geofg.models.inference.tiny import ThresholdPredictor

    model = threshold_bundle(tmp_path)
    cfg = build_scan(config(tmp_path, model))
    a = _data(1)
    _scene(tmp_path / "inbox", "S_20200601.tif", a)
    calls = [0]

    class Terminated(ThresholdPredictor):
        def predict(self, x: np.ndarray) -> np.ndarray:
            calls[0] += 1
            if calls[0] == 3:  # as Kubernetes or systemd would, mid-scan
                os.kill(os.getpid(), signal.SIGTERM)
            return super().predict(x)

    with pytest.raises(GeofgError, match="stopped by SIGTERM") as e:
        run_scan(cfg, predictor_factory=lambda p: Terminated(p.card))
    assert e.value.exit_code == 8 and len(str(e.value).splitlines()) == 1
    out = tmp_path / "m.zarr"
    assert not (out / ".geofg" / "lock").exists()
    ran = e.value.result.units_ran
    assert 0 < ran < 12
    r = run_scan(cfg, predictor_factory=predictor)
    assert (r.count("processed"), r.units_skipped, r.units_ran) == (1, ran, 12 - ran)
    g = zarr.open_group(str(out), mode="r", use_consolidated=False)
    np.testing.assert_array_equal(g["class"][0], expected_class(a, (a != 0).all(0)))

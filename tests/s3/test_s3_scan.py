"""Scans from object storage (issue 19 item 5), against a real SeaweedFS server: an inbox that is
an ``s3://`` prefix, the time-series mosaic, its ledger, lock, inbox state and report on S3.

Each S3 scan is compared with the same scan on local folders, array for array. Scenes are small
GeoTIFFs written locally and uploaded; the model is the cheap threshold one (``scanhelp``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from rasterio.transform import from_origin
from rasters import write_raster
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "scan"))
from scanhelp import BANDS, ORIGIN, Dies, config, expected_class, predictor, threshold_bundle  # noqa: E402

from geofg.cli import app  # noqa: E402
from geofg.io.objledger import ObjectLedger  # noqa: E402
from geofg.io.objstore import ObjectPrefix  # noqa: E402
from geofg.io.store import zarr_store  # noqa: E402
from geofg.scan.config import build_scan  # noqa: E402
from geofg.scan.run import run_scan  # noqa: E402

NAMES = ("S_20200601.tif", "S_20200615.tif")


def _data(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    d = np.random.default_rng(seed).integers(1, 3000, (2, h, w)).astype("uint16")
    if seed % 2:  # a date that covers only part of the grid: latest_* mixes the two dates
        d[:, :, 40:] = 0
    return d


def _scene(folder: Path, name: str, data: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_raster(folder / name, data, transform=from_origin(*ORIGIN, 10.0, 10.0), nodata=0,
                        descriptions=BANDS)  # fmt: skip


def _deliver(s3, tmp: Path, name: str, data: np.ndarray) -> None:  # noqa: ANN001
    """The same scene into the local inbox and into the S3 inbox."""
    s3.put(f"inbox/{name}", _scene(tmp / "inbox", name, data))


def _configs(s3, tmp: Path, model: Path, **inbox: object) -> tuple[dict, dict]:  # noqa: ANN001
    local = config(tmp, model, **inbox)
    remote = config(tmp, model, **inbox)
    remote["inbox"]["folder"] = s3.url("inbox/")
    remote["mosaic"] = s3.url("m.zarr")
    return local, remote


def _arrays(target: object) -> dict[str, np.ndarray]:
    g = zarr.open_group(zarr_store(target, read_only=True), mode="r", use_consolidated=False)
    return {name: a[...] for name, a in g.arrays()}


def _objects(s3, prefix: str) -> dict[str, str]:  # noqa: ANN001
    listing = s3.server.client().list_objects_v2(Bucket=s3.name, Prefix=prefix)
    return {o["Key"]: o["ETag"] for o in listing.get("Contents", [])}


def _scan(cfg: dict, **kw: object):  # noqa: ANN202
    return run_scan(build_scan(cfg), predictor_factory=predictor, **kw)


def _same_arrays(local: Path, remote: str) -> dict[str, np.ndarray]:
    a, b = _arrays(local), _arrays(remote)
    assert sorted(a) == sorted(b)
    differ = [n for n in sorted(a) if not np.array_equal(a[n], b[n])]
    assert not differ, differ
    return b


def test_two_dates_from_an_s3_inbox_equal_the_local_scan_then_only_new_objects_run(s3, tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    local, remote = _configs(s3, tmp_path, model)
    data = {n: _data(i) for i, n in enumerate(NAMES)}
    for n in NAMES:
        _deliver(s3, tmp_path, n, data[n])
    rl = _scan(local)
    t0 = time.perf_counter()
    rr = _scan(remote)
    print(f"two-date scan: local {rl.units_ran} units; S3 {rr.units_ran} units in {time.perf_counter() - t0:.2f} s")
    assert rr.units_ran == rl.units_ran == 24 and not rr.units_failed
    assert [(s.name, s.status, s.date) for s in rr.scenes] == [(s.name, s.status, s.date) for s in rl.scenes]
    got = _same_arrays(tmp_path / "m.zarr", remote["mosaic"])
    assert {"class", "ndvi", "latest_class", "latest_ndvi", "latest_time"} <= set(got)
    d1 = data[NAMES[1]]
    np.testing.assert_array_equal(got["class"][1], expected_class(d1, (d1 != 0).all(axis=0)))
    assert (got["latest_time"][:, :40] == 18428).all() and (got["latest_time"][:, 40:] == 18414).all()
    # the scene fingerprints are ETags (no download to hash), the records and state on S3
    state = json.loads(ObjectPrefix.of(remote["mosaic"]).get(".geofg/scan/inbox.json")[0])
    assert all(r["sha256"].startswith("etag:") and r["stat"][1].startswith("etag:") for r in state["scenes"].values())
    recs = ObjectLedger(ObjectPrefix.of(remote["mosaic"])).load()
    assert len(recs) == 24 and {r.status for r in recs.values()} == {"done"}
    report = json.loads(ObjectPrefix.of(remote["mosaic"] + ".reports").get(Path(rr.report_paths[0]).name)[0])
    assert rr.report_paths[0].startswith(f"s3://{s3.name}/m.zarr.reports/scan-")
    assert report["run_id"] == rr.run_id

    # nothing new: no unit runs and the mosaic's objects stay byte for byte (ETag for ETag)
    before = _objects(s3, "m.zarr/")
    again = _scan(remote)
    assert again.units_ran == 0 and not again.wrote and again.count("skipped") == 2
    assert _objects(s3, "m.zarr/") == before

    # a new object is picked up, and only it
    third = "S_20200701.tif"
    _deliver(s3, tmp_path, third, _data(4))
    _scan(local)
    r3 = _scan(remote)
    assert r3.units_ran == 12 and [s.name for s in r3.scenes if s.status == "processed"] == [third]
    _same_arrays(tmp_path / "m.zarr", remote["mosaic"])


def test_an_object_rewritten_with_another_etag_is_changed_the_same_bytes_are_not(s3, tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    local, remote = _configs(s3, tmp_path, model)
    _deliver(s3, tmp_path, NAMES[0], _data(2))
    _scan(remote)
    _scan(local)
    # re-uploaded with the same bytes: a new LastModified, the same ETag: not reprocessed
    s3.put(f"inbox/{NAMES[0]}", (tmp_path / "inbox" / NAMES[0]).read_bytes())
    r = _scan(remote)
    assert r.units_ran == 0 and r.scenes[0].status == "skipped"
    new = _data(6)
    _deliver(s3, tmp_path, NAMES[0], new)  # other content: another ETag, as a changed local file
    rl, rr = _scan(local), _scan(remote)
    assert (rr.scenes[0].status, rr.scenes[0].reason) == (rl.scenes[0].status, rl.scenes[0].reason) == ("processed", "changed")
    assert rr.units_ran == rl.units_ran == 12
    got = _same_arrays(tmp_path / "m.zarr", remote["mosaic"])
    np.testing.assert_array_equal(got["class"][0], expected_class(new, np.ones((48, 64), bool)))


def test_the_quiet_period_counts_from_last_modified(s3, tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    _, remote = _configs(s3, tmp_path, model, quiet_period_s=600)
    _deliver(s3, tmp_path, NAMES[0], _data(2))
    r = _scan(remote)
    assert r.units_ran == 0 and r.scenes[0].status == "deferred" and "quiet period" in r.scenes[0].reason
    r = _scan(remote, now=time.time() + 1200)  # the object has been still for 20 minutes
    assert r.units_ran == 12 and r.scenes[0].status == "processed"


def test_the_quiet_period_compares_last_modified_with_the_servers_clock(s3, tmp_path: Path) -> None:  # noqa: ANN001
    """A just-written object is seconds old by the server's clock (the listing's "now" is the Date of
    the server's answer, not 0 or the epoch): its age, as the scan computes it, is small and >= 0."""
    from geofg.io.store import Folder

    _deliver(s3, tmp_path, NAMES[0], _data(2))
    files, _, now = Folder(f"s3://{s3.name}/inbox").listing("*.tif")
    assert len(files) == 1
    age = now - files[0].mtime_s
    assert -5 < age < 120, (now, files[0].mtime_s)  # one host: the server's clock is this one's
    assert abs(now - time.time()) < 120


def test_a_sentinel_object_is_required_where_the_config_asks(s3, tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    _, remote = _configs(s3, tmp_path, model, require_done=True)
    _deliver(s3, tmp_path, NAMES[0], _data(2))
    r = _scan(remote)
    assert r.scenes[0].status == "deferred" and ".done" in r.scenes[0].reason
    s3.put(f"inbox/{NAMES[0]}.done", b"")
    assert _scan(remote).scenes[0].status == "processed"


def test_a_killed_s3_scan_resumes_to_the_local_mosaic(s3, tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    local, remote = _configs(s3, tmp_path, model)
    _deliver(s3, tmp_path, NAMES[0], _data(2))
    with pytest.raises(KeyboardInterrupt):
        run_scan(build_scan(remote), predictor_factory=lambda p: Dies(p.card, 5))
    prefix = ObjectPrefix.of(remote["mosaic"])
    assert prefix.head(".geofg/lock") is None  # the lease was released on the way out
    assert len(ObjectLedger(prefix).load()) == 4
    r = _scan(remote)
    assert (r.units_ran, r.units_skipped, r.count("processed")) == (8, 4, 1)
    _scan(local)
    _same_arrays(tmp_path / "m.zarr", remote["mosaic"])


def test_no_key_in_provenance_ledger_state_report_or_logs(s3, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The secret key in the environment (the fixture's AWS_SECRET_ACCESS_KEY, a distinctive
    marker string) and the key id appear in no object the scan writes, nor in its log."""
    import os

    secret, key_id = os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]
    assert len(secret) > 16 and secret in s3.server.secret_key
    model = threshold_bundle(tmp_path)
    _, remote = _configs(s3, tmp_path, model)
    _deliver(s3, tmp_path, NAMES[0], _data(2))
    caplog.set_level("DEBUG", logger="geofg")
    r = _scan(remote)
    assert r.units_ran == 12
    client = s3.server.client()
    written = [k for k in _objects(s3, "m.zarr") if "/inbox/" not in k]
    texts = [k for k in written if k.rsplit("/", 1)[-1].startswith((".z", "zarr.json")) or "/.geofg/" in k
             or k.endswith((".json", ".md"))]  # fmt: skip
    assert any(k.endswith("/.zattrs") for k in texts) and any("/units/" in k for k in texts)
    assert any(k.endswith("inbox.json") for k in texts) and any(k.endswith(".md") for k in texts)
    for k in written:
        body = client.get_object(Bucket=s3.name, Key=k)["Body"].read()
        assert secret.encode() not in body and key_id.encode() not in body, k
    assert secret not in caplog.text and key_id not in caplog.text


def _cli(tmp: Path, cfg: dict):  # noqa: ANN202
    p = tmp / "scan.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return CliRunner().invoke(app, ["scan", str(p)], catch_exceptions=False)


@pytest.mark.parametrize("key", ["inbox", "mosaic", "report"])
def test_a_missing_bucket_is_refused_in_one_line_exit_3_nothing_written(s3, tmp_path: Path, key: str) -> None:
    model = threshold_bundle(tmp_path)
    _, remote = _configs(s3, tmp_path, model)
    _deliver(s3, tmp_path, NAMES[0], _data(2))
    if key == "inbox":
        remote["inbox"]["folder"] = "s3://geofg-no-such-bucket/inbox/"
    elif key == "mosaic":
        remote["mosaic"] = "s3://geofg-no-such-bucket/m.zarr"
    else:
        remote["report"] = {"folder": "s3://geofg-no-such-bucket/reports"}
    r = _cli(tmp_path, remote)
    lines = [ln for ln in r.stderr.strip().splitlines() if "error" in ln]
    assert r.exit_code == 3 and len(lines) == 1 and "geofg-no-such-bucket" in lines[0], r.stderr
    assert "Traceback" not in r.output
    assert _objects(s3, "m.zarr") == {}


def test_an_unreachable_endpoint_exits_5(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = threshold_bundle(tmp_path)
    _, remote = _configs(s3, tmp_path, model)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing answers
    r = _cli(tmp_path, remote)
    lines = [ln for ln in r.stderr.strip().splitlines() if "error" in ln]
    assert r.exit_code == 5 and len(lines) == 1 and "127.0.0.1:9" in lines[0], r.stderr


def test_a_bad_s3_url_in_the_config_exits_3(s3, tmp_path: Path) -> None:
    model = threshold_bundle(tmp_path)
    _, remote = _configs(s3, tmp_path, model)
    remote["inbox"]["folder"] = "s3://A_bad_bucket/inbox/"
    r = _cli(tmp_path, remote)
    lines = [ln for ln in r.stderr.strip().splitlines() if "error" in ln]
    assert r.exit_code == 3 and len(lines) == 1 and "inbox.folder" in lines[0], r.stderr


def test_refused_credentials_exit_3_nothing_written(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = threshold_bundle(tmp_path)
    _, remote = _configs(s3, tmp_path, model)
    _deliver(s3, tmp_path, NAMES[0], _data(2))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key-000000")
    r = _cli(tmp_path, remote)
    lines = [ln for ln in r.stderr.strip().splitlines() if "error" in ln]
    assert r.exit_code == 3 and len(lines) == 1 and "inbox.folder" in lines[0] and "refused" in lines[0], r.stderr
    # the inbox is read, never written: the message asks for read access, not for an output bucket
    assert "allowed to read" in lines[0] and "writable" not in lines[0], lines[0]
    assert "not-the-secret-key" not in r.output
    assert _objects(s3, "m.zarr") == {}


def test_alerts_and_the_series_of_an_s3_scan_equal_the_local_ones(s3, tmp_path: Path) -> None:
    """`geofg alerts s3://…/m.zarr` reads the scan mosaic on S3 (as `fields`, `info`, `stats` do)."""
    import geopandas as gpd
    import pandas as pd
    import shapely

    model = threshold_bundle(tmp_path)
    local, remote = _configs(s3, tmp_path, model)
    for day, east_nir in (("20200501", 9000), ("20200601", 9000), ("20200701", 2500), ("20200801", 2500)):
        nir = np.full((48, 64), 9000)
        nir[:, 32:] = east_nir  # the east half loses its vigour from July: NDVI 0.71 -> 0.25
        _deliver(s3, tmp_path, f"S_{day}.tif", np.stack([np.full((48, 64), 1500), nir]).astype("uint16"))
    _scan(local)
    _scan(remote)
    x0, y0 = ORIGIN
    boxes = [shapely.box(x0 + 20, y0 - 460, x0 + 300, y0 - 20), shapely.box(x0 + 340, y0 - 460, x0 + 620, y0 - 20)]
    f = tmp_path / "f.gpkg"
    gpd.GeoDataFrame({"id": ["west", "east"]}, geometry=boxes, crs="EPSG:32633").to_file(f)
    got = {}
    for where, mosaic in (("local", str(tmp_path / "m.zarr")), ("s3", remote["mosaic"])):
        out, series = tmp_path / f"{where}.csv", tmp_path / f"{where}.parquet"
        r = CliRunner().invoke(app, ["alerts", mosaic, "--fields", str(f), "-o", str(out), "--series", str(series),
                                     "--min-history", "2"])  # fmt: skip
        assert r.exit_code == 0, r.output
        got[where] = (pd.read_csv(out), gpd.read_parquet(series).drop(columns="geometry"))
    assert got["s3"][0][["field_id", "date"]].values.tolist() == [["east", "2020-07-01"], ["east", "2020-08-01"]]
    pd.testing.assert_frame_equal(got["s3"][0], got["local"][0])
    pd.testing.assert_frame_equal(got["s3"][1], got["local"][1])

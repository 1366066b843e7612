"""Index-based crop health: vegetation indices classed into zones, only inside crop/grass classes.

This layer is **not learned**: the land-cover class comes from the CNN, the health class from
spectral indices of the same pixels. Zones (the per-field products built on them: docs/products.md):

* NDVI = (NIR - red) / (NIR + red) sets the zone: < 0.2 ``bare/stressed``, 0.2-0.4 ``low``,
  0.4-0.6 ``moderate``, >= 0.6 ``vigorous``.
* Where SWIR exists, NDMI = (NIR - SWIR1) / (NIR + SWIR1) below -0.1 (dry canopy) lowers a
  ``moderate`` or ``vigorous`` pixel one zone (water stress).
* Where red-edge exists, NDRE = (NIR - RE1) / (NIR + RE1) below 0.1 caps a ``vigorous`` pixel at
  ``moderate`` (high NDVI but low chlorophyll signal).

Pixels outside crop classes, or without red/NIR bands, are 255 (no data). The pipeline also
leaves health at 255 where the cloud mask is not clear (:mod:`geofg.masks`) and everywhere when
the scene is out of the growing season (:mod:`geofg.season`).

**The index layer** (``ndvi``, :data:`INDEX`): the NDVI behind the zones, kept for every valid
pixel whatever its class and season (the pipeline then blanks it where the cloud mask is not
clear, as every layer), so per-field medians, alerts and management zones work on the index
itself rather than on its four classes. Stored as uint8: ``code = round((NDVI + 1) / 0.01)``,
0..200 for NDVI -1..1 (steps of 0.01, at most 0.005 off), 255 no data (also where red + NIR <= 0).
The layer's CF attributes ``scale_factor`` 0.01 and ``add_offset`` -1 let xarray decode it to
NDVI; GDAL reports them as the band's scale and offset. Zones are classed from the unquantised
NDVI, so a pixel within 0.005 of a zone edge may sit on the other side of it in the stored index.
A model whose bands lack red or NIR has no index layer (:func:`index_layers` is empty).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HEALTH_CLASSES: tuple[tuple[str, str], ...] = (
    ("bare/stressed", "#a50026"),
    ("low", "#f46d43"),
    ("moderate", "#fee08b"),
    ("vigorous", "#1a9850"),
)
NDVI_ZONES = (0.2, 0.4, 0.6)
FILL = 255
INDEX = "ndvi"
"""The index layer's name in a mosaic."""
INDEX_SCALE = 0.01
INDEX_OFFSET = -1.0
INDEX_MAX_CODE = 200
"""Stored ``code`` -> NDVI ``code * INDEX_SCALE + INDEX_OFFSET`` (CF ``scale_factor``/``add_offset``)."""

# band roles by name: Sentinel-2 names first, then generic names (e.g. NAIP R,G,B,NIR)
_ROLES: dict[str, tuple[str, ...]] = {
    "red": ("B04", "RED", "R"),
    "nir": ("B08", "B8A", "NIR", "N"),
    "rededge": ("B05", "RE1", "REDEDGE"),
    "swir": ("B11", "SWIR1", "SWIR"),
}


def band_roles(band_names: Sequence[str]) -> dict[str, int]:
    """Map index roles (red, nir, rededge, swir) to positions in ``band_names``.

    Examples:
        >>> band_roles(["B02", "B03", "B04", "B08"])
        {'red': 2, 'nir': 3}
    """
    upper = [b.upper() for b in band_names]
    roles = {}
    for role, names in _ROLES.items():
        for n in names:
            if n in upper:
                roles[role] = upper.index(n)
                break
    return roles


def _index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b) in float32, 0 where a + b <= 0 (or NaN)."""
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    s = a + b
    np.subtract(a, b, out=a)
    out = np.zeros_like(a)
    np.divide(a, s, out=out, where=s > 0)
    return out


def has_index(roles: dict[str, int]) -> bool:
    """Whether bands with these roles give NDVI (red and NIR both present)."""
    return "red" in roles and "nir" in roles


def index_layers(band_names: Sequence[str]) -> tuple[str, ...]:
    """The index layers a model with these bands writes: ``("ndvi",)``, or ``()`` without red/NIR.

    Examples:
        >>> index_layers(["R", "G", "B", "NIR"]), index_layers(["B02", "B03"])
        (('ndvi',), ())
    """
    return (INDEX,) if has_index(band_roles(band_names)) else ()


def ndvi(data: np.ndarray, roles: dict[str, int]) -> np.ndarray | None:
    """NDVI (h, w) float32 of raw data (C, h, w) (0 where red + NIR <= 0), or None without red+NIR."""
    if not has_index(roles):
        return None
    return _index(data[roles["nir"]], data[roles["red"]])


def quantise_index(value: np.ndarray, defined: np.ndarray | None = None) -> np.ndarray:
    """NDVI (float) -> uint8 codes ``round((value + 1) / 0.01)`` in 0..200; 255 where not ``defined``.

    Examples:
        >>> quantise_index(np.array([-1.0, 0.0, 0.204, 0.996, 1.0])).tolist()
        [0, 100, 120, 200, 200]
    """
    code = np.rint((np.asarray(value, np.float32) - INDEX_OFFSET) / INDEX_SCALE)
    out = np.clip(code, 0, INDEX_MAX_CODE).astype(np.uint8)
    if defined is not None:
        out[~defined] = FILL
    return out


def decode_index(code: np.ndarray) -> np.ndarray:
    """uint8 index codes -> NDVI float64, NaN where 255 (no data)."""
    code = np.asarray(code)
    out = code.astype(np.float64) * INDEX_SCALE + INDEX_OFFSET
    out[code == FILL] = np.nan
    return out


def index_layer(data: np.ndarray, roles: dict[str, int], value: np.ndarray | None = None) -> np.ndarray | None:
    """The ``ndvi`` layer (h, w) uint8 of raw data (C, h, w), or None without red+NIR.

    ``value`` is :func:`ndvi` of the same data when already computed. Where red + NIR <= 0 (no
    signal) the index is undefined: 255.
    """
    if value is None:
        value = ndvi(data, roles)
    if value is None:  # no red or no NIR
        return None
    s = data[roles["nir"]].astype(np.float32) + data[roles["red"]]
    return quantise_index(value, s > 0)


def health_zones(data: np.ndarray, roles: dict[str, int], value: np.ndarray | None = None) -> np.ndarray | None:
    """Return health zones (h, w) uint8 0..3 from raw data (C, h, w), or None without red+NIR.

    ``value`` is :func:`ndvi` of the same data when already computed.
    """
    if not has_index(roles):
        return None
    nir = data[roles["nir"]]
    ndvi = _index(nir, data[roles["red"]]) if value is None else value
    zone = (ndvi >= NDVI_ZONES[0]).view(np.uint8).copy()  # the number of zone edges <= NDVI
    for edge in NDVI_ZONES[1:]:
        zone += ndvi >= edge
    if "swir" in roles:
        dry = _index(nir, data[roles["swir"]]) < -0.1
        np.subtract(zone, 1, out=zone, where=dry & (zone >= 2))
    if "rededge" in roles:
        weak = _index(nir, data[roles["rededge"]]) < 0.1
        np.copyto(zone, 2, where=weak & (zone == 3))
    return zone


def health_layer(
    data: np.ndarray, classes: np.ndarray, crop_ids: Sequence[int], roles: dict[str, int],
    value: np.ndarray | None = None,
) -> np.ndarray:
    """Return the health layer (h, w) uint8: zones inside crop classes, 255 elsewhere.

    ``value`` is :func:`ndvi` of the same data when already computed.
    """
    out = np.full(classes.shape, FILL, dtype=np.uint8)
    if not crop_ids:
        return out
    lut = np.zeros(256, dtype=bool)
    lut[np.asarray(crop_ids)] = True
    is_crop = lut[classes]
    if not is_crop.any():
        return out
    zone = health_zones(data, roles, value)
    if zone is None:
        return out
    np.copyto(out, zone, where=is_crop)
    return out

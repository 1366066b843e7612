"""Index-based crop health: vegetation indices classed into zones, only inside crop/grass classes.

This layer is **not learned**: the land-cover class comes from the CNN, the health class from
spectral indices of the same pixels. Zones (documented in docs/health.md):

* NDVI = (NIR - red) / (NIR + red) sets the zone: < 0.2 ``bare/stressed``, 0.2-0.4 ``low``,
  0.4-0.6 ``moderate``, >= 0.6 ``vigorous``.
* Where SWIR exists, NDMI = (NIR - SWIR1) / (NIR + SWIR1) below -0.1 (dry canopy) lowers a
  ``moderate`` or ``vigorous`` pixel one zone (water stress).
* Where red-edge exists, NDRE = (NIR - RE1) / (NIR + RE1) below 0.1 caps a ``vigorous`` pixel at
  ``moderate`` (high NDVI but low chlorophyll signal).

Pixels outside crop classes, or without red/NIR bands, are 255 (no data). The pipeline also
leaves health at 255 where the cloud mask is not clear (:mod:`geofg.masks`) and everywhere when
the scene is out of the growing season (:mod:`geofg.season`).
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


def health_zones(data: np.ndarray, roles: dict[str, int]) -> np.ndarray | None:
    """Return health zones (h, w) uint8 0..3 from raw data (C, h, w), or None without red+NIR."""
    if "red" not in roles or "nir" not in roles:
        return None
    nir = data[roles["nir"]]
    ndvi = _index(nir, data[roles["red"]])
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
    data: np.ndarray, classes: np.ndarray, crop_ids: Sequence[int], roles: dict[str, int]
) -> np.ndarray:
    """Return the health layer (h, w) uint8: zones inside crop classes, 255 elsewhere."""
    out = np.full(classes.shape, FILL, dtype=np.uint8)
    if not crop_ids:
        return out
    lut = np.zeros(256, dtype=bool)
    lut[np.asarray(crop_ids)] = True
    is_crop = lut[classes]
    if not is_crop.any():
        return out
    zone = health_zones(data, roles)
    if zone is None:
        return out
    np.copyto(out, zone, where=is_crop)
    return out

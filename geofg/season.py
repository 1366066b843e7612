"""Is the scene in the growing season for its place? Decides whether crop health is assessed.

Crop-health zones are NDVI zones (:mod:`geofg.health`): in winter every field is "bare/stressed"
because nothing grows, not because the crop is stressed. So health is assessed only when the
scene is in the growing season for its place, decided once per run at preflight
(:func:`assess_season`) from three things:

1. **Acquisition date** (:func:`acquisition_dates`), first found of: a Sentinel-2 product or band
   file name (``..._20170216T102101_B02.jp2``, ``S2A_MSIL2A_20170613T101031...``); a GeoTIFF
   tag (``ACQUISITIONDATETIME``, ``DATE_ACQUIRED``, ``TIFFTAG_DATETIME`` as ``YYYY:MM:DD ...``);
   a date in the file name (``..._20160816.tif``, ``..._2021-07_...``: a month alone counts as
   its 1st). Otherwise the date is unknown. With several inputs, every dated one is checked.
2. **Latitude of the scene centre** (:func:`growing_months`), giving the months of the growing
   season by climate band, mirrored by six months south of the equator:

   ======================  =========================  ==========================
   \\|latitude\\|            northern hemisphere        southern hemisphere
   ======================  =========================  ==========================
   < 40°                   any month (tropical and     any month
                           subtropical crops, winter
                           cereals grow in winter)
   40° - 55°               April - October            October - April
   55° - 66.5°             May - September            November - March
   >= 66.5°                June - August              December - February
   ======================  =========================  ==========================

3. **The scene's NDVI distribution** (:func:`scene_ndvi`): NDVI on a sample of the scene (up to
   8 x 8 windows of 64 x 64 px spread over the grid, or the whole of a small raster), over
   *vegetated* pixels (NDVI >= 0.2). Their 90th percentile must reach :data:`GREEN_P90` (0.45):
   a growing crop canopy somewhere in the scene. Below it, the scene has no green canopy
   (winter, drought, after harvest) and zones would only measure bare soil. Measured: T33UUU
   (February) 0.38; NAIP North Dakota (uncalibrated 8-bit, so lower than reflectance NDVI)
   0.53, 0.50, 0.59 for 2016-08-16, 2018-07-16, 2020-08-31; WorldCereal July 2021 0.84;
   BigEarthNet L2A patches 0.83-0.88.

Health is assessed when the date (if known) falls in the season's months **and** the NDVI test
passes (or cannot run: no red/NIR bands, where health is empty anyway). Otherwise the summary
says "not assessed" and why, the ``health`` layer is 255 everywhere, and no zone area is reported.
"""

from __future__ import annotations

import calendar
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

log = logging.getLogger(__name__)

GREEN_P90 = 0.45
VEGETATED_NDVI = 0.2
_S2_TIME = re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})T\d{6}(?!\d)")
_YMD = re.compile(r"(?<!\d)(\d{4})[-_]?(\d{2})[-_]?(\d{2})(?!\d)")
_YM = re.compile(r"(?<!\d)(\d{4})-(\d{2})(?![\d])")
_TAGS = ("ACQUISITIONDATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED", "TIFFTAG_DATETIME")
_BANDS = ((40.0, None), (55.0, (4, 10)), (66.5, (5, 9)), (90.1, (6, 8)))


@dataclass(frozen=True, slots=True)
class HealthSeason:
    """The decision and its grounds (small, picklable, JSON-able through :meth:`to_dict`)."""

    assessed: bool
    reason: str
    dates: tuple[str, ...] = ()
    latitude: float | None = None
    ndvi_p90: float | None = None

    def to_dict(self) -> dict:
        """Return a JSON-able dict."""
        return {"assessed": self.assessed, "reason": self.reason, "dates": list(self.dates),
                "latitude": self.latitude, "ndvi_p90": self.ndvi_p90}  # fmt: skip


def _valid(y: int, m: int, d: int) -> date | None:
    if not 1980 <= y <= 2100:
        return None
    try:
        return date(y, m, d)
    except ValueError:
        return None


def date_from_name(name: str) -> date | None:
    """The acquisition date a file or folder name carries, or None.

    Examples:
        >>> date_from_name("T33UUU_20170216T102101_B02.jp2"), date_from_name("m_47_20160816.tif")
        (datetime.date(2017, 2, 16), datetime.date(2016, 8, 16))
        >>> date_from_name("worldcereal_S2L2A_2021-07_9band.tif"), date_from_name("scene.tif")
        (datetime.date(2021, 7, 1), None)
    """
    for pattern in (_S2_TIME, _YMD):
        for m in pattern.finditer(name):
            d = _valid(int(m.group(1)), int(m.group(2)), int(m.group(3)))
            if d:
                return d
    for m in _YM.finditer(name):
        d = _valid(int(m.group(1)), int(m.group(2)), 1)
        if d:
            return d
    return None


def date_from_tags(tags: dict[str, str]) -> date | None:
    """The date in a raster's metadata tags (see the module docstring), or None.

    Examples:
        >>> date_from_tags({"TIFFTAG_DATETIME": "2019:06:30 10:12:00"})
        datetime.date(2019, 6, 30)
    """
    for key in _TAGS:
        value = tags.get(key)
        if not value:
            continue
        m = re.match(r"\s*(\d{4})[:\-/](\d{2})[:\-/](\d{2})", value)
        if m and (d := _valid(int(m.group(1)), int(m.group(2)), int(m.group(3)))):
            return d
    return None


def acquisition_dates(paths: Sequence[str], tags: Sequence[dict[str, str]] = ()) -> list[date]:
    """One date per input that has one: its S2 name, else its tags, else a date in its name."""
    out: list[date] = []
    for i, p in enumerate(paths):
        parts = str(p).replace("\\", "/").split("/")[-2:]
        found = next((d for part in reversed(parts) for m in _S2_TIME.finditer(part)
                      if (d := _valid(int(m.group(1)), int(m.group(2)), int(m.group(3))))), None)  # fmt: skip
        if found is None and i < len(tags):
            found = date_from_tags(tags[i])
        if found is None:
            found = next((d for part in reversed(parts) if (d := date_from_name(part))), None)
        if found is not None and found not in out:
            out.append(found)
    return out


def growing_months(latitude: float) -> tuple[int, int] | None:
    """The growing season's (first, last) month at ``latitude``; None when any month may be.

    Southern-hemisphere seasons wrap the year (first > last).

    Examples:
        >>> growing_months(52.4), growing_months(-35.0), growing_months(-45.0), growing_months(70)
        ((4, 10), None, (10, 4), (6, 8))
    """
    for edge, months in _BANDS:
        if abs(latitude) < edge:
            if months is None or latitude >= 0:
                return months
            return ((months[0] + 5) % 12 + 1, (months[1] + 5) % 12 + 1)
    return None


def in_months(d: date, months: tuple[int, int]) -> bool:
    """Whether ``d``'s month is within ``months`` (inclusive; wraps over the new year)."""
    first, last = months
    return first <= d.month <= last if first <= last else (d.month >= first or d.month <= last)


def _month_names(months: tuple[int, int]) -> str:
    return f"{calendar.month_name[months[0]]}-{calendar.month_name[months[1]]}"


def decide(dates: Sequence[date], latitude: float | None, ndvi_p90: float | None) -> HealthSeason:
    """The season rule of the module docstring, pure.

    Examples:
        >>> decide([date(2017, 2, 16)], 52.4, 0.33).reason
        'acquired 2017-02-16, outside the growing season at 52.4° N (April-October)'
        >>> decide([date(2016, 8, 16)], 47.2, 0.81).assessed
        True
        >>> decide([], 47.2, 0.31).reason
        'no green canopy in the scene: NDVI p90 of vegetated pixels 0.31 < 0.45 (date unknown)'
    """
    shown = tuple(str(d) for d in dates)
    lat = None if latitude is None else round(float(latitude), 2)
    p90 = None if ndvi_p90 is None else round(float(ndvi_p90), 3)
    months = None if latitude is None else growing_months(latitude)
    if months is not None:
        outside = [d for d in dates if not in_months(d, months)]
        if outside:
            hemi = f"{abs(latitude):.1f}° {'N' if latitude >= 0 else 'S'}"  # type: ignore[arg-type]
            return HealthSeason(False, f"acquired {outside[0]}, outside the growing season at "
                                       f"{hemi} ({_month_names(months)})", shown, lat, p90)  # fmt: skip
    if ndvi_p90 is not None and ndvi_p90 < GREEN_P90:
        when = f"acquired {shown[0]}" if shown else "date unknown"
        return HealthSeason(False, f"no green canopy in the scene: NDVI p90 of vegetated pixels "
                                   f"{ndvi_p90:.2f} < {GREEN_P90} ({when})", shown, lat, p90)  # fmt: skip
    why = "in season" if dates and months else ("any month at this latitude" if dates else "date unknown")
    green = f"NDVI p90 of vegetated pixels {ndvi_p90:.2f}" if ndvi_p90 is not None else "no NDVI test"
    return HealthSeason(True, f"{why}; {green}", shown, lat, p90)


def ndvi_p90(red: np.ndarray, nir: np.ndarray) -> float | None:
    """90th percentile of NDVI over vegetated pixels (NDVI >= 0.2) of 1-D samples; None if none.

    Examples:
        >>> round(ndvi_p90(np.array([10, 10, 10]), np.array([10, 30, 90])), 2)
        0.77
    """
    r = red.astype(np.float64)
    n = nir.astype(np.float64)
    s = n + r
    ok = s > 0
    ndvi = (n[ok] - r[ok]) / s[ok]
    veg = ndvi[ndvi >= VEGETATED_NDVI]
    return float(np.percentile(veg, 90)) if veg.size else None


def sample_windows(height: int, width: int, n: int = 8, side: int = 64) -> list[tuple[int, int, int, int]]:
    """Up to ``n x n`` windows ``(row, col, h, w)`` of ``side`` px spread over the grid.

    A raster with at most ``n * side`` rows and columns is one window (read whole).

    Examples:
        >>> sample_windows(100, 100)
        [(0, 0, 100, 100)]
        >>> len(sample_windows(4000, 4000)), sample_windows(4000, 4000)[0]
        (64, (218, 218, 64, 64))
    """
    if height <= n * side and width <= n * side:
        return [(0, 0, height, width)]
    rows = [int((i + 0.5) * height / n - side / 2) for i in range(n)]
    cols = [int((j + 0.5) * width / n - side / 2) for j in range(n)]
    h, w = min(side, height), min(side, width)
    return [(max(0, r), max(0, c), h, w) for r in rows for c in cols]


def scene_latitude(info) -> float:  # noqa: ANN001
    """Latitude (degrees) of the centre of a RasterInfo's grid."""
    from rasterio.crs import CRS
    from rasterio.warp import transform

    left, bottom, right, top = info.bounds()
    _, ys = transform(CRS.from_wkt(info.crs_wkt), CRS.from_epsg(4326),
                      [(left + right) / 2], [(bottom + top) / 2])  # fmt: skip
    return float(ys[0])


def scene_ndvi(info, red: int, nir: int) -> float | None:  # noqa: ANN001
    """NDVI p90 of vegetated pixels over :func:`sample_windows` of the input (band indices).

    A window that cannot be read (a corrupt block) is left out of the sample: the units that
    need it fail on their own, and the run goes on (exit 4), as without the sample.
    """
    from geofg.errors import UnreadableRasterError
    from geofg.grid import Window
    from geofg.io.reader import RasterReader

    reds, nirs = [], []
    with RasterReader(info, [red, nir]) as reader:
        for r, c, h, w in sample_windows(info.height, info.width):
            try:
                data, valid = reader.read(Window(r, c, h, w))
            except UnreadableRasterError as e:
                log.warning("season sample: window at row %d col %d left out (%s)", r, c, e)
                continue
            reds.append(data[0][valid])
            nirs.append(data[1][valid])
    return ndvi_p90(np.concatenate(reds), np.concatenate(nirs)) if reds else None


def file_tags(paths: Sequence[str]) -> list[dict[str, str]]:
    """Each file's dataset tags (empty where it cannot be opened as a GeoTIFF/JPEG2000)."""
    from geofg.io.objects import is_remote
    from geofg.io.paths import DRIVERS
    from geofg.io.read import gdal_env

    import rasterio

    out = []
    with gdal_env(remote=any(is_remote(p) for p in paths)):
        for p in paths:
            driver = DRIVERS.get(os.path.splitext(p)[1].lower())
            try:
                with rasterio.open(p, driver=driver) as ds:
                    out.append(dict(ds.tags()))
            except Exception:  # noqa: BLE001 (preflight opened it already; tags are optional)
                out.append({})
    return out


def assess_season(info, red: int | None, nir: int | None) -> HealthSeason:  # noqa: ANN001
    """Decide whether crop health is assessed for this input (preflight; reads a sample only).

    ``red`` and ``nir`` are indices into ``info.band_files`` (None: health cannot be computed).
    """
    scenes = info.scenes or (info,)
    paths = [p for s in scenes for p in s.paths[:1]]
    dates = acquisition_dates(paths, file_tags(paths))
    lat = scene_latitude(info)
    p90 = scene_ndvi(info, red, nir) if red is not None and nir is not None else None
    season = decide(dates, lat, p90)
    log.info("crop health %s: %s", "assessed" if season.assessed else "not assessed", season.reason)
    return season


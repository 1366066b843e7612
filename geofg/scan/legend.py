"""Legends that travel with exported rasters: GDAL category names, a raster attribute table, a QGIS style.

A GeoTIFF holds a colour table and nodata, but no class names: GDAL keeps category names and
raster attribute tables (RAT) of a GeoTIFF in its PAM sidecar ``OUT.tif.aux.xml`` (rasterio 1.4
has no call for either; rasterio PR #3252 proposes one). So :func:`write_sidecars` writes, beside
``OUT.tif``:

* ``OUT.tif.aux.xml``: the band's ``CategoryNames`` (``gdalinfo`` lists them; index = pixel
  value) and a thematic RAT with ``Value``, ``Name``, ``Red``, ``Green``, ``Blue``, ``Alpha``
  (QGIS >= 3.30 shows it as the layer's attribute table and can style from it);
* ``OUT.qml``: a QGIS paletted renderer with each value's colour and label; QGIS loads a ``.qml``
  named like the raster as its default style.

GDAL reads the sidecar whenever PAM is on (its default; geofg itself runs with
``GDAL_PAM_ENABLED=NO`` only so that nothing is written beside its *inputs*). Copy the three
files together.

**Health: which pixels were not assessed.** In the mosaic, ``health`` is 255 wherever no zone was
computed, for several reasons. :func:`health_codes` gives them values of their own in an export,
so the legend says why:

==========  ==================================================================
0..3        the zones (``bare/stressed``, ``low``, ``moderate``, ``vigorous``)
250         not assessed: land cover is not a crop or grass class
251..253    not assessed: cloud, cloud shadow, snow/ice (the ``mask`` layer)
254         not assessed: out of the growing season (the whole date; ``geofg:health``)
255         no data (outside the input, or no valid class)
==========  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from geofg.masks import MASK_CLASSES
from geofg.io.atomic import atomic_write

FILL = 255
NOT_CROP = 250
NOT_IN_SEASON = 254
#: Export values of the health layer's not-assessed pixels, with label and colour.
NOT_ASSESSED: tuple[tuple[int, str, str], ...] = (
    (NOT_CROP, "not assessed: not a crop or grass class", "#bdbdbd"),
    *((250 + code, f"not assessed: {name}", colour) for code, (name, colour) in enumerate(MASK_CLASSES) if code),
    (NOT_IN_SEASON, "not assessed: out of the growing season", "#9e9ac8"),
)


@dataclass(frozen=True)
class Legend:
    """Values of one exported band with their labels and colours (``#rrggbb``); nodata apart."""

    title: str
    entries: tuple[tuple[int, str, str], ...]
    nodata: int = FILL

    @classmethod
    def of_layer(cls, title: str, names: list[str], colours: list[str], *, health: bool = False) -> Legend:
        """The legend of a class-like layer; ``health`` adds the not-assessed values."""
        entries = tuple((i, n, c) for i, (n, c) in enumerate(zip(names, colours, strict=True)))
        return cls(title, entries + (NOT_ASSESSED if health else ()))

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """A rasterio colour map: every entry opaque, nodata transparent."""
        cmap = {v: (*_rgb(c), 255) for v, _, c in self.entries}
        cmap[self.nodata] = (0, 0, 0, 0)
        return cmap


def _rgb(hexcolour: str) -> tuple[int, int, int]:
    h = hexcolour.lstrip("#")
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def health_codes(health: np.ndarray, cls: np.ndarray, mask: np.ndarray | None, in_season: bool) -> np.ndarray:
    """The health block to export: zones kept, not-assessed pixels given their reason's value.

    ``cls`` is the class block (255 where no class), ``mask`` the mask block or None. A masked pixel
    (cloud, shadow, snow/ice) has no class in the mosaic and gets 250 + its mask code; a pixel with
    a class but no zone gets 254 when the date was out of season, else 250 (not a crop class).
    """
    out = np.asarray(health, np.uint8).copy()
    no_zone = out == FILL
    out[no_zone & (cls != FILL)] = NOT_CROP if in_season else NOT_IN_SEASON
    if mask is not None:
        for code in range(1, len(MASK_CLASSES)):
            out[no_zone & (mask == code)] = 250 + code
    return out


def aux_xml(legend: Legend, description: str) -> str:
    """The PAM document: category names and a thematic RAT for band 1."""
    top = max([v for v, _, _ in legend.entries] + [0])
    names = dict((v, n) for v, n, _ in legend.entries)
    cats = "".join(f"        <Category>{escape(names.get(v, ''))}</Category>\n" for v in range(top + 1))
    fields = [("Value", 0, 5), ("Name", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8), ("Alpha", 0, 9)]
    defs = "".join(f'      <FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>\n'
                   for i, (n, t, u) in enumerate(fields))  # fmt: skip
    rows = "".join(
        f'      <Row index="{i}"><F>{v}</F><F>{escape(n)}</F>' + "".join(f"<F>{x}</F>" for x in (*_rgb(c), 255)) + "</Row>\n"
        for i, (v, n, c) in enumerate(legend.entries)
    )
    return ("<PAMDataset>\n"
            '  <PAMRasterBand band="1">\n'
            f"    <Description>{escape(description)}</Description>\n"
            f"    <NoDataValue>{legend.nodata}</NoDataValue>\n"
            "    <CategoryNames>\n" + cats + "    </CategoryNames>\n"
            '    <GDALRasterAttributeTable tableType="thematic">\n' + defs + rows +
            "    </GDALRasterAttributeTable>\n"
            "  </PAMRasterBand>\n"
            "</PAMDataset>\n")  # fmt: skip


def qml(legend: Legend) -> str:
    """A QGIS style (paletted renderer, one entry per value; nodata left transparent)."""
    entries = "".join(
        f"        <paletteEntry value={quoteattr(str(v))} color={quoteattr(c.lower())} alpha=\"255\" "
        f"label={quoteattr(n)}/>\n"
        for v, n, c in legend.entries
    )
    return ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
            '<qgis version="3.28.0" styleCategories="Symbology">\n'
            "  <pipe>\n"
            '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">\n'
            "      <rasterTransparency/>\n"
            "      <colorPalette>\n" + entries + "      </colorPalette>\n"
            "    </rasterrenderer>\n"
            "  </pipe>\n"
            "</qgis>\n")  # fmt: skip


def sidecar_paths(tif: Path) -> tuple[Path, Path]:
    """``OUT.tif.aux.xml`` and ``OUT.qml``."""
    return tif.with_name(tif.name + ".aux.xml"), tif.with_suffix(".qml")


def write_sidecars(tif: Path, legend: Legend, description: str) -> tuple[Path, Path]:
    """Write ``OUT.tif.aux.xml`` and ``OUT.qml`` beside ``tif`` (each to a temporary name, then renamed)."""
    aux, style = sidecar_paths(tif)
    for path, text in ((aux, aux_xml(legend, description)), (style, qml(legend))):
        atomic_write(path, text)
    return aux, style

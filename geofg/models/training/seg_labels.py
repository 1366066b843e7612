"""Dense labels for segmentation: polygons or a class mask, rasterised on an image's pixel grid.

Used by ``geofg train segmenter`` (:mod:`geofg.models.training.segment`) and by ``geofg evaluate`` on a
segmentation bundle (:mod:`geofg.models.training.seg_eval`). No torch here.

**Sources.** ``--labels`` is either

* a vector file of polygons (GeoPackage, GeoJSON, Shapefile, FlatGeobuf; read with pyogrio), whose
  attribute ``class_field`` holds each polygon's class; geometries are reprojected to the image's
  CRS and burnt in with ``rasterio.features.rasterize`` (a pixel is labelled when its centre lies
  inside a polygon); or
* a single-band integer raster (GeoTIFF) on the image's pixel grid (same CRS and pixel size, origin
  a whole number of pixels away; extent may differ), whose values are the classes; its nodata is
  unlabelled.

**Class map.** ``class_map`` maps each source value (an attribute value or a mask value, as text)
to a class name, or to ``None`` (written ``-`` on the command line) to leave those pixels
unlabelled; several values may share one class. The class order is the order in which names first
appear in the map. Every source value found must be in the map: an unmapped value is an error,
never a silent drop. Without a map, each distinct value is its own class (sorted).

**Unlabelled pixels** (:data:`IGNORE` = 255): outside every polygon, nodata in the mask, values
mapped to ``-``, and pixels covered by polygons of *different* classes (OSM land-use polygons
overlap in places; such pixels have no single truth). They are ignored by the loss and by IoU.

**Regions** are bounds ``minx,miny,maxx,maxy`` in the image's CRS, turned into the window of
whole pixels inside them (:func:`region_window`): the way a scene is split into a training part
and a held-out part.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geofg.errors import ConfigError, InputError
from geofg.grid import Window

__all__ = [
    "IGNORE",
    "Labels",
    "class_colours",
    "load_labels",
    "parse_class_map",
    "parse_region",
    "region_window",
]

IGNORE = 255
"""Label value of unlabelled pixels (ignored by the loss and by IoU)."""

VECTOR_SUFFIXES = frozenset({".gpkg", ".geojson", ".json", ".shp", ".fgb"})
MASK_SUFFIXES = frozenset({".tif", ".tiff"})
MAX_CLASSES = 250

LANDCOVER_COLOURS: dict[str, str] = {
    "water": "#1f5fbf", "forest": "#1b5e20", "built-up": "#d32f2f", "residential": "#d32f2f",
    "cropland": "#e6c229", "farmland": "#e6c229", "grassland": "#9ccc65", "meadow": "#9ccc65",
    "grass": "#c5e1a5", "scrub": "#8d6e63", "wetland": "#4db6ac", "scrub-wetland": "#6d8f72",
}  # fmt: skip
"""Display colours of common land-cover class names; other names get the tab20 palette."""

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
           "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]  # fmt: skip


def class_colours(names: Sequence[str]) -> list[str]:
    """Return a display colour per class name (known land-cover names, else tab20 cycled)."""
    return [LANDCOVER_COLOURS.get(n.casefold(), PALETTE[i % len(PALETTE)])
            for i, n in enumerate(names)]


def parse_class_map(text: str | None) -> dict[str, str | None] | None:
    """Parse ``"farm=cropland,meadow=grassland,grass=grassland,wetland=-"`` (``-``: unlabelled).

    Raises:
        ConfigError: An item without ``=``, an empty side, or a source value given twice.
    """
    if text is None or not text.strip():
        return None
    out: dict[str, str | None] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        src, sep, dst = item.partition("=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise ConfigError(f"--class-map item {item.strip()!r}: expected SOURCE=CLASS (or"
                              " SOURCE=- to leave it unlabelled); fix the map, e.g."
                              " farm=cropland,meadow=grassland")
        if src in out:
            raise ConfigError(f"--class-map maps {src!r} twice; give each source value once")
        out[src] = None if dst == "-" else dst
    if not out:
        raise ConfigError("--class-map is empty; give SOURCE=CLASS items separated by commas")
    return out


def parse_region(text: str | Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """Parse region bounds ``"minx,miny,maxx,maxy"`` (image CRS units); None passes through.

    Raises:
        ConfigError: Not four numbers, or min >= max.
    """
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        vals = [float(p) for p in parts]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise ConfigError(f"--region {text!r}: expected four numbers minx,miny,maxx,maxy in the"
                          " image's CRS units, e.g. 330000,5814360,339600,5822040")
    minx, miny, maxx, maxy = vals
    if minx >= maxx or miny >= maxy:
        raise ConfigError(f"--region {text!r}: expected minx < maxx and miny < maxy; swap them")
    return minx, miny, maxx, maxy


def region_window(transform: Sequence[float], height: int, width: int,
                  bounds: tuple[float, float, float, float] | None, where: str = "image") -> Window:
    """The window of the image's whole pixels lying inside ``bounds`` (the full grid for None).

    Raises:
        ConfigError: The bounds hold no whole pixel of the image.
    """
    if bounds is None:
        return Window(0, 0, height, width)
    a, _, c, _, e, f = transform[:6]
    minx, miny, maxx, maxy = bounds

    def _r(v: float) -> float:  # absorb float noise in bounds that sit on pixel edges
        return round(v, 6)

    col0 = math.ceil(_r((minx - c) / a))
    col1 = math.floor(_r((maxx - c) / a))
    row0 = math.ceil(_r((f - maxy) / abs(e)))
    row1 = math.floor(_r((f - miny) / abs(e)))
    col0, row0 = max(col0, 0), max(row0, 0)
    col1, row1 = min(col1, width), min(row1, height)
    if col1 <= col0 or row1 <= row0:
        left, top = c, f
        right, bottom = c + a * width, f + e * height
        raise ConfigError(f"--region {','.join(f'{v:g}' for v in bounds)}: expected bounds"
                          f" overlapping the {where} ({left:g},{bottom:g},{right:g},{top:g}),"
                          " found no whole pixel inside; fix the region")
    return Window(row0, col0, row1 - row0, col1 - col0)


def _value_text(v: Any) -> str:
    """An attribute or mask value as map text: integers without '.0', strings as they are."""
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def _resolve_map(values: Sequence[str], class_map: Mapping[str, str | None] | None,
                 class_names: Sequence[str] | None, path: Path,
                 what: str) -> tuple[dict[str, int | None], list[str]]:
    """Map source values to class indices; return ``(value -> index or None, class names)``."""
    found = sorted(set(values))
    if class_map is None:
        if class_names is not None:  # evaluation: values must be the model's class names
            class_map = {n: n for n in class_names}
        else:
            class_map = {v: v for v in found}
    unmapped = [v for v in found if v not in class_map]
    if unmapped:
        raise InputError(f"{path}: {what} values {unmapped} are not in the class map (it maps"
                         f" {sorted(class_map)}); add them to --class-map (SOURCE=CLASS, or"
                         " SOURCE=- to leave them unlabelled)")
    names = list(class_names) if class_names is not None else list(
        dict.fromkeys(d for d in class_map.values() if d is not None))
    bad = sorted({d for d in class_map.values() if d is not None and d not in names})
    if bad:
        raise InputError(f"{path}: the class map names classes {bad} the model does not have"
                         f" (it has {names}); map the labels to the model's classes")
    if len(names) > MAX_CLASSES:
        raise InputError(f"{path}: expected at most {MAX_CLASSES} classes, found {len(names)};"
                         " merge classes with --class-map")
    lut = {v: (None if class_map[v] is None else names.index(class_map[v])) for v in found}
    return lut, names


@dataclass
class Labels:
    """Labels bound to one image grid; :meth:`rasterise` gives a window of class indices.

    Attributes:
        path: The labels file.
        kind: ``"polygons"`` or ``"mask"``.
        class_names: Classes in index order.
        class_field: The polygons' class attribute (None for a mask).
        class_map: Source value -> class name (None = unlabelled), as applied.
        notes: What was skipped or assumed, for the record.
    """

    path: Path
    kind: Literal["polygons", "mask"]
    class_names: list[str]
    class_field: str | None
    class_map: dict[str, str | None]
    transform: tuple[float, ...]
    notes: list[str] = field(default_factory=list)
    feature_counts: dict[str, int] = field(default_factory=dict)
    _shapes: list[tuple[dict[str, Any], int]] = field(default_factory=list, repr=False)
    _mask_info: Any = field(default=None, repr=False)
    _mask_offset: tuple[int, int] = (0, 0)
    _mask_lut: dict[int, int | None] = field(default_factory=dict, repr=False)

    def rasterise(self, window: Window) -> np.ndarray:
        """Return uint8 class indices ``(h, w)`` of ``window`` (image pixels), :data:`IGNORE` where
        unlabelled (including outside the labels' extent).

        Raises:
            InputError: A mask value missing from the class map.
        """
        if self.kind == "polygons":
            return self._rasterise_polygons(window)
        return self._read_mask(window)

    def _window_transform(self, window: Window) -> Any:
        import rasterio

        a, b, c, d, e, f = self.transform[:6]
        return rasterio.Affine(a, b, c + a * window.col_off, d, e, f + e * window.row_off)

    def _rasterise_polygons(self, window: Window) -> np.ndarray:
        from rasterio.features import rasterize

        shape = (window.height, window.width)
        out = np.full(shape, IGNORE, np.uint8)
        tr = self._window_transform(window)
        conflict = np.zeros(shape, bool)
        by_class: dict[int, list[dict[str, Any]]] = {}
        for geom, k in self._shapes:
            by_class.setdefault(k, []).append(geom)
        for k, geoms in sorted(by_class.items()):
            burnt = rasterize(((g, 1) for g in geoms), out_shape=shape, transform=tr, fill=0,
                              dtype="uint8").astype(bool)
            conflict |= burnt & (out != IGNORE)
            out[burnt] = k
        out[conflict] = IGNORE
        return out

    def _read_mask(self, window: Window) -> np.ndarray:
        from geofg.io.read import gdal_env
        from geofg.io.reader import RasterReader

        dr, dc = self._mask_offset
        mw = Window(window.row_off + dr, window.col_off + dc, window.height, window.width)
        with gdal_env(), RasterReader(self._mask_info, [0]) as reader:
            data, valid = reader.read(mw)
        vals = data[0]
        out = np.full(vals.shape, IGNORE, np.uint8)
        present = np.unique(vals[valid])
        missing = [int(v) for v in present if int(v) not in self._mask_lut]
        if missing:
            raise InputError(f"{self.path}: mask values {missing[:10]} are not in the class map"
                             f" (it maps {sorted(self._mask_lut)}); add them to --class-map"
                             " (VALUE=CLASS, or VALUE=- to leave them unlabelled)")
        for v in present:
            k = self._mask_lut[int(v)]
            if k is not None:
                out[valid & (vals == v)] = k
        return out


def _read_polygons(path: Path, class_field: str | None) -> tuple[list[Any], list[Any], str | None]:
    """Return (WKB geometries, class values, CRS WKT) of the polygons' first layer."""
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError, FieldError

    try:
        info = pyogrio.read_info(path)
    except (DataSourceError, DataLayerError, OSError, ValueError) as err:
        raise InputError(f"{path}: expected a readable vector file of polygons, found an error"
                         f" ({str(err).splitlines()[0]}); check the file") from None
    fields = [str(f) for f in info.get("fields", [])]
    if class_field is None:
        raise ConfigError(f"{path}: expected --class-field naming the attribute that holds each"
                          f" polygon's class, found none given; the file has {fields}")
    if class_field not in fields:
        raise InputError(f"{path}: expected a class attribute {class_field!r}, found attributes"
                         f" {fields}; pass --class-field with one of them")
    gtype = str(info.get("geometry_type") or "")
    if "Polygon" not in gtype and gtype not in ("Unknown", "Geometry", ""):
        raise InputError(f"{path}: expected Polygon or MultiPolygon geometries, found {gtype};"
                         " give polygons (buffer lines or points first)")
    try:
        meta, _, geoms, values = pyogrio.raw.read(path, columns=[class_field])
    except (DataSourceError, DataLayerError, FieldError, OSError, ValueError) as err:
        raise InputError(f"{path}: expected readable polygons, found an error"
                         f" ({str(err).splitlines()[0]}); check the file") from None
    crs = meta.get("crs")
    return list(geoms), list(values[0]), crs


def load_labels(path: str | Path, *, crs_wkt: str, transform: Sequence[float], height: int,
                width: int, class_field: str | None = None,
                class_map: Mapping[str, str | None] | None = None,
                class_names: Sequence[str] | None = None) -> Labels:
    """Open and check a labels file against an image grid (nothing is rasterised yet).

    Args:
        path: Polygons (vector file) or a class mask (GeoTIFF).
        crs_wkt, transform, height, width: The image's grid.
        class_field: Polygons: the attribute holding the class.
        class_map: Source value -> class name or None (unlabelled); see the module docstring.
        class_names: Fix the classes and their order (evaluation: the model's classes).

    Raises:
        InputError: Missing or unreadable file, no class attribute, other geometry types, values
            outside the class map, a mask on another grid, labels not overlapping the image.
        ConfigError: Unknown file kind, or polygons without ``class_field``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: expected a labels file (polygons or a class mask), found"
                         " nothing; check the path")
    suffix = path.suffix.lower()
    if suffix in VECTOR_SUFFIXES:
        return _load_polygons(path, crs_wkt, transform, height, width, class_field, class_map,
                              class_names)
    if suffix in MASK_SUFFIXES:
        return _load_mask(path, crs_wkt, transform, height, width, class_map, class_names)
    raise ConfigError(f"{path}: expected labels as polygons ({', '.join(sorted(VECTOR_SUFFIXES))})"
                      f" or a class mask ({', '.join(sorted(MASK_SUFFIXES))}), found"
                      f" {suffix or 'no extension'!r}; convert the labels")


def _image_bounds(transform: Sequence[float], height: int, width: int) -> tuple[float, ...]:
    a, _, c, _, e, f = transform[:6]
    xs, ys = (c, c + a * width), (f, f + e * height)
    return min(xs), min(ys), max(xs), max(ys)


def _overlaps(b1: Sequence[float], b2: Sequence[float]) -> bool:
    return b1[0] < b2[2] and b2[0] < b1[2] and b1[1] < b2[3] and b2[1] < b1[3]


def _load_polygons(path: Path, crs_wkt: str, transform: Sequence[float], height: int, width: int,
                   class_field: str | None, class_map: Mapping[str, str | None] | None,
                   class_names: Sequence[str] | None) -> Labels:
    import shapely
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.warp import transform_geom

    geoms, raw_values, src_crs = _read_polygons(path, class_field)
    notes = []
    keep = [(g, v) for g, v in zip(geoms, raw_values, strict=True)
            if g is not None and v is not None]
    if len(keep) < len(geoms):
        notes.append(f"{len(geoms) - len(keep)} features without geometry or {class_field} skipped")
    if not keep:
        raise InputError(f"{path}: expected polygons with a {class_field!r} value, found none;"
                         " check the file and --class-field")
    values = [_value_text(v) for _, v in keep]
    lut, names = _resolve_map(values, class_map, class_names, path, f"{class_field!r}")
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    image_crs = CRS.from_wkt(crs_wkt)
    try:
        src = CRS.from_user_input(src_crs) if src_crs else None
    except CRSError:
        src = None
    if src is None:
        raise InputError(f"{path}: expected polygons with a CRS, found none; set the layer's CRS"
                         " (e.g. ogr2ogr -a_srs EPSG:4326)")
    shapes: list[tuple[dict[str, Any], int]] = []
    img_bounds = _image_bounds(transform, height, width)
    hit = False
    for (wkb, _), v in zip(keep, values, strict=True):
        k = lut[v]
        if k is None:
            continue
        g = shapely.from_wkb(wkb)
        if g is None or g.is_empty:
            continue
        if g.geom_type not in ("Polygon", "MultiPolygon"):
            raise InputError(f"{path}: expected Polygon or MultiPolygon geometries, found"
                             f" {g.geom_type}; give polygons")
        gj = shapely.geometry.mapping(g)
        if src != image_crs:
            gj = transform_geom(src, image_crs, gj)
        gb = shapely.geometry.shape(gj).bounds
        hit = hit or _overlaps(gb, img_bounds)
        shapes.append((gj, k))
    if not hit:
        raise InputError(f"{path}: expected labelled polygons overlapping the image (bounds"
                         f" {','.join(f'{b:g}' for b in img_bounds)} in its CRS), found none;"
                         " give labels for this image")
    full_map = {v: (None if lut[v] is None else names[lut[v]]) for v in lut}
    if class_map is not None:
        full_map = {**dict(class_map), **full_map}
    return Labels(path=path, kind="polygons", class_names=names, class_field=class_field,
                  class_map=full_map, transform=tuple(transform), notes=notes,
                  feature_counts=counts, _shapes=shapes)


def _load_mask(path: Path, crs_wkt: str, transform: Sequence[float], height: int, width: int,
               class_map: Mapping[str, str | None] | None,
               class_names: Sequence[str] | None) -> Labels:
    from rasterio.crs import CRS

    from geofg.io.read import open_raster

    info = open_raster([path])
    if info.count != 1:
        raise InputError(f"{path}: expected a single-band class mask, found {info.count} bands;"
                         " give one band of class values")
    if np.dtype(info.dtype).kind not in "iub":
        raise InputError(f"{path}: expected integer class values, found {info.dtype}; write the"
                         " mask as uint8 or another integer type")
    if CRS.from_wkt(info.crs_wkt) != CRS.from_wkt(crs_wkt):
        raise InputError(f"{path}: expected the image's CRS, found another one; warp the mask"
                         " to the image's grid (gdalwarp -t_srs/-tr/-tap)")
    a, _, c, _, e, f = transform[:6]
    ma, mb, mc, md, me, mf = info.transform[:6]
    dc, dr = (c - mc) / a, (f - mf) / e
    if (not math.isclose(ma, a, rel_tol=1e-9) or not math.isclose(me, e, rel_tol=1e-9) or mb
            or md or abs(dc - round(dc)) > 1e-6 or abs(dr - round(dr)) > 1e-6):
        raise InputError(f"{path}: expected the image's pixel grid (pixel size {a:g} x {abs(e):g},"
                         f" aligned origin), found pixel size {ma:g} x {abs(me):g} at another"
                         " origin; warp the mask to the image's grid (gdalwarp -tr/-tap)")
    if not _overlaps(_image_bounds(info.transform, info.height, info.width),
                     _image_bounds(transform, height, width)):
        raise InputError(f"{path}: expected a mask overlapping the image, found it elsewhere;"
                         " give labels for this image")
    if class_map is None and class_names is not None:
        class_map = {str(i): n for i, n in enumerate(class_names)}
    if class_map is None:  # each value found is a class: read the mask once to find them
        from geofg.io.read import gdal_env
        from geofg.io.reader import RasterReader

        with gdal_env(), RasterReader(info, [0]) as reader:
            data, valid = reader.read(Window(0, 0, info.height, info.width))
        class_map = {str(int(v)): str(int(v)) for v in np.unique(data[0][valid])}
    names = list(class_names) if class_names is not None else list(
        dict.fromkeys(d for d in class_map.values() if d is not None))
    bad = sorted({d for d in class_map.values() if d is not None and d not in names})
    if bad:
        raise InputError(f"{path}: the class map names classes {bad} the model does not have"
                         f" (it has {names}); map the labels to the model's classes")
    lut: dict[int, int | None] = {}
    for v, d in class_map.items():
        if not re.fullmatch(r"-?\d+", v):
            raise ConfigError(f"--class-map key {v!r}: a mask's source values are integers;"
                              " write VALUE=CLASS, e.g. 1=water")
        lut[int(v)] = None if d is None else names.index(d)
    if not names:
        raise InputError(f"{path}: expected labelled pixels, found none (all nodata or mapped to"
                         " -); check the mask")
    return Labels(path=path, kind="mask", class_names=names, class_field=None,
                  class_map=dict(class_map), transform=tuple(transform),
                  _mask_info=info, _mask_offset=(round(dr), round(dc)), _mask_lut=lut)

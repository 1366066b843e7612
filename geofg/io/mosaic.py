"""The output mosaic: a Zarr v2 group on a fixed grid, written one whole chunk per unit.

Lifecycle (Ray's Datasink hooks): :func:`prepare` once on the driver (create, or open and check
the schema of an existing mosaic), :meth:`Mosaic.write_unit` per unit (any process, whole chunks
only, so no two writers touch one chunk), :meth:`Mosaic.finalize` once after a complete run
(provenance attributes, consolidated metadata).

Layout (CF / GeoZarr conventions, so ``xr.open_zarr(path, decode_coords="all").rio.crs`` and
GDAL's Zarr driver see the CRS)::

    class       (y, x) uint8, fill 255   learned land-cover class
    health      (y, x) uint8, fill 255   index-based crop-health zone (crop classes only)
    confidence  (y, x) uint8, fill 255   top class probability x 250
    ndvi        (y, x) uint8, fill 255   NDVI of every clear pixel (any class, any season) as
                                         code x 0.01 - 1 (CF scale_factor/add_offset: xarray
                                         decodes it; GDAL's band scale/offset); only for models
                                         whose bands include red and NIR (geofg.health)
    mask        (y, x) uint8, fill 255   0 clear, 1 cloud, 2 cloud shadow, 3 snow/ice (geofg.masks;
                                         Sentinel-2 inputs): class, health, confidence are 255
                                         wherever it is not 0
    x, y        1-D float64 pixel-centre coordinates
    spatial_ref ()     int, attrs crs_wkt / spatial_ref / GeoTransform
    .geofg/     ledger and run lock (not Zarr nodes)

Why Zarr v2 (format 2, written by zarr-python 3): GDAL's Zarr driver, and so QGIS, rasterio and
``gdalinfo``, reads it; GDAL 3.10 (rasterio's wheel) refuses every Zarr v3 array ("Unsupported
codec: bytes") and Debian 12's GDAL 3.6 does not find v3 arrays at all (measured; docs/design.md,
"Mosaic"). So each array is v2 with dimension names in ``_ARRAY_DIMENSIONS`` (xarray's
convention, which GDAL reads too), chunk keys ``LAYER/ROW/COL`` (``/`` separator: the same folder
per chunk row as before), the zstd compressor with its frame checksum on (XXH64 of the chunk,
verified by zarr and GDAL on every read: bit rot is an error, as crc32c was in v3; a crc32c
filter would make GDAL refuse the array), and the CRS twice: CF ``grid_mapping`` (GDAL >= 3.9,
xarray) and GDAL's own ``_CRS`` attribute (GDAL 3.6 reads only that).

A *time-series* mosaic (``MosaicSpec.time``, written by ``geofg scan``) has the same layers on
``(time, y, x)``, chunked ``(1, chunk, chunk)``, one slice per acquisition date in the order the
dates arrived, plus the ``latest`` view::

    time          (time,) int32 days since 1970-01-01 (CF), appended as dates arrive
    class, health, confidence, ndvi   (time, y, x) uint8, fill 255
    latest_class, latest_health, latest_confidence, latest_ndvi   (y, x) uint8, fill 255: the most recent
                  date (by date, not arrival) with a valid class at each pixel
    latest_time   (y, x) int32 days since 1970-01-01 of that date, fill -2**31

Never ``mode="w"`` or ``overwrite=True`` on a mosaic that exists (that wipes it): an existing
mosaic is opened ``r+`` and its grid and schema are compared first.

What geofg owns (docs/reliability.md): the names :func:`owned_names` lists, nothing else.
``--overwrite`` removes only those, and refuses (exit 3, nothing touched) when the folder holds
anything else or an input lies inside it. :func:`create` writes the group's ``.zattrs`` first
with a ``geofg:creating`` marker and puts the grid attributes in place last, so a creation cut
short (disk full, kill) leaves a folder the next run recognises as half-made and re-creates,
never one that every later run refuses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Zstd

from geofg.errors import MosaicDamagedError, MosaicExistsError, MosaicSchemaMismatchError
from geofg.grid import WorkUnit
from geofg.io.chunks import (  # noqa: F401 (re-exported: the chunk helpers were defined here)
    DECODE_ERRORS,
    _fsync_path,
    _fsync_tree,
    _short,
    check_chunks,
    chunk_sizes,
    damaged_chunk_error,
    first_damaged_chunk,
    list_chunks,
    sweep_partials,
    unit_chunk_keys,
    write_region,
)
from geofg.io.objstore import ObjectPrefix, is_object_target
from geofg.io.store import Folder, Target, zarr_store
from geofg.masks import MASK_CLASSES
from geofg.io.atomic import atomic_write

log = logging.getLogger(__name__)

FILL = 255
LAYERS = ("class", "health", "confidence")
META_DIR = ".geofg"
ZARR_FORMAT = 2
#: Every array's compressor: zstd with the frame's content checksum, verified on every read.
COMPRESSOR = Zstd(level=3, checksum=True)
#: Chunk keys ``ROW/COL`` (``T/ROW/COL`` on a time axis) below the array's folder.
KEY_ENCODING = {"name": "v2", "separator": "/"}
#: 3: Zarr v2 with the ``ndvi`` index layer. 2 was the same without it, 1 Zarr v3; an older
#: mosaic is refused on re-open (one line naming both versions) until replaced with --overwrite.
SCHEMA_VERSION = 3


@dataclass(frozen=True)
class MosaicSpec:
    """What a mosaic must look like: grid, chunking and the class legend."""

    height: int
    width: int
    chunk: int
    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    class_names: tuple[str, ...]
    class_colours: tuple[str, ...]
    health_names: tuple[str, ...]
    health_colours: tuple[str, ...]
    layers: tuple[str, ...] = LAYERS
    time: bool = False

    def grid_attrs(self) -> dict[str, Any]:
        """The attributes that identify the grid and schema (compared on re-open)."""
        extra = {"time": True} if self.time else {}
        return {
            **extra,
            "schema_version": SCHEMA_VERSION,
            "height": self.height,
            "width": self.width,
            "chunk": self.chunk,
            "crs_wkt": self.crs_wkt,
            "transform": list(self.transform),
            "layers": list(self.layers),
            "class_names": list(self.class_names),
            "health_names": list(self.health_names),
        }


def _geotransform(t: tuple[float, ...]) -> str:
    a, b, c, d, e, f = t
    return f"{c!r} {a!r} {b!r} {f!r} {d!r} {e!r}"


CREATING = "geofg:creating"
"""Group attribute present only while :func:`create` runs (and after a creation cut short)."""
_OWN_TOP = (".zgroup", ".zattrs", ".zmetadata", "zarr.json", "x", "y", "spatial_ref", "time", "latest_time",
            META_DIR)


def owned_names(layers: tuple[str, ...] | list[str]) -> set[str]:
    """The top-level names geofg writes in a mosaic with these layers (all it ever removes)."""
    return {*_OWN_TOP, *layers, *(LATEST + n for n in layers)}


def _group_attrs(path: Target) -> dict[str, Any] | None:
    """The group's attributes (Zarr v2 ``.zattrs`` beside ``.zgroup``, or a v3 ``zarr.json``)."""
    f = Folder(path)
    try:
        if f.is_file(".zgroup"):
            attrs = json.loads(f.read_text(".zattrs")) if f.is_file(".zattrs") else {}
        else:
            attrs = json.loads(f.read_text("zarr.json")).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    return attrs if isinstance(attrs, dict) else None


def is_mosaic(path: Target) -> bool:
    """Return True when ``path`` is a geofg mosaic (a Zarr group with geofg grid attributes)."""
    attrs = _group_attrs(path)
    return attrs is not None and "geofg:grid" in attrs


def is_half_made(path: Target) -> bool:
    """Return True when ``path`` is a mosaic whose :func:`create` was cut short (disk full, kill).

    That is a group with the :data:`CREATING` marker and no grid yet, or a v2 ``.zgroup`` without
    its ``.zattrs`` (the cut came between the two files zarr writes for a group).
    """
    f = Folder(path)
    if f.is_file(".zgroup") and not f.is_file(".zattrs"):
        return True
    attrs = _group_attrs(path)
    return attrs is not None and CREATING in attrs and "geofg:grid" not in attrs


def _layers_of(path: Target, spec: MosaicSpec) -> tuple[str, ...]:
    attrs = _group_attrs(path) or {}
    found = attrs.get("geofg:grid", {}).get("layers", []) if isinstance(attrs.get("geofg:grid"), dict) else []
    return tuple(dict.fromkeys([*spec.layers, *(str(n) for n in found if isinstance(n, str))]))


def foreign_entries(path: Target, spec: MosaicSpec) -> list[str]:
    """The top-level entries of ``path`` geofg did not write (sorted names)."""
    own = owned_names(_layers_of(path, spec))
    return sorted(n for n in Folder(path).names() if n not in own)


def _inside(inputs: tuple[str, ...], path: Target) -> str | None:
    if is_object_target(path):  # an s3:// or /vsis3/ input below the output prefix
        root = ObjectPrefix.of(str(path))
        below = (f"s3://{root.bucket}/{root.prefix}/", f"/vsis3/{root.bucket}/{root.prefix}/")
        return next((raw for raw in inputs if str(raw).startswith(below)), None)
    root = Path(path).resolve()
    for raw in inputs:
        try:
            if Path(raw).resolve().is_relative_to(root):
                return raw
        except (OSError, RuntimeError):
            continue
    return None


def check_output(path: Target, spec: MosaicSpec, overwrite: bool, inputs: tuple[str, ...] = ()) -> bool:
    """Check, without writing, that ``path`` can receive this mosaic; return True if it exists.

    A half-made mosaic (:func:`is_half_made`) counts as absent: the run re-creates it.

    Raises:
        MosaicExistsError: path exists and is not a geofg mosaic; or, replacing it (``overwrite``
            or a half-made one), it holds files geofg did not write or an input lies inside it.
        MosaicSchemaMismatchError: an existing mosaic has another grid or schema (and no overwrite).
        MosaicDamagedError: an existing mosaic's metadata cannot be read (and no overwrite).
        InputError, StorageUnreachableError: on S3, the bucket is missing or the credentials are
            refused (3), or the endpoint does not answer (5).
    """
    f = Folder(path)
    if not f.exists():
        return False
    is_dir = f.is_dir()
    half = is_dir and is_half_made(path)
    if not is_dir or not (half or is_mosaic(path)):
        if is_dir and not (f.names() - {META_DIR}) and not f.names(f"{META_DIR}/units"):
            return False  # empty, or only the lock folder of a run that died before creating it
        raise MosaicExistsError(
            f"{path}: expected a new path or a geofg mosaic, found an existing "
            f"{'directory' if is_dir else 'file'} that is not one; choose another -o path"
        )
    if overwrite or half:
        inside = _inside(inputs, path)
        if inside is not None:
            raise MosaicExistsError(
                f"{path}: expected an output that holds none of the inputs, found the input "
                f"{inside} inside it; --overwrite would delete it: move the input out or choose "
                "another -o path"
            )
        foreign = foreign_entries(path, spec)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
            raise MosaicExistsError(
                f"{path}: expected only what geofg wrote, found other files ({shown}); nothing was "
                "touched: move them out of the mosaic or choose another -o path"
            )
    if half:
        log.warning("%s: a previous run's mosaic creation was cut short; creating it again", path)
        return False
    if overwrite:
        return True
    found = open_checked(path).attrs["geofg:grid"]
    want = spec.grid_attrs()
    diff = [k for k in want if found.get(k) != want[k]]
    if diff:
        k = diff[0]
        shown = {"crs_wkt": "CRS", "transform": "transform"}.get(k, k)
        if k == "schema_version":
            raise MosaicSchemaMismatchError(
                f"{path}: expected a mosaic of schema {want[k]} (this geofg), found schema "
                f"{_short(found.get(k))} (an older geofg; 3 added the ndvi layer); use --overwrite to "
                "rebuild it or choose another -o path")  # fmt: skip
        raise MosaicSchemaMismatchError(
            f"{path}: existing mosaic has another {shown} (mosaic: {_short(found.get(k))}, this run: "
            f"{_short(want[k])}); use --overwrite to replace it or choose another -o path"
        )
    return True


def _damaged(path: Target, what: str, e: BaseException) -> MosaicDamagedError:
    cause = _short(str(e).splitlines()[0] if str(e) else type(e).__name__)
    return MosaicDamagedError(
        f"{path}: {what} cannot be read ({type(e).__name__}: {cause}); the mosaic is damaged: "
        "re-run the command that made it with --overwrite to replace it (or restore it from a backup)"
    )


def open_checked(path: Target, mode: str = "r") -> zarr.Group:
    """Open a mosaic's group and every array it names; a damaged one is a one-line error.

    Raises:
        MosaicDamagedError: the group's ``.zattrs`` or an array's ``.zarray`` cannot be read.
    """
    try:
        group = zarr.open_group(zarr_store(path, read_only=mode == "r"), mode=mode,  # type: ignore[arg-type]
                                use_consolidated=False)
        grid = group.attrs["geofg:grid"]
    except DECODE_ERRORS as e:
        raise _damaged(path, ".zattrs", e) from None
    names = list(grid.get("layers", []))
    if grid.get("time"):
        names += [LATEST + n for n in names] + ["latest_time", "time"]
    for name in names:
        try:
            group[name]
        except DECODE_ERRORS as e:
            raise _damaged(path, f"{name}/.zarray", e) from None
    return group


def create(path: Target, spec: MosaicSpec, attrs: dict[str, Any]) -> None:
    """Create the mosaic's group and arrays (metadata only; no chunk is written).

    If ``path`` holds an old or half-made mosaic, what geofg wrote there is removed first
    (:func:`owned_names`; the run lock stays), nothing else. The group is written first with the
    :data:`CREATING` marker and its grid attributes last, so a creation cut short is recognised
    (:func:`is_half_made`) and redone by the next run.
    """
    f = Folder(path)
    own = owned_names(_layers_of(path, spec))
    for name in sorted(f.names() & own):
        if name == META_DIR:
            for sub in f.names(META_DIR) - {"lock", "lock.break"}:
                f.remove(f"{META_DIR}/{sub}")
        else:
            f.remove(name)
    group = zarr.open_group(zarr_store(path), mode="a", zarr_format=ZARR_FORMAT, attributes={CREATING: True})
    if spec.time:
        _create_time_layers(group, spec)
        _create_coords(group, spec)
    else:
        _create_layers(group, spec)
    if f.path is not None:  # a PUT on S3 is durable when it returns
        for p in sorted(f.path.rglob("*"), key=lambda p: -len(p.parts)):
            _fsync_path(p, directory=p.is_dir())
    group.attrs.put({"geofg:grid": spec.grid_attrs(), **attrs})  # the mosaic exists from here on
    if f.path is not None:
        _fsync_path(f.path, directory=True)


def remove_unused(path: Target, spec: MosaicSpec, keep_folder: bool) -> None:
    """Remove a mosaic this run created but never wrote a unit into (after a cluster error).

    Only what geofg writes (:func:`owned_names`) goes, and only while the ledger holds no record;
    the folder itself goes too when it is then empty, unless ``keep_folder``.
    """
    f = Folder(path)
    if f.names(f"{META_DIR}/units"):
        return
    own = owned_names(_layers_of(path, spec))
    for name in sorted(f.names() & own) if f.is_dir() else []:
        with contextlib.suppress(OSError):
            f.remove(name)
    if not keep_folder and f.path is not None:
        with contextlib.suppress(OSError):
            f.path.rmdir()


def _create_layers(group: zarr.Group, spec: MosaicSpec) -> None:
    chunks = (spec.chunk, spec.chunk)
    shape = (spec.height, spec.width)
    for name in spec.layers:
        new_array(group, name, ("y", "x"), shape=shape, chunks=chunks, dtype="uint8", fill_value=FILL,
                  attributes=_layer_attrs(spec, name))  # fmt: skip
    _create_coords(group, spec)


def new_array(group: zarr.Group, name: str, dims: tuple[str, ...], *, attributes: dict[str, Any],
              **kw: Any) -> zarr.Array:  # fmt: skip
    """Create a v2 array of the mosaic: dimension names, chunk keys and compressor as above."""
    return group.create_array(name, attributes={**attributes, "_ARRAY_DIMENSIONS": list(dims)},
                              chunk_key_encoding=KEY_ENCODING, compressors=COMPRESSOR, **kw)  # fmt: skip


def _layer_attrs(spec: MosaicSpec, name: str) -> dict[str, Any]:
    legend = {
        "class": (spec.class_names, spec.class_colours, "land-cover class", "learned"),
        "health": (spec.health_names, spec.health_colours, "crop health zone", "index-based"),
        "mask": (tuple(n for n, _ in MASK_CLASSES), tuple(c for _, c in MASK_CLASSES),
                 "cloud, cloud shadow and snow/ice mask",
                 "learned (ukis-csmask clouds and shadows) and index-based (NDSI snow/ice)"),
    }
    a: dict[str, Any] = {"grid_mapping": "spatial_ref", "_CRS": {"wkt": spec.crs_wkt}}
    if name == "ndvi":  # the codes of geofg.health.quantise_index (io sits below health: not imported)
        a.update(long_name="normalized difference vegetation index", source="index-based", units="1",
                 scale_factor=0.01, add_offset=-1.0, valid_min=0, valid_max=200)  # fmt: skip
    elif name in legend:
        names, colours, long_name, source = legend[name]
        a.update(
            long_name=long_name,
            source=source,
            flag_values=list(range(len(names))),
            flag_meanings=" ".join(n.replace(" ", "_") for n in names),
            class_names=list(names),
            colours=list(colours),
        )
    else:
        a.update(long_name="top-class probability x 250", source="learned", scale_hint=1 / 250)
    return a


def _create_coords(group: zarr.Group, spec: MosaicSpec) -> None:
    a, _, c, _, e, f = spec.transform
    xs = new_array(
        group, "x", ("x",), shape=(spec.width,), dtype="float64", fill_value=None,
        attributes={"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"},
    )
    xs[:] = c + a * (np.arange(spec.width) + 0.5)
    ys = new_array(
        group, "y", ("y",), shape=(spec.height,), dtype="float64", fill_value=None,
        attributes={"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"},
    )
    ys[:] = f + e * (np.arange(spec.height) + 0.5)
    ref = new_array(
        group, "spatial_ref", (), shape=(), dtype="int32", fill_value=None,
        attributes={
            "crs_wkt": spec.crs_wkt,
            "spatial_ref": spec.crs_wkt,
            "GeoTransform": _geotransform(spec.transform),
        },
    )
    ref[...] = 0


@dataclass
class Mosaic:
    """An open mosaic that units write into (one handle per process or thread is fine)."""

    path: Target
    _arrays: dict[str, zarr.Array] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        group = zarr.open_group(zarr_store(self.path), mode="r+", use_consolidated=False)
        for name in group.attrs["geofg:grid"]["layers"]:
            self._arrays[name] = group[name]

    def write_unit(self, unit: WorkUnit, layers: dict[str, np.ndarray]) -> None:
        """Write the unit's core (whole chunks only) for every layer."""
        c = unit.core
        for name, arr in self._arrays.items():
            write_region(arr, (slice(c.row_off, c.row_end), slice(c.col_off, c.col_end)), layers[name])

    @property
    def layers(self) -> tuple[str, ...]:
        """The layer names."""
        return tuple(self._arrays)

    def sync_unit(self, unit: WorkUnit) -> None:
        """fsync the unit's chunk files and their folders (zarr's LocalStore never does).

        An empty unit has no chunk file (zarr deletes fill-value chunks): nothing to sync. On S3
        nothing either: a PUT is durable when it returns.
        """
        if is_object_target(self.path):
            return
        for name in self._arrays:
            folder = Path(self.path) / name / str(unit.row)
            _fsync_path(folder / str(unit.col))
            _fsync_path(folder, directory=True)

    def chunk_sizes(self, unit: WorkUnit) -> dict[str, int]:
        """The unit's chunk keys and file sizes (0: no file), for its ledger record."""
        return chunk_sizes(self.path, unit_chunk_keys(self.layers, unit.row, unit.col))

    def read_layer(self, name: str, rows: slice, cols: slice) -> np.ndarray:
        """Read a region of one layer."""
        return self._arrays[name][rows, cols]


def finalize(path: Target, attrs: dict[str, Any], consolidate: bool) -> None:
    """Update provenance attributes; consolidate metadata only after a complete run."""
    group = zarr.open_group(zarr_store(path), mode="r+", use_consolidated=False)
    group.attrs.update(attrs)
    if consolidate:
        with warnings.catch_warnings():
            # zarr warns that consolidated metadata is not in the v3 spec (we know; readers that
            # ignore it still work) and that .geofg/ (ledger, lock) is not a Zarr node (by design).
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
            zarr.consolidate_metadata(zarr_store(path))


def drop_consolidated(path: Target) -> None:
    """Remove consolidated metadata before writing, so readers never see a stale copy."""
    if is_object_target(path):  # only v2 mosaics were ever written to S3
        ObjectPrefix.of(str(path)).delete(".zmetadata")
        return
    path = Path(path)
    (path / ".zmetadata").unlink(missing_ok=True)
    meta = path / "zarr.json"  # a v3 mosaic of schema 1
    if not meta.is_file():
        return
    doc = json.loads(meta.read_text())
    if doc.pop("consolidated_metadata", None) is not None:
        atomic_write(meta, json.dumps(doc, indent=2))


# --- time-series mosaics (geofg scan) ---------------------------------------------------------

TIME_FILL = -(2**31)
LATEST = "latest_"
_DAYS = "days since 1970-01-01"


def _create_time_layers(group: zarr.Group, spec: MosaicSpec) -> None:
    c = spec.chunk
    for name in spec.layers:
        new_array(group, name, ("time", "y", "x"), shape=(0, spec.height, spec.width), chunks=(1, c, c),
                  dtype="uint8", fill_value=FILL, attributes=_layer_attrs(spec, name))  # fmt: skip
        a = _layer_attrs(spec, name)
        a["long_name"] = f"latest valid {a['long_name']}"
        a["ancillary_variables"] = "latest_time"
        new_array(group, LATEST + name, ("y", "x"), shape=(spec.height, spec.width), chunks=(c, c),
                  dtype="uint8", fill_value=FILL, attributes=a)  # fmt: skip
    new_array(
        group, "latest_time", ("y", "x"), shape=(spec.height, spec.width), chunks=(c, c), dtype="int32",
        fill_value=TIME_FILL,
        attributes={"long_name": "date of the latest valid pixel", "units": _DAYS,
                    "calendar": "proleptic_gregorian", "grid_mapping": "spatial_ref",
                    "_CRS": {"wkt": spec.crs_wkt}},
    )  # fmt: skip
    new_array(
        group, "time", ("time",), shape=(0,), chunks=(512,), dtype="int32", fill_value=TIME_FILL,
        attributes={"standard_name": "time", "units": _DAYS, "calendar": "proleptic_gregorian",
                    "axis": "T", "long_name": "acquisition date (slices in order of arrival)"},
    )  # fmt: skip


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
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Zstd

from geofg.errors import MosaicDamagedError, MosaicExistsError, MosaicSchemaMismatchError
from geofg.grid import WorkUnit
from geofg.masks import MASK_CLASSES

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


def _group_attrs(path: Path) -> dict[str, Any] | None:
    """The group's attributes (Zarr v2 ``.zattrs`` beside ``.zgroup``, or a v3 ``zarr.json``)."""
    try:
        if (path / ".zgroup").is_file():
            attrs = json.loads((path / ".zattrs").read_text()) if (path / ".zattrs").is_file() else {}
        else:
            attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    return attrs if isinstance(attrs, dict) else None


def is_mosaic(path: Path) -> bool:
    """Return True when ``path`` is a geofg mosaic (a Zarr group with geofg grid attributes)."""
    attrs = _group_attrs(path)
    return attrs is not None and "geofg:grid" in attrs


def is_half_made(path: Path) -> bool:
    """Return True when ``path`` is a mosaic whose :func:`create` was cut short (disk full, kill).

    That is a group with the :data:`CREATING` marker and no grid yet, or a v2 ``.zgroup`` without
    its ``.zattrs`` (the cut came between the two files zarr writes for a group).
    """
    if (path / ".zgroup").is_file() and not (path / ".zattrs").exists():
        return True
    attrs = _group_attrs(path)
    return attrs is not None and CREATING in attrs and "geofg:grid" not in attrs


def _layers_of(path: Path, spec: MosaicSpec) -> tuple[str, ...]:
    attrs = _group_attrs(path) or {}
    found = attrs.get("geofg:grid", {}).get("layers", []) if isinstance(attrs.get("geofg:grid"), dict) else []
    return tuple(dict.fromkeys([*spec.layers, *(str(n) for n in found if isinstance(n, str))]))


def foreign_entries(path: Path, spec: MosaicSpec) -> list[str]:
    """The top-level entries of ``path`` geofg did not write (sorted names)."""
    own = owned_names(_layers_of(path, spec))
    return sorted(p.name for p in path.iterdir() if p.name not in own)


def _inside(inputs: tuple[str, ...], path: Path) -> str | None:
    root = path.resolve()
    for raw in inputs:
        try:
            if Path(raw).resolve().is_relative_to(root):
                return raw
        except (OSError, RuntimeError):
            continue
    return None


def check_output(path: Path, spec: MosaicSpec, overwrite: bool, inputs: tuple[str, ...] = ()) -> bool:
    """Check, without writing, that ``path`` can receive this mosaic; return True if it exists.

    A half-made mosaic (:func:`is_half_made`) counts as absent: the run re-creates it.

    Raises:
        MosaicExistsError: path exists and is not a geofg mosaic; or, replacing it (``overwrite``
            or a half-made one), it holds files geofg did not write or an input lies inside it.
        MosaicSchemaMismatchError: an existing mosaic has another grid or schema (and no overwrite).
        MosaicDamagedError: an existing mosaic's metadata cannot be read (and no overwrite).
    """
    if not path.exists():
        return False
    half = path.is_dir() and is_half_made(path)
    if not path.is_dir() or not (half or is_mosaic(path)):
        if path.is_dir() and not any(p.name != META_DIR for p in path.iterdir()) and not any(
            (path / META_DIR / "units").glob("*")
        ):
            return False  # empty, or only the lock folder of a run that died before creating it
        raise MosaicExistsError(
            f"{path}: expected a new path or a geofg mosaic, found an existing "
            f"{'directory' if path.is_dir() else 'file'} that is not one; choose another -o path"
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


def _short(v: object) -> str:
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _damaged(path: Path, what: str, e: BaseException) -> MosaicDamagedError:
    cause = _short(str(e).splitlines()[0] if str(e) else type(e).__name__)
    return MosaicDamagedError(
        f"{path}: {what} cannot be read ({type(e).__name__}: {cause}); the mosaic is damaged: "
        "re-run the command that made it with --overwrite to replace it (or restore it from a backup)"
    )


#: What zarr raises on metadata or chunks it cannot decode (garbage JSON, truncated zstd frame,
#: crc32c mismatch, a missing array folder).
DECODE_ERRORS = (ValueError, KeyError, TypeError, RuntimeError, OSError)


def open_checked(path: Path, mode: str = "r") -> zarr.Group:
    """Open a mosaic's group and every array it names; a damaged one is a one-line error.

    Raises:
        MosaicDamagedError: the group's ``.zattrs`` or an array's ``.zarray`` cannot be read.
    """
    try:
        group = zarr.open_group(str(path), mode=mode, use_consolidated=False)  # type: ignore[arg-type]
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


def create(path: Path, spec: MosaicSpec, attrs: dict[str, Any]) -> None:
    """Create the mosaic's group and arrays (metadata only; no chunk is written).

    If ``path`` holds an old or half-made mosaic, what geofg wrote there is removed first
    (:func:`owned_names`; the run lock stays), nothing else. The group is written first with the
    :data:`CREATING` marker and its grid attributes last, so a creation cut short is recognised
    (:func:`is_half_made`) and redone by the next run.
    """
    if path.exists():
        own = owned_names(_layers_of(path, spec))
        for child in path.iterdir():
            if child.name not in own:
                continue
            if child.name == META_DIR:
                for sub in child.iterdir():
                    if sub.name not in ("lock", "lock.break"):
                        shutil.rmtree(sub) if sub.is_dir() else sub.unlink()
            elif child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    group = zarr.open_group(str(path), mode="a", zarr_format=ZARR_FORMAT, attributes={CREATING: True})
    if spec.time:
        _create_time_layers(group, spec)
        _create_coords(group, spec)
    else:
        _create_layers(group, spec)
    for p in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
        _fsync_path(p, directory=p.is_dir())
    group.attrs.put({"geofg:grid": spec.grid_attrs(), **attrs})  # the mosaic exists from here on
    _fsync_path(path, directory=True)


def remove_unused(path: Path, spec: MosaicSpec, keep_folder: bool) -> None:
    """Remove a mosaic this run created but never wrote a unit into (after a cluster error).

    Only what geofg writes (:func:`owned_names`) goes, and only while the ledger holds no record;
    the folder itself goes too when it is then empty, unless ``keep_folder``.
    """
    units = path / META_DIR / "units"
    if units.is_dir() and any(units.iterdir()):
        return
    own = owned_names(_layers_of(path, spec))
    for child in list(path.iterdir()) if path.is_dir() else []:
        if child.name in own:
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    if not keep_folder:
        with contextlib.suppress(OSError):
            path.rmdir()


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


def unit_chunk_keys(layers: tuple[str, ...], row: int, col: int, t: int | None = None) -> list[str]:
    """The chunk keys (paths under the mosaic) of unit ``(row, col)`` in ``layers`` (slice ``t``)."""
    lead = "" if t is None else f"{t}/"
    return [f"{name}/{lead}{row}/{col}" for name in layers]


def chunk_sizes(path: Path, keys: list[str]) -> dict[str, int]:
    """Bytes of each chunk file; 0 for no file (the chunk holds only the fill value)."""
    sizes = {}
    for key in keys:
        try:
            sizes[key] = os.stat(path / key).st_size
        except FileNotFoundError:
            sizes[key] = 0
    return sizes


def check_chunks(path: Path, chunks: dict[str, int], decode: bool = False) -> str | None:
    """Why a unit's recorded chunks are not intact (None when they are).

    Compares each chunk file's size with the one recorded when the unit was written (a deleted or
    truncated chunk); with ``decode``, also decodes each chunk, which checks its crc32c (bit rot).
    """
    for key, size in sorted(chunks.items()):
        try:
            got = os.stat(path / key).st_size
        except FileNotFoundError:
            got = 0
        if got != size:
            return f"{key}: {'missing' if got == 0 else f'{got} bytes'}, written with {size} bytes"
    if decode:
        group = zarr.open_group(str(path), mode="r", use_consolidated=False)
        for key, size in sorted(chunks.items()):
            name, *idx = key.split("/")
            if size == 0:
                continue
            try:
                group[name].get_block_selection(tuple(int(i) for i in idx))
            except DECODE_ERRORS as e:
                return f"{key}: cannot be decoded ({type(e).__name__}: {_short(str(e))})"
    return None


def first_damaged_chunk(arr: zarr.Array) -> tuple[str, BaseException] | None:
    """The key (``c/...``) and error of the first chunk of ``arr`` that cannot be decoded."""
    import itertools

    grid = [range(-(-n // c)) for n, c in zip(arr.shape, arr.chunks, strict=True)]
    for idx in itertools.product(*grid):
        try:
            arr.get_block_selection(idx)
        except DECODE_ERRORS as e:
            return "/".join(map(str, idx)), e
    return None


def damaged_chunk_error(path: Path, name: str, arr: zarr.Array, cause: BaseException) -> MosaicDamagedError:
    """A one-line error naming the damaged chunk of ``arr`` (layer ``name``), its unit and the fix."""
    found = first_damaged_chunk(arr)
    key, e = found if found is not None else ("(unknown chunk)", cause)
    idx = key.split("/")
    unit = f" (unit r{int(idx[-2]):04d}_c{int(idx[-1]):04d})" if len(idx) >= 2 else ""
    return MosaicDamagedError(
        f"{path}: chunk {name}/{key}{unit} is damaged ({type(e).__name__}: "
        f"{_short(str(e).splitlines()[0] if str(e) else '')}); run `geofg info --verify {path}`, "
        "then re-run the command that made the mosaic to redo that unit"
    )


def sweep_partials(path: Path) -> int:
    """Delete ``*.partial`` files zarr's atomic writes leave when a writer is killed."""
    n = 0
    for p in path.rglob("*.partial"):
        try:
            p.unlink()
            n += 1
        except FileNotFoundError:
            pass
    if n:
        log.info("removed %d orphaned partial chunk files from %s", n, path)
    return n


@dataclass
class Mosaic:
    """An open mosaic that units write into (one handle per process or thread is fine)."""

    path: Path
    _arrays: dict[str, zarr.Array] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
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

        An empty unit has no chunk file (zarr deletes fill-value chunks): nothing to sync.
        """
        for name in self._arrays:
            folder = self.path / name / str(unit.row)
            chunk = folder / str(unit.col)
            for target, flags in ((chunk, os.O_RDONLY), (folder, os.O_RDONLY | os.O_DIRECTORY)):
                try:
                    fd = os.open(target, flags)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def chunk_sizes(self, unit: WorkUnit) -> dict[str, int]:
        """The unit's chunk keys and file sizes (0: no file), for its ledger record."""
        return chunk_sizes(self.path, unit_chunk_keys(self.layers, unit.row, unit.col))

    def read_layer(self, name: str, rows: slice, cols: slice) -> np.ndarray:
        """Read a region of one layer."""
        return self._arrays[name][rows, cols]


def write_region(arr: zarr.Array, region: tuple[int | slice, ...], value: np.ndarray) -> None:
    """Write ``value`` into ``region`` of ``arr``; a value all at the fill value stores no chunk.

    zarr compares every chunk it writes with the fill value, to leave fill-only chunks out. Its
    comparison (``np.array_equal`` with ``equal_nan``) makes boolean copies of the chunk: a third
    to a half of the CPU of writing a unit's three layers (``python -m benchmarks.unit_costs``,
    docs/performance.md). Here one ``min``/``max`` over the value decides, and a value holding
    data is written without zarr's check. Read back, the two are the same; only an all-fill chunk
    inside a larger, partly filled region is then stored rather than left out.
    """
    if value.size and not value.min() == value.max() == arr.fill_value:
        arr = arr.with_config({"write_empty_chunks": True})
    arr[region] = value


def finalize(path: Path, attrs: dict[str, Any], consolidate: bool) -> None:
    """Update provenance attributes; consolidate metadata only after a complete run."""
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    group.attrs.update(attrs)
    if consolidate:
        with warnings.catch_warnings():
            # zarr warns that consolidated metadata is not in the v3 spec (we know; readers that
            # ignore it still work) and that .geofg/ (ledger, lock) is not a Zarr node (by design).
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
            zarr.consolidate_metadata(str(path))


def drop_consolidated(path: Path) -> None:
    """Remove consolidated metadata before writing, so readers never see a stale copy."""
    (path / ".zmetadata").unlink(missing_ok=True)
    meta = path / "zarr.json"  # a v3 mosaic of schema 1
    if not meta.is_file():
        return
    doc = json.loads(meta.read_text())
    if doc.pop("consolidated_metadata", None) is not None:
        tmp = meta.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(meta)


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


DATES_ATTR = "geofg:dates"
"""Group attribute with a copy of the time axis: it repairs a lost ``time`` chunk."""


def _time_axis(group: zarr.Group) -> list[int]:
    """The time axis, with dates a lost ``time`` chunk dropped restored from :data:`DATES_ATTR`."""
    values = [int(v) for v in group["time"][:]]
    kept = group.attrs.get(DATES_ATTR)
    if isinstance(kept, list):
        for i, d in enumerate(kept[: len(values)]):
            if values[i] == TIME_FILL and isinstance(d, int) and d != TIME_FILL:
                values[i] = d
    return values


def time_slices(path: Path) -> list[int]:
    """Return the time axis of a time-series mosaic: days since 1970-01-01, in slice order."""
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    return _time_axis(group)


def append_time(path: Path, days: int, layers: tuple[str, ...] = LAYERS) -> int:
    """Add a slice for ``days`` (days since 1970-01-01) and return its index.

    Metadata only: the layers grow by one (fill-valued, no chunk written), the group attribute
    :data:`DATES_ATTR` gets the date, and the time value is written last, so a crash in between
    leaves at most a slice without a date, which the next call reuses (its index is the first
    slice holding the fill value). A ``time`` chunk lost later is rewritten from the attribute.

    Raises:
        MosaicDamagedError: a slice holds data but its date is lost (no copy to restore it from).
    """
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    tarr = group["time"]
    stored = [int(v) for v in tarr[:]]
    values = _time_axis(group)
    if values != stored:
        log.warning("%s: the time axis had lost dates (a missing time chunk); restored %s from the "
                    "group attributes", path, [i for i, (a, b) in enumerate(zip(values, stored)) if a != b])
        tarr[:] = np.asarray(values, np.int32)
        _fsync_tree(path / "time")
    if days in values:
        return values.index(days)
    t = values.index(TIME_FILL) if TIME_FILL in values else len(values)
    if t < len(values):
        for name in layers:
            folder = path / name / str(t)
            if folder.is_dir() and any(folder.iterdir()):
                raise MosaicDamagedError(
                    f"{path}: time slice {t} holds data but its date is lost (the time chunk is "
                    "missing and the mosaic has no copy of the axis); nothing was written: "
                    "restore time/c/0 from a backup or rebuild the mosaic with a new path"
                )
    for name in layers:
        arr = group[name]
        if arr.shape[0] <= t:
            arr.resize((t + 1, *arr.shape[1:]))
    if tarr.shape[0] <= t:
        tarr.resize((t + 1,))
    axis = values + [TIME_FILL] * (t + 1 - len(values))
    axis[t] = days
    group.attrs.update({DATES_ATTR: axis})
    tarr[t] = days
    _fsync_tree(path / "time")
    _fsync_path(path / ".zattrs")
    return t


@dataclass
class TimeMosaic:
    """An open time-series mosaic that scan units write into (one handle per thread)."""

    path: Path
    _group: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
        self.layers: tuple[str, ...] = tuple(self._group.attrs["geofg:grid"]["layers"])

    def write_slice(self, t: int, unit: WorkUnit, layers: dict[str, np.ndarray]) -> None:
        """Write the unit's core of time slice ``t`` (whole chunks only) for every layer."""
        c = unit.core
        for name in self.layers:
            write_region(self._group[name], (t, slice(c.row_off, c.row_end), slice(c.col_off, c.col_end)),
                         layers[name])

    def update_latest(self, unit: WorkUnit, dates: list[int]) -> None:
        """Recompute the unit's ``latest_*`` chunks from its slices, newest date first.

        ``dates[t]`` is slice ``t``'s date. Reads one chunk per layer per slice, and stops as soon
        as every pixel has a valid class, so memory is a few chunks whatever the length of the
        time axis.
        """
        c = unit.core
        rows, cols = slice(c.row_off, c.row_end), slice(c.col_off, c.col_end)
        shape = (c.height, c.width)
        best = {n: np.full(shape, FILL, np.uint8) for n in self.layers}
        when = np.full(shape, TIME_FILL, np.int32)
        order = sorted((d, t) for t, d in enumerate(dates) if d != TIME_FILL)
        for d, t in reversed(order):
            need = best["class"] == FILL
            if not need.any():
                break
            cls = self._group["class"][t, rows, cols]
            take = need & (cls != FILL)
            if not take.any():
                continue
            for name in self.layers:
                layer = cls if name == "class" else self._group[name][t, rows, cols]
                best[name][take] = layer[take]
            when[take] = d
        for name in self.layers:
            write_region(self._group[LATEST + name], (rows, cols), best[name])
        write_region(self._group["latest_time"], (rows, cols), when)

    def sync_unit(self, unit: WorkUnit, t: int) -> None:
        """fsync the unit's chunk files (slice ``t`` and the latest view) and their folders."""
        key = [str(unit.row), str(unit.col)]
        targets = [self.path / n / str(t) / Path(*key) for n in self.layers]
        targets += [self.path / (LATEST + n) / Path(*key) for n in self.layers]
        targets.append(self.path / "latest_time" / Path(*key))
        for chunk in targets:
            _fsync_path(chunk)
            _fsync_path(chunk.parent, directory=True)

    def read(self, name: str, t: int | None, rows: slice, cols: slice) -> np.ndarray:
        """Read a region of a layer: slice ``t``, or the 2-D array when ``t`` is None."""
        arr = self._group[name]
        return arr[rows, cols] if t is None else arr[t, rows, cols]


def _fsync_path(target: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(target, flags)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        _fsync_path(p, directory=p.is_dir())
    _fsync_path(folder, directory=True)

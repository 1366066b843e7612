"""The scan configuration (``SCAN.yaml``), validated by pydantic; unknown keys are refused.

Its JSON schema is published in docs/scan.md (``ScanConfig.model_json_schema()``). A config is
small and frozen; :func:`load_scan` turns every problem into a one-line
:class:`~geofg.errors.ConfigError` (exit 3) naming the file and the key.

``runner.kind: local`` (default) runs a scan's units in this process; ``ray`` runs each date's
units on Ray actors (:mod:`geofg.scan.units`, :mod:`geofg.runners.ray`), with the same results.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from geofg.config import MaskConfig, ModelConfig, RunnerConfig, TileConfig, quoted, read_yaml
from geofg.errors import ConfigError

#: grid edges must sit on the origin's lattice to within this fraction of a pixel
LATTICE_TOLERANCE = 1e-6
MAX_GRID_PIXELS = 4_000_000_000


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DateConfig(_Frozen):
    """Where a scene's acquisition date comes from.

    ``source="filename"``: ``pattern`` is a regular expression searched in the file name; its
    named group ``date`` (or, without one, the whole match) is parsed with ``format``
    (``strftime`` codes). ``source="metadata"``: the first of ``tags`` found in the GeoTIFF's
    tags (e.g. ``TIFFTAG_DATETIME`` = ``2020:08:31 10:00:00``, or ISO 8601), parsed leniently.
    """

    source: Literal["filename", "metadata"] = "filename"
    pattern: str = r"(?P<date>\d{8})"
    format: str = "%Y%m%d"
    tags: list[str] = Field(default_factory=lambda: ["ACQUISITIONDATETIME", "TIFFTAG_DATETIME", "DATE"])

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a regular expression ({e})") from None
        return value


class InboxConfig(_Frozen):
    """The folder scenes arrive in (a local folder or ``s3://bucket/prefix/``: objects are
    fingerprinted by size and ETag, the quiet period counts from LastModified), and when a file
    counts as fully arrived.

    A file modified less than ``quiet_period_s`` seconds ago, or (with ``require_done``) without
    its sentinel ``<file>.done``, is deferred to the next scan, never failed. ``bands`` names the
    bands of scenes whose files name none (one per band, in file order; e.g. NAIP ``R,G,B,NIR``).
    ``verify="always"`` hashes every file on every scan instead of trusting an unchanged
    (size, mtime, inode, ctime) as the pre-filter. ``$VAR`` and ``${VAR}`` in ``folder`` are expanded
    from the environment (``os.path.expandvars``: an unset variable stays as written, and the scan
    then says so), so a shipped config can point at ``${GEOFG_DATA}``.
    """

    folder: str
    glob: str = "*.tif"
    date: DateConfig = DateConfig()
    bands: list[str] | None = None
    quiet_period_s: float = Field(default=120.0, ge=0)
    require_done: bool = False
    verify: Literal["prefilter", "always"] = "prefilter"
    max_pixels: int = Field(default=20_000_000_000, gt=0)

    @field_validator("folder")
    @classmethod
    def _expand(cls, value: str) -> str:
        return os.path.expandvars(value)

    @field_validator("glob")
    @classmethod
    def _no_escape(cls, value: str) -> str:
        if value.startswith("/") or ".." in Path(value).parts:
            raise ValueError("must be relative to the inbox folder and not contain '..'")
        return value


class GridConfig(_Frozen):
    """The fixed output grid every scene is warped onto.

    ``origin`` is ``[x, y]`` of a pixel corner (the lattice the grid's pixel edges lie on);
    ``extent`` is ``[left, bottom, right, top]`` in the grid CRS, each edge on that lattice.
    ``resolution`` is the pixel size in CRS units, one number or ``[x, y]``.
    """

    crs: str
    resolution: float | tuple[float, float]
    origin: tuple[float, float]
    extent: tuple[float, float, float, float]
    chunk: int = Field(default=1024, ge=16, le=8192)
    resampling: Literal["nearest", "bilinear", "cubic", "average"] = "bilinear"

    @field_validator("crs")
    @classmethod
    def _crs(cls, value: str) -> str:
        from rasterio.crs import CRS
        from rasterio.errors import CRSError

        try:
            crs = CRS.from_user_input(value)
        except CRSError as e:
            raise ValueError(f"not a CRS ({e}); give e.g. EPSG:32633") from None
        if not crs.is_projected:
            raise ValueError("expected a projected CRS (metres), found a geographic one; "
                             "give e.g. the scenes' UTM zone")
        return value

    @property
    def res(self) -> tuple[float, float]:
        """Pixel width and height (positive)."""
        r = self.resolution
        return (float(r), float(r)) if isinstance(r, int | float) else (float(r[0]), float(r[1]))

    @model_validator(mode="after")
    def _consistent(self) -> GridConfig:
        rx, ry = self.res
        if not (rx > 0 and ry > 0 and math.isfinite(rx) and math.isfinite(ry)):
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        left, bottom, right, top = self.extent
        if not (left < right and bottom < top):
            raise ValueError(f"extent must be [left, bottom, right, top] with left < right and "
                             f"bottom < top, got {list(self.extent)}")  # fmt: skip
        ox, oy = self.origin
        for name, v, o, r in (("left", left, ox, rx), ("right", right, ox, rx),
                              ("bottom", bottom, oy, ry), ("top", top, oy, ry)):  # fmt: skip
            k = (v - o) / r
            if abs(k - round(k)) > LATTICE_TOLERANCE:
                raise ValueError(
                    f"extent {name} {v} is not a whole number of pixels ({r:g}) from the origin "
                    f"{o}; move it to {o + round(k) * r} (or change origin)"
                )
        if self.width * self.height > MAX_GRID_PIXELS:
            raise ValueError(f"grid is {self.width} x {self.height} px, over the "
                             f"{MAX_GRID_PIXELS:,} px limit; split the area into several mosaics")
        return self

    @property
    def width(self) -> int:
        """Grid columns."""
        return round((self.extent[2] - self.extent[0]) / self.res[0])

    @property
    def height(self) -> int:
        """Grid rows."""
        return round((self.extent[3] - self.extent[1]) / self.res[1])

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL-order affine ``(a, b, c, d, e, f)`` of the grid (north-up)."""
        rx, ry = self.res
        return (rx, 0.0, float(self.extent[0]), 0.0, -ry, float(self.extent[3]))


class ReportConfig(_Frozen):
    """Where run reports go: ``folder`` (default ``<mosaic>.reports`` beside the mosaic, so a
    scan with nothing new leaves the mosaic itself byte-for-byte unchanged); a local folder or an
    ``s3://bucket/prefix`` (the default for a mosaic on S3 is ``s3://bucket/<mosaic>.reports``)."""

    folder: str | None = None


class ScanConfig(_Frozen):
    """A whole nightly scan: inbox -> fixed grid -> model -> time-axis mosaic -> report."""

    inbox: InboxConfig
    mosaic: str
    grid: GridConfig
    model: ModelConfig = ModelConfig()
    tile: TileConfig = TileConfig()
    mask: MaskConfig = MaskConfig()
    runner: RunnerConfig = RunnerConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _check(self) -> ScanConfig:
        if "chunk" in self.tile.model_fields_set:
            raise ValueError("tile.chunk: a scan's unit size is the fixed grid's chunk; set "
                             "grid.chunk instead and remove tile.chunk")
        for key in ("ensemble", "tta"):  # a scan runs one model as published (geofg.scan.run)
            if getattr(self.model, key):
                raise ValueError(f"model.{key}: a scan runs one model without test-time "
                                 f"augmentation; remove model.{key} (geofg classify has it)")
        return self

    def report_folder(self) -> Path | str:
        """The folder run reports are written to: a local path or ``s3://bucket/prefix``.

        Raises:
            ConfigError: a malformed ``s3://`` URL or another URL scheme (exit 3).
        """
        from geofg.errors import ForbiddenPathError
        from geofg.io.store import folder_target

        try:
            if self.report.folder:
                return folder_target(self.report.folder)
            m = folder_target(self.mosaic)
        except ForbiddenPathError as e:
            raise ConfigError(f"{'report.folder' if self.report.folder else 'mosaic'}: {e}") from None
        if isinstance(m, str):
            return f"{m}.reports"
        return m.parent / f"{m.name}.reports"

    def output_hash(self, tile_size: int, halo: int, mask: dict | None = None) -> str:
        """Hash of what changes output pixels (grid, warp, bands, tiling, compile, cloud mask); not
        workers or batch (see :meth:`geofg.config.JobConfig.output_hash`)."""
        key = {
            "grid": self.grid.model_dump(mode="json"),
            "bands": self.inbox.bands,
            "tile_size": tile_size,
            "halo": halo,
            "blend": self.tile.blend,
        }
        if self.model.compile:
            key["compile"] = True
        if mask is not None:
            key["mask"] = mask
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def build_scan(data: object, source: str = "config") -> ScanConfig:
    """Validate a nested dict into a ScanConfig; errors become one-line ConfigErrors naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys (inbox, mosaic, grid, ...), found "
                          f"{type(data).__name__}; see examples/scan.yaml")  # fmt: skip
    try:
        return ScanConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")[:200]
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown key {loc!r}; remove it or fix its spelling "
                              "(docs/scan.md lists the keys)") from None  # fmt: skip
        shown = err.get("input")
        got = "" if isinstance(shown, dict) else f" (got {quoted(shown)})"
        raise ConfigError(f"{source}: invalid value for {loc}: {msg}{got}; fix that key") from None


def with_runner(cfg: ScanConfig, kind: str, source: str = "--runner") -> ScanConfig:
    """Return ``cfg`` with ``runner.kind`` replaced (a CLI flag overrides the config file).

    Raises:
        ConfigError: ``kind`` is not a runner (names ``runner.kind``).
    """
    data = cfg.model_dump(mode="json", exclude_unset=True)
    data["runner"] = {**data.get("runner", {}), "kind": kind}
    return build_scan(data, source=source)


def load_scan(path: str | Path) -> ScanConfig:
    """Load a ScanConfig from YAML or JSON (strictly: :func:`geofg.config.read_yaml`).

    Raises:
        ConfigError: unreadable file, unknown keys or invalid/inconsistent values (names the key).
    """
    p = Path(path)
    return build_scan(read_yaml(p), source=str(p))

"""Run one scan: survey the inbox, process only what is new, write slices, the latest view, state.

Order (the same safety rules as :mod:`geofg.run`):

1. The model card and the grid are checked and the mosaic compared read-only (another grid ->
   exit 3, untouched); then the run lock is taken (held by a live run -> exit 6).
2. The inbox is surveyed (stat only). New or changed files are opened, validated and hashed;
   each gets a date, a footprint on the grid, or a reason it was skipped, deferred or failed.
3. For every date with new or changed scenes (or with failed units left by an earlier scan),
   the units whose core the date's scenes cover are planned; a unit runs unless its ledger record
   is done, for the same model and config, and already saw every scene covering it now.
   Each unit: warped composite read -> :func:`geofg.pipeline.process_unit` -> slice chunks ->
   ``latest_*`` chunks -> fsync -> ledger record (:func:`geofg.scan.units.finish_unit`), in this
   with classify's runners (:mod:`geofg.runners.base`; one run per date): in this process
   (``runner.kind: local``, :mod:`geofg.runners.local`) or on Ray actors (``ray``), with the
   date's scenes as the source and its slice and the latest view as the sink
   (:mod:`geofg.scan.units`).
4. The inbox state is saved (only if changed), provenance written, metadata consolidated when no
   unit is left failed, and the report written beside the mosaic.

With nothing new, steps 3-4 write nothing into the mosaic: it stays byte-for-byte the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, UTC
from pathlib import Path
from typing import Any

import numpy as np

from geofg import __version__
from geofg.batch import round_up
from geofg.errors import ConfigError, ForbiddenPathError, GeofgError, InputError, RunFailedUnitsError
from geofg.extras import require_extra
from geofg.grid import Window, WorkUnit, plan_units
from geofg.health import HEALTH_CLASSES, band_roles, index_layers
from geofg.io import mosaic as mz
from geofg.io import timeseries
from geofg.io.ledger import UnitRecord
from geofg.io.objects import is_remote
from geofg.io.paths import content_id, open_dataset
from geofg.io.read import RasterInfo, gdal_env, open_raster, select_bands
from geofg.io.store import Folder, Target, ledger_for, output_target
from geofg.run import output_error, take_lock
from geofg.signals import STOP, interrupted_error, stop_on_signals
from geofg.models.inference.bundle import bundle_sha256, read_card
from geofg.models.inference.card import ModelCard
from geofg.models.inference.registry import resolve_model
from geofg.masks import MaskPlan, mask_read_window, plan_mask, product_level
from geofg.season import HealthSeason, decide, scene_ndvi
from geofg import pipeline as pl
from geofg.scan import inbox as ib
from geofg.scan.config import ScanConfig
from geofg.runners import make_runner
from geofg.runners.base import Runner
from geofg.scan.units import DatedUnit, ScanSink, ScanSource, covering, scene_key, unit_id
from geofg.scan.report import summarise_dates
from geofg.scan.warp import Grid, Scene, SceneWindowReader, footprint

log = logging.getLogger(__name__)


class ScanFailuresError(RunFailedUnitsError):
    """A scan finished but some scenes or units failed (exit 4); a re-run retries them."""


@dataclass(frozen=True)
class ScanPlan:
    """What process_unit needs (card, tiling) plus the scan's identity."""

    job: ScanConfig
    card: ModelCard
    model_path: str
    model_sha256: str
    grid: Grid
    tile_size: int
    halo: int
    overlap: int
    config_hash: str
    mask: MaskPlan | None = None
    """The cloud mask (None: no mask layer); per date its level and scale follow the scenes."""
    mask_channels: tuple[int, ...] = ()
    """Positions of ``mask.bands`` among the model's bands (the composite's channels)."""
    season: HealthSeason | None = None
    """Whether crop health is assessed on the date being run (set per date by :func:`for_date`)."""
    scenes: tuple[Scene, ...] = ()
    """The date's scenes (set per date by :func:`for_date`): the mask's wider read warps them."""

    @property
    def raster_shape(self) -> tuple[int, int]:
        """The grid's (height, width): the mask's tiles sit on it (:mod:`geofg.masks`)."""
        return self.grid.height, self.grid.width

    def read_mask(self, core: Window) -> tuple[np.ndarray, np.ndarray, Window]:
        """The mask bands over the window that gives ``core``'s mask, warped from the date's scenes
        with a reader of its own: ``(data, valid, window)``, as :meth:`geofg.pipeline.Plan.read_mask`.

        The mask of a grid pixel so depends on the date's scenes and the grid only, not on the
        scan's chunk (the detector's fixed tiles, :func:`geofg.masks.mask_read_window`).
        """
        assert self.mask is not None
        window = mask_read_window(core, self.grid.height, self.grid.width, self.mask.pixel_m)
        scenes = [dataclasses.replace(s, band_indices=tuple(s.band_indices[i] for i in self.mask_channels))
                  for s in self.scenes]  # fmt: skip
        with SceneWindowReader(scenes, self.grid, self.job.grid.resampling) as reader:
            data, valid = reader.read(window)
        return data, valid, window

    @property
    def spec(self) -> mz.MosaicSpec:
        """The time-series mosaic this scan writes."""
        return mz.MosaicSpec(
            height=self.grid.height, width=self.grid.width, chunk=self.job.grid.chunk,
            crs_wkt=self.grid.crs_wkt, transform=self.grid.transform,
            class_names=tuple(c.name for c in self.card.classes),
            class_colours=tuple(c.colour for c in self.card.classes),
            health_names=tuple(n for n, _ in HEALTH_CLASSES),
            health_colours=tuple(c for _, c in HEALTH_CLASSES), time=True,
            layers=mz.LAYERS + index_layers(self.card.bands) + (("mask",) if self.mask else ()),
        )  # fmt: skip

    def provenance(self) -> dict[str, Any]:
        """Attributes recorded in the mosaic."""
        return {
            "geofg:version": __version__,
            "geofg:model": {"name": self.card.name, "version": self.card.version,
                            "sha256": self.model_sha256, "task": self.card.task,
                            "bands": list(self.card.bands), "metrics": self.card.metrics},
            "geofg:config_hash": self.config_hash,
            "geofg:scan_config": self.job.model_dump(mode="json"),
            "geofg:tiling": {"tile_size": self.tile_size, "halo": self.halo, "overlap": self.overlap},
            "geofg:layers": {
                "class": "learned (CNN land-cover class), one slice per acquisition date",
                "confidence": "learned (top-class probability x 250)",
                "health": "index-based (NDVI zones, NDMI/NDRE adjusted) inside crop classes",
                **({"ndvi": "index-based (NDVI of every clear pixel, any class or season; "
                            "uint8 code x 0.01 - 1), one slice per date"} if index_layers(self.card.bands) else {}),
                "latest_*": "the most recent date with a valid class at each pixel",
                **({"mask": "learned (ukis-csmask cloud/shadow) and index-based (NDSI snow/ice), "
                            "one slice per date; class, health and confidence are 255 where not clear"}
                   if self.mask else {}),
            },
            "geofg:mask": ({**_mask_key(self.mask), "model": f"model_{self.mask.variant}_<level>, the "
                            "level (l1c/l2a) from each date's scene names"} if self.mask else None),
        }  # fmt: skip


@dataclass
class SceneOutcome:
    """What a scan did with one inbox file."""

    name: str
    status: str  # processed | skipped | deferred | failed | deleted
    reason: str = ""
    date: str | None = None
    sha256: str | None = None


@dataclass
class ScanResult:
    """Everything the report needs."""

    run_id: str
    mosaic: str
    started: str
    finished: str = ""
    scenes: list[SceneOutcome] = field(default_factory=list)
    units_ran: int = 0
    units_skipped: int = 0
    units_failed: dict[str, str] = field(default_factory=dict)
    units_empty: int = 0
    km2_processed: float = 0.0
    dates_touched: list[str] = field(default_factory=list)
    wrote: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    report_paths: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        """Number of scenes with that outcome."""
        return sum(s.status == status for s in self.scenes)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def make_plan(cfg: ScanConfig) -> ScanPlan:
    """Check the model and grid and size the tiles; writes nothing.

    Raises:
        ModelError, ConfigError: exit 3.
    """
    from rasterio.crs import CRS

    if cfg.runner.kind == "ray":
        require_extra("ray", "a scan with runner.kind ray")
    ib.inbox_folder(cfg.inbox)  # exists (bucket reachable), before anything is written
    model_path = resolve_model(cfg.model.model)
    card = read_card(model_path)
    g = cfg.grid
    grid = Grid(CRS.from_user_input(g.crs).to_wkt(), g.transform, g.height, g.width)
    pl.check_resolution("grid.resolution", max(g.res), card)
    halo = pl.unit_halo(cfg.tile.halo, card)
    mult = card.tile_multiple
    tile = cfg.tile.tile_size or round_up(g.chunk + 2 * halo, mult)
    if tile % mult:
        raise ConfigError(f"tile.tile_size {tile} must be a multiple of {mult} for model "
                          f"{card.name}; use {round_up(tile, mult)}")  # fmt: skip
    if card.patch_size and tile < card.patch_size:
        raise ConfigError(f"tile.tile_size {tile} is smaller than the model's patch size "
                          f"{card.patch_size}; use at least {card.patch_size}")  # fmt: skip
    if cfg.inbox.bands is not None and len({b.casefold() for b in cfg.inbox.bands}) != len(cfg.inbox.bands):
        raise ConfigError(f"inbox.bands: expected distinct band names, found {cfg.inbox.bands}; fix that key")
    pixel_m = abs(g.transform[0]) * (111_320.0 if CRS.from_user_input(g.crs).is_geographic else 1.0)
    # the composite holds the model's bands (in its order), so the mask reads those it needs
    mask = plan_mask(card.bands, cfg.mask.mode, label=f"model {card.name} (scan)", pixel_m=pixel_m)
    channels = tuple(card.bands.index(b) for b in mask.bands) if mask else ()
    return ScanPlan(
        job=cfg, card=card, model_path=str(model_path), model_sha256=bundle_sha256(model_path),
        grid=grid, tile_size=tile, halo=halo, overlap=min(2 * halo, tile // 2),
        config_hash=cfg.output_hash(tile, halo, _mask_key(mask)),
        mask=mask, mask_channels=channels,
    )  # fmt: skip


def _mask_key(mask: MaskPlan | None) -> dict | None:
    """The mask's settings in the output hash: detector, bands, rules (its level follows each date)."""
    return None if mask is None else {k: v for k, v in mask.describe().items() if k != "model"}


def for_date(p: ScanPlan, day: int, scenes: list[Scene]) -> ScanPlan:
    """The plan for one date: the mask's product level and scale from its scenes, and the season.

    Crop health is assessed per date (:func:`geofg.season.decide`): from the date, the latitude of
    the grid's centre and the NDVI of a sample of the date's first scene.
    """
    from rasterio.crs import CRS
    from rasterio.warp import transform

    first = scenes[0].info
    mask = p.mask
    if mask is not None:
        paths = [q for s in scenes for q in s.info.paths]
        names = list(first.band_names or p.card.bands)
        scale = 1e-4 if np.dtype(first.dtype).kind in "ui" else 1.0
        mask = dataclasses.replace(mask, level=product_level(paths, names), scale=scale)
    g = p.grid
    t = g.transform
    cx, cy = t[2] + t[0] * g.width / 2, t[5] + t[4] * g.height / 2
    lat = float(transform(CRS.from_wkt(g.crs_wkt), CRS.from_epsg(4326), [cx], [cy])[1][0])
    roles = band_roles(p.card.bands)
    p90 = None
    if "red" in roles and "nir" in roles:
        idx = scenes[0].band_indices
        p90 = scene_ndvi(first, idx[roles["red"]], idx[roles["nir"]])
    d = ib.day_str(day)
    season = decide([date.fromisoformat(d)], lat, p90)
    log.info("%s: crop health %s (%s)", d, "assessed" if season.assessed else "not assessed", season.reason)
    return dataclasses.replace(p, mask=mask, season=season, scenes=tuple(scenes))


def run_scan(
    cfg: ScanConfig,
    *,
    predictor_factory: Callable[[ScanPlan], object] | None = None,
    break_lock: bool = False,
    now: float | None = None,
) -> ScanResult:
    """Run one scan and write its report.

    Raises:
        GeofgError: rejected config/model/mosaic (3), locked mosaic (6), or failed scenes/units
            (4, after finishing the rest; ``err.result`` holds the :class:`ScanResult`).
    """
    p = make_plan(cfg)
    out = mosaic_target(cfg)
    existed = mz.check_output(out, p.spec, overwrite=False)
    check_report_folder(cfg.report_folder())
    run_id = uuid.uuid4().hex[:12]
    result = ScanResult(run_id=run_id, mosaic=str(out), started=_now())
    lock = take_lock(out, run_id, break_lock)
    try:
        try:
            with stop_on_signals():
                _scan_locked(p, out, existed, result, predictor_factory, now)
        finally:
            lock.release()
    except OSError as e:
        if isinstance(e, GeofgError):
            raise
        raise output_error(out, getattr(e, "cause", None) or e) from None
    result.finished = _now()
    from geofg.scan.report import write_report

    try:
        result.report_paths = [str(x) for x in write_report(result, cfg.report_folder())]
    except OSError as e:  # checked writable before the scan; full since? one line, exit 7
        if isinstance(e, GeofgError):
            raise
        raise output_error(cfg.report_folder(), e) from None
    if STOP.is_set():
        err = interrupted_error(f"{out}: {result.units_ran} units finished this scan (inbox state "
                                f"not saved, so the next scan plans the rest; report: "
                                f"{result.report_paths[0]})")
        err.result = result  # type: ignore[attr-defined]
        raise err
    failed_scenes = [s for s in result.scenes if s.status == "failed" and not s.reason.startswith("unchanged")]
    if result.units_failed or failed_scenes:
        parts = []
        if failed_scenes:
            parts.append(f"{len(failed_scenes)} scene(s) failed (first: {failed_scenes[0].name}: "
                         f"{failed_scenes[0].reason})")  # fmt: skip
        if result.units_failed:
            uid, why = next(iter(result.units_failed.items()))
            parts.append(f"{len(result.units_failed)} unit(s) failed (first: {uid}: {why})")
        err = ScanFailuresError(f"{out}: {'; '.join(parts)}; fix the cause and run the scan again "
                                f"(report: {result.report_paths[0]})")  # fmt: skip
        err.result = result  # type: ignore[attr-defined]
        raise err
    return result


def mosaic_target(cfg: ScanConfig) -> Target:
    """The scan mosaic's target (a local path or ``s3://bucket/prefix``).

    Raises:
        ConfigError: a malformed ``s3://`` URL or another URL scheme (exit 3).
    """
    try:
        return output_target(cfg.mosaic)
    except ForbiddenPathError as e:
        raise ConfigError(f"mosaic: {e}") from None


def check_report_folder(folder: Target) -> None:
    """Make sure the run report can be written, before anything else is (exit 3 if not).

    Without this, a scan whose report folder was unwritable saved the mosaic and the inbox state,
    then died: the next scan reported "0 processed" and that night's record was lost.

    Raises:
        ConfigError: the folder cannot be created or written.
    """
    try:
        Folder(folder).check_writable()
    except InputError as e:  # on S3: no bucket, refused credentials (an unreachable endpoint: exit 5)
        raise ConfigError(f"report.folder: {e}") from None
    except OSError as e:
        if isinstance(e, GeofgError):
            raise
        raise ConfigError(f"report.folder {folder}: expected a folder geofg can write the run report "
                          f"to, found {e.strerror or e}; fix its permissions or set report.folder; "
                          "nothing was scanned or written") from None


@dataclass
class _Prepared:
    entry: ib.Entry
    info: RasterInfo
    date: int
    scene: Scene


def _prepare(entry: ib.Entry, p: ScanPlan) -> _Prepared:
    """Open, validate and hash one file; give it a date and a footprint (InputError if not)."""
    cfg = p.job.inbox
    try:
        info = open_raster([entry.location], cfg.bands, max_pixels=cfg.max_pixels)
    except InputError:
        if _changed(entry):
            raise _Deferred("changed while geofg read it (still being copied?)") from None
        raise
    if _changed(entry):
        raise _Deferred("changed while geofg read it (still being copied?)")
    tags: dict[str, str] = {}
    if cfg.date.source == "metadata":
        rec = info.files[0]
        with gdal_env(remote=is_remote(rec["path"])):
            ds = open_dataset(Path(rec["path"]), rec["driver"], rec["path"])
            try:
                tags = dict(ds.tags())
            finally:
                ds.close()
    day = ib.scene_date(entry.name, tags, cfg.date)
    indices = select_bands(info, p.card.bands)
    if info.band_names is None and cfg.bands is None:
        log.warning("%s: no band names; assuming the model's order %s (set inbox.bands to be sure)",
                    entry.name, ",".join(p.card.bands))  # fmt: skip
    cover = footprint(info, p.grid)
    scene = Scene(entry.name, info, tuple(indices), cover) if cover is not None else None
    return _Prepared(entry, info, day, scene)  # type: ignore[arg-type]


class _Deferred(Exception):
    pass


def _changed(entry: ib.Entry) -> bool:
    """Whether the file (object) changed or went since the survey listed it."""
    return ib.key_now(entry) != entry.stat


def _scan_locked(p: ScanPlan, out: Target, existed: bool, result: ScanResult,
                 predictor_factory: Callable[[ScanPlan], object] | None, now: float | None) -> None:  # fmt: skip
    if existed:
        mz.check_output(out, p.spec, overwrite=False)  # re-check under the lock
    state = ib.load_state(out) if existed else {"schema": ib.STATE_SCHEMA, "scenes": {}}
    old_state = json.loads(json.dumps(state))
    scenes_state: dict[str, dict[str, Any]] = state.setdefault("scenes", {})
    identity = {"model_sha256": p.model_sha256, "config_hash": p.config_hash}
    force = bool(scenes_state) and any(state.get(k) != v for k, v in identity.items())
    survey = ib.survey(p.job.inbox, state, now)
    ledger = ledger_for(out)
    records = ledger.load() if existed else {}

    ok: dict[str, _Prepared] = {}  # every usable scene we opened this run, by name
    work_dates: set[int] = set()
    for e in survey.entries:
        prev = e.previous or {}
        if e.status == "deferred":
            result.scenes.append(SceneOutcome(e.name, "deferred", e.reason, _day(prev.get("date"))))
            continue
        if e.status == "unchanged" and not force:
            why = {"ok": "unchanged", "outside": "unchanged, outside the grid extent",
                   "failed": f"unchanged since it failed: {prev.get('error', '')}"}.get(prev.get("status"), "unchanged")  # fmt: skip
            status = "failed" if prev.get("status") == "failed" else "skipped"
            result.scenes.append(SceneOutcome(e.name, status, why, _day(prev.get("date")), prev.get("sha256")))
            continue
        try:
            prep = _prepare(e, p)
        except _Deferred as d:
            result.scenes.append(SceneOutcome(e.name, "deferred", str(d)))
            continue
        except GeofgError as err:
            msg = str(err).splitlines()[0]
            scenes_state[e.name] = {"stat": e.stat, "status": "failed", "error": msg, "sha256": None,
                                    "date": None}  # fmt: skip
            result.scenes.append(SceneOutcome(e.name, "failed", msg))
            continue
        sha = content_id(prep.info.files[0])  # sha256, or etag:… of an object on S3
        rec = {"stat": e.stat, "sha256": sha, "date": prep.date,
               "status": "ok" if prep.scene is not None else "outside"}  # fmt: skip
        same = prev.get("sha256") == sha and prev.get("status") == rec["status"] and not force
        scenes_state[e.name] = rec
        if prep.scene is None:
            result.scenes.append(SceneOutcome(e.name, "skipped", "outside the grid extent" + (" (unchanged)" if same else ""),
                                              ib.day_str(prep.date), sha))  # fmt: skip
            continue
        ok[e.name] = prep
        if same and prev.get("date") == prep.date:
            result.scenes.append(SceneOutcome(e.name, "skipped", "unchanged content (only touched or moved)",
                                              ib.day_str(prep.date), sha))  # fmt: skip
            continue
        work_dates.add(prep.date)
        result.scenes.append(SceneOutcome(e.name, "processed", "new" if not prev else "changed",
                                          ib.day_str(prep.date), sha))  # fmt: skip
    for name in survey.deleted:
        prev = scenes_state[name]
        result.scenes.append(SceneOutcome(name, "deleted", "gone from the inbox; its pixels stay in the mosaic",
                                          _day(prev.get("date")), prev.get("sha256")))  # fmt: skip
        scenes_state[name] = {**prev, "status": "deleted"}
    # dates with units an earlier scan left failed are retried too
    for r in records.values():
        if r.status == "failed" and "date" in r.stats:
            work_dates.add(int(r.stats["date"]))

    # every usable present scene of a work date takes part (composited), opened if not yet
    for e in survey.entries:
        prev = scenes_state.get(e.name, {})
        if e.name in ok or e.status == "deferred" or prev.get("status") != "ok" or prev.get("date") not in work_dates:
            continue
        try:
            ok[e.name] = _prepare(e, p)
        except (GeofgError, _Deferred) as err:
            log.warning("%s: cannot be used for its date this time (%s)", e.name, err)

    state.update(identity)
    if not existed:  # the first scan creates the mosaic on the grid, even with nothing to do
        mz.create(out, p.spec, p.provenance())
        result.wrote = True
    if not work_dates:
        if state != old_state:
            ib.save_state(out, state)
            result.wrote = True
        result.summary = summarise_dates(p, records)
        return
    if existed:
        mz.drop_consolidated(out)
        mz.sweep_partials(out)
        ledger.sweep_temp()
    result.wrote = True
    units = plan_units(p.grid.height, p.grid.width, p.job.grid.chunk, p.halo)
    on_ray = p.job.runner.kind == "ray"
    runner = make_runner(p.job.runner.kind, predictor_factory)
    # local: the model is loaded here now, before any slice is written; ray: each actor loads its own
    runner.prepare(ScanSource(p, ()))
    with _ray_session(p) if on_ray else contextlib.nullcontext():
        for day in sorted(work_dates):
            scenes = [prep.scene for prep in ok.values() if prep.date == day and prep.scene is not None]
            if not scenes:
                continue
            if STOP.is_set():
                break
            _run_date(for_date(p, day, scenes), out, day, scenes, units, records, runner, result)
    if not STOP.is_set():  # an interrupted scan leaves its scenes to be planned again
        ib.save_state(out, state)
    complete = not STOP.is_set() and not any(r.status == "failed" for r in records.values())
    result.summary = summarise_dates(p, records)
    mz.finalize(out, {**p.provenance(), "geofg:summary": result.summary}, complete)


def _day(v: object) -> str | None:
    return ib.day_str(int(v)) if isinstance(v, int) else None


def _ray_session(p: ScanPlan) -> Any:
    """One Ray connection for all of this scan's dates (joined or started as for classify)."""
    from geofg.runners.ray import session  # ray is imported only in runners/

    return session(p.job.runner)


def _run_date(p: ScanPlan, out: Target, day: int, scenes: list[Scene], units: list[WorkUnit],
              records: dict[str, UnitRecord], runner: Runner, result: ScanResult) -> None:
    """Run one date's units that are not current with ``runner``: the date's scenes as the source,
    its slice and the latest view as the sink."""
    covered = [(u, covering(scenes, u)) for u in units]
    covered = [(u, ss) for u, ss in covered if ss]
    pending = []
    listing = mz.list_chunks(out) if covered else None  # S3: one LIST, not a HEAD per chunk
    for u, ss in covered:
        r = records.get(unit_id(day, u))
        seen = set(r.stats.get("scenes", [])) if r is not None else set()
        current = (r is not None and r.status == "done" and r.model_sha256 == p.model_sha256
                   and r.config_hash == p.config_hash and set(scene_key(ss)) <= seen)  # fmt: skip
        if current and r.chunks and (why := mz.check_chunks(out, r.chunks, listing=listing)) is not None:
            log.warning("unit %s: %s; redoing it", r.unit_id, why)
            current = False
        if current:
            result.units_skipped += 1
        else:
            pending.append((u, ss))
    if not pending:
        return
    t = timeseries.append_time(out, day, p.spec.layers)
    result.dates_touched.append(ib.day_str(day))
    dates = timeseries.time_slices(out)
    log.info("%s: %d units to run, %d current", ib.day_str(day), len(pending), len(covered) - len(pending))
    todo = [DatedUnit(u.row, u.col, u.core, u.read, day) for u, _ in pending]
    by_id = {u.id: u for u in todo}
    attempts = {u.id: records[u.id].attempt for u in todo if u.id in records}
    km2_px = p.grid.pixel_area_m2 / 1e6

    def on_unit(rec: UnitRecord) -> None:
        records[rec.unit_id] = rec
        result.units_ran += 1
        if rec.status == "failed":
            result.units_failed[rec.unit_id] = rec.error or "failed"
        else:
            result.units_empty += rec.empty
            result.km2_processed += by_id[rec.unit_id].core.size * km2_px

    sink = ScanSink(out, result.run_id, p.model_sha256, p.config_hash, day, t, tuple(dates), tuple(scenes))
    runner.run(ScanSource(p, tuple(scenes)), todo, sink, on_unit, attempts)

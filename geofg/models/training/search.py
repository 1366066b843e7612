"""Hyper-parameter search for ``geofg train classifier --search SPACE.yaml [--trials N]`` (Ray Tune).

Each trial trains a patch classifier with :func:`geofg.models.training.train.train_bundle` (the same code
as a plain ``geofg train classifier``) inside a Ray Tune function trainable, with resources
``{"cpu": cpus_per_trial}`` plus ``{"gpu": 1}`` when the Ray cluster has GPUs (or as configured),
and reports every epoch (loss, and the val accuracy of the EMA network at each evaluation). The
trial's bundle goes back to the driver as a Tune checkpoint. The driver picks the best trial **on
the val split only** (the test split is never read), writes its bundle to ``-o`` atomically, with
the search recorded in the card (``training.search``), and writes a report beside it:
``OUT.search.json`` and ``OUT.search.md`` (a table of every trial: parameters, val accuracy,
epochs, seconds, status).

SPACE.yaml and how its parameters map onto a training config: :mod:`geofg.models.training.search_space`.

Selection: the trial with the highest val accuracy of its *bundle* (after the fusion head is fitted,
as recorded in ``card.metrics``), ties broken by val macro-F1, then the lower trial number.

Ray: when this process has no Ray connection, a local Ray is started (``num_cpus`` bounded, no
dashboard, token authentication on as Ray 2.60 does by default, the token file written 0600 first as
:mod:`geofg.runners.ray` does) and shut down afterwards, also on errors. An existing connection
(a notebook, a test, a script that joined a cluster) is used as it is and left open; on a cluster
the Tune storage (the staging folder beside ``-o``) must be on a filesystem every node sees.

DESIGN.md keeps ``ray`` in ``runners/ray.py``; this module is the one other place, because a
search *is* a Ray Tune program. Ray is imported only inside functions, so importing this module,
``geofg --help`` and every other command work without Ray installed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from geofg.errors import ConfigError, GeofgError, MissingExtraError
from geofg.extras import install_command
from geofg.models.training.search_space import (
    SEARCH_KEYS,
    SearchSpace,
    default_point,
    grid_points,
    load_space,
    trial_config,
)

__all__ = [
    "SEARCH_KEYS",
    "SearchSpace",
    "SearchTrialsFailedError",
    "load_space",
    "report_paths",
    "search_bundle",
    "trial_table",
]

log = logging.getLogger(__name__)

BUNDLE_NAME = "trial.safetensors"


class SearchTrialsFailedError(GeofgError):
    """A search finished but some (or all) trials failed; exit 4 like a run with failed units."""

    exit_code = 4


# --- one trial --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """What every trial needs (small, picklable): data, the hand-set config, train_bundle args."""

    data: str
    base: dict[str, Any]  # TrainConfig as a dict (the hand-set defaults)
    fixed: dict[str, Any]  # params fixed by SPACE.yaml
    name: str
    bands: list[str] | None
    scale: float | None
    crop_classes: list[str]
    val_fraction: float
    init: str | None
    freeze_encoder: bool
    threads: int
    device: str


def _run_trial(config: dict[str, Any], job: _Job) -> None:
    """The Tune function trainable: train one configuration, report epochs, hand back the bundle."""
    from ray import tune

    from geofg.models.training.train import train_bundle

    t0 = time.perf_counter()
    params = {**job.fixed, **config.get("point", config)}
    cfg, freeze = trial_config(job.base, params)
    cfg = replace(cfg, threads=job.threads, device=job.device)
    phases = [(min(freeze, cfg.epochs), True), (cfg.epochs - min(freeze, cfg.epochs), False)]
    if not freeze:
        phases = [(cfg.epochs, job.freeze_encoder)]
    phases = [(n, frozen) for n, frozen in phases if n > 0]
    val_history: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="geofg-trial-") as tmp:
        init, offset, res = job.init, 0, None
        for i, (n, frozen) in enumerate(phases):
            last = i == len(phases) - 1
            out = Path(tmp) / (BUNDLE_NAME if last else f"phase{i}.safetensors")
            phase = "encoder frozen" if frozen else "all trainable"

            def on_epoch(rec: dict[str, Any], offset: int = offset, phase: str = phase) -> None:
                if "epoch" not in rec:
                    return
                row = {"epoch": rec["epoch"] + offset, "loss": rec["loss"], "phase": phase,
                       "seconds": round(time.perf_counter() - t0, 1)}
                if "val_accuracy" in rec:
                    row.update(val_accuracy=rec["val_accuracy"], val_nll=rec["val_nll"])
                    val_history.append((row["epoch"], rec["val_accuracy"]))
                tune.report(row)

            res = train_bundle(job.data, out, replace(cfg, epochs=n), name=job.name,
                               bands=job.bands, scale=job.scale, crop_classes=job.crop_classes,
                               val_fraction=job.val_fraction, init=init, freeze_encoder=frozen,
                               on_epoch=on_epoch)
            init, offset = str(out), offset + res["record"]["epochs_run"]
        rec, metrics = res["record"], res["card"].metrics
        final = {
            "epoch": offset, "done": True,
            "bundle_val_accuracy": metrics["val_accuracy"],
            "bundle_val_macro_f1": metrics["val_macro_f1"],
            "epochs_run": offset, "best_epoch": (offset - rec["epochs_run"]
                                                 + (rec["best_epoch"] or 0)),
            "stopped_early": rec["stopped_early"], "device": rec["device"],
            "phases": [{"epochs": n, "encoder_frozen": f} for n, f in phases],
            "val_history": val_history, "trial_seconds": round(time.perf_counter() - t0, 1),
            "sha256": res["sha256"],
        }
        for p in Path(tmp).glob("phase*.safetensors"):
            p.unlink()
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))


def _done_callback(on_trial: Callable[[dict[str, Any]], None]) -> Any:
    """A Tune callback that calls ``on_trial(row)`` as each trial ends (for progress output).

    Tune pickles its run config into the experiment state; the pickled copy drops ``on_trial``
    (a CLI closure holding a console), the live one in this process keeps it.
    """
    from ray.tune import Callback

    class TrialDone(Callback):
        def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
            self.on_trial: Callable[[dict[str, Any]], None] | None = fn

        def __getstate__(self) -> dict[str, Any]:
            return {"on_trial": None}

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any
                              ) -> None:
            r = trial.last_result or {}
            if self.on_trial is not None:
                self.on_trial({"trial": trial.trial_id, "status": "done",
                               "config": trial.config.get("point", trial.config),
                               "val_accuracy": r.get("bundle_val_accuracy"),
                               "seconds": r.get("trial_seconds")})

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if self.on_trial is not None:
                self.on_trial({"trial": trial.trial_id, "status": "failed",
                               "config": trial.config.get("point", trial.config)})

    return TrialDone(on_trial)


@contextlib.contextmanager
def local_ray(num_cpus: int) -> Iterator[bool]:
    """Use this process's Ray connection, or start a local Ray for the block and shut it down.

    Yields True when this call started Ray. The local Ray has ``num_cpus`` CPUs, no dashboard and
    token authentication (Ray 2.60's default); without a token in the environment the token file
    ``~/.ray/auth_token`` is created 0600 first (Ray would write it 0644).
    """
    import ray

    from geofg.runners.cluster import ensure_token_file

    if ray.is_initialized():
        yield False
        return
    if not (os.environ.get("RAY_AUTH_MODE") or os.environ.get("RAY_AUTH_TOKEN")
            or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        ensure_token_file(Path.home() / ".ray" / "auth_token")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield True
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Silence Tune's console tables, its log of failed trials' tracebacks and its default result
    loggers (TensorBoard, CSV): the CLI prints its own table and the report holds every trial's
    record and error line. The JSON logger is added back explicitly (Tune's ResultGrid reads it)."""
    values = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    tune_log = logging.getLogger("ray.tune")  # a failed trial's traceback: the table has its line
    level = tune_log.level
    tune_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tune_log.setLevel(level)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tune_space(space: SearchSpace, grid_points: list[dict[str, Any]]) -> dict[str, Any]:
    """Tune's param_space: the random distributions, or one grid over explicit points.

    A grid is handed to Tune as ``{"point": grid_search([...])}`` over the combinations listed
    here (the defaults first): Tune's BasicVariantGenerator runs *only* ``points_to_evaluate``
    when combined with ``grid_search`` (seen with Ray 2.60), so the defaults trial could not be
    added to a plain grid.
    """
    from ray import tune

    if space.method == "grid":
        return {"point": tune.grid_search(grid_points)}
    makers = {"choice": tune.choice, "uniform": lambda v: tune.uniform(*v),
              "loguniform": lambda v: tune.loguniform(*v)}
    return {k: makers[d](v) for k, spec in space.searched().items() for d, v in spec.items()}


# --- the search -------------------------------------------------------------------------------


def report_paths(output: str | Path) -> tuple[Path, Path]:
    """``OUT.search.json`` and ``OUT.search.md`` beside the bundle ``OUT.safetensors``."""
    output = Path(output)
    stem = output.with_suffix("")
    return Path(f"{stem}.search.json"), Path(f"{stem}.search.md")


def _preflight(data: str | Path, output: Path, cfg: Any, space: SearchSpace, *,
               bands: Sequence[str] | None, scale: float | None, crop_classes: Sequence[str],
               val_fraction: float, init: str | None, overwrite: bool,
               space_path: str | Path | None) -> Any:
    """Every check that can fail before a trial starts (exit 3, nothing written)."""
    from geofg.models.inference.bundle import BUNDLE_SUFFIX, read_card
    from geofg.models.inference.nets import build_model
    from geofg.models.inference.registry import resolve_model
    from geofg.models.training.chips import default_scale, load_chips
    from geofg.models.training.train import band_stats, build_card

    if output.suffix != BUNDLE_SUFFIX:
        raise ConfigError(f"{output}: expected an output ending in {BUNDLE_SUFFIX}, found"
                          f" {output.suffix or 'no suffix'}; pass -o NAME.safetensors")
    for p in (output, *report_paths(output)):
        if p.exists() and not overwrite:
            raise ConfigError(f"{p}: exists; pass --overwrite to replace it")
    if not output.parent.is_dir():
        raise ConfigError(f"{output}: folder {output.parent} does not exist; create it first")
    init_card = read_card(resolve_model(init)) if init is not None else None
    chips = load_chips(data, bands=bands, val_fraction=val_fraction, seed=cfg.seed,
                       default_bands=init_card.bands if init_card else None)
    if "val" not in chips.splits:
        raise ConfigError(f"{data}: no val chips; a search picks its best trial on val: add"
                          " val rows to the labels or raise --val-fraction")
    if chips.patch_size % 32:
        raise ConfigError(f"{data}: chips of {chips.patch_size} px; the dense chip classifier"
                          " needs a multiple of 32 px; crop the chips (e.g. to 32 or 64 px)")
    unknown = [c for c in crop_classes if c not in chips.class_names]
    if unknown:
        raise ConfigError(f"--crop-classes {unknown} are not classes of the data"
                          f" ({chips.class_names}); fix the names")
    where = f"{space_path}: " if space_path else ""

    def candidates(key: str) -> set[Any]:
        spec = space.params.get(key)
        if spec is None:
            return {getattr(cfg, key)}
        return set(next(iter(spec.values()))) if isinstance(spec, dict) else {spec}

    for n in sorted(candidates("chips_per_step")):
        if any(n % (g * g) for g in cfg.mosaic):
            raise ConfigError(f"{where}params.chips_per_step: {n} must be divisible by g*g for every"
                              f" mosaic size g in {tuple(cfg.mosaic)}; use a multiple of 36")
    if init is None and "freeze_epochs" in space.params and max(candidates("freeze_epochs")) > 0:
        raise ConfigError(f"{where}params.freeze_epochs: freezing the encoder needs --init BUNDLE"
                          " (a frozen random encoder gives unbounded features, seen as a"
                          " BatchNorm running_var overflowing float16); add --init or drop it")
    encoders = candidates("encoder")
    if init_card is not None and encoders != {init_card.encoder}:
        raise ConfigError(f"{where}params.encoder: --init {init} has encoder {init_card.encoder};"
                          " a search from it cannot change the encoder; remove params.encoder")
    mean, std = band_stats(chips.splits["train"].x[:8],
                           scale if scale is not None else default_scale(chips.dtype))
    for enc in sorted(encoders):  # unknown or unusable encoders fail here, not in every trial
        try:
            build_model(build_card(name="check", bands=chips.bands, class_names=chips.class_names,
                                   mean=mean, std=std, scale=1.0, encoder=enc,
                                   patch_size=chips.patch_size))
        except ConfigError as e:
            raise ConfigError(f"{where}params.encoder: {e}") from None
    return chips


def search_bundle(data: str | Path, output: str | Path, cfg: Any, space: SearchSpace, *,
                  space_path: str | Path | None = None, name: str | None = None,
                  bands: Sequence[str] | None = None, scale: float | None = None,
                  crop_classes: Sequence[str] = (), val_fraction: float = 0.15,
                  init: str | None = None, freeze_encoder: bool = False, overwrite: bool = False,
                  on_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the search and write the best trial's bundle and the report (module docstring).

    Args:
        data, name, bands, scale, crop_classes, val_fraction, init, freeze_encoder: as for
            :func:`geofg.models.training.train.train_bundle`.
        output: The bundle to write (``.safetensors``); the report goes beside it.
        cfg: The hand-set :class:`~geofg.models.training.train.TrainConfig` (command line + defaults).
        space: From :func:`load_space`.
        space_path: The SPACE.yaml path, recorded in the report and the card.
        overwrite: Replace an existing bundle and report.
        on_trial: Called as each trial ends with ``{"trial", "status", "config", ...}``.

    Returns:
        The report (also written to ``OUT.search.json``), with ``"bundle"``, ``"sha256"``,
        ``"report_json"``, ``"report_md"`` and ``"failed"`` (number of failed trials).

    Raises:
        ConfigError and other exit-3 errors: before any trial starts, nothing written.
        SearchTrialsFailedError: Some trials failed (the best finished one is still written) or
            all did (nothing written); exit 4.
    """
    try:
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback
        from ray.tune.search.basic_variant import BasicVariantGenerator
    except ImportError as e:
        raise MissingExtraError(f"--search needs Ray Tune ({e}); install it with: "
                                f"{install_command('tune')}") from None
    output = Path(output).absolute()
    _preflight(data, output, cfg, space, bands=bands, scale=scale, crop_classes=crop_classes,
               val_fraction=val_fraction, init=init, overwrite=overwrite, space_path=space_path)
    base = asdict(cfg)
    points = [default_point(space, base)] if space.include_defaults else []
    grid_pts = grid_points(space, points[0] if points else None) if space.method == "grid" else []
    cpus = space.cpus_per_trial
    num_cpus = space.num_cpus or min(os.cpu_count() or 1, space.max_concurrent * cpus)
    if num_cpus < cpus:
        raise ConfigError(f"num_cpus {num_cpus} is below cpus_per_trial {cpus}; raise num_cpus")
    job_args = {"data": str(Path(data).absolute()), "base": base, "fixed": space.fixed(),
                "name": name or output.stem, "bands": list(bands) if bands else None,
                "scale": scale, "crop_classes": list(crop_classes), "val_fraction": val_fraction,
                "init": str(Path(init).absolute()) if init and Path(init).exists() else init,
                "freeze_encoder": freeze_encoder, "threads": cpus}
    t0 = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{output.stem}.search-", dir=output.parent))
    try:
        with local_ray(num_cpus):
            import ray

            gpus = space.gpus_per_trial
            if gpus == "auto":
                gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
            job = _Job(**job_args, device="cuda" if gpus else "cpu")
            base.update(threads=cpus, device=job.device)  # what the trials ran with
            resources = {"cpu": cpus, **({"gpu": gpus} if gpus else {})}
            trainable = tune.with_resources(tune.with_parameters(_run_trial, job=job), resources)
            tuner = tune.Tuner(
                trainable, param_space=_tune_space(space, grid_pts),
                tune_config=tune.TuneConfig(
                    num_samples=1 if space.method == "grid" else space.trials,
                    search_alg=BasicVariantGenerator(points_to_evaluate=None if grid_pts else
                                                     (points or None),
                                                     max_concurrent=space.max_concurrent,
                                                     random_state=space.seed)),
                run_config=tune.RunConfig(
                    name="search", storage_path=str(staging), verbose=0,
                    callbacks=[JsonLoggerCallback(),
                               *([_done_callback(on_trial)] if on_trial else [])],
                    failure_config=tune.FailureConfig(max_failures=0)))
            with _quiet_tune():
                grid = tuner.fit()
            trials = _collect(grid, space, base, points)
        report = _report(trials, space, base, cfg, job_args, resources, num_cpus, space_path,
                         round(time.perf_counter() - t0, 1))
        ok = [t for t in trials if t["status"] == "done"]
        if not ok:
            raise SearchTrialsFailedError(
                f"all {len(trials)} trials failed (first: {trials[0]['error']}); nothing written;"
                " fix the cause and re-run")
        best = max(ok, key=lambda t: (t["val_accuracy"], t["val_macro_f1"], -t["index"]))
        report["best"] = {k: best[k] for k in ("index", "trial_id", "params", "val_accuracy",
                                               "val_macro_f1", "defaults")}
        sha = _write_best(output, Path(best["checkpoint"]) / BUNDLE_NAME, report)
        report.update(bundle=str(output), sha256=sha)
        for t in trials:
            t.pop("checkpoint", None)
        json_path, md_path = report_paths(output)
        from geofg.io.atomic import atomic_write

        atomic_write(json_path, (json.dumps(report, indent=2, default=str) + "\n").encode())
        atomic_write(md_path, markdown_report(report).encode())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.update(report_json=str(json_path), report_md=str(md_path),
                  failed=len(trials) - len(ok))
    if len(ok) < len(trials):
        failed = [t for t in trials if t["status"] != "done"]
        err = SearchTrialsFailedError(
            f"{len(failed)} of {len(trials)} trials failed (first: {failed[0]['error']}); wrote"
            f" the best of the others to {output}; see {md_path}")
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report


def _collect(grid: Any, space: SearchSpace, base: dict[str, Any],
             points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per trial, in Tune's trial order."""
    keys = list(space.searched())
    out = []
    results = sorted((grid[i] for i in range(len(grid))), key=_trial_id)
    for i, r in enumerate(results):
        m = r.metrics or {}
        config = r.config.get("point", r.config)
        params = {k: config.get(k) for k in keys}
        rec: dict[str, Any] = {
            "index": i, "trial_id": _trial_id(r), "params": params,
            "defaults": bool(points) and i == 0 and params == points[0],
            "status": "done" if r.error is None and m.get("done") else "failed",
            "error": None if r.error is None else _last_line(str(r.error)),
        }
        if rec["status"] == "done":
            rec.update(val_accuracy=m["bundle_val_accuracy"],
                       val_macro_f1=m["bundle_val_macro_f1"],
                       best_network_val_accuracy=max((a for _, a in m["val_history"]),
                                                     default=None),
                       epochs_run=m["epochs_run"], best_epoch=m["best_epoch"],
                       stopped_early=m["stopped_early"], phases=m["phases"],
                       seconds=m["trial_seconds"], device=m["device"],
                       val_history=m["val_history"], trial_sha256=m["sha256"],
                       checkpoint=r.checkpoint.path if r.checkpoint else None)
            if rec["checkpoint"] is None:
                rec.update(status="failed", error="no bundle came back from the trial")
        elif rec["error"] is None:
            rec["error"] = "the trial ended before its last report"
        out.append(rec)
    return out


def _trial_id(result: Any) -> str:
    """Tune's trial id (``"9f4bc_00003"``: experiment, then creation order)."""
    tid = (result.metrics or {}).get("trial_id")
    if tid:
        return tid
    found = re.search(r"([0-9a-f]{5}_\d{5})", Path(result.path).name)
    return found.group(1) if found else Path(result.path).name


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def _report(trials: list[dict[str, Any]], space: SearchSpace, base: dict[str, Any], cfg: Any,
            job_args: dict[str, Any], resources: dict[str, float], num_cpus: int,
            space_path: str | Path | None, seconds: float) -> dict[str, Any]:
    return {
        "space_file": str(Path(space_path).absolute()) if space_path else None,
        "space": space.model_dump(),
        "method": space.method,
        "trials_requested": len(trials),
        "hand_set_defaults": base,
        "data": job_args["data"],
        "init": job_args["init"],
        "resources_per_trial": resources,
        "ray_num_cpus": num_cpus,
        "max_concurrent": space.max_concurrent,
        "selection": ("highest val accuracy of the trial's bundle (after the fusion head), ties"
                      " by val macro-F1, then the lower trial number; the test split is never"
                      " read"),
        "seconds": seconds,
        "trials": trials,
    }


def _write_best(output: Path, trial_bundle: Path, report: dict[str, Any]) -> str:
    """Copy the best trial's bundle to ``output`` (atomically) with the search in its card."""
    from geofg.models.inference.bundle import load_tensors, read_card, write_bundle

    card = read_card(trial_bundle)
    best = report["best"]
    training = copy.deepcopy(card.training)
    training["init"] = report["init"]
    training["search"] = {
        "space_file": report["space_file"], "method": report["method"],
        "trials": len(report["trials"]), "best_trial": best["index"], "params": best["params"],
        "selection": report["selection"],
        "phases": next(t["phases"] for t in report["trials"] if t["index"] == best["index"]),
    }
    final = card.model_copy(update={"training": training,
                                    "made_by": "geofg train classifier --search"})
    final = type(card)(**final.model_dump())
    return write_bundle(output, load_tensors(trial_bundle), final)


# --- presenting -------------------------------------------------------------------------------


def _fmt(v: Any, digits: int | None = None) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v).lower()
    if isinstance(v, float):
        return f"{v:.{digits}f}" if digits is not None else f"{v:.3g}"
    return str(v)


def trial_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the trial table (what the CLI prints and the Markdown report holds)."""
    keys = list(report["trials"][0]["params"]) if report["trials"] else []
    headers = ["trial", *keys, "val acc", "val F1", "epochs (best/run)", "seconds", "status"]
    best = report.get("best", {}).get("index")
    rows = []
    for t in report["trials"]:
        status = "best" if t["index"] == best else t["status"]
        if t["status"] != "done":
            status = f"failed: {t['error']}"
        if t["defaults"]:
            status += " (defaults)"
        rows.append([str(t["index"]), *(_fmt(t["params"][k]) for k in keys),
                     _fmt(t.get("val_accuracy"), 3), _fmt(t.get("val_macro_f1"), 3),
                     f"{_fmt(t.get('best_epoch'))}/{_fmt(t.get('epochs_run'))}",
                     _fmt(t.get("seconds"), 0), status])
    return headers, rows


def format_params(params: dict[str, Any]) -> str:
    """``lr=0.00183, freeze_epochs=0`` (3 significant digits), for progress lines."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def markdown_report(report: dict[str, Any]) -> str:
    """The Markdown report: what was searched, the trial table, the best trial vs defaults."""
    headers, rows = trial_table(report)
    lines = [f"# Hyper-parameter search: {Path(report.get('bundle', '')).name}", "",
             f"- space: `{report['space_file']}` ({report['method']}, {len(report['trials'])}"
             f" trials, seed {report['space']['seed']})",
             f"- data: `{report['data']}`; selection: {report['selection']}",
             f"- resources per trial: {report['resources_per_trial']}, at most"
             f" {report['max_concurrent']} at a time, Ray CPUs {report['ray_num_cpus']};"
             f" {report['seconds']:.0f} s in all", ""]
    lines += ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    best = report.get("best")
    if best:
        lines += ["", f"Best: trial {best['index']}, val accuracy {best['val_accuracy']:.3f}"
                      f" (macro-F1 {best['val_macro_f1']:.3f}), params {best['params']}."]
        d = next((t for t in report["trials"] if t["defaults"] and t["status"] == "done"), None)
        if d is not None:
            lines.append(f"Hand-set defaults (trial {d['index']}, same budget): val accuracy"
                         f" {d['val_accuracy']:.3f} (macro-F1 {d['val_macro_f1']:.3f}).")
    return "\n".join(lines) + "\n"


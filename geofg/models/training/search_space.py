"""The search space of ``geofg train classifier --search SPACE.yaml``, and a trial's config.

SPACE.yaml (validated by pydantic, ``extra="forbid"``; a bad key or range is a one-line
:class:`~geofg.errors.ConfigError` naming it, exit 3, before anything is written)::

    method: random            # random (choice / uniform / loguniform) or grid (grid: [...])
    trials: 8                 # random only; --trials N overrides it
    seed: 0                   # seed of the random sampling (not of training: --seed)
    include_defaults: true    # trial 0 = the hand-set defaults, same budget (compare against it)
    max_concurrent: 2         # trials at a time
    cpus_per_trial: 1         # Ray CPUs and torch threads per trial
    gpus_per_trial: auto      # auto: 1 when the Ray cluster has a GPU, else 0; or a number
    num_cpus: 2               # CPUs of the local Ray geofg starts (default: what the trials need)
    params:
      lr: {loguniform: [3.0e-4, 1.0e-2]}
      aug_strength: {uniform: [0.0, 2.0]}
      freeze_epochs: {choice: [0, 5]}
      encoder: {choice: [tu-mobilenetv4_conv_small, tu-resnet18]}
      weight_decay: 0.1        # a plain value: fixed for every trial

Parameters (``params``) are :class:`~geofg.models.training.train.TrainConfig` fields (``lr``,
``weight_decay``, ``label_smoothing``, ``warmup_epochs``, ``ema_decay``, ``gain_sigma``,
``global_gain_sigma``, ``offset_sigma``, ``crop_px``, ``class_weighting``, ``epochs``,
``patience``, ``eval_every``, ``chips_per_step``, ``encoder``) and two derived ones:

* ``aug_strength`` (>= 0) scales the hand-set augmentation: ``gain_sigma``, ``global_gain_sigma``,
  ``offset_sigma`` and ``crop_px`` (rounded) are multiplied by it; 1 = the defaults, 0 = dihedral
  transforms only. It cannot be combined with those four keys.
* ``freeze_epochs`` (>= 0): a freeze schedule. The first ``freeze_epochs`` epochs train only the
  non-encoder parts (``freeze_encoder``), then training continues from that model with everything
  trainable for the remaining epochs (a second warm-up + cosine schedule; the weights pass through
  one fp16 bundle between the phases). ``freeze_epochs >= epochs`` keeps the encoder frozen
  throughout; 0 never freezes it. It needs ``--init`` (as ``--freeze-encoder`` does): this is
  linear-probe-then-fine-tune. A frozen *random* encoder was tried on EuroSAT: with
  ``tu-mobilenetv4_conv_small`` (ReLU) its features grew until the head's BatchNorm running_var
  overflowed float16 and the trial failed at export, so it is refused before the search starts.

``seed``, ``threads``, ``device`` and ``mosaic`` are not searchable: every trial uses ``--seed``
(so with data that has no split column every trial draws the same val split), its resources give
threads and device. Values not in ``params`` come from the command line (``--epochs``, ``--lr``,
``--encoder`` ...) or the :class:`TrainConfig` defaults: those are the "hand-set defaults", and
with ``include_defaults`` the first trial trains exactly them with the same budget.

The Ray Tune side (trials, the local Ray, selection, the report) is :mod:`geofg.models.training.search`;
this module is pure (no ray, no torch).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geofg.errors import ConfigError

__all__ = ["AUG_KEYS", "NOT_SEARCHABLE", "SEARCH_KEYS", "SearchSpace", "default_point", "grid_points",
           "load_space", "trial_config"]

AUG_KEYS = ("gain_sigma", "global_gain_sigma", "offset_sigma", "crop_px")
NOT_SEARCHABLE = ("seed", "threads", "device", "mosaic")


class _Values(BaseModel):
    """The allowed range of every searchable parameter (used to check each value and bound)."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field(None, min_length=1)
    epochs: int = Field(None, ge=1)
    chips_per_step: int = Field(None, ge=1)
    lr: float = Field(None, gt=0, le=1)
    weight_decay: float = Field(None, ge=0)
    label_smoothing: float = Field(None, ge=0, lt=1)
    warmup_epochs: int = Field(None, ge=0)
    ema_decay: float = Field(None, ge=0, lt=1)
    gain_sigma: float = Field(None, ge=0)
    global_gain_sigma: float = Field(None, ge=0)
    offset_sigma: float = Field(None, ge=0)
    crop_px: int = Field(None, ge=0)
    class_weighting: bool = None
    patience: int = Field(None, ge=0)
    eval_every: int = Field(None, ge=1)
    aug_strength: float = Field(None, ge=0)
    freeze_epochs: int = Field(None, ge=0)


SEARCH_KEYS: tuple[str, ...] = tuple(_Values.model_fields)
"""Keys allowed under ``params:``."""
FLOAT_KEYS = tuple(k for k, f in _Values.model_fields.items() if f.annotation is float)
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "grid")


class SearchSpace(BaseModel):
    """A validated SPACE.yaml (module docstring). ``params`` maps each key to a fixed value or a
    ``{"choice" | "grid": [values]}`` / ``{"uniform" | "loguniform": [low, high]}`` dict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["random", "grid"] = "random"
    trials: int | None = Field(None, ge=1)
    seed: int = 0
    include_defaults: bool = True
    max_concurrent: int = Field(2, ge=1)
    cpus_per_trial: int = Field(1, ge=1)
    gpus_per_trial: Literal["auto"] | float = "auto"
    num_cpus: int | None = Field(None, ge=1)
    params: dict[str, Any] = Field(min_length=1)

    def searched(self) -> dict[str, dict[str, Any]]:
        """The keys that vary: ``{key: {dist: values}}``."""
        return {k: v for k, v in self.params.items() if isinstance(v, dict)}

    def fixed(self) -> dict[str, Any]:
        """The keys fixed for every trial."""
        return {k: v for k, v in self.params.items() if not isinstance(v, dict)}

    def grid_size(self) -> int:
        return math.prod(len(d["grid"]) for d in self.searched().values())


def _check_value(path: Path, where: str, key: str, value: Any) -> Any:
    try:
        return getattr(_Values.model_validate({key: value}), key)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"{path}: {where}: {value!r} is not allowed ({err['msg']}); fix the"
                          " value") from None


def _check_param(path: Path, key: str, spec: Any, method: str) -> Any:
    """Return the normalised spec of one ``params`` entry or raise a one-line ConfigError."""
    where = f"params.{key}"
    if key not in SEARCH_KEYS:
        why = (" is fixed for every trial (set it on the command line)" if key in NOT_SEARCHABLE
               else " is not a searchable parameter")
        raise ConfigError(f"{path}: {where}{why}; expected one of {', '.join(SEARCH_KEYS)};"
                          " remove or rename it")
    if isinstance(spec, list):
        raise ConfigError(f"{path}: {where}: a bare list is ambiguous; write {{choice: [...]}}"
                          " (method random) or {grid: [...]} (method grid)")
    if not isinstance(spec, dict):
        return _check_value(path, where, key, spec)
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{path}: {where}: expected one of {{choice: [...]}}, {{uniform: [low,"
                          f" high]}}, {{loguniform: [low, high]}}, {{grid: [...]}}, found keys"
                          f" {sorted(map(str, spec))}; fix it")
    dist, values = next(iter(spec.items()))
    allowed = ("grid",) if method == "grid" else ("choice", "uniform", "loguniform")
    if dist not in allowed:
        raise ConfigError(f"{path}: {where}: method {method} takes {' / '.join(allowed)}, found"
                          f" {dist}; change the method or the distribution")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{path}: {where}.{dist}: expected a non-empty list, found {values!r}")
    if dist in ("choice", "grid"):
        return {dist: [_check_value(path, f"{where}.{dist}", key, v) for v in values]}
    if key not in FLOAT_KEYS:
        raise ConfigError(f"{path}: {where}: {dist} needs a real-valued parameter and {key} is"
                          f" not; use {{choice: [...]}}")
    if len(values) != 2:
        raise ConfigError(f"{path}: {where}.{dist}: expected [low, high], found {len(values)}"
                          " values")
    lo, hi = (_check_value(path, f"{where}.{dist}", key, v) for v in values)
    if not lo < hi:
        raise ConfigError(f"{path}: {where}.{dist}: low {lo} must be below high {hi}; swap or"
                          " fix them")
    if dist == "loguniform" and lo <= 0:
        raise ConfigError(f"{path}: {where}.loguniform: low {lo} must be > 0; use uniform or a"
                          " positive low")
    return {dist: [lo, hi]}


def load_space(path: str | Path, *, trials: int | None = None, epochs: int | None = None,
               freeze_encoder: bool = False) -> SearchSpace:
    """Read and validate SPACE.yaml; ``trials`` (``--trials``) overrides ``trials:``.

    Args:
        path: The YAML file.
        trials: Number of trials from the command line (random search only).
        epochs: The fixed epoch budget (to check ``freeze_epochs`` against it).
        freeze_encoder: ``--freeze-encoder`` was given (cannot be combined with freeze_epochs).

    Raises:
        RasterNotFoundError: The file does not exist.
        ConfigError: Bad YAML, an unknown key, a bad value or range (one line naming the key).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: search space not found; pass --search SPACE.yaml"
                          " (see examples/search.yaml)")
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a params: section, found"
                          f" {type(raw).__name__}; see examples/search.yaml")
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"{path}: unknown key {key!r}; expected"
                              f" {', '.join(SearchSpace.model_fields)}; remove or rename it"
                              ) from None
        raise ConfigError(f"{path}: {key}: {err['msg']} (found {err.get('input')!r}); fix it"
                          ) from None
    params = {str(k): _check_param(path, str(k), v, space.method)
              for k, v in space.params.items()}
    space = space.model_copy(update={"params": params})
    searched = space.searched()
    if not searched:
        raise ConfigError(f"{path}: params: nothing to search (every value is fixed); give at"
                          " least one key a {choice|uniform|loguniform|grid: ...}")
    clash = [k for k in AUG_KEYS if k in params]
    if "aug_strength" in params and clash:
        raise ConfigError(f"{path}: params.aug_strength scales {', '.join(AUG_KEYS)}; remove"
                          f" {', '.join(clash)} or aug_strength")
    if "freeze_epochs" in params and freeze_encoder:
        raise ConfigError(f"{path}: params.freeze_epochs sets when the encoder is frozen; drop"
                          " --freeze-encoder or freeze_epochs")
    if "freeze_epochs" in params and "epochs" not in params and epochs is not None:
        spec = params["freeze_epochs"]
        top = max(next(iter(spec.values()))) if isinstance(spec, dict) else spec
        if top > epochs:
            raise ConfigError(f"{path}: params.freeze_epochs {top} exceeds the {epochs} epochs"
                              " of a trial; lower it or raise --epochs")
    if space.method == "grid":
        if trials is not None and trials != space.grid_size():
            raise ConfigError(f"{path}: method grid runs every combination ({space.grid_size()}"
                              f" trials, plus the defaults trial unless include_defaults: false),"
                              f" not --trials {trials}; drop --trials or use method random")
        if space.trials is not None:
            raise ConfigError(f"{path}: trials: is for method random (a grid runs every"
                              " combination); remove it")
    else:
        n = trials if trials is not None else space.trials
        if n is None:
            raise ConfigError(f"{path}: random search needs a number of trials; add trials: N"
                              " or pass --trials N")
        if n < 1:
            raise ConfigError(f"--trials {n}: expected at least 1")
        space = space.model_copy(update={"trials": n})
    return space


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> tuple[Any, int]:
    """Return the TrainConfig of a trial and its number of frozen-encoder epochs.

    ``base`` is the hand-set TrainConfig (as a dict); ``params`` the trial's values (module
    docstring: ``aug_strength`` scales the augmentation keys, ``freeze_epochs`` is returned apart).
    """
    from geofg.models.training.train import TrainConfig

    values = dict(base)
    values["mosaic"] = tuple(values["mosaic"])
    s = params.get("aug_strength")
    if s is not None:
        for k in AUG_KEYS:
            values[k] = round(base[k] * s) if k == "crop_px" else base[k] * s
    values.update({k: v for k, v in params.items() if k not in ("aug_strength", "freeze_epochs")})
    cfg = TrainConfig(**values)
    return cfg, int(params.get("freeze_epochs", 0))


def grid_points(space: SearchSpace, defaults: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every combination of a grid space, row-major; ``defaults`` (if given) first, once."""
    keys = list(space.searched())
    points = [dict(zip(keys, vals, strict=True))
              for vals in itertools.product(*(space.searched()[k]["grid"] for k in keys))]
    if defaults is not None:
        points = [defaults, *(p for p in points if p != defaults)]
    return points


def default_point(space: SearchSpace, base: dict[str, Any]) -> dict[str, Any]:
    """The searched keys at their hand-set values (aug_strength 1, freeze_epochs 0)."""
    derived = {"aug_strength": 1.0, "freeze_epochs": 0}
    return {k: derived[k] if k in derived else base[k] for k in space.searched()}

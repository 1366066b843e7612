"""The model card: everything geofg needs to know to run a bundle, kept in the bundle itself.

A card is a frozen pydantic model serialised as JSON into the safetensors header (see
:mod:`geofg.models.inference.bundle`). It names the input bands (model order), the input scaling and
normalisation (``normalised = (raw * scale - mean) / std``, mean/std in scaled units, per band),
the classes with display colours, tiling defaults and provenance (training data, held-out metrics,
the command that made it).

This module does not import torch.
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from geofg.errors import ConfigError, GeofgWarning

__all__ = ["ClassInfo", "ModelCard", "Normalisation", "Task"]

Task = Literal["patch-classification", "segmentation"]
Normalisation = Literal["linear", "log-sigmoid"]

_COLOUR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")


def _format_validation_error(err: ValidationError) -> str:
    """Return a pydantic ValidationError as one line: ``field: message; field: message``."""
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item.get("loc", ())) or "card"
        msg = str(item.get("msg", "invalid"))
        # pydantic prefixes messages of errors raised in validators with "Value error, "
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts).replace("\n", " ")


class ClassInfo(BaseModel):
    """One output class: its name and a display colour ``#rrggbb``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    colour: str

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("class name must not be empty")
        return value

    @field_validator("colour")
    @classmethod
    def _colour_hex(cls, value: str) -> str:
        if not _COLOUR_RE.match(value):
            raise ValueError(f"expected a colour like '#1f7a1f', found {value!r}")
        return value.lower()


class ModelCard(BaseModel):
    """Metadata of a model bundle (architecture, bands, normalisation, classes, provenance).

    Constructing a card with inconsistent values raises :class:`geofg.errors.ConfigError` with a
    one-line message naming each bad field (it is also a ``ValueError``).

    Attributes:
        name: Bundle name used by ``geofg models list`` and ``--model``.
        version: Version string of this bundle.
        task: ``"patch-classification"`` (dense map from a chip classifier) or ``"segmentation"``.
        architecture: Key of :data:`geofg.models.inference.nets.ARCHITECTURES`.
        encoder: segmentation-models-pytorch encoder name (``"tu-..."`` for timm encoders).
        bands: Input band names in model order, e.g. Sentinel-2 ``"B01"``..``"B12"``, ``"B8A"``.
        scale: Model input = raw DN * scale (1e-4 for Sentinel-2 L1C uint16 reflectance).
        mean: Per-band mean, in scaled units (``log-sigmoid``: centre of the log values).
        std: Per-band standard deviation, in scaled units (> 0) (``log-sigmoid``: their scale).
        normalisation: ``"linear"``: ``(raw * scale - mean) / std``; ``"log-sigmoid"`` (Dynamic
            World): ``v = (log(1 + raw * scale) - mean) / std``, then ``sigmoid(5 v - 1)``
            (:func:`geofg.batch.normalise`).
        processing_levels: Sentinel-2 processing levels the model was trained or checked on
            (``"L1C"``, ``"L2A"``); empty for other sensors. Informational (shown with the card);
            inputs are not refused by level.
        classes: Output classes in logit order.
        crop_classes: Class names where index-based crop health applies.
        tile_multiple: Height and width given to ``predict()`` are multiples of this (pixels).
        tile_size: A tile edge in pixels (a multiple of ``tile_multiple``) recorded by the
            bundle's maker; informational, runs do not read it. A run's tile defaults to one tile
            per unit, ``chunk + 2 * halo`` rounded up to ``tile_multiple`` (the fewest re-predicted
            pixels, docs/design.md "Tiles"); ``--tile-size`` / ``tile.tile_size`` sets a smaller
            one. Kept in the card so that existing bundles (and their sha256) stay valid.
        halo: Default context in pixels added on each side of a tile (>= receptive-field margin).
        decoder_channels: U-Net decoder widths, deepest first (None: smp's 256, 128, 64, 32, 16).
        patch_size: For classifiers, the chip edge in pixels the model was trained on.
        resolution_m: Ground sampling distance of the training data in metres.
        training: Training provenance (data, splits, epochs, seed, wall time, command).
        metrics: Held-out metrics (e.g. ``val_accuracy``, ``test_accuracy``, ``test_macro_f1``).
        licence: Licence of the weights (SPDX id), when not geofg's own.
        attribution: Attribution text the weights' licence or NOTICE asks to keep with them.
        made_by: The script and command that made the bundle.
        created: ISO date of creation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    task: Task
    architecture: str
    encoder: str
    bands: list[str]
    scale: float
    mean: list[float]
    std: list[float]
    normalisation: Normalisation = "linear"
    processing_levels: list[str] = []
    classes: list[ClassInfo]
    crop_classes: list[str] = []
    tile_multiple: int = 32
    tile_size: int
    halo: int
    decoder_channels: list[int] | None = None
    patch_size: int | None = None
    resolution_m: float | None = None
    training: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    licence: str = ""
    attribution: str = ""
    made_by: str = ""
    created: str = ""

    def __init__(self, **data: Any) -> None:
        """Validate and build a card; raise ConfigError (one line) when it is inconsistent."""
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(
                f"invalid model card: {_format_validation_error(err)}; fix the card values"
            ) from None

    # --- field checks -------------------------------------------------------------------------

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(
                f"expected a name of letters, digits, '.', '_' or '-', found {value!r}"
            )
        return value

    @field_validator("bands")
    @classmethod
    def _bands_ok(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("expected at least one band name, found none")
        dupes = sorted({b for b in value if value.count(b) > 1})
        if dupes:
            raise ValueError(f"band names must be unique, found duplicates {dupes}")
        return value

    @field_validator("scale")
    @classmethod
    def _scale_ok(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"expected scale > 0, found {value}")
        return value

    @field_validator("std")
    @classmethod
    def _std_ok(cls, value: list[float]) -> list[float]:
        bad = [s for s in value if not s > 0]
        if bad:
            raise ValueError(f"every std must be > 0, found {bad}")
        return value

    @field_validator("classes")
    @classmethod
    def _classes_ok(cls, value: list[ClassInfo]) -> list[ClassInfo]:
        if len(value) < 2:
            raise ValueError(f"expected at least 2 classes, found {len(value)}")
        names = [c.name for c in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"class names must be unique, found duplicates {dupes}")
        if len(value) > 250:
            raise ValueError(f"at most 250 classes fit the uint8 class layer, found {len(value)}")
        return value

    @field_validator("tile_multiple", "tile_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError(f"expected a positive number of pixels, found {value}")
        return value

    @field_validator("halo")
    @classmethod
    def _halo_ok(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"expected halo >= 0 pixels, found {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        n = len(self.bands)
        if len(self.mean) != n or len(self.std) != n:
            raise ValueError(
                f"mean and std need one value per band: {n} bands, found {len(self.mean)} means"
                f" and {len(self.std)} stds"
            )
        names = {c.name for c in self.classes}
        unknown = [c for c in self.crop_classes if c not in names]
        if unknown:
            raise ValueError(
                f"crop_classes {unknown} are not class names; expected a subset of {sorted(names)}"
            )
        if self.tile_size % self.tile_multiple:
            raise ValueError(
                f"tile_size {self.tile_size} is not a multiple of tile_multiple"
                f" {self.tile_multiple}"
            )
        if self.patch_size is not None and self.patch_size <= 0:
            raise ValueError(f"expected patch_size > 0 pixels, found {self.patch_size}")
        return self

    # --- conveniences -------------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """Class names in logit order."""
        return [c.name for c in self.classes]

    @property
    def class_colours(self) -> list[str]:
        """Class colours ``#rrggbb`` in logit order."""
        return [c.colour for c in self.classes]

    def to_json(self) -> str:
        """Serialise the card as compact JSON (the form stored in a bundle header)."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        """Parse a card from JSON text.

        Raises:
            ConfigError: The text is not JSON or the card is invalid (one-line message).
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"model card is not valid JSON ({err}); fix the card") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"model card must be a JSON object, found {type(data).__name__}; fix the card"
            )
        return cls(**data)


def check_input_batch(card: ModelCard, x: object) -> None:
    """Refuse a model input that is not ``(N, C, H, W)`` with the card's bands and tile multiple.

    Raises:
        ConfigError: wrong rank, band count, empty batch or a size not a multiple of the card's.
    """
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ConfigError(
            f"predict() expects a float32 array (N, C, H, W), found"
            f" {getattr(x, 'shape', type(x).__name__)}"
        )
    n, c, h, w = x.shape
    m = card.tile_multiple
    if c != len(card.bands):
        raise ConfigError(
            f"model {card.name!r} expects {len(card.bands)} bands"
            f" ({','.join(card.bands)}), found {c} channels; select the card's bands"
        )
    if n == 0 or h == 0 or w == 0 or h % m or w % m:
        raise ConfigError(
            f"predict() needs a non-empty batch with H and W multiples of {m}, found"
            f" {x.shape}; pad tiles to a multiple of {m}"
        )


class ResolutionMismatchWarning(GeofgWarning):
    """The input's pixels are far from the size the model was trained on."""


#: Pixel sizes within this factor of the model card's ``resolution_m`` pass without a word.
RESOLUTION_TOLERANCE = 1.5


def check_resolution(label: str, pixel_m: float, card: ModelCard) -> None:
    """Warn when ``pixel_m`` is more than :data:`RESOLUTION_TOLERANCE` times off the card's.

    A CNN sees objects in pixels: at 5 m, fields and lakes look twice their size to a 10 m model
    and its classes shift (NAIP at 5 m through the 10 m ``naip-4band``: 39.8 % River against
    65.9 % at 10 m, issue 17). The warning says how to resample; nothing is resampled here.
    """
    want = card.resolution_m
    if not want or not pixel_m or max(pixel_m / want, want / pixel_m) <= RESOLUTION_TOLERANCE:
        return
    warnings.warn(
        f"{label}: pixels are {pixel_m:g} m, model {card.name} was trained on {want:g} m pixels, "
        f"so it sees every object {want / pixel_m:.2g} times its trained size and its "
        f"classes shift; resample the input to {want:g} m first (e.g. gdalwarp -tr {want:g} "
        f"{want:g} -r average IN.tif OUT.tif, or a geofg scan grid with resolution {want:g})",
        ResolutionMismatchWarning,
        stacklevel=3,
    )

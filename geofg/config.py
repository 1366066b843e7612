"""Frozen, validated job configuration (pydantic at the boundary, dataclasses inside).

A :class:`JobConfig` is all a worker needs to rebuild a run: it is small, JSON round-trips and
travels between processes. CLI flags override fields of a config file, never the other way round.
Its JSON schema is ``JobConfig.model_json_schema()``; docs/scan.md publishes the scan config's,
which shares the runner, tile and model sections.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from geofg.errors import ConfigError
from geofg.stitch import BLEND_METHODS


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: Longest config value quoted back in an error message.
MAX_QUOTED_CHARS = 80
#: Largest config file read (a config is a few KB; anything bigger is a mistake or an attack).
MAX_CONFIG_BYTES = 1_000_000


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors, aliases or duplicate keys.

    Aliases expand without limit (a 701-byte "billion laughs" file became a 312 MB error line);
    a config needs none of them, so they are refused, as is a key given twice (the second silently
    won before).
    """

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201, D102
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.constructor.ConstructorError(
                None, None, "anchors and aliases (&name, *name) are not allowed in a geofg config",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201, D102
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {str(key)[:MAX_QUOTED_CHARS]!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> object:
    """Read a YAML (or JSON) config strictly: no aliases, no duplicate keys, at most 1 MB.

    Raises:
        ConfigError: the file cannot be read or parsed (one line naming the file).
    """
    p = Path(path)
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: expected a config of at most {MAX_CONFIG_BYTES:,} bytes, found "
                              f"{p.stat().st_size:,}; give the right file")
        return yaml.load(p.read_text(), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        why = " ".join(str(e).split())[:200]
        raise ConfigError(f"{p}: cannot read the config ({why}); give a YAML or JSON file "
                          "without anchors, aliases or repeated keys") from None


def quoted(value: object) -> str:
    """``repr(value)`` cut to :data:`MAX_QUOTED_CHARS` (an error line stays short)."""
    text = repr(value)
    return text if len(text) <= MAX_QUOTED_CHARS else text[: MAX_QUOTED_CHARS - 15] + f"... ({len(text):,} chars)"


class ReadConfig(_Frozen):
    """Which inputs to read and how to name their bands."""

    inputs: list[str] = Field(min_length=1)
    bands: list[str] | None = None
    assume_crs: str | None = None
    max_pixels: int = Field(default=20_000_000_000, gt=0)
    max_compression_ratio: float | None = Field(default=2000.0, gt=1)


class TileConfig(_Frozen):
    """Units (one per output chunk), model tiles and blending.

    ``halo`` defaults to the model card's; ``tile_size`` to one tile per unit (``chunk + 2 * halo``
    rounded up to the model's multiple): the fewest re-predicted pixels (the card's own
    ``tile_size`` is informational and not used). ``chunk`` defaults to 1024; when ``tile_size``
    is set and ``chunk`` is not, the plan takes the largest chunk up to 1024 whose unit is a whole
    number of tiles a side (:func:`geofg.grid.aligned_chunk`; 896 for 256 px tiles and a 16 px
    halo), so no tile is squeezed in to cover a remainder. A scan's units are its grid's chunks:
    there the chunk is ``grid.chunk`` and is never changed.
    """

    chunk: int = Field(default=1024, ge=16, le=8192)
    tile_size: int | None = Field(default=None, ge=32, le=8192)
    halo: int | None = Field(default=None, ge=0, le=2048)
    batch_size: int = Field(default=1, ge=1, le=256)
    blend: str = "cosine"

    @model_validator(mode="after")
    def _check(self) -> TileConfig:
        if self.blend not in BLEND_METHODS:
            raise ValueError(f"blend must be one of {', '.join(BLEND_METHODS)}, got {self.blend!r}")
        return self


class ModelConfig(_Frozen):
    """Which bundle runs where."""

    model: str = "landcover-s2"  # geofg.models.inference.registry.DEFAULT_MODEL (config imports no models)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ensemble: list[str] = []
    """More bundles (names or paths) whose probabilities are averaged with ``model``'s."""
    tta: bool = False
    """Average over the 8 dihedral transforms of each tile (geofg.models.inference.ensemble)."""
    compile: bool = False
    """``torch.compile`` the network (``.safetensors`` bundles). Every process then compiles it once
    (about 40 s for eurosat-13 on 2 CPU cores; seconds when torch's on-disk cache already holds it)
    and every unit is predicted at the full tile size, so one compilation serves the run. Outputs
    may differ from eager mode in the last bits, and in the near-tie pixels of edge units (now
    predicted on a full tile instead of a smaller one), so it is part of the output hash: a mosaic
    started eagerly is not resumed compiled (its units run again), nor the other way round."""


class MaskConfig(_Frozen):
    """Cloud, shadow and snow/ice masking (:mod:`geofg.masks`).

    ``mode``: ``auto`` masks inputs whose bands carry Sentinel-2 names and leaves others alone;
    ``on`` masks or refuses the input (exit 3); ``off`` never masks. Where the mask is not clear,
    class, health and confidence are no data, and the areas are reported apart.
    """

    mode: Literal["auto", "on", "off"] = "auto"


class WriteConfig(_Frozen):
    """Where the mosaic goes and what may happen to an existing one."""

    output: str
    mode: Literal["resume", "overwrite"] = "resume"
    break_lock: bool = False
    quicklook: bool = True


class RunnerConfig(_Frozen):
    """How units are executed.

    ``kind="ray"`` runs units on Ray actors (:mod:`geofg.runners.ray`): ``address`` None starts a
    local Ray (or joins ``RAY_ADDRESS`` when set), else ``ray.init(address=...)``. ``num_actors``
    None means one actor per GPU, or one CPU actor per core where the cluster has no GPU. A
    cluster that accepts unauthenticated requests is refused unless ``allow_insecure_cluster``.
    ``compute_streams`` (local runner) is how many units the model works on at once. None: one
    where geofg reuses one heap (``geofg classify``, ``segment``, ``scan``), else the predictor's
    choice: one per torch CPU thread, one on a GPU (see :mod:`geofg.runners.local`). Two streams
    on a 2-core CPU ran 10-14 % faster for 1 GB more memory (benchmarks/HISTORY.md).
    ``read_workers`` and ``write_workers`` are the threads that read (decode and normalise) and
    write (layers, chunks, ledger) units; None sizes them for the device (:meth:`io_threads`).
    """

    kind: Literal["local", "ray"] = "local"
    read_workers: int | None = Field(default=None, ge=1, le=64)
    write_workers: int | None = Field(default=None, ge=1, le=64)
    prefetch: int = Field(default=2, ge=1, le=64)
    compute_streams: int | None = Field(default=None, ge=1, le=64)
    max_attempts: int = Field(default=2, ge=1, le=10)
    address: str | None = None
    num_actors: int | None = Field(default=None, ge=1, le=4096)
    allow_insecure_cluster: bool = False

    def io_threads(self, device: str, cpus: int | None = None) -> tuple[int, int]:
        """Return (read threads, write threads) for a model on ``device`` with ``cpus`` cores.

        Set fields win. Otherwise, on CPU the model needs the cores: 2 readers and 1 writer (the
        model, not I/O, limits a CPU run). On a GPU the cores are free for I/O, which is then the limit
        (a 1152² unit of a 13-band DEFLATE raster costs about 110 ms of CPU to read and 50 to
        write): a quarter of them write, the rest but one (for the thread that drives the
        device) read. ``cpus`` defaults to the cores this process may run on. Measurements:
        benchmarks/HISTORY.md, section 0a.

        Examples:
            >>> RunnerConfig().io_threads("cpu", 16)
            (2, 1)
            >>> RunnerConfig().io_threads("cuda", 16)
            (11, 4)
            >>> RunnerConfig(read_workers=3).io_threads("cuda:0", 4)
            (3, 1)
        """
        if device.startswith("cuda"):
            n = cpus or len(os.sched_getaffinity(0))
            writers = self.write_workers or max(1, n // 4)
            readers = self.read_workers or max(2, n - writers - 1)
            return readers, writers
        return self.read_workers or 2, self.write_workers or 1


class JobConfig(_Frozen):
    """A whole run: read -> tile -> model -> write, executed by a runner."""

    task: Literal["classify", "segment"] = "classify"
    read: ReadConfig
    tile: TileConfig = TileConfig()
    model: ModelConfig = ModelConfig()
    write: WriteConfig
    runner: RunnerConfig = RunnerConfig()
    mask: MaskConfig = MaskConfig()

    def output_hash(self, tile_size: int, halo: int, mask: dict | None = None) -> str:
        """Hash of everything in the config that changes output pixels.

        In it: task, bands, assumed CRS, chunk, the resolved tile size and halo, blend, compile and
        the cloud mask. Not in it: what only decides whether a run may start (size limits), where
        and how fast it runs (device, batch size, workers: the last bits of a probability may
        differ, never by design), and the output options. The inputs and the model (with its
        ensemble and TTA) have their own fingerprints in each ledger record
        (:func:`geofg.models.inference.ensemble.models_sha256`). tests/test_config.py changes each setting.

        ``mask`` describes the cloud mask the run applies (None: none, and the hash is the one
        runs before masking had); ``compile`` enters only when set, so eager runs keep the hash
        they had before it did.
        """
        key = {
            "task": self.task,
            "bands": self.read.bands,
            "assume_crs": self.read.assume_crs,
            "chunk": self.tile.chunk,
            "tile_size": tile_size,
            "halo": halo,
            "blend": self.tile.blend,
        }
        if mask is not None:
            key["mask"] = mask
        if self.model.compile:
            key["compile"] = True
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_job(path: str | Path, **overrides: object) -> JobConfig:
    """Load a JobConfig from YAML or JSON; ``overrides`` are nested dicts merged on top.

    Raises:
        ConfigError: unreadable file, unknown keys or invalid values (names the key).
    """
    p = Path(path)
    data = read_yaml(p) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of keys, found {type(data).__name__}; fix the file")
    for k, v in overrides.items():
        if isinstance(v, dict):
            data.setdefault(k, {}).update(v)
        else:
            data[k] = v
    return build_job(data, source=str(p))


def build_job(data: dict, source: str = "options") -> JobConfig:
    """Validate a nested dict into a JobConfig, turning pydantic errors into one-line ConfigErrors."""
    try:
        return JobConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise ConfigError(
            f"{source}: invalid value for {loc}: {str(err['msg'])[:200]} (got {quoted(err.get('input'))}); "
            "fix that key or remove it"
        ) from None

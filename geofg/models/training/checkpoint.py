"""Training checkpoints for resume: one ``.safetensors`` file of tensors plus one JSON file.

``DIR/last.safetensors`` holds the model, its EMA copy, the best EMA weights so far, the
optimiser's per-parameter state and the random generators' states, all as tensors;
``DIR/last.json`` holds everything else (epoch, step, history, best score, the config and a
fingerprint of the data and config the run was started with). Nothing is pickled: tensors go
through safetensors, the rest through JSON. Both files are written to temporary names, fsynced and
renamed, the tensors first, so a crash leaves the previous complete checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from geofg.errors import ConfigError, WeightsError
from geofg.io.atomic import atomic_write

__all__ = ["CheckpointState", "load_checkpoint", "save_checkpoint"]

TENSORS = "last.safetensors"
STATE = "last.json"

CheckpointState = dict[str, Any]


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{idx}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(directory: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module,
                    best: dict[str, torch.Tensor] | None, opt: torch.optim.Optimizer,
                    generators: dict[str, torch.Tensor], state: CheckpointState) -> None:
    """Write ``last.safetensors`` and ``last.json`` into ``directory`` (see the module docstring)."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    if best is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()})
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors.update(opt_tensors)
    tensors.update({f"rng.{k}": v.cpu().contiguous() for k, v in generators.items()})
    atomic_write(directory / TENSORS, save(tensors, metadata={"format": "geofg-train-checkpoint"}))
    atomic_write(directory / STATE,
                  (json.dumps({**state, "optimizer": opt_meta}, indent=1) + "\n").encode())


def load_checkpoint(directory: str | Path) -> tuple[CheckpointState, dict[str, dict[str, torch.Tensor]]] | None:
    """Return ``(state, {"model", "ema", "best", "opt", "rng"} tensors)`` or None if there is none.

    Raises:
        WeightsError: The checkpoint is incomplete or unreadable (one line, with the fix).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    state_path, tensor_path = directory / STATE, directory / TENSORS
    if not state_path.exists() and not tensor_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text())
        flat = load_file(str(tensor_path))
    except (OSError, json.JSONDecodeError, SafetensorError) as err:
        raise WeightsError(f"{directory}: expected a resumable checkpoint ({STATE} +"
                           f" {TENSORS}), found an unreadable one ({err}); delete the folder to"
                           " start over") from None
    groups: dict[str, dict[str, torch.Tensor]] = {g: {} for g in ("model", "ema", "best", "opt",
                                                                 "rng")}
    for key, val in flat.items():
        prefix, _, rest = key.partition(".")
        if prefix not in groups:
            raise WeightsError(f"{tensor_path}: unexpected tensor {key!r}; delete the folder to"
                               " start over")
        groups[prefix][rest] = val
    return state, groups


def restore_optimizer(opt: torch.optim.Optimizer, state: CheckpointState,
                      tensors: dict[str, torch.Tensor]) -> None:
    """Load the optimiser state saved by :func:`save_checkpoint`."""
    meta = state["optimizer"]
    per_param: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        idx, _, name = key.partition(".")
        per_param.setdefault(int(idx), {})[name] = val
    for idx, extra in meta.get("scalars", {}).items():
        per_param.setdefault(int(idx), {}).update(extra)
    try:
        opt.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as err:
        raise ConfigError(f"checkpoint optimiser state does not fit this model ({err}); delete"
                          " the checkpoint folder to start over") from None

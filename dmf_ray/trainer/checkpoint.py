"""Training checkpoints as single safetensors files: weights, optimiser, RNG, velocities, history.

Why safetensors for the whole state: nothing that resumes a run may unpickle (a checkpoint can
come from a shared store). Tensors go in as tensors -- model weights, each optimiser state
entry, the sampling RNG state, the velocity buffer -- and everything else (step, config,
optimiser hyper-parameters, LR-schedule counters, metric history) as JSON in the metadata.
Restoring all of it makes a resumed CPU run bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dmf_ray.trainer.config import TrainConfig, train_config_from_dict
from dmf_ray.trainer.engine import TrainState, unwrap_model
from dmf_ray.errors import DataError
from dmf_ray.files import atomic_write

FORMAT_VERSION = "1"
_META_KEY = "dmf_ray.trainer.checkpoint"
_NAME = re.compile(r"^step_(\d+)\.safetensors$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.safetensors"


def save_checkpoint(path: str | Path, state: TrainState, cfg: TrainConfig) -> Path:
    """Write ``state`` atomically (:mod:`dmf_ray.files`) so a crash never leaves half a file."""
    tensors: dict[str, torch.Tensor] = {
        f"model.{k}": v.detach().cpu().contiguous() for k, v in unwrap_model(state.model).state_dict().items()
    }
    optim = state.optimizer.state_dict()
    for idx, entry in optim["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors.update(_rank_tensors(state))
    if state.ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in state.ema.state_dict().items()})
    meta = {
        "version": FORMAT_VERSION,
        "step": state.step,
        "config": cfg.to_dict(),
        "param_groups": optim["param_groups"],
        "scheduler": state.scheduler.state_dict(),  # plain numbers; lr_lambdas is [None] for functions
        "history": state.history,
    }
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)}))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint; DataError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_META_KEY)
        meta = json.loads(raw) if raw is not None else None
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(path, f"not a readable safetensors checkpoint ({exc})") from None
    if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION:
        raise DataError(path, "not a dmf_ray training checkpoint (missing or unknown metadata)")
    return tensors, meta


def checkpoint_config(path: str | Path) -> TrainConfig:
    """The TrainConfig a checkpoint was written with."""
    _, meta = read_checkpoint(path)
    return train_config_from_dict(meta["config"])


def restore_state(state: TrainState, path: str | Path) -> TrainState:
    """Load a checkpoint into a freshly built ``state`` (same config) and return it."""
    tensors, meta = read_checkpoint(path)
    device = next(state.model.parameters()).device
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        unwrap_model(state.model).load_state_dict(model_sd, strict=True)
    except RuntimeError as exc:
        raise DataError(path, f"weights do not match the model config ({str(exc).splitlines()[0]})") from None
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            optim_state.setdefault(int(idx), {})[name] = value.to(device) if name != "step" else value
    state.optimizer.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
    state.scheduler.load_state_dict(meta["scheduler"])
    state.rng.set_state(tensors["rng"])
    if state.ema is not None:
        ema_sd = {k[len("ema.") :]: v.to(device) for k, v in tensors.items() if k.startswith("ema.")}
        if not ema_sd:
            raise DataError(path, "has no EMA weights but the config sets optim.ema_decay")
        state.ema.load_state_dict(ema_sd, strict=True)
    if state.velocity is not None:
        if "velocity" not in tensors:
            raise DataError(path, "has no velocity buffer but the config uses a second-order friction")
        state.velocity.load_state_dict({"velocity": tensors["velocity"].to(device)})
    state.step = int(meta["step"])
    state.history = list(meta["history"])
    return state


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``directory`` (None if there is none)."""
    directory = Path(directory)
    found = [(int(m.group(1)), p) for p in directory.glob("step_*.safetensors") if (m := _NAME.match(p.name))]
    return max(found)[1] if found else None


def _rank_tensors(state: TrainState) -> dict[str, torch.Tensor]:
    """What differs between data-parallel ranks: the sampling RNG and the velocity buffer."""
    tensors = {"rng": state.rng.get_state()}
    if state.velocity is not None:
        tensors["velocity"] = state.velocity.state_dict()["velocity"].cpu().contiguous()
    return tensors


def save_rank_state(path: str | Path, state: TrainState) -> Path:
    """A rank's own RNG and velocities, beside the main checkpoint (which holds rank 0's), so a
    resumed multi-worker run continues each rank's batch stream exactly."""
    meta = {_META_KEY: json.dumps({"version": FORMAT_VERSION, "rank_state": True})}
    return atomic_write(path, lambda tmp: save_file(_rank_tensors(state), str(tmp), metadata=meta))


def restore_rank_state(state: TrainState, path: str | Path) -> None:
    """Load a rank's own RNG and velocity saved by :func:`save_rank_state`."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(path, f"not a readable rank state ({exc})") from None
    state.rng.set_state(tensors["rng"])
    if state.velocity is not None and "velocity" in tensors:
        device = state.velocity.velocity.device
        state.velocity.load_state_dict({"velocity": tensors["velocity"].to(device)})


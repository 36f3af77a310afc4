"""The Ray Train data-parallel wrapper around :mod:`dmf_ray.trainer.engine`.

Why a wrapper and not a second trainer: each TorchTrainer worker runs the very same
``engine.train`` loop. Two things change:

* the drift needs the whole generated batch (column softmax, repulsion), so the step's
  ``gather`` hook all-gathers generated samples and positives as targets; each worker computes
  the drift of its own rows only, all-reducing the three global quantities (distance sum,
  column log-sum-exp, force mean square). N workers with per-worker batch b therefore compute
  exactly the drift of one process with batch N*b at 1/N of the kernel work each, and DDP
  averages the gradients of the local rows (equal batch sizes make that the global mean);
* rank 0 scores the model and reports metrics with a safetensors checkpoint at every
  evaluation; the other ranks report empty metrics so ``ray.train.report`` stays in step. A
  restarted worker group resumes from the latest reported checkpoint.

``cfg.batch_size`` is the per-worker batch. A run that diverges reports ``diverged`` with its
reason once and stops; the caller decides what that means for a sweep.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import Tensor

from dmf_ray.trainer.checkpoint import restore_rank_state, restore_state, save_checkpoint, save_rank_state
from dmf_ray.trainer.config import TrainConfig
from dmf_ray.data import load_dataset
from dmf_ray.trainer.engine import TrainState, build_state, generator_config, serving_model
from dmf_ray.trainer.run import run_training
from dmf_ray.errors import TrainingDiverged
from dmf_ray.eval.metrics import TEST_METRIC_NAMES, VAL_METRIC_NAMES
from dmf_ray.core.models import save_generator

CHECKPOINT_FILE = "state.safetensors"
GENERATOR_FILE = "generator.safetensors"
HISTORY_FILE = "history.json"
SCORE_KEYS = (*VAL_METRIC_NAMES, *TEST_METRIC_NAMES, "loss", "drift_rms", "gamma", "lr", "train_seconds")
# Fault injection at a known point of the run, not at a moment of the clock: with this variable
# naming a folder, each worker writes ``checkpointed_rank<r>`` (its pid) there after every
# checkpoint it reports and waits, at most FAULT_GATE_WAIT_S, until a file ``release`` exists.
# tests/test_faults.py kills the worker while it waits; unset, nothing happens.
FAULT_GATE_ENV = "DMF_RAY_FAULT_GATE"
FAULT_GATE_WAIT_S = 300.0


@dataclass(frozen=True)
class ProcessGroupShard:
    """This rank's rows of the gathered batch, reduced over the default process group."""

    rows: slice

    def sum(self, t: Tensor) -> Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    def logsumexp(self, t: Tensor) -> Tensor:
        peak = t.clone()
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        shift = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))  # all -inf stays -inf
        total = (t - shift).exp()
        dist.all_reduce(total)
        return total.log() + shift


def all_gather_rows(local: Tensor) -> tuple[Tensor, ProcessGroupShard]:
    """All ranks' rows stacked in rank order, and this rank's shard of them.

    Every rank must pass the same number of rows (equal per-worker batches). Gathered tensors
    are detached: only the local rows carry gradients, through the loss.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.contiguous())
    rows = local.shape[0]
    return torch.cat(parts), ProcessGroupShard(slice(rank * rows, (rank + 1) * rows))


def worker_loop(loop_config: dict[str, Any]) -> None:
    """The per-worker training function of ``TorchTrainer``.

    ``loop_config``: ``{"train": <TrainConfig>, "resume_from": <checkpoint path, optional>}``;
    the config comes validated (the sweep builds it once per trial) and is used as it is: its
    ``device`` ``cuda`` is this worker's own GPU, set by Train. A restarted worker group resumes
    from Train's latest checkpoint; otherwise ``resume_from`` (Train V2's replacement for
    ``resume_from_checkpoint``) seeds the run.
    """
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg: TrainConfig = loop_config["train"]
    data = load_dataset(cfg.data)
    state = build_state(cfg, data, rank=rank, world=world)
    resume_from = ray.train.get_checkpoint()
    if resume_from is None and loop_config.get("resume_from"):
        resume_from = ray.train.Checkpoint(loop_config["resume_from"])
    if resume_from is not None:
        with resume_from.as_directory() as folder:
            restore_state(state, Path(folder) / CHECKPOINT_FILE)
            if (Path(folder) / rank_file(rank)).is_file():
                restore_rank_state(state, Path(folder) / rank_file(rank))
    if world > 1:
        state.model = ray.train.torch.prepare_model(state.model)
    placement = worker_nodes(world)

    def report(state: TrainState, record: dict[str, float]) -> None:
        # Every rank adds its own RNG / velocity file; Train merges the ranks' folders.
        with tempfile.TemporaryDirectory() as folder:
            if world > 1:
                save_rank_state(Path(folder) / rank_file(rank), state)
            metrics: dict[str, Any] = {}
            if rank == 0:
                write_checkpoint_folder(Path(folder), state, cfg, data.dim)
                scores = {k: v for k, v in record.items() if k in SCORE_KEYS}
                metrics = {"step": state.step, **scores, "worker_nodes": placement}
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        fault_gate(rank)

    try:
        run_training(cfg, data, state, on_eval=report, gather=all_gather_rows if world > 1 else None, score=rank == 0)
    except TrainingDiverged as exc:
        # NaN scores: the searcher records a failed trial and the scheduler ignores it.
        nan_scores = dict.fromkeys(VAL_METRIC_NAMES, math.nan)
        ray.train.report({"step": state.step, **nan_scores, "diverged": 1.0, "reason": str(exc)} if rank == 0 else {})


def fault_gate(rank: int) -> None:
    """Stop at the fault gate (see FAULT_GATE_ENV) when one is set; a bounded wait."""
    gate = os.environ.get(FAULT_GATE_ENV)
    if not gate:
        return
    (Path(gate) / f"checkpointed_rank{rank}").write_text(str(os.getpid()))
    deadline = time.monotonic() + FAULT_GATE_WAIT_S
    while not (Path(gate) / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def rank_file(rank: int) -> str:
    return f"rank_{rank}.safetensors"


def worker_nodes(world: int) -> str:
    """Comma-separated Ray node ids of all ranks, in rank order (placement, for reports)."""
    mine = ray.get_runtime_context().get_node_id()
    if world == 1:
        return mine
    nodes: list[str] = [""] * world
    dist.all_gather_object(nodes, mine)
    return ",".join(nodes)


def write_checkpoint_folder(folder: Path, state: TrainState, cfg: TrainConfig, dim: int) -> None:
    """Full training state, the bare generator weights and the metric history in one folder."""
    save_checkpoint(folder / CHECKPOINT_FILE, state, cfg)
    save_generator(serving_model(state), generator_config(cfg, dim), folder / GENERATOR_FILE)
    (folder / HISTORY_FILE).write_text(json.dumps(state.history))

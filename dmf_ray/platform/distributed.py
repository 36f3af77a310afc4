"""The Ray Train data-parallel wrapper around :mod:`dmf_ray.trainer.engine`.

Why a wrapper and not a second trainer: each TorchTrainer worker runs the very same
``engine.train`` loop. Two things change:

* the drift needs the whole generated batch (column softmax, repulsion), so the step's
  ``gather`` hook all-gathers generated samples and positives as targets; each worker computes
  the drift of its own rows only, all-reducing the three global quantities (distance sum,
  column log-sum-exp, force mean square). N workers with per-worker batch b therefore compute
  exactly the drift of one process with batch N*b at 1/N of the kernel work each, and DDP
  averages the gradients of the local rows (equal batch sizes make that the global mean);
* rank 0 scores the model and reports metrics at every evaluation, with a safetensors
  checkpoint at every ``checkpoint_every``-th and the last; the other ranks report empty metrics
  so ``ray.train.report`` stays in step. A restarted worker group resumes from the latest
  reported checkpoint.

:func:`train_and_report` is that reporting loop without Ray Train: a single-worker Tune trial
(:mod:`dmf_ray.platform.trial`) runs it with ``ray.tune.report``, so both paths report the same
keys, checkpoint folders and divergence.

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
from typing import Any, Callable

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import Tensor

from dmf_ray.trainer.checkpoint import restore_rank_state, restore_state, save_checkpoint, save_rank_state
from dmf_ray.trainer.config import TrainConfig
from dmf_ray.data import TranslationData, load_dataset
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
# naming a folder, each rank of a run writes ``<run>/checkpointed_rank<r>`` (its pid) there after
# every checkpoint it reports (``<run>``: the Tune trial id) and waits, at most FAULT_GATE_WAIT_S,
# until ``release`` or ``<run>/release`` exists. tests/test_faults.py kills the process or
# removes its node while it waits; unset, nothing happens.
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


Report = Callable[[dict[str, Any], Path | None], None]
"""Hands one evaluation's metrics (and a checkpoint folder, or None) to Ray: ``ray.train.report``
in a Train worker, ``ray.tune.report`` in a single-worker Tune trial."""


def worker_loop(loop_config: dict[str, Any]) -> None:
    """The per-worker training function of ``TorchTrainer``.

    ``loop_config``: ``{"train": <TrainConfig>, "resume_from": <checkpoint path, optional>,
    "checkpoint_every": <evaluations, optional>}``; the config comes validated (the sweep builds
    it once per trial) and is used as it is: its ``device`` ``cuda`` is this worker's own GPU, set
    by Train. A restarted worker group resumes from Train's latest checkpoint; otherwise
    ``resume_from`` (Train V2's replacement for ``resume_from_checkpoint``) seeds the run.
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
            restore_from_folder(state, Path(folder), rank)
    if world > 1:
        state.model = ray.train.torch.prepare_model(state.model)

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if folder else None)

    train_and_report(cfg, data, state, report, run_name=ctx.get_experiment_name(), rank=rank, world=world,
                     checkpoint_every=loop_config.get("checkpoint_every", 1))


def restore_from_folder(state: TrainState, folder: Path, rank: int = 0) -> None:
    """Load a checkpoint folder of :func:`write_checkpoint_folder` (and this rank's own file)."""
    restore_state(state, folder / CHECKPOINT_FILE)
    if (folder / rank_file(rank)).is_file():
        restore_rank_state(state, folder / rank_file(rank))


def train_and_report(
    cfg: TrainConfig,
    data: TranslationData,
    state: TrainState,
    report: Report,
    *,
    run_name: str,
    rank: int = 0,
    world: int = 1,
    checkpoint_every: int = 1,
) -> None:
    """Train ``state`` to ``cfg.steps``, reporting every evaluation, the one code path of a Train
    worker and of a single-worker Tune trial.

    Rank 0 reports ``step``, the scores (SCORE_KEYS) and ``worker_nodes``; other ranks report
    empty metrics so the reports stay in step. Every ``checkpoint_every``-th evaluation (counted
    in steps, so a resumed run keeps the rhythm) and the last carry a checkpoint folder; each rank
    then stops at the fault gate. A state restored at its last step (the trial had finished when
    its driver died) reports its last evaluation again instead of training. A run that diverges
    reports NaN validation scores, ``diverged`` and the reason once: the searcher records a failed
    trial, the scheduler ignores it.
    """
    placement = worker_nodes(world)

    def on_eval(state: TrainState, record: dict[str, float]) -> None:
        metrics: dict[str, Any] = {}
        if rank == 0:
            metrics = {"step": state.step, **{k: v for k, v in record.items() if k in SCORE_KEYS}, "worker_nodes": placement}
        if state.step < cfg.steps and (state.step // cfg.eval_every) % checkpoint_every:
            report(metrics, None)
            return
        # Every rank adds its own RNG / velocity file; Train merges the ranks' folders.
        with tempfile.TemporaryDirectory() as folder:
            if world > 1:
                save_rank_state(Path(folder) / rank_file(rank), state)
            if rank == 0:
                write_checkpoint_folder(Path(folder), state, cfg, data.dim)
            report(metrics, Path(folder))
        fault_gate(run_name, rank)

    if state.step >= cfg.steps and state.history:
        on_eval(state, state.history[-1])
        return
    try:
        run_training(cfg, data, state, on_eval=on_eval, gather=all_gather_rows if world > 1 else None, score=rank == 0)
    except TrainingDiverged as exc:
        nan_scores = dict.fromkeys(VAL_METRIC_NAMES, math.nan)
        report({"step": state.step, **nan_scores, "diverged": 1.0, "reason": str(exc)} if rank == 0 else {}, None)


def fault_gate(run_name: str, rank: int) -> None:
    """Stop at the fault gate (see FAULT_GATE_ENV) when one is set; a bounded wait."""
    gate = os.environ.get(FAULT_GATE_ENV)
    if not gate:
        return
    mine = Path(gate) / run_name
    mine.mkdir(parents=True, exist_ok=True)
    (mine / f"checkpointed_rank{rank}").write_text(str(os.getpid()))
    deadline = time.monotonic() + FAULT_GATE_WAIT_S
    while not ((Path(gate) / "release").exists() or (mine / "release").exists()) and time.monotonic() < deadline:
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

"""A single-worker Tune trial that trains in its own process: no TorchTrainer inside.

Why: a trial with one worker gains nothing from Ray Train, and its controller, placement group
and worker group cost a second actor and ~20-30 s per trial on a small machine. Ray's guidance
for a trial on one device is to make the training function the Tune trainable itself
(docs.ray.io/en/latest/tune/api/trainable.html, "Function Trainable API"); TorchTrainer-in-a-trial
is for trials that run several workers (:func:`dmf_ray.platform.sweep.run_trial` picks the path).

The trial runs :func:`dmf_ray.platform.distributed.train_and_report`, the loop of a Train worker,
with ``ray.tune.report`` as its report: the same metric keys, the same checkpoint folder layout
(so :class:`~dmf_ray.platform.sweep.MLflowSweepCallback` and ``register_best`` read either), the
same divergence result and the same fault gate. A retried trial (a lost actor or node) and a
restored sweep resume from ``ray.tune.get_checkpoint()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from dmf_ray.data import load_dataset
from dmf_ray.platform.distributed import restore_from_folder, train_and_report
from dmf_ray.trainer.config import TrainConfig
from dmf_ray.trainer.engine import build_state


def train_in_trial(cfg: TrainConfig, checkpoint_every: int = 1) -> None:
    """Train ``cfg`` inside the running Tune trial, from its latest checkpoint if it has one."""
    data = load_dataset(cfg.data)
    state = build_state(cfg, data)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restore_from_folder(state, Path(folder))
    train_and_report(cfg, data, state, report_to_tune, run_name=tune.get_context().get_trial_id(),
                     checkpoint_every=checkpoint_every)


def report_to_tune(metrics: dict[str, Any], folder: Path | None) -> None:
    """``ray.tune.report``; Tune copies the folder to the trial's storage before returning."""
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)) if folder else None)

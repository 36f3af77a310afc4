"""A Tune trial's process: one worker trains in the trial itself, several through a TorchTrainer.

Why: a trial with one worker gains nothing from Ray Train, and its controller, placement group
and worker group cost a second actor and ~20-30 s per trial on a small machine. Ray's guidance
for a trial on one device is to make the training function the Tune trainable itself
(docs.ray.io/en/latest/tune/api/trainable.html, "Function Trainable API"); TorchTrainer-in-a-trial
is for trials that run several workers (:func:`run_trial` picks the path).

The trial runs :func:`dmf_ray.platform.distributed.train_and_report`, the loop of a Train worker,
with ``ray.tune.report`` as its report: the same metric keys, the same checkpoint folder layout
(so :class:`~dmf_ray.platform.sweep.MLflowSweepCallback` and ``register_best`` read either), the
same divergence result and the same fault gate. A retried trial (a lost actor or node) and a
restored sweep resume from ``ray.tune.get_checkpoint()``.

This module and what it imports are all a trial's process loads (besides torch and Ray): the
driver's MLflow, Optuna and plotting stay in :mod:`dmf_ray.platform.sweep`, so a trial's process
does not pay their imports (~1 s per trial start here; tests/test_imports.py checks it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray.train
from ray import tune
from ray.train import CheckpointConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from dmf_ray.data import load_dataset
from dmf_ray.platform.distributed import restore_from_folder, train_and_report, worker_loop
from dmf_ray.platform.plan import TRAIN_RUNS, TRIAL_CPU, SweepPlan
from dmf_ray.trainer.config import TrainConfig
from dmf_ray.trainer.engine import build_state


def run_trial(tune_config: dict[str, Any], plan: SweepPlan) -> None:
    """One Tune trial on its config, validated here once: trained in this process
    (:func:`train_in_trial`) when it has one worker, else by a
    data-parallel TorchTrainer (:func:`fit_torch_trainer`).

    A diverged run (NaN/inf) ends normally after reporting ``diverged`` and its reason without
    the sweep metric: Optuna records the trial as pruned, MLflow as FAILED with the reason, and
    the sweep goes on. Real failures (a lost node) raise and get one Tune retry, which resumes
    from the trial's latest checkpoint.
    """
    if plan.trains_in_trial:
        train_in_trial(plan.trial_config(tune_config), plan.checkpoint_every)
    else:
        fit_torch_trainer(tune_config, plan)


def fit_torch_trainer(tune_config: dict[str, Any], plan: SweepPlan) -> None:
    """Fit the trial's TorchTrainer; its final result is kept in a file beside Train's run, so a
    trial that finished before the driver died reports it again on resume instead of retraining."""
    trial_id = tune.get_context().get_trial_id()
    done = final_result_path(plan, trial_id)
    previous = read_json(done)
    if previous is not None:  # finished before the driver died: report it again, do not retrain
        tune.report(previous)
        return
    res = plan.spec.resources
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"train": plan.trial_config(tune_config), "checkpoint_every": plan.checkpoint_every},
        scaling_config=ScalingConfig(
            num_workers=res.workers,
            use_gpu=res.gpus_per_worker > 0,
            # the trial function's own TRIAL_CPU comes out of its workers' share, so a trial
            # needs exactly workers x cpus_per_worker CPUs and packs onto the machine as planned
            resources_per_worker={"CPU": res.cpus_per_worker - TRIAL_CPU / res.workers, "GPU": res.gpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=trial_id,
            storage_path=f"{plan.sweep_dir}/{TRAIN_RUNS}",
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.metrics is not None:
        write_json(done, {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))}
                    | {"checkpoint_path": result.checkpoint.path if result.checkpoint else None})


def final_result_path(plan: SweepPlan, trial_id: str) -> str:
    return f"{plan.sweep_dir}/{TRAIN_RUNS}/{trial_id}/final_result.json"


def read_json(uri: str) -> dict[str, Any] | None:
    """A small JSON file on local or remote (s3://, gs://) storage, or None if absent."""
    fs, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as fh:
        return json.loads(fh.read())


def write_json(uri: str, data: dict[str, Any]) -> None:
    fs, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(json.dumps(data).encode())


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

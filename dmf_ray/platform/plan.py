"""A sweep's plan: the validated, picklable description every process of the sweep shares.

Why its own module: Tune pickles the plan into every trial, so the trial's process imports the
module that defines it. Here it pulls in only the search space and the trainer's config -- not
the driver's MLflow, Optuna and matplotlib, which added ~1 s to each trial's start
(tests/test_imports.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dmf_ray.errors import ConfigError
from dmf_ray.platform.search_space import PopulationBased, SearchSpec, trial_overrides
from dmf_ray.platform.watchdog import DEFAULT_NO_PROGRESS_S
from dmf_ray.trainer.config import TrainConfig, load_train_config

TRIAL_CPU = 0.01  # a TorchTrainer trial's function only waits on its workers, which hold the CPUs
TRAIN_RUNS = "train_runs"  # the sweep's subfolder where multi-worker trials keep Ray Train's runs


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep needs, resolved and validated by the CLI; nothing started yet."""

    spec: SearchSpec
    base: dict[str, Any]  # dotted TrainConfig keys shared by every trial (space 'fixed' + CLI flags)
    base_config: TrainConfig  # ``base`` validated (once, by the CLI): the trials' common settings
    name: str
    storage_path: str
    tracking_uri: str
    experiment: str
    model_name: str
    address: str | None = None  # Ray cluster to join; None starts a local Ray
    shared_storage: bool = False  # a local storage_path that every node mounts (NFS)
    # A checkpoint at every checkpoint_every-th evaluation and the last (1: every evaluation,
    # each one ASHA can stop at, so a stopped trial is scored and plotted at its last step).
    checkpoint_every: int = 1
    # False: a single-worker trial fits a 1-worker TorchTrainer as multi-worker trials do (the
    # path comparison of tests/test_in_trial.py and benchmarks/sweep_overhead.py).
    train_in_trial: bool = True
    warm_start: str | None = None  # an earlier sweep folder whose Optuna study seeds this one
    no_progress_s: float = DEFAULT_NO_PROGRESS_S  # stop the sweep once no trial reported for this long

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise ConfigError("checkpoint_every", f"must be >= 1 (evaluations), got {self.checkpoint_every}")

    @property
    def sweep_dir(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def local_dir(self) -> Path:
        """Where the driver writes the summary files and the Optuna study: the sweep folder, or
        ``runs/<name>`` when the sweep's storage is remote."""
        return Path(self.sweep_dir) if "://" not in self.sweep_dir else Path("runs") / self.name

    @property
    def population_based(self) -> bool:
        """PBT / PB2: Tune domains instead of Optuna, and a learned schedule at the end."""
        return isinstance(self.spec.scheduler, PopulationBased)

    def overrides(self, tune_config: Mapping[str, Any]) -> dict[str, Any]:
        """All dotted keys of one trial: the fixed ones, then its searched ones (the one merge)."""
        return {**self.base, **trial_overrides(self.spec, tune_config)}

    @property
    def dataset(self) -> str:
        """The trials' champion pool (:attr:`~dmf_ray.data.base.DataConfig.label`)."""
        return self.base_config.data.label

    @property
    def device(self) -> str:
        """The workers' device. ``cuda`` is each worker's own GPU: Train V2 sets every worker's
        default CUDA device (``TorchConfigContextManager`` in ray/train/torch/config.py)."""
        return "cuda" if self.spec.resources.gpus_per_worker > 0 else "cpu"

    def trial_config(self, tune_config: Mapping[str, Any]) -> TrainConfig:
        return load_train_config(None, {**self.overrides(tune_config), "device": self.device})

    @property
    def trains_in_trial(self) -> bool:
        """Whether each trial trains in its own process (one worker) rather than a TorchTrainer."""
        return self.train_in_trial and self.spec.resources.workers == 1

    @property
    def trial_resources(self) -> dict[str, float]:
        """What one Tune trial reserves: the worker's share in-trial, else the bookkeeping CPU."""
        res = self.spec.resources
        if self.trains_in_trial:
            return {"cpu": res.cpus_per_worker, "gpu": res.gpus_per_worker}
        return {"cpu": TRIAL_CPU}

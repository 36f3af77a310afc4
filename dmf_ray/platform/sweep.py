"""A DMF sweep: Optuna suggests, Tune schedules, each trial fits its own Ray Train run, MLflow records.

Why this shape (REFERENCE 3, Ray 2.60 / Train V2): a Tune trial is a plain function that builds
and fits a ``TorchTrainer`` over :func:`dmf_ray.platform.distributed.worker_loop`; a ``TuneReportCallback``
forwards rank 0's reports (metrics plus the checkpoint path) so ASHA and Optuna see every
evaluation. MLflow is written only on the driver by :class:`MLflowSweepCallback` -- one parent
run per sweep, one nested run per trial, get-or-create by id so a resumed sweep adds no
duplicates -- because Train workers opening the same sqlite store race.

At the end the best finished trial's generator is logged as an MLflow model and registered; the
``champion`` alias moves only if it beats the current champion on the same dataset and metric.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.train
import yaml
from ray import tune
from ray.train import CheckpointConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from dmf_ray.trainer.config import TrainConfig, load_train_config
from dmf_ray.data import DataConfig, TranslationData, load_dataset
from dmf_ray.platform.distributed import GENERATOR_FILE, HISTORY_FILE, SCORE_KEYS, worker_loop
from dmf_ray.trainer.engine import translate
from dmf_ray.core.models import load_generator
from dmf_ray.platform.registry import log_generator, register_if_champion
from dmf_ray.platform.search_space import ResourceSpec, SearchSpec, make_scheduler, make_searcher, trial_overrides
from dmf_ray.platform.tracking import SweepTracker
from dmf_ray.trainer.plots import figures_for_run

# Each ray.train.report costs ~2 s at Train's default controller poll interval (REFERENCE 3).
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}
TRIAL_CPU = 0.01  # the trial function only waits on its TorchTrainer; workers hold the CPUs
TRAIN_RUNS = "train_runs"


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep needs, resolved and validated by the CLI."""

    spec: SearchSpec
    base: dict[str, Any]  # dotted TrainConfig overrides shared by every trial (space 'fixed' + CLI)
    name: str
    storage_path: str
    tracking_uri: str
    experiment: str
    model_name: str
    dataset: str  # e.g. "toy" or "ffhq-alae/adult2child": champions compete only within one

    @property
    def sweep_dir(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    def trial_config(self, tune_config: dict[str, Any]) -> TrainConfig:
        return load_train_config(None, {**self.base, **trial_overrides(tune_config)})


def run_trial(tune_config: dict[str, Any], plan: SweepPlan) -> None:
    """One Tune trial: fit a data-parallel TorchTrainer on the trial's config.

    A diverged run (NaN/inf) ends normally after reporting ``diverged`` and its reason without
    the sweep metric: Optuna records the trial as pruned, MLflow as FAILED with the reason, and
    the sweep goes on. Real failures (a lost node) raise and get one Tune retry.
    """
    trial_id = tune.get_context().get_trial_id()
    done = _final_result_path(plan, trial_id)
    previous = _read_json(done)
    if previous is not None:  # finished before the driver died: report it again, do not retrain
        tune.report(previous)
        return
    cfg = plan.trial_config(tune_config)
    res: ResourceSpec = plan.spec.resources
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"train": cfg.to_dict()},
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
        _write_json(done, {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))}
                    | {"checkpoint_path": result.checkpoint.path if result.checkpoint else None})


def _final_result_path(plan: SweepPlan, trial_id: str) -> str:
    return f"{plan.sweep_dir}/{TRAIN_RUNS}/{trial_id}/final_result.json"


def _read_json(uri: str) -> dict[str, Any] | None:
    """A small JSON file on local or remote (s3://, gs://) storage, or None if absent."""
    fs, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as fh:
        return json.loads(fh.read())


def _write_json(uri: str, data: dict[str, Any]) -> None:
    fs, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else os.path.abspath(uri))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(json.dumps(data).encode())


class MLflowSweepCallback(tune.Callback):
    """Mirrors the sweep into MLflow from the driver process.

    Holds only plain settings when pickled with the experiment state (the MLflow client is
    rebuilt on demand), so ``Tuner.restore`` works. ``tracker`` reuses an open one (the driver's
    clean-up after a sweep) instead of opening another.
    """

    def __init__(self, plan: SweepPlan, tracker: SweepTracker | None = None) -> None:
        self.plan = plan
        self._tracker = tracker
        self._runs: dict[str, str] = {}
        self._closed: set[str] = set()  # trials whose MLflow run had ended before (a resumed sweep)
        self._data: dict[DataConfig, TranslationData] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"plan": self.plan}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["plan"])

    @property
    def tracker(self) -> SweepTracker:
        if self._tracker is None:
            self._tracker = open_tracker(self.plan)
        return self._tracker

    def run_id(self, trial: Any) -> str:
        if trial.trial_id not in self._runs:
            run_id = self.tracker.trial_run(trial.trial_id, trial_overrides(trial.config))
            if self.tracker.client.get_run(run_id).info.status in ("FINISHED", "KILLED"):
                self._closed.add(trial.trial_id)
            self._runs[trial.trial_id] = run_id
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "step" in result and not result.get("diverged") and not self._is_closed(trial):
            scores = {k: result[k] for k in SCORE_KEYS if k in result}
            self.tracker.log_eval(self.run_id(trial), int(result["step"]), scores)

    def _is_closed(self, trial: Any) -> bool:
        self.run_id(trial)
        return trial.trial_id in self._closed

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self._is_closed(trial):
            self.close_trial(self.run_id(trial), trial.config, trial.last_result or {})

    def close_trial(self, run_id: str, config: dict[str, Any], last: dict[str, Any]) -> None:
        """End a trial's MLflow run from its last result: files, final metrics, status, reason."""
        cfg = self.plan.trial_config(config)
        step = int(last.get("step", 0))
        self._log_trial_files(run_id, cfg, last.get("checkpoint_path"))
        final = {k: last[k] for k in SCORE_KEYS if k in last}
        if last.get("diverged"):
            self.tracker.finish_trial(run_id, "FAILED", reason=f"diverged: {last.get('reason', 'non-finite values')}")
        elif step >= cfg.steps:
            self.tracker.finish_trial(run_id, "FINISHED", final)
        else:
            self.tracker.finish_trial(run_id, "KILLED", final, reason=f"stopped early by the scheduler at step {step}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.tracker.finish_trial(self.run_id(trial), "FAILED", reason=trial_error_reason(trial))

    def _log_trial_files(self, run_id: str, cfg: TrainConfig, checkpoint_path: str | None) -> None:
        self.tracker.log_config(run_id, cfg.to_dict())
        if not checkpoint_path:
            return
        with ray.train.Checkpoint(checkpoint_path).as_directory() as folder:
            history = json.loads((Path(folder) / HISTORY_FILE).read_text())
            model, _ = load_generator(Path(folder) / GENERATOR_FILE)
            data = self._dataset(cfg.data)
            n = min(4000, data.test_source.shape[0])
            samples = (translate(model, data.test_source[:n]), data.test_target[:n])
            figures = figures_for_run(history, cfg.friction, cfg.steps, samples, Path(folder) / "plots")
            self.tracker.log_figures(run_id, figures)

    def _dataset(self, cfg: DataConfig) -> TranslationData:
        if cfg not in self._data:
            self._data = {cfg: load_dataset(cfg)}  # keep one: FFHQ latents are large
        return self._data[cfg]


def trial_error_reason(trial: Any) -> str:
    """The last line of the trial's error (e.g. 'TrainingDiverged: loss is nan at step 120')."""
    path = getattr(trial, "error_file", None) or ""
    text = Path(path).read_text() if path and os.path.exists(path) else str(getattr(trial, "error_msg", "") or "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    diverged = [ln for ln in lines if "TrainingDiverged" in ln]
    return (diverged or lines or ["unknown error"])[-1][:500]


def open_tracker(plan: SweepPlan) -> SweepTracker:
    """The sweep's MLflow tracker with its parent run (re)opened."""
    tracker = SweepTracker(plan.tracking_uri, plan.experiment)
    tracker.start_sweep(plan.name, sweep_params(plan), tags={"dmf_ray.dataset": plan.dataset})
    return tracker


def sweep_params(plan: SweepPlan) -> dict[str, Any]:
    spec = plan.spec
    return {
        "metric": spec.metric, "mode": spec.mode, "num_samples": spec.num_samples,
        "max_concurrent": spec.max_concurrent, "sampler": spec.sampler.type, "scheduler": spec.scheduler.type,
        "workers": spec.resources.workers, "dataset": plan.dataset, **{f"fixed.{k}": v for k, v in plan.base.items()},
    }


def build_tuner(plan: SweepPlan, resume: bool) -> tune.Tuner:
    """A fresh Tuner, or the sweep's own restored from its storage folder."""
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), {"cpu": TRIAL_CPU})
    if resume:
        return tune.Tuner.restore(plan.sweep_dir, trainable=trainable, resume_unfinished=True, resume_errored=False)
    spec = plan.spec
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec),
            scheduler=make_scheduler(spec),
            num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage_path,
            callbacks=[MLflowSweepCallback(plan)],
            failure_config=tune.FailureConfig(max_failures=1),  # e.g. the trial's node was lost
        ),
    )


@dataclass(frozen=True)
class TrialRow:
    trial_id: str
    status: str
    step: int
    metric: float
    params: dict[str, Any]
    checkpoint_path: str | None
    worker_nodes: str = ""  # Ray node ids of the trial's Train workers, in rank order
    config: dict[str, Any] = field(default_factory=dict)  # the trial's Tune config
    last: dict[str, Any] = field(default_factory=dict)  # its last reported result


def summarise(plan: SweepPlan, grid: Any) -> list[TrialRow]:
    """All trials ranked by their last reported metric (failed ones last)."""
    metric, sign = plan.spec.metric, (1.0 if plan.spec.mode == "min" else -1.0)
    searched = {p.name for p in plan.spec.params}
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        if "step" not in metrics:  # Tune lost the trial's results in a driver crash: use its marker
            trial_id = _trial_id_from_path(str(result.path))
            metrics = (_read_json(_final_result_path(plan, trial_id)) or {"trial_id": trial_id}) if trial_id else metrics
        value = float(metrics.get(metric, math.nan))
        rows.append(TrialRow(
            trial_id=metrics.get("trial_id") or _trial_id_from_path(str(result.path)) or str(result.path).rsplit("/", 1)[-1],
            status="ERROR" if result.error else ("DIVERGED" if metrics.get("diverged") else "OK"),
            step=int(metrics.get("step", 0)),
            metric=value,
            params={k: v for k, v in trial_overrides(result.config or {}).items() if k in searched},
            checkpoint_path=metrics.get("checkpoint_path"),
            worker_nodes=str(metrics.get("worker_nodes", "")),
            config=dict(result.config or {}),
            last=dict(metrics),
        ))
    return sorted(rows, key=lambda r: (r.status != "OK", math.isnan(r.metric), sign * (r.metric if not math.isnan(r.metric) else 0)))


def summary_table(plan: SweepPlan, rows: list[TrialRow]) -> list[list[Any]]:
    """Header + one row per trial: rank, id, status, step, metric, then every searched param."""
    keys = sorted({k for r in rows for k in r.params})
    header = ["rank", "trial_id", "status", "step", plan.spec.metric, *keys]
    body = [[i + 1, r.trial_id, r.status, r.step, f"{r.metric:.6g}", *(r.params.get(k, "") for k in keys)]
            for i, r in enumerate(rows)]
    return [header, *body]


def markdown(table: list[list[Any]]) -> str:
    header, *body = table
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in body]) + "\n"


def _trial_id_from_path(path: str) -> str | None:
    """Tune names trial folders ``<trainable>_<trial_id>_<index>_...``; ours is ``run_trial``."""
    match = re.search(r"run_trial_([0-9a-f]{8})_", path.rsplit("/", 1)[-1])
    return match.group(1) if match else None


def write_summary(plan: SweepPlan, rows: list[TrialRow], out_dir: Path) -> tuple[Path, Path, Path | None]:
    """top_trials.csv and top_trials.md (all trials, ranked) in ``out_dir``, and
    best_params.yaml: the searched keys of the best finished trial, in the dotted form that
    ``python -m dmf_ray.experiments.compare --searched`` and ``train --config`` overrides take.

    Returns the three paths; the last is None when no trial finished."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summary_table(plan, rows)
    csv_path, md_path = out_dir / "top_trials.csv", out_dir / "top_trials.md"
    with csv_path.open("w", newline="") as fh:
        csv.writer(fh).writerows(table)
    md_path.write_text(markdown(table))
    best = next((r for r in rows if r.status == "OK"), None)
    if best is None:
        return csv_path, md_path, None
    best_path = out_dir / "best_params.yaml"
    best_path.write_text(yaml.safe_dump(_plain_params(best.params), sort_keys=False))
    return csv_path, md_path, best_path


def _plain_params(params: dict[str, Any]) -> dict[str, Any]:
    """Tuples (from categorical choices) as lists, so the YAML loads back with safe_load."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def close_open_runs(plan: SweepPlan, rows: list[TrialRow], tracker: SweepTracker) -> int:
    """Close MLflow runs of trials Tune reports done but whose run is still open.

    A driver killed between Tune saving a trial as finished and the callback ending its run
    leaves the run RUNNING; a resumed sweep does not revisit that trial, so close it here.
    """
    callback = MLflowSweepCallback(plan, tracker)
    runs = tracker.trial_runs()  # read statuses without reopening anything
    closed = 0
    for row in rows:
        run = runs.pop(row.trial_id, None)
        if row.status != "ERROR" and run is not None and run.info.status == "RUNNING":
            callback.close_trial(run.info.run_id, row.config, row.last)
            closed += 1
    for run in runs.values():  # started, but the crashed driver's Tune snapshot never had it
        if run.info.status == "RUNNING":
            tracker.finish_trial(run.info.run_id, "KILLED", reason="lost: the sweep driver died before Tune recorded this trial")
            closed += 1
    return closed


def register_best(plan: SweepPlan, rows: list[TrialRow], tracker: SweepTracker) -> tuple[str, Any] | None:
    """Log the best finished trial's generator to its MLflow run and offer it as champion."""
    steps = load_train_config(None, plan.base).steps
    best = next((r for r in rows if r.status == "OK" and r.step >= steps and r.checkpoint_path and math.isfinite(r.metric)), None)
    if best is None:
        return None
    run_id = tracker.trial_run(best.trial_id, {})  # exists already: get, don't create
    with ray.train.Checkpoint(best.checkpoint_path).as_directory() as folder:
        weights = Path(folder) / GENERATOR_FILE
        _, gen_cfg = load_generator(weights)
        model_uri = log_generator(plan.tracking_uri, run_id, weights, gen_cfg.dim)
    outcome = register_if_champion(
        plan.tracking_uri, model_uri, plan.model_name, plan.spec.metric, best.metric, plan.spec.mode, plan.dataset, plan.name
    )
    return model_uri, outcome

"""A DMF sweep: Optuna suggests, Tune schedules, each trial trains (itself or through Ray Train), MLflow records.

:func:`run_sweep` is the whole sweep for a validated :class:`SweepPlan`: start Ray, fit the Tuner,
rank the trials, write the summary files, close what a crashed driver left open, register the
champion, return a :class:`SweepOutcome`. The CLI (:mod:`dmf_ray.tune`) only builds the plan and
prints the outcome.

Why this shape: a trial with one worker trains in the Tune trial's own process
(:mod:`dmf_ray.platform.trial`; it holds the worker's resources), which saves Ray Train's
controller and worker group per trial. A trial with several workers is a plain function that fits
a ``TorchTrainer`` over :func:`dmf_ray.platform.distributed.worker_loop` (Ray Train V2's Tune
integration, docs.ray.io/en/latest/train/api/tune-integration.html); a ``TuneReportCallback``
forwards rank 0's reports. Both report the same keys and checkpoint folders at every evaluation,
so ASHA and Optuna see each one. MLflow is written only on the driver, by
:class:`MLflowSweepCallback` (why: :mod:`dmf_ray.platform.tracking`).

One value's way from the YAML file to the training step, ``friction.schedule``:

1. :mod:`dmf_ray.platform.search_space` reads ``params.friction.schedule`` (validated with the
   file) and Optuna suggests one of its choices into the trial's Tune config;
2. :mod:`dmf_ray.platform.plan` (:meth:`SweepPlan.trial_config`, called once in the trial's
   :func:`~dmf_ray.platform.trial.run_trial`) merges the plan's fixed keys once with the trial's values
   (:func:`~dmf_ray.platform.search_space.trial_overrides`) and validates the trial's
   :class:`~dmf_ray.trainer.config.TrainConfig` once (pydantic, with the field declared in
   :class:`~dmf_ray.core.friction.FrictionConfig`); that object goes to
   :func:`~dmf_ray.platform.trial.train_in_trial` (one worker) or is the TorchTrainer's
   ``train_loop_config`` (several);
3. :mod:`dmf_ray.platform.distributed` (:func:`train_and_report`, in the trial or in each
   :func:`worker_loop`) trains that object as it came (through
   :func:`dmf_ray.trainer.run.run_training`, which wires the scorer and passes it on);
4. :mod:`dmf_ray.trainer.engine` (``train_step``) asks ``gamma(cfg.friction, step, cfg.steps)``;
5. :mod:`dmf_ray.core.friction` (``gamma``) evaluates the schedule.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

import pandas as pd
import ray
import ray.train
import yaml
from ray import tune

from dmf_ray.core.models import load_generator
from dmf_ray.data import DataConfig, TranslationData, load_dataset
from dmf_ray.errors import ConfigError
from dmf_ray.platform.distributed import FAULT_GATE_ENV, GENERATOR_FILE, HISTORY_FILE, SCORE_KEYS
from dmf_ray.platform.registry import RegistrationResult, log_generator, register_if_champion
from dmf_ray.platform.learned_schedule import learned_schedule
from dmf_ray.platform.local_ray import private_local_ray
from dmf_ray.platform.search_space import make_scheduler, make_searcher, population_space, trial_overrides
from dmf_ray.platform.study import pareto_front, prepare_study, storage_url, study_figures
from dmf_ray.platform.plan import SweepPlan
from dmf_ray.platform.trial import final_result_path, read_json, run_trial
from dmf_ray.platform.tracking import SweepTracker
from dmf_ray.platform.watchdog import NoProgressStopper, placement_problem
from dmf_ray.trainer.config import TrainConfig
from dmf_ray.trainer.engine import translate
from dmf_ray.trainer.plots import figures_for_run, plot_schedule

# Train V2's controller polls its workers every 2 s by default
# (ray/train/v2/_internal/constants.py), which each ray.train.report then waits for.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}
CHECKPOINTS_KEPT = 2  # per trial, in-trial path (Train keeps its own two)
# Last-result keys every ranked trial has, reported or not.
RESULT_COLUMNS = ("trial_id", "step", "checkpoint_path", "worker_nodes", "diverged")


def trial_dirname(trial: Any) -> str:
    """Tune's ``trial_dirname_creator``: a trial's folder is its trial id, nothing to parse."""
    return trial.trial_id


class MLflowSweepCallback(tune.Callback):
    """Mirrors the sweep into MLflow from the driver process.

    Pickled with the experiment state as the plan alone (client and caches are rebuilt on
    demand), so ``Tuner.restore`` works; ``tracker`` reuses an open one instead of opening another.
    """

    def __init__(self, plan: SweepPlan, tracker: SweepTracker | None = None) -> None:
        self.plan = plan
        self._tracker = tracker
        self._runs: dict[str, str] = {}
        self._closed: set[str] = set()  # trials whose MLflow run had ended before (a resumed sweep)
        self._configs: dict[str, TrainConfig] = {}  # trial id -> its TrainConfig, built once here
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

    def trial_config(self, trial_id: str, tune_config: Mapping[str, Any]) -> TrainConfig:
        """The trial's TrainConfig for its files and final status, validated once per trial."""
        if trial_id not in self._configs:
            self._configs[trial_id] = self.plan.trial_config(tune_config)
        return self._configs[trial_id]

    def run_id(self, trial: Any) -> str:
        if trial.trial_id not in self._runs:
            run_id = self.tracker.trial_run(trial.trial_id, self.plan.overrides(trial.config))
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
            last = dict(trial.last_result or {})
            last["checkpoint_path"] = last.get("checkpoint_path") or _checkpoint_path(trial)
            self.close_trial(self.run_id(trial), trial.trial_id, trial.config, last)

    def close_trial(self, run_id: str, trial_id: str, tune_config: Mapping[str, Any], last: Mapping[str, Any]) -> None:
        """End a trial's MLflow run from its last result: files, final metrics, status, reason."""
        cfg = self.trial_config(trial_id, tune_config)
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
            source, target = data.held_out("val")
            samples = (translate(model, source[:4000]), target[:4000])
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


def build_tuner(plan: SweepPlan, resume: bool, stopper: NoProgressStopper | None = None) -> tune.Tuner:
    """A fresh Tuner, or the sweep's own restored from its storage folder (with the stopper it
    was started with). Optuna's study lives in the sweep folder (:mod:`dmf_ray.platform.study`);
    a PBT / PB2 population is drawn from Tune domains."""
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), plan.trial_resources)
    if resume:
        return tune.Tuner.restore(plan.sweep_dir, trainable=trainable, resume_unfinished=True, resume_errored=False)
    spec = plan.spec
    storage = None
    if not plan.population_based:
        plan.local_dir.mkdir(parents=True, exist_ok=True)  # the study's sqlite file lives there
        storage = storage_url(plan.local_dir)
    return tune.Tuner(
        trainable,
        param_space=population_space(spec) if plan.population_based else None,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec, storage=storage, study_name=plan.name),
            scheduler=make_scheduler(spec),
            num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent,
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # every trial asks for the same resources; FunctionTrainable.reset_config
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage_path,
            callbacks=[MLflowSweepCallback(plan)],
            stop=stopper,
            failure_config=tune.FailureConfig(max_failures=1),  # e.g. the trial's node was lost
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        ),
    )


def require_reachable_storage(plan: SweepPlan) -> None:
    """Refuse a node-local storage folder on a multi-node cluster (call after ``ray.init``).

    Train workers on other nodes write checkpoints there and the driver reads them back; a
    folder only this machine has would silently split the results across nodes (Ray docs:
    "Configuring Persistent Storage", docs.ray.io/en/latest/train/user-guides/persistent-storage.html).
    """
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if (plan.address is not None or len(nodes) > 1) and "://" not in plan.storage_path and not plan.shared_storage:
        where = f"the cluster has {len(nodes)} nodes" if len(nodes) > 1 else "a cluster may add nodes (autoscaling)"
        raise ConfigError(
            "storage-path",
            f"{plan.storage_path} is a local folder but {where}: use storage every node reaches "
            "(s3://bucket/path, gs://bucket/path) or pass --shared-storage for an NFS mount",
        )


def ranked_trials(plan: SweepPlan, grid: tune.ResultGrid) -> pd.DataFrame:
    """One row per trial, best first (failed and unscored ones last): its last result, then
    ``status`` (OK | DIVERGED | ERROR), ``params`` (searched keys as training takes them) and
    ``config`` (its Tune config). Results Tune lost in a driver crash come from the trial's own
    final-result file.
    """
    results = {Path(r.path).name: r for r in grid}  # trial_dirname: each folder is named by its trial id
    last = grid.get_dataframe()
    last = last.set_index("trial_id", drop=False) if "trial_id" in last else last
    frame = last.reindex(index=list(results), columns=last.columns.union(RESULT_COLUMNS + (plan.spec.metric,), sort=False))
    lost = {tid: read_json(final_result_path(plan, tid)) for tid in frame.index[frame["step"].isna()]}
    if any(lost.values()):
        frame = frame.combine_first(pd.DataFrame.from_dict({t: m for t, m in lost.items() if m}, orient="index"))
    frame["trial_id"] = frame.index
    frame["checkpoint_path"] = [path if isinstance(path, str) else _checkpoint_path(results[tid])
                                for tid, path in frame["checkpoint_path"].items()]
    frame["step"] = frame["step"].fillna(0).astype(int)
    frame["status"] = ["ERROR" if results[tid].error else "DIVERGED" if diverged == 1 else "OK"
                       for tid, diverged in frame["diverged"].items()]
    frame["params"] = [trial_overrides(plan.spec, results[tid].config or {}) for tid in frame.index]
    frame["config"] = [dict(results[tid].config or {}) for tid in frame.index]
    frame["failed"] = frame["status"] != "OK"
    ranked = frame.sort_values(["failed", plan.spec.metric], ascending=[True, plan.spec.mode == "min"],
                               na_position="last")
    return ranked.drop(columns="failed").reset_index(drop=True)


def _checkpoint_path(result: Any) -> str | None:
    """The latest checkpoint Tune kept for a trial, from its Trial or its Result (in-trial trials
    report no ``checkpoint_path``: Tune stores their checkpoints itself)."""
    return result.checkpoint.path if result.checkpoint is not None else None


def summary_table(plan: SweepPlan, trials: pd.DataFrame) -> pd.DataFrame:
    """rank, trial id, status, step, the (validation) metric ranked by, the same metric on the
    test split beside it (scored once, at a trial's last step; never ranked by), then every
    searched param (blank where not suggested)."""
    params = pd.DataFrame(list(trials["params"]), dtype=object)
    test_metric = on_test_split(plan.spec.metric)
    test_values = trials[test_metric] if test_metric in trials else pd.Series(math.nan, index=trials.index)
    table = pd.DataFrame({
        "rank": range(1, len(trials) + 1),
        "trial_id": trials["trial_id"],
        "status": trials["status"],
        "step": trials["step"],
        plan.spec.metric: [f"{v:.6g}" for v in trials[plan.spec.metric].astype(float)],
        test_metric: [f"{v:.6g}" for v in test_values.astype(float)],
    })
    return table.join(params[sorted(params.columns)].fillna(""))


def on_test_split(val_metric: str) -> str:
    """``val_fd`` -> ``test_fd``: the reported twin of a validation metric."""
    return "test_" + val_metric.removeprefix("val_")


def markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]) + "\n"


def write_summary(
    table: pd.DataFrame, best: pd.Series | None, out_dir: Path, seeds: Mapping[str, int] | None = None
) -> tuple[Path, Path, Path | None]:
    """top_trials.csv, top_trials.md and (None if no trial finished) best_params.yaml: the best
    trial's searched keys, as ``experiments.compare --searched`` and ``train --config`` take them,
    with the ``seeds`` (``seed``, ``data.seed``) it was chosen on, so an evaluation of the
    searched schedule can refuse them (a result re-scored on its selection seed is biased)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "top_trials.csv", out_dir / "top_trials.md"
    table.to_csv(csv_path, index=False)
    md_path.write_text(markdown(table))
    if best is None:
        return csv_path, md_path, None
    best_path = out_dir / "best_params.yaml"
    best_path.write_text(yaml.safe_dump({**best["params"], **(seeds or {})}, sort_keys=False))
    return csv_path, md_path, best_path


def close_open_runs(plan: SweepPlan, trials: pd.DataFrame, tracker: SweepTracker) -> int:
    """Close the runs a driver killed between Tune saving a trial and the callback ending its run
    left RUNNING (a resumed sweep does not revisit those trials)."""
    callback = MLflowSweepCallback(plan, tracker)
    runs = tracker.trial_runs()  # read statuses without reopening anything
    closed = 0
    for _, row in trials.iterrows():
        run = runs.pop(row["trial_id"], None)
        if row["status"] != "ERROR" and run is not None and run.info.status == "RUNNING":
            callback.close_trial(run.info.run_id, row["trial_id"], row["config"], row.dropna())
            closed += 1
    for run in runs.values():  # started, but the crashed driver's Tune snapshot never had it
        if run.info.status == "RUNNING":
            tracker.finish_trial(run.info.run_id, "KILLED", reason="lost: the sweep driver died before Tune recorded this trial")
            closed += 1
    return closed


class Registered(NamedTuple):
    """The champion candidate of a sweep: its logged model and what the registry made of it."""

    model_uri: str
    result: RegistrationResult


def register_best(plan: SweepPlan, trials: pd.DataFrame, tracker: SweepTracker) -> Registered | None:
    """Log the best trial that ran all its steps to its MLflow run and offer it as champion."""
    done = trials[(trials["status"] == "OK") & (trials["step"] >= plan.base_config.steps)
                  & trials["checkpoint_path"].notna() & trials[plan.spec.metric].map(math.isfinite)]
    if done.empty:
        return None
    best = done.iloc[0]
    run_id = tracker.trial_run(best["trial_id"], {})  # exists already: get, don't create
    with ray.train.Checkpoint(best["checkpoint_path"]).as_directory() as folder:
        weights = Path(folder) / GENERATOR_FILE
        _, gen_cfg = load_generator(weights)
        model_uri = log_generator(plan.tracking_uri, run_id, weights, gen_cfg.dim)
    result = register_if_champion(
        plan.tracking_uri, model_uri, plan.model_name, plan.spec.metric, float(best[plan.spec.metric]),
        plan.spec.mode, plan.dataset, plan.name, test_value=float(best.get(on_test_split(plan.spec.metric), math.nan)),
    )
    return Registered(model_uri, result)


@dataclass(frozen=True)
class SweepOutcome:
    """What a finished sweep produced; :func:`run_sweep` returns it, the CLI prints it."""

    plan: SweepPlan
    trials: pd.DataFrame  # every trial, best first (see ranked_trials)
    table: pd.DataFrame  # the ranked summary, as written to top_trials.csv / top_trials.md
    csv_path: Path
    md_path: Path
    best_params_path: Path | None  # None when no trial finished
    registered: Registered | None  # None when no trial ran all its steps
    closed_runs: int  # MLflow runs a crashed driver had left open, closed afterwards
    stopped: str = ""  # why the sweep stopped early (no trial reported in time), else ""
    extras: Mapping[str, Path] = field(default_factory=dict)  # Optuna figures, pareto.csv, learned_schedule.yaml

    @property
    def best(self) -> pd.Series | None:
        """The best finished trial's row of ``trials``, or None."""
        return best_trial(self.trials)


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    finished = trials[trials["status"] == "OK"]
    return None if finished.empty else finished.iloc[0]


def run_sweep(plan: SweepPlan, resume: bool = False) -> SweepOutcome:
    """Run (or resume) the sweep of ``plan`` on a local Ray or ``plan.address``; summary files go
    to the sweep folder (``runs/<name>`` for remote storage)."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    env_vars = dict(RAY_ENV)
    if FAULT_GATE_ENV in os.environ:  # a fault test's gate folder reaches the workers
        env_vars[FAULT_GATE_ENV] = os.environ[FAULT_GATE_ENV]
    out_dir = plan.local_dir
    stopper = NoProgressStopper(plan.no_progress_s)
    with ray_runtime(plan, env_vars):
        require_reachable_storage(plan)
        require_placeable(plan)
        if not resume and not plan.population_based:
            prepare_study(out_dir, plan.name, plan.spec.objectives[1], plan.warm_start)
        grid = build_tuner(plan, resume, stopper).fit()
    trials = ranked_trials(plan, grid)
    table = summary_table(plan, trials)
    best = best_trial(trials)
    chosen = plan.trial_config(best["config"]) if best is not None else None
    chosen_on = selection_seeds(chosen) if chosen is not None else None
    csv_path, md_path, best_params = write_summary(table, best, out_dir, chosen_on)
    tracker = open_tracker(plan)
    closed = close_open_runs(plan, trials, tracker)
    registered = register_best(plan, trials, tracker)
    extras = search_outputs(plan, best, chosen, out_dir)
    tracker.log_figures(tracker.parent_run_id, {k: v for k, v in extras.items() if v.suffix == ".png"})
    for table_file in (v for v in extras.values() if v.suffix != ".png"):
        tracker.log_artifacts(tracker.parent_run_id, table_file)
    tracker.finish_sweep("FAILED" if stopper.reason else "FINISHED",
                         {"trials": len(trials), "failed_trials": int((trials["status"] != "OK").sum()),
                          **({f"best_{plan.spec.metric}": best[plan.spec.metric]} if best is not None else {})},
                         reason=stopper.reason or None)
    return SweepOutcome(plan, trials, table, csv_path, md_path, best_params, registered, closed, stopper.reason, extras)


@contextmanager
def ray_runtime(plan: SweepPlan, env_vars: Mapping[str, str]) -> Iterator[None]:
    """Join ``plan.address``, or start this sweep's own local Ray on free ports
    (:mod:`dmf_ray.platform.local_ray`: another local instance must not take its agent's port)."""
    if plan.address is None:
        with private_local_ray(env_vars):
            yield
        return
    ray.init(address=plan.address, runtime_env={"env_vars": dict(env_vars)}, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def require_placeable(plan: SweepPlan) -> None:
    """Refuse, before any trial starts, a trial that the sweep's own local Ray can never place
    (a joined cluster may autoscale; there the no-progress stopper bounds the wait)."""
    if plan.address is not None:
        return
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = placement_problem(plan.spec.resources, ray.cluster_resources(), nodes)
    if problem:
        raise ConfigError("resources", f"{problem}: no trial could ever start")


def selection_seeds(cfg: TrainConfig) -> dict[str, int]:
    """The seeds a trial was chosen on, written beside what it found so evaluations refuse them."""
    return {"seed": cfg.seed, "data.seed": cfg.data.seed}


def search_outputs(plan: SweepPlan, best: pd.Series | None, chosen: TrainConfig | None, out_dir: Path) -> dict[str, Path]:
    """What the search itself learned, as files in the sweep folder: Optuna's figures and (for
    a multi-objective sweep) the Pareto front, or a PBT sweep's learned friction schedule
    (``best`` the best trial's row, ``chosen`` its config)."""
    if plan.population_based:
        return export_learned_schedule(best, chosen, out_dir)
    metrics, _ = plan.spec.objectives
    files = study_figures(out_dir, plan.name, metrics, out_dir / "plots")
    if plan.spec.metrics is not None:
        front = pareto_front(out_dir, plan.name)
        rows = [{"optuna_trial": p.number, **dict(zip(metrics, p.values)), **p.params} for p in front]
        files["pareto"] = out_dir / "pareto.csv"
        pd.DataFrame(rows).to_csv(files["pareto"], index=False)
    return files


def export_learned_schedule(best: pd.Series | None, cfg: TrainConfig | None, out_dir: Path) -> dict[str, Path]:
    """The best PBT member's friction levels over time as a ``table`` schedule YAML (with the
    seeds it was chosen on, which ``compare --searched`` refuses) and its plot."""
    if best is None or cfg is None or not isinstance(best.get("checkpoint_path"), str):
        return {}
    with ray.train.Checkpoint(best["checkpoint_path"]).as_directory() as folder:
        history = json.loads((Path(folder) / HISTORY_FILE).read_text())
    learned = learned_schedule(history, cfg.steps)
    path = out_dir / "learned_schedule.yaml"
    path.write_text(yaml.safe_dump({**learned.overrides(), **selection_seeds(cfg)}, sort_keys=False))
    plot = plot_schedule(learned.config(cfg.friction.order), cfg.steps, out_dir / "plots" / "learned_schedule.png")
    return {"learned_schedule": path, "learned_schedule_plot": plot}

"""Sweep-level search features, end to end on a real private Ray, real Optuna and a sqlite MLflow
store: the persisted study and its warm start, Optuna's figures on the parent run, a
multi-objective Pareto front, PBT's learned friction schedule, and bounded failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from dmf_ray.platform.study import STUDY_FILE, finished_study
from dmf_ray.trainer.config import load_train_config
from dmf_ray.tune import run as tune_run
from test_sweep import TINY_SPACE

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL = {**TINY_SPACE, "num_samples": 2, "scheduler": {"type": "none"}}


def _space(folder: Path, name: str, space: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def test_a_warm_started_sweep_continues_the_earlier_study_and_plots_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = tune_run(["--space", str(_space(tmp_path, "s", SMALL)), "--storage-path", str(store), "--name", "first"])
    assert (store / "first" / STUDY_FILE).is_file() and len(finished_study(store / "first").trials) == 2
    second = tune_run(["--space", str(_space(tmp_path, "s", SMALL)), "--storage-path", str(store), "--name", "second",
                       "--warm-start", "first"])
    study = finished_study(store / "second")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4  # the first sweep's two trials, then this sweep's two
    first_values = sorted(t.value for t in finished_study(store / "first").trials)
    assert sorted(t.value for t in done[:2]) == first_values
    client = mlflow.MlflowClient(second.plan.tracking_uri)
    parent = client.search_runs([client.get_experiment_by_name(second.plan.experiment).experiment_id],
                                "tags.`dmf_ray.role` = 'sweep' and tags.`dmf_ray.sweep_id` = 'second'")[0]
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optuna_history.png", "plots/optuna_parallel_coordinate.png"} <= plots
    assert first.extras and "optuna_history" in second.extras


def test_a_multi_objective_sweep_writes_its_pareto_front(tmp_path: Path) -> None:
    space = {**SMALL, "num_samples": 3, "metrics": ["val_fd", "train_seconds"], "modes": ["min", "min"]}
    space.pop("metric")
    out = tune_run(["--space", str(_space(tmp_path, "mo", space)), "--storage-path", str(tmp_path / "store"), "--name", "mo"])
    front = (tmp_path / "store" / "mo" / "pareto.csv").read_text().splitlines()
    assert front[0].split(",")[:3] == ["optuna_trial", "val_fd", "train_seconds"] and 2 <= len(front) <= 4
    assert out.registered is not None  # the champion is chosen by the first objective


def test_pbt_learns_a_friction_table_that_training_accepts(tmp_path: Path) -> None:
    space = {
        "metric": "val_fd", "mode": "min", "num_samples": 2, "max_concurrent": 2, "sampler": {"seed": 0},
        "scheduler": {"type": "pbt", "mutate": ["friction.level"], "perturbation_interval": 10,
                      "quantile_fraction": 0.5, "resample_probability": 0.5},
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "fixed": {**TINY_SPACE["fixed"], "friction.schedule": "constant", "eval_every": 10},
        "params": {"friction.level": {"type": "float", "low": 0.0, "high": 1.0}},
    }
    out = tune_run(["--space", str(_space(tmp_path, "pbt", space)), "--storage-path", str(tmp_path / "store"), "--name", "pbt"])
    learned = yaml.safe_load((tmp_path / "store" / "pbt" / "learned_schedule.yaml").read_text())
    assert learned["friction.schedule"] == "table" and len(learned["friction.levels"]) == 3  # evaluations at 10, 20, 30 of 40
    assert learned["friction.levels"] == sorted(learned["friction.levels"])
    cfg = load_train_config(None, {k: v for k, v in learned.items() if k not in ("seed", "data.seed")})
    assert cfg.friction.schedule == "table" and out.extras["learned_schedule_plot"].is_file()


def test_a_trial_larger_than_the_machine_is_refused_in_one_line(tmp_path: Path) -> None:
    space = {**SMALL, "resources": {"workers": 1, "cpus_per_worker": 64}}
    proc = subprocess.run([sys.executable, "-m", "dmf_ray.tune", "--space", str(_space(tmp_path, "big", space)),
                           "--storage-path", str(tmp_path / "store")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: resources: a trial asks for 1 worker(s) x 64 CPU") and "the cluster has" in last
    assert "Traceback" not in proc.stderr


def test_two_sweeps_started_together_each_finish_with_their_own_champion(tmp_path: Path) -> None:
    space = _space(tmp_path, "s", {**SMALL, "max_concurrent": 1})
    procs = [subprocess.Popen([sys.executable, "-m", "dmf_ray.tune", "--space", str(space), "--storage-path",
                               str(tmp_path / f"store{i}"), "--name", f"s{i}", "--cpus-per-worker", "0.5"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for i, (proc, output) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, output[-3000:]
        assert (tmp_path / f"store{i}" / "mlflow.db").is_file() and "models:/dmf-toy@champion" in output

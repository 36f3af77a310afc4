"""Single-worker trials train inside the Tune trial: same results as the TorchTrainer path, and a
trial killed after a checkpoint resumes from it. Real local Ray, real sqlite MLflow store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")
import mlflow  # noqa: E402

from dmf_ray.platform.distributed import FAULT_GATE_ENV  # noqa: E402
from dmf_ray.platform.sweep import SweepOutcome, run_sweep  # noqa: E402
from dmf_ray.tune import build_parser, make_plan  # noqa: E402
from fault_gate import kill_first_parked  # noqa: E402
from tiny import TINY  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STEPS, EVAL_EVERY = 40, 10
SPACE = {
    "metric": "val_fd", "mode": "min", "num_samples": 1, "max_concurrent": 1,
    "sampler": {"type": "random", "seed": 0}, "scheduler": {"type": "none"},
    "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
    "fixed": {**TINY, "steps": STEPS, "eval_every": EVAL_EVERY, "optim.ema_decay": 0.9},
    "params": {"friction.schedule": {"type": "categorical", "choices": ["linear"]}},
}
COMPARED = ("val_fd", "test_fd", "loss", "drift_rms", "gamma")


def sweep(root: Path, name: str, **plan_fields) -> SweepOutcome:
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    args = build_parser().parse_args(["--space", str(space), "--storage-path", str(root / name), "--name", name])
    return run_sweep(dataclasses.replace(make_plan(args), **plan_fields))


def trial_run(out: SweepOutcome):
    client = mlflow.MlflowClient(out.plan.tracking_uri)
    exp = client.get_experiment_by_name(out.plan.experiment)
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    return client, run


@pytest.fixture(scope="module")
def in_trial(tmp_path_factory) -> SweepOutcome:
    return sweep(tmp_path_factory.mktemp("in_trial"), "in-trial")


def test_in_trial_and_torch_trainer_paths_give_the_same_metrics(in_trial, tmp_path) -> None:
    assert in_trial.plan.trains_in_trial
    assert not (Path(in_trial.plan.sweep_dir) / "train_runs").exists()  # no TorchTrainer was fitted
    torch_path = sweep(tmp_path, "torch-trainer", train_in_trial=False)
    assert (Path(torch_path.plan.sweep_dir) / "train_runs").is_dir()
    a, b = in_trial.trials.iloc[0], torch_path.trials.iloc[0]
    assert a["status"] == b["status"] == "OK" and a["step"] == b["step"] == STEPS
    for key in COMPARED:
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    for out in (in_trial, torch_path):  # the checkpoint folders are alike: both registered a champion
        assert out.registered is not None and out.registered.result.became_champion
        client, run = trial_run(out)
        assert run.info.status == "FINISHED"
        assert run.data.metrics["final_val_fd"] == pytest.approx(a["val_fd"], rel=1e-5)
        assert {"plots/samples.png", "plots/metrics.png"} <= {f.path for f in client.list_artifacts(run.info.run_id, "plots")}


def test_killed_in_trial_trial_resumes_from_its_checkpoint(in_trial, tmp_path, monkeypatch) -> None:
    # The trial stops at the fault gate after its first checkpoint (step 10) and is killed there;
    # Tune's retry must continue from that checkpoint: the same final scores as the uninterrupted
    # run, and step 10 reported once (a restart from scratch would report it again).
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv(FAULT_GATE_ENV, str(gate))
    killer, killed = kill_first_parked(gate)
    out = sweep(tmp_path, "killed")
    killer.join(timeout=10)
    assert killed, "the trial never reached the fault gate"
    row, reference = out.trials.iloc[0], in_trial.trials.iloc[0]
    assert row["status"] == "OK" and row["step"] == STEPS
    for key in COMPARED:
        assert row[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key
    client, run = trial_run(out)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_fd")]
    assert sorted(steps) == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))

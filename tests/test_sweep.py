"""End to end: a real local Ray, Optuna + ASHA, single-worker (in-trial) trials, a sqlite MLflow store, the registry."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("ray")
import mlflow  # noqa: E402

from dmf_ray.infer import main as infer_main  # noqa: E402
from dmf_ray.serving.inference import load_model  # noqa: E402
from dmf_ray.tune import main as tune_main  # noqa: E402
from dmf_ray.tune import run as tune_run  # noqa: E402

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium")

TINY_SPACE = {
    "metric": "val_fd",
    "mode": "min",
    "num_samples": 3,
    "max_concurrent": 2,
    "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 2},
    "scheduler": {"type": "asha", "grace_period": 20, "reduction_factor": 2},
    "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
    "fixed": {"steps": 40, "eval_every": 20, "batch_size": 64, "eval_samples": 500, "data.n_train": 2000,
              "data.n_test": 500, "model.width": 32, "model.depth": 2},
    "params": {
        "friction.schedule": {"type": "categorical", "choices": ["linear", "power"]},
        "friction.power": {"type": "float", "low": 0.5, "high": 3.0, "when": {"friction.schedule": "power"}},
        "drift.temperatures": {"type": "categorical", "choices": {"t2": [0.2], "t5": [0.5]}},
    },
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    space = root / "tiny.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    out = tune_run(["--space", str(space), "--storage-path", str(root / "store"), "--name", "tiny"])
    return root, out


def test_sweep_tracks_every_trial_once_under_one_parent(sweep) -> None:
    root, out = sweep
    plan = out.plan
    client = mlflow.MlflowClient(plan.tracking_uri)
    exp = client.get_experiment_by_name(plan.experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert finished, "at least one trial runs all its steps"
    run = finished[0]
    assert {"val_fd", "final_val_fd", "final_test_fd"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "val_fd")
    assert sorted(m.step for m in history) == [20, 40]
    # The test split is scored once, at the last step: nothing ranks by it along the way.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_fd")] == [40]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/samples.png", "plots/friction.png", "plots/metrics.png"} <= plots


def test_sweep_writes_top_trials_and_registers_a_champion(sweep) -> None:
    root, out = sweep
    plan, trials = out.plan, out.trials
    assert len(trials) == TINY_SPACE["num_samples"]
    header = (root / "store" / "tiny" / "top_trials.csv").read_text().splitlines()[0].split(",")
    searched = sorted({k for params in trials["params"] for k in params})
    assert header == ["rank", "trial_id", "status", "step", "val_fd", "test_fd", *searched]
    assert {"friction.schedule", "drift.temperatures"} <= set(searched)
    assert (root / "store" / "tiny" / "top_trials.md").read_text().count("\n") == len(trials) + 2
    best = yaml.safe_load((root / "store" / "tiny" / "best_params.yaml").read_text())
    chosen = plan.trial_config(out.best["config"])
    assert best == {**out.best["params"], "seed": chosen.seed, "data.seed": chosen.data.seed}
    assert best["drift.temperatures"] in ([0.2], [0.5])
    model_uri, outcome = out.registered
    assert outcome.became_champion
    client = mlflow.MlflowClient(plan.tracking_uri)
    version = client.get_model_version_by_alias(plan.model_name, "champion")
    assert version.tags["dataset"] == "toy" and version.tags["metric"] == "val_fd"
    assert float(version.tags["metric_value"]) == pytest.approx(out.best["val_fd"], rel=1e-6)
    assert float(version.tags["test_metric_value"]) == pytest.approx(out.best["test_fd"], rel=1e-6)


def test_trial_folders_are_named_by_trial_id(sweep) -> None:
    root, out = sweep
    folders = {p.name for p in (root / "store" / "tiny").iterdir() if p.is_dir()}
    assert set(out.trials["trial_id"]) <= folders
    # Single-worker trials train in the trial itself: their checkpoints are Tune's, in the trial
    # folder, for every trial (ASHA-stopped ones too), and no TorchTrainer run folder exists.
    assert [Path(p).parent.name for p in out.trials["checkpoint_path"]] == list(out.trials["trial_id"])
    assert not (root / "store" / "tiny" / "train_runs").exists()


def test_champion_translates_alike_via_cli_api_and_pyfunc(sweep, tmp_path) -> None:
    _, out = sweep
    plan = out.plan
    uri = f"models:/{plan.model_name}@champion"
    x = np.random.default_rng(0).standard_normal((50, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert infer_main(["--model", uri, "--tracking-uri", plan.tracking_uri, "--input", str(tmp_path / "x.npy"),
                       "--output", str(tmp_path / "y.npy")]) == 0
    y_cli = np.load(tmp_path / "y.npy")
    y_api = load_model(uri, tracking_uri=plan.tracking_uri).translate(x)
    mlflow.set_tracking_uri(plan.tracking_uri)
    y_pyfunc = mlflow.pyfunc.load_model(uri).predict(x)
    assert y_cli.shape == (50, 2)
    np.testing.assert_allclose(y_cli, y_api, rtol=1e-6)
    np.testing.assert_allclose(y_api, y_pyfunc, rtol=1e-6)


def test_bad_space_and_unreachable_tracking_server_exit_2_before_ray_starts(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY_SPACE, "num_samples": 0}, sort_keys=False))
    assert tune_main(["--space", str(bad), "--storage-path", str(tmp_path / "s")]) == 2
    assert "num_samples" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    assert tune_main(["--space", str(good), "--tracking-uri", "http://127.0.0.1:9", "--storage-path", str(tmp_path / "s")]) == 2
    assert "127.0.0.1:9" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium(*args: str, profile: Path) -> str:
    """Headless Chromium with no background traffic (the machine has no network)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=30000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian chromium not installed (.ci/run installs it)")
def test_mlflow_ui_shows_sweep_trial_plots_and_champion(sweep, tmp_path) -> None:
    _, out = sweep
    plan = out.plan
    client = mlflow.MlflowClient(plan.tracking_uri)
    exp = client.get_experiment_by_name(plan.experiment)
    trial = next(r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"
                 and "mlflow.parentRunId" in r.data.tags)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", plan.tracking_uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/#"
    try:
        for _ in range(120):  # bounded wait for the server: at most 60 s
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
        profile = tmp_path / "chromium"
        runs_page = _chromium("--dump-dom", f"{base}/experiments/{exp.experiment_id}/runs", profile=profile)
        assert plan.experiment in runs_page and plan.name in runs_page
        plot_url = f"{base}/experiments/{exp.experiment_id}/runs/{trial.info.run_id}/artifacts/plots/samples.png"
        plot_page = _chromium("--dump-dom", plot_url, profile=profile)
        assert trial.info.run_name in plot_page and 'alt="plots/samples.png"' in plot_page
        model_page = _chromium("--dump-dom", f"{base}/models/{plan.model_name}", profile=profile)
        assert plan.model_name in model_page and "champion" in model_page and "Version 1" in model_page
        for name, url in (("trial_plot", plot_url), ("model", f"{base}/models/{plan.model_name}")):
            shot = tmp_path / f"mlflow_{name}.png"
            _chromium("--window-size=1400,900", f"--screenshot={shot}", url, profile=profile)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        server.terminate()
        server.wait(timeout=30)

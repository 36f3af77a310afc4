"""SweepTracker against a real sqlite MLflow store: parent/nested runs, resume, metrics, artifacts."""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from dmf_ray.errors import ConfigError, UserInputError
from dmf_ray.core.friction import FrictionConfig
from dmf_ray.trainer.plots import figures_for_run
from dmf_ray.platform.tracking import (
    END_REASON_TAG,
    SweepTracker,
    check_tracking_server,
    flatten_params,
    tracking_uri_for,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _uri(tmp_path: Path) -> str:
    return tracking_uri_for(None, tmp_path / "store")


def _all_runs(tracker: SweepTracker) -> list:
    return tracker.client.search_runs([tracker.experiment_id], max_results=1000)


def test_tracking_uri_for_accepts_sqlite_and_servers_and_refuses_the_file_store(tmp_path) -> None:
    assert tracking_uri_for(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking_uri_for(str(tmp_path / "x.db"), tmp_path) == f"sqlite:///{tmp_path.resolve()}/x.db"
    assert tracking_uri_for("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    assert tracking_uri_for("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    for bad in (f"file://{tmp_path}/mlruns", str(tmp_path), "mlruns", "ftp://host/x"):
        with pytest.raises(ConfigError) as info:
            tracking_uri_for(bad, tmp_path)
        assert info.value.field == "tracking_uri" and "\n" not in str(info.value)


def test_unreachable_server_fails_fast_with_one_line(tmp_path) -> None:
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with pytest.raises(UserInputError, match=rf"tracking server {uri} is unreachable"):
        check_tracking_server(uri, timeout_s=2.0)
    assert time.perf_counter() - t0 < 3.0
    db_dir = tmp_path / "new" / "folder"
    check_tracking_server(f"sqlite:///{db_dir}/mlflow.db")
    assert db_dir.is_dir()


def test_flatten_params_dots_nested_keys_and_truncates_long_values() -> None:
    flat = flatten_params({"drift": {"kernel": "laplace", "temperatures": [0.02, 0.05]}, "lr": 1e-3,
                           "path": Path("/x"), "long": "y" * 7000, "bad key!": 1})
    assert flat["drift.kernel"] == "laplace"
    assert flat["drift.temperatures"] == "[0.02, 0.05]"
    assert flat["lr"] == "0.001" and flat["path"] == "/x" and flat["bad key_"] == "1"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("[7000 chars]")


def test_sweep_parent_nested_trials_metrics_artifacts_and_statuses(tmp_path) -> None:
    uri = _uri(tmp_path)
    tracker = SweepTracker(uri, "dmf-test")
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.artifact_location == (tmp_path / "store" / "mlartifacts" / "dmf-test").resolve().as_uri()

    parent = tracker.start_sweep("sweep-1", {"search": {"num_samples": 3, "metric": "fd"}, "long": "z" * 9000},
                                 tags={"dmf_ray.dataset": "toy"})
    ok = tracker.trial_run("trial_0", {"optim": {"lr": 0.01}, "friction": {"schedule": "linear"}})
    div = tracker.trial_run("trial_1", {"optim": {"lr": 10.0}})
    asha = tracker.trial_run("trial_2", {"optim": {"lr": 0.001}})
    assert len({parent, ok, div, asha}) == 4

    for step, fd in ((10, 2.0), (20, 1.0), (30, 0.5)):
        tracker.log_eval(ok, step, {"fd": fd, "loss": fd / 2, "note": "text is ignored"})
    tracker.log_eval(div, 10, {"fd": 3.0})
    tracker.log_eval(div, 20, {"fd": float("nan"), "loss": float("inf")})
    tracker.log_eval(asha, 10, {"fd": 4.0})

    tracker.log_config(ok, {"optim": {"lr": 0.01, "betas": [0.9, 0.99]}, "out_dir": str(tmp_path)})
    rng = np.random.default_rng(0)
    history = [{"step": 10, "fd": 2.0, "gamma": 0.1}, {"step": 20, "fd": 1.0, "gamma": 0.5}, {"step": 30, "fd": 0.5, "gamma": 1.0}]
    samples = (rng.standard_normal((64, 8)), rng.standard_normal((64, 8)) + 1)  # 8-D: PCA plane
    figures = figures_for_run(history, FrictionConfig(schedule="cosine"), 30, samples, tmp_path / "figs")
    assert set(figures) == {"samples", "friction", "metrics"}
    assert all(p.read_bytes()[:8] == PNG for p in figures.values())
    tracker.log_figures(ok, figures)

    tracker.finish_trial(ok, "FINISHED", {"fd": 0.5, "kid": 0.01})
    tracker.finish_trial(div, "FAILED", reason="diverged: loss is nan at step 20")
    tracker.finish_trial(asha, "KILLED", {"fd": 4.0}, reason="stopped by ASHA")
    tracker.finish_sweep("FINISHED", {"best_fd": 0.5})

    client = tracker.client
    p = client.get_run(parent)
    assert p.info.status == "FINISHED" and p.data.tags["dmf_ray.sweep_id"] == "sweep-1"
    assert p.data.tags["dmf_ray.dataset"] == "toy" and p.data.metrics["best_fd"] == 0.5
    assert p.data.params["search.num_samples"] == "3" and len(p.data.params["long"]) == 6000

    runs = tracker.trial_runs()
    assert set(runs) == {"trial_0", "trial_1", "trial_2"}
    for tid, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent and run.info.run_name == tid
    r_ok, r_div, r_asha = runs["trial_0"], runs["trial_1"], runs["trial_2"]
    assert [r.info.status for r in (r_ok, r_div, r_asha)] == ["FINISHED", "FAILED", "KILLED"]
    assert r_ok.data.params == {"optim.lr": "0.01", "friction.schedule": "linear"}
    hist = client.get_metric_history(ok, "fd")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(10, 2.0), (20, 1.0), (30, 0.5)]
    assert "note" not in r_ok.data.metrics
    assert r_ok.data.metrics["final_fd"] == 0.5 and r_ok.data.metrics["final_kid"] == 0.01
    assert END_REASON_TAG not in r_ok.data.tags
    assert r_div.data.tags[END_REASON_TAG] == "diverged: loss is nan at step 20"
    assert r_div.data.tags["dmf_ray.nonfinite.fd"] == "nan at step 20"
    assert r_div.data.tags["dmf_ray.nonfinite.loss"] == "inf at step 20"
    assert [m.step for m in client.get_metric_history(div, "fd")] == [10]  # the NaN was not logged
    assert r_asha.data.tags[END_REASON_TAG] == "stopped by ASHA"

    top = {a.path for a in client.list_artifacts(ok)}
    assert top == {"config.yaml", "plots"}
    assert {a.path for a in client.list_artifacts(ok, "plots")} == {"plots/samples.png", "plots/friction.png", "plots/metrics.png"}
    local = Path(mlflow.artifacts.download_artifacts(run_id=ok, artifact_path="config.yaml",
                                                     dst_path=str(tmp_path / "dl"), tracking_uri=uri))
    assert "betas:\n  - 0.9" in local.read_text()


def test_resumed_sweep_reopens_the_same_runs_without_duplicates(tmp_path) -> None:
    uri = _uri(tmp_path)
    first = SweepTracker(uri, "resume")
    parent = first.start_sweep("s", {"num_samples": 2})
    done = first.trial_run("t_done", {"lr": 0.1})
    first.log_eval(done, 5, {"fd": 1.0})
    first.finish_trial(done, "FINISHED", {"fd": 1.0})
    unfinished = first.trial_run("t_crashed", {"lr": 0.2})  # driver dies: the run stays RUNNING
    first.log_eval(unfinished, 5, {"fd": 2.0})
    assert len(_all_runs(first)) == 3

    again = SweepTracker(uri, "resume")  # a new process re-opening the store
    assert again.experiment_id == first.experiment_id
    assert again.start_sweep("s", {"num_samples": 2, "added_later": 1}) == parent
    assert again.trial_run("t_done", {"lr": 0.1}) == done
    assert again.trial_run("t_crashed", {"lr": 0.2}) == unfinished
    again.log_eval(unfinished, 10, {"fd": 1.5})
    again.finish_trial(unfinished, "FINISHED", {"fd": 1.5})
    assert again.trial_run("t_done", {"lr": 0.1}) == done  # asked twice: still one run
    assert len(_all_runs(again)) == 3
    client = again.client
    assert client.get_run(done).info.status == "FINISHED"
    assert client.get_run(parent).data.params == {"num_samples": "2", "added_later": "1"}
    assert [m.step for m in sorted(client.get_metric_history(unfinished, "fd"), key=lambda m: m.step)] == [5, 10]

    other = again.start_sweep("s2", {})  # a different sweep id: a new parent
    assert other != parent and len(_all_runs(again)) == 4
    assert set(again.trial_runs()) == set()


def test_trackers_on_two_stores_coexist_without_global_state(tmp_path) -> None:
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    a = SweepTracker(tracking_uri_for(None, tmp_path / "a"), "exp")
    b = SweepTracker(tracking_uri_for(None, tmp_path / "b"), "exp")
    a.start_sweep("x", {})
    ra = a.trial_run("t", {})
    b.start_sweep("x", {})
    assert a.client.get_run(ra).info.status == "RUNNING"
    assert len(_all_runs(a)) == 2 and len(_all_runs(b)) == 1
    assert (tmp_path / "a" / "mlflow.db").is_file() and (tmp_path / "b" / "mlflow.db").is_file()
    assert (mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None) == before
    assert mlflow.active_run() is None
    with pytest.raises(RuntimeError, match="start_sweep"):
        SweepTracker(a.tracking_uri, "exp").trial_run("t", {})
    with pytest.raises(ConfigError, match="sweep_id"):
        a.start_sweep("it's", {})


def test_figures_skip_missing_inputs(tmp_path) -> None:
    assert figures_for_run([], None, None, None, tmp_path) == {}
    figs = figures_for_run([{"step": 1, "fd": math.nan}, {"step": 2, "fd": 1.0}], {"schedule": "linear"}, 1, None, tmp_path)
    assert set(figs) == {"metrics"}  # total_steps < 2: no schedule plot

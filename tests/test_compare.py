"""experiments.compare end to end on tiny settings: one table, plots, and MLflow runs per method and seed."""

from __future__ import annotations

import json

import mlflow
import pytest
import yaml

from dmf_ray.data import load_dataset
from dmf_ray.experiments.compare import _mean_std, main
from dmf_ray.trainer.config import load_train_config
from dmf_ray.trainer.engine import build_state, evaluate


def _nested(overrides: dict) -> dict:
    """{"data.n_train": 1} -> {"data": {"n_train": 1}}: the YAML form of dotted overrides."""
    tree: dict = {}
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = tree
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return tree


@pytest.mark.slow
def test_compare_tunes_trains_tabulates_and_tracks_every_method(tmp_path, tiny_overrides) -> None:
    sizes = {k: v for k, v in tiny_overrides.items() if k not in ("steps", "eval_every")}  # compare sets those
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(_nested(sizes)))
    out = tmp_path / "cmp"
    argv = ["--task", "gaussian-ot", "--dim", "3", "--methods", "dm", "sinkhorn", "ofm", "--steps", "4", "--seeds", "0", "1",
            "--taus", "0.2", "1.0", "--epsilons", "0.05", "0.2", "--config", str(config), "--out", str(out)]
    assert main(argv) == 0

    table = (out / "compare.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| DM", "| Sinkhorn", "| OFM"]
    assert "l2_uvp (mean ± std)" in table and "0/2" in table
    results = json.loads((out / "results.json").read_text())
    assert {m: len(rs) for m, rs in results.items()} == {"dm": 2, "sinkhorn": 2, "ofm": 2}
    assert all(r["steps"] == 4 and r["seconds"] > 0 for rs in results.values() for r in rs)
    for row, runs in zip(rows, results.values()):  # the table shows mean ± std of the runs' values
        assert _mean_std([r["metrics"]["test_l2_uvp"] for r in runs]) in row.split(" | ")
    for seed in (0, 1):  # DM and Sinkhorn start from x -> x (residual generator) and move towards the OT map
        cfg = load_train_config(None, {**sizes, "data.name": "gaussian-ot", "data.dim": 3, "model.kind": "residual",
                                       "seed": seed, "data.seed": seed})
        identity = evaluate(build_state(cfg, load_dataset(cfg.data)).model, load_dataset(cfg.data), cfg, split="test")["test_l2_uvp"]
        for method in ("dm", "sinkhorn"):
            (run,) = [r for r in results[method] if r["seed"] == seed]
            assert run["metrics"]["test_l2_uvp"] < identity, (method, seed, identity)
    assert results["sinkhorn"][0]["setting"] in (0.05, 0.2) and results["ofm"][0]["setting"] is None
    for png in ("fd_by_method.png", "fd_curves.png", "samples.png"):
        assert (out / png).stat().st_size > 1000

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dmf-compare")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("dmf_ray.role") == "trial"]
    # 2 tuning runs each for DM and Sinkhorn, then 2 seeds x 3 methods.
    assert len(trials) == 10 and all(r.info.status == "FINISHED" for r in trials)
    parent = next(r for r in runs if r.data.tags.get("dmf_ray.role") == "sweep")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"compare.md", "results.json", "plots/fd_by_method.png"} <= artifacts

"""experiments.compare: control methods' configs, OFM's budget, the --searched seed refusal, and
end to end on tiny settings -- every number of compare.md traced back to results.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
import yaml

from dmf_ray.data import load_dataset
from dmf_ray.experiments.compare import build_parser, main
from dmf_ray.experiments.methods import DEFAULT_METHODS, METHODS, TASKS, method_base, method_config
from dmf_ray.experiments.report import ci_cell, p_cell
from dmf_ray.experiments.stats import ratio_ci, seconds_to_reach, welch_p
from dmf_ray.trainer.config import load_train_config
from dmf_ray.trainer.engine import build_state, evaluate

TOY_METRICS = ("fd", "energy", "mmd", "mode_weight_error", "nll", "transport_cost")


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


def _sizes_yaml(tmp_path: Path, tiny: dict) -> Path:
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(_nested({k: v for k, v in tiny.items() if k not in ("steps", "eval_every")})))
    return config


def _table(text: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows of cells) of the markdown table whose first column is ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    block = lines[start:end]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in block if "---" not in line]
    return cells[0], cells[1:]


def test_control_methods_make_the_expected_configs() -> None:
    toy = TASKS["toy"].overrides

    def cfg(name: str, base=toy, setting=0.2):
        return method_config(base, METHODS[name], setting, 0)

    for name, shape in (("dm-lr-linear", "linear"), ("dm-lr-cosine", "cosine")):
        c = cfg(name)
        assert (c.optim.lr_schedule, c.friction.schedule, c.optim.ema_decay) == (shape, "none", None)
    assert (cfg("dm-ema").optim.ema_decay, cfg("dm-ema").friction.schedule) == (0.999, "none")
    assert (cfg("dmf-ema").optim.ema_decay, cfg("dmf-ema").friction.schedule) == (0.999, "linear")
    assert (cfg("dm").optim.lr_schedule, cfg("dmf").optim.ema_decay) == ("constant", None)
    gaussian = {**TASKS["gaussian-ot"].overrides, "data.dim": 512}
    assert cfg("dmf", gaussian).drift.affinity_floor > 0  # the released floor ...
    floor0 = cfg("dmf-floor0", gaussian)
    assert (floor0.drift.affinity_floor, floor0.friction.schedule) == (0.0, "linear")  # ... and its ablation
    assert cfg("dmf-floor0", gaussian).drift.temperatures == (0.2,)


def test_ofm_gets_its_papers_budget_and_a_tuned_learning_rate() -> None:
    task, base = TASKS["toy"], {**TASKS["toy"].overrides, "steps": 1000, "eval_every": 100, "batch_size": 1024}
    ofm = METHODS["ofm"]
    paper = method_config(method_base(base, ofm, task), ofm, 3e-3, 0)
    assert (paper.method, paper.steps, paper.batch_size, paper.eval_every, paper.optim.lr) == ("ofm", 10_000, 128, 1000, 3e-3)
    assert method_config(method_base(base, ofm, task, ofm_steps=40), ofm, None, 0).steps == 40
    finer = method_config(method_base({**base, "eval_every": 25}, ofm, task), ofm, None, 0)
    assert finer.eval_every == 250  # 40 evaluations per run, like the others
    dm = method_config(method_base(base, METHODS["dm"], task, ofm_steps=40), METHODS["dm"], 0.2, 0)
    assert (dm.steps, dm.batch_size) == (1000, 1024)  # the budget is OFM's alone


def test_default_methods_and_seeds() -> None:
    args = build_parser().parse_args([])
    assert args.methods == list(DEFAULT_METHODS) == ["dm", "dmf", "dm-lr-linear", "dm-lr-cosine", "dm-ema", "dmf-ema",
                                                     "sharp", "kl_parzen", "mmd", "sinkhorn", "ofm"]
    assert len(args.seeds) >= 5 and len(set(args.seeds)) == len(args.seeds)


@pytest.mark.parametrize("flags, reused", [(["--seeds", "1", "2"], "[2]"), (["--seeds", "3", "4", "--tune-seed", "7"], "[7]")])
def test_searched_refuses_the_sweeps_seeds(tmp_path, capsys, flags, reused) -> None:
    best = tmp_path / "best_params.yaml"
    best.write_text(yaml.safe_dump({"friction.schedule": "linear", "seed": 2, "data.seed": 7}))
    argv = ["--methods", "dm", "dmf-searched", "--searched", str(best), "--out", str(tmp_path / "out"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --seeds: ") and reused in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # refused before anything ran


@pytest.fixture(scope="module")
def toy_comparison(tmp_path_factory) -> tuple[Path, str, dict]:
    """A toy comparison at tiny sizes: DM, DMF, DM + EMA and OFM (its LR tuned over two values),
    3 seeds, a quality threshold every run reaches."""
    tmp = tmp_path_factory.mktemp("toy_cmp")
    from tiny import TINY

    out = tmp / "cmp"
    argv = ["--task", "toy", "--methods", "dm", "dmf", "dm-ema", "ofm", "--steps", "6", "--ofm-steps", "4",
            "--seeds", "0", "1", "2", "--taus", "0.2", "--ofm-lrs", "1e-3", "3e-3", "--quality-multiple", "1e4",
            "--config", str(_sizes_yaml(tmp, TINY)), "--out", str(out)]
    assert main(argv) == 0
    return out, (out / "compare.md").read_text(), json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_toy_table_cells_are_the_stats_of_results_json(toy_comparison) -> None:
    _, text, results = toy_comparison
    head, rows = _table(text, "Method")
    runs = results["runs"]
    assert [r[0] for r in rows] == ["DM", "DMF (linear)", "DM + EMA 0.999", "OFM",
                                    "moment-matched Gaussian (control, no training)",
                                    "noise floor (two true samples of 500 rows, mean ± std)"]
    for row, (name, method_runs) in zip(rows, runs.items()):
        cell = dict(zip(head, row))
        assert len(method_runs) == 3 and all(r["train_seconds"] > 0 for r in method_runs)
        for metric, label in zip(TOY_METRICS, ("FD", "energy", "MMD²", "mode-weight error", "NLL", "transport cost")):
            for split in ("val", "test"):
                stored = [r["metrics"][f"{split}_{metric}"] for r in method_runs]
                assert all(math.isfinite(v) for v in stored)
                assert cell[f"{split} {label}"] == ci_cell(stored) and "±" in cell[f"{split} {label}"]
        test_fd = [r["metrics"]["test_fd"] for r in method_runs]
        for ref, header in (("dm", "p vs DM (test_fd)"), ("dmf", "p vs DMF-linear (test_fd)")):
            expected = "–" if ref == name else p_cell(welch_p(test_fd, [r["metrics"]["test_fd"] for r in runs[ref]]))
            assert cell[header] == expected
            assert ref == name or results["p_values"][f"vs_{ref}"][name] == welch_p(test_fd, [r["metrics"]["test_fd"] for r in runs[ref]])
        assert cell["train s"] == ci_cell([r["train_seconds"] for r in method_runs])
        assert cell["steps"] == ("4" if name == "ofm" else "6") and cell["failed"] == "0/3"
    assert results["settings"]["ofm"]["chosen"] in (1e-3, 3e-3) and results["settings"]["ofm"]["steps"] == 4
    assert set(results["settings"]["ofm"]["tuning_val_fd"]) == {"0.001", "0.003"}
    paper = dict(zip(head, rows[0]))["paper 2-D FD"]
    assert paper == "0.0726"


@pytest.mark.slow
def test_toy_noise_floor_and_moment_matched_rows(toy_comparison) -> None:
    _, text, results = toy_comparison
    head, rows = _table(text, "Method")
    control, floor = (dict(zip(head, r)) for r in rows[-2:])
    floors = results["noise_floor"]["metrics"]
    assert results["noise_floor"]["rows"] == 500 and set(floors) == {"fd", "energy", "mmd", "mode_weight_error", "nll"}
    assert floor["val FD"] == floor["test FD"] == f"{floors['fd']['mean']:.4g} ± {floors['fd']['std']:.2g}"
    assert floor["test transport cost"] == "–" and control["test transport cost"] == "–"
    per_seed = results["moment_matched_gaussian"]
    assert [c["seed"] for c in per_seed] == [0, 1, 2]
    assert control["test NLL"] == ci_cell([c["metrics"]["test_nll"] for c in per_seed])
    # FD cannot tell the moment-matched Gaussian from the mixture; the NLL can (true samples score H(p)).
    assert all(c["metrics"]["test_nll"] > floors["nll"]["mean"] + 5 * floors["nll"]["std"] for c in per_seed)


@pytest.mark.slow
def test_toy_time_to_quality_is_seconds_to_reach_of_the_stored_histories(toy_comparison) -> None:
    out, text, results = toy_comparison
    ttq = results["time_to_quality"]
    assert ttq["metric"] == "val_fd"
    assert ttq["threshold"] == pytest.approx(1e4 * results["noise_floor"]["metrics"]["fd"]["mean"])
    head, rows = _table(text, "Method | seeds that reached it")  # the second table
    for row, (name, method_runs) in zip(rows, results["runs"].items()):
        expected = {str(r["seed"]): seconds_to_reach(r["history"], "val_fd", ttq["threshold"]) for r in method_runs}
        assert ttq["seconds"][name] == expected and all(v is not None for v in expected.values())
        assert row[1:] == ["3/3", ci_cell(list(expected.values()))]
    k = ratio_ci({int(s): v for s, v in ttq["seconds"]["ofm"].items()}, {int(s): v for s, v in ttq["seconds"]["dmf"].items()})
    assert ttq["k_ofm_over_dmf"] == pytest.approx({"estimate": k.estimate, "low": k.low, "high": k.high, "pairs": 3})
    assert f"k = OFM seconds / DMF seconds to reach it: {k.estimate:.3g}, 95% CI [{k.low:.3g}, {k.high:.3g}]" in text

    assert (out / "time_to_quality.png").stat().st_size > 1000
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dmf-compare")
    parent = next(r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("dmf_ray.role") == "sweep")
    assert "plots/time_to_quality.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}


@pytest.mark.slow
def test_compare_tunes_trains_tabulates_and_tracks_every_method(tmp_path, tiny_overrides) -> None:
    sizes = {k: v for k, v in tiny_overrides.items() if k not in ("steps", "eval_every")}  # compare sets those
    out = tmp_path / "cmp"
    argv = ["--task", "gaussian-ot", "--dim", "3", "--methods", "dm", "sinkhorn", "ofm", "--steps", "4", "--seeds", "0", "1",
            "--taus", "0.2", "1.0", "--epsilons", "0.05", "0.2", "--ofm-steps", "4", "--ofm-lrs", "1e-3",
            "--workers", "2", "--config", str(_sizes_yaml(tmp_path, tiny_overrides)), "--out", str(out)]
    assert main(argv) == 0

    head, rows = _table((out / "compare.md").read_text(), "Method")
    assert [r[0] for r in rows] == ["DM", "Sinkhorn", "OFM", "noise floor (two true samples of 500 rows, mean ± std)"]
    assert [h for h in head if h.startswith("test ")] == ["test FD", "test energy", "test L2-UVP %", "test transport cost"]
    assert dict(zip(head, rows[-1]))["test L2-UVP %"] == "–"  # no floor for a score against the known map
    results = json.loads((out / "results.json").read_text())["runs"]
    # Two spawned workers trained the runs; the driver got them back in submission order.
    assert {m: [r["seed"] for r in rs] for m, rs in results.items()} == {"dm": [0, 1], "sinkhorn": [0, 1], "ofm": [0, 1]}
    assert all(r["steps"] == 4 and r["seconds"] > 0 for rs in results.values() for r in rs)
    for seed in (0, 1):  # DM and Sinkhorn start from x -> x (residual generator) and move towards the OT map
        cfg = load_train_config(None, {**sizes, "data.name": "gaussian-ot", "data.dim": 3, "model.kind": "residual",
                                       "seed": seed, "data.seed": seed})
        identity = evaluate(build_state(cfg, load_dataset(cfg.data)).model, load_dataset(cfg.data), cfg, split="test")["test_l2_uvp"]
        for method in ("dm", "sinkhorn"):
            (run,) = [r for r in results[method] if r["seed"] == seed]
            assert run["metrics"]["test_l2_uvp"] < identity, (method, seed, identity)
    assert results["sinkhorn"][0]["setting"] in (0.05, 0.2) and results["ofm"][0]["setting"] == 1e-3
    for png in ("fd_by_method.png", "time_to_quality.png", "samples.png"):
        assert (out / png).stat().st_size > 1000

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dmf-compare")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if r.data.tags.get("dmf_ray.role") == "trial"]
    # 2 tuning runs each for DM and Sinkhorn (OFM's grid has one value), then 2 seeds x 3 methods.
    assert len(trials) == 10 and all(r.info.status == "FINISHED" for r in trials)
    parent = next(r for r in runs if r.data.tags.get("dmf_ray.role") == "sweep")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)} | {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"compare.md", "results.json", "plots/fd_by_method.png", "plots/time_to_quality.png"} <= artifacts

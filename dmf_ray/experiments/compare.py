"""One table for every method on one task: DM, DMF, the drift families and OFM, side by side.

The DMF paper's claims are comparisons (DMF vs DM vs OFM at a fraction of OFM's compute), which
only mean something when every method runs through the same trainer with equal care; the
protocol and the outputs are described in README.md ("Reproductions").

    python -m dmf_ray.experiments.compare --task toy
    python -m dmf_ray.experiments.compare --task gaussian-ot --dim 64 --seeds 0 1 2
    python -m dmf_ray.experiments.compare --task toy --methods dm dmf --out outputs/toy_table1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from dmf_ray.cli import ArgumentParser, check_output_folder, run_cli
from dmf_ray.trainer.config import TrainConfig, load_train_config, read_yaml_mapping
from dmf_ray.data import DataConfig, TranslationData, load_dataset
from dmf_ray.trainer.engine import serving_model, translate
from dmf_ray.trainer.run import run_training
from dmf_ray.errors import ConfigError, TrainingDiverged
from dmf_ray.trainer.plots import plot_bars, plot_curves, plot_sample_panels
from dmf_ray.platform.tracking import SweepTracker, tracking_uri_for


@dataclass(frozen=True)
class Method:
    """A row of the table: a label, the config keys that make the method, whether it has a bandwidth."""

    label: str
    overrides: Mapping[str, Any]
    tuned_key: str | None = "drift.temperatures"  # the key the tuning grid sets (None: nothing tuned)


# Every drift family runs with DMF's linear friction, so the rows differ in one thing each.
METHODS: dict[str, Method] = {
    "dm": Method("DM", {"friction.schedule": "none"}),
    "dmf": Method("DMF (linear)", {"friction.schedule": "linear"}),
    "dmf-searched": Method("DMF (searched schedule)", {}),  # the schedule comes from --searched
    "sharp": Method("sharp potential", {"drift.family": "sharp", "friction.schedule": "linear"}),
    "kl_parzen": Method("KL (Parzen)", {"drift.family": "kl_parzen", "friction.schedule": "linear"}),
    "mmd": Method("MMD witness", {"drift.family": "mmd", "friction.schedule": "linear"}),
    "sinkhorn": Method("Sinkhorn", {"drift.family": "sinkhorn", "friction.schedule": "linear"},
                       tuned_key="drift.sinkhorn_epsilon"),
    # OFM at its paper's batch of 128 pairs: each step solves an inner L-BFGS problem per sample.
    "ofm": Method("OFM", {"method": "ofm", "model.kind": "icnn", "friction.schedule": "none", "batch_size": 128},
                  tuned_key=None),
}
DEFAULT_METHODS = ("dm", "dmf", "sharp", "kl_parzen", "mmd", "sinkhorn", "ofm")


@dataclass(frozen=True)
class Task:
    """Shared settings of a task and its tuning grids (bandwidths; Sinkhorn's epsilon)."""

    overrides: Mapping[str, Any]
    taus: tuple[float, ...]
    epsilons: tuple[float, ...]
    metrics: tuple[str, ...]
    paper: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # method -> metric -> figure


TASKS: dict[str, Task] = {
    # DMF Table 1: the 2-D toy with the trainer's toy defaults (noise MLP 128 x 3, batch 1024).
    "toy": Task(
        overrides={"data.name": "toy", "drift.preset": "toy"},
        taus=(0.05, 0.2, 0.5), epsilons=(0.01, 0.05, 0.2), metrics=("fd", "transport_cost"),
        paper={"dm": {"fd": 0.0726}, "dmf": {"fd": 0.0026}, "ofm": {"fd": 0.0029}},
    ),
    # Gaussian -> Gaussian with a known OT map; the released drift (distance-normalised, so the
    # bandwidths are relative to the mean distance).
    "gaussian-ot": Task(
        overrides={"data.name": "gaussian-ot", "data.dim": 64, "model.kind": "residual", "model.width": 256,
                   "drift.preset": "reference"},
        taus=(0.05, 0.2, 1.0), epsilons=(0.01, 0.05, 0.2), metrics=("fd", "l2_uvp", "transport_cost"),
    ),
    # DMF Table 2: FFHQ adult -> child in ALAE W space; image FID / CMMD need a decoder.
    "ffhq-alae": Task(
        overrides={"data.name": "ffhq-alae", "model.kind": "residual", "model.width": 1024,
                   "drift.preset": "reference", "batch_size": 4096},
        taus=(0.05, 0.2, 1.0), epsilons=(0.01, 0.05, 0.2), metrics=("fd", "kid", "transport_cost"),
        paper={"dm": {"fid": 11.94, "cmmd": 0.0238, "minutes": 15}, "dmf": {"fid": 10.58, "cmmd": 0.0073, "minutes": 15},
               "ofm": {"fid": 10.63, "cmmd": 0.0131, "minutes": 240}},
    ),
}


@dataclass
class RunResult:
    """One (method, setting, seed) training run."""

    method: str
    setting: float | None
    seed: int
    metrics: dict[str, float]
    seconds: float
    steps: int
    history: list[dict[str, float]]
    failure: str = ""


def method_config(base: Mapping[str, Any], method: Method, setting: float | None, seed: int) -> TrainConfig:
    """The task's shared keys, then the method's own, then the tuned value and the seed."""
    keys = {**base, **method.overrides, "seed": seed, "data.seed": seed}
    if method.tuned_key is not None and setting is not None:
        keys[method.tuned_key] = setting  # drift.temperatures takes a bare number as one temperature
    return load_train_config(None, keys)


def run_once(cfg: TrainConfig, data: TranslationData, name: str, setting: float | None) -> tuple[RunResult, Any]:
    """Train one run on ``data`` (``cfg.data``'s dataset); a diverged run is a row with its reason,
    never a crash of the comparison."""
    start = time.perf_counter()
    try:
        state = run_training(cfg, data)
    except TrainingDiverged as exc:
        seconds = time.perf_counter() - start
        print(f"  {name:<13} setting={setting} seed={cfg.seed}: diverged ({exc})", flush=True)
        return RunResult(name, setting, cfg.seed, {}, seconds, 0, [], failure=str(exc)), None
    seconds = time.perf_counter() - start
    final = {k: float(v) for k, v in state.history[-1].items() if k not in ("step", "gamma", "lr")}
    result = RunResult(name, setting, cfg.seed, final, seconds, state.step, state.history)
    print(f"  {name:<13} setting={setting} seed={cfg.seed:<4d} val FD={final.get('val_fd', math.nan):.5f} test FD={final.get('test_fd', math.nan):.5f} ({seconds:.0f} s)", flush=True)
    return result, (state, data)


def _mean_std(values: Sequence[float]) -> str:
    clean = [v for v in values if math.isfinite(v)]
    if not clean:
        return "–"
    std = statistics.stdev(clean) if len(clean) > 1 else 0.0
    return f"{statistics.fmean(clean):.4g} ± {std:.2g}"


def markdown_table(task_name: str, results: dict[str, list[RunResult]], chosen: dict[str, float | None],
                   tuning: dict[str, dict[float, float]], base_cfg: TrainConfig) -> str:
    """Mean +- std over seeds of every task metric, wall time, steps, and the paper's figures."""
    task = TASKS[task_name]
    paper_keys = sorted({k for v in task.paper.values() for k in v})
    head = ["Method", "tuned"] + [f"test {m} (mean ± std)" for m in task.metrics] + ["train s", "steps", "failed"]
    head += [f"paper {k}" for k in paper_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, runs in results.items():
        ok = [r for r in runs if not r.failure]
        cells = [METHODS[name].label, "–" if chosen[name] is None else f"{chosen[name]:g}"]
        cells += [_mean_std([r.metrics.get(f"test_{m}", math.nan) for r in ok]) for m in task.metrics]
        cells += [_mean_std([r.seconds for r in ok]), str(ok[0].steps) if ok else "–", f"{len(runs) - len(ok)}/{len(runs)}"]
        cells += [str(task.paper.get(name, {}).get(k, "–")) for k in paper_keys]
        lines.append("| " + " | ".join(cells) + " |")
    grid = "; ".join(f"{METHODS[m].label}: " + ", ".join(f"{s:g} → {v:.4g}" for s, v in fds.items())
                     for m, fds in tuning.items() if fds)
    lines += [
        "",
        f"Shared settings: task {task_name}, {base_cfg.steps} steps, batch {base_cfg.batch_size}, "
        f"{base_cfg.model.kind} generator width {base_cfg.model.width} depth {base_cfg.model.depth} (OFM: an ICNN of the same size, batch 128 as in its paper), "
        f"{base_cfg.optim.name} lr {base_cfg.optim.lr:g}, evaluation on {base_cfg.eval_samples} held-out samples. "
        f"'tuned' is the bandwidth (Sinkhorn: epsilon) each method picked by validation FD on the tuning seed; the table reports the test split"
        + (f" ({grid})." if grid else "."),
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m dmf_ray.experiments.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="toy")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help=f"any of {', '.join(METHODS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--taus", type=float, nargs="+", help="bandwidth grid (default: the task's)")
    p.add_argument("--epsilons", type=float, nargs="+", help="Sinkhorn epsilon grid (default: the task's)")
    p.add_argument("--tune-seed", type=int, default=100)
    p.add_argument("--no-tune", action="store_true", help="use each method's first grid value, no tuning runs")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--dim", type=int, help="gaussian-ot dimension (default 64)")
    p.add_argument("--data-dir", help="ffhq-alae folder")
    p.add_argument("--config", help="YAML with shared settings on top of the task's")
    p.add_argument("--searched", help="YAML of the searched schedule's keys (e.g. friction.schedule, friction.power) for dmf-searched")
    p.add_argument("--out", default="outputs/compare")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite store in --out)")
    p.add_argument("--experiment", default="dmf-compare")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for flag in ("taus", "epsilons"):
        values = getattr(args, flag)
        if values is not None and not all(math.isfinite(v) and v > 0 for v in values):
            raise ConfigError(f"--{flag}", f"every value must be a finite number > 0, got {values}")
    if any(s < 0 for s in (*args.seeds, args.tune_seed)):
        raise ConfigError("--seeds", f"seeds (and --tune-seed) must be >= 0, got {args.seeds} and {args.tune_seed}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ConfigError("--methods", f"unknown {unknown}; choose from {list(METHODS)}")
    if "dmf-searched" in args.methods and not args.searched:
        raise ConfigError("--searched", "required for the dmf-searched method (a YAML of friction.* keys)")
    check_output_folder(Path(args.out), "--out")


def _shared_keys(args: argparse.Namespace) -> dict[str, Any]:
    base: dict[str, Any] = dict(TASKS[args.task].overrides)
    if args.config:
        base.update(_flatten(read_yaml_mapping(args.config)))
    base.update({"steps": args.steps, "eval_every": max(1, args.steps // 10)})
    if args.dim is not None:
        base["data.dim"] = args.dim
    if args.data_dir is not None:
        base["data.data_dir"] = args.data_dir
    return base


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _grid(task: Task, method: Method, args: argparse.Namespace) -> list[float | None]:
    if method.tuned_key is None:
        return [None]
    if method.tuned_key == "drift.sinkhorn_epsilon":
        return list(args.epsilons or task.epsilons)
    return list(args.taus or task.taus)


def run(argv: Sequence[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    _check_args(args)
    task = TASKS[args.task]
    base = _shared_keys(args)
    methods = {name: METHODS[name] for name in dict.fromkeys(args.methods)}
    if "dmf-searched" in methods:  # DMF with the schedule keys of the --searched YAML
        searched = methods["dmf-searched"]
        methods["dmf-searched"] = replace(
            searched, overrides={**searched.overrides, **_flatten(read_yaml_mapping(args.searched))})
    # Validate every method's config, then its data, before anything runs: a typo fails in a
    # second, not an hour in.
    base_cfg = load_train_config(None, base)
    first = [method_config(base, method, s, args.seeds[0]) for method in methods.values() for s in _grid(task, method, args)]
    # Datasets by their (frozen) config: the runs of one seed share theirs instead of rebuilding it.
    datasets: dict[DataConfig, TranslationData] = {}

    def dataset(cfg: DataConfig) -> TranslationData:
        if cfg not in datasets:
            datasets[cfg] = load_dataset(cfg)
        return datasets[cfg]

    for run_cfg in first:
        dataset(run_cfg.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tracker = SweepTracker(tracking_uri_for(args.tracking_uri, out), args.experiment)
    sweep_name = f"compare-{args.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = tracker.start_sweep(sweep_name, {"task": args.task, "methods": ",".join(methods), "seeds": args.seeds,
                                              **{f"fixed.{k}": v for k, v in base.items()}})

    def tracked(cfg: TrainConfig, name: str, setting: float | None, role: str) -> tuple[RunResult, Any]:
        run_id = tracker.trial_run(f"{name}-{role}-s{cfg.seed}-{setting}", {"method": name, "role": role, **cfg.to_dict()})
        result, trained = run_once(cfg, dataset(cfg.data), name, setting)
        for record in result.history:
            tracker.log_eval(run_id, int(record["step"]), record)
        tracker.finish_trial(run_id, "FAILED" if result.failure else "FINISHED",
                             {**result.metrics, "train_seconds": result.seconds}, reason=result.failure or None)
        return result, trained

    tuning: dict[str, dict[float, float]] = {}
    chosen: dict[str, float | None] = {}
    for name, method in methods.items():
        grid = _grid(task, method, args)
        if len(grid) == 1 or args.no_tune:
            chosen[name], tuning[name] = grid[0], {}
            continue
        print(f"Tuning {method.label} on seed {args.tune_seed}:", flush=True)
        scores = {s: tracked(method_config(base, method, s, args.tune_seed), name, s, "tune")[0] for s in grid}
        tuning[name] = {s: r.metrics.get("val_fd", math.inf) for s, r in scores.items()}
        chosen[name] = min(tuning[name], key=lambda s: tuning[name][s] if math.isfinite(tuning[name][s]) else math.inf)

    print("Evaluation seeds:", flush=True)
    results: dict[str, list[RunResult]] = {}
    panels: dict[str, tuple[Any, Any, Any]] = {}
    for name, method in methods.items():
        results[name] = []
        for seed in args.seeds:
            result, trained = tracked(method_config(base, method, chosen[name], seed), name, chosen[name], "eval")
            results[name].append(result)
            if trained is not None and seed == args.seeds[0]:
                state, data = trained
                source, target = (pool[:4000] for pool in data.held_out("test"))
                panels[f"{method.label}: test FD {result.metrics.get('test_fd', math.nan):.4g}"] = (translate(serving_model(state), source), target, None)

    table = markdown_table(args.task, results, chosen, tuning, base_cfg)
    figures = _figures(results, panels, out)
    (out / "compare.md").write_text(f"# Method comparison on {args.task}\n\n" + table)
    (out / "results.json").write_text(json.dumps({m: [r.__dict__ for r in rs] for m, rs in results.items()}, indent=1))
    tracker.log_artifacts(parent, out / "compare.md")
    tracker.log_artifacts(parent, out / "results.json")
    tracker.log_figures(parent, figures)
    tracker.finish_sweep("FINISHED")
    print(table)
    print(f"wrote {out}/compare.md, results.json, " + ", ".join(p.name for p in figures.values()))
    return table


def _figures(results: dict[str, list[RunResult]], panels: dict[str, tuple[Any, Any, Any]], out: Path) -> dict[str, Path]:
    """Test FD per method (bars with the seed spread), validation FD over training (mean over seeds), test samples."""
    ok = {m: [r for r in rs if not r.failure] for m, rs in results.items()}
    fd = {METHODS[m].label: [r.metrics["test_fd"] for r in rs] for m, rs in ok.items() if rs}
    figures = {"fd_by_method": plot_bars(fd, out / "fd_by_method.png", ylabel="test FD (mean ± std over seeds)")}
    lengths = {len(rs[0].history) for rs in ok.values() if rs}
    if len(lengths) == 1:
        steps = next(rs[0].history for rs in ok.values() if rs)
        curves = [{"step": h["step"], **{f"val FD {METHODS[m].label}": statistics.fmean(r.history[i]["val_fd"] for r in rs)
                                           for m, rs in ok.items() if rs}} for i, h in enumerate(steps)]
        figures["fd_curves"] = plot_curves(curves, [k for k in curves[0] if k != "step"], out / "fd_curves.png",
                                           title="validation FD, mean over seeds", overlay=True)
    if panels:
        figures["samples"] = plot_sample_panels(panels, out / "samples.png")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: run(argv) and None)


if __name__ == "__main__":
    sys.exit(main())

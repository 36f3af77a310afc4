"""One table for every method on one task: DM, DMF, its controls, the drift families and OFM.

The DMF paper's claims are comparisons (DMF vs DM vs OFM at a fraction of OFM's compute), which
only mean something when every method runs through the same trainer with equal care, beside
controls that do what friction might be doing in disguise (LR annealing, EMA), with intervals
over seeds, p-values, each metric's noise floor and the wall time each method needs to reach a
quality; the protocol and the outputs are described in README.md ("Reproductions").

This module trains the runs and wires the command line; the rows and tasks are
:mod:`dmf_ray.experiments.methods`, the tables, results.json and figures
:mod:`dmf_ray.experiments.report`.

    python -m dmf_ray.experiments.compare --task toy
    python -m dmf_ray.experiments.compare --task gaussian-ot --dim 64 --seeds 0 1 2 3 4
    python -m dmf_ray.experiments.compare --task toy --methods dm dmf --out outputs/toy_table1
    python -m dmf_ray.experiments.compare --task gaussian-ot --methods dmf ofm --workers 2
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from dmf_ray.cli import ArgumentParser, check_output_folder, run_cli
from dmf_ray.data import DataConfig, TranslationData, load_dataset
from dmf_ray.errors import ConfigError, TrainingDiverged
from dmf_ray.eval import metrics
from dmf_ray.experiments.methods import (
    DEFAULT_METHODS, EMA, METHODS, TASKS, Method, Task, method_base, method_config, with_ema_decay,
)
from dmf_ray.experiments.report import (
    Comparison, RunResult, comparison_figures, p_values, report, results_json, shared_paragraph, time_to_quality,
)
from dmf_ray.platform.tracking import SweepTracker, tracking_uri_for
from dmf_ray.trainer.config import TrainConfig, load_train_config, read_yaml_mapping
from dmf_ray.trainer.engine import serving_model, translate
from dmf_ray.trainer.run import run_training


def run_once(cfg: TrainConfig, data: TranslationData, name: str, setting: float | None) -> tuple[RunResult, Any]:
    """Train one run on ``data`` (``cfg.data``'s dataset); a diverged run is a row with its reason,
    never a crash of the comparison (then no trained state: None)."""
    start = time.perf_counter()
    try:
        state = run_training(cfg, data)
    except TrainingDiverged as exc:
        seconds = time.perf_counter() - start
        print(f"  {name:<13} setting={setting} seed={cfg.seed}: diverged ({exc})", flush=True)
        return RunResult(name, setting, cfg.seed, {}, seconds, math.nan, 0, [], failure=str(exc)), None
    seconds = time.perf_counter() - start
    final = {k: float(v) for k, v in state.history[-1].items() if k not in ("step", "gamma", "lr")}
    result = RunResult(name, setting, cfg.seed, final, seconds, final["train_seconds"], state.step, state.history)
    print(f"  {name:<13} setting={setting} seed={cfg.seed:<4d} val FD={final.get('val_fd', math.nan):.5f} "
          f"test FD={final.get('test_fd', math.nan):.5f} ({seconds:.0f} s)", flush=True)
    return result, state


@functools.lru_cache(maxsize=8)
def dataset(cfg: DataConfig) -> TranslationData:
    """This process's dataset for a (frozen) data config: the runs of one seed share theirs instead
    of rebuilding it, in the driver and in each worker."""
    return load_dataset(cfg)


Panel = tuple[torch.Tensor, torch.Tensor, None]
Job = tuple[TrainConfig, str, float | None, int]


def train_job(cfg: TrainConfig, name: str, setting: float | None, panel_rows: int) -> tuple[RunResult, Panel | None]:
    """One run as a worker (or the driver) trains it: its row and, when ``panel_rows`` > 0 and it
    did not diverge, that many test rows translated for the samples figure -- tensors travel back
    to the driver, a trained state would not."""
    data = dataset(cfg.data)
    result, state = run_once(cfg, data, name, setting)
    if state is None or panel_rows <= 0:
        return result, None
    source, target = (pool[:panel_rows] for pool in data.held_out("test"))
    return result, (translate(serving_model(state), source), target, None)


def _worker_threads(threads: int) -> None:
    torch.set_num_threads(threads)


class RunPool:
    """Trains compare's runs in this process (``workers`` = 1) or in that many spawned processes,
    each with an equal share of this process's torch threads. Runs are independent (their own
    seeds and data); the driver alone writes MLflow and the tables, so results come back in
    submission order. A worker that dies ends the comparison with its error (BrokenProcessPool)
    rather than a wait. It pays only where the cores are real: on the 2-vCPU CI machine two
    one-thread OFM runs each ran at half speed (gaussian-ot d = 64: ~1,700 s per 10k steps
    side by side against ~880 s alone), so the total time did not change."""

    def __init__(self, workers: int) -> None:
        self._pool: ProcessPoolExecutor | None = None
        if workers > 1:
            self._pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_threads,
                initargs=(max(1, torch.get_num_threads() // workers),))

    def map(self, jobs: Iterable[Job]) -> Iterator[tuple[RunResult, Panel | None]]:
        """Each job's outcome in submission order, as soon as it and those before it are done (so
        the driver records an hour-long run when it ends, not when the last one does)."""
        if self._pool is None:
            return (train_job(*job) for job in jobs)
        futures = [self._pool.submit(train_job, *job) for job in jobs]
        return (f.result() for f in futures)

    def __enter__(self) -> "RunPool":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def true_pool(data: TranslationData) -> torch.Tensor:
    """Independent true target rows: the validation and test pools together (disjoint draws)."""
    return torch.cat([data.val_target, data.test_target])


def noise_floor(data: TranslationData, cfg: TrainConfig) -> tuple[dict[str, tuple[float, float]], int]:
    """Every distribution score between two disjoint true samples of as many rows as an evaluation
    scores (mean, std over 5 pairs), and that row count."""
    pool = true_pool(data)
    rows = min(cfg.eval_samples, data.test_target.shape[0], pool.shape[0] // 2)
    floors = metrics.noise_floors(pool, rows, mixture=data.target_density, with_kid=cfg.eval_kid, seed=cfg.seed)
    return floors, rows


def moment_matched_scores(data: TranslationData, cfg: TrainConfig) -> dict[str, float]:
    """The single Gaussian with the train target's mean and covariance, scored on both held-out
    splits like a method's samples (no training; no transport cost: it is not a map of the source)."""
    scores: dict[str, float] = {}
    for offset, split in enumerate(("val", "test")):
        source, target = data.held_out(split)
        draws = metrics.moment_matched_gaussian(data.train_target, min(cfg.eval_samples, source.shape[0]),
                                                seed=2 * cfg.seed + offset)
        found = metrics.distribution_scores(draws, target[: cfg.eval_samples], data.target_density, cfg.eval_kid, cfg.seed)
        scores.update({f"{split}_{k}": v for k, v in found.items()})
    return scores


# --- Command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m dmf_ray.experiments.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="toy")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help=f"any of {', '.join(METHODS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--taus", type=float, nargs="+", help="bandwidth grid (default: the task's)")
    p.add_argument("--epsilons", type=float, nargs="+", help="Sinkhorn epsilon grid (default: the task's)")
    p.add_argument("--ofm-lrs", type=float, nargs="+", help="OFM learning-rate grid (default: the task's)")
    p.add_argument("--ofm-steps", type=int, help="OFM's training steps (default: its paper's, 10000)")
    p.add_argument("--ema-decay", type=float, default=EMA["optim.ema_decay"],
                   help="decay of the EMA controls (default the released recipe's 0.999)")
    p.add_argument("--tune-seed", type=int, default=100)
    p.add_argument("--no-tune", action="store_true", help="use each method's first grid value, no tuning runs")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--evals", type=int, default=10,
                   help="validation evaluations per run, evenly spaced (OFM too): the time-to-quality resolution")
    p.add_argument("--quality-threshold", type=float, help="time to quality: seconds to reach val_fd <= this")
    p.add_argument("--quality-multiple", type=float, default=5.0,
                   help="default threshold: this multiple of the FD noise floor's mean")
    p.add_argument("--dim", type=int, help="gaussian-ot dimension (default 64)")
    p.add_argument("--data-dir", help="ffhq-alae folder")
    p.add_argument("--config", help="YAML with shared settings on top of the task's")
    p.add_argument("--searched", help="best_params.yaml of a sweep (friction.* keys, and the seeds it was chosen on) for dmf-searched")
    p.add_argument("--out", default="outputs/compare")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite store in --out)")
    p.add_argument("--experiment", default="dmf-compare")
    p.add_argument("--workers", type=int, default=1,
                   help="runs trained at once, each in its own process with an equal share of the threads (default 1)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for flag in ("taus", "epsilons", "ofm_lrs"):
        values = getattr(args, flag)
        if values is not None and not all(math.isfinite(v) and v > 0 for v in values):
            raise ConfigError(f"--{flag.replace('_', '-')}", f"every value must be a finite number > 0, got {values}")
    for flag in ("quality_threshold", "quality_multiple"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--{flag.replace('_', '-')}", f"must be a finite number > 0, got {value}")
    for flag in ("workers", "evals"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag}", f"must be >= 1, got {getattr(args, flag)}")
    if args.ofm_steps is not None and args.ofm_steps < 2:
        raise ConfigError("--ofm-steps", f"must be >= 2, got {args.ofm_steps}")
    if any(s < 0 for s in (*args.seeds, args.tune_seed)):
        raise ConfigError("--seeds", f"seeds (and --tune-seed) must be >= 0, got {args.seeds} and {args.tune_seed}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ConfigError("--methods", f"unknown {unknown}; choose from {list(METHODS)}")
    if "dmf-searched" in args.methods and not args.searched:
        raise ConfigError("--searched", "required for the dmf-searched method (a YAML of friction.* keys)")
    check_output_folder(Path(args.out), "--out")


SWEEP_SEED_KEYS = ("seed", "data.seed")
PANEL_ROWS = 4000  # test rows translated for the samples figure (first evaluation seed)


def searched_method(args: argparse.Namespace) -> Method:
    """dmf-searched: DMF with the --searched YAML's keys, less the seeds the sweep chose them on,
    which no evaluation (or tuning) seed may repeat -- a schedule re-scored on its selection seed
    carries the selection's bias."""
    keys = _flatten(read_yaml_mapping(args.searched))
    sweep_seeds = {int(keys.pop(k)) for k in SWEEP_SEED_KEYS if k in keys}
    reused = sorted(sweep_seeds & {*args.seeds, args.tune_seed})
    if reused:
        raise ConfigError("--seeds", f"{reused} chose the schedule in {args.searched} (the sweep's seeds "
                                     f"{sorted(sweep_seeds)}); evaluate and tune on other seeds")
    base = METHODS["dmf-searched"]
    return replace(base, overrides={**base.overrides, **keys})


def _shared_keys(args: argparse.Namespace) -> dict[str, Any]:
    base: dict[str, Any] = dict(TASKS[args.task].overrides)
    if args.config:
        base.update(_flatten(read_yaml_mapping(args.config)))
    base.update({"steps": args.steps, "eval_every": max(1, args.steps // args.evals)})
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
    grids = {None: [None], "drift.sinkhorn_epsilon": args.epsilons or task.epsilons,
             "optim.lr": args.ofm_lrs or task.ofm_lrs}
    return list(grids.get(method.tuned_key, args.taus or task.taus))


def run(argv: Sequence[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    _check_args(args)
    task = TASKS[args.task]
    base = _shared_keys(args)
    methods = {name: with_ema_decay(METHODS[name], args.ema_decay) for name in dict.fromkeys(args.methods)}
    if "dmf-searched" in methods:
        methods["dmf-searched"] = searched_method(args)
    bases = {name: method_base(base, method, task, args.ofm_steps) for name, method in methods.items()}
    # Validate every method's config, then its data, before anything runs: a typo fails in a
    # second, not an hour in.
    base_cfg = load_train_config(None, base)
    first = [method_config(bases[name], method, s, args.seeds[0]) for name, method in methods.items()
             for s in _grid(task, method, args)]
    for run_cfg in first:
        dataset(run_cfg.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tracker = SweepTracker(tracking_uri_for(args.tracking_uri, out), args.experiment)
    sweep_name = f"compare-{args.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = tracker.start_sweep(sweep_name, {"task": args.task, "methods": ",".join(methods), "seeds": args.seeds,
                                              "workers": args.workers, **{f"fixed.{k}": v for k, v in base.items()}})

    def tracked(jobs: list[Job], role: str) -> Iterator[tuple[RunResult, Panel | None]]:
        """Train ``jobs``, recording each as an MLflow run once it is done (the driver's job alone)."""
        for (cfg, name, setting, _), (result, panel) in zip(jobs, pool.map(jobs)):
            run_id = tracker.trial_run(f"{name}-{role}-s{cfg.seed}-{setting}", {"method": name, "role": role, **cfg.to_dict()})
            for record in result.history:
                tracker.log_eval(run_id, int(record["step"]), record)
            tracker.finish_trial(run_id, "FAILED" if result.failure else "FINISHED",
                                 {**result.metrics, "wall_seconds": result.seconds}, reason=result.failure or None)
            yield result, panel

    with RunPool(args.workers) as pool:
        grids = {name: _grid(task, method, args) for name, method in methods.items()}
        chosen: dict[str, float | None] = {name: grid[0] for name, grid in grids.items()}
        tuned = [name for name, grid in grids.items() if len(grid) > 1 and not args.no_tune]
        tuning: dict[str, dict[float, float]] = {name: {} for name in methods}
        if tuned:
            print(f"Tuning {', '.join(methods[n].label for n in tuned)} on seed {args.tune_seed}:", flush=True)
        jobs = [(method_config(bases[name], methods[name], s, args.tune_seed), name, s, 0)
                for name in tuned for s in grids[name]]
        for (_, name, setting, _), (result, _) in zip(jobs, tracked(jobs, "tune")):
            tuning[name][setting] = result.metrics.get("val_fd", math.inf)
        for name in tuned:
            chosen[name] = min(tuning[name], key=lambda s: tuning[name][s] if math.isfinite(tuning[name][s]) else math.inf)

        print("Evaluation seeds:", flush=True)
        jobs = [(method_config(bases[name], method, chosen[name], seed), name, chosen[name],
                 PANEL_ROWS if seed == args.seeds[0] else 0) for name, method in methods.items() for seed in args.seeds]
        results: dict[str, list[RunResult]] = {name: [] for name in methods}
        panels: dict[str, Panel] = {}
        for (_, name, _, _), (result, panel) in zip(jobs, tracked(jobs, "eval")):
            results[name].append(result)
            if panel is not None:
                panels[f"{methods[name].label}: test FD {result.metrics.get('test_fd', math.nan):.4g}"] = panel

    seed_cfgs = [load_train_config(None, {**base, "seed": s, "data.seed": s}) for s in args.seeds]
    floors, floor_rows = noise_floor(dataset(seed_cfgs[0].data), seed_cfgs[0])
    control = [{"seed": c.seed, "metrics": moment_matched_scores(dataset(c.data), c)} for c in seed_cfgs] if task.moment_control else []
    threshold = args.quality_threshold or args.quality_multiple * floors["fd"][0]
    ofm_cfg = method_config(bases["ofm"], methods["ofm"], chosen["ofm"], args.seeds[0]) if "ofm" in methods else None
    p_metric = f"test_{task.metrics[0]}"
    cmp = Comparison(args.task, results, chosen, tuning, floors, floor_rows, control, p_values(results, p_metric), p_metric,
                     time_to_quality(results, f"val_{task.metrics[0]}", threshold),
                     shared_paragraph(base_cfg, ofm_cfg, args, tuning, {n: m.label for n, m in methods.items()}),
                     {n: m.label for n, m in methods.items()})
    text = report(cmp)
    (out / "compare.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results_json(cmp, methods, bases), indent=1))
    figures = comparison_figures(cmp, panels, out)
    tracker.log_artifacts(parent, out / "compare.md")
    tracker.log_artifacts(parent, out / "results.json")
    tracker.log_figures(parent, figures)
    tracker.finish_sweep("FINISHED")
    print(text)
    print(f"wrote {out}/compare.md, results.json, " + ", ".join(p.name for p in figures.values()))
    return text


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: run(argv) and None)


if __name__ == "__main__":
    sys.exit(main())

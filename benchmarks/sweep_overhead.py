"""Per-trial overhead of a Tune trial against the plain trainer, and 2 Train workers vs 1.

All runs share one process and one local Ray, so the ratios compare like with like:

1. the same toy config trained by ``engine.train`` in this process (the baseline);
2. by a one-trial Tune sweep whose single-worker trial trains in the trial itself (all CPUs;
   the default path, :mod:`dmf_ray.platform.trial`);
3. by a one-trial sweep whose trial fits a 1-worker TorchTrainer (the path single-worker trials
   took before; ``SweepPlan(train_in_trial=False)``);
4. by a one-trial sweep whose trial fits a 2-worker TorchTrainer (CPUs / 2 each; the path of
   every multi-worker trial);
5. what one more trial costs inside a sweep (in-trial path): a sweep's start-up is paid once and
   actor reuse spares later trials the actor start, so a one-trial sweep overstates the per-trial
   cost. A 1-trial and a K-trial sweep (seeds from 0 .. K-1, one trial at a time) give the marginal
   ``(wall_K - wall_1) / (K - 1)``; the 1-trial sweep is timed again right before the K-trial one
   so that both find the driver equally warm (the first sweep of the process pays first imports).

Each sweep is tracked in its own sqlite MLflow store, created before the clock starts (a sweep
creates it once, not per trial); the time covers Tune's start, the trial, its MLflow run with
metrics, config and plots, and Tune's end -- not the champion registration.

Then data-parallel throughput: the same global batch on 1 worker (2 CPUs) or 2 workers (1 CPU
each, half the batch each). Start-up is removed by timing a long and a short run and dividing
the step difference by the time difference.

    python benchmarks/sweep_overhead.py [--steps 1000] [--cpus 1] [--trials 4] [--skip-two-workers]

``--skip-two-workers`` leaves out the slow 2-worker rows (the 2-worker trial and the data-parallel
throughput table).

``--cpus`` (default: all) is the CPU budget of every run: the plain run's torch threads, the
trial's CPUs (split between workers). On a machine other processes share, ``--cpus 1`` keeps a
run from spinning two OpenMP threads against a busy core (which can slow the toy step 5-10x).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import torch
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

from dmf_ray.trainer.config import load_train_config
from dmf_ray.data import load_dataset
from dmf_ray.platform.distributed import worker_loop
from dmf_ray.trainer.engine import train
from dmf_ray.platform.search_space import search_space_from_dict
from dmf_ray.platform.plan import SweepPlan
from dmf_ray.platform.sweep import RAY_ENV, build_tuner, open_tracker
from dmf_ray.platform.tracking import tracking_uri_for

def overrides(steps: int, batch: int) -> dict:
    return {"steps": steps, "eval_every": max(1, steps // 4), "batch_size": batch, "eval_samples": 10_000,
            "data.n_test": 10_000, "model.width": 128}


def fit_seconds(over: dict, workers: int, cpus: float, storage: Path) -> float:
    cfg = load_train_config(None, over)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"train": cfg},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus / workers}),
        run_config=ray.train.RunConfig(storage_path=str(storage), name=f"w{workers}-{time.time_ns()}"),
    )
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def tune_seconds(over: dict, storage: Path, workers: int, cpus: float, in_trial: bool = True, trials: int = 1) -> float:
    """Wall seconds of a Tune sweep of ``trials`` trials of ``over`` (seeds drawn from 0 .. trials - 1,
    one trial at a time) on ``workers`` workers each (CPUs split)."""
    spec = search_space_from_dict({
        "metric": "val_fd", "mode": "min", "num_samples": trials, "max_concurrent": 1, "scheduler": {"type": "none"},
        "resources": {"workers": workers, "cpus_per_worker": cpus / workers, "gpus_per_worker": 0},
        "fixed": over, "params": {"seed": {"type": "categorical", "choices": list(range(trials))}},
    })
    name = f"bench-{time.time_ns()}"
    (storage / name).mkdir()
    plan = SweepPlan(spec=spec, base=dict(over), base_config=load_train_config(None, over), name=name,
                     storage_path=str(storage / name), tracking_uri=tracking_uri_for(None, storage / name),
                     experiment="bench", model_name="bench", train_in_trial=in_trial)
    open_tracker(plan)  # the sweep's store, experiment and parent run
    start = time.perf_counter()
    build_tuner(plan, resume=False).fit()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--cpus", type=float, default=float(os.cpu_count() or 2))
    p.add_argument("--trials", type=int, default=4, help="K of the marginal-trial sweep (>= 2)")
    p.add_argument("--skip-two-workers", action="store_true", help="leave out the slow 2-worker rows")
    args = p.parse_args()
    if args.trials < 2:
        p.error("--trials must be >= 2")
    cpus = args.cpus
    torch.set_num_threads(max(1, int(cpus)))
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(address="local", runtime_env={"env_vars": RAY_ENV}, log_to_driver=False)
    storage = Path(tempfile.mkdtemp(prefix="dmf-bench-"))
    over = overrides(args.steps, args.batch)

    cfg = load_train_config(None, over)
    data = load_dataset(cfg.data)
    start = time.perf_counter()
    train(cfg, data)
    plain = time.perf_counter() - start
    rows = [
        ("plain engine.train (this process)", plain),
        ("Tune trial, trains in the trial (1 worker), MLflow", tune_seconds(over, storage, 1, cpus)),
        ("Tune trial -> TorchTrainer, 1 worker, MLflow (the old 1-worker path)", tune_seconds(over, storage, 1, cpus, in_trial=False)),
    ]
    if not args.skip_two_workers:
        rows.append(("Tune trial -> TorchTrainer, 2 workers, MLflow", tune_seconds(over, storage, 2, cpus)))
    rows.append((f"Tune trial in a sweep (marginal, {args.trials} trials)", marginal_trial_seconds(over, storage, cpus, args.trials)))
    print(f"{cpus:g} of {os.cpu_count()} CPUs; toy, {args.steps} steps, batch {args.batch}, {args.steps // over['eval_every']} evaluations\n")
    print("| how | wall s | ratio to plain | overhead s |")
    print("|---|---|---|---|")
    for name, secs in rows:
        print(f"| {name} | {secs:.1f} | {secs / plain:.2f}x | {secs - plain:+.1f} |", flush=True)

    if not args.skip_two_workers:
        print_data_parallel(args.steps, args.batch, cpus, storage)
    ray.shutdown()


def marginal_trial_seconds(over: dict, storage: Path, cpus: float, trials: int) -> float:
    """What one more in-trial trial adds to a sweep: (wall of ``trials`` - wall of 1) / (trials - 1);
    the 1-trial sweep runs right before the long one, so both find the driver equally warm."""
    one = tune_seconds(over, storage, 1, cpus)
    many = tune_seconds(over, storage, 1, cpus, trials=trials)
    return (many - one) / (trials - 1)


def print_data_parallel(steps: int, batch: int, cpus: float, storage: Path) -> None:
    """Steps/s of 1 worker x all CPUs and 2 workers x half, start-up removed (a long minus a short run)."""
    short = max(50, steps // 5)
    print(f"\nData-parallel throughput (global batch {batch}; steps/s from {steps} vs {short} steps):\n")
    print("| workers | CPUs each | per-worker batch | steps/s | samples/s | vs 1 worker |")
    print("|---|---|---|---|---|---|")
    rates = {}
    for workers in (1, 2):
        per_worker = batch // workers
        long_s = fit_seconds(overrides(steps, per_worker), workers, cpus, storage)
        short_s = fit_seconds(overrides(short, per_worker), workers, cpus, storage)
        rates[workers] = (steps - short) / (long_s - short_s)
        print(f"| {workers} | {cpus / workers:g} | {per_worker} | {rates[workers]:.1f} | {rates[workers] * batch:.0f} | "
              f"{rates[workers] / rates[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

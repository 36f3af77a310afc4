"""Wall time to reach FD <= 0.005 on the DMF Table 1 toy, DM vs DMF, same settings and process.

Evaluates every ``--eval-every`` steps (evaluation time excluded from the clock) and reports the
first step and training seconds at which the held-out 2-D FD drops to the threshold, plus the
final FD. DM and DMF alternate in the same process so machine noise hits both alike.

    python benchmarks/toy_time_to_fd.py [--seeds 0 1 2] [--steps 1000] [--threshold 0.005]
"""

from __future__ import annotations

import argparse
import time

import torch

from dmf_ray.trainer.config import load_train_config
from dmf_ray.data import load_dataset
from dmf_ray.trainer.engine import build_state, evaluate, train_step


def time_to_threshold(overrides: dict, threshold: float) -> tuple[int | None, float | None, float, float]:
    """(first step with FD <= threshold, train seconds to it, final FD, total train seconds)."""
    cfg = load_train_config(None, overrides)
    data = load_dataset(cfg.data)
    state = build_state(cfg, data)
    torch.set_flush_denormal(True)
    train_seconds, hit_step, hit_seconds, fd = 0.0, None, None, float("nan")
    while state.step < cfg.steps:
        start = time.perf_counter()
        for _ in range(min(cfg.eval_every, cfg.steps - state.step)):
            train_step(state, cfg, data)
        train_seconds += time.perf_counter() - start
        fd = evaluate(state.model, data, cfg)["val_fd"]
        if hit_step is None and fd <= threshold:
            hit_step, hit_seconds = state.step, train_seconds
    return hit_step, hit_seconds, fd, train_seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--tau", type=float, default=0.2)
    p.add_argument("--threshold", type=float, default=0.005)
    args = p.parse_args()
    print(f"threshold FD <= {args.threshold}; {args.steps} steps; tau {args.tau}; torch threads {torch.get_num_threads()}")
    print("| method | seed | first step with FD <= thr | train s to it | final FD | train s total |")
    print("|---|---|---|---|---|---|")
    for seed in args.seeds:
        for method, schedule in (("DM", "none"), ("DMF (linear)", "linear")):
            overrides = {"steps": args.steps, "eval_every": args.eval_every, "seed": seed, "data.seed": seed,
                         "friction.schedule": schedule, "drift.temperatures": [args.tau]}
            step, secs, fd, total = time_to_threshold(overrides, args.threshold)
            hit = "never" if step is None else str(step)
            print(f"| {method} | {seed} | {hit} | {'–' if secs is None else f'{secs:.1f}'} | {fd:.4f} | {total:.1f} |", flush=True)


if __name__ == "__main__":
    main()

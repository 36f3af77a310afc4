"""Second-order friction for a network: the velocity buffer (what the trainer does) against the
realised-velocity form of appendix B, on the DMF Table 1 toy under Adam.

Issue 12.5 asks which velocity a network should carry. Three targets for row x_i = f(s):

- ``buffer`` (the trainer, :class:`dmf_ray.core.friction.VelocityBuffer`): x + v with
  v <- (1 - gamma) v + V(x), a decayed sum of the row's past drifts, updated when it is visited;
- ``realised-visit``: x + V(x) + (1 - gamma)(x - x_prev), x_prev the row's output at its previous
  visit (the first visit has no velocity);
- ``realised-step``: the same with x_prev = f_{theta_{i-1}}(s), the previous step's weights on
  this batch (a velocity every step, as for a particle).

For particles with full batches and the exact SGD step all three are eq. 21 (tests/test_particles.py);
for a network they differ. The table reports the final validation FD, or the step where a run's
loss or samples went non-finite or its FD exceeded 100 (counted as diverged).

    python benchmarks/second_order_velocity.py [--seeds 0 1 2] [--steps 1000]
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

from dmf_ray.core.drift import target_loss
from dmf_ray.core.families import family_drift
from dmf_ray.core.friction import gamma
from dmf_ray.data import load_dataset
from dmf_ray.errors import TrainingDiverged
from dmf_ray.trainer.config import load_train_config
from dmf_ray.trainer.engine import apply_update, build_state, evaluate, train_step

VARIANTS = ("buffer", "realised-visit", "realised-step")
DIVERGED_FD = 100.0


def realised_step(state, cfg, data, previous: dict) -> None:
    """One step whose target adds the realised move (1 - gamma)(x - x_prev) to the drift."""
    g = gamma(cfg.friction, state.step, cfg.steps)
    idx, source = data.source_batch(cfg.batch_size, state.sampler, state.step)
    _, pos = data.target_batch(cfg.positives_per_step, state.sampler, state.step)
    x = state.model(source)
    with torch.no_grad():
        if previous["kind"] == "realised-step":
            x_prev = previous["model"](source) if previous["model"] is not None else x.detach()
            previous["model"] = copy.deepcopy(state.model)
        else:
            seen = previous["seen"][idx]
            x_prev = torch.where(seen[:, None], previous["outputs"][idx], x.detach())
            previous["outputs"][idx] = x.detach()
            previous["seen"][idx] = True
    result = family_drift(x.detach(), pos, cfg.drift)
    displacement = result.drift + (1.0 - g) * (x.detach() - x_prev)
    apply_update(state, cfg, target_loss(x, displacement, result.scale))


def run(variant: str, seed: int, steps: int, eval_every: int) -> tuple[float, int | None, float]:
    """(final val FD, step it diverged at or None, train seconds)."""
    cfg = load_train_config(None, {"steps": steps, "eval_every": eval_every, "seed": seed, "data.seed": seed,
                                   "friction.order": "second", "friction.schedule": "linear",
                                   "eval_samples": 10_000, "data.n_test": 10_000})
    data = load_dataset(cfg.data)
    state = build_state(cfg, data)
    previous = {"kind": variant, "model": None, "outputs": torch.zeros_like(data.train_source),
                "seen": torch.zeros(data.train_source.shape[0], dtype=torch.bool)}
    seconds, fd = 0.0, math.nan
    while state.step < steps:
        start = time.perf_counter()
        for _ in range(eval_every):
            if variant == "buffer":
                train_step(state, cfg, data)
            else:
                realised_step(state, cfg, data, previous)
        seconds += time.perf_counter() - start
        try:
            fd = evaluate(state.model, data, cfg)["val_fd"]
        except TrainingDiverged:
            return math.nan, state.step, seconds
        if not math.isfinite(fd) or fd > DIVERGED_FD:
            return fd, state.step, seconds
    return fd, None, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=100)
    args = p.parse_args()
    torch.set_flush_denormal(True)
    print(f"toy, second order, linear friction, Adam 1e-3, {args.steps} steps; torch threads {torch.get_num_threads()}")
    print("| velocity | seed | final val FD | diverged at step | train s |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        for variant in VARIANTS:
            fd, diverged, seconds = run(variant, seed, args.steps, args.eval_every)
            print(f"| {variant} | {seed} | {fd:.4g} | {'–' if diverged is None else diverged} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()

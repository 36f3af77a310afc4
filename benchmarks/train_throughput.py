"""Training steps per second of the single-process trainer on the toy and Gaussian-OT configs.

Why: the hot loop (sampling, forward, drift, friction, backward, optimiser) is what a sweep
trial spends its time in. Steps are timed after a warm-up, with one evaluation at the very end
(excluded), so the number is the loop's own speed. Run it on two checkouts to compare code
versions on the same machine; ``--device cuda`` measures a GPU.

    python benchmarks/train_throughput.py                    # toy and gaussian-ot (d = 64)
    python benchmarks/train_throughput.py --configs ffhq-scale --device cuda
    python benchmarks/train_throughput.py --configs ffhq-scale ffhq-scale-dense --steps 10
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

CONFIGS: dict[str, dict[str, object]] = {
    # The trainer's default toy run (DMF Table 1 task): noise MLP 128 x 3, batch 1024.
    "toy": {"data.name": "toy"},
    # Gaussian -> Gaussian OT in d = 64 with a residual MLP, batch 1024.
    "gaussian-ot": {"data.name": "gaussian-ot", "data.dim": 64, "model.kind": "residual", "model.width": 256},
    # FFHQ-scale shapes on synthetic Gaussians: 512-d residual MLP, batch 4096, reference drift.
    "ffhq-scale": {"data.name": "gaussian-ot", "data.dim": 512, "model.kind": "residual", "model.width": 1024,
                   "batch_size": 4096, "drift.preset": "reference"},
}
# The same with every drift product dense (what CUDA runs): on CPU, the ratio to "ffhq-scale"
# is what the sparse above-floor drift path gains in training, measured in one process.
CONFIGS["ffhq-scale-dense"] = {**CONFIGS["ffhq-scale"], "drift.sparse_max_density": 0.0}


def steps_per_second(name: str, steps: int, device: str, warmup: int = 5,
                     overrides: dict[str, object] | None = None) -> float:
    """Steps/s of ``engine.train_step`` for one config after ``warmup`` steps; ``overrides``
    (dotted keys) are applied on top of the named config."""
    from dmf_ray.trainer.config import load_train_config
    from dmf_ray.data import load_dataset
    from dmf_ray.trainer.engine import build_state, train_step

    cfg = load_train_config(None, {"steps": steps + warmup, "data.n_train": 20_000, "data.n_test": 1000,
                                   "device": device, **CONFIGS[name], **(overrides or {})})
    data = load_dataset(cfg.data)
    if hasattr(data, "with_train_pools_on"):  # older checkouts copy each batch from the host
        data = data.with_train_pools_on(device)
    torch.set_flush_denormal(True)
    state = build_state(cfg, data)
    for _ in range(warmup):
        stats = train_step(state, cfg, data)
    stats.loss.item()
    start = time.perf_counter()
    for _ in range(steps):
        stats = train_step(state, cfg, data)
    stats.loss.item()  # wait for the device before stopping the clock
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["toy", "gaussian-ot"], choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--label", default="this checkout")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}")
    print("| code | config | steps | steps/s |")
    print("|---|---|---|---|")
    for name in args.configs:
        rate = steps_per_second(name, args.steps, args.device)
        print(f"| {args.label} | {name} | {args.steps} | {rate:.3g} |", flush=True)


if __name__ == "__main__":
    main()

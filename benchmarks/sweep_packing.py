"""Sweep packing: trials/hour of a search space at 1, 2 and 4 concurrent trials on this machine.

Each trial gets ``CPUs / concurrency`` CPUs (fractional CPUs pack several trials onto the same
cores; ``--gpus-per-worker`` does the same for a GPU), and the same space with the same sampler
seed runs once per concurrency level through the real CLI path (local Ray, Optuna, MLflow in
sqlite; the space's single-worker trials train inside their Tune trials). The ratio column compares with the 1-at-a-time run of the same process. ASHA stops
weak trials early, so steps/hour (the sum of the steps each trial trained) is printed beside
trials/hour.

    python benchmarks/sweep_packing.py [--space search_spaces/friction.yaml] [--num-samples 4]
    python benchmarks/sweep_packing.py --gpus-per-worker 0.25 --levels 1 2 4   # on a GPU node
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from dmf_ray.tune import run


def sweep_once(space: str, samples: int, concurrent: int, cpus: float, gpus: float | None, root: str) -> tuple[float, int, int]:
    """(wall seconds, trials finished or stopped, steps trained in all trials) of one sweep."""
    argv = ["--space", space, "--num-samples", str(samples), "--max-concurrent", str(concurrent),
            "--cpus-per-worker", f"{cpus / concurrent:.3f}", "--storage-path", os.path.join(root, f"c{concurrent}"),
            "--name", f"packing-c{concurrent}", "--experiment", f"packing-c{concurrent}"]
    if gpus is not None:
        argv += ["--gpus-per-worker", str(gpus)]
    start = time.perf_counter()
    trials = run(argv).trials
    wall = time.perf_counter() - start
    return wall, len(trials), int(trials["step"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="search_spaces/friction.yaml")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--gpus-per-worker", type=float)
    args = parser.parse_args()
    cpus = float(os.cpu_count() or 2)
    table = []
    with tempfile.TemporaryDirectory() as root:
        for level in args.levels:
            wall, trials, steps = sweep_once(args.space, args.num_samples, level, cpus, args.gpus_per_worker, root)
            table.append((level, cpus / level, wall, trials, steps))
    base = table[0][3] / table[0][2]
    print(f"\n{platform.machine()}, {int(cpus)} CPUs; {args.space}, {args.num_samples} trials per sweep")
    print("| concurrent trials | CPUs per trial | wall s | trials | steps trained | trials/hour | steps/hour | vs first row |")
    print("|---|---|---|---|---|---|---|---|")
    for level, per_trial, wall, trials, steps in table:
        rate = trials / wall
        print(f"| {level} | {per_trial:.2f} | {wall:.0f} | {trials} | {steps} | {3600 * rate:.0f} | "
              f"{3600 * steps / wall:.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()

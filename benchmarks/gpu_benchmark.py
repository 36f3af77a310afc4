"""Drift TFLOP/s against the device's measured matmul peak, per matmul precision, and training steps/s.

For each ``drift.matmul_precision`` (fp32, tf32, bf16) it measures, on one device:
the plain matmul throughput of that precision (the peak to compare with), the ``reference``
drift's throughput (FLOPs: 2*B*N*D for distances + 2*B*N*D per temperature, N = B + M), its
share of the peak, its speed-up over fp32, and its error against the fp32 drift (relative L2
and max-abs / max). Then training steps/s of the FFHQ-scale config (512-d residual MLP,
batch 4096) per precision. Runs on CPU too (small sizes), which is how the code path is
tested without a GPU.

    python benchmarks/gpu_benchmark.py --device cuda            # B = M = 8192, D = 512
    python benchmarks/gpu_benchmark.py --device cpu --size 1024 --train-steps 5
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drift_benchmark import _time  # noqa: E402 - the sibling benchmarks
from train_throughput import steps_per_second  # noqa: E402

from dmf_ray.core.drift import MATMUL_PRECISIONS, PRESETS  # noqa: E402
from dmf_ray.core.drift_fast import compute_drift  # noqa: E402

TEMPS = len(PRESETS["reference"]["temperatures"])


def _best_seconds(fn, device: torch.device, repeats: int = 5, warmup: bool = True) -> float:
    """Best of ``repeats`` after a warm-up, waiting for the device after every call."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    return _time(fn, repeats, sync, warmup)


def matmul_peak(precision: str, size: int, device: torch.device) -> float:
    """FLOP/s of a (T*size x 2*size) @ (2*size x 512) product at ``precision`` -- the drift's own shape."""
    a = torch.randn(TEMPS * size, 2 * size, device=device)
    b = torch.randn(2 * size, 512, device=device)
    if precision == "bf16":
        a, b = a.bfloat16(), b.bfloat16()
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        seconds = _best_seconds(lambda: torch.mm(a, b), device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=8192, help="B = M")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--train-batch", type=int, default=4096, help="batch of the training rows (FFHQ scale: 4096)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_flush_denormal(True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}; drift: reference preset, B = M = {args.size}, D = {args.dim}, T = {TEMPS}")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(args.size, args.dim, device=device, generator=g)
    y = torch.randn(args.size, args.dim, device=device, generator=g) + 0.5
    flops = 2 * args.size * 2 * args.size * args.dim * (1 + TEMPS)
    # every precision through the dense products (what CUDA runs; on CPU fp32 would otherwise
    # take the sparse above-floor path and the rows would compare two algorithms)
    dense = dict(preset="reference", sparse_max_density=0.0)
    reference = None  # the fp32 drift (fp32 is the first precision)
    print("| precision | matmul peak TFLOP/s | drift s | drift TFLOP/s | % of peak | vs fp32 | rel. L2 error | max error / max |")
    print("|---|---|---|---|---|---|---|---|")
    base_seconds = None
    for precision in MATMUL_PRECISIONS:
        peak = matmul_peak(precision, args.size, device)
        drift = partial(compute_drift, x, y, matmul_precision=precision, **dense)
        v = drift()  # also the warm-up
        seconds = _best_seconds(drift, device, 3, warmup=False)
        base_seconds = base_seconds or seconds
        reference = v if reference is None else reference
        rel = float((v - reference).norm() / reference.norm())
        worst = float((v - reference).abs().max() / reference.abs().max())
        print(f"| {precision} | {peak / 1e12:.1f} | {seconds:.4f} | {flops / seconds / 1e12:.2f} | "
              f"{100 * flops / seconds / peak:.0f}% | {base_seconds / seconds:.2f}x | {rel:.1e} | {worst:.1e} |", flush=True)
    print("\n| config | precision | steps/s |\n|---|---|---|")
    for precision in MATMUL_PRECISIONS:
        rate = steps_per_second("ffhq-scale", args.train_steps, args.device,
                                overrides={"drift.matmul_precision": precision, "batch_size": args.train_batch})
        print(f"| ffhq-scale (512-d residual MLP, batch {args.train_batch}) | {precision} | {rate:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Drift throughput and peak memory over a grid of (B, M, D, temperatures), vs a naive dense baseline.

Each configuration runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its
own; "extra" memory is the peak minus the resident size just before the call (inputs included
in the baseline). Throughput counts the FLOPs of the algorithm's matrix products:
2*B*N*D for the distances plus 2*B*N*D per temperature for the weighted sums (N = B + M).
The naive baseline (dmf_ray.drift_naive, the released algorithm transcribed densely) runs in
the same subprocess, so the ratio is robust to machine noise.

    python benchmarks/drift_benchmark.py            # default grid (about 3 minutes on 2 cores)
    python benchmarks/drift_benchmark.py --large    # adds B = M = 16384, D = 512 (chunked)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

GRID = [  # (B, M, D, temperatures)
    (512, 512, 2, 1),
    (1024, 1024, 2, 1),
    (2048, 2048, 64, 3),
    (1024, 1024, 512, 3),
    (2048, 2048, 512, 1),
    (2048, 2048, 512, 3),
    (4096, 4096, 512, 3),
]
LARGE = [(16384, 16384, 512, 3)]
TEMPS = (0.02, 0.05, 0.2)
NAIVE_MAX_ELEMENTS = 2**26  # the naive baseline materialises ~8 B x N matrices; skip it above this


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (also allocator and thread pools)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(b: int, m: int, d: int, n_temps: int, impl: str, chunk: int | None = None) -> dict:
    """Run in a subprocess: time and peak extra memory of one implementation."""
    import torch

    from dmf_ray.drift import compute_drift
    from dmf_ray.drift_naive import naive_reference_drift

    torch.set_flush_denormal(True)
    g = torch.Generator().manual_seed(0)
    gen = torch.randn(b, d, generator=g)
    pos = torch.randn(m, d, generator=g) + 0.5
    temps = TEMPS[:n_temps]
    if impl == "ours":
        fn = lambda: compute_drift(gen, pos, preset="reference", temperatures=temps, chunk_size=chunk)  # noqa: E731
    else:
        fn = lambda: naive_reference_drift(gen, pos, temperatures=temps)  # noqa: E731
    before = _rss_mib()
    repeats = 1 if b * (b + m) > 2**26 else 3
    seconds = _time(fn, repeats)
    return {"seconds": seconds, "peak_extra_mib": _rss_mib() - before}


def _run_child(b: int, m: int, d: int, t: int, impl: str, chunk: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps([b, m, d, t, impl, chunk])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def matmul_gflops() -> float:
    """Measured fp32 matmul throughput of this machine (the ceiling for the drift's products)."""
    import torch

    a, bm = torch.randn(2048, 512), torch.randn(512, 4096)
    seconds = _time(lambda: a @ bm, 5)
    return 2 * 2048 * 512 * 4096 / seconds / 1e9


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--large", action="store_true", help="add the B = M = 16384, D = 512 row")
    p.add_argument("--chunks", type=int, nargs="*", help="only: peak memory of B = M = 8192, D = 512 per chunk size")
    p.add_argument("--child")
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(*json.loads(args.child))))
        return
    import torch

    peak = matmul_gflops()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, fp32 matmul {peak:.0f} GFLOP/s")
    if args.chunks:
        chunk_table(args.chunks)
        return
    header = "| B | M | D | T | ours s | ours GFLOP/s | % of matmul | ours extra MiB | naive s | naive extra MiB | speed-up |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for b, m, d, t in GRID + (LARGE if args.large else []):
        flops = 2 * b * (b + m) * d * (1 + t)
        ours = _run_child(b, m, d, t, "ours")
        gflops = flops / ours["seconds"] / 1e9
        if b * (b + m) <= NAIVE_MAX_ELEMENTS:
            naive = _run_child(b, m, d, t, "naive")
            naive_cols = f"{naive['seconds']:.3f} | {naive['peak_extra_mib']:.0f} | {naive['seconds'] / ours['seconds']:.2f}x"
        else:
            naive_cols = "skipped (needs > 8 GB) | – | –"
        print(f"| {b} | {m} | {d} | {t} | {ours['seconds']:.3f} | {gflops:.1f} | {100 * gflops / peak:.0f}% | "
              f"{ours['peak_extra_mib']:.0f} | {naive_cols} |", flush=True)


def chunk_table(chunks: list[int]) -> None:
    """Peak extra memory follows the chunk size, not B x N (B = M = 8192, D = 512, 3 temperatures)."""
    b = m = 8192
    n = b + m
    print("| B = M | D | T | chunk rows | bound 4*chunk*N*(T+2) MiB | measured extra MiB | seconds |")
    print("|---|---|---|---|---|---|---|")
    for chunk in chunks:
        r = _run_child(b, m, 512, 3, "ours", chunk)
        bound = 4 * chunk * n * 5 / 2**20
        print(f"| {b} | 512 | 3 | {chunk} | {bound:.0f} | {r['peak_extra_mib']:.0f} | {r['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()

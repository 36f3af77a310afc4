"""Drift throughput and peak memory over a grid of (B, M, D, temperatures), vs two baselines.

Four implementations: "ours" (``dmf_ray.core.drift_fast.compute_drift``, reference preset, defaults: on CPU the
affinities at the released floor are a rank-one term and only the entries above it go through
a sparse product), "dense" (the same with ``sparse_max_density=0``: every product dense, the
path CUDA runs), "naive" (dmf_ray.core.drift_naive, the released algorithm transcribed densely
in eager torch) and "jax" (benchmarks/jax_reference_drift.py: the released algorithm as one
jit-compiled XLA program, the authors' own framework; needs the ``bench`` extra, skipped
without it). JAX gets as many intra-op threads as torch. Their times come from one subprocess,
rounds interleaved, so the ratios are robust to machine noise; every implementation's output
is checked against the naive one first (max |difference| / max |naive|, column "max rel diff").
Peak resident memory (ru_maxrss) comes from a fresh subprocess per implementation, as
peak minus the resident size just before the call. Throughput counts the FLOPs of the
algorithm's matrix products, 2*B*N*D for the distances plus 2*B*N*D per temperature for the
weighted sums (N = B + M), whether or not they are executed: for "ours" it is an effective
rate, and can exceed the machine's matmul peak because the floor's share is never multiplied.
"above floor" is the fraction of sqrt(row-softmax x column-softmax) entries above the floor
per temperature, the data property the sparse path's speed depends on.

    pip install -e '.[bench]'                       # jax, for the jit-compiled baseline
    python benchmarks/drift_benchmark.py            # default grid (about 4 minutes on 2 cores)
    python benchmarks/drift_benchmark.py --large    # adds B = M = 16384, D = 512 (chunked)
    python benchmarks/drift_benchmark.py --jax-only # only the rows the jax baseline is judged on
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

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
JAX_ROWS = [(2048, 2048, 512, 3), (4096, 4096, 512, 3)]  # issue 13.7: at least 1.5x the jax baseline here
HAVE_JAX = importlib.util.find_spec("jax") is not None
JAX_ROUNDS = 7
TEMPS = (0.02, 0.05, 0.2)
NAIVE_MAX_ELEMENTS = 2**26  # the naive baseline materialises ~8 B x N matrices; skip it above this


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time(fn, repeats: int, sync=None, warmup: bool = True) -> float:
    """Best of ``repeats`` timed calls after one warm-up call (``warmup=False``: the caller has
    just made it); ``sync`` (e.g. a device synchronise) runs before the first timed call and
    after every call, inside the clock."""
    sync = sync or (lambda: None)
    if warmup:
        fn()  # warm-up (also allocator and thread pools)
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _inputs(b: int, m: int, d: int):
    import torch

    torch.set_flush_denormal(True)
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, d, generator=g), torch.randn(m, d, generator=g) + 0.5


def _jax_drift(gen, pos, temps: tuple[float, ...]):
    """The jit-compiled released drift on numpy copies of the inputs, with torch's thread count
    (XLA reads its flags at import, so they are set first)."""
    import numpy as np
    import torch

    threads = torch.get_num_threads()
    os.environ["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} intra_op_parallelism_threads={threads}"
    sys.path.insert(0, str(Path(__file__).parent))
    from jax_reference_drift import reference_drift

    fn, g, p = reference_drift(temps), gen.numpy(), pos.numpy()
    return lambda: torch.from_numpy(np.asarray(fn(g, p).block_until_ready()))


def _impls(gen, pos, temps: tuple[float, ...], chunk: int | None, with_jax: bool = False) -> dict:
    from dmf_ray.core.drift_fast import compute_drift
    from dmf_ray.core.drift_naive import naive_reference_drift

    impls = {
        "ours": lambda: compute_drift(gen, pos, preset="reference", temperatures=temps, chunk_size=chunk),
        "dense": lambda: compute_drift(
            gen, pos, preset="reference", temperatures=temps, chunk_size=chunk, sparse_max_density=0.0
        ),
        "naive": lambda: naive_reference_drift(gen, pos, temperatures=temps),
    }
    if with_jax:
        impls["jax"] = _jax_drift(gen, pos, temps)
    return impls


def measure(b: int, m: int, d: int, n_temps: int, impl: str, chunk: int | None = None, repeats: int = 0) -> dict:
    """Run in a subprocess: peak extra memory of one implementation, and with ``repeats`` > 0
    its best time over that many calls after a warm-up (``seconds``; None when ``repeats`` is 0,
    where the implementation is called once, untimed)."""
    gen, pos = _inputs(b, m, d)
    fn = _impls(gen, pos, TEMPS[:n_temps], chunk)[impl]
    before = _rss_mib()
    if repeats > 0:
        seconds = _time(fn, repeats)
    else:
        fn()
        seconds = None
    return {"seconds": seconds, "peak_extra_mib": _rss_mib() - before}


def _timing_repeats(b: int, m: int) -> int:
    return 1 if b * (b + m) > 2**26 else 3


def race(b: int, m: int, d: int, n_temps: int, rounds: int = 3) -> dict:
    """Run in a subprocess: the implementations timed in one process, rounds interleaved (best
    of ``rounds`` each), so machine noise hits all of them alike, after one warm-up call each
    (jax: its compilation) whose output is checked against the naive one; plus the fraction of
    affinities above the released floor per temperature -- the data property the sparse path
    exploits."""
    import torch

    from dmf_ray.core.drift import PRESETS
    from dmf_ray.core.geometry import sq_distances

    gen, pos = _inputs(b, m, d)
    temps = TEMPS[:n_temps]
    impls = _impls(gen, pos, temps, None, with_jax=HAVE_JAX)
    outputs = {name: fn() for name, fn in impls.items()}  # warm-up
    scale = outputs["naive"].abs().max()
    rel_diff = {name: float((out - outputs["naive"]).abs().max() / scale) for name, out in outputs.items()}
    best = dict.fromkeys(impls, float("inf"))
    for _ in range(rounds):
        for name, fn in impls.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    targets = torch.cat([gen, pos])
    dist = sq_distances(gen, targets).sqrt_()
    dist = dist / dist.mean()
    dist[torch.arange(b), torch.arange(b)] = float("inf")
    log_floor = math.log(PRESETS["reference"]["affinity_floor"])
    above = []
    for t in temps:
        logits = -dist / t
        log_aff = 0.5 * (logits.log_softmax(1) + logits.log_softmax(0))
        above.append(float((log_aff > 0.5 * log_floor).float().mean()))
    return {"seconds": best, "above_floor": above, "rel_diff": rel_diff}


def _run_child(b: int, m: int, d: int, t: int, impl: str, chunk: int | None = None, repeats: int = 0) -> dict:
    """One measurement in a fresh process; ``repeats`` = 0: memory only (one untimed call)."""
    cmd = [sys.executable, __file__, "--child", json.dumps([b, m, d, t, impl, chunk, repeats])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def matmul_gflops() -> float:
    """Measured fp32 matmul throughput of this machine (the ceiling for the drift's products)."""
    import torch

    a, bm = torch.randn(2048, 512), torch.randn(512, 4096)
    seconds = _time(lambda: a @ bm, 20)
    return 2 * 2048 * 512 * 4096 / seconds / 1e9


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--large", action="store_true", help="add the B = M = 16384, D = 512 row")
    p.add_argument("--chunks", type=int, nargs="*", help="only: peak memory of B = M = 8192, D = 512 per chunk size")
    p.add_argument("--jax-only", action="store_true", help=f"only: ours vs the jax baseline at {JAX_ROWS}, best of {JAX_ROUNDS} rounds")
    p.add_argument("--child")
    args = p.parse_args()
    if args.child:
        b, m, d, t, impl, chunk, repeats = json.loads(args.child)
        print(json.dumps(race(b, m, d, t, repeats) if impl == "race" else measure(b, m, d, t, impl, chunk, repeats)))
        return
    import torch

    peak = matmul_gflops()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, fp32 matmul {peak:.0f} GFLOP/s")
    if args.chunks:
        chunk_table(args.chunks)
        return
    if args.jax_only:
        if not HAVE_JAX:
            raise SystemExit("drift_benchmark: --jax-only needs jax: pip install -e '.[bench]'")
        jax_table({row: _run_child(*row, "race", repeats=JAX_ROUNDS) for row in JAX_ROWS})
        return
    races = {}
    header = (
        "| B | M | D | T | above floor per T | ours s | ours eff. GFLOP/s | % of matmul | dense s | dense % of matmul "
        "| naive s | ours vs naive | dense vs naive | ours extra MiB | naive extra MiB |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for b, m, d, t in GRID + (LARGE if args.large else []):
        flops = 2 * b * (b + m) * d * (1 + t)
        with_naive = b * (b + m) <= NAIVE_MAX_ELEMENTS
        # with the naive baseline, times come from the race; without it, ours' child times itself
        ours_mem = _run_child(b, m, d, t, "ours", repeats=0 if with_naive else _timing_repeats(b, m))
        if with_naive:
            r = races[(b, m, d, t)] = _run_child(b, m, d, t, "race", repeats=3)
            sec = r["seconds"]
            above = " / ".join(f"{100 * a:.1f}%" for a in r["above_floor"])
            naive_mem = _run_child(b, m, d, t, "naive")["peak_extra_mib"]
            cols = (
                f"{above} | {sec['ours']:.3f} | {flops / sec['ours'] / 1e9:.1f} | {100 * flops / sec['ours'] / 1e9 / peak:.0f}% | "
                f"{sec['dense']:.3f} | {100 * flops / sec['dense'] / 1e9 / peak:.0f}% | {sec['naive']:.3f} | "
                f"{sec['naive'] / sec['ours']:.2f}x | {sec['naive'] / sec['dense']:.2f}x | {ours_mem['peak_extra_mib']:.0f} | {naive_mem:.0f}"
            )
        else:
            s_ours = ours_mem["seconds"]
            cols = (
                f"– | {s_ours:.3f} | {flops / s_ours / 1e9:.1f} | {100 * flops / s_ours / 1e9 / peak:.0f}% | – | – | "
                f"skipped (needs > 8 GB) | – | – | {ours_mem['peak_extra_mib']:.0f} | –"
            )
        print(f"| {b} | {m} | {d} | {t} | {cols} |", flush=True)
    if HAVE_JAX:
        print()
        jax_table(races)
    else:
        print("\n(no jax: the jit-compiled baseline needs pip install -e '.[bench]')")


def jax_table(races: dict[tuple[int, int, int, int], dict]) -> None:
    """ours against the jit-compiled released algorithm, from the same interleaved races."""
    print("| B | M | D | T | ours s | dense s | jax s | naive s | jax / ours | jax / dense | max rel diff vs naive: ours / dense / jax |")
    print("|---" * 11 + "|")
    for (b, m, d, t), r in races.items():
        sec, diff = r["seconds"], r["rel_diff"]
        print(f"| {b} | {m} | {d} | {t} | {sec['ours']:.3f} | {sec['dense']:.3f} | {sec['jax']:.3f} | {sec['naive']:.3f} | "
              f"{sec['jax'] / sec['ours']:.2f}x | {sec['jax'] / sec['dense']:.2f}x | "
              f"{diff['ours']:.1e} / {diff['dense']:.1e} / {diff['jax']:.1e} |", flush=True)


def chunk_table(chunks: list[int]) -> None:
    """Peak extra memory follows the chunk size, not B x N (B = M = 8192, D = 512, 3 temperatures)."""
    b = m = 8192
    n = b + m
    print("| B = M | D | T | chunk rows | bound 4*chunk*N*(T+2) MiB | measured extra MiB | seconds |")
    print("|---|---|---|---|---|---|---|")
    for chunk in chunks:
        r = _run_child(b, m, 512, 3, "ours", chunk, repeats=_timing_repeats(b, m))
        bound = 4 * chunk * n * 5 / 2**20
        print(f"| {b} | 512 | 3 | {chunk} | {bound:.0f} | {r['peak_extra_mib']:.0f} | {r['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""KL-Parzen and MMD drifts: closed form (dmf_ray.core.families) against autograd of the scalar.

The families' drifts are gradients: V = sum_t (tau_t s)^2 grad_x F_t with
F_t = sum_i [log p_hat_t(x_i) - log q_hat_t(x_i)] (``kl_parzen``) or the MMD witness summed over
the batch (``mmd``). ``autograd`` below builds F_t and calls torch.autograd.grad once per
temperature; ``closed form`` is the package's explicit coefficient matrices. Both agree to
round-off (checked here before timing); the table says which is faster.

    python benchmarks/families_benchmark.py   # B = M in (1024, 4096), D in (64, 512), T = 3
"""

from __future__ import annotations

import argparse
import math
import platform

import torch
from drift_benchmark import _time

from dmf_ray.core.drift import SQ_DIST_EPS, DriftResult, check_shapes, force_rms, make_drift_config, scales
from dmf_ray.core.families import kl_parzen_drift, mmd_drift
from dmf_ray.core.geometry import sq_distances

TEMPS = (0.02, 0.05, 0.2)


def autograd_flow(gen: torch.Tensor, pos: torch.Tensor, cfg, family: str) -> DriftResult:
    """The family's drift as sum_t (tau_t s)^2 grad_x F_t, one autograd.grad per temperature."""
    check_shapes(gen, pos)
    dtype = torch.float64 if gen.dtype == torch.float64 else torch.float32
    x_fixed = gen.detach().to(dtype)
    x = x_fixed.clone().requires_grad_()
    sets = [pos.detach().to(dtype)] + ([x_fixed] if cfg.self_negatives else [])  # [M, D], [B, D]
    sqs = [sq_distances(x, y, floor=SQ_DIST_EPS) for y in sets]  # [B, M], [B, B] with graph
    dists = [sq.sqrt() for sq in sqs]
    total = sum(dist.detach().sum(dtype=torch.float64) for dist in dists)
    count = x.shape[0] * sum(y.shape[0] for y in sets)
    dist_scale, coord_scale = scales(total if cfg.distance_norm else None, count, x.shape[1], x)
    # the Gaussian's argument is the squared distance: no square root in its graph
    u = [dist / dist_scale for dist in dists] if cfg.kernel == "laplace" else [sq / dist_scale**2 for sq in sqs]
    forces = []
    for tau in cfg.temperatures:
        log_k = [ui * (-1.0 / tau if cfg.kernel == "laplace" else -0.5 / tau**2) for ui in u]
        if family == "kl_parzen":  # log KDE; the sample's own term leaves q_hat
            terms = [log_k[0].logsumexp(1)] + [log_k[1].fill_diagonal_(-math.inf).logsumexp(1)] * (len(u) > 1)
        else:  # witness: kernel means, the sample's own term included
            terms = [lk.exp().mean(1) for lk in log_k]
        objective = terms[0].sum() - (terms[1].sum() if len(terms) > 1 else 0.0)
        (grad,) = torch.autograd.grad(objective, x, retain_graph=True)
        forces.append(grad * (tau * dist_scale) ** 2)
    stacked = torch.stack(forces)  # [T, B, D]
    rms = force_rms(stacked.square().mean(dim=(1, 2)), coord_scale)
    if cfg.drift_norm:
        stacked = stacked / rms[:, None, None]
    return DriftResult(drift=stacked.sum(0), scale=coord_scale, force_rms=rms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", nargs="+", default=["kl_parzen", "mmd"])
    parser.add_argument("--kernels", nargs="+", default=["laplace", "gaussian"])
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"reference preset, T = {len(TEMPS)}, float32, best of {args.repeats} interleaved rounds "
          "after one warm-up each")
    print("| family | kernel | B = M | D | closed form s | autograd s | autograd / closed |")
    print("|---|---|---|---|---|---|---|")
    closed = {"kl_parzen": kl_parzen_drift, "mmd": mmd_drift}
    for family in args.families:
        fn = closed[family]
        for kernel in args.kernels:
            cfg = make_drift_config("reference", kernel=kernel, family=family)
            for size in args.sizes:
                for d in args.dims:
                    g = torch.Generator().manual_seed(0)
                    gen, pos = torch.randn(size, d, generator=g), torch.randn(size, d, generator=g) + 0.5
                    a, b = fn(gen, pos, cfg).drift, autograd_flow(gen, pos, cfg, family).drift
                    err = float((a - b).norm() / b.norm())
                    assert err < 1e-3, (family, kernel, size, d, err)
                    t_closed, t_auto = float("inf"), float("inf")
                    for _ in range(args.repeats):  # rounds interleaved: machine noise hits both alike
                        t_closed = min(t_closed, _time(lambda: fn(gen, pos, cfg), 1, warmup=False))
                        t_auto = min(t_auto, _time(lambda: autograd_flow(gen, pos, cfg, family), 1, warmup=False))
                    print(f"| {family} | {kernel} | {size} | {d} | {t_closed:.3f} | {t_auto:.3f} | "
                          f"{t_auto / t_closed:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Drift families: other vector fields (and one potential) behind the same training loop.

In the Wasserstein-gradient-flow view (Gretton et al. 2026) the drifting field is one of a
family of particle flows with the data distribution p as fixed point; ``drift.family`` makes the
member one config key, so a sweep compares them with everything else fixed (the family table
is in README.md; each function below says its field and why).

Units. A score or a witness gradient has units 1/length, not a displacement; multiplying each
temperature's term by its squared bandwidth tau^2 (tau times the distance scale under
``distance_norm``) turns it into one. That factor is DMF's Theorem 1: for the Gaussian kernel
the row-normalised drift *equals* tau^2 grad log KDE, and it keeps the small-bandwidth terms
from dominating a sum over temperatures (a score scales like 1/tau).

Shared conventions, so every family is comparable under the released loss: ``distance_norm``
and ``drift_norm`` act as in :mod:`dmf_ray.core.drift` (distance scale over the target set
[gen | pos], each term scaled to unit RMS); ``self_negatives=False`` drops the repulsion term of
``kl_parzen``/``mmd`` and the debiasing term of ``sinkhorn``; ``sinkhorn`` ignores ``kernel``
and ``temperatures`` (its cost is the squared distance). float64 inputs stay float64 (the
identity tests use that), others are computed in float32. ``kl_parzen`` and ``mmd`` are closed
forms: autograd of their scalars is slower (benchmarks/families_benchmark.py, RESULTS.md).

Memory and sharding: the non-core families are dense O(B * N) per temperature, meant for
batches of thousands (use ``drifting`` for chunked, very large ones); with a ``shard`` they
compute the whole drift and return the shard's rows -- exact, but every worker repeats the
B x N work. :func:`sharp_potential` computes only the local rows, like drift.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dmf_ray.core.drift import (
    SQ_DIST_EPS,
    DriftConfig,
    DriftResult,
    RowShard,
    check_shapes,
    force_rms,
    log_sharp_kernel,
    scales,
    shard_reduce,
    signed_block_weights,
)
from dmf_ray.core.drift_fast import drift_field
from dmf_ray.core.geometry import sq_distances

if TYPE_CHECKING:
    from collections.abc import Callable

# --------------------------------------------------------------------------- dispatcher


def family_drift(gen: Tensor, pos: Tensor, cfg: DriftConfig, shard: RowShard | None = None) -> DriftResult:
    """The drift of ``cfg.family`` for generated ``gen`` (B, D) against positives ``pos`` (M, D).

    ``sharp`` returns the ``sharp``-normalised drift_field its potential encodes -- a
    diagnostic; training uses :func:`sharp_potential`.
    """
    if cfg.family == "drifting":
        return drift_field(gen, pos, None, cfg, shard)
    if cfg.family == "sharp":
        return drift_field(gen, pos, None, replace(cfg, normalization="sharp"), shard)
    if cfg.family == "kl_parzen":
        result = kl_parzen_drift(gen, pos, cfg)
    elif cfg.family == "mmd":
        result = mmd_drift(gen, pos, cfg)
    else:  # sinkhorn (DriftConfig admits no other family)
        result = sinkhorn_drift(gen, pos, cfg)
    if shard is not None:  # exact but redundant: every worker computed all rows
        result = replace(result, drift=result.drift[shard.rows])
    return result


# --------------------------------------------------------------------------- shared geometry


def _work_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class _Block:
    """One target set (positives, or the generated batch) against the generated batch, computed
    once per call; ``keep`` is 0 at coincident pairs, whose direction (y - x) / r is 0/0."""

    targets: Tensor  # (N, D)
    sq: Tensor  # clamped squared distances (B, N)
    r: Tensor  # kernel distances sqrt(sq) / s (B, N)
    keep: Tensor  # (B, N): 0.0 at coincident pairs, 1.0 elsewhere


@dataclass(frozen=True)
class _Geometry:

    x: Tensor  # generated batch (B, D)
    pos: _Block  # against the positives (M targets)
    neg: _Block | None  # against the generated batch (B targets), None without self negatives
    dist_scale: Tensor  # s: kernel distances are r / s
    coord_scale: Tensor  # s / sqrt(D): the loss scale, as DriftResult.scale


def _geometry(gen: Tensor, pos: Tensor, cfg: DriftConfig) -> _Geometry:
    check_shapes(gen, pos)
    dtype = _work_dtype(gen)
    x = gen.detach().to(dtype)
    sets = [pos.detach().to(dtype)] + ([x] if cfg.self_negatives else [])  # the target set [gen | pos] of drift.py
    sqs = [sq_distances(x, y, floor=SQ_DIST_EPS) for y in sets]
    dists = [sq.sqrt() for sq in sqs]
    total = sum(dist.sum(dtype=torch.float64) for dist in dists)
    count = x.shape[0] * sum(y.shape[0] for y in sets)
    dist_scale, coord_scale = scales(total if cfg.distance_norm else None, count, x.shape[1], x)
    blocks = [
        _Block(y, sq, dist.div_(dist_scale), (sq > SQ_DIST_EPS).to(dtype)) for y, sq, dist in zip(sets, sqs, dists)
    ]
    return _Geometry(x, blocks[0], blocks[1] if cfg.self_negatives else None, dist_scale, coord_scale)


def _finish(forces: Tensor, coord_scale: Tensor, cfg: DriftConfig) -> DriftResult:
    rms = force_rms(forces.square().mean(dim=(1, 2)), coord_scale)
    if cfg.drift_norm:
        forces = forces / rms[:, None, None]
    return DriftResult(drift=forces.sum(0), scale=coord_scale, force_rms=rms)


def _apply(coeff: Tensor, targets: Tensor, x: Tensor) -> Tensor:
    return coeff @ targets - coeff.sum(1, keepdim=True) * x


def _log_kernel_and_tau2_score(block: _Block, tau: float, cfg: DriftConfig) -> tuple[Tensor, Tensor]:
    """log k(r / s) and phi with tau_x^2 grad_x log k = phi * (y - x), tau_x = tau * s:
    phi = 1 (Gaussian) or tau / (r/s) (Laplace; 0 at coincident pairs, the cusp's subgradient).
    ``log_k`` is a fresh tensor the caller may modify."""
    if cfg.kernel == "gaussian":
        return block.r.square() * (-0.5 / (tau * tau)), block.keep
    return block.r * (-1.0 / tau), (tau / block.r).mul_(block.keep)


def _diag_mask(b: int, n: int, offset: int, device: torch.device) -> Tensor:
    mask = torch.zeros(b, n, dtype=torch.bool, device=device)
    idx = torch.arange(b, device=device)
    mask[idx, idx + offset] = True
    return mask


# --------------------------------------------------------------------------- kl_parzen / mmd


def _kernel_flow(
    gen: Tensor, pos: Tensor, cfg: DriftConfig, weights: Callable[[Tensor, Tensor, bool], Tensor]
) -> DriftResult:
    """sum_t [sum_j c+_ij (y+_j - x_i) - sum_j c-_ij (x_j - x_i)], c = weights(log k, phi, is_self):
    ``kl_parzen`` and ``mmd`` differ only in ``weights``."""
    geo = _geometry(gen, pos, cfg)
    forces = []
    for tau in cfg.temperatures:
        log_k, phi = _log_kernel_and_tau2_score(geo.pos, tau, cfg)
        force = _apply(weights(log_k, phi, False), geo.pos.targets, geo.x)
        if geo.neg is not None:
            log_k, phi = _log_kernel_and_tau2_score(geo.neg, tau, cfg)
            force = force - _apply(weights(log_k, phi, True), geo.neg.targets, geo.x)
        forces.append(force)
    return _finish(torch.stack(forces), geo.coord_scale, cfg)


def _kde_score_weights(log_k: Tensor, phi: Tensor, is_self: bool) -> Tensor:
    """k / sum_j k per x (the KDE score), without the sample's own term."""
    if is_self:
        log_k.fill_diagonal_(-math.inf)
    return torch.softmax(log_k, dim=1) * phi


def _witness_weights(log_k: Tensor, phi: Tensor, is_self: bool) -> Tensor:
    """k / n: the kernel mean over all n targets (the sample's own term included)."""
    return log_k.exp() * phi / log_k.shape[1]


def kl_parzen_drift(gen: Tensor, pos: Tensor, cfg: DriftConfig) -> DriftResult:
    """KL flow with Parzen smoothing: V = sum_t tau_t^2 (grad log p_hat_t - grad log q_hat_t).

    Why: the Wasserstein gradient flow of KL(q_hat || p_hat) moves particles along the score
    difference. p_hat is the KDE of the positives, q_hat that of the generated batch without
    the sample itself. With the Gaussian kernel this equals the row-normalised drift (DMF
    Theorem 1).
    """
    return _kernel_flow(gen, pos, cfg, _kde_score_weights)


def mmd_drift(gen: Tensor, pos: Tensor, cfg: DriftConfig) -> DriftResult:
    """MMD flow: V = sum_t tau_t^2 grad_x [mean_j k_t(x, y+_j) - mean_j k_t(x, y-_j)].

    Why: the gradient of the MMD witness E_p k(x, .) - E_q k(x, .) is the MMD gradient flow's
    velocity (Arbel et al. 2019). The negatives include the sample itself: its term has zero
    gradient, and keeping it makes the witness the plain empirical one, which vanishes exactly
    when the two point sets coincide. The sums are not normalised per x, so the force fades far
    from all data -- the known weakness of MMD flows.
    """
    return _kernel_flow(gen, pos, cfg, _witness_weights)


# --------------------------------------------------------------------------- sinkhorn


def barycentric_projection(cost: Tensor, targets: Tensor, epsilon: float, iterations: int) -> Tensor:
    """T(x_i) = sum_j pi_ij y_j / sum_j pi_ij for the entropic OT plan between uniform measures.

    ``cost`` (B, M) is C_ij, ``targets`` (M, D) the y_j. Log domain because exp(-C/eps)
    underflows to 0 for a whole row at small epsilon; the potentials are kept in units of eps,
    and the projection needs only the row-normalised plan softmax_j((g_j - C_ij)/eps). No
    epsilon-scaling: at tiny epsilon the column marginals may be unconverged, but the result
    is always finite and row-normalised.
    """
    b, m = cost.shape
    scaled = cost / epsilon  # C / eps
    log_a, log_b = -math.log(b), -math.log(m)
    g = cost.new_zeros(m)  # g / eps
    for _ in range(iterations):
        f = -torch.logsumexp(g[None, :] - scaled, dim=1) - log_b  # f / eps
        g = -torch.logsumexp(f[:, None] - scaled, dim=0) - log_a
    return torch.softmax(g[None, :] - scaled, dim=1) @ targets


def sinkhorn_drift(gen: Tensor, pos: Tensor, cfg: DriftConfig) -> DriftResult:
    """Debiased entropic barycentric drift V(x_i) = T_{q->p}(x_i) - T_{q->q}(x_i).

    Why debiased: T_{q->p}(x) - x is biased by the entropic blur (it pulls towards local means
    even when q = p); T_{q->q}(x) carries the same blur, so the difference vanishes when q = p
    and tends to T_{q->p}(x) - x as epsilon -> 0 (Feydy et al. 2019). Cost |x_i - y_j|^2 / s^2.
    """
    geo = _geometry(gen, pos, cfg)
    s2 = geo.dist_scale.square()
    eps, its = cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations
    force = barycentric_projection(geo.pos.sq / s2, geo.pos.targets, eps, its)
    if geo.neg is not None:
        force = force - barycentric_projection(geo.neg.sq / s2, geo.x, eps, its)
    else:
        force = force - geo.x
    return _finish(force[None], geo.coord_scale, cfg)


# --------------------------------------------------------------------------- sharp potential


@dataclass(frozen=True)
class SharpPotential:
    """The sharp-kernel potential of a batch and the drift it encodes.

    ``loss`` L = 2 s^2 / (c^2 b D) * sum_t w_t sum_i [log Z#_q,t(x_i) - log Z#_p,t(x_i)],
    differentiable in x (s = ``dist_scale``, c = ``scale``, b rows of dimension D; w_t = 1, or
    1 / force_rms_t under ``drift_norm``). Its x-gradient is exactly that of the regression loss
    ``drift.target_loss(x, drift, scale)``, -2 drift / (c^2 b D), so ``sharp`` and ``drifting``
    take steps of the same size at one learning rate. ``drift`` (b, D), detached, is
    drift_field(normalization="sharp"); the rest as DriftResult.
    """

    loss: Tensor
    drift: Tensor
    scale: Tensor
    dist_scale: Tensor
    force_rms: Tensor


def sharp_potential(
    x: Tensor,
    pos: Tensor,
    cfg: DriftConfig,
    *,
    gen_all: Tensor | None = None,
    shard: RowShard | None = None,
) -> SharpPotential:
    """The conservative potential of the sharp normalisation (Franz et al. 2026).

    Why: the row-normalised Laplace drift is not a gradient, so it can only be used as a
    stop-gradient regression target; the sharp drift is grad log Z#_p - grad log Z#_q
    (:func:`dmf_ray.core.drift.log_sharp_kernel`), so L = sum_i [log Z#_q(x_i) - log Z#_p(x_i)]
    is a loss that plain SGD minimises. Matching drift.py exactly:

    * Z#_p sums over the positives, Z#_q over the (stop-gradient) generated batch with the
      sample's own term removed (its index ``shard.rows.start + i`` in ``gen_all``).
    * Kernel distances are r / s with the detached distance scale s (``distance_norm``), so
      -grad_x sum_i [log Z#_p - log Z#_q] = V / s^2 (the chain rule through r / s). The loss is
      that potential times 2 s^2 / (c^2 b D), a detached constant, so its gradient equals the
      released regression loss's on V (the factor is 2 with ``distance_norm``, whose c^2 D is
      s^2, and 2 / D without); ``drift`` returns V itself.
    * Several temperatures: drift.py *sums the per-temperature drifts*, so L is the sum of the
      per-temperature potentials, sum_t [log Z#_q,t - log Z#_p,t] -- not the log of a summed Z#
      (which would weight temperatures by their share of Z# and give a different field).
    * ``drift_norm`` divides temperature t's drift by a batch constant (its force RMS); the
      potential is scaled by the same detached constant, so it stays conservative.

    ``x`` (b, D): this process's generated rows with their graph; ``gen_all``: the all-gathered
    batch (default x detached), of which ``shard`` selects the rows that are ``x``.
    Needs ``self_negatives`` (TrainConfig enforces it with family ``sharp``).
    """
    check_shapes(x, pos)
    dtype = _work_dtype(x)
    xw = x.to(dtype)
    x_fixed = xw.detach()
    y = pos.detach().to(dtype)
    if gen_all is None:
        if shard is not None:
            raise ValueError("a shard needs gen_all, the all-gathered generated batch")
        negs, offset = x_fixed, 0
    else:
        negs = gen_all.detach().to(dtype)
        rows = shard.rows if shard is not None else slice(0, negs.shape[0])
        offset = rows.start or 0
        if len(range(negs.shape[0])[rows]) != xw.shape[0]:
            raise ValueError(f"x has {xw.shape[0]} rows but the shard selects {len(range(negs.shape[0])[rows])} of gen_all")
    b_total, d = negs.shape[0], xw.shape[1]
    if b_total < 2:
        raise ValueError("the sharp potential needs at least 2 generated rows (a sample does not repel itself)")
    targets = torch.cat([negs, y])  # [N, D], negatives first as in drift.py
    n = targets.shape[0]

    dist = sq_distances(xw, targets, floor=SQ_DIST_EPS).sqrt()  # [b, N], carries the graph of x
    total = shard_reduce(shard, "sum", dist.detach().sum(dtype=torch.float64))
    dist_scale, coord_scale = scales(total if cfg.distance_norm else None, b_total * n, d, x_fixed)
    r = dist / dist_scale  # [b, N]
    self_mask = _diag_mask(xw.shape[0], n, offset, xw.device)  # [b, N]

    potentials, forces = [], []
    for tau in cfg.temperatures:
        log_k = (r * (-1.0 / tau) if cfg.kernel == "laplace" else r.square() * (-0.5 / tau**2)).masked_fill(self_mask, -math.inf)
        log_ksharp = log_sharp_kernel(log_k, r, tau, cfg.kernel)  # [b, N]
        potentials.append((log_ksharp[:, :b_total].logsumexp(1) - log_ksharp[:, b_total:].logsumexp(1)).sum())
        # its drift in closed form, the sharp weights of drift.drift_field
        coeff = signed_block_weights(log_k.detach(), log_ksharp.detach(), b_total)  # [b, N]
        forces.append(_apply(coeff, targets, x_fixed))

    forces_t = torch.stack(forces)  # [T, b, D]
    mean_sq = shard_reduce(shard, "sum", forces_t.square().sum(dim=(1, 2))) / (b_total * d)
    rms = force_rms(mean_sq, coord_scale)
    weights = 1.0 / rms if cfg.drift_norm else torch.ones_like(rms)
    # the detached factor that makes grad_x loss = grad_x target_loss(x, drift, coord_scale)
    regression = 2.0 * dist_scale.square() / (coord_scale.square() * (xw.shape[0] * d))
    loss = regression * sum(w * p for w, p in zip(weights, potentials))
    drift = (forces_t * weights[:, None, None]).sum(0)
    return SharpPotential(loss=loss, drift=drift, scale=coord_scale, dist_scale=dist_scale, force_rms=rms)

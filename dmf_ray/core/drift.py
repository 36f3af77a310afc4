"""Drift fields V(x) that move generated samples towards data (Deng et al. 2026; DMF eq. 1-4).

Every generated sample x_i is attracted to positives y+ (data) and repelled by negatives y-
(the generated batch itself with its diagonal masked, plus optional fixed negatives). The
generator is trained towards the stop-gradient target x + V(x) (:func:`target_loss`).

:func:`drift_field` is the algorithm on one screen, modelled on the authors' released
drift_loss.py (lambertae/drifting): distances to the joint target set
``Y = [gen (B) | extra negatives (K) | positives (M)]``, a kernel per temperature, one of three
normalisations into signed coefficients c_ij, and V_i = sum_j c_ij (y_j - x_i):

* ``row`` -- the paper's eq. (1)-(3): separate row-softmaxes over negatives and positives,
  V = sum_j w+_j y+_j - sum_j w-_j y-_j  (the x terms cancel because both rows sum to one).
* ``bidirectional`` -- the released code: affinity a_ij = sqrt(row-softmax * column-softmax),
  floored at sqrt(affinity_floor); positives get a+_ij * sum(a-_i.), negatives
  -a-_ij * sum(a+_i.).
* ``sharp`` -- Franz et al. 2026: weights k(r) / sum K#(r) with K#(r) = int_r^inf s k(s) ds,
  so V = grad log Z#_p - grad log Z#_q is conservative (:func:`log_sharp_kernel`).

Presets are data (``PRESETS``), not code paths. :mod:`dmf_ray.core.drift_fast` computes the
same drift in bounded memory; training calls that one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, get_args

import pydantic.dataclasses
import torch
from pydantic import Field
from torch import Tensor

from dmf_ray.core.geometry import sq_distances
from dmf_ray.schema import SECTION, Bool, Float, Fraction, PositiveFloat, PositiveFloats, PositiveInt

Kernel = Literal["laplace", "gaussian"]
Normalization = Literal["row", "bidirectional", "sharp"]
MatmulPrecision = Literal["fp32", "tf32", "bf16"]
Family = Literal["drifting", "sharp", "kl_parzen", "mmd", "sinkhorn"]  # dmf_ray.core.families
MATMUL_PRECISIONS: tuple[str, ...] = get_args(MatmulPrecision)
FAMILIES: tuple[str, ...] = get_args(Family)

# Squared distances are clamped here before the square root (as the released code does), so
# the self-distance is a tiny positive number rather than a NaN-producing negative round-off.
SQ_DIST_EPS = 1e-8
# Floors of the released code: the distance scale and the per-temperature force mean square.
SCALE_FLOOR = 1e-3
FORCE_MS_FLOOR = 1e-8


@pydantic.dataclasses.dataclass(frozen=True, config=SECTION)
class DriftConfig:
    """How to compute the drift field; each field's type is its domain (see :mod:`dmf_ray.schema`).

    The options are tabulated in README.md ("The drift field"); what the types do not say:
    ``chunk_size`` None picks the largest chunk within 1 GiB of chunk matrices;
    ``sparse_max_density`` 0 always runs the dense product, and CUDA always does (the sparse path
    counts entries on the host); ``sinkhorn_epsilon`` is in the units of the kernel's squared
    distances -- relative to the mean distance under ``distance_norm`` (0.05 blurs over about
    sqrt(0.05) = 0.22 mean distances), absolute otherwise, like ``temperatures``.
    """

    kernel: Kernel = "laplace"
    temperatures: PositiveFloats = (0.02, 0.05, 0.2)
    normalization: Normalization = "bidirectional"
    distance_norm: Bool = True
    drift_norm: Bool = True
    self_negatives: Bool = True
    affinity_floor: Annotated[Float, Field(ge=0, lt=1)] = 1e-6
    chunk_size: PositiveInt | None = None
    matmul_precision: MatmulPrecision = "fp32"
    sparse_max_density: Fraction = 0.08
    family: Family = "drifting"
    sinkhorn_epsilon: PositiveFloat = 0.05
    sinkhorn_iterations: PositiveInt = 50


# Presets are data: `reference` is the authors' released drift_loss.py, `toy` their 2-D notebook
# (k / sqrt(row_sum * col_sum), no floor, no normalisations), `paper` the DMF paper's eq. (1)-(4).
PRESETS: dict[str, dict[str, Any]] = {
    "reference": dict(kernel="laplace", temperatures=(0.02, 0.05, 0.2), normalization="bidirectional",
                      distance_norm=True, drift_norm=True, self_negatives=True, affinity_floor=1e-6),
    "toy": dict(kernel="laplace", temperatures=(0.05,), normalization="bidirectional",
                distance_norm=False, drift_norm=False, self_negatives=True, affinity_floor=0.0),
    "paper": dict(kernel="laplace", temperatures=(1.0,), normalization="row",
                  distance_norm=False, drift_norm=False, self_negatives=True),
}


def make_drift_config(preset: str | None = None, **options: Any) -> DriftConfig:
    """A config from an optional preset (a key of ``PRESETS``) overridden by keyword options."""
    return DriftConfig(**{**(PRESETS[preset] if preset is not None else {}), **options})


@dataclass(frozen=True)
class DriftResult:
    """V (B, D) float32 in input coordinates (the target is x + V); the coordinate scale s
    (mean distance / sqrt(D) under ``distance_norm``, else 1) of :func:`target_loss`; and each
    temperature's force RMS before drift normalisation, (T,) -- a diagnostic."""

    drift: Tensor
    scale: Tensor
    force_rms: Tensor


class RowShard(Protocol):
    """This process's share of a data-parallel batch, and how to reduce across processes.

    ``gen`` is then the whole all-gathered batch (every sample repels every other) but only
    ``rows`` are computed; the distance sum, column log-sum-exp and force mean square are
    reduced, so each process does 1/N of the work and gets the single-process drift of its rows.
    """

    rows: slice

    def sum(self, t: Tensor) -> Tensor: ...

    def logsumexp(self, t: Tensor) -> Tensor: ...


# --------------------------------------------------------------------------- the algorithm


def drift_field(gen: Tensor, pos: Tensor, neg: Tensor | None, cfg: DriftConfig, shard: RowShard | None = None) -> DriftResult:
    """The drift V of the generated rows under ``cfg``, densely (module docstring).

    ``gen`` (B, D) generated samples, ``pos`` (M, D) positives, ``neg`` (K, D) extra negatives
    or None. With ``shard`` only the rows ``shard.rows`` of ``gen`` are computed (and returned).
    This is the specification; :func:`dmf_ray.core.drift_fast.drift_field` computes the same.
    """
    # 0. Stop-gradient boundary: V is a regression target, computed from detached float32 copies.
    x_all, targets, n_neg = drift_targets(gen, pos, neg, cfg)  # [B, D], [N, D] = [gen | neg | pos]
    rows = shard.rows if shard is not None else slice(0, x_all.shape[0])
    x = x_all[rows]  # [b, D]: the rows computed here
    b_total, d = x_all.shape

    # 1. Distances and the kernel argument u (r for Laplace, r^2 for Gaussian).
    dist = sq_distances(x, targets, floor=SQ_DIST_EPS).sqrt_()  # [b, N]
    # distance_norm: divide by the mean distance so that the bandwidths are scale-free.
    total = shard_reduce(shard, "sum", dist.sum(dtype=torch.float64)) if cfg.distance_norm else None
    dist_scale, coord_scale = scales(total, b_total * targets.shape[0], d, x)  # [], []
    u = kernel_argument(dist, rows.start or 0, dist_scale, cfg)  # [b, N], self entries +inf
    tau = torch.tensor(cfg.temperatures, device=x.device)[:, None, None]  # [T, 1, 1]
    log_k = u[None] * -torch.tensor(kappas(cfg), device=x.device)[:, None, None]  # [T, b, N]

    # 2. Normalise the kernel into signed coefficients c (negatives < 0 < positives).
    if cfg.normalization == "bidirectional":
        # sqrt(row-softmax x column-softmax): each pair weighed from both sides (released code);
        # the column softmax runs over all B generated rows, hence the shard reduction.
        col_lse = shard_reduce(shard, "logsumexp", log_k.logsumexp(1))  # [T, N]
        aff = (log_k - 0.5 * log_k.logsumexp(2, keepdim=True) - 0.5 * col_lse[:, None]).exp()  # [T, b, N]
        # the floor (as released) keeps distant pairs interacting: no affinity underflows to 0.
        aff = aff.clamp_min(math.sqrt(cfg.affinity_floor))
        a_neg, a_pos = aff[..., :n_neg], aff[..., n_neg:]  # [T, b, n_neg], [T, b, M]
        # repel negatives weighted by the total attraction, attract positives by the total repulsion.
        coeff = torch.cat([-a_neg * a_pos.sum(2, keepdim=True), a_pos * a_neg.sum(2, keepdim=True)], 2)
    else:
        # row: k / sum k per block (DMF eq. 2-3); sharp: k / sum K#, which makes V a gradient.
        log_norm = log_k if cfg.normalization == "row" else log_sharp_kernel(log_k, u, tau, cfg.kernel)  # [T, b, N]
        coeff = signed_block_weights(log_k, log_norm, n_neg)  # [T, b, N]

    # 3. Forces sum_j c_ij (y_j - x_i) per temperature, then their sum.
    forces = coeff @ targets - coeff.sum(2, keepdim=True) * x  # [T, b, D], input coordinates
    mean_sq = shard_reduce(shard, "sum", forces.square().sum(dim=(1, 2))) / (b_total * d)  # [T]
    rms = force_rms(mean_sq, coord_scale)  # [T]
    if cfg.drift_norm:
        # unit RMS per temperature (normalised coordinates): every bandwidth has an equal say.
        forces = forces / rms[:, None, None]
    return DriftResult(drift=forces.sum(0), scale=coord_scale, force_rms=rms)  # drift [b, D]


def target_loss(x: Tensor, displacement: Tensor, scale: Tensor) -> Tensor:
    """mean(((x - sg(x + d)) / s)^2), the released loss: d = V (or V after friction) and s the
    drift's coordinate scale; its gradient -2 d / (s^2 B D) moves x along the drift."""
    target = (x + displacement).detach()  # [B, D]
    return ((x - target) / scale).square().mean()


def drift_loss(
    x: Tensor, pos: Tensor, neg: Tensor | None, cfg: DriftConfig
) -> tuple[Tensor, DriftResult]:
    """The released drift loss of generated ``x`` (B, D) with its graph, and the drift it used.

    Friction-free: training (dmf_ray.trainer.engine) applies friction to V between
    :func:`drift_field` and :func:`target_loss`, so it calls those two itself.
    """
    result = drift_field(x, pos, neg, cfg)
    return target_loss(x, result.drift, result.scale), result


# --------------------------------------------------------------------------- shared steps
# Public because dmf_ray.core.drift_fast and dmf_ray.core.families build on them.


def check_shapes(gen: Tensor, pos: Tensor, **optional: Tensor | None) -> None:
    """Reject inputs that are not non-empty row x feature matrices of one feature dimension;
    ``optional`` are further named row sets that may be None (``neg``)."""
    named = {"gen": gen, "pos": pos, **optional}
    given = [t for t in named.values() if t is not None]
    if any(t.ndim != 2 for t in given):
        names = list(named)
        raise ValueError(f"{', '.join(names[:-1])} and {names[-1]} must be 2-D tensors (rows x features)")
    if any(t.shape[1] != gen.shape[1] for t in given):
        dims = ", ".join(f"{name} {None if t is None else t.shape[1]}" for name, t in named.items())
        raise ValueError(f"feature dimensions differ: {dims}")
    if pos.shape[0] == 0 or gen.shape[0] == 0:
        raise ValueError("gen and pos must each hold at least one row")


def drift_targets(gen: Tensor, pos: Tensor, neg: Tensor | None, cfg: DriftConfig) -> tuple[Tensor, Tensor, int]:
    """Detached float32 ``gen`` [B, D], the target set [gen | neg | pos] [N, D] and its number
    of negatives (the generated rows only under ``self_negatives``)."""
    check_shapes(gen, pos, neg=neg)
    x = gen.detach().float()
    blocks = [x] if cfg.self_negatives else []
    if neg is not None:
        blocks.append(neg.detach().float())
    n_neg = sum(blk.shape[0] for blk in blocks)
    if n_neg == 0 and cfg.normalization != "row":
        raise ValueError(f"{cfg.normalization} normalisation needs negatives: enable self_negatives or pass neg")
    if cfg.self_negatives and neg is None and x.shape[0] < 2:
        raise ValueError("self_negatives needs at least 2 generated rows (a sample does not repel itself)")
    return x, torch.cat(blocks + [pos.detach().float()], dim=0), n_neg


def kernel_argument(dist: Tensor, row_offset: int, dist_scale: Tensor, cfg: DriftConfig) -> Tensor:
    """Distances [c, N] -> u = r / s (Laplace) or (r / s)^2 (Gaussian), IN PLACE.

    Self entries (row ``row_offset + i``) become +inf, which removes a sample's pull on itself
    exactly at every temperature (the released code adds a large distance instead).
    """
    u = dist.div_(dist_scale)
    if cfg.kernel == "gaussian":
        u.square_()
    if cfg.self_negatives:
        rows = torch.arange(u.shape[0], device=u.device)
        u[rows, rows + row_offset] = math.inf
    return u


def kappas(cfg: DriftConfig) -> list[float]:
    """log k = -kappa * u: kappa = 1/tau (Laplace, u = r) or 1/(2 tau^2) (Gaussian, u = r^2)."""
    if cfg.kernel == "laplace":
        return [1.0 / t for t in cfg.temperatures]
    return [0.5 / (t * t) for t in cfg.temperatures]


def log_sharp_kernel(log_k: Tensor, u: Tensor, tau: Tensor | float, kernel: str) -> Tensor:
    """log K#(r) with K#(r) = int_r^inf s k(s) ds (Franz et al. 2026), from log k and u.

    Laplace: K# = tau (r + tau) k; Gaussian: K# = tau^2 k. Since grad_x K#(|x - y|) =
    k (y - x), weights k / sum K# make the drift grad log Z#_p - grad log Z#_q. ``u`` = +inf
    (a masked entry) stays at log K# = -inf.
    """
    log_tau = torch.log(tau) if isinstance(tau, Tensor) else math.log(tau)
    if kernel == "gaussian":
        return log_k + 2.0 * log_tau
    finite_u = u.clamp_max(torch.finfo(u.dtype).max)  # inf + tau would give -inf + inf = NaN
    return log_k + log_tau + torch.log(finite_u + tau)


def signed_block_weights(log_k: Tensor, log_norm: Tensor, n_neg: int) -> Tensor:
    """Coefficients [..., N] of the ``row`` and ``sharp`` forms: -k / sum exp(log_norm) over the
    first ``n_neg`` columns (negatives), +k / sum exp(log_norm) over the rest (positives)."""
    parts = (slice(0, n_neg), slice(n_neg, None))
    neg, pos = ((log_k[..., part] - log_norm[..., part].logsumexp(-1, keepdim=True)).exp() for part in parts)
    return torch.cat([-neg, pos], -1)


def scales(total: Tensor | None, count: int, d: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """(mean distance s, coordinate scale s / sqrt(D)) from the float64 sum ``total`` of
    ``count`` distances, floored as released; both 1 when ``total`` is None (no distance_norm)."""
    if total is None:
        return like.new_ones(()), like.new_ones(())
    scale = (total / count).to(like.dtype)
    return scale.clamp_min(SCALE_FLOOR), (scale / math.sqrt(d)).clamp_min(SCALE_FLOOR)


def force_rms(mean_sq: Tensor, coord_scale: Tensor) -> Tensor:
    """Per-temperature force RMS (T,) in normalised coordinates, floored as released."""
    return (mean_sq / coord_scale.square()).clamp_min(FORCE_MS_FLOOR).sqrt()


def shard_reduce(shard: RowShard | None, op: str, t: Tensor) -> Tensor:
    """``shard.sum`` / ``shard.logsumexp`` of a partial result; the identity without a shard."""
    return t if shard is None else getattr(shard, op)(t)

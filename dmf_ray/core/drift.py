"""Drift fields V(x) that move generated samples towards data (Deng et al. 2026; DMF eq. 1-4).

Every generated sample x_i is attracted to positives y+ (data) and repelled by negatives y-
(the generated batch itself with its diagonal masked, plus optional fixed negatives). The
generator is trained towards the stop-gradient target x + V(x).

One algorithm, three normalisations of the kernel matrix, all on the joint target set
``Y = [gen (B) | extra negatives (K) | positives (M)]``:

* ``row`` -- the paper's eq. (1)-(3): separate row-softmaxes over negatives and positives,
  V = sum_j w+_j y+_j - sum_j w-_j y-_j  (the x terms cancel because both rows sum to one).
* ``bidirectional`` -- the authors' released code: affinity a_ij = sqrt(row-softmax * column-
  softmax), floored at sqrt(affinity_floor); positives get a+_ij * sum(a-_i.), negatives
  -a-_ij * sum(a+_i.), and V_i = sum_j c_ij y_j - (sum_j c_ij) x_i.
* ``sharp`` -- Franz et al. 2026 (REFERENCE 1): weights k(r) / sum K#(r) with
  K#(r) = int_r^inf s k(s) ds, so V = grad log Z#_p - grad log Z#_q is conservative.

Options: Laplace or Gaussian kernel, several temperatures summed, distance normalisation
(coordinates divided by mean-distance / sqrt(D)), per-temperature drift normalisation (each
temperature's force scaled to unit RMS). Presets are data (``PRESETS``), not code paths.

Sparse above-floor path (``bidirectional`` with a floor, CPU): every affinity is the floor f
plus an excess r = max(a - f, 0). The floor part is a constant matrix, so its weighted sum is a
rank-one term (f times the column sums of the targets), and only the entries with r > 0 need
the product. Few can: a_ij > f needs row-softmax x column-softmax > f^2, and since
sum_ij a_ij <= sqrt(B N) (Cauchy-Schwarz) at most sqrt(B N) / f entries exceed the floor.
When at most ``sparse_max_density`` of a chunk's entries are candidates (a bound test per
temperature, u_ij < row part + column part), their coefficients go through one stacked sparse
CSR product; otherwise the dense product runs. The result is the same to float32 round-off
(tests/test_drift.py); the speed depends on the data (benchmarks/RESULTS.md). CUDA always runs
the dense product: counting the candidates would cost a host sync per step.

Memory: the B x N kernel work (N = B + K + M) runs in row chunks of ``chunk_size`` generated
samples. Peak extra memory is about ``4 * chunk * N * (T + 2)`` bytes for the chunk's distance
and stacked coefficient matrices (T temperatures) plus ``4 * T * B * D`` bytes for the
per-temperature forces -- bounded by the chunk, never by B x N. The sparse path replaces the
coefficient matrices by two boolean masks (``2 * chunk * N`` bytes) and index arrays of at most
about ``(20 + 60 T) * sparse_max_density * chunk * N`` bytes. With several chunks the distance
matrix is recomputed once per pass (mean distance, column log-sum-exp, forces) instead of
being stored. ``matmul_precision="bf16"`` adds a bfloat16 copy of the coefficient matrices,
``2 * chunk * N * T`` bytes.

All elementwise math, softmaxes and accumulation are float32 (inputs in bf16/fp16 are upcast);
nothing here needs gradients. ``matmul_precision`` picks the matrix products' input precision:
``fp32`` (default, exact), ``tf32`` (CUDA tensor cores for both products; same as fp32 on CPU)
or ``bf16`` (the coefficient-weighted sums in bfloat16, distances still fp32/tf32: the fast path
on GPUs and on CPUs with AVX512-BF16/AMX). Measured errors against fp32 are in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from dmf_ray.errors import ConfigError

Kernel = Literal["laplace", "gaussian"]
Normalization = Literal["row", "bidirectional", "sharp"]
Family = Literal["drifting", "sharp", "kl_parzen", "mmd", "sinkhorn"]

KERNELS: tuple[str, ...] = ("laplace", "gaussian")
NORMALIZATIONS: tuple[str, ...] = ("row", "bidirectional", "sharp")
MatmulPrecision = Literal["fp32", "tf32", "bf16"]
MATMUL_PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
# Drift families (REFERENCE 1, WGF view; implemented in dmf_ray.core.families): ``drifting`` is this
# module's drift_field; ``sharp`` trains on the conservative potential whose negative gradient
# is the ``sharp``-normalised drift; ``kl_parzen``, ``mmd`` and ``sinkhorn`` are the KL (Parzen),
# MMD-witness and debiased entropic-OT vector fields.
FAMILIES: tuple[str, ...] = ("drifting", "sharp", "kl_parzen", "mmd", "sinkhorn")

# Squared distances are clamped here before the square root (as the released code does), so
# the self-distance is a tiny positive number rather than a NaN-producing negative round-off.
_SQ_DIST_EPS = 1e-8
# Floors of the released code: the distance scale and the per-temperature force RMS.
_SCALE_FLOOR = 1e-3
_FORCE_MS_FLOOR = 1e-8
# Elements of the chunk matrices allowed by the automatic chunk size (1 GiB of float32 over
# the distance, scratch and stacked coefficient matrices together). A batch that fits one
# chunk computes its distances once instead of once per pass: at B = M = 4096, D = 512 (the
# FFHQ-scale batch) one chunk needs 640 MiB and runs 1.7x faster than two.
_AUTO_CHUNK_ELEMENTS = 2**28
# Entries per row tile of the elementwise passes (4 MiB of float32: several passes over one
# tile stay in the 2 MiB-per-core L2 / shared L3 of the machines we measured).
_TILE_ELEMENTS = 2**20


@dataclass(frozen=True)
class DriftConfig:
    """How to compute the drift field; validated on construction.

    Attributes:
        kernel: ``laplace`` exp(-r/tau) or ``gaussian`` exp(-r^2 / (2 tau^2)).
        temperatures: one bandwidth or several; the drifts of all temperatures are summed.
        normalization: ``row`` | ``bidirectional`` | ``sharp`` (see the module docstring).
        distance_norm: divide coordinates by mean-distance / sqrt(D) so the mean normalised
            distance is about 1 (released code, item 2): bandwidths become scale-free.
        drift_norm: scale each temperature's force to unit RMS before summing (item 6).
        self_negatives: use the generated batch (diagonal masked) as negatives.
        affinity_floor: lower clamp of row-softmax x column-softmax before the square root
            (``bidirectional`` only; the released code uses 1e-6).
        chunk_size: generated rows per chunk; None picks the largest chunk within
            1 GiB of chunk matrices.
        matmul_precision: ``fp32`` | ``tf32`` | ``bf16`` input precision of the matrix products
            (module docstring); softmaxes and accumulation stay float32.
        sparse_max_density: ``bidirectional`` with a positive ``affinity_floor`` on CPU: affinities
            at the floor add a rank-one term, so when at most this fraction of a chunk's entries
            can lie above the floor the weighted sums run as one sparse product over those
            entries (exact; module docstring). 0 always uses the dense product; CUDA always
            does (the sparse path must count entries on the host).
        family: which drift family trains the generator (``FAMILIES``; see
            :mod:`dmf_ray.core.families`). ``drifting`` (the default) is :func:`drift_field` unchanged.
        sinkhorn_epsilon: entropic regularisation of the ``sinkhorn`` family, on the squared
            distance in the same units as the kernel's distances: divided by the distance scale
            (mean distance) when ``distance_norm`` is on -- so 0.05 blurs over about
            sqrt(0.05) = 0.22 mean distances whatever the data scale -- and absolute otherwise,
            exactly like ``temperatures``.
        sinkhorn_iterations: log-domain Sinkhorn updates (each one f- and one g-update).
    """

    kernel: Kernel = "laplace"
    temperatures: tuple[float, ...] = (0.02, 0.05, 0.2)
    normalization: Normalization = "bidirectional"
    distance_norm: bool = True
    drift_norm: bool = True
    self_negatives: bool = True
    affinity_floor: float = 1e-6
    chunk_size: int | None = None
    matmul_precision: MatmulPrecision = "fp32"
    sparse_max_density: float = 0.08
    family: Family = "drifting"
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 50

    def __post_init__(self) -> None:
        temps = self.temperatures
        if isinstance(temps, (int, float)) and not isinstance(temps, bool):
            temps = (float(temps),)
        if not isinstance(temps, (list, tuple)):
            raise ConfigError("drift.temperatures", f"must be a number or a list of numbers, got {temps!r}")
        if len(temps) == 0:
            raise ConfigError("drift.temperatures", "must not be empty")
        for t in temps:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
                raise ConfigError("drift.temperatures", f"every temperature must be a finite number > 0, got {t!r}")
        object.__setattr__(self, "temperatures", tuple(float(t) for t in temps))
        if self.kernel not in KERNELS:
            raise ConfigError("drift.kernel", f"must be one of {list(KERNELS)}, got {self.kernel!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(
                "drift.normalization", f"must be one of {list(NORMALIZATIONS)}, got {self.normalization!r}"
            )
        for name in ("distance_norm", "drift_norm", "self_negatives"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"drift.{name}", f"must be true or false, got {getattr(self, name)!r}")
        if not (0.0 <= self.affinity_floor < 1.0):
            raise ConfigError("drift.affinity_floor", f"must be in [0, 1), got {self.affinity_floor!r}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError(
                "drift.matmul_precision", f"must be one of {list(MATMUL_PRECISIONS)}, got {self.matmul_precision!r}"
            )
        density = self.sparse_max_density
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0.0 <= density <= 1.0:
            raise ConfigError("drift.sparse_max_density", f"must be a number in [0, 1], got {density!r}")
        object.__setattr__(self, "sparse_max_density", float(density))
        if self.chunk_size is not None and (isinstance(self.chunk_size, bool) or int(self.chunk_size) < 1):
            raise ConfigError("drift.chunk_size", f"must be a positive integer or null, got {self.chunk_size!r}")
        if not isinstance(self.family, str) or self.family not in FAMILIES:
            raise ConfigError("drift.family", f"must be one of {list(FAMILIES)}, got {self.family!r}")
        eps = self.sinkhorn_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ConfigError("drift.sinkhorn_epsilon", f"must be a finite number > 0, got {eps!r}")
        object.__setattr__(self, "sinkhorn_epsilon", float(eps))
        its = self.sinkhorn_iterations
        if isinstance(its, bool) or not isinstance(its, int) or its < 1:
            raise ConfigError("drift.sinkhorn_iterations", f"must be an integer >= 1, got {its!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples) for YAML / MLflow params."""
        out = asdict(self)
        out["temperatures"] = list(self.temperatures)
        return out


# Presets are data. `reference` is the authors' released algorithm (REFERENCE 1, items 1-6);
# `toy` their 2-D notebook (item 7);
# `paper` is the DMF paper's eq. (1)-(4): row normalisation, Laplace kernel, one bandwidth,
# no distance or drift normalisation.
PRESETS: dict[str, dict[str, Any]] = {
    "reference": dict(
        kernel="laplace",
        temperatures=(0.02, 0.05, 0.2),
        normalization="bidirectional",
        distance_norm=True,
        drift_norm=True,
        self_negatives=True,
        affinity_floor=1e-6,
    ),
    # The released 2-D toy notebook (REFERENCE 1, item 7): k / sqrt(row_sum * col_sum) with no
    # floor, one temperature, no distance or drift normalisation.
    "toy": dict(
        kernel="laplace",
        temperatures=(0.05,),
        normalization="bidirectional",
        distance_norm=False,
        drift_norm=False,
        self_negatives=True,
        affinity_floor=0.0,
    ),
    "paper": dict(
        kernel="laplace",
        temperatures=(1.0,),
        normalization="row",
        distance_norm=False,
        drift_norm=False,
        self_negatives=True,
    ),
}


def make_drift_config(preset: str | None = None, **options: Any) -> DriftConfig:
    """Build a config from an optional preset overridden by keyword options.

    Raises ConfigError for an unknown preset or option name.
    """
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError("drift.preset", f"must be one of {sorted(PRESETS)}, got {preset!r}")
        base = dict(PRESETS[preset])
    known = {f.name for f in fields(DriftConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"drift.{unknown[0]}", f"unknown option (known: {sorted(known)})")
    base.update(options)
    return DriftConfig(**base)


@dataclass(frozen=True)
class DriftResult:
    """The drift and the coordinate scale it was computed in.

    Attributes:
        drift: V, shape (B, D), float32, in input coordinates: the target is x + V.
        scale: the coordinate scale s (mean distance / sqrt(D) under ``distance_norm``,
            otherwise 1). The released loss is mean(((x - sg(x + V)) / s)^2).
        force_rms: RMS of each temperature's force before drift normalisation, in normalised
            coordinates, shape (T,) -- a diagnostic (the released code logs its square).
    """

    drift: Tensor
    scale: Tensor
    force_rms: Tensor


def compute_drift(
    gen: Tensor,
    pos: Tensor,
    neg: Tensor | None = None,
    *,
    preset: str | None = None,
    **options: Any,
) -> Tensor:
    """Drift V for generated samples ``gen`` (B, D) against positives ``pos`` (M, D).

    ``neg`` (K, D) are extra fixed negatives; the generated batch is always a negative set too
    unless ``self_negatives=False``. ``preset`` is ``"reference"``, ``"toy"`` or ``"paper"``; keyword
    options (see DriftConfig) override it. Returns V (B, D) float32 in input coordinates.
    """
    return drift_field(gen, pos, neg, make_drift_config(preset, **options)).drift


class RowShard(Protocol):
    """This process's share of a data-parallel batch, and how to reduce across processes.

    With a shard, ``gen`` passed to :func:`drift_field` is the whole (all-gathered) generated
    batch -- every sample is a negative for every other -- but only the rows ``rows`` are
    computed here. The three global quantities (distance sum, column log-sum-exp, force mean
    square) are reduced across processes, so the result equals the single-process drift of
    those rows while each process does 1/N of the B x N work.
    """

    rows: slice

    def sum(self, t: Tensor) -> Tensor: ...

    def logsumexp(self, t: Tensor) -> Tensor: ...


def drift_field(gen: Tensor, pos: Tensor, neg: Tensor | None, cfg: DriftConfig, shard: RowShard | None = None) -> DriftResult:
    """Compute the drift under ``cfg``; see the module docstring for the algorithm and memory.

    With ``shard`` only the rows ``shard.rows`` of ``gen`` are computed (and returned).
    """
    x_all, targets, n_neg = _prepare(gen, pos, neg, cfg)
    b_total, d = x_all.shape
    rows = shard.rows if shard is not None else slice(0, b_total)
    x = x_all[rows]
    b, first = x.shape[0], rows.start or 0
    n = targets.shape[0]
    chunk = _chunk_rows(cfg, b, n)
    ws = _Workspace(chunk, n, len(cfg.temperatures), x.device, cfg.matmul_precision)
    starts = range(first, first + b, chunk)  # global row indices (the self-mask needs them)

    def local(start: int) -> slice:
        return slice(start - first, start - first + chunk)

    # Pass 1: the distance scale (mean over the whole B x N matrix, self-distances included).
    cached: Tensor | None = None
    total: Tensor | None = None
    if cfg.distance_norm:
        if chunk >= b:
            cached = ws.distances(x, targets)
            total = _float64_total(cached)
        else:
            total = sum(_float64_total(ws.distances(x[local(s)], targets)) for s in starts)
        total = _reduce(shard, "sum", total)
    dist_scale, coord_scale = _scales(total, b_total * n, d, x)
    if chunk >= b:
        cached = _kernel_argument_(cached if cached is not None else ws.distances(x, targets), first, dist_scale, cfg)

    def kernel_args(start: int) -> Tensor:
        if cached is not None:
            return cached
        dist = ws.distances(x[local(start)], targets)
        return _kernel_argument_(dist, start, dist_scale, cfg)

    # Pass 2 (bidirectional only): column log-sum-exp over ALL generated rows.
    half_col_lse = None
    if cfg.normalization == "bidirectional":
        col_lse = torch.full((len(cfg.temperatures), n), -math.inf, device=x.device)
        for start in starts:
            col_lse = torch.logaddexp(col_lse, _column_logsumexp(kernel_args(start), cfg, ws))
        half_col_lse = _reduce(shard, "logsumexp", col_lse).mul_(0.5)

    # Pass 3: per-temperature forces, chunk by chunk.
    forces = x.new_empty(len(cfg.temperatures), b, d)  # [T, B, D], input coordinates
    for start in starts:
        forces[:, local(start)] = _chunk_forces(x[local(start)], targets, kernel_args(start), n_neg, cfg, ws, half_col_lse)

    mean_sq = _reduce(shard, "sum", forces.square().sum(dim=(1, 2))) / (b_total * d)
    force_rms = _force_rms(mean_sq, coord_scale)
    if cfg.drift_norm:
        # Unit RMS in normalised coordinates, mapped back: s * (G / s) / rms = G / rms.
        forces.div_(force_rms[:, None, None])
    return DriftResult(drift=forces.sum(0), scale=coord_scale, force_rms=force_rms)


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 tensor-core matmuls on CUDA inside the block (no effect on CPU), restored after."""
    if not enabled:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _float64_total(m: Tensor) -> Tensor:
    """Sum of a float32 matrix: rows summed in float32 (pairwise, in cache), rows in float64.

    ``m.sum(dtype=float64)`` converts the whole matrix first, which costs more than the sum.
    """
    return m.sum(1).sum(dtype=torch.float64)


def _reduce(shard: RowShard | None, op: str, t: Tensor) -> Tensor:
    """Reduce a per-process partial result across the shard's processes (identity without one)."""
    return t if shard is None else getattr(shard, op)(t)


def _scales(total: Tensor | None, count: int, d: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """(distance scale, coordinate scale) from the (float64) sum ``total`` of ``count`` distances.

    The distance scale s is the mean distance (kernel distances are r / s), the coordinate
    scale s / sqrt(D) the loss scale; both floored as released. ``total`` None (no
    ``distance_norm``): both are 1. In ``like``'s dtype and device; shared with
    dmf_ray.core.families so every family uses the same scales.
    """
    if total is None:
        return like.new_ones(()), like.new_ones(())
    scale = (total / count).to(like.dtype)
    return scale.clamp_min(_SCALE_FLOOR), (scale / math.sqrt(d)).clamp_min(_SCALE_FLOOR)


def _force_rms(mean_sq: Tensor, coord_scale: Tensor) -> Tensor:
    """Per-temperature force RMS in the normalised coordinates (forces / coord_scale), floored as
    released; ``mean_sq`` is the mean square of the forces in input coordinates, shape (T,)."""
    return (mean_sq / coord_scale.square()).clamp_min(_FORCE_MS_FLOOR).sqrt()


class _Workspace:
    """Chunk-sized buffers reused across chunks and passes.

    Fresh 100 MB tensors cost more in page faults than the arithmetic done on them, so the
    distance matrix, one scratch matrix and the stacked coefficient matrices (or the sparse
    path's masks) are allocated once per call and every elementwise step writes into them in
    place.
    """

    def __init__(self, chunk: int, n: int, n_temps: int, device: torch.device, precision: str = "fp32") -> None:
        self.n = n
        self.n_temps = n_temps
        self.precision = precision
        self.chunk = chunk
        self.device = device
        self._dist = torch.empty(chunk * n, device=device)
        self._scratch = torch.empty(chunk * n, device=device)
        # allocated on first use: a call served by the sparse floor path needs masks, not these
        self._coeff: Tensor | None = None
        self._masks: Tensor | None = None
        self._coeff_bf16: Tensor | None = None
        self._targets_bf16: Tensor | None = None

    def weighted_sums(self, coeff: Tensor, targets: Tensor) -> Tensor:
        """coeff [R, N] @ targets [N, D] in float32, the product itself at ``precision``.

        ``bf16``: both operands rounded to bfloat16 (coefficients are in [-1, 1] and summed
        over N terms with float32 accumulation inside the matmul), result back in float32.
        The distances are never computed in bf16: |x|^2 + |y|^2 - 2 x.y cancels.
        """
        if self.precision != "bf16":
            with _tf32(self.precision == "tf32"):
                return torch.mm(coeff, targets)
        if self._targets_bf16 is None:
            self._targets_bf16 = targets.to(torch.bfloat16)
        if self._coeff_bf16 is None:
            self._coeff_bf16 = torch.empty(self.n_temps * self.chunk * self.n, device=self.device, dtype=torch.bfloat16)
        low = self._coeff_bf16[: coeff.numel()].view(coeff.shape).copy_(coeff)
        return torch.mm(low, self._targets_bf16).float()

    def distances(self, x_rows: Tensor, targets: Tensor) -> Tensor:
        """Euclidean distances [c, N] (|x|^2 + |y|^2 - 2 x.y, one matrix product)."""
        c = x_rows.shape[0]
        out = self._dist[: c * self.n].view(c, self.n)
        with _tf32(self.precision == "tf32"):
            torch.addmm(x_rows.square().sum(1, keepdim=True), x_rows, targets.T, alpha=-2.0, out=out)
        out.add_(targets.square().sum(1)[None, :]).clamp_min_(_SQ_DIST_EPS)
        return out.sqrt_()

    def scratch(self, c: int) -> Tensor:
        return self._scratch[: c * self.n].view(c, self.n)

    def masks(self, c: int) -> Tensor:
        """Two boolean [c, N] matrices (the sparse floor path's candidates and a scratch mask)."""
        if self._masks is None:
            self._masks = torch.empty(2 * self.chunk * self.n, device=self.device, dtype=torch.bool)
        return self._masks[: 2 * c * self.n].view(2, c, self.n)

    def coeff(self, c: int) -> Tensor:
        if self._coeff is None:
            self._coeff = torch.empty(self.n_temps * self.chunk * self.n, device=self.device)
        return self._coeff[: self.n_temps * c * self.n].view(self.n_temps, c, self.n)


def _check_shapes(gen: Tensor, pos: Tensor, **optional: Tensor | None) -> None:
    """Reject inputs that are not non-empty row x feature matrices of one feature dimension.

    ``optional`` are further named row sets that may be None (drift_field's ``neg``); the
    messages name exactly the sets passed. Shared with dmf_ray.core.families.
    """
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


def _prepare(gen: Tensor, pos: Tensor, neg: Tensor | None, cfg: DriftConfig) -> tuple[Tensor, Tensor, int]:
    """Upcast to float32, detach and stack the target set [gen | neg | pos]."""
    _check_shapes(gen, pos, neg=neg)
    x = gen.detach().float()
    blocks = [x] if cfg.self_negatives else []
    if neg is not None:
        blocks.append(neg.detach().float())
    n_neg = sum(blk.shape[0] for blk in blocks)
    if n_neg == 0 and cfg.normalization != "row":
        raise ValueError(f"{cfg.normalization} normalisation needs negatives: enable self_negatives or pass neg")
    if cfg.self_negatives and neg is None and x.shape[0] < 2:
        raise ValueError("self_negatives needs at least 2 generated rows (a sample does not repel itself)")
    targets = torch.cat(blocks + [pos.detach().float()], dim=0)  # [N, D]
    return x, targets, n_neg


def _chunk_rows(cfg: DriftConfig, b: int, n: int) -> int:
    """Generated rows per chunk: the configured size or the largest within the budget."""
    if cfg.chunk_size is not None:
        return min(int(cfg.chunk_size), b)
    per_row = n * (len(cfg.temperatures) + 2)
    return max(1, min(b, _AUTO_CHUNK_ELEMENTS // per_row))


def _kernel_argument_(dist: Tensor, row_offset: int, dist_scale: Tensor, cfg: DriftConfig) -> Tensor:
    """Turn distances [c, N] into the kernel argument u in place, self entries set to +inf.

    u = r (normalised distance) for Laplace, r^2 for Gaussian, so log k = -u * kappa_t with
    kappa_t = 1/tau or 1/(2 tau^2). Setting the self entries to +inf removes a sample's pull
    on itself exactly, for every temperature (the released code adds a large distance).
    """
    u = dist.div_(dist_scale)
    if cfg.kernel == "gaussian":
        u.square_()
    if cfg.self_negatives:
        rows = torch.arange(u.shape[0], device=u.device)
        u[rows, rows + row_offset] = math.inf
    return u


def _kappas(cfg: DriftConfig) -> list[float]:
    """log k = -kappa * u: kappa = 1/tau (Laplace, u = r) or 1/(2 tau^2) (Gaussian, u = r^2)."""
    if cfg.kernel == "laplace":
        return [1.0 / t for t in cfg.temperatures]
    return [0.5 / (t * t) for t in cfg.temperatures]


def _lse_(buf: Tensor, shift: Tensor, dim: int) -> Tensor:
    """log-sum-exp of ``buf`` along ``dim`` given each slice's maximum ``shift``; destroys buf.

    The kernel is monotone in u, so every maximum is known from one min of u and no separate
    max pass is needed.
    """
    shift = shift.clamp_min(torch.finfo(buf.dtype).min)  # a fully masked slice has max -inf
    buf.sub_(shift).exp_()
    return buf.sum(dim).log_().add_(shift.squeeze(dim))


def _row_tiles(u: Tensor) -> list[slice]:
    """Row slices of about ``_TILE_ELEMENTS`` entries: several passes over one tile stay in cache.

    CPU only: on CUDA one slice, since each tile costs kernel launches and the device's
    bandwidth, not its cache, bounds these passes.
    """
    rows, n = u.shape
    if u.device.type != "cpu":
        return [slice(0, rows)]
    step = max(1, _TILE_ELEMENTS // max(n, 1))
    return [slice(start, start + step) for start in range(0, rows, step)]


def _kernel_lse(u: Tensor, kappas: list[float], dim: int, scratch: Tensor) -> Tensor:
    """log sum exp(-kappa * u) along ``dim`` for every kappa: [T, c] (dim 1) or [T, N] (dim 0).

    Each slice is shifted by its minimum of u (the kernel is monotone, so that is its maximum;
    a fully masked slice, u = inf, gives -inf). Per cache-sized row tile and temperature: one
    fused ``add`` (shift - kappa * u), one in-place exp, one sum -- once the products are fast,
    these B x N passes bound the drift, and in cache they run about 1.6x faster (both
    log-sum-exps at B = M = 2048, D = 512, T = 3: 32 ms tiled against 51 ms over the matrix).
    """
    u_min = u.amin(dim, keepdim=True)
    finite = torch.finfo(u.dtype).max
    shifts = [(u_min * kappa).clamp_max_(finite) for kappa in kappas]
    tiles = _row_tiles(u)
    sums = [[] for _ in kappas]
    for tile in tiles:
        buf = scratch[tile]
        for t, kappa in enumerate(kappas):
            shift = shifts[t][tile] if dim == 1 else shifts[t]
            torch.add(shift, u[tile], alpha=-kappa, out=buf).exp_()
            sums[t].append(buf.sum(dim))
    total = [torch.cat(parts) if dim == 1 else torch.stack(parts).sum(0) for parts in sums]
    return torch.stack([tot.log_().sub_(shift.squeeze(dim)) for tot, shift in zip(total, shifts)])


def _column_logsumexp(u: Tensor, cfg: DriftConfig, ws: _Workspace) -> Tensor:
    """log sum_i k(x_i, y_j) over this chunk's rows, per temperature: [T, N]."""
    return _kernel_lse(u, _kappas(cfg), 0, ws.scratch(u.shape[0]))


def _chunk_forces(
    x_rows: Tensor,
    targets: Tensor,
    u: Tensor,
    n_neg: int,
    cfg: DriftConfig,
    ws: _Workspace,
    half_col_lse: Tensor | None,
) -> Tensor:
    """Per-temperature forces [T, c, D] for one chunk, in input coordinates.

    Builds the coefficient matrices c_ij of all temperatures in place, then applies them in one
    stacked product: force_i = sum_j c_ij y_j - (sum_j c_ij) x_i. The bidirectional form first
    tries the sparse above-floor product (:func:`_sparse_floor_forces`).
    """
    c = u.shape[0]
    scratch = ws.scratch(c)
    neg, pos = slice(0, n_neg), slice(n_neg, None)
    if cfg.normalization == "bidirectional":
        if _sparse_floor_eligible(cfg, u):
            row_lse, sparse = _sparse_floor_forces(targets, u, n_neg, cfg, ws, half_col_lse)
            if sparse is not None:
                return sparse
        else:
            row_lse = _kernel_lse(u, _kappas(cfg), 1, scratch)  # [T, c]
    coeff = ws.coeff(c)  # [T, c, N]
    for t, kappa in enumerate(_kappas(cfg)):
        logk = torch.mul(u, -kappa, out=coeff[t])  # [c, N]
        if cfg.normalization == "bidirectional":
            # log sqrt(row-softmax * col-softmax) = log k - row_lse / 2 - col_lse / 2
            logk.sub_(row_lse[t].mul(0.5)[:, None]).sub_(half_col_lse[t][None, :]).exp_()
            aff = logk.clamp_min_(math.sqrt(cfg.affinity_floor))
            sum_neg = aff[:, neg].sum(1, keepdim=True)
            sum_pos = aff[:, pos].sum(1, keepdim=True)
            aff[:, neg].mul_(sum_pos.neg_())  # repel negatives, weighted by total attraction
            aff[:, pos].mul_(sum_neg)  # attract positives, weighted by total repulsion
        else:
            for part, sign in ((neg, -1.0), (pos, 1.0)):
                if logk[:, part].shape[1] > 0:  # the row form may run without negatives
                    _normalise_part_(logk[:, part], u[:, part], scratch[:, part], kappa, cfg, sign)
    t_count = coeff.shape[0]
    weighted = ws.weighted_sums(coeff.view(t_count * c, -1), targets).view(t_count, c, -1)  # one product
    return weighted.sub_(coeff.sum(2, keepdim=True) * x_rows[None])


def _sparse_floor_eligible(cfg: DriftConfig, u: Tensor) -> bool:
    """The sparse path needs a floor, a host-side entry count (CPU) and fp32 products."""
    return (
        cfg.affinity_floor > 0.0
        and cfg.sparse_max_density > 0.0
        and u.device.type == "cpu"
        and cfg.matmul_precision != "bf16"
    )


def _sparse_floor_forces(
    targets: Tensor,
    u: Tensor,
    n_neg: int,
    cfg: DriftConfig,
    ws: _Workspace,
    half_col_lse: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """Row log-sum-exp [T, c] and the bidirectional forces [T, c, D] from the entries above the
    affinity floor only; exact.

    With floor f = sqrt(affinity_floor), every affinity is a = f + r with r = max(a - f, 0).
    The floor part is a constant matrix, so its weighted sum is f times a column sum of the
    targets (rank one), and only r needs a product. r is sparse: a_ij > f needs
    row-softmax x column-softmax > f^2, i.e. u_ij below a row part plus a column part for some
    temperature; by Cauchy-Schwarz sum_ij a_ij <= sqrt(B N), so at most sqrt(B N) / f entries
    can exceed the floor -- a fraction 1e3 / sqrt(B N) of the matrix at the released floor
    (35% at B = M = 2048, 4% at B = M = 16384), and far fewer on real data
    (benchmarks/RESULTS.md). The coefficient row sums cancel exactly (-A+ A- + A- A+ = 0), so
    no x_i term remains. The row log-sum-exp and the candidate test share one pass over
    cache-sized tiles of u.

    The forces are None when more than ``sparse_max_density`` of the chunk's entries are
    candidates; the caller then runs the dense product with the returned row log-sum-exp.
    """
    c, n = u.shape
    t_count = len(cfg.temperatures)
    kappas = torch.tensor(_kappas(cfg), device=u.device)[:, None]  # [T, 1]
    # a_ij > f  <=>  -2 kappa u_ij - row_lse_i - col_lse_j > log(affinity_floor)
    #           <=>  u_ij < row_part_i + col_part_j   (for at least one temperature)
    col_part = (-2.0 * half_col_lse - math.log(cfg.affinity_floor)) / (2.0 * kappas)  # [T, N]
    row_lse = u.new_empty(t_count, c)
    bound, (candidates, hit) = ws.scratch(c), ws.masks(c)
    for tile in _row_tiles(u):
        row_lse[:, tile] = _kernel_lse(u[tile], _kappas(cfg), 1, bound[tile])
        row_part = -row_lse[:, tile] / (2.0 * kappas)  # [T, tile]
        for t in range(t_count):
            torch.add(row_part[t, :, None], col_part[t][None, :], out=bound[tile])
            if t == 0:
                torch.lt(u[tile], bound[tile], out=candidates[tile])
            else:
                candidates[tile].logical_or_(torch.lt(u[tile], bound[tile], out=hit[tile]))
    if int(torch.count_nonzero(candidates)) > cfg.sparse_max_density * c * n:
        return row_lse, None
    rows, cols = candidates.nonzero(as_tuple=True)
    floor = math.sqrt(cfg.affinity_floor)
    # a - f = sqrt(row-softmax * column-softmax) - f at the candidates, every temperature
    log_aff = u[rows, cols][None, :] * -kappas
    log_aff.sub_(row_lse.index_select(1, rows), alpha=0.5).sub_(half_col_lse.index_select(1, cols))
    excess = log_aff.exp_().sub_(floor)  # [T, candidates]
    # a candidate may be above the floor at one temperature only: keep (t, entry) pairs > 0
    temp, entry = (excess > 0).nonzero(as_tuple=True)  # sorted by t, then row: CSR order
    values = excess[temp, entry]
    stack_rows, cols = temp * c + rows[entry], cols[entry]  # rows of the [T * c, N] stack
    is_neg = cols < n_neg
    above_neg = values.new_zeros(t_count * c).index_add_(0, stack_rows, values * is_neg)
    above_all = values.new_zeros(t_count * c).index_add_(0, stack_rows, values)
    a_pos = above_all.sub_(above_neg).add_(floor * (n - n_neg))  # row sums of the affinities,
    a_neg = above_neg.add_(floor * n_neg)  # floor included: [T * c]
    # coefficients: negatives -a * A+, positives a * A- (released item 5)
    values.mul_(torch.where(is_neg, -a_pos[stack_rows], a_neg[stack_rows]))
    row_ends = torch.bincount(stack_rows, minlength=t_count * c).cumsum_(0)
    crow = torch.cat([row_ends.new_zeros(1), row_ends])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        stacked = torch.sparse_csr_tensor(crow, cols, values, size=(t_count * c, n), check_invariants=False)
    weighted = stacked @ targets  # [T * c, D]
    weighted.add_(a_neg[:, None] * (floor * targets[n_neg:].sum(0))).sub_(a_pos[:, None] * (floor * targets[:n_neg].sum(0)))
    return row_lse, weighted.view(t_count, c, -1)


def _normalise_part_(logk: Tensor, u: Tensor, scratch: Tensor, kappa: float, cfg: DriftConfig, sign: float) -> None:
    """Row-normalise one block (negatives or positives) of log k in place into signed weights.

    ``row``: w = k / sum k (eq. 2-3). ``sharp``: w = k / sum K# with K#(r) = int_r^inf s k(s) ds
    (Laplace: K# = k tau (r + tau); Gaussian: K# = tau^2 k), which makes V = grad log Z#.
    """
    u_min = u.amin(1, keepdim=True)
    if cfg.normalization == "row":
        lse = _lse_(scratch.copy_(logk), u_min * -kappa, dim=1)
    elif cfg.kernel == "gaussian":  # log K# = log k + 2 log tau, tau^2 = 1 / (2 kappa)
        lse = _lse_(scratch.copy_(logk), u_min * -kappa, dim=1) - math.log(2.0 * kappa)
    else:  # Laplace: log K# = log k + log tau + log(r + tau), tau = 1 / kappa, maximal at min r
        tau = 1.0 / kappa
        # clamp keeps masked entries at log K# = -inf (finite + -inf) instead of inf - inf = NaN
        torch.clamp(u, max=torch.finfo(u.dtype).max, out=scratch).add_(tau).log_().add_(logk)
        lse = _lse_(scratch, u_min * -kappa + torch.log(u_min + tau), dim=1) + math.log(tau)
    logk.sub_(lse[:, None]).exp_().mul_(sign)

"""The drift of :func:`dmf_ray.core.drift.drift_field`, fast: same signature, same result.

Bounded memory and few passes over the B x N kernel matrix (N = B + K + M targets); training
and the benchmarks call this one, and tests/test_drift.py checks it against the readable
version, the naive oracle and itself across chunk sizes, shards and the sparse path:

* Row chunks. The kernel work runs in chunks of ``chunk_size`` generated rows (None: the
  largest chunk within 1 GiB of chunk matrices). Peak extra memory is about
  ``4 * chunk * N * (T + 2)`` bytes (distance, scratch and T stacked coefficient matrices) plus
  ``4 * T * B * D`` bytes of per-temperature forces -- bounded by the chunk, never by B x N.
  With several chunks the distances are recomputed once per pass (distance sum, column
  log-sum-exp, forces) instead of being stored; a batch that fits one chunk computes them once.
* One workspace. Fresh 100 MB tensors cost more in page faults than the arithmetic done on
  them, so the chunk buffers are allocated once per call and every elementwise step writes
  into them in place.
* Fused log-sum-exp over cache-sized tiles. The kernel is monotone in u, so every slice's
  maximum is known from one min of u; per row tile of about 4 MiB and temperature one fused
  ``add`` (shift - kappa u), one in-place exp and one sum (CPU; CUDA runs one tile, since there
  bandwidth, not cache, bounds these passes). On CPU the row and the column log-sum-exps share
  that exp: shifted by the chunk's smallest u, each tile is summed along both axes while in
  cache, and a temperature whose smallest sum is too small to trust is redone slice-shifted
  (:func:`_row_and_column_lse`). Measured gains: benchmarks/RESULTS.md.
* One stacked product. The coefficients of all temperatures are applied to the targets in one
  [T * c, N] @ [N, D] product: force_i = sum_j c_ij y_j - (sum_j c_ij) x_i.
* Sparse above-floor path (``bidirectional`` with a floor, CPU). Every affinity is the floor f
  plus an excess r = max(a - f, 0). The floor part is a constant matrix, so its weighted sum is
  a rank-one term (f times the column sums of the targets), and only the entries with r > 0
  need the product. Few can: a_ij > f needs row-softmax x column-softmax > f^2, and since
  sum_ij a_ij <= sqrt(B N) (Cauchy-Schwarz) at most sqrt(B N) / f entries exceed the floor. When
  at most ``sparse_max_density`` of a chunk's entries are candidates (one comparison per entry
  against the largest per-temperature bound; a tile none of whose rows can reach a
  temperature's bound skips that temperature; counting stops at the limit), their
  coefficients go through one stacked sparse CSR product, otherwise the dense product runs.
  The test takes ``5 * chunk * N`` bytes (a mask and a second float matrix) and the index
  arrays at most about ``(20 + 60 T) * sparse_max_density * chunk * N``. CUDA always runs the
  dense product: counting the candidates would cost a host sync per step.
* Matmul precision. All elementwise math, softmaxes and accumulation are float32 (bf16/fp16
  inputs are upcast). ``matmul_precision`` picks the products' input precision: ``fp32``
  (exact), ``tf32`` (CUDA tensor cores for both products; same as fp32 on CPU) or ``bf16`` (the
  coefficient-weighted sums in bfloat16, ``2 * chunk * N * T`` more bytes; the distances stay
  fp32/tf32 because |x|^2 + |y|^2 - 2 x.y cancels). Measured errors: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dmf_ray.core.drift import (
    SQ_DIST_EPS,
    DriftConfig,
    DriftResult,
    RowShard,
    drift_targets,
    force_rms,
    kappas,
    kernel_argument,
    log_sharp_kernel,
    make_drift_config,
    scales,
    shard_reduce,
)
from dmf_ray.core.geometry import sq_distances

# Elements of the chunk matrices allowed by the automatic chunk size: 1 GiB of float32 over the
# distance, scratch and stacked coefficient matrices together, so that the FFHQ-scale batch
# (B = M = 4096, D = 512: 640 MiB) runs in one chunk.
_AUTO_CHUNK_ELEMENTS = 2**28
# Entries per row tile of the elementwise passes (4 MiB of float32: several passes over one
# tile stay in the 2 MiB-per-core L2 / shared L3 of the machines we measured).
_TILE_ELEMENTS = 2**20
# Log of the smallest row or column sum (relative to the chunk's largest kernel value) that the
# one-exp row-and-column log-sum-exp accepts before recomputing a temperature slice-shifted.
SUM_LOG_SAFE = -40.0


def compute_drift(
    gen: Tensor,
    pos: Tensor,
    neg: Tensor | None = None,
    *,
    preset: str | None = None,
    **options: Any,
) -> Tensor:
    """Drift V (B, D) float32 of ``gen`` (B, D) against ``pos`` (M, D) and extra negatives ``neg``
    (K, D), from a preset (``drift.PRESETS``) overridden by DriftConfig keyword options."""
    return drift_field(gen, pos, neg, make_drift_config(preset, **options)).drift


def drift_field(gen: Tensor, pos: Tensor, neg: Tensor | None, cfg: DriftConfig, shard: RowShard | None = None) -> DriftResult:
    """:func:`dmf_ray.core.drift.drift_field`, chunked (module docstring)."""
    x_all, targets, n_neg = drift_targets(gen, pos, neg, cfg)
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
        total = shard_reduce(shard, "sum", total)
    dist_scale, coord_scale = scales(total, b_total * n, d, x)
    if chunk >= b:
        cached = kernel_argument(cached if cached is not None else ws.distances(x, targets), first, dist_scale, cfg)

    def kernel_args(start: int) -> Tensor:
        if cached is not None:
            return cached
        dist = ws.distances(x[local(start)], targets)
        return kernel_argument(dist, start, dist_scale, cfg)

    # Pass 2 (bidirectional only): row log-sum-exps, and the column ones over ALL generated rows.
    half_col_lse = row_lse = None
    if cfg.normalization == "bidirectional":
        col_lse = torch.full((len(cfg.temperatures), n), -math.inf, device=x.device)
        row_lse = x.new_empty(len(cfg.temperatures), b)
        for start in starts:
            u = kernel_args(start)
            row_lse[:, local(start)], chunk_col_lse = _row_and_column_lse(u, kappas(cfg), ws.scratch(u.shape[0]))
            col_lse = torch.logaddexp(col_lse, chunk_col_lse)
        half_col_lse = shard_reduce(shard, "logsumexp", col_lse).mul_(0.5)

    # Pass 3: per-temperature forces, chunk by chunk.
    def forces_of(start: int) -> Tensor:
        chunk_row_lse = None if row_lse is None else row_lse[:, local(start)]
        return _chunk_forces(x[local(start)], targets, kernel_args(start), n_neg, cfg, ws, chunk_row_lse, half_col_lse)

    if len(starts) == 1:
        forces = forces_of(first)  # [T, B, D], input coordinates
    else:
        forces = x.new_empty(len(cfg.temperatures), b, d)
        for start in starts:
            forces[:, local(start)] = forces_of(start)

    mean_sq = shard_reduce(shard, "sum", forces.square().sum(dim=(1, 2))) / (b_total * d)
    rms = force_rms(mean_sq, coord_scale)
    # drift_norm: unit RMS per temperature in normalised coordinates, mapped back:
    # s * (G / s) / rms = G / rms; the weighted sum over temperatures is one pass
    weights = rms.reciprocal() if cfg.drift_norm else torch.ones_like(rms)
    return DriftResult(drift=torch.tensordot(weights, forces, dims=1), scale=coord_scale, force_rms=rms)


def _chunk_rows(cfg: DriftConfig, b: int, n: int) -> int:
    if cfg.chunk_size is not None:
        return min(int(cfg.chunk_size), b)
    per_row = n * (len(cfg.temperatures) + 2)
    return max(1, min(b, _AUTO_CHUNK_ELEMENTS // per_row))


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
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
    """Rows summed in float32, then in float64: ``m.sum(dtype=float64)`` would first convert
    the whole matrix, which costs more than the sum."""
    return m.sum(1).sum(dtype=torch.float64)


class _Workspace:
    """Chunk-sized buffers reused across chunks and passes (module docstring)."""

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
        self._mask: Tensor | None = None
        self._spare: Tensor | None = None
        self._coeff_bf16: Tensor | None = None
        self._targets_bf16: Tensor | None = None

    def weighted_sums(self, coeff: Tensor, targets: Tensor) -> Tensor:
        """coeff [R, N] @ targets [N, D] -> float32, the product at ``precision`` (bf16: both
        operands rounded, float32 accumulation inside the matmul)."""
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
        c = x_rows.shape[0]
        out = self._dist[: c * self.n].view(c, self.n)
        with _tf32(self.precision == "tf32"):
            return sq_distances(x_rows, targets, floor=SQ_DIST_EPS, out=out).sqrt_()

    def scratch(self, c: int) -> Tensor:
        return self._scratch[: c * self.n].view(c, self.n)

    def mask(self, c: int) -> Tensor:
        if self._mask is None:
            self._mask = torch.empty(self.chunk * self.n, device=self.device, dtype=torch.bool)
        return self._mask[: c * self.n].view(c, self.n)

    def spare(self, c: int) -> Tensor:
        """A second float scratch matrix (the sparse path's candidate test), allocated on first use."""
        if self._spare is None:
            self._spare = torch.empty(self.chunk * self.n, device=self.device)
        return self._spare[: c * self.n].view(c, self.n)

    def coeff(self, c: int) -> Tensor:
        if self._coeff is None:
            self._coeff = torch.empty(self.n_temps * self.chunk * self.n, device=self.device)
        return self._coeff[: self.n_temps * c * self.n].view(self.n_temps, c, self.n)


def _lse_(buf: Tensor, shift: Tensor, dim: int) -> Tensor:
    """log-sum-exp of ``buf`` along ``dim`` given each slice's maximum ``shift``; destroys buf."""
    shift = shift.clamp_min(torch.finfo(buf.dtype).min)  # a fully masked slice has max -inf
    buf.sub_(shift).exp_()
    return buf.sum(dim).log_().add_(shift.squeeze(dim))


def _row_tiles(u: Tensor) -> list[slice]:
    """Row slices of about ``_TILE_ELEMENTS`` entries on CPU; one slice on CUDA (module docstring)."""
    rows, n = u.shape
    if u.device.type != "cpu":
        return [slice(0, rows)]
    step = max(1, _TILE_ELEMENTS // max(n, 1))
    return [slice(start, start + step) for start in range(0, rows, step)]


def _kernel_lse(u: Tensor, kappas: list[float], dim: int, scratch: Tensor) -> Tensor:
    """log sum exp(-kappa * u) along ``dim`` for every kappa: [T, c] (dim 1) or [T, N] (dim 0),
    each slice shifted by its kernel maximum (its min of u), fused per row tile."""
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


def _row_and_column_lse(u: Tensor, kappas: list[float], scratch: Tensor) -> tuple[Tensor, Tensor]:
    """log sum_j exp(-kappa u_ij) [T, c] and log sum_i exp(-kappa u_ij) [T, N] for every kappa.

    On CPU both come from one exp per entry and temperature: e_ij = exp(kappa (g - u_ij)),
    shifted by the chunk's smallest u (g), is summed along rows and columns while the tile is in
    cache. Every dropped (underflowed) term is below e^-87, so a row or column whose sum is at
    least e^SUM_LOG_SAFE has relative error below c e^(-87 - SUM_LOG_SAFE); a temperature with a
    smaller sum is recomputed, for that direction, with per-slice shifts (:func:`_kernel_lse`).
    CUDA runs the two shifted passes (no host read of that check there).
    """
    if u.device.type != "cpu":
        return _kernel_lse(u, kappas, 1, scratch), _kernel_lse(u, kappas, 0, scratch)
    shifts = [(u.amin() * kappa).clamp_max_(torch.finfo(u.dtype).max) for kappa in kappas]
    row_sums: list[list[Tensor]] = [[] for _ in kappas]
    col_sums = [u.new_zeros(u.shape[1]) for _ in kappas]
    for tile in _row_tiles(u):
        buf = scratch[tile]
        for t, kappa in enumerate(kappas):
            torch.add(shifts[t], u[tile], alpha=-kappa, out=buf).exp_()
            row_sums[t].append(buf.sum(1))
            col_sums[t].add_(buf.sum(0))
    lses = []
    for dim, sums in ((1, [torch.cat(parts) for parts in row_sums]), (0, col_sums)):
        lse = torch.stack(sums).log_()  # [T, c] or [T, N], relative to exp(-kappa g)
        for t, kappa in enumerate(kappas):
            if bool((lse[t] < SUM_LOG_SAFE).any()):
                lse[t] = _kernel_lse(u, [kappa], dim, scratch)[0]
            else:
                lse[t].sub_(shifts[t])
        lses.append(lse)
    return lses[0], lses[1]


def _chunk_forces(
    x_rows: Tensor,
    targets: Tensor,
    u: Tensor,
    n_neg: int,
    cfg: DriftConfig,
    ws: _Workspace,
    row_lse: Tensor | None,
    half_col_lse: Tensor | None,
) -> Tensor:
    """Per-temperature forces [T, c, D] of one chunk, input coordinates: the coefficients of all
    temperatures built in place, then one stacked product (or the sparse floor path).
    ``row_lse`` [T, c] and ``half_col_lse`` [T, N] are the bidirectional form's log-sum-exps."""
    c = u.shape[0]
    scratch = ws.scratch(c)
    neg, pos = slice(0, n_neg), slice(n_neg, None)
    if cfg.normalization == "bidirectional" and _sparse_floor_eligible(cfg, u):
        sparse = _sparse_floor_forces(targets, u, n_neg, cfg, ws, row_lse, half_col_lse)
        if sparse is not None:
            return sparse
    coeff = ws.coeff(c)  # [T, c, N]
    for t, kappa in enumerate(kappas(cfg)):
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
                    _normalise_part_(logk[:, part], u[:, part], scratch[:, part], t, cfg, sign)
    t_count = coeff.shape[0]
    weighted = ws.weighted_sums(coeff.view(t_count * c, -1), targets).view(t_count, c, -1)  # one product
    return weighted.sub_(coeff.sum(2, keepdim=True) * x_rows[None])


def _sparse_floor_eligible(cfg: DriftConfig, u: Tensor) -> bool:
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
    row_lse: Tensor,
    half_col_lse: Tensor,
) -> Tensor | None:
    """The bidirectional forces [T, c, D] from the entries above the floor only (module
    docstring); None when more than ``sparse_max_density`` of the entries are candidates. The
    coefficient row sums cancel (-A+ A- + A- A+ = 0): no x_i term.
    """
    c, n = u.shape
    t_count = len(cfg.temperatures)
    kappa = torch.tensor(kappas(cfg), device=u.device)[:, None]  # [T, 1]
    # a_ij > f  <=>  -2 kappa u_ij - row_lse_i - col_lse_j > log(affinity_floor)
    #           <=>  u_ij < row_part_i + col_part_j   (for at least one temperature)
    col_part = (-2.0 * half_col_lse - math.log(cfg.affinity_floor)) / (2.0 * kappa)  # [T, N]
    row_part = -row_lse / (2.0 * kappa)  # [T, c]
    # A row can hold a candidate at temperature t only if its nearest target is within
    # row_part + max(col_part): a tile none of whose rows passes skips that temperature's test.
    row_reach = (row_part + col_part.amax(1, keepdim=True) > u.amin(1)[None]).tolist()  # [T][c]
    limit = cfg.sparse_max_density * c * n
    count = 0
    reach, other, candidates = ws.scratch(c), ws.spare(c), ws.mask(c)
    for tile in _row_tiles(u):
        # reach_ij = max_t (row_part_ti + col_part_tj): one comparison per entry for all t
        tested = [t for t in range(t_count) if any(row_reach[t][tile])]
        for k, t in enumerate(tested):
            out = reach[tile] if k == 0 else other[tile]
            torch.add(row_part[t, tile, None], col_part[t][None, :], out=out)
            if k > 0:
                torch.maximum(reach[tile], out, out=reach[tile])
        if not tested:
            candidates[tile].zero_()
            continue
        torch.lt(u[tile], reach[tile], out=candidates[tile])
        count += int(torch.count_nonzero(candidates[tile]))
        if count > limit:
            return None
    flat = _flat_nonzero(candidates)  # row-major: sorted by row
    rows, cols = flat.div(n, rounding_mode="floor"), flat.remainder(n)
    floor = math.sqrt(cfg.affinity_floor)
    # a - f = sqrt(row-softmax * column-softmax) - f at the candidates, every temperature
    log_aff = u.view(-1).index_select(0, flat)[None, :] * -kappa
    log_aff.sub_(row_lse.index_select(1, rows), alpha=0.5).sub_(half_col_lse.index_select(1, cols))
    excess = log_aff.exp_().sub_(floor)  # [T, candidates]
    # a candidate may be above the floor at one temperature only: keep (t, entry) pairs > 0
    kept = _flat_nonzero(excess > 0)  # sorted by t, then row: CSR order
    values = excess.view(-1).index_select(0, kept)
    temp, entry = kept.div(flat.numel(), rounding_mode="floor"), kept.remainder(flat.numel())
    stack_rows, cols = temp.mul_(c).add_(rows.index_select(0, entry)), cols.index_select(0, entry)  # rows of the [T * c, N] stack
    is_neg = cols < n_neg
    above_neg = values.new_zeros(t_count * c).index_add_(0, stack_rows, values * is_neg)
    above_all = values.new_zeros(t_count * c).index_add_(0, stack_rows, values)
    a_pos = above_all.sub_(above_neg).add_(floor * (n - n_neg))  # row sums of the affinities,
    a_neg = above_neg.add_(floor * n_neg)  # floor included: [T * c]
    # coefficients: negatives -a * A+, positives a * A- (as released)
    values.mul_(torch.where(is_neg, -a_pos.index_select(0, stack_rows), a_neg.index_select(0, stack_rows)))
    row_ends = torch.bincount(stack_rows, minlength=t_count * c).cumsum_(0)
    crow = torch.cat([row_ends.new_zeros(1), row_ends])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        stacked = torch.sparse_csr_tensor(crow, cols, values, size=(t_count * c, n), check_invariants=False)
    # the floor's rank-one terms f (A- sum y+ - A+ sum y-), one [T c, 2] @ [2, D] product, plus
    # the sparse product of the excess
    row_sums = torch.stack([a_neg, -a_pos], 1)  # [T * c, 2]
    column_sums = torch.stack([targets[n_neg:].sum(0), targets[:n_neg].sum(0)]).mul_(floor)  # [2, D]
    weighted = torch.mm(row_sums, column_sums).addmm_(stacked, targets)  # [T * c, D]; in place: fastest measured
    return weighted.view(t_count, c, -1)


def _flat_nonzero(mask: Tensor) -> Tensor:
    """Row-major flat indices of a CPU boolean tensor's True entries (int64). numpy's
    flatnonzero on the shared memory takes about half the time of torch's nonzero here."""
    return torch.from_numpy(np.flatnonzero(mask.numpy()))


def _normalise_part_(logk: Tensor, u: Tensor, scratch: Tensor, t: int, cfg: DriftConfig, sign: float) -> None:
    """One block of temperature ``t``'s log k -> signed weights k / sum k (row) or k / sum K#, in place."""
    if cfg.normalization == "row":
        lse = _lse_(scratch.copy_(logk), u.amin(1, keepdim=True) * -kappas(cfg)[t], dim=1)
    else:
        lse = log_sharp_kernel(logk, u, cfg.temperatures[t], cfg.kernel).logsumexp(1)
    logk.sub_(lse[:, None]).exp_().mul_(sign)

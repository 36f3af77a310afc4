"""Identities the drift field must satisfy (the authors' released drift_loss.py; DMF theorem 1;
Franz et al. sharp kernel), and the fast path (dmf_ray.core.drift_fast) equal to the readable one
(dmf_ray.core.drift)."""

from __future__ import annotations

import math

import pytest
import torch

from dmf_ray.core import drift
from dmf_ray.core.drift import DriftConfig, drift_loss, make_drift_config, target_loss
from dmf_ray.core.drift_fast import compute_drift, drift_field
from dmf_ray.core.drift_naive import naive_reference_drift

NORMALIZATIONS = ("row", "bidirectional", "sharp")
KERNELS = ("laplace", "gaussian")


def _samples(b: int = 24, m: int = 20, k: int = 16, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    gen = torch.randn(b, d, generator=g, dtype=torch.float64)
    pos = torch.randn(m, d, generator=g, dtype=torch.float64) * 0.8 + 0.7
    neg = torch.randn(k, d, generator=g, dtype=torch.float64) * 1.2 - 0.3
    return gen, pos, neg


def test_reference_preset_matches_released_algorithm() -> None:
    for b, m, k, d in [(64, 48, 0, 8), (100, 80, 10, 32), (300, 200, 0, 512)]:
        gen, pos, neg = _samples(b, m, k, d)
        gen, pos, neg = gen.float(), pos.float(), (neg.float() if k else None)
        ours = compute_drift(gen, pos, neg, preset="reference")
        oracle = naive_reference_drift(gen, pos, neg)
        scale = oracle.abs().max()
        assert torch.allclose(ours, oracle, atol=5e-6 * scale, rtol=1e-5), (ours - oracle).abs().max()


def test_readable_drift_matches_released_algorithm() -> None:
    gen, pos, neg = (t.float() for t in _samples(100, 80, 10, 32))
    ours = drift.drift_field(gen, pos, neg, make_drift_config("reference")).drift
    oracle = naive_reference_drift(gen, pos, neg)
    assert torch.allclose(ours, oracle, atol=5e-6 * oracle.abs().max(), rtol=1e-5), (ours - oracle).abs().max()


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("variant", ["extra negatives", "no self negatives", "no normalisation"])
def test_fast_path_equals_the_readable_drift(normalization: str, kernel: str, variant: str) -> None:
    """drift_fast.drift_field (chunks, tiles, sparse floor path) computes drift.drift_field."""
    gen, pos, neg = (t.float() for t in _samples(b=40, m=30, k=12, d=6))
    opts = dict(kernel=kernel, normalization=normalization, temperatures=(0.05, 0.2, 1.0), affinity_floor=1e-4)
    if variant == "no normalisation":
        opts.update(distance_norm=False, drift_norm=False)
    extra = None if variant == "no normalisation" else neg
    cfg = make_drift_config(None, self_negatives=variant != "no self negatives", **opts)
    readable = drift.drift_field(gen, pos, extra, cfg)
    for chunk in (None, 7):
        for density in (0.0, 1.0):
            fast = drift_field(gen, pos, extra, make_drift_config(None, chunk_size=chunk, sparse_max_density=density,
                                                                   self_negatives=cfg.self_negatives, **opts))
            scale = readable.drift.abs().max()
            assert torch.allclose(fast.drift, readable.drift, atol=1e-5 * scale, rtol=1e-4), (chunk, density)
            assert torch.allclose(fast.force_rms, readable.force_rms, rtol=1e-5)
            # The same mean distance summed in another order: equal to float32 round-off (torch 2.14 changed
            # a reduction order, so bitwise equality is not a property of the algorithm).
            torch.testing.assert_close(fast.scale, readable.scale, rtol=1e-6, atol=0)


def test_drift_loss_is_the_released_loss_and_its_gradient_follows_the_drift() -> None:
    gen, pos, neg = (t.float() for t in _samples(b=20, m=16, k=4, d=3))
    cfg = make_drift_config("reference")
    x = gen.clone().requires_grad_()
    loss, result = drift_loss(x, pos, neg, cfg)
    expected = ((gen - (gen + result.drift)) / result.scale).square().mean()
    assert torch.allclose(loss, expected)
    (grad,) = torch.autograd.grad(loss, x)
    # the target is a constant: d/dx mean(((x - t) / s)^2) = 2 (x - t) / (s^2 B D) = -2 V / (s^2 B D)
    assert torch.allclose(grad, -2.0 * result.drift / (result.scale**2 * gen.numel()), rtol=1e-5, atol=1e-9)
    assert torch.equal(target_loss(x, result.drift, result.scale), loss)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_drift_vanishes_when_p_equals_q(normalization: str, kernel: str) -> None:
    """Negatives identical to positives (the symmetric case): attraction and repulsion cancel."""
    gen, pos, _ = _samples()
    v = compute_drift(
        gen, pos, pos.clone(), kernel=kernel, normalization=normalization, self_negatives=False,
        temperatures=(0.5, 2.0), distance_norm=True, drift_norm=False,
    )
    assert v.abs().max() < 1e-5


def test_bidirectional_vanishes_when_generated_equals_positives_and_negatives() -> None:
    gen, _, _ = _samples()
    v = compute_drift(gen, gen.clone(), gen.clone(), preset="reference", self_negatives=False, drift_norm=False)
    assert v.abs().max() < 1e-5


@pytest.mark.parametrize("kernel", KERNELS)
def test_row_form_is_antisymmetric(kernel: str) -> None:
    gen, p, q = _samples()
    opts = dict(kernel=kernel, normalization="row", self_negatives=False, temperatures=(0.7, 1.5), distance_norm=False, drift_norm=False)
    v_pq = compute_drift(gen, p, q, **opts)
    v_qp = compute_drift(gen, q, p, **opts)
    assert torch.allclose(v_pq, -v_qp, atol=1e-5)
    assert v_pq.abs().max() > 0.1  # not trivially zero


def _log_kde(x: torch.Tensor, ys: torch.Tensor, log_kernel) -> torch.Tensor:
    r = (x[:, None, :] - ys[None, :, :]).norm(dim=-1)
    return torch.logsumexp(log_kernel(r), dim=1)


def test_gaussian_drift_is_tau_squared_grad_log_kde() -> None:
    """DMF theorem 1 step 2: V_mu = tau^2 grad log Z_mu for the Gaussian kernel, row form."""
    gen, p, q = _samples()
    tau = 0.9
    v = compute_drift(gen, p, q, kernel="gaussian", normalization="row", temperatures=(tau,),
                      self_negatives=False, distance_norm=False, drift_norm=False)
    x = gen.clone().float().requires_grad_(True)
    log_k = lambda r: -r.square() / (2 * tau**2)  # noqa: E731
    potential = (_log_kde(x, p.float(), log_k) - _log_kde(x, q.float(), log_k)).sum()
    (grad,) = torch.autograd.grad(potential, x)
    assert torch.allclose(v, tau**2 * grad, atol=1e-4)


def test_gaussian_identity_with_generated_batch_as_negatives() -> None:
    """Self-negatives: Z_q(x_i) sums over the other generated samples, held fixed."""
    gen, p, _ = _samples(b=10)
    tau = 1.1
    v = compute_drift(gen, p, kernel="gaussian", normalization="row", temperatures=(tau,),
                      distance_norm=False, drift_norm=False)
    log_k = lambda r: -r.square() / (2 * tau**2)  # noqa: E731
    for i in range(gen.shape[0]):
        xi = gen[i : i + 1].clone().float().requires_grad_(True)
        others = torch.cat([gen[:i], gen[i + 1 :]]).float()
        potential = (_log_kde(xi, p.float(), log_k) - _log_kde(xi, others, log_k)).sum()
        (grad,) = torch.autograd.grad(potential, xi)
        assert torch.allclose(v[i : i + 1], tau**2 * grad, atol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_sharp_drift_is_gradient_of_sharp_log_kde_difference(kernel: str) -> None:
    """V# = grad(log Z#_p - log Z#_q), K#(r) = int_r^inf s k(s) ds."""
    gen, p, q = _samples()
    tau = 0.8
    v = compute_drift(gen, p, q, kernel=kernel, normalization="sharp", temperatures=(tau,),
                      self_negatives=False, distance_norm=False, drift_norm=False)
    if kernel == "laplace":
        log_sharp = lambda r: math.log(tau) + torch.log(r + tau) - r / tau  # noqa: E731
    else:
        log_sharp = lambda r: 2 * math.log(tau) - r.square() / (2 * tau**2)  # noqa: E731
    x = gen.clone().float().requires_grad_(True)
    potential = (_log_kde(x, p.float(), log_sharp) - _log_kde(x, q.float(), log_sharp)).sum()
    (grad,) = torch.autograd.grad(potential, x)
    assert torch.allclose(v, grad, atol=1e-4)


def test_laplace_row_drift_is_not_a_gradient_but_sharp_is() -> None:
    """Sanity of the previous test: the plain Laplace row drift differs from grad log Z#."""
    gen, p, q = _samples()
    opts = dict(kernel="laplace", temperatures=(0.8,), self_negatives=False, distance_norm=False, drift_norm=False)
    row = compute_drift(gen, p, q, normalization="row", **opts)
    sharp = compute_drift(gen, p, q, normalization="sharp", **opts)
    assert (row - sharp).abs().max() > 1e-2


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("with_neg", [False, True])
def test_chunked_equals_unchunked(normalization: str, kernel: str, with_neg: bool) -> None:
    gen, pos, neg = _samples(b=37, m=29, k=11, d=6)
    gen, pos, neg = gen.float(), pos.float(), neg.float()
    opts = dict(kernel=kernel, normalization=normalization, temperatures=(0.05, 0.3, 1.0))
    full = compute_drift(gen, pos, neg if with_neg else None, **opts)
    for chunk in (1, 5, 36):
        chunked = compute_drift(gen, pos, neg if with_neg else None, chunk_size=chunk, **opts)
        assert torch.allclose(full, chunked, atol=1e-5 * full.abs().max(), rtol=1e-4), chunk
    assert full.isfinite().all()


def test_bf16_inputs_are_computed_in_float32() -> None:
    gen, pos, _ = _samples(b=64, m=64, d=16)
    gen16, pos16 = gen.bfloat16(), pos.bfloat16()
    v16 = compute_drift(gen16, pos16, preset="reference")
    v32 = compute_drift(gen16.float(), pos16.float(), preset="reference")
    assert v16.dtype == torch.float32
    assert torch.equal(v16, v32)


def test_drift_norm_gives_unit_rms_per_temperature_in_normalised_coordinates() -> None:
    gen, pos, _ = _samples(b=50, m=40, d=8)
    cfg = make_drift_config("reference", temperatures=(0.2,))
    res = drift_field(gen.float(), pos.float(), None, cfg)
    rms = (res.drift / res.scale).square().mean().sqrt()
    assert abs(rms.item() - 1.0) < 1e-4


def test_distance_normalisation_makes_drift_scale_equivariant() -> None:
    """With distance and drift normalisation, scaling all inputs by c scales V by c."""
    gen, pos, _ = _samples()
    v1 = compute_drift(gen.float(), pos.float(), preset="reference")
    v3 = compute_drift(3.0 * gen.float(), 3.0 * pos.float(), preset="reference")
    assert torch.allclose(3.0 * v1, v3, atol=1e-4 * v3.abs().max())


def test_drift_moves_generated_samples_towards_positives() -> None:
    gen = torch.randn(256, 2)
    pos = torch.randn(256, 2) + torch.tensor([4.0, 0.0])
    for preset in ("reference", "paper"):
        v = compute_drift(gen, pos, preset=preset)
        assert v[:, 0].mean() > 0.1, preset


def test_single_temperature_number_is_accepted() -> None:
    assert DriftConfig(temperatures=0.5).temperatures == (0.5,)


def test_mismatched_shapes_raise() -> None:
    with pytest.raises(ValueError, match="feature dimensions"):
        compute_drift(torch.zeros(4, 3), torch.zeros(4, 2))


class _ThreadShard:
    """Two threads standing in for two data-parallel processes (all-reduce through a board)."""

    def __init__(self, rows: slice, rank: int, board: dict, barrier) -> None:
        self.rows, self.rank, self.board, self.barrier = rows, rank, board, barrier

    def _all_reduce(self, t: torch.Tensor, combine) -> torch.Tensor:
        self.board[self.rank] = t.clone()
        self.barrier.wait()
        out = combine([self.board[r] for r in sorted(self.board)])
        self.barrier.wait()
        return out

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(t, lambda ts: ts[0] + ts[1])

    def logsumexp(self, t: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(t, lambda ts: torch.logsumexp(torch.stack(ts), dim=0))


def _run_two_shards(gen, pos, neg, cfg: DriftConfig, splits: tuple[slice, slice], field=drift_field) -> list[torch.Tensor]:
    """The drift of each shard's rows (``field``: fast or readable), the two shards run
    concurrently in two threads."""
    import threading

    board, barrier, out = {}, threading.Barrier(2), {}

    def worker(rank: int, rows: slice) -> None:
        out[rank] = field(gen, pos, neg, cfg, shard=_ThreadShard(rows, rank, board, barrier)).drift

    threads = [threading.Thread(target=worker, args=(r, s)) for r, s in enumerate(splits)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [out[r] for r in range(len(splits))]


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("field", [drift_field, drift.drift_field], ids=["fast", "readable"])
def test_row_shards_reproduce_the_full_drift(normalization: str, kernel: str, field) -> None:
    """Each data-parallel process computes only its rows; reductions make them exact."""
    gen, pos, neg = (t.float() for t in _samples(b=30, m=20, k=6, d=4))
    cfg = make_drift_config(None, kernel=kernel, normalization=normalization, temperatures=(0.1, 0.5), chunk_size=7)
    full = drift.drift_field(gen, pos, neg, cfg).drift
    out = _run_two_shards(gen, pos, neg, cfg, (slice(0, 12), slice(12, 30)), field)
    assert out[0].shape == (12, 4) and out[1].shape == (18, 4)
    assert torch.allclose(torch.cat([out[0], out[1]]), full, atol=1e-5 * full.abs().max(), rtol=1e-4)


# ------------------------------------------------------------------ matmul precision (GPU path)


def test_bf16_products_stay_within_half_a_percent_of_fp32_and_tf32_is_exact_on_cpu() -> None:
    """The fast path (bf16 weighted sums) is checked on CPU, where bf16 matmuls also run."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(300, 64, generator=g), torch.randn(200, 64, generator=g) + 0.3
    ref = compute_drift(x, y, preset="reference")
    low = compute_drift(x, y, preset="reference", matmul_precision="bf16")
    rel = float((low - ref).norm() / ref.norm())
    assert 0.0 < rel < 5e-3  # not identical (bf16 really ran), but close
    chunked = compute_drift(x, y, preset="reference", matmul_precision="bf16", chunk_size=64)
    assert float((chunked - ref).norm() / ref.norm()) < 5e-3
    assert torch.equal(compute_drift(x, y, preset="reference", matmul_precision="tf32"), ref)  # no TF32 on CPU



# ------------------------------------------------------------------ sparse above-floor path (CPU)


@pytest.fixture
def sparse_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, per chunk, whether the sparse floor path produced the forces (True) or declined."""
    import dmf_ray.core.drift_fast as drift_module

    calls: list[bool] = []
    real = drift_module._sparse_floor_forces

    def spy(*args, **kwargs):
        forces = real(*args, **kwargs)
        calls.append(forces is not None)
        return forces

    monkeypatch.setattr(drift_module, "_sparse_floor_forces", spy)
    return calls


def _clustered(b: int, m: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples around a few centres: the low temperatures see only close neighbours."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, d, generator=g) * 3
    gen = centres[torch.randint(0, 6, (b,), generator=g)] + torch.randn(b, d, generator=g)
    pos = centres[torch.randint(0, 6, (m,), generator=g)] + torch.randn(m, d, generator=g)
    return gen, pos


@pytest.mark.parametrize("data", ["isotropic d=512", "clustered d=32", "2-d"])
def test_sparse_floor_path_matches_the_released_algorithm(data: str, sparse_calls: list[bool]) -> None:
    """Floor as a rank-one term plus a sparse product is exact, not an approximation -- also
    where most entries are above the floor (isotropic at B = 600: 85% candidates)."""
    g = torch.Generator().manual_seed(1)
    if data == "isotropic d=512":
        gen, pos = torch.randn(600, 512, generator=g), torch.randn(500, 512, generator=g) + 0.5
    elif data == "clustered d=32":
        gen, pos = _clustered(700, 600, 32)
    else:
        gen, pos = torch.randn(800, 2, generator=g), torch.randn(800, 2, generator=g) + torch.tensor([3.0, 2.0])
    ours = compute_drift(gen, pos, preset="reference", sparse_max_density=1.0)
    assert sparse_calls == [True]
    dense = compute_drift(gen, pos, preset="reference", sparse_max_density=0.0)
    assert sparse_calls == [True]  # density 0 never tries the sparse path
    # against the released algorithm in float64: the clustered data's close pairs cost every
    # float32 implementation (the released one included, asserted) ~7e-6 of the largest entry
    truth = naive_reference_drift(gen, pos, dtype=torch.float64).float()
    for other in (ours, dense, naive_reference_drift(gen, pos)):
        assert torch.allclose(other, truth, atol=1.2e-5 * truth.abs().max(), rtol=1e-5), (other - truth).abs().max()


def test_default_takes_the_sparse_path_on_the_benchmark_inputs(sparse_calls: list[bool]) -> None:
    """B = M = 2048, D = 512 (benchmarks/drift_benchmark.py): about 5% of entries can exceed
    the floor, under the default limit, so the default call is the sparse one."""
    g = torch.Generator().manual_seed(0)
    gen, pos = torch.randn(2048, 512, generator=g), torch.randn(2048, 512, generator=g) + 0.5
    compute_drift(gen, pos, preset="reference")
    assert sparse_calls == [True]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("with_neg", [False, True])
def test_sparse_floor_path_is_exact_with_chunks_and_extra_negatives(kernel: str, with_neg: bool, sparse_calls: list[bool]) -> None:
    gen, pos, neg = (t.float() for t in _samples(b=90, m=70, k=25, d=6))
    extra = neg if with_neg else None
    opts = dict(kernel=kernel, normalization="bidirectional", temperatures=(0.02, 0.1, 0.5), affinity_floor=1e-4)
    dense = compute_drift(gen, pos, extra, sparse_max_density=0.0, **opts)
    for chunk in (None, 7, 64):
        sparse = compute_drift(gen, pos, extra, sparse_max_density=1.0, chunk_size=chunk, **opts)
        assert torch.allclose(sparse, dense, atol=1e-5 * dense.abs().max(), rtol=1e-4), chunk
    assert sparse_calls and all(sparse_calls)


def test_sparse_floor_path_declines_dense_affinities(sparse_calls: list[bool]) -> None:
    """Above the density limit the dense product runs (same result); a zero floor never tries."""
    gen, pos = _clustered(200, 150, 8)
    dense = compute_drift(gen, pos, preset="reference", sparse_max_density=0.0)
    declined = compute_drift(gen, pos, preset="reference", sparse_max_density=1e-4)
    assert sparse_calls == [False]
    assert torch.equal(declined, dense)
    compute_drift(gen, pos, preset="toy")  # affinity_floor 0: every entry is above the floor
    compute_drift(gen, pos, preset="reference", matmul_precision="bf16")  # bf16 keeps the dense product
    assert sparse_calls == [False]


def test_sparse_floor_path_reproduces_row_shards(sparse_calls: list[bool]) -> None:
    """Data-parallel rows use the all-reduced column log-sum-exp; the sparse path needs nothing more."""
    gen, pos = _clustered(60, 50, 5)
    cfg = make_drift_config("reference", sparse_max_density=1.0, chunk_size=11)
    full = drift_field(gen, pos, None, cfg).drift
    out = _run_two_shards(gen, pos, None, cfg, (slice(0, 25), slice(25, 60)))
    assert torch.allclose(torch.cat([out[0], out[1]]), full, atol=1e-5 * full.abs().max(), rtol=1e-4)
    assert sparse_calls and all(sparse_calls)


# ------------------------------------------------------------------ one-exp row and column log-sum-exp (CPU)


def test_a_column_far_from_every_generated_row_is_recomputed_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-exp pass gets column sums through row-shifted exponentials; a positive far from
    every generated row (its column sum underflows there) must come out of the column-shifted
    pass instead, equal to the readable drift, while the other temperatures keep the one-exp
    result."""
    import dmf_ray.core.drift_fast as drift_module

    g = torch.Generator().manual_seed(3)
    gen, pos = torch.randn(40, 2, generator=g), torch.randn(30, 2, generator=g)
    pos[0] = torch.tensor([60.0, 0.0])  # ~60 units from every generated row
    cfg = make_drift_config("toy", temperatures=(0.5, 50.0))  # 60 / 0.5 = 120 nats: underflows at the first only
    recomputed: list[int] = []
    real = drift_module._kernel_lse

    def spy(u, kappas, dim, scratch):
        if dim == 0:
            recomputed.append(len(kappas))
        return real(u, kappas, dim, scratch)

    monkeypatch.setattr(drift_module, "_kernel_lse", spy)
    fast = drift_field(gen, pos, None, cfg).drift
    assert recomputed == [1]  # one temperature recomputed, column-shifted
    readable = drift.drift_field(gen, pos, None, cfg).drift
    assert torch.isfinite(fast).all()
    assert torch.allclose(fast, readable, atol=1e-5 * readable.abs().max(), rtol=1e-4)


def test_one_exp_log_sum_exps_equal_the_shifted_passes() -> None:
    """Row and column log-sum-exps of the one-exp pass against torch.logsumexp, tile by tile."""
    from dmf_ray.core.drift_fast import _row_and_column_lse

    g = torch.Generator().manual_seed(4)
    u = torch.rand(700, 2500, generator=g) * 3  # several row tiles of 2^20 entries
    u[3, 5] = math.inf  # a masked self entry
    kappas = [50.0, 20.0, 5.0]
    row_lse, col_lse = _row_and_column_lse(u, kappas, torch.empty_like(u))
    for t, kappa in enumerate(kappas):
        assert torch.allclose(row_lse[t], (-kappa * u).logsumexp(1), atol=1e-4, rtol=1e-5)
        assert torch.allclose(col_lse[t], (-kappa * u).logsumexp(0), atol=1e-4, rtol=1e-5)

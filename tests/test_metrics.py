"""Metrics against closed forms (Frechet distance, KID, L2-UVP, transport cost, energy, MMD) and
the toy control FD cannot see: a moment-matched Gaussian that the distribution scores reject."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmf_ray.data import toy
from dmf_ray.eval.metrics import (
    KERNEL_ROWS,
    energy_distance,
    evaluate_translation,
    frechet_distance,
    frechet_distance_from_moments,
    kernel_inception_distance,
    l2_uvp,
    mixture_log_density,
    mixture_nll,
    mmd_unbiased,
    mode_weight_error,
    moment_matched_gaussian,
    noise_floor,
    noise_floors,
    total_variance,
    transport_cost,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("dim", [2, 64, 512])
def test_fd_of_sample_with_itself_is_zero(dim: int) -> None:
    x = _rng().standard_normal((1000, dim))
    assert abs(frechet_distance(x, x)) < 1e-6


def test_fd_shifted_unit_gaussians_is_squared_mean_shift() -> None:
    rng = _rng(1)
    m = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 1.0, 0.0, -1.0])
    x = rng.standard_normal((20000, 8))
    y = rng.standard_normal((20000, 8)) + m
    # Sampling error of the mean shift dominates: std of 2 m.(mean error) is about 0.08 here.
    assert frechet_distance(x, y) == pytest.approx(m @ m, abs=0.3)


def test_fd_from_moments_matches_closed_form_for_non_commuting_2d_covariances() -> None:
    # For 2x2 A = S1 S2 (eigenvalues l1, l2 >= 0): tr sqrt(A) = sqrt(l1) + sqrt(l2)
    # = sqrt(tr A + 2 sqrt(det A)) -- independent of any matrix square root routine.
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    a = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(a) + 2 * np.sqrt(np.linalg.det(a)))
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance_from_moments(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)

    # The sample version converges to it (2-D toy case).
    rng = _rng(2)
    x = rng.multivariate_normal(mu1, s1, size=50000)
    y = rng.multivariate_normal(mu2, s2, size=50000)
    assert frechet_distance(x, y) == pytest.approx(expected, abs=0.05)


def test_fd_from_moments_diagonal_closed_form() -> None:
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu = np.zeros(4)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance_from_moments(mu, np.diag(a), mu, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fd_accepts_torch_tensors() -> None:
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x.numpy()) == pytest.approx(0.0, abs=1e-8)


def test_kid_near_zero_same_distribution_positive_when_shifted() -> None:
    rng = _rng(3)
    x, y = rng.standard_normal((1000, 4)), rng.standard_normal((1000, 4))
    same = kernel_inception_distance(x, y, num_subsets=20, max_subset_size=500)
    shifted = kernel_inception_distance(x, y + 1.0, num_subsets=20, max_subset_size=500)
    assert abs(same) < 0.02
    assert shifted > 0.5
    assert shifted > 20 * abs(same)


def test_kid_is_deterministic_and_leaves_global_rng_alone() -> None:
    rng = _rng(4)
    x, y = rng.standard_normal((300, 2)), rng.standard_normal((400, 2)) + 0.3
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    first = kernel_inception_distance(x, y, num_subsets=10, max_subset_size=100, seed=7)
    assert np.random.rand() == expected_next
    assert kernel_inception_distance(x, y, num_subsets=10, max_subset_size=100, seed=7) == first
    assert kernel_inception_distance(x, y, num_subsets=10, max_subset_size=100, seed=8) != first


def test_total_variance_is_trace_of_covariance() -> None:
    y = _rng(5).standard_normal((100, 3)) * np.array([1.0, 2.0, 3.0])
    assert total_variance(y) == pytest.approx(np.trace(np.cov(y, rowvar=False)), rel=1e-12)


def test_l2_uvp_zero_for_exact_map_and_known_offset() -> None:
    true = _rng(6).standard_normal((50, 3))
    assert l2_uvp(true, true, target_variance=2.0) == 0.0
    offset = np.array([1.0, 2.0, 2.0])  # ||offset||^2 = 9
    assert l2_uvp(true + offset, true, target_variance=3.0) == pytest.approx(100 * 9 / 3.0)


def test_transport_cost_of_known_shift() -> None:
    x = _rng(7).standard_normal((40, 2))
    assert transport_cost(x, x + np.array([3.0, 4.0])) == pytest.approx(25.0)
    assert transport_cost(x, x) == 0.0


def test_evaluate_translation_with_gaussian_ot_map() -> None:
    # Source N(0, I) -> target N(m, diag(4, 1/4)); the OT map is T(x) = m + diag(2, 1/2) x.
    rng = _rng(8)
    m, scale = np.array([3.0, 2.0]), np.array([2.0, 0.5])

    def ot_map(x: np.ndarray) -> np.ndarray:
        return m + scale * x

    source = rng.standard_normal((400, 2))  # small: clean-fid's KID costs ~ 100 * 400^2 here
    target = ot_map(rng.standard_normal((400, 2)))
    exact = evaluate_translation(source, ot_map(source), target, ot_map=ot_map)
    assert set(exact) == {"fd", "kid", "energy", "mmd", "transport_cost", "l2_uvp"}
    assert exact["l2_uvp"] == 0.0
    assert exact["fd"] < 0.02
    assert exact["transport_cost"] == pytest.approx(transport_cost(source, ot_map(source)))

    identity = evaluate_translation(source, source, target)
    assert identity["fd"] > 10 and identity["transport_cost"] == 0.0
    # The cubic KID kernel is not scale-free (features of norm ~4 here): compare, don't threshold.
    assert abs(exact["kid"]) < 0.01 * identity["kid"]

    shifted = evaluate_translation(source, ot_map(source) + 0.3, target, ot_map=ot_map, with_kid=False)
    assert set(shifted) == {"fd", "energy", "mmd", "transport_cost", "l2_uvp"}
    assert shifted["l2_uvp"] == pytest.approx(100 * 0.18 / total_variance(target))


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros(5), np.zeros((5, 2)), "2-D"),
        (np.zeros((5, 2)), np.zeros((5, 3)), "different feature dimensions"),
        (np.zeros((1, 2)), np.zeros((5, 2)), "at least 2 samples"),
        (np.full((5, 2), np.nan), np.zeros((5, 2)), "NaN or inf"),
        (np.zeros((5, 1)), np.ones((5, 1)), "D >= 2"),
    ],
)
def test_fd_validation(x: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        frechet_distance(x, y)


def test_other_validation() -> None:
    a, b = np.zeros((5, 2)), np.zeros((6, 2))
    with pytest.raises(ValueError, match="same samples"):
        l2_uvp(a, b, 1.0)
    with pytest.raises(ValueError, match="same samples"):
        transport_cost(a, b)
    with pytest.raises(ValueError, match="target_variance"):
        l2_uvp(a, a, 0.0)
    with pytest.raises(ValueError, match="max_subset_size"):
        kernel_inception_distance(a, b, max_subset_size=1)
    with pytest.raises(ValueError, match="infinite|NaN or inf"):
        kernel_inception_distance(np.full((5, 2), np.inf), b)


def _energy_by_definition(x: np.ndarray, y: np.ndarray) -> float:
    def mean_distance(a: np.ndarray, b: np.ndarray, distinct: bool) -> float:
        d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
        return d.sum() / (len(a) * (len(a) - 1)) if distinct else d.mean()

    return 2 * mean_distance(x, y, False) - mean_distance(x, x, True) - mean_distance(y, y, True)


def test_energy_distance_matches_definition_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = _rng(9)
    x, y = rng.standard_normal((300, 3)), rng.standard_normal((200, 3)) + 0.2
    expected = _energy_by_definition(x, y)
    assert energy_distance(x, y) == pytest.approx(expected, rel=1e-9)
    monkeypatch.setattr("dmf_ray.eval.metrics._CHUNK_ENTRIES", 1000)  # 5 rows per chunk
    assert energy_distance(x, y) == pytest.approx(expected, rel=1e-9)


def test_energy_and_mmd_near_zero_for_same_distribution_and_above_noise_when_shifted() -> None:
    sample = lambda n, g: torch.randn(n, 4, generator=g)  # noqa: E731
    for metric in (energy_distance, mmd_unbiased):
        floor_mean, floor_std = noise_floor(metric, sample, 1000, repeats=5, seed=1)
        assert floor_std > 0 and abs(floor_mean) < 3 * floor_std
        x, y = _rng(10).standard_normal((1000, 4)), _rng(11).standard_normal((1000, 4))
        assert metric(x, y + 0.3) > floor_mean + 10 * floor_std


def test_mmd_kernels_and_fixed_bandwidth() -> None:
    rng = _rng(12)
    x, y = rng.standard_normal((200, 2)), rng.standard_normal((250, 2))
    h = 1.5
    sq = lambda a, b: ((a[:, None] - b[None]) ** 2).sum(-1)  # noqa: E731
    for kernel, k in (("rbf", lambda d2: np.exp(-d2 / (2 * h * h))), ("imq", lambda d2: (1 + d2 / h**2) ** -0.5)):
        n, m = len(x), len(y)
        expected = (
            (k(sq(x, x)).sum() - n) / (n * (n - 1)) + (k(sq(y, y)).sum() - m) / (m * (m - 1)) - 2 * k(sq(x, y)).mean()
        )
        assert mmd_unbiased(x, y, kernel=kernel, bandwidth=h) == pytest.approx(expected, rel=1e-9)


def test_max_rows_subsamples_deterministically() -> None:
    rng = _rng(13)
    x, y = rng.standard_normal((3000, 2)), rng.standard_normal((3000, 2))
    capped = energy_distance(x, y, max_rows=500, seed=3)
    assert capped == energy_distance(x, y, max_rows=500, seed=3) != energy_distance(x, y, max_rows=500, seed=4)
    assert capped != energy_distance(x, y)


def _toy_samples(n: int, seed: int) -> torch.Tensor:
    return toy.sample_target(n, torch.Generator().manual_seed(seed))


def test_mixture_nll_of_true_samples_is_the_entropy() -> None:
    # Entropy -int p log p of the toy mixture by quadrature on a grid wide enough for both modes.
    grid = np.linspace(-8.0, 11.0, 951)
    points = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2)
    log_p = mixture_log_density(points, toy.TARGET_MIXTURE.means, toy.TARGET_MIXTURE.weights)
    entropy = -(np.exp(log_p) * log_p).sum() * (grid[1] - grid[0]) ** 2
    nll = mixture_nll(_toy_samples(50_000, 0), toy.TARGET_MIXTURE.means, toy.TARGET_MIXTURE.weights)
    assert nll == pytest.approx(entropy, abs=0.02)  # std of the estimate is about 0.006
    assert entropy > np.log(2 * np.pi * np.e)  # more than one unit Gaussian's


def test_mode_weight_error_is_total_variation_of_component_masses() -> None:
    means, weights = toy.TARGET_MIXTURE.means, toy.TARGET_MIXTURE.weights
    assert mode_weight_error(_toy_samples(20_000, 1), means, weights) < 0.01
    dropped = np.random.default_rng(14).standard_normal((20_000, 2)) + means[1]  # all mass on one mode
    # Posterior masses, not hard assignments: a draw of mode 1 keeps P(0 | x) = sigmoid(-d u),
    # u ~ N(d/2, 1) its coordinate along the modes' axis from their midpoint, d = ||m1 - m0||.
    d = np.linalg.norm(means[1] - means[0])
    u = np.linspace(d / 2 - 8, d / 2 + 8, 4001)
    leak = (np.exp(-((u - d / 2) ** 2) / 2) / np.sqrt(2 * np.pi) / (1 + np.exp(d * u))).sum() * (u[1] - u[0])
    assert mode_weight_error(dropped, means, weights) == pytest.approx(0.5 - leak, abs=0.005)


def test_moment_matched_gaussian_fools_fd_but_not_energy_mmd_or_nll() -> None:
    """The toy control: FD compares only the two moments the control copies; the distribution
    scores and the NLL under the known density reject it far above their noise floors."""
    n = 50_000
    target = _toy_samples(n, 2)
    control = moment_matched_gaussian(target, n, seed=3)
    assert control.mean(0) == pytest.approx(toy.TARGET_MEAN.numpy(), abs=0.05)
    floors = noise_floors(toy.sample_target, n, mixture=toy.TARGET_MIXTURE, repeats=10, seed=4)
    control_scores = evaluate_translation(control, control, target, with_kid=False, mixture=toy.TARGET_MIXTURE)
    true_scores = evaluate_translation(target, _toy_samples(n, 5), target, with_kid=False, mixture=toy.TARGET_MIXTURE)

    def z(scores: dict[str, float], name: str) -> float:
        mean, std = floors[name]
        return (scores[name] - mean) / std

    assert abs(z(control_scores, "fd")) < 4  # FD cannot tell the control from the mixture
    for name in ("energy", "mmd", "nll"):
        assert z(control_scores, name) > 5, name
        assert abs(z(true_scores, name)) < 4, name
    # Symmetric about the modes' midpoint, the control gives each mode its weight: the
    # mode-weight error is blind to it (it sees dropped or unbalanced modes instead).
    assert abs(z(control_scores, "mode_weight_error")) < 4


def test_noise_floor_from_a_finite_pool_uses_disjoint_halves() -> None:
    pool = _rng(15).standard_normal((1000, 2))
    calls: list[tuple[np.ndarray, np.ndarray]] = []

    def record(x: np.ndarray, y: np.ndarray) -> float:
        calls.append((x, y))
        return float(np.abs(x.mean(0) - y.mean(0)).sum())

    mean, std = noise_floor(record, pool, 500, repeats=3, seed=0)
    assert len(calls) == 3 and mean > 0 and std > 0
    for x, y in calls:
        assert x.shape == y.shape == (500, 2)
        rows = {tuple(r) for r in np.concatenate([x, y])}
        assert len(rows) == 1000  # disjoint, together the whole pool
    with pytest.raises(ValueError, match="disjoint"):
        noise_floor(record, pool, 501)
    with pytest.raises(ValueError, match="repeats"):
        noise_floor(record, pool, 10, repeats=1)
    assert KERNEL_ROWS >= 1000  # evaluations score energy/MMD on enough rows to see the toy's modes

"""Metrics against closed forms: Frechet distance, KID, L2-UVP, transport cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmf_ray.eval.metrics import (
    evaluate_translation,
    frechet_distance,
    frechet_distance_from_moments,
    kernel_inception_distance,
    l2_uvp,
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
    assert set(exact) == {"fd", "kid", "transport_cost", "l2_uvp"}
    assert exact["l2_uvp"] == 0.0
    assert exact["fd"] < 0.02
    assert exact["transport_cost"] == pytest.approx(transport_cost(source, ot_map(source)))

    identity = evaluate_translation(source, source, target)
    assert identity["fd"] > 10 and identity["transport_cost"] == 0.0
    # The cubic KID kernel is not scale-free (features of norm ~4 here): compare, don't threshold.
    assert abs(exact["kid"]) < 0.01 * identity["kid"]

    shifted = evaluate_translation(source, ot_map(source) + 0.3, target, ot_map=ot_map, with_kid=False)
    assert set(shifted) == {"fd", "transport_cost", "l2_uvp"}
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

"""d-dimensional Gaussian -> Gaussian, the one high-dimensional task whose OT map is exact.

Why: for N(m_s, S_s) -> N(m_t, S_t) the quadratic-cost OT map is affine,
T(x) = m_t + A (x - m_s) with A = S_s^{-1/2} (S_s^{1/2} S_t S_s^{1/2})^{1/2} S_s^{-1/2},
so a learned generator can be scored against the truth (L2-UVP) in any dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dmf_ray.data.base import TEST_STREAM, TRAIN_STREAM, VAL_STREAM, DataConfig, TranslationData, stream_generator

PROBLEM_STREAM = 2  # the stream that draws the means and covariances (see base.stream_generator)
EIGENVALUE_RANGE = (0.25, 4.0)  # covariance eigenvalues are log-uniform in this range


@dataclass(frozen=True, eq=False)
class Gaussian:
    """N(mean, cov) in float64: mean (d,), cov (d, d) symmetric positive definite."""

    mean: Tensor
    cov: Tensor

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n samples, float32 (n, d): mean + z L^T with L L^T = cov."""
        factor = torch.linalg.cholesky(self.cov).float()
        z = torch.randn(n, self.mean.shape[0], generator=generator)
        return self.mean.float() + z @ factor.T


@dataclass(frozen=True, eq=False)
class AffineMap:
    """x -> shift + (x - center) matrix^T for batches x (n, d).

    A class rather than a closure so it pickles (Ray ships datasets between processes); the
    float64 parameters are cast to the input's dtype and device on each call.
    """

    center: Tensor
    matrix: Tensor
    shift: Tensor

    def __call__(self, x: Tensor) -> Tensor:
        return self.shift.to(x) + (x - self.center.to(x)) @ self.matrix.to(x).T


def _symmetric_power(matrix: Tensor, power: float) -> Tensor:
    """matrix^power of an SPD float64 matrix by eigh, which (unlike sqrtm) keeps it symmetric and real."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    result = (eigenvectors * eigenvalues.pow(power)) @ eigenvectors.T
    return (result + result.T) / 2


def ot_matrix(source_cov: Tensor, target_cov: Tensor) -> Tensor:
    """A = S_s^{-1/2} (S_s^{1/2} S_t S_s^{1/2})^{1/2} S_s^{-1/2}, float64 (d, d), so A S_s A = S_t."""
    source_sqrt = _symmetric_power(source_cov, 0.5)
    source_inv_sqrt = _symmetric_power(source_cov, -0.5)
    middle = _symmetric_power(source_sqrt @ target_cov @ source_sqrt, 0.5)
    matrix = source_inv_sqrt @ middle @ source_inv_sqrt
    return (matrix + matrix.T) / 2


def ot_map(source: Gaussian, target: Gaussian) -> AffineMap:
    """The closed-form OT map T(x) = m_t + A (x - m_s) between two Gaussians."""
    return AffineMap(center=source.mean, matrix=ot_matrix(source.cov, target.cov), shift=target.mean)


def random_gaussian(dim: int, generator: torch.Generator) -> Gaussian:
    """N(mean, cov): mean ~ N(0, I), cov = Q diag(lambda) Q^T with Q Haar-orthogonal and lambda
    log-uniform in EIGENVALUE_RANGE, so every problem is well conditioned (condition <= 16)."""
    mean = torch.randn(dim, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # sign fix: makes Q Haar-distributed
    low, high = (math.log(v) for v in EIGENVALUE_RANGE)
    uniform = torch.rand(dim, generator=generator, dtype=torch.float64)
    eigenvalues = torch.exp(low + (high - low) * uniform)
    cov = (q * eigenvalues) @ q.T
    return Gaussian(mean=mean, cov=(cov + cov.T) / 2)


def make_problem(dim: int, seed: int) -> tuple[Gaussian, Gaussian]:
    """The (source, target) Gaussians that `seed` selects in dimension `dim`."""
    generator = stream_generator(seed, PROBLEM_STREAM)
    return random_gaussian(dim, generator), random_gaussian(dim, generator)


def build_gaussian_ot(cfg: DataConfig) -> TranslationData:
    """Pools of `cfg.n_train` / `cfg.n_val` / `cfg.n_test` rows in dimension `cfg.dim`, with the
    exact `ot_map`; one problem (means, covariances) per seed, sampled by independent streams."""
    source, target = make_problem(cfg.dim, cfg.seed)
    train, test = stream_generator(cfg.seed, TRAIN_STREAM), stream_generator(cfg.seed, TEST_STREAM)
    val, n_val = stream_generator(cfg.seed, VAL_STREAM), cfg.n_val or cfg.n_test
    return TranslationData(
        name="gaussian-ot",
        dim=cfg.dim,
        train_source=source.sample(cfg.n_train, train),
        train_target=target.sample(cfg.n_train, train),
        val_source=source.sample(n_val, val),
        val_target=target.sample(n_val, val),
        test_source=source.sample(cfg.n_test, test),
        test_target=target.sample(cfg.n_test, test),
        ot_map=ot_map(source, target),
    )

"""Sample-based metrics for generators and translation maps, on any feature vectors.

Features are (N, D) arrays (toy points, ALAE latents, image embeddings). FD and KID come from
clean-fid so that the numbers match the literature's; it is imported when a distance is
computed, because ``cleanfid.fid`` brings its image pipeline along (about a second), which the
modules that only need :data:`METRIC_NAMES` and the training loop do not. Translation scores:

* transport cost  E||f(x) - x||^2              -- how much of the source is preserved;
* L2-UVP          100 * E||T_hat(x) - T*(x)||^2 / Var(target)   (Korotin et al. 2021) --
  error against a known optimal map, in percent of the target's total variance.

FD compares only means and covariances: a single Gaussian with a mixture's two moments scores
FD within sampling noise of the mixture itself. Energy distance and MMD compare whole
distributions; where the target density is known (the toy mixture) the NLL of generated samples
and the mode-weight error say where the mass went. A score means something only against its
noise floor (:func:`noise_floors`: the score between two independent true samples), and
:func:`moment_matched_gaussian` is the control FD cannot reject.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Features = torch.Tensor | np.ndarray


# The scores evaluate_translation can return; sweeps may optimise any of them.
METRIC_NAMES: tuple[str, ...] = (
    "fd", "kid", "energy", "mmd", "mode_weight_error", "nll",
    "l2_uvp", "transport_cost", "cmmd", "fid_image", "kid_image",
)
# Every score is reported per held-out split (``val_fd``, ``test_fd``): what chooses sees only
# validation names, what is reported shows test beside them.
VAL_METRIC_NAMES: tuple[str, ...] = tuple(f"val_{name}" for name in METRIC_NAMES)
TEST_METRIC_NAMES: tuple[str, ...] = tuple(f"test_{name}" for name in METRIC_NAMES)

def _as_features(x: Features, name: str) -> np.ndarray:
    """(N, D) tensor/array -> float64 numpy array; ValueError unless 2-D, >= 2 rows, finite."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) array, got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 samples, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return arr


def _as_pair(x: Features, y: Features, names: tuple[str, str] = ("x", "y")) -> tuple[np.ndarray, np.ndarray]:
    """Validate two feature sets that must live in the same D-dimensional space."""
    a, b = _as_features(x, names[0]), _as_features(y, names[1])
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} have different feature dimensions: {a.shape[1]} vs {b.shape[1]}"
        )
    return a, b


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance_from_moments(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) via clean-fid.

    ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}), D >= 2; not clamped at
    zero (identical inputs may give a tiny negative round-off, which is more honest).
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if d < 2 or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        # D = 1 is refused because clean-fid's sqrtm call breaks on 1x1 matrices (seen with scipy 1.17).
        raise ValueError(
            "expected means of shape (D,) and covariances of shape (D, D) with D >= 2, got "
            f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    from cleanfid.fid import frechet_distance as _clean_frechet_distance

    with warnings.catch_warnings():
        # clean-fid passes scipy's deprecated `disp` argument to sqrtm; the result is unaffected.
        warnings.filterwarnings("ignore", message=".*`disp` argument is deprecated", category=DeprecationWarning)
        return float(_clean_frechet_distance(mu1, sigma1, mu2, sigma2))


def frechet_distance(x: Features, y: Features) -> float:
    """Frechet distance between Gaussians fitted (float64, unbiased) to x (N, D) and y (M, D)."""
    a, b = _as_pair(x, y)
    return frechet_distance_from_moments(*_moments(a), *_moments(b))


def kernel_inception_distance(
    x: Features,
    y: Features,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    seed: int = 0,
) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (KID), averaged over random subsets.

    clean-fid draws the subsets from numpy's *global* RNG, so this seeds it with ``seed`` for
    the call and restores the caller's state after (not thread-safe with other global-RNG users).
    """
    a, b = _as_pair(x, y)
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    if max_subset_size < 2:
        raise ValueError(f"max_subset_size must be >= 2, got {max_subset_size}")
    from cleanfid.fid import kernel_distance as _clean_kernel_distance

    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return float(_clean_kernel_distance(a, b, num_subsets=num_subsets, max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)


def total_variance(y: Features) -> float:
    """E||y - E y||^2 (the trace of the unbiased covariance) of y (N, D): L2-UVP's denominator."""
    arr = _as_features(y, "y")
    return float(arr.var(axis=0, ddof=1).sum())


def l2_uvp(pred: Features, true: Features, target_variance: float) -> float:
    """L2-UVP in percent (module docstring) of pred = T_hat(x) against true = T*(x), both (N, D):
    0 is the optimal map, 100 the constant map to the target mean."""
    a, b = _as_pair(pred, true, ("pred", "true"))
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"pred and true must pair the same samples: {a.shape[0]} vs {b.shape[0]} rows")
    target_variance = float(target_variance)
    if not (np.isfinite(target_variance) and target_variance > 0):
        raise ValueError(f"target_variance must be a finite number > 0, got {target_variance}")
    return float(100.0 * np.sum((a - b) ** 2, axis=1).mean() / target_variance)


def transport_cost(x: Features, fx: Features) -> float:
    """Mean squared displacement mean_i ||f(x_i) - x_i||^2 of a map over samples x (N, D)."""
    a, b = _as_pair(x, fx, ("x", "fx"))
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x and fx must pair the same samples: {a.shape[0]} vs {b.shape[0]} rows")
    return float(np.sum((b - a) ** 2, axis=1).mean())


# --- Distances that see the whole distribution (FD sees only the first two moments) ---------

# Evaluations score energy distance and MMD on at most this many rows of each side (a seeded
# random subset): their cost is quadratic, and an evaluation must stay cheap on two cores.
# Noise floors (:func:`noise_floors`) use the same cap, so a score and its floor are comparable.
KERNEL_ROWS = 2000
_CHUNK_ENTRIES = 1 << 22  # pairwise entries held at once: 32 MiB of float64, whatever N and M
_BANDWIDTH_ROWS = 1000  # rows of the reference sample the median heuristic looks at
Kernel = Literal["rbf", "imq"]


def _subsample(x: np.ndarray, max_rows: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_rows is None or x.shape[0] <= max_rows:
        return x
    return x[rng.choice(x.shape[0], size=max_rows, replace=False)]


def _pair_sum(a: torch.Tensor, b: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """sum_ij fn(||a_i - b_j||) over all pairs, a few million pairs at a time (bounded memory)."""
    rows = max(1, _CHUNK_ENTRIES // b.shape[0])
    return float(sum(fn(torch.cdist(a[i : i + rows], b)).sum() for i in range(0, a.shape[0], rows)))


def _kernel_pair(
    x: Features, y: Features, max_rows: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor, np.random.Generator]:
    a, b = _as_pair(x, y)
    rng = np.random.default_rng(seed)
    a, b = _subsample(a, max_rows, rng), _subsample(b, max_rows, rng)
    return torch.from_numpy(a), torch.from_numpy(b), rng


def energy_distance(x: Features, y: Features, max_rows: int | None = None, seed: int = 0) -> float:
    """Unbiased energy distance (Szekely & Rizzo 2013) between x (N, D) and y (M, D):

        2 E||X - Y|| - E||X - X'|| - E||Y - Y'||,

    each expectation a U-statistic over distinct pairs, so it is 0 in expectation for two
    samples of one distribution (and may be slightly negative) and > 0 for any two different
    distributions -- not only ones with different means or covariances. Exact on all rows by
    default, in float64, chunked so memory stays bounded (50k x 50k rows take tens of seconds
    on two cores); ``max_rows`` scores a seeded random subset of at most that many rows per side.
    """
    a, b, _ = _kernel_pair(x, y, max_rows, seed)
    n, m = a.shape[0], b.shape[0]
    identity = torch.nn.Identity()  # the diagonal ||x_i - x_i|| = 0 adds nothing to the sums
    cross = _pair_sum(a, b, identity) / (n * m)
    return 2.0 * cross - _pair_sum(a, a, identity) / (n * (n - 1)) - _pair_sum(b, b, identity) / (m * (m - 1))


def median_bandwidth(y: Features, seed: int = 0) -> float:
    """Median pairwise distance within (a seeded subset of ``_BANDWIDTH_ROWS`` rows of) y."""
    b = torch.from_numpy(_subsample(_as_features(y, "y"), _BANDWIDTH_ROWS, np.random.default_rng(seed)))
    distances = torch.cdist(b, b)
    return float(distances[torch.triu_indices(b.shape[0], b.shape[0], offset=1).unbind()].median())


def mmd_unbiased(
    x: Features,
    y: Features,
    kernel: Kernel = "rbf",
    bandwidth: float | None = None,
    max_rows: int | None = None,
    seed: int = 0,
) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) of x (N, D) against the reference y (M, D).

    Kernels of the distance r with bandwidth h: ``rbf`` exp(-r^2 / (2 h^2)) (Gaussian) and
    ``imq`` (1 + r^2 / h^2)^(-1/2) (inverse multiquadric). h defaults to
    :func:`median_bandwidth` of **y**, so every generator scored against the same target is
    scored with the same kernel. ``max_rows`` as in :func:`energy_distance`.
    """
    a, b, _ = _kernel_pair(x, y, max_rows, seed)
    h = median_bandwidth(b.numpy(), seed) if bandwidth is None else float(bandwidth)
    if kernel == "rbf":
        fn: Callable[[torch.Tensor], torch.Tensor] = lambda r: torch.exp(-(r**2) / (2 * h * h))  # noqa: E731
    else:
        fn = lambda r: torch.rsqrt(1 + (r / h) ** 2)  # noqa: E731
    n, m = a.shape[0], b.shape[0]  # both kernels are 1 on the diagonal, which the U-statistic drops
    within_x = (_pair_sum(a, a, fn) - n) / (n * (n - 1))
    within_y = (_pair_sum(b, b, fn) - m) / (m * (m - 1))
    return within_x + within_y - 2.0 * _pair_sum(a, b, fn) / (n * m)


# --- Scores against a known target density: a mixture of unit-covariance Gaussians ----------


@dataclass(frozen=True)
class UnitGaussianMixture:
    """sum_k weights[k] N(means[k], I): the density of a target known in closed form (the toy's)."""

    means: np.ndarray  # (K, D)
    weights: np.ndarray  # (K,), summing to 1


def _component_log_joint(samples: Features, means: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log(w_k N(x_i; m_k, I)), shape (N, K)."""
    x = _as_features(samples, "samples")
    means = np.asarray(means, dtype=np.float64)
    sq = ((x[:, None, :] - means[None, :, :]) ** 2).sum(axis=-1)
    return np.log(np.asarray(weights, dtype=np.float64))[None, :] - 0.5 * sq - 0.5 * x.shape[1] * np.log(2 * np.pi)


def mixture_log_density(samples: Features, means: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log p(x_i) (N,) under sum_k w_k N(m_k, I)."""
    joint = _component_log_joint(samples, means, weights)
    top = joint.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(joint - top).sum(axis=1, keepdims=True)))[:, 0]


def mixture_nll(samples: Features, means: np.ndarray, weights: np.ndarray) -> float:
    """Mean negative log-likelihood of generated samples under the true target density (nats).

    For true samples it estimates the target's entropy H(p); for a generator q it estimates the
    cross-entropy H(q, p) = H(q) + KL(q || p), so it penalises mass where the target has little
    (between the modes) -- what a moment-matched Gaussian puts there and FD cannot see.
    """
    return float(-mixture_log_density(samples, means, weights).mean())


def mode_weight_error(samples: Features, means: np.ndarray, weights: np.ndarray) -> float:
    """Total variation 1/2 sum_k |mean_i P(k | x_i) - w_k| between the generated samples' mean
    posterior mass per component and the true weights: 0 when every mode gets its share, 1/2
    for two equal modes of which one is dropped. A distribution symmetric about the modes'
    midpoint (a moment-matched Gaussian of two equal modes) also scores ~0: pair it with
    :func:`mixture_nll`."""
    joint = _component_log_joint(samples, means, weights)
    posterior = np.exp(joint - mixture_log_density(samples, means, weights)[:, None])
    return float(0.5 * np.abs(posterior.mean(axis=0) - np.asarray(weights, dtype=np.float64)).sum())


# --- Controls and noise floors --------------------------------------------------------------

TrueSampler = Callable[[int, torch.Generator], torch.Tensor]  # (n, generator) -> (n, D) true draws


def moment_matched_gaussian(target: Features, n: int, seed: int = 0) -> np.ndarray:
    """n draws (float64 (n, D)) of the single Gaussian with target's mean and covariance.

    The control that FD cannot tell from the target: FD compares exactly these two moments.
    """
    mu, sigma = _moments(_as_features(target, "target"))
    return np.random.default_rng(seed).multivariate_normal(mu, sigma, size=n)


def _true_pairs(sample_true: TrueSampler | Features, n: int, repeats: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``repeats`` pairs of independent true samples of n rows each: two draws of a sampler,
    or two disjoint random subsets of a finite pool (which must hold 2 n rows)."""
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 for a standard deviation, got {repeats}")
    if callable(sample_true):
        generator = torch.Generator().manual_seed(seed)
        draws = [_as_features(sample_true(n, generator), "sample_true") for _ in range(2 * repeats)]
        return list(zip(draws[::2], draws[1::2]))
    pool = _as_features(sample_true, "sample_true")
    if 2 * n > pool.shape[0]:
        raise ValueError(f"n = {n}: a pool of {pool.shape[0]} rows holds no two disjoint subsets of n rows")
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(pool.shape[0]) for _ in range(repeats)]
    return [(pool[order[:n]], pool[order[n : 2 * n]]) for order in orders]


def noise_floor(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    sample_true: TrueSampler | Features,
    n: int,
    repeats: int = 5,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std over ``repeats``) of ``metric_fn`` between two independent true samples of n
    rows: the score a perfect generator gets by chance, below which differences mean nothing.

    ``sample_true`` is a sampler of the target (:data:`TrueSampler`, e.g. ``toy.sample_target``
    or ``Gaussian.sample``) or a finite pool (e.g. a test target split), split into two disjoint
    random subsets per repeat. A one-sample score (:func:`mixture_nll`) ignores the second.
    """
    return _mean_std([metric_fn(x, y) for x, y in _true_pairs(sample_true, n, repeats, seed)])


def noise_floors(
    sample_true: TrueSampler | Features,
    n: int,
    mixture: UnitGaussianMixture | None = None,
    with_kid: bool = False,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """:func:`noise_floor` of every score :func:`distribution_scores` returns, from the same
    pairs of true samples and with the same row caps as an evaluation of n mapped rows."""
    runs = [distribution_scores(x, y, mixture, with_kid, seed) for x, y in _true_pairs(sample_true, n, repeats, seed)]
    return {name: _mean_std([run[name] for run in runs]) for name in runs[0]}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1))


def distribution_scores(
    mapped: Features, target: Features, mixture: UnitGaussianMixture | None = None, with_kid: bool = False, seed: int = 0
) -> dict[str, float]:
    """Scores of mapped (N, D) against target (M, D) as distributions: ``fd``, ``energy`` and
    ``mmd`` (RBF kernel, on at most :data:`KERNEL_ROWS` rows), ``kid`` (``with_kid``) and,
    given the target's known ``mixture`` density, ``mode_weight_error`` and ``nll``."""
    scores = {
        "fd": frechet_distance(mapped, target),
        "energy": energy_distance(mapped, target, max_rows=KERNEL_ROWS, seed=seed),
        "mmd": mmd_unbiased(mapped, target, max_rows=KERNEL_ROWS, seed=seed),
    }
    if with_kid:
        scores["kid"] = kernel_inception_distance(mapped, target, seed=seed)
    if mixture is not None:
        scores["mode_weight_error"] = mode_weight_error(mapped, mixture.means, mixture.weights)
        scores["nll"] = mixture_nll(mapped, mixture.means, mixture.weights)
    return scores


def evaluate_translation(
    source: Features,
    mapped: Features,
    target: Features,
    ot_map: Callable[[Features], Features] | None = None,
    with_kid: bool = True,
    seed: int = 0,
    mixture: UnitGaussianMixture | None = None,
) -> dict[str, float]:
    """:func:`distribution_scores` of mapped vs target (M, D), ``transport_cost`` of source ->
    mapped (both (N, D), paired) and, given the known optimal ``ot_map``, ``l2_uvp``."""
    scores = distribution_scores(mapped, target, mixture, with_kid, seed)
    scores["transport_cost"] = transport_cost(source, mapped)
    if ot_map is not None:
        scores["l2_uvp"] = l2_uvp(mapped, ot_map(source), total_variance(target))
    return scores

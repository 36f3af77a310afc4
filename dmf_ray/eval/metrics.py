"""Sample-based metrics for generators and translation maps, on any feature vectors.

Features are (N, D) arrays (toy points, ALAE latents, image embeddings). FD and KID come from
clean-fid so that the numbers match the literature's; it is imported when a distance is
computed, because ``cleanfid.fid`` brings its image pipeline along (about a second), which the
modules that only need :data:`METRIC_NAMES` and the training loop do not. Translation scores:

* transport cost  E||f(x) - x||^2              -- how much of the source is preserved;
* L2-UVP          100 * E||T_hat(x) - T*(x)||^2 / Var(target)   (Korotin et al. 2021) --
  error against a known optimal map, in percent of the target's total variance.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
import numpy as np
import torch

Features = torch.Tensor | np.ndarray


# The scores evaluate_translation can return; sweeps may optimise any of them.
METRIC_NAMES: tuple[str, ...] = ("fd", "kid", "l2_uvp", "transport_cost", "cmmd", "fid_image")

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


def evaluate_translation(
    source: Features,
    mapped: Features,
    target: Features,
    ot_map: Callable[[Features], Features] | None = None,
    with_kid: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """``fd``, ``kid`` (``with_kid``) of mapped vs target (M, D), ``transport_cost`` of source ->
    mapped (both (N, D), paired) and, given the known optimal ``ot_map``, ``l2_uvp``."""
    scores = {
        "fd": frechet_distance(mapped, target),
        "transport_cost": transport_cost(source, mapped),
    }
    if with_kid:
        scores["kid"] = kernel_inception_distance(mapped, target, seed=seed)
    if ot_map is not None:
        scores["l2_uvp"] = l2_uvp(mapped, ot_map(source), total_variance(target))
    return scores

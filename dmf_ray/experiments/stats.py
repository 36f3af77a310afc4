"""Statistics for comparison tables: intervals over seeds, Welch tests, time to quality.

A table of means over a handful of seeds says nothing without its uncertainty: with 5 seeds a
t-interval is about 2.8 standard errors wide on each side, not 2. Everything here takes plain
sequences of numbers (one per seed) and drops non-finite ones (a diverged run has no score).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the t-based ``level`` confidence interval of the mean of the finite
    ``values``: half-width t_{(1+level)/2, n-1} s / sqrt(n) (s the sample standard deviation).
    The mean is nan without values, the half-width nan for fewer than 2 (no spread to estimate)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    arr = _finite(values)
    if arr.size == 0:
        return math.nan, math.nan
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, math.nan
    quantile = float(stats.t.ppf(0.5 + level / 2.0, df=arr.size - 1))
    return mean, quantile * float(arr.std(ddof=1)) / math.sqrt(arr.size)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) that the finite values of a and b
    share a mean; nan when either has fewer than 2 values or both are constant (the statistic
    is undefined: no spread to compare a difference with)."""
    x, y = _finite(a), _finite(b)
    if x.size < 2 or y.size < 2 or (np.ptp(x) == 0.0 and np.ptp(y) == 0.0):
        return math.nan
    with warnings.catch_warnings():  # scipy warns of "precision loss" when one side is constant
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def seconds_to_reach(history: Sequence[Mapping[str, float]], metric: str, threshold: float) -> float | None:
    """``train_seconds`` (wall time in training steps, evaluations excluded) of the first
    evaluation whose ``metric`` is <= ``threshold``; None if no evaluation reached it."""
    for record in history:
        value = record.get(metric)
        if value is not None and math.isfinite(value) and value <= threshold:
            return float(record["train_seconds"])
    return None


@dataclass(frozen=True)
class RatioCI:
    """A ratio of times with its interval: ``estimate`` the geometric mean of the per-seed ratios,
    [``low``, ``high``] its back-transformed t-interval, ``pairs`` how many seeds entered."""

    estimate: float
    low: float
    high: float
    pairs: int


def ratio_ci(numerators: Mapping[int, float | None], denominators: Mapping[int, float | None],
             level: float = 0.95) -> RatioCI:
    """Time-to-quality ratio k = numerator / denominator (e.g. OFM seconds / DMF seconds), paired
    by seed (the same data problem and initial weights on both sides).

    Why logs: a ratio of durations is multiplicative and skewed (k = 4 and k = 1/4 are equally
    far from 1), so the t-interval is taken on log(k_seed) and back-transformed; the centre is the
    geometric mean of the per-seed ratios, and the interval maps to the same one for 1/k. Seeds
    where either side never reached the threshold (None), or took no time, are left out; with
    fewer than 2 pairs the interval is nan (one pair: the estimate is that pair's ratio).
    """
    logs = [math.log(numerators[s] / denominators[s]) for s in numerators
            if s in denominators and _positive(numerators[s]) and _positive(denominators[s])]
    centre, half = mean_ci(logs, level)
    if not logs:
        return RatioCI(math.nan, math.nan, math.nan, 0)
    return RatioCI(math.exp(centre), math.exp(centre - half), math.exp(centre + half), len(logs))


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0

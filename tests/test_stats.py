"""experiments.stats against hand-computed values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from dmf_ray.experiments.stats import mean_ci, ratio_ci, seconds_to_reach, welch_p


def test_mean_ci_is_the_t_interval_by_hand() -> None:
    # values 1, 2, 3: mean 2, s = 1; t_{0.975, 2} = 4.3027 and t_{0.95, 2} = 2.9200 (t tables)
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert mean_ci([1.0, 2.0, 3.0], level=0.9)[1] == pytest.approx(2.9200 / math.sqrt(3), abs=1e-4)


def test_mean_ci_matches_scipy_interval_and_drops_non_finite() -> None:
    values = [0.31, 0.27, 0.40, 0.35, 0.29]
    low, high = sps.t.interval(0.95, df=4, loc=np.mean(values), scale=sps.sem(values))
    mean, half = mean_ci([*values, math.nan, math.inf])
    assert (mean - half, mean + half) == pytest.approx((low, high), rel=1e-12)


def test_mean_ci_of_too_few_values() -> None:
    assert mean_ci([5.0])[0] == 5.0 and math.isnan(mean_ci([5.0])[1])
    assert all(math.isnan(v) for v in mean_ci([]))
    with pytest.raises(ValueError, match="level"):
        mean_ci([1.0, 2.0], level=1.0)


def test_welch_p_is_scipys_unequal_variance_test() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [2.5, 3.5, 6.0]
    assert welch_p(a, b) == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)
    # by hand: means 2.5 vs 4, variances 5/3 and 13/4, so t = -1.5 / sqrt(5/12 + 13/12) and
    # Welch-Satterthwaite df = (18/12)^2 / ((5/12)^2 / 3 + (13/12)^2 / 2)
    t = -1.5 / math.sqrt(18 / 12)
    df = (18 / 12) ** 2 / ((5 / 12) ** 2 / 3 + (13 / 12) ** 2 / 2)
    assert welch_p(a, b) == pytest.approx(2 * sps.t.cdf(t, df), rel=1e-12)


def test_welch_p_is_nan_when_undefined() -> None:
    assert math.isnan(welch_p([1.0], [1.0, 2.0]))
    assert math.isnan(welch_p([1.0, math.nan], [1.0, 2.0]))  # one finite value left
    assert math.isnan(welch_p([2.0, 2.0], [3.0, 3.0]))  # both constant
    assert welch_p([2.0, 2.0], [3.0, 3.5]) < 1.0  # one constant side is fine


def test_seconds_to_reach_returns_the_first_evaluation_at_or_below() -> None:
    history = [{"train_seconds": 1.0, "val_fd": 0.5}, {"train_seconds": 2.0, "val_fd": 0.1},
               {"train_seconds": 3.0, "val_fd": 0.05}, {"train_seconds": 4.0, "val_fd": 0.2}]
    assert seconds_to_reach(history, "val_fd", 0.1) == 2.0  # <= counts
    assert seconds_to_reach(history, "val_fd", 0.06) == 3.0
    assert seconds_to_reach(history, "val_fd", 0.01) is None
    assert seconds_to_reach(history, "val_energy", 1.0) is None


def test_ratio_ci_is_a_t_interval_on_log_ratios() -> None:
    ofm = {0: 40.0, 1: 80.0, 2: 30.0, 3: None}
    dmf = {0: 10.0, 1: 10.0, 2: 10.0, 3: 5.0, 4: 1.0}
    k = ratio_ci(ofm, dmf)
    logs = np.log([4.0, 8.0, 3.0])  # seed 3 never reached on OFM's side, seed 4 has no OFM run
    half = sps.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    assert k.pairs == 3
    assert k.estimate == pytest.approx((4.0 * 8.0 * 3.0) ** (1 / 3), rel=1e-12)  # geometric mean
    assert (k.low, k.high) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)), rel=1e-12)
    inverse = ratio_ci(dmf, ofm)  # the interval of 1/k is 1/(the interval of k)
    assert (inverse.low, inverse.high) == pytest.approx((1 / k.high, 1 / k.low), rel=1e-12)


def test_ratio_ci_with_one_or_no_pairs() -> None:
    one = ratio_ci({0: 6.0}, {0: 2.0})
    assert one.estimate == pytest.approx(3.0) and one.pairs == 1 and math.isnan(one.low)
    assert ratio_ci({0: None}, {0: 2.0}).pairs == 0

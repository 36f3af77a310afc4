"""Tests for the two-particle surrogate of DMF section 3.1 (remark 1, eq. 13, Proposition 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dmf_ray.experiments.surrogate import (
    cumulative_bound,
    derivative,
    fixed_point,
    iterate,
    main,
    margin,
    surrogate_map,
)
from dmf_ray.core.friction import FrictionConfig, schedule_values

TAUS = (0.05, 0.5, 1.0, 3.0)
SLOPE_AT_A_STAR = 1.0 - math.log(2.0) / 2.0
LINEAR = FrictionConfig(schedule="linear")


@pytest.mark.parametrize("tau", TAUS)
def test_tau_ln2_is_a_fixed_point(tau):
    a_star = fixed_point(tau)
    assert a_star == pytest.approx(tau * math.log(2.0))
    assert surrogate_map(a_star, tau) == pytest.approx(a_star, rel=1e-14)
    assert surrogate_map(0.0, tau) == 0.0
    # Friction scales the step but does not move the fixed points (eq. 13).
    assert surrogate_map(a_star, tau, gamma=0.7) == pytest.approx(a_star, rel=1e-14)


@pytest.mark.parametrize("tau", TAUS)
def test_slopes_at_fixed_points(tau):
    a_star = fixed_point(tau)
    assert derivative(a_star, tau) == pytest.approx(SLOPE_AT_A_STAR, abs=1e-12)
    h = 1e-6 * tau
    finite_diff = (surrogate_map(a_star + h, tau) - surrogate_map(a_star - h, tau)) / (2 * h)
    assert finite_diff == pytest.approx(SLOPE_AT_A_STAR, abs=1e-7)
    assert derivative(0.0, tau) == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("gamma", (0.0, 0.4, 1.0))
def test_derivative_matches_finite_differences(gamma):
    tau = 0.8
    a = np.linspace(0.01, 5.0, 50)
    h = 1e-6
    finite_diff = (surrogate_map(a + h, tau, gamma) - surrogate_map(a - h, tau, gamma)) / (2 * h)
    np.testing.assert_allclose(derivative(a, tau, gamma), finite_diff, atol=1e-7)


@pytest.mark.parametrize("tau", TAUS)
def test_frictionless_trajectories_converge_monotonically_without_crossing(tau):
    a_star = fixed_point(tau)
    below = iterate(0.08 * tau, tau, 60)
    above = iterate(3.0 * tau, tau, 60)
    assert below.shape == (61,)
    assert np.all(np.diff(below) >= 0) and np.all(below <= a_star)
    assert np.all(np.diff(above) <= 0) and np.all(above >= a_star)
    assert below[-1] == pytest.approx(a_star, rel=1e-6)
    assert above[-1] == pytest.approx(a_star, rel=1e-6)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("steps", (10, 20, 40))
def test_linear_friction_halts_strictly_below_a_star(tau, steps):
    a_star = fixed_point(tau)
    damped = iterate(0.08 * tau, tau, steps, LINEAR)
    free = iterate(0.08 * tau, tau, steps)
    assert np.all(np.diff(damped) >= 0)
    assert damped[-1] < a_star
    assert damped[-1] < free[-1]
    # gamma(T-1) = 1: the last step does not move the particle at all.
    assert damped[-1] == damped[-2]


def test_iterate_uses_the_schedule():
    tau, steps = 1.0, 7
    cfg = FrictionConfig(schedule="cosine")
    trajectory = iterate(0.3, tau, steps, cfg)
    a = 0.3
    for g in schedule_values(cfg, steps):
        a = surrogate_map(a, tau, g)
    assert trajectory[-1] == a


def test_iterate_rejects_bad_inputs():
    with pytest.raises(ValueError, match="tau"):
        iterate(0.1, 0.0, 5)
    with pytest.raises(ValueError, match="a0"):
        iterate(-0.1, 1.0, 5)
    with pytest.raises(ValueError, match="first-order"):
        iterate(0.1, 1.0, 5, FrictionConfig(order="second"))


def test_margin_range_on_dense_grid():
    for tau in TAUS:
        etas = margin(np.linspace(0.0, 30.0 * tau, 100_001), tau)
        assert etas.min() >= -0.125 - 1e-15 and etas.max() <= 1.0
        assert etas.min() == pytest.approx(-0.125, abs=1e-8)  # attained at a = tau ln 4
        assert etas.max() == 1.0  # attained at a = 0
    # Sign: repulsive (> 0) below a*, attractive (< 0) above (section 3.2).
    assert margin(0.5, 1.0) > 0 > margin(1.0, 1.0)


@pytest.mark.parametrize("cfg", [None, LINEAR, FrictionConfig(schedule="power", power=0.5)])
@pytest.mark.parametrize("a0", (0.01, 0.08, 0.5, 2.0))
def test_proposition_1_bound_holds(cfg, a0):
    tau, steps = 1.0, 30
    trajectory = iterate(a0, tau, steps, cfg)
    gammas = np.zeros(steps) if cfg is None else schedule_values(cfg, steps)
    etas = margin(trajectory[:-1], tau)
    # Non-negative multiplier hypothesis of Proposition 1.
    assert np.all(1.0 + (1.0 - gammas) * etas >= 0)
    for eta_max in (max(float(etas.max()), 0.0), 1.0):  # trajectory-wise and unconditional
        bound = cumulative_bound(trajectory[0], eta_max, gammas)
        assert abs(trajectory[-1]) <= bound.product * (1 + 1e-12)
        assert bound.product <= bound.exponential * (1 + 1e-12)


def test_cumulative_bound_linear_specialisation():
    """For the linear schedule sum(1 - gamma) = T/2, so the exp form is |eps0| exp(eta T / 2)."""
    steps, eta = 50, 0.7
    bound = cumulative_bound(-2.0, eta, schedule_values(LINEAR, steps))
    assert bound.exponential == pytest.approx(2.0 * math.exp(eta * steps / 2))
    # Long horizons overflow to a vacuous +inf bound instead of raising.
    assert cumulative_bound(1.0, 1.0, np.zeros(2000)).exponential == math.inf
    with pytest.raises(ValueError, match="eta_max"):
        cumulative_bound(1.0, -0.1, np.zeros(3))
    with pytest.raises(ValueError, match="gammas"):
        cumulative_bound(1.0, 0.1, np.array([0.0, 1.5]))


def test_cli_writes_png_and_markdown(tmp_path, capsys):
    out = tmp_path / "surrogate"
    assert main(["--out", str(out), "--tau", "0.7", "--steps", "25"]) == 0
    assert (out / "surrogate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "surrogate.md").read_text()
    assert "| check |" in report and "Proposition 1" in report and "| NO |" not in report
    assert "| check |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [(["--tau", "-1"], "--tau"), (["--tau", "nan"], "--tau"), (["--steps", "1"], "--steps")],
)
def test_cli_bad_arguments(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert main(["--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not out.exists()

"""Tests for dmf_ray.core.friction: schedule end points (Proposition 1), orders (eq. 12, 21, rem. 8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dmf_ray.core.friction import (
    SCHEDULES,
    FrictionConfig,
    VelocityBuffer,
    apply_friction,
    gamma,
    schedule_values,
)

STEPS = (2, 3, 10, 1000)

CONFIGS = [
    FrictionConfig(schedule="linear"),
    FrictionConfig(schedule="cosine"),
    FrictionConfig(schedule="power", power=0.3),
    FrictionConfig(schedule="power", power=2.0),
    FrictionConfig(schedule="power", power=7.5),
    FrictionConfig(schedule="sigmoid"),
    FrictionConfig(schedule="sigmoid", midpoint=0.1, steepness=1e-6),
    FrictionConfig(schedule="sigmoid", midpoint=0.9, steepness=1e4),
    FrictionConfig(schedule="step"),
    FrictionConfig(schedule="step", breakpoints=[0.1, 0.5, 0.9], levels=[0.0, 0.3, 1.0]),
    FrictionConfig(schedule="warmup_linear"),
    FrictionConfig(schedule="warmup_linear", warmup=0.0),
    FrictionConfig(schedule="warmup_linear", warmup=0.95),
    FrictionConfig(schedule="table"),
    FrictionConfig(schedule="table", breakpoints=[0.1, 0.5, 0.9], levels=[0.0, 0.3, 0.95]),
]


def test_every_schedule_is_covered():
    assert {c.schedule for c in CONFIGS} | {"none", "constant"} == set(SCHEDULES)


@pytest.mark.parametrize("total", STEPS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.describe())
def test_schedule_end_points_monotone_and_bounded(cfg, total):
    values = schedule_values(cfg, total)
    assert values.dtype == np.float64 and values.shape == (total,)
    assert values[0] == 0.0
    assert values[-1] == 1.0
    assert np.all(np.diff(values) >= 0.0)
    assert np.all((values >= 0.0) & (values <= 1.0))
    assert [gamma(cfg, i, total) for i in range(total)] == values.tolist()


@pytest.mark.parametrize("total", STEPS)
def test_none_is_all_zeros(total):
    assert np.array_equal(schedule_values(FrictionConfig(schedule="none"), total), np.zeros(total))


@pytest.mark.parametrize("total", STEPS)
def test_linear_is_eq_15(total):
    values = schedule_values(FrictionConfig(), total)
    assert values.tolist() == [i / (total - 1) for i in range(total)]


def test_step_levels_and_breakpoints():
    cfg = FrictionConfig(schedule="step", breakpoints=(0.25, 0.5), levels=(0.2, 0.6))
    values = schedule_values(cfg, 5)  # u = 0, .25, .5, .75, 1
    assert values.tolist() == [0.0, 0.2, 0.6, 0.6, 1.0]


def test_warmup_holds_zero():
    values = schedule_values(FrictionConfig(schedule="warmup_linear", warmup=0.5), 11)
    assert np.all(values[:6] == 0.0) and np.all(values[6:] > 0.0)


def test_lists_become_tuples_and_ints_floats():
    cfg = FrictionConfig(schedule="step", breakpoints=[0.5], levels=[1], power=3)
    assert cfg.breakpoints == (0.5,) and cfg.levels == (1.0,)
    assert isinstance(cfg.power, float) and isinstance(cfg.levels[0], float)
    hash(cfg)  # frozen and hashable, usable as a search-space key


def _drift(x: torch.Tensor) -> torch.Tensor:
    return -0.3 * x


def test_first_order_scales_drift():
    drift = torch.tensor([[1.0, -2.0]])
    displacement, velocity = apply_friction("first", 0.25, drift, None)
    assert velocity is None
    torch.testing.assert_close(displacement, 0.75 * drift)


def test_second_order_is_heavy_ball():
    """Proposition 2: x_{i+1} = x_i + V(x_i) + (1 - gamma(i)) (x_i - x_{i-1}) for i >= 1."""
    gammas = schedule_values(FrictionConfig(schedule="cosine"), 12)
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    xs, velocity = [x], None
    for g in gammas:
        displacement, velocity = apply_friction("second", float(g), _drift(xs[-1]), velocity)
        xs.append(xs[-1] + displacement)
    for i in range(1, len(gammas)):
        heavy_ball = xs[i] + _drift(xs[i]) + (1.0 - gammas[i]) * (xs[i] - xs[i - 1])
        torch.testing.assert_close(xs[i + 1], heavy_ball)
    # gamma(0) = 0 and v^0 = 0: the first step is the plain DM step.
    torch.testing.assert_close(xs[1], xs[0] + _drift(xs[0]))


def test_hybrid_formula():
    drift = torch.tensor([[2.0, -1.0]])
    velocity = torch.tensor([[0.5, 4.0]])
    displacement, new_velocity = apply_friction("hybrid", 0.4, drift, velocity)
    expected = 0.6 * velocity + 0.6 * drift
    torch.testing.assert_close(new_velocity, expected)
    torch.testing.assert_close(displacement, expected)
    # At gamma = 1 the hybrid update freezes like first order (remark 8); second order does not.
    assert torch.all(apply_friction("hybrid", 1.0, drift, velocity)[0] == 0)
    torch.testing.assert_close(apply_friction("second", 1.0, drift, velocity)[0], drift)


@pytest.mark.parametrize("order", ["second", "hybrid"])
def test_velocity_buffer_matches_apply_friction(order):
    buffer = VelocityBuffer(n_sources=5, dim=2)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    velocity = None
    for g in (0.0, 0.3, 0.9):
        batch = torch.tensor([3, 1])
        out = buffer.step(batch, _drift(x[batch]), g, order)
        expected, velocity = apply_friction(order, g, _drift(x[batch]), velocity)
        torch.testing.assert_close(out, expected)
        x[batch] += out
    torch.testing.assert_close(buffer.velocity[[3, 1]], velocity)
    assert torch.all(buffer.velocity[[0, 2, 4]] == 0)


def test_velocity_buffer_duplicates_last_write_wins():
    buffer = VelocityBuffer(n_sources=3, dim=1)
    drift = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    out = buffer.step(torch.tensor([0, 2, 0, 0]), drift, 0.0, "second")
    torch.testing.assert_close(out, drift)  # every row sees the stored (zero) velocity
    assert buffer.velocity[:, 0].tolist() == [4.0, 0.0, 2.0]


def test_velocity_buffer_rejects_misuse():
    buffer = VelocityBuffer(n_sources=3, dim=2)
    with pytest.raises(ValueError, match="second"):
        buffer.step(torch.tensor([0]), torch.zeros(1, 2), 0.5, "first")
    with pytest.raises(ValueError, match="drift"):
        buffer.step(torch.tensor([0]), torch.zeros(1, 3), 0.5, "second")
    with pytest.raises(IndexError, match="out of bounds"):  # the gather fails; no per-step range check
        buffer.step(torch.tensor([3]), torch.zeros(1, 2), 0.5, "second")
    with pytest.raises(ValueError, match="shape"):
        buffer.load_state_dict({"velocity": torch.zeros(2, 2)})


def test_velocity_buffer_state_dict_round_trip(tmp_path):
    buffer = VelocityBuffer(n_sources=4, dim=3)
    buffer.step(torch.tensor([0, 2]), torch.randn(2, 3), 0.2, "second")
    path = tmp_path / "velocity.safetensors"
    save_file(buffer.state_dict(), str(path))
    restored = VelocityBuffer(n_sources=4, dim=3)
    restored.load_state_dict(load_file(str(path)))
    assert torch.equal(restored.velocity, buffer.velocity)
    # The state is a copy: later updates do not leak into a saved checkpoint.
    state = buffer.state_dict()
    buffer.step(torch.tensor([1]), torch.ones(1, 3), 0.0, "second")
    assert torch.all(state["velocity"][1] == 0)


def test_table_interpolates_its_knots_and_constant_holds_its_level():
    cfg = FrictionConfig(schedule="table", breakpoints=(0.25, 0.5), levels=(0.2, 0.6))
    values = schedule_values(cfg, 9)  # u = 0, 1/8, ..., 1
    assert values == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0], abs=1e-12)
    assert values[0] == 0.0 and values[-1] == 1.0
    assert np.array_equal(schedule_values(FrictionConfig(schedule="constant", level=0.3), 5), np.full(5, 0.3))
    with pytest.raises(ValueError, match="levels: must be non-decreasing"):
        FrictionConfig(schedule="table", breakpoints=(0.25, 0.5), levels=(0.6, 0.2))  # not monotone


def test_a_learned_table_describes_itself_in_one_short_title():
    knots = tuple(round(0.1 * k, 1) for k in range(1, 10))
    cfg = FrictionConfig(schedule="table", breakpoints=knots, levels=tuple(0.1 * k for k in range(1, 10)))
    assert cfg.describe() == "table(breakpoints=(0.1 .. 0.9, 9 values), levels=(0.1 .. 0.9, 9 values)), order=first"
    assert FrictionConfig(schedule="step").describe() == "step(breakpoints=(0.5,), levels=(0.5,)), order=first"

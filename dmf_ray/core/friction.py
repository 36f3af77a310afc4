"""Friction schedules and update orders of DMF (Kazanskii et al. 2026, arXiv 2604.18194).

DMF differs from a plain Drifting Model only in how the drift V(x) becomes the displacement of
the training target ``x + displacement``: a friction gamma(i) in [0, 1] grows over T steps, and

* ``first``  (eq. 12): displacement = (1 - gamma(i)) V(x), so the update freezes as gamma -> 1;
* ``second`` (appendix B, eq. 21): v_{i+1} = (1 - gamma(i)) v_i + V(x_i), displacement = v_{i+1},
  i.e. Polyak heavy ball with momentum 1 - gamma(i) (Proposition 2);
* ``hybrid`` (remark 8): v_{i+1} = (1 - gamma(i)) v_i + (1 - gamma(i)) V(x_i), which damps both
  the momentum and the force and so freezes like ``first``.

The paper writes these for particles: with the ``particles`` generator, full batches and SGD at
the step that lands each particle on its target, training is exactly eq. 12 / eq. 21
(tests/test_particles.py). For a network, :class:`VelocityBuffer` says what "v" becomes.

Proposition 1 needs a non-decreasing schedule with gamma(0) = 0 and gamma(T-1) = 1, so every
schedule here (except ``none``, plain DM, and ``constant``, the level a Population Based Training
member holds between perturbations) hits both end points exactly in floating point, without
clipping. ``table`` is a schedule learned elsewhere (PBT, :mod:`dmf_ray.platform.learned_schedule`):
piecewise linear through (0, 0), the (breakpoint, level) pairs and (1, 1). Each schedule is one function of the training fraction u = i / (T - 1), shared
by :func:`gamma` (one step, in the loop) and :func:`schedule_values` (all steps, for plots).
"""

from __future__ import annotations

from typing import Annotated, Callable, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass
from torch import Tensor

from dmf_ray.errors import ConfigError
from dmf_ray.schema import SECTION, Float, Fraction, PositiveFloat


def _none(u: np.ndarray, cfg: FrictionConfig) -> np.ndarray:
    return np.zeros_like(u)


def _linear(u: np.ndarray, cfg: FrictionConfig) -> np.ndarray:
    return u.copy()


def _cosine(u: np.ndarray, cfg: FrictionConfig) -> np.ndarray:
    # cos(0) = 1 and cos(pi) = -1 are exact, so the end points are exactly 0 and 1.
    return (1.0 - np.cos(np.pi * u)) / 2.0


def _power(u: np.ndarray, cfg: FrictionConfig) -> np.ndarray:
    return u**cfg.power


def _sigmoid(u: np.ndarray, cfg: FrictionConfig) -> np.ndarray:
    # logistic(z) = (1 + tanh(z / 2)) / 2; the affine rescaling to [0, 1] cancels the constant,
    # leaving tanh differences: no overflow for steep schedules and no cancellation for flat ones.
    def half_tanh(x: np.ndarray | float) -> np.ndarray:
        return np.tanh(0.5 * cfg.steepness * (np.asarray(x) - cfg.midpoint))

    # At u = 1 numerator and denominator are the same float, hence exactly 1.
    low = half_tanh(0.0)
    return (half_tanh(u) - low) / (half_tanh(1.0) - low)


def _step(u: np.ndarray, cfg: FrictionConfig) -> np.ndarray:
    # searchsorted counts the breakpoints <= u: 0 before the first one maps to gamma = 0.
    values = np.concatenate(([0.0], np.asarray(cfg.levels, dtype=np.float64)))
    piecewise = values[np.searchsorted(np.asarray(cfg.breakpoints), u, side="right")]
    # The last step is forced to full friction, as Proposition 1 requires gamma(T-1) = 1.
    return np.where(u >= 1.0, 1.0, piecewise)


def _warmup_linear(u: np.ndarray, cfg: FrictionConfig) -> np.ndarray:
    return np.maximum(0.0, (u - cfg.warmup) / (1.0 - cfg.warmup))


def _table(u: np.ndarray, cfg: FrictionConfig) -> np.ndarray:
    # np.interp returns the end values exactly at u = 0 and u = 1.
    knots = np.concatenate(([0.0], np.asarray(cfg.breakpoints, dtype=np.float64), [1.0]))
    values = np.concatenate(([0.0], np.asarray(cfg.levels, dtype=np.float64), [1.0]))
    return np.interp(u, knots, values)


def _constant(u: np.ndarray, cfg: FrictionConfig) -> np.ndarray:
    return np.full_like(u, cfg.level)


SCHEDULES: dict[str, Callable[[np.ndarray, "FrictionConfig"], np.ndarray]] = {
    "none": _none,
    "linear": _linear,
    "cosine": _cosine,
    "power": _power,
    "sigmoid": _sigmoid,
    "step": _step,
    "warmup_linear": _warmup_linear,
    "table": _table,
    "constant": _constant,
}

# Parameters that shape each schedule (used to describe a config in plot titles and logs).
_SCHEDULE_PARAMS: dict[str, tuple[str, ...]] = {
    "power": ("power",),
    "sigmoid": ("midpoint", "steepness"),
    "step": ("breakpoints", "levels"),
    "warmup_linear": ("warmup",),
    "table": ("breakpoints", "levels"),
    "constant": ("level",),
}


Schedule = Literal["none", "linear", "cosine", "power", "sigmoid", "step", "warmup_linear", "table", "constant"]
Order = Literal["first", "second", "hybrid"]
UnitOpen = Annotated[Float, Field(gt=0, lt=1)]


@dataclass(frozen=True, config=SECTION)
class FrictionConfig:
    """Which friction schedule gamma(i) and which update order (first/second/hybrid) to use.

    All shape parameters are validated whatever the schedule, so a config that is valid for one
    schedule stays valid when only ``schedule`` is changed (e.g. by a hyperparameter search).
    """

    schedule: Schedule = "linear"
    order: Order = "first"
    power: PositiveFloat = 2.0
    midpoint: UnitOpen = 0.5
    steepness: PositiveFloat = 10.0
    breakpoints: Annotated[tuple[UnitOpen, ...], Field(min_length=1)] = (0.5,)
    levels: tuple[Fraction, ...] = (0.5,)
    warmup: Annotated[Float, Field(ge=0, lt=1)] = 0.1
    level: Fraction = 0.0  # ``constant``: the PBT member's gamma until the next perturbation

    @model_validator(mode="after")
    def _step_shape(self) -> FrictionConfig:
        breakpoints, levels = self.breakpoints, self.levels
        if any(b >= c for b, c in zip(breakpoints, breakpoints[1:])):
            raise ConfigError("breakpoints", f"must be strictly increasing, got {list(breakpoints)}")
        if len(levels) != len(breakpoints):
            raise ConfigError("levels", f"must have one level per breakpoint ({len(breakpoints)}), got {len(levels)}")
        if any(v > w for v, w in zip(levels, levels[1:])):
            raise ConfigError("levels", f"must be non-decreasing, got {list(levels)}")
        return self

    def describe(self) -> str:
        """Short readable name, e.g. ``sigmoid(midpoint=0.5, steepness=10.0), order=first``."""
        names = _SCHEDULE_PARAMS.get(self.schedule, ())
        params = ", ".join(f"{name}={_short(getattr(self, name))}" for name in names)
        name = f"{self.schedule}({params})" if params else self.schedule
        return f"{name}, order={self.order}"


def _short(value: object) -> str:
    """A parameter as a title shows it: a long knot list (a learned ``table``) by its ends and length."""
    if isinstance(value, tuple) and len(value) > 3:
        return f"({value[0]:g} .. {value[-1]:g}, {len(value)} values)"
    return str(value)


def schedule_values(cfg: FrictionConfig, total_steps: int) -> np.ndarray:
    """All T >= 2 values gamma(0), ..., gamma(T-1) as float64 (same numbers as :func:`gamma`)."""
    u = np.arange(total_steps, dtype=np.float64) / (total_steps - 1)
    return SCHEDULES[cfg.schedule](u, cfg).astype(np.float64)


def gamma(cfg: FrictionConfig, step: int, total_steps: int) -> float:
    """Friction gamma(step) in [0, 1] (eq. 15 etc.), O(1) so the loop calls it every step."""
    u = np.array([step / (total_steps - 1)], dtype=np.float64)
    return float(SCHEDULES[cfg.schedule](u, cfg)[0])


def apply_friction(
    order: str, gamma: float, drift: Tensor, velocity: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Turn the drift V(x) into (displacement, new velocity); the target is ``x + displacement``.

    ``first`` (eq. 12) returns no velocity. ``second`` (eq. 21) and ``hybrid`` (remark 8) treat a
    missing ``velocity`` as zeros (v^0 = 0) and return the new velocity v_{i+1}, which is also the
    displacement because x_{i+1} = x_i + v_{i+1}.
    """
    damping = 1.0 - gamma
    if order == "first":
        return damping * drift, None
    previous = torch.zeros_like(drift) if velocity is None else velocity
    force = drift if order == "second" else damping * drift
    new_velocity = damping * previous + force
    return new_velocity, new_velocity


class VelocityBuffer:
    """Velocity v of every source row for the second-order and hybrid updates.

    What v is, exactly: one float32 vector per row of the train source pool (v = 0 at the
    start), updated only when the row is in a batch -- v <- (1 - gamma(i)) v + V(x) (``hybrid``:
    (1 - gamma(i)) (v + V(x))) with gamma at the step of that visit -- and the row's training
    target is x + v. So v is a decayed sum of the *target displacements* (drifts) of the row's
    past visits, decayed once per visit (a pool of N rows and batches of B are visited every
    N / B steps), not per step, and not the row's realised move. For particles trained with
    full batches and the exact SGD step the two coincide and this is eq. 21; for a network they
    differ: a row that was never seen before is plain DM (second) or first order (hybrid).

    Why not the realised velocity (target x_i + V(x_i) + (1 - gamma(i)) (x_i - x_prev), with
    x_prev the row's output at its previous visit or after the previous optimiser step): under
    Adam a network's output moves by steps unrelated to the target's size, so feeding the
    realised move back into the target compounds; on the toy it diverged within 400 steps in
    every variant and seed tried, while these bounded drift sums did not (benchmarks/RESULTS.md).

    A duplicated index reads the velocity stored before the batch, and its last occurrence wins
    on every device (index assignment with duplicates is unspecified on CUDA).
    """

    def __init__(self, n_sources: int, dim: int, device: torch.device | str | None = None) -> None:
        self.velocity = torch.zeros(n_sources, dim, dtype=torch.float32, device=device)

    def step(self, indices: Tensor, drift: Tensor, gamma: float, order: str) -> Tensor:
        """Update the rows ``indices`` with ``drift`` (B, D) and return the displacement (B, D).

        Indices are not range-checked (that would sync with the device every step); an
        out-of-range one still fails in the gather.
        """
        if order == "first":
            raise ValueError("VelocityBuffer is for the 'second' and 'hybrid' orders only")
        n_sources, dim = self.velocity.shape
        if indices.ndim != 1 or drift.shape != (indices.shape[0], dim):
            raise ValueError(
                f"expected indices (B,) and drift (B, {dim}), got {tuple(indices.shape)} "
                f"and {tuple(drift.shape)}"
            )
        indices = indices.to(device=self.velocity.device, dtype=torch.long, non_blocking=True)
        previous = self.velocity[indices].to(device=drift.device, dtype=drift.dtype)
        displacement, new_velocity = apply_friction(order, gamma, drift, previous)
        assert new_velocity is not None  # second/hybrid always return a velocity
        # Every occurrence of a duplicated index writes the value of its last occurrence, so the
        # scatter is deterministic without a boolean mask (which would sync with the device).
        positions = torch.arange(indices.shape[0], device=indices.device)
        last = torch.full((n_sources,), -1, dtype=torch.long, device=indices.device)
        last = last.scatter_reduce(0, indices, positions, reduce="amax")
        self.velocity[indices] = new_velocity.detach().to(self.velocity)[last[indices]]
        return displacement

    def state_dict(self) -> dict[str, Tensor]:
        return {"velocity": self.velocity.detach().clone().contiguous()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        velocity = state["velocity"]
        if velocity.shape != self.velocity.shape:
            raise ValueError(
                f"velocity shape {tuple(velocity.shape)} != buffer {tuple(self.velocity.shape)}"
            )
        self.velocity.copy_(velocity)

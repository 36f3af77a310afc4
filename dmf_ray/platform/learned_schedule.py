"""A friction schedule learned by Population Based Training, exported as ``friction.schedule: table``.

In a PBT sweep every member trains with ``friction.schedule: constant`` and PBT perturbs its
``friction.level`` at evaluation intervals, cloning the best members' checkpoints. The best
member's history (carried along through every clone, as checkpoints hold it) records the level it
held in each interval: that is a schedule gamma(i), found by search rather than chosen. DMF's
Proposition 1 wants it non-decreasing from 0 to 1, so the export is the isotonic (least-squares
non-decreasing) fit of the held levels, as the knots of a piecewise-linear ``table`` that starts
at gamma = 0 and ends at gamma = 1; ``compare --searched`` evaluates it on fresh seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import isotonic_regression

from dmf_ray.core.friction import FrictionConfig

DIGITS = 6  # knots as written to YAML


@dataclass(frozen=True)
class LearnedSchedule:
    """The levels a member held (per evaluation step) and their monotone ``table`` fit."""

    steps: tuple[int, ...]
    held: tuple[float, ...]
    breakpoints: tuple[float, ...]
    levels: tuple[float, ...]

    def overrides(self) -> dict[str, Any]:
        """Dotted friction keys, as ``train --set`` and ``compare --searched`` take them."""
        return {"friction.schedule": "table", "friction.breakpoints": list(self.breakpoints),
                "friction.levels": list(self.levels)}

    def config(self, order: str = "first") -> FrictionConfig:
        return FrictionConfig(schedule="table", order=order, breakpoints=self.breakpoints, levels=self.levels)


def learned_schedule(history: Sequence[Mapping[str, Any]], total_steps: int) -> LearnedSchedule:
    """Fit the ``gamma`` a run's evaluation records held (one per evaluation step) with a
    non-decreasing table: knots at step / total_steps (those strictly inside (0, 1)), levels the
    isotonic fit clipped to [0, 1]. ValueError if the history has no evaluation inside the run."""
    records = sorted(((int(r["step"]), float(r["gamma"])) for r in history if "gamma" in r and "step" in r))
    inside = [(step, level) for step, level in records if 0 < step < total_steps]
    if not inside:
        raise ValueError(f"no evaluation between step 0 and {total_steps} to learn a schedule from")
    steps, held = zip(*inside)
    fit = np.clip(isotonic_regression(np.asarray(held, dtype=np.float64), increasing=True).x, 0.0, 1.0)
    levels = tuple(float(v) for v in np.round(fit, DIGITS))  # rounding keeps the fit non-decreasing
    breakpoints = tuple(round(step / total_steps, DIGITS) for step in steps)
    return LearnedSchedule(steps=tuple(steps), held=tuple(held), breakpoints=breakpoints, levels=levels)

"""A PBT member's held friction levels become a monotone ``table`` schedule (isotonic fit)."""

from __future__ import annotations

import numpy as np
import pytest

from dmf_ray.core.friction import FrictionConfig, schedule_values
from dmf_ray.platform.learned_schedule import learned_schedule
from dmf_ray.trainer.config import load_train_config


def _history(levels: list[float], every: int = 100) -> list[dict]:
    return [{"step": every * (i + 1), "gamma": g, "val_fd": 1.0} for i, g in enumerate(levels)]


def test_held_levels_become_a_monotone_table_from_zero_to_one() -> None:
    learned = learned_schedule(_history([0.1, 0.3, 0.2, 0.6, 0.9, 0.4]), total_steps=600)
    assert learned.steps == (100, 200, 300, 400, 500)  # the last evaluation is the run's end
    assert learned.breakpoints == pytest.approx((1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6), abs=1e-6)
    # Pool-adjacent-violators: 0.3 and 0.2 pool to 0.25; the rest already rise.
    assert learned.levels == pytest.approx((0.1, 0.25, 0.25, 0.6, 0.9))
    values = schedule_values(learned.config(), 601)
    assert values[0] == 0.0 and values[-1] == 1.0 and np.all(np.diff(values) >= 0)
    assert values[100] == pytest.approx(0.1, abs=1e-5) and values[500] == pytest.approx(0.9, abs=1e-5)


def test_the_export_is_a_valid_training_config() -> None:
    learned = learned_schedule(_history([0.5, 0.2, 0.8]), total_steps=400)
    cfg = load_train_config(None, {"steps": 400, **learned.overrides()})
    assert cfg.friction.schedule == "table" and cfg.friction.levels == learned.levels
    assert isinstance(learned.config("second"), FrictionConfig)


def test_levels_outside_zero_one_are_clipped_and_an_empty_history_is_refused() -> None:
    assert learned_schedule(_history([-0.2, 1.3]), total_steps=300).levels == (0.0, 1.0)
    with pytest.raises(ValueError, match="no evaluation between step 0 and 100"):
        learned_schedule(_history([0.5]), total_steps=100)

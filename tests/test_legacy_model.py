"""A generator logged by the pre-restructuring layout (dmf_ray 0.1, flat modules) still loads.

The fixture folder was written by ``mlflow.pyfunc.save_model`` with that layout's
``pyfunc_model.py``, which imports ``dmf_ray.serving.inference`` and ``dmf_ray.core.models``; those import
paths must keep working for every model already in a registry.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

FIXTURES = Path(__file__).with_name("fixtures")


def test_model_logged_by_the_flat_layout_loads_and_predicts_the_same() -> None:
    model = mlflow.pyfunc.load_model(str(FIXTURES / "logged_generator_v0"))
    x = np.load(FIXTURES / "logged_generator_v0_input.npy")
    expected = np.load(FIXTURES / "logged_generator_v0_output.npy")
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6, atol=1e-6)

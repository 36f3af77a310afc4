"""The MLflow pyfunc of a dmf_ray generator, logged as *code* ("models from code").

Why a code file and not a pickled object: :func:`dmf_ray.platform.registry.log_generator` passes this
file's path as ``python_model``; MLflow copies the file into the logged model and, on load,
executes it -- the :func:`mlflow.models.set_model` call at the bottom hands MLflow the model
object. The weights travel as the artifact ``weights`` (a safetensors file written by
:func:`dmf_ray.core.models.save_generator`, config in its metadata), so loading a logged generator
never unpickles anything.

Dependency: this file imports :mod:`dmf_ray.core.models`, so the environment that loads the model must
have the ``dmf_ray`` package installed (``pip install -e .`` of this repository; it is not on
PyPI). We do not ship the package with ``code_paths``: that would copy the whole package
(experiments, data loaders) into every model and put a second copy of ``dmf_ray`` in front of the
installed one on ``sys.path``.

Importing this module as ``dmf_ray.serving.pyfunc_model`` is harmless: ``set_model`` only records the
object for MLflow's loader.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel, PythonModelContext

from dmf_ray.serving.inference import as_float32_batch, run_generator

WEIGHTS_ARTIFACT = "weights"


class GeneratorPyfunc(PythonModel):
    """pyfunc wrapper: ``predict`` maps (N, input_dim) float latents to (N, dim) float32."""

    def load_context(self, context: PythonModelContext) -> None:
        from dmf_ray.core.models import load_generator

        model, cfg = load_generator(context.artifacts[WEIGHTS_ARTIFACT], device="cpu")
        model.eval()
        self.model = model
        self.cfg = cfg

    def predict(self, context: PythonModelContext, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        # `np.ndarray` is a hint MLflow accepts without inferring a schema (the logged tensor
        # signature does that); a DataFrame is accepted too and converted.
        x = as_float32_batch(model_input, self.cfg.input_dim)
        return run_generator(self.model, x)


mlflow.models.set_model(GeneratorPyfunc())

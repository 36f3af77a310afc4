"""The MLflow pyfunc of a dmf_ray generator, logged as *code* ("models from code").

Why a code file and not a pickled object: :func:`dmf_ray.platform.registry.log_generator` passes this
file's path as ``python_model``; MLflow copies the file into the logged model and, on load,
executes it -- the :func:`mlflow.models.set_model` call at the bottom hands MLflow the model
object (importing this module is harmless: ``set_model`` only records it). The weights travel as
the artifact ``weights``, a generator file of :mod:`dmf_ray.core.models` (safetensors, no pickle).

Why the package is not shipped with ``code_paths``: that would copy the whole package
(experiments, data loaders) into every model and put a second copy of ``dmf_ray`` in front of the
installed one on ``sys.path``. So the loading environment needs ``dmf_ray`` installed
(``pip install -e .`` of this repository; it is not on PyPI).
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

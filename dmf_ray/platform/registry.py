"""Logged generators and the ``champion`` alias in the MLflow model registry.

* :func:`log_generator` logs a generator's safetensors weights to a run as an MLflow pyfunc *from
  code* (:mod:`dmf_ray.serving.pyfunc_model`; the loading environment must have ``dmf_ray``
  installed) with explicit ``pip_requirements`` (which also skips MLflow's slow inference).
* :func:`register_if_champion` registers it as a new version, tagged ``metric``, ``metric_value``,
  ``mode``, ``dataset``, ``sweep_id``, and moves the alias ``champion`` (MLflow 3's replacement
  for stages) to it when no version holds it yet, or when the champion was registered for the
  same dataset and metric and the new value is strictly better under ``mode`` (a tie keeps the
  incumbent). A champion of another dataset or metric is not comparable and keeps the alias
  (one registered model per task, :func:`default_model_name`, avoids that); a non-finite value
  never becomes champion.

Everything goes through an explicit :class:`mlflow.MlflowClient`, never the global tracking URI
or active run, so a process can track to several stores.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import Model
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.types import Schema, TensorSpec

from dmf_ray.errors import ConfigError, UserInputError
from dmf_ray.core.models import load_generator

PYFUNC_CODE = Path(__file__).resolve().parents[1] / "serving" / "pyfunc_model.py"
MODEL_NAME = "generator"
CHAMPION = "champion"
_DATA_SHORT_NAMES = {"ffhq-alae": "ffhq", "ffhq_alae": "ffhq"}


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of :func:`register_if_champion`; versions are MLflow's version strings."""

    version: str
    became_champion: bool
    previous_champion: str | None
    reason: str = ""
    name: str = ""


def _client(client_or_uri: mlflow.MlflowClient | str) -> mlflow.MlflowClient:
    if isinstance(client_or_uri, mlflow.MlflowClient):
        return client_or_uri
    return mlflow.MlflowClient(tracking_uri=client_or_uri, registry_uri=client_or_uri)


def pip_requirements() -> list[str]:
    """Requirements recorded with a logged generator (installed major.minor as lower bound)."""
    import pandas
    import safetensors
    import torch

    reqs = []
    for name, mod in (("torch", torch), ("safetensors", safetensors), ("numpy", np), ("pandas", pandas)):
        m = re.match(r"(\d+)\.(\d+)", getattr(mod, "__version__", ""))
        reqs.append(f"{name}>={m.group(1)}.{m.group(2)}" if m else name)
    return reqs


def generator_signature(input_dim: int, dim: int) -> ModelSignature:
    """Tensor signature: float32 (-1, input_dim) in, float32 (-1, dim) out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, input_dim))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
    )


def log_generator(
    client_or_uri: mlflow.MlflowClient | str, run_id: str, weights_path: str | Path, dim: int
) -> str:
    """Log a :func:`~dmf_ray.core.models.save_generator` file to run ``run_id`` as the LoggedModel
    ``generator``, an output of the run; ``dim`` guards against the wrong file. Returns ``models:/<id>``."""
    client = _client(client_or_uri)
    weights_path = Path(weights_path)
    _, cfg = load_generator(weights_path)  # DataError naming the file if it is not a generator
    if cfg.dim != dim:
        raise ConfigError("dim", f"{weights_path} holds a generator of dim {cfg.dim}, expected {dim}")
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        params={"kind": cfg.kind, "dim": str(cfg.dim), "input_dim": str(cfg.input_dim)},
    )
    try:
        mlflow_model = Model(
            artifact_path=logged.artifact_location,
            run_id=run_id,
            model_uuid=logged.model_id,
            model_id=logged.model_id,
        )
        example = np.random.default_rng(0).standard_normal((2, cfg.input_dim)).astype(np.float32)
        with tempfile.TemporaryDirectory(prefix="dmf_ray_model_") as tmp:
            local = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                path=str(local),
                python_model=str(PYFUNC_CODE),
                artifacts={"weights": str(weights_path.resolve())},
                signature=generator_signature(cfg.input_dim, cfg.dim),
                input_example=example,
                pip_requirements=pip_requirements(),
                mlflow_model=mlflow_model,
            )
            for pycache in local.rglob("__pycache__"):
                shutil.rmtree(pycache, ignore_errors=True)
            client.log_model_artifacts(logged.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except BaseException:
        try:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        except Exception:  # best effort: the original error is the one to raise
            pass
        raise
    return f"models:/{logged.model_id}"


def default_model_name(data_name: str, direction: str | None = None) -> str:
    """Registered-model name per dataset/task: ``dmf-toy``, ``dmf-gaussian-ot``, ``dmf-ffhq-adult2child``."""
    data = _DATA_SHORT_NAMES.get(data_name, data_name)
    parts = ["dmf", data] + ([direction] if direction else [])
    slug = "-".join(re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") for p in parts)
    return re.sub(r"-+", "-", slug)


def _logged_model_id(model_uri: str) -> str | None:
    """``m-abc`` for ``models:/m-abc`` (a LoggedModel URI), else None (registry or runs URI)."""
    m = re.fullmatch(r"models:/([^/@]+)", model_uri)
    return m.group(1) if m else None


def _is_better(new: float, old: float, mode: str) -> bool:
    return new < old if mode == "min" else new > old


def _float_tag(tags: dict[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None


def register_if_champion(
    tracking_uri: str,
    model_uri: str,
    name: str,
    metric: str,
    value: float,
    mode: Literal["min", "max"],
    dataset: str,
    sweep_id: str,
    test_value: float = math.nan,
) -> RegistrationResult:
    """Register ``model_uri`` as a new version of ``name``; move ``champion`` per the module rule.

    ``metric`` (a validation score) is what the champion is chosen by; ``test_value``, the same
    score on the test split, is tagged beside it (``test_metric_value``) for reports and never
    compared."""
    if mode not in ("min", "max"):
        raise ConfigError("mode", f"must be 'min' or 'max', got {mode!r}")
    if not name:
        raise ConfigError("model_name", "must not be empty")
    client = _client(tracking_uri)
    try:
        client.create_registered_model(name, description="dmf_ray generators; alias 'champion' = best so far")
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise

    value = float(value)
    tags = {
        "metric": metric,
        "metric_value": repr(value),
        "test_metric_value": repr(float(test_value)),
        "mode": mode,
        "dataset": dataset,
        "sweep_id": sweep_id,
    }
    # For ``models:/<model_id>`` pass the LoggedModel's artifact location and run explicitly: given
    # the models:/ URI, MLflow 3.17's SQL registry store looks the model up through a *global*
    # MlflowClient (the default tracking URI), not through this client's store.
    source, run_id, model_id = model_uri, None, _logged_model_id(model_uri)
    if model_id is not None:
        try:
            logged = client.get_logged_model(model_id)
        except MlflowException as exc:
            raise UserInputError(f"{model_uri}: no such logged model in {tracking_uri}") from exc
        source, run_id = logged.artifact_location, logged.source_run_id
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags, model_id=model_id)

    champion_version = client.get_registered_model(name).aliases.get(CHAMPION)
    current = client.get_model_version(name, champion_version) if champion_version else None

    previous = str(current.version) if current is not None else None

    def result(became: bool, reason: str) -> RegistrationResult:
        return RegistrationResult(str(mv.version), became, previous, reason=reason, name=name)

    if not math.isfinite(value):
        return result(False, f"{metric}={value} is not finite")
    if current is None:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
        return result(True, "no champion yet")
    ctags = dict(current.tags or {})
    if ctags.get("dataset") != dataset or ctags.get("metric") != metric:
        return result(
            False,
            f"champion v{previous} is for dataset={ctags.get('dataset')!r} metric={ctags.get('metric')!r};"
            f" not comparable with dataset={dataset!r} metric={metric!r}",
        )
    old = _float_tag(ctags, "metric_value")
    if old is not None and math.isfinite(old) and not _is_better(value, old, mode):
        return result(False, f"{metric}={value:.6g} is not better than the champion's {old:.6g} ({mode})")
    client.set_registered_model_alias(name, CHAMPION, mv.version)
    beaten = "a champion without a valid value" if old is None or not math.isfinite(old) else f"{old:.6g}"
    return result(True, f"{metric}={value:.6g} beats {beaten} ({mode})")

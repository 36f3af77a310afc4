"""Load a trained generator from MLflow (or a local file) and translate arrays with it.

:func:`load_model` accepts every way a dmf_ray generator is addressed:

* ``models:/NAME@champion`` (alias), ``models:/NAME/3`` (version), ``models:/m-<id>`` (a
  LoggedModel), ``runs:/<run_id>/<path>`` and other artifact URIs -- downloaded with an explicit
  tracking/registry URI;
* a local folder holding a logged model (``MLmodel`` + ``artifacts/generator.safetensors``) or
  a folder with ``generator.safetensors`` (a ``python -m dmf_ray.train`` output folder);
* a bare ``*.safetensors`` generator file.

In every case the weights are read from the safetensors file with
:func:`dmf_ray.core.models.load_generator` (no pickle, no MLflow model code executed): the same
numbers as ``mlflow.pyfunc.load_model(uri).predict(x)``, whose pyfunc shares the array helpers
below. Unknown models, aliases and versions raise a one-line UserInputError naming the URI.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmf_ray.errors import DataError, UserInputError
from dmf_ray.core.models import GeneratorConfig, load_generator

DEFAULT_BATCH_SIZE = 8192
WEIGHTS_FILE = "generator.safetensors"


def as_float32_batch(model_input: Any, width: int) -> np.ndarray:
    """Validate a (N, width) float array (or DataFrame / tensor) and return it as float32.

    Raises ValueError (one line) on a wrong rank, width or dtype, or non-finite values. Integer,
    boolean, complex and object inputs are refused: a generator's input is a float latent, and an
    integer array is almost always the wrong file. A single row of shape (width,) is accepted.
    """
    if isinstance(model_input, torch.Tensor):
        model_input = model_input.detach().cpu().numpy()
    elif not isinstance(model_input, np.ndarray) and hasattr(model_input, "to_numpy"):  # pandas
        model_input = model_input.to_numpy()
    if not isinstance(model_input, np.ndarray):
        raise ValueError(f"input must be a numpy array or DataFrame, got {type(model_input).__name__}")
    if model_input.ndim == 1 and model_input.shape[0] == width:
        model_input = model_input[None, :]
    x = check_float_matrix(model_input)
    if x.shape[1] != width:
        raise ValueError(f"input must have {width} columns (the model's input dim), got {x.shape[1]}")
    return x


def check_float_matrix(array: np.ndarray) -> np.ndarray:
    """A 2-D, floating, finite array as float32; ValueError (one line) otherwise."""
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D (N, dim) array, got shape {array.shape}")
    if array.dtype.kind != "f":
        raise ValueError(f"expected a float array (float16/32/64), got dtype {array.dtype}")
    x = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        rows = np.flatnonzero(~finite.all(axis=1))
        raise ValueError(f"has non-finite values (NaN/inf) in {rows.size} row(s), first row {int(rows[0])}")
    return x


def run_generator(model: nn.Module, x: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Apply ``model`` to a validated float32 (N, d) array on CPU, ``batch_size`` rows at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_dim = getattr(getattr(model, "cfg", None), "dim", x.shape[1])
    out = np.empty((x.shape[0], out_dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
            out[start : start + batch.shape[0]] = model(batch).to(torch.float32).cpu().numpy()
    return out


@dataclass
class Translator:
    """A loaded generator: ``translate`` maps (N, dim) float arrays to (N, out_dim) float32 on CPU."""

    model: nn.Module
    cfg: GeneratorConfig
    source: str = ""

    @property
    def dim(self) -> int:
        """Width of the input (the latent dim for a translation generator)."""
        return self.cfg.input_dim

    def translate(self, array: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Translate (N, dim) float rows (float16/32/64); ValueError on bad shape/dtype/values."""
        return run_generator(self.model, as_float32_batch(array, self.dim), batch_size)


def load_model(uri: str | Path, tracking_uri: str | None = None) -> Translator:
    """Load a dmf_ray generator from an MLflow model URI or a local path (see module docs)."""
    text = str(uri)
    local = Path(text).expanduser()
    if "://" not in text and not text.startswith(("models:", "runs:")):
        if not local.exists():
            raise DataError(local, "no such file or folder (expected a model URI such as models:/NAME@champion, a logged model folder or a .safetensors file)")
        return _translator(_weights_in(local, text), text)
    with tempfile.TemporaryDirectory(prefix="dmf_ray_load_") as tmp:  # weights are read into memory
        folder = _download(text, tracking_uri, Path(tmp))
        return _translator(_weights_in(folder, text), text)


def _translator(weights: Path, source: str) -> Translator:
    model, cfg = load_generator(weights, device="cpu")
    model.eval()
    return Translator(model=model, cfg=cfg, source=source)


def _weights_in(path: Path, uri: str) -> Path:
    """The generator safetensors file of a logged model folder, run folder or bare file."""
    if path.is_file():
        return path
    mlmodel = path / "MLmodel"
    if mlmodel.is_file():
        import yaml

        try:
            meta = yaml.safe_load(mlmodel.read_text()) or {}
            rel = meta["flavors"]["python_function"]["artifacts"]["weights"]["path"]
        except (yaml.YAMLError, KeyError, TypeError) as exc:
            raise UserInputError(f"{uri}: not a dmf_ray generator model (MLmodel has no 'weights' artifact)") from exc
        weights = path / rel
        if weights.is_file():
            return weights
        raise UserInputError(f"{uri}: logged model is missing its weights file {rel}")
    for candidate in (path / WEIGHTS_FILE, path / "artifacts" / WEIGHTS_FILE):
        if candidate.is_file():
            return candidate
    found = sorted(path.rglob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    raise UserInputError(f"{uri}: no generator found (no MLmodel or {WEIGHTS_FILE} in it)")


_REGISTRY_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?/?")
_RUNS_URI = re.compile(r"runs:/(?P<run>[^/]+)/(?P<path>.+?)/?")


def _download(uri: str, tracking_uri: str | None, dst: Path) -> Path:
    """Resolve ``uri`` with an explicit client and download the model folder into ``dst``.

    models:/ and runs:/ URIs are resolved here rather than by ``mlflow.artifacts``: MLflow 3.17
    looks registered-model names up through the *global* registry URI, ignoring the one passed.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        location = _artifact_location(client, uri)
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(dst), tracking_uri=client.tracking_uri
            )
        )
    except UserInputError:
        raise
    except MlflowException as exc:
        first = str(getattr(exc, "message", exc)).strip().splitlines()
        raise UserInputError(f"{uri}: cannot resolve the model ({first[0] if first else type(exc).__name__})") from None
    except OSError as exc:
        raise UserInputError(f"{uri}: cannot download the model ({exc.strerror or exc})") from None


def _artifact_location(client: Any, uri: str) -> str:
    """The artifact URI of the model folder that ``uri`` names (UserInputError if unknown)."""
    from mlflow.exceptions import MlflowException

    where = f" in {client.tracking_uri}"
    m = _REGISTRY_URI.fullmatch(uri)
    if m:
        name, alias, version = m.group("name", "alias", "version")
        if alias is None and version is None:  # models:/<model_id>: a LoggedModel
            try:
                return client.get_logged_model(name).artifact_location
            except MlflowException:
                raise UserInputError(f"{uri}: no logged model {name!r}{where}") from None
        try:
            rm = client.get_registered_model(name)
        except MlflowException:
            raise UserInputError(f"{uri}: no registered model {name!r}{where}") from None
        if alias is not None:
            aliases = dict(rm.aliases or {})
            if alias not in aliases:
                known = ", ".join(sorted(aliases)) or "none"
                raise UserInputError(f"{uri}: registered model {name!r} has no alias {alias!r} (aliases: {known})")
            version = str(aliases[alias])
        elif version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise UserInputError(f"{uri}: registered model {name!r} has no versions")
            version = str(max(int(v.version) for v in versions))
        try:
            client.get_model_version(name, version)
        except MlflowException:
            raise UserInputError(f"{uri}: registered model {name!r} has no version {version!r}") from None
        return client.get_model_version_download_uri(name, version)
    m = _RUNS_URI.fullmatch(uri)
    if m:
        run_id, path = m.group("run", "path")
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise UserInputError(f"{uri}: no run {run_id!r}{where}") from None
        # MLflow 3: a model logged "to a run" is a LoggedModel whose source run is that run;
        # runs:/<run>/<name> means the latest such model called <name>, else a plain run artifact.
        models = client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{path}'",
        )
        if models:
            return max(models, key=lambda lm: lm.creation_timestamp).artifact_location
        if not client.list_artifacts(run_id, path):
            raise UserInputError(f"{uri}: run {run_id} has no model or artifact {path!r}")
        return f"{run.info.artifact_uri.rstrip('/')}/{path}"
    return uri

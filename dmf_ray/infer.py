"""``python -m dmf_ray.infer``: translate an .npy array with a trained generator.

    python -m dmf_ray.infer --model models:/dmf-ffhq-adult2child@champion \\
        --input adults.npy --output children.npy [--tracking-uri sqlite:///runs/mlflow.db]

``--model`` is anything :func:`dmf_ray.serving.inference.load_model` accepts. The input must be a
finite 2-D float array stored without pickle, as wide as the model's input; the output is float32,
written atomically (:mod:`dmf_ray.files`) only after a successful translation (README.md, "Inference").
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from dmf_ray.cli import ArgumentParser, run_cli
from dmf_ray.data.npy import open_npy
from dmf_ray.errors import ConfigError, DataError
from dmf_ray.files import atomic_write
from dmf_ray.serving.inference import check_float_matrix


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m dmf_ray.infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="models:/NAME@champion, models:/NAME/VERSION, runs:/..., or a local path")
    p.add_argument("--input", required=True, help=".npy file with a (N, dim) float array")
    p.add_argument("--output", required=True, help=".npy file to write the (N, dim) float32 result to")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI (sqlite:///..., http://..., or a .db file); "
                   "default: MLFLOW_TRACKING_URI")
    p.add_argument("--batch-size", type=int, default=8192, help="rows per forward pass (default 8192)")
    return p


def read_input(path: Path) -> np.ndarray:
    """Load and validate a (N, d) float .npy array as float32; DataError naming the file otherwise."""
    array = open_npy(path)
    try:
        x = check_float_matrix(array)
    except ValueError as exc:
        raise DataError(path, str(exc)) from None
    if x.shape[0] == 0:
        raise DataError(path, "has no rows")
    return x


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as fh:  # a file handle, so np.save does not append ".npy" to the name
        np.save(fh, array, allow_pickle=False)


def _resolve_tracking_uri(value: str | None) -> str:
    from dmf_ray.platform.tracking import check_tracking_server, sqlite_path, tracking_uri_for

    if value is None:
        value = os.environ.get("MLFLOW_TRACKING_URI") or None
        if value is None:
            raise ConfigError(
                "tracking_uri", "needed to resolve a models:/ or runs:/ URI; pass --tracking-uri or set MLFLOW_TRACKING_URI"
            )
    uri = tracking_uri_for(value, Path.cwd())
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        # Reading must not create an empty store (and MLflow's schema messages) somewhere.
        raise ConfigError("tracking_uri", f"no MLflow database at {db}")
    check_tracking_server(uri)
    return uri


def run(argv: Sequence[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {args.batch_size}")
    in_path, out_path = Path(args.input), Path(args.output)
    if out_path.is_dir():
        raise DataError(out_path, "output is a folder; give a file name such as out.npy")
    x = read_input(in_path)
    is_uri = "://" in args.model or args.model.startswith(("models:", "runs:"))
    tracking_uri = _resolve_tracking_uri(args.tracking_uri) if is_uri else None

    from dmf_ray.serving.inference import load_model

    t0 = time.perf_counter()
    translator = load_model(args.model, tracking_uri=tracking_uri)
    if x.shape[1] != translator.dim:
        raise DataError(in_path, f"has {x.shape[1]} columns but the model {args.model} expects dim {translator.dim}")
    try:
        y = translator.translate(x, batch_size=args.batch_size)
    except ValueError as exc:  # e.g. float64 values beyond float32's range become inf
        raise DataError(in_path, str(exc)) from None
    try:
        atomic_write(out_path, lambda tmp: _save_npy(tmp, y))
    except OSError as exc:
        raise DataError(out_path, f"cannot write ({exc.strerror or exc})") from None
    dt = time.perf_counter() - t0
    return (
        f"translated {y.shape[0]} rows ({x.shape[1]} -> {y.shape[1]} dims, {x.dtype} -> float32) "
        f"with {args.model} into {out_path} in {dt:.2f} s"
    )


def _quiet_mlflow() -> None:
    """Keep MLflow's INFO logs, progress bars and warnings off stderr (errors stay one line)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_mlflow()

    def command() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            print(run(argv))

    return run_cli(command)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m dmf_ray.tune --space FILE``: sweep DMF settings with Optuna on Ray Tune, tracked in MLflow.

Thin CLI over :mod:`dmf_ray.platform.sweep`: validate the space and every flag before Ray starts, run
the sweep (Tune prints its trial table), then print the top trials (also written as CSV and
markdown), the champion's model URI and the commands to browse MLflow and run inference.
With only ``--space`` it runs on the embedded toy task with a local Ray and a sqlite MLflow
store under ``runs/sweeps``. Bad input exits 2 with one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

from pydantic import ValidationError

from dmf_ray.trainer.config import load_train_config
from dmf_ray.data import load_dataset
from dmf_ray.cli import ArgumentParser, run_cli
from dmf_ray.errors import ConfigError, DataError, SweepStopped, UserInputError
from dmf_ray.platform.registry import default_model_name
from dmf_ray.platform.search_space import SearchSpec, load_search_space
from dmf_ray.platform.tracking import check_tracking_server, tracking_uri_for
from dmf_ray.schema import config_error

if TYPE_CHECKING:  # Ray is slow to import: the sweep module loads only once the input is valid
    from dmf_ray.platform.plan import SweepPlan
    from dmf_ray.platform.sweep import SweepOutcome

DEFAULT_STORAGE = "runs/sweeps"
DEFAULT_EXPERIMENT = "dmf-sweeps"
TOP_SHOWN = 5
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m dmf_ray.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--space", required=True, help="search-space YAML (see search_spaces/)")
    p.add_argument("--data", help="toy | gaussian-ot | ffhq-alae (default: the space's, else toy)")
    p.add_argument("--data-dir", help="ffhq-alae folder with latents.npy, age.npy, gender.npy")
    p.add_argument("--direction", help="adult2child | child2adult | man2woman | woman2man")
    p.add_argument("--dim", type=int, help="gaussian-ot dimension")
    p.add_argument("--num-samples", type=int, help="number of trials")
    p.add_argument("--workers", type=int, help="Ray Train workers per trial")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (fractions pack trials)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (fractions pack trials)")
    p.add_argument("--max-concurrent", type=int, help="trials running at once")
    p.add_argument("--storage-path", default=DEFAULT_STORAGE, help="sweep results and checkpoints (local dir or s3://, gs://)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite store in the storage path)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    p.add_argument("--model-name", help="registered model name (default from data and direction, e.g. dmf-ffhq-adult2child)")
    p.add_argument("--name", help="sweep name (default: <space>-<data>-<time>); with --resume, the sweep to resume")
    p.add_argument("--seed", type=int, help="sampler seed and training seed")
    p.add_argument("--resume", action="store_true", help="resume an interrupted sweep (the latest of this space unless --name)")
    p.add_argument("--address", help="Ray cluster address (default: start a local Ray; 'auto' joins a running cluster)")
    p.add_argument("--warm-start", metavar="SWEEP",
                   help="seed Optuna with a finished sweep's trials: its folder, or its name under --storage-path")
    p.add_argument("--no-progress-timeout", type=float, metavar="S",
                   help="stop the sweep once no trial reported a result for S seconds (default 1800)")
    p.add_argument("--shared-storage", action="store_true",
                   help="the local --storage-path is a shared mount (NFS) every node sees; allows it on multi-node clusters")
    return p


def _with_flags(section: T, **flags: Any) -> T:
    """``section`` with the given flags set, re-validated by pydantic; errors name the flag."""
    try:
        return replace(section, **{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        err = config_error(exc, type(section))
        raise ConfigError(err.field.replace("_", "-"), err.problem) from None


def spec_with_flags(spec: SearchSpec, args: argparse.Namespace) -> SearchSpec:
    """Apply the resource / sampling flags to the loaded space."""
    resources = _with_flags(spec.resources, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                            gpus_per_worker=args.gpus_per_worker)
    return _with_flags(spec, resources=resources, sampler=_with_flags(spec.sampler, seed=args.seed),
                       num_samples=args.num_samples, max_concurrent=args.max_concurrent)


def base_overrides(spec: SearchSpec, args: argparse.Namespace) -> dict[str, Any]:
    """The space's fixed keys with the data / seed flags on top."""
    base = dict(spec.fixed)
    for flag, key in (("data", "data.name"), ("data_dir", "data.data_dir"), ("direction", "data.direction"),
                      ("dim", "data.dim"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            base[key] = getattr(args, flag)
    return base


def _sweep_name(args: argparse.Namespace, stem: str, label: str, storage: str) -> str:
    prefix = f"{stem}-{label.replace('/', '-')}"
    if args.name:
        return args.name
    if not args.resume:
        return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "://" in storage:
        raise ConfigError("name", "--resume on remote storage needs --name")
    found = sorted(p.name for p in Path(storage).glob(f"{prefix}-*") if p.is_dir())
    if not found:
        raise UserInputError(f"{storage}: no sweep named {prefix}-* to resume")
    return found[-1]


def make_plan(args: argparse.Namespace) -> SweepPlan:
    """Validate everything and resolve defaults; nothing is started or written."""
    from dmf_ray.platform.plan import SweepPlan

    space_path = Path(args.space)
    spec = spec_with_flags(load_search_space(space_path), args)
    base = base_overrides(spec, args)
    cfg = load_train_config(None, base)
    load_dataset(cfg.data)  # data files are validated here, not inside a trial on a worker
    remote = "://" in args.storage_path
    if not remote and Path(args.storage_path).exists() and not Path(args.storage_path).is_dir():
        raise DataError(args.storage_path, "--storage-path must be a folder, this is a file")
    storage = args.storage_path if remote else str(Path(args.storage_path).resolve())
    if remote and not args.tracking_uri:
        raise ConfigError("tracking-uri", "required when --storage-path is remote (an MLflow server the driver can reach, e.g. on the head node)")
    name = _sweep_name(args, space_path.stem, cfg.data.label, storage)
    if args.resume and not remote and not (Path(storage) / name).is_dir():
        raise UserInputError(f"{Path(storage) / name}: no sweep to resume")
    warm_start = _warm_start_folder(args, spec, storage)
    no_progress = {} if args.no_progress_timeout is None else {"no_progress_s": _positive("no-progress-timeout", args.no_progress_timeout)}
    return SweepPlan(
        spec=spec, base=base, base_config=cfg, name=name, storage_path=storage, warm_start=warm_start, **no_progress,
        checkpoint_every=spec.checkpoint_every,
        tracking_uri=tracking_uri_for(args.tracking_uri, Path(storage) if not remote else Path.cwd()),
        experiment=args.experiment, address=args.address, shared_storage=args.shared_storage,
        model_name=args.model_name or default_model_name(cfg.data.name, cfg.data.direction if cfg.data.name == "ffhq-alae" else None),
    )


def _warm_start_folder(args: argparse.Namespace, spec: SearchSpec, storage: str) -> str | None:
    """The sweep folder ``--warm-start`` names (a path, or a sweep name under the storage path),
    checked before Ray starts."""
    from dmf_ray.platform.search_space import PopulationBased
    from dmf_ray.platform.study import STUDY_FILE

    if args.warm_start is None:
        return None
    if args.resume:
        raise ConfigError("warm-start", "--resume continues a sweep; --warm-start starts a new one from another's trials")
    if isinstance(spec.scheduler, PopulationBased):
        raise ConfigError("warm-start", "a PBT / PB2 sweep draws its population from Tune, not Optuna")
    folder = Path(args.warm_start)
    if not (folder / STUDY_FILE).is_file() and "://" not in storage:
        folder = Path(storage) / args.warm_start
    if not (folder / STUDY_FILE).is_file():
        raise UserInputError(f"{args.warm_start}: no finished sweep there (no {STUDY_FILE} in it or under {storage})")
    return str(folder.resolve())


def _positive(flag: str, value: float) -> float:
    if not value > 0:
        raise ConfigError(flag, f"must be > 0 seconds, got {value}")
    return value


def run(argv: Sequence[str] | None = None) -> SweepOutcome:
    """Parse ``argv``, validate, run the sweep, print the outcome and return it."""
    from dmf_ray.platform.sweep import run_sweep

    args = build_parser().parse_args(argv)
    plan = make_plan(args)
    check_tracking_server(plan.tracking_uri)  # the last check: Ray starts only after it
    outcome = run_sweep(plan, resume=args.resume)
    print_outcome(outcome)
    if outcome.stopped:
        raise SweepStopped(outcome.stopped)
    return outcome


def print_outcome(outcome: SweepOutcome) -> None:
    from dmf_ray.platform.sweep import markdown

    plan = outcome.plan
    print(f"\nTop trials by {plan.spec.metric} ({plan.spec.mode}) of sweep {plan.name}:\n{markdown(outcome.table.head(TOP_SHOWN))}")
    print(f"All trials: {outcome.csv_path}  {outcome.md_path}")
    if outcome.closed_runs:
        print(f"Closed {outcome.closed_runs} MLflow trial run(s) that a crashed driver had left open.")
    if outcome.best_params_path is not None:
        print(f"Best trial's searched keys: {outcome.best_params_path} "
              "(python -m dmf_ray.experiments.compare --methods dmf dmf-searched --searched <it>)")
    for name, path in (outcome.extras or {}).items():
        print(f"{name.replace('_', ' ')}: {path}")
    if outcome.registered is None:
        print("No trial finished all its steps: nothing registered.")
    else:
        model_uri, result = outcome.registered
        print(f"Best model: {model_uri} -> registered as {plan.model_name} version {result.version}")
        verdict = "is the new champion" if result.became_champion else "did not beat the current champion"
        print(f"It {verdict}: models:/{plan.model_name}@champion")
    print("\nBrowse the sweep:")
    print(f"  mlflow ui --backend-store-uri {plan.tracking_uri} --host 127.0.0.1 --port 5000")
    print("Translate with the champion:")
    print(f"  python -m dmf_ray.infer --model models:/{plan.model_name}@champion --tracking-uri {plan.tracking_uri} "
          "--input x.npy --output y.npy")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: run(argv) and None)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m dmf_ray.train``: train one DMF generator from a YAML config and/or flags.

Thin CLI over :func:`dmf_ray.trainer.run_writer.train_in_folder`: parse, validate everything
(config and data) before any file is written, train with a progress bar into the output folder
(its layout: :mod:`dmf_ray.trainer.run_writer`), print the final metrics. Bad input exits 2 with
one line; a diverged run exits 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from dmf_ray.cli import ArgumentParser, check_output_folder, run_cli
from dmf_ray.data import load_dataset
from dmf_ray.errors import DataError, UserInputError
from dmf_ray.trainer.checkpoint import checkpoint_config, latest_checkpoint, restore_state
from dmf_ray.trainer.config import load_train_config
from dmf_ray.trainer.engine import build_state
from dmf_ray.trainer.run_writer import train_in_folder

# flag -> (dotted config key, help); values are parsed as YAML scalars/lists ("[0.05, 0.2]", "true").
FLAG_KEYS: dict[str, tuple[str, str]] = {
    "data": ("data.name", "toy | gaussian-ot | ffhq-alae"),
    "data_dir": ("data.data_dir", "folder with latents.npy, age.npy, gender.npy (ffhq-alae)"),
    "direction": ("data.direction", "adult2child | child2adult | man2woman | woman2man"),
    "dim": ("data.dim", "dimension of gaussian-ot"),
    "preset": ("drift.preset", "drift preset: reference | toy | paper"),
    "kernel": ("drift.kernel", "laplace | gaussian"),
    "temperatures": ("drift.temperatures", "one bandwidth or a list, e.g. '[0.02, 0.05, 0.2]'"),
    "normalization": ("drift.normalization", "row | bidirectional | sharp"),
    "schedule": ("friction.schedule", "friction schedule: none | linear | cosine | power | sigmoid | step | warmup_linear"),
    "order": ("friction.order", "friction order: first | second | hybrid"),
    "optimizer": ("optim.name", "adam | adamw | sgd"),
    "lr": ("optim.lr", "learning rate"),
    "steps": ("steps", "training steps"),
    "batch_size": ("batch_size", "generated samples per step"),
    "eval_every": ("eval_every", "steps between evaluations (and checkpoints)"),
    "seed": ("seed", "random seed"),
    "device": ("device", "cpu | cuda | cuda:N"),
    "out": ("out_dir", "output folder (default runs/train)"),
}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m dmf_ray.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML file with sections data/model/drift/friction/optim and loop keys")
    for flag, (_, help_text) in FLAG_KEYS.items():
        p.add_argument(f"--{flag.replace('_', '-')}", help=help_text)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. optim.grad_clip=2.0")
    p.add_argument("--resume", help="checkpoint file, or a run folder to resume from its latest checkpoint")
    p.add_argument("--force", action="store_true", help="reuse a non-empty output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted-key overrides from the named flags and ``--set KEY=VALUE``."""
    out: dict[str, Any] = {}
    for flag, (key, _) in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            out[key] = _parse_value(value, key)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"--set: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value, key)
    return out


def _parse_value(text: str, key: str) -> Any:
    if key in ("data.data_dir", "out_dir", "device"):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserInputError(f"{key}: cannot parse value {text!r}") from None


def _resume_target(path: str) -> tuple[Path, Path]:
    """(checkpoint file, run folder) for ``--resume PATH``."""
    p = Path(path)
    if p.is_dir():
        ckpt = latest_checkpoint(p / "checkpoints") or latest_checkpoint(p)
        if ckpt is None:
            raise DataError(p, "no checkpoints found to resume from")
        p = ckpt
    run_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return p, run_dir


def run(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Parse ``argv``, train, write outputs, return the final metrics."""
    args = build_parser().parse_args(argv)
    overrides = overrides_from_args(args)
    if args.resume:
        if overrides or args.config:
            raise UserInputError("--resume: the configuration comes from the checkpoint; drop the other config flags")
        ckpt, out_dir = _resume_target(args.resume)
        cfg = checkpoint_config(ckpt)
    else:
        cfg = load_train_config(args.config, overrides)
        out_dir = Path(cfg.out_dir)
        check_output_folder(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()) and not args.force:
            raise UserInputError(f"{out_dir}: output folder is not empty (use --force or --resume)")
    data = load_dataset(cfg.data)  # validates data files before anything is written
    state = build_state(cfg, data)
    if args.resume:
        restore_state(state, ckpt)
    elif args.force and out_dir.exists():
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return train_in_folder(out_dir, cfg, data, state, progress=not args.no_progress)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: print(json.dumps({k: round(v, 6) for k, v in run(argv).items()}, indent=1)))


if __name__ == "__main__":
    sys.exit(main())

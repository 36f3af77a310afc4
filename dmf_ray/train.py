"""``python -m dmf_ray.train``: train one DMF generator from a YAML config and/or flags.

Thin CLI over :mod:`dmf_ray.trainer.engine`: parse, validate everything (config and data) before any
file is written, run the loop with a progress bar, and let :class:`RunWriter` put checkpoints,
metrics and plots in the output folder. Bad input exits 2 with one line; a diverged run exits 1.

Output folder::

    config.yaml                 the resolved configuration
    checkpoints/step_*.safetensors   full training state at every evaluation (resumable)
    history.json                metrics at every evaluation
    generator.safetensors       final weights + generator config
    metrics.json                final metrics
    plots/samples.png  plots/friction.png  plots/metrics.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from dmf_ray.trainer.checkpoint import checkpoint_config, checkpoint_name, latest_checkpoint, restore_state, save_checkpoint
from dmf_ray.trainer.config import TrainConfig, load_train_config
from dmf_ray.data import TranslationData, load_dataset
from dmf_ray.trainer.engine import TrainState, build_state, generator_config, translate
from dmf_ray.trainer.run import run_training
from dmf_ray.cli import ArgumentParser, check_output_folder, run_cli
from dmf_ray.errors import DataError, UserInputError

from dmf_ray.core.models import save_generator
from dmf_ray.trainer.plots import plot_curves, plot_samples, plot_schedule

# flag -> dotted config key; values are parsed as YAML scalars/lists ("[0.05, 0.2]", "true").
FLAG_KEYS: dict[str, str] = {
    "data": "data.name",
    "data_dir": "data.data_dir",
    "direction": "data.direction",
    "dim": "data.dim",
    "preset": "drift.preset",
    "kernel": "drift.kernel",
    "temperatures": "drift.temperatures",
    "normalization": "drift.normalization",
    "schedule": "friction.schedule",
    "order": "friction.order",
    "optimizer": "optim.name",
    "lr": "optim.lr",
    "steps": "steps",
    "batch_size": "batch_size",
    "eval_every": "eval_every",
    "seed": "seed",
    "device": "device",
    "out": "out_dir",
}
CURVE_KEYS = ("fd", "kid", "l2_uvp", "transport_cost", "loss", "gamma")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m dmf_ray.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML file with sections data/model/drift/friction/optim and loop keys")
    p.add_argument("--data", help="toy | gaussian-ot | ffhq-alae")
    p.add_argument("--data-dir", help="folder with latents.npy, age.npy, gender.npy (ffhq-alae)")
    p.add_argument("--direction", help="adult2child | child2adult | man2woman | woman2man")
    p.add_argument("--dim", help="dimension of gaussian-ot")
    p.add_argument("--preset", help="drift preset: reference | toy | paper")
    p.add_argument("--kernel", help="laplace | gaussian")
    p.add_argument("--temperatures", help="one bandwidth or a list, e.g. '[0.02, 0.05, 0.2]'")
    p.add_argument("--normalization", help="row | bidirectional | sharp")
    p.add_argument("--schedule", help="friction schedule: none | linear | cosine | power | sigmoid | step | warmup_linear")
    p.add_argument("--order", help="friction order: first | second | hybrid")
    p.add_argument("--optimizer", help="adam | adamw | sgd")
    p.add_argument("--lr", help="learning rate")
    p.add_argument("--steps", help="training steps")
    p.add_argument("--batch-size", help="generated samples per step")
    p.add_argument("--eval-every", help="steps between evaluations (and checkpoints)")
    p.add_argument("--seed", help="random seed")
    p.add_argument("--device", help="cpu | cuda | cuda:N")
    p.add_argument("--out", help="output folder (default runs/train)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. optim.grad_clip=2.0")
    p.add_argument("--resume", help="checkpoint file, or a run folder to resume from its latest checkpoint")
    p.add_argument("--force", action="store_true", help="reuse a non-empty output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted-key overrides from the named flags and ``--set KEY=VALUE``."""
    out: dict[str, Any] = {}
    for flag, key in FLAG_KEYS.items():
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


class RunWriter:
    """Writes a run's files; called at every evaluation and once at the end."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, data: TranslationData) -> None:
        self.out = out_dir
        self.cfg = cfg
        self.data = data

    def start(self) -> None:
        (self.out / "plots").mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        plot_schedule(self.cfg.friction, self.cfg.steps, self.out / "plots" / "friction.png")

    def on_eval(self, state: TrainState, record: dict[str, float]) -> None:
        save_checkpoint(self.out / "checkpoints" / checkpoint_name(state.step), state, self.cfg)
        (self.out / "history.json").write_text(json.dumps(state.history, indent=1))
        plot_curves(state.history, CURVE_KEYS, self.out / "plots" / "metrics.png", title=self.cfg.data.name)

    def finish(self, state: TrainState) -> dict[str, float]:
        save_generator(state.model, generator_config(self.cfg, self.data.dim), self.out / "generator.safetensors")
        final = dict(state.history[-1])
        (self.out / "metrics.json").write_text(json.dumps(final, indent=1))
        n = min(4000, self.data.test_source.shape[0])
        mapped = translate(state.model, self.data.test_source[:n], self.cfg.device)
        plot_samples(
            mapped, self.data.test_target[:n], self.out / "plots" / "samples.png",
            source=self.data.test_source[:n] if self.data.name != "toy" else None,
            title=f"{self.data.name}: step {state.step}, FD {final['fd']:.4g}",
        )
        return final


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
    writer = RunWriter(out_dir, cfg, data)
    writer.start()
    state = run_training(cfg, data, state, on_eval=writer.on_eval, progress=not args.no_progress)
    return writer.finish(state)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: print(json.dumps({k: round(v, 6) for k, v in run(argv).items()}, indent=1)))


if __name__ == "__main__":
    sys.exit(main())

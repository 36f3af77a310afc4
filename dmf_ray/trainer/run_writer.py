"""A training run's output folder: checkpoints, metrics and plots written while it trains.

Apart from the CLI so that any caller that trains into a folder gets the same files from
:func:`train_in_folder` (the layout is in README.md, "Training one model").
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dmf_ray.core.models import save_generator
from dmf_ray.data import TranslationData
from dmf_ray.trainer.checkpoint import checkpoint_name, save_checkpoint
from dmf_ray.trainer.config import TrainConfig
from dmf_ray.trainer.engine import TrainState, generator_config, serving_model, translate
from dmf_ray.trainer.plots import plot_curves, plot_samples, plot_schedule
from dmf_ray.trainer.run import run_training

CURVE_KEYS = ("val_fd", "val_kid", "val_energy", "val_l2_uvp", "val_transport_cost", "loss", "gamma")


class RunWriter:
    """Writes a run's files: once at the start, at every evaluation, once at the end."""

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
        save_generator(serving_model(state), generator_config(self.cfg, self.data.dim), self.out / "generator.safetensors")
        final = dict(state.history[-1])
        (self.out / "metrics.json").write_text(json.dumps(final, indent=1))
        source, target = (pool[:4000] for pool in self.data.held_out("test"))
        mapped = translate(serving_model(state), source, self.cfg.device)
        plot_samples(
            mapped, target, self.out / "plots" / "samples.png",
            source=source if self.data.name != "toy" else None,
            title=f"{self.data.name}: step {state.step}, test FD {final.get('test_fd', float('nan')):.4g}",
        )
        return final


def train_in_folder(out_dir: Path, cfg: TrainConfig, data: TranslationData, state: TrainState, *,
                    progress: bool = False) -> dict[str, float]:
    """Train ``state`` (fresh or restored) to ``cfg.steps``, writing ``out_dir``; the final metrics."""
    writer = RunWriter(out_dir, cfg, data)
    writer.start()
    return writer.finish(run_training(cfg, data, state, on_eval=writer.on_eval, progress=progress))

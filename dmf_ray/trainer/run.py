"""A training run wired to its real collaborators: the image scorer and the progress bar.

Why apart from :mod:`dmf_ray.trainer.engine`: the loop stays a pure function of config, data
and callbacks (no CLIP, Inception or tqdm import, easy to test), while every caller that trains
for real -- the trainer CLI, Ray Train workers, experiments -- builds the same scorer and bar here.
"""

from __future__ import annotations

from typing import Mapping

from torch import Tensor

from tqdm.auto import tqdm

from dmf_ray.data.base import Split, TranslationData
from dmf_ray.eval.image_metrics import build_image_scorer
from dmf_ray.trainer.config import TrainConfig
from dmf_ray.trainer.engine import EvalCallback, Gather, ImageScorer, TrainState, train


class TqdmProgress:
    """:class:`~dmf_ray.trainer.engine.ProgressReporter` as a tqdm bar of training steps."""

    def __init__(self, total: int, initial: int) -> None:
        self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)

    def advance(self, step: int) -> None:
        self.bar.update(step - self.bar.n)

    def evaluated(self, shown: Mapping[str, str]) -> None:
        self.bar.set_postfix(shown)

    def close(self) -> None:
        self.bar.close()


def run_training(
    cfg: TrainConfig,
    data: TranslationData,
    state: TrainState | None = None,
    *,
    on_eval: EvalCallback | None = None,
    gather: Gather | None = None,
    progress: bool = False,
    score: bool = True,
) -> TrainState:
    """:func:`~dmf_ray.trainer.engine.train` with the run's image scorer and an optional bar.

    The scorer (``cfg.eval``: decoder, CLIP and/or Inception weights) loads its weights and embeds
    the validation and the test target once each, before any step, so missing weights fail
    first; ranks that do not score (``score=False``) skip it.
    """
    scorer = split_image_scorer(cfg, data) if score else None
    bar = TqdmProgress(cfg.steps, state.step if state is not None else 0) if progress else None
    try:
        return train(cfg, data, state, on_eval=on_eval, gather=gather, image_scorer=scorer, progress=bar, score=score)
    finally:
        if bar is not None:
            bar.close()


def split_image_scorer(cfg: TrainConfig, data: TranslationData) -> ImageScorer | None:
    """Image scores against the split being evaluated (validation during training, test at the
    end), or None when ``cfg.eval`` names no decoder."""
    val, test = (build_image_scorer(cfg.eval, data.held_out(split)[1], cfg.device) for split in ("val", "test"))
    if val is None or test is None:
        return None

    def score(mapped: Tensor, split: Split) -> dict[str, float]:
        return (val if split == "val" else test)(mapped)

    return score

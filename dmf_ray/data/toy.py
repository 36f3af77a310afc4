"""The 2-D task of the DMF paper's Table 1: N(0, I) -> 0.5 N((0,0), I) + 0.5 N((3,2), I).

Why keep it: it is small enough to train in seconds and its target moments are known exactly,
so a run can be checked against `TARGET_MEAN` / `TARGET_COV` without any reference samples.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmf_ray.eval.metrics import UnitGaussianMixture
from dmf_ray.data.base import TEST_STREAM, TRAIN_STREAM, VAL_STREAM, DataConfig, TranslationData, stream_generator

DIM = 2
COMPONENT_MEANS = torch.tensor([[0.0, 0.0], [3.0, 2.0]])
# Equal-weight mixture of unit-covariance Gaussians with means 0 and mu = (3, 2):
# mean = mu / 2, covariance = I + mu mu^T / 4.
TARGET_MEAN = torch.tensor([1.5, 1.0])
TARGET_COV = torch.tensor([[3.25, 1.5], [1.5, 2.0]])


def sample_source(n: int, generator: torch.Generator) -> Tensor:
    """n samples of N(0, I_2): float32 (n, 2)."""
    return torch.randn(n, DIM, generator=generator)


def sample_target(n: int, generator: torch.Generator) -> Tensor:
    """n samples of the two-component mixture: float32 (n, 2)."""
    component = torch.randint(len(COMPONENT_MEANS), (n,), generator=generator)
    return COMPONENT_MEANS[component] + torch.randn(n, DIM, generator=generator)


def build_toy(cfg: DataConfig) -> TranslationData:
    """Pools of `cfg.n_train`, `cfg.n_val` and `cfg.n_test` rows, from independent streams."""
    train, test = stream_generator(cfg.seed, TRAIN_STREAM), stream_generator(cfg.seed, TEST_STREAM)
    val, n_val = stream_generator(cfg.seed, VAL_STREAM), cfg.n_val or cfg.n_test
    return TranslationData(
        name="toy",
        dim=DIM,
        train_source=sample_source(cfg.n_train, train),
        train_target=sample_target(cfg.n_train, train),
        val_source=sample_source(n_val, val),
        val_target=sample_target(n_val, val),
        test_source=sample_source(cfg.n_test, test),
        test_target=sample_target(cfg.n_test, test),
        target_density=TARGET_MIXTURE,
    )


# The target's density in closed form, for the scores that need one (mode weights, NLL).
COMPONENT_WEIGHTS = torch.tensor([0.5, 0.5])
TARGET_MIXTURE = UnitGaussianMixture(means=COMPONENT_MEANS.double().numpy(), weights=COMPONENT_WEIGHTS.double().numpy())

"""The one interface every dataset offers and its typed config (the registry is in __init__).

The trainer, the metrics and the sweeps only need source and target pools, held-out pools of
both, and the true map where it is known; nothing downstream knows which dataset it got.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Callable, Literal, get_args

import numpy as np
import pydantic.dataclasses
import torch
from pydantic import Field, model_validator
from torch import Tensor

from dmf_ray.errors import ConfigError
from dmf_ray.schema import SECTION, Int, PositiveInt, Str

DatasetName = Literal["toy", "gaussian-ot", "ffhq-alae"]
Direction = Literal["adult2child", "child2adult", "man2woman", "woman2man"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
DIRECTIONS: tuple[str, ...] = get_args(Direction)
MAX_GAUSSIAN_DIM = 512

# Independent random streams derived from one seed (see `stream_generator`).
TRAIN_STREAM = 0
TEST_STREAM = 1


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one named stream of `seed`.

    Not `seed + offset`: `SeedSequence` hashes the pair (seed, stream), so stream 1 of seed 0
    never equals stream 0 of another seed, and train, test and problem draws stay independent.
    """
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _draw(pool: Tensor, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`n` rows of `pool` (N, dim), uniformly with replacement: (CPU indices int64 (n,), rows (n, dim)).

    The indices are drawn by the CPU `generator`, so a run samples the same batches on every
    device and its RNG state checkpoints as plain bytes; for a pool on an accelerator they
    travel through pinned memory without blocking -- no host-device sync per batch.
    """
    indices = torch.randint(pool.shape[0], (n,), generator=generator)
    if pool.device.type == "cpu":
        return indices, pool[indices]
    on_device = indices.pin_memory().to(pool.device, non_blocking=True)
    return indices, pool[on_device]


@dataclass(frozen=True, eq=False)
class TranslationData:
    """A source -> target translation task: train/test pools of both sides, float32 (N, dim).

    `ot_map` is the ground-truth transport map (batched: (n, dim) -> (n, dim)) where it is known,
    else None. `eq=False`: tensors have no single truth value, so identity is the only equality.
    """

    name: str
    dim: int
    train_source: Tensor
    train_target: Tensor
    test_source: Tensor
    test_target: Tensor
    ot_map: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        # The builders construct this, so a violation is a programming error, not user input.
        for field in ("train_source", "train_target", "test_source", "test_target"):
            pool: Tensor = getattr(self, field)
            if pool.dtype != torch.float32 or pool.ndim != 2 or pool.shape[1] != self.dim:
                raise ValueError(
                    f"{field}: expected float32 (N, {self.dim}), got {pool.dtype} {tuple(pool.shape)}"
                )
            if pool.shape[0] == 0:
                raise ValueError(f"{field}: pool is empty")

    def source_batch(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(indices int64 (n,), samples (n, dim)) drawn with replacement from `train_source`; the
        indices let a second-order friction update keep one velocity per sample."""
        return _draw(self.train_source, n, generator)

    def target_batch(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(indices int64 (n,), samples (n, dim)) drawn with replacement from `train_target`."""
        return _draw(self.train_target, n, generator)

    def with_train_pools_on(self, device: torch.device | str) -> TranslationData:
        """This task with its training pools on ``device``, so a step gathers its batch there
        instead of copying it every step (held-out pools stay on the host)."""
        device = torch.device(device)
        if self.train_source.device == device and self.train_target.device == device:
            return self
        return replace(self, train_source=self.train_source.to(device), train_target=self.train_target.to(device))


@pydantic.dataclasses.dataclass(frozen=True, config=SECTION)
class DataConfig:
    """Which dataset to build; its declaration is its validation, so builders trust every field.

    `n_train`/`n_test` size the sampled pools of `toy` and `gaussian-ot`; `dim` is the dimension
    of `gaussian-ot`; `data_dir` and `direction` choose the folder and task of `ffhq-alae`.
    """

    name: DatasetName = "toy"
    seed: Annotated[Int, Field(ge=0)] = 0
    n_train: PositiveInt = 100_000
    n_test: PositiveInt = 50_000
    dim: Annotated[Int, Field(ge=1, le=MAX_GAUSSIAN_DIM)] = 64
    data_dir: Annotated[Str, Field(min_length=1)] | None = None
    direction: Direction = "adult2child"

    @model_validator(mode="after")
    def _folder_for_ffhq(self) -> DataConfig:
        if self.name == "ffhq-alae" and self.data_dir is None:
            raise ConfigError("data_dir", "required when name is 'ffhq-alae'")
        return self

"""The one interface every dataset offers and its typed config (the registry is in __init__).

The trainer, the metrics and the sweeps only need source and target pools in three splits --
train (what the steps draw from), validation (what every evaluation, and so every choice a
sweep makes, sees) and test (scored once, at the end, and only reported) -- and the true map
where it is known; nothing downstream knows which dataset it got.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Annotated, Callable, Literal, get_args

import numpy as np
import pydantic.dataclasses
import torch
from pydantic import Field, model_validator
from torch import Tensor

from dmf_ray.errors import ConfigError
from dmf_ray.eval.metrics import UnitGaussianMixture
from dmf_ray.schema import SECTION, Int, PositiveInt, Str

DatasetName = Literal["toy", "gaussian-ot", "ffhq-alae"]
Direction = Literal["adult2child", "child2adult", "man2woman", "woman2man"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
DIRECTIONS: tuple[str, ...] = get_args(Direction)
MAX_GAUSSIAN_DIM = 512

# Independent random streams derived from one seed (see `stream_generator`); gaussian-ot's
# problem draw uses stream 2.
TRAIN_STREAM = 0
TEST_STREAM = 1
VAL_STREAM = 3
SOURCE_ORDER_STREAM = 10  # the per-epoch permutations of the source pool ...
TARGET_ORDER_STREAM = 11  # ... and of the target pool (see `BatchSampler`)

Split = Literal["val", "test"]  # the held-out splits an evaluation can score


def stream_generator(seed: int, stream: int, *more: int) -> torch.Generator:
    """A CPU generator for one named stream of `seed` (optionally refined, e.g. by an epoch).

    Not `seed + offset`: `SeedSequence` hashes the tuple (seed, stream, ...), so stream 1 of
    seed 0 never equals stream 0 of another seed, and train, validation, test and problem
    draws stay independent.
    """
    state = np.random.SeedSequence([seed, stream, *more]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@lru_cache(maxsize=8)
def _epoch_order(pool_size: int, copies: int, seed: int, stream: int, epoch: int) -> Tensor:
    """`copies` independent permutations of range(pool_size), concatenated: one epoch's order."""
    generator = stream_generator(seed, stream, epoch)
    return torch.cat([torch.randperm(pool_size, generator=generator) for _ in range(copies)])


@dataclass(frozen=True)
class BatchSampler:
    """Which pool rows every step's batch holds: drawn without replacement, disjoint across ranks.

    Each epoch is a fresh permutation of the pool (seeded by ``seed`` and the epoch), cut into
    global batches of ``n * world`` rows; rank ``r`` takes the ``r``-th slice of ``n`` rows, so
    no row appears twice in a batch (drawing with replacement put ~8% twins in an FFHQ batch of
    4096, which pull on each other's drift) and the ranks' shards are disjoint. A tail shorter
    than a global batch is dropped, as ``DataLoader(drop_last=True)`` does. The batch is a
    function of the step alone, so a resumed run draws the same batches with nothing to
    checkpoint. A global batch larger than the pool concatenates ``ceil(n * world / N)``
    permutations per epoch: every row then appears at most that many times.
    """

    seed: int
    rank: int = 0
    world: int = 1

    def indices(self, pool_size: int, n: int, step: int, stream: int) -> Tensor:
        """CPU int64 (n,): this rank's rows of global batch ``step`` of a pool of ``pool_size``."""
        global_batch = n * self.world
        copies = -(-global_batch // pool_size)
        per_epoch = copies * pool_size // global_batch
        epoch, position = divmod(step, per_epoch)
        start = position * global_batch + self.rank * n
        return _epoch_order(pool_size, copies, self.seed, stream, epoch)[start : start + n]

    def draw(self, pool: Tensor, n: int, step: int, stream: int) -> tuple[Tensor, Tensor]:
        """(CPU indices int64 (n,), rows (n, dim)) of ``pool`` for ``step``.

        The indices live on the host, so a run samples the same batches on every device; for a
        pool on an accelerator they travel through pinned memory without blocking -- no
        host-device sync per batch.
        """
        indices = self.indices(pool.shape[0], n, step, stream)
        if pool.device.type == "cpu":
            return indices, pool[indices]
        on_device = indices.pin_memory().to(pool.device, non_blocking=True)
        return indices, pool[on_device]


@dataclass(frozen=True, eq=False)
class TranslationData:
    """A source -> target translation task: train/val/test pools of both sides, float32 (N, dim).

    `ot_map` is the ground-truth transport map (batched: (n, dim) -> (n, dim)) where it is known,
    else None; `target_density` the target's density where it is known in closed form (the toy's
    mixture), which the mode-weight error and the NLL need. `eq=False`: tensors have no single truth value, so identity is the only equality.
    """

    name: str
    dim: int
    train_source: Tensor
    train_target: Tensor
    val_source: Tensor
    val_target: Tensor
    test_source: Tensor
    test_target: Tensor
    ot_map: Callable[[Tensor], Tensor] | None = None
    target_density: UnitGaussianMixture | None = None

    def __post_init__(self) -> None:
        # The builders construct this, so a violation is a programming error, not user input.
        for field in ("train_source", "train_target", "val_source", "val_target", "test_source", "test_target"):
            pool: Tensor = getattr(self, field)
            if pool.dtype != torch.float32 or pool.ndim != 2 or pool.shape[1] != self.dim:
                raise ValueError(
                    f"{field}: expected float32 (N, {self.dim}), got {pool.dtype} {tuple(pool.shape)}"
                )
            if pool.shape[0] == 0:
                raise ValueError(f"{field}: pool is empty")

    def source_batch(self, n: int, sampler: BatchSampler, step: int) -> tuple[Tensor, Tensor]:
        """(indices int64 (n,), samples (n, dim)) of `train_source` for ``step``, without
        replacement; the indices let a second-order friction update keep one velocity per row."""
        return sampler.draw(self.train_source, n, step, SOURCE_ORDER_STREAM)

    def target_batch(self, n: int, sampler: BatchSampler, step: int) -> tuple[Tensor, Tensor]:
        """(indices int64 (n,), samples (n, dim)) of `train_target` for ``step``, without replacement."""
        return sampler.draw(self.train_target, n, step, TARGET_ORDER_STREAM)

    def held_out(self, split: Split) -> tuple[Tensor, Tensor]:
        """(source, target) pools of the validation or the test split."""
        return (self.val_source, self.val_target) if split == "val" else (self.test_source, self.test_target)

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

    `n_train`/`n_val`/`n_test` size the sampled pools of `toy` and `gaussian-ot` (`n_val`
    defaults to `n_test`); on `ffhq-alae` the validation split is the last `n_val` rows of the
    train rows (default a twelfth: rows 55,000..59,999 of the real 70,000) and test stays fixed.
    `dim` is the dimension of `gaussian-ot`; `data_dir` and `direction` choose the folder and
    task of `ffhq-alae`.
    """

    name: DatasetName = "toy"
    seed: Annotated[Int, Field(ge=0)] = 0
    n_train: PositiveInt = 100_000
    n_val: PositiveInt | None = None
    n_test: PositiveInt = 50_000
    dim: Annotated[Int, Field(ge=1, le=MAX_GAUSSIAN_DIM)] = 64
    data_dir: Annotated[Str, Field(min_length=1)] | None = None
    direction: Direction = "adult2child"

    @property
    def label(self) -> str:
        """The dataset a champion is compared on (its version tag ``dataset``): ``toy``,
        ``gaussian-ot/d64``, ``ffhq-alae/adult2child``. Values on different datasets are not comparable."""
        if self.name == "ffhq-alae":
            return f"ffhq-alae/{self.direction}"
        if self.name == "gaussian-ot":
            return f"gaussian-ot/d{self.dim}"
        return self.name

    @model_validator(mode="after")
    def _folder_for_ffhq(self) -> DataConfig:
        if self.name == "ffhq-alae" and self.data_dir is None:
            raise ConfigError("data_dir", "required when name is 'ffhq-alae'")
        return self

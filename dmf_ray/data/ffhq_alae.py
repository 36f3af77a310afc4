"""FFHQ translation in the latent space of the StyleALAE encoder (the LightSB / OFM protocol).

A folder holds three row-aligned arrays:

- ``latents.npy``: (N, D) floating point, the W-space codes (70000 x 512 float32 for real FFHQ);
- ``age.npy``: (N,) or (N, 1) numeric, estimated age, -1 where unknown;
- ``gender.npy``: (N,) unicode, "male", "female" or "" where unknown.

Protocol: the first ``round(N * 6/7)`` rows are train and the rest test -- exactly rows 0..59999
and 60000..69999 for the real N = 70000; other N (e.g. synthetic folders) split in the same
proportion. The last ``n_val`` train rows (default a twelfth: rows 55000..59999) are held out
as validation, so sweeps choose on rows the reported test never sees. adult = age >= 18, child = age < 18, age == -1 dropped; man = "male",
woman = "female", "" dropped. Every file is checked before use and each problem raises a
one-line `DataError` that names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dmf_ray.data.base import DataConfig, Direction, TranslationData
from dmf_ray.data.npy import open_npy
from dmf_ray.errors import DataError

LATENTS_FILE = "latents.npy"
AGE_FILE = "age.npy"
GENDER_FILE = "gender.npy"
UNKNOWN_AGE = -1.0
ADULT_AGE = 18.0
GENDERS = ("male", "female", "")

Split = Literal["train", "val", "test"]
Group = Literal["adult", "child", "man", "woman"]
DIRECTION_GROUPS: dict[str, tuple[Group, Group]] = {
    "adult2child": ("adult", "child"),
    "child2adult": ("child", "adult"),
    "man2woman": ("man", "woman"),
    "woman2man": ("woman", "man"),
}


def train_rows(n_rows: int) -> int:
    """Rows [0, train_rows) are train and validation, the rest test: round(n_rows * 6/7) = 60000 for 70000."""
    return (6 * n_rows + 3) // 7


def default_val_rows(n_rows: int) -> int:
    """A twelfth of the train rows (5000 of the real 60000), at least one."""
    return max(1, train_rows(n_rows) // 12)


def _group_mask(group: Group, age: np.ndarray, gender: np.ndarray) -> np.ndarray:
    """Boolean (N,) membership of `group`; rows with unknown age or gender belong to none."""
    if group in ("adult", "child"):
        known = age != UNKNOWN_AGE
        return known & (age >= ADULT_AGE) if group == "adult" else known & (age < ADULT_AGE)
    return gender == ("male" if group == "man" else "female")


def select_rows(
    age: np.ndarray,
    gender: np.ndarray,
    direction: Direction,
    split: Split,
    n_rows: int | None = None,
    n_val: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(source_rows, target_rows): sorted int64 row numbers of one split for one direction.

    On the label arrays alone -- age (N,) or (N, 1), gender (N,) -- so the protocol can be
    checked against the real labels without the latents; `n_rows` (default N) fixes the split
    and `n_val` (default :func:`default_val_rows`) the validation rows cut from the train end.
    """
    age = np.asarray(age, dtype=np.float64).reshape(-1)
    gender = np.asarray(gender)
    n_rows = age.shape[0] if n_rows is None else n_rows
    if age.shape[0] != n_rows or gender.shape != (n_rows,):
        raise ValueError(f"labels must have {n_rows} rows: age {age.shape}, gender {gender.shape}")
    row = np.arange(n_rows)
    val_start = train_rows(n_rows) - (default_val_rows(n_rows) if n_val is None else n_val)
    bounds = {"train": (0, val_start), "val": (val_start, train_rows(n_rows)), "test": (train_rows(n_rows), n_rows)}
    low, high = bounds[split]
    in_split = (row >= low) & (row < high)

    def rows_of(group: Group) -> np.ndarray:
        return np.flatnonzero(in_split & _group_mask(group, age, gender)).astype(np.int64)

    source, target = DIRECTION_GROUPS[direction]
    return rows_of(source), rows_of(target)


def _require_finite(path: Path, array: np.ndarray) -> None:
    bad = np.size(array) - np.count_nonzero(np.isfinite(array))
    if bad:
        raise DataError(path, f"contains {bad} non-finite values (NaN or inf)")


def _require_rows(path: Path, array: np.ndarray, n_rows: int) -> None:
    if array.shape[0] != n_rows:
        raise DataError(path, f"has {array.shape[0]} rows but {LATENTS_FILE} has {n_rows}")


def read_latents(path: Path) -> np.ndarray:
    """(N, D) floating point latents, memory-mapped; N >= 1, D >= 1, all finite."""
    latents = open_npy(path)
    if latents.ndim != 2 or 0 in latents.shape:
        raise DataError(path, f"expected a non-empty (N, D) array, got shape {latents.shape}")
    if not np.issubdtype(latents.dtype, np.floating):
        raise DataError(path, f"latents must be floating point, got dtype {latents.dtype}")
    _require_finite(path, latents)
    return latents


def read_age(path: Path, n_rows: int) -> np.ndarray:
    """(n_rows,) float64 ages from an (N,) or (N, 1) numeric array, all finite."""
    age = open_npy(path)
    if not (age.ndim == 1 or (age.ndim == 2 and age.shape[1] == 1)):
        raise DataError(path, f"expected shape (N,) or (N, 1), got {age.shape}")
    if not (np.issubdtype(age.dtype, np.integer) or np.issubdtype(age.dtype, np.floating)):
        raise DataError(path, f"age must be numeric, got dtype {age.dtype}")
    _require_rows(path, age, n_rows)
    _require_finite(path, age)
    return np.array(age, dtype=np.float64).reshape(-1)  # a small copy, detached from the file


def read_gender(path: Path, n_rows: int) -> np.ndarray:
    """(n_rows,) unicode genders, each "male", "female" or ""."""
    gender = open_npy(path)
    if gender.ndim != 1:
        raise DataError(path, f"expected shape (N,), got {gender.shape}")
    if gender.dtype.kind != "U":
        raise DataError(path, f"gender must be unicode strings, got dtype {gender.dtype}")
    _require_rows(path, gender, n_rows)
    unexpected = sorted(set(np.unique(gender).tolist()) - set(GENDERS))
    if unexpected:
        raise DataError(path, f"unexpected values {unexpected[:5]}; expected one of {list(GENDERS)}")
    return np.array(gender)


def build_ffhq_alae(cfg: DataConfig) -> TranslationData:
    """The `cfg.direction` task on the folder `cfg.data_dir` (validated by DataConfig)."""
    folder = Path(str(cfg.data_dir))
    if not folder.is_dir():
        raise DataError(folder, "not a directory (expected latents.npy, age.npy, gender.npy)")
    latents = read_latents(folder / LATENTS_FILE)
    n_rows = latents.shape[0]
    age = read_age(folder / AGE_FILE, n_rows)
    gender = read_gender(folder / GENDER_FILE, n_rows)
    groups = DIRECTION_GROUPS[cfg.direction]
    if cfg.n_val is not None and cfg.n_val >= train_rows(n_rows):
        raise DataError(folder, f"data.n_val = {cfg.n_val} leaves no train rows (the folder has {train_rows(n_rows)})")
    splits: tuple[Split, ...] = ("train", "val", "test")
    pools: dict[str, torch.Tensor] = {}
    for split in splits:
        selected = select_rows(age, gender, cfg.direction, split, n_rows, cfg.n_val)
        for side, group, rows in zip(("source", "target"), groups, selected):
            if rows.size == 0:
                raise DataError(folder, f"no {group} rows in the {split} split")
            pools[f"{split}_{side}"] = torch.from_numpy(np.array(latents[rows], dtype=np.float32))
    return TranslationData(
        name="ffhq-alae",
        dim=latents.shape[1],
        **pools,
    )


if __name__ == "__main__":
    import sys

    from dmf_ray.data.ffhq_fetch import main

    sys.exit(main())

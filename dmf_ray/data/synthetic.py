"""Write a SYNTHETIC stand-in for the FFHQ ALAE folder: ``python -m dmf_ray.data.synthetic``.

The real latents cannot be downloaded here, yet the loader, the trainer and the CLIs must run
end to end: this writes the same three files with made-up latents, plus ``SYNTHETIC.txt`` saying
so. Adults and children are two well separated clusters (men and women offset along a second
direction), so a translation between them is learnable and visibly right or wrong.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dmf_ray.data.ffhq_alae import AGE_FILE, GENDER_FILE, LATENTS_FILE, UNKNOWN_AGE, train_rows
from dmf_ray.cli import ArgumentParser, run_cli
from dmf_ray.errors import ConfigError
from dmf_ray.files import atomic_write

NOTICE_FILE = "SYNTHETIC.txt"
MIN_ROWS = 14  # the smallest N whose test split (N - round(6N/7) >= 2 rows) holds every group
CHILD_FRACTION = 0.2
UNKNOWN_FRACTION = 0.01
CLUSTER_DISTANCE = 6.0  # between the adult and child cluster centres, in noise standard deviations
GENDER_OFFSET = 1.5  # men and women sit at +-GENDER_OFFSET along a second direction

NOTICE = """\
SYNTHETIC DATA -- NOT REAL FFHQ LATENTS.

Written by `python -m dmf_ray.data.synthetic` (rows={rows}, dim={dim}, seed={seed}) in the format
of the FFHQ ALAE folder (latents.npy, age.npy, gender.npy) so the pipeline can run without the
real files. latents.npy holds Gaussian noise around two cluster centres (adults, children) offset
by gender; the ages and genders are random. Results on this folder say nothing about FFHQ.
"""


def _labels(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random ages (n,) float64 and genders (n,) <U6 with fixed proportions.

    Fixed counts (at least one child, one adult, one man and one woman for n >= 2) rather than
    independent draws, so even a tiny split holds every group the four directions need.
    """
    n_child = max(1, round(CHILD_FRACTION * n))
    n_unknown = round(UNKNOWN_FRACTION * n)
    age = np.concatenate([
        rng.integers(0, 18, n_child).astype(np.float64),
        np.full(n_unknown, UNKNOWN_AGE),
        rng.integers(18, 80, n - n_child - n_unknown).astype(np.float64),
    ])
    n_male = (n - n_unknown) // 2
    gender = np.array(["male"] * n_male + [""] * n_unknown + ["female"] * (n - n_male - n_unknown))
    return rng.permutation(age), rng.permutation(gender).astype("<U6")


def synthetic_arrays(rows: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(latents (rows, dim) float32, age (rows, 1) float64, gender (rows,) <U6)."""
    rng = np.random.default_rng(seed)
    n_train = train_rows(rows)
    train_labels, test_labels = _labels(n_train, rng), _labels(rows - n_train, rng)
    age = np.concatenate([train_labels[0], test_labels[0]])
    gender = np.concatenate([train_labels[1], test_labels[1]])
    directions = np.linalg.qr(rng.standard_normal((dim, 2)))[0].T  # orthonormal rows (2, dim)
    age_side = np.where((age >= 0) & (age < 18), 0.5, -0.5)[:, None]  # unknown ages join adults
    gender_side = np.select([gender == "male", gender == "female"], [1.0, -1.0], 0.0)[:, None]
    centres = CLUSTER_DISTANCE * age_side * directions[0] + GENDER_OFFSET * gender_side * directions[1]
    latents = centres + rng.standard_normal((rows, dim))
    return latents.astype(np.float32), age[:, None], gender


def _check_args(rows: int, dim: int, seed: int) -> None:
    if rows < MIN_ROWS:
        raise ConfigError(
            "--rows", f"must be >= {MIN_ROWS} so both splits hold every group, got {rows}"
        )
    if dim < 2:
        raise ConfigError("--dim", f"must be >= 2 (age and gender get one direction each), got {dim}")
    if seed < 0:
        raise ConfigError("--seed", f"must be >= 0, got {seed}")


def write_synthetic_ffhq(out: Path, rows: int, dim: int, seed: int, force: bool = False) -> Path:
    """Write the synthetic folder at `out` atomically; a non-empty `out` is replaced only with `force`."""
    _check_args(rows, dim, seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError("--out", f"{out} is not empty (pass --force to replace it)")

    def write(staging: Path) -> None:
        staging.mkdir()
        latents, age, gender = synthetic_arrays(rows, dim, seed)
        np.save(staging / LATENTS_FILE, latents)
        np.save(staging / AGE_FILE, age)
        np.save(staging / GENDER_FILE, gender)
        (staging / NOTICE_FILE).write_text(NOTICE.format(rows=rows, dim=dim, seed=seed))

    try:
        atomic_write(out, write)
    except OSError as error:
        raise ConfigError("--out", f"cannot write {out}: {error.strerror or error}") from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m dmf_ray.data.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--rows", type=int, default=70_000, help="number of rows N")
    parser.add_argument("--dim", type=int, default=512, help="latent dimension D")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")

    def command() -> None:
        args = parser.parse_args(argv)
        out = write_synthetic_ffhq(args.out, args.rows, args.dim, args.seed, force=args.force)
        print(f"wrote synthetic FFHQ ALAE folder (NOT real latents): {out}")

    return run_cli(command)


if __name__ == "__main__":
    sys.exit(main())

"""Tests of dmf_ray.data: config validation, determinism, exact moments and maps, the FFHQ loader
with its validation, the protocol counts on the real labels, and the synthetic-folder CLI."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dmf_ray.data import BUILDERS, DATASET_NAMES, DIRECTIONS, DataConfig, TranslationData, load_dataset
from dmf_ray.data import ffhq_alae, gaussian_ot, synthetic, toy
from dmf_ray.data.base import BatchSampler
from dmf_ray.errors import DataError

REPO = Path(__file__).resolve().parents[1]
REAL_LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ffhq_alae"
POOLS = ("train_source", "train_target", "val_source", "val_target", "test_source", "test_target")
SYN_ROWS, SYN_DIM = 1400, 16


def small(name: str, **overrides: object) -> DataConfig:
    return DataConfig(name=name, n_train=2000, n_test=500, dim=4, **overrides)  # type: ignore[arg-type]


# --- config ---------------------------------------------------------------------------------


def test_registry_covers_every_dataset_name() -> None:
    assert set(BUILDERS) == set(DATASET_NAMES)


# --- the shared interface -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["toy", "gaussian-ot"])
def test_same_seed_same_pools_other_seed_other_pools(name: str) -> None:
    first, again, other = (load_dataset(small(name, seed=s)) for s in (3, 3, 4))
    for pool in POOLS:
        assert torch.equal(getattr(first, pool), getattr(again, pool))
        assert not torch.equal(getattr(first, pool), getattr(other, pool))
    # Train, validation and test come from independent streams, not the same draws.
    assert not torch.equal(first.train_source[:500], first.test_source)
    assert not torch.equal(first.val_source, first.test_source)
    assert not torch.equal(first.train_source[:500], first.val_source)


@pytest.mark.parametrize(("name", "dim"), [("toy", 2), ("gaussian-ot", 4)])
def test_pool_shapes_and_dtypes(name: str, dim: int) -> None:
    data = load_dataset(small(name))
    assert (data.name, data.dim) == (name, dim)
    for pool, rows in zip(POOLS, (2000, 2000, 500, 500, 500, 500)):
        tensor = getattr(data, pool)
        assert tensor.dtype == torch.float32 and tensor.shape == (rows, dim)
        assert torch.isfinite(tensor).all()


def test_batches_are_deterministic_and_indexed() -> None:
    data = load_dataset(small("toy"))
    for draw, pool in ((data.source_batch, data.train_source), (data.target_batch, data.train_target)):
        indices, samples = draw(64, BatchSampler(seed=7), 3)
        again_indices, again_samples = draw(64, BatchSampler(seed=7), 3)
        assert indices.dtype == torch.int64 and indices.shape == (64,)
        assert samples.shape == (64, 2)
        assert torch.equal(samples, pool[indices])
        assert torch.equal(indices, again_indices) and torch.equal(samples, again_samples)
        assert not torch.equal(indices, draw(64, BatchSampler(seed=8), 3)[0])
        assert not torch.equal(indices, draw(64, BatchSampler(seed=7), 4)[0])
    # Source and target orders are independent streams, not the same permutation.
    assert not torch.equal(data.source_batch(64, BatchSampler(seed=7), 0)[0], data.target_batch(64, BatchSampler(seed=7), 0)[0])


def test_an_epoch_visits_every_row_once_and_batches_hold_no_twins() -> None:
    sampler, pool_size, n = BatchSampler(seed=1), 1000, 96  # 10 batches an epoch, 40 rows dropped
    epoch = [sampler.indices(pool_size, n, step, stream=10) for step in range(10)]
    seen = torch.cat(epoch)
    assert all(len(set(batch.tolist())) == n for batch in epoch)
    assert len(set(seen.tolist())) == seen.numel() == 960 and int(seen.max()) < pool_size
    # The next epoch is a fresh permutation.
    assert not torch.equal(sampler.indices(pool_size, n, 10, 10), epoch[0])


def test_ranks_take_disjoint_slices_of_one_global_batch() -> None:
    world, n, pool_size = 4, 50, 1000
    for step in (0, 3, 7):  # 5 global batches per epoch: step 7 is in the second epoch
        shards = [BatchSampler(seed=2, rank=r, world=world).indices(pool_size, n, step, 10) for r in range(world)]
        rows = torch.cat(shards)
        assert len(set(rows.tolist())) == world * n


def test_a_batch_larger_than_the_pool_repeats_each_row_at_most_ceil_times() -> None:
    indices = BatchSampler(seed=0).indices(pool_size=100, n=250, step=5, stream=11)
    counts = torch.bincount(indices, minlength=100)
    assert indices.numel() == 250 and int(counts.max()) <= 3 and int((counts > 0).sum()) == 100


def test_translation_data_rejects_malformed_pools() -> None:
    good = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="test_target"):
        TranslationData("x", 2, good, good, good, good, good, torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="val_source"):
        TranslationData("x", 2, good, good, torch.zeros(0, 2), good, good, good)
    with pytest.raises(ValueError, match="train_source"):
        TranslationData("x", 2, torch.zeros(3, 5), good, good, good, good, good)


# --- toy ------------------------------------------------------------------------------------


def test_toy_constants_are_the_mixture_moments() -> None:
    mu = toy.COMPONENT_MEANS[1]
    assert torch.allclose(toy.TARGET_MEAN, mu / 2)
    assert torch.allclose(toy.TARGET_COV, torch.eye(2) + torch.outer(mu, mu) / 4)


def test_toy_samples_match_exact_moments() -> None:
    data = load_dataset(DataConfig(name="toy", n_train=200_000, n_test=10))
    source, target = data.train_source.double(), data.train_target.double()
    # Standard errors: mean <= sqrt(3.25 / 2e5) ~ 0.004, covariance entries <= ~0.01.
    assert torch.allclose(source.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.02)
    assert torch.allclose(torch.cov(source.T), torch.eye(2, dtype=torch.float64), atol=0.03)
    assert torch.allclose(target.mean(0), toy.TARGET_MEAN.double(), atol=0.03)
    assert torch.allclose(torch.cov(target.T), toy.TARGET_COV.double(), atol=0.08)
    assert data.ot_map is None


# --- gaussian-ot ----------------------------------------------------------------------------


@pytest.mark.parametrize(("dim", "seed"), [(1, 0), (16, 1), (64, 2)])
def test_ot_matrix_is_spd_and_pushes_covariances(dim: int, seed: int) -> None:
    source, target = gaussian_ot.make_problem(dim, seed)
    a = gaussian_ot.ot_matrix(source.cov, target.cov)
    assert a.dtype == torch.float64
    assert torch.equal(a, a.T)
    assert torch.linalg.eigvalsh(a).min() > 0
    assert torch.allclose(a @ source.cov @ a, target.cov, atol=1e-6, rtol=0)


def test_covariance_eigenvalues_lie_in_range() -> None:
    source, target = gaussian_ot.make_problem(32, 0)
    low, high = gaussian_ot.EIGENVALUE_RANGE
    for cov in (source.cov, target.cov):
        eigenvalues = torch.linalg.eigvalsh(cov)
        assert eigenvalues.min() >= low - 1e-9 and eigenvalues.max() <= high + 1e-9


def test_ot_matrix_between_equal_covariances_is_identity() -> None:
    source, _ = gaussian_ot.make_problem(8, 5)
    a = gaussian_ot.ot_matrix(source.cov, source.cov)
    assert torch.allclose(a, torch.eye(8, dtype=torch.float64), atol=1e-10)


def test_ot_map_pushes_source_samples_onto_target() -> None:
    n, dim, seed = 100_000, 4, 9
    data = load_dataset(DataConfig(name="gaussian-ot", n_train=n, n_test=10, dim=dim, seed=seed))
    _, target = gaussian_ot.make_problem(dim, seed)
    assert data.ot_map is not None
    mapped = data.ot_map(data.train_source)
    assert mapped.dtype == torch.float32 and mapped.shape == (n, dim)
    mapped = mapped.double()
    # Six standard errors of a sample mean / covariance entry, eigenvalues <= 4.
    scale = float(target.cov.diagonal().max())
    assert torch.allclose(mapped.mean(0), target.mean, atol=6 * (scale / n) ** 0.5, rtol=0)
    assert torch.allclose(torch.cov(mapped.T), target.cov, atol=6 * scale * (2 / n) ** 0.5, rtol=0)


def test_ot_map_pickles() -> None:
    data = load_dataset(small("gaussian-ot"))
    assert data.ot_map is not None
    restored = pickle.loads(pickle.dumps(data.ot_map))
    assert torch.equal(restored(data.test_source), data.ot_map(data.test_source))


# --- ffhq-alae on a synthetic folder --------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.write_synthetic_ffhq(tmp_path_factory.mktemp("ffhq") / "syn", SYN_ROWS, SYN_DIM, 0)


@pytest.fixture
def folder_copy(synthetic_folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synthetic_folder, tmp_path / "copy"))


def test_synthetic_folder_has_the_real_format(synthetic_folder: Path) -> None:
    latents = np.load(synthetic_folder / "latents.npy")
    age = np.load(synthetic_folder / "age.npy")
    gender = np.load(synthetic_folder / "gender.npy")
    assert latents.shape == (SYN_ROWS, SYN_DIM) and latents.dtype == np.float32
    assert age.shape == (SYN_ROWS, 1) and age.dtype == np.float64
    assert gender.shape == (SYN_ROWS,) and gender.dtype == np.dtype("<U6")
    assert (age == -1).any() and (gender == "").any()
    assert set(np.unique(gender)) == {"", "male", "female"}
    assert "NOT" in (synthetic_folder / synthetic.NOTICE_FILE).read_text()
    # Adults and children are separable clusters.
    gap = latents[age[:, 0] >= 18].mean(0) - latents[(age[:, 0] >= 0) & (age[:, 0] < 18)].mean(0)
    assert np.linalg.norm(gap) > 4


def test_synthetic_arrays_are_seeded() -> None:
    first, again, other = (synthetic.synthetic_arrays(100, 4, s) for s in (1, 1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not np.array_equal(first[0], other[0])


GROUP_OF: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "adult": lambda age, gender: age >= 18,
    "child": lambda age, gender: (age >= 0) & (age < 18),
    "man": lambda age, gender: gender == "male",
    "woman": lambda age, gender: gender == "female",
}


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ffhq_loads_each_direction(synthetic_folder: Path, direction: str) -> None:
    cfg = DataConfig(name="ffhq-alae", data_dir=str(synthetic_folder), direction=direction)  # type: ignore[arg-type]
    data = load_dataset(cfg)
    latents = np.load(synthetic_folder / "latents.npy")
    age = np.load(synthetic_folder / "age.npy")[:, 0]
    gender = np.load(synthetic_folder / "gender.npy")
    source_group, target_group = ffhq_alae.DIRECTION_GROUPS[direction]
    boundary = ffhq_alae.train_rows(SYN_ROWS)
    assert boundary == 1200 and ffhq_alae.train_rows(70_000) == 60_000
    assert ffhq_alae.default_val_rows(SYN_ROWS) == 100 and ffhq_alae.default_val_rows(70_000) == 5000
    bounds = {"train": (0, 1100), "val": (1100, 1200), "test": (1200, SYN_ROWS)}
    assert data.name == "ffhq-alae" and data.dim == SYN_DIM
    for split, (low, high) in bounds.items():
        selected = ffhq_alae.select_rows(age, gender, direction, split)  # type: ignore[arg-type]
        source_rows, target_rows = selected
        assert not set(source_rows) & set(target_rows)
        assert ((source_rows >= low) & (source_rows < high)).all() and ((target_rows >= low) & (target_rows < high)).all()
        assert GROUP_OF[source_group](age, gender)[source_rows].all()
        assert GROUP_OF[target_group](age, gender)[target_rows].all()
        assert torch.equal(getattr(data, f"{split}_source"), torch.from_numpy(latents[source_rows]))
        assert torch.equal(getattr(data, f"{split}_target"), torch.from_numpy(latents[target_rows]))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _save(name: str, make: Callable[[np.ndarray], object]) -> Callable[[Path], None]:
    """A corruption that rewrites `name` as `make(current array)`."""

    def corrupt(folder: Path) -> None:
        np.save(folder / name, make(np.load(folder / name)), allow_pickle=True)

    return corrupt


def _with_value(value: object, row: int = 5) -> Callable[[np.ndarray], np.ndarray]:
    def make(array: np.ndarray) -> np.ndarray:
        array = array.copy()
        array[row] = value
        return array

    return make


def _as_npz(folder: Path) -> None:
    target = folder / "age.npy"
    np.savez(folder / "age.npz", age=np.load(target))
    (folder / "age.npz").rename(target)


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "missing latents": (lambda f: (f / "latents.npy").unlink(), "latents.npy", "no such file"),
    "missing gender": (lambda f: (f / "gender.npy").unlink(), "gender.npy", "no such file"),
    "truncated latents": (lambda f: _truncate(f / "latents.npy"), "latents.npy", "cannot load"),
    "empty age": (lambda f: (f / "age.npy").write_bytes(b""), "age.npy", "cannot load"),
    "nan latents": (_save("latents.npy", _with_value(np.nan)), "latents.npy", "non-finite"),
    "inf age": (_save("age.npy", _with_value(np.inf)), "age.npy", "non-finite"),
    "int latents": (_save("latents.npy", lambda a: a.astype(np.int64)), "latents.npy", "floating"),
    "1-d latents": (_save("latents.npy", lambda a: a[:, 0]), "latents.npy", "shape"),
    "string age": (_save("age.npy", lambda a: a.astype(str)), "age.npy", "numeric"),
    "wide age": (_save("age.npy", lambda a: np.hstack([a, a])), "age.npy", "shape"),
    "float gender": (_save("gender.npy", lambda g: np.zeros(len(g))), "gender.npy", "unicode"),
    "bad gender": (_save("gender.npy", _with_value("M")), "gender.npy", "unexpected values"),
    "short age": (_save("age.npy", lambda a: a[:-3]), "age.npy", "rows"),
    "short gender": (_save("gender.npy", lambda g: g[:-1]), "gender.npy", "rows"),
    "object gender": (_save("gender.npy", lambda g: g.astype(object)), "gender.npy", "allow_pickle"),
    "npz age": (_as_npz, "age.npy", ".npz"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_ffhq_validation_names_the_file(folder_copy: Path, case: str) -> None:
    corrupt, file_name, problem = CORRUPTIONS[case]
    corrupt(folder_copy)
    with pytest.raises(DataError) as caught:
        load_dataset(DataConfig(name="ffhq-alae", data_dir=str(folder_copy)))
    message = str(caught.value)
    assert message.startswith(str(folder_copy / file_name) + ": ")
    assert problem in message and "\n" not in message


def test_ffhq_missing_folder_and_empty_group(tmp_path: Path, folder_copy: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(DataConfig(name="ffhq-alae", data_dir=str(tmp_path / "absent")))
    np.save(folder_copy / "gender.npy", np.full(SYN_ROWS, "male"))
    with pytest.raises(DataError, match="no woman rows in the train split"):
        load_dataset(DataConfig(name="ffhq-alae", data_dir=str(folder_copy), direction="man2woman"))


# --- the real FFHQ labels -------------------------------------------------------------------

needs_real_labels = pytest.mark.skipif(not REAL_LABELS.is_dir(), reason=f"{REAL_LABELS} absent")


@needs_real_labels
def test_real_labels_give_the_protocol_counts() -> None:
    age = ffhq_alae.read_age(REAL_LABELS / "age.npy", 70_000)
    gender = ffhq_alae.read_gender(REAL_LABELS / "gender.npy", 70_000)
    counts = {
        split: tuple(len(r) for r in ffhq_alae.select_rows(age, gender, "adult2child", split, 70_000))
        for split in ("train", "val", "test")
    }
    # Validation (rows 55000..59999) is cut from the protocol's 60000 train rows; test is untouched.
    assert counts == {"train": (44709, 9875), "val": (4077, 887), "test": (8104, 1819)}
    flipped = ffhq_alae.select_rows(age, gender, "child2adult", "test")
    assert (len(flipped[0]), len(flipped[1])) == (1819, 8104)


@needs_real_labels
def test_real_gender_selection_is_positive_and_disjoint() -> None:
    age = ffhq_alae.read_age(REAL_LABELS / "age.npy", 70_000)
    gender = ffhq_alae.read_gender(REAL_LABELS / "gender.npy", 70_000)
    for split, size in (("train", 60_000), ("test", 10_000)):
        men, women = ffhq_alae.select_rows(age, gender, "man2woman", split)  # type: ignore[arg-type]
        assert len(men) > 0 and len(women) > 0
        assert not set(men.tolist()) & set(women.tolist())
        assert len(men) + len(women) <= size


# --- the synthetic CLI ----------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "dmf_ray.data.synthetic", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )


def test_cli_writes_a_loadable_folder_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "syn"
    done = run_cli("--out", str(out), "--rows", "140", "--dim", "8", "--seed", "3")
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == {"latents.npy", "age.npy", "gender.npy", "SYNTHETIC.txt"}
    assert [p.name for p in out.parent.iterdir()] == ["syn"]  # no staging folder left behind
    assert load_dataset(DataConfig(name="ffhq-alae", data_dir=str(out))).dim == 8

    before = (out / "latents.npy").read_bytes()
    refused = run_cli("--out", str(out), "--rows", "140", "--dim", "4")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: --out: ") and "not empty" in refused.stderr
    assert (out / "latents.npy").read_bytes() == before


def test_cli_bad_argument_is_one_line_exit_2(tmp_path: Path) -> None:
    done = run_cli("--out", str(tmp_path / "syn"), "--rows", "lots")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr and not (tmp_path / "syn").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "error: arguments: the following arguments are required: --out"),
        (["--rows", "5"], "error: --rows: must be >= 14"),
        (["--dim", "1"], "error: --dim: must be >= 2"),
        (["--seed", "-1"], "error: --seed: must be >= 0"),
        (["--bogus"], "error: arguments: unrecognized arguments: --bogus"),
    ],
)
def test_main_rejects_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    out = ["--out", str(tmp_path / "syn")] if args else []
    assert synthetic.main([*out, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1
    assert not (tmp_path / "syn").exists()


def test_force_replaces_a_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert synthetic.main(["--out", str(out), "--rows", "70", "--dim", "4", "--force"]) == 0
    assert not (out / "stale.txt").exists() and (out / "latents.npy").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]


def test_empty_existing_folder_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    out.mkdir()
    assert synthetic.write_synthetic_ffhq(out, 70, 4, 0) == out
    assert (out / "SYNTHETIC.txt").is_file()

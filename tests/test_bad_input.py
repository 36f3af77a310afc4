"""Bad input to every command-line tool: one line on stderr, exit 2, no traceback, nothing written.

One table (``CASES``) covers the trainer, the sweep CLI, inference, the synthetic-data writer and
both experiments. Each row builds its argv (and any broken input file) under ``tmp_path`` and
names the substring -- the field or the file -- the one-line message must contain. Nearly every
row calls the CLI's ``main(argv)`` in-process; a few run ``python -m`` in a real process to prove
no traceback reaches the terminal. In-process, the step after validation of the slow CLIs (Ray,
training) is replaced by a tripwire, so a row that wrongly passes validation fails fast instead of
starting a sweep or a training run.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from dmf_ray.data.synthetic import write_synthetic_ffhq

REPO = Path(__file__).resolve().parents[1]

TRAIN = "dmf_ray.train"
TUNE = "dmf_ray.tune"
INFER = "dmf_ray.infer"
SYNTHETIC = "dmf_ray.data.synthetic"
TOY_TABLE1 = "dmf_ray.experiments.toy_table1"
COMPARE = "dmf_ray.experiments.compare"
SURROGATE = "dmf_ray.experiments.surrogate"

# What each CLI would create (relative to tmp_path) had the input been good.
OUTPUT = {TRAIN: "run", TUNE: "sweeps", INFER: "out.npy", SYNTHETIC: "synth", TOY_TABLE1: "table1", COMPARE: "cmp", SURROGATE: "surr"}

# In-process tripwires: the first expensive step after validation. Reaching one means bad input
# was accepted; it raises a non-user error, so the case fails without starting Ray or training.
# The sweep CLI's last check (the tracking store) runs first: it is still validation.
TRIPWIRES = {
    TRAIN: "build_state",
    TUNE: "check_tracking_server",
    TOY_TABLE1: (COMPARE, "run_once"),  # a preset of compare: its runs start there
    COMPARE: "run_once",
    SURROGATE: "run_checks",
}
CALL_THROUGH = {TUNE}


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv(tmp_path)`` (writing any input files it needs) makes ``cli`` exit 2
    with one line containing ``needle`` (``{tmp}`` stands for tmp_path)."""

    id: str
    cli: str
    argv: Callable[[Path], list[str]]
    needle: str
    subprocess: bool = False
    xfail: str = ""  # a known bug in a module this test does not own: why it fails


# ----------------------------------------------------------------------------------------------
# argv builders
# ----------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def train(*extra: str) -> Callable[[Path], list[str]]:
    """Trainer argv: a tiny run into tmp/run (should validation ever pass) plus ``extra``."""
    def build(tmp: Path) -> list[str]:
        return ["--out", str(tmp / "run"), "--no-progress", "--steps", "20", "--eval-every", "10",
                "--batch-size", "64", "--set", "eval_samples=500", "--set", "data.n_train=2000",
                "--set", "data.n_test=500", "--set", "model.width=32", *extra]
    return build


def train_yaml(text: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return ["--config", str(_write(tmp / "cfg.yaml", text)), "--out", str(tmp / "run"), "--no-progress"]
    return build


def ffhq(corrupt: Callable[[Path], None] | None = None, *extra: str) -> Callable[[Path], list[str]]:
    """Trainer on a small valid synthetic ffhq-alae folder at tmp/ffhq, then ``corrupt(folder)``."""
    def build(tmp: Path) -> list[str]:
        folder = tmp / "ffhq"
        write_synthetic_ffhq(folder, rows=28, dim=8, seed=0)
        if corrupt is not None:
            corrupt(folder)
        return train("--data", "ffhq-alae", "--data-dir", str(folder), *extra)(tmp)
    return build


def _resave(name: str, change: Callable[[np.ndarray], np.ndarray], **save_kw) -> Callable[[Path], None]:
    def corrupt(folder: Path) -> None:
        array = np.load(folder / name)
        np.save(folder / name, change(array), **save_kw)
    return corrupt


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def resume(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return ["--resume", str(make(tmp)), "--no-progress"]
    return build


SPACE = """\
num_samples: 1
max_concurrent: 1
fixed: {steps: 20, eval_every: 10, batch_size: 64}
params:
  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""


def tune(space: str = SPACE, *extra: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        path = _write(tmp / "space.yaml", space)
        return ["--space", str(path), "--storage-path", str(tmp / "sweeps"), *extra]
    return build


def _model(tmp: Path, dim: int = 4) -> Path:
    from dmf_ray.core.models import GeneratorConfig, build_generator, save_generator

    cfg = GeneratorConfig(kind="residual", dim=dim, width=8, depth=1)
    path = tmp / "model" / "generator.safetensors"
    save_generator(build_generator(cfg), cfg, path)
    return path


def infer(make_input: Callable[[Path], None] | None, *, model: Callable[[Path], str] | None = None,
          extra: tuple[str, ...] = ()) -> Callable[[Path], list[str]]:
    """Inference of tmp/x.npy (written by ``make_input``) with a dim-4 model into tmp/out.npy."""
    def build(tmp: Path) -> list[str]:
        if make_input is not None:
            make_input(tmp / "x.npy")
        model_arg = model(tmp) if model is not None else str(_model(tmp))
        return ["--model", model_arg, "--input", str(tmp / "x.npy"), "--output", str(tmp / "out.npy"), *extra]
    return build


def _npy(array: np.ndarray, **save_kw) -> Callable[[Path], None]:
    return lambda path: np.save(path, array, **save_kw)


def _nan_input() -> np.ndarray:
    x = np.zeros((5, 4), dtype=np.float32)
    x[3, 1] = np.nan
    return x


def _truncated_input(path: Path) -> None:
    np.save(path, np.ones((64, 4), dtype=np.float32))
    _truncate(path)


def synthetic(*extra: str, existing: bool = False) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        if existing:
            _write(tmp / "synth" / "keep.txt", "mine\n")
        return ["--out", str(tmp / "synth"), "--rows", "28", "--dim", "8", *extra]
    return build


def toy(*extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["--out", str(tmp / "table1"), "--steps", "20", "--seeds", "0", *extra]


def compare(*extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["--out", str(tmp / "cmp"), "--steps", "20", "--seeds", "0", *extra]


def surrogate(*extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["--out", str(tmp / "surr"), *extra]


def _bad_checkpoint(tmp: Path) -> Path:
    return _write(tmp / "run" / "checkpoints" / "step_00000010.safetensors", "not a checkpoint\n")


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

CASES: list[Case] = [
    # --- python -m dmf_ray.train: YAML, keys, types --------------------------------------------
    Case("train-config-malformed-yaml", TRAIN, train_yaml("steps: [1, 2\n"), "{tmp}/cfg.yaml: malformed YAML"),
    Case("train-config-not-a-mapping", TRAIN, train_yaml("- steps\n- 20\n"), "{tmp}/cfg.yaml"),
    Case("train-config-missing-file", TRAIN, lambda tmp: ["--config", str(tmp / "nope.yaml"), "--out", str(tmp / "run")],
         "{tmp}/nope.yaml"),
    Case("train-config-unknown-top-key", TRAIN, train_yaml("stepz: 10\n"), "stepz: unknown key"),
    Case("train-config-unknown-section-key", TRAIN, train_yaml("friction: {powr: 2}\n"), "friction.powr: unknown key"),
    Case("train-config-unknown-drift-key", TRAIN, train_yaml("drift: {tau: 0.2}\n"), "drift.tau"),
    Case("train-set-unknown-key", TRAIN, train("--set", "optim.momentum=0.9"), "optim.momentum"),
    Case("train-config-section-not-mapping", TRAIN, train_yaml("optim: 0.001\n"), "optim: must be a mapping"),
    Case("train-steps-string", TRAIN, train("--steps", "ten"), "steps: must be an integer"),
    Case("train-steps-string-yaml", TRAIN, train_yaml("steps: ten\n"), "steps: must be an integer"),
    Case("train-lr-list", TRAIN, train("--lr", "[0.001, 0.01]"), "optim.lr: must be a number"),
    Case("train-bool-for-int", TRAIN, train("--set", "batch_size=true"), "batch_size: must be an integer"),
    Case("train-bool-for-int-yaml", TRAIN, train_yaml("model: {width: yes}\n"), "model.width"),
    Case("train-set-without-equals", TRAIN, train("--set", "steps"), "--set"),
    Case("train-unknown-flag", TRAIN, train("--stepz", "3"), "--stepz"),
    Case("train-unknown-schedule", TRAIN, train("--schedule", "linearr"), "friction.schedule"),
    Case("train-model-dim-is-derived", TRAIN, train("--set", "model.dim=3"), "model.dim"),
    # --- train: values out of their domain --------------------------------------------------------
    Case("train-tau-zero-flag", TRAIN, train("--temperatures", "0"), "drift.temperatures"),
    Case("train-tau-negative-in-list-flag", TRAIN, train("--temperatures", "[0.05, -0.2]"), "drift.temperatures"),
    Case("train-tau-negative-yaml", TRAIN, train_yaml("drift: {temperatures: [0.1, -0.2]}\n"), "drift.temperatures"),
    Case("train-temperatures-empty", TRAIN, train("--temperatures", "[]"), "drift.temperatures: must not be empty"),
    Case("train-friction-power-zero", TRAIN, train("--schedule", "power", "--set", "friction.power=0"), "friction.power"),
    Case("train-friction-power-negative-yaml", TRAIN, train_yaml("friction: {schedule: power, power: -1}\n"),
         "friction.power"),
    Case("train-sigmoid-midpoint-one", TRAIN, train("--schedule", "sigmoid", "--set", "friction.midpoint=1.0"),
         "friction.midpoint"),
    Case("train-sigmoid-midpoint-zero-yaml", TRAIN, train_yaml("friction: {schedule: sigmoid, midpoint: 0}\n"),
         "friction.midpoint"),
    Case("train-step-breakpoints-not-increasing", TRAIN,
         train("--schedule", "step", "--set", "friction.breakpoints=[0.6, 0.4]", "--set", "friction.levels=[0.3, 0.6]"),
         "friction.breakpoints"),
    Case("train-warmup-one", TRAIN, train("--schedule", "warmup_linear", "--set", "friction.warmup=1"), "friction.warmup"),
    Case("train-steps-one", TRAIN, train("--steps", "1"), "steps: must be >= 2"),
    Case("train-batch-size-one", TRAIN, train("--batch-size", "1"), "batch_size: must be >= 2"),
    Case("train-lr-zero", TRAIN, train("--lr", "0"), "optim.lr"),
    Case("train-weight-decay-nan", TRAIN, train("--set", "optim.weight_decay=.nan"), "optim.weight_decay"),
    Case("train-dim-too-large", TRAIN, train("--data", "gaussian-ot", "--dim", "513"), "data.dim"),
    Case("train-unknown-device", TRAIN, train("--device", "tpu"), "device"),
    Case("train-out-is-a-file", TRAIN, lambda tmp: (_write(tmp / "run", "a file\n"), train()(tmp))[1],
         "{tmp}/run: is a file"),
    Case("train-out-under-a-file", TRAIN, lambda tmp: (_write(tmp / "afile", "a file\n"), train("--out", str(tmp / "afile" / "run"))(tmp))[1],
         "{tmp}/afile: is a file"),
    Case("train-ffhq-without-data-dir", TRAIN, train("--data", "ffhq-alae"), "data.data_dir"),
    # --- train: ffhq-alae folders that are missing or corrupt -----------------------------------
    Case("ffhq-missing-folder", TRAIN, lambda tmp: train("--data", "ffhq-alae", "--data-dir", str(tmp / "nowhere"))(tmp),
         "{tmp}/nowhere"),
    Case("ffhq-missing-latents", TRAIN, ffhq(lambda d: (d / "latents.npy").unlink()), "{tmp}/ffhq/latents.npy: no such file"),
    Case("ffhq-latents-3d", TRAIN, ffhq(_resave("latents.npy", lambda a: a[:, None, :])), "{tmp}/ffhq/latents.npy"),
    Case("ffhq-latents-1d", TRAIN, ffhq(_resave("latents.npy", lambda a: a.reshape(-1))), "{tmp}/ffhq/latents.npy"),
    Case("ffhq-latents-nan", TRAIN, ffhq(_resave("latents.npy", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5,
                                                                                  np.nan, a).astype(np.float32))),
         "{tmp}/ffhq/latents.npy: contains 1 non-finite"),
    Case("ffhq-latents-int", TRAIN, ffhq(_resave("latents.npy", lambda a: a.astype(np.int64))),
         "{tmp}/ffhq/latents.npy: latents must be floating point"),
    Case("ffhq-latents-truncated", TRAIN, ffhq(lambda d: _truncate(d / "latents.npy")), "{tmp}/ffhq/latents.npy",
         subprocess=True),
    Case("ffhq-latents-pickled", TRAIN,
         ffhq(_resave("latents.npy", lambda a: a.astype(object),
                      allow_pickle=True)),
         "{tmp}/ffhq/latents.npy"),
    Case("ffhq-latents-npz", TRAIN,
         ffhq(lambda d: (np.savez(d / "latents.npz", x=np.zeros((28, 8))), (d / "latents.npz").replace(d / "latents.npy"))),
         "{tmp}/ffhq/latents.npy"),
    Case("ffhq-age-row-mismatch", TRAIN, ffhq(_resave("age.npy", lambda a: a[:-1])), "{tmp}/ffhq/age.npy: has 27 rows"),
    Case("ffhq-gender-row-mismatch", TRAIN, ffhq(_resave("gender.npy", lambda a: a[:-3])), "{tmp}/ffhq/gender.npy"),
    Case("ffhq-gender-unknown-value", TRAIN, ffhq(_resave("gender.npy", lambda a: np.where(a == "male", "m", a))),
         "{tmp}/ffhq/gender.npy"),
    Case("ffhq-missing-age", TRAIN, ffhq(lambda d: (d / "age.npy").unlink()), "{tmp}/ffhq/age.npy"),
    Case("ffhq-unknown-direction", TRAIN, ffhq(None, "--direction", "old2young"), "data.direction"),
    # --- train --resume --------------------------------------------------------------------------
    Case("train-resume-missing-file", TRAIN, resume(lambda tmp: tmp / "run" / "checkpoints" / "step_00000010.safetensors"),
         "{tmp}/run/checkpoints/step_00000010.safetensors"),
    Case("train-resume-not-a-checkpoint", TRAIN, resume(_bad_checkpoint),
         "{tmp}/run/checkpoints/step_00000010.safetensors"),
    Case("train-resume-folder-without-checkpoints", TRAIN,
         resume(lambda tmp: _write(tmp / "run" / "config.yaml", "steps: 20\n").parent), "{tmp}/run"),
    Case("train-resume-with-config-flags", TRAIN, lambda tmp: ["--resume", str(_bad_checkpoint(tmp)), "--steps", "5"],
         "--resume"),
    # --- python -m dmf_ray.tune: everything fails while validating, before Ray starts ---------
    Case("tune-space-malformed-yaml", TUNE, tune("params: {optim.lr: {type: float, low: 1\n"),
         "{tmp}/space.yaml: malformed YAML"),
    Case("tune-space-missing-file", TUNE, lambda tmp: ["--space", str(tmp / "nope.yaml"), "--storage-path", str(tmp / "sweeps")],
         "{tmp}/nope.yaml"),
    Case("tune-space-unknown-top-key", TUNE, tune("metricz: fd\n" + SPACE), "metricz: unknown key"),
    Case("tune-space-unknown-param-key", TUNE,
         tune(SPACE.replace("log: true}", "log: true, lgo: true}")), "params.optim.lr.lgo: unknown key", subprocess=True),
    Case("tune-space-unknown-config-key", TUNE, tune(SPACE + "  friction.powr: {type: float, low: 0.5, high: 2.0}\n"),
         "params.friction.powr"),
    Case("tune-space-num-samples-string", TUNE, tune(SPACE.replace("num_samples: 1", "num_samples: eight")),
         "num_samples: must be an integer"),
    Case("tune-space-num-samples-zero", TUNE, tune(SPACE.replace("num_samples: 1", "num_samples: 0")),
         "num_samples: must be >= 1"),
    Case("tune-flag-num-samples-zero", TUNE, tune(SPACE, "--num-samples", "0"), "num-samples"),
    Case("tune-flag-workers-zero", TUNE, tune(SPACE, "--workers", "0"), "workers"),
    Case("tune-flag-workers-not-int", TUNE, tune(SPACE, "--workers", "two"), "--workers"),
    Case("tune-space-resources-workers-zero", TUNE, tune(SPACE + "resources: {workers: 0}\n"), "resources.workers"),
    Case("tune-space-fixed-steps-one", TUNE, tune(SPACE.replace("steps: 20", "steps: 1")), "fixed.steps"),
    Case("tune-space-fixed-batch-size-bool", TUNE, tune(SPACE.replace("batch_size: 64", "batch_size: true")),
         "fixed.batch_size"),
    Case("tune-space-tau-zero-choice", TUNE,
         tune(SPACE + "  drift.temperatures: {type: categorical, choices: {a: [0.2], z: [0.0]}}\n"),
         "params.drift.temperatures"),
    Case("tune-space-warmup-high-one", TUNE, tune(SPACE + "  friction.warmup: {type: float, low: 0.0, high: 1.0}\n"),
         "params.friction.warmup.high"),
    Case("tune-space-low-not-below-high", TUNE, tune(SPACE.replace("low: 1.0e-4, high: 1.0e-2", "low: 0.1, high: 0.01")),
         "params.optim.lr.low"),
    Case("tune-space-no-params", TUNE, tune("num_samples: 1\n"), "params"),
    Case("tune-flag-dim-too-large", TUNE, tune(SPACE, "--data", "gaussian-ot", "--dim", "513"), "data.dim"),
    Case("tune-storage-path-is-a-file", TUNE,
         lambda tmp: (_write(tmp / "afile", "a file\n"), tune(SPACE, "--storage-path", str(tmp / "afile"))(tmp))[1],
         "{tmp}/afile"),
    Case("tune-flag-data-dir-missing", TUNE, tune(SPACE, "--data", "ffhq-alae", "--data-dir", "{tmp}/nowhere"),
         "{tmp}/nowhere"),
    Case("tune-flag-cpus-per-worker-zero", TUNE, tune(SPACE, "--cpus-per-worker", "0"), "cpus-per-worker"),
    # --- python -m dmf_ray.infer ----------------------------------------------------------------
    Case("infer-input-wrong-width", INFER, infer(_npy(np.zeros((5, 3), dtype=np.float32))),
         "{tmp}/x.npy: has 3 columns"),
    Case("infer-input-int-dtype", INFER, infer(_npy(np.zeros((5, 4), dtype=np.int32))), "{tmp}/x.npy: expected a float",
         subprocess=True),
    Case("infer-input-nan", INFER, infer(_npy(_nan_input())), "{tmp}/x.npy: has non-finite"),
    Case("infer-input-1d", INFER, infer(_npy(np.zeros(4, dtype=np.float32))), "{tmp}/x.npy: expected a 2-D"),
    Case("infer-input-missing", INFER, infer(None), "{tmp}/x.npy: no such file"),
    Case("infer-input-truncated", INFER, infer(_truncated_input), "{tmp}/x.npy: not a readable .npy"),
    Case("infer-input-pickled", INFER, infer(_npy(np.array([[1.0, None, 2.0, 3.0]], dtype=object), allow_pickle=True)),
         "{tmp}/x.npy"),
    Case("infer-unknown-model-path", INFER,
         infer(_npy(np.zeros((5, 4), dtype=np.float32)), model=lambda tmp: str(tmp / "nope.safetensors")),
         "{tmp}/nope.safetensors: no such file"),
    Case("infer-model-not-safetensors", INFER,
         infer(_npy(np.zeros((5, 4), dtype=np.float32)), model=lambda tmp: str(_write(tmp / "m.safetensors", "junk\n"))),
         "{tmp}/m.safetensors"),
    Case("infer-registry-uri-missing-store", INFER,
         infer(_npy(np.zeros((5, 4), dtype=np.float32)), model=lambda tmp: "models:/dmf-toy@champion",
               extra=("--tracking-uri", "{tmp}/mlflow.db")),
         "tracking_uri"),
    Case("infer-output-under-a-file", INFER, infer(_npy(np.zeros((5, 4), dtype=np.float32)),
                                                   extra=("--output", "{tmp}/x.npy/out.npy")),
         "{tmp}/x.npy/out.npy: cannot write"),
    Case("infer-batch-size-zero", INFER, infer(_npy(np.zeros((5, 4), dtype=np.float32)), extra=("--batch-size", "0")),
         "batch_size"),
    # --- python -m dmf_ray.data.synthetic -------------------------------------------------------
    Case("synthetic-rows-too-few", SYNTHETIC, synthetic("--rows", "5"), "--rows: must be >="),
    Case("synthetic-rows-not-int", SYNTHETIC, synthetic("--rows", "many"), "--rows"),
    Case("synthetic-dim-one", SYNTHETIC, synthetic("--dim", "1"), "--dim"),
    Case("synthetic-out-not-empty", SYNTHETIC, synthetic(existing=True), "{tmp}/synth is not empty"),
    # --- python -m dmf_ray.experiments.toy_table1 ------------------------------------------------
    Case("toy-table1-tau-zero", TOY_TABLE1, toy("--taus", "0.2", "0"), "--taus"),
    Case("toy-table1-tau-negative", TOY_TABLE1, toy("--taus", "-0.1"), "--taus"),
    Case("toy-table1-tau-not-a-number", TOY_TABLE1, toy("--taus", "abc"), "--taus"),
    Case("toy-table1-tau-nan", TOY_TABLE1, toy("--taus", "nan"), "--taus"),
    Case("toy-table1-seed-negative", TOY_TABLE1, toy("--seeds", "-1"), "--seeds"),
    Case("toy-table1-out-is-a-file", TOY_TABLE1, lambda tmp: (_write(tmp / "table1", "a file\n"), toy()(tmp))[1],
         "{tmp}/table1 is a file"),
    Case("toy-table1-steps-one", TOY_TABLE1, toy("--steps", "1"), "steps"),
    # --- python -m dmf_ray.experiments.compare ---------------------------------------------------
    Case("compare-unknown-method", COMPARE, compare("--methods", "dm", "gan"), "--methods: unknown ['gan']"),
    Case("compare-unknown-task", COMPARE, compare("--task", "mnist"), "--task"),
    Case("compare-searched-missing", COMPARE, compare("--methods", "dmf-searched"), "--searched: required"),
    Case("compare-searched-not-a-file", COMPARE, compare("--methods", "dmf-searched", "--searched", "{tmp}/nope.yaml"),
         "{tmp}/nope.yaml"),
    Case("compare-searched-bad-key", COMPARE,
         lambda tmp: (_write(tmp / "s.yaml", "friction.shape: linear\n"), compare("--methods", "dmf-searched", "--searched", str(tmp / "s.yaml"))(tmp))[1],
         "friction.shape"),
    Case("compare-epsilon-zero", COMPARE, compare("--epsilons", "0.1", "0"), "--epsilons"),
    Case("compare-tau-inf", COMPARE, compare("--taus", "inf"), "--taus"),
    Case("compare-seed-negative", COMPARE, compare("--tune-seed", "-3"), "--seeds"),
    Case("compare-steps-one", COMPARE, compare("--steps", "1"), "steps"),
    Case("compare-workers-zero", COMPARE, compare("--workers", "0"), "--workers: must be >= 1"),
    Case("compare-evals-zero", COMPARE, compare("--evals", "0"), "--evals: must be >= 1"),
    Case("compare-dim-too-big", COMPARE, compare("--task", "gaussian-ot", "--dim", "100000"), "data.dim"),
    Case("compare-ffhq-without-folder", COMPARE, compare("--task", "ffhq-alae"), "data.data_dir"),
    Case("compare-out-is-a-file", COMPARE, lambda tmp: (_write(tmp / "cmp", "a file\n"), compare()(tmp))[1],
         "{tmp}/cmp is a file"),
    # --- python -m dmf_ray.experiments.surrogate -------------------------------------------------
    Case("surrogate-tau-zero", SURROGATE, surrogate("--tau", "0"), "--tau: must be a finite number > 0", subprocess=True),
    Case("surrogate-tau-nan", SURROGATE, surrogate("--tau", "nan"), "--tau"),
    Case("surrogate-tau-subnormal", SURROGATE, surrogate("--tau", "1e-320"), "--tau"),
    Case("surrogate-tau-huge", SURROGATE, surrogate("--tau", "1e308"), "--tau"),
    Case("surrogate-steps-one", SURROGATE, surrogate("--steps", "1"), "--steps"),
]


# ----------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root``: (is a folder, size, mtime) -- to prove nothing was written."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (path.is_dir(), 0 if path.is_dir() else st.st_size, st.st_mtime_ns)
    return out


def _run(case: Case, argv: list[str], tmp: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    if case.subprocess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "MPLBACKEND": "Agg"}
        proc = subprocess.run([sys.executable, "-m", case.cli, *argv], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=180)
        return proc.returncode, proc.stdout, proc.stderr
    module = importlib.import_module(case.cli)

    if case.cli in TRIPWIRES:
        target = TRIPWIRES[case.cli]
        owner, name = (importlib.import_module(target[0]), target[1]) if isinstance(target, tuple) else (module, target)
        original = getattr(owner, name)

        def tripwire(*args, **kwargs):
            if case.cli in CALL_THROUGH:
                original(*args, **kwargs)
            raise AssertionError(f"{case.id}: bad input passed validation and reached {owner.__name__}.{name}")

        monkeypatch.setattr(owner, name, tripwire)
    capsys.readouterr()
    code = module.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)] if c.xfail else []) for c in CASES],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: Case, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative default outputs (runs/, outputs/) would land here
    argv = [a.format(tmp=tmp_path) for a in case.argv(tmp_path)]
    output = tmp_path / OUTPUT[case.cli]
    existed = output.exists()
    before = _snapshot(tmp_path)

    code, out, err = _run(case, argv, tmp_path, capsys, monkeypatch)

    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected exactly one stderr line, got {err!r}"
    assert lines[0].startswith("error:"), lines[0]
    assert case.needle.format(tmp=tmp_path) in lines[0], lines[0]
    assert code == 2, (code, lines[0])
    assert out == "", out
    assert output.exists() == existed, f"{output} was created despite the error"
    assert _snapshot(tmp_path) == before, "files were written or changed despite the error"


def test_the_table_covers_every_cli_with_at_least_30_cases() -> None:
    assert len([c for c in CASES if not c.xfail]) >= 30
    assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"
    assert {c.cli for c in CASES} == set(OUTPUT)
    assert 1 <= sum(c.subprocess for c in CASES) <= 5

"""`python -m dmf_ray.train`: outputs, resume, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dmf_ray.train import main

PNG = b"\x89PNG\r\n\x1a\n"


def _tiny_args(out) -> list[str]:
    return ["--steps", "20", "--eval-every", "10", "--batch-size", "64", "--out", str(out), "--no-progress",
            "--set", "eval_samples=500", "--set", "data.n_train=2000", "--set", "data.n_test=500",
            "--set", "model.width=32"]


def test_train_writes_checkpoints_metrics_and_plots(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_tiny_args(out)) == 0
    for name in ("config.yaml", "history.json", "metrics.json", "generator.safetensors",
                 "checkpoints/step_00000010.safetensors", "checkpoints/step_00000020.safetensors"):
        assert (out / name).is_file(), name
    for plot in ("samples", "friction", "metrics"):
        assert (out / "plots" / f"{plot}.png").read_bytes()[:8] == PNG
    final = json.loads((out / "metrics.json").read_text())
    assert final["step"] == 20 and final["val_fd"] > 0 and final["test_fd"] > 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["test_fd"] == pytest.approx(final["test_fd"], abs=1e-6)


def test_resume_from_a_mid_run_checkpoint_reproduces_the_final_metrics(tmp_path) -> None:
    out = tmp_path / "run"
    assert main(_tiny_args(out)) == 0
    first = json.loads((out / "metrics.json").read_text())
    (out / "checkpoints" / "step_00000020.safetensors").unlink()
    assert main(["--resume", str(out), "--no-progress"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    first.pop("train_seconds"), again.pop("train_seconds")  # wall time: the one value a resume cannot reproduce
    assert again == first


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--set", "drift.tau=1"], "drift.tau"),
        (["--temperatures", "[]"], "drift.temperatures"),
        (["--temperatures", "-0.5"], "drift.temperatures"),
        (["--schedule", "power", "--set", "friction.power=0"], "friction.power"),
        (["--lr", "abc"], "optim.lr"),
        (["--data", "ffhq-alae"], "data.data_dir"),
        (["--set", "novalue"], "--set"),
        (["--bogus"], "arguments"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, extra, needle) -> None:
    out = tmp_path / "run"
    assert main(_tiny_args(out) + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err
    assert not out.exists()


def test_malformed_yaml_and_missing_data_folder_name_the_file(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    assert main(["--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert str(bad) in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert main(["--data", "ffhq-alae", "--data-dir", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_non_empty_output_folder_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(_tiny_args(out)) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_module_entry_point_has_no_traceback_on_bad_input(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dmf_ray.train", "--steps", "1", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("error: steps")

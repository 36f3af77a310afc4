"""Logged pyfunc generator, champion alias rule, load_model and the infer CLI on a sqlite store."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

import dmf_ray
from dmf_ray.errors import UserInputError
from dmf_ray.infer import main as infer_main
from dmf_ray.core.models import GeneratorConfig, build_generator, save_generator
from dmf_ray.platform.registry import default_model_name, log_generator, register_if_champion
from dmf_ray.platform.tracking import SweepTracker, tracking_uri_for

DIM = 6
NAME = "dmf-test-gen"


@dataclass
class Store:
    uri: str
    root: Path
    run_id: str
    model_uri: str
    weights: Path
    model: torch.nn.Module


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("registry")
    uri = tracking_uri_for(None, root)
    tracker = SweepTracker(uri, "gen")
    tracker.start_sweep("s", {})
    run_id = tracker.trial_run("best", {})
    torch.manual_seed(0)
    cfg = GeneratorConfig(kind="residual", dim=DIM, width=16, depth=2)
    model = build_generator(cfg)
    with torch.no_grad():  # the residual branch starts at zero; make the map not the identity
        torch.nn.init.normal_(model.net[-1].weight, std=0.5)
        torch.nn.init.normal_(model.net[-1].bias, std=0.5)
    model.eval()
    weights = root / "generator.safetensors"
    save_generator(model, cfg, weights)
    model_uri = log_generator(uri, run_id, weights, DIM)
    tracker.finish_trial(run_id, "FINISHED", {"fd": 0.1})
    register_if_champion(uri, model_uri, NAME, "fd", 0.1, "min", "toy", "s")
    return Store(uri, root, run_id, model_uri, weights, model)


@pytest.fixture
def global_uri(store):
    """mlflow.pyfunc.load_model resolves models:/ URIs through MLflow's global tracking URI."""
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(store.uri)
    yield store.uri
    mlflow.set_tracking_uri(previous)


def _x(n: int = 32, dim: int = DIM, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _model_dir(store: Store) -> Path:
    client = mlflow.MlflowClient(store.uri)
    loc = client.get_logged_model(store.model_uri.removeprefix("models:/")).artifact_location
    return Path(loc.removeprefix("file://"))


# --------------------------------------------------------------------------- logged model


def test_logged_pyfunc_and_load_model_agree_and_are_not_the_identity(store, global_uri) -> None:
    x = _x()
    expected = store.model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(expected - x).max() > 0.1
    for uri in (store.model_uri, f"models:/{NAME}@champion", f"models:/{NAME}/1"):
        y_pyfunc = mlflow.pyfunc.load_model(uri).predict(x)
        y_api = dmf_ray.load_model(uri, tracking_uri=store.uri).translate(x)
        assert y_pyfunc.dtype == np.float32 and y_api.dtype == np.float32 and y_api.shape == (32, DIM)
        np.testing.assert_array_equal(y_pyfunc, y_api)
        np.testing.assert_allclose(y_api, expected, rtol=1e-6, atol=1e-6)


def test_pyfunc_validates_input(store, global_uri) -> None:
    model = mlflow.pyfunc.load_model(store.model_uri)
    bad = _x()
    bad[3, 2] = np.nan
    with pytest.raises(Exception, match="non-finite"):
        model.predict(bad)
    with pytest.raises(Exception):
        model.predict(_x(dim=DIM + 1))


def test_logged_model_has_no_pickles_and_is_tied_to_its_run(store) -> None:
    folder = _model_dir(store)
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert "artifacts/generator.safetensors" in files and "pyfunc_model.py" in files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle")) or "pickle" in Path(f).name]
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in pyfunc  # the pickled-object workflow would record this
    assert mlmodel["run_id"] == store.run_id
    sig = mlmodel["signature"]
    assert '"float32"' in sig["inputs"] and f"[-1, {DIM}]" in sig["inputs"] and f"[-1, {DIM}]" in sig["outputs"]
    reqs = (folder / "requirements.txt").read_text()
    assert "torch" in reqs and "safetensors" in reqs
    client = mlflow.MlflowClient(store.uri)
    outputs = client.get_run(store.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [store.model_uri.removeprefix("models:/")]


def test_load_model_from_runs_uri_folder_and_bare_file(store) -> None:
    x = _x(seed=2)
    ref = dmf_ray.load_model(store.model_uri, tracking_uri=store.uri).translate(x)
    for source in (f"runs:/{store.run_id}/generator", str(_model_dir(store)), str(store.weights), str(store.root)):
        t = dmf_ray.load_model(source, tracking_uri=store.uri)
        assert t.dim == DIM
        np.testing.assert_array_equal(t.translate(x), ref)
    np.testing.assert_allclose(dmf_ray.load_model(str(store.weights)).translate(x.astype(np.float64)), ref, atol=1e-6)


@pytest.mark.parametrize(
    "uri, words",
    [
        ("models:/no-such-model@champion", "no registered model 'no-such-model'"),
        (f"models:/{NAME}@nope", "has no alias 'nope'"),
        (f"models:/{NAME}/99", "has no version '99'"),
        ("models:/m-0000", "no logged model"),
        ("runs:/0123456789abcdef/generator", "no run"),
    ],
)
def test_load_model_unknown_uri_is_one_line_naming_it(store, uri, words) -> None:
    with pytest.raises(UserInputError) as info:
        dmf_ray.load_model(uri, tracking_uri=store.uri)
    msg = str(info.value)
    assert msg.startswith(uri) and words in msg and "\n" not in msg


# --------------------------------------------------------------------------- champion rule


def _versions_tags(store: Store, name: str, version: str) -> dict:
    return mlflow.MlflowClient(store.uri, store.uri).get_model_version(name, version).tags


def _champion(store: Store, name: str) -> str | None:
    version = mlflow.MlflowClient(store.uri, store.uri).get_registered_model(name).aliases.get("champion")
    return None if version is None else str(version)


@pytest.mark.parametrize("mode, values, moves", [
    ("min", [1.0, 2.0, 0.5, 0.5, float("nan")], [True, False, True, False, False]),
    ("max", [0.3, 0.2, 0.9, 0.9, float("inf")], [True, False, True, False, False]),
])
def test_champion_moves_only_on_improvement(store, mode, values, moves) -> None:
    name = f"dmf-champ-{mode}"
    champion = None
    for i, (value, move) in enumerate(zip(values, moves), start=1):
        res = register_if_champion(store.uri, store.model_uri, name, "fd", value, mode, "toy", f"sweep-{i}")
        assert res.version == str(i) and res.became_champion is move, (i, res)
        assert res.previous_champion == champion and res.reason
        if move:
            champion = res.version
        assert _champion(store, name) == champion
    tags = _versions_tags(store, name, "3")
    assert tags == {"metric": "fd", "metric_value": repr(values[2]), "test_metric_value": "nan", "mode": mode, "dataset": "toy",
                    "sweep_id": "sweep-3"}


def test_champion_never_moves_across_datasets_or_metrics(store) -> None:
    name = "dmf-champ-cross"
    assert register_if_champion(store.uri, store.model_uri, name, "fd", 1.0, "min", "toy", "a").became_champion
    other_data = register_if_champion(store.uri, store.model_uri, name, "fd", 0.001, "min", "gaussian-ot", "b")
    other_metric = register_if_champion(store.uri, store.model_uri, name, "kid", 0.001, "min", "toy", "c")
    assert not other_data.became_champion and not other_metric.became_champion
    assert other_data.previous_champion == "1" and "not comparable" in other_data.reason
    assert _champion(store, name) == "1"
    assert _versions_tags(store, name, "2")["dataset"] == "gaussian-ot"
    assert register_if_champion(store.uri, store.model_uri, name, "fd", 0.9, "min", "toy", "d").became_champion
    assert _champion(store, name) == "4"


def test_default_model_names_and_bad_mode(store) -> None:
    assert default_model_name("ffhq-alae", "adult2child") == "dmf-ffhq-adult2child"
    assert default_model_name("toy", None) == "dmf-toy"
    assert default_model_name("gaussian-ot", None) == "dmf-gaussian-ot"
    with pytest.raises(UserInputError, match="mode"):
        register_if_champion(store.uri, store.model_uri, "x", "fd", 1.0, "lowest", "toy", "s")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- infer CLI


def _cli(store: Store, tmp_path: Path, model: str, x: object = None, *, input_path: Path | None = None) -> tuple[list[str], Path]:
    if input_path is None:
        input_path = tmp_path / "in.npy"
        np.save(input_path, x)
    out = tmp_path / "sub" / "out.npy"
    return ["--model", model, "--input", str(input_path), "--output", str(out), "--tracking-uri", store.uri,
            "--batch-size", "7"], out


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_infer_cli_translates_and_writes_float32(store, tmp_path, capsys, dtype) -> None:
    x = _x(20).astype(dtype)
    argv, out = _cli(store, tmp_path, f"models:/{NAME}@champion", x)
    assert infer_main(argv) == 0
    y = np.load(out)
    translator = dmf_ray.load_model(str(store.weights))
    assert y.dtype == np.float32 and y.shape == (20, DIM)
    np.testing.assert_array_equal(y, translator.translate(x, batch_size=7))  # same batches: same bits
    np.testing.assert_allclose(y, translator.translate(x), rtol=1e-5, atol=1e-6)
    printed = capsys.readouterr()
    assert "translated 20 rows" in printed.out and printed.out.count("\n") == 1 and printed.err == ""
    assert [p.name for p in out.parent.iterdir()] == ["out.npy"]  # no temp file left


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[str, object, str]]:
    nan = _x()
    nan[4, 1] = np.nan
    trunc = tmp_path / "trunc.npy"
    np.save(trunc, _x(200))
    trunc.write_bytes(trunc.read_bytes()[:300])
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    champion = f"models:/{NAME}@champion"
    return {
        "wide": (champion, _x(dim=DIM + 2), "columns"),
        "int": (champion, np.arange(12).reshape(2, DIM), "dtype int64"),
        "nan": (champion, nan, "non-finite"),
        "1d": (champion, np.zeros(3, np.float32), "2-D"),
        "missing": (champion, tmp_path / "nope.npy", "no such file"),
        "truncated": (champion, trunc, "not a readable .npy"),
        "pickled": (champion, objects, "pickle"),
        "no-model": ("models:/dmf-nothing@champion", _x(), "no registered model"),
        "no-alias": (f"models:/{NAME}@staging", _x(), "no alias 'staging'"),
        "no-version": (f"models:/{NAME}/42", _x(), "no version '42'"),
    }


@pytest.mark.parametrize("case", ["wide", "int", "nan", "1d", "missing", "truncated", "pickled", "no-model",
                                  "no-alias", "no-version"])
def test_infer_cli_bad_input_exits_2_with_one_line_and_writes_nothing(store, tmp_path, capsys, case) -> None:
    model, data, words = _bad_inputs(tmp_path)[case]
    if isinstance(data, Path):
        argv, out = _cli(store, tmp_path, model, input_path=data)
        named = str(data)
    else:
        argv, out = _cli(store, tmp_path, model, data)
        named = str(tmp_path / "in.npy")
    assert infer_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err
    assert (model if case.startswith("no-") else named) in err
    assert not out.exists() and not out.parent.exists()


def test_infer_cli_config_errors(store, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv, out = _cli(store, tmp_path, f"models:/{NAME}@champion", _x())
    no_uri = argv[:-4] + argv[-2:]  # drop --tracking-uri
    assert infer_main(no_uri) == 2
    assert "tracking_uri" in capsys.readouterr().err
    assert infer_main(argv[:-4] + ["--tracking-uri", str(tmp_path / "missing.db")] + argv[-2:]) == 2
    err = capsys.readouterr().err
    assert "no MLflow database" in err and not (tmp_path / "missing.db").exists()
    assert infer_main(argv[:-1] + ["0"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert infer_main(["--model", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: arguments:")
    assert not out.exists()


def test_infer_cli_subprocess_unknown_alias_is_one_clean_line(store, tmp_path) -> None:
    argv, out = _cli(store, tmp_path, f"models:/{NAME}@retired", _x())
    proc = subprocess.run([sys.executable, "-m", "dmf_ray.infer", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert f"models:/{NAME}@retired" in proc.stderr and "no alias 'retired'" in proc.stderr
    assert not out.exists()

"""The sweep's persisted Optuna study: warm start, Pareto front, Optuna's own figures (real Optuna,
sqlite storage in tmp folders; the sweep-level path is in tests/test_sweep.py)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from dmf_ray.errors import ConfigError, UserInputError
from dmf_ray.platform.search_space import make_searcher, search_space_from_dict
from dmf_ray.platform.study import STUDY_FILE, finished_study, pareto_front, prepare_study, storage_url, study_figures

PNG = b"\x89PNG\r\n\x1a\n"
SPACE = {"params": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                    "friction.schedule": {"type": "categorical", "choices": ["linear", "cosine"]}},
         "fixed": {"steps": 20, "eval_every": 10}}


def _objective(trial: optuna.Trial) -> float:
    lr = trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
    shape = trial.suggest_categorical("friction.schedule", ["linear", "cosine"])
    return (lr - 3e-3) ** 2 + (0.1 if shape == "cosine" else 0.0)


def _finished_sweep(folder: Path, trials: int = 6, modes: tuple[str, ...] = ("min",)) -> None:
    prepare_study(folder, folder.name, modes)
    study = optuna.load_study(study_name=folder.name, storage=storage_url(folder))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if len(modes) == 1:
        study.optimize(_objective, n_trials=trials)
    else:
        study.optimize(lambda t: (_objective(t), t.params["optim.lr"] * 100 if "optim.lr" in t.params else 0.0), n_trials=trials)


def test_the_study_persists_in_the_sweep_folder(tmp_path: Path) -> None:
    _finished_sweep(tmp_path / "first")
    assert (tmp_path / "first" / STUDY_FILE).is_file()
    study = finished_study(tmp_path / "first")
    assert len(study.trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_warm_start_copies_the_finished_trials_once(tmp_path: Path) -> None:
    _finished_sweep(tmp_path / "first")
    assert prepare_study(tmp_path / "second", "second", ["min"], warm_start=tmp_path / "first") == 6
    assert prepare_study(tmp_path / "second", "second", ["min"], warm_start=tmp_path / "first") == 0  # reopened, not doubled
    second = optuna.load_study(study_name="second", storage=storage_url(tmp_path / "second"))
    first = finished_study(tmp_path / "first")
    assert sorted(t.value for t in second.trials) == sorted(t.value for t in first.trials)
    assert second.best_value == first.best_value  # TPE starts from the earlier sweep's best


def test_warm_start_refuses_a_missing_study_or_other_objectives(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="no Optuna study here"):
        prepare_study(tmp_path / "new", "new", ["min"], warm_start=tmp_path / "absent")
    _finished_sweep(tmp_path / "first")
    with pytest.raises(UserInputError, match=r"optimises \['minimize'\], this sweep \['max'\]"):
        prepare_study(tmp_path / "other", "other", ["max"], warm_start=tmp_path / "first")


def test_pareto_front_is_the_non_dominated_trials(tmp_path: Path) -> None:
    folder = tmp_path / "mo"
    prepare_study(folder, "mo", ["min", "min"])
    study = optuna.load_study(study_name="mo", storage=storage_url(folder))
    dist = {"x": optuna.distributions.FloatDistribution(0, 10)}
    for x, values in [(1, (1.0, 5.0)), (2, (2.0, 2.0)), (3, (3.0, 3.0)), (4, (4.0, 1.0))]:  # (3, 3) is dominated
        study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=dist, values=list(values)))
    front = pareto_front(folder, "mo")
    assert [p.values for p in front] == [(1.0, 5.0), (2.0, 2.0), (4.0, 1.0)]
    assert [p.params["x"] for p in front] == [1, 2, 4]


@pytest.mark.parametrize("modes", [("min",), ("min", "min")])
def test_optuna_figures_are_written_as_png(tmp_path: Path, modes: tuple[str, ...]) -> None:
    _finished_sweep(tmp_path / "s", trials=8, modes=modes)
    figures = study_figures(tmp_path / "s", "s", ["val_fd", "train_seconds"][: len(modes)], tmp_path / "plots")
    assert set(figures) == {"optuna_history", "optuna_parallel_coordinate", "optuna_param_importances"}
    assert all(path.read_bytes()[:8] == PNG for path in figures.values())


def test_multi_objective_spaces(tmp_path: Path) -> None:
    spec = search_space_from_dict({**SPACE, "metrics": ["val_fd", "train_seconds"], "modes": ["min", "min"]})
    assert (spec.metric, spec.mode, spec.objectives) == ("val_fd", "min", (["val_fd", "train_seconds"], ["min", "min"]))
    searcher = make_searcher(spec, storage=storage_url(tmp_path), study_name="mo")
    assert searcher.metric == ["val_fd", "train_seconds"]
    for change, field in [({"metrics": ["val_fd", "test_fd"]}, "metrics"), ({"modes": ["min"]}, "modes"),
                          ({"scheduler": {"type": "asha"}}, "scheduler.type"), ({"metric": "val_energy"}, "metric")]:
        with pytest.raises(ConfigError) as caught:
            search_space_from_dict({**SPACE, "metrics": ["val_fd", "train_seconds"], **change})
        assert caught.value.field.startswith(field), caught.value
    with pytest.raises(ConfigError, match="modes: needs metrics"):
        search_space_from_dict({**SPACE, "modes": ["min", "max"]})


def test_a_restored_searcher_may_re_report_a_trial_the_study_already_finished(tmp_path: Path) -> None:
    """After a driver crash Tune restores a searcher snapshot older than the sqlite study; the
    re-reported result of a trial that finished in between is dropped, not a sweep failure."""
    import pickle

    spec = search_space_from_dict(SPACE)
    prepare_study(tmp_path, "s", ["min"])
    searcher = make_searcher(spec, storage=storage_url(tmp_path), study_name="s")
    assert searcher.suggest("t1") is not None
    snapshot = pickle.dumps(searcher)  # what Tune's experiment state held
    searcher.on_trial_complete("t1", {"val_fd": 0.5, "step": 20})
    restored = pickle.loads(snapshot)
    restored.on_trial_result("t1", {"val_fd": 0.5, "step": 20, "training_iteration": 2})
    restored.on_trial_complete("t1", {"val_fd": 0.5, "step": 20})
    trials = finished_study(tmp_path).trials
    assert [(t.state, t.value) for t in trials] == [(optuna.trial.TrialState.COMPLETE, 0.5)]

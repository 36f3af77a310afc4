"""The sweep's Optuna study on disk: persisted, warm-startable, plotted, with its Pareto front.

Why an RDB study in the sweep folder: Tune's own searcher state is crash recovery for *this*
sweep (``Tuner.restore``); the study in ``<sweep>/optuna.db`` is what a later sweep can learn from.
``--warm-start SWEEP`` copies the finished trials of an earlier sweep's study into the new one
before any trial runs, so TPE starts from that history (a new experiment, not a resume).
Figures come from Optuna's own matplotlib backend.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import optuna
from ray.tune.search.optuna import OptunaSearch

from dmf_ray.errors import UserInputError

STUDY_FILE = "optuna.db"


class PersistentOptunaSearch(OptunaSearch):
    """Tune's OptunaSearch over a study on disk, which may run ahead of Tune's snapshot.

    After a driver crash, ``Tuner.restore`` brings back Tune's last experiment snapshot (seconds
    old), while the sqlite study already holds what happened since: a trial that finished
    before the crash is COMPLETE there, and the restored trial re-reports its result. Optuna
    refuses to update a finished trial; what it would record is already recorded, so the
    repeated report is dropped instead of failing the sweep.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        try:
            super().on_trial_complete(trial_id, result, error)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass


def storage_url(folder: str | Path) -> str:
    """The sqlite URL of the study file in a sweep folder."""
    return f"sqlite:///{Path(folder).resolve() / STUDY_FILE}"


def _directions(modes: Sequence[str]) -> list[optuna.study.StudyDirection]:
    return [optuna.study.StudyDirection.MINIMIZE if m == "min" else optuna.study.StudyDirection.MAXIMIZE for m in modes]


def finished_study(folder: str | Path) -> optuna.Study:
    """The study a finished sweep left in ``folder``; UserInputError naming the file otherwise."""
    path = Path(folder) / STUDY_FILE
    if not path.is_file():
        raise UserInputError(f"{path}: no Optuna study here (is {folder} a sweep folder of this version?)")
    storage = optuna.storages.RDBStorage(storage_url(folder))
    names = optuna.study.get_all_study_names(storage)
    if len(names) != 1:
        raise UserInputError(f"{path}: expected one study, found {len(names)}")
    return optuna.load_study(study_name=names[0], storage=storage)


def prepare_study(folder: str | Path, name: str, modes: Sequence[str], warm_start: str | Path | None = None) -> int:
    """Create (or reopen) the sweep's study in ``folder``; with ``warm_start`` (an earlier sweep
    folder) copy that study's completed trials in once. Returns the number of trials copied.

    A warm start needs the same number and directions of objectives: a history minimised for
    another goal would steer TPE the wrong way.
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=storage_url(folder), study_name=name, load_if_exists=True,
                                directions=[d.name.lower() for d in _directions(modes)])
    if warm_start is None or study.trials:
        return 0
    source = finished_study(warm_start)
    if list(source.directions) != _directions(modes):
        have = [d.name.lower() for d in source.directions]
        raise UserInputError(f"--warm-start {warm_start}: its study optimises {have}, this sweep {list(modes)}")
    done = [t for t in source.trials if t.state == optuna.trial.TrialState.COMPLETE]
    study.add_trials(done)
    return len(done)


@dataclass(frozen=True)
class ParetoPoint:
    """One trial on the front: Optuna's trial number, its objective values and params."""

    number: int
    values: tuple[float, ...]
    params: dict


def pareto_front(folder: str | Path, name: str) -> list[ParetoPoint]:
    """The non-dominated completed trials of a multi-objective study, by their first objective."""
    study = optuna.load_study(study_name=name, storage=storage_url(folder))
    front = [ParetoPoint(t.number, tuple(t.values), dict(t.params)) for t in study.best_trials]
    return sorted(front, key=lambda p: p.values)


def study_figures(folder: str | Path, name: str, metrics: Sequence[str], out_dir: str | Path) -> dict[str, Path]:
    """Optuna's optimisation history, parameter importances and parallel coordinates as PNG
    (for the first objective of a multi-objective study); only those the trials allow (the
    importances need two completed trials that differ in a param)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    study = optuna.load_study(study_name=name, storage=storage_url(folder))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                and all(math.isfinite(v) for v in t.values)]
    if not complete:
        return {}
    target = {"target": lambda t: t.values[0], "target_name": metrics[0]} if len(study.directions) > 1 else {"target_name": metrics[0]}
    plots = {"optuna_history": optuna_plots.plot_optimization_history,
             "optuna_parallel_coordinate": optuna_plots.plot_parallel_coordinate}
    varied = any(len({repr(t.params.get(key)) for t in complete}) > 1 for key in complete[0].params)
    if len(complete) >= 2 and varied:
        plots["optuna_param_importances"] = optuna_plots.plot_param_importances
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    for key, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)  # few-trial importance and flat-axis notes
            ax = plot(study, **target)
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figures[key] = out / f"{key}.png"
        figure.savefig(figures[key], dpi=100)
        plt.close(figure)
    return figures

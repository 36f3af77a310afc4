"""Search-space files: loading, validation errors, define-by-run conditions, labelled choices, Tune objects.

No Ray cluster is started: OptunaSearch and ASHAScheduler are plain objects until a Tuner runs.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import optuna
import pytest

from dmf_ray.trainer.config import load_train_config, read_yaml_mapping
from dmf_ray.errors import ConfigError, DataError
from dmf_ray.platform.search_space import (
    SearchSpec,
    DefineByRun,
    is_active,
    load_search_space,
    make_scheduler,
    make_searcher,
    population_space,
    search_space_from_dict,
    trial_overrides,
)

REPO = Path(__file__).resolve().parents[1]
SPACES = REPO / "search_spaces"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def valid_raw() -> dict[str, Any]:
    """A small valid spec that every invalid case below breaks in one place."""
    return {
        "metric": "val_fd",
        "mode": "min",
        "num_samples": 4,
        "max_concurrent": 2,
        "sampler": {"type": "tpe", "seed": 0, "n_startup_trials": 2},
        "scheduler": {"type": "asha", "grace_period": 30, "reduction_factor": 2},
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
        "fixed": {"steps": 100, "eval_every": 10},
        "params": {
            "friction.schedule": {"type": "categorical", "choices": ["linear", "power"]},
            "friction.power": {
                "type": "float", "low": 0.5, "high": 3.0, "log": True, "when": {"friction.schedule": "power"},
            },
            "drift.temperatures": {"type": "categorical", "choices": {"a": [0.05], "ab": [0.05, 0.2]}},
            "batch_size": {"type": "int", "low": 64, "high": 256, "step": 64},
        },
    }


def test_valid_raw_loads_with_resolved_scheduler() -> None:
    spec = search_space_from_dict(valid_raw())
    assert isinstance(spec, SearchSpec)
    assert list(spec.params) == ["friction.schedule", "friction.power", "drift.temperatures", "batch_size"]
    assert spec.scheduler.max_t == 100  # defaults to fixed steps
    assert spec.params["friction.power"].when == {"friction.schedule": ("power",)}


@pytest.mark.parametrize("name", ["friction", "kernel", "full"])
def test_shipped_spaces_load(name: str) -> None:
    spec = load_search_space(SPACES / f"{name}.yaml")
    assert spec.metric == "val_fd" and spec.mode == "min"
    assert spec.scheduler.type == "asha" and spec.scheduler.grace_period < spec.scheduler.max_t
    assert spec.params


def test_friction_defaults_are_cheap() -> None:
    spec = load_search_space(SPACES / "friction.yaml")
    cfg = load_train_config(None, spec.fixed)
    assert cfg.data.name == "toy" and 600 <= cfg.steps <= 1000 and cfg.eval_every == 100
    assert cfg.batch_size == 512 and cfg.model.width == 128
    assert (spec.num_samples, spec.max_concurrent) == (6, 2)
    assert (spec.resources.workers, spec.resources.cpus_per_worker) == (1, 1)
    assert spec.scheduler.grace_period == 300 and spec.scheduler.max_t == cfg.steps


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """Mutation setting raw[a][b]... = value for path "a/b" (param names hold dots, so "/" splits)."""

    def apply(raw: dict) -> None:
        parts = path.split("/")
        node = raw
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value

    return apply


def _delete(path: str) -> Callable[[dict], None]:
    def apply(raw: dict) -> None:
        parts = path.split("/")
        node = raw
        for part in parts[:-1]:
            node = node[part]
        del node[parts[-1]]

    return apply


def _add_param(name: str, body: dict) -> Callable[[dict], None]:
    def apply(raw: dict) -> None:
        raw["params"][name] = body

    return apply


INVALID: list[tuple[str, Callable[[dict], None], str, str]] = [
    # (id, mutation, expected field, text the message must contain)
    ("unknown top-level key", _set("metrc", "val_fd"), "metrc", "unknown key"),
    ("unknown param key", _set("params/friction.power/lo", 0.1), "params.friction.power.lo", "unknown key"),
    ("unknown sampler key", _set("sampler/n_startup", 3), "sampler.n_startup", "unknown key"),
    ("unknown scheduler key", _set("scheduler/grace", 3), "scheduler.grace", "unknown key"),
    ("wrong type num_samples", _set("num_samples", "8"), "num_samples", "integer"),
    ("wrong type bound", _set("params/friction.power/high", "1e-4"), "params.friction.power.high", "1.0e-4"),
    ("low >= high", _set("params/friction.power/low", 3.0), "params.friction.power.low", "< high"),
    ("log with low <= 0", _set("params/friction.power/low", 0.0), "params.friction.power.low", "log"),
    ("tau <= 0 in choices", _set("params/drift.temperatures/choices", {"zero": [0.0]}),
     "params.drift.temperatures.choices", "drift.temperatures"),
    ("empty temperature list", _set("params/drift.temperatures/choices", {"none": []}),
     "params.drift.temperatures.choices", "drift.temperatures: must not be empty"),
    ("list choice without a label", _set("params/drift.temperatures/choices", [[0.05], [0.2]]),
     "params.drift.temperatures.choices", "label"),
    ("empty choices", _set("params/drift.temperatures/choices", []), "params.drift.temperatures.choices", "empty"),
    ("schedule param out of domain",
     _add_param("friction.midpoint", {"type": "float", "low": 0.5, "high": 1.5}),
     "params.friction.midpoint.high", "friction.midpoint"),
    ("schedule choice misspelt", _set("params/friction.schedule/choices", ["linear", "power", "linearr"]),
     "params.friction.schedule.choices", "friction.schedule"),
    ("unknown config key", _add_param("friction.powr", {"type": "float", "low": 1.0, "high": 2.0}),
     "params.friction.powr", "friction.powr"),
    ("section as key", _add_param("drift", {"type": "categorical", "choices": [{}]}), "params.drift", "section"),
    ("workers < 1", _set("resources/workers", 0), "resources.workers", ">= 1"),
    ("when unknown param", _set("params/friction.power/when", {"friction.shape": "power"}),
     "params.friction.power.when", "friction.shape"),
    ("when refers to later param", _set("params/friction.power/when", {"batch_size": 64}),
     "params.friction.power.when", "batch_size"),
    ("when value not a choice", _set("params/friction.power/when", {"friction.schedule": "cosine"}),
     "params.friction.power.when", "cosine"),
    ("fixed value rejected", _set("fixed/steps", 1), "fixed.steps", "steps: must be >= 2"),
    ("fixed unknown key", _set("fixed/optim.learning_rate", 0.1), "fixed.optim.learning_rate", "unknown"),
    ("param also fixed", _set("fixed/batch_size", 128), "params.batch_size", "fixed"),
    ("grace >= max_t", _set("scheduler/grace_period", 100), "scheduler.grace_period", "max_t"),
    ("sampler type", _set("sampler/type", "cmaes"), "sampler.type", "tpe"),
    ("random sampler has no startup", _set("sampler", {"type": "random", "n_startup_trials": 3}),
     "sampler.n_startup_trials", "unknown key"),
    ("metric unknown", _set("metric", "accuracy"), "metric", "val_fd"),
    ("metric on the test split", _set("metric", "test_fd"), "metric", "test-split score; a sweep chooses on validation (use 'val_fd')"),
    ("kid without eval_kid", _set("metric", "val_kid"), "metric", "eval_kid"),
    ("mode", _set("mode", "minimise"), "mode", "min"),
    ("num_samples < 1", _set("num_samples", 0), "num_samples", ">= 1"),
    ("max_concurrent < 1", _set("max_concurrent", 0), "max_concurrent", ">= 1"),
    ("int step off grid", _set("params/batch_size/high", 250), "params.batch_size.high", "multiple"),
    ("params missing", _delete("params"), "params", "required"),
    ("param type missing", _delete("params/batch_size/type"), "params.batch_size.type", "required"),
]


@pytest.mark.parametrize(("mutate", "field", "text"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_specs_name_the_key(mutate: Callable[[dict], None], field: str, text: str) -> None:
    raw = valid_raw()
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        search_space_from_dict(raw, source="case.yaml")
    assert info.value.field == field, str(info.value)
    message = str(info.value)
    assert message.startswith(f"{field}: ") and text in message and "(in case.yaml)" in message


def test_malformed_or_missing_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: {friction.schedule: [linear\n")
    with pytest.raises(DataError, match="bad.yaml: malformed YAML"):
        load_search_space(bad)
    with pytest.raises(DataError, match="missing.yaml"):
        load_search_space(tmp_path / "missing.yaml")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("params:\n  friction.schedule: {type: categorical, choices: [linearr]}\n")
    with pytest.raises(ConfigError, match=r"^params\.friction\.schedule\.choices: .*typo\.yaml"):
        load_search_space(path)


def test_define_by_run_respects_when_over_many_asks() -> None:
    spec = load_search_space(SPACES / "friction.yaml")
    space = DefineByRun(spec)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=10))
    conditional = {
        "friction.power": {"power"},
        "friction.midpoint": {"sigmoid"},
        "friction.steepness": {"sigmoid"},
        "friction.breakpoints": {"step"},
        "friction.levels": {"step"},
        "friction.warmup": {"warmup_linear"},
    }
    seen = set()
    for i in range(30):
        trial = study.ask()
        assert space(trial) is None  # no constants: the fixed keys are the sweep's to merge, once
        params = trial.params
        schedule = params["friction.schedule"]
        seen.add(schedule)
        for name, schedules in conditional.items():
            assert (name in params) == (schedule in schedules), (name, params)
        assert "friction.order" in params
        cfg = load_train_config(None, {**spec.fixed, **trial_overrides(spec, params)})
        assert cfg.friction.schedule == schedule
        study.tell(trial, float(i % 7))
    assert {"power", "sigmoid", "step"} <= seen


def test_list_choices_are_suggested_by_label_and_resolved_into_train_config() -> None:
    spec = load_search_space(SPACES / "kernel.yaml")
    space = DefineByRun(spec)
    temperatures = spec.params["drift.temperatures"]
    assert all(isinstance(label, str) for label in temperatures.options)
    assert any(len(temperatures.value(label)) > 1 for label in temperatures.options)
    for label in temperatures.options:
        trial = optuna.trial.FixedTrial(
            {"drift.kernel": "gaussian", "drift.temperatures": label, "drift.normalization": "row",
             "drift.distance_norm": True, "drift.drift_norm": True}
        )
        assert space(trial) is None
        assert ("drift.drift_norm" in trial.params) == (len(temperatures.value(label)) > 1)
        cfg = load_train_config(None, {**spec.fixed, **trial_overrides(spec, trial.params)})
        assert cfg.drift.temperatures == tuple(temperatures.value(label))
        assert cfg.drift.kernel == "gaussian" and cfg.steps == spec.fixed["steps"]
    # Scalars pass through unchanged; labels become their values; the input is not touched.
    config = {"drift.kernel": "laplace", "drift.temperatures": "t05_2"}
    before = copy.deepcopy(config)
    assert trial_overrides(spec, config) == {"drift.kernel": "laplace", "drift.temperatures": [0.05, 0.2]}
    assert config == before
    with pytest.raises(ConfigError, match=r"^steps: is not a searched param"):
        trial_overrides(spec, {"steps": 3})


def _suggestions(spec: SearchSpec, n: int = 6) -> list[dict[str, Any]]:
    searcher = make_searcher(spec)
    return [searcher.suggest(f"trial-{i}") for i in range(n)]


def test_make_searcher_and_scheduler() -> None:
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler
    from ray.tune.search.optuna import OptunaSearch

    spec = load_search_space(SPACES / "friction.yaml")
    searcher = make_searcher(spec)
    assert isinstance(searcher, OptunaSearch)
    assert (searcher.metric, searcher.mode) == ("val_fd", "min")
    config = searcher.suggest("trial-1")
    assert "friction.schedule" in config and not set(config) & set(spec.fixed)
    assert load_train_config(None, {**spec.fixed, **trial_overrides(spec, config)}).steps == spec.fixed["steps"]
    # The sampler is seeded: the same spec suggests the same trials, another seed others.
    assert _suggestions(spec) == _suggestions(spec)
    assert _suggestions(spec) != _suggestions(replace(spec, sampler=replace(spec.sampler, seed=1)))

    # ASHA counts "step", minimises fd, first rung at grace_period 300, stops at max_t = steps.
    scheduler = make_scheduler(spec)
    assert isinstance(scheduler, ASHAScheduler) and scheduler.metric == "val_fd"
    good, bad, late = (SimpleNamespace(trial_id=t) for t in ("good", "bad", "late"))
    for trial in (good, bad, late):
        scheduler.on_trial_add(None, trial)
    on_result = scheduler.on_trial_result
    assert on_result(None, good, {"step": 300, "val_fd": 1.0}) == TrialScheduler.CONTINUE
    assert on_result(None, bad, {"step": 299, "val_fd": 9.0}) == TrialScheduler.CONTINUE  # before the rung
    assert on_result(None, bad, {"step": 300, "val_fd": 2.0}) == TrialScheduler.STOP  # worse at the rung
    assert on_result(None, late, {"step": 300, "val_fd": 0.5}) == TrialScheduler.CONTINUE  # better
    assert on_result(None, late, {"step": spec.fixed["steps"], "val_fd": 0.1}) == TrialScheduler.STOP  # max_t

    raw = valid_raw()
    raw.update(metric="val_transport_cost", mode="max", sampler={"type": "random", "seed": 3}, scheduler={"type": "none"})
    other = search_space_from_dict(raw)
    assert make_scheduler(other) is None
    searcher = make_searcher(other)
    assert (searcher.metric, searcher.mode) == ("val_transport_cost", "max")
    # type: random draws exactly what Optuna's RandomSampler(seed=3) draws over the same space.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    expected = []
    for _ in range(4):
        trial = study.ask()
        DefineByRun(other)(trial)
        expected.append(trial.params)
    assert _suggestions(other, 4) == expected


def test_when_forms_for_list_and_numeric_params() -> None:
    raw = valid_raw()
    raw["params"] = {
        "drift.temperatures": {"type": "categorical", "choices": {"a": [0.05], "b": [0.2], "ab": [0.05, 0.2]}},
        "drift.drift_norm": {"type": "categorical", "choices": [False, True], "when": {"drift.temperatures": "ab"}},
        "drift.kernel": {"type": "categorical", "choices": ["laplace", "gaussian"],
                         "when": {"drift.temperatures": ["a", "b"]}},
        "batch_size": {"type": "int", "low": 64, "high": 256, "step": 64},
        "optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True, "when": {"batch_size": [64, 128]}},
    }
    spec = search_space_from_dict(raw)
    norm, kernel, lr = spec.params["drift.drift_norm"], spec.params["drift.kernel"], spec.params["optim.lr"]
    assert norm.when == {"drift.temperatures": ("ab",)}  # one label
    assert kernel.when == {"drift.temperatures": ("a", "b")}  # any of two labels
    assert is_active(norm, {"drift.temperatures": "ab"}) and not is_active(norm, {"drift.temperatures": "b"})
    assert is_active(kernel, {"drift.temperatures": "b"}) and not is_active(kernel, {})
    assert is_active(lr, {"batch_size": 128}) and not is_active(lr, {"batch_size": 192})

    raw["params"]["drift.kernel"]["when"] = {"drift.temperatures": [[0.05]]}  # a value, not a label
    with pytest.raises(ConfigError, match=r"^params\.drift\.kernel\.when: drift\.temperatures: \[0\.05\] is not a value"):
        search_space_from_dict(raw)
    raw["params"]["drift.kernel"]["when"] = {"drift.temperatures": ["a", "b"]}

    raw["params"]["optim.lr"]["when"] = {"batch_size": [64, 100]}
    with pytest.raises(ConfigError, match=r"^params\.optim\.lr\.when: batch_size: 100"):
        search_space_from_dict(raw)


@pytest.mark.parametrize("kind", ["pbt", "pb2"])
def test_population_based_schedulers_perturb_the_friction_level(kind: str) -> None:
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.schedulers.pb2 import PB2
    from ray.tune.search.basic_variant import BasicVariantGenerator

    raw = read_yaml_mapping(SPACES / "friction_pbt.yaml")
    raw["scheduler"]["type"] = kind
    spec = search_space_from_dict(raw)
    assert spec.scheduler.perturbation_interval == 100 and spec.fixed["friction.schedule"] == "constant"
    scheduler = make_scheduler(spec)
    assert isinstance(scheduler, PB2 if kind == "pb2" else PopulationBasedTraining) and scheduler.metric == "val_fd"
    assert isinstance(make_searcher(spec), BasicVariantGenerator)  # Tune's PBT takes no search algorithm
    space = population_space(spec)
    assert set(space) == {"friction.level"} and 0.0 <= space["friction.level"].sample() <= 1.0
    if kind == "pbt":  # PBT's x1.2 / x0.8 explore step stays inside the param's range
        assert scheduler._custom_explore_fn({"friction.level": 1.15}) == {"friction.level": 1.0}


@pytest.mark.parametrize(("change", "field", "problem"), [
    ({"scheduler": {"type": "pbt", "mutate": ["optim.lr"]}}, "scheduler.mutate", "must be a float param"),
    ({"scheduler": {"type": "pbt", "perturbation_interval": 150}}, "scheduler.perturbation_interval", "multiple of eval_every"),
    ({"params": {"friction.level": {"type": "float", "low": 0.0, "high": 1.0, "when": {"friction.order": "first"}},
                 "friction.order": {"type": "categorical", "choices": ["first"]}}}, "params.friction.level.when", None),
])
def test_population_based_sweeps_are_checked_at_load(change: dict, field: str, problem: str | None) -> None:
    raw = {**read_yaml_mapping(SPACES / "friction_pbt.yaml"), **change}
    with pytest.raises(ConfigError) as caught:
        search_space_from_dict(raw)
    assert caught.value.field == field and (problem is None or problem in caught.value.problem), caught.value

"""The edge: plain data -> validated config objects, and pydantic's errors as one-line messages.

Every rule of every section is checked here, through the functions the CLIs, Tune trials and
checkpoints use (``load_train_config``, ``train_config_from_dict``, ``search_space_from_dict``);
the core constructors are not asked to re-check anything.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from dmf_ray.core.drift import PRESETS, DriftConfig, make_drift_config
from dmf_ray.core.models import GeneratorConfig
from dmf_ray.errors import ConfigError
from dmf_ray.platform.search_space import search_space_from_dict, trial_overrides
from dmf_ray.trainer.config import TrainConfig, load_train_config, train_config_from_dict


def _error(overrides: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_train_config(None, overrides)
    assert "\n" not in str(info.value)
    return info.value


# --------------------------------------------------------------------------- exact messages


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"steps": "ten"}, "steps: must be an integer, got 'ten'"),
        ({"steps": 1}, "steps: must be >= 2, got 1"),
        ({"batch_size": True}, "batch_size: must be an integer, got True"),
        ({"optim": {"lr": [0.001, 0.01]}}, "optim.lr: must be a number, got [0.001, 0.01]"),
        ({"optim": {"lr": "1e-4"}},
         "optim.lr: must be a number, got '1e-4' (YAML reads numbers like 1e-4 as strings; write 1.0e-4)"),
        ({"optim": 0.001}, "optim: must be a mapping, got float"),
        ({"drift": {"temperatures": []}}, "drift.temperatures: must not be empty"),
        ({"drift": {"temperatures": [0.1, -0.2]}}, "drift.temperatures: must be > 0.0, got -0.2"),
        ({"model": {"dim": 3}}, "model.dim: must not be set: it is taken from the data"),
        ({"device": "tpu"}, "device: must be 'cpu' or 'cuda[:N]', got 'tpu'"),
        ({"data": {"name": "ffhq-alae"}}, "data.data_dir: required when name is 'ffhq-alae'"),
        ({"optim": {"weight_decay": float("nan")}}, "optim.weight_decay: must be a finite number, got nan"),
        ({"drift": {"preset": "nope"}}, "drift.preset: must be one of ['paper', 'reference', 'toy'], got 'nope'"),
    ],
)
def test_messages_name_the_dotted_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        train_config_from_dict(raw)
    assert str(info.value) == message
    assert info.value.field == message.split(":")[0]


def test_unknown_keys_at_every_level_list_the_known_ones() -> None:
    top = _error({"stepz": 10})
    assert top.field == "stepz" and str(top).startswith("stepz: unknown key (known: batch_size, data, device,")
    for section, key in (("data", "nme"), ("model", "hidden"), ("drift", "tau"), ("friction", "powr"),
                         ("optim", "momentum"), ("eval", "decodr"), ("ofm", "steps")):
        err = _error({f"{section}.{key}": 1})
        assert err.field == f"{section}.{key}" and "unknown key (known: " in str(err), str(err)
    assert "temperatures" in str(_error({"drift": {"preset": "toy", "tau": 1}}))


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^config: must be a mapping, got list$"):
        train_config_from_dict([("steps", 3)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^steps: is not a section$"):
        load_train_config(None, {"steps": 3, "steps.x": 1})


# --------------------------------------------------------------------------- strict types


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"steps": "100"}, "steps", "must be an integer"),  # string for int
        ({"seed": True}, "seed", "must be an integer"),  # bool for int
        ({"data.n_test": False}, "data.n_test", "must be an integer"),
        ({"model.depth": 2.0}, "model.depth", "must be an integer"),  # float for int
        ({"friction.power": "2"}, "friction.power", "must be a number"),  # string for float
        ({"friction.power": True}, "friction.power", "must be a number"),  # bool for float
        ({"optim.lr": [0.1]}, "optim.lr", "must be a number"),  # list for float
        ({"drift.distance_norm": 1}, "drift.distance_norm", "must be true or false"),  # int for bool
        ({"ofm.ot_pairing": "yes"}, "ofm.ot_pairing", "must be true or false"),
        ({"friction.schedule": ["linear"]}, "friction.schedule", "must be one of"),
        ({"drift.temperatures": "0.2"}, "drift.temperatures", "must be a list"),
        ({"drift.temperatures": ["0.2"]}, "drift.temperatures", "must be a number"),
        ({"eval.clip_model": 3}, "eval.clip_model", "must be a string"),
    ],
)
def test_strict_types(overrides: dict[str, Any], field: str, text: str) -> None:
    err = _error(overrides)
    assert err.field == field and text in str(err), str(err)


def test_ints_for_floats_and_lists_for_tuples_are_accepted() -> None:
    cfg = load_train_config(None, {"friction.power": 3, "friction.schedule": "step", "friction.breakpoints": [0.5],
                                   "friction.levels": [1], "optim.betas": [0, 0.5], "drift.temperatures": 2})
    assert cfg.friction.power == 3.0 and isinstance(cfg.friction.power, float)
    assert cfg.friction.breakpoints == (0.5,) and cfg.friction.levels == (1.0,)
    assert cfg.optim.betas == (0.0, 0.5) and cfg.drift.temperatures == (2.0,)


# --------------------------------------------------------------------------- every section's domain


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        # data
        ({"data.name": "mnist"}, "data.name"),
        ({"data.dim": 0}, "data.dim"),
        ({"data.dim": 513}, "data.dim"),
        ({"data.n_train": 0}, "data.n_train"),
        ({"data.seed": -1}, "data.seed"),
        ({"data.direction": "old2young"}, "data.direction"),
        ({"data.name": "ffhq-alae", "data.data_dir": ""}, "data.data_dir"),
        # model
        ({"model.kind": "flow"}, "model.kind"),
        ({"model.kind": "noise", "model.noise_dim": -1}, "model.noise_dim"),
        ({"model.kind": "residual", "model.noise_dim": 3}, "model.noise_dim"),
        ({"model.kind": "icnn", "model.noise_dim": 3}, "model.noise_dim"),
        ({"model.kind": "icnn", "model.layer_norm": True}, "model.layer_norm"),
        ({"model.width": 0}, "model.width"),
        ({"model.activation": "sigmoid"}, "model.activation"),
        # drift
        ({"drift.temperatures": (0.1, 0.0)}, "drift.temperatures"),
        ({"drift.temperatures": -1.0}, "drift.temperatures"),
        ({"drift.kernel": "cauchy"}, "drift.kernel"),
        ({"drift.normalization": "column"}, "drift.normalization"),
        ({"drift.chunk_size": 0}, "drift.chunk_size"),
        ({"drift.affinity_floor": 1.5}, "drift.affinity_floor"),
        ({"drift.sparse_max_density": 1.5}, "drift.sparse_max_density"),
        ({"drift.sparse_max_density": "all"}, "drift.sparse_max_density"),
        ({"drift.matmul_precision": "fp16"}, "drift.matmul_precision"),
        ({"drift.family": "wgf"}, "drift.family"),
        ({"drift.family": None}, "drift.family"),
        ({"drift.sinkhorn_epsilon": 0.0}, "drift.sinkhorn_epsilon"),
        ({"drift.sinkhorn_epsilon": float("inf")}, "drift.sinkhorn_epsilon"),
        ({"drift.sinkhorn_iterations": 0}, "drift.sinkhorn_iterations"),
        ({"drift.sinkhorn_iterations": 2.5}, "drift.sinkhorn_iterations"),
        # friction
        ({"friction.schedule": "exponential"}, "friction.schedule"),
        ({"friction.order": "third"}, "friction.order"),
        ({"friction.power": 0.0}, "friction.power"),
        ({"friction.midpoint": 0.0}, "friction.midpoint"),
        ({"friction.midpoint": 1.0}, "friction.midpoint"),
        ({"friction.steepness": 0.0}, "friction.steepness"),
        ({"friction.warmup": 1.0}, "friction.warmup"),
        ({"friction.warmup": -0.1}, "friction.warmup"),
        ({"friction.breakpoints": []}, "friction.breakpoints"),
        ({"friction.breakpoints": [0.0]}, "friction.breakpoints"),
        ({"friction.breakpoints": [1.0]}, "friction.breakpoints"),
        ({"friction.breakpoints": [0.6, 0.3], "friction.levels": [0.1, 0.2]}, "friction.breakpoints"),
        ({"friction.breakpoints": [0.3, 0.3], "friction.levels": [0.1, 0.2]}, "friction.breakpoints"),
        ({"friction.levels": [0.5, 0.6]}, "friction.levels"),
        ({"friction.levels": [1.5]}, "friction.levels"),
        ({"friction.breakpoints": [0.3, 0.6], "friction.levels": [0.6, 0.3]}, "friction.levels"),
        # optim
        ({"optim.lr": 0}, "optim.lr"),
        ({"optim.betas": [0.9]}, "optim.betas"),
        ({"optim.betas": [0.9, 1.0]}, "optim.betas"),
        ({"optim.grad_clip": 0}, "optim.grad_clip"),
        ({"optim.warmup_steps": -1}, "optim.warmup_steps"),
        ({"optim.name": "lbfgs"}, "optim.name"),
        # eval
        ({"eval.samples": 1}, "eval.samples"),
        ({"eval.decoder": "no_colon"}, "eval.decoder"),
        # ofm
        ({"ofm.inner_iterations": 0}, "ofm.inner_iterations"),
        ({"ofm.cg_iterations": 2.5}, "ofm.cg_iterations"),
        ({"ofm.t_min": -0.1}, "ofm.t_min"),
        ({"ofm.t_max": 1.5}, "ofm.t_max"),
        ({"ofm.ihv": "lu"}, "ofm.ihv"),
        # loop settings
        ({"pos_batch_size": 0}, "pos_batch_size"),
        ({"eval_every": 0}, "eval_every"),
        ({"eval_samples": 1}, "eval_samples"),
        ({"method": "flow"}, "method"),
    ],
)
def test_each_section_rejects_values_outside_its_domain(overrides: dict[str, Any], field: str) -> None:
    err = _error(overrides)
    assert err.field == field and str(err).startswith(f"{field}: "), str(err)


# --------------------------------------------------------------------------- cross-field rules


@pytest.mark.parametrize(
    ("overrides", "field", "text"),
    [
        ({"drift.family": "sharp", "friction.order": "second"}, "friction.order", "must be 'first' with drift.family 'sharp'"),
        ({"drift.family": "sharp", "friction.order": "hybrid"}, "friction.order", "must be 'first'"),
        ({"drift.family": "sharp", "drift.self_negatives": False}, "drift.self_negatives", "must be true"),
        ({"method": "ofm", "model.kind": "residual"}, "model.kind", "must be 'icnn' with method 'ofm'"),
        ({"eval.decoder": "pkg.mod:decode"}, "eval.decoder", "needs eval.clip_weights"),
        ({"eval.inception_weights": "/w.pt"}, "eval.decoder", "required when image weights"),
        ({"ofm.t_min": 0.6, "ofm.t_max": 0.5}, "ofm.t_max", "must be > t_min"),
        ({"friction.levels": [0.2, 0.4]}, "friction.levels", "one level per breakpoint"),
    ],
)
def test_cross_field_rules(overrides: dict[str, Any], field: str, text: str) -> None:
    err = _error(overrides)
    assert err.field == field and text in str(err), str(err)


def test_rules_accept_what_they_allow() -> None:
    from dmf_ray.core.drift import FAMILIES

    for family in FAMILIES:
        assert load_train_config(None, {"drift.family": family}).drift.family == family
        if family != "sharp":
            assert load_train_config(None, {"drift.family": family, "friction.order": "second"}).friction.order == "second"
    cfg = load_train_config(None, {"method": "ofm", "model.kind": "icnn", "eval.decoder": "m:f", "eval.clip_weights": "c"})
    assert cfg.method == "ofm" and cfg.eval.decoder == "m:f"
    assert GeneratorConfig(kind="icnn", dim=2, noise_dim=2).input_dim == 2


# --------------------------------------------------------------------------- presets, round trip


def test_preset_then_overrides() -> None:
    cfg = load_train_config(None, {"drift": {"preset": "reference", "temperatures": [0.3], "kernel": "gaussian"}})
    expected = replace(make_drift_config("reference"), temperatures=(0.3,), kernel="gaussian")
    assert cfg.drift == expected
    assert cfg.drift.affinity_floor == PRESETS["reference"]["affinity_floor"]
    # A preset only fills what the section leaves out, whatever the key order.
    flipped = load_train_config(None, {"drift": {"kernel": "gaussian", "temperatures": [0.3], "preset": "reference"}})
    assert flipped.drift == expected
    assert load_train_config(None, {"drift.preset": None}).drift == DriftConfig()


def test_round_trip_to_dict_and_back() -> None:
    cfg = load_train_config(None, {
        "data.name": "gaussian-ot", "data.dim": 8, "model.kind": "residual", "drift.preset": "paper",
        "drift.temperatures": [0.1, 0.4], "friction.schedule": "step", "friction.breakpoints": [0.2, 0.6],
        "friction.levels": [0.3, 0.9], "optim.grad_clip": 1, "eval_kid": True, "pos_batch_size": 64,
    })
    plain = cfg.to_dict()
    assert "dim" not in plain["model"] and plain["drift"]["temperatures"] == [0.1, 0.4]
    assert train_config_from_dict(plain) == cfg
    assert train_config_from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_checkpoint_metadata_edge_names_the_model_key() -> None:
    with pytest.raises(ConfigError, match=r"^model\.depth: must be >= 1, got 0$"):
        GeneratorConfig.from_dict({"dim": 2, "depth": 0})


# --------------------------------------------------------------------------- the search-space file

SPACE: dict[str, Any] = {
    "num_samples": 1,
    "max_concurrent": 1,
    "fixed": {"steps": 20, "eval_every": 10, "batch_size": 64},
    "params": {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
}


def _space_error(change: dict[str, Any], params: dict[str, Any] | None = None) -> ConfigError:
    raw = {**SPACE, **change, "params": {**SPACE["params"], **(params or {})}}
    with pytest.raises(ConfigError) as info:
        search_space_from_dict(raw, source="s.yaml")
    assert str(info.value).endswith(" (in s.yaml)") and "\n" not in str(info.value)
    return info.value


@pytest.mark.parametrize(
    ("change", "params", "message"),
    [
        ({}, {"optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "lgo": True}},
         "params.optim.lr.lgo: unknown key (known: high, log, low, step, type, when)"),
        ({"num_samples": 0}, None, "num_samples: must be >= 1, got 0"),
        ({"num_samples": "eight"}, None, "num_samples: must be an integer, got 'eight'"),
        ({}, {"optim.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "params.optim.lr.low: must be < high, got low=0.1, high=0.01"),
        ({}, {"optim.lr": {"type": "float", "low": 0.0, "high": 0.01, "log": True}},
         "params.optim.lr.low: must be > 0 with log: true, got 0.0"),
        ({}, {"optim.lr": {"type": "float", "low": "1e-4", "high": 0.01}},
         "params.optim.lr.low: must be a number, got '1e-4' (YAML reads numbers like 1e-4 as strings; write 1.0e-4)"),
        ({}, {"batch_size": {"type": "int", "low": 64, "high": 256, "step": 64}},
         "params.batch_size: is also set in fixed (fixed.batch_size); a key is either fixed or searched"),
        ({}, {"seed": {"type": "int", "low": 0, "high": 250, "step": 64}},
         "params.seed.high: high - low must be a multiple of step 64, got low=0, high=250"),
        ({}, {"seed": {"type": "int", "low": 0.0, "high": 4}}, "params.seed.low: must be an integer, got 0.0"),
        ({}, {"seed": {"low": 0, "high": 4}}, "params.seed.type: required: one of 'float', 'int', 'categorical'"),
        ({}, {"seed": {"type": "integer", "low": 0, "high": 4}},
         "params.seed.type: must be one of 'float', 'int', 'categorical', got 'integer'"),
        ({"fixed": {"steps": 1}}, None, "fixed.steps: rejected by the training config: steps: must be >= 2, got 1"),
        ({}, {"friction.warmup": {"type": "float", "low": 0.0, "high": 1.0}},
         "params.friction.warmup.high: 1.0 rejected by the training config: friction.warmup: must be < 1.0, got 1.0"),
        ({}, {"drift.temperatures": {"type": "categorical", "choices": {"ok": [0.2], "zero": [0.0]}}},
         "params.drift.temperatures.choices: 'zero' = [0.0] rejected by the training config: "
         "drift.temperatures: must be > 0.0, got 0.0"),
        ({"scheduler": {"type": "asha", "grace_period": 20}}, None,
         "scheduler.grace_period: must be < max_t = 20 training steps, got 20"),
        ({"scheduler": {"type": "asha", "reduction_factor": 1}}, None, "scheduler.reduction_factor: must be > 1.0, got 1"),
        ({"sampler": {"type": "cmaes"}}, None, "sampler.type: must be one of 'tpe', 'random', got 'cmaes'"),
        ({"sampler": {"type": "random", "n_startup_trials": 3}}, None,
         "sampler.n_startup_trials: unknown key (known: seed, type)"),
        ({"resources": {"cpus_per_worker": 0}}, None, "resources.cpus_per_worker: must be >= 0.05, got 0"),
        ({"metricz": "val_fd"}, None, "metricz: unknown key (known: checkpoint_every, fixed, max_concurrent, metric, metrics, mode, "
         "modes, num_samples, params, resources, sampler, scheduler)"),
    ],
)
def test_search_space_messages(change: dict[str, Any], params: dict[str, Any] | None, message: str) -> None:
    assert str(_space_error(change, params)) == f"{message} (in s.yaml)"


def test_search_space_defaults_and_discriminated_sections() -> None:
    spec = search_space_from_dict({"params": {"seed": {"type": "int", "low": 0, "high": 3}}})
    assert (spec.metric, spec.mode, spec.num_samples, spec.max_concurrent) == ("val_fd", "min", 8, 2)
    assert (spec.sampler.type, spec.sampler.n_startup_trials, spec.scheduler.type) == ("tpe", 10, "none")
    spec = search_space_from_dict({**SPACE, "sampler": {"seed": None}, "scheduler": {"type": "asha"}})
    assert spec.sampler.type == "tpe" and spec.sampler.seed is None  # type defaults to tpe
    assert (spec.scheduler.grace_period, spec.scheduler.max_t) == (10, 20)  # eval_every, fixed steps


def test_labelled_choices_resolve_to_their_values() -> None:
    spec = search_space_from_dict({**SPACE, "params": {
        "drift.temperatures": {"type": "categorical", "choices": {"a": [0.05], "ab": [0.05, 0.2]}},
        "drift.drift_norm": {"type": "categorical", "choices": [False, True], "when": {"drift.temperatures": "ab"}},
    }})
    temperatures = spec.params["drift.temperatures"]
    assert temperatures.options == ("a", "ab") and temperatures.value("ab") == [0.05, 0.2]
    overrides = trial_overrides(spec, {"drift.temperatures": "ab", "drift.drift_norm": False})
    assert overrides == {"drift.temperatures": [0.05, 0.2], "drift.drift_norm": False}
    cfg = load_train_config(None, {**spec.fixed, **overrides})
    assert cfg.drift.temperatures == (0.05, 0.2) and cfg.drift.drift_norm is False
    # `when` names a label, never a value; a list of values needs labels.
    bad = _space_error({}, {"drift.temperatures": {"type": "categorical", "choices": {"a": [0.05]}},
                            "drift.kernel": {"type": "categorical", "choices": ["laplace"], "when": {"drift.temperatures": [0.05]}}})
    assert bad.field == "params.drift.kernel.when" and "0.05 is not a value it can take (its choices ['a'])" in str(bad)
    unlabelled = _space_error({}, {"drift.temperatures": {"type": "categorical", "choices": [[0.05]]}})
    assert unlabelled.field == "params.drift.temperatures.choices" and "needs a label" in str(unlabelled)

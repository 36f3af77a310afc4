"""Hyperparameter search spaces for Ray Tune + Optuna sweeps: one YAML file, validated once.

Why here: a sweep is described by data -- what to search, what to keep fixed, how to sample and
when to stop trials early -- and a typo in it (``friction.powr``, ``schedule: linearr``,
``temperatures: [[0.0]]``) must fail when the file is loaded, with one line naming the key,
not an hour later inside a Ray worker. This module parses and validates such a file into typed
frozen dataclasses and turns it into the Optuna define-by-run function, the Tune searcher and
the ASHA scheduler. It knows nothing about how trials run (the sweep driver does that).

Schema (every section except ``params`` is optional; the defaults are shown in comments)::

    metric: fd            # fd | kid | l2_uvp | transport_cost             (default fd)
    mode: min             # min | max                                       (default min)
    num_samples: 8        # trials in the sweep, >= 1                      (default 8)
    max_concurrent: 2     # trials at once, >= 1                            (default 2)
    sampler: {type: tpe, seed: 0, n_startup_trials: 4}   # or {type: random, seed: 0}
                          # (default {type: tpe, seed: 0, n_startup_trials: 10}; seed may be null)
    scheduler: {type: asha, grace_period: 300, reduction_factor: 2, max_t: 1000}  # or {type: none}
                          # (default {type: none}). ASHA counts training steps: grace_period and
                          # max_t are steps; max_t defaults to the fixed ``steps`` (the largest
                          # value when ``steps`` is searched, else TrainConfig's default);
                          # grace_period defaults to ``eval_every``, reduction_factor to 2;
                          # grace_period must be < max_t.
    resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}   # Ray Train workers per trial
    fixed:                # dotted TrainConfig keys -> values, applied to every trial
      steps: 1000
      eval_every: 100
    params:               # searched, in order: a conditional param follows the params in its `when`
      friction.schedule: {type: categorical, choices: [linear, cosine, power, sigmoid, warmup_linear]}
      friction.power: {type: float, low: 0.3, high: 4.0, log: true, when: {friction.schedule: power}}
      friction.order: {type: categorical, choices: [first, second, hybrid]}
      drift.temperatures: {type: categorical, choices: [[0.05], [0.2], [0.05, 0.2]]}
      optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      batch_size: {type: int, low: 256, high: 2048, step: 256}

Param types:

* ``float``: ``low`` < ``high``, optional ``log`` (needs low > 0) or ``step`` (> 0), not both;
* ``int``: integer ``low`` < ``high``, optional ``log`` (low >= 1) or ``step`` (>= 1, and
  ``high - low`` a multiple of it), not both;
* ``categorical``: non-empty ``choices`` of any YAML values, lists included (Optuna only takes
  None/bool/int/float/str, so a list or mapping choice travels as the string ``"json:" + JSON``
  and :func:`trial_overrides` decodes it back).

``when: {other: value}`` or ``{other: [v1, v2]}`` -- the param is suggested only when the
earlier param ``other`` was suggested and took one of those values; several keys must all hold.
For a param whose choices are lists, a value equal to one choice means that choice, otherwise
a list means "any of". A param left out keeps TrainConfig's default.

Every name in ``fixed`` and ``params`` must be a real TrainConfig key (``section.field`` or a
loop key such as ``steps``), and every fixed value, bound and choice must be accepted by the
training config: loading builds one TrainConfig per extreme (each param at its low, its high and
each choice, the params it depends on set so that its ``when`` holds, every other param at its
first value) through :func:`dmf_ray.trainer.config.load_train_config`. Errors are
:class:`~dmf_ray.errors.ConfigError` whose field is the key path in the file, e.g.
``params.friction.power.low``, ``scheduler.grace_period``, ``fixed.steps``; a file that cannot
be read or parsed is a :class:`~dmf_ray.errors.DataError` naming the file.

Using it with Tune::

    spec = load_search_space("search_spaces/friction.yaml")
    tune_config = tune.TuneConfig(search_alg=make_searcher(spec), scheduler=make_scheduler(spec),
                                  num_samples=spec.num_samples,
                                  max_concurrent_trials=spec.max_concurrent)
    # inside a trial: cfg = load_train_config(None, trial_overrides(config))

The searcher and the ASHA scheduler already carry ``metric`` and ``mode``: do not pass them to
``TuneConfig`` as well while a scheduler is used (Tune rejects that); ask the result grid with
``get_best_result(metric=spec.metric, mode=spec.mode)``. The Tune config of a trial holds the
dotted names: the suggested params (list choices encoded) plus the fixed values.
"""

from __future__ import annotations

import copy
import json
import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from dmf_ray.trainer.config import TrainConfig, load_train_config, read_yaml_mapping
from dmf_ray.errors import ConfigError
from dmf_ray.eval.metrics import METRIC_NAMES

if TYPE_CHECKING:  # pragma: no cover - imported lazily at run time (Ray is slow to import)
    import optuna
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

METRICS: tuple[str, ...] = METRIC_NAMES
MODES: tuple[str, ...] = ("min", "max")
PARAM_TYPES: tuple[str, ...] = ("float", "int", "categorical")
SAMPLER_TYPES: tuple[str, ...] = ("tpe", "random")
SCHEDULER_TYPES: tuple[str, ...] = ("asha", "none")
# The Tune metric that ASHA counts in: the trainer reports "step" at every evaluation.
TIME_ATTR = "step"
# Prefix of an encoded (non-scalar) categorical choice in Optuna and in the Tune config.
ENCODED_PREFIX = "json:"

_TOP_KEYS = ("metric", "mode", "num_samples", "max_concurrent", "sampler", "scheduler", "resources", "fixed", "params")
_PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
_SAMPLER_KEYS: dict[str, tuple[str, ...]] = {
    "tpe": ("type", "seed", "n_startup_trials"),
    "random": ("type", "seed"),
}
_SCHEDULER_KEYS: dict[str, tuple[str, ...]] = {
    "asha": ("type", "grace_period", "reduction_factor", "max_t"),
    "none": ("type",),
}
_RESOURCE_KEYS = ("workers", "cpus_per_worker", "gpus_per_worker")
# A trial's own bookkeeping CPU (0.01) is taken from its workers' share: keep the share positive.
MIN_CPUS_PER_WORKER = 0.05
_DEFAULT_TPE_STARTUP = 10  # Optuna's own default
_DEFAULT_REDUCTION_FACTOR = 2.0


# ----------------------------------------------------------------------------------------------
# Typed specs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSpec:
    """One searched TrainConfig key (dotted ``name``).

    ``low``/``high``/``log``/``step`` apply to ``float`` and ``int``; ``choices`` (the plain
    YAML values, lists kept as lists) to ``categorical``. ``when`` maps earlier param names to
    the tuple of values any one of which enables this param.
    """

    name: str
    type: Literal["float", "int", "categorical"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    def is_active(self, chosen: Mapping[str, Any]) -> bool:
        """Whether ``when`` holds for the (decoded) values ``chosen`` so far."""
        for other, allowed in self.when.items():
            if other not in chosen or not _contains(allowed, chosen[other]):
                return False
        return True

    @property
    def top(self) -> float | int | None:
        """The largest value Optuna can suggest (``high`` rounded down onto the ``step`` grid)."""
        if self.type == "float" and self.step is not None:
            assert self.low is not None and self.high is not None
            n = math.floor((self.high - self.low) / self.step + 1e-9)
            return self.low + n * self.step
        return self.high

    def first_value(self) -> Any:
        """The value used for this param while another param's extremes are checked."""
        return self.choices[0] if self.type == "categorical" else self.low

    def extremes(self) -> tuple[tuple[str, Any], ...]:
        """(spec key, value) pairs to check: low and high, or every choice."""
        if self.type == "categorical":
            return tuple(("choices", c) for c in self.choices)
        return (("low", self.low), ("high", self.top))


@dataclass(frozen=True)
class SamplerSpec:
    """Optuna sampler: ``tpe`` (with ``n_startup_trials`` random trials first) or ``random``."""

    type: Literal["tpe", "random"] = "tpe"
    seed: int | None = 0
    n_startup_trials: int | None = _DEFAULT_TPE_STARTUP


@dataclass(frozen=True)
class SchedulerSpec:
    """Early stopping: ``asha`` (all values in training steps, resolved at load) or ``none``."""

    type: Literal["asha", "none"] = "none"
    grace_period: int | None = None
    reduction_factor: float | None = None
    max_t: int | None = None


@dataclass(frozen=True)
class ResourceSpec:
    """Ray Train workers of one trial and what each worker reserves."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass(frozen=True)
class SearchSpec:
    """A validated sweep: see the module docstring for the meaning of every field."""

    metric: str
    mode: Literal["min", "max"]
    num_samples: int
    max_concurrent: int
    sampler: SamplerSpec
    scheduler: SchedulerSpec
    resources: ResourceSpec
    fixed: dict[str, Any]
    params: tuple[ParamSpec, ...]

    def param(self, name: str) -> ParamSpec:
        """The param called ``name`` (KeyError if it is not searched)."""
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


# ----------------------------------------------------------------------------------------------
# Loading and validation
# ----------------------------------------------------------------------------------------------


def load_search_space(path: str | Path) -> SearchSpec:
    """Read and validate a search-space YAML file (DataError naming the file if unreadable)."""
    return search_space_from_dict(read_yaml_mapping(path), source=str(path))


def search_space_from_dict(raw: Mapping[str, Any], source: str = "<dict>") -> SearchSpec:
    """Validate plain data (as read from YAML) into a SearchSpec.

    Raises ConfigError whose field is the key path (``params.friction.power.low``); the problem
    ends with ``(in <source>)``.
    """
    try:
        return _parse(raw)
    except ConfigError as exc:
        problem = str(exc)[len(exc.field) + 2 :]
        raise ConfigError(exc.field, f"{problem} (in {source})") from None


def _parse(raw: Mapping[str, Any]) -> SearchSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError("search space", f"must be a mapping, got {type(raw).__name__}")
    _reject_unknown(raw, _TOP_KEYS, "")
    metric = raw.get("metric", "fd")
    if metric not in METRICS:
        raise ConfigError("metric", f"must be one of {list(METRICS)}, got {metric!r}")
    mode = raw.get("mode", "min")
    if mode not in MODES:
        raise ConfigError("mode", f"must be one of {list(MODES)}, got {mode!r}")
    num_samples = _int(raw.get("num_samples", 8), "num_samples", low=1)
    max_concurrent = _int(raw.get("max_concurrent", 2), "max_concurrent", low=1)
    sampler = _parse_sampler(raw.get("sampler", {"type": "tpe"}))
    resources = _parse_resources(raw.get("resources", {}))
    fixed = _parse_fixed(raw.get("fixed", {}))
    if "params" not in raw:
        raise ConfigError("params", "required: a mapping of searched TrainConfig keys")
    params = _parse_params(raw["params"], fixed)
    base = _check_against_train_config(fixed, params, metric)
    scheduler = _parse_scheduler(raw.get("scheduler", {"type": "none"}), base, params)
    return SearchSpec(
        metric=metric,
        mode=mode,
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        sampler=sampler,
        scheduler=scheduler,
        resources=resources,
        fixed=fixed,
        params=params,
    )


def _parse_sampler(raw: Any) -> SamplerSpec:
    section = _mapping(raw, "sampler")
    kind = section.get("type", "tpe")
    if kind not in SAMPLER_TYPES:
        raise ConfigError("sampler.type", f"must be one of {list(SAMPLER_TYPES)}, got {kind!r}")
    _reject_unknown(section, _SAMPLER_KEYS[kind], "sampler")
    seed = section.get("seed", 0)
    if seed is not None:
        seed = _int(seed, "sampler.seed", low=0)
    if kind == "random":
        return SamplerSpec(type="random", seed=seed, n_startup_trials=None)
    startup = _int(section.get("n_startup_trials", _DEFAULT_TPE_STARTUP), "sampler.n_startup_trials", low=0)
    return SamplerSpec(type="tpe", seed=seed, n_startup_trials=startup)


def _parse_resources(raw: Any) -> ResourceSpec:
    section = _mapping(raw, "resources")
    _reject_unknown(section, _RESOURCE_KEYS, "resources")
    workers = _int(section.get("workers", 1), "resources.workers", low=1)
    cpus = _number(section.get("cpus_per_worker", 1), "resources.cpus_per_worker")
    if cpus < MIN_CPUS_PER_WORKER:
        raise ConfigError("resources.cpus_per_worker", f"must be >= {MIN_CPUS_PER_WORKER}, got {cpus}")
    gpus = _number(section.get("gpus_per_worker", 0), "resources.gpus_per_worker")
    if gpus < 0:
        raise ConfigError("resources.gpus_per_worker", f"must be >= 0, got {gpus}")
    return ResourceSpec(workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus)


def _parse_fixed(raw: Any) -> dict[str, Any]:
    section = _mapping(raw, "fixed")
    for key in section:
        _check_config_key(key, f"fixed.{key}")
    return copy.deepcopy(dict(section))


def _parse_params(raw: Any, fixed: Mapping[str, Any]) -> tuple[ParamSpec, ...]:
    section = _mapping(raw, "params")
    if not section:
        raise ConfigError("params", "must name at least one searched key")
    params: list[ParamSpec] = []
    for name, body in section.items():
        where = f"params.{name}"
        _check_config_key(name, where)
        if name in fixed:
            raise ConfigError(where, f"is also set in fixed (fixed.{name}); a key is either fixed or searched")
        params.append(_parse_param(name, body, params))
    return tuple(params)


def _parse_param(name: str, raw: Any, earlier: Sequence[ParamSpec]) -> ParamSpec:
    where = f"params.{name}"
    body = _mapping(raw, where)
    if "type" not in body:
        raise ConfigError(f"{where}.type", f"required: one of {list(PARAM_TYPES)}")
    kind = body["type"]
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}.type", f"must be one of {list(PARAM_TYPES)}, got {kind!r}")
    _reject_unknown(body, _PARAM_KEYS[kind], where)
    when = _parse_when(body.get("when"), where, earlier)
    if kind == "categorical":
        if "choices" not in body:
            raise ConfigError(f"{where}.choices", "required for a categorical param")
        choices = body["choices"]
        if not isinstance(choices, list):
            raise ConfigError(f"{where}.choices", f"must be a list, got {choices!r}")
        if not choices:
            raise ConfigError(f"{where}.choices", "must not be empty")
        seen: set[Any] = set()
        for choice in choices:
            if isinstance(choice, str) and choice.startswith(ENCODED_PREFIX):
                raise ConfigError(
                    f"{where}.choices", f"a string choice must not start with {ENCODED_PREFIX!r}, got {choice!r}"
                )
            key = _canon(choice)
            if key in seen:
                raise ConfigError(f"{where}.choices", f"duplicate choice {choice!r}")
            seen.add(key)
        return ParamSpec(name=name, type="categorical", choices=tuple(copy.deepcopy(choices)), when=when)

    for key in ("low", "high"):
        if key not in body:
            raise ConfigError(f"{where}.{key}", f"required for a {kind} param")
    read = (lambda v, w: _int(v, w)) if kind == "int" else _number
    low, high = read(body["low"], f"{where}.low"), read(body["high"], f"{where}.high")
    if low >= high:
        raise ConfigError(f"{where}.low", f"must be < high, got low={low}, high={high}")
    log = body.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log", f"must be true or false, got {log!r}")
    if log and (low <= 0 if kind == "float" else low < 1):
        raise ConfigError(f"{where}.low", f"must be {'> 0' if kind == 'float' else '>= 1'} with log: true, got {low}")
    step = body.get("step")
    if step is not None:
        step = read(step, f"{where}.step")
        if step <= 0:
            raise ConfigError(f"{where}.step", f"must be > 0, got {step}")
        if log and not (kind == "int" and step == 1):
            raise ConfigError(f"{where}.step", "cannot be combined with log: true")
        if step > high - low:
            raise ConfigError(f"{where}.step", f"must be <= high - low = {high - low}, got {step}")
        if kind == "int" and (high - low) % step:
            raise ConfigError(
                f"{where}.high", f"high - low must be a multiple of step {step}, got low={low}, high={high}"
            )
    return ParamSpec(name=name, type=kind, low=low, high=high, log=log, step=step, when=when)


def _parse_when(raw: Any, where: str, earlier: Sequence[ParamSpec]) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    field_ = f"{where}.when"
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(field_, f"must be a non-empty mapping {{earlier_param: value or [values]}}, got {raw!r}")
    by_name = {p.name: p for p in earlier}
    when: dict[str, tuple[Any, ...]] = {}
    for other, value in raw.items():
        if other not in by_name:
            known = ", ".join(by_name) or "none"
            raise ConfigError(field_, f"refers to {other!r}, which is not an earlier param (earlier: {known})")
        ref = by_name[other]
        if ref.type == "categorical":
            if _contains(ref.choices, value):
                allowed: tuple[Any, ...] = (value,)
            elif isinstance(value, list) and value:
                allowed = tuple(value)
            else:
                raise ConfigError(field_, f"{other}: {value!r} is not among its choices {ref.choices!r}")
            for v in allowed:
                if not _contains(ref.choices, v):
                    raise ConfigError(field_, f"{other}: {v!r} is not among its choices {list(ref.choices)!r}")
        else:
            allowed = tuple(value) if isinstance(value, list) else (value,)
            if not allowed:
                raise ConfigError(field_, f"{other}: must list at least one value")
            low, high, step = ref.low, ref.high, ref.step or 1
            assert low is not None and high is not None
            for v in allowed:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
                    raise ConfigError(field_, f"{other}: {v!r} is outside its range [{low}, {high}]")
                if ref.type == "int" and (not isinstance(v, int) or (v - low) % step):
                    raise ConfigError(field_, f"{other}: {v!r} is not a value it can take")
        when[other] = tuple(copy.deepcopy(allowed))
    return when


def _parse_scheduler(raw: Any, base: TrainConfig, params: Sequence[ParamSpec]) -> SchedulerSpec:
    section = _mapping(raw, "scheduler")
    kind = section.get("type", "none")
    if kind not in SCHEDULER_TYPES:
        raise ConfigError("scheduler.type", f"must be one of {list(SCHEDULER_TYPES)}, got {kind!r}")
    _reject_unknown(section, _SCHEDULER_KEYS[kind], "scheduler")
    if kind == "none":
        return SchedulerSpec(type="none")
    steps = base.steps
    for p in params:
        if p.name == "steps":
            steps = max(v for _, v in p.extremes())
    max_t = _int(section.get("max_t", steps), "scheduler.max_t", low=1)
    grace = _int(section.get("grace_period", base.eval_every), "scheduler.grace_period", low=1)
    if grace >= max_t:
        raise ConfigError("scheduler.grace_period", f"must be < max_t = {max_t} training steps, got {grace}")
    factor = _number(section.get("reduction_factor", _DEFAULT_REDUCTION_FACTOR), "scheduler.reduction_factor")
    if factor <= 1:
        raise ConfigError("scheduler.reduction_factor", f"must be > 1, got {factor}")
    return SchedulerSpec(type="asha", grace_period=grace, reduction_factor=factor, max_t=max_t)


# ----------------------------------------------------------------------------------------------
# Checks against TrainConfig
# ----------------------------------------------------------------------------------------------


def _check_config_key(dotted: Any, where: str) -> None:
    """Raise ConfigError at ``where`` unless ``dotted`` names one TrainConfig setting."""
    if not isinstance(dotted, str) or not dotted:
        raise ConfigError(where, f"must be a dotted TrainConfig key, got {dotted!r}")
    hints = typing.get_type_hints(TrainConfig)
    top = {f.name: hints[f.name] for f in fields(TrainConfig)}
    head, _, rest = dotted.partition(".")
    if head not in top:
        raise ConfigError(where, f"not a training config key: {head!r} is unknown (known: {', '.join(sorted(top))})")
    section = top[head]
    if not is_dataclass(section):
        if rest:
            raise ConfigError(where, f"not a training config key: {head!r} is a setting, not a section")
        return
    if not rest:
        example = f"{head}.{fields(section)[0].name}"
        raise ConfigError(where, f"{head!r} is a section; name one of its settings, e.g. {example}")
    known = {f.name for f in fields(section)} | ({"preset"} if head == "drift" else set())
    if rest not in known:
        names = ", ".join(sorted(known))
        raise ConfigError(where, f"not a training config key: {head}.{rest} is unknown (known: {names})")


def _check_against_train_config(fixed: Mapping[str, Any], params: Sequence[ParamSpec], metric: str) -> TrainConfig:
    """Build the fixed config and one config per param extreme; return the fixed-only config."""
    try:
        base = load_train_config(None, copy.deepcopy(dict(fixed)))
    except ConfigError as exc:
        where = f"fixed.{exc.field}" if exc.field in fixed else "fixed"
        raise ConfigError(where, f"rejected by the training config: {exc}") from None
    for p in params:
        for key, value in p.extremes():
            assignment = _assignment_with(params, p, value)
            try:
                cfg = load_train_config(None, {**copy.deepcopy(dict(fixed)), **copy.deepcopy(assignment)})
            except ConfigError as exc:
                # Blame the param whose value the config rejected, when that is not ``p`` itself.
                culprit, culprit_key, culprit_value = p, key, value
                for q in params:
                    if q is not p and q.name == exc.field and q.name in assignment:
                        culprit, culprit_value = q, assignment[q.name]
                        culprit_key = "choices" if q.type == "categorical" else "low"
                raise ConfigError(
                    f"params.{culprit.name}.{culprit_key}",
                    f"{culprit_value!r} rejected by the training config: {exc}",
                ) from None
            missing = _metric_missing(cfg, metric)
            if missing:
                when = "" if _metric_missing(base, metric) else f" when {p.name} = {value!r}"
                raise ConfigError("metric", f"{metric!r} is not reported{when}: {missing}")
    return base


def _metric_missing(cfg: TrainConfig, metric: str) -> str:
    if metric == "kid" and not cfg.eval_kid:
        return "KID is computed only with eval_kid: true (set fixed.eval_kid: true)"
    if metric == "l2_uvp" and cfg.data.name != "gaussian-ot":
        return "L2-UVP needs the known OT map of data.name: gaussian-ot"
    return ""


def _assignment_with(params: Sequence[ParamSpec], target: ParamSpec, value: Any) -> dict[str, Any]:
    """Values of every active param with ``target`` = ``value`` and its ``when`` chain satisfied."""
    where = f"params.{target.name}.when"
    required: dict[str, tuple[Any, ...]] = {}

    def require(when: Mapping[str, tuple[Any, ...]]) -> None:
        for name, allowed in when.items():
            if name in required:
                allowed = tuple(v for v in required[name] if _contains(allowed, v))
            if not allowed:
                raise ConfigError(where, f"can never hold: the conditions on {name} contradict each other")
            required[name] = allowed

    require(target.when)
    index = params.index(target)
    for q in reversed(params[:index]):
        if q.name in required:
            require(q.when)
    assignment: dict[str, Any] = {}
    for q in params:
        if not q.is_active(assignment):
            if q is target:
                raise ConfigError(where, "can never hold given the conditions of the params it depends on")
            continue
        if q is target:
            assignment[q.name] = value
        elif q.name in required:
            assignment[q.name] = required[q.name][0]
        else:
            assignment[q.name] = q.first_value()
    return assignment


# ----------------------------------------------------------------------------------------------
# Optuna / Tune
# ----------------------------------------------------------------------------------------------


def encode_choice(value: Any) -> None | bool | int | float | str:
    """A categorical choice as Optuna accepts it: scalars unchanged, others ``"json:" + JSON``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return ENCODED_PREFIX + json.dumps(_plain(value))


def decode_choice(value: Any) -> Any:
    """Inverse of :func:`encode_choice` (lists come back as lists)."""
    if isinstance(value, str) and value.startswith(ENCODED_PREFIX):
        return json.loads(value[len(ENCODED_PREFIX) :])
    return value


@dataclass(frozen=True)
class DefineByRun:
    """The Optuna define-by-run function of a spec, for ``OptunaSearch(space=...)``.

    Suggests the params in order, skipping those whose ``when`` does not hold, and returns the
    fixed values as constants, so a trial's Tune config is the suggested params (dotted names,
    list choices encoded) plus ``spec.fixed``. A class, not a closure: Tune pickles the searcher
    (and with it this function) into every experiment checkpoint.
    """

    spec: SearchSpec

    def __call__(self, trial: "optuna.Trial") -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for p in self.spec.params:
            if not p.is_active(chosen):
                continue
            if p.type == "categorical":
                encoded = trial.suggest_categorical(p.name, [encode_choice(c) for c in p.choices])
                chosen[p.name] = decode_choice(encoded)
            elif p.type == "float":
                low, high = float(p.low), float(p.high)  # type: ignore[arg-type]
                step = None if p.step is None else float(p.step)
                chosen[p.name] = trial.suggest_float(p.name, low, high, step=step, log=p.log)
            else:
                low_i, high_i = int(p.low), int(p.high)  # type: ignore[arg-type]
                chosen[p.name] = trial.suggest_int(p.name, low_i, high_i, step=int(p.step or 1), log=p.log)
        return copy.deepcopy(dict(self.spec.fixed))


def define_by_run(spec: SearchSpec) -> DefineByRun:
    """See :class:`DefineByRun`."""
    return DefineByRun(spec)


def trial_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted overrides for ``load_train_config`` from a trial's Tune config (decodes choices).

    A pure function of ``config``: it runs the same on the driver and inside Train workers.
    """
    if not isinstance(config, Mapping):
        raise ConfigError("config", f"must be a mapping of dotted keys, got {type(config).__name__}")
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise ConfigError(str(key), "trial config keys must be dotted strings")
        out[key] = copy.deepcopy(decode_choice(value))
    return out


def make_sampler(spec: SearchSpec) -> "optuna.samplers.BaseSampler":
    """TPESampler(seed, n_startup_trials) or RandomSampler(seed) as the spec says."""
    import optuna

    s = spec.sampler
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials or 0)


def make_searcher(spec: SearchSpec) -> "OptunaSearch":
    """Tune's OptunaSearch over :func:`define_by_run` with the spec's metric, mode and sampler.

    Limit concurrency with ``TuneConfig(max_concurrent_trials=spec.max_concurrent)``.
    """
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(space=define_by_run(spec), metric=spec.metric, mode=spec.mode, sampler=make_sampler(spec))


def make_scheduler(spec: SearchSpec) -> "ASHAScheduler | None":
    """ASHA counting training steps (``time_attr="step"``), or None for ``type: none``.

    Carries the spec's metric and mode; do not pass them to ``TuneConfig`` as well.
    """
    s = spec.scheduler
    if s.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr=TIME_ATTR,
        metric=spec.metric,
        mode=spec.mode,
        max_t=s.max_t,  # type: ignore[arg-type]
        grace_period=s.grace_period,  # type: ignore[arg-type]
        reduction_factor=s.reduction_factor,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _reject_unknown(raw: Mapping[str, Any], known: Sequence[str], section: str) -> None:
    for key in raw:
        if key not in known:
            where = f"{section}.{key}" if section else str(key)
            raise ConfigError(where, f"unknown key (known: {', '.join(known)})")


def _mapping(raw: Any, where: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(where, f"must be a mapping, got {raw!r}")
    return raw


def _yaml_hint(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " (YAML reads numbers like 1e-4 as strings; write 1.0e-4)"
    return ""


def _int(value: Any, where: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, f"must be an integer, got {value!r}{_yaml_hint(value)}")
    if low is not None and value < low:
        raise ConfigError(where, f"must be >= {low}, got {value}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(where, f"must be a finite number, got {value!r}{_yaml_hint(value)}")
    return float(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _canon(value: Any) -> Any:
    """A hashable key under which 1 == 1.0 but True != 1 and [0.5] == (0.5,)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    if isinstance(value, Mapping):
        return ("mapping", tuple(sorted((str(k), _canon(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_canon(v) for v in value))
    return ("other", repr(value))


def _contains(values: Sequence[Any], value: Any) -> bool:
    key = _canon(value)
    return any(_canon(v) == key for v in values)


__all__ = [
    "ENCODED_PREFIX",
    "METRICS",
    "ParamSpec",
    "ResourceSpec",
    "SamplerSpec",
    "SchedulerSpec",
    "SearchSpec",
    "TIME_ATTR",
    "decode_choice",
    "define_by_run",
    "encode_choice",
    "load_search_space",
    "make_sampler",
    "make_scheduler",
    "make_searcher",
    "search_space_from_dict",
    "trial_overrides",
]

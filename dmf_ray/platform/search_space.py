"""Hyperparameter search spaces for Ray Tune + Optuna sweeps: one YAML file, validated once.

Why here: a sweep is described by data -- what to search, what to keep fixed, how to sample and
when to stop trials early -- and a typo in it (``friction.powr``, ``schedule: linearr``,
``temperatures: [0.0]``) must fail when the file is loaded, with one line naming the key, not an
hour later inside a Ray worker. The file's schema is the frozen pydantic dataclasses below,
documented with every default and rule in README.md, "Search-space files"; :mod:`dmf_ray.schema`
turns their errors into one-line messages naming the key path (``params.friction.power.low``).
Loading also builds one TrainConfig per extreme of every param (low, high, each choice, with
its ``when`` satisfied), so a value the training config refuses fails here, once.

This module also turns a :class:`SearchSpec` into the Optuna define-by-run function, the Tune
searcher and the ASHA scheduler; it knows nothing about how trials run (:mod:`dmf_ray.platform.sweep`
does). The searcher and the scheduler already carry ``metric`` and ``mode``: do not pass them to
``TuneConfig`` as well while a scheduler is used (Tune rejects that). A trial's Tune config holds
only the suggested params (dotted names, labels for labelled choices); the fixed keys are the
caller's to merge, once, with :func:`trial_overrides`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_validator
from pydantic.dataclasses import dataclass

from dmf_ray.errors import ConfigError
from dmf_ray.eval.metrics import TEST_METRIC_NAMES, VAL_METRIC_NAMES
from dmf_ray.schema import SECTION, Bool, Float, Int, PositiveFloat, PositiveInt, Str, validate
from dmf_ray.trainer.config import TrainConfig, load_train_config, read_yaml_mapping

if TYPE_CHECKING:  # imported lazily at run time (Ray is slow to import)
    import optuna
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import SearchAlgorithm, Searcher

# The Tune metric that ASHA counts in: the trainer reports "step" at every evaluation.
TIME_ATTR = "step"
# A trial's own bookkeeping CPU (0.01) is taken from its workers' share: keep the share positive.
MIN_CPUS_PER_WORKER = 0.05
_SCALARS = (type(None), bool, int, float, str)


def _when(raw: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """``{other: value or [values]}`` as ``{other: (values,)}``; the values are checked by SearchSpec."""
    out = {}
    for other, allowed in raw.items():
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if not allowed:
            raise ValueError(f"{other}: must list at least one value")
        out[other] = allowed
    return out


When = Annotated[dict[str, Any], AfterValidator(_when)]


def _check_range(p: FloatParam | IntParam) -> None:
    integer = p.type == "int"
    if p.low >= p.high:
        raise ConfigError("low", f"must be < high, got low={p.low}, high={p.high}")
    if p.log and (p.low < 1 if integer else p.low <= 0):
        raise ConfigError("low", f"must be {'>= 1' if integer else '> 0'} with log: true, got {p.low}")
    if p.step is None:
        return
    if p.log and not (integer and p.step == 1):
        raise ConfigError("step", "cannot be combined with log: true")
    if p.step > p.high - p.low:
        raise ConfigError("step", f"must be <= high - low = {p.high - p.low}, got {p.step}")
    if integer and (p.high - p.low) % p.step:
        raise ConfigError("high", f"high - low must be a multiple of step {p.step}, got low={p.low}, high={p.high}")


@dataclass(frozen=True, config=SECTION)
class FloatParam:
    """A float in [low, high], optionally on a log scale or a ``step`` grid."""

    type: Literal["float"]
    low: Float
    high: Float
    log: Bool = False
    step: PositiveFloat | None = None
    when: When = field(default_factory=dict)

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self)
        return self

    @property
    def top(self) -> float:
        """The largest value Optuna can suggest (``high`` rounded down onto the ``step`` grid)."""
        if self.step is None:
            return self.high
        return self.low + math.floor((self.high - self.low) / self.step + 1e-9) * self.step

    def extremes(self) -> tuple[tuple[str, Any], ...]:
        """(file key, suggestion) pairs the training config must accept."""
        return (("low", self.low), ("high", self.top))

    def admits(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def value(self, suggestion: Any) -> Any:
        return suggestion

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True, config=SECTION)
class IntParam:
    """An integer in [low, high] on the ``step`` grid, optionally on a log scale."""

    type: Literal["int"]
    low: Int
    high: Int
    log: Bool = False
    step: PositiveInt | None = None
    when: When = field(default_factory=dict)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self)
        return self

    def extremes(self) -> tuple[tuple[str, Any], ...]:
        return (("low", self.low), ("high", self.high))

    def admits(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high
                and (value - self.low) % (self.step or 1) == 0)

    def value(self, suggestion: Any) -> Any:
        return suggestion

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step or 1, log=self.log)


@dataclass(frozen=True, config=SECTION)
class CategoricalParam:
    """One of ``choices``: a list of scalars, or ``{label: value}`` (Optuna sees only the labels)."""

    type: Literal["categorical"]
    choices: Any
    when: When = field(default_factory=dict)

    @field_validator("choices")
    @classmethod
    def _scalars_or_labels(cls, choices: Any) -> Any:
        if isinstance(choices, Mapping):
            if not choices:
                raise ValueError("must not be empty")
            if not all(isinstance(label, str) and label for label in choices):
                raise ValueError(f"labels must be non-empty strings, got {list(choices)!r}")
            return copy.deepcopy(dict(choices))
        if not isinstance(choices, (list, tuple)):
            raise ValueError(f"must be a list of scalars or a mapping of label: value, got {choices!r}")
        if not choices:
            raise ValueError("must not be empty")
        for i, choice in enumerate(choices):
            if not isinstance(choice, _SCALARS):
                raise ValueError(f"a list or mapping choice needs a label: write choices as {{label: value}}, got {choice!r}")
            if any(_same(choice, c) for c in choices[:i]):
                raise ValueError(f"duplicate choice {choice!r}")
        return tuple(choices)

    @property
    def options(self) -> tuple[Any, ...]:
        """What Optuna suggests: the labels, or the scalar choices themselves."""
        return tuple(self.choices)

    def extremes(self) -> tuple[tuple[str, Any], ...]:
        return tuple(("choices", option) for option in self.options)

    def admits(self, value: Any) -> bool:
        return any(_same(value, option) for option in self.options)

    def value(self, suggestion: Any) -> Any:
        """The real value of a suggested option (a fresh copy: the caller may change it)."""
        return copy.deepcopy(self.choices[suggestion]) if isinstance(self.choices, dict) else suggestion

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.options))

    def describe(self, option: Any) -> str:
        return f"{option!r} = {self.choices[option]!r}" if isinstance(self.choices, dict) else repr(option)


Param = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


@dataclass(frozen=True, config=SECTION)
class TPESampler:
    """Optuna's TPE, after ``n_startup_trials`` random trials (Optuna's default: 10)."""

    type: Literal["tpe"] = "tpe"
    seed: Annotated[Int, Field(ge=0)] | None = 0
    n_startup_trials: Annotated[Int, Field(ge=0)] = 10


@dataclass(frozen=True, config=SECTION)
class RandomSampler:
    type: Literal["random"] = "random"
    seed: Annotated[Int, Field(ge=0)] | None = 0


@dataclass(frozen=True, config=SECTION)
class ASHA:
    """Early stopping in training steps; ``grace_period`` and ``max_t`` are resolved at load."""

    type: Literal["asha"] = "asha"
    grace_period: PositiveInt | None = None
    reduction_factor: Annotated[Float, Field(gt=1)] = 2.0
    max_t: PositiveInt | None = None


@dataclass(frozen=True, config=SECTION)
class NoScheduler:
    type: Literal["none"] = "none"


@dataclass(frozen=True, config=SECTION)
class PopulationBased:
    """Population Based Training (``pbt``) or Bandits (``pb2``): every ``perturbation_interval``
    training steps the bottom ``quantile_fraction`` of trials clone a top trial's checkpoint and
    perturb the ``mutate`` params (float params of this space, kept within their bounds): PBT by
    x0.8 / x1.2 or a fresh draw (``resample_probability``), PB2 by a GP bandit. Mutating
    ``friction.level`` of ``friction.schedule: constant`` learns a friction schedule: the level
    the best member held over time (:mod:`dmf_ray.platform.learned_schedule`)."""

    type: Literal["pbt", "pb2"] = "pbt"
    mutate: Annotated[tuple[Str, ...], Field(min_length=1)] = ("friction.level",)
    perturbation_interval: PositiveInt | None = None  # default eval_every
    quantile_fraction: Annotated[Float, Field(gt=0, le=0.5)] = 0.25
    resample_probability: Annotated[Float, Field(ge=0, le=1)] = 0.25


def _type_or(default: str) -> Any:
    """Discriminator whose tag is the ``type`` key, ``default`` when the section leaves it out."""

    def tag(raw: Any) -> Any:
        return raw.get("type", default) if isinstance(raw, Mapping) else getattr(raw, "type", None)

    return Discriminator(tag)


Sampler = Annotated[Union[Annotated[TPESampler, Tag("tpe")], Annotated[RandomSampler, Tag("random")]], _type_or("tpe")]
Scheduler = Annotated[Union[Annotated[ASHA, Tag("asha")], Annotated[NoScheduler, Tag("none")],
                            Annotated[PopulationBased, Tag("pbt")], Annotated[PopulationBased, Tag("pb2")]], _type_or("none")]


@dataclass(frozen=True, config=SECTION)
class ResourceSpec:
    """Ray Train workers of one trial and what each worker reserves."""

    workers: PositiveInt = 1
    cpus_per_worker: Annotated[Float, Field(ge=MIN_CPUS_PER_WORKER)] = 1.0
    gpus_per_worker: Annotated[Float, Field(ge=0)] = 0.0


@dataclass(frozen=True, config=SECTION)
class SearchSpec:
    """A validated sweep (README.md, "Search-space files"); ``params`` keeps the file's order."""

    params: Annotated[dict[str, Param], Field(min_length=1)]
    metric: Str = "val_fd"
    mode: Literal["min", "max"] = "min"
    # Multi-objective (e.g. [val_fd, train_seconds]): Optuna searches the Pareto front; ``metric``
    # / ``mode`` default to the first objective, which ranks the table and picks the champion.
    metrics: Annotated[list[Str], Field(min_length=2)] | None = None
    modes: list[Literal["min", "max"]] | None = None
    num_samples: PositiveInt = 8
    max_concurrent: PositiveInt = 2
    # A trial checkpoints at every checkpoint_every-th evaluation and at its last (1: at every one,
    # each a point ASHA can stop at or PBT can clone from).
    checkpoint_every: PositiveInt = 1
    sampler: Sampler = field(default_factory=TPESampler)
    scheduler: Scheduler = field(default_factory=NoScheduler)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    fixed: dict[str, Any] = field(default_factory=dict)

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, metric: str) -> str:
        return _objective(metric, allowed=VAL_METRIC_NAMES)

    @field_validator("metrics")
    @classmethod
    def _validation_metrics(cls, metrics: list[str] | None) -> list[str] | None:
        return None if metrics is None else [_objective(m, allowed=(*VAL_METRIC_NAMES, COST_OBJECTIVE)) for m in metrics]

    @model_validator(mode="before")
    @classmethod
    def _first_objective_ranks(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping) and isinstance(raw.get("metrics"), list) and raw["metrics"]:
            modes = raw.get("modes") if isinstance(raw.get("modes"), list) else None
            raw = {"metric": raw["metrics"][0], "mode": modes[0] if modes else "min", **raw}
        return raw

    @model_validator(mode="after")
    def _objectives_agree(self) -> SearchSpec:
        if self.metrics is None:
            if self.modes is not None:
                raise ConfigError("modes", "needs metrics (a list of objectives)")
            return self
        if self.modes is not None and len(self.modes) != len(self.metrics):
            raise ConfigError("modes", f"must have one entry per metric ({len(self.metrics)}), got {len(self.modes)}")
        if (self.metric, self.mode) != (self.metrics[0], self.objectives[1][0]):
            raise ConfigError("metric", f"with metrics, metric/mode are the first objective ({self.metrics[0]}), got {self.metric}")
        if not isinstance(self.scheduler, NoScheduler):
            # ASHA would stop trials early, and a short trial's small train_seconds puts a
            # half-trained model on the Pareto front.
            raise ConfigError("scheduler.type", "a multi-objective sweep runs every trial to the end: use scheduler type none")
        return self

    @model_validator(mode="after")
    def _population_mutates_plain_floats(self) -> SearchSpec:
        # Tune's PBT refuses a search algorithm, so its population is drawn from Tune domains:
        # no ``when`` conditions; PBT perturbs floats by factors, so ``mutate`` names float params.
        if not isinstance(self.scheduler, PopulationBased):
            return self
        for name, p in self.params.items():
            if p.when:
                raise ConfigError(f"params.{name}.when", f"a {self.scheduler.type} population is drawn without conditions")
        for name in self.scheduler.mutate:
            if not isinstance(self.params.get(name), FloatParam):
                floats = [n for n, p in self.params.items() if isinstance(p, FloatParam)] or "none"
                raise ConfigError("scheduler.mutate", f"{name!r} must be a float param of this space (float params: {floats})")
        return self

    @property
    def objectives(self) -> tuple[list[str], list[str]]:
        """(metrics, modes) Optuna optimises: one objective, or the ``metrics`` list."""
        if self.metrics is None:
            return [self.metric], [self.mode]
        return list(self.metrics), list(self.modes or ["min"] * len(self.metrics))

    @field_validator("params", "fixed", mode="before")
    @classmethod
    def _names_are_config_keys(cls, raw: Any) -> Any:
        for name in raw if isinstance(raw, Mapping) else ():
            _check_config_key(name)
        return {} if raw is None else copy.deepcopy(raw)

    @model_validator(mode="after")
    def _conditions_refer_back(self) -> SearchSpec:
        earlier: dict[str, Any] = {}
        for name, p in self.params.items():
            if name in self.fixed:
                raise ConfigError(f"params.{name}", f"is also set in fixed (fixed.{name}); a key is either fixed or searched")
            for other, allowed in p.when.items():
                if other not in earlier:
                    known = ", ".join(earlier) or "none"
                    raise ConfigError(f"params.{name}.when", f"refers to {other!r}, which is not an earlier param (earlier: {known})")
                ref = earlier[other]
                for v in allowed:
                    if not ref.admits(v):
                        takes = f"its choices {list(ref.options)!r}" if ref.type == "categorical" else (
                            f"its range [{ref.low}, {ref.high}]" + (f" with step {ref.step}" if ref.step else ""))
                        raise ConfigError(f"params.{name}.when", f"{other}: {v!r} is not a value it can take ({takes})")
            earlier[name] = p
        return self


COST_OBJECTIVE = "train_seconds"  # wall time in training steps: an objective, never a champion's metric


def _objective(metric: str, allowed: tuple[str, ...]) -> str:
    # A sweep, ASHA and the champion choose by these: choosing on test rows would report a
    # selection-biased score as a held-out one.
    if metric in TEST_METRIC_NAMES:
        raise ValueError(f"{metric!r} is a test-split score; a sweep chooses on validation (use {'val_' + metric[5:]!r})")
    if metric not in allowed:
        raise ValueError(f"must be a validation metric, one of {list(allowed)}, got {metric!r}")
    return metric


def is_active(p: Any, chosen: Mapping[str, Any]) -> bool:
    """Whether ``p``'s ``when`` holds for the suggestions ``chosen`` so far."""
    return all(other in chosen and any(_same(chosen[other], v) for v in allowed) for other, allowed in p.when.items())


def load_search_space(path: str | Path) -> SearchSpec:
    """Read and validate a search-space YAML file (DataError naming the file if unreadable)."""
    return search_space_from_dict(read_yaml_mapping(path), source=str(path))


def search_space_from_dict(raw: Mapping[str, Any], source: str = "<dict>") -> SearchSpec:
    """Validate plain data (as read from YAML) into a SearchSpec, checked against TrainConfig."""
    try:
        spec = validate(SearchSpec, raw, root="search space")
        base = _check_against_train_config(spec)
        return replace(spec, scheduler=_resolve_scheduler(spec, base))
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{exc.problem} (in {source})") from None


def _resolve_scheduler(spec: SearchSpec, base: TrainConfig) -> ASHA | NoScheduler | PopulationBased:
    s = spec.scheduler
    if isinstance(s, PopulationBased):
        interval = s.perturbation_interval or base.eval_every
        if interval % base.eval_every or interval >= base.steps:
            raise ConfigError("scheduler.perturbation_interval",
                              f"must be a multiple of eval_every = {base.eval_every} below steps = {base.steps}, got {interval}")
        return replace(s, perturbation_interval=interval)
    if not isinstance(s, ASHA):
        return s
    steps = spec.params.get("steps")
    max_t = s.max_t or (max(steps.value(v) for _, v in steps.extremes()) if steps is not None else base.steps)
    grace = s.grace_period or base.eval_every
    if grace >= max_t:
        raise ConfigError("scheduler.grace_period", f"must be < max_t = {max_t} training steps, got {grace}")
    return replace(s, grace_period=grace, max_t=max_t)


def _check_config_key(dotted: Any) -> None:
    """ConfigError(dotted, ...) unless ``dotted`` names one TrainConfig setting."""
    if not isinstance(dotted, str) or not dotted:
        raise ConfigError(str(dotted), f"must be a dotted TrainConfig key, got {dotted!r}")
    top = TrainConfig.__pydantic_fields__
    head, _, rest = dotted.partition(".")
    if head not in top:
        raise ConfigError(dotted, f"not a training config key: {head!r} is unknown (known: {', '.join(sorted(top))})")
    section = top[head].annotation
    if not is_dataclass(section):
        if rest:
            raise ConfigError(dotted, f"not a training config key: {head!r} is a setting, not a section")
        return
    if not rest:
        raise ConfigError(dotted, f"{head!r} is a section; name one of its settings, e.g. {head}.{fields(section)[0].name}")
    known = {f.name for f in fields(section)} | ({"preset"} if head == "drift" else set())
    if rest not in known:
        raise ConfigError(dotted, f"not a training config key: {dotted} is unknown (known: {', '.join(sorted(known))})")


def _check_against_train_config(spec: SearchSpec) -> TrainConfig:
    """Build the fixed config and one config per param extreme; return the fixed-only config."""
    fixed, params = spec.fixed, spec.params
    try:
        base = load_train_config(None, fixed)  # the loader never changes the values it is given
    except ConfigError as exc:
        where = f"fixed.{exc.field}" if exc.field in fixed else "fixed"
        raise ConfigError(where, f"rejected by the training config: {exc}") from None
    for name, p in params.items():
        for key, option in p.extremes():
            assignment = _assignment_with(params, name, option)
            try:
                cfg = load_train_config(None, {**fixed, **{n: params[n].value(o) for n, o in assignment.items()}})
            except ConfigError as exc:
                # Blame the param whose value the config rejected, when that is not ``p`` itself.
                culprit, culprit_key, culprit_option = name, key, option
                if exc.field != name and exc.field in assignment:
                    culprit, culprit_option = exc.field, assignment[exc.field]
                    culprit_key = "choices" if params[culprit].type == "categorical" else "low"
                q = params[culprit]
                shown = q.describe(culprit_option) if isinstance(q, CategoricalParam) else repr(culprit_option)
                raise ConfigError(f"params.{culprit}.{culprit_key}", f"{shown} rejected by the training config: {exc}") from None
            for metric in spec.objectives[0]:
                missing = _metric_missing(cfg, metric)
                if missing:
                    when = "" if _metric_missing(base, metric) else f" when {name} = {option!r}"
                    raise ConfigError("metric", f"{metric!r} is not reported{when}: {missing}")
    return base


def _metric_missing(cfg: TrainConfig, metric: str) -> str:
    if metric == "val_kid" and not cfg.eval_kid:
        return "KID is computed only with eval_kid: true (set fixed.eval_kid: true)"
    if metric == "val_l2_uvp" and cfg.data.name != "gaussian-ot":
        return "L2-UVP needs the known OT map of data.name: gaussian-ot"
    if metric in ("val_nll", "val_mode_weight_error") and cfg.data.name != "toy":
        return "NLL and the mode-weight error need the known target density of data.name: toy"
    return ""


def _assignment_with(params: Mapping[str, Any], target: str, option: Any) -> dict[str, Any]:
    """Suggestions of every active param with ``target`` = ``option`` and its ``when`` chain satisfied."""
    where = f"params.{target}.when"
    required: dict[str, tuple[Any, ...]] = {}

    def require(when: Mapping[str, tuple[Any, ...]]) -> None:
        for other, allowed in when.items():
            if other in required:
                allowed = tuple(v for v in required[other] if any(_same(v, a) for a in allowed))
            if not allowed:
                raise ConfigError(where, f"can never hold: the conditions on {other} contradict each other")
            required[other] = allowed

    names = list(params)
    require(params[target].when)
    for other in reversed(names[: names.index(target)]):
        if other in required:
            require(params[other].when)
    assignment: dict[str, Any] = {}
    for other, q in params.items():
        if not is_active(q, assignment):
            if other == target:
                raise ConfigError(where, "can never hold given the conditions of the params it depends on")
            continue
        if other == target:
            assignment[other] = option
        elif other in required:
            assignment[other] = required[other][0]
        else:
            assignment[other] = q.extremes()[0][1]
    return assignment


def _same(a: Any, b: Any) -> bool:
    """Scalar equality under which 1 == 1.0 but True != 1."""
    return isinstance(a, bool) == isinstance(b, bool) and (a is None) == (b is None) and a == b


@dataclass(frozen=True)
class DefineByRun:
    """The Optuna define-by-run function of a spec: the params in order, those whose ``when`` holds.

    A class, not a closure: Tune pickles the searcher (and with it this function) into every
    experiment checkpoint.
    """

    spec: SearchSpec

    def __call__(self, trial: optuna.Trial) -> None:
        chosen: dict[str, Any] = {}
        for name, p in self.spec.params.items():
            if is_active(p, chosen):
                chosen[name] = p.suggest(trial, name)


def trial_overrides(spec: SearchSpec, config: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted TrainConfig overrides from a trial's Tune config: each param's real value."""
    out: dict[str, Any] = {}
    for name, suggestion in config.items():
        if name not in spec.params:
            raise ConfigError(str(name), "is not a searched param of this sweep")
        out[name] = spec.params[name].value(suggestion)
    return out


def make_sampler(spec: SearchSpec) -> optuna.samplers.BaseSampler:
    """TPESampler(seed, n_startup_trials) or RandomSampler(seed) as the spec says."""
    import optuna

    s = spec.sampler
    if isinstance(s, RandomSampler):
        return optuna.samplers.RandomSampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials)


def make_searcher(spec: SearchSpec, storage: str | None = None, study_name: str | None = None) -> SearchAlgorithm | Searcher:
    """Tune's OptunaSearch over :class:`DefineByRun` with the spec's objectives and sampler; with
    ``storage`` (an RDB URL, :mod:`dmf_ray.platform.study`) its study persists under ``study_name``.
    A PBT / PB2 sweep gets Tune's seeded random variant generator over :func:`population_space`
    instead (pass that as the Tuner's ``param_space``): Tune's PBT refuses search algorithms."""
    import optuna
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    if isinstance(spec.scheduler, PopulationBased):
        return BasicVariantGenerator(random_state=spec.sampler.seed)

    metrics, modes = spec.objectives
    objectives = dict(metric=metrics if spec.metrics else metrics[0], mode=modes if spec.metrics else modes[0])
    if storage is None:
        return OptunaSearch(space=DefineByRun(spec), sampler=make_sampler(spec), **objectives)
    from dmf_ray.platform.study import PersistentOptunaSearch

    return PersistentOptunaSearch(space=DefineByRun(spec), sampler=make_sampler(spec), **objectives,
                                  storage=optuna.storages.RDBStorage(storage), study_name=study_name)


def make_scheduler(spec: SearchSpec) -> TrialScheduler | None:
    """ASHA or PBT / PB2 counting training steps (``time_attr="step"``), or None for ``type: none``."""
    s = spec.scheduler
    if isinstance(s, PopulationBased):
        return _population_scheduler(spec, s)
    if not isinstance(s, ASHA):
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=TIME_ATTR, metric=spec.metric, mode=spec.mode, max_t=s.max_t,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)


@dataclass(frozen=True)
class ClipToBounds:
    """PBT's explore step multiplies a float by 0.8 or 1.2 without a bound; a level above 1 (or a
    learning rate past the searched range) would fail the trial, so clip to the param's range."""

    bounds: dict[str, tuple[float, float]]

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for name, (low, high) in self.bounds.items():
            config[name] = min(max(float(config[name]), low), high)
        return config


def _population_scheduler(spec: SearchSpec, s: PopulationBased) -> TrialScheduler:
    bounds = {name: (spec.params[name].low, spec.params[name].high) for name in s.mutate}
    common = dict(time_attr=TIME_ATTR, metric=spec.metric, mode=spec.mode,
                  perturbation_interval=s.perturbation_interval, quantile_fraction=s.quantile_fraction)
    if s.type == "pb2":
        from ray.tune.schedulers.pb2 import PB2

        return PB2(**common, hyperparam_bounds={name: list(b) for name, b in bounds.items()})
    from ray.tune.schedulers import PopulationBasedTraining

    space = population_space(spec)
    return PopulationBasedTraining(**common, resample_probability=s.resample_probability,
                                   hyperparam_mutations={name: space[name] for name in s.mutate},
                                   custom_explore_fn=ClipToBounds(bounds))


def population_space(spec: SearchSpec) -> dict[str, Any]:
    """Tune domains of the params, the first population of a PBT / PB2 sweep (Tune's PBT takes
    no search algorithm); the same values a trial's config holds under Optuna (labels for
    labelled choices), so :func:`trial_overrides` reads both."""
    from ray import tune

    space: dict[str, Any] = {}
    for name, p in spec.params.items():
        if isinstance(p, CategoricalParam):
            space[name] = tune.choice(list(p.options))
        elif isinstance(p, IntParam):
            space[name] = tune.lograndint(p.low, p.high + 1) if p.log else tune.qrandint(p.low, p.high, p.step or 1)
        elif p.log:
            space[name] = tune.loguniform(p.low, p.high)
        else:
            space[name] = tune.quniform(p.low, p.top, p.step) if p.step else tune.uniform(p.low, p.high)
    return space


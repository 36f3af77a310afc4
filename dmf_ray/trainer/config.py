"""The training configuration: one typed object built from YAML and/or flags, validated once.

Why here: every entry point (the trainer CLI, Tune trials, experiments) describes a run by the
same nested mapping -- ``data``, ``model``, ``drift``, ``friction``, ``optim`` sections plus
loop settings -- and must reject a typo or a wrong type with one line naming the key. The core
modules own their dataclasses and domain checks; this module only maps plain data onto them,
checking key names and types on the way.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from dmf_ray.data.base import DataConfig
from dmf_ray.core.drift import DriftConfig, make_drift_config
from dmf_ray.errors import ConfigError, DataError
from dmf_ray.core.families import check_family_compatible
from dmf_ray.core.friction import FrictionConfig
from dmf_ray.core.models import GeneratorConfig
from dmf_ray.core.ofm import OFMConfig


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser of the generator. Adam defaults follow the released toy notebook (Adam 1e-3)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = None
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("optim.lr", f"must be a finite number > 0, got {self.lr!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError("optim.betas", f"must be two numbers in [0, 1), got {list(self.betas)!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError("optim.weight_decay", f"must be a finite number >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError("optim.grad_clip", f"must be > 0 or null, got {self.grad_clip!r}")
        if self.warmup_steps < 0:
            raise ConfigError("optim.warmup_steps", f"must be >= 0, got {self.warmup_steps!r}")


@dataclass(frozen=True)
class EvalConfig:
    """Image-space scores at every evaluation (DMF Table 2): CMMD and/or FID of decoded latents.

    Why optional: they need a latent -> image decoder (``decoder = "module:function"``, e.g. the
    ALAE generator) and local CLIP / Inception weights, none of which ship with the package.
    Without a decoder, runs report the latent-space scores (FD, KID, transport cost) only.
    The first ``samples`` held-out target latents are decoded and embedded once per run; the
    same number of mapped latents at each evaluation.
    """

    decoder: str | None = None
    clip_model: str = "ViT-L-14-336-quickgelu"
    clip_weights: str | None = None
    inception_weights: str | None = None
    samples: int = 2048

    def __post_init__(self) -> None:
        weights = self.clip_weights is not None or self.inception_weights is not None
        if self.decoder is not None and not weights:
            raise ConfigError("eval.decoder", "needs eval.clip_weights (CMMD) and/or eval.inception_weights (FID)")
        if self.decoder is None and weights:
            raise ConfigError("eval.decoder", "required when image weights are given (a 'module:function' mapping latents to images)")
        if self.decoder is not None and (self.decoder.count(":") != 1 or not all(self.decoder.split(":"))):
            raise ConfigError("eval.decoder", f"expected 'module:function', got {self.decoder!r}")
        if self.samples < 2:
            raise ConfigError("eval.samples", f"must be >= 2, got {self.samples!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. ``model.dim`` is derived from the data.

    ``batch_size`` generated samples and ``pos_batch_size`` positives (default: the same) per
    step; evaluation every ``eval_every`` steps on up to ``eval_samples`` held-out pairs, each
    evaluation also writes a checkpoint.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(kind="noise", width=128, depth=3))
    drift: DriftConfig = field(default_factory=lambda: make_drift_config("toy", temperatures=(0.2,)))
    friction: FrictionConfig = field(default_factory=FrictionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: Literal["dmf", "ofm"] = "dmf"
    ofm: OFMConfig = field(default_factory=OFMConfig)
    steps: int = 1000
    batch_size: int = 1024
    pos_batch_size: int | None = None
    eval_every: int = 100
    eval_samples: int = 50_000
    eval_kid: bool = False
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "runs/train"

    def __post_init__(self) -> None:
        for name, low in (("steps", 2), ("batch_size", 2), ("eval_every", 1), ("eval_samples", 2), ("seed", 0)):
            if getattr(self, name) < low:
                raise ConfigError(name, f"must be >= {low}, got {getattr(self, name)!r}")
        if self.pos_batch_size is not None and self.pos_batch_size < 1:
            raise ConfigError("pos_batch_size", f"must be >= 1 or null, got {self.pos_batch_size!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError("device", f"must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        check_family_compatible(self)
        if self.method not in ("dmf", "ofm"):
            raise ConfigError("method", f"must be 'dmf' (drifting, any drift.family) or 'ofm', got {self.method!r}")
        if self.method == "ofm" and self.model.kind != "icnn":
            raise ConfigError("model.kind", f"must be 'icnn' with method 'ofm' (the map is an ICNN's gradient), got {self.model.kind!r}")

    @property
    def positives_per_step(self) -> int:
        return self.pos_batch_size or self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists for tuples): the YAML written beside every run.

        Derived keys (``model.dim``) are left out so the dict loads back as a config.
        """
        out = _plain(asdict(self))
        del out["model"]["dim"]
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": GeneratorConfig,
    "friction": FrictionConfig,
    "optim": OptimConfig,
    "eval": EvalConfig,
    "ofm": OFMConfig,
}
_DERIVED = {"model.dim": "it is taken from the data"}


def train_config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from nested plain data (YAML / JSON / Tune config)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("config", f"must be a mapping of sections, got {type(raw).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    _reject_unknown(raw, known, "")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECTIONS:
            kwargs[key] = dataclass_from_mapping(_SECTIONS[key], value, key)
        elif key == "drift":
            kwargs[key] = _drift_from_mapping(value)
        else:
            kwargs[key] = _coerce(_field_type(TrainConfig, key), value, key)
    return TrainConfig(**kwargs)


def load_train_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read an optional YAML file, apply dotted-key overrides (``drift.temperatures``), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml_mapping(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return train_config_from_dict(raw)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Load a YAML file that must hold a mapping; DataError naming the file otherwise."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise DataError(p, f"cannot read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DataError(p, f"malformed YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(p, f"must contain a mapping of sections, got {type(data).__name__}")
    return data


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """raw['a']['b'] = value for dotted = 'a.b', creating sections as needed."""
    *parents, leaf = dotted.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parents[: i + 1]), "is not a section")
        node = child
    node[leaf] = value


def dataclass_from_mapping(cls: type, raw: Any, section: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking key names and value types."""
    if not isinstance(raw, Mapping):
        raise ConfigError(section, f"must be a mapping, got {type(raw).__name__}")
    names = {f.name for f in fields(cls)}
    for key in raw:
        dotted = f"{section}.{key}"
        if dotted in _DERIVED:
            raise ConfigError(dotted, f"must not be set: {_DERIVED[dotted]}")
    _reject_unknown(raw, names, section)
    kwargs = {k: _coerce(_field_type(cls, k), v, f"{section}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


def _drift_from_mapping(raw: Any) -> DriftConfig:
    """The drift section: an optional ``preset`` name plus DriftConfig fields overriding it."""
    if not isinstance(raw, Mapping):
        raise ConfigError("drift", f"must be a mapping, got {type(raw).__name__}")
    options = dict(raw)
    preset = options.pop("preset", None)
    if preset is not None and not isinstance(preset, str):
        raise ConfigError("drift.preset", f"must be a preset name, got {preset!r}")
    _reject_unknown(options, {f.name for f in fields(DriftConfig)}, "drift")
    typed = {k: _coerce(_field_type(DriftConfig, k), v, f"drift.{k}") for k, v in options.items()}
    return make_drift_config(preset, **typed)


def _reject_unknown(raw: Mapping[str, Any], known: set[str], section: str) -> None:
    for key in raw:
        if key not in known:
            where = f"{section}.{key}" if section else str(key)
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(known))})")


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ConfigError(where, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(where, f"must be a string, got {value!r}")
        return value
    if is_dataclass(tp):  # pragma: no cover - sections are handled by the callers
        return dataclass_from_mapping(tp, value, where)
    return value


__all__ = [
    "OptimConfig",
    "TrainConfig",
    "dataclass_from_mapping",
    "load_train_config",
    "read_yaml_mapping",
    "set_dotted",
    "train_config_from_dict",
]

"""The training configuration: one typed object built from YAML and/or flags, validated once.

Each section is declared (with its domain) beside the code that uses it; this module adds the
loop settings and the rules that span sections, and :func:`train_config_from_dict` is the edge
that turns plain data into a :class:`TrainConfig` (strictness and messages: :mod:`dmf_ray.schema`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from dmf_ray.core.drift import PRESETS, DriftConfig, make_drift_config
from dmf_ray.core.friction import FrictionConfig
from dmf_ray.core.models import GeneratorConfig
from dmf_ray.core.ofm import OFMConfig
from dmf_ray.data.base import DataConfig
from dmf_ray.errors import ConfigError, DataError
from dmf_ray.schema import SECTION, Bool, Float, Floats, Int, PositiveFloat, PositiveInt, Str, plain, validate

AtLeastTwo = Annotated[Int, Field(ge=2)]


@dataclass(frozen=True, config=SECTION)
class OptimConfig:
    """Optimiser of the generator. Adam defaults follow the released toy notebook (Adam 1e-3)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: PositiveFloat = 1e-3
    betas: Annotated[Floats, Field(min_length=2, max_length=2)] = (0.9, 0.999)
    weight_decay: Annotated[Float, Field(ge=0)] = 0.0
    grad_clip: PositiveFloat | None = None
    warmup_steps: Annotated[Int, Field(ge=0)] = 0
    # linear / cosine anneal to 0 at the last step: the LR-decay controls for friction, which under
    # Adam acts like a decaying step size (compare's dm-lr-linear / dm-lr-cosine rows).
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    # Exponential moving average of the generator's weights (the released Drifting recipe uses
    # 0.999); when set, evaluation, checkpoints' generator, the registry and inference use the
    # averaged weights -- the control that asks whether friction does more than averaging does.
    ema_decay: Annotated[Float, Field(ge=0, lt=1)] | None = None

    @field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, betas: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"must be two numbers in [0, 1), got {list(betas)!r}")
        return betas


@dataclass(frozen=True, config=SECTION)
class EvalConfig:
    """Image-space scores at every evaluation (DMF Table 2; :mod:`dmf_ray.eval.image_metrics`).

    Optional: they need a latent -> image decoder and local weights, none of which ship with the
    package. The whole target split is embedded once per run (FID depends on the set size);
    ``samples`` caps the mapped latents decoded per evaluation.
    """

    decoder: Str | None = None
    clip_model: Str = "ViT-L-14-336-quickgelu"
    clip_weights: Str | None = None
    inception_weights: Str | None = None
    samples: AtLeastTwo = 2048

    @field_validator("decoder")
    @classmethod
    def _module_function(cls, decoder: str | None) -> str | None:
        if decoder is not None and (decoder.count(":") != 1 or not all(decoder.split(":"))):
            raise ValueError(f"expected 'module:function', got {decoder!r}")
        return decoder

    @model_validator(mode="after")
    def _decoder_with_weights(self) -> EvalConfig:
        weights = self.clip_weights is not None or self.inception_weights is not None
        if self.decoder is not None and not weights:
            raise ConfigError("decoder", "needs eval.clip_weights (CMMD) and/or eval.inception_weights (FID)")
        if self.decoder is None and weights:
            raise ConfigError("decoder", "required when image weights are given (a 'module:function' mapping latents to images)")
        return self


@dataclass(frozen=True, config=SECTION)
class TrainConfig:
    """Everything that defines a training run (README.md, "Configuration"). ``model.dim`` is
    derived from the data; the ``drift`` section may name a ``preset`` its other keys override.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(kind="noise", width=128, depth=3))
    drift: DriftConfig = field(default_factory=lambda: make_drift_config("toy", temperatures=(0.2,)))
    friction: FrictionConfig = field(default_factory=FrictionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: Literal["dmf", "ofm"] = "dmf"
    ofm: OFMConfig = field(default_factory=OFMConfig)
    steps: AtLeastTwo = 1000
    batch_size: AtLeastTwo = 1024
    pos_batch_size: PositiveInt | None = None
    eval_every: PositiveInt = 100
    eval_samples: AtLeastTwo = 50_000
    eval_kid: Bool = False
    seed: Annotated[Int, Field(ge=0)] = 0
    device: Str = "cpu"
    out_dir: Str = "runs/train"

    @field_validator("drift", mode="before")
    @classmethod
    def _apply_preset(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping) or "preset" not in raw:
            return raw
        options = dict(raw)
        preset = options.pop("preset")
        if preset is None:
            return options
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigError("preset", f"must be one of {sorted(PRESETS)}, got {preset!r}")
        return {**PRESETS[preset], **options}

    @field_validator("model", mode="before")
    @classmethod
    def _dim_is_derived(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping) and "dim" in raw:
            raise ConfigError("dim", "must not be set: it is taken from the data")
        return raw

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not (device == "cpu" or device.startswith("cuda")):
            raise ValueError(f"must be 'cpu' or 'cuda[:N]', got {device!r}")
        return device

    @model_validator(mode="after")
    def _sections_agree(self) -> TrainConfig:
        # ``sharp`` trains on a scalar potential, not on a drift target: there is no drift to
        # accumulate in a velocity buffer, so only first-order friction (the loss scaled by
        # 1 - gamma) is defined; its potential log Z#_q needs the generated batch as negatives.
        if self.drift.family == "sharp" and self.friction.order != "first":
            raise ConfigError(
                "friction.order",
                "must be 'first' with drift.family 'sharp' (a potential loss has no drift for a velocity buffer), "
                f"got {self.friction.order!r}",
            )
        if self.drift.family == "sharp" and not self.drift.self_negatives:
            raise ConfigError("drift.self_negatives", "must be true with drift.family 'sharp' (log Z#_q needs the generated batch)")
        if self.method == "ofm" and self.model.kind != "icnn":
            raise ConfigError(
                "model.kind", f"must be 'icnn' with method 'ofm' (the map is an ICNN's gradient), got {self.model.kind!r}"
            )
        return self

    @property
    def positives_per_step(self) -> int:
        return self.pos_batch_size or self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict, the YAML written beside every run; without the derived ``model.dim``,
        so it loads back as a config."""
        out = plain(asdict(self))
        del out["model"]["dim"]
        return out


def train_config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from nested plain data (YAML / JSON / Tune config)."""
    return validate(TrainConfig, raw)


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


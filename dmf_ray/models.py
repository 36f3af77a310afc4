"""One-step generators and their pickle-free checkpoint format.

Two MLP generators cover the project's uses:

* ``residual`` -- latent translation, f(x) = x + g(x). The last layer of g is zero-initialised,
  so training starts from the identity map exactly: before any step the "translation" already
  preserves identity, and the drift only has to learn the change (adult -> child, source ->
  target Gaussian).
* ``noise`` -- an unconditional toy generator that maps noise (B, noise_dim) to samples (B, dim).

Checkpoints are safetensors files whose metadata holds the JSON config, so a file alone rebuilds
its model and loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from dmf_ray.errors import ConfigError, DataError

GeneratorKind = Literal["residual", "noise"]
Activation = Literal["silu", "gelu", "relu", "tanh"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
}

CONFIG_METADATA_KEY = "dmf_ray.generator_config"
VERSION_METADATA_KEY = "dmf_ray.format_version"
FORMAT_VERSION = "1"


def _check_positive_int(name: str, value: object) -> None:
    # bool is a subclass of int; `depth=True` is a typo, not a depth of 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"model.{name}", f"must be an integer, got {value!r}")
    if value < 1:
        raise ConfigError(f"model.{name}", f"must be >= 1, got {value}")


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a generator; everything needed to rebuild it from a checkpoint.

    ``dim`` is the data dimension (the output; for ``residual`` also the input).
    ``noise_dim`` is the input dimension of a ``noise`` generator (None: same as ``dim``);
    a ``residual`` generator's input is its output space, so there it must be None or ``dim``.
    ``depth`` counts hidden layers of width ``width``.
    """

    kind: GeneratorKind = "residual"
    dim: int = 2
    noise_dim: int | None = None
    width: int = 256
    depth: int = 3
    activation: Activation = "silu"
    layer_norm: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in GENERATORS:
            raise ConfigError("model.kind", f"must be one of {sorted(GENERATORS)}, got {self.kind!r}")
        _check_positive_int("dim", self.dim)
        if self.noise_dim is not None:
            _check_positive_int("noise_dim", self.noise_dim)
            if self.kind == "residual" and self.noise_dim != self.dim:
                raise ConfigError(
                    "model.noise_dim",
                    f"a residual generator maps dim -> dim; leave it None or set it to dim={self.dim},"
                    f" got {self.noise_dim}",
                )
        _check_positive_int("width", self.width)
        _check_positive_int("depth", self.depth)
        if not isinstance(self.activation, str) or self.activation not in _ACTIVATIONS:
            raise ConfigError(
                "model.activation", f"must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"
            )
        if not isinstance(self.layer_norm, bool):
            raise ConfigError("model.layer_norm", f"must be true or false, got {self.layer_norm!r}")

    @property
    def input_dim(self) -> int:
        """Width of the generator's input: ``dim`` for residual, ``noise_dim or dim`` for noise."""
        return self.dim if self.noise_dim is None else self.noise_dim

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (the inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        """Build from a mapping (YAML/JSON section); unknown keys are errors, not silently ignored."""
        if not isinstance(data, Mapping):
            raise ConfigError("model", f"must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model.{unknown[0]}", f"unknown field (known: {sorted(known)})")
        return cls(**data)


def _mlp(in_dim: int, out_dim: int, cfg: GeneratorConfig) -> nn.Sequential:
    """Linear -> [LayerNorm] -> act, ``cfg.depth`` times, then a Linear to ``out_dim``."""
    layers: list[nn.Module] = []
    width_in = in_dim
    for _ in range(cfg.depth):
        layers.append(nn.Linear(width_in, cfg.width))
        if cfg.layer_norm:
            layers.append(nn.LayerNorm(cfg.width))
        layers.append(_ACTIVATIONS[cfg.activation]())
        width_in = cfg.width
    layers.append(nn.Linear(width_in, out_dim))
    return nn.Sequential(*layers)


class ResidualMLP(nn.Module):
    """Translation generator f(x) = x + g(x): (B, dim) -> (B, dim), the identity at initialisation.

    g's last Linear has zero weight and bias, so g(x) == 0 and f(x) == x bit for bit before the
    first step; gradients still reach every layer through that zero layer's weight.
    """

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = _mlp(cfg.dim, cfg.dim, cfg)
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class NoiseMLP(nn.Module):
    """Unconditional generator: noise (B, noise_dim) -> samples (B, dim), PyTorch default init."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = _mlp(cfg.input_dim, cfg.dim, cfg)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


GENERATORS: dict[str, Callable[[GeneratorConfig], nn.Module]] = {
    "residual": ResidualMLP,
    "noise": NoiseMLP,
}


def build_generator(cfg: GeneratorConfig) -> nn.Module:
    """Instantiate the generator named by ``cfg.kind``."""
    return GENERATORS[cfg.kind](cfg)


def save_generator(model: nn.Module, cfg: GeneratorConfig, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s weights and ``cfg`` to one safetensors file, atomically.

    The weights must be exactly those of ``build_generator(cfg)`` (same names and shapes); a
    mismatch -- a wrapped model (DDP, torch.compile) or the wrong config -- fails here rather
    than when someone tries to load the file. The file is written next to ``path`` and moved in
    with ``os.replace``, so a crash never leaves a half-written checkpoint under ``path``.
    """
    path = Path(path)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    with torch.device("meta"):
        reference = build_generator(cfg)
    expected = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    if got != expected:
        raise ValueError(
            f"model weights do not match a {cfg.kind!r} generator built from cfg: "
            f"expected {expected}, got {got}"
        )
    metadata = {
        CONFIG_METADATA_KEY: json.dumps(cfg.to_dict(), sort_keys=True),
        VERSION_METADATA_KEY: FORMAT_VERSION,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_generator(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, GeneratorConfig]:
    """Rebuild a generator written by :func:`save_generator`; weights are loaded strictly.

    Any problem with the file (missing, truncated, not safetensors, not a dmf_ray generator,
    config or weights inconsistent) raises :class:`DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise DataError(path, f"not a readable safetensors file ({exc})") from exc

    version = metadata.get(VERSION_METADATA_KEY)
    if CONFIG_METADATA_KEY not in metadata or version is None:
        raise DataError(path, f"no {CONFIG_METADATA_KEY!r} metadata; not a dmf_ray generator file")
    if version != FORMAT_VERSION:
        raise DataError(path, f"unsupported generator format version {version!r} (expected {FORMAT_VERSION})")
    try:
        cfg = GeneratorConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    except (json.JSONDecodeError, ConfigError) as exc:
        raise DataError(path, f"invalid generator config in metadata ({exc})") from exc

    model = build_generator(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataError(path, f"weights do not match the stored config ({exc})") from exc
    return model.to(device), cfg

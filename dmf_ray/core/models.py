"""One-step generators and their pickle-free checkpoint format.

``residual`` (latent translation, the identity at initialisation), ``noise`` (the toy's
noise -> samples), ``icnn`` (the OFM baseline's map x -> grad Psi(x)) and ``particles`` (one
free vector per train source row: the particle system DMF's equations are written for).
Checkpoints are safetensors files whose metadata holds the JSON config, so a file alone
rebuilds its model and loading never unpickles anything.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import model_validator
from pydantic.dataclasses import dataclass
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn import functional as F

from dmf_ray.errors import ConfigError, DataError
from dmf_ray.files import atomic_write
from dmf_ray.schema import SECTION, Bool, PositiveInt, validate

GeneratorKind = Literal["residual", "noise", "icnn", "particles"]
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


@dataclass(frozen=True, config=SECTION)
class GeneratorConfig:
    """Architecture of a generator; everything needed to rebuild it from a checkpoint.

    ``dim`` is the data (output) dimension; ``noise_dim`` the input of a ``noise`` generator
    (None: ``dim``; residual and icnn map dim -> dim). ``depth`` counts hidden layers. ``icnn``
    ignores ``activation`` (always CELU, see :class:`ICNN`) and has no LayerNorm. ``n_particles``
    is the train source pool's size for ``particles`` (filled in from the data, like ``dim``),
    which ignores the network fields.
    """

    kind: GeneratorKind = "residual"
    dim: PositiveInt = 2
    noise_dim: PositiveInt | None = None
    width: PositiveInt = 256
    depth: PositiveInt = 3
    activation: Activation = "silu"
    layer_norm: Bool = False
    n_particles: PositiveInt | None = None

    @model_validator(mode="after")
    def _fits_kind(self) -> GeneratorConfig:
        if self.noise_dim is not None and self.kind in ("residual", "icnn") and self.noise_dim != self.dim:
            raise ConfigError(
                "noise_dim",
                f"a {self.kind} generator maps dim -> dim; leave it None or set it to dim={self.dim}, got {self.noise_dim}",
            )
        if self.kind == "icnn" and self.layer_norm:
            raise ConfigError("layer_norm", "an icnn generator has no LayerNorm (it would break convexity)")
        if self.n_particles is not None and self.kind != "particles":
            raise ConfigError("n_particles", f"only a particles generator has them (kind {self.kind!r}), got {self.n_particles}")
        return self

    @property
    def input_dim(self) -> int:
        """Width of the generator's input: ``dim`` for residual/icnn, ``noise_dim or dim`` for noise."""
        return self.dim if self.noise_dim is None else self.noise_dim

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (the inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> GeneratorConfig:
        """Build from a mapping (a model section, checkpoint metadata); ConfigError naming ``model.<key>``."""
        return validate(cls, data, prefix="model")


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
    """Translation generator f(x) = x + g(x), (B, dim) -> (B, dim).

    g's last Linear is zero, so f is the identity bit for bit before the first step and the drift
    only learns the change (adult -> child); gradients still reach every layer through it.
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


def _softplus_inverse(y: float) -> float:
    """The raw value whose softplus is ``y`` (> 0): log(exp(y) - 1)."""
    return math.log(math.expm1(y))


class ICNN(nn.Module):
    """Dense input-convex network Psi: R^d -> R; the generator is its gradient map x -> grad Psi(x).

    Why: a gradient of a convex function is the form every quadratic-cost OT map takes (Brenier),
    so OFM (Kornilov et al. 2024) searches only among such maps. The dense ICNN with convex
    quadratic skips of the OFM/ALAE experiments (Korotin et al. 2021), K = ``depth``, w = ``width``:

        z_1     = celu(L_1 x + b_1 + (A_1 x)^2)                          (w,)
        z_{k+1} = celu(softplus(V_k) z_k + L_{k+1} x + b_{k+1} + (A_{k+1} x)^2)
        Psi(x)  = softplus(v) . z_K + 1/2 ||B x||^2 + c . x + ALPHA/2 ||x||^2

    (A_k x)^2 is elementwise (one rank-1 convex quadratic per unit), L_k, A_k, b_k, B, c are
    unconstrained. Convexity holds for *every* parameter value: CELU is convex and non-decreasing
    (and smooth, unlike ReLU, so grad Psi has the Hessian OFM's loss uses), the z-path weights
    are non-negative through a softplus (not the paper code's clamp after each step, which a
    training loop could forget), the rest are convex quadratics and affine terms. ALPHA/2 ||x||^2
    makes Psi ALPHA-strongly convex, so the OFM inner problem stays strongly convex even at
    t = 1 and the map is invertible.

    Initialisation: B = sqrt(1 - ALPHA) I, c = 0, and a z-path of small non-negative weights, so
    Psi(x) ~ ||x||^2 / 2 and the map starts close to (not exactly at) the identity. The affine
    part grad(1/2 ||B x||^2 + c . x) = B^T B x + c can represent any PSD-linear map exactly --
    the Gaussian-to-Gaussian OT maps.
    """

    ALPHA = 1e-2  # strong-convexity floor of Psi (the map's Jacobian is >= ALPHA * I)
    OUT_SCALE = 0.1  # sum of the initial output weights softplus(v): the z-path's share at init

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, w, k = cfg.dim, cfg.width, cfg.depth
        self.skip_linear = nn.ModuleList(nn.Linear(d, w) for _ in range(k))
        self.skip_quadratic = nn.ParameterList(nn.Parameter(torch.empty(w, d)) for _ in range(k))
        self.z_weight = nn.ParameterList(nn.Parameter(torch.empty(w, w)) for _ in range(k - 1))
        self.out_weight = nn.Parameter(torch.empty(w))
        self.out_quadratic = nn.Parameter(torch.empty(d, d))
        self.out_linear = nn.Parameter(torch.empty(d))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d, w = self.cfg.dim, self.cfg.width
        for a in self.skip_quadratic:
            # (a . x)^2 is O(1) for inputs of unit scale per coordinate.
            nn.init.normal_(a, std=1.0 / math.sqrt(d))
        for v in self.z_weight:
            # softplus(v) ~ 1/w: each z-layer averages the previous one, keeping its scale.
            nn.init.uniform_(v, _softplus_inverse(0.5 / w), _softplus_inverse(1.5 / w))
        nn.init.constant_(self.out_weight, _softplus_inverse(self.OUT_SCALE / w))
        with torch.no_grad():
            self.out_quadratic.copy_(torch.eye(d) * math.sqrt(1.0 - self.ALPHA))
        nn.init.zeros_(self.out_linear)

    def potential(self, x: Tensor) -> Tensor:
        """Psi(x) for x (N, dim) -> (N,); convex in x for any parameter values."""
        z: Tensor | None = None
        for k, (linear, quad) in enumerate(zip(self.skip_linear, self.skip_quadratic)):
            pre = linear(x) + (x @ quad.T).square()  # (N, w)
            if z is not None:
                pre = pre + z @ F.softplus(self.z_weight[k - 1]).T
            z = F.celu(pre)
        assert z is not None  # depth >= 1 is validated by GeneratorConfig
        psi = z @ F.softplus(self.out_weight)  # (N,)
        psi = psi + 0.5 * (x @ self.out_quadratic.T).square().sum(dim=1) + x @ self.out_linear
        return psi + 0.5 * self.ALPHA * x.square().sum(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """The map grad_x Psi(x): (N, dim) -> (N, dim), also under no_grad / inference_mode
        (lifted locally); differentiable in x and the parameters only when grad mode is on."""
        differentiable = torch.is_grad_enabled()
        with torch.inference_mode(False), torch.enable_grad():
            # An inference-mode tensor cannot enter autograd; a clone made here can.
            x_in = x.clone() if x.is_inference() else x
            if not x_in.requires_grad:
                x_in = x_in.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.potential(x_in).sum(), x_in, create_graph=differentiable)
        return grad


class Particles(nn.Module):
    """One free vector per train source row, initialised to the row: f(x_j) = p_j.

    Why: DMF's updates (Kazanskii et al. 2026, arXiv 2604.18194, eq. 12 and appendix B eq. 21)
    move particles, not network weights. With plain SGD at the learning rate that moves every
    particle exactly onto its regression target (``lr = B D / 2`` for ``target_loss`` with unit
    scale, i.e. ``drift.distance_norm`` off) and full batches, training *is* the particle
    iteration, which tests check against the equations. A row is identified by exact match with
    the stored source rows (the nearest one; distances computed without the matmul shortcut, so
    a row's own distance is exactly 0), so the trainer passes rows as it does to every generator;
    a held-out row gets its nearest train row's particle. Each lookup costs B x N distances:
    meant for small sets.
    """

    _CHUNK_ENTRIES = 1 << 22

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        if cfg.n_particles is None:
            raise ConfigError("n_particles", "a particles generator needs the train pool's size (the trainer fills it in)")
        self.cfg = cfg
        self.register_buffer("sources", torch.zeros(cfg.n_particles, cfg.dim))
        self.positions = nn.Parameter(torch.zeros(cfg.n_particles, cfg.dim))

    @torch.no_grad()
    def place(self, rows: Tensor) -> None:
        """Start every particle at its source row: rows (n_particles, dim), the train source pool."""
        self.sources.copy_(rows)
        self.positions.copy_(rows)

    def forward(self, x: Tensor) -> Tensor:
        step = max(1, self._CHUNK_ENTRIES // self.sources.shape[0])
        nearest = torch.cat([
            torch.cdist(x[i : i + step], self.sources, compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1)
            for i in range(0, x.shape[0], step)
        ])
        return self.positions[nearest]


GENERATORS: dict[str, Callable[[GeneratorConfig], nn.Module]] = {
    "residual": ResidualMLP,
    "noise": NoiseMLP,
    "icnn": ICNN,
    "particles": Particles,
}


def build_generator(cfg: GeneratorConfig, train_source: Tensor | None = None) -> nn.Module:
    """A fresh generator of ``cfg``; a ``particles`` one starts at ``train_source`` when given
    (a checkpoint being loaded brings its own), which must hold ``cfg.n_particles`` rows."""
    model = GENERATORS[cfg.kind](cfg)
    if isinstance(model, Particles) and train_source is not None:
        if train_source.shape[0] != cfg.n_particles:
            raise ConfigError(
                "model.kind",
                f"particles are sized by data.n_train ({cfg.n_particles}), the train pool has {train_source.shape[0]} rows",
            )
        model.place(train_source)
    return model


def save_generator(model: nn.Module, cfg: GeneratorConfig, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s weights and ``cfg`` to one safetensors file, atomically.

    Weights that are not exactly those of ``build_generator(cfg)`` -- a wrapped model (DDP,
    torch.compile) or the wrong config -- fail here rather than when the file is loaded.
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
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_generator(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, GeneratorConfig]:
    """Rebuild a generator written by :func:`save_generator`; any problem with the file is a
    :class:`DataError` naming it."""
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

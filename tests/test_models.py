"""Generators: shapes, identity start, config validation, and the safetensors checkpoint format."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from dmf_ray.errors import ConfigError, DataError
from dmf_ray.core.models import (
    CONFIG_METADATA_KEY,
    GeneratorConfig,
    NoiseMLP,
    ResidualMLP,
    build_generator,
    load_generator,
    save_generator,
)

SMALL = dict(width=16, depth=2)


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu", "tanh"])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_residual_is_exact_identity_at_init(activation: str, layer_norm: bool) -> None:
    torch.manual_seed(0)
    model = build_generator(
        GeneratorConfig(kind="residual", dim=5, activation=activation, layer_norm=layer_norm, **SMALL)
    )
    assert isinstance(model, ResidualMLP)
    x = torch.randn(32, 5) * 10
    assert torch.equal(model(x), x)


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu", "tanh"])
def test_noise_mlp_shapes(activation: str) -> None:
    model = build_generator(GeneratorConfig(kind="noise", dim=3, noise_dim=7, activation=activation, **SMALL))
    assert isinstance(model, NoiseMLP)
    assert model(torch.randn(11, 7)).shape == (11, 3)
    default_noise = build_generator(GeneratorConfig(kind="noise", dim=4, **SMALL))
    assert default_noise(torch.randn(2, 4)).shape == (2, 4)


def test_depth_counts_hidden_layers() -> None:
    cfg = GeneratorConfig(kind="noise", dim=2, width=8, depth=4, layer_norm=True)
    modules = list(build_generator(cfg).modules())
    linears = [m for m in modules if isinstance(m, torch.nn.Linear)]
    norms = [m for m in modules if isinstance(m, torch.nn.LayerNorm)]
    assert len(linears) == 5 and len(norms) == 4


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(kind="flow"), "model.kind"),
        (dict(dim=0), "model.dim"),
        (dict(dim=2.0), "model.dim"),
        (dict(dim=True), "model.dim"),
        (dict(kind="noise", noise_dim=-1), "model.noise_dim"),
        (dict(kind="residual", dim=2, noise_dim=3), "model.noise_dim"),
        (dict(width=0), "model.width"),
        (dict(depth=0), "model.depth"),
        (dict(activation="sigmoid"), "model.activation"),
        (dict(layer_norm="yes"), "model.layer_norm"),
    ],
)
def test_invalid_config_names_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        GeneratorConfig.from_dict(kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_config_dict_round_trip_and_unknown_key() -> None:
    cfg = GeneratorConfig(kind="noise", dim=3, noise_dim=5, width=32, depth=1, activation="tanh", layer_norm=True)
    assert GeneratorConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match=r"^model\.hidden: unknown key"):
        GeneratorConfig.from_dict({"dim": 2, "hidden": 64})
    with pytest.raises(ConfigError, match=r"^model: must be a mapping"):
        GeneratorConfig.from_dict([("dim", 2)])  # type: ignore[arg-type]


def _trained(cfg: GeneratorConfig) -> torch.nn.Module:
    """A generator after one optimiser step, so its weights differ from any fresh init."""
    torch.manual_seed(0)
    model = build_generator(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(64, cfg.input_dim)
    loss = ((model(x) - 1.0) ** 2).mean()
    loss.backward()
    opt.step()
    return model


@pytest.mark.parametrize("kind", ["residual", "noise"])
def test_training_step_changes_outputs(kind: str) -> None:
    cfg = GeneratorConfig(kind=kind, dim=3, **SMALL)
    torch.manual_seed(0)
    before = build_generator(cfg)
    x = torch.randn(8, 3)
    after = _trained(cfg)
    assert not torch.allclose(before(x), after(x))
    if kind == "residual":
        # Second step: gradients reach the hidden layers through the (now non-zero) last layer.
        first = after.net[0].weight.detach().clone()
        opt = torch.optim.SGD(after.parameters(), lr=0.1)
        ((after(x) - 1.0) ** 2).mean().backward()
        opt.step()
        assert not torch.equal(after.net[0].weight, first)


@pytest.mark.parametrize("kind", ["residual", "noise"])
def test_save_load_round_trip(tmp_path, kind: str) -> None:
    cfg = GeneratorConfig(kind=kind, dim=4, noise_dim=None, width=16, depth=2, activation="gelu", layer_norm=True)
    model = _trained(cfg)
    path = tmp_path / "sub" / "gen.safetensors"
    save_generator(model, cfg, path)
    loaded, loaded_cfg = load_generator(path)
    assert loaded_cfg == cfg
    assert type(loaded) is type(model)
    x = torch.randn(10, 4)
    assert torch.equal(loaded(x), model(x))
    assert [p.name for p in path.parent.iterdir()] == ["gen.safetensors"]  # no temp file left


def test_save_rejects_model_that_does_not_match_config(tmp_path) -> None:
    model = build_generator(GeneratorConfig(dim=2, **SMALL))
    with pytest.raises(ValueError, match="do not match"):
        save_generator(model, GeneratorConfig(dim=3, **SMALL), tmp_path / "g.safetensors")
    assert list(tmp_path.iterdir()) == []


def _valid_file(tmp_path):
    cfg = GeneratorConfig(dim=2, **SMALL)
    path = tmp_path / "gen.safetensors"
    save_generator(build_generator(cfg), cfg, path)
    return path


def test_load_truncated_file(tmp_path) -> None:
    path = _valid_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_generator(path)


def test_load_garbage_and_missing_file(tmp_path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"definitely not a safetensors file")
    with pytest.raises(DataError, match=re.escape(str(garbage))):
        load_generator(garbage)
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(DataError, match=f"{re.escape(str(missing))}: no such file"):
        load_generator(missing)


def test_load_without_or_with_bad_metadata(tmp_path) -> None:
    weights = build_generator(GeneratorConfig(dim=2, **SMALL)).state_dict()
    bare = tmp_path / "bare.safetensors"
    save_file(dict(weights), str(bare))
    with pytest.raises(DataError, match=f"{re.escape(str(bare))}: no .*metadata"):
        load_generator(bare)
    bad = tmp_path / "bad.safetensors"
    meta = {CONFIG_METADATA_KEY: json.dumps({"dim": 2, "depth": 0}), "dmf_ray.format_version": "1"}
    save_file(dict(weights), str(bad), metadata=meta)
    with pytest.raises(DataError, match=f"{re.escape(str(bad))}: invalid generator config.*model.depth"):
        load_generator(bad)
    mismatch = tmp_path / "mismatch.safetensors"
    meta = {CONFIG_METADATA_KEY: json.dumps({"dim": 3, **SMALL}), "dmf_ray.format_version": "1"}
    save_file(dict(weights), str(mismatch), metadata=meta)
    with pytest.raises(DataError, match=f"{re.escape(str(mismatch))}: weights do not match"):
        load_generator(mismatch)

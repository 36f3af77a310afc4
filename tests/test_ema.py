"""``optim.ema_decay``: an exponential moving average of the generator is what a run is judged and
shipped by -- evaluations, checkpoints, the exported generator and so inference -- the control
that separates friction's effect from weight averaging's."""

from __future__ import annotations

import json

import pytest
import torch

from dmf_ray.core.models import load_generator
from dmf_ray.data import load_dataset
from dmf_ray.errors import ConfigError
from dmf_ray.trainer.checkpoint import restore_state, save_checkpoint
from dmf_ray.trainer.config import load_train_config
from dmf_ray.trainer.engine import build_state, evaluate, serving_model, train, train_step
from dmf_ray.train import run as train_cli

DECAY = 0.9


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_the_average_follows_the_ema_recursion(tiny_overrides) -> None:
    cfg = load_train_config(None, {**tiny_overrides, "optim.ema_decay": DECAY})
    data = load_dataset(cfg.data)
    state = build_state(cfg, data)
    train_step(state, cfg, data)
    expected = _params(state.model)  # the first update copies the weights
    assert all(torch.equal(a, b) for a, b in zip(_params(serving_model(state)), expected))
    for _ in range(4):
        train_step(state, cfg, data)
        expected = [DECAY * e + (1 - DECAY) * w for e, w in zip(expected, _params(state.model))]
    for got, want in zip(_params(serving_model(state)), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(_params(serving_model(state)), _params(state.model)))


def test_without_ema_the_served_model_is_the_trained_one(tiny_overrides) -> None:
    cfg = load_train_config(None, tiny_overrides)
    state = build_state(cfg, load_dataset(cfg.data))
    assert state.ema is None and serving_model(state) is state.model


def test_evaluations_score_the_averaged_weights(tiny_overrides) -> None:
    cfg = load_train_config(None, {**tiny_overrides, "optim.ema_decay": DECAY})
    data = load_dataset(cfg.data)
    seen = []
    train(cfg, data, on_eval=lambda s, rec: seen.append(
        (rec["val_fd"], evaluate(serving_model(s), data, cfg)["val_fd"], evaluate(s.model, data, cfg)["val_fd"])))
    assert all(reported == averaged for reported, averaged, _ in seen)
    assert all(reported != raw for reported, _, raw in seen)


def test_a_resumed_run_continues_the_average_exactly(tmp_path, tiny_overrides) -> None:
    cfg = load_train_config(None, {**tiny_overrides, "optim.ema_decay": DECAY, "steps": 12, "eval_every": 6})
    data = load_dataset(cfg.data)
    straight = build_state(cfg, data)
    for _ in range(12):
        train_step(straight, cfg, data)
    halfway = build_state(cfg, data)
    for _ in range(6):
        train_step(halfway, cfg, data)
    save_checkpoint(tmp_path / "ckpt.safetensors", halfway, cfg)
    resumed = restore_state(build_state(cfg, data), tmp_path / "ckpt.safetensors")
    for _ in range(6):
        train_step(resumed, cfg, data)
    for a, b in zip(_params(serving_model(resumed)), _params(serving_model(straight))):
        assert torch.equal(a, b)


def test_a_checkpoint_without_the_average_is_refused(tmp_path, tiny_overrides) -> None:
    plain = load_train_config(None, tiny_overrides)
    data = load_dataset(plain.data)
    save_checkpoint(tmp_path / "plain.safetensors", build_state(plain, data), plain)
    with_ema = load_train_config(None, {**tiny_overrides, "optim.ema_decay": DECAY})
    with pytest.raises(Exception, match="no EMA weights"):
        restore_state(build_state(with_ema, data), tmp_path / "plain.safetensors")


def test_the_exported_generator_holds_the_averaged_weights(tmp_path, tiny_overrides) -> None:
    out = tmp_path / "run"
    argv = ["--out", str(out), "--set", f"optim.ema_decay={DECAY}", "--no-progress"]
    argv += [a for k, v in tiny_overrides.items() for a in ("--set", f"{k}={v}")]
    final = train_cli(argv)
    model, _ = load_generator(out / "generator.safetensors")
    cfg = load_train_config(None, {**tiny_overrides, "optim.ema_decay": DECAY})
    data = load_dataset(cfg.data)
    rescored = evaluate(model, data, cfg, split="test")
    assert rescored["test_fd"] == pytest.approx(final["test_fd"], rel=1e-6)
    assert json.loads((out / "metrics.json").read_text())["test_fd"] == pytest.approx(final["test_fd"])


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_decay_outside_zero_one_is_a_config_error(decay: float, tiny_overrides) -> None:
    with pytest.raises(ConfigError, match="optim.ema_decay"):
        load_train_config(None, {**tiny_overrides, "optim.ema_decay": decay})

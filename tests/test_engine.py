"""The training step and loop: learning, determinism, exact resume, divergence handling."""

from __future__ import annotations

import pytest
import torch

from dmf_ray.trainer.checkpoint import restore_state, save_checkpoint
from dmf_ray.core.friction import FrictionConfig, gamma
from dmf_ray.trainer.config import OptimConfig, load_train_config
from dmf_ray.data import load_dataset
from dmf_ray.trainer.engine import _lr_lambda, build_state, evaluate, train, train_step
from dmf_ray.errors import TrainingDiverged


def _weights(state) -> list[torch.Tensor]:
    return [p.detach().clone() for p in state.model.parameters()]


@pytest.mark.slow
def test_short_toy_run_improves_fd_tenfold() -> None:
    cfg = load_train_config(None, {"steps": 300, "eval_every": 300, "batch_size": 256, "eval_samples": 5000,
                                   "data.n_train": 20000, "data.n_test": 5000})
    data = load_dataset(cfg.data)
    state = build_state(cfg, data)
    fd_untrained = evaluate(state.model, data, cfg)["val_fd"]
    state = train(cfg, data, state)
    fd_trained = state.history[-1]["val_fd"]
    assert fd_trained * 10 <= fd_untrained, (fd_untrained, fd_trained)


def test_same_seed_gives_identical_weights(tiny_overrides) -> None:
    cfg = load_train_config(None, tiny_overrides)
    data = load_dataset(cfg.data)
    a = train(cfg, data)
    b = train(cfg, data)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b)))
    c = train(load_train_config(None, {**tiny_overrides, "seed": 1}), data)
    assert not all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(c)))


@pytest.mark.parametrize("order", ["first", "second", "hybrid"])
def test_resume_from_checkpoint_is_bit_identical(tiny_overrides, tmp_path, order) -> None:
    cfg = load_train_config(None, {**tiny_overrides, "friction.order": order, "optim.lr_schedule": "cosine",
                                   "optim.warmup_steps": 3})
    data = load_dataset(cfg.data)
    straight = train(cfg, data)

    half = build_state(cfg, data)
    for _ in range(10):
        train_step(half, cfg, data)
    save_checkpoint(tmp_path / "ckpt.safetensors", half, cfg)
    resumed = restore_state(build_state(cfg, data), tmp_path / "ckpt.safetensors")
    assert resumed.step == 10
    resumed = train(cfg, data, resumed)
    assert all(torch.equal(x, y) for x, y in zip(_weights(straight), _weights(resumed)))
    if order != "first":
        assert torch.equal(straight.velocity.velocity, resumed.velocity.velocity)


def test_non_finite_weights_end_training_with_a_reason(tiny_overrides) -> None:
    cfg = load_train_config(None, tiny_overrides)
    data = load_dataset(cfg.data)
    state = build_state(cfg, data)
    with torch.no_grad():
        next(state.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="step|non-finite"):
        train(cfg, data, state)


def test_eval_callback_sees_every_evaluation_of_the_current_model(tiny_overrides) -> None:
    cfg = load_train_config(None, tiny_overrides)
    data = load_dataset(cfg.data)
    untrained = evaluate(build_state(cfg, data).model, data, cfg)["val_fd"]
    seen = []
    train(cfg, data, on_eval=lambda s, rec: seen.append((s.step, rec["val_fd"], evaluate(s.model, data, cfg)["val_fd"])))
    assert [step for step, _, _ in seen] == [10, 20]
    assert all(reported == now for _, reported, now in seen)  # the scores of the model at that step
    # Evaluations score validation; the test split is scored once, at the last step.
    history = train(cfg, data).history
    assert not any(k.startswith("test_") for k in history[0]) and {"test_fd", "val_fd"} <= set(history[-1])
    assert history[-1]["test_fd"] != history[-1]["val_fd"]
    fds = [untrained] + [fd for _, fd, _ in seen]
    assert fds == sorted(fds, reverse=True) and fds[-1] < 0.99 * untrained, fds  # training lowers FD


def test_gaussian_ot_run_reports_l2_uvp_below_the_identity_map(tiny_overrides) -> None:
    cfg = load_train_config(None, {**tiny_overrides, "data.name": "gaussian-ot", "data.dim": 8, "model.kind": "residual"})
    data = load_dataset(cfg.data)
    identity = evaluate(build_state(cfg, data).model, data, cfg)  # a residual generator starts as x -> x
    assert identity["val_transport_cost"] == 0.0 and identity["val_l2_uvp"] > 100  # worse than the target's mean
    state = train(cfg, data)
    uvp = [h["val_l2_uvp"] for h in state.history]
    assert uvp[0] > uvp[-1] and uvp[-1] < 0.95 * identity["val_l2_uvp"], (identity["val_l2_uvp"], uvp)
    assert state.history[-1]["val_transport_cost"] > 0


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_lr_annealing_controls_follow_the_friction_shape(shape: str) -> None:
    """The DM + LR-decay controls scale the step size by 1 - gamma of the same-shaped friction."""
    steps = 50
    factor = _lr_lambda(OptimConfig(lr_schedule=shape), steps)
    friction = FrictionConfig(schedule=shape)
    values = [factor(i) for i in range(steps)]
    assert values[0] == 1.0 and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert values == pytest.approx([1 - gamma(friction, i, steps) for i in range(steps)], abs=1e-12)


def test_toy_evaluations_see_the_modes_and_gaussian_ot_has_no_density(tiny_overrides) -> None:
    """The toy's known mixture density gives mode-weight error and NLL; other tasks have none."""
    cfg = load_train_config(None, tiny_overrides)
    data = load_dataset(cfg.data)
    scores = evaluate(build_state(cfg, data).model, data, cfg)
    assert {"val_fd", "val_energy", "val_mmd", "val_mode_weight_error", "val_nll"} <= set(scores)
    cfg = load_train_config(None, {**tiny_overrides, "data.name": "gaussian-ot", "data.dim": 4, "model.kind": "residual"})
    data = load_dataset(cfg.data)
    scores = evaluate(build_state(cfg, data).model, data, cfg, split="test")
    assert "test_l2_uvp" in scores and not {"test_mode_weight_error", "test_nll"} & set(scores)

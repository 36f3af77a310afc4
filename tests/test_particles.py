"""The ``particles`` generator turns the trainer into DMF's particle iteration, exactly.

With one free vector per source row, full batches and SGD at lr = B D / 2 (the step that puts
every particle on its regression target ``x + d`` of ``target_loss`` at unit scale), the
trainer must reproduce eq. 12 (first order) and appendix B's eq. 21 (second order) of
Kazanskii et al. 2026 (arXiv 2604.18194), computed here directly from the equations with the
readable :func:`dmf_ray.core.drift.drift_field`.
"""

from __future__ import annotations

import pytest
import torch

from dmf_ray.core.drift import drift_field
from dmf_ray.core.friction import gamma
from dmf_ray.core.models import GeneratorConfig, Particles, build_generator, load_generator, save_generator
from dmf_ray.data import load_dataset as build_data
from dmf_ray.errors import ConfigError
from dmf_ray.trainer.config import load_train_config
from dmf_ray.trainer.engine import build_state, generator_config, train_step

N, STEPS = 48, 6


def _config(order: str, temperatures: tuple[float, ...] = (0.02, 0.05, 0.2)):
    return load_train_config(None, {
        "steps": STEPS, "eval_every": STEPS, "batch_size": N, "data.n_train": N, "data.n_test": 64,
        "model.kind": "particles", "friction.schedule": "linear", "friction.order": order,
        "drift.distance_norm": False,  # unit scale s: SGD's step is the same every iteration
        "drift.temperatures": temperatures,
        "optim.name": "sgd", "optim.betas": (0.0, 0.999), "optim.lr": N * 2 / 2,  # B D / 2, D = 2
    })


def _step(x: torch.Tensor, x_before: torch.Tensor, positives: torch.Tensor, cfg, i: int) -> torch.Tensor:
    """x_{i+1} = x_i + (1 - g_i) V(x_i)  (eq. 12), or, with the realised velocity v_i = x_i - x_{i-1}
    (v_0 = 0): v_{i+1} = (1 - g_i) v_i + V(x_i), x_{i+1} = x_i + v_{i+1}  (eq. 21)."""
    g = gamma(cfg.friction, i, STEPS)
    drift = drift_field(x, positives, None, cfg.drift).drift
    if cfg.friction.order == "first":
        return x + (1 - g) * drift
    return x + (1 - g) * (x - x_before) + drift


def _trainer_trajectory(cfg) -> tuple[list[torch.Tensor], torch.Tensor]:
    """[x_0, ..., x_T] of the particles trained by the engine, and the positives (all targets)."""
    data = build_data(cfg.data)
    state = build_state(cfg, data)
    trajectory = [state.model.positions.detach().clone()]
    for _ in range(STEPS):  # every step is one full epoch: each row once, all targets as positives
        train_step(state, cfg, data)
        trajectory.append(state.model.positions.detach().clone())
    return trajectory, data.train_target


@pytest.mark.parametrize("order", ["first", "second"])
def test_every_trainer_step_is_the_particle_equation(order: str) -> None:
    cfg = _config(order)  # the released temperatures
    trajectory, positives = _trainer_trajectory(cfg)
    assert torch.equal(trajectory[0], build_data(cfg.data).train_source)  # x_0 = the source rows
    for i in range(STEPS):
        x_before = trajectory[i - 1] if i > 0 else trajectory[0]
        expected = _step(trajectory[i], x_before, positives, cfg, i)
        # float32 round-off only: the batch's rows come permuted, so drift sums run in another order.
        torch.testing.assert_close(trajectory[i + 1], expected, rtol=0, atol=1e-4)
    assert (trajectory[-1] - trajectory[0]).norm(dim=1).mean() > 0.5  # it went somewhere


@pytest.mark.parametrize("order", ["first", "second"])
def test_trainer_trajectory_is_the_iteration_from_the_source(order: str) -> None:
    # Wider kernels: at the released temperatures float32 round-off (1e-6 per step) grows about
    # tenfold per step along the trajectory, which the stepwise test above is immune to.
    cfg = _config(order, temperatures=(0.5, 1.0, 2.0))
    trajectory, positives = _trainer_trajectory(cfg)
    x = x_before = trajectory[0]
    for i in range(STEPS):
        x, x_before = _step(x, x_before, positives, cfg, i), x
    torch.testing.assert_close(trajectory[-1], x, rtol=0, atol=2e-3)


def test_first_and_second_order_are_different_iterations() -> None:
    first, second = (_trainer_trajectory(_config(order))[0][-1] for order in ("first", "second"))
    assert (first - second).abs().max() > 0.5


def test_particles_look_up_rows_and_survive_a_checkpoint(tmp_path) -> None:
    cfg = _config("first")
    data = build_data(cfg.data)
    model = build_state(cfg, data).model
    with torch.no_grad():
        model.positions.add_(torch.arange(N, dtype=torch.float32)[:, None])
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(data.train_source[perm]), model.positions[perm], rtol=0, atol=0)
    # A held-out row gets the particle of its nearest train row.
    nearest = torch.cdist(data.test_source, data.train_source).argmin(dim=1)
    torch.testing.assert_close(model(data.test_source), model.positions[nearest].detach(), rtol=0, atol=0)
    path = tmp_path / "particles.safetensors"
    save_generator(model, generator_config(cfg, data.dim), path)
    loaded, loaded_cfg = load_generator(path)
    assert isinstance(loaded, Particles) and loaded_cfg.n_particles == N
    torch.testing.assert_close(loaded(data.train_source), model(data.train_source).detach(), rtol=0, atol=0)


def test_particles_config_errors() -> None:
    with pytest.raises(ConfigError, match="n_particles"):
        build_generator(GeneratorConfig(kind="particles"))
    with pytest.raises(ConfigError, match="model.n_particles"):
        GeneratorConfig.from_dict({"kind": "residual", "n_particles": 3})
    with pytest.raises(ConfigError, match="model.kind"):
        build_generator(GeneratorConfig(kind="particles", n_particles=3), torch.zeros(4, 2))

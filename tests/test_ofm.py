"""Optimal Flow Matching baseline: the ICNN generator, the inverse map, the loss, a Gaussian run."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dmf_ray.eval import metrics
from dmf_ray.trainer import engine
from dmf_ray.trainer.config import OptimConfig, TrainConfig
from dmf_ray.data import DataConfig, load_dataset
from dmf_ray.errors import ConfigError
from dmf_ray.serving.inference import run_generator
from dmf_ray.core.models import ICNN, GeneratorConfig, build_generator, load_generator, save_generator
from dmf_ray.core.ofm import (
    OFMConfig,
    flow_jacobian_solve,
    invert_map,
    minibatch_ot_pairing,
    ofm_loss,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread is as fast and far less hurt by a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _icnn(dim: int = 3, width: int = 16, depth: int = 3, seed: int = 0, dtype=torch.float64) -> ICNN:
    torch.manual_seed(seed)
    model = build_generator(GeneratorConfig(kind="icnn", dim=dim, width=width, depth=depth))
    assert isinstance(model, ICNN)
    return model.to(dtype)


def _perturbed(model: ICNN, steps: int = 5, seed: int = 1, lr: float = 2.0) -> ICNN:
    """A few SGD steps on a random objective; the default lr moves the weights far from their init."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.randn(64, model.cfg.dim, generator=gen, dtype=torch.float64) * 2
        direction = torch.randn(64, model.cfg.dim, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        ((model(x) * direction).sum(dim=1).mean() + model.potential(x).sin().mean()).backward()
        opt.step()
    return model


def _inverse_residual(icnn: nn.Module, z0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """Per-sample ||(1 - t) z0 + t grad Psi(z0) - x_t||: (N,), how well :func:`invert_map` solved."""
    t = t.reshape(-1, 1).to(x_t)
    with torch.no_grad():
        return ((1.0 - t) * z0 + t * icnn(z0) - x_t).norm(dim=1)


def _min_second_difference(potential, dim: int, seed: int = 0) -> float:
    """min over random lines x + s v and s on a grid of Psi(s - h) - 2 Psi(s) + Psi(s + h)."""
    gen = torch.Generator().manual_seed(seed)
    lines, points, h = 64, 101, 0.05
    x = torch.randn(lines, 1, dim, generator=gen, dtype=torch.float64) * 2
    v = torch.randn(lines, 1, dim, generator=gen, dtype=torch.float64)
    s = torch.linspace(-4, 4, points, dtype=torch.float64)[None, :, None]
    with torch.no_grad():
        values = potential((x + s * v).reshape(-1, dim)).reshape(lines, points)
    return float((values[:, :-2] - 2 * values[:, 1:-1] + values[:, 2:]).min()) / h**2


# --- the ICNN generator -------------------------------------------------------------------------


def test_icnn_is_convex_along_random_lines_at_init_and_after_training() -> None:
    model = _icnn()
    assert _min_second_difference(model.potential, 3) > 0  # ALPHA-strongly convex: strictly > 0
    raw_before = model.z_weight[0].detach().clone()
    _perturbed(model)
    # The perturbation is large: raw z-path weights went negative, only the softplus keeps the
    # effective weights non-negative -- the case a missing constraint would fail.
    assert (model.z_weight[0] < 0).any() and not torch.allclose(model.z_weight[0], raw_before)
    assert _min_second_difference(model.potential, 3, seed=1) > 0
    # Control: the same check does catch a non-convex function.
    assert _min_second_difference(lambda x: -model.potential(x), 3) < 0


def test_forward_is_the_gradient_of_the_potential_also_under_no_grad() -> None:
    model = _perturbed(_icnn())
    x = torch.randn(20, 3, dtype=torch.float64)
    x_leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model.potential(x_leaf).sum(), x_leaf)
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    assert model.potential(x).shape == (20,)

    with torch.no_grad():
        out = model(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    model.eval()
    torch.testing.assert_close(engine.translate(model.float(), x.float()), expected.float(), rtol=1e-5, atol=1e-5)
    # The inference path used by the registry / pyfunc runs under torch.inference_mode().
    np.testing.assert_allclose(run_generator(model, x.float().numpy()), expected.float().numpy(), rtol=1e-5, atol=1e-5)


def test_forward_gives_parameter_gradients_in_training() -> None:
    model = _icnn(dtype=torch.float32)
    model.train()
    loss = model(torch.randn(16, 3)).square().sum()
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g.abs().sum() == 0]


def test_icnn_starts_close_to_the_identity() -> None:
    model = _icnn(dim=8, width=64, depth=2, dtype=torch.float32)
    x = torch.randn(512, 8)
    with torch.no_grad():
        relative = ((model(x) - x).norm(dim=1) / x.norm(dim=1)).mean()
    assert relative < 0.2


def test_save_load_round_trip_icnn(tmp_path) -> None:
    model = _perturbed(_icnn(dim=4, width=16, depth=2)).float()
    cfg = model.cfg
    path = tmp_path / "icnn.safetensors"
    save_generator(model, cfg, path)
    loaded, loaded_cfg = load_generator(path)
    assert loaded_cfg == cfg and isinstance(loaded, ICNN)
    x = torch.randn(10, 4)
    assert torch.equal(loaded(x), model(x))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# --- the inverse map, the pairing and the loss ----------------------------------------------------


def test_invert_map_solves_the_flow_equation_and_leaves_parameter_grads_alone() -> None:
    # A trained-looking map: it moves points by ~3, Hessian eigenvalues in about [1, 3].
    model = _perturbed(_icnn(), lr=0.1)
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(3)
    x_t = torch.randn(128, 3, generator=gen, dtype=torch.float64) * 2
    t = torch.rand(128, generator=gen, dtype=torch.float64)
    t[:2] = torch.tensor([0.0, 1.0], dtype=torch.float64)  # the ends of the interval
    z0 = invert_map(model, x_t, t, iterations=10)
    assert z0.shape == x_t.shape and not z0.requires_grad
    residual = _inverse_residual(model, z0, x_t, t)
    assert residual.max() < 1e-3, residual.max()
    torch.testing.assert_close(z0[0], x_t[0])  # t = 0: the inverse is the identity
    assert all(p.grad is None for p in model.parameters())
    # Not trivially satisfied: the map moves points, and z0 is far from the start x_t.
    assert (model(x_t) - x_t).norm(dim=1).mean() > 1.0
    assert (z0 - x_t).norm(dim=1).mean() > 0.5


def test_minibatch_ot_pairing_is_an_optimal_permutation() -> None:
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 3, generator=gen), torch.randn(64, 3, generator=gen) + 1.0
    perm = minibatch_ot_pairing(x0, x1)
    assert perm.dtype == torch.int64 and sorted(perm.tolist()) == list(range(64))

    def cost(p):
        return float((x0 - x1[p]).square().sum())

    assert cost(perm) < 0.9 * cost(torch.arange(64))
    small0, small1 = x0[:6], x1[:6]

    def small_cost(p):
        return float((small0 - small1[list(p)]).square().sum())

    brute = min(small_cost(p) for p in itertools.permutations(range(6)))
    assert math.isclose(small_cost(minibatch_ot_pairing(small0, small1).tolist()), brute, rel_tol=1e-6)
    with pytest.raises(ValueError, match="at least as many"):
        minibatch_ot_pairing(x0, x1[:10])


def _true_loss(model: ICNN, x0, x1, t) -> torch.Tensor:
    """L(theta) = mean ||(x0 - z0(theta)) / (t + eps)||^2 with a tight inverse-map solve."""
    x_t = (1 - t)[:, None] * x0 + t[:, None] * x1
    z0 = invert_map(model, x_t, t, iterations=300, tolerance_grad=1e-14)
    return ofm_loss(model, x0, x1, t, z0).value


@pytest.mark.parametrize("ihv", ["exact", "cg"])
def test_surrogate_gradient_matches_finite_differences_of_the_ofm_loss(ihv: str) -> None:
    """The paper's explicit gradient (implicit function theorem) vs d/dh L(theta + h delta)."""
    model = _perturbed(_icnn(dim=2, width=8, depth=2))
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(16, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(16, 2, generator=gen, dtype=torch.float64) * 1.5 + 1.0
    t = 0.2 + 0.7 * torch.rand(16, generator=gen, dtype=torch.float64)
    x_t = (1 - t)[:, None] * x0 + t[:, None] * x1
    z0 = invert_map(model, x_t, t, iterations=300, tolerance_grad=1e-14)
    out = ofm_loss(model, x0, x1, t, z0, ihv=ihv, cg_iterations=10)
    model.zero_grad()
    out.surrogate.backward()
    deltas = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in model.parameters()]
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(model.parameters(), deltas))

    h = 1e-5
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, d in zip(model.parameters(), deltas):
                p.add_(sign * h * d)
        values.append(float(_true_loss(model, x0, x1, t)))
        with torch.no_grad():
            for p, d in zip(model.parameters(), deltas):
                p.sub_(sign * h * d)
    numeric = (values[0] - values[1]) / (2 * h)
    assert abs(numeric) > 1e-3  # a direction that actually changes the loss
    assert math.isclose(analytic, numeric, rel_tol=2e-3), (analytic, numeric)


def test_cg_and_exact_hessian_solves_agree() -> None:
    """CG is the default solve (OFMConfig), so it must give the released code's exact w."""
    assert OFMConfig().ihv == "cg"
    model = _perturbed(_icnn(dim=5, width=16, depth=2))
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(32, 5, generator=gen, dtype=torch.float64)
    t = torch.rand(32, generator=gen, dtype=torch.float64)
    v = torch.randn(32, 5, generator=gen, dtype=torch.float64)
    exact = flow_jacobian_solve(model, z, t, v, "exact")
    torch.testing.assert_close(flow_jacobian_solve(model, z, t, v, "cg", cg_iterations=20), exact, rtol=1e-6, atol=1e-8)
    # and it is a solve: M w = v with M = (1 - t) I + t Hess Psi(z), applied by a product
    z_leaf = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.potential(z_leaf).sum(), z_leaf, create_graph=True)
    (hw,) = torch.autograd.grad(grad, z_leaf, grad_outputs=exact)
    torch.testing.assert_close((1 - t)[:, None] * exact + t[:, None] * hw, v, rtol=1e-8, atol=1e-10)


# --- end to end ---------------------------------------------------------------------------------


def test_ofm_learns_the_gaussian_ot_map() -> None:
    """A few hundred OFM steps on N(m_s, S_s) -> N(m_t, S_t) in d = 2 recover the closed-form map."""
    cfg = TrainConfig(
        data=DataConfig(name="gaussian-ot", dim=2, n_train=4000, n_test=2000, seed=0),
        model=GeneratorConfig(kind="icnn", width=32, depth=2),
        optim=OptimConfig(lr=1e-2),
        steps=300,
        batch_size=128,
        seed=0,
    )
    data = load_dataset(cfg.data)
    state = engine.build_state(cfg, data)
    ofm_cfg = OFMConfig()
    losses = []
    while state.step < cfg.steps:
        stats = engine.ofm_step(state, cfg, data, ofm_cfg)
        losses.append(float(stats.loss))
    assert stats.gamma == 0.0 and stats.drift.shape == (128, 2) and not stats.loss.requires_grad
    assert math.isfinite(float(stats.drift_rms))

    source = data.test_source
    truth = data.ot_map(source)
    variance = metrics.total_variance(data.test_target)
    identity = metrics.l2_uvp(source, truth, variance)
    learned = metrics.l2_uvp(engine.translate(state.model, source), truth, variance)
    assert np.mean(losses[-50:]) < 0.5 * np.mean(losses[:10])
    assert learned < 3.0 and learned < 0.01 * identity, (learned, identity)


# ------------------------------------------------------------------- the method in the platform


def test_method_ofm_needs_an_icnn_and_is_validated_at_the_edge() -> None:
    from dmf_ray.trainer.config import load_train_config

    with pytest.raises(ConfigError, match=r"^model\.kind: must be 'icnn' with method 'ofm'"):
        load_train_config(None, {"method": "ofm", "model.kind": "residual", "data.name": "gaussian-ot"})
    with pytest.raises(ConfigError, match=r"^method"):
        load_train_config(None, {"method": "flow"})
    with pytest.raises(ConfigError, match=r"^ofm\.inner_iterations"):
        load_train_config(None, {"method": "ofm", "model.kind": "icnn", "ofm.inner_iterations": 0})


def test_ofm_through_the_trainer_cli_registry_and_inference(tmp_path, tiny_overrides) -> None:
    """method: ofm trains by the same CLI, logs and registers like DMF, and the pyfunc serves it."""
    import json

    import mlflow

    import dmf_ray
    from dmf_ray.platform.registry import log_generator, register_if_champion
    from dmf_ray.train import main

    out = tmp_path / "run"
    keys = {**tiny_overrides, "steps": 8, "eval_every": 4, "method": "ofm", "model.kind": "icnn",
            "data.name": "gaussian-ot", "data.dim": 3}
    args = ["--out", str(out), "--no-progress", *(f"--set={k}={v}" for k, v in keys.items())]
    assert main(args) == 0
    final = json.loads((out / "metrics.json").read_text())
    assert final["step"] == 8 and math.isfinite(final["test_l2_uvp"]) and final["train_seconds"] > 0

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = client.create_run(client.create_experiment("ofm")).info.run_id
    model_uri = log_generator(client, run_id, out / "generator.safetensors", dim=3)
    outcome = register_if_champion(uri, model_uri, "ofm-gaussian", metric="val_l2_uvp", value=final["val_l2_uvp"], mode="min",
                                   dataset="gaussian-ot/d3", sweep_id="ofm-test")
    assert outcome.became_champion
    x = np.random.default_rng(1).standard_normal((10, 3)).astype(np.float32)
    model, _ = load_generator(out / "generator.safetensors")
    expected = run_generator(model, x)
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model("models:/ofm-gaussian@champion").predict(x)
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dmf_ray.load_model("models:/ofm-gaussian@champion", tracking_uri=uri).translate(x),
                               expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected - x).max() > 1e-3  # a trained map, not the identity

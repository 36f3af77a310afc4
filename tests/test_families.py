"""Drift families (dmf_ray.core.families): each one's defining identity, config checks, short runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from dmf_ray.trainer.config import load_train_config
from dmf_ray.data import load_dataset
from dmf_ray.core.drift import FAMILIES, make_drift_config, target_loss
from dmf_ray.core.drift_fast import drift_field
from dmf_ray.trainer.engine import build_state, train, train_step
from dmf_ray.errors import ConfigError
from dmf_ray.core.families import (
    barycentric_projection,
    family_drift,
    sharp_potential,
)

KERNELS = ("laplace", "gaussian")


def _samples(b: int = 14, m: int = 11, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gen = torch.randn(b, d, generator=g, dtype=torch.float64)
    pos = 0.8 * torch.randn(m, d, generator=g, dtype=torch.float64) + 0.7
    return gen, pos


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """Elementwise close up to rel times the largest entry (small entries are not relative)."""
    expected = expected.to(actual.dtype)
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * expected.abs().max().item())


def _log_kde(x: torch.Tensor, ys: torch.Tensor, tau: float, kernel: str, s: float, mask_self: bool) -> torch.Tensor:
    """log sum_j k(|x_i - y_j| / s) by direct differences (independent of the module's code)."""
    r = ((x[:, None, :] - ys[None, :, :]).square().sum(-1).clamp_min(1e-12)).sqrt() / s
    log_k = -r / tau if kernel == "laplace" else -r.square() / (2 * tau * tau)
    if mask_self:
        log_k = log_k.masked_fill(torch.eye(x.shape[0], dtype=torch.bool), -math.inf)
    return torch.logsumexp(log_k, dim=1)


def _dist_scale(result, d: int, distance_norm: bool) -> float:
    return float(result.scale) * math.sqrt(d) if distance_norm else 1.0


# ------------------------------------------------------------------------------------ sharp


def _regression_gradient(x: torch.Tensor, drift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """d/dx of the released regression loss on ``drift`` (what the ``drifting`` family trains)."""
    x = x.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(target_loss(x, drift, scale), x)
    return grad


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("temperatures", [(0.7,), (0.4, 1.5)])
def test_sharp_potential_encodes_the_sharp_drift(kernel: str, temperatures: tuple) -> None:
    gen, pos = _samples()
    cfg = make_drift_config(None, kernel=kernel, temperatures=temperatures, normalization="sharp",
                            distance_norm=False, drift_norm=False, family="sharp")
    x = gen.clone().requires_grad_()
    sp = sharp_potential(x, pos, cfg)
    (grad,) = torch.autograd.grad(sp.loss, x)
    reference = drift_field(gen, pos, None, cfg).drift  # float32
    _close(sp.drift, reference, 1e-5)
    # Without distance normalisation the loss is the potential times 2 / (B D).
    _close(-grad * gen.numel() / 2, sp.drift, 1e-10)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("distance_norm", [False, True])
@pytest.mark.parametrize("drift_norm", [False, True])
def test_sharp_loss_has_the_regression_loss_gradient(kernel: str, distance_norm: bool, drift_norm: bool) -> None:
    """grad_x of the sharp loss == grad_x target_loss(x, V, c): one learning rate fits both families."""
    gen, pos = _samples(seed=3)
    gen = 2.5 * gen  # a distance scale far from 1, so a missing s^2 / (c^2 D) would show
    cfg = make_drift_config("reference", kernel=kernel, temperatures=(0.3, 1.0), family="sharp",
                            distance_norm=distance_norm, drift_norm=drift_norm)
    x = gen.clone().requires_grad_()
    sp = sharp_potential(x, pos, cfg)
    (grad,) = torch.autograd.grad(sp.loss, x)
    torch.testing.assert_close(grad, _regression_gradient(gen, sp.drift, sp.scale), rtol=1e-9, atol=1e-12)
    assert grad.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("kernel", KERNELS)
def test_sharp_potential_with_distance_and_drift_norm_stays_conservative(kernel: str) -> None:
    """Under both normalisations the encoded drift is still drift.py's sharp drift (s detached)."""
    gen, pos = _samples(seed=3)
    cfg = make_drift_config("reference", kernel=kernel, temperatures=(0.3, 1.0), normalization="sharp", family="sharp")
    x = gen.clone().requires_grad_()
    sp = sharp_potential(x, pos, cfg)
    (grad,) = torch.autograd.grad(sp.loss, x)
    reference = drift_field(gen, pos, None, cfg)
    _close(sp.drift, reference.drift, 1e-5)
    _close(-grad * sp.scale.square() * gen.numel() / 2, reference.drift, 1e-5)
    _close(sp.force_rms, reference.force_rms, 1e-5)
    _close(sp.scale, reference.scale, 1e-5)


def test_sharp_family_drift_is_the_sharp_normalised_drift() -> None:
    gen, pos = _samples()
    cfg = make_drift_config("reference", family="sharp")  # normalization stays bidirectional
    expected = drift_field(gen, pos, None, make_drift_config("reference", normalization="sharp"))
    assert torch.equal(family_drift(gen, pos, cfg).drift, expected.drift)


@pytest.mark.parametrize("kernel", KERNELS)
def test_sgd_on_the_sharp_loss_decreases_it(kernel: str) -> None:
    gen, pos = _samples(seed=1)
    cfg = make_drift_config(None, kernel=kernel, temperatures=(0.5, 1.0), family="sharp",
                            distance_norm=False, drift_norm=False)
    negatives = gen.clone()  # fixed negatives: the potential is one fixed function of x
    lr = 0.05 * gen.numel() / 2  # a step of 0.05 on the potential itself (the loss is it times 2 / (B D))
    x = gen.clone().requires_grad_()
    losses = []
    for _ in range(6):
        loss = sharp_potential(x, pos, cfg, gen_all=negatives).loss
        (grad,) = torch.autograd.grad(loss, x)
        losses.append(loss.item())
        with torch.no_grad():
            x -= lr * grad
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    # The real dynamics (negatives follow x): samples move towards the positives' mean.
    x = gen.clone().requires_grad_()
    start = (x.mean(0) - pos.mean(0)).norm().item()
    for _ in range(40):
        (grad,) = torch.autograd.grad(sharp_potential(x, pos, cfg).loss, x)
        with torch.no_grad():
            x -= lr * grad
    assert (x.mean(0) - pos.mean(0)).norm().item() < 0.6 * start


def test_sharp_with_shard_matches_full_batch_rows() -> None:
    """Rows 3..9 as one worker's shard: its loss terms and drift are those rows of the full batch.

    The fake all-reduce hands back the full-batch sums (distance sum, then per-temperature force
    sums of squares), which is what summing every worker's partial sums gives.
    """
    gen, pos = _samples()
    cfg = make_drift_config("reference", family="sharp")
    full = sharp_potential(gen, pos, cfg)
    dist_sum = torch.cdist(gen, torch.cat([gen, pos])).clamp_min(1e-4).sum()  # self-distance = sqrt(1e-8)
    force_sq_sums = full.force_rms.square() * full.scale.square() * gen.numel()
    replies = [dist_sum, force_sq_sums]

    @dataclass
    class Shard:
        rows: slice

        def sum(self, t: torch.Tensor) -> torch.Tensor:
            return replies.pop(0)

    part = sharp_potential(gen[3:9], pos, cfg, gen_all=gen, shard=Shard(slice(3, 9)))
    assert not replies
    _close(part.drift, full.drift[3:9], 1e-10)
    _close(part.force_rms, full.force_rms, 1e-12)


# ------------------------------------------------------------------------------------ kl_parzen


def _tau_squared_gradient_check(family: str, kernel: str, distance_norm: bool, seed: int, temps: tuple[float, ...],
                                objective) -> torch.Tensor:
    """Assert the family's drift is sum_t (tau_t s)^2 grad_x objective(x, tau_t, s); returns the drift.

    ``objective(x, gen, pos, tau, s)`` is the scalar whose gradient the family claims to be.
    """
    gen, pos = _samples(seed=seed)
    cfg = make_drift_config(None, kernel=kernel, temperatures=temps, family=family,
                            distance_norm=distance_norm, drift_norm=False)
    result = family_drift(gen, pos, cfg)
    s = _dist_scale(result, gen.shape[1], distance_norm)
    x = gen.clone().requires_grad_()
    expected = torch.zeros_like(gen)
    for tau in temps:
        (grad,) = torch.autograd.grad(objective(x, gen, pos, tau, s), x)
        expected += (tau * s) ** 2 * grad
    _close(result.drift, expected, 1e-9)
    return result.drift


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("distance_norm", [False, True])
def test_kl_parzen_is_tau_squared_score_difference(kernel: str, distance_norm: bool) -> None:
    def log_density_ratio(x, gen, pos, tau, s):
        return (_log_kde(x, pos, tau, kernel, s, False) - _log_kde(x, gen, tau, kernel, s, True)).sum()

    drift = _tau_squared_gradient_check("kl_parzen", kernel, distance_norm, 2, (0.5, 1.2), log_density_ratio)
    assert drift.dtype == torch.float64


def test_kl_parzen_gaussian_equals_row_drift() -> None:
    """DMF Theorem 1: for the Gaussian kernel the row-normalised drift is tau^2 grad log KDE."""
    gen, pos = (t.float() for t in _samples())
    opts = dict(kernel="gaussian", temperatures=(0.1, 0.5), normalization="row")
    row = drift_field(gen, pos, None, make_drift_config("reference", **opts))
    kl = family_drift(gen, pos, make_drift_config("reference", family="kl_parzen", **opts))
    _close(kl.drift, row.drift, 1e-4)
    _close(kl.force_rms, row.force_rms, 1e-4)


# ------------------------------------------------------------------------------------ mmd


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("distance_norm", [False, True])
def test_mmd_is_tau_squared_witness_gradient(kernel: str, distance_norm: bool) -> None:
    def witness(x, gen, pos, tau, s):
        # witness(x_i) = mean_j k(x_i, y+_j) - mean_j k(x_i, x_j) (self included, fixed x_j)
        return (_log_kde(x, pos, tau, kernel, s, False).exp() / pos.shape[0]
                - _log_kde(x, gen, tau, kernel, s, False).exp() / gen.shape[0]).sum()

    _tau_squared_gradient_check("mmd", kernel, distance_norm, 4, (0.6, 2.0), witness)


@pytest.mark.parametrize("kernel", KERNELS)
def test_mmd_vanishes_when_positives_are_the_generated_points(kernel: str) -> None:
    gen, other = _samples(seed=5)
    cfg = make_drift_config(None, kernel=kernel, temperatures=(0.3, 1.0), family="mmd", drift_norm=False)
    same = family_drift(gen, gen[torch.randperm(gen.shape[0])], cfg).drift
    assert same.abs().max().item() < 1e-12
    assert family_drift(gen, other, cfg).drift.abs().max().item() > 1e-3  # the check can fail


# ------------------------------------------------------------------------------------ sinkhorn


def test_sinkhorn_is_finite_where_naive_exp_underflows() -> None:
    g = torch.Generator().manual_seed(6)
    gen = 3.0 * torch.randn(40, 2, generator=g)
    pos = 3.0 * torch.randn(30, 2, generator=g) + 2.0
    eps = 1e-3
    naive = torch.exp(-torch.cdist(gen, pos).square() / eps)  # float32 Gibbs kernel
    assert (naive.sum(1) == 0).any()  # a naive Sinkhorn would divide 0 by 0 on these rows
    cfg = make_drift_config(None, family="sinkhorn", sinkhorn_epsilon=eps, distance_norm=False, drift_norm=False)
    v = family_drift(gen, pos, cfg).drift
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    assert v.abs().max() > 0.1


def test_debiased_sinkhorn_vanishes_when_p_equals_q() -> None:
    gen, other = _samples(seed=7)
    cfg = make_drift_config("reference", family="sinkhorn", drift_norm=False)
    v = family_drift(gen, gen[torch.randperm(gen.shape[0])], cfg).drift
    assert v.abs().max().item() < 1e-8
    # without debiasing the entropic blur pulls points towards local means even when p = q
    biased = family_drift(gen, gen.clone(), make_drift_config("reference", family="sinkhorn", drift_norm=False,
                                                              self_negatives=False)).drift
    assert biased.abs().max().item() > 1e-2
    assert family_drift(gen, other, cfg).drift.abs().max().item() > 1e-2


@pytest.mark.parametrize("distance_norm", [False, True])
def test_small_epsilon_sinkhorn_moves_points_to_their_ot_partners(distance_norm: bool) -> None:
    """Grid + jitter shifted by delta: the OT partner of x_i is y_i, so V ~ -delta."""
    g = torch.Generator().manual_seed(8)
    axis = torch.arange(10, dtype=torch.float64) * 0.5
    grid = torch.cartesian_prod(axis, axis)  # 100 points, spacing 0.5
    pos = grid + 0.05 * torch.rand(grid.shape, generator=g, dtype=torch.float64)
    delta = torch.tensor([0.03, -0.02], dtype=torch.float64)
    gen = pos + delta
    cfg = make_drift_config(None, family="sinkhorn", sinkhorn_epsilon=1e-3, sinkhorn_iterations=50,
                            distance_norm=distance_norm, drift_norm=False)
    v = family_drift(gen, pos, cfg).drift
    torch.testing.assert_close(v, -delta.expand_as(v), rtol=0, atol=1e-4)
    # T_{q->p} alone is the assignment
    t = barycentric_projection(torch.cdist(gen, pos).square(), pos, 1e-3, 50)
    torch.testing.assert_close(t, pos, rtol=0, atol=1e-4)
    # a large epsilon blurs: the plain projection is no longer the partner
    blurred = barycentric_projection(torch.cdist(gen, pos).square(), pos, 1.0, 50)
    assert (blurred - pos).abs().max() > 0.1


# ------------------------------------------------------------------------------------ dispatcher


def test_drifting_family_is_drift_field_itself() -> None:
    gen, pos = (t.float() for t in _samples())
    for preset in ("reference", "toy", "paper"):
        cfg = make_drift_config(preset)
        assert cfg.family == "drifting"
        a, b = family_drift(gen, pos, cfg), drift_field(gen, pos, None, cfg)
        assert torch.equal(a.drift, b.drift) and torch.equal(a.scale, b.scale) and torch.equal(a.force_rms, b.force_rms)


@pytest.mark.parametrize("family", ["kl_parzen", "mmd", "sinkhorn"])
def test_vector_families_share_the_released_normalisations(family: str) -> None:
    """drift_norm: unit RMS per term in normalised coordinates; distance_norm: scale-equivariant."""
    gen, pos = _samples(seed=9)  # float64: Laplace MMD (1/r) is round-off sensitive at close pairs
    cfg = make_drift_config("reference", family=family, temperatures=(0.2,))
    res = family_drift(gen, pos, cfg)
    assert abs((res.drift / res.scale).square().mean().sqrt().item() - 1.0) < 1e-9
    res3 = family_drift(3.0 * gen, 3.0 * pos, cfg)
    _close(res3.drift, 3.0 * res.drift, 1e-4)  # not exact: the clamped self-distance 1e-4 is in the mean
    assert (res.drift * (pos.mean(0) - gen).sum(0)).sum() > 0  # pointing towards the data, on average


@pytest.mark.parametrize("family", ["kl_parzen", "mmd", "sinkhorn"])
def test_shard_returns_the_rows_of_the_full_drift(family: str) -> None:
    @dataclass
    class Shard:
        rows: slice

    gen, pos = _samples()
    cfg = make_drift_config("reference", family=family)
    full = family_drift(gen, pos, cfg)
    part = family_drift(gen, pos, cfg, shard=Shard(slice(3, 9)))
    assert torch.equal(part.drift, full.drift[3:9]) and torch.equal(part.force_rms, full.force_rms)


# ------------------------------------------------------------------------------------ config


def test_family_keys_load_from_dotted_overrides_and_round_trip() -> None:
    cfg = load_train_config(None, {"drift.family": "sinkhorn", "drift.sinkhorn_epsilon": 1, "drift.sinkhorn_iterations": 7})
    assert (cfg.drift.family, cfg.drift.sinkhorn_epsilon, cfg.drift.sinkhorn_iterations) == ("sinkhorn", 1.0, 7)
    d = cfg.to_dict()["drift"]
    assert d["family"] == "sinkhorn" and d["sinkhorn_epsilon"] == 1.0 and d["sinkhorn_iterations"] == 7
    assert load_train_config(None, {"drift": d}).drift == cfg.drift
    with pytest.raises(ConfigError, match=r"^drift\.family"):
        load_train_config(None, {"drift.family": "nope"})
    assert set(FAMILIES) == {"drifting", "sharp", "kl_parzen", "mmd", "sinkhorn"}


# ------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("family", FAMILIES)
def test_short_training_run_per_family_is_finite(tiny_overrides, family: str) -> None:
    cfg = load_train_config(None, {**tiny_overrides, "steps": 30, "eval_every": 30, "drift.family": family,
                                   "drift.temperatures": [0.05, 0.2]})
    data = load_dataset(cfg.data)
    state = build_state(cfg, data)
    stats = train_step(state, cfg, data)
    assert torch.isfinite(stats.loss) and torch.isfinite(stats.drift).all() and stats.drift_rms > 0
    state = train(cfg, data, state)
    record = state.history[-1]
    assert state.step == 30
    assert all(math.isfinite(record[k]) for k in ("loss", "drift_rms", "val_fd", "test_fd")), record

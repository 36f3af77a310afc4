"""One DMF training step and the loop around it: no Ray, no MLflow, no file I/O.

The same step runs in the single-process trainer and in Ray Train workers: an optional
``gather`` hook all-gathers generated samples and positives (each worker computes its own rows'
drift of the global batch exactly), and the loop reports through ``on_eval``, so checkpoints,
plots and tracking live with the caller.

Per step (DMF eq. 12 / appendix B):
    x = f_theta(source);  V = drift(sg(x), positives);  d = friction(V, gamma(i));
    loss = mean(((x - sg(x + d)) / s)^2)
where s is the drift's coordinate scale (1 unless distance normalisation is on, as released).
V comes from ``drift.family``; the ``sharp`` family trains its potential directly, scaled by
1 - gamma(i); ``method: ofm`` swaps the step for :func:`ofm_step`. The loss stays on the device
(read only at evaluations) and so do the training pools: a step issues no host-device sync.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Protocol

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from dmf_ray.core import ofm
from dmf_ray.eval import metrics
from dmf_ray.trainer.config import OptimConfig, TrainConfig
from dmf_ray.data.base import BatchSampler, Split, TranslationData, stream_generator
from dmf_ray.core.drift import RowShard, target_loss
from dmf_ray.errors import TrainingDiverged
from dmf_ray.core.families import family_drift, sharp_potential
from dmf_ray.core.friction import VelocityBuffer, apply_friction, gamma
from dmf_ray.core.models import GeneratorConfig, build_generator

_EVAL_BATCH = 8192
_RANK_STREAM = 1000  # batch-sampling streams of ranks > 0, clear of the data streams


class Gather(Protocol):
    """All-gather rows across data-parallel workers: (all rows, this worker's shard of them)."""

    def __call__(self, local: Tensor) -> tuple[Tensor, RowShard]: ...


ImageScorer = Callable[[Tensor, Split], dict[str, float]]  # mapped latents, split -> image scores against that split's target


class ProgressReporter(Protocol):
    """Shows a run's progress: told after every step (must be cheap) and at every evaluation."""

    def advance(self, step: int) -> None: ...

    def evaluated(self, shown: Mapping[str, str]) -> None: ...


@dataclass
class TrainState:
    """Everything that changes during training (and goes into a checkpoint)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    rng: torch.Generator
    sampler: BatchSampler
    velocity: VelocityBuffer | None = None
    ema: AveragedModel | None = None  # optim.ema_decay's average of the generator's weights
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class StepStats:
    """Per-step diagnostics, left on the device (no host sync)."""

    loss: Tensor
    drift: Tensor  # this process's rows of the drift V, before friction
    gamma: float

    @property
    def drift_rms(self) -> Tensor:
        return self.drift.square().mean().sqrt()


def generator_config(cfg: TrainConfig, dim: int) -> GeneratorConfig:
    """The model section with the data dimension filled in (a residual map has no noise_dim;
    particles are one per train source row, ``data.n_train`` of them)."""
    kind = cfg.model.kind
    return replace(
        cfg.model, dim=dim, noise_dim=cfg.model.noise_dim if kind == "noise" else None,
        n_particles=cfg.data.n_train if kind == "particles" else None,
    )


def build_state(cfg: TrainConfig, data: TranslationData, rank: int = 0, world: int = 1) -> TrainState:
    """Fresh model, optimiser, LR schedule, batch sampler, RNG and (second/hybrid order) velocities.

    Initial weights depend on ``cfg.seed`` alone, identical on every rank; each rank's batches
    are its own slice of the global batch (:class:`~dmf_ray.data.base.BatchSampler`), and its
    other draws (OFM's times) come from its own stream (rank 0 keeps the single-process one).
    """
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = build_generator(generator_config(cfg, data.dim), data.train_source).to(device)
    optimizer = _make_optimizer(model, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.optim, cfg.steps))
    rng = torch.Generator().manual_seed(cfg.seed) if rank == 0 else stream_generator(cfg.seed, _RANK_STREAM + rank)
    velocity = None
    if cfg.friction.order != "first":
        velocity = VelocityBuffer(data.train_source.shape[0], data.dim, device=device)
    sampler = BatchSampler(seed=cfg.seed, rank=rank, world=world)
    ema = None
    if cfg.optim.ema_decay is not None:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay), use_buffers=True)
    return TrainState(model=model, optimizer=optimizer, scheduler=scheduler, rng=rng, sampler=sampler,
                      velocity=velocity, ema=ema)


def _make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.betas[0], weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def _lr_lambda(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then constant, or a linear or cosine decay to zero at the last step (the
    linear one is 1 - gamma of DMF's linear friction: the same shape applied to the step size)."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - 1 - cfg.warmup_steps))
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def train_step(state: TrainState, cfg: TrainConfig, data: TranslationData, gather: Gather | None = None) -> StepStats:
    """One optimiser step on a fresh batch; advances ``state`` in place."""
    device = torch.device(cfg.device)
    g = gamma(cfg.friction, state.step, cfg.steps)
    idx, source = data.source_batch(cfg.batch_size, state.sampler, state.step)
    _, pos = data.target_batch(cfg.positives_per_step, state.sampler, state.step)
    source, pos = source.to(device), pos.to(device)  # no-ops once the pools live on the device

    x = state.model(source)
    x_fixed = x.detach()
    if gather is None:
        x_all, pos_all, shard = x_fixed, pos, None
    else:  # the whole batch is the target set; this worker computes its own rows' drift
        x_all, shard = gather(x_fixed)
        pos_all, _ = gather(pos)
    if cfg.drift.family == "sharp":
        # A conservative potential trained by plain backprop (dmf_ray.core.families): first-order
        # friction scales it by (1 - gamma); its gradient is target_loss's on `drift`, the
        # equivalent drift (for logs).
        sharp = sharp_potential(x, pos_all, cfg.drift, gen_all=x_all, shard=shard)
        drift = sharp.drift
        loss = sharp.loss * (1.0 - g)
    else:  # family "drifting" is drift_field itself
        result = family_drift(x_all, pos_all, cfg.drift, shard=shard)
        drift = result.drift
        if state.velocity is None:
            displacement, _ = apply_friction("first", g, drift, None)
        else:
            displacement = state.velocity.step(idx, drift, g, cfg.friction.order)
        loss = target_loss(x, displacement, result.scale)

    apply_update(state, cfg, loss)
    return StepStats(loss=loss.detach(), drift=drift, gamma=g)


def ofm_step(state: TrainState, cfg: TrainConfig, data: TranslationData, ofm_cfg: ofm.OFMConfig) -> StepStats:
    """One OFM optimiser step (:mod:`dmf_ray.core.ofm`) on ``cfg.batch_size`` pairs (the pairing
    needs equal counts: ``pos_batch_size`` does not apply); ``drift`` is the velocity residual."""
    device = torch.device(cfg.device)
    x0, x1, t = (v.to(device, non_blocking=True) for v in ofm.sample_batch(data, cfg.batch_size, ofm_cfg, state))
    x_t = (1.0 - t)[:, None] * x0 + t[:, None] * x1
    icnn = unwrap_model(state.model)
    z0 = ofm.invert_map(icnn, x_t, t, ofm_cfg.inner_iterations)
    out = ofm.ofm_loss(state.model, x0, x1, t, z0, ofm_cfg.ihv, ofm_cfg.cg_iterations, unwrapped=icnn)
    apply_update(state, cfg, out.surrogate)
    return StepStats(loss=out.value, drift=out.residual, gamma=0.0)


def apply_update(state: TrainState, cfg: TrainConfig, loss: Tensor) -> None:
    """The optimiser tail every step shares: backprop ``loss``, clip, step optimiser, EMA and LR schedule."""
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.optim.grad_clip is not None:
        nn.utils.clip_grad_norm_(state.model.parameters(), cfg.optim.grad_clip)
    state.optimizer.step()
    if state.ema is not None:
        state.ema.update_parameters(unwrap_model(state.model))
    state.scheduler.step()
    state.step += 1


@torch.no_grad()
def translate(model: nn.Module, x: Tensor, device: torch.device | str = "cpu", batch: int = _EVAL_BATCH) -> Tensor:
    """Apply the generator to many rows in batches; returns a CPU float32 tensor."""
    model.eval()
    out = [model(x[i : i + batch].to(device)).float().cpu() for i in range(0, x.shape[0], batch)]
    model.train()
    return torch.cat(out)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The generator inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def serving_model(state: TrainState) -> nn.Module:
    """The generator a run is judged and shipped by: the EMA weights when ``optim.ema_decay`` is
    set (evaluations, the exported generator, the registry and inference), else the trained one."""
    return state.ema.module if state.ema is not None else unwrap_model(state.model)


def evaluate(
    model: nn.Module, data: TranslationData, cfg: TrainConfig, image_scorer: ImageScorer | None = None, split: Split = "val"
) -> dict[str, float]:
    """Scores on one held-out split (:func:`dmf_ray.eval.metrics.evaluate_translation`, plus the
    image scorer's), named ``<split>_<metric>`` (``val_fd``, ``test_fd``) so a validation score
    is never mistaken for a test one; TrainingDiverged if the generator's outputs are not finite."""
    pool_source, pool_target = data.held_out(split)
    source = pool_source[: cfg.eval_samples]
    mapped = translate(unwrap_model(model), source, cfg.device)
    if not torch.isfinite(mapped).all():
        raise TrainingDiverged("generator produced non-finite samples")
    target = pool_target[: cfg.eval_samples]
    scores = metrics.evaluate_translation(source, mapped, target, ot_map=data.ot_map, with_kid=cfg.eval_kid, seed=cfg.seed,
                                          mixture=data.target_density)
    if image_scorer is not None:
        scores.update(image_scorer(mapped, split))
    return {f"{split}_{name}": value for name, value in scores.items()}


EvalCallback = Callable[[TrainState, dict[str, float]], None]


def train(
    cfg: TrainConfig,
    data: TranslationData,
    state: TrainState | None = None,
    *,
    on_eval: EvalCallback | None = None,
    gather: Gather | None = None,
    image_scorer: ImageScorer | None = None,
    progress: ProgressReporter | None = None,
    score: bool = True,
) -> TrainState:
    """Run (or continue) training to ``cfg.steps``; evaluate every ``cfg.eval_every`` steps.

    Each evaluation appends ``{step, loss, drift_rms, gamma, lr, train_seconds, val_<metric>...}``
    to ``state.history`` and calls ``on_eval(state, record)``; the last one (step ``cfg.steps``)
    also scores the test split once (``test_<metric>``), which nothing upstream may choose
    by. ``score=False`` (ranks other than 0)
    skips the metrics but not the callback, so every rank reports in step. A non-finite loss or
    sample raises TrainingDiverged. ``image_scorer`` and ``progress`` come from the caller
    (:func:`dmf_ray.trainer.run.run_training`), so this loop imports no CLIP, Inception or tqdm.
    """
    # exp(-d / tau) underflows for distant pairs; denormal arithmetic is many times slower on
    # x86 and changes nothing at float32 resolution of the sums, so flush it to zero.
    torch.set_flush_denormal(True)
    data = data.with_train_pools_on(cfg.device)
    state = state or build_state(cfg, data)
    shown: dict[str, str] = {}
    train_seconds = state.history[-1].get("train_seconds", 0.0) if state.history else 0.0
    window = time.perf_counter()  # start of the steps since the last evaluation
    while state.step < cfg.steps:
        stats = ofm_step(state, cfg, data, cfg.ofm) if cfg.method == "ofm" else train_step(state, cfg, data, gather)
        if progress is not None:
            progress.advance(state.step)
        if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
            loss = stats.loss.item()  # the host reads the device only at evaluations
            train_seconds += time.perf_counter() - window
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss} at step {state.step}")
            shown.update(loss=f"{loss:.4g}", gamma=f"{stats.gamma:.3f}")
            record = {
                "step": float(state.step),
                "loss": loss,
                "drift_rms": stats.drift_rms.item(),
                "gamma": stats.gamma,
                "lr": state.scheduler.get_last_lr()[0],
                "train_seconds": train_seconds,  # wall time in training steps, evaluations excluded
                **(evaluate(serving_model(state), data, cfg, image_scorer) if score else {}),
            }
            if score and state.step == cfg.steps:
                record.update(evaluate(serving_model(state), data, cfg, image_scorer, split="test"))
            state.history.append(record)
            if score:
                shown["val_fd"] = f"{record['val_fd']:.4g}"
            if progress is not None:
                progress.evaluated(shown)
            if on_eval is not None:
                on_eval(state, record)
            window = time.perf_counter()
    return state

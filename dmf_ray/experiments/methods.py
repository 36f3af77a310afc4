"""The rows and tasks a comparison is made of: each method is DMF's trainer with a few config keys.

Why a table of config overrides: every method (DM, DMF, its controls, the drift families, OFM)
runs through the same trainer, so a row differs from DMF-linear in the keys listed here and in
nothing else; a task names its shared settings, its tuning grids and the columns its table shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from dmf_ray.trainer.config import TrainConfig, load_train_config


@dataclass(frozen=True)
class Method:
    """A row of the table: a label, the config keys that make the method, the key its grid tunes."""

    label: str
    overrides: Mapping[str, Any]
    tuned_key: str | None = "drift.temperatures"  # the key the tuning grid sets (None: nothing tuned)


DM: dict[str, Any] = {"friction.schedule": "none"}
DMF: dict[str, Any] = {"friction.schedule": "linear"}
EMA: dict[str, Any] = {"optim.ema_decay": 0.999}  # the released Drifting recipe's EMA (--ema-decay)

# Every drift family runs with DMF's linear friction, so the rows differ in one thing each. The
# controls ask whether friction does more than what it resembles under Adam: annealing the step
# size by the same shape (1 - gamma for linear), or averaging the weights.
METHODS: dict[str, Method] = {
    "dm": Method("DM", DM),
    "dmf": Method("DMF (linear)", DMF),
    "dm-lr-linear": Method("DM + linear LR decay", {**DM, "optim.lr_schedule": "linear"}),
    "dm-lr-cosine": Method("DM + cosine LR decay", {**DM, "optim.lr_schedule": "cosine"}),
    "dm-ema": Method("DM + EMA 0.999", {**DM, **EMA}),
    "dmf-ema": Method("DMF (linear) + EMA 0.999", {**DMF, **EMA}),
    # The released affinity floor was set for groups of ~150 targets; at batch sizes far above
    # that (gaussian-ot d = 512) it may dominate the small affinities: the ablation without it.
    "dmf-floor0": Method("DMF (linear), affinity floor 0", {**DMF, "drift.affinity_floor": 0.0}),
    "dmf-searched": Method("DMF (searched schedule)", {}),  # the schedule comes from --searched
    "sharp": Method("sharp potential", {**DMF, "drift.family": "sharp"}),
    "kl_parzen": Method("KL (Parzen)", {**DMF, "drift.family": "kl_parzen"}),
    "mmd": Method("MMD witness", {**DMF, "drift.family": "mmd"}),
    "sinkhorn": Method("Sinkhorn", {**DMF, "drift.family": "sinkhorn"}, tuned_key="drift.sinkhorn_epsilon"),
    # OFM trains with its own paper's steps and batch (Task.ofm_steps / ofm_batch); each step solves
    # an inner L-BFGS problem per sample. Its learning rate is tuned like the others' bandwidths.
    "ofm": Method("OFM", {"method": "ofm", "model.kind": "icnn", "friction.schedule": "none"}, tuned_key="optim.lr"),
}
CONTROLS = ("dm-lr-linear", "dm-lr-cosine", "dm-ema", "dmf-ema")
FAMILIES = ("sharp", "kl_parzen", "mmd", "sinkhorn")
DEFAULT_METHODS = ("dm", "dmf", *CONTROLS, *FAMILIES, "ofm")

@dataclass(frozen=True)
class Task:
    """Shared settings of a task, its tuning grids and what its table shows."""

    overrides: Mapping[str, Any]
    taus: tuple[float, ...]
    epsilons: tuple[float, ...]
    metrics: tuple[str, ...]  # scores of the data space (toy, gaussian-ot) or of the latents (ffhq)
    space: str = ""  # header prefix of `metrics`: "latent " where the data are image latents
    image_metrics: tuple[str, ...] = ()  # decoded-image scores, in their own columns when present
    moment_control: bool = False  # a moment-matched Gaussian row (a task whose FD it fools)
    # OFM's own paper's budget (Kornilov et al. 2024: Adam, batch 128, 10k steps) and its LR grid.
    ofm_steps: int = 10_000
    ofm_batch: int = 128
    ofm_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    paper: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # method -> column -> figure


TASKS: dict[str, Task] = {
    # DMF Table 1: the 2-D toy with the trainer's toy defaults (noise MLP 128 x 3, batch 1024).
    "toy": Task(
        overrides={"data.name": "toy", "drift.preset": "toy"},
        taus=(0.05, 0.2, 0.5), epsilons=(0.01, 0.05, 0.2),
        metrics=("fd", "energy", "mmd", "mode_weight_error", "nll", "transport_cost"), moment_control=True,
        paper={"dm": {"paper 2-D FD": 0.0726}, "dmf": {"paper 2-D FD": 0.0026}, "ofm": {"paper 2-D FD": 0.0029}},
    ),
    # Gaussian -> Gaussian with a known OT map; the released drift (distance-normalised, so the
    # bandwidths are relative to the mean distance).
    "gaussian-ot": Task(
        overrides={"data.name": "gaussian-ot", "data.dim": 64, "model.kind": "residual", "model.width": 256,
                   "drift.preset": "reference"},
        taus=(0.05, 0.2, 1.0), epsilons=(0.01, 0.05, 0.2), metrics=("fd", "energy", "l2_uvp", "transport_cost"),
    ),
    # DMF Table 2: FFHQ adult -> child in ALAE W space; image FID / CMMD need a decoder. The
    # paper's figures are image-space, so they sit in image columns, never under a latent one.
    "ffhq-alae": Task(
        overrides={"data.name": "ffhq-alae", "model.kind": "residual", "model.width": 1024,
                   "drift.preset": "reference", "batch_size": 4096},
        taus=(0.05, 0.2, 1.0), epsilons=(0.01, 0.05, 0.2), metrics=("fd", "kid", "transport_cost"), space="latent ",
        image_metrics=("fid_image", "kid_image", "cmmd"),
        paper={m: {"paper image FID": fid, "paper image CMMD (paper's units)": cmmd, "paper train minutes": minutes}
               for m, (fid, cmmd, minutes) in {"dm": (11.94, 0.0238, 15), "dmf": (10.58, 0.0073, 15),
                                                "ofm": (10.63, 0.0131, 240)}.items()},
    ),
}


def method_config(base: Mapping[str, Any], method: Method, setting: float | None, seed: int) -> TrainConfig:
    """The task's shared keys, then the method's own, then the tuned value and the seed."""
    keys = {**base, **method.overrides, "seed": seed, "data.seed": seed}
    if method.tuned_key is not None and setting is not None:
        keys[method.tuned_key] = setting  # drift.temperatures takes a bare number as one temperature
    return load_train_config(None, keys)


def method_base(base: Mapping[str, Any], method: Method, task: Task, ofm_steps: int | None = None) -> dict[str, Any]:
    """The shared keys a method trains with: OFM's own paper's steps and batch (``ofm_steps``
    overrides the task's) and as many evaluations per run as the others (so its time to quality
    is read as finely), everyone else the comparison's."""
    if method.overrides.get("method") != "ofm":
        return dict(base)
    steps = task.ofm_steps if ofm_steps is None else ofm_steps
    evals = max(1, base["steps"] // base["eval_every"])
    return {**base, "steps": steps, "eval_every": max(1, steps // evals), "batch_size": task.ofm_batch}


def with_ema_decay(method: Method, decay: float) -> Method:
    """``method`` with its EMA control at ``decay``: 0.999 averages over ~1000 steps, so on a
    run of about that length the average still holds much of the initial weights; the horizon
    of an honest control matches the run's."""
    if "optim.ema_decay" not in method.overrides:
        return method
    label = method.label.replace(f"EMA {EMA['optim.ema_decay']:g}", f"EMA {decay:g}")
    return replace(method, label=label, overrides={**method.overrides, "optim.ema_decay": decay})

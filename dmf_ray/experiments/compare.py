"""One table for every method on one task: DM, DMF, its controls, the drift families and OFM.

The DMF paper's claims are comparisons (DMF vs DM vs OFM at a fraction of OFM's compute), which
only mean something when every method runs through the same trainer with equal care, beside
controls that do what friction might be doing in disguise (LR annealing, EMA), with intervals
over seeds, p-values, each metric's noise floor and the wall time each method needs to reach a
quality; the protocol and the outputs are described in README.md ("Reproductions").

    python -m dmf_ray.experiments.compare --task toy
    python -m dmf_ray.experiments.compare --task gaussian-ot --dim 64 --seeds 0 1 2 3 4
    python -m dmf_ray.experiments.compare --task toy --methods dm dmf --out outputs/toy_table1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from dmf_ray.cli import ArgumentParser, check_output_folder, run_cli
from dmf_ray.data import DataConfig, TranslationData, load_dataset
from dmf_ray.errors import ConfigError, TrainingDiverged
from dmf_ray.eval import metrics
from dmf_ray.experiments.stats import RatioCI, mean_ci, ratio_ci, seconds_to_reach, welch_p
from dmf_ray.platform.tracking import SweepTracker, tracking_uri_for
from dmf_ray.trainer.config import TrainConfig, load_train_config, read_yaml_mapping
from dmf_ray.trainer.engine import serving_model, translate
from dmf_ray.trainer.plots import plot_bars, plot_sample_panels, plt
from dmf_ray.trainer.run import run_training


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
P_REFERENCES = {"dm": "DM", "dmf": "DMF-linear"}  # p-value columns: each method against these

# Header text per metric; image-space scores say so, and "(ours)" marks what we compute.
METRIC_LABELS = {
    "fd": "FD", "kid": "KID", "energy": "energy", "mmd": "MMD²", "mode_weight_error": "mode-weight error",
    "nll": "NLL", "transport_cost": "transport cost", "l2_uvp": "L2-UVP %",
    "fid_image": "image FID (ours)", "kid_image": "image KID (ours)", "cmmd": "CMMD x1000 (ours)",
}


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


@dataclass
class RunResult:
    """One (method, setting, seed) training run: its last evaluation's scores (``val_*`` and
    ``test_*``), ``train_seconds`` (steps only) and ``seconds`` (wall time with evaluations)."""

    method: str
    setting: float | None
    seed: int
    metrics: dict[str, float]
    seconds: float
    train_seconds: float
    steps: int
    history: list[dict[str, float]]
    failure: str = ""


@dataclass(frozen=True)
class TimeToQuality:
    """Seconds of training each run needed to reach ``metric <= threshold`` (None: never), and k."""

    metric: str
    threshold: float
    seconds: dict[str, dict[int, float | None]]  # method -> seed -> seconds
    k_ofm_over_dmf: RatioCI | None  # None unless both OFM and DMF ran


@dataclass(frozen=True)
class Comparison:
    """Everything the tables, results.json and the figures are made of."""

    task: str
    results: dict[str, list[RunResult]]
    chosen: dict[str, float | None]
    tuning: dict[str, dict[float, float]]
    noise_floor: dict[str, tuple[float, float]]  # metric -> (mean, std) between two true samples
    floor_rows: int
    control: list[dict[str, Any]]  # per seed {"seed", "metrics"} of the moment-matched Gaussian
    p_values: dict[str, dict[str, float]]  # reference method -> method -> p on `p_metric`
    p_metric: str
    time_to_quality: TimeToQuality
    shared: str  # a paragraph on the shared settings
    labels: dict[str, str] = field(default_factory=dict)  # method -> its row label as run (e.g. the EMA decay)

    def label(self, name: str) -> str:
        return self.labels.get(name, METHODS[name].label)


def method_config(base: Mapping[str, Any], method: Method, setting: float | None, seed: int) -> TrainConfig:
    """The task's shared keys, then the method's own, then the tuned value and the seed."""
    keys = {**base, **method.overrides, "seed": seed, "data.seed": seed}
    if method.tuned_key is not None and setting is not None:
        keys[method.tuned_key] = setting  # drift.temperatures takes a bare number as one temperature
    return load_train_config(None, keys)


def method_base(base: Mapping[str, Any], method: Method, task: Task, ofm_steps: int | None = None) -> dict[str, Any]:
    """The shared keys a method trains with: OFM's own paper's steps and batch (``ofm_steps``
    overrides the task's), everyone else the comparison's."""
    if method.overrides.get("method") != "ofm":
        return dict(base)
    steps = task.ofm_steps if ofm_steps is None else ofm_steps
    return {**base, "steps": steps, "eval_every": max(1, steps // 10), "batch_size": task.ofm_batch}


def run_once(cfg: TrainConfig, data: TranslationData, name: str, setting: float | None) -> tuple[RunResult, Any]:
    """Train one run on ``data`` (``cfg.data``'s dataset); a diverged run is a row with its reason,
    never a crash of the comparison."""
    start = time.perf_counter()
    try:
        state = run_training(cfg, data)
    except TrainingDiverged as exc:
        seconds = time.perf_counter() - start
        print(f"  {name:<13} setting={setting} seed={cfg.seed}: diverged ({exc})", flush=True)
        return RunResult(name, setting, cfg.seed, {}, seconds, math.nan, 0, [], failure=str(exc)), None
    seconds = time.perf_counter() - start
    final = {k: float(v) for k, v in state.history[-1].items() if k not in ("step", "gamma", "lr")}
    result = RunResult(name, setting, cfg.seed, final, seconds, final["train_seconds"], state.step, state.history)
    print(f"  {name:<13} setting={setting} seed={cfg.seed:<4d} val FD={final.get('val_fd', math.nan):.5f} "
          f"test FD={final.get('test_fd', math.nan):.5f} ({seconds:.0f} s)", flush=True)
    return result, (state, data)


# --- Numbers of a comparison ------------------------------------------------------------------


def succeeded(runs: Sequence[RunResult]) -> list[RunResult]:
    return [r for r in runs if not r.failure]


def values_of(runs: Sequence[RunResult], key: str) -> list[float]:
    """``key``'s final value in every successful run (nan where a run lacks it)."""
    return [r.metrics.get(key, math.nan) for r in succeeded(runs)]


def p_values(results: dict[str, list[RunResult]], key: str) -> dict[str, dict[str, float]]:
    """Welch p of ``key`` for every method against each reference method that ran."""
    return {ref: {name: welch_p(values_of(runs, key), values_of(results[ref], key)) for name, runs in results.items()
                  if name != ref} for ref in P_REFERENCES if ref in results}


def time_to_quality(results: dict[str, list[RunResult]], metric: str, threshold: float) -> TimeToQuality:
    """Per run the training seconds to reach ``metric <= threshold``; k = OFM / DMF, paired by seed."""
    seconds = {name: {r.seed: seconds_to_reach(r.history, metric, threshold) for r in succeeded(runs)}
               for name, runs in results.items()}
    k = ratio_ci(seconds["ofm"], seconds["dmf"]) if "ofm" in seconds and "dmf" in seconds else None
    return TimeToQuality(metric, threshold, seconds, k)


def true_pool(data: TranslationData) -> torch.Tensor:
    """Independent true target rows: the validation and test pools together (disjoint draws)."""
    return torch.cat([data.val_target, data.test_target])


def noise_floor(data: TranslationData, cfg: TrainConfig) -> tuple[dict[str, tuple[float, float]], int]:
    """Every distribution score between two disjoint true samples of as many rows as an evaluation
    scores (mean, std over 5 pairs), and that row count."""
    pool = true_pool(data)
    rows = min(cfg.eval_samples, data.test_target.shape[0], pool.shape[0] // 2)
    floors = metrics.noise_floors(pool, rows, mixture=data.target_density, with_kid=cfg.eval_kid, seed=cfg.seed)
    return floors, rows


def moment_matched_scores(data: TranslationData, cfg: TrainConfig) -> dict[str, float]:
    """The single Gaussian with the train target's mean and covariance, scored on both held-out
    splits like a method's samples (no training; no transport cost: it is not a map of the source)."""
    scores: dict[str, float] = {}
    for offset, split in enumerate(("val", "test")):
        source, target = data.held_out(split)
        draws = metrics.moment_matched_gaussian(data.train_target, min(cfg.eval_samples, source.shape[0]),
                                                seed=2 * cfg.seed + offset)
        found = metrics.distribution_scores(draws, target[: cfg.eval_samples], data.target_density, cfg.eval_kid, cfg.seed)
        scores.update({f"{split}_{k}": v for k, v in found.items()})
    return scores


# --- Tables -----------------------------------------------------------------------------------


def ci_cell(values: Sequence[float]) -> str:
    """``mean ± half-width`` of the 95% t-interval over the finite values (one value: the value)."""
    mean, half = mean_ci(values)
    if math.isnan(mean):
        return "–"
    return f"{mean:.4g}" if math.isnan(half) else f"{mean:.4g} ± {half:.2g}"


def p_cell(p: float | None) -> str:
    return "–" if p is None or math.isnan(p) else f"{p:.3g}"


def _floor_cell(floor: tuple[float, float] | None) -> str:
    return "–" if floor is None else f"{floor[0]:.4g} ± {floor[1]:.2g}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def shown_metrics(cmp: Comparison) -> list[str]:
    """The task's metrics, then the image metrics some run reported (they need a decoder)."""
    task = TASKS[cmp.task]
    reported = {k for runs in cmp.results.values() for r in runs for k in r.metrics}
    return [*task.metrics, *(m for m in task.image_metrics if f"test_{m}" in reported)]


def metric_header(task: Task, metric: str, split: str) -> str:
    space = "" if metric in task.image_metrics else task.space
    return f"{split} {space}{METRIC_LABELS.get(metric, metric)}"


def markdown_table(cmp: Comparison) -> str:
    """One row per method: per metric validation and test (mean ± 95% CI over seeds), Welch p vs
    DM and DMF-linear, seconds, steps, failures, the paper's figures; then the control rows."""
    task = TASKS[cmp.task]
    shown = shown_metrics(cmp)
    paper_keys = list(dict.fromkeys(k for v in task.paper.values() for k in v))
    refs = [ref for ref in P_REFERENCES if ref in cmp.p_values]
    head = ["Method", "tuned"] + [metric_header(task, m, s) for m in shown for s in ("val", "test")]
    head += [f"p vs {P_REFERENCES[ref]} ({cmp.p_metric})" for ref in refs]
    head += ["train s", "wall s", "steps", "failed", *paper_keys]
    lines = [_row(head), "|" + " --- |" * len(head)]
    for name, runs in cmp.results.items():
        ok = succeeded(runs)
        cells = [cmp.label(name), "–" if cmp.chosen[name] is None else f"{cmp.chosen[name]:g}"]
        cells += [ci_cell(values_of(runs, f"{s}_{m}")) for m in shown for s in ("val", "test")]
        cells += [p_cell(cmp.p_values[ref].get(name)) for ref in refs]
        cells += [ci_cell([r.train_seconds for r in ok]), ci_cell([r.seconds for r in ok]),
                  str(ok[0].steps) if ok else "–", f"{len(runs) - len(ok)}/{len(runs)}"]
        cells += [str(task.paper.get(name, {}).get(k, "–")) for k in paper_keys]
        lines.append(_row(cells))
    blank = ["–"] * (len(refs) + 4 + len(paper_keys))
    if cmp.control:
        values = [c["metrics"] for c in cmp.control]
        cells = [ci_cell([v.get(f"{s}_{m}", math.nan) for v in values]) for m in shown for s in ("val", "test")]
        lines.append(_row(["moment-matched Gaussian (control, no training)", "–", *cells, *blank]))
    floor = [_floor_cell(cmp.noise_floor.get(m)) for m in shown for _ in ("val", "test")]
    lines.append(_row([f"noise floor (two true samples of {cmp.floor_rows} rows, mean ± std)", "–", *floor, *blank]))
    return "\n".join(lines) + "\n"


def time_table(cmp: Comparison) -> str:
    """Seconds of training to reach the validation threshold per method, and k = OFM / DMF."""
    ttq = cmp.time_to_quality
    lines = [_row(["Method", "seeds that reached it", f"train seconds to reach {ttq.metric} <= {ttq.threshold:.4g} (mean ± 95% CI)"]),
             "| --- | --- | --- |"]
    for name, per_seed in ttq.seconds.items():
        reached = [s for s in per_seed.values() if s is not None]
        lines.append(_row([cmp.label(name), f"{len(reached)}/{len(cmp.results[name])}", ci_cell(reached)]))
    k = ttq.k_ofm_over_dmf
    if k is not None and k.pairs == 0:
        lines += ["", "k = OFM seconds / DMF seconds to reach it: not measured (no seed reached it with both methods)."]
    elif k is not None:
        interval = "no interval (fewer than 2 seeds reached it on both)" if math.isnan(k.low) else f"95% CI [{k.low:.3g}, {k.high:.3g}]"
        lines += ["", f"k = OFM seconds / DMF seconds to reach it: {k.estimate:.3g}, {interval}, over {k.pairs} paired seeds "
                      "(geometric mean of the per-seed ratios; t-interval on their logs, back-transformed)."]
    return "\n".join(lines) + "\n"


def _shared_paragraph(base_cfg: TrainConfig, ofm_cfg: TrainConfig | None, cmp_args: argparse.Namespace,
                      tuning: dict[str, dict[float, float]], labels: Mapping[str, str]) -> str:
    grid = "; ".join(f"{labels[m]}: " + ", ".join(f"{s:g} → {v:.4g}" for s, v in scores.items())
                     for m, scores in tuning.items() if scores)
    paper_steps = TASKS[cmp_args.task].ofm_steps
    budget = "its own paper's budget, " if ofm_cfg is not None and ofm_cfg.steps == paper_steps else f"its paper's batch (its paper trains {paper_steps} steps), "
    ofm = "" if ofm_cfg is None else (f" OFM: an ICNN of the same size with {budget}{ofm_cfg.steps} steps "
                                      f"at batch {ofm_cfg.batch_size}, its learning rate tuned like the bandwidths.")
    return (f"Shared settings: {base_cfg.steps} steps, batch {base_cfg.batch_size}, {base_cfg.model.kind} generator width "
            f"{base_cfg.model.width} depth {base_cfg.model.depth}, {base_cfg.optim.name} lr {base_cfg.optim.lr:g}, "
            f"evaluation on {base_cfg.eval_samples} held-out samples, seeds {cmp_args.seeds}.{ofm} 'tuned' is the value "
            f"(bandwidth; Sinkhorn: epsilon; OFM: learning rate) each method picked by validation FD on tuning seed "
            f"{cmp_args.tune_seed}" + (f" ({grid})." if grid else "."))


def report(cmp: Comparison) -> str:
    """compare.md: the method table, its reading notes, and time to quality."""
    return (f"# Method comparison on {cmp.task}\n\n{markdown_table(cmp)}\n{cmp.shared}\n\n"
            "Cells: mean ± half-width of the 95% t-interval over the evaluation seeds (validation: the last "
            "evaluation on the validation split; test: the test split, scored once at the end). p: Welch's t-test "
            f"on {cmp.p_metric} over seeds. 'train s': seconds in training steps; 'wall s' adds the evaluations. "
            "Differences smaller than the noise floor row are not differences.\n\n"
            f"## Time to quality\n\n{time_table(cmp)}")


# --- Command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m dmf_ray.experiments.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=sorted(TASKS), default="toy")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help=f"any of {', '.join(METHODS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--taus", type=float, nargs="+", help="bandwidth grid (default: the task's)")
    p.add_argument("--epsilons", type=float, nargs="+", help="Sinkhorn epsilon grid (default: the task's)")
    p.add_argument("--ofm-lrs", type=float, nargs="+", help="OFM learning-rate grid (default: the task's)")
    p.add_argument("--ofm-steps", type=int, help="OFM's training steps (default: its paper's, 10000)")
    p.add_argument("--ema-decay", type=float, default=EMA["optim.ema_decay"],
                   help="decay of the EMA controls (default the released recipe's 0.999)")
    p.add_argument("--tune-seed", type=int, default=100)
    p.add_argument("--no-tune", action="store_true", help="use each method's first grid value, no tuning runs")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--quality-threshold", type=float, help="time to quality: seconds to reach val_fd <= this")
    p.add_argument("--quality-multiple", type=float, default=5.0,
                   help="default threshold: this multiple of the FD noise floor's mean")
    p.add_argument("--dim", type=int, help="gaussian-ot dimension (default 64)")
    p.add_argument("--data-dir", help="ffhq-alae folder")
    p.add_argument("--config", help="YAML with shared settings on top of the task's")
    p.add_argument("--searched", help="best_params.yaml of a sweep (friction.* keys, and the seeds it was chosen on) for dmf-searched")
    p.add_argument("--out", default="outputs/compare")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite store in --out)")
    p.add_argument("--experiment", default="dmf-compare")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for flag in ("taus", "epsilons", "ofm_lrs"):
        values = getattr(args, flag)
        if values is not None and not all(math.isfinite(v) and v > 0 for v in values):
            raise ConfigError(f"--{flag.replace('_', '-')}", f"every value must be a finite number > 0, got {values}")
    for flag in ("quality_threshold", "quality_multiple"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--{flag.replace('_', '-')}", f"must be a finite number > 0, got {value}")
    if args.ofm_steps is not None and args.ofm_steps < 2:
        raise ConfigError("--ofm-steps", f"must be >= 2, got {args.ofm_steps}")
    if any(s < 0 for s in (*args.seeds, args.tune_seed)):
        raise ConfigError("--seeds", f"seeds (and --tune-seed) must be >= 0, got {args.seeds} and {args.tune_seed}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ConfigError("--methods", f"unknown {unknown}; choose from {list(METHODS)}")
    if "dmf-searched" in args.methods and not args.searched:
        raise ConfigError("--searched", "required for the dmf-searched method (a YAML of friction.* keys)")
    check_output_folder(Path(args.out), "--out")


SWEEP_SEED_KEYS = ("seed", "data.seed")


def searched_method(args: argparse.Namespace) -> Method:
    """dmf-searched: DMF with the --searched YAML's keys, less the seeds the sweep chose them on,
    which no evaluation (or tuning) seed may repeat -- a schedule re-scored on its selection seed
    carries the selection's bias."""
    keys = _flatten(read_yaml_mapping(args.searched))
    sweep_seeds = {int(keys.pop(k)) for k in SWEEP_SEED_KEYS if k in keys}
    reused = sorted(sweep_seeds & {*args.seeds, args.tune_seed})
    if reused:
        raise ConfigError("--seeds", f"{reused} chose the schedule in {args.searched} (the sweep's seeds "
                                     f"{sorted(sweep_seeds)}); evaluate and tune on other seeds")
    base = METHODS["dmf-searched"]
    return replace(base, overrides={**base.overrides, **keys})


def _shared_keys(args: argparse.Namespace) -> dict[str, Any]:
    base: dict[str, Any] = dict(TASKS[args.task].overrides)
    if args.config:
        base.update(_flatten(read_yaml_mapping(args.config)))
    base.update({"steps": args.steps, "eval_every": max(1, args.steps // 10)})
    if args.dim is not None:
        base["data.dim"] = args.dim
    if args.data_dir is not None:
        base["data.data_dir"] = args.data_dir
    return base


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _grid(task: Task, method: Method, args: argparse.Namespace) -> list[float | None]:
    grids = {None: [None], "drift.sinkhorn_epsilon": args.epsilons or task.epsilons,
             "optim.lr": args.ofm_lrs or task.ofm_lrs}
    return list(grids.get(method.tuned_key, args.taus or task.taus))


def with_ema_decay(method: Method, decay: float) -> Method:
    """``method`` with its EMA control at ``decay``: 0.999 averages over ~1000 steps, so on a
    run of about that length the average still holds much of the initial weights; the horizon
    of an honest control matches the run's."""
    if "optim.ema_decay" not in method.overrides:
        return method
    label = method.label.replace(f"EMA {EMA['optim.ema_decay']:g}", f"EMA {decay:g}")
    return replace(method, label=label, overrides={**method.overrides, "optim.ema_decay": decay})


def run(argv: Sequence[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    _check_args(args)
    task = TASKS[args.task]
    base = _shared_keys(args)
    methods = {name: with_ema_decay(METHODS[name], args.ema_decay) for name in dict.fromkeys(args.methods)}
    if "dmf-searched" in methods:
        methods["dmf-searched"] = searched_method(args)
    bases = {name: method_base(base, method, task, args.ofm_steps) for name, method in methods.items()}
    # Validate every method's config, then its data, before anything runs: a typo fails in a
    # second, not an hour in.
    base_cfg = load_train_config(None, base)
    first = [method_config(bases[name], method, s, args.seeds[0]) for name, method in methods.items()
             for s in _grid(task, method, args)]
    # Datasets by their (frozen) config: the runs of one seed share theirs instead of rebuilding it.
    datasets: dict[DataConfig, TranslationData] = {}

    def dataset(cfg: DataConfig) -> TranslationData:
        if cfg not in datasets:
            datasets[cfg] = load_dataset(cfg)
        return datasets[cfg]

    for run_cfg in first:
        dataset(run_cfg.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tracker = SweepTracker(tracking_uri_for(args.tracking_uri, out), args.experiment)
    sweep_name = f"compare-{args.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = tracker.start_sweep(sweep_name, {"task": args.task, "methods": ",".join(methods), "seeds": args.seeds,
                                              **{f"fixed.{k}": v for k, v in base.items()}})

    def tracked(cfg: TrainConfig, name: str, setting: float | None, role: str) -> tuple[RunResult, Any]:
        run_id = tracker.trial_run(f"{name}-{role}-s{cfg.seed}-{setting}", {"method": name, "role": role, **cfg.to_dict()})
        result, trained = run_once(cfg, dataset(cfg.data), name, setting)
        for record in result.history:
            tracker.log_eval(run_id, int(record["step"]), record)
        tracker.finish_trial(run_id, "FAILED" if result.failure else "FINISHED",
                             {**result.metrics, "wall_seconds": result.seconds}, reason=result.failure or None)
        return result, trained

    tuning: dict[str, dict[float, float]] = {}
    chosen: dict[str, float | None] = {}
    for name, method in methods.items():
        grid = _grid(task, method, args)
        if len(grid) == 1 or args.no_tune:
            chosen[name], tuning[name] = grid[0], {}
            continue
        print(f"Tuning {method.label} on seed {args.tune_seed}:", flush=True)
        scores = {s: tracked(method_config(bases[name], method, s, args.tune_seed), name, s, "tune")[0] for s in grid}
        tuning[name] = {s: r.metrics.get("val_fd", math.inf) for s, r in scores.items()}
        chosen[name] = min(tuning[name], key=lambda s: tuning[name][s] if math.isfinite(tuning[name][s]) else math.inf)

    print("Evaluation seeds:", flush=True)
    results: dict[str, list[RunResult]] = {}
    panels: dict[str, tuple[Any, Any, Any]] = {}
    for name, method in methods.items():
        results[name] = []
        for seed in args.seeds:
            result, trained = tracked(method_config(bases[name], method, chosen[name], seed), name, chosen[name], "eval")
            results[name].append(result)
            if trained is not None and seed == args.seeds[0]:
                state, data = trained
                source, target = (pool[:4000] for pool in data.held_out("test"))
                panels[f"{method.label}: test FD {result.metrics.get('test_fd', math.nan):.4g}"] = (translate(serving_model(state), source), target, None)

    seed_cfgs = [load_train_config(None, {**base, "seed": s, "data.seed": s}) for s in args.seeds]
    floors, floor_rows = noise_floor(dataset(seed_cfgs[0].data), seed_cfgs[0])
    control = [{"seed": c.seed, "metrics": moment_matched_scores(dataset(c.data), c)} for c in seed_cfgs] if task.moment_control else []
    threshold = args.quality_threshold or args.quality_multiple * floors["fd"][0]
    ofm_cfg = method_config(bases["ofm"], methods["ofm"], chosen["ofm"], args.seeds[0]) if "ofm" in methods else None
    p_metric = f"test_{task.metrics[0]}"
    cmp = Comparison(args.task, results, chosen, tuning, floors, floor_rows, control, p_values(results, p_metric), p_metric,
                     time_to_quality(results, f"val_{task.metrics[0]}", threshold),
                     _shared_paragraph(base_cfg, ofm_cfg, args, tuning, {n: m.label for n, m in methods.items()}),
                     {n: m.label for n, m in methods.items()})
    text = report(cmp)
    (out / "compare.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results_json(cmp, methods, bases), indent=1))
    figures = _figures(cmp, panels, out)
    tracker.log_artifacts(parent, out / "compare.md")
    tracker.log_artifacts(parent, out / "results.json")
    tracker.log_figures(parent, figures)
    tracker.finish_sweep("FINISHED")
    print(text)
    print(f"wrote {out}/compare.md, results.json, " + ", ".join(p.name for p in figures.values()))
    return text


def results_json(cmp: Comparison, methods: Mapping[str, Method], bases: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per method and seed every final ``val_*`` / ``test_*`` score, ``train_seconds`` and the
    history; the noise floors, the control row, the chosen settings, time to quality, p-values."""
    ttq = cmp.time_to_quality
    return {
        "task": cmp.task,
        "runs": {m: [asdict(r) for r in rs] for m, rs in cmp.results.items()},
        "noise_floor": {"rows": cmp.floor_rows, "metrics": {k: {"mean": v[0], "std": v[1]} for k, v in cmp.noise_floor.items()}},
        "moment_matched_gaussian": cmp.control,
        "settings": {m: {"overrides": dict(method.overrides), "tuned_key": method.tuned_key, "chosen": cmp.chosen[m],
                         "tuning_val_fd": cmp.tuning[m], "steps": bases[m]["steps"]} for m, method in methods.items()},
        "p_values": {"metric": cmp.p_metric, **{f"vs_{ref}": ps for ref, ps in cmp.p_values.items()}},
        "time_to_quality": {"metric": ttq.metric, "threshold": ttq.threshold, "seconds": ttq.seconds,
                            "k_ofm_over_dmf": None if ttq.k_ofm_over_dmf is None else asdict(ttq.k_ofm_over_dmf)},
    }


def mean_curve(runs: Sequence[RunResult], metric: str) -> tuple[list[float], list[float]]:
    """(train seconds, metric) at each evaluation, each the mean over the successful runs (which
    share one evaluation schedule); empty without a successful run."""
    histories = [r.history for r in succeeded(runs)]
    if not histories:
        return [], []
    points = min(len(h) for h in histories)
    seconds = [statistics.fmean(h[i]["train_seconds"] for h in histories) for i in range(points)]
    values = [statistics.fmean(h[i].get(metric, math.nan) for h in histories) for i in range(points)]
    return seconds, values


def plot_time_to_quality(curves: Mapping[str, tuple[list[float], list[float]]], threshold: float, metric: str,
                         path: Path) -> Path:
    """Validation metric against training seconds, one line per method, the threshold dashed."""
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for label, (seconds, values) in curves.items():
        ax.plot(seconds, values, marker="o", ms=3, label=label)
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("training seconds (evaluations excluded)")
    ax.set_ylabel(f"{metric} (mean over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figures(cmp: Comparison, panels: dict[str, tuple[Any, Any, Any]], out: Path) -> dict[str, Path]:
    """Test FD per method (bars with the seed spread), time to quality, test samples."""
    fd = {cmp.label(m): values_of(rs, cmp.p_metric) for m, rs in cmp.results.items() if succeeded(rs)}
    figures = {"fd_by_method": plot_bars(fd, out / "fd_by_method.png", ylabel=f"{cmp.p_metric} (mean ± std over seeds)")}
    metric = cmp.time_to_quality.metric
    curves = {cmp.label(m): mean_curve(rs, metric) for m, rs in cmp.results.items() if succeeded(rs)}
    if curves:
        figures["time_to_quality"] = plot_time_to_quality(curves, cmp.time_to_quality.threshold, metric,
                                                          out / "time_to_quality.png")
    if panels:
        figures["samples"] = plot_sample_panels(panels, out / "samples.png")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: run(argv) and None)


if __name__ == "__main__":
    sys.exit(main())

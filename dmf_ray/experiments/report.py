"""What a comparison reports: its records, the statistics over seeds, compare.md, results.json, figures.

Pure functions of a :class:`Comparison` (runs already trained), so each number of compare.md can
be traced to results.json and tested without training (tests/test_compare.py).
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from dmf_ray.experiments.methods import METHODS, TASKS, Method, Task
from dmf_ray.experiments.stats import RatioCI, mean_ci, ratio_ci, seconds_to_reach, welch_p
from dmf_ray.trainer.config import TrainConfig
from dmf_ray.trainer.plots import plot_bars, plot_sample_panels, plt

P_REFERENCES = {"dm": "DM", "dmf": "DMF-linear"}  # p-value columns: each method against these

# Header text per metric; image-space scores say so, and "(ours)" marks what we compute.
METRIC_LABELS = {
    "fd": "FD", "kid": "KID", "energy": "energy", "mmd": "MMD²", "mode_weight_error": "mode-weight error",
    "nll": "NLL", "transport_cost": "transport cost", "l2_uvp": "L2-UVP %",
    "fid_image": "image FID (ours)", "kid_image": "image KID (ours)", "cmmd": "CMMD x1000 (ours)",
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


def shared_paragraph(base_cfg: TrainConfig, ofm_cfg: TrainConfig | None, cmp_args: argparse.Namespace,
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


def comparison_figures(cmp: Comparison, panels: dict[str, tuple[Any, Any, Any]], out: Path) -> dict[str, Path]:
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

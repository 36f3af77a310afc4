"""PNG figures people would rather look at than read: samples vs target, metric curves.

The trainer, the reproductions and the sweep tracker draw the same pictures (Agg backend, no
display; each returns its path). Latents wider than 2-D are shown in the plane of the target's
first two principal components, so a 512-d translation gets the same picture as the toy.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dmf_ray.core.friction import FrictionConfig, schedule_values  # noqa: E402

_MAX_POINTS = 4000
# Curves drawn first (at most 8 per figure), then any other numeric key of the history.
_CURVE_PRIORITY = ("val_fd", "val_kid", "val_energy", "val_l2_uvp", "val_transport_cost", "loss", "drift_norm", "gamma")


def as_float(value: Any) -> float | None:
    """``value`` as a float (bools as 0/1), or None when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def project_2d(target: np.ndarray, *others: np.ndarray) -> tuple[list[np.ndarray], tuple[str, str]]:
    """Coordinates in 2-D: identity for 2-D data, else the target's top-2 principal components."""
    if target.shape[1] == 2:
        return [target, *others], ("x1", "x2")
    mean = target.mean(0)
    _, _, vt = np.linalg.svd(target - mean, full_matrices=False)
    basis = vt[:2].T
    return [(a - mean) @ basis for a in (target, *others)], ("PC1 (target)", "PC2 (target)")


def plot_samples(
    generated: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    path: str | Path,
    source: torch.Tensor | np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Scatter of generated samples over target samples (and the source, if given)."""
    return plot_sample_panels({title or "generated vs target": (generated, target, source)}, path)


def plot_sample_panels(
    panels: dict[str, tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray, torch.Tensor | np.ndarray | None]],
    path: str | Path,
) -> Path:
    """One scatter panel per title: (generated, target, optional source), side by side."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5), squeeze=False)
    for ax, (title, (generated, target, source)) in zip(axes[0], panels.items()):
        gen, tgt = _as_numpy(generated)[:_MAX_POINTS], _as_numpy(target)[:_MAX_POINTS]
        extra = [] if source is None else [_as_numpy(source)[:_MAX_POINTS]]
        (tgt2, gen2, *src2), labels = project_2d(tgt, gen, *extra)
        if src2:
            ax.scatter(src2[0][:, 0], src2[0][:, 1], s=2, alpha=0.25, c="tab:gray", label="source")
        ax.scatter(tgt2[:, 0], tgt2[:, 1], s=2, alpha=0.3, c="tab:blue", label="target")
        ax.scatter(gen2[:, 0], gen2[:, 1], s=2, alpha=0.3, c="tab:orange", label="generated")
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.set_title(title)
        ax.legend(markerscale=5, loc="best")
        ax.set_aspect("equal", adjustable="datalim")
    return _save(fig, path)


def plot_curves(
    history: Sequence[dict[str, float]], keys: Sequence[str], path: str | Path, title: str = "", overlay: bool = False
) -> Path:
    """Metric keys over the evaluation steps: one log-scale panel per key, or all on one (overlay)."""
    keys = [k for k in keys if any(k in h for h in history)]
    panels = 1 if overlay else max(1, len(keys))
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels + (1.5 if overlay else 0), 3.4), squeeze=False)
    for i, key in enumerate(keys):
        ax = axes[0][0 if overlay else i]
        pts = [(h["step"], h[key]) for h in history if key in h]
        steps, values = zip(*pts) if pts else ((), ())
        ax.plot(steps, values, marker="o", ms=3, label=key)
        if values and min(values) > 0 and max(values) > 20 * min(values):  # log only across decades
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title if overlay else key)
        ax.grid(True, alpha=0.3)
    if overlay:
        axes[0][0].legend()
    elif title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_bars(values: dict[str, Sequence[float]], path: str | Path, ylabel: str = "", title: str = "") -> Path:
    """One bar per label at the mean of its values, with the standard deviation as an error bar."""
    labels = list(values)
    means = [float(np.mean(values[k])) for k in labels]
    stds = [float(np.std(values[k], ddof=1)) if len(values[k]) > 1 else 0.0 for k in labels]
    fig, ax = plt.subplots(figsize=(1.3 * len(labels) + 2.0, 3.6))
    ax.bar(range(len(labels)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    if means and min(means) > 0 and max(means) > 20 * min(means):  # log only across decades
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_schedule(cfg: FrictionConfig, total_steps: int, path: str | Path) -> Path:
    """gamma(i) and the drift scale 1 - gamma(i) over the training steps."""
    values = schedule_values(cfg, total_steps)
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = np.arange(total_steps)
    ax.plot(steps, values, label=r"$\gamma(i)$")
    ax.plot(steps, 1.0 - values, linestyle="--", label=r"$1-\gamma(i)$")
    ax.set_xlabel("training step i")
    ax.set_ylim(-0.05, 1.05)
    # a learned table names its knots: wrapped, so the title fits the figure's width
    ax.set_title(textwrap.fill(f"friction: {cfg.describe()}, T={total_steps}", width=60), fontsize=10)
    ax.legend()
    return _save(fig, path)


def figures_for_run(
    history: Sequence[Mapping[str, Any]],
    friction_cfg: Any,
    total_steps: int | None,
    samples: tuple[Any, Any] | None,
    out_dir: str | os.PathLike[str],
) -> dict[str, Path]:
    """A trial's ``samples``, ``friction`` and ``metrics`` figures, each made only when its input
    is there; ``friction_cfg`` may be a FrictionConfig or a mapping."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    if samples is not None:
        generated, target = samples
        figures["samples"] = plot_samples(generated, target, out / "samples.png")
    if friction_cfg is not None and total_steps is not None and int(total_steps) >= 2:
        cfg = friction_cfg if isinstance(friction_cfg, FrictionConfig) else FrictionConfig(**dict(friction_cfg))
        figures["friction"] = plot_schedule(cfg, int(total_steps), out / "friction.png")
    if history:
        keys = _curve_keys(history)
        if keys:
            clean = [
                {"step": as_float(h.get("step", i)) or i, **{k: as_float(h[k]) for k in keys if k in h and as_float(h[k]) is not None}}
                for i, h in enumerate(history)
            ]
            figures["metrics"] = plot_curves(clean, keys, out / "metrics.png")
    return figures


def _curve_keys(history: Sequence[Mapping[str, Any]], limit: int = 8) -> list[str]:
    numeric: list[str] = []
    for h in history:
        for k, v in h.items():
            if k != "step" and k not in numeric and not isinstance(v, bool) and as_float(v) is not None:
                numeric.append(k)
    ordered = [k for k in _CURVE_PRIORITY if k in numeric] + [k for k in numeric if k not in _CURVE_PRIORITY]
    return ordered[:limit]

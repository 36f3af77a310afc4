"""Two-particle surrogate of the drift dynamics (DMF paper, section 3.1, fig. 1 a-d).

Why: the surrogate is the paper's whole argument for friction. One target y+ = 0 and two
generated particles at +a and -a give the unnormalised update (eq. 9)

    a_{i+1} = f(a_i) = a_i (1 - k_t + 2 k_d),   k_t = exp(-a/tau),  k_d = k_t^2,

whose fixed points are 0 (expansive, f'(0) = 2) and a* = tau ln 2 (contracting,
f'(a*) = 1 - ln(2)/2): without friction every trajectory is trapped at the force-balance radius
a* instead of reaching the target (remark 1). First-order friction (eq. 13) multiplies the
displacement by 1 - gamma(i); as gamma -> 1 the iteration halts strictly below a*, and
Proposition 1 (eq. 14) bounds the error growth by the schedule. This module evaluates those
closed forms and, run as ``python -m dmf_ray.experiments.surrogate``, redraws fig. 1 and writes
a table of numeric checks.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dmf_ray.cli import ArgumentParser, run_cli
from dmf_ray.errors import ConfigError, DataError
from dmf_ray.core.friction import FrictionConfig, schedule_values

# Starting distance of the cobweb in fig. 1d, in units of tau; also used for panels (a) and (c).
A0_BELOW = 0.08
# Starting distance above a* for panel (b), in units of tau.
A0_ABOVE = 2.0
# Bandwidths whose derived quantities (finite-difference step 1e-6 tau, plot range 20 tau) stay
# non-zero and finite in float64.
TAU_RANGE = (1e-300, 1e300)
# Slack for floating-point comparisons in the report's checks.
_RTOL = 1e-9


def _kernel(a: np.ndarray | float, tau: float) -> np.ndarray | float:
    """k_t = exp(-a / tau), the Laplace kernel between particle and target (eq. 7)."""
    return np.exp(-np.asarray(a, dtype=np.float64) / tau)


def surrogate_map(a: np.ndarray | float, tau: float, gamma: float = 0.0) -> np.ndarray | float:
    """One surrogate step a -> a (1 - (1 - gamma)(k_t - 2 k_d)) (eq. 9; eq. 13 with friction)."""
    k = _kernel(a, tau)
    return a * (1.0 - (1.0 - gamma) * (k - 2.0 * k**2))


def fixed_point(tau: float) -> float:
    """Non-trivial fixed point a* = tau ln 2, where k_t = 2 k_d (remark 1)."""
    return tau * math.log(2.0)


def derivative(a: np.ndarray | float, tau: float, gamma: float = 0.0) -> np.ndarray | float:
    """f'(a) = 1 - (1 - gamma) [(k - 2k^2) - (a/tau)(k - 4k^2)] (dk/da = -k/tau): 2 at a = 0,
    1 - ln(2)/2 at a* for gamma = 0 (remark 1)."""
    k = _kernel(a, tau)
    return 1.0 - (1.0 - gamma) * ((k - 2.0 * k**2) - (a / tau) * (k - 4.0 * k**2))


def margin(a: np.ndarray | float, tau: float) -> np.ndarray | float:
    """Signed instability margin eta(a) = 2 k_d - k_t, in [-1/8, 1] (section 3.2)."""
    k = _kernel(a, tau)
    return 2.0 * k**2 - k


def iterate(
    a0: float, tau: float, steps: int, schedule_cfg: FrictionConfig | None = None
) -> np.ndarray:
    """Trajectory a_0, ..., a_steps (length steps + 1) of the first-order surrogate (eq. 13).

    ``schedule_cfg`` None means no friction (eq. 9). The surrogate is analysed for the
    first-order update only, so other orders are rejected rather than ignored.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if a0 < 0:
        raise ValueError(f"a0 must be >= 0, got {a0}")
    if schedule_cfg is None:
        gammas = np.zeros(steps)
    elif schedule_cfg.order != "first":
        raise ValueError(f"the surrogate uses the first-order update, got {schedule_cfg.order!r}")
    else:
        gammas = schedule_values(schedule_cfg, steps)
    trajectory = np.empty(steps + 1, dtype=np.float64)
    trajectory[0] = a0
    for i, g in enumerate(gammas):
        trajectory[i + 1] = surrogate_map(trajectory[i], tau, float(g))
    return trajectory


class CumulativeBound(NamedTuple):
    """Both right-hand sides of eq. 14; product <= exponential always."""

    product: float
    exponential: float


def cumulative_bound(eps0: float, eta_max: float, gammas: np.ndarray) -> CumulativeBound:
    """Proposition 1: |eps_T| <= |eps_0| prod(1 + (1 - gamma_i) eta_max)
    <= |eps_0| exp(eta_max sum(1 - gamma_i))."""
    if eta_max < 0:
        raise ValueError(f"eta_max must be >= 0, got {eta_max}")
    damping = 1.0 - np.asarray(gammas, dtype=np.float64)
    if np.any((damping < 0) | (damping > 1)):
        raise ValueError("gammas must lie in [0, 1]")
    # Long horizons overflow to +inf, which is still a (vacuous) upper bound.
    with np.errstate(over="ignore"):
        return CumulativeBound(
            product=float(abs(eps0) * np.prod(1.0 + damping * eta_max)),
            exponential=float(abs(eps0) * np.exp(eta_max * damping.sum())),
        )


class Check(NamedTuple):
    """One row of the report: a claim of the paper and whether the numbers bear it out."""

    name: str
    expected: str
    computed: str
    ok: bool


def _monotone_towards(trajectory: np.ndarray, target: float) -> bool:
    """Monotone (non-strictly, floats may stall) and never crosses ``target``."""
    steps = np.diff(trajectory)
    if trajectory[0] < target:
        return bool(np.all(steps >= 0) and np.all(trajectory <= target))
    return bool(np.all(steps <= 0) and np.all(trajectory >= target))


def run_checks(tau: float, steps: int) -> list[Check]:
    """The numeric claims of sections 3.1-3.2 evaluated at ``tau`` over ``steps`` steps."""
    a_star = fixed_point(tau)
    fp_error = abs(float(surrogate_map(a_star, tau)) - a_star)
    slope = 1.0 - math.log(2.0) / 2.0
    analytic = float(derivative(a_star, tau))
    h = 1e-6 * tau
    finite_diff = float(surrogate_map(a_star + h, tau) - surrogate_map(a_star - h, tau)) / (2 * h)
    at_zero = float(derivative(0.0, tau))
    etas = margin(np.linspace(0.0, 20.0 * tau, 200_001), tau)
    below = iterate(A0_BELOW * tau, tau, steps)
    above = iterate(A0_ABOVE * tau, tau, steps)
    linear = FrictionConfig(schedule="linear")
    damped = iterate(A0_BELOW * tau, tau, steps, linear)
    eta_max = max(float(np.max(margin(damped[:-1], tau))), 0.0)
    bound = cumulative_bound(damped[0], eta_max, schedule_values(linear, steps))
    return [
        Check("f(a*) = a*", f"a* = tau ln 2 = {a_star:.12g}",
              f"abs(f(a*) - a*) = {fp_error:.3g}", fp_error <= _RTOL * a_star),
        Check("f'(a*) analytic", f"1 - ln2/2 = {slope:.6f}", f"{analytic:.6f}",
              abs(analytic - slope) <= _RTOL),
        Check("f'(a*) finite difference", f"{slope:.6f}", f"{finite_diff:.6f}",
              abs(finite_diff - slope) <= 1e-6),
        Check("f'(0)", "2", f"{at_zero:.6f}", abs(at_zero - 2.0) <= _RTOL),
        Check("margin range on [0, 20 tau]", "within [-0.125, 1]",
              f"[{etas.min():.6f}, {etas.max():.6f}]",
              bool(etas.min() >= -0.125 - _RTOL and etas.max() <= 1.0 + _RTOL)),
        Check(f"(a) a0 = {below[0]:.3g} < a*, no friction", "monotone up, never above a*",
              f"a_T = {below[-1]:.6f}", _monotone_towards(below, a_star)),
        Check(f"(b) a0 = {above[0]:.3g} > a*, no friction", "monotone down, never below a*",
              f"a_T = {above[-1]:.6f}", _monotone_towards(above, a_star)),
        Check("(c) a_T with linear friction", f"< a* = {a_star:.6f}, monotone",
              f"a_T = {damped[-1]:.6f} (gap {a_star - damped[-1]:.3g})",
              bool(damped[-1] < a_star and _monotone_towards(damped, a_star))),
        Check("Proposition 1 (eq. 14)", "abs(eps_T) <= product <= exp",
              f"{damped[-1]:.4g} <= {bound.product:.4g} <= {bound.exponential:.4g} "
              f"(eta_max = {eta_max:.4g})",
              bool(damped[-1] <= bound.product * (1 + _RTOL)
                   and bound.product <= bound.exponential * (1 + _RTOL))),
    ]


def markdown_table(checks: list[Check]) -> str:
    lines = ["| check | expected | computed | ok |", "|---|---|---|---|"]
    lines += [
        f"| {c.name} | {c.expected} | {c.computed} | {'yes' if c.ok else 'NO'} |" for c in checks
    ]
    return "\n".join(lines)


def plot_surrogate(tau: float, steps: int, path: Path) -> Path:
    """Fig. 1: (a) growth to a*, (b) decay to a*, (c) linear friction halts below a*, (d) cobweb."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a_star = fixed_point(tau)
    below = iterate(A0_BELOW * tau, tau, steps)
    above = iterate(A0_ABOVE * tau, tau, steps)
    damped = iterate(A0_BELOW * tau, tau, steps, FrictionConfig(schedule="linear"))
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    try:
        (ax_a, ax_b), (ax_c, ax_d) = axes
        for ax, curves, title in (
            (ax_a, [(below, "no friction")], "(a) $a_0 < a^*$: grows to $a^*$"),
            (ax_b, [(above, "no friction")], "(b) $a_0 > a^*$: decays to $a^*$"),
            (ax_c, [(below, "no friction"), (damped, r"linear $\gamma(i)=i/(T-1)$")],
             "(c) friction halts below $a^*$"),
        ):
            for trajectory, label in curves:
                ax.plot(trajectory, marker="o", markersize=3, label=label)
            ax.axhline(a_star, color="gray", linestyle="--", label=r"$a^*=\tau\ln 2$")
            ax.set_xlabel("step i")
            ax.set_ylabel("$a_i$")
            ax.set_title(title)
            ax.legend()
        grid = np.linspace(0.0, 2.0 * a_star, 400)
        ax_d.plot(grid, surrogate_map(grid, tau), label="$f(a)$")
        ax_d.plot(grid, grid, color="black", linewidth=0.8, label="$y = a$")
        # Cobweb: (a_i, a_i) -> (a_i, a_{i+1}) -> (a_{i+1}, a_{i+1}) -> ...
        cobweb_x = np.repeat(below[:-1], 2)
        cobweb_y = np.column_stack((below[:-1], below[1:])).ravel()
        ax_d.plot(cobweb_x, cobweb_y, color="green", linewidth=1,
                  label=f"cobweb from $a_0$={below[0]:.3g}")
        ax_d.plot([0.0, a_star], [0.0, a_star], "ko", label="fixed points")
        ax_d.set_xlabel("$a$")
        ax_d.set_title("(d) phase portrait")
        ax_d.legend()
        fig.suptitle(rf"two-particle surrogate, $\tau$={tau:g}, T={steps}")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="python -m dmf_ray.experiments.surrogate",
        description="Redraw fig. 1 of the DMF paper and check the surrogate's closed forms.",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/surrogate"))
    parser.add_argument("--tau", type=float, default=1.0, help="kernel bandwidth (> 0)")
    parser.add_argument("--steps", type=int, default=20, help="iterations T (>= 2)")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.tau) and TAU_RANGE[0] <= args.tau <= TAU_RANGE[1]):
        raise ConfigError("--tau", f"must be a finite number > 0 within [{TAU_RANGE[0]:g}, {TAU_RANGE[1]:g}], got {args.tau}")
    if args.steps < 2:
        raise ConfigError("--steps", f"must be >= 2, got {args.steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Write ``surrogate.png`` and ``surrogate.md``; exit 0 if every check holds, 1 if not,
    2 on bad arguments."""
    def command() -> int:
        args = _parse_args(argv)
        checks = run_checks(args.tau, args.steps)
        table = markdown_table(checks)
        try:
            plot_surrogate(args.tau, args.steps, args.out / "surrogate.png")
            (args.out / "surrogate.md").write_text(
                f"# Two-particle surrogate (DMF section 3.1)\n\n"
                f"tau = {args.tau:g}, T = {args.steps}, a0 = {A0_BELOW:g} tau (below a*) and "
                f"{A0_ABOVE:g} tau (above a*), friction schedule linear (eq. 15).\n\n"
                f"{table}\n\n![surrogate](surrogate.png)\n"
            )
        except OSError as exc:
            raise DataError(args.out, f"cannot write ({exc.strerror or exc})") from None
        print(table)
        return 0 if all(c.ok for c in checks) else 1

    return run_cli(command)


if __name__ == "__main__":
    sys.exit(main())

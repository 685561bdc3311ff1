"""Pictures of a check (optional extra ``plot``: matplotlib): the loss along the returned direction with
the local model, a 2-D slice of the loss around ``z``, and the data points on each neuron's kink.

Along a unit direction ``eta`` the local model is ``R(z) + slope t + curvature t^2`` (DESIGN.md section 2),
one-sided: for ``t < 0`` it is the model of ``-eta``. Every curve and contour is the true risk
``R(z + t eta + s xi)``, evaluated exactly; the pre-activations are linear in ``(t, s)``, so one point
costs ``O(m dh dy)`` after three products with the data.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .geometry import boundary_mask, validity_radius
from .model import Direction, TwoLayerNet
from .point import Problem
from .report import neuron_rows
from .result import CheckResult

__all__ = ["SUFFIXES", "MAX_GRID", "require_matplotlib", "check_output_path", "check_grid", "Slice", "random_direction", "figure",
           "save_figure", "plot_result"]

SUFFIXES = (".png", ".svg", ".pdf")
MAX_GRID = 401  # points per side of the 2-D slice: 401^2 loss evaluations, each one pass over the data
Progress = Callable[[str, int, "int | None"], None]
_COLORS = {"local_minimum": "#2e7d32", "sosp": "#b58900", "descent": "#00838f", "inconclusive": "#8e24aa"}


def require_matplotlib(option: str = "plotting") -> None:
    """Raise ``ImportError`` with the install line when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{option} needs matplotlib: pip install 'sospcheck[plot]'") from exc


def check_output_path(path: str, option: str) -> None:
    """``path`` must end in ``.png``, ``.svg`` or ``.pdf`` (the format follows the suffix)."""
    if not str(path).lower().endswith(SUFFIXES):
        raise ValueError(f"{option} must name a .png, .svg or .pdf file, got {path!r}")


def check_grid(grid, name: str = "`grid`") -> None:
    """``grid`` (points per side of the 2-D slice) must be an integer in ``5..MAX_GRID``."""
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or not 5 <= grid <= MAX_GRID:
        raise ValueError(f"{name} must be at least 5 and at most {MAX_GRID} (an integer), got {grid!r}")


def random_direction(net: TwoLayerNet, rng: np.random.Generator, orthogonal_to: list[Direction] = ()) -> Direction:
    """A unit direction with i.i.d. normal entries, Gram-Schmidt orthogonal to ``orthogonal_to``."""
    v = rng.standard_normal(net.n_params)
    for d in orthogonal_to:
        u = d.vector() / d.norm()
        v = v - (u @ v) * u
    return Direction.from_vector(net, v / np.linalg.norm(v))


class Slice:
    """``R(z + sum_j c_j e_j)`` for fixed directions ``e_j``: exact, ``O(m dh dy)`` per point.

    ``N(c) = N0 + sum_j c_j Xbar dZ_j'`` is linear in ``c``; only the activation and the output layer
    are recomputed per point.
    """

    def __init__(self, problem: Problem, directions: list[Direction]):
        net = problem.net
        Xbar = net.augment(problem.X)
        self.problem, self.net = problem, net
        self.N0 = Xbar @ net.Z.T
        self.T = [Xbar @ d.Z.T for d in directions]
        self.dW2 = [d.W2 for d in directions]
        self.db2 = [d.b2 for d in directions]
        self.z = net.as_direction().vector()
        self.v = [d.vector() for d in directions]

    def __call__(self, *c: float) -> float:
        net, st = self.net, self.problem
        N = self.N0.copy()
        for ci, T in zip(c, self.T):
            N += ci * T
        O = np.maximum(N, 0.0)  # h(N) = s_plus max(N, 0) + s_minus min(N, 0), the same floats as net.activation
        if net.s_plus != 1.0:
            O *= net.s_plus
        if net.s_minus:
            O += net.s_minus * np.minimum(N, 0.0)
        out = O @ (net.W2 + sum(ci * dW for ci, dW in zip(c, self.dW2))).T
        if net.has_b2:
            out = out + net.b2 + sum(ci * db for ci, db in zip(c, self.db2))
        value = st.weight * float(np.sum(st.loss.value(out, st.Y)))
        if st.weight_decay:
            zc = self.z + sum(ci * v for ci, v in zip(c, self.v))
            value += 0.5 * st.weight_decay * float(zc @ zc)
        return value


def _scan(f: Callable[[float], float], ts, phase: str, progress: Progress | None) -> np.ndarray:
    out = np.empty(len(ts))
    for j, t in enumerate(ts):
        out[j] = f(t)
        if progress and (j % 16 == 15 or j == len(ts) - 1):
            progress(phase, j + 1, len(ts))
    return out


class _Local:
    """The one-sided local model and validity radius along ``+-d`` at ``z``."""

    def __init__(self, problem: Problem, tol_boundary: float):
        self.pt = problem.point()
        self.boundary = boundary_mask(self.pt.fwd.N, problem.net.Z, self.pt.fwd.Xbar, tol_boundary)

    def terms(self, d: Direction) -> tuple[float, float, float]:
        """``(slope, curvature, validity radius)`` along the unit direction ``d``."""
        slope, curv = self.pt.local_terms(d, self.boundary)
        return slope, curv, validity_radius(self.pt.fwd.N, self.boundary, self.pt.fwd.Xbar @ d.Z.T)

    def model(self, d: Direction, ts: np.ndarray) -> np.ndarray:
        """``R(z) + slope |t| + curvature t^2`` with the terms of ``d`` for ``t >= 0``, of ``-d`` for ``t < 0``."""
        (sp, cp, _), (sm, cm, _) = self.terms(d), self.terms(d.scaled(-1.0))
        a = np.abs(ts)
        return self.pt.value + np.where(ts >= 0, sp * a + cp * a**2, sm * a + cm * a**2)


def _ylim(ax, values: np.ndarray) -> None:
    lo, hi = float(np.min(values)), float(np.max(values))
    pad = 0.12 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
    ax.set_ylim(lo - pad, hi + pad)


def _radius_line(ax, x: float, lo: float, hi: float, label: str | None) -> None:
    if math.isfinite(x) and lo <= x <= hi:
        ax.axvline(x, color="#757575", ls=":", lw=1.3, label=label)


def _line_descent(ax, result: CheckResult, local: _Local, sl: Slice, span, n: int, progress) -> float:
    """Panel 1 with a direction; returns the largest rise of the loss on it (the slice's scale)."""
    desc = result.descent
    d, R0 = desc.direction, local.pt.value
    lo, hi = span
    ts = np.unique(np.concatenate([np.linspace(lo, hi, n), [0.0, desc.step]]))
    true = _scan(sl, ts, "loss along the direction", progress)
    model = local.model(d, ts)
    ax.plot(ts, true, color="#212121", lw=2.2, label="true loss R(z + t·η)", zorder=3)
    what = f"slope {desc.slope:.3g}" if desc.order == 1 else f"curvature {desc.curvature:.3g}"
    ax.plot(ts, model, color="#ef6c00", lw=1.5, ls=(0, (4, 3)), zorder=4,
            label=f"local model R + slope·|t| + curv.·t² (along η: {what})")
    ax.axhline(R0, color="#9e9e9e", lw=0.8)
    _radius_line(ax, desc.validity_radius, lo, hi, f"validity radius {desc.validity_radius:.3g}")
    _radius_line(ax, -local.terms(d.scaled(-1.0))[2], lo, hi, None)
    ax.plot([desc.step], [desc.loss_after], marker="*", ms=15, color="#d32f2f", ls="none", zorder=5,
            label=f"verified step t = {desc.step:.3g}: R drops by {desc.decrease:.3g}")
    ax.plot([0.0], [R0], marker="o", ms=6, color="#212121", ls="none", zorder=4)
    if not math.isfinite(desc.validity_radius):
        ax.plot([], [], ls=":", color="#757575", label="validity radius infinite (no kink is crossed)")
    elif not lo <= desc.validity_radius <= hi:
        ax.plot([], [], ls=":", color="#757575", label=f"validity radius {desc.validity_radius:.3g} (off the plot)")
    _ylim(ax, true)
    ax.set_xlabel("t  (step along the unit direction η; t < 0 is along −η)")
    ax.set_ylabel("R(z + t·η)")
    ax.set_title(f"loss along the returned direction (order {desc.order}, {desc.test})", fontsize=10)
    ax.legend(fontsize=7.5, loc="best", framealpha=0.9)
    return float(np.max(true) - R0)


def _half_width(local: _Local, xi: Direction, rise: float, cap: float) -> float:
    """The ``s`` at which the local model along ``+-xi`` rises by ``rise`` (the closer side), at most ``cap``:
    the slice then shows comparable changes of the loss along both of its axes."""
    widths = [cap]
    for u in (xi, xi.scaled(-1.0)):
        slope, curv, _ = local.terms(u)
        if curv > 0:
            widths.append((-slope + math.sqrt(slope * slope + 4.0 * curv * rise)) / (2.0 * curv))
        elif slope > 0:
            widths.append(rise / slope)
    return max(min(widths), 1e-12 * cap)


def _line_random(ax, result: CheckResult, local: _Local, dirs: list[Direction], problem: Problem, T: float,
                 n: int, progress) -> None:
    ts = np.linspace(-T, T, n)
    colors = ("#1565c0", "#6a1b9a", "#00897b")
    allv = []
    for j, (u, c) in enumerate(zip(dirs, colors)):
        true = _scan(Slice(problem, [u]), ts, f"loss along random direction {j + 1}", progress)
        allv.append(true)
        ax.plot(ts, true, color=c, lw=2.0, label=f"true R along random u{j + 1}")
        ax.plot(ts, local.model(u, ts), color=c, lw=1.2, ls="--", alpha=0.8)
    ax.plot([], [], color="#616161", ls="--", lw=1.2, label="local model (one-sided)")
    ax.axhline(local.pt.value, color="#9e9e9e", lw=0.8)
    ax.plot([0.0], [local.pt.value], marker="o", ms=6, color="#212121", ls="none", zorder=4)
    _ylim(ax, np.concatenate(allv))
    ax.set_xlabel("t  (step along a random unit direction u)")
    ax.set_ylabel("R(z + t·u)")
    ax.set_title(f"no descent direction ({result.verdict.value}): loss along {len(dirs)} random directions",
                 fontsize=10)
    ax.legend(fontsize=7.5, loc="best", framealpha=0.9)


def _slice_panel(fig, ax, sl: Slice, R0: float, span_t, span_s, grid: int, progress, labels, step=None) -> None:
    from matplotlib import colors

    tt = np.linspace(*span_t, grid)
    ss = np.linspace(*span_s, grid)
    vals = _scan(lambda k: sl(tt[k % grid], ss[k // grid]), range(grid * grid), "2-D slice of the loss", progress)
    dR = vals.reshape(grid, grid) - R0
    dR[np.abs(dR) <= 1e-10 * abs(R0)] = 0.0  # rounding, not a decrease
    lo, hi = float(dR.min()), float(dR.max())
    hi = max(hi, 1e-300)
    if lo < 0:
        levels = np.unique(np.concatenate([np.linspace(lo, 0.0, 7), np.linspace(0.0, hi, 13)]))
        norm = colors.TwoSlopeNorm(vmin=lo, vcenter=0.0, vmax=hi)
        cs = ax.contourf(tt, ss, dR, levels=levels, cmap="RdBu_r", norm=norm)
        ax.contour(tt, ss, dR, levels=[0.0], colors="#212121", linewidths=1.2)
    else:
        cs = ax.contourf(tt, ss, dR, levels=np.linspace(0.0, hi, 13), cmap="Reds")
    fig.colorbar(cs, ax=ax, shrink=0.9, format="%.2g").ax.set_title("R − R(z)", fontsize=8)
    ax.plot([0.0], [0.0], marker="o", ms=6, color="#212121", ls="none")
    if step is not None:
        ax.annotate("", xy=(step, 0.0), xytext=(0.0, 0.0),
                    arrowprops={"arrowstyle": "->", "color": "#d32f2f", "lw": 1.8})
        ax.plot([step], [0.0], marker="*", ms=14, color="#d32f2f", ls="none")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(labels[2] + ("   (blue: below R(z))" if lo < 0 else "   (nowhere below R(z))"), fontsize=10)


def _boundary_panel(ax, result: CheckResult) -> None:
    rows = neuron_rows(result)
    s = result.stats
    k = np.arange(len(rows))
    M = np.array([r.M for r in rows])
    known = all(r.flat is not None for r in rows)
    if known:
        both = np.array([r.both_flat for r in rows])
        one = np.array([r.flat for r in rows]) - both
        rest = M - one - both
        ax.bar(k, rest, width=0.6, color="#90a4ae", label="on the kink, no flat ray")
        ax.bar(k, one, width=0.6, bottom=rest, color="#ffb300", label="one flat ray (L_k − K_k)")
        ax.bar(k, both, width=0.6, bottom=rest + one, color="#e53935", label="flat both ways (K_k)")
    else:
        ax.bar(k, M, width=0.6, color="#90a4ae", label="on the kink (flat rays not reached)")
    ax.set_xlim(-0.75, len(rows) - 0.25)
    d = result.descent
    if d is not None and d.neuron is not None:
        ax.annotate("descent", xy=(d.neuron, M[d.neuron]), xytext=(0, 6), textcoords="offset points",
                    ha="center", fontsize=8, color="#d32f2f")
    if not M.any():
        ax.text(0.5, 0.5, "no data point on any kink:\nthe loss is differentiable here", transform=ax.transAxes,
                ha="center", va="center", fontsize=9, color="#616161")
    ax.set_ylim(0, max(int(M.max()) if M.size else 0, 1) * 1.25)
    ax.set_xlabel("hidden neuron k")
    ax.set_ylabel("data points on the kink (M_k)")
    if len(rows) <= 30:
        ax.set_xticks(k)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"boundary counts: M = {s.M}, L = {s.L}, K = {s.K}", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper right", framealpha=0.9)


def _suptitle(result: CheckResult) -> str:
    v = result.verdict.value
    text = f"sospcheck verdict: {v}" + ("  (FRAGILE)" if result.fragile else "")
    if result.descent:
        d = result.descent
        text += f" (order {d.order} from {d.test}; R drops by {d.decrease:.3g} at t = {d.step:.3g})"
    elif result.reason:
        text += f" ({result.reason[:90]}{'…' if len(result.reason) > 90 else ''})"
    if result.snap:
        text += "   [at the snapped point]"
    return text


def figure(result: CheckResult, problem: Problem, seed: int = 0, grid: int = 41, n_line: int = 241,
           progress: Progress | None = None):
    """Three panels: the loss along the returned direction (or random ones), a 2-D slice, the boundary counts.

    ``problem``: the risk the result is about (:meth:`CheckResult.problem`). ``seed``: the random
    directions. ``grid``: points per side of the slice. Returns a ``matplotlib.figure.Figure``.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    check_grid(grid)
    rng = np.random.default_rng(seed)
    net = problem.net
    local = _Local(problem, result.tolerances.boundary)
    fig = Figure(figsize=(17, 5.2), layout="constrained")
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.15, 1.0, 0.85]})
    R0 = local.pt.value
    if result.descent is not None:
        d = result.descent.direction
        xi = random_direction(net, rng, [d])
        step, radius = result.descent.step, result.descent.validity_radius
        T = step if step > 0 else 1.0
        hi = 3.0 * T
        if math.isfinite(radius) and radius < 10.0 * T:
            hi = max(hi, 1.25 * radius)
        span = (-T, hi)
        rise = _line_descent(axes[0], result, local, Slice(problem, [d]), span, n_line, progress)
        half = _half_width(local, xi, rise, 0.5 * (span[1] - span[0]))
        _slice_panel(fig, axes[1], Slice(problem, [d, xi]), R0, span, (-half, half), grid, progress,
                     ("t along η (descent direction)", "s along ξ (random, orthogonal to η)",
                      "R(z + t·η + s·ξ) − R(z)"), step)
    else:
        us = [random_direction(net, rng)]
        for _ in range(2):
            us.append(random_direction(net, rng, us))
        radii = [r for u in us for r in (local.terms(u)[2], local.terms(u.scaled(-1.0))[2]) if math.isfinite(r)]
        znorm = net.as_direction().norm()
        T = float(np.median(radii)) if radii else 0.25 * max(znorm, 1.0)
        T = min(T, max(znorm, 1e-3)) if znorm > 0 else T
        _line_random(axes[0], result, local, us, problem, T, n_line, progress)
        _slice_panel(fig, axes[1], Slice(problem, us[:2]), R0, (-T, T), (-T, T), grid, progress,
                     ("t along u1 (random)", "s along u2 (random, orthogonal to u1)",
                      "no direction returned: slice along 2 random directions"))
    _boundary_panel(axes[2], result)
    fig.suptitle(_suptitle(result), color=_COLORS.get(result.verdict.value, "black"), fontsize=12,
                 fontweight="bold")
    return fig


def save_figure(fig, path: str) -> None:
    """Write ``fig`` as PNG, SVG or PDF according to ``path``'s suffix."""
    check_output_path(path, "the output path")
    fig.savefig(path, dpi=110)


def plot_result(result: CheckResult, problem: Problem, path: str, seed: int = 0, grid: int = 41,
                progress: Progress | None = None) -> None:
    """:func:`figure` written to ``path`` (``.png``, ``.svg`` or ``.pdf``)."""
    check_output_path(path, "the output path")
    save_figure(figure(result, problem, seed=seed, grid=grid, progress=progress), path)

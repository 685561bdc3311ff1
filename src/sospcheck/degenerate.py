"""First order at a degenerate kink: a neuron whose boundary vectors are linearly dependent (DESIGN.md section 9).

Neuron ``k``'s share of the first-order change of the risk, for a change ``v`` of ``Z_k``, is

    f_k(v) = c_k . v + sum_{i in B_k} a_ik phi(xbar_i . v),   phi(t) = s_plus max(t, 0) + s_minus min(t, 0),

positively homogeneous and linear, ``f_k(v) = g_sigma . v`` with ``g_sigma = c_k + sum_i a_ik s_{sigma_i}
xbar_i``, on the closure of each cell ``sigma`` of the arrangement ``{xbar_i . v = 0}``. The steepest
slope over unit ``v`` in the closed cell ``C_sigma`` is ``-|P_C(-g_sigma)|`` (Moreau: one nonnegative
least squares over the cell's walls, :func:`sospcheck.arrangement.polar_multipliers`), so ``f_k`` has a
descent iff some cell has ``P_C(-g_sigma) != 0``; the cells come from
:func:`sospcheck.arrangement.enumerate_cells`.
The risk's first-order term is a sum of the output-layer part and the ``f_k`` of every neuron, each in
its own variables, so this is decided neuron by neuron.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .arrangement import DEFAULT_MAX_CELLS, MARGIN, OVER_BUDGET, RANK_TOL, Cells, enumerate_cells, polar_multipliers
from .options import Tolerances

__all__ = ["DESCENT", "STATIONARY", "OVER_BUDGET", "DegenerateFirstOrder", "CellProduct", "kink_terms",
           "cell_gradients", "degenerate_first_order", "neuron_kink_data", "degenerate_neuron", "cell_product"]

DESCENT = "descent"
STATIONARY = "stationary"


def kink_terms(Xk: np.ndarray, a: np.ndarray, c: np.ndarray, s_plus: float, s_minus: float,
               v: np.ndarray) -> np.ndarray:
    """``f_k(v)`` evaluated directly (``v`` one direction (d,) or several (n, d)); no cell is used."""
    V = np.atleast_2d(v)
    T = V @ Xk.T
    f = V @ c + (s_plus * np.maximum(T, 0.0) + s_minus * np.minimum(T, 0.0)) @ a
    return f if np.ndim(v) == 2 else f[0]


def cell_gradients(Xk: np.ndarray, a: np.ndarray, c: np.ndarray, s_plus: float, s_minus: float,
                   row_signs: np.ndarray) -> np.ndarray:
    """``g_sigma = c_k + sum_i a_ik s_{sigma_i} xbar_i`` for each row of ``row_signs`` (n, M) -> (n, d).

    A zero sign (a zero row ``xbar_i``) contributes nothing, whatever slope is used."""
    S = np.where(row_signs > 0, s_plus, s_minus)
    return c[None, :] + (S * a[None, :]) @ Xk


@dataclass(frozen=True)
class DegenerateFirstOrder:
    """Neuron ``k``'s first-order test over the cells of its kink arrangement.

    status: ``"descent"`` (``direction`` is a unit ``v`` with ``f_k(v) = slope < -threshold``, recomputed
    without cells), ``"stationary"`` (``f_k(v) >= -threshold`` for every unit ``v``; ``slope`` is the
    most negative value found, in ``[-threshold, 0]``) or ``"over budget"`` (``cells.count`` cells exceed
    ``cells.max_cells``; nothing decided). threshold = ``tol * scale``. cell: the sign of
    ``xbar_i . v`` (M,) on the deciding cell. cell_slopes (n_cells,): ``-|P_C(-g_sigma)|`` per cell, the
    steepest slope over its closure. multipliers (n_cells, n): ``lam >= 0`` with ``P_C(-g_sigma) =
    W' lam - g_sigma`` (``W``: the cell's walls ``sigma_j n_j``); at a stationary neuron ``g_sigma =
    W' lam``, and the critical directions of the cell are the ``v`` in it with ``W_j . v = 0`` for every
    ``j`` with ``lam_j > 0`` (DESIGN.md section 9: what the second order needs).
    """

    status: str
    message: str
    direction: np.ndarray | None
    slope: float | None
    threshold: float
    scale: float
    cell: np.ndarray | None
    cell_slopes: np.ndarray
    multipliers: np.ndarray
    cells: Cells
    rank: int
    M: int

    @property
    def n_cells(self) -> int:
        return self.cells.n_cells

    @property
    def n_lps(self) -> int:
        return self.cells.n_lps

    @property
    def rank_deficiency(self) -> int:
        return self.M - self.rank


def _check_neuron_inputs(Xk, a, c, s_plus, s_minus):
    Xk = np.asarray(Xk, dtype=float)
    if Xk.ndim != 2:
        raise ValueError(f"`Xk` must be (M_k, d), the boundary rows xbar_i, got shape {Xk.shape}")
    M, d = Xk.shape
    a = np.asarray(a, dtype=float).reshape(-1)
    c = np.asarray(c, dtype=float).reshape(-1)
    if a.shape != (M,):
        raise ValueError(f"`a` must hold one a_ik per boundary row ({M}), got shape {a.shape}")
    if c.shape != (d,):
        raise ValueError(f"`c` must have d = {d} entries like the rows of `Xk`, got shape {c.shape}")
    if not (np.all(np.isfinite(Xk)) and np.all(np.isfinite(a)) and np.all(np.isfinite(c))):
        raise ValueError("`Xk`, `a` and `c` must be finite")
    if not (s_plus > 0 and s_minus >= 0 and s_plus != s_minus):
        raise ValueError(f"need s_plus > 0, s_minus >= 0, s_plus != s_minus; got {s_plus}, {s_minus}")
    return Xk, a, c


def degenerate_first_order(Xk, a, c, s_plus: float = 1.0, s_minus: float = 0.0, *,
                           tol: float = Tolerances.gradient, scale: float | None = None,
                           max_cells: int = DEFAULT_MAX_CELLS, rank_tol: float = RANK_TOL,
                           margin: float = MARGIN) -> DegenerateFirstOrder:
    """Does ``f_k`` (above) decrease along some ``v``? Exact over the cells of the kink arrangement.

    Args:
        Xk: (M_k, d) boundary rows ``xbar_i, i in B_k`` (dependent or not; parallel rows allowed).
        a: (M_k,) ``a_ik = w_k . r_i`` on those rows. c: (d,) ``c_k``, the off-kink gradient (plus
            ``lam Z_k`` under weight decay).
        tol: relative threshold (``Tolerances.gradient``): descent iff ``min_{|v|=1} f_k(v) <
            -tol * scale``.
        scale: the natural scale of ``f_k``'s slopes; default ``|c_k| + s_hi sum_i |a_ik| |xbar_i|``,
            the Lipschitz constant of ``f_k``. The check passes ``NeuronTest.scale``
            (``s_hi |a_k| |Xbar|`` + decay, an upper bound of it) so that this test and the Clarke test
            share their threshold.
        max_cells: budget on the arrangement's cells, counted before anything is solved.
        rank_tol, margin: see :func:`sospcheck.arrangement.enumerate_cells`.

    Returns:
        :class:`DegenerateFirstOrder`.
    """
    Xk, a, c = _check_neuron_inputs(Xk, a, c, s_plus, s_minus)
    if scale is None:
        scale = float(np.linalg.norm(c) + max(s_plus, s_minus) * np.abs(a) @ np.linalg.norm(Xk, axis=1))
    threshold = float(tol * scale)
    cells = enumerate_cells(Xk, max_cells=max_cells, tol=rank_tol, margin=margin)
    rank = cells.hyperplanes.rank
    base = dict(threshold=threshold, scale=float(scale), cells=cells, rank=rank, M=Xk.shape[0])
    if cells.status == OVER_BUDGET:
        return DegenerateFirstOrder(OVER_BUDGET, cells.message, None, None, cell=None, cell_slopes=np.zeros(0),
                                    multipliers=np.zeros((0, cells.hyperplanes.n)), **base)
    hp = cells.hyperplanes
    row_signs = cells.row_signs()
    G = cell_gradients(Xk, a, c, s_plus, s_minus, row_signs)
    # steepest unit direction in each closed cell: P_C(-g) = W' lam - g, slope -|P_C(-g)|
    walls = cells.signs[:, :, None] * hp.normals[None, :, :]
    lams = np.array([polar_multipliers(W, -g) for W, g in zip(walls, G)]).reshape(len(G), hp.n)
    steps = np.einsum("cjd,cj->cd", walls, lams) - G
    norms = np.linalg.norm(steps, axis=1)
    units = steps / np.where(norms > 0, norms, 1.0)[:, None]
    # the verdict rests on f_k itself at the candidate directions, not on the cell model
    exact = np.where(norms > 0, kink_terms(Xk, a, c, s_plus, s_minus, units), 0.0)
    j = int(np.argmin(exact))
    if exact[j] < -threshold:
        return DegenerateFirstOrder(
            DESCENT, f"first-order descent in cell {j} of {cells.n_cells}: slope {exact[j]:.4g} < -{threshold:.3g}",
            units[j], float(exact[j]), cell=row_signs[j], cell_slopes=-norms, multipliers=lams, **base)
    steepest = 0.0 - float(norms.max(initial=0.0))  # 0.0 - x: never -0.0
    return DegenerateFirstOrder(
        STATIONARY, f"no first-order descent in any of the {cells.n_cells} cells (steepest slope "
        f"{steepest:.3g}, threshold {threshold:.3g})", None, steepest, cell=None, cell_slopes=-norms,
        multipliers=lams, **base)


def neuron_kink_data(pt, nt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Xk, a, c_k)`` of neuron ``nt.k`` of the check (a ``Point`` and its ``NeuronTest``): the boundary
    rows, their ``a_ik``, and ``c_k = vt - sum_i s*_i a_ik xbar_i`` read back from the BVLS step."""
    Xk = pt.fwd.Xbar[nt.boundary]
    aB = pt.a(nt.boundary, nt.k)
    return Xk, aB, nt.vt - Xk.T @ (nt.s_star * aB)


def degenerate_neuron(pt, nt, tol: Tolerances, max_cells: int = DEFAULT_MAX_CELLS) -> DegenerateFirstOrder:
    """:func:`degenerate_first_order` for neuron ``nt.k`` of the check (a ``Point`` and its ``NeuronTest``,
    :func:`neuron_kink_data`); the threshold is shared with the BVLS step."""
    Xk, aB, c = neuron_kink_data(pt, nt)
    return degenerate_first_order(Xk, aB, c, pt.net.s_plus, pt.net.s_minus, tol=tol.gradient, scale=nt.scale,
                                  max_cells=max_cells, rank_tol=tol.rank)


@dataclass(frozen=True)
class CellProduct:
    """The sign patterns of several degenerate neurons combine as a product (second order only).

    total: ``prod_k n_k``. dominant: the neuron with the most cells (None if none). over_budget:
    ``total > max_cells``.
    """

    total: int
    per_neuron: dict
    dominant: int | None
    over_budget: bool
    max_cells: int


def cell_product(counts: Mapping[int, int], max_cells: int = DEFAULT_MAX_CELLS) -> CellProduct:
    """Count the joint cells of several neurons (``counts``: neuron -> its cell count) against the budget."""
    per = {int(k): int(n) for k, n in counts.items()}
    if any(n < 1 for n in per.values()):
        raise ValueError(f"cell counts must be >= 1, got {per}")
    total = 1
    for n in per.values():
        total *= n
    dominant = max(per, key=lambda k: (per[k], -k)) if per else None
    return CellProduct(total, per, dominant, total > max_cells, int(max_cells))

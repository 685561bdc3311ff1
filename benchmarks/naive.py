"""The naive alternative to SOSP-CHECK (issue 3, item b): visit every one of the ``2^M`` sign regions.

On region ``sigma`` (one sign for each boundary pair) the loss is one smooth piece. The naive method
builds, per region: the slope pattern ``J_sigma``, the piece's gradient ``g_sigma`` and its dense
Hessian ``H_sigma`` (``sospcheck.operators.HessianOperator(...).dense()``, data-span coordinates
``Xbar``), solves the first-order LP ``min g_sigma' eta`` over the region's cone
``{sigma_i t_i >= 0} cap [-1, 1]^p`` (``scipy.optimize.linprog``, HiGHS) and takes the eigenvalues
of ``H_sigma`` (``numpy.linalg.eigvalsh``). Its cost is ``2^M`` times the per-region cost.
"""

from __future__ import annotations

import time
from itertools import product

import numpy as np
from scipy.optimize import linprog

from sospcheck.operators import HessianOperator


def _setup(net, X, Y):
    """Forward pass, residuals, the boundary pairs and the shared operator (slopes set per region)."""
    Xbar = np.hstack([X, np.ones((X.shape[0], 1))])
    N = Xbar @ net.Z.T
    scale = np.linalg.norm(net.Z, axis=1) * np.max(np.linalg.norm(Xbar, axis=1))
    on = np.argwhere(np.abs(N) <= 1e-9 * scale[None, :])  # (i, k) pairs, same tolerance as the check
    O = net.activation(N)
    r = O @ net.W2.T + net.b2 - Y
    Hl = np.broadcast_to(np.eye(net.dy), (X.shape[0], net.dy, net.dy))
    J0 = net.slope(N).astype(float)
    op = HessianOperator(O, Xbar, net.W2, r, Hl, J0, identity_hessian=True)
    return Xbar, O, r, on, J0, op


def region_work(net, Xbar, O, r, on, J0, op, signs) -> tuple[float, float]:
    """Everything the naive method does on one region: ``(LP value, min eigenvalue of H_sigma)``."""
    J = J0.copy()
    for (i, k), s in zip(on, signs):
        J[i, k] = net.s_plus if s > 0 else net.s_minus
    a = r @ net.W2
    g = np.concatenate([(r.T @ O).ravel(), ((a * J).T @ Xbar).ravel(), r.sum(axis=0)])
    H = op.with_slopes(J).dense()
    layout = op.layout
    A_ub = np.zeros((len(on), layout.n))
    for row, ((i, k), s) in enumerate(zip(on, signs)):
        A_ub[row, layout.nu_index(k)] = -s * Xbar[i]  # sigma_i t_ik >= 0
    lp = linprog(g, A_ub=A_ub, b_ub=np.zeros(len(on)), bounds=(-1.0, 1.0), method="highs")
    return float(lp.fun), float(np.linalg.eigvalsh(H)[0])


def naive_enumeration(net, X, Y, max_seconds: float = float("inf")) -> dict:
    """Visit all ``2^M`` regions (stops early past ``max_seconds``); per-region cost and the verdict pieces.

    Returns ``M``, ``regions`` visited, ``seconds``, ``per_region_s``, ``complete``, ``min_lp`` (the most
    negative first-order slope found over all regions: ~0 at a first-order stationary point) and
    ``min_piece_eig``.
    """
    Xbar, O, r, on, J0, op = _setup(net, X, Y)
    M = len(on)
    t0 = time.perf_counter()
    min_lp, min_eig, n = np.inf, np.inf, 0
    for signs in product((1, -1), repeat=M):
        lp, ev = region_work(net, Xbar, O, r, on, J0, op, signs)
        min_lp, min_eig, n = min(min_lp, lp), min(min_eig, ev), n + 1
        if time.perf_counter() - t0 > max_seconds:
            break
    seconds = time.perf_counter() - t0
    return {"M": M, "regions": n, "seconds": seconds, "per_region_s": seconds / n, "complete": n == 2**M,
            "min_lp": min_lp, "min_piece_eig": min_eig}

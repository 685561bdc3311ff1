"""Second-order test on the critical cone: the ECQP and the 2^K ICQPs (DESIGN.md section 3, step 4).

Coordinates ``theta`` (see :mod:`sospcheck.operators`) restricted to the kept blocks: exactly flat
blocks are quotiented out (section 4): ``v_k`` outside the data span, dead neurons (``s_minus = 0``
and every ``N_ik < 0``), and ``nu_k`` of zero-output neurons whose map ``g`` vanishes
(:mod:`sospcheck.zero_output`).

Constraints: ``A theta = 0`` holds the symmetry rows ``-w_k . u_k + Z_k . v_k = 0`` (no weight
decay) and ``t_ik = 0`` for non-flat boundary pairs; the ``L`` flat pairs give ``sigma_ik t_ik >= 0``.
With ``N`` a basis of ``null(A)`` and ``C = B N``, ``theta = N (C^+ y + W w)``, ``W`` a basis of
``null(C)``: the ECQP is the ``w`` block (all kinks held, ``y = 0``), the same for every sign
choice; each ICQP adds ``y >= 0`` and is decided by ``Qww`` and the Schur complement
``S = Qyy - Qyw Qww^+ Qwy`` (copositivity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import numpy as np
from scipy.linalg import null_space

from .copositive import NOT, STRICT, UNKNOWN, copositivity
from .first_order import NeuronTest
from .geometry import data_span
from .model import Direction
from .operators import HessianOperator, Layout
from .options import Budget, Tolerances
from .point import Point
from .zero_output import zero_output_test

__all__ = ["QPRecord", "SecondOrderOutcome", "second_order_test"]

T1, T2, T3 = "T1", "T2", "T3"


@dataclass
class QPRecord:
    """One second-order subproblem and how it came out."""

    kind: str  # "ECQP", "ICQP" or "zero_output"
    outcome: str  # T1 (positive), T2 (zero curvature), T3 (negative: descent)
    n_vars: int
    n_eq: int = 0
    n_ineq: int = 0
    signs: tuple = ()
    min_eig: float | None = None
    copositivity: str | None = None
    copositivity_value: float | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        return {
            "kind": self.kind, "outcome": self.outcome, "n_vars": self.n_vars, "n_eq": self.n_eq,
            "n_ineq": self.n_ineq, "signs": list(self.signs), "min_eig": self.min_eig,
            "copositivity": self.copositivity, "copositivity_value": self.copositivity_value,
            "detail": self.detail,
        }


@dataclass
class SecondOrderOutcome:
    outcome: str | None  # T1/T2/T3, or None when inconclusive
    records: list[QPRecord] = field(default_factory=list)
    direction: Direction | None = None
    source: str = ""
    inconclusive: str | None = None
    quotient: dict = field(default_factory=dict)
    n_icqp_planned: int = 0
    n_params_reduced: int = 0
    hessian_norm: float = 0.0
    eig_tol: float = 0.0


@dataclass
class _Problem:
    """The reduced second-order problem shared by the ECQP and all ICQPs."""

    pt: Point
    V: np.ndarray
    Xr: np.ndarray
    layout: Layout
    keep: np.ndarray  # indices of kept coordinates
    J_base: np.ndarray
    flat_pairs: list  # (i, k, allowed signs tuple)

    def operator(self, J: np.ndarray) -> HessianOperator:
        pt = self.pt
        return HessianOperator(
            pt.fwd.O, self.Xr, pt.net.W2, pt.r, pt.Hl, J, pt.weight_decay,
            identity_hessian=pt.loss.name == "squared", has_b2=pt.net.has_b2,
        )

    def apply(self, J: np.ndarray, M: np.ndarray) -> np.ndarray:
        """``H_J[keep][:, keep] @ M`` without forming ``H_J``."""
        full = np.zeros((self.layout.n, M.shape[1]))
        full[self.keep] = M
        return self.operator(J).matmat(full)[self.keep]

    def direction(self, theta_keep: np.ndarray) -> Direction:
        full = np.zeros(self.layout.n)
        full[self.keep] = theta_keep
        U, Nu, c = self.layout.split(full[:, None])
        return Direction.from_blocks(Nu[0] @ self.V.T, U[0], None if c is None else c[0], self.pt.net.has_b1)

    def t_row(self, i: int, k: int) -> np.ndarray:
        row = np.zeros(self.layout.n)
        row[self.layout.nu_index(k)] = self.Xr[i]
        return row[self.keep]

    def J_for(self, signs: dict) -> np.ndarray:
        J = self.J_base.copy()
        net = self.pt.net
        for (i, k), s in signs.items():
            J[i, k] = net.s_plus if s > 0 else net.s_minus
        return J


def _spectral_norm(H: np.ndarray) -> float:
    if H.size == 0:
        return 0.0
    if H.shape[0] <= 400:
        return float(np.max(np.abs(np.linalg.eigvalsh(H))))
    from scipy.sparse.linalg import eigsh

    return float(abs(eigsh(H, k=1, which="LM", return_eigenvectors=False)[0]))


def second_order_test(pt: Point, neurons: list[NeuronTest], boundary: np.ndarray, tol: Tolerances,
                      budget: Budget, rng: np.random.Generator | None = None) -> SecondOrderOutcome:
    """Step 4 at a first-order stationary point whose rays were all nonnegative.

    Returns T3 with a second-order descent direction (``second < 0``, ``first = 0``), T2 if some
    nonzero critical direction has zero curvature, T1 if the form is positive on the critical cone.
    """
    rng = rng or np.random.default_rng(0)
    net, fwd = pt.net, pt.fwd
    lam = pt.weight_decay
    V = data_span(fwd.Xbar, tol.rank) if lam == 0 else np.eye(fwd.Xbar.shape[1])
    Xr = fwd.Xbar @ V
    Zr = net.Z @ V
    layout = Layout(net.dy, net.dh, V.shape[1], net.has_b2)
    keep = np.ones(layout.n, bool)
    out = SecondOrderOutcome(None)
    out.quotient = {"data_span_dim": int(V.shape[1]), "full_dim": int(fwd.Xbar.shape[1]),
                    "dead_neurons": [], "zero_output_neurons": []}
    s_hi = max(net.s_plus, net.s_minus)
    W2norm = np.linalg.norm(net.W2)

    if lam == 0:
        for nt in neurons:
            k = nt.k
            if nt.M == 0 and net.s_minus == 0 and np.all(fwd.N[:, k] < 0):
                keep[layout.u_index(k)] = keep[layout.nu_index(k)] = False
                out.quotient["dead_neurons"].append(k)
                continue
            if np.linalg.norm(net.W2[:, k]) <= tol.a_zero * W2norm:
                g_tol = tol.gradient * s_hi * np.linalg.norm(pt.r) * np.linalg.norm(Xr)
                zt = zero_output_test(k, Xr, pt.r, fwd.N[:, k], boundary[:, k], net.s_plus, net.s_minus, g_tol, rng)
                if zt.flat:
                    keep[layout.nu_index(k)] = False
                    out.quotient["zero_output_neurons"].append(k)
                    continue
                if zt.nu is None:
                    out.inconclusive = f"zero-output neuron {k}: could not decide whether its kinks give descent"
                    return out
                return _zero_output_descent(pt, out, layout, V, Xr, Zr, boundary, k, zt.nu)

    keep_idx = np.flatnonzero(keep)
    out.n_params_reduced = int(keep_idx.size)
    rows_eq = []
    flat_pairs = []
    for nt in neurons:
        k = nt.k
        if not keep[layout.nu_index(k)[0]]:
            continue
        for j, i in enumerate(nt.boundary):
            fp, fm = bool(nt.flat_plus[j]), bool(nt.flat_minus[j])
            if fp or fm:
                flat_pairs.append((int(i), k, tuple(s for s, f in ((1, fp), (-1, fm)) if f)))
            else:
                rows_eq.append(("t", int(i), k))
    prob = _Problem(pt, V, Xr, layout, keep_idx, net.slope(fwd.N).astype(float), flat_pairs)
    prob.J_base[boundary] = net.s_plus
    A_rows = [prob.t_row(i, k) for _, i, k in rows_eq]
    if lam == 0:
        for k in range(net.dh):
            if k in out.quotient["zero_output_neurons"]:
                continue  # w_k = 0 and nu_k quotiented: the orbit direction is already flat
            row = np.zeros(layout.n)
            row[layout.u_index(k)] = -net.W2[:, k]
            if layout.rho:
                row[layout.nu_index(k)] = Zr[k]
            row = row[keep_idx]
            if np.any(row):
                A_rows.append(row)
    A = np.array(A_rows) if A_rows else np.zeros((0, keep_idx.size))

    L = len(flat_pairs)
    K = sum(1 for p in flat_pairs if len(p[2]) == 2)
    out.n_icqp_planned = 2**K if L else 0
    if keep_idx.size > budget.max_dense_params:
        out.inconclusive = (
            f"reduced parameter count {keep_idx.size} exceeds budget.max_dense_params={budget.max_dense_params} "
            "(the dense second-order solver would form a {0}x{0} matrix)".format(keep_idx.size)
        )
        return out
    if L and 2**K > budget.max_icqp:
        out.inconclusive = f"2^{K} = {2**K} ICQPs exceed budget.max_icqp={budget.max_icqp}"
        return out

    H = prob.operator(prob.J_base).dense(keep_idx)
    out.hessian_norm = _spectral_norm(H)
    eig_tol = tol.eigen * out.hessian_norm
    out.eig_tol = eig_tol
    Nb = null_space(A, rcond=tol.rank) if A.shape[0] else np.eye(keep_idx.size)

    if L == 0:
        Mw, My0 = Nb, np.zeros((keep_idx.size, 0))
    else:
        B0 = np.array([prob.t_row(i, k) for i, k, _ in flat_pairs])
        C0 = B0 @ Nb
        sv = np.linalg.svd(C0, compute_uv=False)
        if sv.size < L or sv[-1] <= tol.rank * max(sv[0], 1e-300):
            out.inconclusive = ("the flat-ray constraints are linearly dependent on the critical subspace; "
                                "the cone reduction of step 4 does not apply")
            return out
        My0 = Nb @ np.linalg.pinv(C0)
        My0 /= np.linalg.norm(My0, axis=0)[None, :]  # copositivity is invariant to positive scaling of y
        Mw = Nb @ null_space(C0, rcond=tol.rank)

    # ECQP: every kink held (t = 0 on all boundary pairs); the same block Qww for every ICQP
    Qww = Mw.T @ H @ Mw
    ew, Uw = np.linalg.eigh(Qww) if Qww.size else (np.zeros(0), np.zeros((0, 0)))
    ecqp = QPRecord("ECQP", T1, int(Mw.shape[1]), n_eq=int(A.shape[0] + L),
                    min_eig=float(ew[0]) if ew.size else None)
    out.records.append(ecqp)
    if ew.size and ew[0] < -eig_tol:
        ecqp.outcome = T3
        return _finish(out, T3, prob.direction(Mw @ Uw[:, 0]), "ECQP")
    null_w = np.abs(ew) <= eig_tol
    if np.any(null_w):
        ecqp.outcome = T2
    pos = ew > eig_tol
    Qww_pinv = (Uw[:, pos] / ew[pos]) @ Uw[:, pos].T
    if L == 0:
        return _finish(out, ecqp.outcome, None, "ECQP")

    overall = ecqp.outcome
    free_pairs = [p for p in flat_pairs if len(p[2]) == 2]
    for choice in product((1, -1), repeat=K):
        it = iter(choice)
        signs = {(i, k): (next(it) if len(allowed) == 2 else allowed[0]) for i, k, allowed in flat_pairs}
        sig = np.array([signs[(i, k)] for i, k, _ in flat_pairs], float)
        My = My0 * sig[None, :]
        HMy = prob.apply(prob.J_for(signs), My)
        Qyy = My.T @ HMy
        Qyy = 0.5 * (Qyy + Qyy.T)
        Qwy = Mw.T @ HMy
        rec = QPRecord("ICQP", T1, int(L + Mw.shape[1]), n_eq=int(A.shape[0]), n_ineq=L,
                       signs=tuple(signs[(i, k)] for i, k, _ in free_pairs),
                       min_eig=float(ew[0]) if ew.size else None)
        out.records.append(rec)
        if np.any(null_w):
            G = Uw[:, null_w].T @ Qwy  # (n_null, L)
            gn = np.linalg.norm(G, axis=0)
            j = int(np.argmax(gn))
            if gn[j] > eig_tol:
                # y = e_j and w along -G_j inside null(Qww): the form is linear in the step, unbounded below
                n0 = Uw[:, null_w] @ G[:, j]
                alpha = (abs(Qyy[j, j]) + 1.0) / gn[j] ** 2
                theta = My[:, j] - alpha * (Mw @ n0)
                rec.outcome, rec.detail = T3, "Qww singular and coupled to y: unbounded below"
                return _finish(out, T3, prob.direction(theta), "ICQP")
        S = Qyy - Qwy.T @ Qww_pinv @ Qwy
        S = 0.5 * (S + S.T)
        cop = copositivity(S, eig_tol, budget.max_copositive_subsets, budget.milp_time_limit)
        rec.copositivity, rec.copositivity_value = cop.status, cop.value
        if cop.status == UNKNOWN:
            out.inconclusive = f"copositivity of a {L}x{L} Schur complement not decided: {cop.method}"
            return out
        if cop.status == NOT:
            y = cop.witness
            theta = My @ y - Mw @ (Qww_pinv @ (Qwy @ y))
            rec.outcome = T3
            return _finish(out, T3, prob.direction(theta), "ICQP")
        if cop.status != STRICT or np.any(null_w):
            rec.outcome = T2
            overall = T2
    return _finish(out, overall, None, "ICQP")


def _finish(out: SecondOrderOutcome, outcome: str, direction: Direction | None, source: str) -> SecondOrderOutcome:
    out.outcome, out.direction, out.source = outcome, direction, source
    return out


def _zero_output_descent(pt, out, layout, V, Xr, Zr, boundary, k, nu) -> SecondOrderOutcome:
    """``u_k = -g(nu)`` and ``beta nu``: ``second = A - beta |g|^2 < 0`` for ``beta`` large (module zero_output)."""
    nu = nu - (nu @ Zr[k]) / max(Zr[k] @ Zr[k], 1e-300) * Zr[k] if np.any(Zr[k]) else nu
    dZ = np.zeros((layout.dh, V.shape[0]))
    dZ[k] = V @ nu
    d_nu = Direction.hidden(pt.net, dZ)
    T = pt.fwd.Xbar @ dZ.T
    J = pt.kink_slopes(T, boundary)
    g = pt.r.T @ (J[:, k] * T[:, k])
    dW2 = np.zeros_like(pt.net.W2)
    dW2[:, k] = -g / np.linalg.norm(g)
    d_u = Direction.output(pt.net, dW2, np.zeros(pt.net.dy))
    A_u = pt.local_terms(d_u, boundary)[1]
    B = -float(np.linalg.norm(g))  # u . g(nu)
    beta = 2.0 * max(A_u, 0.0) / abs(B) + 1.0
    d = Direction(beta * d_nu.W1, None if d_nu.b1 is None else beta * d_nu.b1, dW2, d_u.b2)
    out.records.append(QPRecord("zero_output", T3, int(layout.dy + layout.rho),
                                detail=f"neuron {k}: w_k = 0 and |g(nu)| = {abs(B):.3g}"))
    return _finish(out, T3, d, "zero_output")

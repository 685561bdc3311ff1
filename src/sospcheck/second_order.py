"""Second-order test on the critical cone: the ECQP and the 2^K ICQPs (DESIGN.md section 3, step 4).

Coordinates ``theta`` (see :mod:`sospcheck.operators`) restricted to the kept blocks: exactly flat
blocks are quotiented out (section 4): ``v_k`` outside the data span, dead neurons (``s_minus = 0``
and every ``N_ik < 0``), and ``nu_k`` of zero-output neurons whose map ``g`` vanishes
(:mod:`sospcheck.zero_output`).

Inactive directions (ReLU, ``s_minus = 0``): moving ``nu_k`` orthogonally to the points where
neuron ``k`` is active or on its kink changes only pre-activations that are negative and stay
negative nearby, so no output moves, here or at any nearby point: a translation invariance,
quotiented by the rows ``f . nu_k = 0`` for a basis of that orthogonal complement. A dead neuron is
the extreme case (all of ``nu_k``, and then ``u_k`` too). The rank of those points is computed
when they are fewer than the span dimension, or when the SVD is cheap (``n_act rho^2 <= 5e7``);
more points in general position span everything.

Bias shifts: a neuron with no boundary point and one slope ``s`` on all data (always active, or
always inactive under a leaky ReLU) is affine on a neighbourhood, so shifting its pre-activation
by a constant ``c`` (``nu_k = nu_c``, ``Xr nu_c = 1``) and ``b2`` by ``-s w_k c`` leaves every
output unchanged, at this point and at every nearby one. Like the rescaling symmetry these
curves foliate a neighbourhood, and the loss is constant on each, so the test runs on the slice
``nu_c . nu_k = 0`` (one more row of the neuron's block; a transversal slice as long as it is
independent of the rescaling row, which is checked). Without this slice the ECQP reports the
exact flat direction as T2 and a minimum is only certified as ``sosp``.

Constraints: ``A theta = 0`` holds the symmetry rows ``-w_k . u_k + Z_k . v_k = 0`` (no weight
decay) and ``t_ik = 0`` for non-flat boundary pairs; the ``L`` flat pairs give ``sigma_ik t_ik >= 0``.
With ``N`` a basis of ``null(A)`` and ``C = B N``, ``theta = N (C^+ y + W w)``, ``W`` a basis of
``null(C)``: the ECQP is the ``w`` block (all kinks held, ``y = 0``), the same for every sign
choice; each ICQP adds ``y >= 0`` and is decided by ``Qww`` and the Schur complement
``S = Qyy - Qyw Qww^+ Qwy`` (copositivity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from itertools import product

import numpy as np
from scipy.linalg import null_space

from .copositive import NOT, STRICT, UNKNOWN, copositivity
from .first_order import NeuronTest
from .geometry import data_span
from .margins import FRAGILITY_FACTOR, Margins
from .model import Direction
from .operators import Layout, make_operator
from .options import Budget, Tolerances
from .point import Point
from .quotient import Quotient
from .zero_output import zero_output_mask, zero_output_ratios, zero_output_test

__all__ = ["Outcome", "QPRecord", "SecondOrderOutcome", "second_order_test"]


class Outcome(str, Enum):
    """How a second-order subproblem came out (the values are what the JSON report writes)."""

    POSITIVE = "T1"  # positive on the critical cone (modulo the quotient)
    ZERO = "T2"  # some nonzero critical direction has zero curvature
    NEGATIVE = "T3"  # negative curvature: a second-order descent direction

    def __str__(self) -> str:
        return self.value


T1, T2, T3 = Outcome.POSITIVE, Outcome.ZERO, Outcome.NEGATIVE


@dataclass
class QPRecord:
    """One second-order subproblem and how it came out."""

    kind: str  # "ECQP", "ICQP" or "zero_output"
    outcome: Outcome
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
            "kind": self.kind, "outcome": Outcome(self.outcome).value, "n_vars": self.n_vars, "n_eq": self.n_eq,
            "n_ineq": self.n_ineq, "signs": list(self.signs), "min_eig": self.min_eig,
            "copositivity": self.copositivity, "copositivity_value": self.copositivity_value,
            "detail": self.detail,
        }


@dataclass
class SecondOrderOutcome:
    """Step 4's answer. ``outcome`` None: inconclusive (``inconclusive`` says why). ``direction``: the
    descent direction of a NEGATIVE outcome, found by ``source`` ("ECQP", "ICQP" or "zero_output").
    ``products``: Hessian-vector products used. ``margins``: ``(decision, |value| / threshold)`` for
    every decision taken against a tolerance that the fragility probe scales (:mod:`sospcheck.margins`)."""

    outcome: Outcome | None
    records: list[QPRecord] = field(default_factory=list)
    direction: Direction | None = None
    source: str = ""
    inconclusive: str | None = None
    quotient: Quotient | None = None
    n_icqp_planned: int = 0
    n_params_reduced: int = 0
    hessian_norm: float = 0.0
    eig_tol: float = 0.0
    solver: str = ""
    products: int = 0
    margins: list[tuple[str, float]] = field(default_factory=list)


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
    backend: str = "numpy"
    device: str | None = None
    _base_op: object = field(default=None, repr=False)

    def operator(self, J: np.ndarray):
        """The Hessian operator for slopes ``J``; the data go to the backend once, for ``J_base``."""
        if self._base_op is None:
            pt = self.pt
            self._base_op = make_operator(
                self.backend, pt.fwd.O, self.Xr, pt.net.W2, pt.r, pt.Hl, self.J_base, pt.weight_decay,
                identity_hessian=pt.loss.name == "squared", has_b2=pt.net.has_b2, device=self.device,
            )
        return self._base_op if J is self.J_base else self._base_op.with_slopes(J)

    @property
    def products(self) -> int:
        """Hessian-vector products done so far (all slope patterns share one counter)."""
        return 0 if self._base_op is None else self._base_op.products

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
                      budget: Budget, rng: np.random.Generator | None = None,
                      solver: str = "auto", backend: str = "numpy", device: str | None = None,
                      progress=None) -> SecondOrderOutcome:
    """Step 4 (see :func:`_second_order`), with the Hessian products counted and the margins recorded."""
    margins, probs = Margins(), []
    out = _second_order(pt, neurons, boundary, tol, budget, rng, solver, backend, device, progress, margins, probs)
    out.margins = margins.items()
    out.products = probs[0].products if probs else 0
    return out


def _second_order(pt: Point, neurons: list[NeuronTest], boundary: np.ndarray, tol: Tolerances,
                  budget: Budget, rng: np.random.Generator | None, solver: str, backend: str, device: str | None,
                  progress, margins: Margins, probs: list) -> SecondOrderOutcome:
    """Step 4 at a first-order stationary point whose rays were all nonnegative.

    Returns T3 with a second-order descent direction (``second < 0``, ``first = 0``), T2 if some
    nonzero critical direction has zero curvature, T1 if the form is positive on the critical cone.
    ``solver``: "dense" (reduced H formed), "matrix_free" (products only), or "auto" (dense up to
    ``budget.max_dense_params`` kept coordinates). ``backend``: "numpy" or "torch" (Hessian products
    on ``device``, a GPU when available).
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
    dead, zero = [], []
    out.quotient = Quotient(int(V.shape[1]), int(fwd.Xbar.shape[1]), dead, zero)
    s_hi = max(net.s_plus, net.s_minus)
    zero_mask = zero_output_mask(net, lam, tol.a_zero)
    zero_ratio = zero_output_ratios(net, lam, tol.a_zero)

    if lam == 0:
        for nt in neurons:
            k = nt.k
            if nt.M == 0 and net.s_minus == 0 and np.all(fwd.N[:, k] < 0):
                keep[layout.u_index(k)] = keep[layout.nu_index(k)] = False
                dead.append(k)
                continue
            margins.extend([("zero output: |w_k| (a_zero)", float(zero_ratio[k]))])
            if zero_mask[k]:
                g_tol = tol.gradient * s_hi * np.linalg.norm(pt.r) * np.linalg.norm(Xr)
                zt = zero_output_test(k, Xr, pt.r, fwd.N[:, k], boundary[:, k], net.s_plus, net.s_minus, g_tol, rng)
                margins.extend(zt.margins)
                if zt.flat:
                    keep[layout.nu_index(k)] = False
                    zero.append(k)
                    continue
                if zt.nu is None:
                    out.inconclusive = f"zero-output neuron {k}: could not decide whether its kinks give descent"
                    return out
                return _zero_output_descent(pt, out, layout, V, Xr, Zr, boundary, k, zt.nu)

    prob = _Problem(pt, V, Xr, layout, np.flatnonzero(keep), net.slope(fwd.N).astype(float), [], backend, device)
    prob.J_base[boundary] = net.s_plus
    probs.append(prob)
    shift = _bias_shift_rows(net, fwd.N, Xr, neurons, keep, layout, lam, tol.rank)
    shifted = sorted(k for k in shift if k not in zero)
    inactive = _inactive_rows(net, fwd.N, boundary, Xr, neurons, keep, layout, lam, zero, tol.rank)
    out.quotient = Quotient(int(V.shape[1]), int(fwd.Xbar.shape[1]), dead, zero, shifted,
                            {k: int(F.shape[0]) for k, F in inactive.items()})
    blocks = _constraint_blocks(prob, neurons, keep, Zr, zero, lam, {k: shift[k] for k in shifted}, inactive)
    prob.flat_pairs = [(i, b.k, allowed) for b in blocks for i, allowed in b.flat]
    out.n_params_reduced = int(prob.keep.size)
    L = len(prob.flat_pairs)
    K = sum(1 for p in prob.flat_pairs if len(p[2]) == 2)
    out.n_icqp_planned = 2**K if L else 0
    if L and 2**K > budget.max_icqp:
        out.inconclusive = f"2^{K} = {2**K} ICQPs exceed budget.max_icqp={budget.max_icqp}"
        return out
    if any(b.dependent for b in blocks):
        out.inconclusive = ("the flat-ray constraints are linearly dependent on the critical subspace; "
                            "the cone reduction of step 4 does not apply")
        return out
    use_dense = solver == "dense" or (solver == "auto" and prob.keep.size <= budget.max_dense_params)
    sub = _DenseSubspace(prob, blocks) if use_dense else _ProjectedSubspace(prob, blocks, progress)
    out.solver = "dense" if use_dense else "matrix_free"
    out.hessian_norm = sub.hessian_norm
    eig_tol = tol.eigen * out.hessian_norm
    out.eig_tol = eig_tol

    # ECQP: every kink held (t = 0 on all boundary pairs); the same block Qww for every ICQP
    n_eq = int(sum(b.A.shape[0] for b in blocks))
    lam_min, v_min = sub.min_eig(eig_tol)
    ecqp = QPRecord("ECQP", T1, sub.dim, n_eq=n_eq + L, min_eig=lam_min, detail=sub.detail)
    out.records.append(ecqp)
    if sub.failed:
        out.inconclusive = f"ECQP eigenvalue not computed: {sub.failed}"
        return out
    if lam_min is not None:
        margins.add("ECQP: smallest eigenvalue", lam_min, eig_tol, sub.accuracy)
    if lam_min is not None and lam_min < -eig_tol:
        ecqp.outcome = T3
        return _finish(out, T3, prob.direction(v_min), "ECQP")
    singular = lam_min is not None and lam_min <= eig_tol
    if singular:
        ecqp.outcome = T2
    if L == 0:
        return _finish(out, ecqp.outcome, None, "ECQP")
    sub.prepare_solves(eig_tol, margins)

    overall = ecqp.outcome
    My0 = _particular_solutions(prob, blocks)
    free_pairs = [p for p in prob.flat_pairs if len(p[2]) == 2]
    for n_done, choice in enumerate(product((1, -1), repeat=K)):
        if progress is not None:
            progress("ICQPs (2^K sign choices)", n_done, 2**K)
        it = iter(choice)
        signs = {(i, k): (next(it) if len(allowed) == 2 else allowed[0]) for i, k, allowed in prob.flat_pairs}
        sig = np.array([signs[(i, k)] for i, k, _ in prob.flat_pairs], float)
        My = My0 * sig[None, :]
        J_sigma = prob.J_for(signs)
        HMy = prob.apply(J_sigma, My)
        Qyy = My.T @ HMy
        Qyy = 0.5 * (Qyy + Qyy.T)
        rec = QPRecord("ICQP", T1, int(L + sub.dim), n_eq=n_eq, n_ineq=L,
                       signs=tuple(signs[(i, k)] for i, k, _ in free_pairs), min_eig=lam_min)
        out.records.append(rec)

        def negative(theta):
            """The candidate's curvature, recomputed with one product, must be negative beyond the
            rounding error of that product (~ eps |H| |theta|^2): solver round-off must not turn into a
            claimed descent direction. (An unbounded direction can have a tiny curvature per unit
            norm, so the threshold is the rounding level, not ``eig_tol``.)"""
            q = float(theta @ prob.apply(J_sigma, theta[:, None])[:, 0])
            return q < -1e-13 * out.hessian_norm * float(theta @ theta)

        theta = sub.unbounded_direction(My, HMy, Qyy, eig_tol, margins) if singular else None
        if theta is not None:
            if not negative(theta):
                out.inconclusive = ("Qww is (nearly) singular and the solver's null-space direction does not have "
                                    "negative curvature; rerun with solver='dense'")
                return out
            rec.outcome, rec.detail = T3, "Qww singular and coupled to y: unbounded below"
            return _finish(out, T3, prob.direction(theta), "ICQP")
        Xs = sub.solve(HMy)  # Mw Qww^+ Mw' H My
        S = Qyy - HMy.T @ Xs
        S = 0.5 * (S + S.T)
        cop = copositivity(S, eig_tol, budget.max_copositive_subsets, budget.milp_time_limit)
        margins.extend(cop.margins)
        rec.copositivity, rec.copositivity_value = cop.status, cop.value
        if cop.status == UNKNOWN:
            out.inconclusive = f"copositivity of a {L}x{L} Schur complement not decided: {cop.method}"
            return out
        if cop.status == NOT:
            y = cop.witness
            theta = My @ y - Xs @ y
            if not negative(theta):
                out.inconclusive = (f"the copositivity witness (y'Sy = {cop.value:.3g}) does not give negative "
                                    "curvature once recomputed: the Schur complement is inaccurate")
                return out
            rec.outcome = T3
            return _finish(out, T3, prob.direction(theta), "ICQP")
        if cop.status != STRICT or singular:
            rec.outcome = T2
            overall = T2
    return _finish(out, overall, None, "ICQP")


@dataclass
class _Block:
    """One neuron's constraints in its own kept coordinates ``idx`` (into the kept vector)."""

    k: int
    idx: np.ndarray
    A: np.ndarray  # equality rows: symmetry, t_ik = 0 for non-flat pairs
    B: np.ndarray  # flat rows t_ik (unsigned)
    flat: list  # (i, allowed signs) per row of B
    QE: np.ndarray = None  # orthonormal basis of the row space of [A; B]
    dependent: bool = False


def _bias_shift_rows(net, N: np.ndarray, Xr: np.ndarray, neurons, keep, layout: Layout, lam: float,
                     rank_tol: float) -> dict[int, np.ndarray]:
    """Per neuron with an exact bias-shift flat curve (module docstring), the slice row on ``(u_k, nu_k)``.

    Needs ``b2``, no weight decay, a constant function in the data span (``Xr nu_c = 1``), and a
    neuron with kept ``nu_k``, no boundary point and one slope ``> 0`` on all data.
    """
    if lam != 0 or not net.has_b2 or Xr.shape[0] == 0:
        return {}
    ones = np.ones(Xr.shape[0])
    nu_c = np.linalg.lstsq(Xr, ones, rcond=None)[0]
    if np.linalg.norm(Xr @ nu_c - ones) > max(rank_tol, 1e-10) * np.sqrt(Xr.shape[0]):
        return {}
    rows = {}
    for nt in neurons:
        k = nt.k
        if nt.M or not keep[layout.nu_index(k)[0]]:
            continue
        signs = np.unique(np.sign(N[:, k]))
        if signs.size != 1 or signs[0] == 0 or (signs[0] < 0 and net.s_minus == 0):
            continue
        rows[k] = np.concatenate([np.zeros(layout.dy), nu_c])
    return rows


_INACTIVE_RANK_FLOPS = 5e7


def _inactive_rows(net, N: np.ndarray, boundary: np.ndarray, Xr: np.ndarray, neurons, keep, layout: Layout,
                   lam: float, zero_output: list, rank_tol: float) -> dict[int, np.ndarray]:
    """Per ReLU neuron whose active (or kink) points do not span the ``rho`` dimensions: an
    orthonormal basis (rows) of the ``nu_k`` directions orthogonal to them, exactly flat (module docstring)."""
    rho = Xr.shape[1]
    if lam != 0 or net.s_minus != 0:
        return {}
    rows = {}
    for nt in neurons:
        k = nt.k
        if k in zero_output or not keep[layout.nu_index(k)[0]]:
            continue
        act = (N[:, k] >= 0) | boundary[:, k]  # the check's kink points count as active
        n_act = int(act.sum())
        # n_act >= rho points are rank deficient only when not in general position; the rank test
        # is then skipped on large problems (no quotient: at worst `sosp` instead of a certificate)
        if n_act == 0 or (n_act >= rho and n_act * rho * rho > _INACTIVE_RANK_FLOPS):
            continue
        _, sv, Vt = np.linalg.svd(Xr[act], full_matrices=n_act < rho)  # Vt: rho x rho either way
        rank = int(np.sum(sv > max(rank_tol, 1e-12) * max(sv[0], 1e-300)))
        if rank < rho:
            rows[k] = Vt[rank:]
    return rows


def _constraint_blocks(prob: _Problem, neurons, keep, Zr, zero_output, lam,
                       shift_rows: dict | None = None, inactive_rows: dict | None = None) -> list[_Block]:
    """Per neuron, the rows acting on ``(u_k, nu_k)``: block diagonal, so projections are local."""
    layout, net = prob.layout, prob.pt.net
    pos = -np.ones(layout.n, int)
    pos[prob.keep] = np.arange(prob.keep.size)
    blocks = []
    for nt in neurons:
        k = nt.k
        coords = np.concatenate([layout.u_index(k), layout.nu_index(k)])
        kept = keep[coords]
        if not np.any(kept):
            continue
        nu_kept = bool(keep[layout.nu_index(k)[0]])
        rows, flat_rows, flat = [], [], []
        if lam == 0 and k not in zero_output:
            rows.append(np.concatenate([-net.W2[:, k], Zr[k]])[kept])
        if inactive_rows and k in inactive_rows:
            rows.extend(np.hstack([np.zeros((inactive_rows[k].shape[0], layout.dy)), inactive_rows[k]])[:, kept])
        if shift_rows and k in shift_rows:
            r1, r2 = rows[-1] if rows else None, shift_rows[k][kept]
            # transversal to both flat curves only if the two slice rows are independent (Gram determinant)
            if r1 is None or (r1 @ r1) * (r2 @ r2) - (r1 @ r2) ** 2 > 1e-12 * (r1 @ r1) * (r2 @ r2):
                rows.append(r2)
        if nu_kept:
            for j, i in enumerate(nt.boundary):
                row = np.concatenate([np.zeros(layout.dy), prob.Xr[i]])[kept]
                fp, fm = bool(nt.flat_plus[j]), bool(nt.flat_minus[j])
                if fp or fm:
                    flat_rows.append(row)
                    flat.append((int(i), tuple(s for s, f in ((1, fp), (-1, fm)) if f)))
                else:
                    rows.append(row)
        d = int(kept.sum())
        A = np.array(rows) if rows else np.zeros((0, d))
        A = A[np.any(A != 0, axis=1)] if A.size else A
        B = np.array(flat_rows) if flat_rows else np.zeros((0, d))
        b = _Block(k, pos[coords[kept]], A, B, flat)
        AB = np.vstack([A, B])
        if AB.shape[0]:
            U, sv, _ = np.linalg.svd(AB.T, full_matrices=False)
            rank = int(np.sum(sv > prob_rank_tol(sv)))
            b.QE = U[:, :rank]
            if B.shape[0]:
                rank_A = int(np.sum(np.linalg.svd(A, compute_uv=False) > prob_rank_tol(sv))) if A.shape[0] else 0
                b.dependent = rank - rank_A < B.shape[0]
        else:
            b.QE = np.zeros((d, 0))
        blocks.append(b)
    return blocks


def prob_rank_tol(sv: np.ndarray) -> float:
    return 1e-10 * (sv[0] if sv.size else 0.0)


def _particular_solutions(prob: _Problem, blocks: list[_Block]) -> np.ndarray:
    """``My``: column j has ``A theta = 0`` and ``t = e_j`` on the flat rows (min-norm, unit columns)."""
    L = len(prob.flat_pairs)
    My = np.zeros((prob.keep.size, L))
    j = 0
    for b in blocks:
        nb = b.B.shape[0]
        if not nb:
            continue
        AB = np.vstack([b.A, b.B])
        rhs = np.zeros((AB.shape[0], nb))
        rhs[b.A.shape[0]:] = np.eye(nb)
        My[b.idx, j:j + nb] = np.linalg.pinv(AB) @ rhs
        j += nb
    # copositivity is invariant to positive scaling of y: unit columns keep S on the scale of H
    return My / np.linalg.norm(My, axis=0)[None, :]


class _DenseSubspace:
    """The ECQP subspace by an explicit orthonormal basis ``Mw`` and the dense reduced ``H``."""

    def __init__(self, prob: _Problem, blocks: list[_Block]):
        self.prob = prob
        n = prob.keep.size
        self.H = prob.operator(prob.J_base).dense(prob.keep)
        self.hessian_norm = _spectral_norm(self.H)
        cols = []
        in_block = np.zeros(n, bool)
        for b in blocks:
            in_block[b.idx] = True
            Nk = null_space(b.QE.T) if b.QE.shape[1] else np.eye(b.idx.size)
            C = np.zeros((n, Nk.shape[1]))
            C[b.idx] = Nk
            cols.append(C)
        free = np.flatnonzero(~in_block)
        F = np.zeros((n, free.size))
        F[free, np.arange(free.size)] = 1.0
        self.Mw = np.hstack(cols + [F]) if cols or free.size else np.zeros((n, 0))
        self.dim = int(self.Mw.shape[1])
        self.failed = None
        self.detail = "dense"
        self.accuracy = 0.0

    def min_eig(self, eig_tol: float):
        Qww = self.Mw.T @ self.H @ self.Mw
        if not Qww.size:
            self.ew, self.Uw = np.zeros(0), np.zeros((0, 0))
            return None, None
        self.ew, self.Uw = np.linalg.eigh(Qww)
        return float(self.ew[0]), self.Mw @ self.Uw[:, 0]

    def prepare_solves(self, eig_tol, margins: Margins):
        self.null = margins.vector_abs_le("ICQP: eigenvalues of Qww", self.ew, eig_tol)
        pos = self.ew > eig_tol
        self.Qww_pinv = (self.Uw[:, pos] / self.ew[pos]) @ self.Uw[:, pos].T

    def unbounded_direction(self, My, HMy, Qyy, eig_tol, margins: Margins):
        """y = e_j and w = -alpha n0 with n0 = the coupling G_j inside the (numerical) null space of Qww.

        Along it the form is ``Qyy_jj - 2 alpha |G_j|^2 + alpha^2 n0' Qww n0``: unbounded below when
        the null eigenvalues are truly zero, and otherwise negative only if ``Qyy_jj < |G_j|^4 /
        n0' Qww n0`` (its value at the best ``alpha``); near-null eigenvalues within the tolerance
        are thus never mistaken for an unbounded direction."""
        G = self.Uw[:, self.null].T @ (self.Mw.T @ HMy)
        lam = self.ew[self.null]
        lam = np.where(np.abs(lam) <= 1e-12 * self.hessian_norm, 0.0, lam)  # rounding noise is zero
        for j in np.argsort(-np.linalg.norm(G, axis=0)):
            g2 = float(G[:, j] @ G[:, j])
            if margins.at_most("ICQP: coupling to null(Qww)", np.sqrt(g2), eig_tol):
                break
            quad = float(lam @ G[:, j] ** 2)
            if quad > 0 and not margins.below("ICQP: value along the coupling", Qyy[j, j] - g2**2 / quad, eig_tol):
                continue
            alpha = g2 / quad if quad > 0 else (abs(Qyy[j, j]) + 1.0) / g2
            return My[:, j] - alpha * (self.Mw @ (self.Uw[:, self.null] @ G[:, j]))
        return None

    def solve(self, R):
        return self.Mw @ (self.Qww_pinv @ (self.Mw.T @ R))


def _lanczos_min(apply, v0: np.ndarray, eig_tol: float, max_steps: int):
    """Lanczos with full reorthogonalisation for the smallest eigenvalue, with two early exits.

    ``("negative", rq, y)``: the first Ritz vector with ``y' A y < -eig_tol |y|^2``, checked with one
    extra product (a certificate long before the eigenvalue converges). ``("converged", theta, y)``:
    the smallest Ritz pair with residual ``beta_j |s_j| <= eig_tol / 10`` (or an invariant Krylov
    space), so an eigenvalue lies within ``eig_tol / 10`` of ``theta``. None after ``max_steps``.
    """
    Q = np.empty((max_steps, v0.size))
    Q[0] = v0 / np.linalg.norm(v0)
    alphas, betas = [], []
    for j in range(max_steps):
        w = apply(Q[j])
        alphas.append(float(Q[j] @ w))
        Qm = Q[: j + 1]
        w -= Qm.T @ (Qm @ w)
        w -= Qm.T @ (Qm @ w)  # twice is enough (Kahan)
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, S = np.linalg.eigh(T)
        if theta[0] < -eig_tol:
            y = Qm.T @ S[:, 0]
            y /= np.linalg.norm(y)
            rq = float(y @ apply(y))
            if rq < -eig_tol:
                return "negative", rq, y
        beta = float(np.linalg.norm(w))
        invariant = beta <= 1e-14 * max(1.0, abs(theta).max())
        if invariant or beta * abs(S[-1, 0]) <= 0.1 * eig_tol:
            y = Qm.T @ S[:, 0]
            return "converged", float(theta[0]), y / np.linalg.norm(y)
        if j + 1 == max_steps:
            break
        betas.append(beta)
        Q[j + 1] = w / beta
    return None


class _ProjectedSubspace:
    """The ECQP subspace by its block-diagonal projector; ``H`` only through products (DESIGN.md section 5).

    The minimum eigenvalue comes from Lanczos on ``P H P + sigma (I - P)``: the shift
    ``sigma > |H|`` pushes the constrained directions above the spectrum of interest. A short
    Lanczos run with early exit settles the saddle case: any Ritz vector whose (exactly computed)
    Rayleigh quotient is below ``-eig_tol`` is already a certificate, long before the eigenvalue
    converges. Otherwise ARPACK computes ``lambda_min`` to high accuracy.
    ``Qww`` solves use MINRES on the same operator; when ``Qww`` is singular its residual is the
    right-hand side's component in the null space (the unbounded case of the ICQP).
    """

    def __init__(self, prob: _Problem, blocks: list[_Block], progress=None):
        from scipy.sparse.linalg import LinearOperator, eigsh

        self.prob, self.blocks, self.progress = prob, blocks, progress
        n = prob.keep.size
        self.n = n
        self.dim = int(n - sum(b.QE.shape[1] for b in blocks))
        self.failed = None
        H = LinearOperator((n, n), matvec=self._h, matmat=self._h, dtype=float)
        self.hessian_norm = float(abs(eigsh(H, k=1, which="LM", tol=1e-3, return_eigenvectors=False)[0])) if n > 1 \
            else float(abs(self._h(np.ones((1, 1)))[0, 0]))
        self.sigma = 1.05 * self.hessian_norm + 1e-300
        self.op = LinearOperator((n, n), matvec=self._op, rmatvec=self._op, matmat=self._op, dtype=float)
        self.detail = "matrix-free (Lanczos)"
        self.n_products = 0
        self.accuracy = 0.0

    def _h(self, x):
        x = x.reshape(self.n, -1)
        return self.prob.apply(self.prob.J_base, x)

    def project(self, x):
        x = np.array(x, dtype=float).reshape(self.n, -1)
        for b in self.blocks:
            if b.QE.shape[1]:
                x[b.idx] -= b.QE @ (b.QE.T @ x[b.idx])
        return x

    def _op(self, x):
        x = np.asarray(x, float).reshape(self.n, -1)
        px = self.project(x)
        self.n_products += x.shape[1]
        if self.progress is not None:
            self.progress("Hessian-vector products (passes over the data)", self.n_products, None)
        return self.project(self._h(px)) + self.sigma * (x - px)

    def min_eig(self, eig_tol: float):
        from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

        if self.dim == 0:
            return None, None
        v = self.project(np.random.default_rng(0).standard_normal((self.n, 1)))[:, 0]
        if self.n <= 2:  # below ARPACK's minimum size
            M = self._op(np.eye(self.n))
            w, U = np.linalg.eigh(0.5 * (M + M.T))
            return self._report(float(w[0]), U[:, 0])
        found = _lanczos_min(lambda x: self._op(x)[:, 0], v, eig_tol,
                             max_steps=min(self.n, 300, (1 << 27) // self.n + 2))
        if found is not None:
            # a converged run is accurate to eig_tol / 10 at every tolerance scale: the value is known
            # only within that at this scale and the largest one
            self.accuracy = 0.1 * eig_tol * (1 + FRAGILITY_FACTOR) if found[0] == "converged" else 0.0
            return self._report(*found[1:])
        # ARPACK on the operator shifted by c = |H|: its stopping test is relative to the Ritz value,
        # unattainable for lambda_min ~ 0 unshifted; shifted, the error is ~ tol * c, absolute. A
        # coarse run decides a lambda_min far from +-eig_tol; one near them is refined.
        c = self.hessian_norm or 1.0
        shifted = LinearOperator((self.n, self.n), matvec=lambda x: self._op(x)[:, 0] + c * np.ravel(x), dtype=float)
        for tol in (1e-6, min(1e-6, 0.05 * eig_tol / c)):  # (a random start vector: an eigenvector would stall it)
            try:
                lam, vec = eigsh(shifted, k=1, which="SA", v0=v, tol=tol, maxiter=max(1000, 20 * self.n))
            except ArpackNoConvergence as exc:
                self.failed = f"Lanczos did not converge ({exc})"
                return None, None
            lam = float(lam[0]) - c
            self.accuracy = 2 * tol * c + 0.1 * eig_tol * (1 + FRAGILITY_FACTOR)
            if min(abs(lam - eig_tol), abs(lam + eig_tol)) > 2 * tol * c:
                break
        u = self.project(vec)[:, 0]
        return self._report(lam, u / np.linalg.norm(u))

    def _report(self, lam: float, v: np.ndarray):
        self.detail = (f"matrix-free (Lanczos, {self.n_products} products, residual "
                       f"{np.linalg.norm(self._op(v)[:, 0] - lam * v):.2g})")
        return lam, v

    def prepare_solves(self, eig_tol, margins: Margins):
        self.eig_tol = eig_tol
        self._cache = (None, None, None)

    def _solve_lsq(self, R):
        """Least-squares solutions of ``Qww x = Mw' R`` (``Qww`` may be singular) and the residuals,
        which are the components of the right-hand sides in ``null(Qww)``. MINRES first (fast when
        ``Qww`` is definite), LSMR to finish where MINRES leaves a residual that is not in the null
        space (it may stop short on singular, inconsistent systems)."""
        from scipy.sparse.linalg import lsmr, minres

        if self._cache[0] is R:
            return self._cache[1], self._cache[2]
        X, res = np.zeros_like(R), np.zeros_like(R)
        for j in range(R.shape[1]):
            b = self.project(R[:, j])[:, 0]
            x = self.project(minres(self.op, b, rtol=1e-12, maxiter=10 * self.n)[0])[:, 0]
            rj = b - self._op(x)[:, 0]
            if np.linalg.norm(self._op(rj)) > 1e-10 * self.sigma * np.linalg.norm(rj):
                x = self.project(lsmr(self.op, b, atol=1e-15, btol=1e-15, maxiter=20 * self.n)[0])[:, 0]
                rj = b - self._op(x)[:, 0]
            X[:, j] = x
            res[:, j] = rj
        self._cache = (R, X, res)
        return X, res

    def unbounded_direction(self, My, HMy, Qyy, eig_tol, margins: Margins):
        """As the dense solver, with the null-space component read off the MINRES residual."""
        _, res = self._solve_lsq(HMy)
        gn = np.linalg.norm(res, axis=0)
        j = int(np.argmax(gn))
        margins.add("ICQP: coupling to null(Qww)", gn[j], eig_tol)
        if gn[j] <= max(eig_tol, 1e-8 * np.linalg.norm(HMy[:, j])):
            return None
        # n0 = res_j lies in null(Qww): the form along My e_j - alpha n0 is Qyy_jj - 2 alpha |n0|^2
        alpha = (abs(Qyy[j, j]) + 1.0) / gn[j] ** 2
        return My[:, j] - alpha * res[:, j]

    def solve(self, R):
        return self._solve_lsq(R)[0]


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

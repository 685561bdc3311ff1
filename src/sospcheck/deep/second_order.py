"""Second order at a first-order stationary point of a deep network (DESIGN.md 10.6-10.8).

In the chart ``eta = M_y y + N w`` (``N`` a basis of ``W = null(G) ∩ U^perp``, ``U`` the quotient,
``M_y`` the signed columns of ``G_sigma^+`` on the flat groups) the form is the Lagrangian's Hessian
``H_sigma``; ``Q_ww`` is one matrix for every sign choice, so the ECQP/ICQP machinery of one hidden
layer applies as it is (:mod:`sospcheck.subspace`, :mod:`sospcheck.copositive`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from types import SimpleNamespace

import numpy as np
from scipy.linalg import null_space, orth
from scipy.sparse.linalg import ArpackError

from ..margins import Margins
from ..options import Budget, Tolerances
from ..second_order import Outcome, QPRecord, SecondOrderOutcome, icqp_step
from ..subspace import make_subspace
from ..symmetric_tiles import SymmetricTiles
from .first_order import FirstOrder, KinkGeometry, _right_inverse
from .kinks import KinkSet
from .model import DeepDirection, DeepForward, DeepNet
from .pieces import Pieces
from .switching import piece_slopes

__all__ = ["Quotient", "quotient_basis", "DeepSecondOrder", "second_order_deep", "ecqp", "curvature_candidate"]


@dataclass
class Quotient:
    """The directions quotiented out (section 10.7): ``U`` orthonormal (p x q); ``orbits`` rescaling
    tangents used; ``dead`` units ``(layer, k)``; ``affine`` units whose bias shift is compensated in the
    next bias; ``layer1_flat`` dimensions of layer-1 rows that move no active or kink pre-activation;
    ``silent_weights``: weights from a unit that is strictly inactive wherever the receiving unit transmits."""

    U: np.ndarray
    orbits: int = 0
    dead: list = field(default_factory=list)
    affine: list = field(default_factory=list)
    layer1_flat: int = 0
    silent_weights: int = 0

    def to_dict(self) -> dict:
        return {"dim": int(self.U.shape[1]), "orbits": self.orbits, "dead_units": [list(u) for u in self.dead],
                "affine_units": [list(u) for u in self.affine], "layer1_flat_dims": self.layer1_flat,
                "silent_weights": self.silent_weights}


def quotient_basis(net: DeepNet, fwd: DeepForward, masks: list[np.ndarray], weight_decay: float,
                   tol_rank: float) -> Quotient:
    """The rescaling orbit tangents of the hidden units and the exactly flat directions (section 10.7; with
    weight decay nothing is flat)."""
    p = net.n_params
    if weight_decay:
        return Quotient(np.zeros((p, 0)))
    sl = net.layer_slices()
    q = Quotient(np.zeros((p, 0)))
    cols = []

    def unit(idx_list):
        e = np.zeros(p)
        e[idx_list] = 1.0
        return e

    for l in range(net.depth):
        (sw, sb), (sw2, sb2) = sl[l], sl[l + 1]
        W, W2 = net.weights[l], net.weights[l + 1]
        n_in = W.shape[1]
        N, kink = fwd.N[l], masks[l]
        for k in range(W.shape[0]):
            row = list(range(sw.start + k * n_in, sw.start + (k + 1) * n_in)) + ([sb.start + k] if sb else [])
            col = [sw2.start + v * W.shape[0] + k for v in range(W2.shape[0])]
            if net.s_minus == 0 and np.all(N[:, k] < 0) and not kink[:, k].any():
                q.dead.append((l, k))
                cols += [unit([c]) for c in row + col]
                continue
            t = np.zeros(p)
            t[row] = np.append(W[k], net.biases[l][k]) if sb else W[k]
            t[col] = -W2[:, k]
            if np.any(t):
                cols.append(t)
                q.orbits += 1
            slope = _affine_slope(net, N[:, k], kink[:, k])
            if slope and sb and sb2:
                # shifting the unit's bias, compensated in the next layer's bias, moves no pre-activation above
                t = np.zeros(p)
                t[sb.start + k] = 1.0
                t[sb2.start:sb2.stop] = -slope * W2[:, k]
                cols.append(t)
                q.affine.append((l, k))
            if l == 0:
                Xb = np.hstack([fwd.A[0], np.ones((fwd.A[0].shape[0], 1))]) if sb else fwd.A[0]
                keep = (N[:, k] >= 0) | kink[:, k] if net.s_minus == 0 else np.ones(Xb.shape[0], bool)
                span = orth(Xb[keep].T, rcond=tol_rank) if keep.any() else np.zeros((Xb.shape[1], 0))
                comp = null_space(span.T) if span.shape[1] else np.eye(Xb.shape[1])
                for c in comp.T:
                    e = np.zeros(p)
                    e[row] = c
                    cols.append(e)
                q.layer1_flat += comp.shape[1]
            elif net.s_minus == 0:
                # an input unit that is strictly inactive wherever this unit transmits: its weight is flat
                on = (N[:, k] > 0) | kink[:, k]
                below = fwd.N[l - 1]
                silent = np.all((below[on] < 0) & ~masks[l - 1][on], axis=0) if on.any() else np.ones(n_in, bool)
                for u in np.flatnonzero(silent):
                    if (l - 1, u) not in q.dead:
                        cols.append(unit([sw.start + k * n_in + u]))
                        q.silent_weights += 1
    q.U = orth(np.array(cols).T, rcond=tol_rank) if cols else np.zeros((p, 0))
    return q


def _affine_slope(net: DeepNet, N: np.ndarray, kink: np.ndarray) -> float:
    """The unit's slope when it is linear on every data point (no kink, one side, nonzero slope), else 0."""
    if kink.any():
        return 0.0
    if np.all(N > 0):
        return net.s_plus
    if np.all(N < 0):
        return net.s_minus
    return 0.0


@dataclass
class DeepSecondOrder(SecondOrderOutcome):
    """Step 4's answer for a deep network (:class:`~sospcheck.second_order.SecondOrderOutcome`): a NEGATIVE
    outcome's ``direction`` is a :class:`DeepDirection` (``eta`` and the curve's ``zeta``) with Rayleigh
    quotient ``curvature`` of the Lagrangian's Hessian, ``eta' H eta / |eta|^2``."""

    curvature: float = 0.0
    candidates: list = field(default_factory=list)  # (direction, curvature), most negative first (10.9)
    reason: object = None  # the Reason of an inconclusive answer when no phrase decides it
    cells: int = 0
    cell_bound: int = 0
    faces: int = 0


class _Piece:
    """One sign choice: slopes, the held groups' multipliers, ``G_sigma`` and its products."""

    def __init__(self, pieces: Pieces, net: DeepNet, ks: KinkSet, signs: list[int], kappa: np.ndarray,
                 held: list[int]):
        self.signs = signs
        self.S = pieces.slopes(piece_slopes(net, ks, signs))
        self.reps = ks.reps()
        self.held = held
        held_reps = [self.reps[q] for q in held]
        self.apply = pieces.hvp_fn(self.S, kappa[held] if held else None, held_reps)
        self.pieces = pieces
        self._G = None

    @property
    def G(self) -> np.ndarray:
        if self._G is None:
            self._G = self.pieces.jacobian(self.S, self.reps)
        return self._G


def _adapter(p: int, apply, dense_fn):
    """The interface :mod:`sospcheck.subspace` reads from a reduced problem."""
    ns = SimpleNamespace(n=p, J_base=None, keep=np.arange(p), products=0, backend="products")
    ns.apply = lambda J, x: apply(np.asarray(x, float).reshape(p, -1))

    def tiles(keep, bounds):
        H = dense_fn()
        return SymmetricTiles.of_dense(H if np.array_equal(keep, np.arange(p)) else H[np.ix_(keep, keep)], bounds)

    ns.operator = lambda J: SimpleNamespace(tiles=tiles)
    return ns


def curve_correction(piece: _Piece, eta: np.ndarray, tol_rank: float) -> np.ndarray:
    """``zeta`` with ``G_g zeta = -eta' Hess z_g eta`` for every group with ``G_g eta = 0`` (10.6): held
    kinks stay on their surfaces to second order along ``theta0 + t eta + t^2/2 zeta``."""
    G = piece.G
    if G.shape[0] == 0:
        return np.zeros_like(eta)
    y = G @ eta
    S = [q for q in range(G.shape[0]) if abs(y[q]) <= 1e-10 * np.linalg.norm(G[q]) * np.linalg.norm(eta)]
    if not S:
        return np.zeros_like(eta)
    q = piece.pieces.second_derivatives(piece.S, [piece.reps[s] for s in S], eta[:, None])[:, 0]
    return -np.linalg.lstsq(G[S], q, rcond=None)[0]


def second_order_deep(pieces: Pieces, net: DeepNet, ks: KinkSet, geo: KinkGeometry, fo: FirstOrder,
                      quot: Quotient, tol: Tolerances, budget: Budget, solver: str = "auto",
                      progress=None) -> DeepSecondOrder:
    """ECQP, then the ``2^K`` ICQPs of the flat groups (section 10.6), on ``W``."""
    margins = Margins()
    n = len(ks.groups)
    fp, fm = (fo.flat_plus, fo.flat_minus) if n else (np.zeros(0, bool), np.zeros(0, bool))
    held = [q for q in range(n) if not fp[q] and not fm[q]]
    flat = [(q, (1, -1) if fp[q] and fm[q] else ((1,) if fp[q] else (-1,))) for q in range(n) if fp[q] or fm[q]]
    K = sum(len(a) == 2 for _, a in flat)
    planned = 2**K if flat else 0
    kappa = fo.kappa_plus if n else np.zeros(0)
    if flat and planned > budget.max_icqp:
        return DeepSecondOrder(None, inconclusive=f"2^{K} = {planned} ICQPs exceed budget.max_icqp={budget.max_icqp}",
                               n_icqp_planned=planned)
    ref_signs = [1] * n
    for q, allowed in flat:
        ref_signs[q] = allowed[0]
    ref = _Piece(pieces, net, ks, ref_signs, kappa, held)
    out, sub, eig = ecqp(net, geo, quot, ref, tol, budget, solver, progress, planned, margins)
    if sub is None:
        return out
    rec = out.records[0]
    overall = rec.outcome
    if not flat:
        out.outcome = overall
        return _done(out, margins)
    singular = rec.outcome == Outcome.ZERO
    for n_done, choice in enumerate(product((1, -1), repeat=K)):
        if progress is not None:
            progress("ICQPs (2^K sign choices)", n_done, planned)
        it, signs, flat_signs = iter(choice), list(ref_signs), []
        for q, allowed in flat:
            signs[q] = next(it) if len(allowed) == 2 else allowed[0]
            flat_signs.append(signs[q])
        pc = _Piece(pieces, net, ks, signs, kappa, held)
        Pinv, _ = _right_inverse(pc.G)
        My = Pinv[:, [q for q, _ in flat]] * np.array(flat_signs, float)[None, :]
        HMy = pc.apply(My)
        r = QPRecord("ICQP", Outcome.POSITIVE, int(len(flat) + sub.dim), n_eq=rec.n_eq, n_ineq=len(flat),
                     signs=tuple(s for (q, a), s in zip(flat, flat_signs) if len(a) == 2), min_eig=eig.value)
        out.records.append(r)
        step = icqp_step(sub, My, HMy, singular, r, out.eig_tol, budget, margins)
        if step.undecided is not None:
            out.inconclusive = step.undecided
            return _done(out, margins)
        if step.theta is not None:
            r.outcome, r.detail = Outcome.NEGATIVE, step.detail or r.detail
            return _negative(out, margins, pc, step.theta, "ICQP", tol.rank, undecided=step.not_negative)
        if r.outcome == Outcome.ZERO:
            overall = Outcome.ZERO
    out.outcome = overall
    return _done(out, margins)


def ecqp(net: DeepNet, geo: KinkGeometry, quot: Quotient, ref: _Piece, tol: Tolerances,
         budget: Budget, solver: str, progress, planned: int, margins: Margins):
    """T3 with every kink held: ``lambda_min`` of the form of ``ref`` on ``W = null(G) ∩ U^perp`` (10.6; the form
    there is the same for every piece). Returns ``(out, sub, eig)``; ``sub`` None when ``out`` is final
    (negative curvature, or not computed)."""
    p = net.n_params
    A = np.vstack([geo.G_plus, quot.U.T]) if geo.n or quot.U.shape[1] else np.zeros((0, p))
    QE = orth(A.T, rcond=tol.rank) if A.shape[0] else np.zeros((p, 0))

    def dense_H():
        H = ref.apply(np.eye(p))
        return 0.5 * (H + H.T)

    prob, blocks = _adapter(p, ref.apply, dense_H), [SimpleNamespace(idx=np.arange(p), QE=QE)]
    try:
        sub = make_subspace(prob, blocks, solver, budget.max_dense_params, progress)
    except ArpackError as exc:  # ARPACK breaks down on an identically zero Hessian: small enough, go dense
        if p > budget.max_dense_params:
            return DeepSecondOrder(None, inconclusive=f"ECQP eigenvalue not computed: {exc}",
                                   n_icqp_planned=planned), None, None
        sub = make_subspace(prob, blocks, "dense", budget.max_dense_params, progress)
    eig_tol = tol.eigen * sub.hessian_norm
    out = DeepSecondOrder(None, n_icqp_planned=planned, n_params_reduced=int(sub.dim),
                          hessian_norm=float(sub.hessian_norm), eig_tol=float(eig_tol), solver=sub.name)
    eig = sub.min_eig(eig_tol)
    rec = QPRecord("ECQP", Outcome.POSITIVE, sub.dim, n_eq=int(QE.shape[1]), min_eig=eig.value, detail=eig.detail)
    out.records.append(rec)
    if eig.failed:
        out.inconclusive = f"ECQP eigenvalue not computed: {eig.failed}"
        return _done(out, margins), None, eig
    if eig.value is not None:
        margins.add("deep ECQP: smallest eigenvalue", eig.value, eig_tol, eig.accuracy)
        if eig.value < -eig_tol:
            rec.outcome = Outcome.NEGATIVE
            return _negative(out, margins, ref, np.asarray(eig.vector, float), "ECQP", tol.rank), None, eig
        if eig.value <= eig_tol:
            rec.outcome = Outcome.ZERO
    return out, sub, eig


def _done(out: DeepSecondOrder, margins: Margins) -> DeepSecondOrder:
    out.margins = margins.items()
    return out


def curvature_candidate(piece: _Piece, eta: np.ndarray, hessian_norm: float,
                        tol_rank: float) -> tuple[DeepDirection, float] | None:
    """``eta`` with its curve correction and Rayleigh quotient ``eta' H eta / |eta|^2``, recomputed with one
    product; None unless negative beyond rounding (as :func:`sospcheck.second_order._negative`)."""
    q = float(eta @ piece.apply(eta))
    if not q < -1e-13 * hessian_norm * float(eta @ eta):
        return None
    d = DeepDirection(eta, tuple(piece.pieces.net.shapes), curve_correction(piece, eta, tol_rank))
    return d, q / float(eta @ eta)


def _negative(out: DeepSecondOrder, margins: Margins, piece: _Piece, eta: np.ndarray, source: str, tol_rank: float,
              undecided: str = "the ECQP eigenvector does not have negative curvature once recomputed",
              ) -> DeepSecondOrder:
    """A predicted second-order descent: negative curvature once recomputed, then the curve correction ``zeta``."""
    cand = curvature_candidate(piece, eta, out.hessian_norm, tol_rank)
    if cand is None:
        out.inconclusive = undecided
        return _done(out, margins)
    out.outcome = Outcome.NEGATIVE
    out.direction, out.curvature = cand
    out.source = source
    return _done(out, margins)

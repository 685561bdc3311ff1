"""Second order without the kink qualification (DESIGN.md 10.9).

The switching groups' sign patterns that are cells (full-dimensional linearised cones), found layer by layer
by cone projections (the rows of a layer depend on the signs below it), counted against ``Budget.max_cells``
before any is solved; the check that dependent kinks are linearly dependent to second order (so that each
piece is polyhedral in a chart); the critical face of every cell, the cone of its flat extreme rays; one
ICQP per distinct maximal face, on the ECQP subspace shared by all pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb

import numpy as np
from scipy.optimize import nnls

from ..arrangement import COMPLETE, MARGIN, OVER_BUDGET, cone_projection, group_hyperplanes, region_bound
from ..arrangement_rays import enumerate_rays
from ..margins import Margins
from ..options import Budget, Tolerances
from ..result import Reason
from ..second_order import Outcome, QPRecord, icqp_step
from .first_order import FirstOrder, KinkGeometry, numerical_rank
from .kinks import KinkSet
from .model import DeepNet
from .pieces import Pieces
from .second_order import DeepSecondOrder, Quotient, _done, _Piece, curvature_candidate, ecqp
from .switching import piece_slopes

__all__ = ["DeepCells", "CriticalFace", "cell_bound", "enumerate_deep_cells", "structure_residual",
           "deep_critical_faces", "second_order_cells", "STRUCTURE_TOL"]

STRUCTURE_TOL = 1e-6  # relative residual of a kink relation's second derivatives still called zero
_PROBES = 3  # random quadratic-form probes per relation: a nonzero symmetric matrix fails almost surely


def _layers(ks: KinkSet) -> np.ndarray:
    return np.array([ks.kinks[g.rep].l for g in ks.groups], int)


def _slopes(pieces: Pieces, net: DeepNet, ks: KinkSet, signs) -> list:
    return pieces.slopes(piece_slopes(net, ks, list(signs)))


def _zero_rows(A: np.ndarray, tol_rank: float) -> np.ndarray:
    norms = np.linalg.norm(A, axis=1)
    top = float(norms.max(initial=0.0))
    return norms <= tol_rank * top if top > 0 else np.ones(len(A), bool)


def cell_bound(geo: KinkGeometry, ks: KinkSet, tol_rank: float) -> int:
    """``prod_l region_bound(n_l, min(n_l, rank G_{<= l}))``: within a cell of the layers below, the ``n_l``
    hyperplanes of layer ``l`` span at most the rank of the rows of layers ``<= l`` (the same for every piece:
    ``G_sigma = (I - L S) ^ -1 Z`` is block lower triangular), so they cut it into at most Cover's count."""
    lay = _layers(ks)
    bound = 1
    for l in sorted(set(lay.tolist())):
        n_l = int(np.sum(lay == l))
        r = numerical_rank(geo.G_plus[lay <= l], tol_rank)[0]
        bound *= region_bound(n_l, min(n_l, r))
    return bound


@dataclass
class DeepCells:
    """The cells (sign per group, in group order), and per cell the key of its rows: the signs of the groups
    below the top layer that has kinks (the rows depend on nothing else). ``rows[key]``: the groups'
    kink gradients ``G_sigma`` there."""

    status: str
    message: str
    bound: int
    signs: list = field(default_factory=list)
    keys: list = field(default_factory=list)
    rows: dict = field(default_factory=dict)
    n_nnls: int = 0


def enumerate_deep_cells(pieces: Pieces, net: DeepNet, ks: KinkSet, geo: KinkGeometry, max_cells: int,
                         tol_rank: float, margin: float = MARGIN) -> DeepCells:
    """Incremental construction in layer order (section 9's side test): a cell with unit walls ``W`` keeps side
    ``s`` of a new unit row ``n`` iff ``|P_C(s n)| > margin``. A zero row (its kink acts at third order once
    its second derivatives vanish too, :func:`structure_residual`) keeps ``+`` only."""
    bound = cell_bound(geo, ks, tol_rank)
    if bound > max_cells:
        return DeepCells(OVER_BUDGET, f"the switching groups' arrangement may have up to {bound} cells, over "
                         f"Budget.max_cells={max_cells}: not enumerated", bound)
    n, lay = len(ks.groups), _layers(ks)
    top = int(lay.max())
    cells = [((), np.zeros((0, net.n_params)))]
    out = DeepCells(COMPLETE, "", bound)
    for l in sorted(set(lay.tolist())):
        grown = []
        for signs, walls in cells:
            A = pieces.jacobian(_slopes(pieces, net, ks, signs + (1,) * (n - len(signs))), ks.reps())
            if l == top:
                out.rows[signs] = A
            zero = _zero_rows(A, tol_rank)
            U = A / np.where(zero, 1.0, np.linalg.norm(A, axis=1))[:, None]
            sub = [(signs, walls)]
            for q in np.flatnonzero(lay == l):
                if zero[q]:
                    sub = [(s + (1,), W) for s, W in sub]
                    continue
                nxt = []
                for s, W in sub:
                    plus = np.linalg.norm(cone_projection(W, U[q])) > margin
                    minus = not plus or np.linalg.norm(cone_projection(W, -U[q])) > margin
                    out.n_nnls += 1 + int(plus)
                    nxt += [(s + (sg,), np.vstack([W, sg * U[q]])) for sg, keep in ((1, plus), (-1, minus)) if keep]
                sub = nxt
                if len(grown) + len(sub) > max_cells:  # a safeguard: the bound above holds
                    return DeepCells(OVER_BUDGET, f"more than Budget.max_cells={max_cells} cells; stopped", bound)
            grown += sub
        cells = grown
    nb = int(np.sum(lay < top))
    out.signs = [s for s, _ in cells]
    out.keys = [s[:nb] for s in out.signs]
    out.message = f"{len(cells)} cells (at most {bound}), {out.n_nnls} cone projections"
    return out


def structure_residual(pieces: Pieces, net: DeepNet, ks: KinkSet, signs, A: np.ndarray, tol_rank: float,
                       curved: list[int], seed: int = 0) -> float:
    """Largest relative residual ``|sum_g c_g v' Hess z_g v| / max_g |v' Hess z_g v|`` over the unit relations
    ``c' G = 0`` between the rows (unit-scaled) and random ``v``: 0 iff the kinks are linearly dependent to
    second order. The groups ``curved`` enter with their pre-activation, the others (order 1) with their
    first-order value ``y_g`` (Hessian 0)."""
    zero = _zero_rows(A, tol_rank)
    w = 1.0 / np.where(zero, 1.0, np.linalg.norm(A, axis=1))
    Uu, sv, _ = np.linalg.svd(A * w[:, None], full_matrices=True)
    rank = int(np.sum(sv > tol_rank * sv[0])) if sv.size and sv[0] > 0 else 0
    C = Uu[:, rank:]  # the left null space: relations c' G = 0 between the unit-scaled rows
    if C.shape[1] == 0:
        return 0.0
    V = np.random.default_rng(seed).standard_normal((A.shape[1], _PROBES))
    Q = np.zeros((A.shape[0], _PROBES))
    Q[curved] = pieces.second_derivatives(_slopes(pieces, net, ks, signs), [ks.reps()[q] for q in curved], V)
    num = np.abs(C.T @ (w[:, None] * Q))  # relation x probe (unit relations)
    den = np.max(np.abs(w[:, None] * Q), axis=0)  # the rounding of c is relative to the largest term
    return float(np.max(np.where(den > 0, num / np.where(den > 0, den, 1.0)[None, :], 0.0)))


@dataclass(frozen=True)
class CriticalFace:
    """A maximal critical face: the flat extreme rays ``rays`` (p x k, unit) of the cell ``cell`` (its signs),
    whose Lagrangian form is used."""

    cell: tuple
    rays: np.ndarray


def deep_critical_faces(pieces: Pieces, net: DeepNet, ks: KinkSet, cells: DeepCells, thr: float, tol_rank: float,
                        max_cells: int, margins: Margins) -> tuple[list[CriticalFace] | None, str]:
    """Per cell, the cone of its extreme rays ``rho`` (the arrangement's, section 9) with ``|grad f_sigma . rho|
    <= thr``; faces inside another face of the same rows dropped. None and why when the rays are over budget
    or a ray of a cell descends (contradicting the first order)."""
    found, grads = {}, {}
    live = [q for q, g in enumerate(ks.groups) if g.rho == 0]
    rays_of = {}
    for key, A in cells.rows.items():
        hp = group_hyperplanes(A, tol_rank)
        subsets = comb(hp.n, hp.rank - 1) if hp.rank >= 2 else 1
        if subsets > max_cells:
            return None, (f"the extreme rays need {subsets} subsets of {hp.n} hyperplanes of rank {hp.rank}, over "
                          f"Budget.max_cells={max_cells}")
        rays = enumerate_rays(hp, tol_rank)
        rays_of[key] = (rays.directions, hp.row_signs(rays.signs))
    for sig, key in zip(cells.signs, cells.keys):
        D, tau = rays_of[key]
        g0 = tuple(sig[q] for q in live)
        if g0 not in grads:
            grads[g0] = pieces.gradient(_slopes(pieces, net, ks, sig))
        slopes = D @ grads[g0]
        inside = np.all(np.asarray(sig)[None, :] * tau >= 0, axis=1)
        if np.any(inside & (slopes < -thr)):
            return None, f"a ray of cell {sig} descends (slope {slopes[inside].min():.3g}), against the first order"
        flat = inside & (np.abs(slopes) <= thr)
        for x in slopes[inside]:
            margins.add("deep: cell ray slope", float(x), thr)
        if flat.any():
            found.setdefault(key, {}).setdefault(frozenset(np.flatnonzero(flat).tolist()), sig)
    faces = []
    for key, by_face in found.items():
        sets = list(by_face)
        faces += [CriticalFace(by_face[s], rays_of[key][0][sorted(s)].T) for s in sets
                  if not any(s < other for other in sets)]
    return faces, ""


def _second_order_model(pieces: Pieces, net: DeepNet, ks: KinkSet, cells: DeepCells,
                        tol_rank: float) -> tuple[list[int] | None, float]:
    """The groups whose curvature enters the model (10.9): an order-1 group may switch on its pre-activation (a
    single kink) or on its first-order value (always); the first choice whose relations hold to second order in
    every cell's rows, with its worst residual; None and the smallest worst residual when none does."""
    order0 = [q for q, g in enumerate(ks.groups) if g.rho == 0]
    single = [q for q, g in enumerate(ks.groups) if g.rho == 0 or g.size == 1]
    best = np.inf
    for curved in ([single, order0] if single != order0 else [order0]):
        worst = 0.0
        for key, A in cells.rows.items():
            sig = next(s for s, k in zip(cells.signs, cells.keys) if k == key)
            worst = max(worst, structure_residual(pieces, net, ks, sig, A, tol_rank, curved))
            if worst > STRUCTURE_TOL:
                break
        if worst <= STRUCTURE_TOL:
            return curved, worst
        best = min(best, worst)
    return None, best


def _kappa(pieces: Pieces, net: DeepNet, ks: KinkSet, sig, A: np.ndarray) -> np.ndarray:
    """Multipliers ``kappa_g = sigma_g lam_g``, ``grad f_sigma = sum_g kappa_g G_g``, ``lam >= 0`` (NNLS)."""
    s = np.asarray(sig, float)
    lam = nnls((s[:, None] * A).T, pieces.gradient(_slopes(pieces, net, ks, sig)), maxiter=50 * len(s) + 100)[0]
    return s * lam


def _undecided(message: str, reason: Reason, **kw) -> DeepSecondOrder:
    return DeepSecondOrder(None, inconclusive=message, reason=reason, **kw)


def second_order_cells(pieces: Pieces, net: DeepNet, ks: KinkSet, geo: KinkGeometry, fo: FirstOrder,
                       quot: Quotient, tol: Tolerances, budget: Budget, solver: str = "auto",
                       progress=None) -> DeepSecondOrder:
    """Section 10.9: cells, the second-order structure, the critical faces (counted against ``max_cells`` and
    ``max_icqp`` before solving), the ECQP, one ICQP per face; every negative face kept as a candidate, most
    negative first."""
    margins = Margins()
    cells = enumerate_deep_cells(pieces, net, ks, geo, budget.max_cells, tol.rank)
    base = dict(cell_bound=cells.bound, cells=len(cells.signs))
    if cells.status != COMPLETE:
        return _undecided(cells.message, Reason.CELL_BUDGET, **base)
    curved, res = _second_order_model(pieces, net, ks, cells, tol.rank)
    margins.add("deep: kink relation second derivative", res, STRUCTURE_TOL)
    if curved is None:
        return _undecided(f"the dependent kinks are not linearly dependent to second order (relative residual "
                          f"{res:.2g}): no piece is polyhedral in a chart", Reason.KINK_QUALIFICATION, **base)
    faces, why = deep_critical_faces(pieces, net, ks, cells, tol.gradient * fo.scale, tol.rank, budget.max_cells,
                                     margins)
    if faces is None:
        return _undecided(why, Reason.FACE_BUDGET if "subsets" in why else Reason.SECOND_ORDER_UNDECIDED, **base)
    base["faces"] = len(faces)
    for cap, name, reason in ((budget.max_cells, "max_cells", Reason.FACE_BUDGET),
                              (budget.max_icqp, "max_icqp", Reason.ICQP_BUDGET)):
        if len(faces) > cap:
            return _undecided(f"{len(faces)} critical faces (one ICQP each) exceed Budget.{name}={cap}", reason,
                              n_icqp_planned=len(faces), **base)
    ref_sig = cells.signs[0]
    ref = _Piece(pieces, net, ks, list(ref_sig), _kappa(pieces, net, ks, ref_sig, cells.rows[cells.keys[0]]), curved)
    out, sub, eig = ecqp(net, geo, quot, ref, tol, budget, solver, progress, len(faces), margins)
    out.cells, out.cell_bound, out.faces = base["cells"], base["cell_bound"], len(faces)
    if sub is None:
        return out
    return _faces_icqp(out, margins, sub, eig, faces, pieces, net, ks, cells, curved, tol, budget, progress)


def _faces_icqp(out, margins, sub, eig, faces, pieces, net, ks, cells, curved, tol, budget, progress):
    """One ICQP per face (section 9's non-simplicial ICQP: ``theta = My y + Mw w``, ``My`` the face's rays)."""
    rec0 = out.records[0]
    overall, singular, undecided, cands = rec0.outcome, rec0.outcome == Outcome.ZERO, None, []
    key_of = dict(zip(cells.signs, cells.keys))
    for n_done, face in enumerate(faces):
        if progress is not None:
            progress("ICQPs (critical faces)", n_done, len(faces))
        kappa = _kappa(pieces, net, ks, face.cell, cells.rows[key_of[face.cell]])
        pc = _Piece(pieces, net, ks, list(face.cell), kappa, curved)
        My = face.rays
        HMy = pc.apply(My)
        r = QPRecord("ICQP", Outcome.POSITIVE, int(My.shape[1] + sub.dim), n_eq=rec0.n_eq, n_ineq=My.shape[1],
                     signs=tuple(face.cell), min_eig=eig.value)
        out.records.append(r)
        step = icqp_step(sub, My, HMy, singular, r, out.eig_tol, budget, margins)
        if step.undecided is not None:
            undecided = undecided or step.undecided
            continue
        if step.theta is not None:
            cand = curvature_candidate(pc, step.theta, out.hessian_norm, tol.rank)
            if cand is None:
                undecided = undecided or step.not_negative
                continue
            r.outcome, r.detail = Outcome.NEGATIVE, step.detail or r.detail
            cands.append(cand)
        elif r.outcome == Outcome.ZERO:
            overall = Outcome.ZERO
    if cands:
        out.candidates = sorted(cands, key=lambda c: c[1])
        out.outcome, out.source = Outcome.NEGATIVE, "critical face"
        out.direction, out.curvature = out.candidates[0]
    elif undecided is not None:
        out.inconclusive = undecided
    else:
        out.outcome = overall
    return _done(out, margins)

"""Second-order test on the critical cone: the ECQP and the 2^K ICQPs (DESIGN.md section 3, step 4).

The steps, each a function below: exactly flat blocks are quotiented out (:mod:`sospcheck.quotient`;
zero-output neurons by the closed form of :mod:`sospcheck.zero_output`, which may instead give a
descent); the per-neuron constraints of the critical cone are set up (:mod:`sospcheck.reduced`); the
ECQP, all kinks held, is decided by ``lambda_min(Qww)`` on the subspace of the constraints
(:mod:`sospcheck.subspace`); each ICQP adds ``y >= 0`` on the flat rays and is decided by ``Qww`` and
the Schur complement ``S = Qyy - Qyw Qww^+ Qwy`` (copositivity, :mod:`sospcheck.copositive`). A neuron
whose kinks are degenerate (Assumption 2 fails) holds all its kinks in the ECQP and adds, per ICQP, the
flat rays of one of its critical faces (:mod:`sospcheck.degenerate_second`, DESIGN.md section 9).

Every decision against a tolerance that the fragility probe scales is recorded with its margin
(:mod:`sospcheck.margins`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import product

import numpy as np

from .augmented import frobenius_norm
from .copositive import NOT, STRICT, UNKNOWN, copositivity
from .degenerate import cell_product
from .degenerate_second import NeuronFaces, face_choices, face_combinations
from .first_order import NeuronTest
from .margins import Margins
from .model import Direction
from .options import Budget, Tolerances
from .point import Point
from .quotient import Quotient, SpanCoordinates, dead_neurons, reduce, span_coordinates
from .reduced import Block, ReducedProblem, constraint_blocks, particular_solutions
from .subspace import MinEig, SubspaceSolver, make_subspace
from .zero_output import zero_output_ratios, zero_output_test

__all__ = ["Outcome", "QPRecord", "SecondOrderOutcome", "second_order_test", "IcqpStep", "icqp_step"]


class Outcome(str, Enum):
    """How a second-order subproblem came out (the values are what the JSON report writes)."""

    POSITIVE = "T1"  # positive on the critical cone (modulo the quotient)
    ZERO = "T2"  # some nonzero critical direction has zero curvature
    NEGATIVE = "T3"  # negative curvature: a second-order descent direction

    def __str__(self) -> str:
        return self.value


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
    # for the certified radius (sospcheck.radius), not reported: the accuracy of min_eig, and of an ICQP
    # its Schur complement S and |My - Mw Qww^+ Mw' H My|_2 (its cone is {(My - ...) y + Mw w : y >= 0})
    min_eig_accuracy: float = field(default=0.0, repr=False)
    schur: np.ndarray | None = field(default=None, repr=False)
    particular_norm: float | None = field(default=None, repr=False)

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
    descent direction of a NEGATIVE outcome, found by ``source`` ("ECQP", "ICQP", "critical-face ICQP"
    or "zero_output").
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


@dataclass(frozen=True)
class _Decided:
    """How a step ended the test: an outcome (with its direction and source) or a reason it could not."""

    outcome: Outcome | None
    direction: Direction | None = None
    source: str = ""
    inconclusive: str | None = None


def _undecided(reason: str) -> _Decided:
    return _Decided(None, inconclusive=reason)


def second_order_test(pt: Point, neurons: list[NeuronTest], boundary: np.ndarray, tol: Tolerances,
                      budget: Budget, rng: np.random.Generator | None = None,
                      solver: str = "auto", backend: str = "numpy", device: str | None = None,
                      progress=None, faces: Sequence[NeuronFaces] = ()) -> SecondOrderOutcome:
    """Step 4 at a first-order stationary point whose rays were all nonnegative.

    Returns NEGATIVE (T3) with a second-order descent direction (``second < 0``, ``first = 0``), ZERO
    (T2) if some nonzero critical direction has zero curvature, POSITIVE (T1) if the form is positive
    on the critical cone. ``solver``: "dense" (reduced H formed), "matrix_free" (products only), or
    "auto" (dense up to ``budget.max_dense_params`` kept coordinates). ``backend``: "numpy" or "torch"
    (Hessian products on ``device``, a GPU when available). ``faces``: the critical faces of the
    neurons whose kinks are degenerate (:func:`sospcheck.degenerate_second.neuron_faces`); each ICQP
    takes one per neuron (their product, counted against ``budget.max_cells`` first).
    """
    rng = rng or np.random.default_rng(0)
    margins = Margins()
    coords = span_coordinates(pt, tol.rank)
    dead = dead_neurons(pt, neurons)
    zero, records, decided, k_stop = _zero_output_neurons(pt, neurons, boundary, coords, dead, tol, rng, margins)
    if decided is not None:  # only the neurons before the deciding one were examined
        quot = coords.partial_quotient([k for k in dead if k < k_stop], zero)
        return _outcome(decided, records, quot, margins)
    red = reduce(pt, neurons, boundary, coords, dead, zero, tol.rank, tol)
    prob = ReducedProblem.of(pt, red, boundary, backend, device)
    blocks = constraint_blocks(prob, neurons, red)
    L = len(prob.flat_pairs)
    K = sum(1 for p in prob.flat_pairs if len(p[2]) == 2)
    with_faces = [f for f in faces if f.n_faces]
    n_icqp = 2**K * face_combinations(with_faces) if L or with_faces else 0
    sizes = dict(n_params_reduced=prob.n, n_icqp_planned=n_icqp)
    reason = _not_applicable(blocks, K, n_icqp, with_faces, budget)
    if reason is not None:
        return _outcome(_undecided(reason), [], red.quotient, margins, **sizes)
    sub = make_subspace(prob, blocks, solver, budget.max_dense_params, progress)
    eig_tol = tol.eigen * sub.hessian_norm
    sizes.update(hessian_norm=sub.hessian_norm, eig_tol=eig_tol, solver=sub.name)
    ecqp, eig, decided = _ecqp(sub, prob, blocks, eig_tol, margins, bool(with_faces))
    records = [ecqp]
    if decided is None:
        icqps, decided = _icqps(sub, prob, blocks, ecqp, eig, eig_tol, budget, margins, progress, with_faces,
                                n_icqp)
        records += icqps
    return _outcome(decided, records, red.quotient, margins, products=prob.products, **sizes)


def _outcome(decided: _Decided, records: list[QPRecord], quotient: Quotient, margins: Margins,
             **numbers) -> SecondOrderOutcome:
    return SecondOrderOutcome(decided.outcome, records, decided.direction, decided.source, decided.inconclusive,
                              quotient, margins=margins.items(), **numbers)


def _not_applicable(blocks: list[Block], K: int, n_icqp: int, faces: list[NeuronFaces],
                    budget: Budget) -> str | None:
    """Why the cone reduction cannot be run here, or None."""
    if faces:
        cp = cell_product({f.k: f.n_faces for f in faces}, budget.max_cells)
        if cp.over_budget:
            return (f"the critical faces exceed budget.max_cells={budget.max_cells}: {cp.total} combinations of "
                    f"one face per degenerate neuron {cp.per_neuron} (neuron: faces), the most at neuron "
                    f"{cp.dominant}")
    if n_icqp > budget.max_icqp:
        faces_part = f" x {face_combinations(faces)} face combinations" if faces else ""
        return f"2^{K}{faces_part} = {n_icqp} ICQPs exceed budget.max_icqp={budget.max_icqp}"
    if any(b.dependent for b in blocks):
        return ("the flat-ray constraints are linearly dependent on the critical subspace; "
                "the cone reduction of step 4 does not apply")
    return None


def _zero_output_neurons(pt: Point, neurons: list[NeuronTest], boundary: np.ndarray, coords: SpanCoordinates,
                         dead: list[int], tol: Tolerances, rng: np.random.Generator, margins: Margins):
    """The zero-output neurons whose ``nu_k`` is exactly flat (``g == 0``), in order, until one gives a
    descent (or cannot be decided): ``(flat neurons, records, decided or None, deciding neuron)``."""
    net, lam = pt.net, pt.weight_decay
    if lam != 0:
        return [], [], None, None
    ratios = zero_output_ratios(pt, tol.a_zero)
    mask = ratios <= 1.0
    g_tol = tol.gradient * max(net.s_plus, net.s_minus) * np.linalg.norm(pt.r) * frobenius_norm(coords.Xr)
    flat, dead = [], set(dead)
    for nt in neurons:
        k = nt.k
        if k in dead:
            continue
        margins.extend([("zero output: |w_k| (a_zero)", float(ratios[k]))])
        if not mask[k]:
            continue
        zt = zero_output_test(k, coords.Xr, pt.r, pt.fwd.N[:, k], boundary[:, k], net.s_plus, net.s_minus, g_tol, rng)
        margins.extend(zt.margins)
        if zt.flat:
            flat.append(k)
        elif zt.nu is None:
            return flat, [], _undecided(f"zero-output neuron {k}: could not decide whether its kinks give descent"), k
        else:
            record, d = _zero_output_descent(pt, coords, boundary, k, zt.nu)
            return flat, [record], _Decided(Outcome.NEGATIVE, d, "zero_output"), k
    return flat, [], None, None


def _zero_output_descent(pt: Point, coords: SpanCoordinates, boundary: np.ndarray, k: int,
                         nu: np.ndarray) -> tuple[QPRecord, Direction]:
    """``u_k = -g(nu)`` and ``beta nu``: ``second = A - beta |g|^2 < 0`` for ``beta`` large (module zero_output)."""
    V, Zr, layout = coords.V, coords.Zr, coords.layout
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
    record = QPRecord("zero_output", Outcome.NEGATIVE, int(layout.dy + layout.rho),
                      detail=f"neuron {k}: w_k = 0 and |g(nu)| = {abs(B):.3g}")
    return record, d


def _ecqp(sub: SubspaceSolver, prob: ReducedProblem, blocks: list[Block], eig_tol: float,
          margins: Margins, faces: bool = False) -> tuple[QPRecord, MinEig, _Decided | None]:
    """Every kink held (``t = 0`` on all boundary pairs): ``lambda_min(Qww)`` against ``+-eig_tol``.
    Decides the test when negative, when it fails, or when there are no flat rays and no critical
    face (``faces``)."""
    L = len(prob.flat_pairs)
    n_eq = int(sum(b.A.shape[0] for b in blocks))
    eig = sub.min_eig(eig_tol)
    rec = QPRecord("ECQP", Outcome.POSITIVE, sub.dim, n_eq=n_eq + L, min_eig=eig.value, detail=eig.detail,
                   min_eig_accuracy=eig.accuracy)
    if eig.failed:
        return rec, eig, _undecided(f"ECQP eigenvalue not computed: {eig.failed}")
    if eig.value is not None:
        margins.add("ECQP: smallest eigenvalue", eig.value, eig_tol, eig.accuracy)  # against -eig_tol and eig_tol
        if eig.value < -eig_tol:
            rec.outcome = Outcome.NEGATIVE
            return rec, eig, _Decided(Outcome.NEGATIVE, prob.direction(eig.vector), "ECQP")
        if eig.value <= eig_tol:
            rec.outcome = Outcome.ZERO
    if L == 0 and not faces:
        return rec, eig, _Decided(rec.outcome, None, "ECQP")
    return rec, eig, None


def _sign_choices(prob: ReducedProblem):
    """Per ICQP, the side of every flat pair: both sides of the ``K`` pairs flat both ways."""
    K = sum(1 for p in prob.flat_pairs if len(p[2]) == 2)
    for choice in product((1, -1), repeat=K):
        it = iter(choice)
        yield {(i, k): (next(it) if len(allowed) == 2 else allowed[0]) for i, k, allowed in prob.flat_pairs}


def _icqps(sub: SubspaceSolver, prob: ReducedProblem, blocks: list[Block], ecqp: QPRecord, eig: MinEig,
           eig_tol: float, budget: Budget, margins: Margins, progress, faces: list[NeuronFaces],
           n_icqp: int) -> tuple[list[QPRecord], _Decided]:
    """The ``2^K`` ICQPs (times the combinations of critical faces) in turn; the first descent or undecided
    one ends the test."""
    singular = ecqp.outcome == Outcome.ZERO
    overall = ecqp.outcome
    My0 = particular_solutions(prob, blocks)
    n_eq = int(sum(b.A.shape[0] for b in blocks))
    source = "critical-face ICQP" if faces else "ICQP"
    records = []
    n_done = 0
    for signs in _sign_choices(prob):
        sig = np.array([signs[(i, k)] for i, k, _ in prob.flat_pairs], float)
        J0 = prob.J_for(signs)
        for choice in face_choices(prob, faces):
            if progress is not None:
                progress("ICQPs (2^K sign choices x critical faces)", n_done, n_icqp)
            n_done += 1
            My = np.hstack([My0 * sig[None, :], choice.My])
            if not My.shape[1]:  # every face quotiented away: the ECQP decided this cone
                continue
            rec = QPRecord("ICQP", Outcome.POSITIVE, int(My.shape[1] + sub.dim), n_eq=n_eq, n_ineq=My.shape[1],
                           signs=tuple(signs[(i, k)] for i, k, allowed in prob.flat_pairs if len(allowed) == 2),
                           min_eig=eig.value, detail=choice.detail, min_eig_accuracy=eig.accuracy)
            records.append(rec)
            decided = _icqp(sub, prob, My, choice.apply_slopes(J0), singular, rec, eig_tol, budget, margins, source)
            if decided is not None:
                return records, decided
            if rec.outcome == Outcome.ZERO:
                overall = Outcome.ZERO
    return records, _Decided(overall, None, source)


def _negative(prob: ReducedProblem, J: np.ndarray, theta: np.ndarray, hessian_norm: float) -> bool:
    """The candidate's curvature, recomputed with one product, must be negative beyond the rounding
    error of that product (~ eps |H| |theta|^2): solver round-off must not turn into a claimed
    descent direction. (An unbounded direction can have a tiny curvature per unit norm, so the
    threshold is the rounding level, not ``eig_tol``.)"""
    q = float(theta @ prob.apply(J, theta[:, None])[:, 0])
    return q < -1e-13 * hessian_norm * float(theta @ theta)


def _icqp(sub: SubspaceSolver, prob: ReducedProblem, My: np.ndarray, J: np.ndarray, singular: bool, rec: QPRecord,
          eig_tol: float, budget: Budget, margins: Margins, source: str = "ICQP") -> _Decided | None:
    """One cone ``theta = My y + Mw w``, ``y >= 0`` (``My``: the signed flat rays and the critical faces'
    generators), ``w`` free in the ECQP subspace, slopes ``J``. None when it gives no descent; then
    ``rec.outcome`` is ZERO if some direction of it has zero curvature."""
    HMy = prob.apply(J, My)
    step = icqp_step(sub, My, HMy, singular, rec, eig_tol, budget, margins)
    if step.theta is None:
        return None if step.undecided is None else _undecided(step.undecided)
    if not _negative(prob, J, step.theta, sub.hessian_norm):
        return _undecided(step.not_negative)
    rec.outcome = Outcome.NEGATIVE
    rec.detail = "; ".join(x for x in (rec.detail, step.detail) if x)
    return _Decided(Outcome.NEGATIVE, prob.direction(step.theta), source)


@dataclass(frozen=True)
class IcqpStep:
    """An ICQP decided on the subspace: a candidate ``theta`` (to be confirmed by recomputing its curvature,
    else ``not_negative`` says why it is not a descent), or ``undecided``, or neither (no descent; ``rec`` says
    T1 or T2)."""

    theta: np.ndarray | None = None
    not_negative: str = ""
    undecided: str | None = None
    detail: str = ""  # the record's detail once the descent is confirmed


def icqp_step(sub: SubspaceSolver, My: np.ndarray, HMy: np.ndarray, singular: bool, rec: QPRecord, eig_tol: float,
              budget: Budget, margins: Margins) -> IcqpStep:
    """One ICQP with particular solutions ``My`` (signed, ``y >= 0``) and their products ``HMy``: the unbounded
    direction when ``Qww`` is singular, else the Schur complement ``S = Qyy - Qyw Qww^+ Qwy`` and its
    copositivity (DESIGN.md section 3, step 4). Sets ``rec``'s copositivity fields and, without descent, its
    outcome (ZERO unless strictly copositive with ``Qww`` definite)."""
    Qyy = My.T @ HMy
    Qyy = 0.5 * (Qyy + Qyy.T)
    theta = sub.unbounded_direction(My, HMy, Qyy, eig_tol, margins) if singular else None
    if theta is not None:
        return IcqpStep(theta, "Qww is (nearly) singular and the solver's null-space direction does not have "
                               "negative curvature; rerun with solver='dense'",
                        detail="Qww singular and coupled to y: unbounded below")
    Xs = sub.solve(HMy, eig_tol, margins)  # Mw Qww^+ Mw' H My
    S = Qyy - HMy.T @ Xs
    S = 0.5 * (S + S.T)
    cop = copositivity(S, eig_tol, budget.max_copositive_subsets, budget.milp_time_limit)
    margins.extend(cop.margins)
    rec.copositivity, rec.copositivity_value = cop.status, cop.value
    rec.schur, rec.particular_norm = S, float(np.linalg.norm(My - Xs, 2))
    if cop.status == UNKNOWN:
        return IcqpStep(undecided=f"copositivity of a {S.shape[0]}x{S.shape[0]} Schur complement not decided: "
                                  f"{cop.method}")
    if cop.status == NOT:
        return IcqpStep(My @ cop.witness - Xs @ cop.witness,
                        f"the copositivity witness (y'Sy = {cop.value:.3g}) does not give negative curvature once "
                        "recomputed: the Schur complement is inaccurate")
    if cop.status != STRICT or singular:
        rec.outcome = Outcome.ZERO
    return IcqpStep()

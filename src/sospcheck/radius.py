"""The radius within which a certified strict local minimum is the minimum (DESIGN.md section 4,
"Certified radius of a strict minimum").

Where step 4 certifies ``local_minimum`` (every second-order subproblem T1), :func:`certified_radius`
turns its margins into a radius ``r*``: for every perturbation ``eta`` of the quotient slice (plus the
directions that are exactly invariant: dead blocks, zero-output ``nu_k``, inactive directions,
components outside the data span) with ``|eta| <= r*``, ``R(z + eta) >= R(z) - slack``, ``slack`` the
first-order residual the tolerances let pass times ``r*`` (zero at an exactly stationary point) plus
what the kink pairs' rounding off their kinks can cost (:func:`kink_residual_slack`: a floating-point
``z`` has ``|N_ik|`` of a few eps there, not 0, and a move that crosses such a pair differs from the
model by up to ``(s_hi - s_lo) |w_k| |N_ik|`` in the output; ~1e-19 on the Table 1 minima).

Three facts give it. Below ``r_valid = min over off-kink pairs |N_ik| / |xbar_i|`` no pair changes
sign, so the outputs are exactly the piecewise-quadratic model of section 2. On each of its pieces
``R(z + eta) - R(z) = first + second + E`` with ``E`` from the curvature of the loss and the bilinear
output term, bounded by ``r K3(r) |n|^2`` (``n`` the slice part of ``eta``; ``K3`` uses the loss's third
derivative: 0 for squared error, ``1/(6 sqrt 3)`` for the logistic loss, ``1/sqrt 2`` for softmax
cross-entropy). Write ``n = n' + e`` with ``n'`` in the critical cone and ``|e| <= kappa |viol|``,
``viol`` the kink coordinates of ``n`` on a side with a positive one-sided slope (Hoffman's bound
with ``kappa = 1 / sigma_min`` of the kink rows on the slice, independent under Assumption 2):
``first >= alpha |e| / kappa`` (``alpha`` the smallest positive one-sided slope), ``second >= lambda
|n'|^2 - 2 beta |n'| |e| - beta |e|^2`` (``lambda`` the certified curvature on the critical cone,
``beta`` a bound of the second-order form). Then ``R(z + eta) - R(z) >= b (alpha / kappa - 2 R_ab (beta
+ r K3)) + a^2 (lambda - 2 r K3) - slack`` with ``a = |n'|``, ``b = |e|``, ``R_ab = r (1 + 2 kappa |M|)``:
nonnegative for every ``r`` with ``2 r K3(r) < lambda`` and ``2 r (1 + 2 kappa |M|)(beta + r K3(r)) <
alpha / kappa``.

What is only estimated is said in :attr:`Radius.what_is_proven` and ``rigorous`` is False then: the
exact symmetries (rescaling, bias shifts, linear groups) map any perturbation into the slice but
stretch its length by a factor ``1 + O(r / |z_k|)`` that is not bounded here; duplicate groups are
flat only on a manifold (their quotient is a second-order argument); a user-supplied loss has no
known third-derivative bound; neurons failing Assumption 2 have no extreme rays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .copositive import orthant_lower_bound
from .geometry import row_norms
from .first_order import NeuronTest
from .options import Tolerances
from .point import Point
from .quotient import reduce, span_coordinates
from .reduced import Block, ReducedProblem, constraint_blocks
from .second_order import Outcome, QPRecord, SecondOrderOutcome

__all__ = ["Radius", "certified_radius", "third_derivative_bound", "uniform_validity_radius", "kink_residual_slack"]

#: sup |d^3 l| per unit |delta|^3 of the per-sample loss (before the reduction weight)
_THIRD_DERIVATIVE = {"squared": 0.0, "mse": 0.0, "logistic": 1.0 / (6.0 * math.sqrt(3.0)),
                     "cross_entropy": 1.0 / math.sqrt(2.0)}


@dataclass(frozen=True)
class Radius:
    """``value``: the radius ``r*`` (0 when nothing is certified, inf when no bound applies: no
    off-kink pair and a quadratic loss without kinks). ``rigorous``: every step of the bound is
    proven (:attr:`what_is_proven` says what and for which perturbations; otherwise it says what is
    estimated). ``components``: the numbers behind it (module docstring)."""

    value: float
    rigorous: bool
    what_is_proven: str
    components: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready: infinite numbers (no limit) are written as null."""

        def num(x):
            return None if x is None or not math.isfinite(x) else float(x)

        return {"value": num(self.value), "rigorous": self.rigorous, "what_is_proven": self.what_is_proven,
                "components": {k: num(v) for k, v in self.components.items()}}

    @classmethod
    def interpolation(cls) -> "Radius":
        """At outputs interpolating the targets of a loss that is ``>= 0`` and zero there (the check's
        interpolation ending, no weight decay): a global minimum, so no radius limits it."""
        return cls(math.inf, True, "R >= 0 = R(z) everywhere: the outputs interpolate the targets of a loss "
                   "that is nonnegative and zero there (a global minimum)")

    def contains(self, distance: float) -> bool:
        """Whether a point at ``distance`` from the minimum lies inside the radius."""
        return distance <= self.value


def third_derivative_bound(loss_name: str) -> float | None:
    """``sup |D^3 l(o)[d, d, d]| / |d|^3`` for the named loss, None when unknown (user-supplied)."""
    return _THIRD_DERIVATIVE.get(loss_name)


def uniform_validity_radius(N: np.ndarray, boundary: np.ndarray, Xbar: np.ndarray) -> float:
    """``min |N_ik| / |xbar_i|`` over the off-kink pairs: below it no perturbation of the weights of that
    length changes the sign of any off-kink pair (``|t_ik| <= |dZ_k| |xbar_i|``)."""
    norms = row_norms(Xbar)
    off = ~boundary & (norms[:, None] > 0)
    if not np.any(off):
        return math.inf
    return float(np.min(np.abs(N)[off] / np.broadcast_to(norms[:, None], N.shape)[off]))


def _curvature_margin(records: list[QPRecord], time_limit: float) -> tuple[float | None, str]:
    """``lambda``: a lower bound of ``second(eta) / |eta|^2`` on the critical cone within the slice, from
    the ECQP (``1/2 (lambda_min(Qww) - accuracy)``, ``second = 1/2 eta' H eta``) or, with flat rays, every
    ICQP: on its cone ``eta = P y + Mw w'`` (``P = My - Mw Qww^+ Mw' H My``, ``y >= 0``), ``second = 1/2 (y'Sy
    + w'' Qww w'') >= 1/2 min(mu_S, lambda_w) (|y|^2 + |w''|^2) >= 1/2 min(mu_S, lambda_w) / (1 + |P|^2) |eta|^2``."""
    ecqp = next((r for r in records if r.kind == "ECQP"), None)
    icqps = [r for r in records if r.kind == "ICQP"]
    if ecqp is None or ecqp.min_eig is None:
        return (None, "no ECQP eigenvalue") if ecqp is None or ecqp.n_vars else (math.inf, "")
    lam_w = ecqp.min_eig - ecqp.min_eig_accuracy
    if lam_w <= 0:
        return None, "the ECQP eigenvalue is not positive beyond its accuracy"
    if not icqps:
        return 0.5 * lam_w, ""
    bounds = []
    for r in icqps:
        if r.schur is None or r.particular_norm is None:
            return None, "an ICQP kept no Schur complement"
        mu = orthant_lower_bound(r.schur, time_limit) if r.schur.size else math.inf
        if mu is None:
            return None, "no positive lower bound of a Schur complement on the orthant"
        bounds.append(0.5 * min(mu, lam_w) / (1.0 + r.particular_norm ** 2))
    return min(bounds), ""


def _kink_geometry(blocks: list[Block]) -> tuple[float, float, int]:
    """``(sigma_min, sigma_max, rows)`` of the kink rows (equality rows after the slice rows, and the flat
    rows) restricted to each block's slice, over all blocks: ``kappa = 1 / sigma_min``, ``|M| = sigma_max``."""
    from scipy.linalg import null_space

    lo, hi, n = math.inf, 0.0, 0
    for b in blocks:
        K = np.vstack([b.A[b.n_slice:], b.B])
        if not K.shape[0]:
            continue
        slice_rows = b.A[:b.n_slice]
        basis = null_space(slice_rows) if slice_rows.shape[0] else np.eye(K.shape[1])
        sv = np.linalg.svd(K @ basis, compute_uv=False)
        sv = np.concatenate([sv, np.zeros(max(K.shape[0] - sv.size, 0))])
        lo, hi, n = min(lo, float(sv.min())), max(hi, float(sv.max())), n + K.shape[0]
    return lo, hi, n


def _first_order(pt: Point, neurons: list[NeuronTest], kept: set[int]) -> tuple[float, float, bool]:
    """``(alpha, residual, assumption2)``: the smallest positive one-sided slope per unit ``t`` over the kink
    pairs of the neurons in ``kept`` (inf without one); the first-order residual the tolerances let pass,
    ``|G_out| + sqrt(sum_k (|vt_k| + sum of the negative flat slopes times |xbar_i|)^2)`` (so
    ``first(eta) >= alpha |viol| - residual |eta|``); whether every kept neuron with kinks has its rays."""
    net, lam = pt.net, pt.weight_decay
    G = pt.r.T @ pt.fwd.O + lam * net.W2
    g_out = float(np.linalg.norm(G) ** 2)
    if net.has_b2:
        g_out += float(np.linalg.norm(pt.r.sum(axis=0) + lam * net.b2) ** 2)
    norms = row_norms(pt.fwd.Xbar)
    alpha, per_neuron, ok = math.inf, 0.0, True
    for nt in neurons:
        loose = float(np.linalg.norm(nt.vt))
        if nt.k in kept and nt.M:
            ok &= nt.assumption2
            xn = norms[nt.boundary]
            for slopes, flat in ((nt.slope_plus, nt.flat_plus), (nt.slope_minus, nt.flat_minus)):
                if np.any(~flat):
                    alpha = min(alpha, float(np.min(slopes[~flat])))
                loose += float(np.sum(np.maximum(-slopes[flat], 0.0) * xn[flat]))
        per_neuron += loose ** 2
    return alpha, math.sqrt(g_out) + math.sqrt(per_neuron), ok


def _output_bounds(pt: Point) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per sample: ``G1_i = sqrt(|O_i|^2 + [b2] + s_hi^2 |W2|_2^2 |xbar_i|^2)`` (a bound of the output
    Jacobian), ``h_i = |H_i|_2``, ``|xbar_i|``; and ``s_hi``."""
    net = pt.net
    s_hi = max(net.s_plus, net.s_minus)
    xn = row_norms(pt.fwd.Xbar)
    G1 = np.sqrt(np.sum(pt.fwd.O ** 2, axis=1) + (1.0 if net.has_b2 else 0.0)
                 + (s_hi * np.linalg.norm(net.W2, 2) * xn) ** 2)
    return G1, np.linalg.norm(pt.Hl, 2, axis=(1, 2)), xn, s_hi


def _second_order_constants(pt: Point, zero_output: bool, L3: float, bounds: tuple):
    """``beta`` (``|b(x, y)| <= beta |x| |y|`` for the bilinear form of ``second`` on every piece) and
    ``K3(r)`` (``E >= -r K3(r) |n|^2`` for ``|eta| <= r``), from the per-sample output Jacobian bound
    ``G1_i``, ``h_i = |H_i|_2`` and ``|r_i|`` (``bounds``: :func:`_output_bounds`)."""
    G1, h, xn, s_hi = bounds
    beta = 0.5 * (float(h @ G1 ** 2) + s_hi * float(np.linalg.norm(pt.r, axis=1) @ xn)) + 0.5 * pt.weight_decay
    c2 = 2.0 if zero_output else 1.0  # zero-output blocks add |u_n| |nu_k| to the bilinear output term
    linear = c2 * s_hi * float(h @ (G1 * xn))

    def K3(r: float) -> float:
        return linear + (L3 / 6.0) * float(np.sum((G1 + c2 * s_hi * xn * r) ** 3))

    return beta, K3


def kink_residual_slack(pt: Point, boundary: np.ndarray, L3: float, r: float, bounds: tuple | None = None) -> float:
    """``sum_i delta_i (|r_i| + (h_i + L3 (G1_i r + delta_i)) (G1_i r + delta_i))``, ``delta_i = (s_hi -
    s_lo) sum_k |w_k| |N_ik|`` over the kink pairs: how far ``R`` near ``z`` can lie below the model that
    puts the kink pairs exactly on their kinks, when they sit at ``|N_ik|`` of a few eps instead (a move
    crossing such a pair changes its activation by at most ``(s_hi - s_lo) |N_ik|`` more than the
    model; ``l`` changes by at most its slope at the moved output times that). ``bounds``:
    :func:`_output_bounds` of ``pt`` when the caller has them."""
    net = pt.net
    G1, h, _, _ = bounds if bounds is not None else _output_bounds(pt)
    gap = abs(net.s_plus - net.s_minus)
    delta = gap * (np.abs(np.where(boundary, pt.fwd.N, 0.0)) @ np.linalg.norm(net.W2, axis=0))
    move = G1 * r + delta
    return float(delta @ (np.linalg.norm(pt.r, axis=1) + (h + L3 * move) * move))


def _largest(ok, hi: float) -> float:
    """The largest ``r`` in ``[0, hi]`` with ``ok(r)``, ``ok`` monotone (true then false); bisection."""
    if ok(hi):
        return hi
    lo = 0.0
    if not math.isfinite(hi):
        hi = 1.0
        while ok(hi):
            if hi > 1e300:
                return math.inf
            lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


# the perturbations a certified radius covers
_SLICE = ("every perturbation eta with |eta| <= r* made of a part in the quotient slice (orthogonal to the "
          "quotiented flat directions: rescalings, bias shifts, shared flat directions) and any change of dead "
          "blocks, zero-output input weights, inactive directions and components outside the data span")


def certified_radius(pt: Point, boundary: np.ndarray, neurons: list[NeuronTest], so: SecondOrderOutcome,
                     tol: Tolerances | None = None, time_limit: float = 60.0) -> Radius:
    """The radius ``r*`` within which ``z`` (``pt``) is the minimum, from the check's own records (module
    docstring); pure: it recomputes the constraint blocks and reads ``so.records``.

    Args:
        pt: the point (``Problem.point()``). boundary: the kink mask the check used. neurons: its
            first-order records (``first_order.neuron_tests``). so: its second-order outcome.
        tol: the check's tolerances (default :class:`Tolerances`). time_limit: seconds for a MILP
            bounding a Schur complement on the orthant, when one is needed.
    """
    tol = tol or Tolerances()
    if so is None or so.outcome != Outcome.POSITIVE or so.inconclusive or so.quotient is None:
        return Radius(0.0, False, "no strict local minimum was certified here, so no radius")
    q = so.quotient
    L3 = third_derivative_bound(pt.loss.name)
    caveats = []
    if L3 is None:
        caveats.append(f"the loss '{pt.loss.name}' has no known third-derivative bound (taken as 0)")
        L3 = 0.0
    L3 *= pt.weight
    r_valid = uniform_validity_radius(pt.fwd.N, boundary, pt.fwd.Xbar)
    lam, why = _curvature_margin(so.records, time_limit)
    if lam is None:
        return Radius(0.0, False, f"strict minimum certified, but no curvature bound on the critical cone: {why}",
                      {"validity_radius": r_valid})
    coords = span_coordinates(pt, tol.rank)
    red = reduce(pt, neurons, boundary, coords, q.dead_neurons, q.zero_output_neurons, tol.rank, tol)
    blocks = constraint_blocks(ReducedProblem.of(pt, red, boundary), neurons, red)
    sig_lo, sig_hi, n_kink = _kink_geometry(blocks)
    kept = {nt.k for nt in neurons if nt.k not in q.dead_neurons and nt.k not in q.zero_output_neurons}
    alpha, eps_g, rays = _first_order(pt, neurons, kept)
    bounds = _output_bounds(pt)
    beta, K3 = _second_order_constants(pt, bool(q.zero_output_neurons), L3, bounds)
    if alpha <= 0:
        return Radius(0.0, False, "a one-sided slope at a kink is negative (a descending ray): not a minimum",
                      {"validity_radius": r_valid, "curvature": lam, "first_order_slope": alpha})
    if not rays:
        caveats.append("a neuron fails Assumption 2 (no extreme rays): its first-order slope is not bounded")
    if any(b.dependent for b in blocks):
        caveats.append("dependent kink rows")
    if q.duplicate_groups:
        caveats.append(f"duplicate groups {q.duplicate_groups}: their flat directions are flat only on a "
                       "manifold, quotiented by a second-order argument")

    def remainder_ok(r: float) -> bool:
        return 2.0 * r * K3(r) < lam

    conditions = [remainder_ok]
    kappa = math.inf
    if n_kink and math.isfinite(alpha):
        if sig_lo <= 1e-12 * max(sig_hi, 1e-300):
            return Radius(0.0, False, "strict minimum certified, but the kink rows are dependent on the slice",
                          {"validity_radius": r_valid, "curvature": lam})
        kappa = 1.0 / sig_lo

        def first_order_ok(r: float) -> bool:
            return 2.0 * r * (1.0 + 2.0 * kappa * sig_hi) * (beta + r * K3(r)) < alpha / kappa

        conditions.append(first_order_ok)
    r_star = _largest(lambda r: all(c(r) for c in conditions), r_valid)
    r_cap = min(r_star, 1e300)
    kink_slack = kink_residual_slack(pt, boundary, L3, r_cap, bounds)
    slack = (eps_g * r_star if math.isfinite(r_star) else (0.0 if eps_g == 0 else math.inf)) + kink_slack
    components = {"validity_radius": r_valid, "curvature": lam, "first_order_slope": alpha,
                  "kink_conditioning": kappa, "kink_norm": sig_hi, "form_bound": beta,
                  "remainder_constant": K3(r_cap), "third_derivative": L3,
                  "gradient_residual": eps_g, "kink_residual_slack": kink_slack, "loss_slack": slack,
                  "remainder_radius": _largest(remainder_ok, math.inf)}
    proven = (f"R(z + eta) >= R(z) - {slack:.3g} (first-order residual {eps_g:.3g} allowed by the tolerances, "
              f"times r*, plus {kink_slack:.3g} for the kink pairs' rounding off their kinks) for {_SLICE}; the "
              "exact symmetries carry this to their orbits, a general perturbation "
              "of length r being mapped into the slice with a length stretched by 1 + O(r / |z_k|) "
              "(estimated, not bounded)")
    if caveats:
        proven += "; estimated, not proven: " + "; ".join(caveats)
    return Radius(r_star, not caveats, proven, components)

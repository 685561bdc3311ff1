"""The nearby kink point of trained weights: zero the negligible neurons, merge duplicates, snap, polish, refit.

Trained weights sit next to the points the check decides exactly, not on them. "The nearby kink
point" of weights ``z`` (:class:`Nearby` holds the thresholds):

1. neurons whose whole output contribution is negligible are set exactly to zero
   (:func:`near_zero_neurons`, :func:`zero_neurons`): vanishing initialisation leaves such neurons,
   and a zero neuron puts every data point on its kink (the saddles of saddle-to-saddle dynamics,
   decided exactly by the check);
2. neurons whose outputs on the data are collinear are merged into one, the others becoming zero
   neurons (:func:`merge_duplicates`): small initialisation aligns neurons into such groups, whose
   nearly flat valleys no optimizer resolves;
3. points within ``snap_tol`` of a kink are moved onto it (:func:`sospcheck.snap.snap_to_kinks`,
   DESIGN.md section 4, "Snap");
4. a few Levenberg-Marquardt steps on all weights with those points held on their kinks, within a
   ball around the start (:func:`polish`): gradient methods converge slowly near the end, and the
   check's tolerances are tight;
5. the output layer, convex once the hidden layer is fixed, is refit by its minimum change
   (:func:`refit`).

Steps 1 and 2 change the outputs on the data by at most their tolerances, 3 by the snap, and 4
and 5 only lower the loss. Every function here is pure over ``(net, X, Yp, loss, weight,
weight_decay)`` (``Yp``: targets prepared by ``loss.prepare``; ``weight``: the reduction weight)
and needs NumPy and SciPy only. The check's nearby mode and the escape loop
(:mod:`sospcheck.nearby_mode`) use steps 1, 2 and (optionally) 4, then converge exactly on the
stratum instead of 3 and 5; :func:`nearby_point` composes all five.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.linalg import null_space

from .geometry import boundary_mask, row_norms
from .losses import Loss, risk
from .model import TwoLayerNet, forward
from .options import Options
from .snap import refit_output_layer, snap_to_kinks
from .stratum import NEARBY_RADIUS

__all__ = ["Nearby", "ESCAPE_NEARBY", "KINK_POINT", "escape_nearby", "near_zero_neurons", "zero_neurons", "with_hidden", "merge_duplicates", "polish",
           "refit", "nearby_point", "on_kink"]

# losses that are exactly quadratic in the output: the output-layer refit is one least-squares solve
_QUADRATIC = ("squared", "mse")


@dataclass(frozen=True)
class Nearby(Options):
    """Thresholds of the nearby point: the defaults are those of the check's nearby mode
    (``check(..., nearby=True)``, :mod:`sospcheck.nearby_mode`); :data:`ESCAPE_NEARBY` holds the
    escape loop's, looser ones.

    zero_tol: a neuron is set to zero when ``s_hi |w_k| |Z_k| max|xbar| <= zero_tol * (rms(outputs)
        + rms(targets))`` (the check's ``near_zero`` rule) and, in nearby mode, the move fits in
        ``radius``; 0 disables.
    merge_tol: neurons whose output columns on the data are within this angle (its sine) are merged
        (:func:`merge_duplicates`); the default merges duplicates up to rounding only.
    snap_tol: pairs with ``|N_ik| <= snap_tol |Z_k| max|xbar|`` are put on the kink (held there while
        converging on the stratum; the nearby kink point of :func:`nearby_point` snaps them as
        ``check(snap=True)``).
    polish_iters: Levenberg-Marquardt descent iterations before converging (0 disables); skipped
        when the Jacobian would have more than ``polish_max_size`` entries (``m * dy * parameters``).
        polish_radius: the polished weights stay within ``polish_radius * (1 + |z|)`` of where
        polishing started.
    refit_rcond: singular values of the output-layer features below ``refit_rcond * s_max`` count as
        zero in the refit of :func:`nearby_point` (nearly collinear features must not send ``W2`` far).
    radius: ``nearby_radius``, relative to ``|z|``: the nearby point is at most ``radius * |z|`` from
        the weights (every move counts: zeroing, merging, polishing, converging).
    max_holds, hold_tol: how many times a pair that a step would move across its kink is added to the
        held pairs and the iteration restarted before giving up (:mod:`sospcheck.nearby_mode`); only a
        pair within ``hold_tol |Z_k| max|xbar|`` of its kink at the weights is held so (a pair farther
        out that a Newton step crosses is not a kink point the optimizer was still approaching: the
        stationary point lies on another stratum).
    """

    zero_tol: float = 1e-3
    merge_tol: float = 1e-10
    snap_tol: float = 1e-7
    polish_iters: int = 0
    polish_radius: float = 0.1
    polish_max_size: int = 2_000_000
    refit_rcond: float = 1e-9
    radius: float = NEARBY_RADIUS
    max_holds: int = 20
    hold_tol: float = 1e-6

    argument = "nearby"
    label = ""


#: the escape loop's nearby point: merges near-duplicates (angle 1e-2), holds pairs within 1e-5 on
#: their kinks (and those within 1e-4 that a step would cross), and may move 0.1 |z| (a stalled
#: optimizer is not at a stationary point). No polish: its descent steps drift along the rescaling
#: orbits, which the stratum iteration does not (DESIGN.md 8.2).
ESCAPE_NEARBY = Nearby(merge_tol=1e-2, snap_tol=1e-5, hold_tol=1e-4, radius=0.1)


#: :func:`nearby_point`'s defaults: the escape loop's thresholds and 30 polish steps
KINK_POINT = replace(ESCAPE_NEARBY, polish_iters=30)


def escape_nearby(value, base: Nearby = ESCAPE_NEARBY) -> Nearby:
    """``None`` -> ``base`` (:data:`ESCAPE_NEARBY`); a dict overrides some of its fields; a :class:`Nearby`
    as given."""
    return Nearby.from_any(value, base)


def near_zero_neurons(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, tol: float, *,
                      half_zero: bool = False) -> list[int]:
    """Neurons whose largest possible output contribution is negligible: ``0 < s_hi |w_k| |Z_k|
    max|xbar| <= tol * (rms(outputs) + rms(targets))`` (``Tolerances.near_zero``, DESIGN.md section 6).

    ``half_zero`` also lists the neurons with exactly one of ``Z_k``, ``w_k`` zero (no output, yet
    nonzero weights): the check decides those as they are, the nearby point zeroes them too.
    """
    fwd = forward(net, X)
    contribution = (max(net.s_plus, net.s_minus) * np.linalg.norm(net.W2, axis=0) * np.linalg.norm(net.Z, axis=1)
                    * np.max(row_norms(fwd.Xbar)))
    scale = np.sqrt(np.mean(fwd.out**2)) + np.sqrt(np.mean(Yp**2))
    candidate = ((np.linalg.norm(net.Z, axis=1) > 0) | (np.linalg.norm(net.W2, axis=0) > 0) if half_zero
                 else contribution > 0)
    return [int(k) for k in np.flatnonzero(candidate & (contribution <= tol * scale))]


def with_hidden(net: TwoLayerNet, Z: np.ndarray, **kw) -> TwoLayerNet:
    """``net`` with hidden layer ``Z = [W1 b1]`` (``W1`` without ``b1``) and any other weights ``kw``."""
    if net.has_b1:
        return net.with_weights(W1=Z[:, :-1], b1=Z[:, -1], **kw)
    return net.with_weights(W1=Z, **kw)


def zero_neurons(net: TwoLayerNet, ks: list[int]) -> TwoLayerNet:
    """The network with neurons ``ks`` set exactly to zero (``W1[k], b1[k], W2[:, k]``)."""
    Z, W2 = np.array(net.Z), np.array(net.W2)
    Z[ks], W2[:, ks] = 0.0, 0.0
    return with_hidden(net, Z, W2=W2)


def merge_duplicates(net: TwoLayerNet, X: np.ndarray, merge_tol: float) -> tuple[TwoLayerNet, list[list[int]]]:
    """Merge neurons whose outputs on the data are collinear: ``O_b = rho O_a + e`` with
    ``|e| <= merge_tol |O_b|`` (the sine of the angle between the columns of ``O``).

    Then ``w_a O_a + w_b O_b = (w_a + rho w_b) O_a + w_b e``: neuron ``b`` becomes a zero neuron and
    ``w_a`` absorbs it, which changes the outputs on the data by ``|w_b| |e|`` at most. Training from
    small initialisation aligns neurons into such groups, whose nearly flat valleys (ill-conditioned
    output layers) no optimizer resolves and whose exact refit would move ``W2`` far. Each merged
    neuron is rebalanced (``|w_a| = |Z_a|``, a symmetry). Returns the network and the groups
    (lists of neurons, the kept one first).
    """
    fwd = forward(net, X)
    O, Z, W2 = fwd.O, np.array(net.Z), np.array(net.W2)
    on = np.linalg.norm(O, axis=0)
    live = np.flatnonzero((on > 0) & (np.linalg.norm(W2, axis=0) > 0))
    order = live[np.argsort(-(on[live] * np.linalg.norm(W2[:, live], axis=0)), kind="stable")]
    groups, used = [], set()
    for a in order:
        if a in used:
            continue
        used.add(a)
        group = [int(a)]
        for b in order:
            if b in used:
                continue
            rho = float(O[:, a] @ O[:, b]) / on[a] ** 2
            if np.linalg.norm(O[:, b] - rho * O[:, a]) <= merge_tol * on[b]:
                W2[:, a] += rho * W2[:, b]
                Z[b], W2[:, b] = 0.0, 0.0
                used.add(b)
                group.append(int(b))
        if len(group) > 1:
            groups.append(group)
            zn, wn = np.linalg.norm(Z[a]), np.linalg.norm(W2[:, a])
            if zn > 0 and wn > 0:
                c = np.sqrt(wn / zn)
                Z[a], W2[:, a] = c * Z[a], W2[:, a] / c
    if not groups:
        return net, groups
    return with_hidden(net, Z, W2=W2), groups


def on_kink(net: TwoLayerNet, X: np.ndarray, tol: float) -> np.ndarray:
    """(m, dh) mask of the pairs with ``|N_ik| <= tol |Z_k| max|xbar|`` (the snap's near-kink rule)."""
    fwd = forward(net, X)
    return boundary_mask(fwd.N, net.Z, fwd.Xbar, tol)


def _output_weights(net: TwoLayerNet) -> np.ndarray:
    """``T = [W2 b2]`` (``W2`` without ``b2``), (dy, nf)."""
    return np.hstack([net.W2, net.b2[:, None]]) if net.has_b2 else np.array(net.W2)


def _lm_system(cur: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, weight_decay: float,
               bases: list, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Newton matrix ``J' H J + lam I`` and gradient ``J' r + lam theta`` in the coordinates
    ``theta = (B_k' Z_k for each k, T)``, with ``J`` the output Jacobian of the current linear piece."""
    fwd = forward(cur, X)
    Xbar = fwd.Xbar
    m, dh, dy = Xbar.shape[0], cur.dh, cur.dy
    n_hidden = int(offsets[-1])
    F = np.hstack([fwd.O, np.ones((m, 1))]) if cur.has_b2 else fwd.O
    nf = F.shape[1]
    n = n_hidden + dy * nf
    G = weight * np.asarray(loss.grad(fwd.out, Yp))
    H = weight * np.asarray(loss.hess(fwd.out, Yp))
    S = cur.slope(fwd.N)
    J = np.zeros((m, dy, n))
    for k in range(dh):
        if offsets[k + 1] > offsets[k]:
            # dY_i / d phi_k = w_k (S_ik xbar_i' B_k)
            dt = S[:, k, None] * (Xbar @ bases[k])  # (m, sizes[k])
            J[:, :, offsets[k]:offsets[k + 1]] = cur.W2[:, k][None, :, None] * dt[:, None, :]
    for c in range(dy):
        J[:, c, n_hidden + c * nf:n_hidden + (c + 1) * nf] = F
    theta = np.concatenate([np.concatenate([bases[k].T @ cur.Z[k] for k in range(dh)]) if n_hidden else np.zeros(0),
                            _output_weights(cur).ravel()])
    g = np.einsum("ic,icv->v", G, J) + weight_decay * theta
    A = np.einsum("icv,icd,idw->vw", J, H, J)
    if weight_decay:
        A[np.diag_indices(n)] += weight_decay
    return A, g


def polish(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, weight_decay: float,
           on_kink: np.ndarray, iters: int = 30, radius: float = math.inf) -> tuple[TwoLayerNet, int]:
    """Levenberg-Marquardt on ``R`` over all weights, with the pairs in ``on_kink`` (m, dh) held
    exactly on their kinks (``dZ_k`` in the null space of those ``xbar_i``).

    Step: ``(J' H J + lam I + mu I) delta = -(J' r + lam z)`` with ``J`` the output Jacobian of the
    current linear piece and ``r``, ``H`` the loss gradients and Hessians; taken only if ``R``
    falls and the weights stay within ``radius`` of ``net`` (``mu`` shrinks), else ``mu`` grows.
    Returns the network and the number of steps taken.
    """
    Xbar = net.augment(X)
    dh, dy, d = net.dh, net.dy, Xbar.shape[1]
    bases = [null_space(Xbar[on_kink[:, k]]) if on_kink[:, k].any() else np.eye(d) for k in range(dh)]
    offsets = np.concatenate([[0], np.cumsum([b.shape[1] for b in bases])])
    n_hidden = int(offsets[-1])
    value = risk(net, X, Yp, loss, weight, weight_decay)
    z0 = net.as_direction().vector()
    mu, taken = None, 0
    cur = net
    for _ in range(iters):
        A, g = _lm_system(cur, X, Yp, loss, weight, weight_decay, bases, offsets)
        T = _output_weights(cur)
        if mu is None:
            mu = 1e-6 * max(float(np.max(np.diag(A))), 1e-300)
        improved = False
        while mu < 1e12 * max(float(np.max(np.diag(A))), 1e-300):
            try:
                delta = -np.linalg.solve(A + mu * np.eye(g.size), g)
            except np.linalg.LinAlgError:
                mu *= 8.0
                continue
            Z = np.array(cur.Z)
            for k in range(dh):
                Z[k] += bases[k] @ delta[offsets[k]:offsets[k + 1]]
            Tn = T + delta[n_hidden:].reshape(dy, T.shape[1])
            cand = with_hidden(cur, Z, W2=Tn[:, :dh], b2=Tn[:, dh] if cur.has_b2 else None)
            far = np.linalg.norm(cand.as_direction().vector() - z0) > radius
            new = math.inf if far else risk(cand, X, Yp, loss, weight, weight_decay)
            if new < value:
                improved = value - new > 1e-15 * abs(value)
                cur, value, mu, taken = cand, new, mu / 3.0, taken + 1
                break
            mu *= 8.0
        if not improved:
            break
    return cur, taken


def _refit_quadratic(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, lam: float,
                     rcond: float) -> TwoLayerNet:
    """Minimum-change output-layer refit for ``l = (c/2)|yhat - y*|^2``: with features ``F = [O 1]``
    and ``E = -grad l / c``, ``dT = argmin (w c / 2)|F dT' - E|^2 + (lam / 2)|T + dT|^2`` (minimum
    norm, singular values below ``rcond * s_max`` dropped). Exactly zero columns of ``F`` (zero or
    dead neurons) keep their weights when ``lam = 0``."""
    fwd = forward(net, X)
    F = np.hstack([fwd.O, np.ones((fwd.O.shape[0], 1))]) if net.has_b2 else fwd.O
    T = _output_weights(net)  # (dy, nf)
    c = float(np.asarray(loss.hess(fwd.out, Yp))[0, 0, 0])
    E = -np.asarray(loss.grad(fwd.out, Yp)) / c  # (m, dy)
    keep = np.any(F != 0, axis=0) if lam == 0 else np.ones(F.shape[1], bool)
    A, b = np.sqrt(weight * c) * F[:, keep], np.sqrt(weight * c) * E
    if lam:
        A = np.vstack([A, np.sqrt(lam) * np.eye(A.shape[1])])
        b = np.vstack([b, -np.sqrt(lam) * T[:, keep].T])
    dT = np.zeros_like(T)
    if A.shape[1]:
        dT[:, keep] = np.linalg.lstsq(A, b, rcond=rcond)[0].T
    T = T + dT
    return net.with_weights(W2=T[:, :net.dh], b2=T[:, net.dh] if net.has_b2 else None)


def refit(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, weight_decay: float,
          rcond: float = 1e-9) -> TwoLayerNet:
    """The output layer minimising ``R`` with the hidden layer fixed: the minimum-change least-squares
    solution for a quadratic loss, else :func:`sospcheck.snap.refit_output_layer`."""
    if loss.name in _QUADRATIC:
        return _refit_quadratic(net, X, Yp, loss, weight, weight_decay, rcond)
    return refit_output_layer(net, X, Yp, loss, weight, weight_decay)[0]


def _snap_and_refit(net: TwoLayerNet, X, Yp, loss: Loss, weight: float, weight_decay: float, opt: Nearby):
    # snap_to_kinks also refits the output layer, by normal equations: keep its hidden layer only
    snapped, _ = snap_to_kinks(net, X, Yp, loss, weight, weight_decay, opt.snap_tol)
    return refit(with_hidden(net, snapped.Z), X, Yp, loss, weight, weight_decay, opt.refit_rcond)


def nearby_point(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, weight_decay: float = 0.0,
                 nearby: Nearby | dict | None = None) -> tuple[TwoLayerNet, dict]:
    """The nearby kink point of ``net`` (module docstring) and what was done to get there:
    ``zeroed`` and ``merged`` neurons, ``polish_steps``. ``Yp``: targets prepared by ``loss.prepare``;
    ``weight``: the reduction weight; ``nearby``: thresholds (a dict overrides :data:`KINK_POINT`;
    ``radius``, ``max_holds`` and ``hold_tol`` are not used here). The exact stationary point next
    to it is :mod:`sospcheck.nearby_mode`'s."""
    opt = escape_nearby(nearby, KINK_POINT)
    ks = near_zero_neurons(net, X, Yp, opt.zero_tol, half_zero=True) if opt.zero_tol > 0 else []
    cur = zero_neurons(net, ks) if ks else net
    cur, groups = merge_duplicates(cur, X, opt.merge_tol)
    cur = _snap_and_refit(cur, X, Yp, loss, weight, weight_decay, opt)
    cur, steps = polish_within(cur, X, Yp, loss, weight, weight_decay, opt)
    if steps:
        cur = _snap_and_refit(cur, X, Yp, loss, weight, weight_decay, opt)
    return cur, {"zeroed": ks, "merged": groups, "polish_steps": steps}


def polish_within(net: TwoLayerNet, X, Yp, loss: Loss, weight: float, weight_decay: float, opt: Nearby,
                  room: float = math.inf) -> tuple[TwoLayerNet, int]:
    """:func:`polish` with ``opt``'s iterations and size limit, the pairs on their kinks held, within
    ``opt.polish_radius * (1 + |z|)`` and ``room``; ``(net, 0)`` when it does not run."""
    if not opt.polish_iters or X.shape[0] * net.dy * net.n_params > opt.polish_max_size:
        return net, 0
    held = on_kink(net, X, opt.snap_tol) & (np.linalg.norm(net.Z, axis=1) > 0)[None, :]
    radius = min(opt.polish_radius * (1.0 + net.as_direction().norm()), room)
    if radius <= 0:
        return net, 0
    return polish(net, X, Yp, loss, weight, weight_decay, held, int(opt.polish_iters), radius)

"""Exactly stationary instances whose flat directions are shared by several neurons (DESIGN.md section 4).

- :func:`affine_group`: every live neuron affine on the data (no kink point, one slope), the group's
  combined map the exact optimum over affine maps: a local minimum for any convex loss (nearby
  networks compute affine maps, none better). Optional dead and zero-output neurons.
- :func:`split_neuron`: a neuron replaced by exact positive multiples ``c_j Z_k`` with output weights
  ``a_j w_k``, ``sum_j a_j c_j = 1`` (powers of two: the outputs are bit-for-bit the same), so the point
  stays exactly stationary, with the same kink points.
- :func:`stratum_point`: a random small network moved to an exactly stationary point of its stratum
  (kink points at the origin held there), for losses whose stationary points cannot be planted.

Instances are dicts as ``instances.random_kink_instance`` returns (W1, b1, W2, b2, X, Y, s_plus, s_minus,
loss); the helpers at the end run the check and the oracle on them.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, log_softmax, softmax

from oracle import oracle_check


def _loss_value(loss: str, out: np.ndarray, Y: np.ndarray) -> float:
    if loss == "squared":
        return 0.5 * float(np.sum((out - Y.reshape(out.shape)) ** 2))
    if loss == "logistic":
        return float(np.sum(np.logaddexp(0.0, -Y * out[:, 0])))
    return float(-np.sum(log_softmax(out, axis=1)[np.arange(len(Y)), Y.astype(int)]))


def _optimal_affine_map(loss: str, Xb: np.ndarray, Y: np.ndarray, dy: int) -> np.ndarray:
    """``P`` (dy x d) minimising ``sum_i l(P xbar_i, y_i)`` over all affine maps: least squares, or damped
    Newton (cross-entropy with its last row held at 0: softmax is invariant to a common shift)."""
    if loss == "squared":
        return np.linalg.lstsq(Xb, Y.reshape(len(Y), dy), rcond=None)[0].T
    m, d = Xb.shape
    free = 1 if loss == "logistic" else dy - 1
    P = np.zeros((dy, d))
    onehot = None if loss == "logistic" else np.eye(dy)[Y.astype(int)]
    for _ in range(200):
        out = Xb @ P.T
        if loss == "logistic":
            S = expit(out[:, 0])
            G = (Xb.T @ (S - (Y + 1) / 2))[None, :]
            H = Xb.T @ ((S * (1 - S))[:, None] * Xb)
        else:
            S = softmax(out, axis=1)
            G = ((S - onehot).T @ Xb)[:free]
            H = sum(np.kron(np.diag(s) - np.outer(s, s), np.outer(x, x)) for s, x in zip(S[:, :free], Xb))
        if np.linalg.norm(G) < 1e-14 * m:
            break
        step = np.linalg.solve(H, G.ravel()).reshape(free, d)
        t, f0 = 1.0, _loss_value(loss, out, Y)
        while t > 1e-8:
            trial = P.copy()
            trial[:free] -= t * step
            if _loss_value(loss, Xb @ trial.T, Y) <= f0:
                break
            t /= 2
        P = trial
    return P


def _targets(rng, loss: str, m: int, dy: int, n_pairs: int) -> np.ndarray:
    """Targets; for the classification losses the last ``n_pairs`` points repeat the first ones (see
    :func:`affine_group`) with another label, so no affine map separates the data: a finite optimum."""
    if loss == "squared":
        return rng.standard_normal((m, dy))
    h = m - n_pairs
    if loss == "logistic":
        y = rng.choice([-1.0, 1.0], size=h)
        return np.concatenate([y, -y[:n_pairs]])
    y = rng.integers(0, dy, size=h)
    return np.concatenate([y, (y[:n_pairs] + 1 + rng.integers(0, dy - 1, size=n_pairs)) % dy])


def affine_group(rng, n_affine: int = 2, dy: int = 1, loss: str = "squared", s_minus: float = 0.0,
                 n_inactive: int = 0, dead: bool = False, zero: bool = False, m: int = 12, dx: int = 2) -> dict:
    """``n_affine`` affine neurons whose combined map ``sum_k s_k w_k Z_k + b2 e_last`` is the optimal
    affine map (for the classification losses the last ``dx + 1`` points repeat the first ones); the
    first ``n_inactive`` of them sit on their ``s_minus`` side (needs ``s_minus > 0``).
    ``dead``: add a ReLU neuron off on every point; ``zero``: add a neuron with ``w_k = 0``, active on
    every point (its ``g`` vanishes since the residuals are orthogonal to ``[X 1]``)."""
    n_pairs = 0 if loss == "squared" else dx + 1
    X = rng.standard_normal((m, dx))
    X[m - n_pairs:] = X[:n_pairs]
    Xb = np.hstack([X, np.ones((m, 1))])
    Y = _targets(rng, loss, m, dy, n_pairs)
    P = _optimal_affine_map(loss, Xb, Y, dy)
    sign = np.array([-1.0] * n_inactive + [1.0] * (n_affine - n_inactive))
    s = np.where(sign > 0, 1.0, s_minus)
    P_lin, p_b = P[:, :dx], P[:, dx]
    q = min(dy, n_affine)  # the first q neurons are solved for so that the combined map is P
    while True:
        W2 = rng.uniform(0.5, 1.5, (dy, n_affine)) * rng.choice([-1.0, 1.0], (dy, n_affine))
        if n_affine < dy:  # the output weights must span the columns of P_lin
            W2 = P_lin @ rng.standard_normal((dx, n_affine))
        if np.linalg.cond(W2[:, :q]) < 5:
            break
    Z = rng.standard_normal((n_affine, dx + 1))
    rest = (W2[:, q:] * s[q:]) @ Z[q:, :dx]
    Z[:q, :dx] = np.linalg.lstsq(W2[:, :q] * s[:q], P_lin - rest, rcond=None)[0]
    b2 = p_b - (W2 * s) @ Z[:, dx]
    for k in range(n_affine):  # move each neuron to its side of every point, b2 compensating
        N = Xb @ Z[k]
        c = sign[k] * (1.0 + np.max(-sign[k] * N))
        Z[k, -1] += c
        b2 -= s[k] * W2[:, k] * c
    extra_Z, extra_W = [], []
    if dead:
        extra_Z.append(np.append(rng.standard_normal(dx), -50.0))
        extra_W.append(rng.uniform(0.5, 1.5, dy))
    if zero:
        extra_Z.append(np.append(rng.standard_normal(dx), 50.0))
        extra_W.append(np.zeros(dy))
    if extra_Z:
        Z = np.vstack([Z, extra_Z])
        W2 = np.hstack([W2, np.array(extra_W).T])
    return dict(W1=Z[:, :-1], b1=Z[:, -1], W2=W2, b2=b2, X=X, Y=Y, s_plus=1.0, s_minus=s_minus, loss=loss)


def split_neuron(inst: dict, k: int, scales=(1.0, 2.0), shares=(0.5, 0.25)) -> dict:
    """Neuron ``k`` replaced by neurons ``c_j Z_k`` with output weights ``a_j w_k`` (``sum_j a_j c_j = 1``)."""
    assert abs(sum(a * c for a, c in zip(shares, scales)) - 1.0) < 1e-15
    W1, W2 = np.atleast_2d(inst["W1"]), np.atleast_2d(inst["W2"])
    b1 = None if inst["b1"] is None else np.asarray(inst["b1"], float)
    keep = [j for j in range(W1.shape[0]) if j != k]
    W1n = np.vstack([W1[keep]] + [c * W1[k:k + 1] for c in scales])
    W2n = np.hstack([W2[:, keep]] + [a * W2[:, k:k + 1] for a in shares])
    b1n = None if b1 is None else np.concatenate([b1[keep], [c * b1[k] for c in scales]])
    return dict(inst, W1=W1n, b1=b1n, W2=W2n)


def stratum_point(seed: int, loss: str = "logistic", dh: int = 2, dy: int = 1, m: int = 8, s_minus: float = 0.0):
    """A small network (random by ``seed``) at an exactly stationary point of its stratum, or None: 1-D
    inputs with ``b1``, the data include ``x = 0`` and neuron 0 keeps ``b1 = 0``, so that point sits
    exactly on its kink. The risk is minimised with ``b1_0`` held at 0 (L-BFGS, from a random start),
    then :func:`sospcheck.stratum.converge_on_stratum` makes the point stationary to rounding."""
    from scipy.optimize import minimize

    from sospcheck import TwoLayerNet
    from sospcheck.losses import get_loss, risk
    from sospcheck.model import forward
    from sospcheck.stratum import converge_on_stratum

    rng = np.random.default_rng(seed)
    X = np.sort(rng.uniform(-2, 2, m))[:, None]
    X[m // 2] = 0.0
    Y = _targets(rng, loss, m, dy, 0)
    if loss == "logistic":  # two repeated points with flipped labels keep the optimum finite
        X = np.vstack([X, X[[1, -2]]])
        Y = np.concatenate([Y, -Y[[1, -2]]])
    L = get_loss(loss)
    Yp = L.prepare(Y, dy)

    def net_of_vector(v):
        W1, b1 = v[:dh, None], np.concatenate([[0.0], v[dh:2 * dh - 1]])
        W2, b2 = v[2 * dh - 1:2 * dh - 1 + dy * dh].reshape(dy, dh), v[2 * dh - 1 + dy * dh:]
        return TwoLayerNet(W1, b1, W2, b2, 1.0, s_minus)

    v0 = rng.standard_normal(2 * dh - 1 + dy * dh + dy)
    v = minimize(lambda v: risk(net_of_vector(v), X, Yp, L), v0, method="L-BFGS-B",
                 options=dict(maxiter=5000, ftol=1e-15, gtol=1e-12)).x
    net = net_of_vector(v)
    B = forward(net, X).N == 0
    sp = converge_on_stratum(net, X, Yp, L, boundary=B, radius=1.0, max_iter=100)
    if not sp.success:
        return None
    z = sp.net
    b1 = np.array(z.b1)
    b1[0] = 0.0  # exactly on the kink (the stratum holds it there to rounding)
    return dict(W1=np.array(z.W1), b1=b1, W2=np.array(z.W2), b2=np.array(z.b2), X=X, Y=Y, s_plus=1.0,
                s_minus=s_minus, loss=loss)


def net_of(inst: dict):
    from sospcheck import TwoLayerNet

    return TwoLayerNet(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["s_plus"], inst["s_minus"])


def check_of(inst: dict, **kw):
    from sospcheck import check

    return check(net_of(inst), inst["X"], inst["Y"], loss=inst.get("loss", "squared"), fragility=False, **kw)


def shared_rows_in_oracle_coordinates(inst: dict) -> tuple[np.ndarray, set]:
    """The check's shared flat directions as rows over the oracle's ``theta = [vec Z, vec W2, b2]``, and
    the neurons of affine groups (whose bias-shift rows the group's rows replace)."""
    from sospcheck.check import validate_inputs
    from sospcheck.first_order import neuron_tests
    from sospcheck.geometry import boundary_mask
    from sospcheck.options import Tolerances
    from sospcheck.point import evaluate_point
    from sospcheck.quotient import dead_neurons, reduce, span_coordinates

    net, tol = net_of(inst), Tolerances()
    zero = check_of(inst).stats.quotient.zero_output_neurons
    X, Yp, L, weight, lam = validate_inputs(net, inst["X"], inst["Y"], inst.get("loss", "squared"), "sum", 0.0)
    pt = evaluate_point(net, X, Yp, L, weight, lam)
    boundary = boundary_mask(pt.fwd.N, net.Z, pt.fwd.Xbar, tol.boundary)
    neurons = neuron_tests(pt, boundary, tol)
    coords = span_coordinates(pt, tol.rank)
    red = reduce(pt, neurons, boundary, coords, dead_neurons(pt, neurons), zero, tol.rank, tol)
    lay, rows = coords.layout, []
    for g in red.shared:
        for row in g.rows:
            full = np.zeros(lay.n)
            full[g.idx] = row
            U, Nu, c = lay.split(full[:, None])
            dZ = Nu[0] @ coords.V.T
            rows.append(np.concatenate([dZ.ravel(), U[0].ravel()] + ([c[0]] if c is not None else [])))
    affine = {k for g in red.shared if g.kind == "affine" for k in g.neurons}
    return (np.array(rows) if rows else None), affine


def oracle_of(inst: dict, quotient: bool = False):
    """The oracle's verdict; with ``quotient`` the check's shared flat directions are quotiented too."""
    rows, affine = shared_rows_in_oracle_coordinates(inst) if quotient else (None, set())
    return oracle_check(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["X"], inst["Y"],
                        loss=inst.get("loss", "squared"), s_plus=inst["s_plus"], s_minus=inst["s_minus"],
                        extra_rows=rows, no_shift=affine)

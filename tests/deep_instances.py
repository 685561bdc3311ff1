"""Random tiny DEEP instances that sit EXACTLY on kinks, many of them first-order stationary.

Integer ``X`` and weights (|.| <= 2), biases chosen to put data points on units' kinks, leaky slope 0 or
1/2, so every pre-activation is a dyadic rational and ``N == 0`` is exact in float64 (kind
"weight_decay" then balances every unit by rescaling, which keeps the kinks up to a few ulps). Kinks in every
hidden layer; the kink gradients are linearly independent (the deep oracle's requirement).

Kinds: "random" (integer targets), "logistic" / "cross_entropy" (random labels): not planted.
"planted" / "weight_decay" (squared loss): stationarity planted through the residuals ``r`` (``Y = out - r``):
with ``G_+-`` the kink gradients and ``J_+-`` the output Jacobians of the pieces with every kink at
``s_plus`` / ``s_minus``, the conditions are linear in ``r``: the gradient ``J' r + lam theta`` has no
component in ``null(G)``, and ``kappa^+- = G_+-^{+'} (J_+-' r + lam theta)`` has ``kappa^+ >= 0 >= kappa^-``;
random kinks get ``kappa^+ = 0`` and/or ``kappa^- = 0`` (flat rays), the rest a margin. Equalities are
solved by a null space, inequalities by an LP, and ``r`` is rescaled at random (its size decides the
sign of the curvature). Nothing here imports ``sospcheck``; ``tests/deep_oracle.py`` checks the result.
"""

from __future__ import annotations

from itertools import product

import numpy as np
from scipy.linalg import null_space
from scipy.optimize import linprog

from deep_oracle import DeepInstance, dependent_ok, likq_rank

KINDS = ("planted", "weight_decay", "random", "logistic", "cross_entropy")
WEIGHTS = {"planted": 0.55, "weight_decay": 0.15, "random": 0.14, "logistic": 0.08, "cross_entropy": 0.08}


def _architecture(rng, kind):
    D = int(rng.choice([2, 3], p=[0.65, 0.35]))
    widths = [int(w) for w in rng.integers(1, 4 if D == 2 else 3, size=D)]
    dx = int(rng.choice([1, 2]))
    dy = 2 if kind == "cross_entropy" else (1 if kind == "logistic" else int(rng.choice([1, 2], p=[0.85, 0.15])))
    # stationarity with r != 0 needs more residual coordinates than effective parameters
    m = int(rng.integers(3, 7)) if kind in ("random", "logistic", "cross_entropy") else int(rng.integers(7, 13))
    return D, widths, dx, dy, m


def _distinct_points(rng, m, dx):
    """``m`` distinct integer points (duplicates on a kink would make its gradients dependent)."""
    grid = np.array(np.meshgrid(*[np.arange(-7, 8)] * dx)).reshape(dx, -1).T
    return grid[rng.choice(len(grid), size=m, replace=False)].astype(float)


def _plant_kinks(rng, Ws, bs, X, s_minus):
    a = X
    for l in range(len(Ws) - 1):
        for k in range(Ws[l].shape[0]):
            if bs[l] is not None and rng.random() < 0.6:
                i = int(rng.integers(len(X)))
                bs[l][k] = -(Ws[l][k] @ a[i])
        N = a @ Ws[l].T + (0.0 if bs[l] is None else bs[l])
        a = np.where(N > 0, 1.0, s_minus) * N


def random_deep_instance(rng: np.random.Generator, kind: str, max_M: int = 5) -> dict | None:
    """One instance dict (weights, biases, X, Y, s_plus, s_minus, weight_decay, loss, kind), or None when
    the draw fails the requirements (1 <= M <= max_M, independent kink gradients, planting feasible)."""
    D, widths, dx, dy, m = _architecture(rng, kind)
    s_minus = float(rng.choice([0.0, 0.5]))
    dims = [dx] + widths + [dy]
    Ws = [rng.integers(-2, 3, size=(dims[l + 1], dims[l])).astype(float) for l in range(D + 1)]
    bs = [rng.integers(-2, 3, size=dims[l + 1]).astype(float) if rng.random() < 0.85 else None for l in range(D + 1)]
    X = _distinct_points(rng, m, dx)
    _plant_kinks(rng, Ws, bs, X, s_minus)
    lam = float(rng.choice([0.25, 0.5])) if kind == "weight_decay" else 0.0
    if lam:
        balance(Ws, bs)
    loss = kind if kind in ("logistic", "cross_entropy") else "squared"
    Y0 = np.zeros((m, dy)) if loss == "squared" else (np.ones(m) if loss == "logistic" else np.zeros(m, int))
    inst = DeepInstance(Ws, bs, X, Y0, 1.0, s_minus, lam, loss)
    if not 1 <= inst.M <= max_M or likq_rank(inst) < inst.M:
        return None
    out = inst._plain_forward(inst.theta())[0]
    if kind == "random":
        Y = out + rng.integers(-2, 3, size=out.shape)
    elif kind == "logistic":
        Y = rng.choice([-1.0, 1.0], size=m)
    elif kind == "cross_entropy":
        Y = rng.integers(0, dy, size=m)
    else:
        r = _planted_residuals(rng, inst)
        if r is None:
            return None
        Y = out - r
    return dict(weights=Ws, biases=bs, X=X, Y=Y, s_plus=1.0, s_minus=s_minus, weight_decay=lam, loss=loss, kind=kind)


def balance(Ws: list, bs: list, sweeps: int = 200) -> None:
    """Rescale every hidden unit (row and bias times ``c``, outgoing column over ``c``) until its incoming and
    outgoing weights have equal norms, in place: a stationary point of a weight-decayed risk must be
    balanced (the decay's derivative along the rescaling orbit is ``|in|^2 - |out|^2``). The function
    computed is unchanged; kinks stay kinks up to rounding."""
    for _ in range(sweeps):
        worst = 0.0
        for l in range(len(Ws) - 1):
            for k in range(Ws[l].shape[0]):
                a = float(Ws[l][k] @ Ws[l][k]) + (float(bs[l][k] ** 2) if bs[l] is not None else 0.0)
                b = float(Ws[l + 1][:, k] @ Ws[l + 1][:, k])
                if a == 0 or b == 0:
                    continue
                c = (b / a) ** 0.25
                worst = max(worst, abs(np.log(c)))
                Ws[l][k] *= c
                if bs[l] is not None:
                    bs[l][k] *= c
                Ws[l + 1][:, k] /= c
        if worst < 1e-15:
            return


def _planted_residuals(rng, inst: DeepInstance) -> np.ndarray | None:
    M, p, m, dy = inst.M, inst.p, inst.m, inst.dy
    th = inst.theta()
    J, G = {}, {}
    for s in (1, -1):
        jets = inst.jets([s] * M)
        J[s] = jets[-1][1].reshape(m * dy, p)  # d out / d theta
        G[s] = np.array([jets[l][1][i, k] for (i, l, k) in inst.pairs])
    Nw = null_space(G[1])
    P = {s: np.linalg.pinv(G[s]) for s in (1, -1)}
    # kappa^s = P_s' (J_s' r + lam th)   (M,)  ;  gamma = Nw' (J_+' r + lam th)
    K = {s: P[s].T @ J[s].T for s in (1, -1)}
    k0 = {s: P[s].T @ (inst.lam * th) for s in (1, -1)}
    eq_rows, eq_rhs = [Nw.T @ J[1].T], [-(Nw.T @ (inst.lam * th))]
    ineq_rows, ineq_rhs = [], []  # rows c with row . r >= rhs
    for j in range(M):
        u = rng.random()
        flat_plus, flat_minus = u < 0.3 or 0.8 <= u, 0.3 <= u < 0.5 or 0.8 <= u
        for s, flat, sign in ((1, flat_plus, 1.0), (-1, flat_minus, -1.0)):
            if flat:
                eq_rows.append(K[s][j:j + 1])
                eq_rhs.append(-k0[s][j:j + 1])
            else:
                ineq_rows.append(sign * K[s][j])
                ineq_rhs.append(-sign * k0[s][j])
    E = np.vstack(eq_rows)
    e = np.concatenate(eq_rhs)
    r0 = np.linalg.lstsq(E, e, rcond=None)[0]
    if np.linalg.norm(E @ r0 - e) > 1e-9 * max(1.0, np.linalg.norm(e)):
        return None
    B = null_space(E)
    if B.shape[1] == 0:
        return None
    if ineq_rows:
        A = np.array(ineq_rows) @ B
        b = np.array(ineq_rhs) - np.array(ineq_rows) @ r0
        margin = 0.05 * max(1.0, np.abs(A).max())
        res = linprog(rng.standard_normal(B.shape[1]), A_ub=-A, b_ub=-(b + margin),
                      bounds=[(-3, 3)] * B.shape[1], method="highs")
        if res.status != 0:
            return None
        c = res.x
    else:
        c = rng.standard_normal(B.shape[1])
    r = r0 + B @ c
    if inst.lam == 0:
        r = r / max(np.abs(r).max(), 1e-12) * float(np.exp(rng.uniform(np.log(0.05), np.log(20.0))))
    if not np.any(np.abs(r) > 1e-12):
        return None
    return r.reshape(m, dy)


def random_deep_instances(n: int, seed: int = 0, max_M: int = 5, weights: dict | None = None) -> list[dict]:
    """``n`` instances, kinds drawn by ``weights`` (default :data:`WEIGHTS`)."""
    rng = np.random.default_rng(seed)
    w = weights or WEIGHTS
    names = list(w)
    probs = np.array([w[k] for k in names], float)
    probs /= probs.sum()
    out = []
    while len(out) < n:
        kind = str(rng.choice(names, p=probs))
        inst = None
        while inst is None:
            inst = random_deep_instance(rng, kind, max_M)
        out.append(inst)
    return out


def oracle_instance(d: dict) -> DeepInstance:
    return DeepInstance(d["weights"], d["biases"], d["X"], d["Y"], d["s_plus"], d["s_minus"], d["weight_decay"],
                        d["loss"])


# ------------------------------------------------------------------ without the kink qualification
DEPENDENT_KINDS = ("collinear", "origin", "region", "dead")


def _line_points(rng, x0, d, count):
    """``count`` distinct grid points ``x0 + t d`` (``t != 0``), or None."""
    ts = [t for t in range(-7, 8) if t and np.all(np.abs(x0 + t * d) <= 7)]
    if len(ts) < count:
        return None
    return [x0 + t * d for t in rng.choice(ts, size=count, replace=False)]


def _dependent_layer1(rng, kind, W, X):
    """Unit 0 of layer 1 gets three or more kink points whose ``xbar`` are dependent: collinear points (``dx = 2``,
    bias) or points of the plane ``w . x = 0`` (``dx = 3``, no bias). Returns (bias or None, X)."""
    w = W[0]
    if not np.any(w):
        return None
    x0 = X[0]
    if kind == "collinear":
        d = np.array([-w[1], w[0]]) / np.gcd(int(abs(w[0])), int(abs(w[1])))
        pts = _line_points(rng, x0, d, int(rng.integers(2, 4)))
        b = -(w @ x0)
    else:
        u = np.cross(w, np.eye(3)[int(np.argmin(np.abs(w)))])
        v = np.cross(w, u)
        u, v = u / np.gcd.reduce(np.abs(u).astype(int)), v / np.gcd.reduce(np.abs(v).astype(int))
        cand = [a * u + c * v for a, c in ((1, 0), (0, 1), (1, 1), (1, -1), (2, 1), (1, 2)) if True]
        cand = [x for x in cand if np.all(np.abs(x) <= 7)]
        if len(cand) < 3:
            return None
        pts = [cand[j] for j in rng.choice(len(cand), size=min(len(cand), int(rng.integers(3, 5))), replace=False)]
        b = None
    if pts is None:
        return None
    X = X.copy()
    X[len(X) - len(pts):] = pts
    return b, X


def _dependent_layer2(rng, kind, Ws, bs, X, s_minus):
    """``dx = 1``. "dead" (ReLU): the two or three smallest points are dead in every layer-1 unit (thresholds at
    half-integers) and ``b2[0] = 0``, so they sit on the kink of layer-2 unit 0 with the same pre-activation.
    "region": a window of three or four consecutive points is one layer-1 activation region (units 0 and 1 switch
    just outside it) along which layer-2 unit 0 is constant (``W2[0] . d = 0``) and zero."""
    x = np.sort(X[:, 0])
    n1 = Ws[0].shape[0]
    k = int(rng.integers(2, 4))
    if kind == "dead":
        t = 0.5 * (x[k - 1] + x[k])
        Ws[0][:, 0] = rng.integers(1, 3, size=n1)
        bs[0][:] = -Ws[0][:, 0] * t
        bs[1][0] = 0.0
        return True
    a = int(rng.integers(0, len(x) - k + 1))
    lo, hi = x[a] - 0.5, x[a + k] - 0.5 if a + k < len(x) else x[-1] + 0.5
    Ws[0][0, 0], Ws[0][1, 0] = rng.integers(1, 3), -rng.integers(1, 3)
    bs[0][0], bs[0][1] = -Ws[0][0, 0] * lo, -Ws[0][1, 0] * hi
    for u in range(2, n1):  # any further unit: a threshold between grid points
        bs[0][u] = -Ws[0][u, 0] * (float(rng.integers(-7, 7)) + 0.5)
    N1 = X @ Ws[0].T + bs[0]
    inside = (X[:, 0] > lo) & (X[:, 0] < hi)
    S = np.where(N1[np.flatnonzero(inside)[0]] > 0, 1.0, s_minus)
    d = S * Ws[0][:, 0]  # da1/dx on the window
    w2 = np.zeros(n1)
    w2[:2] = [d[1], -d[0]]
    if n1 > 2 or not np.any(w2):
        return False
    Ws[1][0] = w2 / np.gcd.reduce(np.abs(w2).astype(int))
    bs[1][0] = -(Ws[1][0] @ (S * N1[np.flatnonzero(inside)[0]]))
    return True


def random_dependent_instance(rng: np.random.Generator, kind: str, max_M: int = 6, planted: bool = True,
                              ) -> dict | None:
    """A tiny deep instance exactly on kinks whose gradients are linearly dependent (LIKQ fails), the relations
    holding to second order in every piece (``deep_oracle.dependent_ok``), first-order stationary when
    ``planted`` (else random integer targets); None when the draw fails."""
    D = int(rng.choice([2, 3], p=[0.7, 0.3]))
    dx = {"collinear": 2, "origin": 3}.get(kind, 1)
    widths = [int(w) for w in rng.integers(1, 3, size=D)]
    if kind in ("region", "dead"):
        widths[0] = 2 if kind == "region" else int(rng.integers(1, 3))
    dy, m = 1, int(rng.integers(7, 12)) if planted else int(rng.integers(4, 8))
    s_minus = 0.0 if kind == "dead" else float(rng.choice([0.0, 0.5]))
    dims = [dx] + widths + [dy]
    Ws = [rng.integers(-2, 3, size=(dims[l + 1], dims[l])).astype(float) for l in range(D + 1)]
    bs = [rng.integers(-2, 3, size=dims[l + 1]).astype(float) for l in range(D + 1)]
    X = _distinct_points(rng, m, dx)
    if kind in ("collinear", "origin"):
        got = _dependent_layer1(rng, kind, Ws[0], X)
        if got is None:
            return None
        b, X = got
        if len({tuple(x) for x in X}) < len(X):
            return None
        if b is None:
            bs[0] = None
        else:
            bs[0][0] = b
    elif not _dependent_layer2(rng, kind, Ws, bs, X, s_minus):
        return None
    _plant_more(rng, Ws, bs, X, s_minus, skip={(0, 0)} if kind in ("collinear", "origin") else {(1, 0)})
    inst = DeepInstance(Ws, bs, X, np.zeros((m, dy)), 1.0, s_minus, 0.0, "squared")
    if not 3 <= inst.M <= max_M or likq_rank(inst) == inst.M or not dependent_ok(inst):
        return None
    out = inst._plain_forward(inst.theta())[0]
    if planted:
        r = _planted_dependent(rng, inst)
        if r is None:
            return None
        Y = out - r
    else:
        Y = out + rng.integers(-2, 3, size=out.shape)
    return dict(weights=Ws, biases=bs, X=X, Y=Y, s_plus=1.0, s_minus=s_minus, weight_decay=0.0, loss="squared",
                kind=kind + ("" if planted else "_random"))


def _plant_more(rng, Ws, bs, X, s_minus, skip):
    """A few more kinks (as :func:`_plant_kinks`), leaving the units in ``skip`` alone."""
    a = X
    for l in range(len(Ws) - 1):
        for k in range(Ws[l].shape[0]):
            if (l, k) not in skip and bs[l] is not None and rng.random() < 0.35:
                bs[l][k] = -(Ws[l][k] @ a[int(rng.integers(len(X)))])
        N = a @ Ws[l].T + (0.0 if bs[l] is None else bs[l])
        a = np.where(N > 0, 1.0, s_minus) * N


def _planted_dependent(rng, inst: DeepInstance) -> np.ndarray | None:
    """Residuals ``r`` with every linearised cone stationary: for each piece ``sigma`` some ``lam^sigma >= 0`` has
    ``J_sigma' r = sum_j lam^sigma_j sigma_j grad z^sigma_j`` (Farkas). One LP in ``(r, lam)`` with a random
    objective: its vertices leave many ``lam_j = 0``, hence flat rays. None when only ``r = 0`` is feasible."""
    M, p, m, dy = inst.M, inst.p, inst.m, inst.dy
    sigmas = list(product((1, -1), repeat=M))
    nr, nl = m * dy, len(sigmas) * M
    Aeq = np.zeros((len(sigmas) * p, nr + nl))
    for q, sigma in enumerate(sigmas):
        jets = inst.jets(sigma)
        J = jets[-1][1].reshape(m * dy, p)
        G = np.array([jets[l][1][i, k] for (i, l, k) in inst.pairs])
        Aeq[q * p:(q + 1) * p, :nr] = J.T
        Aeq[q * p:(q + 1) * p, nr + q * M:nr + (q + 1) * M] = -(np.array(sigma, float)[:, None] * G).T
    cost = np.r_[rng.standard_normal(nr), -rng.random(nl) * (rng.random(nl) < 0.5)]
    res = linprog(cost, A_eq=Aeq, b_eq=np.zeros(len(Aeq)), bounds=[(-3, 3)] * nr + [(0, 10)] * nl, method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    if res.status != 0:
        return None
    # polish to rounding: project onto the equalities with the LP's support of lam kept (the LP is exact to 1e-10)
    cols = np.r_[np.arange(nr), nr + np.flatnonzero(res.x[nr:] > 1e-9)]
    Nb = null_space(Aeq[:, cols])
    x = Nb @ (Nb.T @ res.x[cols])
    if np.any(x[nr:] < 0):
        return None
    r = x[:nr]
    if np.abs(r).max() < 1e-6:
        return None
    r = r / np.abs(r).max() * float(np.exp(rng.uniform(np.log(0.05), np.log(20.0))))
    return r.reshape(m, dy)


def random_dependent_instances(n: int, seed: int = 0, max_M: int = 6, planted_share: float = 0.8) -> list[dict]:
    """``n`` instances where the kink qualification fails, kinds in turn from :data:`DEPENDENT_KINDS`."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        kind = DEPENDENT_KINDS[len(out) % len(DEPENDENT_KINDS)]
        planted = bool(rng.random() < planted_share)
        inst = None
        while inst is None:
            inst = random_dependent_instance(rng, kind, max_M, planted)
        out.append(inst)
    return out

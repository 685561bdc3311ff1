"""Hand-built instances with known verdicts, one per branch of the algorithm (shared by several tests)."""

import numpy as np

from sospcheck import TwoLayerNet
from sospcheck.losses import get_loss
from sospcheck.snap import refit_output_layer


def refit(net, X, Y, loss="squared", lam=0.0):
    L = get_loss(loss)
    return refit_output_layer(net, X, L.prepare(Y, net.dy), L, 1.0, lam)[0]


def autograd_fooled():
    """Kink point with a_ik < 0: the h'(0)=0 gradient is 0 and its Hessian PSD, yet a ray descends."""
    return TwoLayerNet([[1.0]], [0.0], [[1.0]], [0.0]), np.array([[0.0], [-1.0]]), np.array([1.0, -1.0])


def convex_kink_minimum():
    """x = 0 on the kink with s* = 1/2: both rays ascend; ECQP T1."""
    return (TwoLayerNet([[1.0]], [0.0], [[1.0]], [0.0]), np.array([[-1.0], [0.0], [1.0], [2.0]]),
            np.array([1.0, -2.0, 3.0, 1.0]))


def interpolating_kink_minimum():
    """Zero residuals with x = 0 on the kink: a K pair; both ICQPs T1."""
    return (TwoLayerNet([[1.0]], [0.0], [[1.0]], [0.0]), np.array([[-1.0], [0.0], [1.0], [2.0]]),
            np.array([0.0, 0.0, 1.0, 2.0]))


def smooth_saddle_dy2():
    """No kinks, dy = 2, all points active: the cross term beats Gauss-Newton; ECQP T3.

    r_i = (0, 3 (-1, 1, -1, 1)_i) is orthogonal to what stationarity needs, yet E = sum_i r_i xbar_i' != 0.
    """
    X = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0], [2.0, 1.0]])
    net = TwoLayerNet([[1.0, 0.0]], [0.0], [[1.0], [0.0]], [0.0, 0.0])
    Y = np.array([[1.0, 3.0], [1.0, -3.0], [2.0, 3.0], [2.0, -3.0]])
    return net, X, Y


def overparameterized_interpolation(seed=0):
    """Smooth, zero loss, more parameters than constraints: flat directions; ECQP T2."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((3, 2))
    net = TwoLayerNet(rng.standard_normal((5, 2)), rng.standard_normal(5), rng.standard_normal((1, 5)), [0.3])
    from sospcheck.model import forward
    return net, X, forward(net, X).out


def zero_output_saddle(seed=0):
    """w = 0 for every neuron and residuals orthogonal to [1, O]: stationary; g != 0 gives order-2 descent."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((6, 2))
    net = TwoLayerNet(rng.standard_normal((2, 2)), rng.standard_normal(2), np.zeros((1, 2)), [0.5])
    from sospcheck.model import forward
    F = np.hstack([forward(net, X).O, np.ones((6, 1))])
    r = rng.standard_normal(6)
    r -= F @ np.linalg.lstsq(F, r, rcond=None)[0]
    return net, X, 0.5 - r


def origin(seed=0):
    """Every weight zero (vanishing initialisation), b2 = mean(y): all points on every kink."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((6, 2))
    Y = rng.standard_normal(6)
    return TwoLayerNet(np.zeros((3, 2)), np.zeros(3), np.zeros((1, 3)), [Y.mean()]), X, Y


def with_dead_neuron(net, X, Y):
    """Add a neuron that is off on every point (s_minus = 0): an exactly flat block."""
    W1 = np.vstack([net.W1, np.zeros((1, net.dx))])
    b1 = np.append(net.b1, -1.0)
    W2 = np.hstack([net.W2, np.full((net.dy, 1), 0.7)])
    return TwoLayerNet(W1, b1, W2, net.b2), X, Y


def icqp_unbounded_saddle():
    """dy = 2, two neurons sharing a kink point; Qww singular and coupled to a flat ray: ICQP T3."""
    return (TwoLayerNet([[1.0], [1.0]], [1.0, 1.0], [[1.0, -2.0], [-2.0, 2.0]], [1.0, -2.0]),
            np.array([[-1.0], [2.0], [3.0], [-2.0]]),
            np.array([[3.0, 0.0], [-10.0, -10.0], [3.0, 4.0], [1.0, -2.0]]))


def icqp_copositivity_saddle():
    """dy = 2, three neurons; the Schur complement on the flat rays is not copositive: ICQP T3."""
    return (TwoLayerNet([[2.0], [-2.0], [-2.0]], [4.0, -4.0, -2.0], [[0.0, 1.0, 0.0], [-2.0, 0.0, 2.0]], [-1.0, 1.0]),
            np.array([[-2.0], [1.0], [0.0], [-1.0]]),
            np.array([[-1.0, 5.0], [-2.0, -11.0], [1.0, -7.0], [-2.0, -3.0]]))


def icqp_one_sided_minimum():
    """Leaky ReLU (s_minus = 1/2), a ray flat on one side only (L > K): ICQP T1."""
    return (TwoLayerNet([[-1.0]], [0.0], [[-2.0]], [2.0], s_minus=0.5), np.array([[-1.0], [1.0], [0.0], [-3.0]]),
            np.array([1.0, -1.0, 6.0, -5.0]))


def always_active_minimum(seed=0):
    """One neuron active on every point at the least-squares affine fit: a local minimum whose
    bias shift (b1 up, b2 down by w times as much) is exactly flat and quotiented out."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((30, 3))
    Y = rng.standard_normal(30)
    beta = np.linalg.lstsq(np.hstack([X, np.ones((30, 1))]), Y, rcond=None)[0]
    w, b1 = 2.0, 20.0
    return TwoLayerNet((beta[:3] / w)[None, :], [b1], [[w]], [beta[3] - w * b1]), X, Y


def sparsely_active_minimum(seed=0, m=60, dx=4, dh=3):
    """A planted stationary point (no kink points, every |N_ik| >= 0.4) where neuron 0 is active on
    2 points only: the directions of its weights orthogonal to those 2 points are exactly flat; a
    local minimum."""
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((dh, dx))
    W1 /= np.linalg.norm(W1, axis=1, keepdims=True)
    b1 = rng.uniform(-0.5, 0.5, dh)
    b1[0] = -2.5  # neuron 0 is active only beyond 2.5 along W1[0]
    e0 = W1[0]
    pts = [3.2 * e0 + 0.3 * rng.standard_normal(dx), 3.4 * e0 + 0.3 * rng.standard_normal(dx)]
    while len(pts) < m:
        x = rng.standard_normal(dx)
        N = W1 @ x + b1
        if np.all(np.abs(N) >= 0.4) and N[0] < 0:
            pts.append(x)
    X = np.array(pts)
    net = TwoLayerNet(W1, b1, rng.standard_normal((1, dh)), rng.standard_normal(1))
    N = X @ W1.T + b1
    O = np.maximum(N, 0.0)
    Xbar = np.hstack([X, np.ones((m, 1))])
    G = np.hstack([np.ones((m, 1)), O] + [((N[:, k] > 0) * net.W2[0, k])[:, None] * Xbar for k in range(dh)])
    e = rng.standard_normal(m)
    r = 0.3 * (e - G @ np.linalg.lstsq(G, e, rcond=None)[0])
    return net, X, (O @ net.W2.T + net.b2 - r[:, None])[:, 0]

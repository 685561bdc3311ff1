"""The second-order solvers: the matrix-free Lanczos path against dense eigendecompositions."""

import numpy as np
import pytest

import cases
from sospcheck import TwoLayerNet, check
from sospcheck.subspace import lanczos_min


def test_lanczos_min_converges_to_a_clustered_zero_eigenvalue():
    # ARPACK's relative stopping test cannot be met at lambda_min ~ 0; the residual test here can
    rng = np.random.default_rng(0)
    n = 400
    ev = np.concatenate([np.full(5, 1e-13), rng.uniform(0.5, 2.0, n - 5)])
    Qm, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Qm * ev) @ Qm.T
    kind, theta, y = lanczos_min(lambda x: A @ x, rng.standard_normal(n), 1e-9, max_steps=300)
    assert kind == "converged" and abs(theta) <= 1e-10
    assert np.linalg.norm(A @ y - theta * y) <= 1e-10


def test_lanczos_min_stops_at_the_first_negative_ritz_vector():
    rng = np.random.default_rng(1)
    A = np.diag(np.concatenate([[-1.0], rng.uniform(1, 2, 99)]))
    kind, rq, y = lanczos_min(lambda x: A @ x, rng.standard_normal(100), 1e-9, max_steps=100)
    assert kind == "negative" and rq < -1e-9 and abs(y @ A @ y - rq) < 1e-12


def _planted_stationary(m=1000, dx=40, dh=5, seed=0):
    """A ReLU net without kink points, made exactly stationary by residuals orthogonal to its gradient columns."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, dx))
    net = TwoLayerNet(rng.standard_normal((dh, dx)) / np.sqrt(dx), rng.standard_normal(dh),
                      rng.standard_normal((1, dh)), rng.standard_normal(1))
    N = X @ net.W1.T + net.b1
    O = np.maximum(N, 0.0)
    Xbar = np.hstack([X, np.ones((m, 1))])
    G = np.hstack([np.ones((m, 1)), O] + [((N[:, k] > 0) * net.W2[0, k])[:, None] * Xbar for k in range(dh)])
    e = rng.standard_normal(m)
    r = 0.1 * (e - G @ np.linalg.lstsq(G, e, rcond=None)[0])
    return net, X, (O @ net.W2.T + net.b2 - r[:, None])


@pytest.mark.parametrize("make", [_planted_stationary, cases.always_active_minimum, cases.smooth_saddle_dy2,
                                  cases.icqp_copositivity_saddle, cases.icqp_one_sided_minimum])
def test_matrix_free_and_dense_agree(make):
    net, X, Y = make()
    d = check(net, X, Y, solver="dense", fragility=False)
    f = check(net, X, Y, solver="matrix_free", fragility=False)
    assert d.verdict == f.verdict, (d.summary(), f.summary())
    ed = next((q.min_eig for q in d.stats.qps if q.kind == "ECQP"), None)
    ef = next((q.min_eig for q in f.stats.qps if q.kind == "ECQP"), None)
    if ed is not None and ed > 0:
        assert abs(ed - ef) <= 1e-6 * max(1.0, d.stats.hessian_norm)


def test_flat_directions_of_a_sparsely_active_neuron_are_quotiented():
    # neuron 0 is active on 2 of 60 points: 3 of its 5 weight directions move only negative
    # pre-activations. Without the quotient the ECQP would see them as zero curvature (sosp).
    net, X, Y = cases.sparsely_active_minimum()
    for solver in ("dense", "matrix_free"):
        r = check(net, X, Y, solver=solver, fragility=False)
        assert r.verdict.value == "local_minimum", r.summary()
        assert r.stats.quotient.to_dict()["inactive_directions"] == {"0": 3}
    # with a leaky ReLU the inactive points move the output: nothing is quotiented
    leaky = check(net.with_weights(s_minus=0.01), X, Y, fragility=False)
    assert not (leaky.stats.quotient and leaky.stats.quotient.inactive_directions)

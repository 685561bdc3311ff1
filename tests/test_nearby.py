"""sospcheck.nearby: the nearby kink point of trained weights (zero, merge, snap, polish, refit)."""

import numpy as np
import pytest

from sospcheck import TwoLayerNet
from sospcheck.losses import get_loss, risk
from sospcheck.model import forward
from sospcheck.nearby import Nearby, merge_duplicates, near_zero_neurons, nearby_point, zero_neurons


# ---- the nearby kink point ---------------------------------------------------------------------

def test_tiny_neurons_are_zeroed_and_duplicates_merged_without_changing_the_outputs():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((9, 2))
    Z = rng.standard_normal((2, 3))
    W1 = np.vstack([Z[:, :2], 2.5 * Z[0, :2], 1e-7 * rng.standard_normal(2)])
    b1 = np.concatenate([Z[:, 2], [2.5 * Z[0, 2]], [1e-7]])
    net = TwoLayerNet(W1, b1, np.array([[1.0, -0.5, 0.3, 1e-7]]), [0.1])
    Yp = forward(net, X).out
    assert near_zero_neurons(net, X, Yp, 1e-3, half_zero=True) == [3]
    merged, groups = merge_duplicates(net, X, 1e-9)
    assert groups == [[2, 0]] or groups == [[0, 2]]
    np.testing.assert_allclose(forward(merged, X).out, Yp, atol=1e-12)
    kept, gone = groups[0]
    assert not np.any(merged.Z[gone]) and not np.any(merged.W2[:, gone])
    assert np.linalg.norm(merged.W2[:, kept]) == pytest.approx(np.linalg.norm(merged.Z[kept]))  # balanced


def test_nearby_point_refits_the_output_layer_to_stationarity():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((10, 2))
    Y = rng.standard_normal((10, 1))
    net = TwoLayerNet(rng.standard_normal((3, 2)), rng.standard_normal(3), rng.standard_normal((1, 3)), [0.0])
    L = get_loss("squared")
    near, info = nearby_point(net, X, Y, L, 1.0, 0.0, Nearby(polish_iters=0))
    fwd = forward(near, X)
    F = np.hstack([fwd.O, np.ones((10, 1))])
    assert np.linalg.norm(F.T @ (fwd.out - Y)) <= 1e-10 * np.linalg.norm(F) * np.linalg.norm(fwd.out - Y)
    assert risk(near, X, Y, L) <= risk(net, X, Y, L)
    np.testing.assert_array_equal(near.Z, net.Z)  # nothing near a kink, no polish: the hidden layer stays


def test_near_zero_rule_of_the_check_and_of_the_nearby_point():
    """The check lists tiny neurons only; the nearby point also zeroes neurons with no output but
    nonzero weights (one of Z_k, w_k exactly zero)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((8, 2))
    W1 = np.vstack([rng.standard_normal(2), 1e-6 * rng.standard_normal(2), rng.standard_normal(2), np.zeros(2)])
    b1 = np.array([0.3, 1e-6, -0.2, 0.0])
    W2 = np.array([[1.0, 1e-6, 0.0, 0.0]])
    net = TwoLayerNet(W1, b1, W2, [0.0])
    Yp = forward(net, X).out
    assert near_zero_neurons(net, X, Yp, 1e-3) == [1]
    assert near_zero_neurons(net, X, Yp, 1e-3, half_zero=True) == [1, 2]
    assert near_zero_neurons(net, X, Yp, 0.0, half_zero=True) == [2]  # no output at all: zeroed even at tol 0


@pytest.mark.parametrize("bias", [True, False])
def test_zero_neurons_zeroes_exactly_those_neurons(bias):
    rng = np.random.default_rng(4)
    net = TwoLayerNet(rng.standard_normal((3, 2)), rng.standard_normal(3) if bias else None,
                      rng.standard_normal((2, 3)), rng.standard_normal(2))
    zeroed = zero_neurons(net, [0, 2])
    assert not np.any(zeroed.Z[[0, 2]]) and not np.any(zeroed.W2[:, [0, 2]])
    np.testing.assert_array_equal(zeroed.Z[1], net.Z[1])
    np.testing.assert_array_equal(zeroed.W2[:, 1], net.W2[:, 1])
    assert zeroed.has_b1 == bias and zeroed.b2 is not None
    X = rng.standard_normal((5, 2))
    only = net.with_weights(W2=net.W2 * np.array([0.0, 1.0, 0.0]))
    np.testing.assert_array_equal(forward(zeroed, X).out, forward(only, X).out)


def test_nearby_options_are_validated():
    with pytest.raises(ValueError, match="zero_tol"):
        Nearby(zero_tol=-1)
    with pytest.raises(ValueError, match="unknown"):
        Nearby.from_any({"snap": 1})
    assert Nearby.from_any({"snap_tol": 1e-3}) == Nearby(snap_tol=1e-3)
    with pytest.raises(TypeError, match="nearby"):
        Nearby.from_any(1e-3)

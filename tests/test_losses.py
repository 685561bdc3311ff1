import numpy as np
import pytest

from sospcheck.losses import get_loss, reduction_weight


def fd_grad_hess(loss, out, Y, h=1e-5):
    m, dy = out.shape
    g = np.zeros((m, dy))
    H = np.zeros((m, dy, dy))
    for c in range(dy):
        e = np.zeros(dy)
        e[c] = h
        g[:, c] = (loss.value(out + e, Y) - loss.value(out - e, Y)) / (2 * h)
        H[:, :, c] = (loss.grad(out + e, Y) - loss.grad(out - e, Y)) / (2 * h)
    return g, H


@pytest.mark.parametrize("name,dy,labels", [
    ("squared", 2, lambda rng, m: rng.standard_normal((m, 2))),
    ("logistic", 1, lambda rng, m: rng.choice([-1.0, 1.0], m)),
    ("logistic", 1, lambda rng, m: rng.choice([0.0, 1.0], m)),
    ("cross_entropy", 3, lambda rng, m: rng.integers(0, 3, m)),
])
def test_gradient_and_hessian_match_finite_differences(name, dy, labels):
    rng = np.random.default_rng(1)
    loss = get_loss(name)
    Y = loss.prepare(labels(rng, 7), dy)
    out = rng.standard_normal((7, dy))
    g, H = fd_grad_hess(loss, out, Y)
    np.testing.assert_allclose(loss.grad(out, Y), g, atol=1e-7)
    np.testing.assert_allclose(loss.hess(out, Y), H, atol=1e-6)


def test_cross_entropy_accepts_one_hot_and_logistic_maps_01():
    ce = get_loss("cross_entropy")
    np.testing.assert_array_equal(ce.prepare(np.array([0, 2]), 3), ce.prepare(np.eye(3)[[0, 2]], 3))
    lg = get_loss("logistic")
    np.testing.assert_array_equal(lg.prepare(np.array([0, 1]), 1), [[-1.0], [1.0]])


@pytest.mark.parametrize("name,dy,Y,match", [
    ("logistic", 1, np.array([0.0, 2.0]), "labels in"),
    ("logistic", 2, np.array([0.0, 1.0]), "1 output"),
    ("cross_entropy", 3, np.array([0, 3]), "0..2"),
    ("cross_entropy", 3, np.array([0.5, 1]), "integer"),
    ("cross_entropy", 3, np.array([[1, 1, 0], [0, 0, 1]]), "one-hot"),
    ("cross_entropy", 1, np.array([0, 0]), ">= 2 outputs"),
    ("squared", 2, np.zeros((3, 3)), r"shape \(m, 2\)"),
])
def test_labels_that_do_not_fit_the_loss_are_rejected(name, dy, Y, match):
    with pytest.raises(ValueError, match=match):
        get_loss(name).prepare(Y, dy)


def test_unknown_loss_and_reduction():
    with pytest.raises(ValueError, match="`loss` must be one of"):
        get_loss("hinge")
    with pytest.raises(TypeError, match="triple"):
        get_loss(42)
    with pytest.raises(ValueError, match="`reduction`"):
        reduction_weight("median", 3)
    assert reduction_weight("mean", 4) == 0.25

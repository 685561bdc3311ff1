"""The check's pipeline up to the second order, built piece by piece for tests of its parts; planted
instances and their perturbations."""

import numpy as np

from sospcheck import TwoLayerNet
from sospcheck.check import validate_inputs
from sospcheck.first_order import neuron_tests, output_layer_test
from sospcheck.geometry import boundary_mask
from sospcheck.losses import get_loss
from sospcheck.options import Tolerances
from sospcheck.point import evaluate_point
from sospcheck.quotient import dead_neurons, reduce, span_coordinates


def first_order(net, X, Y, loss="squared", weight_decay=0.0, tol=Tolerances()):
    """``(pt, boundary, output-layer test, neuron tests)`` as the check computes them (sum reduction)."""
    X, Yp, lossobj, weight, lam = validate_inputs(net, X, Y, loss, "sum", weight_decay)
    pt = evaluate_point(net, X, Yp, lossobj, weight, lam)
    boundary = boundary_mask(pt.fwd.N, net.Z, pt.fwd.Xbar, tol.boundary)
    return pt, boundary, output_layer_test(pt, tol), neuron_tests(pt, boundary, tol)


def reduction(net, X, Y, tol=Tolerances()):
    """``(pt, boundary, neurons, Reduction)`` with no zero-output neuron (squared loss)."""
    pt, boundary, _, neurons = first_order(net, X, Y, tol=tol)
    red = reduce(pt, neurons, boundary, span_coordinates(pt, tol.rank), dead_neurons(pt, neurons), [], tol.rank)
    return pt, boundary, neurons, red


def planted(inst):
    """``(net, loss, Yp, B)`` of an instance exactly on its kinks: ``B`` the pairs with ``N_ik == 0``."""
    net = TwoLayerNet(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["s_plus"], inst["s_minus"])
    loss = get_loss(inst["loss"])
    Yp = loss.prepare(inst["Y"], net.dy)
    B = (net.augment(inst["X"]) @ net.Z.T) == 0  # integer instances: exact
    return net, loss, Yp, B


def perturbed(net, X, B, size, rng):
    """``net`` moved by exactly ``size * |z|`` in a random direction in which the held pairs leave
    their kinks on alternating sides (so both sides occur)."""
    z = net.as_direction().vector()
    Xbar = net.augment(X)
    dZ = rng.standard_normal(net.Z.shape)
    for k in range(net.dh):
        idx = np.flatnonzero(B[:, k])
        if idx.size:
            sides = rng.choice([-1.0, 1.0]) * np.where(np.arange(idx.size) % 2 == 0, 1.0, -1.0)
            want = sides * np.linalg.norm(dZ[k]) * np.linalg.norm(Xbar[idx], axis=1)
            dZ[k] += np.linalg.lstsq(Xbar[idx], want - Xbar[idx] @ dZ[k], rcond=None)[0]
    dW2 = rng.standard_normal(net.W2.shape)
    db2 = rng.standard_normal(net.dy) if net.has_b2 else None
    c = size * np.linalg.norm(z) / np.sqrt(np.sum(dZ**2) + np.sum(dW2**2) + (np.sum(db2**2) if net.has_b2 else 0))
    W1 = net.W1 + c * (dZ[:, :-1] if net.has_b1 else dZ)
    b1 = net.b1 + c * dZ[:, -1] if net.has_b1 else None
    return net.with_weights(W1=W1, b1=b1, W2=net.W2 + c * dW2, b2=None if db2 is None else net.b2 + c * db2)

"""The check's pipeline up to the second order, built piece by piece for tests of its parts."""

from sospcheck.check import validate_inputs
from sospcheck.first_order import neuron_tests, output_layer_test
from sospcheck.geometry import boundary_mask
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

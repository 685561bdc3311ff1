"""The quotient record and its set-up: data span, dead neurons, bias shifts, inactive directions."""

import json

import numpy as np

import cases
import pieces
from sospcheck import check
from sospcheck.losses import get_loss
from sospcheck.point import evaluate_point
from sospcheck.quotient import Quotient, span_coordinates


def test_record_writes_the_json_dict_and_one_summary_line():
    q = Quotient(3, 4, [1], [], [0], {2: 5})
    assert q.to_dict() == {"data_span_dim": 3, "full_dim": 4, "dead_neurons": [1], "zero_output_neurons": [],
                           "bias_shift_neurons": [0], "inactive_directions": {"2": 5}, "affine_groups": [],
                           "pattern_groups": [], "duplicate_groups": [], "shared_dims": []}
    assert json.loads(json.dumps(q.to_dict())) == q.to_dict()
    assert q.nontrivial and not Quotient(4, 4).nontrivial and Quotient(3, 4).nontrivial
    assert q.summary_line() == ("quotiented: data span 3/4 dims, dead neurons [1], zero-output neurons [], bias shifts "
                                "of affine neurons [0], inactive directions (neuron: dims) 2: 5")


def _reduction(net, X, Y):
    return pieces.reduction(net, X, Y)[3]


def test_set_up_finds_each_kind_of_flat_block():
    red = _reduction(*cases.sparsely_active_minimum())
    assert red.quotient.inactive_directions == {0: 3} and red.inactive_rows[0].shape == (3, 5)
    assert np.allclose(red.inactive_rows[0] @ red.inactive_rows[0].T, np.eye(3))
    red = _reduction(*cases.always_active_minimum())
    assert red.quotient.bias_shift_neurons == [0] and list(red.shift_rows) == [0]
    net, X, Y = cases.with_dead_neuron(*cases.convex_kink_minimum())
    red = _reduction(net, X, Y)
    lay = red.coords.layout
    assert red.quotient.dead_neurons == [1]
    assert not set(red.keep) & (set(lay.u_index(1)) | set(lay.nu_index(1)))
    assert red.keep.size == lay.n - lay.dy - lay.rho


def test_data_span_is_kept_only_without_weight_decay():
    net, X, Y = cases.convex_kink_minimum()
    X3 = np.hstack([X, 2 * X])  # rank 2 of 3 columns (with the bias)
    net3 = net.with_weights(W1=np.hstack([net.W1, np.zeros((1, 1))]))
    assert check(net3, X3, Y, fragility=False).stats.quotient.data_span_dim == 2
    L = get_loss("squared")
    for lam, rho in ((0.0, 2), (0.1, 3)):  # weight decay is not flat outside the span
        coords = span_coordinates(evaluate_point(net3, X3, L.prepare(Y, 1), L, 1.0, lam), 1e-10)
        assert coords.V.shape == (3, rho) and coords.layout.rho == rho
        assert np.allclose(coords.Xr @ coords.V.T, np.hstack([X3, np.ones((4, 1))]))


def test_orbit_of_a_linear_group_two_ways():
    """At a generic point the orbit tangent (the generators) is the kernel of the group map's differential;
    at a non-generic one (parallel output weights and inputs, dy = 2) it is strictly smaller."""
    from scipy.linalg import subspace_angles

    from sospcheck.shared_flat import _group_differential, _group_generators

    rng = np.random.default_rng(0)
    for a, dy, rho in ((2, 1, 3), (3, 2, 3), (4, 2, 5)):
        W, Nu, s = rng.standard_normal((dy, a)), rng.standard_normal((a, rho)), rng.uniform(0.5, 1, a)
        nu_c = rng.standard_normal(rho)
        G = _group_generators(W, Nu, s, nu_c)
        D = _group_differential(W, Nu, s, nu_c)
        assert np.allclose(D @ G.T, 0, atol=1e-12)  # every generator keeps the map (first order)
        kernel = np.linalg.svd(D)[2][np.linalg.matrix_rank(D):]
        assert np.linalg.matrix_rank(G) == kernel.shape[0]
        assert np.max(subspace_angles(G.T, kernel.T)) < 1e-8
    W, Nu = np.outer([1.0, 2.0], [1.0, 0.5]), np.outer([1.0, 2.0], [1.0, -1.0, 0.5])  # ranks 1 and 1
    G, D = _group_generators(W, Nu, np.ones(2), None), _group_differential(W, Nu, np.ones(2), None)
    assert np.linalg.matrix_rank(G) < D.shape[1] - np.linalg.matrix_rank(D)

"""Flat directions shared by several neurons (DESIGN.md section 4): affine groups and duplicates.

The oracle quotients nothing shared, so where the check certifies ``local_minimum`` it must report no
descent (``sosp``: the shared directions have zero curvature), and with the check's shared rows
added to its own slice it must certify the minimum too. Where a shared move would carry a descent the
check must still find it.
"""

from collections import Counter
from itertools import product

import numpy as np
import pytest

import cases
from instances import random_kink_instance
from oracle import Instance, allowed_basis
from shared_instances import (affine_group, check_of, net_of, oracle_of, shared_rows_in_oracle_coordinates,
                              split_neuron, stratum_point)
from sospcheck import TwoLayerNet
from sospcheck.model import forward


def _verdict(r):
    return r.verdict.value, (r.descent.order if r.descent else None)


def _certified_and_safe(inst):
    """The check certifies a minimum; the oracle finds no descent, and certifies it with the check's rows."""
    r = check_of(inst)
    assert r.verdict.value == "local_minimum", r.summary()
    assert oracle_of(inst).verdict == "sosp"
    assert oracle_of(inst, quotient=True).verdict == "local_minimum"
    return r


@pytest.mark.parametrize("loss,dy", [("squared", 1), ("squared", 2), ("logistic", 1)])
@pytest.mark.parametrize("n_affine", [2, 3])
@pytest.mark.parametrize("s_minus,inactive", [(0.0, 0), (0.5, 1), (0.5, 9)])
def test_affine_groups_are_certified_minima_that_hide_no_descent(loss, dy, n_affine, s_minus, inactive):
    rng = np.random.default_rng(100 * n_affine + 10 * dy + inactive)
    inst = affine_group(rng, n_affine, dy, loss, s_minus, min(inactive, n_affine))
    r = _certified_and_safe(inst)
    q = r.stats.quotient
    assert q.affine_groups == [list(range(n_affine))] and q.duplicate_groups == []
    # at a generic point the orbit is the whole fibre of (W2_A, nu_A, b2) -> W2_A S nu_A + b2 nu_c': its
    # dimension a (dy + rho) + dy minus the rank dy q + p rho - p q of that map's differential
    # (p = rank W2_A, q = rank [nu_A; nu_c]), less the members' own rescalings and bias shifts
    rho, p, q_e = 3, min(dy, n_affine), min(3, n_affine + 1)
    fibre = n_affine * (dy + rho) + dy - (dy * q_e + p * rho - p * q_e)
    assert q.shared_dims == [fibre - 2 * n_affine]
    assert "affine group" in q.summary_line() and q.to_dict()["affine_groups"] == [list(range(n_affine))]


@pytest.mark.parametrize("loss,dy", [("squared", 1), ("squared", 2), ("logistic", 1)])
@pytest.mark.parametrize("s_minus", [0.0, 0.5])
def test_affine_groups_with_dead_and_zero_output_neurons(loss, dy, s_minus):
    rng = np.random.default_rng(7 + dy)
    inst = affine_group(rng, 2, dy, loss, s_minus, 1 if s_minus else 0, dead=s_minus == 0, zero=True)
    r = _certified_and_safe(inst)
    q = r.stats.quotient
    zero = q.zero_output_neurons
    assert len(zero) == 1 and q.affine_groups == [[0, 1] + zero]  # the zero-output neuron trades its u_k
    assert q.dead_neurons == ([2] if s_minus == 0 else [])


def test_cross_entropy_affine_group_hides_no_descent():
    # softmax is invariant to a common shift of the logits: flat directions of the loss itself that
    # neither the check nor the oracle quotients, so both stop at sosp
    for n_affine in (2, 3):
        inst = affine_group(np.random.default_rng(n_affine), n_affine, 3, "cross_entropy", 0.5, 1)
        r = check_of(inst)
        assert r.verdict.value == oracle_of(inst).verdict == "sosp"
        assert r.stats.quotient.affine_groups == [list(range(n_affine))]


def test_a_saddle_of_an_affine_group_is_still_found():
    net, X, Y = cases.smooth_saddle_dy2()  # one always-active neuron, dy = 2: ECQP T3
    inst = dict(W1=net.W1, b1=net.b1, W2=net.W2, b2=net.b2, X=X, Y=Y, s_plus=1.0, s_minus=0.0)
    for scales, shares in (((1.0, 2.0), (0.5, 0.25)), ((1.0, 2.0, 4.0), (0.25, 0.125, 0.125))):
        split = split_neuron(inst, 0, scales, shares)
        r, o = check_of(split), oracle_of(split)
        assert _verdict(r) == (o.verdict, o.order) == ("descent", 2)
        assert r.stats.quotient.affine_groups == [list(range(len(scales)))]


def _kinked_neuron(inst):
    Xb = np.hstack([inst["X"], np.ones((len(inst["X"]), 1))])
    N = Xb @ np.hstack([inst["W1"], inst["b1"][:, None]]).T
    return next((k for k in range(N.shape[1]) if np.any(N[:, k] == 0) and np.any(inst["W2"][:, k] != 0)), None)


def test_duplicates_of_planted_kink_instances_agree_with_the_oracle():
    """A neuron with kink points split into exact positive multiples: the same function, so the same
    stationarity; the check and the oracle agree on descent, and every certified minimum is one for
    the oracle once the check's shared rows are quotiented."""
    rng = np.random.default_rng(3)
    seen, bad = Counter(), []
    for n in range(60):
        kind = ("planted", "dy2", "leaky", "interpolating", "planted_noflat", "zero_column")[n % 6]
        inst = random_kink_instance(rng, kind, max_M=4)
        k = _kinked_neuron(inst)
        if k is None:
            continue
        split = split_neuron(inst, k)
        r, o = check_of(split), oracle_of(split)
        seen[_verdict(r)] += 1
        if (r.verdict.value == "descent") != (o.verdict == "descent"):
            bad.append((n, _verdict(r), (o.verdict, o.order)))
        if r.verdict.value == "local_minimum":
            assert r.stats.quotient.duplicate_groups, n
            if oracle_of(split, quotient=True).verdict != "local_minimum":
                bad.append((n, "quotient", r.stats.quotient.to_dict()))
    assert not bad, bad
    assert seen[("local_minimum", None)] >= 3 and seen[("descent", 2)] >= 3 and seen[("sosp", None)] >= 3, seen


@pytest.mark.parametrize("loss,s_minus,seed", [("logistic", 0.0, 1), ("logistic", 0.0, 2), ("logistic", 0.5, 48),
                                               ("squared", 0.0, 15), ("squared", 0.5, 39)])
def test_duplicates_with_a_kink_point_for_each_loss_and_activation(loss, s_minus, seed):
    inst = stratum_point(seed, loss, dh=2, m=7, s_minus=s_minus)
    assert check_of(inst).verdict.value == "local_minimum"
    for scales, shares in (((1.0, 2.0), (0.5, 0.25)), ((0.5, 1.0, 4.0), (0.5, 0.25, 0.125))):
        split = split_neuron(inst, 0, scales, shares)
        r = _certified_and_safe(split)
        assert r.stats.quotient.duplicate_groups == [[1, 2] if len(scales) == 2 else [1, 2, 3]]


def _kinkless_relu_minimum(dy):
    """One ReLU neuron active on part of the data, no kink point, at a planted stationary point with
    small residuals (Gauss-Newton wins): a local minimum. For dy = 2 the off-kink response
    ``E_off = sum_active r_i xbar_i'`` is nonzero (orthogonal to ``w``)."""
    X = np.array([-2.0, -1.5, -0.75, 0.0, 1.0, 1.5, 2.0, 3.0])[:, None]
    Xb = np.hstack([X, np.ones((8, 1))])
    net = TwoLayerNet([[1.0]], [-0.5], np.eye(dy)[:, :1], np.zeros(dy))
    N = Xb @ net.Z[0]
    O, act = np.maximum(N, 0.0), N > 0
    E = np.eye(dy)
    rows = [np.kron(np.ones(8), e) for e in E] + [np.kron(O, e) for e in E]
    rows += [np.kron(act * Xb[:, j], E[0]) for j in range(2)]
    from scipy.linalg import null_space

    ns = null_space(np.array(rows))
    r = (ns @ np.random.default_rng(0).standard_normal(ns.shape[1])).reshape(8, dy)
    r *= 0.3 / np.abs(r).max()
    Y = forward(net, X).out - r
    return dict(W1=net.W1, b1=net.b1, W2=net.W2, b2=net.b2, X=X, Y=Y, s_plus=1.0, s_minus=0.0)


def _with_neurons(inst, W1, b1, W2):
    return dict(inst, W1=np.vstack([inst["W1"], W1]), b1=np.concatenate([inst["b1"], b1]),
                W2=np.hstack([inst["W2"], W2]))


def test_pattern_groups_with_dead_and_zero_output_neurons():
    """Neurons without kink points sharing one activation pattern (multiples of one neuron, and a
    zero-output neuron active on the same points, so g = 0, not parallel to them) act through one
    matrix, like an affine group: a pattern group; plus a dead neuron."""
    inst = _kinkless_relu_minimum(1)
    assert check_of(inst).verdict.value == "local_minimum"
    split = split_neuron(inst, 0, (1.0, 2.0, 4.0), (0.5, 0.125, 0.0625))
    combo = _with_neurons(split, [[1.0], [2.0]], [-10.0, -0.25], [[0.7, 0.0]])
    r = _certified_and_safe(combo)
    q = r.stats.quotient
    assert (q.dead_neurons, q.zero_output_neurons, q.pattern_groups) == ([3], [4], [[0, 1, 2, 4]])
    assert q.affine_groups == q.duplicate_groups == [] and "pattern group [0, 1, 2, 4]" in q.summary_line()


def test_duplicates_with_kinks_combined_with_dead_neurons():
    # (zero-output multiples of a group with kinks have g = 0 only where the kink residuals vanish:
    # the planted "zero_column" instances above)
    split = split_neuron(stratum_point(15, "squared", dh=2, m=7), 0)  # neuron 0 is dead already
    r = _certified_and_safe(_with_neurons(split, [[1.0]], [-10.0], [[0.7]]))
    assert r.stats.quotient.dead_neurons == [0, 3] and r.stats.quotient.duplicate_groups == [[1, 2]]


def _coupling_to_critical_directions(inst, rows):
    """``max |V_s' H_s d| / |H_s|`` over the oracle's sign patterns ``s``, rows ``d`` and the critical
    subspace ``V_s`` (kink rows and the gradient held, inside the oracle's allowed directions)."""
    o = Instance(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["X"], inst["Y"], inst["s_plus"],
                 inst["s_minus"], loss=inst.get("loss", "squared"))
    S, _ = allowed_basis(o)
    T = o.t_rows()
    worst = 0.0
    for sigma in product((1, -1), repeat=o.M):
        g, H, _ = o.piece(sigma)
        from scipy.linalg import null_space

        V = S @ null_space(np.vstack([T @ S, (g @ S)[None, :]]))
        worst = max(worst, float(np.max(np.abs(V.T @ H @ np.atleast_2d(rows).T))) / np.abs(H).max())
    return worst


def test_shared_rows_are_null_directions_on_the_critical_subspace():
    """Independent of the check's operators: the oracle's exact piece Hessians annihilate the quotiented
    directions on the critical subspace, so no negative curvature can hide behind them."""
    insts = [affine_group(np.random.default_rng(1), 3, 2, "squared", 0.5, 1),
             split_neuron(stratum_point(2, "logistic", dh=2, m=7), 0),
             split_neuron(_kinkless_relu_minimum(2), 0)]
    for inst in insts:
        rows, _ = shared_rows_in_oracle_coordinates(inst)
        assert rows is not None and _coupling_to_critical_directions(inst, rows) < 1e-10


def test_weight_moved_off_the_output_direction_is_not_quotiented():
    """dy = 2 duplicates whose response reaches outside span(w): moving weight along ``w_perp`` couples
    to the input weights (a saddle of the split network, though the single neuron is a minimum). The
    check keeps that move and finds the descent; quotienting it would couple to critical directions."""
    inst = _kinkless_relu_minimum(2)
    assert check_of(inst).verdict.value == oracle_of(inst).verdict == "local_minimum"
    split = split_neuron(inst, 0)
    r, o = check_of(split), oracle_of(split)
    assert _verdict(r) == (o.verdict, o.order) == ("descent", 2)
    # the naive move u_0 = w_perp / |Z_0|, u_1 = -w_perp / |Z_1| in the oracle's coordinates
    net = net_of(split)
    naive = np.zeros(Instance(split["W1"], split["b1"], split["W2"], split["b2"], split["X"], split["Y"]).p)
    nZ = net.dh * 2
    c = np.linalg.norm(net.Z, axis=1)
    naive[nZ + 1 * net.dh + 0], naive[nZ + 1 * net.dh + 1] = 1 / c[0], -1 / c[1]  # W2[1, k] (w_perp = e_2)
    assert _coupling_to_critical_directions(split, naive) > 1e-3
    rows, _ = shared_rows_in_oracle_coordinates(split)
    assert _coupling_to_critical_directions(split, rows) < 1e-10


def test_a_trained_like_network_with_duplicate_families_and_dead_neurons():
    """What training from a small initialisation leaves: each neuron of a minimum split into a family of
    positive multiples at different scales, plus dead neurons. Certified; the groups are reported (the
    family of the neuron with a kink point as duplicates, that of the always-active one as an affine
    group)."""
    inst = stratum_point(2, "squared", dh=2, m=7)
    fam = split_neuron(inst, 0, (0.25, 0.5, 1.0, 2.0), (1.0, 0.5, 0.25, 0.125))
    fam = split_neuron(fam, 0, (1.0, 4.0), (0.5, 0.125))
    W1 = np.vstack([fam["W1"], [[1.0], [-1.0]]])
    b1 = np.concatenate([fam["b1"], [-9.0, -9.0]])
    W2 = np.hstack([fam["W2"], [[0.3, -0.2]]])
    net = dict(fam, W1=W1, b1=b1, W2=W2)
    r = check_of(net)
    q = r.stats.quotient
    assert r.verdict.value == "local_minimum", r.summary()
    assert (q.duplicate_groups, q.affine_groups, q.dead_neurons) == ([[0, 1, 2, 3]], [[4, 5]], [6, 7])
    assert oracle_of(net).verdict != "descent"


def _trained_from_small_initialisation():
    """Full-batch gradient descent from a 1e-3 initialisation on 1-D data (a ReLU target plus noise):
    four of six neurons end aligned (one family), one near zero and dead. Then made exact: the family
    merged, that network moved to an exactly stationary point of its stratum, the family split again
    with the trained proportions (same function, same stationarity)."""
    from sospcheck.losses import get_loss
    from sospcheck.stratum import converge_on_stratum

    rng = np.random.default_rng(0)
    m, dh = 16, 6
    X = np.sort(rng.uniform(-2, 2, m))[:, None]
    Y = np.maximum(X[:, 0] - 0.3, 0) - 0.7 * np.maximum(-X[:, 0] - 0.5, 0) + 0.05 * rng.standard_normal(m)
    Xb = np.hstack([X, np.ones((m, 1))])
    Z, w, b2 = 1e-3 * rng.standard_normal((dh, 2)), 1e-3 * rng.standard_normal(dh), 0.0
    for _ in range(40000):
        N = Xb @ Z.T
        O = np.maximum(N, 0.0)
        r = O @ w + b2 - Y
        w, b2, Z = w - 0.02 * (O.T @ r), b2 - 0.02 * r.sum(), Z - 0.02 * (((N > 0) * np.outer(r, w)).T @ Xb)
    nz = np.linalg.norm(Z, axis=1)
    fam = [k for k in range(dh) if nz[k] > 1e-2 and (Z[k] / nz[k]) @ (Z[0] / nz[0]) > 1 - 1e-4]
    rest = [k for k in range(dh) if k not in fam]
    e = Z[fam].sum(axis=0) / np.linalg.norm(Z[fam].sum(axis=0))
    merged = TwoLayerNet(np.vstack([e[None, :1], Z[rest, :1]]), np.concatenate([[e[1]], Z[rest, 1]]),
                         np.concatenate([[np.sum(nz[fam] * w[fam])], w[rest]])[None, :], [b2])
    L = get_loss("squared")
    z = converge_on_stratum(merged, X, L.prepare(Y, 1), L, radius=1.0).net
    scales = nz[fam] / np.linalg.norm(nz[fam])
    shares = w[fam] / np.sum(scales * w[fam])
    net = TwoLayerNet(np.vstack([c * z.W1[:1] for c in scales] + [z.W1[1:]]),
                      np.concatenate([c * z.b1[:1] for c in scales] + [z.b1[1:]]),
                      np.concatenate([a * z.W2[0, :1] for a in shares] + [z.W2[0, 1:]])[None, :], z.b2)
    return dict(W1=net.W1, b1=net.b1, W2=net.W2, b2=net.b2, X=X, Y=Y, s_plus=1.0, s_minus=0.0), len(fam)


def test_a_network_trained_from_small_initialisation():
    """The aligned family is one pattern group, the near-zero neuron dead: no descent. What is left at
    sosp is one flat direction not quotiented yet: the two live neurons' activation patterns partition
    the data, so raising b2 while lowering each one's bias by b2 / w_k keeps every output (a translation
    shared by neurons with different patterns)."""
    inst, n_family = _trained_from_small_initialisation()
    assert n_family == 4
    r = check_of(inst)
    q = r.stats.quotient
    assert r.verdict.value == "sosp" and q.pattern_groups == [[0, 1, 2, 3]] and q.dead_neurons == [5]
    assert oracle_of(inst).verdict == "sosp"
    net = net_of(inst)
    on = [forward(net, inst["X"]).N[:, k] > 0 for k in (0, 4)]
    assert np.all(on[0] ^ on[1])  # the partition behind the remaining flat direction

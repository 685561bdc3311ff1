"""First order at degenerate kinks (sospcheck.degenerate, DESIGN.md section 9) against brute force and the oracle."""

from collections import Counter
from itertools import product

import numpy as np
import pytest
from scipy.optimize import linprog

from degenerate_instances import KINDS, degenerate_instance, degenerate_instances
from oracle import Instance, oracle_on
from sospcheck import Tolerances, TwoLayerNet
from sospcheck.arrangement import OVER_BUDGET, cone_projection
from sospcheck.check import validate_inputs
from sospcheck.degenerate import (DESCENT, STATIONARY, cell_gradients, cell_product, degenerate_first_order,
                                  degenerate_neuron, kink_terms)
from sospcheck.first_order import neuron_tests, output_layer_test
from sospcheck.geometry import boundary_mask
from sospcheck.point import evaluate_point


def f_direct(Xk, a, c, sp, sm, V):
    """``f_k`` written out once more, for many directions (rows of V)."""
    T = V @ Xk.T
    return V @ c + np.where(T > 0, sp * T, sm * T) @ a


def unit_samples(d, rng, n=40000):
    V = rng.standard_normal((n, d))
    return V / np.linalg.norm(V, axis=1, keepdims=True)


def lp_min_over_all_sign_vectors(Xk, a, c, sp, sm):
    """min over ``sigma in {-1, +1}^M`` (rows, no grouping, no cell enumeration) of the LP
    ``min g_sigma . v`` s.t. ``sigma_i xbar_i . v >= 0``, ``|v|_inf <= 1``."""
    best = 0.0
    for sigma in product((1, -1), repeat=len(Xk)):
        s = np.array(sigma)
        g = c + (np.where(s > 0, sp, sm) * a) @ Xk
        res = linprog(g, A_ub=-(s[:, None] * Xk), b_ub=np.zeros(len(Xk)), bounds=[(-1, 1)] * Xk.shape[1],
                      method="highs")
        best = min(best, res.fun)
    return best


def neuron_cases(seed):
    """(Xk, a, c, s_plus, s_minus) on degenerate kinks: duplicates, parallel pairs, collinear triples,
    rank-deficient sets; ``c`` random, or placed in the zonotope (``c = -sum s_i a_i xbar_i``), or
    stationary by construction (``a >= 0`` with ``s_i`` in the slopes: ``f_k`` convex, 0 a subgradient)."""
    rng = np.random.default_rng(seed)
    line = np.array([[0, 0, 1], [1, 1, 1], [2, 2, 1], [-1, -1, 1]], float)
    sets = [
        np.repeat(rng.integers(-2, 3, size=(2, 3)).astype(float), [2, 2], axis=0),
        np.array([[1.0, 2.0], [-1.0, -2.0], [2.0, 4.0]]),
        np.array([[1.0, 2.0, 0.0], [-2.0, -4.0, 0.0], [0.0, 1.0, 1.0], [0.0, -1.0, -1.0]]),
        line[:3], line, np.vstack([line[:3], line[:1]]),
        rng.integers(-2, 3, size=(5, 2)) @ rng.integers(-2, 3, size=(2, 4)).astype(float),
        np.c_[np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [2, -1, 0]], float), np.ones(5)],
    ]
    out = []
    for Xk in sets:
        if not np.any(Xk):
            continue
        M, d = Xk.shape
        for mode in ("random", "zonotope", "convex", "cancel"):
            sp, sm = (1.0, 0.0) if rng.random() < 0.6 else (1.0, 0.25)
            a = rng.integers(-2, 3, size=M).astype(float)
            if mode == "convex":
                a = np.abs(a)
            if mode == "cancel":  # duplicates with opposite a: the pair is no kink at all
                Xk = np.vstack([Xk, Xk[:1]])
                a = np.r_[a, -a[0]]
            s = rng.choice([sm, (sp + sm) / 2, sp], size=len(a))
            c = -(s * a) @ Xk
            if mode == "random":
                c = rng.integers(-2, 3, size=d).astype(float)
            elif mode == "cancel":
                c = c + 0.5 * rng.standard_normal(d) * (rng.random() < 0.5)
            out.append((mode, Xk, a, c, sp, sm))
    return out


CASES = neuron_cases(0)


@pytest.mark.parametrize("mode,Xk,a,c,sp,sm", CASES, ids=[f"{m}-{i}" for i, (m, *_) in enumerate(CASES)])
def test_first_order_is_the_exact_minimum_of_f_over_unit_directions(mode, Xk, a, c, sp, sm):
    rng = np.random.default_rng(len(Xk) * 7 + Xk.shape[1])
    res = degenerate_first_order(Xk, a, c, sp, sm)
    V = unit_samples(Xk.shape[1], rng)
    f_samples = f_direct(Xk, a, c, sp, sm, V)
    sampled_min = f_samples.min()
    assert res.status in (DESCENT, STATIONARY)
    if res.status == DESCENT:
        v = res.direction
        assert abs(np.linalg.norm(v) - 1) < 1e-12
        assert f_direct(Xk, a, c, sp, sm, v[None, :])[0] == pytest.approx(res.slope, abs=1e-12)
        assert res.slope < -res.threshold
        # the cells give the exact minimum over the unit sphere: no sample does better
        assert res.slope <= sampled_min + 1e-9 * res.scale
        assert np.sign(Xk @ v).astype(int).tolist() == res.cell.tolist() or np.any(np.abs(Xk @ v) < 1e-12)
    else:
        assert sampled_min >= -res.threshold - 1e-12
        # stationary: every g_sigma = W' lam with lam >= 0, and f_k vanishes on the walls lam holds
        walls = res.cells.signs[:, :, None] * res.cells.hyperplanes.normals[None]
        G = cell_gradients(Xk, a, c, sp, sm, res.cells.row_signs())
        assert np.all(res.multipliers >= 0)
        np.testing.assert_allclose(np.einsum("cjd,cj->cd", walls, res.multipliers), G, atol=1e-9 * res.scale)
        for W, lam, p in zip(walls, res.multipliers, res.cells.points):
            held = lam > 1e-9
            # a point of the critical face: the cell's interior point projected onto the held walls, if still in C
            if held.any():
                v = p - np.linalg.pinv(W[held]) @ (W[held] @ p)
                if np.all(W @ v >= -1e-12):
                    assert abs(kink_terms(Xk, a, c, sp, sm, v)) <= 1e-9 * res.scale * max(1.0, np.linalg.norm(v))
    # the textbook LP over every sign vector of the rows agrees on the sign
    lp = lp_min_over_all_sign_vectors(Xk, a, c, sp, sm)
    assert (lp < -1e-9) == (res.status == DESCENT), (lp, res.message)
    if mode == "convex":
        assert res.status == STATIONARY  # 0 is a subgradient of a convex f_k


def test_cell_model_equals_f_inside_each_cell():
    rng = np.random.default_rng(3)
    Xk = np.array([[0, 0, 1], [1, 1, 1], [2, 2, 1], [1, -1, 1], [1, 1, 1]], float)
    a, c = rng.standard_normal(5), rng.standard_normal(3)
    res = degenerate_first_order(Xk, a, c, 1.0, 0.1)
    G = cell_gradients(Xk, a, c, 1.0, 0.1, res.cells.row_signs())
    for g, p in zip(G, res.cells.points):
        assert g @ p == pytest.approx(kink_terms(Xk, a, c, 1.0, 0.1, p), abs=1e-12)
    # Moreau: the steepest slope in a cone is -|P_C(-g)| and P_C(-g) lies in the cone
    walls = res.cells.signs[0][:, None] * res.cells.hyperplanes.normals
    step = cone_projection(walls, -G[0])
    assert np.all(walls @ step >= -1e-12)
    V = unit_samples(3, rng, 20000)
    inside = V[np.all(V @ walls.T >= 0, axis=1)]
    assert (inside @ G[0]).min() >= -np.linalg.norm(step) - 1e-12


def test_cancelling_duplicates_hide_a_descent_from_the_zonotope():
    # f_k(v) = 0.3 x.v: the pair (a = +1, -1 on the same x) is no kink; the Clarke zonotope
    # {0.3 x + (s1 - s2) x} contains 0, but the arrangement has one hyperplane and descends
    x = np.array([1.0, 2.0, 1.0])
    res = degenerate_first_order(np.array([x, x]), np.array([1.0, -1.0]), 0.3 * x)
    assert res.status == DESCENT and res.n_cells == 2 and res.rank_deficiency == 1
    np.testing.assert_allclose(res.direction, -x / np.linalg.norm(x))
    assert res.slope == pytest.approx(-0.3 * np.linalg.norm(x))
    assert degenerate_first_order(np.array([x, x]), np.array([1.0, -1.0]), np.zeros(3)).status == STATIONARY
    # a direction off the data span descends whatever the kinks do
    res = degenerate_first_order(np.array([x, 2 * x]), np.array([1.0, 1.0]), 1e-3 * np.array([2.0, -1.0, 0.0]))
    assert res.status == DESCENT and abs(res.direction @ x) < 1e-12


def test_threshold_scale_and_budget():
    # f(v) = c . v + 3 max(v1, 0) + max(v2, 0): convex, stationary at c = 0
    Xk = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    a = np.ones(3)
    zero = np.zeros(2)
    res = degenerate_first_order(Xk, a, zero)
    assert res.status == STATIONARY and res.scale == pytest.approx(4.0)  # |c| + s_hi sum |a_i| |xbar_i|
    # the slope -c1 along -e1 counts only beyond tol * scale
    assert degenerate_first_order(Xk, a, np.array([1e-7, 0.0]), tol=1e-6).status == STATIONARY
    res = degenerate_first_order(Xk, a, np.array([1e-4, 0.0]), tol=1e-6)
    assert res.status == DESCENT and res.slope == pytest.approx(-1e-4) and res.direction[0] < 0
    res = degenerate_first_order(Xk, a, np.array([-3.5, 0.0]))
    assert res.status == DESCENT and res.direction[0] > 0 and res.slope < -0.5 / np.sqrt(2)
    assert degenerate_first_order(Xk, a, zero, scale=10.0, tol=0.5).threshold == 5.0
    big = np.random.default_rng(0).standard_normal((13, 5))
    res = degenerate_first_order(big, np.ones(13), np.zeros(5), max_cells=100)
    assert res.status == OVER_BUDGET and res.direction is None and res.cells.count > 100 and res.n_lps == 0
    with pytest.raises(ValueError, match="`a`"):
        degenerate_first_order(Xk, np.ones(2), zero)
    with pytest.raises(ValueError, match="`c`"):
        degenerate_first_order(Xk, a, np.zeros(3))
    with pytest.raises(ValueError, match="s_plus"):
        degenerate_first_order(Xk, a, zero, 1.0, 1.0)


def test_cell_product_names_the_dominant_neuron():
    cp = cell_product({0: 6, 2: 32, 5: 4}, max_cells=500)
    assert cp.total == 768 and cp.dominant == 2 and cp.over_budget
    assert not cell_product({1: 2}).over_budget and cell_product({}).dominant is None
    with pytest.raises(ValueError):
        cell_product({0: 0})


# ------------------------------------------------------------------------- whole networks vs the oracle
TOL = Tolerances()


def first_order_by_neurons(inst):
    """Steps 1-2 of the check and, for every neuron on a kink, :func:`degenerate_neuron` (valid with
    or without Assumption 2). Returns (descent found, [(k, result)], point)."""
    net = TwoLayerNet(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["s_plus"], inst["s_minus"])
    X, Yp, loss, weight, lam = validate_inputs(net, inst["X"], inst["Y"], inst["loss"], "sum", 0.0)
    pt = evaluate_point(net, X, Yp, loss, weight, lam)
    boundary = boundary_mask(pt.fwd.N, net.Z, pt.fwd.Xbar, TOL.boundary)
    found = not output_layer_test(pt, TOL).stationary
    results = []
    for nt in neuron_tests(pt, boundary, TOL):
        if nt.M == 0:
            found |= not nt.stationary
            continue
        res = degenerate_neuron(pt, nt, TOL)
        results.append((nt, res))
        found |= res.status == DESCENT
    return found, results, net


INSTANCES = degenerate_instances(11, 80) + [degenerate_instance(np.random.default_rng(100 + j), k)
                                            for j, k in enumerate(KINDS)]


def test_degenerate_first_order_agrees_with_the_oracle_on_degenerate_networks():
    seen, hidden = Counter(), 0
    for n, inst in enumerate(INSTANCES):
        o = oracle_on(inst)
        found, results, net = first_order_by_neurons(inst)
        assert found == (o.verdict == "descent" and o.order == 1), (n, inst["kind"], o.verdict, o.order)
        seen[(inst["kind"], o.verdict, o.order)] += 1
        oi = Instance(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["X"], inst["Y"], inst["s_plus"],
                      inst["s_minus"], 0.0, inst["loss"])
        for nt, res in results:
            assert res.status != OVER_BUDGET
            if nt.k in inst["degenerate"]:
                assert res.rank_deficiency > 0
            if res.status == DESCENT:
                # the direction lowers the TRUE risk (oracle's own forward pass) at small steps
                dZ = np.zeros_like(oi.Z)
                dZ[nt.k] = res.direction
                eta = np.concatenate([dZ.ravel(), np.zeros(oi.p - oi.nZ)])
                for t in (1e-4, 1e-6):
                    assert oi.risk(t * eta) < oi.risk(), (n, nt.k, t)
                hidden += nt.stationary  # Clarke (BVLS) stationary, yet a descent
    assert len(seen) >= 15 and hidden >= 3, (seen, hidden)


def test_generator_builds_exact_degenerate_kinks_of_every_kind():
    for k in KINDS:
        inst = degenerate_instance(np.random.default_rng(7), k)
        Xb = np.hstack([inst["X"], np.ones((len(inst["X"]), 1))]) if inst["b1"] is not None else inst["X"]
        Z = np.hstack([inst["W1"], inst["b1"][:, None]]) if inst["b1"] is not None else inst["W1"]
        N = Xb @ Z.T
        assert inst["kind"] == k and 1 <= int((N == 0).sum()) <= 6
        for j in inst["degenerate"]:
            B = N[:, j] == 0
            assert np.linalg.matrix_rank(Xb[B]) < B.sum()
        if k == "several":
            assert len(inst["degenerate"]) >= 2
        if k == "origin_pair":
            assert inst["b1"] is None
        if k in ("mixed_sign", "cancelling"):  # a duplicated kink point of neuron 0 with a of both signs
            b2 = inst["b2"] if inst["b2"] is not None else 0.0
            out = (np.where(N > 0, 1.0, inst["s_minus"]) * N) @ inst["W2"].T + b2
            a = (out - inst["Y"].reshape(out.shape)) @ inst["W2"][:, 0]
            on = np.flatnonzero(N[:, 0] == 0)
            pairs = [(i, j) for i in on for j in on if i < j and np.array_equal(inst["X"][i], inst["X"][j])]
            ok = [a[i] * a[j] < 0 and (k == "mixed_sign" or a[i] + a[j] == 0) for i, j in pairs]
            assert any(ok), (pairs, a)

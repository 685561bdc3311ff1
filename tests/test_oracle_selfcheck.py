"""Self-checks of the brute-force oracle (tests/oracle.py) and the kink-instance generator
(tests/instances.py), independent of ``sospcheck`` (nothing here imports it).

Hand-built cases have answers derived by hand in their docstrings. ``python3 tests/test_oracle_selfcheck.py
[N] [kind]`` prints the verdict distribution over N generated instances (also printed by
``pytest -s -k distribution``).
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from instances import KINDS, random_instances, random_kink_instance  # noqa: E402
from oracle import Instance, loss_terms, oracle_check, oracle_on  # noqa: E402

ONE = dict(W1=[[1.0]], b1=[0.0], W2=[[1.0]], b2=[0.0])  # h(x), ReLU


def vk(o):
    return (o.verdict, o.order)


def make_instance(inst: dict) -> Instance:
    return Instance(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["X"], inst["Y"], inst["s_plus"],
                    inst["s_minus"], inst.get("weight_decay", 0.0), inst.get("loss", "squared"))


def lowers_true_risk(I: Instance, eta: np.ndarray) -> bool:
    """R(z + eps eta) < R(z) for some eps in 1, 1/2, ..., 2^-24 (true piecewise-linear network)."""
    R0 = I.risk()
    for eps in 2.0 ** -np.arange(0, 25):
        if I.risk(eps * eta) < R0 - 1e-13 * max(1.0, abs(R0)):
            return True
    return False


# --------------------------------------------------------------------------- hand-built examples
def test_convex_kink_is_strict_local_minimum():
    """x = 0 on the kink, r = yhat - y = (-1, 2, -2, 1, 0): sum r = 0, r.O = 0, and the Z-gradient
    sum_{active} r_i (x_i, 1) + s r_0 (0, 1) = (0, -1) + 2 s (0, 1) = 0 at s = 1/2 (interior), a = 2 > 0:
    both one-sided slopes (1 - 1/2) 2 and (1/2 - 0) 2 are positive, so t = db1 = 0 on the critical
    cone; there Gauss-Newton on {du = dw} is ((dc)^2 twice + (2dw+dc)^2 + (4dw+dc)^2 + (6dw+dc)^2)/2 > 0."""
    X = np.array([[-1.0], [0.0], [1.0], [2.0], [3.0]])
    o = oracle_check(**ONE, X=X, Y=np.array([1.0, -2.0, 3.0, 1.0, 3.0]))
    assert vk(o) == ("local_minimum", None)
    assert (o.M, o.L, o.K, o.dim_S) == (1, 0, 0, 3)


def test_concave_kink_is_first_order_descent():
    """x1 = 0 on the kink, x2 = -1 dead, r = (-1, 1): Clarke-stationary (s = 0), but a = w r_1 = -1 < 0:
    moving the kink to the left (t = db1 > 0) gives slope r_1 w t = -t."""
    I = Instance(**ONE, X=[[0.0], [-1.0]], Y=[1.0, -1.0])
    o = oracle_check(**ONE, X=[[0.0], [-1.0]], Y=np.array([1.0, -1.0]))
    assert vk(o) == ("descent", 1) and o.value < 0
    dZ, _, _ = I.split(o.witness)
    assert dZ[0, 1] > 0  # t = db1 > 0
    assert lowers_true_risk(I, o.witness)


def test_flat_ray_into_dead_region_is_sosp():
    """Same geometry, r = (1, -1): a = 1 > 0 with s* = 0 = s_minus, so the ray t < 0 is flat; in that
    region the neuron is dead on every point and (dw, du) = (1, 1) (orthogonal to the rescaling orbit,
    t = 0) has exactly zero curvature; no negative curvature anywhere: sosp."""
    o = oracle_check(**ONE, X=[[0.0], [-1.0]], Y=np.array([-1.0, 1.0]))
    assert vk(o) == ("sosp", None)
    assert (o.L, o.K) == (1, 0)


def test_smooth_strict_minimum():
    """No kink: N = x = (-1, 1, 2, 3); r = (0, 1, -2, 1) is orthogonal to 1, O and (x, 1) on the active
    set, E = sum_i J_i r_i xbar_i' = 0, so H = Gauss-Newton, positive definite on {du = dw}."""
    X = np.array([[-1.0], [1.0], [2.0], [3.0]])
    o = oracle_check(**ONE, X=X, Y=np.array([0.0, 0.0, 4.0, 2.0]))
    assert vk(o) == ("local_minimum", None) and o.M == 0


def test_smooth_saddle_negative_curvature():
    """w = 0, all-zero output, r = (1, -2, 1) on x = (-1, 1, 2): stationary, but E = (0, -1), so the
    quadratic is -du db + GN(du, dc); (du, db, dc) = (1, 2, -1) gives -2 + 1 < 0: second-order descent."""
    X = np.array([[-1.0], [1.0], [2.0]])
    inst = dict(W1=[[1.0]], b1=[0.0], W2=[[0.0]], b2=[0.0], X=X, Y=np.array([-1.0, 2.0, -1.0]))
    o = oracle_check(**inst)
    assert vk(o) == ("descent", 2) and o.value < 0
    assert lowers_true_risk(Instance(**inst), o.witness)


def test_zero_curvature_interpolation_is_sosp():
    """x = (0, 1), yhat = y: r = 0, H = GN of rank 2 on the 3-dim {du = dw}; in the region t = db <= 0,
    (dw, db, du, dc) = (1, -2, 1, 0) leaves both outputs unchanged to first order: sosp."""
    o = oracle_check(**ONE, X=[[0.0], [1.0]], Y=np.array([0.0, 1.0]))
    assert vk(o) == ("sosp", None)
    assert o.K == 1  # r = 0: a = 0, flat both ways


def test_dead_neuron_is_quotiented_out():
    """The convex-kink minimum plus a dead neuron (N = -x - 5 < 0 on all data, s_minus = 0): exactly
    flat (u, v) block removed, still a local minimum. With s_minus = 0.5 it is alive (leaky)."""
    X = np.array([[-1.0], [0.0], [1.0], [2.0], [3.0]])
    Y = np.array([1.0, -2.0, 3.0, 1.0, 3.0])
    net = dict(W1=[[1.0], [-1.0]], b1=[0.0, -5.0], W2=[[1.0, 1.0]], b2=[0.0])
    o = oracle_check(**net, X=X, Y=Y)
    assert vk(o) == ("local_minimum", None) and o.removed["dead"] == [1]


def test_zero_output_neuron_with_vanishing_cross_term_is_quotiented_out():
    """x = (-2, -1, 1, 2, 3), neuron 1 = relu(x) with w = 1, neuron 2 = relu(x + 3) with w = 0 (all
    active), r = (0, 0, 1, -2, 1): sum r (x, 1) = 0 so E_2 = 0 for every region, v_2 is removed (c);
    the remaining Gauss-Newton on (dw1 = du1, db1, du2, dc) has full rank 4 on the 5 outputs."""
    X = np.array([[-2.0], [-1.0], [1.0], [2.0], [3.0]])
    net = dict(W1=[[1.0], [1.0]], b1=[0.0, 3.0], W2=[[1.0, 0.0]], b2=[0.0])
    o = oracle_check(**net, X=X, Y=np.array([0.0, 0.0, 0.0, 4.0, 2.0]))
    assert vk(o) == ("local_minimum", None) and o.removed["flat_v"] == [1]


def test_data_in_a_lower_dimensional_affine_hull():
    """The convex-kink minimum with a constant-zero second input: W1[:, 1] changes nothing (a)."""
    X = np.array([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    Y = np.array([1.0, -2.0, 3.0, 1.0, 3.0])
    for w in ([[1.0, 0.0]], [[1.0, 2.0]]):
        o = oracle_check(w, [0.0], [[1.0]], [0.0], X, Y)
        assert vk(o) == ("local_minimum", None) and o.removed["null_dims"] == 1


def test_zero_output_copy_at_a_kink_is_second_order_descent():
    """The convex-kink minimum plus a copy of its neuron with w = 0: the copy's pair is a K pair and
    E_2(sigma) = (0, -1 + 2 s_sigma) != 0, so u_2 E_2 v_2 beats Gauss-Newton (~ u_2^2) for large db_2."""
    X = np.array([[-1.0], [0.0], [1.0], [2.0], [3.0]])
    inst = dict(W1=[[1.0], [1.0]], b1=[0.0, 0.0], W2=[[1.0, 0.0]], b2=[0.0], X=X,
                Y=np.array([1.0, -2.0, 3.0, 1.0, 3.0]))
    o = oracle_check(**inst)
    assert vk(o) == ("descent", 2) and o.K == 1 and o.L == 1
    assert lowers_true_risk(Instance(**inst), o.witness)


def test_logistic_and_cross_entropy_saddle():
    """W2 = 0, b2 = 0: outputs 0, r_i = -y_i / 2 with y = (+, -, -, +) on x = (-1, 1, 2, 3): sum y = 0,
    y.O = 0 (stationary), E = sum_active r_i (x_i, 1) = (0, 1/2) != 0: second-order descent. The
    two-class softmax with the same labels is the same problem."""
    X = np.array([[-1.0], [1.0], [2.0], [3.0]])
    y = np.array([1.0, -1.0, -1.0, 1.0])
    inst = dict(W1=[[1.0]], b1=[0.0], W2=[[0.0]], b2=[0.0], X=X, Y=y)
    o = oracle_check(**inst, loss="logistic")
    assert vk(o) == ("descent", 2)
    assert lowers_true_risk(Instance(**inst, loss="logistic"), o.witness)
    ce = dict(inst, W2=[[0.0], [0.0]], b2=[0.0, 0.0], Y=(y < 0).astype(int))
    o = oracle_check(**ce, loss="cross_entropy")
    assert vk(o) == ("descent", 2)
    assert lowers_true_risk(Instance(**ce, loss="cross_entropy"), o.witness)


def test_weight_decay_smooth_minimum_and_non_stationary():
    """x = 0, Z = (0, 1), w = 1, b2 = 1, y = 3, lam = 1: r = -1, gradients r w2 + b1 = 0,
    r b1 + w2 = 0, r + b2 = 0; Hessian on (b1, w2, b2) = ones - [[0,1,0],[1,0,0],[0,0,0]] + I =
    [[2,0,1],[0,2,1],[1,1,2]] (minors 2, 4, 4) and 1 on w1: strict minimum. Without decay the same
    point has G_W2 = r O = -1 != 0: first-order descent."""
    net = dict(W1=[[0.0]], b1=[1.0], W2=[[1.0]], b2=[1.0], X=[[0.0]], Y=np.array([3.0]))
    assert vk(oracle_check(**net, weight_decay=1.0)) == ("local_minimum", None)
    assert vk(oracle_check(**net)) == ("descent", 1)


def test_legacy_positional_form_and_M_cap():
    X = np.array([[-1.0], [0.0], [1.0], [2.0], [3.0]])
    Y = np.array([1.0, -2.0, 3.0, 1.0, 3.0])
    a = oracle_check([[1.0]], [0.0], [[1.0]], [0.0], X, Y, 1.0, 0.0, 0.0)  # (.., s_plus, s_minus, lam)
    assert vk(a) == ("local_minimum", None)
    with pytest.raises(ValueError):
        oracle_check(**ONE, X=np.zeros((11, 1)), Y=np.zeros(11))


# ------------------------------------------------------------- the smooth pieces are right
@pytest.mark.parametrize("loss", ["squared", "logistic", "cross_entropy"])
def test_piece_derivatives_match_finite_differences(loss):
    """g_sigma, H_sigma (exact, from Jacobians) against central differences of the frozen-slope risk,
    and the true risk equals the piece's risk on small perturbations inside the region."""
    rng = np.random.default_rng(3)
    kind = {"squared": "planted", "logistic": "logistic_random", "cross_entropy": "cross_entropy_random"}[loss]
    for _ in range(3):
        inst = random_kink_instance(rng, kind)
        I = make_instance(dict(inst, weight_decay=0.3))
        sigma = tuple(int(s) for s in rng.choice([-1, 1], size=I.M))
        g, H, _ = I.piece(sigma)
        h = 1e-5
        E = np.eye(I.p)
        g_fd = np.array([(I.piece_risk(sigma, h * e) - I.piece_risk(sigma, -h * e)) / (2 * h) for e in E])
        assert np.allclose(g, g_fd, atol=1e-5 * max(1, np.abs(g).max()))
        h = 1e-3  # the piece is a polynomial of degree 4 in theta for squared loss
        H_fd = np.array([[(I.piece_risk(sigma, h * (a + b)) - I.piece_risk(sigma, h * (a - b))
                           - I.piece_risk(sigma, h * (b - a)) + I.piece_risk(sigma, -h * (a + b))) / (4 * h * h)
                          for b in E] for a in E])
        assert np.allclose(H, H_fd, atol=1e-4 * max(1, np.abs(H).max()))
        T = I.t_rows()
        for _ in range(5):  # a random direction, and the region it lies in
            eta = rng.normal(size=I.p)
            sig = tuple(int(s) for s in np.where(T @ eta >= 0, 1, -1))
            for eps in (1e-3, 1e-4):
                assert np.isclose(I.risk(eps * eta), I.piece_risk(sig, eps * eta), rtol=1e-12, atol=1e-12)


def test_loss_terms_derivatives():
    rng = np.random.default_rng(0)
    out = rng.normal(size=(4, 2))
    for loss, Y in [("squared", rng.normal(size=(4, 2))), ("cross_entropy", np.array([0, 1, 1, 0])),
                    ("logistic", np.array([1.0, -1.0, 1.0, -1.0]))]:
        o = out[:, :1] if loss == "logistic" else out
        v, r, Hl = loss_terms(loss, o, Y if loss != "squared" else Y[:, : o.shape[1]])
        Yp = Y if loss != "squared" else Y[:, : o.shape[1]]
        h = 1e-6
        for c in range(o.shape[1]):
            e = np.zeros_like(o)
            e[:, c] = h
            vp, rp, _ = loss_terms(loss, o + e, Yp)
            vm, rm, _ = loss_terms(loss, o - e, Yp)
            assert np.allclose((vp - vm) / (2 * h), r[:, c], atol=1e-7)
            assert np.allclose((rp - rm) / (2 * h), Hl[:, :, c], atol=1e-6)


# ------------------------------------------------------------------- generator properties
def test_generator_instances_are_exact_kinks():
    for inst in random_instances(7, 80, "any"):
        I = make_instance(inst)
        for name in ("X", "W1", "W2"):
            a = np.asarray(inst[name], float)
            assert np.all(a == np.round(a)), name
        assert 1 <= I.M <= 8
        assert not np.any(np.all(I.Z == 0, axis=1))
        for k in range(I.dh):  # Assumption 2
            Bk = I.Xb[I.N[:, k] == 0]
            assert np.linalg.matrix_rank(Bk) == len(Bk) if len(Bk) else True
        if inst["kind"] in ("planted", "planted_noflat", "zero_column", "dy2", "leaky", "interpolating",
                            "weight_decay", "logistic", "cross_entropy"):
            # output layer exactly stationary, in float64: sum r + lam b2 = 0, r' O + lam W2' = 0
            r = I.residuals()
            O = np.where(I.N > 0, I.sp, I.sm) * I.N
            assert np.all(r.T @ O + I.lam * I.W2 == 0)
            if I.b2 is not None:
                assert np.all(r.sum(axis=0) + I.lam * I.b2 == 0)


def test_generator_is_reproducible():
    a, b = random_instances(11, 5, "any"), random_instances(11, 5, "any")
    for x, y in zip(a, b):
        assert all(np.array_equal(np.asarray(x[k]), np.asarray(y[k])) for k in ("X", "Y", "W1", "W2"))


# ------------------------------------------------------------------ witnesses on random instances
def test_every_witness_lowers_the_true_risk():
    n_desc = Counter()
    for inst in random_instances(21, 50, "any"):
        o = oracle_on(inst, weight_decay=inst["weight_decay"])
        if o.verdict == "descent":
            n_desc[o.order] += 1
            assert lowers_true_risk(make_instance(inst), o.witness), (inst["kind"], o)
    assert n_desc[1] >= 5 and n_desc[2] >= 5, n_desc


# ------------------------------------------------------------------------- verdict distribution
def verdict_distribution(n: int = 300, seed: int = 0, kind: str = "any", verbose: bool = True):
    """Run the oracle on n generated instances; returns (Counter of verdicts and L>0 / K>0 counts,
    per-kind Counters, per-M timings)."""
    seen, by_kind, times = Counter(), defaultdict(Counter), defaultdict(list)
    for inst in random_instances(seed, n, kind):
        t = time.perf_counter()
        o = oracle_on(inst, weight_decay=inst["weight_decay"])
        times[o.M].append(time.perf_counter() - t)
        v = f"{o.verdict}-{o.order}" if o.order else o.verdict
        seen[v] += 1
        by_kind[inst["kind"]][v] += 1
        seen["L>0"] += bool(o.L)
        seen["K>0"] += bool(o.K)
    if verbose:
        print(f"\nverdicts over {n} instances (kind={kind!r}, seed={seed}): {dict(seen)}")
        for k in sorted(by_kind):
            print(f"  {k:22s} {dict(by_kind[k])}")
        for M in sorted(times):
            print(f"  M={M}: {len(times[M]):4d} instances, mean {np.mean(times[M]) * 1e3:7.1f} ms, "
                  f"max {np.max(times[M]) * 1e3:7.1f} ms")
    return seen, by_kind, times


def test_verdict_distribution_covers_everything():
    seen, by_kind, _ = verdict_distribution(300, seed=0, kind="any")
    for v in ("descent-1", "descent-2", "sosp", "local_minimum"):
        assert seen[v] >= 10, seen
    assert seen["L>0"] >= 30 and seen["K>0"] >= 30, seen
    assert set(by_kind) == set(KINDS)


if __name__ == "__main__":
    verdict_distribution(int(sys.argv[1]) if len(sys.argv) > 1 else 300,
                         kind=sys.argv[2] if len(sys.argv) > 2 else "any")

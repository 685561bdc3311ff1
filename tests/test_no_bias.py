"""Networks without b1 and/or b2, zero and near-zero neurons (the vanishing-initialisation setting)."""

import numpy as np
import pytest

import cases
from sospcheck import Direction, TwoLayerNet, Verdict, check
from sospcheck.cli import main
from sospcheck.model import forward


def test_bias_free_net_has_fewer_parameters_and_no_b2_direction():
    rng = np.random.default_rng(0)
    net = TwoLayerNet(rng.standard_normal((3, 2)), None, rng.standard_normal((1, 3)), None)
    assert net.n_params == 9 and net.Z.shape == (3, 2)
    X = rng.standard_normal((7, 2))
    np.testing.assert_allclose(forward(net, X).out, np.maximum(X @ net.W1.T, 0) @ net.W2.T)
    r = check(net, X, rng.standard_normal(7))
    assert r.verdict == Verdict.DESCENT and r.descent.direction.b1 is None and r.descent.direction.b2 is None


def test_stationary_without_b2_is_not_descent_through_a_phantom_b2():
    # one neuron, no biases; residuals orthogonal to O and to the neuron's gradient, but sum r != 0.
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    net = TwoLayerNet([[1.0, 1.0]], None, [[1.0]], None)
    out = forward(net, X).out[:, 0]  # [1, 1, 2, 0]; point 4 inactive
    r = np.array([0.0, 0.0, 0.0, 1.0])  # only the inactive point has a residual
    Y = out - r
    with_bias = check(TwoLayerNet([[1.0, 1.0]], [0.0], [[1.0]], [0.0]), X, Y)
    assert with_bias.verdict == Verdict.DESCENT and with_bias.descent.test == "output-layer gradient"
    no_bias = check(net, X, Y)
    assert no_bias.verdict != Verdict.DESCENT or no_bias.descent.test != "output-layer gradient"
    assert no_bias.stats.output_gradient_norm == 0.0


def test_zero_neuron_origin_without_biases_gives_verified_descent():
    # teacher-student at the origin: every weight zero, no biases, all points on every kink
    rng = np.random.default_rng(3)
    X = rng.standard_normal((8, 2))
    Y = np.maximum(X @ np.array([1.0, -0.5]), 0.0)
    net = TwoLayerNet(np.zeros((2, 2)), None, np.zeros((1, 2)), None)
    r = check(net, X, Y)
    assert r.stats.M == 16
    assert r.verdict == Verdict.DESCENT and r.descent.order == 2 and r.descent.test == "zero_output"
    assert r.descent.direction.b1 is None


def test_zero_neurons_certified_non_descent_when_g_vanishes():
    # zero neuron next to a fitted neuron: g == 0, so it offers no descent of order <= 2; its u_k
    # (multiplying O_k = 0) is flat to second order, and a fourth-order gain is possible in general,
    # so the honest verdict is sosp, not local_minimum
    net, X, Y = cases.interpolating_kink_minimum()
    net2 = TwoLayerNet(np.vstack([net.W1, [[0.0]]]), np.append(net.b1, 0.0), np.hstack([net.W2, [[0.0]]]), net.b2)
    r = check(net2, X, Y)
    assert r.stats.quotient.zero_output_neurons == [1]
    assert r.verdict == Verdict.SOSP
    assert any("zero-output neuron(s) [1]" in e for e in r.established)


def test_near_zero_neuron_is_reported_with_what_zeroing_changes():
    net, X, Y = cases.convex_kink_minimum()
    net2 = TwoLayerNet(np.vstack([net.W1, [[1e-6]]]), np.append(net.b1, 1e-6), np.hstack([net.W2, [[1e-6]]]), net.b2)
    r = check(net2, X, Y)
    assert r.stats.near_zero["neurons"] == [1]
    assert abs(r.stats.near_zero["loss_change_if_zeroed"]) < 1e-9
    assert r.stats.near_zero["verdict_if_zeroed"] in {"local_minimum", "sosp", "descent"}
    assert "near-zero neurons [1]" in r.summary()


def test_cli_absent_bias_keys_need_the_flags(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, 2))
    p = tmp_path / "p.npz"
    np.savez(p, W1=np.zeros((2, 2)), W2=np.zeros((1, 2)), X=X, Y=np.maximum(X[:, 0], 0))
    assert main(["check", "--params", str(p), "--data", str(p), "--loss", "squared"]) == 2
    assert "lacks key(s) ['b1', 'b2']" in capsys.readouterr().err
    out = tmp_path / "d.npz"
    rc = main(["check", "--params", str(p), "--data", str(p), "--loss", "squared", "--no-bias1", "--no-bias2",
               "--direction-out", str(out), "--quiet"])
    assert rc == 0 and capsys.readouterr().out.strip() == "descent"
    assert set(np.load(out).files) == {"W1", "W2"}
    q = tmp_path / "q.npz"
    np.savez(q, W1=np.zeros((2, 2)), b1=np.zeros(2), W2=np.zeros((1, 2)), X=X, Y=X[:, 0])
    assert main(["check", "--params", str(q), "--data", str(q), "--loss", "squared", "--no-bias1", "--no-bias2"]) == 2
    assert "--no-bias1" in capsys.readouterr().err


@pytest.mark.parametrize("b1,b2", [(None, [0.0]), ([0.0, 0.0], None)])
def test_mixed_bias_variants_run(b1, b2):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((5, 2))
    net = TwoLayerNet(rng.standard_normal((2, 2)), b1, rng.standard_normal((1, 2)), b2)
    r = check(net, X, rng.standard_normal(5))
    assert r.verdict == Verdict.DESCENT and (r.descent.direction.b1 is None) == (b1 is None)
    assert (r.descent.direction.b2 is None) == (b2 is None)

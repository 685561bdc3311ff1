"""Nearby mode (DESIGN.md 8.6): the verdict at the exact stationary point next to the weights, the
point each statement is about, snap's bounded refit, and the CLI / JSON / PyTorch / escape entry points."""

import json

import numpy as np
import pytest

import cases
from instances import random_kink_instance
from oracle import oracle_on
from pieces import perturbed, planted
from sospcheck import TwoLayerNet, Verdict, check
from sospcheck.cli import main
from sospcheck.geometry import boundary_mask
from sospcheck.losses import get_loss, risk
from sospcheck.nearby import Nearby, with_hidden
from sospcheck.nearby_mode import NEARBY_TOLERANCES, rebalance, rescaled_distance
from sospcheck.point import evaluate_point
from sospcheck.snap import snap_to_kinks
from sospcheck.verify import verify_descent


def _draw(rng, want: str, order: int | None = None, tries: int = 300, **kw):
    """A planted instance whose oracle verdict is ``want`` (and descent ``order``), the oracle's result."""
    for _ in range(tries):
        inst = random_kink_instance(rng, kw.pop("kind", "planted_noflat"), max_M=4, **kw)
        o = oracle_on(inst)
        if o.verdict == want and (order is None or o.order == order):
            return inst, o
    pytest.fail(f"no {want} instance in {tries} draws")


# ---- oracle instances, perturbed -----------------------------------------------------------------

@pytest.mark.parametrize("seed,size", [(0, 1e-9), (1, 1e-9), (2, 1e-6), (3, 1e-6)])
def test_a_perturbed_local_minimum_is_recovered_at_the_perturbation_distance(seed, size):
    rng = np.random.default_rng([13, seed])
    inst, _ = _draw(rng, "local_minimum", kind="planted")
    net, loss, Yp, B = planted(inst)
    X = inst["X"]
    start = perturbed(net, X, B, size, rng)
    r = check(start, X, inst["Y"], fragility=False, nearby=True)
    if size >= 1e-6:  # the leftover gradient is above the plain check's relative tolerance 1e-7
        assert r.verdict == Verdict.DESCENT and r.descent.order == 1
    assert r.point == "input" and r.summary().splitlines()[0].endswith("at your weights")
    nb = r.nearby
    assert nb.success and nb.verdict == Verdict.LOCAL_MINIMUM, nb.message
    assert 0.5 * size <= nb.relative_distance <= 2 * size
    znorm = np.linalg.norm(net.as_direction().vector())
    assert np.linalg.norm(nb.net.as_direction().vector() - net.as_direction().vector()) <= size * znorm  # no farther
    assert nb.residual <= 1e-12 and nb.steps >= 1 and nb.loss_change <= 0
    assert nb.result.tolerances == NEARBY_TOLERANCES
    assert nb.result.stats.M == B.sum()  # every planted kink pair held exactly
    assert nb.headline().startswith("nearby: local_minimum (minimum) at z*")
    # the radius within which z* is the minimum, and whether the user's weights lie inside it
    rad = nb.result.certified_radius
    assert rad is not None and rad.value > 0 and rad.what_is_proven, rad
    assert nb.certified_radius == rad.value and nb.inside_certified_radius == (nb.rescaled_distance <= rad.value)
    assert any(line.startswith("z* is the minimum within radius r*") for line in nb.detail_lines())
    assert r.to_dict()["nearby"]["check"]["certified_radius"]["value"] == pytest.approx(rad.value)
    assert r.certified_radius is None  # asked for at z* only


@pytest.mark.parametrize("seed", range(3))
def test_a_perturbed_saddle_gives_its_second_order_descent_at_z_star_and_at_the_users_point(seed):
    rng = np.random.default_rng([17, seed])
    inst, o = _draw(rng, "descent", order=2)
    net, loss, Yp, B = planted(inst)
    X = inst["X"]
    start = perturbed(net, X, B, 1e-9, rng)
    r = check(start, X, inst["Y"], fragility=False, nearby=True)
    nb = r.nearby
    assert nb.success and nb.verdict == Verdict.DESCENT and nb.result.descent.order == 2, nb.message
    assert nb.relative_distance <= 2e-9
    # the same direction lowers R at the user's weights as well: verified there, on the true loss
    pt = evaluate_point(start, X, Yp, loss, 1.0, 0.0)
    v = verify_descent(pt, nb.result.descent.direction, boundary_mask(pt.fwd.N, start.Z, pt.fwd.Xbar, 1e-9))
    assert v.verified and v.curvature < 0


def test_far_from_any_stationary_point_there_is_no_nearby_verdict():
    rng = np.random.default_rng(3)
    X = 1.0 + rng.random((20, 2))
    Y = rng.standard_normal(20)
    net = TwoLayerNet([[1.0, 0.5]], [0.2], [[0.3]], [0.1])  # the least-squares fit of this piece is O(1) away
    r = check(net, X, Y, fragility=False, nearby=True)
    nb = r.nearby
    assert not nb.success and nb.verdict is None and nb.result is None and nb.net is None
    assert nb.status == "radius_exceeded" and nb.distance is None and nb.loss_change is None
    assert r.verdict == Verdict.DESCENT  # the plain verdict at the user's weights is still given
    head = r.summary().splitlines()
    assert head[0].startswith("verdict: descent") and head[0].endswith("at your weights")
    assert head[1].startswith("nearby: no stationary point within nearby_radius 0.001")
    assert "no verdict about a far point" in head[1]
    d = json.loads(r.to_json())["nearby"]
    assert d["success"] is False and d["verdict"] is None and d["check"] is None and d["distance"] is None
    # with room enough the same iteration finds the fit
    wide = check(net, X, Y, fragility=False, nearby=True, nearby_radius=10.0).nearby
    assert wide.success and wide.relative_distance > 1e-3


def test_a_crossing_pair_near_its_kink_is_held_and_the_iteration_restarted():
    # the kink minimum of cases.convex_kink_minimum (x = 0 on the kink, multiplier 1/2) with x = 0
    # moved 2e-7 (relative) onto the active side: beyond the mask (1e-7), within hold_tol (1e-6). The
    # active piece's own stationary point lies past the kink, so the first run would cross x = 0
    net, X, Y = cases.convex_kink_minimum()
    start = net.with_weights(b1=net.b1 + 2e-7 * np.sqrt(5.0))
    r = check(start, X, Y, fragility=False, nearby=True)
    nb = r.nearby
    assert nb.added == [(1, 0)] and nb.success, nb.message
    assert nb.held == 1 and nb.result.stats.M == 1 and nb.verdict == Verdict.LOCAL_MINIMUM
    assert nb.distance == pytest.approx(2e-7 * np.sqrt(5.0), rel=1e-6)
    far = check(start, X, Y, fragility=False, nearby={"hold_tol": 1e-7}).nearby
    assert not far.success and far.status == "left_stratum" and far.added == []


def test_negligible_neurons_are_zeroed_only_within_the_radius():
    rng = np.random.default_rng([13, 5])
    inst, _ = _draw(rng, "local_minimum", kind="planted")
    net, _, _, _ = planted(inst)
    X, Y = inst["X"], inst["Y"]

    def plus(size, w):  # one more neuron, |Z_k| = size sqrt(d), w_k = w
        return with_hidden(net, np.vstack([net.Z, np.full(net.Z.shape[1], size)]),
                           W2=np.hstack([net.W2, np.full((net.dy, 1), w)]))

    nb = check(plus(1e-6, 1e-6), X, Y, fragility=False, nearby=True).nearby
    assert nb.success and nb.zeroed == [net.dh], nb.message
    assert not np.any(nb.net.Z[net.dh]) and not np.any(nb.net.W2[:, net.dh])
    # the same neuron 0.1 large (output weight 1e-4) is negligible by its output, but zeroing it would
    # move the weights by more than the radius
    assert check(plus(0.1, 1e-4), X, Y, fragility=False, nearby=True).nearby.zeroed == []


def test_with_weight_decay_distances_are_measured_modulo_rescaling():
    rng = np.random.default_rng(8)
    inst = random_kink_instance(rng, "weight_decay", max_M=4)
    net, loss, Yp, B = planted(inst)
    X, lam = inst["X"], inst["weight_decay"]
    c = np.linspace(1.05, 1.2, net.dh)  # the decay term's slow direction: an imbalance of 5-20%
    start = perturbed(net, X, B, 1e-9, rng)
    start = start.with_weights(W1=start.W1 * c[:, None], b1=start.b1 * c, W2=start.W2 / c[None, :])
    assert rescaled_distance(start, rebalance(start)) <= 1e-12 * np.linalg.norm(start.as_direction().vector())
    r = check(start, X, inst["Y"], weight_decay=lam, fragility=False, nearby=True)
    nb = r.nearby
    assert nb.success and nb.verdict == oracle_on(inst, weight_decay=lam).verdict, nb.message
    assert nb.relative_distance > 1e-2 and nb.relative_rescaled_distance <= 1e-8
    assert nb.loss_change < 0 and "modulo rescaling" in nb.headline()


def test_a_neuron_orthogonal_to_every_residual_is_stationary_at_z_star():
    # demo example (c), an order-2 saddle with a neuron whose w_k is orthogonal to every r_i: at z*,
    # computed in floating point, its a_ik are rounding noise, and so is its subgradient
    from sospcheck.demo import EXAMPLES

    ex = EXAMPLES[2]
    exact = check(ex.net, ex.X, ex.Y, fragility=False)
    r = check(ex.net.with_weights(b2=ex.net.b2 + 1e-6), ex.X, ex.Y, fragility=False, nearby=True)
    nb = r.nearby
    assert nb.success and nb.relative_distance <= 1e-6
    assert nb.verdict == exact.verdict == Verdict.DESCENT and nb.result.descent.order == exact.descent.order == 2


# ---- snap keeps its move small, and says when it moved ----------------------------------------------

def _refit_far_point():
    """The issue's hand-built point: no data near any kink, a verified first-order descent; the
    output-layer refit would move ``W2`` by 5.75 and the loss from 2.0 to 1/3."""
    s = np.sqrt(5 / 3) / 5.75
    X = np.array([[1.0], [2.0], [3.0]])
    return TwoLayerNet([[s]], [0.0], [[-5.75]], [1 / 3 + 2 * s * 5.75]), X, np.array([0.0, 1.0, 0.0])


def test_snap_refits_the_output_layer_only_within_its_bound():
    net, X, Y = _refit_far_point()
    L = get_loss("squared")
    unbounded, info = snap_to_kinks(net, X, Y[:, None], L, 1.0, 0.0, 1e-5, refit_radius=np.inf)
    assert info.dW2_norm == pytest.approx(5.75) and info.loss_before == pytest.approx(2.0)
    assert info.loss_after == pytest.approx(1 / 3)
    assert check(unbounded, X, Y).verdict == Verdict.LOCAL_MINIMUM  # what snap=True used to report
    r = check(net, X, Y, snap=True)
    assert r.verdict == Verdict.DESCENT and r.descent.order == 1 and r.point == "input"
    assert not r.snap.refit and r.snap.refit_move > 5.75 and r.snap.dW2_norm == 0.0
    assert r.snap.refit_radius == pytest.approx(1e-5 * np.linalg.norm(net.as_direction().vector()))
    assert "output layer not refit" in r.summary()
    # nearby mode bounds the refit by nearby_radius instead
    wide = check(net, X, Y, snap=True, nearby=True, nearby_radius=10.0, fragility=False)
    assert wide.snap.refit and wide.point == "snapped" and wide.verdict == Verdict.LOCAL_MINIMUM
    assert "at the snapped point, not your weights" in wide.summary().splitlines()[0]


def test_a_verdict_about_a_snapped_point_says_so_in_the_headline():
    net, X, Y = cases.convex_kink_minimum()
    r = check(net.with_weights(b1=net.b1 + 1e-8), X, Y, snap=True)
    head = r.summary().splitlines()[0]
    assert r.point == "snapped" and head.startswith("verdict: local_minimum (minimum) at the snapped point")
    assert json.loads(r.to_json())["point"] == "snapped"
    from rich.console import Console

    from sospcheck.report import render

    console = Console(record=True, width=200)
    console.print(render(r))
    assert "at the snapped point, not your weights" in console.export_text()
    assert check(net, X, Y).summary().splitlines()[0] == "verdict: local_minimum (minimum)"  # plain: unchanged


# ---- the entry points share one implementation ---------------------------------------------------

def test_report_json_and_rich_say_which_point_each_statement_is_about():
    rng = np.random.default_rng([13, 0])
    inst, _ = _draw(rng, "local_minimum", kind="planted")
    net, _, _, B = planted(inst)
    r = check(perturbed(net, inst["X"], B, 1e-6, rng), inst["X"], inst["Y"], nearby=True)
    d = json.loads(r.to_json())
    assert d["point"] == "input" and d["verdict"] == "descent"
    nb = d["nearby"]
    assert nb["point"] == "nearby" and nb["verdict"] == "local_minimum" and nb["check"]["verdict"] == "local_minimum"
    assert {"distance", "relative_distance", "loss_change", "steps", "residual"} <= set(nb)
    assert nb["check"]["tolerances"]["boundary"] == NEARBY_TOLERANCES.boundary and nb["check"]["nearby"] is None
    from rich.console import Console

    from sospcheck.report import render

    console = Console(record=True, width=200)
    console.print(render(r))
    text = console.export_text()
    assert "verdict: descent" in text and "at your weights" in text
    assert "verdict at z*: local_minimum" in text and "nearby stationary point z*" in text


def test_escape_uses_the_same_nearby_mode():
    from sospcheck.escape import nearby_check

    rng = np.random.default_rng([13, 1])
    inst, _ = _draw(rng, "local_minimum", kind="planted")
    net, _, _, B = planted(inst)
    start = perturbed(net, inst["X"], B, 1e-9, rng)
    nc = nearby_check(start, inst["X"], inst["Y"], nearby=Nearby(), fragility=False)
    nb = check(start, inst["X"], inst["Y"], nearby=True, fragility=False).nearby
    assert nc.nearby is not None and nc.result is nc.nearby.result and nc.net is nc.nearby.net
    np.testing.assert_array_equal(nc.net.as_direction().vector(), nb.net.as_direction().vector())
    assert nc.result.verdict == nb.verdict == Verdict.LOCAL_MINIMUM


def test_check_model_takes_nearby_too():
    torch = pytest.importorskip("torch")
    from sospcheck.torch import check_model, to_torch

    rng = np.random.default_rng([13, 2])
    inst, _ = _draw(rng, "local_minimum", kind="planted")
    net, _, _, B = planted(inst)
    start = perturbed(net, inst["X"], B, 1e-9, rng)
    model = to_torch(start)
    r = check_model(model, torch.tensor(inst["X"]), torch.tensor(inst["Y"]),
                    torch.nn.MSELoss(reduction="sum"), nearby=True, fragility=False)
    assert r.nearby.verdict == Verdict.LOCAL_MINIMUM and r.nearby.relative_distance <= 2e-9


def test_nearby_arguments_are_validated():
    net, X, Y = cases.convex_kink_minimum()
    with pytest.raises(ValueError, match="nearby_radius"):
        check(net, X, Y, nearby_radius=1e-3)
    with pytest.raises(ValueError, match="radius"):
        check(net, X, Y, nearby=True, nearby_radius=-1.0)
    with pytest.raises(TypeError, match="nearby"):
        check(net, X, Y, nearby="yes")
    with pytest.raises(ValueError, match="unknown"):
        check(net, X, Y, nearby={"radius_": 1.0})
    assert check(net, X, Y, nearby={"radius": 1e-2}).nearby.radius == 1e-2


# ---- the command line ------------------------------------------------------------------------------

@pytest.fixture
def perturbed_files(tmp_path):
    rng = np.random.default_rng([13, 3])
    inst, _ = _draw(rng, "local_minimum", kind="planted")
    net, _, _, B = planted(inst)
    start = perturbed(net, inst["X"], B, 1e-6, rng)
    params, data = tmp_path / "p.npz", tmp_path / "d.npz"
    np.savez(params, W1=start.W1, b1=start.b1, W2=start.W2, b2=start.b2, s_plus=start.s_plus, s_minus=start.s_minus)
    np.savez(data, X=inst["X"], Y=inst["Y"])
    return tmp_path, str(params), str(data), start


def test_cli_nearby_writes_z_star_as_a_params_file(perturbed_files, capsys):
    tmp, params, data, start = perturbed_files
    zfile, rfile = tmp / "z.npz", tmp / "r.json"
    assert main(["check", "--params", params, "--data", data, "--loss", "squared", "--nearby", "--nearby-out",
                 str(zfile), "--json", str(rfile), "--no-fragility"]) == 0
    out = capsys.readouterr().out
    assert "verdict: descent" in out and "verdict at z*: local_minimum" in out
    report = json.loads(rfile.read_text())
    assert report["nearby"]["verdict"] == "local_minimum" and report["verdict"] == "descent"
    assert set(np.load(zfile).files) == {"W1", "b1", "W2", "b2", "s_plus", "s_minus"}
    assert main(["check", "--params", str(zfile), "--data", data, "--loss", "squared", "--quiet",
                 "--tolerances", json.dumps(NEARBY_TOLERANCES.to_dict())]) == 0
    assert capsys.readouterr().out.strip() == "local_minimum"  # z* read back: the same verdict
    assert main(["check", "--params", params, "--data", data, "--loss", "squared", "--nearby", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == "descent; nearby: local_minimum"


def test_cli_direction_out_holds_the_direction_at_z_star(tmp_path, capsys):
    rng = np.random.default_rng([17, 0])
    inst, _ = _draw(rng, "descent", order=2)
    net, _, _, B = planted(inst)
    start = perturbed(net, inst["X"], B, 1e-9, rng)
    params, data, dfile = tmp_path / "p.npz", tmp_path / "d.npz", tmp_path / "dir.npz"
    np.savez(params, W1=start.W1, b1=start.b1, W2=start.W2, b2=start.b2, s_plus=start.s_plus, s_minus=start.s_minus)
    np.savez(data, X=inst["X"], Y=inst["Y"])
    assert main(["check", "--params", str(params), "--data", str(data), "--loss", "squared", "--nearby",
                 "--direction-out", str(dfile), "--json", "-", "--no-fragility"]) == 0
    report = json.loads(capsys.readouterr().out)
    at_star = report["nearby"]["check"]["descent"]
    assert at_star["order"] == 2
    np.testing.assert_array_equal(np.load(dfile)["W1"], np.array(at_star["direction"]["W1"]))


def test_cli_nearby_options_fail_before_any_work(perturbed_files, capsys):
    tmp, params, data, _ = perturbed_files
    base = ["check", "--params", params, "--data", data, "--loss", "squared"]
    assert main(base + ["--nearby-out", str(tmp / "z.npz")]) == 2
    assert "--nearby-out needs --nearby" in capsys.readouterr().err
    assert main(base + ["--nearby", "--nearby-out", str(tmp / "missing" / "z.npz")]) == 2
    assert "--nearby-out" in capsys.readouterr().err
    assert main(base + ["--nearby", "--nearby-radius", "-1"]) == 2
    assert "radius" in capsys.readouterr().err
    assert not (tmp / "z.npz").exists()


def test_cli_no_stationary_point_writes_no_z_star(tmp_path, capsys):
    rng = np.random.default_rng(3)
    X = 1.0 + rng.random((20, 2))
    params, data, zfile = tmp_path / "p.npz", tmp_path / "d.npz", tmp_path / "z.npz"
    np.savez(params, W1=[[1.0, 0.5]], b1=[0.2], W2=[[0.3]], b2=[0.1])
    np.savez(data, X=X, Y=rng.standard_normal(20))
    assert main(["check", "--params", str(params), "--data", str(data), "--loss", "squared", "--nearby",
                 "--nearby-out", str(zfile), "--no-fragility"]) == 0
    captured = capsys.readouterr()
    assert "no stationary point within nearby_radius" in captured.out and "nothing written" in captured.err
    assert not zfile.exists()

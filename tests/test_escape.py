"""sospcheck.escape and sospcheck.nearby: stall detection, the nearby kink point, escape steps, the training loop."""

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import cases  # noqa: E402
from sospcheck import TwoLayerNet, Verdict  # noqa: E402
from sospcheck.escape import (EscapePolicy, SaddleEscape, StallConfig, StallDetector, best_new_neuron,  # noqa: E402
                              escape_step, nearby_check, neuron_size_bound, polish, train_with_escapes)
from sospcheck.losses import get_loss, risk  # noqa: E402
from sospcheck.model import forward  # noqa: E402
from sospcheck.torch import from_torch, to_torch  # noqa: E402

torch.set_num_threads(1)


def origin_saddle():
    """Every hidden weight zero, b2 = mean(y): torch's gradient is exactly zero (relu'(0) = 0 and
    W2 = 0), so GD never moves, yet a teacher neuron fits the residual: an order-2 saddle."""
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5], [0.5, -1.0], [-0.7, -0.7]])
    Y = 2.0 * np.maximum(X @ np.array([1.0, -0.5]), 0)[:, None]
    net = TwoLayerNet(np.zeros((3, 2)), np.zeros(3), np.zeros((1, 3)), [Y.mean()])
    return net, X, Y


def teacher_data():
    """The 8 points and targets of experiments/escape_compare.py (``dataset()``)."""
    rng = np.random.default_rng(100)
    angle = rng.uniform(0, 2 * np.pi, 8)
    X = np.c_[np.cos(angle), np.sin(angle)] * rng.uniform(0.5, 1.5, 8)[:, None]
    teacher = np.array([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]])
    return X, (np.maximum(X @ teacher.T, 0) @ np.array([3.0, 1.5, 0.7]))[:, None]


def stall_with_a_tiny_neuron():
    """Where GD stalls on the narrow student of experiments/escape_compare.py (seed 0, iteration 2003):
    neuron 0 fits the largest teacher neuron, neuron 1 is tiny (|Z_1| |w_1| ~ 5e-5) and still
    growing, so no stationary point lies within the escape loop's radius. The escape must zero the
    tiny neuron (the nearby kink point) to see the order-2 direction that grows a second neuron."""
    X, Y = teacher_data()
    net = TwoLayerNet(np.array([[1.0517842902006773, 0.3980771275622211], [-0.00298692177244758, 0.00654313960765959]]),
                      np.array([0.7560477301918863, 0.00088235211701103]),
                      np.array([[1.3511839908912215, 0.00723964004093953]]), np.array([0.6236565063958512]))
    return net, X, Y


# ---- stall detector ----------------------------------------------------------------------------

def test_stall_needs_a_full_window_of_flat_loss_and_small_averaged_gradient():
    det = StallDetector(window=10, loss_rtol=1e-3, grad_tol=1e-2)
    g = np.full(3, 1e-4)
    assert not any(det.update(1.0, g) for _ in range(10))  # window not full yet
    assert det.update(1.0, g)
    det.reset()
    assert not any(det.update(1.0 - 0.01 * i, g) for i in range(30))  # still falling
    det.reset()
    assert not any(det.update(1.0, np.full(3, 1.0)) for _ in range(30))  # gradient too large


def test_zigzag_across_a_kink_averages_out():
    det = StallDetector(window=20, loss_rtol=1e-3, grad_tol=1e-2)
    flags = [det.update(1.0, np.array([1.0, -1.0]) * (-1) ** i) for i in range(60)]
    assert flags[-1] and det.grad_norm < 1e-2


def test_stall_without_gradients_uses_the_loss_only_and_validates_arguments():
    det = StallDetector(window=5)
    assert [det.update(2.0) for _ in range(6)][-1]
    for bad in (dict(window=0), dict(window=2.5), dict(loss_rtol=-1.0), dict(grad_tol=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            StallDetector(**bad)


def test_stall_config_is_validated_and_makes_its_detector():
    cfg = StallConfig(window=7, loss_rtol=1e-2, grad_tol=math.inf)
    det = cfg.detector()
    assert (det.window, det.loss_rtol, det.loss_atol, det.grad_tol) == (7, 1e-2, 0.0, math.inf)
    for bad in (dict(window=0), dict(max_backoff=0), dict(min_gain=-1.0), dict(loss_atol=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            StallConfig(**bad)


# ---- the check at the nearby kink point -----------------------------------------------------

def test_polish_then_snap_recovers_a_kink_minimum_that_lm_ends_on():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((12, 2))
    teacher = TwoLayerNet(rng.standard_normal((2, 2)), rng.standard_normal(2), rng.standard_normal((1, 2)), [0.2])
    Y = forward(teacher, X).out + 0.3 * rng.standard_normal((12, 1))
    L = get_loss("squared")
    lm, steps = polish(teacher, X, Y, L, 1.0, 0.0, np.zeros((12, 2), bool), iters=100)
    assert steps > 5 and risk(lm, X, Y, L) < risk(teacher, X, Y, L)
    nc = nearby_check(lm, X, Y, fragility=False)  # LM stops next to a kink; snap and refit finish the job
    assert nc.result.verdict == Verdict.LOCAL_MINIMUM and nc.result.stats.M == 1 and nc.distance < 0.1
    start = nc.net.with_weights(W1=nc.net.W1 + 1e-6 * rng.standard_normal((2, 2)))  # what training leaves
    again = nearby_check(start, X, Y, fragility=False)
    assert again.result.verdict == Verdict.LOCAL_MINIMUM and again.distance < 1e-5
    assert again.loss_nearby == pytest.approx(nc.loss_nearby, rel=1e-12)


def test_nearby_check_refuses_snap():
    with pytest.raises(TypeError, match="snap"):
        nearby_check(*cases.convex_kink_minimum(), snap=True)


# ---- one escape step (NumPy) -------------------------------------------------------------------

@pytest.mark.parametrize("best_neuron", [False, True])
def test_escape_step_leaves_the_origin_saddle(best_neuron):
    net, X, Y = origin_saddle()
    att = escape_step(net, X, Y, best_neuron=best_neuron, fragility=False)
    d = att.nearby.result.descent
    assert att.verdict == Verdict.DESCENT and d.order == 2 and d.test == "zero_output"
    assert att.new_net is not None and att.loss_after < att.nearby.loss_start
    assert att.loss_after == pytest.approx(risk(att.new_net, X, Y, get_loss("squared")))
    assert att.direction == ("best neuron" if best_neuron else "certificate")


def test_best_new_neuron_finds_the_teacher_direction_within_the_size_bound():
    net, X, Y = origin_saddle()
    L = get_loss("squared")
    grown, R = best_new_neuron(net, X, Y, L, 1.0, 1)
    v = grown.Z[1] / np.linalg.norm(grown.Z[1])
    teacher = np.array([1.0, -0.5, 0.0]) / np.linalg.norm([1.0, -0.5])
    assert abs(v @ teacher) > 0.95 and grown.W2[0, 1] > 0 and R == pytest.approx(risk(grown, X, Y, L))
    assert R < 0.5 * risk(net, X, Y, L)
    assert np.linalg.norm(grown.W2[:, 1]) * np.linalg.norm(grown.Z[1]) <= neuron_size_bound(net, X, Y) * (1 + 1e-12)
    assert not np.any(np.delete(grown.Z, 1, axis=0))  # the other neurons stay zero


def test_escape_step_grows_a_zero_neuron_whose_output_weight_is_at_rounding_level():
    # the wide student of experiments/escape_compare.py where GD stalls at loss 0.0021 (seed 0, iteration
    # 14144): z* exists; the stratum iteration leaves its zeroed neurons' w_k at ~1e-15, not exactly 0,
    # and Z_k = 0 alone makes them zero neurons that the best new neuron may grow
    X, Y = teacher_data()
    W1 = np.array([[1.0740231225842296, -0.73327270243777209], [0.59279336390121184, 0.20372905019049015],
                   [3.0676261277491350e-03, 1.1577153971148810e-03], [1.0350296729195694, 0.66373762471204245],
                   [-5.7974744668618222e-07, -3.0662697262401252e-07], [0.0, 0.0]])
    b1 = np.array([-0.6326336131611989, 0.6521703429487249, 3.438578760113256e-03, 0.8477974229754385,
                   -7.297787144891657e-07, 0.0])
    W2 = np.array([[1.4455766902655531, -1.0339629820966605, -4.7501244419379061e-03, 1.5447900267794570,
                    9.1697285877897383e-07, 0.0]])
    att = escape_step(TwoLayerNet(W1, b1, W2, np.array([0.6826065541350897])), X, Y, reduction="mean", fragility=False)
    assert att.nearby.nearby.success and att.nearby.zeroed == [2, 4]
    assert att.verdict == Verdict.DESCENT and att.nearby.result.descent.test == "zero_output"
    assert att.direction == "best neuron" and att.loss_after < 0.8 * att.nearby.loss_start


def test_escape_step_at_a_minimum_returns_the_certificate():
    net, X, Y = cases.convex_kink_minimum()
    att = escape_step(net, X, Y, fragility=False)
    assert att.verdict == Verdict.LOCAL_MINIMUM and att.new_net is None and att.loss_after == att.nearby.loss_start


# ---- the loop with PyTorch ---------------------------------------------------------------------

def test_gd_sits_on_the_saddle_and_the_loop_escapes_it(caplog):
    net, X, Y = origin_saddle()
    Xt, Yt = torch.tensor(X), torch.tensor(Y)
    crit = nn.MSELoss()

    model = to_torch(net)
    plain = train_with_escapes(model, Xt, Yt, crit, torch.optim.SGD(model.parameters(), lr=0.1), 400, escape=False)
    assert np.all(plain.losses == plain.losses[0])  # exactly stuck: the gradient is zero
    np.testing.assert_array_equal(from_torch(model).W1, 0.0)

    model = to_torch(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.INFO, logger="sospcheck.escape"):
        log = train_with_escapes(model, Xt, Yt, crit, opt, 400, stall=StallConfig(window=50))
    first = log.events[0]
    assert first.iteration == 51 and first.verdict == "descent" and first.order == 2 and first.accepted
    assert first.loss_before == pytest.approx(plain.losses[0]) and first.loss_after < 0.5 * first.loss_before
    assert log.losses[first.iteration] == pytest.approx(first.loss_after, rel=1e-12)  # training resumed from there
    assert log.losses[-1] < 1e-3 * plain.losses[0]
    assert "iter 51: descent (order-2 zero_output" in caplog.text


def test_loop_stops_with_a_certificate_at_a_kink_minimum_that_gd_zigzags_around():
    net, X, Y = cases.convex_kink_minimum()
    model = to_torch(net.with_weights(b1=net.b1 + 0.05, W2=1.1 * net.W2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    stall = StallConfig(window=50, loss_rtol=1e-3, grad_tol=0.1)
    log = train_with_escapes(model, torch.tensor(X), torch.tensor(Y)[:, None], nn.MSELoss(reduction="sum"), opt,
                             3000, stall=stall, nearby={"snap_tol": 1e-2})
    assert log.stop_reason == "certified" and log.certificate.verdict == Verdict.LOCAL_MINIMUM
    assert log.certificate.fragility  # the final certificate is re-checked with fragility on
    assert log.events[-1].verdict == "local_minimum" and log.events[-1].loss_after == pytest.approx(10.0)
    loaded = from_torch(model)
    assert loaded.b1[0] == pytest.approx(0.0, abs=1e-14)  # the certified point, on its kink, is in the model
    assert risk(loaded, X, Y[:, None], get_loss("squared")) == pytest.approx(5.0)


def test_loop_zeroes_a_tiny_neuron_where_no_stationary_point_is_near():
    net, X, Y = stall_with_a_tiny_neuron()
    assert not nearby_check(net, X, Y, reduction="mean", fragility=False).nearby.success  # no z* within the radius
    model = to_torch(net)
    escaper = SaddleEscape(model, torch.tensor(X), torch.tensor(Y), nn.MSELoss(),
                           torch.optim.SGD(model.parameters(), lr=0.05))
    event = escaper.escape()  # what the loop does at the stall, with its own nearby thresholds
    # the kink point: tiny neuron zeroed, polished and refit (lower loss); from there, grow a neuron
    assert event.zeroed == [1] and event.polish_steps > 0 and event.loss_nearby < event.loss_before
    assert event.verdict == "descent" and event.order == 2 and event.direction == "best neuron" and event.accepted
    assert event.loss_after < 0.9 * event.loss_before


def test_callback_in_a_plain_loop_with_adam_resets_its_state():
    net, X, Y = origin_saddle()
    model = to_torch(net)
    Xt, Yt = torch.tensor(X), torch.tensor(Y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    escaper = SaddleEscape(model, Xt, Yt, nn.MSELoss(), opt, stall=StallConfig(window=20))
    for _ in range(25):
        opt.zero_grad()
        loss = nn.MSELoss()(model(Xt), Yt)
        loss.backward()
        opt.step()
        event = escaper(loss)
        if event is not None:
            assert event.accepted and not opt.state  # stale moments cleared after the jump
            break
    assert escaper.n_escapes == 1 and escaper.iteration == 21
    assert escaper.events[0].to_dict()["order"] == 2


def test_loop_target_loss_and_arguments():
    net, X, Y = origin_saddle()
    model = to_torch(net)
    log = train_with_escapes(model, torch.tensor(X), torch.tensor(Y), nn.MSELoss(),
                             torch.optim.SGD(model.parameters(), lr=0.1), 100, target_loss=10.0)
    assert log.stop_reason == "target_loss" and log.iterations == 1
    with pytest.raises(ValueError, match="max_iters"):
        train_with_escapes(model, X, Y, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), -1)
    with pytest.raises(ValueError, match="stop_on"):
        SaddleEscape(model, X, Y, policy=EscapePolicy(stop_on=("minimum",)))
    with pytest.raises(TypeError, match="stall"):
        SaddleEscape(model, X, Y, stall={"window": 10})
    with pytest.raises(ValueError, match="Tanh"):
        SaddleEscape(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), X, Y)


def test_comparison_runs_from_one_command(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import escape_compare

    assert escape_compare.main(["--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "ESCAPE.md").read_text()
    for method in escape_compare.METHODS:
        assert f"| {method} |" in text
    assert escape_compare.BEGIN in text and "### narrow student" in text
    runs = json.loads((tmp_path / "escape_results.json").read_text())["runs"]
    assert {r["method"] for r in runs["wide"]} == set(escape_compare.METHODS)
    assert all(math.isfinite(r["final_loss"]) for rs in runs.values() for r in rs)

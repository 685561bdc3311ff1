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

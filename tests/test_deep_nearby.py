"""Nearby mode for deep networks (DESIGN.md 10.11): the exact stationary point z* on the weights' stratum.

Planted strict minima (no kink; kinks held in every layer) perturbed off their point: the plain check says
descent, nearby mode recovers the minimum at relative distance ~ the perturbation; a far point gets no verdict;
the CLI and check_model entry points.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from deep_instances import random_deep_instances  # noqa: E402
from test_deep import KINK_CASES, _check, _net, _torch_model, _vo, planted_smooth  # noqa: E402

from sospcheck.deep import DeepNet, check_deep  # noqa: E402
from sospcheck.deep.nearby import DEEP_NEARBY_TOLERANCES  # noqa: E402
from sospcheck.deep.stratum import MAX_PARAMS, deep_risk_change  # noqa: E402
from sospcheck.losses import get_loss  # noqa: E402
from sospcheck.nearby_mode import NearbyResult  # noqa: E402
from sospcheck.report import REPORT_SCHEMA  # noqa: E402
from sospcheck.torch import check_model  # noqa: E402


def _perturbed(net: DeepNet, eps: float, seed: int = 0) -> DeepNet:
    """``net`` moved by ``eps |theta|`` in a random direction."""
    th = net.vector()
    d = np.random.default_rng(seed).standard_normal(th.size)
    return net.with_vector(th + d * (eps * np.linalg.norm(th) / np.linalg.norm(d)))


def _kink_net(name: str) -> tuple[DeepNet, np.ndarray, np.ndarray]:
    c = KINK_CASES[name]
    net = DeepNet(tuple(np.array(W, float) for W in c["weights"]),
                  tuple(None if b is None else np.array(b, float) for b in c["biases"]), 1.0, c["s_minus"])
    return net, np.array(c["X"], float), np.array(c["Y"], float)


def _relative(a: DeepNet, b: DeepNet) -> float:
    return float(np.linalg.norm(a.vector() - b.vector()) / np.linalg.norm(b.vector()))


@pytest.mark.parametrize("seed, widths, m", [(1, (2, 2), 16), (4, (2, 2, 2), 24)])
@pytest.mark.parametrize("eps", [1e-9, 1e-6])
def test_perturbed_planted_minimum_is_recovered(seed, widths, m, eps):
    Ws, bs, X, Y = planted_smooth(seed, widths, m)
    star = DeepNet(tuple(Ws), tuple(bs))
    z = _perturbed(star, eps, seed)
    r = check_deep(z, X, Y, nearby=True, fragility=False)
    assert r.verdict.value == "descent" and r.descent.order == 1  # the plain check at the weights
    nb = r.nearby
    assert isinstance(nb, NearbyResult) and nb.success and nb.status in ("converged", "rounding_floor")
    assert nb.verdict.value == "local_minimum" and nb.result.tolerances == DEEP_NEARBY_TOLERANCES
    assert 0.1 * eps < nb.relative_distance < 3 * eps
    assert _relative(nb.net, star) < 3 * eps  # z* is the planted minimum, up to the perturbation
    assert nb.residual <= 1e-12 and 1 <= nb.steps <= 10 and nb.held == 0
    assert nb.loss_change < 0 and abs(nb.loss_change) < 1e3 * eps * eps * (1 + abs(r.loss_value)) + 1e-15
    assert "nearby: local_minimum" in nb.headline() and "relative distance" in nb.headline()
    assert nb.loss_change == pytest.approx(
        deep_risk_change(z, nb.net, X, Y, get_loss("squared"), 1.0, 0.0), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("name", ["min_depth2", "min_depth3"])
@pytest.mark.parametrize("eps", [1e-9, 1e-7])
def test_kink_minimum_perturbed_off_its_kinks_is_held_on_them(name, eps):
    """The kink pairs move off their kinks by ~eps; nearby mode holds them at exactly zero pre-activation and
    finds the kink minimum again."""
    net, X, Y = _kink_net(name)
    M = check_deep(net, X, Y, fragility=False).stats.M
    z = _perturbed(net, eps, seed=1)
    r = check_deep(z, X, Y, nearby=True, fragility=False)
    nb = r.nearby
    assert nb.success and nb.verdict.value == "local_minimum"
    assert nb.held >= M and nb.result.stats.M == nb.held
    assert nb.stratum.kink_residual <= 1e-14
    assert nb.relative_distance < 3 * eps and _relative(nb.net, net) < 3 * eps
    held = nb.stratum.boundary
    assert held.shape == (X.shape[0], sum(net.widths)) and held.sum() == nb.held


def _sweep(n: int, seed: int) -> tuple[set, list]:
    """Random tiny instances planted exactly stationary on kinks in every layer (squared loss, with and without
    weight decay), perturbed by 1e-9: nearby mode's verdict at z* is the verdict at the exact point."""
    seen, bad = set(), []
    for q, d in enumerate(random_deep_instances(n, seed=seed, weights={"planted": 0.7, "weight_decay": 0.3})):
        exact = _vo(_check(d))
        z = _perturbed(_net(d), 1e-9, seed=q)
        nb = check_deep(z, d["X"], d["Y"], loss=d["loss"], weight_decay=d["weight_decay"], fragility=False,
                        nearby=True).nearby
        got = _vo(nb.result) if nb.success else ("none", nb.status)
        seen.add(exact)
        if got != exact or nb.relative_distance > 3e-9:
            bad.append((q, d["kind"], exact, got, nb.relative_distance))
    return seen, bad


def test_perturbed_exact_kink_points_keep_their_verdict():
    """Minima, SOSPs and second-order saddles on kinks: the saddle's order-2 descent is found (and verified) at
    z*."""
    seen, bad = _sweep(16, seed=7)
    assert not bad and {("local_minimum", None), ("sosp", None), ("descent", 2)} <= seen


@pytest.mark.slow
def test_perturbed_exact_kink_points_keep_their_verdict_60():
    seen, bad = _sweep(60, seed=7)
    assert not bad


def test_held_pair_added_when_a_step_would_cross_it():
    """At 1e-6 a kink pair of min_depth2 lies beyond snap_tol; the Newton step would move it across its kink, so
    it is held too (within hold_tol) and the iteration restarts."""
    net, X, Y = _kink_net("min_depth2")
    r = check_deep(_perturbed(net, 1e-6, seed=1), X, Y, nearby=True, fragility=False)
    nb = r.nearby
    assert r.stats.M == 0 and nb.added and nb.held == 1
    assert nb.success and nb.verdict.value == "local_minimum"
    assert "after holding 1 more pair(s) on their kinks" in nb.message


def test_far_point_gets_no_verdict():
    rng = np.random.default_rng(3)
    net = DeepNet((rng.standard_normal((4, 3)), rng.standard_normal((3, 4)), rng.standard_normal((1, 3))),
                  (rng.standard_normal(4), rng.standard_normal(3), rng.standard_normal(1)), 1.0, 0.1)
    X, Y = rng.standard_normal((12, 3)), rng.standard_normal((12, 1))
    r = check_deep(net, X, Y, nearby=True, fragility=False)
    nb = r.nearby
    assert r.verdict.value == "descent"
    assert not nb.success and nb.verdict is None and nb.net is None and nb.result is None
    assert nb.status in ("radius_exceeded", "left_stratum", "no_progress")
    assert "no stationary point within nearby_radius" in nb.headline()
    assert "nearby: no stationary point" in r.summary()
    big = check_deep(net, X, Y, nearby=True, nearby_radius=10.0, fragility=False).nearby
    assert big.radius == 10.0


def test_nearby_object_matches_the_schema_and_refusals():
    jsonschema = pytest.importorskip("jsonschema")
    schema = {**REPORT_SCHEMA["properties"]["nearby"]["oneOf"][1], "$defs": {}}
    validator = jsonschema.Draft202012Validator(schema)
    Ws, bs, X, Y = planted_smooth(1, (2, 2), 16)
    z = _perturbed(DeepNet(tuple(Ws), tuple(bs)), 1e-8)
    for radius in (1e-3, 1e-12):
        d = json.loads(check_deep(z, X, Y, nearby=True, nearby_radius=radius, fragility=False).to_json())["nearby"]
        assert d["point"] == "nearby" and d["success"] is (radius == 1e-3)
        assert d["check"] is None or d["check"]["verdict"] == "local_minimum"
        errors = list(validator.iter_errors({**d, "check": None}))
        assert not errors, errors[0].message
    with pytest.raises(ValueError, match="nearby_radius. is given but nearby mode is off"):
        check_deep(z, X, Y, nearby_radius=0.1)
    wide = DeepNet((np.zeros((60, 2)), np.zeros((60, 60)), np.zeros((1, 60))), (None, None, None))
    assert wide.n_params > MAX_PARAMS
    with pytest.raises(ValueError, match="MAX_PARAMS"):
        check_deep(wide, X, Y, nearby=True)


def test_check_model_nearby_on_a_sequential_of_depth_two():
    Ws, bs, X, Y = planted_smooth(1, (2, 2), 16)
    model = _torch_model(_perturbed(DeepNet(tuple(Ws), tuple(bs)), 1e-9))
    r = check_model(model, torch.as_tensor(X), torch.as_tensor(Y), nn.MSELoss(reduction="sum"), nearby=True,
                    fragility=False)
    assert r.loss == "mse" and r.verdict.value == "descent"
    assert r.nearby.success and r.nearby.verdict.value == "local_minimum" and r.nearby.relative_distance < 3e-9
    with pytest.raises(ValueError, match="snap=True. is not supported"):
        check_model(model, torch.as_tensor(X), torch.as_tensor(Y), snap=True)


def test_cli_nearby_on_a_deep_state_dict(tmp_path):
    from sospcheck.cli import main
    from sospcheck.io import load_params

    Ws, bs, X, Y = planted_smooth(4, (2, 2, 2), 24)
    z = _perturbed(DeepNet(tuple(Ws), tuple(bs)), 1e-9)
    model = _torch_model(z)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    np.savez(tmp_path / "d.npz", X=X, Y=Y)
    base = ["check", "--params", str(tmp_path / "m.pt"), "--data", str(tmp_path / "d.npz"), "--loss", "squared"]
    args = base + ["--nearby", "--nearby-out", str(tmp_path / "z.npz"), "--json", str(tmp_path / "r.json"),
                   "--direction-out", str(tmp_path / "dir.npz"), "--quiet"]
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verdict"] == "descent" and report["nearby"]["verdict"] == "local_minimum"
    assert report["nearby"]["relative_distance"] < 3e-9 and report["nearby"]["check"]["stats"]["widths"] == [2, 2, 2]
    star = load_params(str(tmp_path / "z.npz"))
    assert isinstance(star, DeepNet) and star.widths == [2, 2, 2]
    assert _relative(star, z) < 3e-9
    assert not (tmp_path / "dir.npz").exists()  # the verdict at z* is not descent: no direction written
    again = check_deep(star, X, Y, tolerances=DEEP_NEARBY_TOLERANCES, fragility=False)
    assert again.verdict.value == "local_minimum"
    assert main(base + ["--snap"]) == 2

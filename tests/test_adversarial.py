"""No local_minimum claim may be beaten by a local search: random and structured probes near the point."""

import numpy as np
import pytest

import cases
from sospcheck import Verdict, check
from sospcheck.losses import get_loss, risk
from sospcheck.model import Direction


def probe_minimum(net, X, Y, rng, n_dirs=400, radii=(1e-1, 1e-2, 1e-3, 1e-4), loss="squared"):
    """Smallest R(z + t d) - R(z) over random unit directions, kink-aligned directions and a
    short derivative-free descent from each probe; a strict minimum keeps it >= 0."""
    L = get_loss(loss)
    Yp = L.prepare(Y, net.dy)
    R0 = risk(net, X, Yp, L)
    n = net.n_params
    base = net.as_direction()

    def from_vec(v):
        d = Direction.zeros_like(net)
        parts, off = [], 0
        for a in (d.W1, d.b1, d.W2, d.b2):
            if a is None:  # a network without that bias
                parts.append(None)
                continue
            parts.append(v[off:off + a.size].reshape(a.shape))
            off += a.size
        return Direction(*parts)

    worst = np.inf
    for _ in range(n_dirs):
        v = rng.standard_normal(n)
        if rng.random() < 0.5:  # keep the kink points on their kinks, the hardest directions
            v[: net.W1.size + (net.dh if net.has_b1 else 0)] *= rng.random() < 0.5
        v /= np.linalg.norm(v)
        for t in radii:
            d = from_vec(t * v)
            R = risk(net.perturbed(d), X, Yp, L)
            # a few steps of random search around the probe, staying inside the ball of radius t
            for _ in range(5):
                w = rng.standard_normal(n) * 0.3 * t
                cand = t * v + w
                cand *= min(1.0, t / np.linalg.norm(cand))
                Rc = risk(net.perturbed(from_vec(cand)), X, Yp, L)
                if Rc < R:
                    R, v = Rc, cand / np.linalg.norm(cand)
            worst = min(worst, R - R0)
    return worst, R0


@pytest.mark.parametrize("make", [cases.convex_kink_minimum, cases.interpolating_kink_minimum, cases.icqp_one_sided_minimum,
                                  lambda: cases.with_dead_neuron(*cases.convex_kink_minimum()),
                                  cases.always_active_minimum, cases.sparsely_active_minimum])
def test_certified_minima_survive_adversarial_probes(make):
    net, X, Y = make()
    assert check(net, X, Y).verdict == Verdict.LOCAL_MINIMUM
    worst, R0 = probe_minimum(net, X, Y, np.random.default_rng(0))
    assert worst >= -1e-12 * max(1.0, R0)


@pytest.mark.parametrize("make", [cases.autograd_fooled, cases.smooth_saddle_dy2])
def test_the_probe_does_find_descent_where_there_is_one(make):
    net, X, Y = make()
    worst, R0 = probe_minimum(net, X, Y, np.random.default_rng(0), n_dirs=100)
    assert worst < 0


def _shared(make):
    import shared_instances as si

    inst = make(si)
    return si.net_of(inst), inst["X"], inst["Y"], inst.get("loss", "squared")


@pytest.mark.parametrize("make", [
    lambda si: si.affine_group(np.random.default_rng(1), 3, 2, "squared", 0.5, 1, zero=True),
    lambda si: si.affine_group(np.random.default_rng(2), 2, 1, "logistic", 0.0, 0, dead=True),
    lambda si: si.split_neuron(si.stratum_point(2, "logistic", dh=2, m=7), 0),
    lambda si: si.split_neuron(si.stratum_point(48, "logistic", dh=2, m=7, s_minus=0.5), 0, (0.5, 1.0, 4.0),
                               (0.5, 0.25, 0.125)),
    lambda si: si.split_neuron(si.stratum_point(39, "squared", dh=2, m=7, s_minus=0.5), 0),
], ids=["affine-squared-dy2-leaky-zero", "affine-logistic-dead", "duplicates-logistic", "duplicates-logistic-leaky",
        "duplicates-squared-leaky"])
def test_minima_with_shared_flat_directions_survive_adversarial_probes(make):
    net, X, Y, loss = _shared(make)
    r = check(net, X, Y, loss=loss)
    assert r.verdict == Verdict.LOCAL_MINIMUM
    assert r.stats.quotient.affine_groups or r.stats.quotient.duplicate_groups
    worst, R0 = probe_minimum(net, X, Y, np.random.default_rng(0), n_dirs=150, loss=loss)
    assert worst >= -1e-12 * max(1.0, R0)

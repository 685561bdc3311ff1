"""sospcheck.torch: nn.Sequential(Linear, ReLU | LeakyReLU, Linear) <-> TwoLayerNet, and torch criteria."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import cases  # noqa: E402
from sospcheck import TwoLayerNet, Verdict, check  # noqa: E402
from sospcheck.model import forward  # noqa: E402
from sospcheck.point import evaluate_point  # noqa: E402
from sospcheck.torch import check_model, from_torch, load_into, to_torch, torch_loss  # noqa: E402


def seq(dx=3, dh=4, dy=2, act=None, bias1=True, bias2=True, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dx, dh, bias=bias1), act or nn.ReLU(), nn.Linear(dh, dy, bias=bias2)).to(dtype)


def out_np(model, X):
    with torch.no_grad():
        return model(torch.as_tensor(X, dtype=next(model.parameters()).dtype)).double().numpy()


@pytest.mark.parametrize("act, s_minus", [(nn.ReLU(), 0.0), (nn.LeakyReLU(0.1), 0.1), (nn.LeakyReLU(), 0.01)])
def test_round_trip_keeps_weights_and_function(act, s_minus):
    model = seq(act=act)
    net = from_torch(model)
    assert (net.s_plus, net.s_minus) == (1.0, s_minus) and (net.dx, net.dh, net.dy) == (3, 4, 2)
    np.testing.assert_array_equal(net.W1, model[0].weight.detach().numpy())
    np.testing.assert_array_equal(net.b2, model[2].bias.detach().numpy())
    X = np.random.default_rng(1).standard_normal((9, 3))
    np.testing.assert_allclose(forward(net, X).out, out_np(model, X), rtol=0, atol=1e-14)
    back = to_torch(net)
    assert type(back[1]) is type(act) and back[0].weight.dtype == torch.float64
    np.testing.assert_allclose(out_np(back, X), out_np(model, X), rtol=0, atol=1e-14)
    np.testing.assert_array_equal(from_torch(back).as_direction().vector(), net.as_direction().vector())


def test_bias_free_linear_maps_to_none_and_back():
    model = seq(bias1=False, bias2=False)
    net = from_torch(model)
    assert net.b1 is None and net.b2 is None and net.n_params == 4 * 3 + 2 * 4
    back = to_torch(net)
    assert back[0].bias is None and back[2].bias is None
    X = np.random.default_rng(2).standard_normal((5, 3))
    np.testing.assert_allclose(forward(net, X).out, out_np(model, X), atol=1e-14)
    mixed = from_torch(seq(bias1=False))
    assert mixed.b1 is None and mixed.b2 is not None


def test_load_into_writes_the_same_parameter_tensors_in_place():
    model = seq(dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [id(p) for p in model.parameters()]
    net = from_torch(model)
    target = net.with_weights(W2=net.W2 + 1.0)
    load_into(model, target)
    assert [id(p) for p in model.parameters()] == before and opt.param_groups[0]["params"][2] is model[2].weight
    assert model[2].weight.dtype == torch.float32
    np.testing.assert_allclose(model[2].weight.detach().numpy(), target.W2, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        load_into(model, TwoLayerNet(np.ones((5, 3)), np.ones(5), np.ones((2, 5)), np.ones(2)))
    with pytest.raises(ValueError, match="s_minus|slopes"):
        load_into(model, net.with_weights(s_minus=0.2))
    with pytest.raises(ValueError, match="b1"):
        load_into(model, net.with_weights(b1=None))


def test_float32_model_converts_to_float64_net():
    model = seq(dtype=torch.float32)
    net = from_torch(model)
    assert net.W1.dtype == np.float64
    np.testing.assert_array_equal(net.W1, model[0].weight.detach().double().numpy())


class Layout(nn.Module):
    """A custom module with the Linear -> ReLU -> Linear structure."""

    def __init__(self, skip_act=False):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
        self.skip_act = skip_act

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h if self.skip_act else self.act(h))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(2, 3), nn.Linear(3, 1)

    def forward(self, x):
        return self.fc2(F.leaky_relu(self.fc1(x), 0.2))


def test_custom_module_with_that_structure_is_accepted():
    torch.manual_seed(0)
    model = Layout().double()
    net = from_torch(model)
    X = np.random.default_rng(0).standard_normal((6, 2))
    np.testing.assert_allclose(forward(net, X).out, out_np(model, X), atol=1e-14)


def test_functional_activation_needs_negative_slope():
    torch.manual_seed(0)
    model = Functional().double()
    with pytest.raises(ValueError, match="negative_slope"):
        from_torch(model)
    with pytest.raises(ValueError, match="does not compute"):
        from_torch(model, negative_slope=0.0)  # its forward uses 0.2, not ReLU
    net = from_torch(model, negative_slope=0.2)
    assert net.s_minus == 0.2


def test_a_forward_that_does_something_else_is_refused():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="does not compute"):
        from_torch(Layout(skip_act=True).double())
    from_torch(Layout(skip_act=True).double(), check_forward=False)  # the caller's responsibility then


@pytest.mark.parametrize("model, what", [
    (nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), "Tanh"),
    (nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1)),
     "Linear -> ReLU -> Linear -> ReLU"),
    (nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Dropout(0.1), nn.Linear(3, 1)), "Dropout"),
    (nn.Linear(2, 3), "one hidden layer"),
    (nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(4, 1)), "widths"),
    (nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(1.0), nn.Linear(3, 1)), "negative_slope"),
    (nn.Sequential(nn.Linear(2, 3), nn.LeakyReLU(-0.1), nn.Linear(3, 1)), "negative_slope"),
])
def test_other_architectures_get_a_clear_error(model, what):
    with pytest.raises(ValueError, match=what):
        from_torch(model)


def test_not_a_module_and_unrepresentable_net():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        from_torch({"W1": 1})
    with pytest.raises(ValueError, match="s_plus"):
        to_torch(TwoLayerNet([[1.0]], [0.0], [[1.0]], [0.0], s_plus=2.0))


def test_conversion_leaves_the_global_rng_alone():
    model = seq()
    state = torch.get_rng_state()
    from_torch(model)
    assert torch.equal(state, torch.get_rng_state())


def _criteria():
    rng = np.random.default_rng(3)
    m = 7
    yield nn.MSELoss(), 2, rng.standard_normal((m, 2))
    yield nn.MSELoss(reduction="sum"), 2, rng.standard_normal((m, 2))
    yield nn.MSELoss(), 1, rng.standard_normal((m, 1))
    for red in ("mean", "sum"):
        yield nn.BCEWithLogitsLoss(reduction=red), 1, rng.integers(0, 2, (m, 1)).astype(float)
        yield nn.CrossEntropyLoss(reduction=red), 3, rng.integers(0, 3, m)
    yield nn.CrossEntropyLoss(), 3, np.eye(3)[rng.integers(0, 3, m)]


@pytest.mark.parametrize("criterion, dy, Y", list(_criteria()), ids=lambda v: repr(v)[:30])
def test_loss_mapping_reproduces_the_criterion_value_gradient_and_hessian(criterion, dy, Y):
    model = seq(dx=2, dh=5, dy=dy, seed=1)
    X = np.random.default_rng(4).standard_normal((Y.shape[0], 2))
    Yt = torch.as_tensor(Y, dtype=torch.long if Y.ndim == 1 else torch.float64)
    spec = torch_loss(criterion)
    net = from_torch(model)
    r = check(net, X, spec.targets(Yt), loss=spec.loss, reduction=spec.reduction, fragility=False)
    with torch.no_grad():
        want = float(criterion(model(torch.as_tensor(X)), Yt))
    assert r.loss_value == pytest.approx(want, rel=1e-12, abs=1e-14)

    # r_i and H_i of the mapped loss are the criterion's derivatives with respect to the outputs
    from sospcheck.losses import get_loss, reduction_weight
    lossobj = get_loss(spec.loss)
    pt = evaluate_point(net, X, lossobj.prepare(spec.targets(Yt), dy), lossobj,
                        reduction_weight(spec.reduction, X.shape[0]), 0.0)
    out = torch.tensor(pt.fwd.out).requires_grad_(True)  # a copy: the point's arrays are read-only
    (g,) = torch.autograd.grad(criterion(out, Yt), out)
    np.testing.assert_allclose(pt.r, g.numpy(), rtol=1e-10, atol=1e-14)
    Hfull = torch.autograd.functional.hessian(lambda o: criterion(o, Yt), out.detach()).numpy()
    m = X.shape[0]
    for i in range(m):
        np.testing.assert_allclose(pt.Hl[i], Hfull[i, :, i, :], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("criterion, match", [
    (nn.L1Loss(), "MSELoss, nn.BCEWithLogitsLoss or nn.CrossEntropyLoss"),
    (nn.MSELoss(reduction="none"), "reduction='none'"),
    (nn.BCEWithLogitsLoss(pos_weight=torch.ones(1)), "pos_weight"),
    (nn.CrossEntropyLoss(weight=torch.ones(3)), "weight"),
    (nn.CrossEntropyLoss(label_smoothing=0.1), "label_smoothing"),
])
def test_unsupported_criteria_are_refused(criterion, match):
    with pytest.raises((TypeError, ValueError), match=match):
        torch_loss(criterion)


def test_ignored_labels_are_refused():
    spec = torch_loss(nn.CrossEntropyLoss(ignore_index=2))
    with pytest.raises(ValueError, match="ignore_index"):
        spec.targets(torch.tensor([0, 1, 2]))
    assert spec.targets(torch.tensor([0, 1, 1])).tolist() == [0.0, 1.0, 1.0]


def test_three_lines_from_a_trained_model_to_a_verdict():
    net, X, Y = cases.convex_kink_minimum()
    model = to_torch(net)  # stands in for a trained model
    result = check_model(model, torch.tensor(X), torch.tensor(Y)[:, None], nn.MSELoss(reduction="sum"))
    assert result.verdict == Verdict.LOCAL_MINIMUM
    assert result.loss_value == pytest.approx(10.0)  # torch's sum of squares: twice sospcheck's 0.5 |r|^2
    assert result.loss == "mse" and result.reduction == "sum"
    mean = check_model(model, X, Y[:, None], fragility=False)  # default nn.MSELoss(): the mean
    assert mean.verdict == Verdict.LOCAL_MINIMUM and mean.loss_value == pytest.approx(10.0 / 4)
    with pytest.raises(TypeError, match="loss"):
        check_model(model, X, Y, loss="squared")


def test_check_model_descent_direction_applies_to_result_net():
    net, X, Y = cases.autograd_fooled()
    model = to_torch(net)
    r = check_model(model, X, Y[:, None], nn.MSELoss(), snap=True)
    assert r.verdict == Verdict.DESCENT
    load_into(model, r.net.perturbed(r.descent.direction, r.descent.step))
    with torch.no_grad():
        after = float(nn.MSELoss()(model(torch.tensor(X)), torch.tensor(Y)[:, None]))
    assert after == pytest.approx(r.descent.loss_after, rel=1e-12) and after < r.loss_value


@pytest.mark.filterwarnings("ignore:Complex modules")
def test_complex_and_expanded_parameters_are_refused_before_conversion():
    model = seq().to(torch.complex128)
    with pytest.raises(TypeError, match=r"`W1` must be a real tensor, got dtype torch.complex128"):
        from_torch(model, check_forward=False)
    model = seq(dx=1, dh=1, dy=1)
    with torch.no_grad():  # a stride-0 view: 8 bytes of storage, 80 GB once converted
        model[0].weight = nn.Parameter(torch.zeros(1, dtype=torch.float64).expand(100_000, 100_000))
    with pytest.raises(ValueError, match=r"`W1` has shape \(100000, 100000\)"):
        from_torch(model, check_forward=False)
    with pytest.raises(ValueError, match=r"`X` has shape \(100000, 100000\)"):
        check_model(seq(), torch.zeros(1).expand(100_000, 100_000), torch.zeros(1, 2))
    with pytest.raises(TypeError, match=r"`Y` must be a tensor or a numeric array of real numbers, got list of strings"):
        check_model(seq(dy=1), np.zeros((2, 3)), ["a", "b"])


def test_to_torch_checks_device_and_dtype():
    net = TwoLayerNet([[1.0]], [0.0], [[1.0]], [0.0])
    with pytest.raises(ValueError, match=r"`device` must be 'cpu', 'cuda' or 'cuda:N', got 'nonsense'"):
        to_torch(net, device="nonsense")
    with pytest.raises(ValueError, match=r"`device` 'cuda:99' is not available"):
        to_torch(net, device="cuda:99")
    with pytest.raises(ValueError, match=r"`device` must be .*float64 is needed.*'meta'"):
        to_torch(net, device="meta")
    with pytest.raises(TypeError, match=r"`dtype` must be a real floating torch dtype"):
        to_torch(net, dtype=torch.complex64)
    assert to_torch(net, device="cpu")[0].weight.device.type == "cpu"

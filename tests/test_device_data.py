"""sospcheck.device_data: the data on a PyTorch device (CPU here; the same code runs on a GPU) for
``backend="torch"``: products equal the host's, and the check's passes over the data run there."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from instances import random_kink_instance  # noqa: E402
from sospcheck import TwoLayerNet, check  # noqa: E402
from sospcheck.augmented import AugmentedData, abs_max, frobenius_norm, gram, gram_of_rows, row_block  # noqa: E402
from sospcheck.device_data import DeviceData, placed, placement  # noqa: E402
from sospcheck.geometry import row_norms  # noqa: E402
from sospcheck.operators import TorchHessianOperator  # noqa: E402


@pytest.mark.parametrize("bias", [True, False])
def test_products_and_reductions_equal_the_host_ones(bias):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((41, 6))
    X.flags.writeable = False  # as the check's validated data
    host = AugmentedData(X).toarray() if bias else X
    D = DeviceData.upload(X, bias, "cpu")
    d = host.shape[1]
    M, B, mask = rng.standard_normal((d, 3)), rng.standard_normal((2, 41)), rng.random(41) < 0.3
    assert D.shape == host.shape
    np.testing.assert_allclose(D @ M, host @ M, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(D @ M[:, 0], host @ M[:, 0], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(B @ D, B @ host, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(D.T @ B.T, host.T @ B.T, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(gram(D), host.T @ host, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(row_norms(D), np.linalg.norm(host, axis=1), rtol=1e-14)
    assert frobenius_norm(D) == pytest.approx(np.linalg.norm(host), rel=1e-14)
    assert abs_max(D) == np.max(np.abs(host))
    np.testing.assert_array_equal(D[mask], host[mask])
    np.testing.assert_array_equal(D[3], host[3])
    np.testing.assert_array_equal(D[:5, 1:], host[:5, 1:])
    np.testing.assert_array_equal(row_block(D, mask).toarray(), host[mask])
    np.testing.assert_allclose(gram_of_rows(D, mask), host[mask].T @ host[mask], rtol=1e-13, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(D), host)
    with pytest.raises(ValueError, match="columns"):
        D @ np.ones((d + 1, 2))


def test_placement_uploads_each_array_once_and_only_inside_its_block():
    X = np.arange(12.0).reshape(4, 3)
    assert placed(X, True) is None
    with placement("cpu"):
        first = placed(X, True)
        assert isinstance(first, DeviceData) and placed(X.view(), True) is first  # views share one upload
        assert placed(X, False) is not first and placed(X, False).shape == (4, 3)
        assert placed(X[1:], True).shape == (3, 4)
    assert placed(X, True) is None


def _net(inst):
    return TwoLayerNet(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["s_plus"], inst["s_minus"])


@pytest.mark.parametrize("solver", ["dense", "matrix_free"])
def test_the_torch_backend_runs_the_data_passes_on_the_device_with_the_same_verdicts(monkeypatch, solver):
    rng = np.random.default_rng(12)
    insts = [random_kink_instance(rng, "any") for _ in range(16)]
    host = [check(_net(i), i["X"], i["Y"], loss=i["loss"], weight_decay=i["weight_decay"], solver=solver)
            for i in insts]
    calls = {"device": 0}
    matmul, rmatmul = DeviceData.__matmul__, DeviceData.__rmatmul__

    def counted(fn):
        def wrapper(self, other):
            calls["device"] += 1
            return fn(self, other)
        return wrapper

    def refuse(self, *args, **kw):
        raise AssertionError("a pass over the data ran on the host")

    monkeypatch.setattr(DeviceData, "__matmul__", counted(matmul))
    monkeypatch.setattr(DeviceData, "__rmatmul__", counted(rmatmul))
    monkeypatch.setattr(DeviceData, "__array__", refuse)
    monkeypatch.setattr(DeviceData, "toarray", refuse)
    for AugmentedMethod in ("__matmul__", "__rmatmul__", "gram"):
        monkeypatch.setattr(AugmentedData, AugmentedMethod, refuse)
    for inst, want in zip(insts, host):
        got = check(_net(inst), inst["X"], inst["Y"], loss=inst["loss"], weight_decay=inst["weight_decay"],
                    solver=solver, backend="torch", device="cpu")
        assert got.verdict == want.verdict
        assert (got.descent is None) == (want.descent is None)
        if want.descent is not None:
            assert got.descent.order == want.descent.order and got.descent.loss_after < got.descent.loss_before
    assert calls["device"] >= 3 * len(insts)  # at least the forward passes and the first-order products


def test_the_hessian_operator_uses_the_placed_tensor_without_a_second_upload():
    rng = np.random.default_rng(2)
    m, dx, dh, dy = 30, 4, 3, 2
    X = rng.standard_normal((m, dx))
    D = DeviceData.upload(X, True, "cpu")
    args = (rng.random((m, dh)), D, rng.standard_normal((dy, dh)), rng.standard_normal((m, dy)),
            np.broadcast_to(np.eye(dy), (m, dy, dy)).copy(), rng.choice([0.0, 1.0], (m, dh)))
    op = TorchHessianOperator(*args, device="cpu")
    assert op.Xr.data_ptr() == D.t.data_ptr()
    host = TorchHessianOperator(*(args[:1] + (D.toarray(),) + args[2:]), device="cpu")
    T = rng.standard_normal((op.layout.n, 2))
    np.testing.assert_allclose(op.matmat(T), host.matmat(T), rtol=1e-13, atol=1e-13)


def test_nearby_mode_on_the_device_finds_the_same_stationary_point():
    from oracle import oracle_on
    from pieces import perturbed, planted

    rng = np.random.default_rng([13, 2])
    for _ in range(300):
        inst = random_kink_instance(rng, "planted", max_M=4)
        if oracle_on(inst).verdict == "local_minimum":
            break
    net, _, _, B = planted(inst)
    start = perturbed(net, inst["X"], B, 1e-6, rng)
    host = check(start, inst["X"], inst["Y"], fragility=False, nearby=True)
    dev = check(start, inst["X"], inst["Y"], fragility=False, nearby=True, backend="torch", device="cpu")
    assert dev.verdict == host.verdict and dev.nearby.verdict == host.nearby.verdict == "local_minimum"
    assert dev.nearby.relative_distance == pytest.approx(host.nearby.relative_distance, rel=1e-6)
    assert dev.nearby.result.certified_radius.value == pytest.approx(host.nearby.result.certified_radius.value,
                                                                     rel=1e-6)


def test_device_selections_are_copies_and_read_indices_as_numpy_does():
    X = np.arange(20.0).reshape(5, 4)
    D = DeviceData.upload(X, True, "cpu")
    rows = D[0:2]
    rows[:] = -1.0  # a caller's in-place edit must not reach the placed data
    assert float(D.t[0, 0]) == 0.0
    D.toarray()[:] = -1.0
    assert float(D.t[1, 1]) == 5.0
    np.testing.assert_array_equal(D[np.array([1, 3], dtype=np.uint8)], AugmentedData(X)[np.array([1, 3])])
    assert D[[]].shape == (0, 5) and D[2, 4] == 1.0


def test_rank_deficient_span_coordinates_stay_on_the_device_and_numpy_checks_stay_on_the_host(monkeypatch):
    from sospcheck.losses import get_loss
    from sospcheck.point import evaluate_point
    from sospcheck.quotient import span_coordinates

    rng = np.random.default_rng(5)
    X = rng.standard_normal((30, 2)) @ rng.standard_normal((2, 5))  # rank 2 in R^5
    net = TwoLayerNet(rng.standard_normal((3, 5)), rng.standard_normal(3), rng.standard_normal((1, 3)), np.zeros(1))
    Y = rng.standard_normal((30, 1))
    host = span_coordinates(evaluate_point(net, X, Y, get_loss("squared"), 1.0, 0.0), 1e-10)
    with placement("cpu"):
        dev = span_coordinates(evaluate_point(net, X, Y, get_loss("squared"), 1.0, 0.0), 1e-10)
        assert isinstance(dev.Xr, DeviceData) and dev.Xr.shape == host.Xr.shape and host.Xr.shape[1] < 6
        np.testing.assert_allclose(dev.Xr.toarray(), host.Xr, rtol=1e-12, atol=1e-12)
        def refuse(self, *a):
            raise AssertionError("a numpy-backend check used the device")

        with monkeypatch.context() as mp:
            for name in ("__matmul__", "__rmatmul__", "gram"):
                mp.setattr(DeviceData, name, refuse)
            inner = check(net, X, Y)  # the numpy backend inside an outer placement stays on the host
    assert check(net, X, Y, backend="torch", device="cpu").verdict == inner.verdict

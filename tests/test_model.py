import numpy as np
import pytest

from sospcheck import Direction, TwoLayerNet
from sospcheck.model import forward, relu_like, relu_like_slope


def good(**kw):
    args = dict(W1=np.ones((2, 3)), b1=np.zeros(2), W2=np.ones((1, 2)), b2=np.zeros(1))
    args.update(kw)
    return args


@pytest.mark.parametrize("kw,match", [
    (dict(b1=np.zeros(3)), "`b1` must have shape"),
    (dict(W2=np.ones((1, 3))), "`W2` must have shape"),
    (dict(b2=np.zeros(2)), "`b2` must have shape"),
    (dict(W1=np.ones(3)), "`W1` must have 2 dimension"),
    (dict(W1=np.array([[1.0, np.nan, 0], [0, 0, 0]])), "`W1` contains 1 NaN"),
    (dict(b2=np.array([np.inf])), "`b2` contains"),
    (dict(s_plus=0.0), "`s_plus` must be > 0"),
    (dict(s_minus=-0.1), "`s_minus` must be >= 0"),
    (dict(s_plus=0.5, s_minus=0.5), "must differ"),
    (dict(s_plus=[1.0, 2.0]), "`s_plus` must be a scalar"),
    (dict(W1="abc"), "`W1` must be a numeric array"),
])
def test_bad_weights_are_rejected_with_the_argument_named(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TwoLayerNet(**good(**kw))


def test_forward_and_leaky_activation():
    net = TwoLayerNet([[1.0], [-1.0]], [0.0, 1.0], [[2.0, 1.0]], [0.5], s_plus=1.0, s_minus=0.1)
    f = forward(net, np.array([[2.0], [-3.0]]))
    np.testing.assert_allclose(f.N, [[2.0, -1.0], [-3.0, 4.0]])
    np.testing.assert_allclose(f.O, [[2.0, -0.1], [-0.3, 4.0]])
    np.testing.assert_allclose(f.out[:, 0], [2 * 2 - 0.1 + 0.5, -0.6 + 4 + 0.5])


def test_weights_are_read_only_copies():
    W1 = np.ones((1, 1))
    net = TwoLayerNet(W1, [0.0], [[1.0]], [0.0])
    W1[0, 0] = 5
    assert net.W1[0, 0] == 1
    with pytest.raises(ValueError):
        net.W1[0, 0] = 3


def test_direction_roundtrip():
    net = TwoLayerNet(np.ones((2, 3)), np.zeros(2), np.ones((1, 2)), np.zeros(1))
    d = Direction.from_blocks(np.arange(8.0).reshape(2, 4), np.ones((1, 2)), np.ones(1))
    assert d.W1.shape == (2, 3) and np.all(d.b1 == [3.0, 7.0])
    moved = net.perturbed(d, 0.5)
    np.testing.assert_allclose(moved.b1, [1.5, 3.5])
    assert abs(d.normalized().norm() - 1) < 1e-12


@pytest.mark.parametrize("kw,match", [
    (dict(W1=np.ones((2, 3)) + 0j), r"`W1` must be a numeric array of real numbers, got ndarray of complex numbers"),
    (dict(W1=[[1, 2, 3], [4, 5, 6j]]), r"`W1` .* got list of complex numbers"),
    (dict(W1=[["1", "2", "3"]] * 2), r"`W1` .* got list of strings"),
    (dict(b1=np.array([b"0", b"1"])), r"`b1` .* bytes"),
    (dict(W2=np.array([["2020-01-01", "2020-01-02"]], dtype="datetime64[D]")), r"`W2` .* datetimes"),
    (dict(b2=np.array([np.timedelta64(1, "s")])), r"`b2` .* timedeltas"),
    (dict(W1=[[1, None, 3], [4, 5, 6]]), r"`W1` .* Python objects"),
    (dict(W1=[[1, 2], [3]]), r"`W1` must be a numeric array of real numbers, got list \("),
    (dict(s_plus=None), r"`s_plus` must be a real number, got None"),
    (dict(s_minus=True), r"`s_minus` must be a number, got True"),
    (dict(s_plus=1 + 0j), r"`s_plus` must be a real number, got complex"),
    (dict(s_plus=float("nan")), r"`s_plus` must be a finite number"),
    (dict(W1=np.broadcast_to(1.0, (200_000, 3000)), b1=np.zeros(200_000), W2=np.ones((1, 200_000))),
     r"`W1` has shape \(200000, 3000\) \(600,000,000 elements\), over the limit"),
])
def test_only_real_numbers_within_the_size_limit_are_weights(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TwoLayerNet(**good(**kw))


def test_real_dtypes_and_numpy_scalars_are_accepted():
    net = TwoLayerNet(**good(W1=np.ones((2, 3), dtype=np.int8), b1=np.array([True, False]), W2=np.ones((1, 2), np.float16),
                             s_plus=np.float32(2.0), s_minus=np.int64(0)))
    assert net.W1.dtype == net.b1.dtype == net.W2.dtype == np.float64 and net.b1.tolist() == [1.0, 0.0]
    assert (net.s_plus, net.s_minus) == (2.0, 0.0) and type(net.s_plus) is float


@pytest.mark.parametrize("s_plus,s_minus", [(1.0, 0.0), (1.0, 0.01), (2.5, 0.0), (1.0, -1.0), (0.5, 1.0), (0.3, 0.3)])
def test_activation_and_slope_equal_the_select_up_to_the_sign_of_zero(s_plus, s_minus):
    rng = np.random.default_rng(11)
    N = np.concatenate([rng.standard_normal(498) * 10.0 ** rng.integers(-300, 300, 498),
                        [0.0, -0.0, np.nan, 5e-324, -5e-324, 1.7e308, -1.7e308]]).reshape(-1, 5)
    with np.errstate(over="ignore"):  # 2.5 x 1.7e308 overflows in both forms alike
        want = np.where(N > 0, s_plus * N, s_minus * N)
        got = relu_like(N, s_plus, s_minus)
    assert got.shape == N.shape and got.dtype == np.float64
    np.testing.assert_array_equal(got, want)  # NaN where NaN, every other entry the same float
    differs = np.signbit(got) != np.signbit(want)  # only a zero's sign may differ (+0 for the ReLU's -0)
    assert np.all(want[differs] == 0)
    np.testing.assert_array_equal(relu_like_slope(N, s_plus, s_minus), np.where(N > 0, s_plus, s_minus))
    # at -inf the ReLU is its limit 0 (the select gave 0 * -inf = NaN); elsewhere infinities pass through
    inf = relu_like(np.array([np.inf, -np.inf]), s_plus, s_minus)
    assert inf[0] == (np.inf if s_plus > 0 else -np.inf)
    assert inf[1] == (0.0 if s_minus == 0 else -np.inf if s_minus > 0 else np.inf)
    if s_plus > 0 <= s_minus != s_plus:  # the slopes a network accepts
        net = TwoLayerNet(np.ones((2, 5)), np.zeros(2), np.ones((1, 2)), np.zeros(1), s_plus=s_plus, s_minus=s_minus)
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(net.activation(N), want)
        np.testing.assert_array_equal(net.slope(N), np.where(N > 0, s_plus, s_minus))


@pytest.mark.parametrize("s_minus", [0.0, 0.01])
def test_activation_and_slopes_keep_the_memory_order_of_N(s_minus):
    """The forward pass returns ``N`` in Fortran order; the Hessian operator reads the slopes' transpose,
    which is then contiguous without a copy."""
    N = np.asfortranarray(np.random.default_rng(2).standard_normal((50, 4)))
    for arr in (relu_like(N, 1.0, s_minus), relu_like_slope(N, 1.0, s_minus)):
        assert arr.flags.f_contiguous and np.shares_memory(np.ascontiguousarray(arr.T), arr)
    assert relu_like_slope(np.ascontiguousarray(N), 1.0, s_minus).flags.c_contiguous

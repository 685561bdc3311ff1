"""``[X 1]`` as an operator (sospcheck.augmented): every product equals the one with the explicit copy,
and the check never forms that copy."""

import numpy as np
import pytest

from instances import random_kink_instance
from sospcheck import TwoLayerNet, check
from sospcheck.augmented import AugmentedData, abs_max, dense, frobenius_norm, gram, gram_of_rows, row_block
from sospcheck.geometry import row_norms


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((37, 5))
    return X, np.hstack([X, np.ones((37, 1))]), rng


def test_products_equal_those_of_the_explicit_copy(data):
    X, Xb, rng = data
    A = AugmentedData(X)
    M, v, B, w = rng.standard_normal((6, 4)), rng.standard_normal(6), rng.standard_normal((3, 37)), rng.standard_normal(37)
    assert A.shape == Xb.shape and len(A) == 37
    np.testing.assert_allclose(A @ M, Xb @ M, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(A @ v, Xb @ v, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(B @ A, B @ Xb, rtol=1e-13, atol=1e-13)  # ndarray @ A defers to A
    np.testing.assert_allclose(w @ A, w @ Xb, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(A.T @ B.T, Xb.T @ B.T, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(A.T @ w, Xb.T @ w, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(M.T @ A.T, M.T @ Xb.T, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(A.T @ A, Xb.T @ Xb, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(gram(A), gram(Xb), rtol=1e-13, atol=1e-12)
    with pytest.raises(ValueError, match="columns"):
        A @ np.ones((5, 2))


def test_norms_rows_and_selections_equal_those_of_the_explicit_copy(data):
    X, Xb, rng = data
    A = AugmentedData(X)
    np.testing.assert_allclose(row_norms(A), np.linalg.norm(Xb, axis=1), rtol=1e-14)
    assert frobenius_norm(A) == pytest.approx(np.linalg.norm(Xb), rel=1e-14)
    assert abs_max(A) == np.max(np.abs(Xb))
    assert abs_max(AugmentedData(0.1 * X)) == 1.0  # the ones column
    assert abs_max(AugmentedData(np.zeros((0, 3)))) == 0.0
    mask = rng.random(37) < 0.4
    np.testing.assert_array_equal(A[mask], Xb[mask])
    np.testing.assert_array_equal(A[4], Xb[4])
    np.testing.assert_array_equal(A[:6, 2:], Xb[:6, 2:])
    np.testing.assert_array_equal(np.asarray(A), Xb)
    np.testing.assert_array_equal(dense(A), Xb)
    block = row_block(A, slice(3, 9))
    assert isinstance(block, AugmentedData) and np.shares_memory(block.X, X)  # a view, no copy
    np.testing.assert_allclose(block @ np.ones(6), Xb[3:9].sum(axis=1), rtol=1e-14)
    np.testing.assert_array_equal(row_block(Xb, mask), Xb[mask])


def test_gram_of_selected_rows_reads_blocks_and_equals_the_gram_of_the_selection(monkeypatch):
    rng = np.random.default_rng(8)
    X = rng.standard_normal((3000, 40))  # 2^16 // 41 = 1598 rows a block: two blocks, the last one partial
    Xb = np.hstack([X, np.ones((3000, 1))])
    mask = rng.random(3000) < 0.6
    biggest = [0]
    real_gram = gram

    def watched(A):  # every selection that reaches the Gram is one block's
        biggest[0] = max(biggest[0], A.shape[0])
        return real_gram(A)

    monkeypatch.setattr("sospcheck.augmented.gram", watched)
    for A in (AugmentedData(X), Xb):
        biggest[0] = 0
        np.testing.assert_allclose(gram_of_rows(A, mask), Xb[mask].T @ Xb[mask], rtol=1e-12, atol=1e-10)
        assert 0 < biggest[0] <= (1 << 16) // 41
    np.testing.assert_array_equal(gram_of_rows(AugmentedData(X), np.zeros(3000, bool)), np.zeros((41, 41)))


@pytest.mark.parametrize("solver", ["dense", "matrix_free"])
def test_the_check_never_forms_the_augmented_copy(monkeypatch, solver):
    """Any implicit conversion of ``[X 1]`` to an array (the m x (dx + 1) copy) fails the check here."""
    def refuse(self, dtype=None, copy=None):
        raise AssertionError("the check formed the augmented copy of X")

    rng = np.random.default_rng(11)
    insts = [random_kink_instance(rng, "any") for _ in range(12)]
    expected = []
    for inst in insts:
        net = TwoLayerNet(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["s_plus"], inst["s_minus"])
        expected.append(check(net, inst["X"], inst["Y"], loss=inst["loss"], weight_decay=inst["weight_decay"],
                              solver=solver).verdict)
    monkeypatch.setattr(AugmentedData, "__array__", refuse)
    for inst, want in zip(insts, expected):
        net = TwoLayerNet(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["s_plus"], inst["s_minus"])
        got = check(net, inst["X"], inst["Y"], loss=inst["loss"], weight_decay=inst["weight_decay"], solver=solver)
        assert got.verdict == want


def test_any_input_layout_is_read_as_float64_with_contiguous_rows():
    rng = np.random.default_rng(8)
    wide = rng.standard_normal((20, 10))
    strided = wide[:, ::2]  # neither C nor F contiguous: every product would be ~3x slower
    A = AugmentedData(strided)
    assert A.X.flags.c_contiguous and np.array_equal(A.X, strided)
    ints = AugmentedData(np.array([[50000, 2], [3, 4]], dtype=np.int32))
    assert ints.X.dtype == np.float64
    assert frobenius_norm(ints) == pytest.approx(np.sqrt(50000.0**2 + 4 + 9 + 16 + 2))  # no int32 overflow


def test_element_and_transposed_array_access(data):
    X, Xb, _ = data
    A = AugmentedData(X)
    assert A[3, 2] == Xb[3, 2] and A[3, -1] == 1.0
    np.testing.assert_array_equal(A[[1, 4], 1:3], Xb[[1, 4], 1:3])
    np.testing.assert_array_equal(np.asarray(A.T), Xb.T)


def test_row_chunks_cover_the_rows_in_order_within_the_budget():
    from sospcheck.augmented import row_chunks

    for m, width, floats in [(10, 3, 7), (10, 3, 30), (10, 3, 1000), (1, 50, 1), (7, 0, 2)]:
        chunks = row_chunks(m, width, floats)
        assert np.array_equal(np.concatenate([np.arange(m)[c] for c in chunks]), np.arange(m))
        assert all(c.stop - c.start <= max(1, floats // max(width, 1)) for c in chunks)
    assert row_chunks(10, 3, 1000) == [slice(0, 10)]  # within the budget: one chunk, the whole array


def test_transpose_times_sums_the_chunks_of_B_against_the_same_rows_of_A(data, monkeypatch):
    import sospcheck.augmented as augmented
    from sospcheck.augmented import transpose_times

    X, Xb, rng = data
    B = rng.standard_normal((37, 4))
    calls = []

    def rows_of_B(rows):
        calls.append(rows)
        return B[rows]

    whole = transpose_times(rows_of_B, AugmentedData(X), 4)
    assert len(calls) == 1
    np.testing.assert_allclose(whole, B.T @ Xb, rtol=1e-13, atol=1e-13)
    monkeypatch.setattr(augmented, "CHUNK_FLOATS", 40)  # 10 rows a chunk (above an eighth of A: 27 floats)
    for A in (AugmentedData(X), Xb):
        calls.clear()
        np.testing.assert_allclose(transpose_times(rows_of_B, A, 4), B.T @ Xb, rtol=1e-13, atol=1e-13)
        assert len(calls) == 4

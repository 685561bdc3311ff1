import numpy as np
import pytest

from sospcheck.copositive import (COPOSITIVE, NOT, STRICT, copositivity, copositivity_enumerate, orthant_lower_bound,
                                  copositivity_milp, copositivity_pretests)


def sampled_min(S, rng, n=20000):
    Y = rng.dirichlet(np.ones(S.shape[0]) * 0.3, size=n)
    return np.min(np.einsum("ni,ij,nj->n", Y, S, Y))


def test_identity_is_strict_and_negative_diagonal_is_not():
    assert copositivity_enumerate(np.eye(3), 1e-12).status == STRICT
    res = copositivity_enumerate(np.diag([1.0, -1.0, 2.0]), 1e-12)
    assert res.status == NOT and res.value < 0 and np.all(res.witness >= 0)


def test_indefinite_but_copositive():
    # nonnegative entries: copositive although indefinite
    S = np.array([[0.0, 1.0], [1.0, 0.0]])
    res = copositivity_enumerate(S, 1e-12)
    assert res.status == COPOSITIVE  # y = e_1 gives y'Sy = 0
    assert np.linalg.eigvalsh(S)[0] < 0


def test_repeated_eigenvalue_witness_found_in_eigenspace():
    # S = -I (3x3) restricted... every basis of the eigenspace may miss the positive vector
    S = -np.eye(3)
    res = copositivity_enumerate(S, 1e-12)
    assert res.status == NOT and np.all(res.witness >= 0)
    assert res.witness @ S @ res.witness < 0


@pytest.mark.parametrize("seed", range(25))
def test_enumeration_milp_and_sampling_agree(seed):
    rng = np.random.default_rng(seed)
    r = int(rng.integers(2, 6))
    B = rng.standard_normal((r, r))
    S = B + B.T + rng.uniform(0, 3) * np.eye(r) + rng.uniform(0, 1) * np.abs(B + B.T)
    tol = 1e-10
    enum = copositivity_enumerate(S, tol)
    milp = copositivity_milp(S, tol)
    assert (enum.status == NOT) == (milp.status == NOT)
    sampled = sampled_min(S, rng)
    if enum.status == NOT:
        assert enum.witness @ S @ enum.witness < 0
        assert milp.value <= sampled + 1e-9  # the MILP finds the global simplex minimum
    else:
        assert sampled >= -1e-9


HORN = np.array([[1, -1, 1, 1, -1], [-1, 1, -1, 1, 1], [1, -1, 1, -1, 1],
                 [1, 1, -1, 1, -1], [-1, 1, 1, -1, 1]], dtype=float)


def test_dispatch_uses_milp_past_the_subset_budget():
    # the Horn matrix is copositive but neither PSD nor nonnegative: no pre-test decides it
    assert copositivity_pretests(HORN, 1e-12) is None
    assert copositivity(HORN, 1e-12, max_subsets=10).method == "milp"
    res = copositivity(HORN, 1e-12, max_subsets=10**6)
    assert res.method == "enumeration" and res.status == COPOSITIVE
    assert copositivity(-HORN, 1e-12, max_subsets=10).method.startswith("pretest")


@pytest.mark.parametrize("seed", range(40))
def test_pretests_agree_with_enumeration(seed):
    rng = np.random.default_rng(100 + seed)
    r = int(rng.integers(2, 8))
    B = rng.standard_normal((r, r))
    kind = seed % 4
    if kind == 0:
        S = B @ B.T + rng.uniform(-0.5, 0.5) * np.eye(r)  # PSD-ish, either side of the boundary
    elif kind == 1:
        S = np.abs(B + B.T) - rng.uniform(0, 0.5) * np.eye(r)
    elif kind == 2:
        C = rng.standard_normal((r, r - 1))
        S = C @ C.T  # singular PSD: copositive, strict unless the null space meets the orthant
    else:
        S = B + B.T + rng.uniform(0, 4) * np.eye(r)
    tol = 1e-9
    pre = copositivity_pretests(S, tol)
    enum = copositivity_enumerate(S, tol)
    if pre is None:
        return
    assert (pre.status == NOT) == (enum.status == NOT), (pre, enum)
    if pre.status == NOT:
        assert np.all(pre.witness >= 0) and pre.witness @ S @ pre.witness < -tol
    else:
        assert sampled_min(S, rng) >= -1e-9


def test_singular_psd_with_a_nonnegative_null_vector_is_copositive_not_strict():
    u = np.array([1.0, 2.0, 0.5])
    P = np.eye(3) - np.outer(u, u) / (u @ u)  # PSD, null space spanned by u >= 0
    res = copositivity_pretests(P, 1e-12)
    assert res.status == COPOSITIVE and np.allclose(res.witness, u / u.sum())
    v = np.array([1.0, -2.0, 0.5])
    Q = np.eye(3) - np.outer(v, v) / (v @ v)
    assert copositivity_pretests(Q, 1e-12).status == STRICT
    assert copositivity_enumerate(Q, 1e-12).status == STRICT


def test_large_positive_definite_schur_complement_needs_no_milp():
    # the benchmark's (100, 10, 10000) point had a 178 x 178 positive definite S that went to the MILP
    rng = np.random.default_rng(0)
    B = rng.standard_normal((178, 178))
    S = B @ B.T / 178 + 0.1 * np.eye(178)
    assert S.min() < 0  # not decided by the nonnegative-entries test
    res = copositivity(S, 1e-10, max_subsets=2**14)
    assert res.status == STRICT and res.method == "pretest: positive definite"


def test_psd_whose_null_vector_is_nonnegative_only_up_to_rounding_is_copositive():
    # from the oracle stress: a Schur complement with null vector (1, 1, -1e-9): y = (1/2, 1/2, 0)
    # gives y'Sy ~ 1e-19, so S is copositive, not strictly (enumeration agrees)
    v = np.array([1.0, 1.0, -1e-9]) / np.sqrt(2.0)
    Q, _ = np.linalg.qr(np.column_stack([v, [0.0, 0.0, 1.0], [1.0, -1.0, 0.0]]))
    S = Q @ np.diag([0.0, 0.0188, 0.813]) @ Q.T
    tol = 1e-7
    pre = copositivity_pretests(S, tol)
    assert pre.status == COPOSITIVE and pre.value <= tol and np.all(pre.witness >= 0)
    assert copositivity_enumerate(S, tol).status == COPOSITIVE


def test_small_negative_off_diagonals_are_not_taken_as_strict():
    # entries >= -tol and a diagonal > tol were called strict; the (1, 1) eigenvalue 5e-7 <= tol
    # makes it plain copositive, as the enumeration says
    tol = 1e-6
    S = np.array([[1.5e-6, -1e-6], [-1e-6, 1.5e-6]])
    assert copositivity_enumerate(S, tol).status == COPOSITIVE
    assert copositivity_pretests(S, tol).status == COPOSITIVE
    assert copositivity_pretests(np.abs(S), tol).status == STRICT  # nonnegative with diagonal > tol


def test_orthant_lower_bound_is_not_stuck_at_a_rounding_level_eigenvalue():
    """A positive lambda_min of 1e-16 proves almost nothing; the diagonal bound (nonnegative off-diagonal)
    or the simplex minimum give the real margin, and each is a valid lower bound of y'Sy / |y|^2 on y >= 0."""
    rng = np.random.default_rng(0)
    ones = np.ones((2, 2)) + 1e-16 * np.eye(2)  # null vector (1, -1) outside the orthant
    n = np.array([1.0, -1.0, 1.0])
    proj = np.eye(3) - np.outer(n, n) / 3 + 1e-16 * np.eye(3)  # negative off-diagonal entries
    for S, at_least in ((ones, 0.99), (proj, 0.05)):
        assert np.linalg.eigvalsh(S)[0] < 1e-12
        bound = orthant_lower_bound(S)
        assert bound is not None and bound >= at_least
        y = np.abs(rng.standard_normal((2000, S.shape[0])))
        assert np.min(np.einsum("ij,jk,ik->i", y, S, y) / np.sum(y * y, axis=1)) >= bound * (1 - 1e-9)
    assert orthant_lower_bound(np.array([[1.0, -1.0], [-1.0, 1.0]])) is None  # y = (1, 1): zero

import numpy as np
import pytest

from sospcheck.copositive import (COPOSITIVE, NOT, STRICT, copositivity, copositivity_enumerate,
                                  copositivity_milp)


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


def test_dispatch_uses_milp_past_the_subset_budget():
    S = -np.eye(5)
    assert copositivity(S, 1e-12, max_subsets=10).method == "milp"
    assert copositivity(S, 1e-12, max_subsets=10**6).method == "enumeration"

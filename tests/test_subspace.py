"""The two ECQP subspace solvers behind one interface: same answers, no call-order coupling."""

import numpy as np
import pytest

import cases
import pieces
from sospcheck.margins import Margins
from sospcheck.reduced import ReducedProblem, constraint_blocks, particular_solutions
from sospcheck.subspace import DenseSubspace, ProjectedSubspace, SubspaceSolver, make_subspace


def _problem(net, X, Y):
    pt, boundary, neurons, red = pieces.reduction(net, X, Y)
    prob = ReducedProblem.of(pt, red, boundary)
    return prob, constraint_blocks(prob, neurons, red)


@pytest.mark.parametrize("make", [cases.icqp_one_sided_minimum, cases.interpolating_kink_minimum])
def test_dense_and_projected_agree_in_any_call_order(make):
    prob, blocks = _problem(*make())
    assert prob.flat_pairs
    dense, free = DenseSubspace(prob, blocks), ProjectedSubspace(prob, blocks)
    assert isinstance(dense, SubspaceSolver) and isinstance(free, SubspaceSolver)
    eig_tol = 1e-9 * dense.hessian_norm
    My = particular_solutions(prob, blocks)
    HMy = prob.apply(prob.J_base, My)
    # the solves first, before any eigenvalue: nothing is set up by min_eig
    Xd, Xf = dense.solve(HMy, eig_tol, Margins()), free.solve(HMy, eig_tol, Margins())
    assert np.allclose(Xd, Xf, atol=1e-8 * max(1.0, np.abs(Xd).max()))
    ed, ef = dense.min_eig(eig_tol), free.min_eig(eig_tol)
    assert ed.value == pytest.approx(ef.value, abs=1e-8 * dense.hessian_norm) and ed.accuracy == 0.0
    assert np.allclose(dense.solve(HMy, eig_tol, Margins()), Xd)
    assert dense.dim == free.dim and free.products > 0


def test_make_subspace_picks_dense_up_to_the_budget():
    prob, blocks = _problem(*cases.convex_kink_minimum())
    assert make_subspace(prob, blocks, "auto", 10**6).name == "dense"
    assert make_subspace(prob, blocks, "auto", 1).name == "matrix_free"
    assert make_subspace(prob, blocks, "matrix_free", 10**6).name == "matrix_free"

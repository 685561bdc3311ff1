"""Evidence for the two second-order hot spots named in ANALYSIS.md (not part of ``run.py``):

    .venv/bin/python benchmarks/hotspots.py

1. Matrix-free ECQP at a benign point: Hessian products ARPACK needs (``eigsh(which="SA")`` on the
   solver's shifted projected operator, and with a larger ``ncv``) against a full-reorthogonalised
   Lanczos run (its smallest Ritz value and residual bound) and against the library's
   ``ProjectedSubspace.min_eig`` (above 300 coordinates: the preconditioned certificate), with the
   dense solver's value as reference.
2. Dense reduced Hessian: ``HessianOperator.dense()`` (per block pair, rank updates on the rows where
   both neurons are active) against the Gram matrix of the whole per-sample Jacobian (``dsyrk``) plus
   the block-diagonal cross term, squared loss, dy = 1.

Builds the pieces ``second_order_test`` builds (``quotient.reduce``, ``reduced.ReducedProblem``,
``reduced.constraint_blocks``, the two ``subspace`` solvers) through their public interfaces; products
are read off the operator's own counter (``HessianOperator.products``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (first: it pins the BLAS threads before NumPy loads)
import numpy as np  # noqa: E402
from scipy.linalg.blas import dsyrk  # noqa: E402
from scipy.sparse.linalg import ArpackNoConvergence, eigsh  # noqa: E402

from sospcheck import operators  # noqa: E402
from sospcheck.quotient import reduce, span_coordinates  # noqa: E402
from sospcheck.reduced import ReducedProblem, constraint_blocks  # noqa: E402
from sospcheck.dense_subspace import DenseSubspace  # noqa: E402
from sospcheck.krylov import extreme_ritz  # noqa: E402
from sospcheck.subspace import ProjectedSubspace  # noqa: E402


def subspaces(inst: dict):
    """The dense and the matrix-free ECQP subspaces of a planted stationary point (M = 0, no decay)."""
    net, X, Y = inst["net"], inst["X"], inst["Y"]
    pieces = common.first_order_pieces(net, X, Y)
    pt = pieces.pt
    # nothing dead or zero-output at these points; the bias shifts and inactive directions are found as
    # the check finds them
    red = reduce(pt, pieces.neurons, pieces.boundary, span_coordinates(pt, pieces.tol.rank), [], [], pieces.tol.rank)
    dense_prob = ReducedProblem.of(pt, red, pieces.boundary)
    mf_prob = ReducedProblem.of(pt, red, pieces.boundary)
    return (DenseSubspace(dense_prob, constraint_blocks(dense_prob, pieces.neurons, red)),
            ProjectedSubspace(mf_prob, constraint_blocks(mf_prob, pieces.neurons, red)))


def lanczos_ritz(apply, v0: np.ndarray, steps: int) -> tuple[float, float]:
    """Smallest Ritz value of ``steps`` full-reorthogonalised Lanczos steps and its residual bound."""
    ritz = extreme_ritz(lambda x: -apply(x), v0, 0.0, steps)  # the largest of -A
    return -ritz.value, ritz.residual


def ecqp_products(m: int, dx: int, dh: int) -> None:
    dense, mf = subspaces(common.stationary_instance(m, dx, dh))
    lam_exact = dense.min_eig(0.0).value
    n = mf.n
    print(f"\n[1] planted minimum m={m} dx={dx} dh={dh}: n = {n}, ECQP dim {mf.dim}, exact lambda_min {lam_exact:.10g}, "
          f"|H| {dense.hessian_norm:.4g}")
    v0 = mf.project(np.random.default_rng(0).standard_normal((n, 1)))[:, 0]
    for label, kw in (("ARPACK tol 1e-8, ncv 20 (library)", dict(tol=1e-8)),
                      ("ARPACK tol 1e-12, ncv 20 (library)", dict(tol=1e-12)),
                      ("ARPACK tol 1e-8, ncv 64", dict(tol=1e-8, ncv=min(n, 64)))):
        before = mf.products
        t0 = time.perf_counter()
        try:
            lam = f"{eigsh(mf.op, k=1, which='SA', v0=v0, maxiter=max(1000, 20 * n), **kw)[0][0]:.10g}"
        except ArpackNoConvergence:
            lam = "did not converge"
        print(f"    {label:36s}: {lam:>18s}  {mf.products - before:6d} products  {time.perf_counter() - t0:6.2f} s")
    before = mf.products
    t0 = time.perf_counter()
    steps = min(n, 300)
    theta, res = lanczos_ritz(lambda x: mf.apply(x)[:, 0], v0, steps)
    print(f"    {'Lanczos, ' + str(steps) + ' steps (already run)':36s}: {theta:18.10g}  {mf.products - before:6d} products  "
          f"{time.perf_counter() - t0:6.2f} s  residual bound {res:.2g}")
    before = mf.products
    t0 = time.perf_counter()
    eig = mf.min_eig(1e-9 * mf.hessian_norm)
    print(f"    {'ProjectedSubspace.min_eig (library)':36s}: {eig.value:18.10g}  {mf.products - before:6d} products  "
          f"{time.perf_counter() - t0:6.2f} s  {eig.detail}")


def gram_hessian(op: operators.HessianOperator, chunk: int = 2048) -> np.ndarray:
    """``H`` of the squared loss (dy = 1, with b2) as ``Jac' Jac + cross``, ``Jac`` built per row chunk."""
    O, Xr, W2, r, J = op.O, op.Xr, op.W2, op.r, op.Jt.T
    m, dh = O.shape
    rho = Xr.shape[1]
    n = dh + dh * rho + 1
    H = np.zeros((n, n))
    for s in range(0, m, chunk):
        rows = slice(s, s + chunk)
        Jac = np.empty((O[rows].shape[0], n))
        Jac[:, :dh] = O[rows]
        Jac[:, dh:-1] = ((J[rows] * W2[0])[:, :, None] * Xr[rows][:, None, :]).reshape(-1, dh * rho)
        Jac[:, -1] = 1.0
        H = dsyrk(op.h_scalar, Jac, beta=1.0, c=H, trans=1, lower=0, overwrite_c=1)
    H = np.triu(H) + np.triu(H, 1).T
    E = (J * r).T @ Xr  # E_k = sum_i J_ik r_i xr_i' (dy = 1)
    for k in range(dh):
        cols = slice(dh + k * rho, dh + (k + 1) * rho)
        H[k, cols] += E[k]
        H[cols, k] += E[k]
    return H


def dense_formation(m: int, dx: int, dh: int) -> None:
    X, Y = common.gaussian_data(m, dx, 1, 0)
    net = common.random_net(dx, dh, 1, 0)
    pt = common.first_order_pieces(net, X, Y).pt
    op = operators.HessianOperator(pt.fwd.O, pt.fwd.Xbar, net.W2, pt.r, pt.Hl, net.slope(pt.fwd.N).astype(float),
                                   identity_hessian=True)
    t1, H1 = common.timed(op.dense)
    t2, H2 = common.timed(lambda: gram_hessian(op))
    print(f"\n[2] dense H, m={m} dx={dx} dh={dh} (n = {H1.shape[0]}): dense() {t1:.3f} s, Jacobian Gram {t2:.3f} s "
          f"({t1 / t2:.1f}x), max |difference| / |H| = {np.abs(H1 - H2).max() / np.abs(H1).max():.1e}")


if __name__ == "__main__":
    ecqp_products(1000, 40, 5)
    ecqp_products(4000, 50, 10)
    dense_formation(10000, 100, 10)

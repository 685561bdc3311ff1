"""The smooth test practitioners run (issue 3, item c): gradient norm and minimum Hessian eigenvalue from
autograd, Lanczos on Hessian-vector products (the PyHessian approach), float64.

``hvp(v) = jvp(grad(R), (theta,), (v,))`` with ``torch.func``; ``scipy.sparse.linalg.eigsh`` runs on a
``LinearOperator`` around it: ``|H|`` with ``which="LM", tol=1e-3`` (as the library's matrix-free
solver) and ``lambda_min`` with ``which="SA"`` at the requested tolerance. Autograd's ReLU uses
``h'(0) = 0``. "Minimum" iff ``|grad| <= 1e-7 * scale`` and ``lambda_min >= -1e-9 |H|``: the default
``Tolerances.gradient`` / ``Tolerances.eigen`` of ``sospcheck``, with the gradient scale of
``sospcheck.smooth``.
"""

from __future__ import annotations

import time

import numpy as np


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def smooth_test(net, X: np.ndarray, Y: np.ndarray, eig_rtol: float = 1e-9, arpack_tol: float = 1e-9,
                grad_rtol: float = 1e-7, maxiter: int | None = None) -> dict:
    """Time and outcome of the autograd test at ``net`` (squared loss, sum). ``seconds`` (wall) and ``cpu_s``
    (CPU) cover the gradient, ``|H|`` and ``lambda_min`` (data already in memory; the import of torch and
    the one-off tensor conversion excluded)."""
    import torch
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
    from torch.func import grad, jvp

    Xt, Yt = torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(np.ascontiguousarray(Y))
    shapes = [net.W1.shape, net.b1.shape, net.W2.shape, net.b2.shape]
    sizes = [int(np.prod(s)) for s in shapes]
    theta = torch.from_numpy(np.concatenate([np.ravel(a) for a in (net.W1, net.b1, net.W2, net.b2)]))

    def risk(th):
        W1, b1, W2, b2 = (p.reshape(s) for p, s in zip(torch.split(th, sizes), shapes))
        out = torch.relu(Xt @ W1.T + b1) @ W2.T + b2
        return 0.5 * ((out - Yt) ** 2).sum()

    grad_fn = grad(risk)
    n_products = 0

    def hvp(v):
        nonlocal n_products
        n_products += 1
        return jvp(grad_fn, (theta,), (torch.from_numpy(np.ascontiguousarray(v).ravel()),))[1].numpy()

    n = theta.numel()
    H = LinearOperator((n, n), matvec=hvp, dtype=np.float64)
    t0, c0 = time.perf_counter(), time.process_time()
    g = grad_fn(theta).numpy()
    hnorm = float(abs(eigsh(H, k=1, which="LM", tol=1e-3, return_eigenvectors=False)[0]))
    norm_products = n_products
    converged = True
    try:
        lam = float(eigsh(H, k=1, which="SA", tol=arpack_tol, maxiter=maxiter or max(1000, 20 * n),
                          v0=np.random.default_rng(0).standard_normal(n), return_eigenvectors=False)[0])
    except ArpackNoConvergence as exc:
        converged = False
        lam = float(np.min(exc.eigenvalues)) if len(exc.eigenvalues) else float("nan")
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        out = torch.relu(Xt @ torch.from_numpy(np.asarray(net.W1)).T + torch.from_numpy(np.asarray(net.b1)))
        O = out.numpy()
    resid = O @ net.W2.T + net.b2 - Y
    Xbar_norm = np.sqrt(np.sum(X**2) + X.shape[0])
    gscale = np.linalg.norm(resid) * (np.linalg.norm(O) + Xbar_norm * np.linalg.norm(net.W2) + 1.0)
    gnorm = float(np.linalg.norm(g))
    minimum = bool(gnorm <= grad_rtol * gscale and lam >= -eig_rtol * hnorm)
    return {"seconds": seconds, "cpu_s": cpu_s, "grad_norm": gnorm, "grad_rel": gnorm / gscale, "hessian_norm": hnorm,
            "min_eig": lam, "converged": converged, "products": n_products, "norm_products": norm_products,
            "arpack_tol": arpack_tol, "verdict": "minimum" if minimum else "not a minimum"}

"""What an autograd tool sees: the gradient and Hessian of the risk with ``h'(0) := s_minus``.

PyTorch's ``relu`` and ``leaky_relu`` backward passes use the ``t <= 0`` slope at ``t = 0``. At a
kink this "gradient" is one element of the Clarke subdifferential and the "Hessian" is the Hessian
of one smooth piece; the pair can look like a minimum while a one-sided descent exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .augmented import frobenius_norm
from .validation import validate_inputs
from .model import TwoLayerNet
from .operators import HessianOperator
from .point import evaluate_point

__all__ = ["SmoothView", "smooth_view"]


@dataclass(frozen=True)
class SmoothView:
    """``grad_norm`` and the extreme eigenvalues of the piece Hessian autograd would report."""

    grad_norm: float
    min_eig: float
    max_eig: float
    looks_like_minimum: bool

    def describe(self) -> str:
        verdict = "looks like a minimum" if self.looks_like_minimum else "does not look like a minimum"
        return (f"autograd view (h'(0) = s_minus): |grad| = {self.grad_norm:.3g}, Hessian eigenvalues in "
                f"[{self.min_eig:.3g}, {self.max_eig:.3g}] -> {verdict}")


def smooth_view(net: TwoLayerNet, X, Y, loss="squared", reduction="sum", weight_decay=0.0, tol: float = 1e-8) -> SmoothView:
    """Dense gradient and Hessian of the piece with ``h'(0) = s_minus`` (small ``p`` only)."""
    X, Yp, lossobj, weight, lam = validate_inputs(net, X, Y, loss, reduction, weight_decay)
    pt = evaluate_point(net, X, Yp, lossobj, weight, lam)
    J = np.where(pt.fwd.N > 0, net.s_plus, net.s_minus)
    Xbar = pt.fwd.Xbar
    parts = [(pt.r.T @ pt.fwd.O).ravel(), ((pt.a() * J).T @ Xbar).ravel()] + ([pt.r.sum(axis=0)] if net.has_b2 else [])
    g = np.concatenate(parts)
    z = [net.W2.ravel(), net.Z.ravel()] + ([net.b2] if net.has_b2 else [])
    g = g + lam * np.concatenate(z)
    H = HessianOperator(pt.fwd.O, Xbar, net.W2, pt.r, pt.Hl, J, lam, has_b2=net.has_b2).dense()
    ev = np.linalg.eigvalsh(H)
    scale = max(np.max(np.abs(ev)), 1e-300)
    gscale = np.linalg.norm(pt.r) * (np.linalg.norm(pt.fwd.O) + frobenius_norm(Xbar) * np.linalg.norm(net.W2) + 1) + 1e-300
    gn = float(np.linalg.norm(g))
    return SmoothView(gn, float(ev[0]), float(ev[-1]), bool(gn <= tol * gscale and ev[0] >= -tol * scale))

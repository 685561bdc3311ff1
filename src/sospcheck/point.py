"""The point under test: one forward pass, the loss derivatives, and the exact local model (DESIGN.md section 2).

Along a direction ``eta`` and for ``0 < t`` below the validity radius, the output change is
exactly ``t dY1 + t^2 dY2`` with the kink slopes chosen by the sign of ``t_ik``; so
``R(z + t eta) = R(z) + t first(eta) + t^2 second(eta) + o(t^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .augmented import product_chunks, row_block, row_chunks
from .losses import Loss, risk, weight_norm_sq
from .model import Direction, Forward, TwoLayerNet, forward

__all__ = ["Problem", "Point", "evaluate_point"]


@dataclass(frozen=True)
class Problem:
    """The risk ``R(z) = weight sum_i l(f(x_i; z), y_i) + weight_decay/2 |z|^2`` at the weights ``net``.

    ``Y`` is prepared for ``loss`` and ``weight`` is the reduction's (1, or 1/m for "mean"); build it
    from raw inputs with :func:`sospcheck.check.validate_inputs` or :meth:`CheckResult.problem`.
    """

    net: TwoLayerNet
    X: np.ndarray
    Y: np.ndarray
    loss: Loss
    weight: float
    weight_decay: float

    @property
    def m(self) -> int:
        return self.X.shape[0]

    def at(self, net: TwoLayerNet) -> "Problem":
        """The same data and loss at other weights."""
        return replace(self, net=net)

    def risk_at(self, net: TwoLayerNet) -> float:
        """``R`` at the weights ``net`` (one forward pass)."""
        return risk(net, self.X, self.Y, self.loss, self.weight, self.weight_decay)

    def point(self, fwd: Forward | None = None) -> "Point":
        """One pass over the data: ``R(z)``, residuals and the local model at ``z = net``; ``fwd``: the
        forward pass of ``net`` on ``X`` when already made."""
        return _evaluate(self, fwd)


@dataclass(frozen=True)
class Point:
    """Everything the tests need about ``z``; ``r`` and ``Hl`` already include the reduction weight.
    The problem's fields read through (``pt.net``, ``pt.X``, ...). Its arrays are read-only: the check's
    analyses and fragility re-runs share them (a custom loss must not write into ``out``)."""

    problem: Problem
    fwd: Forward
    r: np.ndarray  # (m, dy) weight * grad l_i
    Hl: np.ndarray  # (m, dy, dy) weight * Hess l_i
    value: float
    # work done once per point and shared by the fragility re-runs: first_order's C, the line searches
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    net = property(lambda self: self.problem.net)
    X = property(lambda self: self.problem.X)
    Y = property(lambda self: self.problem.Y)
    loss = property(lambda self: self.problem.loss)
    weight = property(lambda self: self.problem.weight)
    weight_decay = property(lambda self: self.problem.weight_decay)
    m = property(lambda self: self.problem.m)

    def risk_at(self, net: TwoLayerNet) -> float:
        return self.problem.risk_at(net)

    def a(self, rows: slice | np.ndarray = slice(None), k: int | None = None) -> np.ndarray:
        """``a_ik = w_k . r_i`` on ``rows`` (all neurons, or neuron ``k`` alone): formed where it is used, a
        chunk at a time, and not kept (it is as large as ``N``; ``r`` and ``W2`` are small)."""
        return self.r[rows] @ (self.net.W2 if k is None else self.net.W2[:, k])

    def kink_slopes(self, T: np.ndarray, boundary: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
        """``J_ik``: ``h'(N_ik)`` off the kink; on it, the one-sided slope chosen by ``sign(T_ik)``; ``T`` and
        ``boundary`` given on ``rows`` only when ``rows`` is."""
        net = self.net
        on_kink = np.where(T > 0, net.s_plus, net.s_minus)
        return np.where(boundary, on_kink, net.slope(self.fwd.N[rows]))

    def local_terms(self, d: Direction, boundary: np.ndarray, T: np.ndarray | None = None) -> tuple[float, float]:
        """``(first(d), second(d))`` of the exact local model, weight decay included; ``T = Xbar dZ'``
        when the caller already has it. The output changes ``dY1, dY2`` (m, dy) are formed a chunk of rows
        at a time (``T`` too when not given): no (m, dh) temporary."""
        fwd, net = self.fwd, self.net
        m, dy = fwd.out.shape
        dY1, dY2 = np.empty((m, dy)), np.empty((m, dy))
        chunks = row_chunks(m, 4 * net.dh) if T is not None else product_chunks(fwd.Xbar, 4 * net.dh)
        for rows in chunks:
            Tr = row_block(fwd.Xbar, rows) @ d.Z.T if T is None else T[rows]
            JT = self.kink_slopes(Tr, boundary[rows], rows) * Tr
            dY1[rows] = fwd.O[rows] @ d.W2.T + JT @ net.W2.T
            dY2[rows] = JT @ d.W2.T
        if d.b2 is not None:
            dY1 = dY1 + d.b2
        first = float(np.sum(self.r * dY1))
        second = float(np.sum(self.r * dY2)) + 0.5 * float(np.einsum("ic,icd,id->", dY1, self.Hl, dY1))
        if self.weight_decay:
            z = net.as_direction()
            first += self.weight_decay * float(z.vector() @ d.vector())
            second += 0.5 * self.weight_decay * d.norm() ** 2
        return first, second


def evaluate_point(net: TwoLayerNet, X: np.ndarray, Y: np.ndarray, loss: Loss, weight: float, weight_decay: float) -> Point:
    """One pass over the data: outputs, ``r_i``, ``H_i`` and the risk (:meth:`Problem.point`)."""
    return _evaluate(Problem(net, X, Y, loss, weight, weight_decay))


def _evaluate(problem: Problem, fwd: Forward | None = None) -> Point:
    net, X, Y, loss, weight, weight_decay = (problem.net, problem.X, problem.Y, problem.loss, problem.weight,
                                             problem.weight_decay)
    fwd = forward(net, X) if fwd is None else fwd
    m, dy = fwd.out.shape
    r = weight * np.asarray(loss.grad(fwd.out, Y), dtype=float)
    Hl = weight * np.asarray(loss.hess(fwd.out, Y), dtype=float)
    value = weight * float(np.sum(loss.value(fwd.out, Y)))
    if r.shape != (m, dy) or not np.all(np.isfinite(r)):
        raise ValueError(f"loss `{loss.name}`: gradient must be finite with shape ({m}, {dy}), got {r.shape}")
    if Hl.shape != (m, dy, dy) or not np.all(np.isfinite(Hl)):
        raise ValueError(f"loss `{loss.name}`: Hessian must be finite with shape ({m}, {dy}, {dy}), got {Hl.shape}")
    if not np.isfinite(value):
        raise ValueError(f"loss `{loss.name}` is not finite at this point")
    if weight_decay:
        value += 0.5 * weight_decay * weight_norm_sq(net)
    for arr in (fwd.N, fwd.O, fwd.out, r, Hl):  # shared by every analysis of this point (fragility re-runs)
        if isinstance(arr, np.ndarray):
            arr.flags.writeable = False
    return Point(problem, fwd, r, Hl, value)

"""The smooth pieces of a deep network near the point, by automatic differentiation (DESIGN.md 10.1, 10.2).

A piece freezes one slope per pair (``a_j = S_j N_j``); its risk ``f_S`` and pre-activations
``z^S_j`` are polynomials in ``theta``. Everything is float64 torch; the loss enters through its
per-sample gradients ``r_i`` and Hessians ``H_i`` at the point (both the same in every piece, since
the outputs are), so ``Hess f_S = J' H J + sum_i r_i . Hess out_i + lam I``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import grad, jacrev, jvp, vjp, vmap

from .model import DeepNet

__all__ = ["Pieces"]


class Pieces:
    """The point ``theta0`` with data, loss derivatives and the slopes off the kinks.

    ``base`` (list of m x n_l arrays): ``h'(N)`` off the kinks; kink entries are overwritten per piece.
    """

    def __init__(self, net: DeepNet, X: np.ndarray, r: np.ndarray, Hl: np.ndarray, weight_decay: float,
                 base: list[np.ndarray], device=None):
        self.net = net
        self.dev = torch.device("cpu") if device is None else torch.device(device)
        # torch refuses to wrap read-only arrays (the check's data view): those are copied
        t = lambda a: torch.as_tensor(np.require(a, requirements=("C", "W")), dtype=torch.float64,  # noqa: E731
                                      device=self.dev)
        self.theta0 = t(net.vector())
        self.X = t(X)
        self.r = t(r)
        self.Hl = t(Hl)
        self.lam = float(weight_decay)
        self.base = [np.array(b, float) for b in base]
        self.p = net.n_params
        self.m = X.shape[0]
        self.widths = [W.shape[0] for W in net.weights]
        self._layout = []
        pos = 0
        for W, b in zip(net.weights, net.biases):
            nw = W.size
            self._layout.append((pos, W.shape, None if b is None else (pos + nw, b.shape[0])))
            pos += nw + (0 if b is None else b.shape[0])
        self.products = 0
        self._t = t

    # ----------------------------------------------------------------------------- the frozen network
    def slopes(self, overrides: dict) -> list[torch.Tensor]:
        """The base slopes with ``overrides`` ``{(i, l, k): slope}``."""
        S = [b.copy() for b in self.base]
        for (i, l, k), s in overrides.items():
            S[l][i, k] = s
        return [self._t(s) for s in S]

    def layers(self, theta: torch.Tensor):
        for pos, shape, bias in self._layout:
            W = theta[pos:pos + shape[0] * shape[1]].reshape(shape)
            b = None if bias is None else theta[bias[0]:bias[0] + bias[1]]
            yield W, b

    def run(self, theta: torch.Tensor, S: list[torch.Tensor], extra: list[torch.Tensor] | None = None,
            X: torch.Tensor | None = None):
        """Outputs and the hidden pre-activations of the frozen network; ``extra[l]`` is added to the
        activations of hidden layer ``l`` (for the abs-normal derivatives ``b`` and ``L``)."""
        a = self.X if X is None else X
        pre = []
        layers = list(self.layers(theta))
        for l, (W, b) in enumerate(layers):
            N = a @ W.T
            if b is not None:
                N = N + b
            if l == len(layers) - 1:
                return N, pre
            pre.append(N)
            a = S[l] * N
            if extra is not None:
                a = a + extra[l]

    def _pre_at(self, theta, S, idx, extra=None):
        _, pre = self.run(theta, S, extra)
        return torch.stack([pre[l][i, k] for (i, l, k) in idx]) if idx else theta.new_zeros(0)

    # ------------------------------------------------------------------------------- derivatives
    def gradient(self, S: list[torch.Tensor]) -> np.ndarray:
        """``grad f_S(theta0) = J' r + lam theta0``."""
        def lin(theta):
            out, _ = self.run(theta, S)
            return torch.sum(self.r * out)

        g = grad(lin)(self.theta0) + self.lam * self.theta0
        return g.cpu().numpy()

    def jacobian(self, S: list[torch.Tensor], idx: list[tuple]) -> np.ndarray:
        """Rows ``grad z^S_j(theta0)`` for the pairs ``idx``."""
        if not idx:
            return np.zeros((0, self.p))
        return jacrev(lambda th: self._pre_at(th, S, idx))(self.theta0).cpu().numpy()

    def abs_normal(self, S0: list[torch.Tensor], idx: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
        """``Z`` (gradients of the pre-activations at ``idx``) and ``L`` (their derivatives w.r.t. an
        additive input on the activations at ``idx``), with the slopes ``S0`` (kinks at 0): section 10.2."""
        if not idx:
            return np.zeros((0, self.p)), np.zeros((0, 0))
        n = len(idx)
        where = [[(q, i, k) for q, (i, ll, k) in enumerate(idx) if ll == l] for l in range(len(S0))]
        index = [(torch.tensor([w[0] for w in ws], dtype=torch.long, device=self.dev),
                  torch.tensor([w[1] for w in ws], dtype=torch.long, device=self.dev),
                  torch.tensor([w[2] for w in ws], dtype=torch.long, device=self.dev)) for ws in where]

        def fn(theta, e):
            extra = [torch.zeros_like(s).index_put((ii, kk), e[qq]) for s, (qq, ii, kk) in zip(S0, index)]
            return self._pre_at(theta, S0, idx, extra)

        Zm, Lm = jacrev(fn, argnums=(0, 1))(self.theta0, self.theta0.new_zeros(n))
        return Zm.cpu().numpy(), Lm.cpu().numpy()

    def hvp_fn(self, S: list[torch.Tensor], kappa: np.ndarray | None = None, idx: list[tuple] | None = None):
        """``v -> (Hess f_S - sum_j kappa_j Hess z^S_j) v`` (the Lagrangian's Hessian, section 10.6), batched
        over the columns of a p x q array."""
        kap = None if kappa is None or len(idx or []) == 0 else self._t(kappa)

        def outputs(theta):
            return self.run(theta, S)[0]

        def scalar(theta):
            out, pre = self.run(theta, S)
            s = torch.sum(self.r * out)
            if kap is not None:
                s = s - torch.sum(kap * torch.stack([pre[l][i, k] for (i, l, k) in idx]))
            return s

        gs = grad(scalar)

        def one(v):
            _, Jv = jvp(outputs, (self.theta0,), (v,))
            HJv = torch.einsum("icd,id->ic", self.Hl, Jv)
            _, pull = vjp(outputs, self.theta0)
            gn = pull(HJv)[0]
            _, hv = jvp(gs, (self.theta0,), (v,))
            return gn + hv + self.lam * v

        batched = vmap(one, in_dims=1, out_dims=1)

        def apply(V: np.ndarray) -> np.ndarray:
            V = np.asarray(V, float)
            single = V.ndim == 1
            V = V[:, None] if single else V
            self.products += V.shape[1]
            # columns in chunks: each carries m x width intermediates through vmap
            step = max(1, (1 << 24) // max(1, self.m * max(self.widths)))
            out = np.zeros((self.p, V.shape[1]))
            for c in range(0, V.shape[1], step):
                out[:, c:c + step] = batched(self._t(V[:, c:c + step])).cpu().numpy()
            return out[:, 0] if single else out

        return apply

    def second_derivatives(self, S: list[torch.Tensor], idx: list[tuple], V: np.ndarray) -> np.ndarray:
        """``(v' Hess z^S_j v)_j`` for the pairs ``idx`` and each column ``v`` of ``V`` (n x q)."""
        if not idx:
            return np.zeros((0, V.shape[1]))
        zfun = lambda th: self._pre_at(th, S, idx)  # noqa: E731
        out = np.zeros((len(idx), V.shape[1]))
        for c in range(V.shape[1]):
            v = self._t(V[:, c])
            _, jz = jvp(lambda th: jvp(zfun, (th,), (v,))[1], (self.theta0,), (v,))
            out[:, c] = jz.cpu().numpy()
        return out

    def directional(self, S: list[torch.Tensor], v: np.ndarray) -> list[np.ndarray]:
        """First-order change of every hidden pre-activation along ``v`` in the piece ``S``."""
        _, d = jvp(lambda th: tuple(self.run(th, S)[1]), (self.theta0,), (self._t(v),))
        return [x.cpu().numpy() for x in d]

    def abs_gradient_norm(self, s_kink: float) -> float:
        """``|grad|`` of ``sum_i |r_i| . out_i`` for the network with ``|W|``, ``|b|``, ``|x|`` and slopes
        ``|S|`` (``s_kink`` on the kinks): an upper bound of every term of ``|J' r|`` (section 10.5)."""
        S = [self._t(np.where(np.isnan(b), s_kink, np.abs(b))) for b in self.base]
        theta = torch.abs(self.theta0)
        X = torch.abs(self.X)
        rabs = torch.abs(self.r)

        def lin(th):
            out, _ = self.run(th, S, X=X)
            return torch.sum(rabs * out)

        return float(torch.linalg.norm(grad(lin)(theta)))

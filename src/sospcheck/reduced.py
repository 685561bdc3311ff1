"""The reduced second-order problem: kept coordinates, Hessian products, and the per-neuron constraints
of the critical cone (DESIGN.md section 3, step 4).

Constraints: ``A theta = 0`` holds the symmetry rows ``-w_k . u_k + Z_k . v_k = 0`` (no weight
decay) and ``t_ik = 0`` for non-flat boundary pairs; the ``L`` flat pairs give ``sigma_ik t_ik >= 0``.
A neuron whose boundary vectors are dependent (Assumption 2 fails) holds all its pairs here; its
critical faces add their generators per ICQP (:mod:`sospcheck.degenerate_second`).
Every row acts on one neuron's ``(u_k, nu_k)``, except the rows of flat directions shared by a group
of neurons (:class:`sospcheck.shared_flat.SharedRows`), which join the group's blocks into one (with
``b2`` for an affine group): the constraints are block diagonal, so projections are local.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .first_order import NeuronTest
from .model import Direction
from .operators import HessianOperator, Layout, make_operator
from .point import Point
from .quotient import Reduction

__all__ = ["ReducedProblem", "Block", "constraint_blocks", "particular_solutions", "rank_tol_of"]


@dataclass
class ReducedProblem:
    """The reduced second-order problem shared by the ECQP and all ICQPs: the point, its span basis
    ``V`` and data ``Xr``, the kept coordinates ``keep`` (indices into ``theta``), the slopes ``J_base``
    with every kink on its ``s_plus`` side, and the flat pairs ``(i, k, allowed signs)``."""

    pt: Point
    V: np.ndarray
    Xr: np.ndarray
    layout: Layout
    keep: np.ndarray
    J_base: np.ndarray
    flat_pairs: list = field(default_factory=list)
    backend: str = "numpy"
    device: str | None = None
    base_operator: HessianOperator | None = field(default=None, repr=False)
    gram: np.ndarray | None = field(default=None, repr=False)  # Xr' Xr, once computed

    @classmethod
    def of(cls, pt: Point, red: Reduction, boundary: np.ndarray, backend: str = "numpy",
           device: str | None = None) -> "ReducedProblem":
        J = pt.net.slope(pt.fwd.N)  # a new array, in N's memory order (the operator reads its transpose)
        J[boundary] = pt.net.s_plus
        J.flags.writeable = False  # shared with the operator: other slope patterns are copies
        c = red.coords
        return cls(pt, c.V, c.Xr, c.layout, red.keep, J, [], backend, device, gram=c.gram)

    def xr_gram(self) -> np.ndarray:
        """``Xr' Xr`` (rho x rho), from the span computation when it had it."""
        if self.gram is None:
            self.gram = self.Xr.T @ self.Xr
        return self.gram

    @property
    def n(self) -> int:
        """Number of kept coordinates."""
        return int(self.keep.size)

    @property
    def products(self) -> int:
        """Hessian-vector products done so far (all slope patterns share one counter)."""
        return 0 if self.base_operator is None else self.base_operator.products

    def operator(self, J: np.ndarray) -> HessianOperator:
        """The Hessian operator for slopes ``J``; the data go to the backend once, for ``J_base``."""
        if self.base_operator is None:
            pt = self.pt
            self.base_operator = make_operator(
                self.backend, pt.fwd.O, self.Xr, pt.net.W2, pt.r, pt.Hl, self.J_base, pt.weight_decay,
                identity_hessian=pt.loss.name == "squared", has_b2=pt.net.has_b2, device=self.device,
            )
        return self.base_operator if J is self.J_base else self.base_operator.with_slopes(J)

    def apply(self, J: np.ndarray, M: np.ndarray) -> np.ndarray:
        """``H_J[keep][:, keep] @ M`` without forming ``H_J``."""
        full = np.zeros((self.layout.n, M.shape[1]))
        full[self.keep] = M
        return self.operator(J).matmat(full)[self.keep]

    def direction(self, theta_keep: np.ndarray) -> Direction:
        """The network direction of a vector of kept coordinates."""
        full = np.zeros(self.layout.n)
        full[self.keep] = theta_keep
        U, Nu, c = self.layout.split(full[:, None])
        return Direction.from_blocks(Nu[0] @ self.V.T, U[0], None if c is None else c[0], self.pt.net.has_b1)

    def J_for(self, signs: dict) -> np.ndarray:
        """The slopes of the sign cone that puts flat pair ``(i, k)`` on side ``signs[(i, k)]``."""
        J = self.J_base.copy()
        net = self.pt.net
        for (i, k), s in signs.items():
            J[i, k] = net.s_plus if s > 0 else net.s_minus
        return J


@dataclass
class Block:
    """One neuron's constraints in its own kept coordinates ``idx`` (into the kept vector); a group's
    block (shared flat directions) holds several neurons, ``k`` the first."""

    k: int
    idx: np.ndarray
    A: np.ndarray  # equality rows: the n_slice slice rows (symmetry, slices), then t_ik = 0 for non-flat pairs
    B: np.ndarray  # flat rows t_ik (unsigned)
    flat: list  # (i, allowed signs) per row of B
    QE: np.ndarray | None = None  # orthonormal basis of the row space of [A; B]
    dependent: bool = False
    n_slice: int = 0  # leading rows of A that quotient flat directions (not kink rows)
    flat_neurons: list = field(default_factory=list)  # the neuron of each row of B (empty: all k)

    @property
    def flat_pairs(self) -> list:
        """``(i, k, allowed signs)`` per row of ``B``."""
        ks = self.flat_neurons or [self.k] * len(self.flat)
        return [(i, k, allowed) for (i, allowed), k in zip(self.flat, ks)]


def rank_tol_of(sv: np.ndarray) -> float:
    """Singular values below this count as zero in a block's constraint rows."""
    return 1e-10 * (sv[0] if sv.size else 0.0)


def _neuron_rows(prob: ReducedProblem, nt: NeuronTest, kept: np.ndarray, nu_kept: bool, Zr: np.ndarray,
                 red: Reduction) -> tuple[list, list, list, int]:
    """Equality rows (the slice rows first), flat rows, their allowed signs, and the number of slice
    rows of neuron ``nt.k`` on its kept coordinates."""
    layout, net, k = prob.layout, prob.pt.net, nt.k
    rows, flat_rows, flat = [], [], []
    if prob.pt.weight_decay == 0 and k not in red.quotient.zero_output_neurons:
        rows.append(np.concatenate([-net.W2[:, k], Zr[k]])[kept])
    if k in red.inactive_rows:
        F = red.inactive_rows[k]
        rows.extend(np.hstack([np.zeros((F.shape[0], layout.dy)), F])[:, kept])
    if k in red.shift_rows:
        r1, r2 = rows[-1] if rows else None, red.shift_rows[k][kept]
        # transversal to both flat curves only if the two slice rows are independent (Gram determinant)
        if r1 is None or (r1 @ r1) * (r2 @ r2) - (r1 @ r2) ** 2 > 1e-12 * (r1 @ r1) * (r2 @ r2):
            rows.append(r2)
    n_slice = len(rows)
    if nu_kept:
        kink_rows = prob.Xr[nt.boundary] if len(nt.boundary) else np.zeros((0, prob.Xr.shape[1]))
        for j, i in enumerate(nt.boundary):
            row = np.concatenate([np.zeros(layout.dy), kink_rows[j]])[kept]
            fp, fm = bool(nt.flat_plus[j]), bool(nt.flat_minus[j])
            if nt.assumption2 and (fp or fm):
                flat_rows.append(row)
                flat.append((int(i), tuple(s for s, f in ((1, fp), (-1, fm)) if f)))
            else:
                rows.append(row)
    return rows, flat_rows, flat, n_slice


def _block(k: int, idx: np.ndarray, d: int, rows: list, flat_rows: list, flat: list, n_slice: int = 0,
           flat_neurons: list | None = None, basis: np.ndarray | None = None) -> Block:
    """``basis``: an orthonormal basis (columns) of the row space of ``rows``, when known (no flat rows)."""
    A = np.array(rows) if rows else np.zeros((0, d))
    nonzero = np.any(A != 0, axis=1) if A.size else np.zeros(A.shape[0], bool)
    A = A[nonzero] if A.size else A
    B = np.array(flat_rows) if flat_rows else np.zeros((0, d))
    b = Block(k, idx, A, B, flat, n_slice=int(nonzero[:n_slice].sum()), flat_neurons=list(flat_neurons or []))
    if basis is not None and not B.shape[0]:
        b.QE = basis
        return b
    AB = np.vstack([A, B])
    if not AB.shape[0]:
        b.QE = np.zeros((d, 0))
        return b
    U, sv, _ = np.linalg.svd(AB.T, full_matrices=False)
    rank = int(np.sum(sv > rank_tol_of(sv)))
    b.QE = U[:, :rank]
    if B.shape[0]:
        rank_A = int(np.sum(np.linalg.svd(A, compute_uv=False) > rank_tol_of(sv))) if A.shape[0] else 0
        b.dependent = rank - rank_A < B.shape[0]
    return b


def constraint_blocks(prob: ReducedProblem, neurons: list[NeuronTest], red: Reduction) -> list[Block]:
    """Per neuron with a kept coordinate, its constraint rows on ``(u_k, nu_k)``; sets ``prob.flat_pairs``."""
    layout = prob.layout
    keep = red.kept_mask
    pos = -np.ones(layout.n, int)
    pos[prob.keep] = np.arange(prob.keep.size)
    blocks = []
    for nt in neurons:
        coords = np.concatenate([layout.u_index(nt.k), layout.nu_index(nt.k)])
        kept = keep[coords]
        if not np.any(kept):
            continue
        rows, flat_rows, flat, n_slice = _neuron_rows(prob, nt, kept, bool(keep[layout.nu_index(nt.k)[0]]),
                                                      red.coords.Zr, red)
        blocks.append(_block(nt.k, pos[coords[kept]], int(kept.sum()), rows, flat_rows, flat, n_slice))
    blocks = _join_shared(blocks, red, pos)
    prob.flat_pairs = [p for b in blocks for p in b.flat_pairs]
    return blocks


def _join_shared(blocks: list[Block], red: Reduction, pos: np.ndarray) -> list[Block]:
    """One block per group of shared flat directions: its members' rows side by side, the group's rows
    (on ``g.idx``, which may add ``b2``) as further slice rows; the group's block stands where its first
    member's stood."""
    for g in red.shared:
        members = [b for b in blocks if b.k in g.neurons]
        idx = np.unique(np.concatenate([b.idx for b in members] + [pos[g.idx]]))
        at = {int(p): j for j, p in enumerate(idx)}
        d = idx.size

        def place(M: np.ndarray, cols: np.ndarray) -> np.ndarray:
            out = np.zeros((M.shape[0], d))
            out[:, [at[int(c)] for c in cols]] = M
            return out

        shared = place(g.rows, pos[g.idx])
        slices = [place(b.A[:b.n_slice], b.idx) for b in members] + [shared]
        kinks = [place(b.A[b.n_slice:], b.idx) for b in members]
        flat_rows = [place(b.B, b.idx) for b in members]
        rows = np.vstack(slices + kinks)
        # a large linear group: its members' rows are usually in the span of the group's (orthonormal)
        # rows, which then are the block's basis, without an SVD of the whole block
        inside = np.linalg.norm(rows - (rows @ shared.T) @ shared) <= 1e-10 * max(np.linalg.norm(rows), 1.0)
        joined = _block(members[0].k, idx, d, list(rows), list(np.vstack(flat_rows)),
                        [f for b in members for f in b.flat], sum(s.shape[0] for s in slices),
                        [p[1] for b in members for p in b.flat_pairs], shared.T if inside else None)
        first = blocks.index(members[0])
        blocks = [b for b in blocks if b not in members]
        blocks.insert(first, joined)
    return blocks


def particular_solutions(prob: ReducedProblem, blocks: list[Block]) -> np.ndarray:
    """``My``: column j has ``A theta = 0`` and ``t = e_j`` on the flat rows (min-norm, unit columns)."""
    My = np.zeros((prob.keep.size, len(prob.flat_pairs)))
    j = 0
    for b in blocks:
        nb = b.B.shape[0]
        if not nb:
            continue
        AB = np.vstack([b.A, b.B])
        rhs = np.zeros((AB.shape[0], nb))
        rhs[b.A.shape[0]:] = np.eye(nb)
        My[b.idx, j:j + nb] = np.linalg.pinv(AB) @ rhs
        j += nb
    # copositivity is invariant to positive scaling of y: unit columns keep S on the scale of H
    return My / np.linalg.norm(My, axis=0)[None, :]

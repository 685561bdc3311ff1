"""The extreme rays of a neuron's kink arrangement (DESIGN.md section 9): its one-dimensional faces, from
which every closed cell is generated (with the lineality space); the critical faces of
:mod:`sospcheck.degenerate_second` are cones of flat rays."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from .arrangement import RANK_TOL, Hyperplanes, group_hyperplanes

__all__ = ["Rays", "enumerate_rays"]


@dataclass(frozen=True)
class Rays:
    """The extreme rays of an arrangement: its one-dimensional faces in the span of the normals.

    Every closed cell is the lineality space plus the cone of the rays it contains, and ray ``j``
    lies in cell ``sigma`` iff ``sigma_h signs[j, h] >= 0`` for every hyperplane ``h`` (a face lies in a
    closed cell iff its sign vector is below the cell's). directions (n_rays, d): unit, in the span of
    the normals (``R^d`` coordinates). signs (n_rays, n): ``tau`` of each ray (0 on the hyperplanes
    containing it). Rays come in pairs ``+-``.
    """

    hyperplanes: Hyperplanes
    directions: np.ndarray
    signs: np.ndarray

    @property
    def n_rays(self) -> int:
        return int(self.signs.shape[0])

    def in_cells(self, cell_signs: np.ndarray) -> np.ndarray:
        """(n_cells, n_rays): whether each ray lies in each closed cell (``Cells.signs``)."""
        return np.all(cell_signs[:, None, :] * self.signs[None, :, :] >= 0, axis=2)


def enumerate_rays(rows, tol: float = RANK_TOL) -> Rays:
    """The extreme rays of the arrangement of ``rows`` (a :class:`Hyperplanes` or an (M, d) array).

    In the essential arrangement (rank ``r``, unit normals ``U``) a ray spans a line, the flat of rank
    ``r - 1`` cut out by the hyperplanes containing it; every such line is the null space of some
    ``r - 1`` independent normals. So the lines are found from the ``(r - 1)``-subsets of the normals
    (a subset inside the zero set of a line already found is skipped), each line identified by the
    set of hyperplanes it lies in (``|U_h . l| <= tol``); each gives two rays. Rank 1: the two
    directions of the normal. At most ``C(n, r - 1)`` subsets, a few hundred within the default
    ``max_cells`` (DESIGN.md section 9).
    """
    hp = rows if isinstance(rows, Hyperplanes) else group_hyperplanes(rows, tol)
    U = hp.reduced()
    n, r = U.shape
    lines, zero_sets = [], []
    if r == 1:
        lines.append(np.ones(1))
        zero_sets.append(frozenset())
    elif r >= 2:
        for S in combinations(range(n), r - 1):
            if any(zs.issuperset(S) for zs in zero_sets):
                continue
            _, sv, Vt = np.linalg.svd(U[list(S)])
            if sv[-1] <= tol * sv[0]:  # dependent: not a line
                continue
            ell = Vt[-1]
            zs = frozenset(np.flatnonzero(np.abs(U @ ell) <= tol).tolist())
            if zs not in zero_sets:
                lines.append(ell)
                zero_sets.append(zs)
    if not lines:
        return Rays(hp, np.zeros((0, hp.d)), np.zeros((0, n), np.int8))
    L = np.array(lines)
    T = U @ L.T  # (n, n_lines)
    tau = np.where(np.abs(T) <= tol, 0, np.sign(T)).T.astype(np.int8)
    directions = L @ hp.basis.T
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return Rays(hp, np.vstack([directions, -directions]), np.vstack([tau, -tau]))

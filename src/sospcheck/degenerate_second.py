"""Second order at degenerate kinks: the critical faces of a neuron's kink arrangement (DESIGN.md section 9).

At a first-order stationary neuron ``f_k >= 0``, and on each closed cell ``C_sigma`` (lineality space
``L_k`` plus the cone of the cell's extreme rays) ``f_k(v) = g_sigma . v``. Its zero set there is the face
of ``C_sigma`` exposed by ``g_sigma``: ``L_k`` plus the cone of the cell's rays ``rho`` with ``f_k(rho) = 0``
(*flat rays*), since ``g_sigma . sum_j mu_j rho_j = sum_j mu_j f_k(rho_j)`` with every term ``>= 0``. The
neuron's critical directions are the union of these faces over the cells. On one face the slopes of
the kink pairs are fixed (``s_{sigma_i}`` where ``t_ik != 0``, irrelevant where ``t_ik = 0``), so the
second-order term is one quadratic form there, and the face enters step 4 like the flat rays of a
neuron that satisfies Assumption 2: with every kink of the neuron held (the ECQP subspace, shared by
all faces), ``theta = My y + Mw w`` with ``y >= 0`` and ``My``'s columns the face's flat rays (in the
kept coordinates). The rays generate the face also when they are more than its dimension (a
non-simplicial face): ``y -> My y`` maps the orthant onto it, and no nonzero ``y >= 0`` gives
``My y = 0`` (the face is pointed modulo ``L_k``), so the copositivity test of the Schur complement
decides the form on the face exactly as it does on an orthant.

A face contained in another critical face (of another cell) is dropped: the larger one's form is the
same quadratic on it. Several degenerate neurons combine as the product of their faces, and with the
``2^K`` sign choices of the neurons that satisfy Assumption 2.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from math import prod

import numpy as np

from .arrangement_rays import enumerate_rays
from .degenerate import DegenerateFirstOrder, kink_terms, neuron_kink_data

__all__ = ["CriticalFace", "NeuronFaces", "FaceChoice", "critical_faces", "neuron_faces", "face_choices",
           "face_combinations"]


@dataclass(frozen=True)
class CriticalFace:
    """One critical face of a degenerate neuron: the cone of the flat rays ``rays`` (indices into
    :attr:`NeuronFaces.rays`) plus the lineality space. row_signs (M_k,): the sign of ``xbar_i . v`` on
    the face's relative interior (0: the pair stays on its kink there, or a zero row). cells: the cells
    whose critical face it is or contains."""

    rays: tuple[int, ...]
    row_signs: np.ndarray
    cells: tuple[int, ...]


@dataclass(frozen=True)
class NeuronFaces:
    """The critical faces of degenerate neuron ``k`` (only those with a ray: the face ``L_k`` alone lies
    in the ECQP subspace).

    boundary (M_k,): its kink points ``i``. rays (n_rays, d): the unit extreme rays of its arrangement in
    ``R^d``; ray_slopes: ``f_k`` along each; flat: ``|f_k(rho)| <= threshold`` (the first order's
    threshold, so a slope the first order calls zero is flat here); ratios: ``|f_k(rho)| / threshold``,
    the margins of those decisions. n_cells: cells of the arrangement."""

    k: int
    boundary: np.ndarray
    rays: np.ndarray
    ray_slopes: np.ndarray
    flat: np.ndarray
    ratios: np.ndarray
    faces: tuple[CriticalFace, ...]
    n_cells: int
    threshold: float

    @property
    def n_faces(self) -> int:
        return len(self.faces)


def critical_faces(first: DegenerateFirstOrder, Xk, a, c, s_plus: float, s_minus: float, k: int = 0,
                   boundary=None) -> NeuronFaces:
    """The maximal critical faces of a stationary neuron (module docstring); ``first`` its
    :func:`~sospcheck.degenerate.degenerate_first_order` result on the same ``Xk, a, c``."""
    if first.status != "stationary":
        raise ValueError(f"critical faces need a first-order stationary neuron, got status {first.status!r}")
    Xk, a, c = (np.asarray(x, float) for x in (Xk, a, c))
    rays = enumerate_rays(first.cells.hyperplanes)
    slopes = kink_terms(Xk, a, c, s_plus, s_minus, rays.directions) if rays.n_rays else np.zeros(0)
    thr = first.threshold
    flat = np.abs(slopes) <= thr
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(slopes == 0, 0.0, np.abs(slopes) / thr)
    members = rays.in_cells(first.cells.signs.astype(int)) & flat[None, :]
    by_set: dict[frozenset, list[int]] = {}
    for j, row in enumerate(members):
        if row.any():
            by_set.setdefault(frozenset(np.flatnonzero(row).tolist()), []).append(j)
    sets = list(by_set)
    faces = []
    for s in sets:
        if any(s < other for other in sets):
            continue
        ids = tuple(sorted(s))
        cells = tuple(j for other, js in by_set.items() if other <= s for j in js)
        tau = np.sign(rays.signs[list(ids)].sum(axis=0)).astype(np.int8)  # rays of one cell agree in sign
        faces.append(CriticalFace(ids, first.cells.hyperplanes.row_signs(tau), tuple(sorted(cells))))
    idx = np.arange(len(Xk)) if boundary is None else np.asarray(boundary)
    return NeuronFaces(int(k), idx, rays.directions, slopes, flat, ratios, tuple(faces), first.n_cells, thr)


def neuron_faces(pt, nt, first: DegenerateFirstOrder) -> NeuronFaces:
    """:func:`critical_faces` for neuron ``nt.k`` of the check (its ``Point``, ``NeuronTest`` and the
    :func:`~sospcheck.degenerate.degenerate_neuron` result), on the first order's data."""
    return critical_faces(first, *neuron_kink_data(pt, nt), pt.net.s_plus, pt.net.s_minus, nt.k, nt.boundary)


def face_combinations(faces: Sequence[NeuronFaces]) -> int:
    """How many ICQPs the faces multiply the ``2^K`` sign choices by: the product of the face counts of the
    neurons that have a critical face with a ray (1 if none)."""
    return prod(f.n_faces for f in faces if f.n_faces)


@dataclass(frozen=True)
class FaceChoice:
    """One critical face per degenerate neuron: the generator columns ``My`` (unit, in the reduced
    problem's kept coordinates) and the slopes of the neurons' kink pairs on those faces."""

    My: np.ndarray
    slopes: tuple  # (k, rows i, slope per row) for the pairs with t_ik != 0 on the face
    detail: str

    def apply_slopes(self, J: np.ndarray) -> np.ndarray:
        """``J`` with the kink pairs of the chosen faces set to their one-sided slopes."""
        if not self.slopes:
            return J
        J = J.copy()
        for k, rows, s in self.slopes:
            J[rows, k] = s
        return J


def face_choices(prob, faces: Sequence[NeuronFaces]) -> Iterator[FaceChoice]:
    """Every combination of one critical face per degenerate neuron (neurons without one contribute
    nothing), as :class:`FaceChoice` in the kept coordinates of ``prob`` (a
    :class:`~sospcheck.reduced.ReducedProblem`); a single empty choice when there is no face."""
    net, layout, n = prob.pt.net, prob.layout, prob.keep.size
    per_neuron = []
    for nf in faces:
        if not nf.n_faces:
            continue
        nu = layout.nu_index(nf.k)
        pos = np.searchsorted(prob.keep, nu)
        if np.any(pos >= n) or np.any(prob.keep[np.minimum(pos, n - 1)] != nu):
            continue  # v_k quotiented as exactly flat: its faces change nothing
        G = nf.rays @ prob.V  # rays lie in the data span: |V' rho| = |rho|
        G /= np.linalg.norm(G, axis=1, keepdims=True)
        options = []
        for j, face in enumerate(nf.faces):
            My = np.zeros((n, len(face.rays)))
            My[pos] = G[list(face.rays)].T
            on = np.flatnonzero(face.row_signs)
            s = np.where(face.row_signs[on] > 0, net.s_plus, net.s_minus)
            options.append((My, (nf.k, nf.boundary[on], s), f"neuron {nf.k} face {j + 1}/{nf.n_faces} "
                            f"(rays {list(face.rays)})"))
        per_neuron.append(options)
    yield from _product(per_neuron, n)


def _product(per_neuron: list, n: int) -> Iterator[FaceChoice]:
    if not per_neuron:
        yield FaceChoice(np.zeros((n, 0)), (), "")
        return
    for rest in _product(per_neuron[1:], n):
        for My, slope, detail in per_neuron[0]:
            yield FaceChoice(np.hstack([My, rest.My]), (slope,) + rest.slopes,
                             "; ".join(x for x in (detail, rest.detail) if x))

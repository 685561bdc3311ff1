"""Flat directions shared by several neurons (DESIGN.md section 4, "Flat directions shared by several
neurons"). A *linear group*, two or more neurons with no kink point whose slopes on the data are
proportional (``S_ik = s_k beta_i``): the *affine group* (one slope on all data: always active, or
inactive under a leaky ReLU) or a *pattern group* (the same activation pattern). It acts only through
``P = sum_k s_k w_k nu_k'`` (``Y_i = beta_i P xr_i``, plus ``b2 nu_c'`` for the affine group); the local
group ``GL(a)`` (with the bias translations) acting by ``W2_A -> W2_A S T S^-1``, ``nu_A -> T^-1 nu_A``
keeps that map at this point and at every nearby one, so the tangent of its orbit is quotiented like
the rescaling symmetry (:func:`linear_group_rows`). A *duplicate group* (neurons with kink points that
are positive multiples of each other in the data span) acts through ``sum_k |Z_k| w_k h(e . x)``:
moving output weight between its members and mixing their input weights off the kink points keep
every output; those moves are quotiented where every point along them is stationary with the same
first-order structure (:func:`duplicate_rows`). Zero-output neurons join both kinds (their ``u_k``
trades with the others' weights), dead neurons neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import null_space, orth

from .augmented import frobenius_norm
from .first_order import NeuronTest
from .operators import Layout
from .options import Tolerances
from .point import Point
from .quotient import SpanCoordinates, affine_neurons

__all__ = ["SharedRows", "linear_groups", "linear_group_rows", "duplicate_groups", "response_span", "duplicate_rows",
           "shared_rows"]


@dataclass(frozen=True)
class SharedRows:
    """Flat directions shared by the neurons of one group: ``rows`` (orthonormal) on the ``theta``
    coordinates ``idx``. ``extra``: how many of them go beyond the members' own rescaling and bias-shift
    directions. ``kind``: "affine", "pattern" (:func:`linear_group_rows`) or "duplicate"
    (:func:`duplicate_rows`)."""

    kind: str
    neurons: list[int]
    idx: np.ndarray
    rows: np.ndarray
    extra: int


def _orthonormal_rows(G: np.ndarray, rel_tol: float = 1e-8) -> np.ndarray:
    """An orthonormal basis (rows) of the row space of ``G``; singular values below ``rel_tol`` times the
    largest are dropped (a direction only nearly in the span is not claimed flat)."""
    if not G.size:
        return np.zeros((0, G.shape[1]))
    _, sv, Vt = np.linalg.svd(G, full_matrices=False)
    return Vt[: int(np.sum(sv > rel_tol * sv[0]))] if sv[0] > 0 else np.zeros((0, G.shape[1]))


def _b2_index(layout: Layout) -> np.ndarray:
    return layout.n - layout.dy + np.arange(layout.dy) if layout.has_b2 else np.zeros(0, int)


def linear_groups(pt: Point, neurons: list[NeuronTest], dead: set[int]) -> list[tuple[str, list[int]]]:
    """The linear groups (module docstring) among the neurons not ``dead``: ``("affine", members)`` for the
    neurons with one slope on all data, ``("pattern", members)`` per activation pattern shared by two or
    more other neurons without kink point."""
    N = pt.fwd.N
    affine = affine_neurons(pt, neurons, dead)
    groups = [("affine", affine)] if len(affine) > 1 else []
    by_pattern: dict[bytes, list[int]] = {}
    for nt in neurons:
        if nt.M == 0 and nt.k not in dead and nt.k not in affine and N.shape[0]:
            by_pattern.setdefault((N[:, nt.k] > 0).tobytes(), []).append(nt.k)
    return groups + [("pattern", g) for g in by_pattern.values() if len(g) > 1]


def linear_group_rows(pt: Point, coords: SpanCoordinates, group: list[int], nu_c: np.ndarray | None,
                      keep: np.ndarray | None = None, zero: set[int] = frozenset(),
                      kind: str = "affine") -> SharedRows:
    """The tangent of the orbit of a linear group's symmetry at the point (DESIGN.md section 4).

    The group's neurons act only through ``P = sum_k s_k w_k nu_k' + b2 nu_c'`` (``s_k``: the slope of
    neuron ``k`` at a point where every member's is positive; ``nu_c`` only for the affine group, None
    otherwise). For ``X`` in ``gl(a)`` and ``tau`` in ``R^a`` (``tau`` only with ``nu_c``) the motion
    ``u_k = sum_l X_lk s_l w_l / s_k``, ``v_l = -sum_k X_lk nu_k - tau_l nu_c``, ``db2 = sum_k tau_k s_k w_k``
    is the derivative of an exact local symmetry (``W2_A -> W2_A S T S^-1``, ``nu_A -> T^-1 (nu_A - tau
    nu_c')``) that keeps every output at every nearby point; its generators ``X = E_lk`` and ``tau = e_k``
    span the rows. Only the coordinates in ``keep`` count: a zero-output member (in ``zero``, its ``nu_k``
    already removed) keeps its ``u_k``, which trades against the other members' ``nu``.
    """
    net, lay = pt.net, coords.layout
    S = net.slope(pt.fwd.N[:, group])
    s = S[int(np.argmax(S.min(axis=1)))]  # proportional slopes: their ratios at a point where all are > 0
    W, Nu = net.W2[:, group] * s[None, :], coords.Zr[group]  # W S (dy x a) and the members' nu (a x rho)
    b2 = _b2_index(lay) if nu_c is not None else np.zeros(0, int)
    idx = np.concatenate([lay.u_index(k) for k in group] + [lay.nu_index(k) for k in group] + [b2])
    a, dy, rho = len(group), net.dy, Nu.shape[1]
    Ne = np.vstack([Nu, nu_c[None, :]]) if b2.size else Nu
    p, q = np.linalg.matrix_rank(W), np.linalg.matrix_rank(Ne)
    # the orbit has dimension a (a + t) - (a - p)(a + t - q) (t = 1 with the translations): its stabiliser is
    # null(W S) x leftnull([nu_A; nu_c']); the fibre of the group's map, (a + t) dy... minus the rank
    # dy q + p rho - p q of its differential; equal, the orbit tangent is that differential's kernel
    t = 1 if b2.size else 0
    orbit = a * (a + t) - (a - p) * (a + t - q)
    fibre = a * (dy + rho) + t * dy - (dy * q + p * rho - p * q)
    if not zero and orbit == fibre:
        rows = null_space(_group_differential(W, Nu, s, nu_c if b2.size else None)).T
    elif a * a * idx.size <= _MAX_GENERATOR_ENTRIES:
        rows = _orthonormal_rows(_group_generators(W, Nu, s, nu_c if b2.size else None))
    else:  # a large group at a non-generic point: not quotiented (at worst `sosp`)
        rows = np.zeros((0, idx.size))
    if keep is not None and not np.all(keep[idx]):
        rows, idx = _orthonormal_rows(rows[:, keep[idx]]), idx[keep[idx]]
    own = sum(k not in zero for k in group) * (2 if b2.size else 1)  # each member's rescaling (and bias shift)
    return SharedRows(kind, list(group), idx, rows, max(rows.shape[0] - own, 0))


_MAX_GENERATOR_ENTRIES = 2e7


def _group_generators(W: np.ndarray, Nu: np.ndarray, s: np.ndarray, nu_c: np.ndarray | None) -> np.ndarray:
    """The generators of :func:`linear_group_rows` as rows over ``(u_A, nu_A[, b2])``: ``X = E_lk`` gives
    ``u_k = s_l w_l / s_k`` and ``v_l = -nu_k``; ``tau = e_k`` gives ``v_k = -nu_c`` and ``db2 = s_k w_k``
    (``W`` holds ``s_k w_k``)."""
    (dy, a), rho = W.shape, Nu.shape[1]
    ar = np.arange(a)
    Gu = np.zeros((a, a, a, dy))
    Gu[:, ar, ar, :] = W.T[:, None, :] / s[None, :, None]  # [l, k, k] = s_l w_l / s_k
    Gv = np.zeros((a, a, a, rho))
    Gv[ar, :, ar, :] = -Nu[None, :, :]  # [l, k, l] = -nu_k
    G = np.concatenate([Gu.reshape(a * a, a * dy), Gv.reshape(a * a, a * rho)], axis=1)
    if nu_c is None:
        return G
    T = np.zeros((a, a * (dy + rho) + dy))
    T[ar[:, None], a * dy + ar[:, None] * rho + np.arange(rho)[None, :]] = -nu_c
    T[:, a * (dy + rho):] = W.T
    return np.vstack([np.hstack([G, np.zeros((a * a, dy))]), T])


def _group_differential(W: np.ndarray, Nu: np.ndarray, s: np.ndarray, nu_c: np.ndarray | None) -> np.ndarray:
    """The differential of ``(u_A, nu_A[, b2]) -> sum_k s_k w_k nu_k' (+ b2 nu_c')``, rows ``(d, j)``
    (``W`` holds ``s_k w_k``)."""
    (dy, a), rho = W.shape, Nu.shape[1]
    Ed, Ej = np.eye(dy), np.eye(rho)
    Du = np.einsum("de,kj->djke", Ed, Nu * s[:, None]).reshape(dy * rho, a * dy)  # d P_dj / d u_ke = s_k nu_kj
    Dv = np.einsum("dk,jl->djkl", W, Ej).reshape(dy * rho, a * rho)  # d P_dj / d nu_kl = s_k w_kd
    parts = [Du, Dv] + ([np.einsum("de,j->dje", Ed, nu_c).reshape(dy * rho, dy)] if nu_c is not None else [])
    return np.hstack(parts)


def duplicate_groups(pt: Point, coords: SpanCoordinates, boundary: np.ndarray, candidates: list[int],
                     chord_tol: float) -> list[list[int]]:
    """Groups of two or more ``candidates`` that are positive multiples of each other in the data span:
    unit rows ``Zr_k / |Zr_k|`` within ``chord_tol`` of the group's first, with the same kink points
    and the same sign off them (so the same activation pattern, scaled)."""
    Zr, N = coords.Zr, pt.fwd.N
    norms = np.linalg.norm(Zr, axis=1)
    rest = np.array([k for k in candidates if norms[k] > 0], int)
    E = Zr / np.where(norms > 0, norms, 1.0)[:, None]
    groups = []
    while rest.size:
        k0 = rest[0]
        near = rest[np.linalg.norm(E[rest] - E[k0], axis=1) <= chord_tol]
        off = ~boundary[:, k0]
        same = [k for k in near if np.array_equal(boundary[:, k], boundary[:, k0])
                and np.array_equal(np.sign(N[off, k]), np.sign(N[off, k0]))]
        rest = rest[~np.isin(rest, same)]
        if len(same) > 1:
            groups.append([int(k) for k in same])
    return groups


def _responses(pt: Point, coords: SpanCoordinates, boundary: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``E_off = sum_{i off the kink} h'(N_ik) r_i xr_i'`` (dy x rho), the kink rows ``xr_i`` (i on it), and
    the gradient test's scale ``s_hi |r| |Xr|``."""
    net, N, r, Xr = pt.net, pt.fwd.N, pt.r, coords.Xr
    on = boundary[:, k]
    E_off = (r * np.where(on, 0.0, net.slope(N[:, k]))[:, None]).T @ Xr  # one pass, no copy of the rows
    return E_off, Xr[on], max(net.s_plus, net.s_minus) * float(np.linalg.norm(r) * frobenius_norm(Xr))


def response_span(pt: Point, coords: SpanCoordinates, boundary: np.ndarray, k: int, grad_tol: float) -> np.ndarray:
    """Orthonormal basis (columns, dy x q) of ``R_F``: the span of the responses ``F(v) = sum_{i off the
    kink} h'(N_ik) r_i t_i + sum_{i on it} r_i phi(t_i)`` of neuron ``k`` (``t_i = xr_i . v``), whose
    first-order term is ``w_k . F(v)``. It lies in the column span of ``[E_off, r_i |xr_i| (i on the
    kink)]``; singular values up to ``grad_tol`` times the gradient test's scale count as zero."""
    E_off, _, scale = _responses(pt, coords, boundary, k)
    on = boundary[:, k]
    A = np.hstack([E_off, pt.r[on].T * np.linalg.norm(coords.Xr[on], axis=1)[None, :]])
    U, sv, _ = np.linalg.svd(A, full_matrices=True)
    return U[:, : int(np.sum(sv > grad_tol * scale))]


def _still_directions(pt: Point, coords: SpanCoordinates, boundary: np.ndarray, k: int, grad_tol: float) -> np.ndarray:
    """Orthonormal basis (columns) of ``Lambda = {l : xr_i . l = 0 on the kink points, E_off l = 0}``:
    input-weight moves that keep the kink points on the kink and the output-layer gradient at zero."""
    E_off, X_on, scale = _responses(pt, coords, boundary, k)
    N_on = null_space(X_on) if X_on.shape[0] else np.eye(coords.Xr.shape[1])
    if not N_on.shape[1]:
        return N_on
    _, sv, Vt = np.linalg.svd(E_off @ N_on, full_matrices=True)
    big = int(np.sum(sv > grad_tol * scale))
    return N_on @ Vt[big:].T


def _intersection(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Orthonormal basis (columns) of ``span(A) & span(B)``."""
    if not (A.shape[1] and B.shape[1]):
        return np.zeros((A.shape[0], 0))
    C = null_space(np.hstack([A, -B]))
    return orth(A @ C[: A.shape[1]]) if C.shape[1] else np.zeros((A.shape[0], 0))


def duplicate_rows(pt: Point, coords: SpanCoordinates, boundary: np.ndarray, group: list[int], grad_tol: float,
                   keep: np.ndarray | None = None) -> SharedRows | None:
    """The flat directions of a duplicate group (DESIGN.md section 4), or None when there are none.

    With ``Z_k = c_k e`` (``c_k = |Z_k|``) the members act through ``sum_k w_k h(Z_k . x)``. Two families
    of motions keep every output and, along them, every point is stationary with the first-order
    structure of this one:
    - output weight moved between members, ``u_k = x_k / c_k`` with ``sum_k x_k = 0`` and ``x_k`` in
      ``S_k = span(w_k) + R_F^perp`` (:func:`response_span`): neuron ``k``'s first-order term becomes
      ``(w_k + t x_k / c_k) . F(v)``, a positive multiple of ``w_k . F(v)`` for small ``t``;
    - input weights mixed, ``v_k = lambda_k`` in ``Lambda`` (:func:`_still_directions`) with ``sum_k w_k
      lambda_k' = 0``: off the kinks the outputs change by ``s_i (sum_k w_k lambda_k') xr_i = 0``, the kink
      points stay on the kinks, and the output-layer gradient moves by ``E_off lambda_k = 0``.
    Together they are the tangent of the flat set ``{w_k + x_k / c_k, c_k e + lambda_k : sum_k (w_k + x_k /
    c_k) lambda_k' = 0}``, a manifold where the rank of ``(w_k + x_k / c_k)_k`` is constant: with input-weight
    moves present, ``S_k`` is cut down to the column span of the group's ``W2``. Only the coordinates in
    ``keep`` count (a zero-output member keeps its ``u_k`` only).
    """
    net, lay = pt.net, coords.layout
    W = net.W2[:, group]
    Lam = _still_directions(pt, coords, boundary, group[0], grad_tol)
    mix = null_space(W)  # g x (g - rank W): combinations with sum_k n_k w_k = 0
    R_F = response_span(pt, coords, boundary, group[0], grad_tol)
    perp = null_space(R_F.T) if R_F.shape[1] else np.eye(net.dy)
    span_W = orth(W) if mix.shape[1] and Lam.shape[1] else np.eye(net.dy)
    bases = [_intersection(orth(np.column_stack([W[:, j], perp])), span_W) for j in range(len(group))]
    C = null_space(np.hstack(bases)) if any(B.shape[1] for B in bases) else np.zeros((0, 0))
    norms = np.linalg.norm(coords.Zr[group], axis=1)
    idx = np.concatenate([lay.u_index(k) for k in group] + [lay.nu_index(k) for k in group])
    n_u = len(group) * net.dy
    gens = []
    if C.shape[1]:
        # u_index(k) lists the dy outputs of neuron k, so the stacked (dy, n) blocks follow idx
        at, moves = 0, []
        for B, ck in zip(bases, norms):
            moves.append(B @ C[at:at + B.shape[1]] / ck)
            at += B.shape[1]
        g = np.zeros((C.shape[1], idx.size))
        g[:, :n_u] = np.vstack(moves).T
        gens.append(g)
    for n in mix.T:
        for lam in Lam.T:
            g = np.zeros((1, idx.size))
            g[0, n_u:] = np.kron(n, lam)  # nu_index(k) blocks in group order
            gens.append(g)
    if keep is not None:
        gens, idx = [g[:, keep[idx]] for g in gens], idx[keep[idx]]
    rows = _orthonormal_rows(np.vstack(gens)) if gens else np.zeros((0, idx.size))
    return SharedRows("duplicate", list(group), idx, rows, rows.shape[0]) if rows.shape[0] else None


def shared_rows(pt: Point, coords: SpanCoordinates, neurons: list[NeuronTest], boundary: np.ndarray,
                dead: list[int], zero: list[int], keep: np.ndarray, tol: Tolerances,
                nu_c: np.ndarray | None = None) -> list[SharedRows]:
    """The linear groups (:func:`linear_groups`) and the duplicate groups among the neurons with kink
    points, zero-output neurons included (their ``u_k`` trades with the others' weights), dead ones not;
    none under weight decay (it is not flat along them). ``keep``: the coordinates kept (mask over
    ``theta``); ``nu_c``: the data span's constant direction (:func:`~sospcheck.quotient.span_constant`)."""
    if pt.weight_decay != 0:
        return []
    found = []
    for kind, group in linear_groups(pt, neurons, set(dead)):
        if all(k in zero for k in group):
            continue
        found.append(linear_group_rows(pt, coords, group, nu_c if kind == "affine" else None, keep, set(zero), kind))
    others = [nt.k for nt in neurons if nt.k not in dead and nt.M > 0]
    for group in duplicate_groups(pt, coords, boundary, others, tol.boundary):
        if all(k in zero for k in group):
            continue
        rows = duplicate_rows(pt, coords, boundary, group, tol.gradient, keep)
        if rows is not None:
            found.append(rows)
    return [g for g in found if g.rows.shape[0]]

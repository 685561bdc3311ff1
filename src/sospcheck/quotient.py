"""What the second-order test quotients out: exactly flat directions (DESIGN.md section 4).

Coordinates ``theta`` (see :mod:`sospcheck.operators`) restricted to the kept blocks: ``v_k``
outside the data span, dead neurons (``s_minus = 0`` and every ``N_ik < 0``), and ``nu_k`` of
zero-output neurons whose map ``g`` vanishes (:mod:`sospcheck.zero_output`).

Inactive directions (ReLU, ``s_minus = 0``): moving ``nu_k`` orthogonally to the points where
neuron ``k`` is active or on its kink changes only pre-activations that are negative and stay
negative nearby, so no output moves, here or at any nearby point: a translation invariance,
quotiented by the rows ``f . nu_k = 0`` for a basis of that orthogonal complement. A dead neuron is
the extreme case (all of ``nu_k``, and then ``u_k`` too). The rank of those points (from their Gram
matrix) is computed when they are fewer than the span dimension, or when that is cheap
(``n_act rho^2 <= 5e7``); more points in general position span everything.

Bias shifts: a neuron with no boundary point and one slope ``s`` on all data (always active, or
always inactive under a leaky ReLU) is affine on a neighbourhood, so shifting its pre-activation
by a constant ``c`` (``nu_k = nu_c``, ``Xr nu_c = 1``) and ``b2`` by ``-s w_k c`` leaves every
output unchanged, at this point and at every nearby one. Like the rescaling symmetry these
curves foliate a neighbourhood, and the loss is constant on each, so the test runs on the slice
``nu_c . nu_k = 0`` (one more row of the neuron's block; a transversal slice as long as it is
independent of the rescaling row, which is checked). Without this slice the ECQP reports the
exact flat direction as T2 and a minimum is only certified as ``sosp``.

Flat directions shared by several neurons: :mod:`sospcheck.shared_flat`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .augmented import gram_of_rows, in_basis, row_block
from .first_order import NeuronTest
from .geometry import data_span, row_space
from .operators import Layout
from .options import Tolerances
from .point import Point

__all__ = ["Quotient", "SpanCoordinates", "Reduction", "span_coordinates", "dead_neurons",
           "constant_direction", "span_guess", "span_constant", "bias_shift_rows", "inactive_rows", "affine_neurons", "reduce"]


@dataclass(frozen=True)
class Quotient:
    """The exactly flat blocks removed before the second-order test.

    ``data_span_dim`` of ``full_dim``: the ``v_k`` coordinates kept (the span of the data).
    ``dead_neurons``: ``u_k, nu_k`` removed. ``zero_output_neurons``: ``nu_k`` removed (``g == 0``).
    ``bias_shift_neurons``: one slice row each (for members of an affine group, part of the group's
    rows). ``inactive_directions``: neuron -> number of ``nu_k`` directions orthogonal to its active points.
    ``affine_groups`` / ``pattern_groups`` / ``duplicate_groups``: neurons whose flat directions are shared
    (module docstring); ``shared_dims``: per group (in that order) the number of flat directions
    quotiented beyond the members' own rescaling and bias-shift rows.
    """

    data_span_dim: int
    full_dim: int
    dead_neurons: list[int] = field(default_factory=list)
    zero_output_neurons: list[int] = field(default_factory=list)
    bias_shift_neurons: list[int] = field(default_factory=list)
    inactive_directions: dict[int, int] = field(default_factory=dict)
    affine_groups: list[list[int]] = field(default_factory=list)
    pattern_groups: list[list[int]] = field(default_factory=list)
    duplicate_groups: list[list[int]] = field(default_factory=list)
    shared_dims: list[int] = field(default_factory=list)

    @property
    def nontrivial(self) -> bool:
        """Whether anything at all was quotiented out."""
        return bool(self.dead_neurons or self.zero_output_neurons or self.bias_shift_neurons
                    or self.inactive_directions or self.affine_groups or self.pattern_groups
                    or self.duplicate_groups
                    or self.data_span_dim < self.full_dim)

    def inactive_by_name(self) -> dict[str, int]:
        """``inactive_directions`` with string keys, as JSON writes them."""
        return {str(k): int(n) for k, n in self.inactive_directions.items()}

    def to_dict(self) -> dict:
        return {"data_span_dim": int(self.data_span_dim), "full_dim": int(self.full_dim),
                "dead_neurons": list(self.dead_neurons), "zero_output_neurons": list(self.zero_output_neurons),
                "bias_shift_neurons": list(self.bias_shift_neurons),
                "inactive_directions": self.inactive_by_name(),
                "affine_groups": [list(g) for g in self.affine_groups],
                "pattern_groups": [list(g) for g in self.pattern_groups],
                "duplicate_groups": [list(g) for g in self.duplicate_groups],
                "shared_dims": [int(n) for n in self.shared_dims]}

    def summary_line(self) -> str:
        inactive = ", ".join(f"{k}: {n}" for k, n in self.inactive_directions.items()) or "none"
        line = (f"quotiented: data span {self.data_span_dim}/{self.full_dim} dims, dead neurons "
                f"{self.dead_neurons}, zero-output neurons {self.zero_output_neurons}, "
                f"bias shifts of affine neurons {self.bias_shift_neurons}, inactive directions "
                f"(neuron: dims) {inactive}")
        groups = ([("affine group", g) for g in self.affine_groups]
                  + [("pattern group", g) for g in self.pattern_groups]
                  + [("duplicates", g) for g in self.duplicate_groups])
        if groups:
            line += ", shared flat directions " + ", ".join(
                f"{kind} {g}: {n}" for (kind, g), n in zip(groups, self.shared_dims))
        return line


@dataclass(frozen=True)
class SpanCoordinates:
    """``nu_k = V' Z_k``-coordinates: ``V`` (d x rho) a basis of the data span (all of ``R^d`` under
    weight decay, which is not flat outside it), ``Xr = Xbar V``, ``Zr = Z V`` and the layout of ``theta``;
    ``gram`` is ``Xr' Xr`` when it was computed on the way (None otherwise)."""

    V: np.ndarray
    Xr: np.ndarray
    Zr: np.ndarray
    layout: Layout
    gram: np.ndarray | None = None

    @property
    def full_dim(self) -> int:
        return int(self.V.shape[0])

    def partial_quotient(self, dead: list[int], zero: list[int]) -> Quotient:
        """The quotient known before the bias shifts and inactive directions are looked for."""
        return Quotient(int(self.V.shape[1]), self.full_dim, list(dead), list(zero))


def span_coordinates(pt: Point, rank_tol: float) -> SpanCoordinates:
    """The data-span coordinates of the point (DESIGN.md section 4). When the span is all of ``R^d``
    (always under weight decay) ``V`` is the identity and ``Xr`` is ``Xbar`` itself, not a copy."""
    net, Xbar = pt.net, pt.fwd.Xbar
    d = Xbar.shape[1]
    gram = Xbar.T @ Xbar if pt.weight_decay == 0 else None
    V = data_span(Xbar, rank_tol, gram) if pt.weight_decay == 0 else np.eye(d)
    layout = Layout(net.dy, net.dh, V.shape[1], net.has_b2)
    if V.shape[1] == d and np.array_equal(V, np.eye(d)):
        return SpanCoordinates(V, Xbar, net.Z, layout, gram)
    return SpanCoordinates(V, in_basis(Xbar, V), net.Z @ V, layout)


def dead_neurons(pt: Point, neurons: list[NeuronTest]) -> list[int]:
    """ReLU neurons off on every point with no kink point: ``u_k`` and ``nu_k`` are exactly flat."""
    net, N = pt.net, pt.fwd.N
    if pt.weight_decay != 0 or net.s_minus != 0:
        return []
    return [nt.k for nt in neurons if nt.M == 0 and np.all(N[:, nt.k] < 0)]


def constant_direction(Xr: np.ndarray, rank_tol: float, guess: np.ndarray | None = None) -> np.ndarray | None:
    """``nu_c`` with ``Xr nu_c = 1``: the constant function in the data span, or None when there is none.

    ``guess``: a candidate kept when its residual passes the same test (:func:`span_guess`), which
    saves the m x rho least-squares solve; otherwise that solve decides."""
    if Xr.shape[0] == 0:
        return None
    ones = np.ones(Xr.shape[0])
    tol = max(rank_tol, 1e-10) * np.sqrt(Xr.shape[0])
    if guess is not None and np.linalg.norm(Xr @ guess - ones) <= tol:
        return guess
    nu_c = np.linalg.lstsq(Xr, ones, rcond=None)[0]
    if np.linalg.norm(Xr @ nu_c - ones) > tol:
        return None
    return nu_c


def span_guess(pt: Point, V: np.ndarray | None) -> np.ndarray | None:
    """``V' e`` for the ones column ``e`` of ``Xbar`` (with ``b1``): the least-squares ``nu_c`` of
    ``Xr nu_c = 1`` when ``V`` holds eigenvectors of the Gram ``G = Xbar' Xbar`` (:func:`data_span`),
    since ``Xr' 1 = V' G e = S^2 V' e`` and ``Xr' Xr = S^2``. None without ``b1`` or ``V``."""
    return np.array(V[-1]) if V is not None and pt.net.has_b1 else None


def affine_neurons(pt: Point, neurons: list[NeuronTest], removed: set[int]) -> list[int]:
    """Neurons not in ``removed`` with no boundary point and one slope ``> 0`` on all data (always
    active, or always inactive under a leaky ReLU): affine on a neighbourhood of the point."""
    net, N = pt.net, pt.fwd.N
    affine = []
    for nt in neurons:
        if nt.M or nt.k in removed:
            continue
        signs = np.unique(np.sign(N[:, nt.k]))
        if signs.size == 1 and signs[0] != 0 and not (signs[0] < 0 and net.s_minus == 0):
            affine.append(nt.k)
    return affine


def span_constant(pt: Point, coords: SpanCoordinates, rank_tol: float) -> np.ndarray | None:
    """``nu_c`` with ``Xr nu_c = 1`` (:func:`constant_direction`) where a bias shift can be flat at all (``b2``
    present, no weight decay), else None: computed once per reduction, shared by the bias shifts and the
    affine groups."""
    if pt.weight_decay != 0 or not pt.net.has_b2:
        return None
    return constant_direction(coords.Xr, rank_tol, span_guess(pt, coords.V))


def bias_shift_rows(pt: Point, nu_c: np.ndarray | None, neurons: list[NeuronTest],
                    removed: set[int]) -> dict[int, np.ndarray]:
    """Per neuron with an exact bias-shift flat curve (module docstring), the slice row on ``(u_k, nu_k)``.

    Needs a constant function in the data span, ``nu_c`` (:func:`span_constant`: ``b2`` and no weight
    decay), and an affine neuron (:func:`affine_neurons`) whose ``nu_k`` is kept (not in ``removed``).
    """
    if nu_c is None:
        return {}
    return {k: np.concatenate([np.zeros(pt.net.dy), nu_c]) for k in affine_neurons(pt, neurons, removed)}


_INACTIVE_RANK_FLOPS = 5e7


def inactive_rows(pt: Point, boundary: np.ndarray, Xr: np.ndarray, neurons: list[NeuronTest], removed: set[int],
                  rank_tol: float) -> dict[int, np.ndarray]:
    """Per ReLU neuron whose active (or kink) points do not span the ``rho`` dimensions: an
    orthonormal basis (rows) of the ``nu_k`` directions orthogonal to them, exactly flat (module docstring)."""
    net, N = pt.net, pt.fwd.N
    rho = Xr.shape[1]
    if pt.weight_decay != 0 or net.s_minus != 0:
        return {}
    rows = {}
    for nt in neurons:
        k = nt.k
        if k in removed:
            continue
        act = (N[:, k] >= 0) | boundary[:, k]  # the check's kink points count as active
        n_act = int(act.sum())
        # n_act >= rho points are rank deficient only when not in general position; the rank test
        # is then skipped on large problems (no quotient: at worst `sosp` instead of a certificate)
        if n_act == 0 or (n_act >= rho and n_act * rho * rho > _INACTIVE_RANK_FLOPS):
            continue
        # the rho x rho Gram by blocks of rows; the selected rows themselves only if it cannot decide
        _, W = row_space(lambda: row_block(Xr, act), max(rank_tol, 1e-12), gram_of_rows(Xr, act))
        if W.shape[1]:
            rows[k] = W.T
    return rows


@dataclass(frozen=True)
class Reduction:
    """The coordinates kept (``keep``, indices into ``theta``), what was quotiented, and the slice rows
    the constraint blocks add: ``shift_rows`` (on ``(u_k, nu_k)``), ``inactive_rows`` (on ``nu_k``) and
    ``shared`` (on several neurons' coordinates; members of an affine group have no ``shift_rows``,
    their bias shifts being part of the group's rows)."""

    coords: SpanCoordinates
    keep: np.ndarray
    quotient: Quotient
    shift_rows: dict[int, np.ndarray]
    inactive_rows: dict[int, np.ndarray]
    shared: list = field(default_factory=list)  # shared_flat.SharedRows

    @property
    def kept_mask(self) -> np.ndarray:
        mask = np.zeros(self.coords.layout.n, bool)
        mask[self.keep] = True
        return mask


def reduce(pt: Point, neurons: list[NeuronTest], boundary: np.ndarray, coords: SpanCoordinates,
           dead: list[int], zero: list[int], rank_tol: float, tol: Tolerances | None = None) -> Reduction:
    """Remove the dead blocks and the ``nu_k`` of zero-output neurons, then find the bias shifts,
    inactive directions and shared flat directions of the neurons left (``tol``: the boundary and
    gradient tolerances that decide duplicates and responses; default :class:`Tolerances`)."""
    from .shared_flat import shared_rows  # it builds on this module's coordinates

    layout = coords.layout
    keep = np.ones(layout.n, bool)
    for k in dead:
        keep[layout.u_index(k)] = keep[layout.nu_index(k)] = False
    for k in zero:
        keep[layout.nu_index(k)] = False
    removed = set(dead) | set(zero)
    nu_c = span_constant(pt, coords, rank_tol)
    shift = bias_shift_rows(pt, nu_c, neurons, removed)
    inactive = inactive_rows(pt, boundary, coords.Xr, neurons, removed, rank_tol)
    shared = shared_rows(pt, coords, neurons, boundary, list(dead), list(zero), keep, tol or Tolerances(), nu_c)
    grouped = {k for g in shared if g.kind == "affine" for k in g.neurons}
    groups = {kind: [g.neurons for g in shared if g.kind == kind] for kind in ("affine", "pattern", "duplicate")}
    quotient = Quotient(int(coords.V.shape[1]), coords.full_dim, list(dead), list(zero), sorted(shift),
                        {k: int(F.shape[0]) for k, F in inactive.items()}, groups["affine"], groups["pattern"],
                        groups["duplicate"], [g.extra for g in shared])
    shift = {k: row for k, row in shift.items() if k not in grouped}
    return Reduction(coords, np.flatnonzero(keep), quotient, shift, inactive, shared)

"""The augmented data ``Xbar = [X 1]`` as an operator over ``X``: every product the check needs without
the m x (dx + 1) copy (DESIGN.md section 1; the memory budget of benchmarks/RESULTS.md, issue 15).

``Xbar M = X M[:dx] + 1 M[dx]`` and ``B Xbar = [B X, B 1]`` are one pass over ``X`` plus a rank-one
correction; row selections (a neuron's kink points, a chunk of rows) are formed explicitly, since they
are small. Wherever an ``ndarray`` ``Xbar`` was accepted (a network without ``b1`` passes ``X`` itself),
a :class:`DataOperator` is too: :class:`AugmentedData` here, ``device_data.DeviceData`` on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["DataOperator", "AugmentedData", "gram", "gram_of_rows", "frobenius_norm", "abs_max", "dense", "in_basis",
           "row_block", "row_chunks", "product_chunks", "data_floats", "transpose_times", "CHUNK_FLOATS"]


class DataOperator:
    """An m x d data matrix known through its products (``A @ M``, ``B @ A``, ``A.T @ B``, ``M @ A.T``),
    row selections (``A[rows]``, an ndarray) and the reductions below; the check's only access to ``Xbar``."""

    # ``ndarray @ DataOperator`` must defer to ``__rmatmul__`` instead of building an object array
    __array_ufunc__ = None
    ndim = 2
    dtype = np.dtype(np.float64)
    shape: tuple[int, int]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def T(self) -> "_Transposed":
        return _Transposed(self)

    def _check_rows(self, M: np.ndarray) -> None:
        if M.shape[0] != self.shape[1]:
            raise ValueError(f"matmul: Xbar has {self.shape[1]} columns, the operand {M.shape[0]} rows")

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        # a NumPy routine without a product form: correct, at the cost of the copy this class avoids
        if copy is False:
            raise ValueError("the data as an array is a copy (np.asarray(..., copy=False) cannot be honoured)")
        out = self.toarray()
        return out if dtype is None else out.astype(dtype)

    def gram_of_rows(self, mask: np.ndarray) -> np.ndarray:
        """``A_S' A_S`` for the rows where ``mask`` holds (:func:`gram_of_rows`); on a device, whose memory
        is not the host's, from one selection."""
        return self.rows(mask).gram()

    # subclasses: __matmul__, __rmatmul__, __getitem__, row_norms, gram, frobenius_norm, abs_max, rows,
    # in_basis, toarray


class AugmentedData(DataOperator):
    """``[X 1]`` (m x (dx + 1)) read through a float64 ``X`` (m x dx) that is never copied."""

    def __init__(self, X: np.ndarray):
        X = np.asarray(X, dtype=np.float64)  # no copy for float64
        if not (X.flags.c_contiguous or X.flags.f_contiguous):
            X = np.ascontiguousarray(X)  # a strided view would slow every product ~3x; copied once instead
        self.X = X
        self.shape = (X.shape[0], X.shape[1] + 1)

    def __matmul__(self, M) -> np.ndarray:
        """``Xbar M`` for ``M`` of shape (dx + 1,) or (dx + 1, k)."""
        M = np.asarray(M)
        self._check_rows(M)
        if M.ndim == 1:
            return self.X @ M[:-1] + M[-1]
        # as ``(M' X')'``: with few columns (k << dx) BLAS runs this form about 1.5x faster than ``X M``
        out = M[:-1].T @ self.X.T
        out += M[-1][:, None]
        return out.T

    def __rmatmul__(self, B) -> np.ndarray:
        """``B Xbar`` for ``B`` of shape (m,) or (k, m)."""
        B = np.asarray(B)
        return np.concatenate([B @ self.X, B.sum(axis=-1)[..., None]], axis=-1)

    def __getitem__(self, idx) -> np.ndarray:
        """Rows (and then columns) of ``Xbar`` as an array: for the small selections the check makes."""
        if isinstance(idx, tuple):
            return then_columns(self[idx[0]], idx[1:])
        rows = self.X[idx]
        if rows.ndim == 1:
            return np.append(rows, 1.0)
        return np.hstack([rows, np.ones((rows.shape[0], 1))])

    def row_norms(self) -> np.ndarray:
        """``|xbar_i| = sqrt(|x_i|^2 + 1)``."""
        return np.sqrt(np.einsum("ij,ij->i", self.X, self.X) + 1.0)

    def gram(self) -> np.ndarray:
        """``[[X'X, X'1], [1'X, m]]``."""
        X = self.X
        G = np.empty((self.shape[1], self.shape[1]))
        G[:-1, :-1] = X.T @ X
        G[:-1, -1] = G[-1, :-1] = X.sum(axis=0)
        G[-1, -1] = self.shape[0]
        return G

    def frobenius_norm(self) -> float:
        return float(np.sqrt(np.einsum("ij,ij->", self.X, self.X) + self.shape[0]))

    def abs_max(self) -> float:
        return max(_abs_max(self.X), 1.0) if self.shape[0] else 0.0

    def rows(self, idx) -> "AugmentedData":
        return AugmentedData(self.X[idx])

    def gram_of_rows(self, mask: np.ndarray) -> np.ndarray:
        return _blocked_gram(self, mask)

    def in_basis(self, V: np.ndarray) -> np.ndarray:
        return self @ V

    def toarray(self) -> np.ndarray:
        return np.hstack([self.X, np.ones((self.shape[0], 1))])


class _Transposed:
    """``A'`` for the products ``A' B`` and ``M A'``."""

    __array_ufunc__ = None
    ndim = 2

    def __init__(self, A: DataOperator):
        self.A = A
        self.shape = (A.shape[1], A.shape[0])

    @property
    def T(self) -> DataOperator:
        return self.A

    def __matmul__(self, B) -> np.ndarray:
        """``A' B`` for ``B`` of shape (m,) or (m, k); the Gram ``A' A`` when ``B`` is ``A``."""
        if B is self.A:
            return self.A.gram()
        B = np.asarray(B)
        return self.A.__rmatmul__(B.T).T

    def __rmatmul__(self, M) -> np.ndarray:
        """``M A'`` for ``M`` of shape (d,) or (k, d)."""
        return (self.A @ np.asarray(M).T).T

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.A, dtype=dtype).T


def then_columns(rows: np.ndarray, cols: tuple) -> np.ndarray:
    """``rows[:, cols]`` for a block of rows, ``rows[cols]`` for a single row (1-D)."""
    return rows[cols] if rows.ndim == 1 else rows[(slice(None),) + cols]


def _abs_max(X: np.ndarray) -> float:
    return max(float(np.max(X)), -float(np.min(X))) if X.size else 0.0


def gram(A) -> np.ndarray:
    """``A' A`` (d x d) for an array or a :class:`DataOperator`."""
    return A.gram() if isinstance(A, DataOperator) else A.T @ A


def gram_of_rows(A, mask: np.ndarray) -> np.ndarray:
    """``A_S' A_S`` for the rows ``S`` where ``mask`` holds: on the host a block of selected rows at a time
    (at most ``2^16`` floats each), so that the selection is never copied all at once."""
    return A.gram_of_rows(mask) if isinstance(A, DataOperator) else _blocked_gram(A, mask)


def _blocked_gram(A, mask: np.ndarray) -> np.ndarray:
    d = A.shape[1]
    idx = np.flatnonzero(mask)
    G = np.zeros((d, d))
    step = max(1, (1 << 16) // max(d, 1))
    for j in range(0, idx.size, step):
        G += gram(row_block(A, idx[j : j + step]))
    return G


def frobenius_norm(A) -> float:
    """``|A|_F``; ``sqrt(|X|_F^2 + m)`` for ``[X 1]``."""
    return A.frobenius_norm() if isinstance(A, DataOperator) else float(np.linalg.norm(A))


def abs_max(A) -> float:
    """``max_ij |a_ij|`` without an m x d temporary (0 for an empty array)."""
    return A.abs_max() if isinstance(A, DataOperator) else _abs_max(A)


def dense(A) -> np.ndarray:
    """``A`` as an ndarray (the copy, for a consumer that needs one)."""
    return A.toarray() if isinstance(A, DataOperator) else A


def in_basis(A, V: np.ndarray):
    """``A V`` (data span coordinates, ``V`` d x rho) in ``A``'s own form: an array on the host, a device
    operator that stays on the device."""
    return A.in_basis(V) if isinstance(A, DataOperator) else A @ V


def row_block(A, rows):
    """Rows ``rows`` of ``A`` in ``A``'s own form: for a :class:`DataOperator` another one over the selected
    rows (a view for a slice, ``X``'s rows alone for a mask, never the augmented copy), else ``A[rows]``."""
    return A.rows(rows) if isinstance(A, DataOperator) else A[rows]


#: floats in one row chunk's temporary: 2 MiB, so that a pass over (m, dh) arrays in row chunks adds a
#: few MiB whatever m, and (for m dh up to this) is one chunk, the whole array
CHUNK_FLOATS = 1 << 18


def row_chunks(m: int, width: int, floats: int | None = None) -> list[slice]:
    """Slices covering ``range(m)`` in order, each of rows whose ``(rows, width)`` temporaries hold at most
    ``floats`` (default :data:`CHUNK_FLOATS`) floats, at least one row."""
    step = max(1, (CHUNK_FLOATS if floats is None else floats) // max(width, 1))
    return [slice(s, min(m, s + step)) for s in range(0, m, step)]


def data_floats(m: int, d: int, least: int | None = None) -> int:
    """An eighth of the floats of an (m, d) data array, at least ``least`` (default :data:`CHUNK_FLOATS`): a
    chunk budget that adds little to the memory of the data itself and keeps products with a chunk of it at
    full BLAS speed."""
    return max(CHUNK_FLOATS if least is None else least, (m * max(d, 1)) // 8)


def product_chunks(A, width: int) -> list[slice]:
    """:func:`row_chunks` for products with the rows of ``A`` (m x d): a chunk's ``(rows, width)``
    temporaries may hold :func:`data_floats` floats."""
    m, d = A.shape
    return row_chunks(m, width, data_floats(m, d))


def transpose_times(rows_of_B: Callable[[slice], np.ndarray], A, width: int) -> np.ndarray:
    """``B' A`` for ``A`` with m rows (an array or a :class:`DataOperator`) and ``B`` (m, ``width``) given a
    chunk of rows at a time by ``rows_of_B(rows)`` (:func:`product_chunks`): ``B`` is never formed whole
    (one chunk: the one product)."""
    out = None
    for rows in product_chunks(A, width):
        part = rows_of_B(rows).T @ row_block(A, rows)
        out = part if out is None else out + part
    return out


"""Stage ``student`` of the dense path: the matrix whose top-k eigenvectors are V, and U = B·V.

    M = BᵀPB = P − 2·diagM(d) + diagM(d)·C·diagM(d)     student_matrix   (Sec. 3.2, last display)
    V = eig_k(M)                                         (:func:`edlae_dask.linalg.randomized_eigh`)
    U = B·V = V − C·(d ∘ V)                              student_factors  (eq. 16–17)

``M`` is formed block by block from P and C (O(n²) elementwise work, done while
the Gram's blocks are released) rather than applied as ``P·Ω − D·(Ω + B·Ω)``:
applying it implicitly costs two n×n×l products per pass instead of one, and
holds the same two n×n matrices. The implicit operator is kept
(:func:`student_operator_implicit`) for tests.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from edlae_dask.linalg.graph import symmetric_from_lower

__all__ = ["student_matrix", "row_panels", "panel_operator", "student_operator_implicit", "student_factors"]


def _student_block(p: np.ndarray, c: np.ndarray, d_row: np.ndarray, d_col: np.ndarray, diagonal: bool) -> np.ndarray:
    m = c * d_row[:, None]
    m *= d_col[None, :]
    m += p
    if diagonal:
        idx = np.arange(m.shape[0])
        m[idx, idx] -= 2 * d_row
    return m


def student_matrix(P: da.Array, C: da.Array, d: np.ndarray) -> da.Array:
    """M = BᵀPB = P − 2·diagM(d) + diagM(d)·C·diagM(d), formed block by block.

    With B = I − C·D and C = P⁻¹: BᵀPB = P − 2D + D·C·D, the matrix of Algorithm 1,
    line 3 (the paper writes it P − D·(I + B)). Symmetric positive semi-definite.

    Parameters
    ----------
    P, C : dask.array.Array of shape (n, n)
        Same square blocks.
    d : ndarray of shape (n,)

    Returns
    -------
    M : dask.array.Array of shape (n, n), P's blocks; n² elementwise work.
    """
    chunks = P.chunks[0]
    bounds = np.concatenate([[0], np.cumsum(chunks)])
    d = np.asarray(d, dtype=P.dtype)
    parts = [d[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    name = "edlae-student-matrix-" + dask.base.tokenize(P, C, d)
    lower = {}
    for i in range(len(chunks)):
        for j in range(i + 1):
            lower[(i, j)] = (_student_block, (P.name, i, j), (C.name, i, j), parts[i], parts[j], i == j)
    return symmetric_from_lower(name, {}, lower, chunks, P.dtype, dependencies=[P, C])


def row_panels(M: da.Array) -> da.Array:
    """M re-blocked into full-width row panels (its row blocks × all columns), for :func:`panel_operator`.

    Costs one pass over M (each panel concatenates its row's blocks; the blocks above
    the diagonal, transposed views until now, are materialized).
    """
    return M.rechunk({1: -1})


def panel_operator(M_panels: da.Array):
    """``Q ↦ M·Q`` as one GEMM per row panel: ``(M·Q)_i = M[i, :]·Q``.

    Q (n × l) is gathered into one block and sent once to each worker of a pass; each
    worker multiplies its own row panels by it in one BLAS call each, so a pass is
    ``len(panels)`` tasks with no sum over blocks (square blocks would need n_b² block
    products and a tree sum of n_b·(n_b − 1) more blocks). Cost per pass 2·n²·l flops;
    moved: n·l·itemsize to each worker.
    """
    def apply(Q: da.Array) -> da.Array:
        return da.matmul(M_panels, Q.rechunk({0: -1}))

    return apply


def student_operator_implicit(P: da.Array, C: da.Array, d: np.ndarray):
    """Return Q ↦ M·Q = P·Q − D·(2Q − C·(D·Q)) without forming M (two products per call)."""
    dd = da.from_array(np.asarray(d, dtype=P.dtype)[:, None], chunks=(P.chunks[0], 1))

    def apply(Q: da.Array) -> da.Array:
        DQ = dd * Q
        return P @ Q - dd * (2 * Q - C @ DQ)

    return apply


def student_factors(C: da.Array, d: np.ndarray, V: da.Array) -> da.Array:
    """U = B·V = V − C·(d ∘ V) (eq. 16), never forming B. Shape (n, k); 2·n²·k flops."""
    dd = da.from_array(np.asarray(d, dtype=V.dtype)[:, None], chunks=(V.chunks[0], 1))
    return V - C @ (dd * V)

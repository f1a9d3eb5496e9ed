"""Stage ``teacher`` of the dense path: the full-rank EDLAE teacher B, kept as (C, d).

    P = G + Λ,  Λ = λI + p/(1−p)·diagM(diag G)     regularize         (eq. 8, 13)
    C = P⁻¹                                         inverse            (blocked Cholesky, :mod:`edlae_dask.linalg`)
    d = 1 ⊘ diag(C)                                 teacher_scaling    (B = I − C·diagM(d), eq. 12)

B itself is never formed: the student (:mod:`edlae_dask.dense.student`) needs only
C and d. Costs: ``regularize`` touches the diagonal blocks only (O(n)); the inverse
is n³ flops over the workers; ``teacher_scaling`` is O(n) on the client.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from edlae_dask.errors import ModelFitError
from edlae_dask.linalg import spd_inverse
from edlae_dask.linalg.graph import symmetric_from_lower

__all__ = ["regularize", "inverse", "teacher_scaling"]


def _regularized_diagonal_block(g: np.ndarray, lam: float, ratio: float) -> np.ndarray:
    p = g.copy()
    idx = np.arange(p.shape[0])
    p[idx, idx] += (lam + ratio * np.diagonal(g)).astype(p.dtype)
    return p


def regularize(G: da.Array, lam: float, p: float) -> da.Array:
    """P = G + Λ with Λ = λI + p/(1−p)·diagM(diag G) (eq. 8); only diagonal blocks change.

    Parameters
    ----------
    G : dask.array.Array of shape (n_items, n_items)
        Symmetric, square blocks.
    lam : float
        λ ≥ 0, the same L2 penalty on every item.
    p : float
        Dropout probability of emphasized denoising, 0 ≤ p < 1.
    """
    ratio = p / (1.0 - p)
    chunks = G.chunks[0]
    name = "edlae-regularize-" + dask.base.tokenize(G, lam, p)
    lower = {}
    for i in range(len(chunks)):
        for j in range(i + 1):
            lower[(i, j)] = (_regularized_diagonal_block, (G.name, i, i), lam, ratio) if i == j else (G.name, i, j)
    return symmetric_from_lower(name, {}, lower, chunks, G.dtype, dependencies=[G])


def inverse(P: da.Array) -> da.Array:
    """C = P⁻¹ (eq. 13) by the blocked Cholesky inverse of :func:`edlae_dask.linalg.spd_inverse`."""
    return spd_inverse(P)


def teacher_scaling(diag_c: np.ndarray) -> np.ndarray:
    """d = 1 ⊘ diag(C), so that B = I − C·diagM(d) has a zero diagonal (eq. 12)."""
    if not np.all(np.isfinite(diag_c)) or np.any(diag_c <= 0):
        bad = np.flatnonzero(~np.isfinite(diag_c) | (diag_c <= 0))
        raise ModelFitError(
            f"the inverse C = P⁻¹ has {bad.size} non-positive or non-finite diagonal entries (first at item index "
            f"{bad[0]}): P is numerically singular in this dtype. Raise --lam, or use --dtype float64."
        )
    return (1.0 / diag_c.astype(np.float64)).astype(diag_c.dtype)

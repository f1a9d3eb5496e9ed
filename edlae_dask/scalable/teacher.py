"""Stage ``teacher``: the sparse teacher B, one column per item over its neighbour set.

Column j of the dense teacher (eq. 12) solves ``P_{-j,-j} b = G_{-j,j}`` (the
ridge regression of item j on all other items with penalty Λ); restricted to the
neighbour set S = S_j it is ``b_S = (P_SS)⁻¹ G_Sj``, zero elsewhere. At S = all
other items this is exactly ``B = I − C·diagM(1 ⊘ diag C)``.

P_SS needs the Gram entries between neighbours. They are taken from the
neighbour graph: G_ab where b ∈ S_a or a ∈ S_b (values the ``neighbors`` stage
already computed exactly), zero elsewhere — the Gram masked to the graph, so the
teacher never needs rows of XᵀX beyond the top K of each item.
Where that masked P_SS is not positive definite, the exact P_SS is formed from
the interactions for that item (rare; counted and logged).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp


def _masked_p(neighbors: np.ndarray, g: np.ndarray, sets: np.ndarray, p_diag: np.ndarray,
              local: np.ndarray) -> np.ndarray:
    """P_SS for each row of ``sets`` (c, K), off-diagonal entries from the neighbour graph: (c, K, K) float64.

    Entry (a, b) is G_ab if b is a neighbour of a or a of b, else 0. Only the K-entry
    neighbour lists of the items in the sets are read (never a popular item's full
    row), so the work per batch is O(|union| · K). ``local`` is a scratch array of n
    entries equal to -1, returned so.
    """
    c, K = sets.shape
    union, loc = np.unique(sets, return_inverse=True)
    loc = loc.reshape(c, K)
    m = union.size
    local[union] = np.arange(m)
    col = local[neighbors[union]]
    local[union] = -1
    keep = col >= 0
    row = np.broadcast_to(np.arange(m)[:, None], col.shape)[keep]
    col, val = col[keep], g[union][keep]
    dense = np.zeros((m, m), dtype=np.float32)
    dense[row, col] = val
    dense[col, row] = val
    out = dense[loc[:, :, None], loc[:, None, :]].astype(np.float64)
    idx = np.arange(K)
    out[:, idx, idx] = p_diag[sets]
    return out


def _exact_p(XT: sp.csr_matrix, s: np.ndarray, p_diag: np.ndarray) -> np.ndarray:
    """P_SS = (XᵀX)_SS + Λ_S formed from the interactions (K x K, float64)."""
    xs = XT[s].astype(np.float64)
    out = (xs @ xs.T).toarray()
    out[np.diag_indices_from(out)] = p_diag[s]
    return out


def teacher_weights(neighbors: np.ndarray, g: np.ndarray, XT: sp.csr_matrix, p_diag: np.ndarray,
                    items: np.ndarray, *, batch: int = 64) -> tuple[np.ndarray, int]:
    """Teacher weights ``b_S = (P_SS)⁻¹ G_Sj`` for the given items.

    Parameters
    ----------
    neighbors : ndarray of shape (n, K), int
        Neighbour sets S_j of every item (strongest first).
    g : ndarray of shape (n, K)
        ``G[S_j, j]`` for every item.
    XT : scipy.sparse.csr_matrix of shape (n, n_users)
        Xᵀ, for the exact P_SS where the masked one is not positive definite.
    p_diag : ndarray of shape (n,)
        diag(P) = diag(G)·(1 + p/(1−p)) + λ.
    items : ndarray of int, shape (b,)
        The items (teacher columns) to solve for.
    batch : int, default=64
        Items solved together (one batched LAPACK call).

    Returns
    -------
    weights : ndarray of shape (b, K), float64
        ``B[S_j, j]`` in the order of ``neighbors[items]``.
    n_exact : int
        Items whose masked P_SS was not positive definite and was formed exactly.
    """
    items = np.asarray(items)
    sets_all, rhs_all = neighbors[items], g[items]
    b, K = sets_all.shape
    out = np.empty((b, K), dtype=np.float64)
    n_exact = 0
    # items with the same strongest neighbour share more of their neighbour sets, so a
    # batch of them touches fewer distinct items
    order = np.argsort(sets_all[:, 0], kind="stable")
    local = np.full(neighbors.shape[0], -1, dtype=np.int64)
    for s in range(0, b, batch):
        rows = order[s: s + batch]
        nb = sets_all[rows]
        rhs = rhs_all[rows].astype(np.float64)[..., None]
        P = _masked_p(neighbors, g, nb, p_diag, local)
        try:
            L = np.linalg.cholesky(P)
        except np.linalg.LinAlgError:
            L = None
        if L is not None:
            y = np.linalg.solve(L, rhs)
            out[rows] = np.linalg.solve(np.swapaxes(L, 1, 2), y)[..., 0]
            continue
        for i in range(nb.shape[0]):
            try:
                cf = scipy.linalg.cho_factor(P[i], lower=True)
            except np.linalg.LinAlgError:
                cf = scipy.linalg.cho_factor(_exact_p(XT, nb[i], p_diag), lower=True)
                n_exact += 1
            out[rows[i]] = scipy.linalg.cho_solve(cf, rhs[i, :, 0])
    return out, n_exact


def teacher_transpose(neighbors: np.ndarray, weights: np.ndarray, n: int, dtype=np.float32) -> sp.csr_matrix:
    """Bᵀ for a block of items as CSR rows: row j holds B[S_j, j] (shape (b, n))."""
    b, K = neighbors.shape
    indptr = np.arange(0, b * K + 1, K, dtype=np.int64)
    bt = sp.csr_matrix((weights.astype(dtype).ravel(), neighbors.astype(np.int32).ravel(), indptr), shape=(b, n))
    bt.sort_indices()
    return bt

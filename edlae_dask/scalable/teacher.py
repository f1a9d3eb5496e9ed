"""Stage ``teacher``: the sparse teacher B, one column per item over its neighbour set.

Column j of the dense teacher (eq. 12) solves ``P_{-j,-j} b = G_{-j,j}`` (the
ridge regression of item j on all other items with penalty Λ); restricted to the
neighbour set S = S_j it is ``b_S = (P_SS)⁻¹ G_Sj``, zero elsewhere. At S = all
other items this is exactly ``B = I − C·diagM(1 ⊘ diag C)``.

P_SS needs the Gram entries between neighbours. They are taken from the
neighbour graph: G_ab where b ∈ S_a or a ∈ S_b (values the ``neighbors`` stage
already computed exactly), zero elsewhere — the Gram masked to the graph, so the
teacher never needs rows of XᵀX beyond the top K of each item, and a block of
items needs only the neighbour lists of the items its sets name
(:func:`needed_items`, :func:`graph_rows`).
Where that masked P_SS is not positive definite (rare; counted and logged),
:func:`teacher_weights` reports the item, and its exact P_SS is formed from the
interactions as a sum over user shards (:func:`exact_gram_of_sets`,
:func:`solve_exact`).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp


def needed_items(neighbors: np.ndarray, first: int) -> np.ndarray:
    """Items whose neighbour lists the teacher of a block needs: the block's items and their neighbours (sorted)."""
    own = np.arange(first, first + neighbors.shape[0])
    return np.union1d(own, neighbors.ravel())


def graph_rows(neighbors: np.ndarray, g: np.ndarray, first: int, wanted: np.ndarray) -> tuple:
    """The rows of one block of the neighbour graph (items ``first…``) that are in ``wanted``: (ids, neighbors, g)."""
    ids = wanted[(wanted >= first) & (wanted < first + neighbors.shape[0])]
    return ids, neighbors[ids - first], g[ids - first]


def _lookup(sorted_ids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Positions of ``x`` in ``sorted_ids``, −1 where absent."""
    if sorted_ids.size == 0:
        return np.full(x.shape, -1, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, x)
    pos = np.minimum(pos, sorted_ids.size - 1)
    return np.where(sorted_ids[pos] == x, pos, -1)


def _masked_p(rows: np.ndarray, neighbors: np.ndarray, g: np.ndarray, sets: np.ndarray,
              p_diag: np.ndarray) -> np.ndarray:
    """P_SS for each row of ``sets`` (c, K), off-diagonal entries from the neighbour graph: (c, K, K) float64.

    Entry (a, b) is G_ab if b is a neighbour of a or a of b, else 0. ``neighbors[i]``
    and ``g[i]`` are the lists of item ``rows[i]`` (sorted ids, covering every item
    of ``sets``). Only the K-entry lists of the items in the sets are read (never a
    popular item's full row), so the work per batch is O(|union| · K · log).
    """
    c, K = sets.shape
    union, loc = np.unique(sets, return_inverse=True)
    loc = loc.reshape(c, K)
    m = union.size
    at = _lookup(rows, union)
    col = _lookup(union, neighbors[at])
    keep = col >= 0
    row = np.broadcast_to(np.arange(m)[:, None], col.shape)[keep]
    col, val = col[keep], g[at][keep]
    dense = np.zeros((m, m), dtype=np.float32)
    dense[row, col] = val
    dense[col, row] = val
    out = dense[loc[:, :, None], loc[:, None, :]].astype(np.float64)
    idx = np.arange(K)
    out[:, idx, idx] = p_diag[sets]
    return out


def teacher_weights(neighbors: np.ndarray, g: np.ndarray, p_diag: np.ndarray, items: np.ndarray, *,
                    rows: np.ndarray | None = None, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Teacher weights ``b_S = (P_SS)⁻¹ G_Sj`` for the given items, P_SS masked to the neighbour graph.

    Parameters
    ----------
    neighbors : ndarray of shape (m, K), int
        Neighbour sets S_i (strongest first) of the items ``rows``.
    g : ndarray of shape (m, K)
        ``G[S_i, i]`` of the same items.
    p_diag : ndarray of shape (n,)
        diag(P) = diag(G)·(1 + p/(1−p)) + λ.
    items : ndarray of int, shape (b,)
        The items (teacher columns) to solve for.
    rows : ndarray of int, shape (m,), optional
        Sorted item ids of the rows of ``neighbors`` and ``g``; they must cover
        ``items`` and every neighbour of them (:func:`needed_items`). Default: all
        items, row i being item i.
    batch : int, default=64
        Items solved together (one batched LAPACK call). Cost O(b·K³).

    Returns
    -------
    weights : ndarray of shape (b, K), float64
        ``B[S_j, j]`` in the order of the items' neighbour lists; NaN in the rows of
        ``failed``.
    failed : ndarray of int
        Positions in ``items`` whose masked P_SS was not positive definite: solve
        them with the exact P_SS (:func:`exact_gram_of_sets`, :func:`solve_exact`).
    """
    items = np.asarray(items)
    rows = np.arange(neighbors.shape[0]) if rows is None else np.asarray(rows)
    at = _lookup(rows, items)
    sets_all, rhs_all = neighbors[at], g[at]
    b, K = sets_all.shape
    out = np.empty((b, K), dtype=np.float64)
    failed = []
    # items with the same strongest neighbour share more of their neighbour sets, so a
    # batch of them touches fewer distinct items
    order = np.argsort(sets_all[:, 0], kind="stable")
    for s in range(0, b, batch):
        idx = order[s: s + batch]
        rhs = rhs_all[idx].astype(np.float64)[..., None]
        P = _masked_p(rows, neighbors, g, sets_all[idx], p_diag)
        try:
            L = np.linalg.cholesky(P)
        except np.linalg.LinAlgError:
            L = None
        if L is not None:
            y = np.linalg.solve(L, rhs)
            out[idx] = np.linalg.solve(np.swapaxes(L, 1, 2), y)[..., 0]
            continue
        for i in range(idx.size):
            try:
                cf = scipy.linalg.cho_factor(P[i], lower=True)
            except np.linalg.LinAlgError:
                out[idx[i]] = np.nan
                failed.append(idx[i])
                continue
            out[idx[i]] = scipy.linalg.cho_solve(cf, rhs[i, :, 0])
    return out, np.sort(np.asarray(failed, dtype=np.int64))


def exact_gram_of_sets(xt_shard: sp.csr_matrix, sets: np.ndarray) -> np.ndarray:
    """One shard's term of ``(XᵀX)_SS`` for each row S of ``sets`` (c, K), from the shard's X_sᵀ: (c, K, K) float64.

    Summed over the user shards (a tree sum) this is the exact Gram of every set.
    """
    out = np.empty((sets.shape[0], sets.shape[1], sets.shape[1]), dtype=np.float64)
    for i, S in enumerate(sets):
        xs = xt_shard[S].astype(np.float64)
        out[i] = (xs @ xs.T).toarray()
    return out


def solve_exact(gram_sets: np.ndarray, sets: np.ndarray, rhs: np.ndarray, p_diag: np.ndarray) -> np.ndarray:
    """``b_S = (P_SS)⁻¹ G_Sj`` with P_SS = (XᵀX)_SS + Λ_S formed exactly: (c, K) float64."""
    P = np.array(gram_sets, dtype=np.float64, copy=True)
    idx = np.arange(sets.shape[1])
    P[:, idx, idx] = p_diag[sets]
    out = np.empty(sets.shape, dtype=np.float64)
    for i in range(sets.shape[0]):
        out[i] = scipy.linalg.cho_solve(scipy.linalg.cho_factor(P[i], lower=True), np.asarray(rhs[i], np.float64))
    return out


def teacher_transpose(neighbors: np.ndarray, weights: np.ndarray, n: int, dtype=np.float32) -> sp.csr_matrix:
    """Bᵀ for a block of items as CSR rows: row j holds B[S_j, j] (shape (b, n))."""
    b, K = neighbors.shape
    indptr = np.arange(0, b * K + 1, K, dtype=np.int64)
    bt = sp.csr_matrix((weights.astype(dtype).ravel(), neighbors.astype(np.int32).ravel(), indptr), shape=(b, n))
    bt.sort_indices()
    return bt

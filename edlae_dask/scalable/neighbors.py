"""Stage ``neighbors``: each item's K strongest co-occurring items, one item block at a time.

For a block of items I the rows of the Gram are a sum over the user shards s,

    G[I, :] = Σ_s X_sᵀ[I] · X_s                    (tree-summed, :func:`gram_rows`)

each term formed sparse on the worker that holds shard s; the sum's size is bounded
by Σ_{j∈I} Σ_{u∋j} |x_u| (:func:`row_products_bound`, itself a sum over shards),
which :func:`balanced_item_blocks` keeps under a budget. The top K entries of each
row are kept and the rest is dropped, so ``XᵀX`` is never held whole and no task
reads more than one shard.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from edlae_dask.config import NEIGHBOR_SCORES
from edlae_dask.errors import ParameterError


def row_products_bound(X: sp.csr_matrix, XT: sp.csr_matrix) -> np.ndarray:
    """Upper bound on the stored entries of each row of XᵀX: w_j = Σ_{u∋j} |x_u| (int64, shape (n,)).

    A sum over users: the bound of the whole X is the sum of its shards' bounds.
    """
    user_nnz = np.diff(X.indptr).astype(np.int64)
    # Xᵀ·(row lengths) with a pattern-only product, so values play no part
    pattern = sp.csr_matrix((np.ones(XT.nnz, dtype=np.int64), XT.indices, XT.indptr), shape=XT.shape)
    return np.asarray(pattern @ user_nnz, dtype=np.int64)


def gram_rows(xt_shard: sp.csr_matrix, x_shard: sp.csr_matrix, a: int, b: int) -> sp.csr_matrix:
    """One shard's term ``X_sᵀ[a:b] · X_s`` of the Gram rows a..b (sparse, shape (b − a, n))."""
    return (xt_shard[a:b] @ x_shard).tocsr()


def sum_sparse(*parts: sp.csr_matrix) -> sp.csr_matrix:
    """The sum of equally shaped sparse blocks (CSR, duplicates summed)."""
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out.tocsr()


def balanced_item_blocks(bound: np.ndarray, budget: int, max_items: int) -> list[tuple[int, int]]:
    """Contiguous item ranges whose summed ``bound`` stays under ``budget`` (each holds at least one item)."""
    n = bound.size
    blocks, start, acc = [], 0, 0
    for j in range(n):
        if j > start and (acc + bound[j] > budget or j - start >= max_items):
            blocks.append((start, j))
            start, acc = j, 0
        acc += int(bound[j])
    if start < n:
        blocks.append((start, n))
    return blocks


def top_neighbors(rows: sp.csr_matrix, first: int, K: int, diag_g: np.ndarray,
                  score: str = "count") -> tuple[np.ndarray, np.ndarray]:
    """The K strongest other items of each item in a block of Gram rows.

    Parameters
    ----------
    rows : scipy.sparse.csr_matrix of shape (b, n)
        ``G[first:first+b, :]`` (co-occurrence, possibly weighted).
    first : int
        Item index of the block's first row.
    K : int
        Neighbours per item, ``1 <= K <= n - 1``.
    diag_g : ndarray of shape (n,)
        ``diag(G)``, for the cosine score.
    score : {"count", "cosine"}

    Returns
    -------
    neighbors : ndarray of shape (b, K), int32
        Item indices, strongest first. When an item co-occurs with fewer than K
        others, the rest are the lowest-indexed items it does not co-occur with,
        so that K = n − 1 always means "every other item".
    g : ndarray of shape (b, K), float32
        ``G[neighbors, j]`` (0 for the padding).
    """
    b, n = rows.shape
    rows = rows.tocsr()
    rows.sum_duplicates()
    r = np.repeat(np.arange(b), np.diff(rows.indptr))
    c, v = rows.indices, rows.data
    keep = (c != r + first) & (v != 0)
    r, c, v = r[keep], c[keep], v[keep]
    if score == "cosine":
        s = v / np.sqrt(np.maximum(diag_g[c], np.finfo(np.float64).tiny))
    elif score == "count":
        s = v
    else:
        raise ParameterError(f"score must be one of {NEIGHBOR_SCORES}, got {score!r}")
    # by row, then strongest, ties to the lower item index: CSR rows hold ascending item
    # indices, and two stable sorts (score, then row) keep that order among equals
    order = np.argsort(-s, kind="stable")
    order = order[np.argsort(r[order], kind="stable")]
    r, c, v = r[order], c[order], v[order]
    counts = np.bincount(r, minlength=b)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(r.size) - starts[r]
    top = rank < K
    neighbors = np.full((b, K), -1, dtype=np.int32)
    g = np.zeros((b, K), dtype=np.float32)
    neighbors[r[top], rank[top]] = c[top]
    g[r[top], rank[top]] = v[top]
    for i in np.flatnonzero(counts < K):
        have = neighbors[i, : counts[i]]
        # the smallest indices outside have ∪ {j}: among the first K + counts[i] + 1 items
        cand = np.arange(min(n, K + counts[i] + 1))
        cand = cand[(cand != first + i) & ~np.isin(cand, have)]
        neighbors[i, counts[i]:] = cand[: K - counts[i]]
    return neighbors, g

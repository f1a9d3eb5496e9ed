"""The popularity baseline: every held-out user gets the items most of the training users have.

    score(u, j) = pop_j = |{training users with item j}|      (the same for every user)

ranked by the one top-N rule (:mod:`edlae_dask.topn`: score descending, ties to the lower
item index), the user's fold-in items excluded like every model's. It is the sanity
floor of an evaluation: a tuned model that does not beat it is mis-specified or
mis-tuned. Popularity is counted over the training users on the kept items only, so
the held-out users' own interactions never leak into it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from edlae_dask.evaluation.metrics import user_metrics

__all__ = ["popularity_metrics", "popularity_ranking", "training_popularity"]


def training_popularity(store, split, client=None) -> np.ndarray:
    """Training users' interactions per kept item (int64, shape (n_kept_items,)), column j = ``split.items[j]``.

    The split records it (:attr:`~edlae_dask.evaluation.split.Split.popularity`); for a split made
    without it, the store's item counts minus the held-out users' rows (read again, one task per shard).
    """
    if getattr(split, "popularity", None) is not None:
        return np.asarray(split.popularity, dtype=np.int64)
    from edlae_dask.evaluation.split import _read_rows

    held = np.sort(np.concatenate([split.valid_users, split.test_users]))
    H = _read_rows(store, held, client)
    counts = store.item_counts() - np.bincount(H.indices, minlength=store.n_items)
    return counts[split.items].astype(np.int64)


def popularity_ranking(popularity: np.ndarray, fold_in, n_top: int = 100, batch_rows: int = 4096) -> np.ndarray:
    """Each user's top ``n_top`` items by popularity, fold-in items excluded: int64 (n_users, n_top), −1 padding.

    Parameters
    ----------
    popularity : ndarray of shape (n_items,)
    fold_in : scipy.sparse matrix of shape (n_users, n_items)
    n_top : int, default=100
    batch_rows : int, default=4096
        Users ranked together. Memory: batch_rows × (n_top + their most fold-in items) booleans;
        cost O(n log n) once plus that per batch.
    """
    fold_in = sp.csr_matrix(fold_in)
    n = int(popularity.shape[0])
    order = np.argsort(-np.asarray(popularity, dtype=np.float64), kind="stable")  # ties: lower index first
    n_top = int(n_top)
    out = np.full((fold_in.shape[0], n_top), -1, dtype=np.int64)
    for a in range(0, fold_in.shape[0], batch_rows):
        rows = fold_in[a: a + batch_rows]
        width = min(n, n_top + int(np.diff(rows.indptr).max(initial=0)))  # enough unseen items for every user
        cand = order[:width]
        seen = rows[:, cand].toarray() != 0
        pos = np.argsort(seen, axis=1, kind="stable")[:, :n_top]  # unseen candidates first, in popularity order
        picked = cand[pos]
        picked[np.take_along_axis(seen, pos, axis=1)] = -1
        out[a: a + rows.shape[0], : picked.shape[1]] = picked
    return out


def popularity_metrics(popularity: np.ndarray, fold_in, targets, n_top: int = 100) -> np.ndarray:
    """Per-user nDCG@100, Recall@20, Recall@50 of the popularity ranking: shape (n_users, 3)."""
    return user_metrics(popularity_ranking(popularity, fold_in, n_top), targets)

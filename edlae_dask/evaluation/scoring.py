"""Scores, top-N lists and per-user metrics of held-out users, as Dask graphs over item blocks.

Held-out users are few (validation + test) and sparse, so their fold-in matrix
``X`` (CSR, users × items) and their targets are put on the cluster once
(:func:`put_heldout`) and every model of the grid reads them from there.

Low rank (U, V of shape (n_items, k)), scores ``X·U·Vᵀ``::

    edlae-eval-embed-part-{token}, i      X[:, I_i] · U_i               one task per item block
    edlae-eval-embed-{token}              E = Σ_i (tree, 4 at a time)   (n_users, k_max)
    edlae-eval-topn-{token}, k, j         top-N of E[:, :k]·V_j[:, :k]ᵀ with fold-in items at −inf
    edlae-eval-merge-{token}, k           top-N over all item blocks
    edlae-eval-metrics-{token}, k         nDCG@100, Recall@20, Recall@50 per user

One ``E`` serves every k ≤ k_max (the leading columns of the top-k_max factors).

Full rank (B = I − C·diagM(d): d = 1 ⊘ diag C is the EDLAE teacher / EASE, eq. 12),
scores ``X·B``, column block j: ``X[:, J] − (Σ_i X[:, I_i]·C_ij)·diagM(d_J)``::

    edlae-eval-fr-topn-{token}, j   one task per column block: C's column blocks come to it once
    edlae-eval-fr-merge-{token}, edlae-eval-fr-metrics-{token}

Costs: low rank nnz(X)·k + n_users·n·k flops; full rank nnz(X)·n flops and one
pass of C over the network (n²·itemsize). No task holds more than one item
block of scores for ``batch_rows`` users (plus, for full rank, one column of C
blocks, n × block).
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from edlae_dask.errors import ParameterError
from edlae_dask.evaluation.metrics import user_metrics
from edlae_dask.linalg.graph import block_bounds, persist, tree_sum
from edlae_dask.topn import top_n, top_n_candidates

__all__ = ["HeldOutOnCluster", "put_heldout", "lowrank_metrics", "fullrank_metrics", "rank_dense"]

DEFAULT_BATCH_ROWS = 4096


# --------------------------------------------------------------------------- kernels


def _topn(S: np.ndarray, offset: int, n_top: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_top`` best entries of each row of the block ``S`` (items ``offset + col``), as (item index, score)."""
    return top_n(S, min(n_top, S.shape[1]), offset)


def _mask_fold_in(S: np.ndarray, xb: sp.csr_matrix) -> np.ndarray:
    r, c = xb.nonzero()
    S[r, c] = -np.inf
    return S


def _embed_part(X: sp.csr_matrix, lo: int, hi: int, u_i: np.ndarray) -> np.ndarray:
    return np.asarray(X[:, lo:hi] @ u_i)


def _lowrank_block_topn(E: np.ndarray, v_j: np.ndarray, X: sp.csr_matrix, lo: int, hi: int, k: int,
                        n_top: int, batch_rows: int):
    Xj = X[:, lo:hi].tocsr()
    Vk = np.ascontiguousarray(v_j[:, :k])
    idx, val = [], []
    for a in range(0, E.shape[0], batch_rows):
        S = E[a : a + batch_rows, :k] @ Vk.T
        i, v = _topn(_mask_fold_in(S, Xj[a : a + batch_rows]), lo, n_top)
        idx.append(i)
        val.append(v)
    return _stack(idx, val, n_top, E.dtype)


def _fullrank_block_topn(X: sp.csr_matrix, d_j: np.ndarray, bounds: tuple, j: int, n_top: int,
                         batch_rows: int, *c_col: np.ndarray):
    lo, hi = bounds[j], bounds[j + 1]
    Ccol = np.concatenate(c_col, axis=0)  # a copy: the blocks of C are never modified
    Ccol *= d_j[None, :]  # C[:, J]·diagM(d_J)
    Xj = X[:, lo:hi].tocsr()
    idx, val = [], []
    for a in range(0, X.shape[0], batch_rows):
        xb = X[a : a + batch_rows]
        S = Xj[a : a + batch_rows].toarray().astype(Ccol.dtype) - np.asarray(xb @ Ccol)
        i, v = _topn(_mask_fold_in(S, Xj[a : a + batch_rows]), lo, n_top)
        idx.append(i)
        val.append(v)
    return _stack(idx, val, n_top, Ccol.dtype)


def _stack(idx, val, n_top, dtype):
    if not idx:
        return np.zeros((0, n_top), np.int64), np.zeros((0, n_top), dtype)
    return np.concatenate(idx), np.concatenate(val)


def _merge_topn(n_top: int, *parts) -> np.ndarray:
    """Ranked item indices (n_users, n_top), best first, from each block's own top ``n_top`` (the topn rule)."""
    idx = np.concatenate([p[0] for p in parts], axis=1)
    val = np.concatenate([p[1] for p in parts], axis=1)
    return top_n_candidates(idx, val, min(n_top, idx.shape[1]))[0]


def _metrics(ranked: np.ndarray, targets: sp.csr_matrix) -> np.ndarray:
    return user_metrics(ranked, targets)


def rank_dense(S: np.ndarray, fold_in, n_top: int) -> np.ndarray:
    """Reference ranking of a dense score matrix (tests, small problems): same rule as the graphs."""
    S = np.array(S, dtype=np.float64)
    _mask_fold_in(S, sp.csr_matrix(fold_in))
    return _topn(S, 0, n_top)[0]


# --------------------------------------------------------------------------- held-out data


@dataclass
class HeldOutOnCluster:
    """The evaluated held-out users' fold-in rows and targets, in cluster memory.

    Rows ``[0, n_valid)`` are the validation users, the rest the test users.
    """

    X: Delayed
    targets: Delayed
    n_valid: int
    n_rows: int
    n_items: int
    token: str


def put_heldout(fold_in: sp.csr_matrix, targets: sp.csr_matrix, n_valid: int, dtype, client=None) -> HeldOutOnCluster:
    """Persist the held-out matrices once (scattered to the cluster when there is a client)."""
    X = sp.csr_matrix(fold_in, dtype=dtype)
    T = sp.csr_matrix(targets, dtype=np.float32)
    token = tokenize(X.indptr, X.indices, X.data, T.indptr, T.indices, n_valid)
    Xd = dask.delayed(X, name=f"edlae-eval-foldin-{token}", pure=True)
    Td = dask.delayed(T, name=f"edlae-eval-targets-{token}", pure=True)
    if client is not None:
        Xd, Td = persist([Xd, Td], client, wait=False)
    return HeldOutOnCluster(Xd, Td, int(n_valid), int(X.shape[0]), int(X.shape[1]), token)


def lowrank_metrics(U: da.Array, V: da.Array, ks, held: HeldOutOnCluster, *, n_top: int = 100,
                    batch_rows: int = DEFAULT_BATCH_ROWS) -> dict:
    """Per-user metrics of the low-rank models ``(U[:, :k], V[:, :k])`` for each k in ``ks``.

    Parameters
    ----------
    U, V : dask.array.Array of shape (n_items, k_max)
        Row-chunked by item blocks (the same chunks); the leading k columns are the rank-k model.
    ks : iterable of int
        Ranks to evaluate, each <= k_max.
    held : HeldOutOnCluster
    n_top : int, default=100
        Length of the ranked lists (the largest metric cut-off).

    Returns
    -------
    dict mapping k to a Delayed of an ndarray of shape (n_rows, 3) (nDCG@100, Recall@20, Recall@50).
    """
    U = U.rechunk({1: -1})
    V = V.rechunk({0: U.chunks[0], 1: -1})
    ks = sorted({int(k) for k in ks})
    if ks[-1] > U.shape[1]:
        raise ParameterError(f"k = {ks[-1]} exceeds the {U.shape[1]} columns of the factors")
    n_top = min(n_top, U.shape[0])
    bounds = block_bounds(U.chunks[0])
    token = tokenize(U, V, ks, held.token, n_top, batch_rows)
    layer = f"edlae-eval-lowrank-{token}"
    dsk: dict = {}
    parts = []
    for i in range(len(U.chunks[0])):
        key = (f"edlae-eval-embed-part-{token}", i)
        dsk[key] = (_embed_part, held.X.key, bounds[i], bounds[i + 1], (U.name, i, 0))
        parts.append(key)
    E = tree_sum(dsk, f"edlae-eval-embed-{token}", parts)
    out = {}
    for k in ks:
        tops = []
        for j in range(len(V.chunks[0])):
            key = (f"edlae-eval-topn-{token}", k, j)
            dsk[key] = (_lowrank_block_topn, E, (V.name, j, 0), held.X.key, bounds[j], bounds[j + 1], k, n_top,
                        batch_rows)
            tops.append(key)
        merged = (f"edlae-eval-merge-{token}", k)
        dsk[merged] = (_merge_topn, n_top, *tops)
        dsk[(layer, k)] = (_metrics, merged, held.targets.key)
        out[k] = (layer, k)
    graph = HighLevelGraph.from_collections(layer, dsk, dependencies=[U, V, held.X, held.targets])
    return {k: Delayed(key, graph, layer=layer) for k, key in out.items()}


def fullrank_metrics(C: da.Array, d: np.ndarray, held: HeldOutOnCluster, *, n_top: int = 100,
                     batch_rows: int = DEFAULT_BATCH_ROWS) -> Delayed:
    """Per-user metrics of the full-rank model ``B = I − C·diagM(d)`` (scores ``X·B``).

    Parameters
    ----------
    C : dask.array.Array of shape (n_items, n_items)
        Square blocks (e.g. the persisted output of :func:`edlae_dask.linalg.spd_inverse`).
    d : ndarray of shape (n_items,)
        ``1 ⊘ diag(C)`` for the EDLAE teacher (eq. 12) and EASE.

    Returns
    -------
    Delayed of an ndarray of shape (n_rows, 3).
    """
    bounds = block_bounds(C.chunks[0])
    d = np.asarray(d, dtype=C.dtype)
    n_top = min(n_top, C.shape[0])
    token = tokenize(C, d, held.token, n_top, batch_rows)
    layer = f"edlae-eval-fullrank-{token}"
    dsk: dict = {}
    tops = []
    nb = len(C.chunks[0])
    for j in range(nb):
        key = (f"edlae-eval-fr-topn-{token}", j)
        dsk[key] = (_fullrank_block_topn, held.X.key, d[bounds[j] : bounds[j + 1]], bounds, j, n_top, batch_rows,
                    *[(C.name, i, j) for i in range(nb)])
        tops.append(key)
    merged = f"edlae-eval-fr-merge-{token}"
    dsk[merged] = (_merge_topn, n_top, *tops)
    dsk[layer] = (_metrics, merged, held.targets.key)
    graph = HighLevelGraph.from_collections(layer, dsk, dependencies=[C, held.X, held.targets])
    return Delayed(layer, graph, layer=layer)

"""The scalable path end to end, as Dask graphs over the interaction shards.

    load        X by user shards, Xᵀ (items × users) and diag(XᵀX)
    neighbors   S_j, G[S_j, j] for every item, by item blocks of bounded work
    teacher     Bᵀ rows (b_S = (P_SS)⁻¹ G_Sj), then B by item rows
    eigensolve  V = eig_k(BᵀPB) matrix-free (:class:`StudentOperator`), U = B·V

Memory grows with nnz(X)·(copies per worker) + n·K (B, Bᵀ and the neighbour
Gram) + the n × l panels of the eigensolver; no n × n matrix is formed.
"""

from __future__ import annotations

import logging
import math

import dask
import numpy as np
import scipy.sparse as sp

from edlae_dask.io.interactions import read_shard
from edlae_dask.scalable.neighbors import balanced_item_blocks, row_products_bound, top_neighbors
from edlae_dask.scalable.operator import StudentOperator
from edlae_dask.scalable.teacher import teacher_transpose, teacher_weights

log = logging.getLogger("edlae_dask.scalable")

#: Work (stored entries of G's rows) of one neighbour task; bounds its memory (~16 bytes an entry, a few copies).
NEIGHBOR_TASK_ENTRIES = 10_000_000


def scalable_memory_estimate(n_items: int, n_users: int, nnz: int, k: int, neighbors: int, itemsize: int,
                             n_workers: int = 1, n_oversamples: int | None = None) -> int:
    """Bytes the scalable path holds at its peak, across the cluster (an estimate).

    X, Xᵀ and the shards (12 bytes an interaction each) on every worker; the neighbour
    lists and B and Bᵀ (8 bytes an entry each, the lists on every worker); about five
    n × l and two users × l panels of the eigensolver (measured: 1.0 GiB in all, process
    baselines included, for 10⁵ items, 2·10⁵ users, 4.2·10⁶ interactions, K = 64, k = 100,
    against an estimate of 1.2 GiB).
    """
    l = min(n_items, k + (n_oversamples if n_oversamples is not None else max(10, k)))
    interactions = 3 * 12 * nnz * max(1, n_workers)
    sparse_model = (8 * max(1, n_workers) + 2 * 8) * n_items * neighbors
    panels = (5 * n_items + 2 * n_users) * l * itemsize
    return int(interactions + sparse_model + panels)


def row_blocks(n_items: int, n_workers: int) -> tuple[int, ...]:
    """Item row blocks of the scalable path: at least two per worker, at most 50,000 items each."""
    n_blocks = max(2 * max(1, n_workers), math.ceil(n_items / 50_000))
    n_blocks = min(n_blocks, n_items)
    size = math.ceil(n_items / n_blocks)
    full, rest = divmod(n_items, size)
    return (size,) * full + ((rest,) if rest else ())


# ----------------------------------------------------------------------------- block functions


def load_shard(path: str, s: int, dtype) -> sp.csr_matrix:
    return read_shard(path, s).astype(dtype, copy=False)


def stack_users(*shards: sp.csr_matrix) -> sp.csr_matrix:
    return sp.vstack(shards, format="csr")


def transpose(x: sp.csr_matrix) -> sp.csr_matrix:
    return x.T.tocsr()


def gram_diagonal(xt: sp.csr_matrix) -> np.ndarray:
    return np.asarray(xt.multiply(xt).sum(axis=1), dtype=np.float64).ravel()


def rows_of(x: sp.csr_matrix, a: int, b: int) -> sp.csr_matrix:
    return x[a:b]


def neighbors_of_block(xt: sp.csr_matrix, x: sp.csr_matrix, a: int, b: int, K: int, diag_g: np.ndarray,
                       score: str) -> tuple[np.ndarray, np.ndarray]:
    return top_neighbors(xt[a:b] @ x, a, K, diag_g, score)


def stack_neighbors(*parts) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def teacher_rows(xt, nbrs, a: int, b: int, p_diag: np.ndarray, dtype) -> tuple[sp.csr_matrix, int]:
    w, n_exact = teacher_weights(nbrs[0], nbrs[1], xt, p_diag, np.arange(a, b))
    return teacher_transpose(nbrs[0][a:b], w, xt.shape[0], dtype), n_exact


def first(pair):
    return pair[0]


def second(pair):
    return pair[1]


def transpose_blocks(*bt_rows: sp.csr_matrix) -> sp.csr_matrix:
    return sp.vstack(bt_rows, format="csr").T.tocsr()


# ----------------------------------------------------------------------------- the path


def _persist(objs, client, progress):
    """Persist a list of delayed objects where this run computes; wait, and raise a failed one's error."""
    if client is None:
        return list(dask.persist(*objs, scheduler="threads"))
    from distributed import futures_of, progress as show_progress, wait

    objs = client.persist(list(objs))
    (show_progress if progress else wait)(objs)
    failed = [f for f in futures_of(objs) if f.status == "error"]
    if failed:
        failed[0].result()
    return objs


def _compute(obj, client):
    return obj.compute(scheduler="threads") if client is None else client.compute(obj).result()


def scalable_stages(store, params, client, stages, progress, n_workers: int):
    """Run the scalable path's stages; return (operator, eig, info) with V = eig.eigenvectors.

    ``params`` is a :class:`edlae_dask.model.TrainParams` (``neighbors``, ``neighbor_score`` used).
    """
    from edlae_dask.linalg import randomized_eigh

    delayed = dask.delayed(pure=True)
    dtype = np.dtype(params.dtype)
    n = store.n_items
    K = min(int(params.neighbors), n - 1)
    chunks = row_blocks(n, n_workers)
    bounds = np.concatenate([[0], np.cumsum(chunks)]).tolist()
    ratio = params.p / (1.0 - params.p)
    path = store.location  # URL and storage options: each worker reads its shard itself

    with stages.stage("load", f"X and Xᵀ from {store.n_shards} shards"):
        shards = [delayed(load_shard)(path, s, dtype) for s in range(store.n_shards)]
        x = delayed(stack_users)(*shards)
        xt = delayed(transpose)(x)
        *shards, x, xt = _persist([*shards, x, xt], client, progress)
        diag_g = _compute(delayed(gram_diagonal)(xt), client)
        bound = _compute(delayed(row_products_bound)(x, xt), client)
    lam_diag = params.lam + ratio * diag_g
    p_diag = diag_g + lam_diag
    # n-vectors every task of a stage reads: one key each, sent to a worker once, not
    # embedded in (and shipped with) every task
    diag_g_d, p_diag_d = _persist([delayed(np.asarray)(diag_g), delayed(np.asarray)(p_diag)], client, False)

    budget = NEIGHBOR_TASK_ENTRIES
    nblocks = balanced_item_blocks(bound, budget, max_items=8192)
    with stages.stage("neighbors", f"top-{K} co-occurring items ({params.neighbor_score}) in {len(nblocks)} blocks") as info:
        parts = [delayed(neighbors_of_block)(xt, x, a, b, K, diag_g_d, params.neighbor_score) for a, b in nblocks]
        nbrs = delayed(stack_neighbors)(*parts)
        (nbrs,) = _persist([nbrs], client, progress)
        del parts
        info.update(K=K, blocks=len(nblocks), gram_products=int(bound.sum()))
    with stages.stage("teacher", f"b_S = (P_SS)⁻¹ G_Sj for {n} items, K={K}") as info:
        out = [delayed(teacher_rows)(xt, nbrs, a, b, p_diag_d, dtype) for a, b in zip(bounds[:-1], bounds[1:])]
        bt_rows = [delayed(first)(o) for o in out]
        n_exact = delayed(sum)([delayed(second)(o) for o in out])
        b_full = delayed(transpose_blocks)(*bt_rows)
        b_rows = [delayed(rows_of)(b_full, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        xt_rows = [delayed(rows_of)(xt, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        nb = len(chunks)
        persisted = _persist([*bt_rows, *b_rows, *xt_rows, n_exact], client, progress)
        bt_rows, b_rows, xt_rows = persisted[:nb], persisted[nb: 2 * nb], persisted[2 * nb: 3 * nb]
        n_exact = int(_compute(persisted[-1], client))
        del nbrs, x, xt, out, b_full, persisted
        info.update(nnz_b=int(n * K), exact_p_ss=n_exact)
        if n_exact:
            log.info("teacher: %d of %d items had a masked P_SS that was not positive definite; "
                     "their P_SS was formed exactly from the interactions", n_exact, n)
    operator = StudentOperator(b_rows=b_rows, bt_rows=bt_rows, x_rows=shards, xt_rows=xt_rows,
                               lam=lam_diag, row_chunks=chunks, dtype=dtype)
    with stages.stage("eigensolve", f"top-{params.k} eigenvectors of BᵀPB, matrix-free") as info:
        eig = randomized_eigh(operator, n, params.k, row_chunks=chunks, dtype=dtype,
                              n_oversamples=params.n_oversamples, n_power_iter=params.n_power_iter, seed=params.seed)
        info.update(n_matvecs=eig.n_matvecs, n_oversamples=eig.n_oversamples, n_power_iter=eig.n_power_iter,
                    ritz_residual_max=float(np.max(eig.ritz_residuals)))
    return operator, eig, dict(neighbors=K, neighbor_score=params.neighbor_score, row_blocks=len(chunks))

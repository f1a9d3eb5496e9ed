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

import numpy as np
import scipy.sparse as sp

from edlae_dask.io.interactions import read_shard
from edlae_dask.linalg import randomized_eigh
from edlae_dask.linalg.graph import task
from edlae_dask.runtime import PathResult
from edlae_dask.scalable.neighbors import balanced_item_blocks, row_products_bound, top_neighbors
from edlae_dask.scalable.operator import StudentOperator
from edlae_dask.scalable.teacher import teacher_transpose, teacher_weights

log = logging.getLogger("edlae_dask.scalable")

#: Work (stored entries of G's rows) of one neighbour task; bounds its memory (~16 bytes an entry, a few copies).
NEIGHBOR_TASK_ENTRIES = 10_000_000


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


def count_exact(*counts: int) -> int:
    return int(sum(counts))


def transpose_blocks(*bt_rows: sp.csr_matrix) -> sp.csr_matrix:
    return sp.vstack(bt_rows, format="csr").T.tocsr()


# ----------------------------------------------------------------------------- the path


def run_scalable(store, params, ctx) -> PathResult:
    """Run the scalable path's stages on ``store``; return a :class:`edlae_dask.runtime.PathResult`.

    ``params`` is a :class:`edlae_dask.config.TrainParams` (``neighbors``,
    ``neighbor_score`` used); ``ctx`` an :class:`edlae_dask.runtime.StageContext`.
    """
    dtype = np.dtype(params.dtype)
    n = store.n_items
    K = min(int(params.neighbors), n - 1)
    chunks = row_blocks(n, ctx.n_workers)
    bounds = np.concatenate([[0], np.cumsum(chunks)]).tolist()
    ratio = params.p / (1.0 - params.p)
    path = store.location  # URL and storage options: each worker reads its shard itself
    stages = ctx.stages

    with stages.stage("load", f"X and Xᵀ from {store.n_shards} shards"):
        shards = [task("load-shard", load_shard, path, s, dtype) for s in range(store.n_shards)]
        x = task("load-x", stack_users, *shards)
        xt = task("load-xt", transpose, x)
        *shards, x, xt = ctx.persist([*shards, x, xt])
        diag_g = ctx.compute(task("load-diag", gram_diagonal, xt))
        bound = ctx.compute(task("load-bound", row_products_bound, x, xt))
    lam_diag = params.lam + ratio * diag_g
    p_diag = diag_g + lam_diag
    # n-vectors every task of a stage reads: one key each, sent to a worker once, not
    # embedded in (and shipped with) every task
    diag_g_d, p_diag_d = ctx.persist([task("diag-g", np.asarray, diag_g), task("diag-p", np.asarray, p_diag)],
                                     progress=False)

    budget = NEIGHBOR_TASK_ENTRIES
    nblocks = balanced_item_blocks(bound, budget, max_items=8192)
    with stages.stage("neighbors",
                      f"top-{K} co-occurring items ({params.neighbor_score}) in {len(nblocks)} blocks") as info:
        parts = [task("neighbors", neighbors_of_block, xt, x, a, b, K, diag_g_d, params.neighbor_score)
                 for a, b in nblocks]
        nbrs = ctx.persist(task("neighbors-stack", stack_neighbors, *parts))
        del parts
        info.update(K=K, blocks=len(nblocks), gram_products=int(bound.sum()))
    with stages.stage("teacher", f"b_S = (P_SS)⁻¹ G_Sj for {n} items, K={K}") as info:
        blocks = list(zip(bounds[:-1], bounds[1:]))
        out = [task("teacher", teacher_rows, xt, nbrs, a, b, p_diag_d, dtype) for a, b in blocks]
        bt_rows = [task("teacher-bt", first, o) for o in out]
        n_exact = task("teacher-exact", count_exact, *[task("teacher-exact-part", second, o) for o in out])
        b_full = task("teacher-b", transpose_blocks, *bt_rows)
        b_rows = [task("teacher-b-rows", rows_of, b_full, a, b) for a, b in blocks]
        xt_rows = [task("teacher-xt-rows", rows_of, xt, a, b) for a, b in blocks]
        nb = len(chunks)
        persisted = ctx.persist([*bt_rows, *b_rows, *xt_rows, n_exact])
        bt_rows, b_rows, xt_rows = persisted[:nb], persisted[nb: 2 * nb], persisted[2 * nb: 3 * nb]
        n_exact = int(ctx.compute(persisted[-1]))
        del nbrs, x, xt, out, b_full, persisted
        info.update(nnz_b=int(n * K), exact_p_ss=n_exact)
        if n_exact:
            log.info("teacher: %d of %d items had a masked P_SS that was not positive definite; "
                     "their P_SS was formed exactly from the interactions", n_exact, n)
    operator = StudentOperator(b_rows=b_rows, bt_rows=bt_rows, x_rows=shards, xt_rows=xt_rows,
                               lam=lam_diag, row_chunks=chunks, dtype=dtype)
    with stages.stage("eigensolve", f"top-{params.k} eigenvectors of BᵀPB, matrix-free") as info:
        eig = randomized_eigh(operator, n, params.k, row_chunks=chunks, dtype=dtype,
                              n_oversamples=params.n_oversamples, n_power_iter=params.n_power_iter, seed=params.seed,
                              tol=params.eig_tol, max_power_iter=params.max_power_iter)
        info.update(n_matvecs=eig.n_matvecs, n_oversamples=eig.n_oversamples, n_power_iter=eig.n_power_iter,
                    converged=eig.converged, ritz_sum_change=eig.ritz_sum_change,
                    ritz_residual_max=float(np.max(eig.ritz_residuals)))
    V = eig.eigenvectors
    U = ctx.persist(operator.factors_u(V))
    return PathResult(U=U, V=V, eig=eig,
                      info=dict(neighbors=K, neighbor_score=params.neighbor_score, row_blocks=len(chunks)))

"""The scalable path end to end, as Dask graphs partitioned by user shard and item block.

    load        X_s and X_sᵀ per user shard (a task each, on the worker that reads it);
                diag(XᵀX) and the Gram rows' work bound as tree sums over shards
    neighbors   S_j, G[S_j, j] per item block: G[I, :] = Σ_s X_sᵀ[I]·X_s, tree-summed
    teacher     per item row block J: b_S = (P_SS)⁻¹ G_Sj from the neighbour lists its
                sets name (one piece per (J, I) block pair); Bᵀ[J, :], then B[I, :]
                from the (I, J) pieces of the Bᵀ blocks
    eigensolve  V = eig_k(BᵀPB) matrix-free (:class:`StudentOperator`), U = B·V

No task reads more than one shard and no worker is sent all interactions: a worker
holds its shards (X_s and X_sᵀ, about 2·12·nnz/workers bytes; X_sᵀ only after the
neighbours), its share of the neighbour lists, B
and Bᵀ (8·n·K bytes each over all workers), the neighbour lists one teacher block
names (at most 8·n·K), and the eigensolver's broadcast n × l panels
(:func:`edlae_dask.planning.scalable_memory_estimate`). No n × n matrix is formed.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import scipy.sparse as sp

from edlae_dask.io.interactions import read_shard
from edlae_dask.linalg import randomized_eigh
from edlae_dask.linalg.graph import sum_blocks, task, tree_reduce
from edlae_dask.planning import neighbor_task_entries
from edlae_dask.runtime import PathResult
from edlae_dask.scalable.neighbors import balanced_item_blocks, gram_rows, row_products_bound, sum_sparse, top_neighbors
from edlae_dask.scalable.operator import StudentOperator
from edlae_dask.scalable.teacher import (
    exact_gram_of_sets,
    graph_rows,
    needed_items,
    solve_exact,
    teacher_transpose,
    teacher_weights,
)

log = logging.getLogger("edlae_dask.scalable")

#: Neighbour blocks in flight per worker (see the stage's waves).
NEIGHBOR_BLOCKS_PER_WORKER = 2


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


def transpose(x: sp.csr_matrix) -> sp.csr_matrix:
    return x.T.tocsr()


def gram_diagonal(xt: sp.csr_matrix) -> np.ndarray:
    """One shard's term of diag(XᵀX) (float64, shape (n,))."""
    return np.asarray(xt.multiply(xt).sum(axis=1), dtype=np.float64).ravel()


def rows_of(x: sp.csr_matrix, a: int, b: int) -> sp.csr_matrix:
    return x[a:b]


def hstack_csr(*blocks: sp.csr_matrix) -> sp.csr_matrix:
    return sp.hstack(blocks, format="csr")


def neighbor_rows(a: int, b: int, starts: tuple, *parts) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists of items a..b from the neighbour blocks ``parts`` that overlap them (starting at ``starts``)."""
    nbrs, g = [], []
    for first, (nb, gb) in zip(starts, parts):
        lo, hi = max(a, first) - first, min(b, first + nb.shape[0]) - first
        nbrs.append(nb[lo:hi])
        g.append(gb[lo:hi])
    return np.concatenate(nbrs), np.concatenate(g)


def block_needs(nbrs: tuple, first: int) -> np.ndarray:
    return needed_items(nbrs[0], first)


def graph_piece(nbrs: tuple, first: int, wanted: np.ndarray) -> tuple:
    return graph_rows(nbrs[0], nbrs[1], first, wanted)


def teacher_block(nbrs: tuple, first: int, p_diag: np.ndarray, *pieces) -> tuple:
    """Teacher weights of the items of one row block from the graph pieces its sets need.

    Returns (weights, failed, sets of failed, rhs of failed) (see :func:`teacher_weights`).
    """
    rows = np.concatenate([p[0] for p in pieces])
    w, failed = teacher_weights(np.concatenate([p[1] for p in pieces]), np.concatenate([p[2] for p in pieces]),
                                p_diag, np.arange(first, first + nbrs[0].shape[0]), rows=rows)
    return w, failed, nbrs[0][failed], nbrs[1][failed]


def both(*parts) -> tuple:
    """Several small results as one (a single round trip to the client)."""
    return parts


def pick(t: tuple, i: int):
    return t[i]


def failures(out: tuple) -> tuple:
    return out[1], out[2], out[3]


def with_exact(out: tuple, solved: np.ndarray) -> np.ndarray:
    w = out[0].copy()
    w[out[1]] = solved
    return w


def teacher_bt(nbrs: tuple, weights: np.ndarray, n: int, dtype) -> sp.csr_matrix:
    return teacher_transpose(nbrs[0], weights, n, dtype)


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
    blocks = list(zip(bounds[:-1], bounds[1:]))
    ratio = params.p / (1.0 - params.p)
    path = store.location  # URL and storage options: each worker reads its shard itself
    stages = ctx.stages

    with stages.stage("load", f"{store.n_shards} user shards and their transposes, a task each"):
        x = [task("load-shard", load_shard, path, s, dtype) for s in range(store.n_shards)]
        xt = [task("load-shard-t", transpose, xs) for xs in x]
        persisted = ctx.persist([*x, *xt])
        x, xt = persisted[: len(x)], persisted[len(x):]
        diag_g, bound = ctx.compute(task(
            "load-stats", both,
            tree_reduce("load-diag", sum_blocks, [task("load-diag-part", gram_diagonal, t) for t in xt]),
            tree_reduce("load-bound", sum_blocks, [task("load-bound-part", row_products_bound, a, t)
                                                   for a, t in zip(x, xt)]),
        ))
    lam_diag = params.lam + ratio * diag_g
    p_diag = diag_g + lam_diag
    # n-vectors every task of a stage reads: one key each, sent to a worker once, not
    # embedded in (and shipped with) every task
    diag_g_d, p_diag_d = ctx.share("diag-g", diag_g), ctx.share("diag-p", p_diag)

    nblocks = balanced_item_blocks(bound, neighbor_task_entries(store.nnz, ctx.n_workers), max_items=8192)
    with stages.stage("neighbors",
                      f"top-{K} co-occurring items ({params.neighbor_score}) in {len(nblocks)} blocks") as info:
        parts = []
        # in waves of a few blocks per worker: every block's pieces (one per shard) are ready at once, and
        # a scheduler given all of them computes pieces of many blocks before it sums any
        wave = NEIGHBOR_BLOCKS_PER_WORKER * max(1, ctx.n_workers)
        for w in range(0, len(nblocks), wave):
            todo = []
            for a, b in nblocks[w: w + wave]:
                rows = tree_reduce("neighbors-gram", sum_sparse,
                                   [task("neighbors-gram-part", gram_rows, t, xs, a, b) for t, xs in zip(xt, x)])
                todo.append(task("neighbors", top_neighbors, rows, a, K, diag_g_d, params.neighbor_score))
            parts.extend(ctx.persist(todo, progress=False))
        starts = [a for a, _ in nblocks]
        nbrs = []
        for a, b in blocks:
            over = [i for i, (na, nb) in enumerate(nblocks) if na < b and nb > a]
            nbrs.append(task("neighbors-rows", neighbor_rows, a, b, tuple(starts[i] for i in over),
                             *[parts[i] for i in over]))
        nbrs = ctx.persist(nbrs)
        # from here on the shards are held once, as X_sᵀ (the operator and the exact P_SS read only that)
        del parts, x
        info.update(K=K, blocks=len(nblocks), gram_products=int(bound.sum()))
    with stages.stage("teacher", f"b_S = (P_SS)⁻¹ G_Sj for {n} items, K={K}") as info:
        needs = [task("teacher-needs", block_needs, nb, a) for nb, (a, _) in zip(nbrs, blocks)]
        out = []
        for nb_j, (a, _), need in zip(nbrs, blocks, needs):
            pieces = [task("teacher-graph", graph_piece, nb_i, a_i, need) for nb_i, (a_i, _) in zip(nbrs, blocks)]
            out.append(task("teacher", teacher_block, nb_j, a, p_diag_d, *pieces))
        out = ctx.persist(out)
        fails = ctx.compute(task("teacher-failed", both, *[task("teacher-failed-part", failures, o) for o in out]))
        weights, n_exact = _exact_where_needed(out, fails, xt, p_diag_d, ctx)
        bt_rows = [task("teacher-bt", teacher_bt, nb, w, n, dtype) for nb, w in zip(nbrs, weights)]
        b_cols = [task("teacher-b-cols", transpose, bt) for bt in bt_rows]
        b_rows = [task("teacher-b", hstack_csr, *[task("teacher-b-piece", rows_of, c, a, b) for c in b_cols])
                  for a, b in blocks]
        persisted = ctx.persist([*bt_rows, *b_rows])
        bt_rows, b_rows = persisted[: len(blocks)], persisted[len(blocks):]
        del nbrs, needs, out, weights, b_cols, persisted
        info.update(nnz_b=int(n * K), exact_p_ss=n_exact)
        if n_exact:
            log.info("teacher: %d of %d items had a masked P_SS that was not positive definite; "
                     "their P_SS was formed exactly from the interactions", n_exact, n)
    operator = StudentOperator(b_rows=b_rows, bt_rows=bt_rows, xt_shards=xt,
                               lam=lam_diag, row_chunks=chunks, dtype=dtype)
    with stages.stage("eigensolve", f"top-{params.k} eigenvectors of BᵀPB, matrix-free") as info:
        eig = randomized_eigh(operator, n, params.k, row_chunks=chunks, dtype=dtype,
                              n_oversamples=params.n_oversamples, n_power_iter=params.n_power_iter, seed=params.seed)
        info.update(n_matvecs=eig.n_matvecs, n_oversamples=eig.n_oversamples, n_power_iter=eig.n_power_iter,
                    ritz_residual_max=float(np.max(eig.ritz_residuals)))
    V = eig.eigenvectors
    U = ctx.persist(operator.factors_u(V))
    return PathResult(U=U, V=V, eig=eig,
                      info=dict(neighbors=K, neighbor_score=params.neighbor_score, row_blocks=len(chunks)))


def _exact_where_needed(out: list, fails: list, xt: list, p_diag_d, ctx) -> tuple[list, int]:
    """Each block's teacher weights, the failed items solved with their exact P_SS (a tree sum over shards)."""
    n_exact = int(sum(f[0].size for f in fails))
    if not n_exact:
        return [task("teacher-w", pick, o, 0) for o in out], 0
    sets = np.concatenate([f[1] for f in fails])
    rhs = np.concatenate([f[2] for f in fails])
    gram = tree_reduce("teacher-exact-gram", sum_blocks, [task("teacher-exact-part", exact_gram_of_sets, t, sets)
                                                          for t in xt])
    solved = ctx.compute(task("teacher-exact", solve_exact, gram, sets, rhs, p_diag_d))
    offsets = np.concatenate([[0], np.cumsum([f[0].size for f in fails])])
    return [task("teacher-w", with_exact, o, solved[offsets[i]: offsets[i + 1]]) for i, o in enumerate(out)], n_exact

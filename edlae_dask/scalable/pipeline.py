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

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from edlae_dask.errors import ParameterError
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


def load_selected(path: str, s: int, local: np.ndarray, items, dtype) -> sp.csr_matrix:
    """Rows ``local`` of shard s, columns ``items`` (all if None), as CSR in ``dtype``."""
    x = read_shard(path, s)[local]
    return (x if items is None else x[:, items]).astype(dtype, copy=False).tocsr()


def first_columns(nbrs: tuple, K: int) -> tuple:
    """The first K neighbours of each item of a block (copies: the lists stay compact)."""
    return np.ascontiguousarray(nbrs[0][:, :K]), np.ascontiguousarray(nbrs[1][:, :K])


def stored(x: sp.csr_matrix) -> int:
    return int(x.nnz)


def total(*parts: int) -> int:
    return int(sum(parts))


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


# ----------------------------------------------------------------------------- the stages


@dataclass
class Loaded:
    """What the ``load`` stage leaves on the cluster, shared by every later stage (and grid point).

    Attributes
    ----------
    x, xt : list of Delayed
        Persisted X_s (CSR, users_s × n) and X_sᵀ (n × users_s), one per user shard read. ``x`` is
        None after :meth:`without_x` (the stages after ``neighbors`` read X_sᵀ only).
    diag_g : ndarray of shape (n,), float64
        diag(XᵀX).
    diag_g_d : Delayed
        The same vector as one persisted key (every neighbour task reads it; sent once per worker).
    bound : ndarray of shape (n,), int64
        Stored entries of each row of XᵀX, at most (:func:`row_products_bound`).
    nnz : int
        Interactions read.
    n_items : int
    chunks : tuple of int
        Item row blocks (:func:`row_blocks`).
    dtype : numpy dtype
    """

    x: list
    xt: list
    diag_g: np.ndarray
    diag_g_d: object
    bound: np.ndarray
    nnz: int
    n_items: int
    chunks: tuple
    dtype: np.dtype

    def without_x(self) -> Loaded:
        """The same without X_s, so its blocks are released: the shards are then held once, as X_sᵀ."""
        return dataclasses.replace(self, x=None)

    @property
    def blocks(self) -> list[tuple[int, int]]:
        bounds = np.concatenate([[0], np.cumsum(self.chunks)]).tolist()
        return list(zip(bounds[:-1], bounds[1:]))


@dataclass
class Neighbors:
    """The ``neighbors`` stage's output: per item row block, (neighbour ids (b, K) int32, G[S_j, j] (b, K))."""

    rows: list
    K: int
    score: str


@dataclass
class Teacher:
    """The sparse teacher B by item row blocks (B[I, :] and Bᵀ[J, :], CSR) and diag(Λ) (shape (n,))."""

    b_rows: list
    bt_rows: list
    lam_diag: np.ndarray
    n_exact: int


def load_stage(store, dtype, ctx, *, users=None, items=None) -> Loaded:
    """Stage ``load``: each user shard read by one task and kept where it was read, with its transpose.

    Parameters
    ----------
    store : InteractionStore
    dtype : numpy dtype
    ctx : StageContext
    users : ndarray of int, optional
        Sorted store rows to keep (an evaluation's training users); shards holding none are not read.
        Default: every user.
    items : ndarray of int, optional
        Sorted store columns to keep, in this order (an evaluation's kept items). Default: every item.

    Returns
    -------
    Loaded
        Cost nnz(X) to read and transpose; diag(XᵀX) and the Gram-row bound as tree sums over shards.
        Memory: about 2·12·nnz bytes over the workers, nothing gathered but two n-vectors.
    """
    dtype = np.dtype(dtype)
    n = store.n_items if items is None else int(np.asarray(items).size)
    path = store.location  # URL and storage options: each worker reads its shard itself
    if users is None and items is None:
        x = [task("load-shard", load_shard, path, s, dtype) for s in range(store.n_shards)]
    else:
        offsets = np.asarray(store.shard_offsets)
        users = np.arange(store.n_users) if users is None else np.asarray(users, dtype=np.int64)
        items_d = None if items is None else ctx.persist(task("load-items", np.asarray, np.asarray(items)),
                                                         progress=False)
        x = []
        for s in range(store.n_shards):
            lo, hi = np.searchsorted(users, [offsets[s], offsets[s + 1]])
            if hi > lo:  # a shard without selected users is not read
                x.append(task("load-shard", load_selected, path, s, users[lo:hi] - offsets[s], items_d, dtype))
        if not x:
            raise ParameterError("the user selection holds no user of the store; select at least one")
    with ctx.stages.stage("load", f"{len(x)} user shards and their transposes, a task each"):
        xt = [task("load-shard-t", transpose, xs) for xs in x]
        persisted = ctx.persist([*x, *xt])
        x, xt = persisted[: len(x)], persisted[len(x):]
        diag_g, bound, nnz = ctx.compute(task(
            "load-stats", both,
            tree_reduce("load-diag", sum_blocks, [task("load-diag-part", gram_diagonal, t) for t in xt]),
            tree_reduce("load-bound", sum_blocks, [task("load-bound-part", row_products_bound, a, t)
                                                   for a, t in zip(x, xt)]),
            tree_reduce("load-nnz", total, [task("load-nnz-part", stored, a) for a in x]),
        ))
    # an n-vector every neighbour task reads: one key, sent to a worker once, not embedded in every task
    diag_g_d = ctx.share("diag-g", diag_g)
    return Loaded(x=x, xt=xt, diag_g=diag_g, diag_g_d=diag_g_d, bound=bound, nnz=int(nnz), n_items=n,
                  chunks=row_blocks(n, ctx.n_workers), dtype=dtype)


def neighbor_stage(loaded: Loaded, K: int, score: str, ctx) -> Neighbors:
    """Stage ``neighbors``: each item's K strongest co-occurring items (strongest first), by item row block.

    ``G[I, :] = Σ_s X_sᵀ[I]·X_s`` per neighbour block of bounded work, tree-summed over shards, then
    :func:`top_neighbors`; the lists are persisted by the row blocks of ``loaded.chunks``. They depend on
    the data, K and ``score`` only (not on λ, p or k), and the lists for K' < K are their first K' columns
    (:func:`prefix_neighbors`). Cost Σ_u d_u²; memory 8·n·K bytes over the workers, and a neighbour
    task's Gram rows (:func:`edlae_dask.planning.neighbor_task_entries`) on each worker at a time.
    """
    n = loaded.n_items
    K = min(int(K), n - 1)
    if loaded.x is None:
        raise ParameterError("the neighbour stage needs the shards' X_s: call it before Loaded.without_x()")
    nblocks = balanced_item_blocks(loaded.bound, neighbor_task_entries(loaded.nnz, ctx.n_workers), max_items=8192)
    with ctx.stages.stage("neighbors", f"top-{K} co-occurring items ({score}) in {len(nblocks)} blocks") as info:
        parts = []
        # in waves of a few blocks per worker: every block's pieces (one per shard) are ready at once, and
        # a scheduler given all of them computes pieces of many blocks before it sums any
        wave = NEIGHBOR_BLOCKS_PER_WORKER * max(1, ctx.n_workers)
        for w in range(0, len(nblocks), wave):
            todo = []
            for a, b in nblocks[w: w + wave]:
                rows = tree_reduce("neighbors-gram", sum_sparse, [task("neighbors-gram-part", gram_rows, t, xs, a, b)
                                                                  for t, xs in zip(loaded.xt, loaded.x)])
                todo.append(task("neighbors", top_neighbors, rows, a, K, loaded.diag_g_d, score))
            parts.extend(ctx.persist(todo, progress=False))
        starts = [a for a, _ in nblocks]
        nbrs = []
        for a, b in loaded.blocks:
            over = [i for i, (na, nb) in enumerate(nblocks) if na < b and nb > a]
            nbrs.append(task("neighbors-rows", neighbor_rows, a, b, tuple(starts[i] for i in over),
                             *[parts[i] for i in over]))
        nbrs = ctx.persist(nbrs)
        del parts
        info.update(K=K, blocks=len(nblocks), gram_products=int(loaded.bound.sum()))
    return Neighbors(rows=nbrs, K=K, score=score)


def prefix_neighbors(nbrs: Neighbors, K: int) -> Neighbors:
    """The neighbour lists at K <= ``nbrs.K``: the first K columns (the lists are strongest first).

    Equal to :func:`neighbor_stage` at K, padding included (:func:`top_neighbors`). Lazy: one slicing
    task per row block, no new Gram rows.
    """
    K = int(K)
    if K > nbrs.K:
        raise ParameterError(f"neighbour lists of {nbrs.K} items have no prefix of {K}; compute them at K={K}")
    if K == nbrs.K:
        return nbrs
    return Neighbors(rows=[task("neighbors-prefix", first_columns, nb, K) for nb in nbrs.rows], K=K,
                     score=nbrs.score)


def teacher_stage(loaded: Loaded, nbrs: Neighbors, lam: float, p: float, ctx) -> Teacher:
    """Stage ``teacher``: ``b_S = (P_SS)⁻¹ G_Sj`` for every item j over its neighbour set, B and Bᵀ by row block.

    P = XᵀX + Λ with Λ = λ + p/(1−p)·diag(XᵀX) (eq. 8, 13). A block's sets read only the neighbour lists
    they name; where the masked P_SS is not positive definite, the exact one is formed as a sum over
    shards. Cost n·K³/3; memory nnz(B) = n·K entries twice (B and Bᵀ) over the workers.
    """
    n, dtype, blocks = loaded.n_items, loaded.dtype, loaded.blocks
    ratio = p / (1.0 - p)
    lam_diag = lam + ratio * loaded.diag_g
    p_diag = loaded.diag_g + lam_diag
    p_diag_d = ctx.share("diag-p", p_diag)
    with ctx.stages.stage("teacher", f"b_S = (P_SS)⁻¹ G_Sj for {n} items, K={nbrs.K}") as info:
        needs = [task("teacher-needs", block_needs, nb, a) for nb, (a, _) in zip(nbrs.rows, blocks)]
        out = []
        for nb_j, (a, _), need in zip(nbrs.rows, blocks, needs):
            pieces = [task("teacher-graph", graph_piece, nb_i, a_i, need) for nb_i, (a_i, _) in zip(nbrs.rows, blocks)]
            out.append(task("teacher", teacher_block, nb_j, a, p_diag_d, *pieces))
        out = ctx.persist(out)
        fails = ctx.compute(task("teacher-failed", both, *[task("teacher-failed-part", failures, o) for o in out]))
        weights, n_exact = _exact_where_needed(out, fails, loaded.xt, p_diag_d, ctx)
        bt_rows = [task("teacher-bt", teacher_bt, nb, w, n, dtype) for nb, w in zip(nbrs.rows, weights)]
        b_cols = [task("teacher-b-cols", transpose, bt) for bt in bt_rows]
        b_rows = [task("teacher-b", hstack_csr, *[task("teacher-b-piece", rows_of, c, a, b) for c in b_cols])
                  for a, b in blocks]
        persisted = ctx.persist([*bt_rows, *b_rows])
        bt_rows, b_rows = persisted[: len(blocks)], persisted[len(blocks):]
        del needs, out, weights, b_cols
        info.update(nnz_b=int(n * nbrs.K), exact_p_ss=n_exact)
        if n_exact:
            log.info("teacher: %d of %d items had a masked P_SS that was not positive definite; "
                     "their P_SS was formed exactly from the interactions", n_exact, n)
    return Teacher(b_rows=b_rows, bt_rows=bt_rows, lam_diag=lam_diag, n_exact=n_exact)


def student_stage(loaded: Loaded, teacher: Teacher, k: int, ctx, *, n_oversamples=None, n_power_iter=None,
                  seed: int = 0, tol: float | None = None, max_power_iter: int | None = None) -> tuple:
    """Stage ``eigensolve``: V = eig_k(BᵀPB) matrix-free (:class:`StudentOperator`), then U = B·V (eq. 16–17).

    ``tol``, ``max_power_iter``: the eigensolver's convergence rule (:func:`edlae_dask.linalg.randomized_eigh`;
    None: a fixed ``n_power_iter`` passes). Returns (U, V, eig): U and V persisted dask arrays of shape (n, k),
    chunked by ``loaded.chunks``, and the :class:`edlae_dask.linalg.EighResult`. The leading k' columns are
    the rank-k' solution of the same subspace. Cost 5 · 2(nnz(B) + nnz(X))·l flops (l = 2k by default); three
    n × l panels broadcast per product.
    """
    n, dtype, chunks = loaded.n_items, loaded.dtype, loaded.chunks
    operator = StudentOperator(b_rows=teacher.b_rows, bt_rows=teacher.bt_rows, xt_shards=loaded.xt,
                               lam=teacher.lam_diag, row_chunks=chunks, dtype=dtype)
    with ctx.stages.stage("eigensolve", f"top-{k} eigenvectors of BᵀPB, matrix-free") as info:
        eig = randomized_eigh(operator, n, k, row_chunks=chunks, dtype=dtype, n_oversamples=n_oversamples,
                              n_power_iter=n_power_iter, seed=seed, tol=tol, max_power_iter=max_power_iter)
        info.update(n_matvecs=eig.n_matvecs, n_oversamples=eig.n_oversamples, n_power_iter=eig.n_power_iter,
                    converged=eig.converged, ritz_sum_change=eig.ritz_sum_change,
                    ritz_residual_max=float(np.max(eig.ritz_residuals)))
    V = eig.eigenvectors
    U = ctx.persist(operator.factors_u(V))
    return U, V, eig


# ----------------------------------------------------------------------------- the path


def run_scalable(store, params, ctx) -> PathResult:
    """Run the scalable path's stages on ``store``; return a :class:`edlae_dask.runtime.PathResult`.

    ``params`` is a :class:`edlae_dask.config.TrainParams` (``neighbors``,
    ``neighbor_score`` used); ``ctx`` an :class:`edlae_dask.runtime.StageContext`.
    load → neighbors → teacher → eigensolve, each a stage function above.
    """
    loaded = load_stage(store, params.dtype, ctx)
    nbrs = neighbor_stage(loaded, params.neighbors, params.neighbor_score, ctx)
    loaded = loaded.without_x()  # from here on the shards are held once, as X_sᵀ
    teacher = teacher_stage(loaded, nbrs, params.lam, params.p, ctx)
    del nbrs
    U, V, eig = student_stage(loaded, teacher, params.k, ctx, n_oversamples=params.n_oversamples,
                              n_power_iter=params.n_power_iter, seed=params.seed, tol=params.eig_tol,
                              max_power_iter=params.max_power_iter)
    return PathResult(U=U, V=V, eig=eig,
                      info=dict(neighbors=min(int(params.neighbors), loaded.n_items - 1),
                                neighbor_score=params.neighbor_score, row_blocks=len(loaded.chunks)))


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

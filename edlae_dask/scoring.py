"""Batch scoring: the top-N items of every user of an interaction store, into a recommendations store.

For a user row x the scores are ``s = (x·U)·Vᵀ`` (eq. 16–17); items the user already
has are excluded, and the N best are kept, best first, ties broken by the lower item
index (the rule of :mod:`edlae_dask.topn`). One Dask task per user shard::

    X  = the shard's rows (CSR)                           read_shard
    XU = Σ_b X[:, b]·U[b]          U read once, 64 MiB at a time   (users × k)
    for each item block b:         V read once, 64 MiB at a time
        for each batch of users:   S = XU[batch]·V[b]ᵀ     (user_batch × item_block)
            seen items → −inf; merge S into the running top-N (topn.merge_block)
    write the shard's rows, then its completion marker

so a worker holds, besides XU and the N running best per user, one
``user_batch × item_block`` block of scores: it works for 10⁶ items. See
:mod:`edlae_dask.io.recommendations` for the store and the rerun/resume rules.

Every store may be a local path or an fsspec URL (``s3://…``). A task carries the
stores' locations (URL and storage options, :class:`edlae_dask.io._fs.Location`),
never data or file handles: each worker reads its shard, U and V, and writes its
rows, by URL itself. Two runs at once on one output are serialized by a lock file
locally, and need no lock under a URL (rows are written per run, then a marker in
one PUT): see :mod:`edlae_dask.io.recommendations`.
"""

from __future__ import annotations

import logging
import numbers
import os
import time
import uuid
from dataclasses import dataclass, field

import dask
import numpy as np
import scipy.sparse as sp

from edlae_dask.diagnostics import REPORT_LINE
from edlae_dask.errors import InputDataError, ModelFitError, ParameterError, worker_died
from edlae_dask.io._fs import Location, location
from edlae_dask.topn import empty_top_n, fill_exhausted, merge_block

log = logging.getLogger("edlae_dask.scoring")

__all__ = ["ScoreReport", "score", "top_n_scores", "default_blocks"]

#: bytes of one user_batch × item_block block of scores (the largest array a task holds besides XU).
#: Measured with top_n_scores on one thread (n = 50k–200k, k = 100 and 1,000): 1,024 × 8,192 float32
#: blocks (32 MiB) run 1.5–2.5x faster than 128–256 MiB blocks, whose selection passes stream from
#: DRAM instead of cache; smaller blocks pay more per-block merging.
DEFAULT_BLOCK_BYTES = 32 * 2**20
DEFAULT_USER_BATCH = 1024
#: rows of U and V are read from the factor store about this many bytes at a time
READ_BYTES = 64 * 2**20


# --------------------------------------------------------------------------- kernels


def default_blocks(n_items: int, n_rows: int, itemsize: int, *, item_block=None, user_batch=None,
                   block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple[int, int]:
    """``(item_block, user_batch)``: given values kept, else ``user_batch × item_block × itemsize ≈ block_bytes``."""
    ub = int(user_batch) if user_batch is not None else max(1, min(DEFAULT_USER_BATCH, n_rows))
    ib = int(item_block) if item_block is not None else max(1, min(n_items, block_bytes // (ub * itemsize)))
    return ib, ub


def _row_pieces(A, step: int, dtype):
    """Yield ``(a, b, A[a:b])`` over the rows of a numpy or dask array, ``step`` rows at a time, as numpy.

    A dask slice is read synchronously inside the calling task. ``step`` is a multiple
    of the block the caller works on and holds about :data:`READ_BYTES`, so small
    blocks do not mean many small reads.
    """
    n = A.shape[0]
    for a in range(0, n, step):
        part = A[a : min(a + step, n)]
        if hasattr(part, "compute"):
            part = part.compute(scheduler="sync")
        yield a, min(a + step, n), np.asarray(part).astype(dtype, copy=False)


def _read_step(block: int, k: int, itemsize: int) -> int:
    return block * max(1, READ_BYTES // max(1, block * k * itemsize))


def top_n_scores(X, U, V, top_n: int, *, item_block: int | None = None, user_batch: int | None = None,
                 exclude_seen: bool = True, exclude_items=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-N items and scores of each row of ``X`` under ``s = (x·U)·Vᵀ``, streaming over items.

    Parameters
    ----------
    X : scipy.sparse matrix of shape (n_rows, n_items)
    U, V : numpy.ndarray or dask.array.Array of shape (n_items, k)
        Read a multiple of ``item_block`` rows (about 64 MiB) at a time; V is read
        once in all.
    top_n : int
        ``1 <= top_n <= n_items``.
    item_block, user_batch : int, optional
        Scores are formed ``user_batch × item_block`` at a time; default
        ``user_batch = 1024`` and ``item_block`` so the block takes 32 MiB
        (8,192 items in float32).
    exclude_seen : bool, default=True
        Items of the row (stored entries of X) get score −inf.
    exclude_items : numpy.ndarray of int, optional
        Sorted item indices that get score −inf for every row (the denied or not
        allowed items of ``score``): masked like the seen items, before the top-N, so
        the one top-N rule decides among the rest.

    Returns
    -------
    items : numpy.ndarray of shape (n_rows, top_n), int32
        Item indices, best first; equal scores in ascending index order.
    scores : numpy.ndarray of shape (n_rows, top_n), float32

    Notes
    -----
    Computed in the factors' dtype (float32 or float64), stored as float32.
    Memory: XU (n_rows × k), 64 MiB of U or V rows, one score block and
    its partition copy (2 × user_batch × item_block), the running top-N
    (n_rows × top_n × 12 bytes). Work: 2·nnz(X)·k + 2·n_rows·n_items·k flops,
    plus a few passes over each score block for the selection.
    """
    X = sp.csr_matrix(X)
    n_rows, n_items = X.shape
    dtype = np.result_type(U.dtype, np.float32)
    ib, ub = default_blocks(n_items, n_rows, dtype.itemsize, item_block=item_block, user_batch=user_batch)
    k = U.shape[1]
    # XU = Σ_b X[:, b]·U[b], one block of U's rows at a time (column slices of CSC are cheap)
    Xc = X.tocsc().astype(dtype)
    XU = np.zeros((n_rows, k), dtype=dtype)
    for a, b, Ub in _row_pieces(U, _read_step(ib, k, dtype.itemsize), dtype):
        if Xc.indptr[b] > Xc.indptr[a]:
            XU += Xc[:, a:b] @ Ub
    del Xc
    if not np.isfinite(XU).all():
        raise ModelFitError("U holds NaN or infinite values (x·U is not finite): the factors are broken; retrain")
    best_s, best_i = empty_top_n(n_rows, top_n, dtype)
    # seen items of each user batch, sorted by item so each block's entries are one slice
    seen = []
    for r0 in range(0, n_rows, ub):
        r1 = min(r0 + ub, n_rows)
        lo, hi = X.indptr[r0], X.indptr[r1]
        cols = X.indices[lo:hi]
        rows = np.repeat(np.arange(r1 - r0), np.diff(X.indptr[r0 : r1 + 1]))
        order = np.argsort(cols, kind="stable")
        seen.append((r0, r1, cols[order], rows[order]))
    # two flat block buffers, reused: the scores, and the partition's copy (fresh 32 MiB arrays cost page faults)
    excl = None if exclude_items is None else np.asarray(exclude_items, dtype=np.int64)
    size = min(ub, n_rows) * min(ib, n_items)
    s_buf, p_buf = np.empty(size, dtype=dtype), np.empty(size, dtype=dtype)
    for a, b, Vp in _row_pieces(V, _read_step(ib, k, dtype.itemsize), dtype):
        if not np.isfinite(Vp).all():
            raise ModelFitError(f"V holds NaN or infinite values in rows {a}..{b}: the factors are broken; retrain")
        for j0 in range(a, b, ib):
            VbT = Vp[j0 - a : min(j0 + ib, b) - a].T
            j1 = j0 + VbT.shape[1]
            if excl is not None:  # this block's excluded columns: one slice of the sorted indices
                lo, hi = np.searchsorted(excl, [j0, j1])
                excl_cols = excl[lo:hi] - j0
            for r0, r1, cols, rows in seen:
                S = s_buf[: (r1 - r0) * (j1 - j0)].reshape(r1 - r0, j1 - j0)
                np.matmul(XU[r0:r1], VbT, out=S)
                if exclude_seen:
                    lo, hi = np.searchsorted(cols, [j0, j1])
                    S[rows[lo:hi], cols[lo:hi] - j0] = -np.inf
                if excl is not None and excl_cols.size:
                    S[:, excl_cols] = -np.inf
                merge_block(S, j0, best_s[r0:r1], best_i[r0:r1], p_buf)
    fill_exhausted(best_s, best_i)
    return best_i, best_s.astype(np.float32)


# --------------------------------------------------------------------------- one shard (a task)


@dataclass(frozen=True)
class _ShardJob:
    interactions_path: Location  # locations (URL + storage options): the worker opens each store itself
    shard: int
    start: int
    stop: int
    factors_path: Location
    factor_version: str
    work_path: Location
    top_n: int
    item_block: int | None
    user_batch: int | None
    exclude_seen: bool
    marker: dict
    log_here: bool
    rows: np.ndarray | None = None  # the selected users' rows within the shard (--users); None: all


def _score_shard(job: _ShardJob, exclude_items=None) -> dict:
    """Read shard, score, write rows and marker; return a small record. Runs on a worker."""
    from edlae_dask.io.factors import open_factors
    from edlae_dask.io.interactions import read_shard
    from edlae_dask.io.recommendations import write_shard

    t0 = time.perf_counter()
    X = read_shard(job.interactions_path, job.shard)
    if X.shape[0] != job.stop - job.start:
        raise InputDataError(
            f"{job.interactions_path}: shard {job.shard} has {X.shape[0]} users, expected {job.stop - job.start}: "
            "the interaction store changed during scoring; score again"
        )
    n_rows = X.shape[0]
    if job.rows is not None:
        X = X[job.rows]
    if X.shape[0]:
        f = open_factors(job.factors_path, job.factor_version)
        items, scores = top_n_scores(X, f.U, f.V, job.top_n, item_block=job.item_block, user_batch=job.user_batch,
                                     exclude_seen=job.exclude_seen, exclude_items=exclude_items)
    else:  # no selected user in this shard: nothing to read but its rows
        items, scores = np.empty((0, job.top_n), np.int32), np.empty((0, job.top_n), np.float32)
    if job.rows is not None:  # users not selected keep the unscored row (-1, NaN): the store keeps its shape
        all_items, all_scores = np.full((n_rows, job.top_n), -1, np.int32), np.full((n_rows, job.top_n), np.nan,
                                                                                    np.float32)
        all_items[job.rows], all_scores[job.rows] = items, scores
        items, scores = all_items, all_scores
    seconds = time.perf_counter() - t0
    write_shard(job.work_path, job.shard, job.start, items, scores, dict(job.marker, seconds=round(seconds, 3)))
    n_scored = n_rows if job.rows is None else len(job.rows)
    rec = {"shard": job.shard, "users": n_scored, "seconds": seconds,
           "total_seconds": time.perf_counter() - t0, "worker_pid": os.getpid()}
    if job.log_here:
        _log_shard(rec)
    return rec


def _log_shard(rec: dict) -> None:
    log.info("shard %5d: %d users scored in %.2f s (%.0f users/s), written", rec["shard"], rec["users"],
             rec["total_seconds"], rec["users"] / max(rec["seconds"], 1e-9))


# --------------------------------------------------------------------------- the job


@dataclass
class ScoreReport:
    """What :func:`score` did.

    Attributes
    ----------
    out : str
        The recommendations store requested.
    path : str
        Where the rows are: ``out`` once published; the hidden staging store while
        shards are missing (a partial run).
    factor_version : str
    top_n : int
    n_users : int
        Users in the interaction store.
    n_users_scored : int
        Users scored by this run (0 when every shard was already done).
    n_shards, n_shards_scored, n_shards_skipped, n_shards_pending : int
        Skipped: done before this run (same factor version and interactions);
        pending: still to do (only when ``shards`` limited the run).
    n_shards_reused : int
        Shards whose rows were taken from the previous recommendations in ``out``
        because neither they nor the factor version changed (new interactions for
        other users); they count as neither scored nor skipped.
    shards_scored : tuple of int
        The shards this run scored.
    seconds : float
        Wall time of the whole call.
    score_seconds : float
        Wall time of the scoring stage (the tasks).
    published : bool
        ``out`` holds the complete recommendations of these inputs.
    item_block, user_batch : int
        Block sizes used.
    stages : dict
        StageLog records (seconds, peak memory).
    """

    out: str
    path: str
    factor_version: str
    top_n: int
    n_users: int
    n_users_scored: int
    n_shards: int
    n_shards_scored: int
    n_shards_skipped: int
    n_shards_pending: int
    seconds: float
    score_seconds: float
    published: bool
    item_block: int
    user_batch: int
    stages: dict = field(default_factory=dict)
    n_shards_reused: int = 0
    shards_scored: tuple = ()

    @property
    def complete(self) -> bool:
        return self.n_shards_pending == 0

    @property
    def users_per_second(self) -> float:
        """Users scored per second of the scoring stage (0 if nothing was scored)."""
        return self.n_users_scored / self.score_seconds if self.n_users_scored and self.score_seconds > 0 else 0.0

    def summary(self) -> str:
        """A few human-readable lines."""
        state = (f"{self.out} was already complete for these inputs" if self.published and not self.n_shards_scored
                 else f"published {self.out}" if self.published
                 else f"{self.n_shards_pending} shards still to score in {self.path}; run again to finish and publish")
        return "\n".join([
            f"scored {self.n_users_scored:,} of {self.n_users:,} users (top {self.top_n}) with factor version "
            f"{self.factor_version} in {self.seconds:.1f} s ({self.users_per_second:,.0f} users/s)",
            f"shards: {self.n_shards_scored} scored, {self.n_shards_skipped} skipped (already complete), "
            f"{self.n_shards_reused} unchanged (taken from the previous recommendations), "
            f"{self.n_shards_pending} pending, of {self.n_shards}; blocks {self.user_batch} users x "
            f"{self.item_block} items",
            state,
        ])


def _check_positive_int(name: str, value, *, allow_none: bool = True, upper: int | None = None):
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
    if ok and upper is not None:
        ok = value <= upper
    if not ok:
        want = f"an int in [1, {upper}]" if upper is not None else "a positive int"
        if upper is not None and isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > upper:
            want += f" (there are only {upper} items)"
        raise ParameterError(f"The {name!r} parameter of score must be {want}. Got {value!r} instead.")
    return int(value)


def _check_same_items(f, store) -> None:
    """The factors' rows and the interaction store's columns must be the same items in the same order."""
    a, b = f.item_ids, store.item_ids()
    if a.shape == b.shape and a.dtype.kind == b.dtype.kind and np.array_equal(a, b):
        return
    if (a.dtype.kind == "U") != (b.dtype.kind == "U"):  # integer ids vs string ids: no id is shared
        only_f, only_i = a.shape[0], b.shape[0]
        detail = f"the factors have {a.dtype.kind == 'U' and 'string' or 'integer'} item ids, the store the other kind"
    else:
        if a.dtype.kind != b.dtype.kind:  # int64 vs uint64: compare as Python ints (numpy would go through float)
            a, b = a.astype(object), b.astype(object)
        only_f, only_i = np.setdiff1d(a, b).size, np.setdiff1d(b, a).size
        detail = (f"{only_f} of the factors' items are not in the interaction store and {only_i} of its items are "
                  "not in the factors")
    if only_f == 0 and only_i == 0:
        moved = int(np.count_nonzero(a != b))
        detail = f"the same {a.shape[0]} items, but {moved} of them at other column positions"
    raise InputDataError(
        f"the factors at {f.path} (version {f.version}, {a.shape[0]} items) and the interaction store at "
        f"{store.path} ({b.shape[0]} items) disagree on item ids: {detail}. Scores index items by the factors' "
        "rows, so the interaction store must hold exactly the factors' items in the same order: ingest the new "
        f"interactions with `edlae-dask ingest SOURCE --out STORE --items-from {f.path}` (the model's items, unknown "
        "ones dropped), score the store the factors were trained on (fingerprint "
        f"{str(f.meta.get('interactions_fingerprint', '?'))[:16]}), or retrain on the new interactions"
    )


def score(factors, interactions, out, *, top_n: int = 100, client=None, item_block: int | None = None,
          user_batch: int | None = None, exclude_seen: bool = True, progress: bool = False,
          shards=None, storage_options=None, items_allow=None, items_deny=None, users=None) -> ScoreReport:
    """Score every user of ``interactions`` with ``factors``; write the top-N to the store ``out``.

    Parameters
    ----------
    factors : str, os.PathLike or edlae_dask.io.factors.Factors
        A factor store (its latest version; a local path or an fsspec URL) or an
        opened version.
    interactions : str, os.PathLike or InteractionStore
        The users to score; its items must be the factors' items, in the same order.
    out : str or os.PathLike
        The recommendations store (see :mod:`edlae_dask.io.recommendations`), a
        local directory or an fsspec URL.
    top_n : int, default=100
        Items per user, ``1 <= top_n <= n_items``.
    client : distributed.Client or None
        One task per user shard on its workers; ``None`` runs on Dask's threaded scheduler.
    item_block, user_batch : int, optional
        Each task forms ``user_batch × item_block`` scores at a time (defaults: 1,024
        users and 32 MiB per block, i.e. 8,192 items in float32).
    exclude_seen : bool, default=True
        Never recommend an item the user already has.
    progress : bool, default=False
        Show a progress bar.
    shards : iterable of int, optional
        Score only these shards now (the store is published once all are done, by
        this or a later run). For splitting a job, and to test resumption.
    storage_options : dict, optional
        fsspec options for the stores given as URLs (default: fsspec's defaults
        and environment, e.g. ``AWS_*`` variables). The tasks carry them to the workers.
    items_allow, items_deny : str, os.PathLike or iterable of ids, optional
        Recommend only items of ``items_allow`` and none of ``items_deny``: original
        item ids, or a text file of them, one a line (parsed to the factors' id
        dtype). The excluded items score −inf before the top-N, like seen items
        (a user with fewer than ``top_n`` items left is padded with −inf places,
        which may name excluded items: :mod:`edlae_dask.io.export` drops them).
        Ids the factors do not know are ignored with a warning naming the first
        few (an allow-list taken from a catalog routinely holds items newer than the
        factors); an allow-list none of whose ids is known is an error.
    users : str, os.PathLike or iterable of ids, optional
        Score only these users (original ids, or a file of them), as above: unknown
        ids warned about, none known an error. The store keeps every user's row;
        the others hold item -1 and score NaN (what an export leaves out).

    Returns
    -------
    ScoreReport

    Raises
    ------
    StoreFormatError
        The factor or interaction store is missing, incomplete or foreign; ``out`` is
        a recommendations store of another format_version.
    InputDataError
        Factors and interactions disagree on item ids.
    ParameterError
        ``top_n`` not in [1, n_items], bad block sizes or shard numbers.
    OutputExistsError
        ``out`` holds something that is not a recommendations store.

    Notes
    -----
    Reruns are idempotent. The store's attributes carry a scoring token (the
    factor version, the interaction store fingerprint and sharding, ``top_n``,
    ``exclude_seen``, the filters). A rerun whose token equals ``out``'s skips every shard
    with a matching completion marker and scores only missing ones, in place. A
    run with a new token (a new factor version, changed interactions, another
    ``top_n``) writes a fresh store under a hidden sibling of ``out`` and replaces
    ``out`` only once every shard is done, so ``out`` keeps the previous complete
    recommendations meanwhile; a killed run leaves that sibling, and the next run
    with the same inputs resumes it. Shards whose own inputs did not change (same
    factor version, same rows, users and interactions by the interaction store's
    per-shard fingerprints) are copied from ``out`` into the new store rather than
    scored again, so new interactions for some users rescore only their shards.

    One run writes a local ``out`` at a time: a second run started meanwhile
    (another process, another machine on the same filesystem) waits on ``out``'s
    lock file and then finds the work done (see
    :func:`edlae_dask.io.recommendations.output_lock`). Under a URL two runs at once
    take no lock and cannot corrupt the output; they may both score a shard
    (see :mod:`edlae_dask.io.recommendations`).

    Cost: 2·users·n_items·k flops for the scores, plus XU (2·nnz·k); each task reads
    U and V once. Memory per task: see :func:`top_n_scores`.
    """
    from edlae_dask.io import recommendations as recs
    from edlae_dask.io.factors import Factors, open_factors
    from edlae_dask.io.interactions import InteractionStore, open_interactions

    t_start = time.perf_counter()
    f = factors if isinstance(factors, Factors) else open_factors(factors, storage_options=storage_options)
    store = (interactions if isinstance(interactions, InteractionStore)
             else open_interactions(interactions, storage_options=storage_options))
    n_items = f.n_items
    top_n = _check_positive_int("top_n", top_n, allow_none=False, upper=n_items)
    item_block = _check_positive_int("item_block", item_block)
    user_batch = _check_positive_int("user_batch", user_batch)
    _check_same_items(f, store)
    offsets = [int(o) for o in store.shard_offsets]
    wanted = _check_shards(shards, store.n_shards)
    dtype = np.result_type(f.U.dtype, np.float32)
    shard_rows = max(b - a for a, b in zip(offsets[:-1], offsets[1:]))
    ib, ub = default_blocks(n_items, shard_rows, dtype.itemsize, item_block=item_block, user_batch=user_batch)
    excluded, item_filter = _item_filter(f.item_ids, items_allow, items_deny)
    rows, user_filter = _user_filter(store, offsets, users)
    filters, shard_filters = _filter_digests(item_filter, rows, user_filter, store.n_shards)
    token = recs.scoring_token(factor_version=f.version, n_items=n_items, interactions_fingerprint=store.fingerprint,
                               shard_offsets=offsets, top_n=top_n, exclude_seen=exclude_seen, filters=filters)
    shard_tokens = recs.shard_tokens(factor_version=f.version, n_items=n_items, shard_offsets=offsets, top_n=top_n,
                                     exclude_seen=exclude_seen, shard_fingerprints=_shard_fingerprints(store),
                                     shard_filters=shard_filters)
    meta = dict(
        top_n=top_n, n_users=store.n_users, n_items=n_items, n_shards=store.n_shards,
        chunk_rows=recs.chunk_rows_for(offsets), shard_offsets=offsets, exclude_seen=bool(exclude_seen),
        factors_path=f.path, factor_version=f.version,
        factors_interactions_fingerprint=f.meta.get("interactions_fingerprint"),
        interactions_path=store.path, interactions_fingerprint=store.fingerprint, scoring_token=token,
        shard_tokens=shard_tokens, score_dtype=str(dtype), item_filter=item_filter, user_filter=user_filter,
    )
    target = location(out, storage_options)
    with recs.output_lock(target):
        return _score_locked(f, store, target, meta, wanted, client, progress, ib, ub, dtype, t_start,
                             filters=(excluded, rows))


def _shard_fingerprints(store) -> list[str]:
    """The interaction store's per-shard fingerprints; for a store without them, ones that match no other store."""
    fps = store.attrs.get("shard_fingerprints")
    if isinstance(fps, list) and len(fps) == store.n_shards and all(isinstance(x, str) for x in fps):
        return fps
    return [f"{store.fingerprint}:{s}" for s in range(store.n_shards)]


def _score_locked(f, store, target, meta, wanted, client, progress, ib, ub, dtype, t_start,
                  filters=(None, None)) -> ScoreReport:
    """The part of :func:`score` that reads and writes ``out``: run under its lock."""
    from edlae_dask.diagnostics import StageLog
    from edlae_dask.io import recommendations as recs

    n_items, top_n, token, offsets = f.n_items, meta["top_n"], meta["scoring_token"], meta["shard_offsets"]
    exclude_seen = meta["exclude_seen"]
    excluded, rows = filters
    work, in_place = recs.prepare_output(target, meta=meta, user_ids=store.user_ids(), item_ids=f.item_ids)
    marker = dict(factor_version=f.version, interactions_fingerprint=store.fingerprint, top_n=top_n,
                  scoring_token=token)
    done = set(recs.done_shards(work))
    missing = [s for s in wanted if s not in done]
    if missing:  # nothing is written when nothing is missing
        marker.update(recs.start_run(work))
    reused = [] if in_place or not missing else recs.carry_over(target, work, shards=missing, marker=marker)
    if reused:
        log.info("took %d unchanged shards from the previous recommendations in %s (same factor version, same "
                 "users and interactions)", len(reused), target)
    done |= set(reused)
    todo = [s for s in wanted if s not in done]
    skipped = len([s for s in wanted if s in done]) - len(reused)
    log.info(
        "scoring %d users x %d items (k=%d, %s) with factor version %s: top %d, %d shards, blocks of %d users x "
        "%d items (%.0f MB); writing %s%s",
        store.n_users, n_items, f.k, dtype, f.version, top_n, store.n_shards, ub, ib, ub * ib * dtype.itemsize / 2**20,
        work, "" if in_place else f" (published to {target} when complete)",
    )
    n_workers = len(client.scheduler_info().get("workers", {})) if client is not None else os.cpu_count() or 1
    if 0 < len(todo) < n_workers:
        log.info("only %d shards to score for %d workers: one task per shard, so some workers idle (ingest with a "
                 "smaller --shard-size for more parallelism)", len(todo), n_workers)
    if skipped:
        log.info("skipped %d complete shards (factor version %s, same interactions)", skipped, f.version)
    jobs = [
        _ShardJob(interactions_path=store.location, shard=s, start=offsets[s], stop=offsets[s + 1],
                  factors_path=f.location, factor_version=f.version, work_path=work, top_n=top_n,
                  item_block=ib, user_batch=ub, exclude_seen=bool(exclude_seen), marker=marker,
                  log_here=client is None, rows=None if rows is None else rows[s])
        for s in todo
    ]
    stages = StageLog(client)
    with stages.stage("score", f"{len(jobs)} shards, {sum(j.stop - j.start for j in jobs)} users") as info:
        t0 = time.perf_counter()
        records = _run_jobs(jobs, client, progress, token, excluded)
        score_seconds = time.perf_counter() - t0
        info["shards"] = len(records)
        info["users"] = sum(r["users"] for r in records)
    done = set(recs.done_shards(work))
    pending = store.n_shards - len(done)
    published = pending == 0
    if published and not in_place:
        with stages.stage("publish", f"{work} -> {target}"):
            recs.publish(work, target)
    report = ScoreReport(
        out=target.url, path=target.url if published else work.url, factor_version=f.version, top_n=top_n,
        n_users=store.n_users,
        n_users_scored=sum(r["users"] for r in records), n_shards=store.n_shards, n_shards_scored=len(records),
        n_shards_skipped=skipped, n_shards_pending=pending, seconds=time.perf_counter() - t_start,
        score_seconds=score_seconds, published=published, item_block=ib, user_batch=ub, stages=stages.as_dict(),
        n_shards_reused=len(reused), shards_scored=tuple(sorted(r["shard"] for r in records)),
    )
    log.info("scoring done: %d users in %.2f s (%.0f users/s); %s", report.n_users_scored, report.seconds,
             report.users_per_second, f"published {target}" if published else f"{pending} shards pending",
             extra=REPORT_LINE)  # what report.summary() says: the CLI prints that, and drops this line
    return report


# --------------------------------------------------------------------------- filters (--items-allow/-deny, --users)


def _read_ids(source, dtype: np.dtype, what: str) -> np.ndarray:
    """Original ids from a file (one a line; blank lines skipped) or an iterable, parsed to ``dtype``.

    Raises InputDataError naming the file and line of the first id that is not of
    the stores' kind (an integer, within int64 or uint64).
    """
    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        with open(where, encoding="utf-8") as fh:
            texts = [(n, line.strip()) for n, line in enumerate(fh, 1)]
        texts = [(n, t) for n, t in texts if t]
    else:
        where = what
        texts = [(n, str(v)) for n, v in enumerate(np.asarray(list(source)).ravel().tolist(), 1)]
    if dtype.kind == "U":
        return np.array([t for _, t in texts], dtype=str)
    info = np.iinfo(dtype)
    vals = []
    for n, t in texts:
        try:
            v = int(t)
        except ValueError:
            v = None
        if v is None or not info.min <= v <= info.max:
            raise InputDataError(f"{where}, line {n}: {t[:40]!r} is not an integer id the stores can hold ({dtype}); "
                                 f"{what} must list the stores' ids, one a line")
        vals.append(v)
    return np.array(vals, dtype=dtype)


def _positions(ids: np.ndarray, wanted: np.ndarray, what: str, where, option: str) -> np.ndarray:
    """Sorted unique indices in ``ids`` of the ``wanted`` ids; unknown ones warned about, none known an error.

    ``what`` names ``ids`` ("the factors' items"), ``option`` the list's option (``--items-allow``).
    """
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, wanted), 0, max(len(ids) - 1, 0))
    found = sorted_ids[pos] == wanted if len(ids) else np.zeros(len(wanted), bool)
    unknown = wanted[~found]
    src = os.fspath(where) if isinstance(where, (str, os.PathLike)) else what
    if len(wanted) and not found.any():
        raise InputDataError(f"{option} {src}: none of its {len(wanted)} ids is one of {what} (e.g. "
                             f"{', '.join(map(str, wanted[:3].tolist()))}): list ids as the stores hold them "
                             "(`edlae-dask info` shows them)")
    if unknown.size:
        log.warning("%s: %d of its %d ids are not %s and are ignored (e.g. %s)", src, unknown.size, len(wanted), what,
                    ", ".join(map(str, unknown[:5].tolist())))
    return np.unique(order[pos[found]])


def _digest(*parts) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in parts:
        h.update(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray) else repr(p).encode())
    return h.hexdigest()


def _item_filter(item_ids: np.ndarray, allow, deny) -> tuple[np.ndarray | None, dict | None]:
    """The sorted indices of the excluded items, and the store attribute ``item_filter`` (None, None: no filter)."""
    if allow is None and deny is None:
        return None, None
    n = len(item_ids)
    keep = np.ones(n, dtype=bool)
    meta = {}
    if allow is not None:
        wanted = _read_ids(allow, item_ids.dtype, "the allowed items (--items-allow)")
        if not len(wanted):
            raise InputDataError(f"{allow if isinstance(allow, (str, os.PathLike)) else 'items_allow'} lists no item: "
                                 "nothing could be recommended; give at least one item id, or no allow-list")
        keep[:] = False
        keep[_positions(item_ids, wanted, "the factors' items", allow, "--items-allow")] = True
        meta["allowed"] = int(keep.sum())
    if deny is not None:
        wanted = _read_ids(deny, item_ids.dtype, "the denied items (--items-deny)")
        idx = (_positions(item_ids, wanted, "the factors' items", deny, "--items-deny") if len(wanted)
               else np.empty(0, np.int64))
        keep[idx] = False
        meta["denied"] = int(idx.size)
    excluded = np.flatnonzero(~keep).astype(np.int64)
    meta.update(excluded=int(excluded.size), digest=_digest(np.int64(n), excluded))
    return excluded, meta


def _user_filter(store, offsets: list[int], users) -> tuple[list[np.ndarray] | None, dict | None]:
    """Per shard, the local rows of the selected users, and the store attribute ``user_filter`` (None, None: all)."""
    if users is None:
        return None, None
    user_ids = store.user_ids()
    wanted = _read_ids(users, user_ids.dtype, "the users to score (--users)")
    if not len(wanted):
        raise InputDataError(f"{users if isinstance(users, (str, os.PathLike)) else 'users'} lists no user: give at "
                             "least one user id, or score without --users")
    sel = _positions(user_ids, wanted, "the interaction store's users", users, "--users")
    bounds = np.searchsorted(sel, offsets)
    rows = [(sel[bounds[s] : bounds[s + 1]] - offsets[s]).astype(np.int64) for s in range(len(offsets) - 1)]
    return rows, {"users": int(sel.size), "digest": _digest(sel)}


def _filter_digests(item_filter, rows, user_filter, n_shards: int) -> tuple[str | None, list | None]:
    """The filters' part of the scoring token and of each shard token (None: no filter, the tokens of old).

    A shard's part holds the item filter and that shard's selected rows only, so a new user list
    rescores only the shards whose selection changed (the others are carried over).
    """
    if item_filter is None and user_filter is None:
        return None, None
    items = item_filter["digest"] if item_filter else None
    whole = _digest(items, user_filter["digest"] if user_filter else None)
    per_shard = [_digest(items, None if rows is None else rows[s]) for s in range(n_shards)]
    return whole, per_shard


def _check_shards(shards, n_shards: int) -> list[int]:
    if shards is None:
        return list(range(n_shards))
    out = sorted(set(shards))
    bad = [s for s in out if not isinstance(s, numbers.Integral) or isinstance(s, bool) or not 0 <= s < n_shards]
    if bad:
        raise ParameterError(f"The 'shards' parameter of score must list shard numbers in [0, {n_shards}). "
                             f"Got {bad[:5]!r} instead.")
    return [int(s) for s in out]


def _run_jobs(jobs: list[_ShardJob], client, progress: bool, token: str, excluded=None) -> list[dict]:
    """One task per shard: distributed futures logged as they finish, or the threaded scheduler.

    ``excluded`` (the filtered items' indices, up to n_items ints) is one node of the graph that every
    task depends on, so it is shipped to each worker once rather than embedded in every task.
    """
    if not jobs:
        return []
    name = f"edlae-score-shard-{token[:12]}-{uuid.uuid4().hex[:8]}"  # side effects: never reuse a result
    excl = None if excluded is None else dask.delayed(excluded, name=f"edlae-score-excluded-{token[:16]}")
    tasks = [dask.delayed(_score_shard, pure=False)(j, excl, dask_key_name=f"{name}-{j.shard:05d}") for j in jobs]
    if client is None:
        # the scheduler is named in the call, not set in dask.config: that is global, and two runs in
        # threads of one process would leave it changed when their config.set blocks interleave
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar():
                return list(dask.compute(*tasks, scheduler="threads"))
        return list(dask.compute(*tasks, scheduler="threads"))
    from distributed import as_completed
    from distributed import progress as dprogress

    with client.as_current():
        futures = client.compute(tasks)
        if progress:
            dprogress(futures)
        records = []
        try:
            for fut in as_completed(futures):
                rec = fut.result()
                _log_shard(rec)
                records.append(rec)
        except Exception as exc:
            died = worker_died(exc, "scoring", memory_fix="lower --user-batch / --item-block, or add memory",
                               note=f"The {len(records)} shards finished so far are kept and a rerun resumes from them")
            if died is not None:
                raise died from exc
            raise
        finally:
            for fut in futures:
                fut.release()
    return records

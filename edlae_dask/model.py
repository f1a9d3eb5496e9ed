"""Algorithm 1 of Steck & Garcia Garcia (2021) as Dask graphs, and the EDLAE estimator.

The stages, each a function from dask arrays to dask arrays (no I/O)::

    G = XᵀX                                   edlae_dask.gram.gram
    P = G + Λ,  Λ = λI + p/(1−p)·diagM(diag G) regularize          (eq. 8, 13)
    C = P⁻¹                                    edlae_dask.linalg.spd_inverse (eq. 13)
    d = 1 ⊘ diag(C)                            teacher_scaling     (B = I − C·diagM(d), eq. 12)
    M = BᵀPB = P − 2·diagM(d) + diagM(d)·C·diagM(d)   student_matrix (Sec. 3.2, last display)
    V = eig_k(M),  U = B·V = V − C·(d ∘ V)     randomized_eigh, student_factors (eq. 16–17)

``M`` is formed block by block from P and C (O(n²) elementwise work, done while
the Gram's blocks are released) rather than applied as ``P·Ω − D·(Ω + B·Ω)``:
applying it implicitly costs two n×n×l products per pass instead of one, and
holds the same two n×n matrices. The implicit operator is kept
(:func:`student_operator_implicit`) for the scalable path and for tests.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import numbers
import time
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np

from edlae_dask.errors import MemoryBudgetError, ModelFitError, ParameterError
from edlae_dask.gram import symmetric_from_lower
from edlae_dask.scalable.neighbors import DEFAULT_NEIGHBORS, NEIGHBOR_SCORES

log = logging.getLogger("edlae_dask.model")


# --------------------------------------------------------------------------- kernels


def _regularized_diagonal_block(g: np.ndarray, lam: float, ratio: float) -> np.ndarray:
    p = g.copy()
    idx = np.arange(p.shape[0])
    p[idx, idx] += (lam + ratio * np.diagonal(g)).astype(p.dtype)
    return p


def _student_block(p: np.ndarray, c: np.ndarray, d_row: np.ndarray, d_col: np.ndarray, diagonal: bool) -> np.ndarray:
    m = c * d_row[:, None]
    m *= d_col[None, :]
    m += p
    if diagonal:
        idx = np.arange(m.shape[0])
        m[idx, idx] -= 2 * d_row
    return m


# --------------------------------------------------------------------------- stages


def regularize(G: da.Array, lam: float, p: float) -> da.Array:
    """P = G + Λ with Λ = λI + p/(1−p)·diagM(diag G) (eq. 8); only diagonal blocks change.

    Parameters
    ----------
    G : dask.array.Array of shape (n_items, n_items)
        Symmetric, square blocks.
    lam : float
        λ ≥ 0, the same L2 penalty on every item.
    p : float
        Dropout probability of emphasized denoising, 0 ≤ p < 1.
    """
    ratio = p / (1.0 - p)
    chunks = G.chunks[0]
    name = "edlae-regularize-" + dask.base.tokenize(G, lam, p)
    lower = {}
    for i in range(len(chunks)):
        for j in range(i + 1):
            lower[(i, j)] = (_regularized_diagonal_block, (G.name, i, i), lam, ratio) if i == j else (G.name, i, j)
    return symmetric_from_lower(name, {}, lower, chunks, G.dtype, dependencies=[G])


def teacher_scaling(diag_c: np.ndarray) -> np.ndarray:
    """d = 1 ⊘ diag(C), so that B = I − C·diagM(d) has a zero diagonal (eq. 12)."""
    if not np.all(np.isfinite(diag_c)) or np.any(diag_c <= 0):
        bad = np.flatnonzero(~np.isfinite(diag_c) | (diag_c <= 0))
        raise ModelFitError(
            f"the inverse C = P⁻¹ has {bad.size} non-positive or non-finite diagonal entries (first at item index "
            f"{bad[0]}): P is numerically singular in this dtype. Raise --lam, or use --dtype float64."
        )
    return (1.0 / diag_c.astype(np.float64)).astype(diag_c.dtype)


def student_matrix(P: da.Array, C: da.Array, d: np.ndarray) -> da.Array:
    """M = BᵀPB = P − 2·diagM(d) + diagM(d)·C·diagM(d), formed block by block.

    With B = I − C·D and C = P⁻¹: BᵀPB = P − 2D + D·C·D, the matrix of Algorithm 1,
    line 3 (the paper writes it P − D·(I + B)). Symmetric positive semi-definite.
    """
    chunks = P.chunks[0]
    bounds = np.concatenate([[0], np.cumsum(chunks)])
    d = np.asarray(d, dtype=P.dtype)
    parts = [d[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    name = "edlae-student-matrix-" + dask.base.tokenize(P, C, d)
    lower = {}
    for i in range(len(chunks)):
        for j in range(i + 1):
            lower[(i, j)] = (_student_block, (P.name, i, j), (C.name, i, j), parts[i], parts[j], i == j)
    return symmetric_from_lower(name, {}, lower, chunks, P.dtype, dependencies=[P, C])


def student_operator_implicit(P: da.Array, C: da.Array, d: np.ndarray):
    """Return Q ↦ M·Q = P·Q − D·(2Q − C·(D·Q)) without forming M (two products per call)."""
    dd = da.from_array(np.asarray(d, dtype=P.dtype)[:, None], chunks=(P.chunks[0], 1))

    def apply(Q: da.Array) -> da.Array:
        DQ = dd * Q
        return P @ Q - dd * (2 * Q - C @ DQ)

    return apply


def student_factors(C: da.Array, d: np.ndarray, V: da.Array) -> da.Array:
    """U = B·V = V − C·(d ∘ V) (eq. 16), never forming B."""
    dd = da.from_array(np.asarray(d, dtype=V.dtype)[:, None], chunks=(V.chunks[0], 1))
    return V - C @ (dd * V)


# --------------------------------------------------------------------------- parameters

MAX_BLOCK_SIZE = 8192
#: ``dense``: exact Algorithm 1 (n × n matrices); ``scalable``: neighbour-restricted teacher,
#: matrix-free student (:mod:`edlae_dask.scalable`); ``auto``: dense if it fits the cluster's memory.
TRAINING_PATHS = ("auto", "dense", "scalable")


@dataclass(frozen=True)
class TrainParams:
    """Parameters of one training run; see :class:`EDLAE` for their meaning."""

    k: int = 100
    lam: float = 20.0
    p: float = 0.25
    dtype: str = "float32"
    block_size: int | None = None
    n_oversamples: int | None = None
    n_power_iter: int | None = None
    seed: int = 0
    path: str = "auto"
    neighbors: int = DEFAULT_NEIGHBORS
    neighbor_score: str = "count"

    def validate(self, n_items: int | None = None) -> "TrainParams":
        def bad(name, want, got):
            return ParameterError(f"The {name!r} parameter of EDLAE must be {want}. Got {got!r} instead.")

        if not isinstance(self.k, numbers.Integral) or isinstance(self.k, bool) or self.k <= 0:
            raise bad("k", "a positive int (the rank of U, V)", self.k)
        if n_items is not None and self.k >= n_items:
            raise bad("k", f"less than the number of items ({n_items}); a rank-{n_items} model is the full-rank teacher", self.k)
        if not isinstance(self.lam, numbers.Real) or not np.isfinite(self.lam) or self.lam < 0:
            raise bad("lam", "a finite float >= 0", self.lam)
        if not isinstance(self.p, numbers.Real) or not (0 <= self.p < 1):
            raise bad("p", "a float in [0, 1) (the dropout probability)", self.p)
        if self.dtype not in ("float32", "float64"):
            raise bad("dtype", "'float32' or 'float64'", self.dtype)
        # blocks above 8,192 buy no speed, and a single float64 potrf at n >= 16,000 has crashed
        # OpenBLAS's SkylakeX kernels (shared/notes/measured-2026-11.md): keep every LAPACK call small
        if self.block_size is not None and (
            not isinstance(self.block_size, numbers.Integral) or not 1 <= self.block_size <= MAX_BLOCK_SIZE
        ):
            raise bad("block_size", f"an int in [1, {MAX_BLOCK_SIZE}] or None", self.block_size)
        for name in ("n_oversamples", "n_power_iter"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, numbers.Integral) or v < 0):
                raise bad(name, "an int >= 0 or None (chosen by measurement)", v)
        if self.path not in TRAINING_PATHS:
            raise bad("path", f"one of {TRAINING_PATHS}", self.path)
        if not isinstance(self.neighbors, numbers.Integral) or isinstance(self.neighbors, bool) or self.neighbors < 1:
            raise bad("neighbors", "a positive int (neighbours per item of the scalable path)", self.neighbors)
        if self.neighbor_score not in NEIGHBOR_SCORES:
            raise bad("neighbor_score", f"one of {NEIGHBOR_SCORES}", self.neighbor_score)
        return self

    def resolved_block_size(self, n_items: int) -> int:
        return int(self.block_size or min(n_items, 2048 if n_items <= 40_000 else 4096))


def dense_memory_estimate(n_items: int, k: int, itemsize: int, n_oversamples: int = 0) -> int:
    """Bytes the dense path holds at its peak: G/M and C (n² each) plus O(n·l) panels."""
    l = min(n_items, k + max(n_oversamples, k))
    return int(2.3 * n_items**2 * itemsize + 8 * n_items * l * itemsize)


def check_memory(n_items: int, params: TrainParams, total_bytes: int, n_workers: int, worker_bytes: int) -> int:
    """Raise :class:`MemoryBudgetError` if the dense path cannot fit; return the estimate."""
    itemsize = np.dtype(params.dtype).itemsize
    need = dense_memory_estimate(n_items, params.k, itemsize)
    budget = int(0.75 * total_bytes)
    block = params.resolved_block_size(n_items)
    per_task = 6 * block * block * itemsize
    if need > budget:
        n_fit = int(np.sqrt(budget / (2.3 * itemsize)))
        raise MemoryBudgetError(
            f"the dense path needs about {need / 2**30:.1f} GiB for {n_items} items in {params.dtype} "
            f"(two n x n matrices), but the cluster offers {total_bytes / 2**30:.1f} GiB over {n_workers} workers "
            f"(75 % usable: {budget / 2**30:.1f} GiB). At most about {n_fit} items fit. Use --dtype float32, drop "
            "rare items (ingest --min-item-interactions), or add workers."
        )
    if per_task > 0.5 * worker_bytes:
        raise MemoryBudgetError(
            f"a task of the dense path holds a few {block} x {block} blocks, about {per_task / 2**30:.1f} GiB, "
            f"more than half of the smallest worker's {worker_bytes / 2**30:.1f} GiB: lower --block-size, or give "
            "the workers more memory each."
        )
    return need


def choose_path(store, params: TrainParams, total_bytes: int, n_workers: int, worker_bytes: int) -> tuple[str, int]:
    """Pick the training path before any work; return (path, estimated peak bytes).

    ``auto`` takes the dense path (exact Algorithm 1) when its two n × n matrices fit
    75 % of the cluster's memory, and the scalable path otherwise. Raises
    :class:`MemoryBudgetError` when the chosen path cannot fit.
    """
    from edlae_dask.scalable.pipeline import scalable_memory_estimate

    n = store.n_items
    itemsize = np.dtype(params.dtype).itemsize
    budget = int(0.75 * total_bytes)
    dense_need = dense_memory_estimate(n, params.k, itemsize)
    if params.path == "dense" or (params.path == "auto" and dense_need <= budget):
        need = check_memory(n, params, total_bytes, n_workers, worker_bytes)
        if params.path == "auto":
            log.info("path: dense (auto): its n x n matrices need about %.2f GiB of the %.2f GiB usable",
                     need / 2**30, budget / 2**30)
        return "dense", need
    if params.path == "auto":
        log.info("path: scalable (auto), because the dense path's n x n matrices need about %.1f GiB, more than "
                 "the %.1f GiB usable", dense_need / 2**30, budget / 2**30)
    need = scalable_memory_estimate(n, store.n_users, store.nnz, params.k, min(params.neighbors, n - 1), itemsize,
                                    n_workers, params.n_oversamples)
    if need > budget:
        raise MemoryBudgetError(
            f"the scalable path needs about {need / 2**30:.1f} GiB for {store.n_users} users x {n} items "
            f"({store.nnz} interactions, K={params.neighbors} neighbours, k={params.k}), but the cluster offers "
            f"{total_bytes / 2**30:.1f} GiB over {n_workers} workers (75 % usable: {budget / 2**30:.1f} GiB). "
            "Lower --neighbors or --k, use --dtype float32, or add memory."
        )
    log.info("path: scalable: K=%d neighbours per item; estimated peak memory %.2f GiB of %.2f GiB usable",
             min(params.neighbors, n - 1), need / 2**30, budget / 2**30)
    return "scalable", need


# --------------------------------------------------------------------------- pipeline


@dataclass
class TrainResult:
    """What :func:`train` produced: factors (dask arrays), eigen data, per-stage records."""

    U: da.Array
    V: da.Array
    eigenvalues: np.ndarray
    ritz_residuals: np.ndarray
    item_ids: np.ndarray
    params: TrainParams
    interactions_fingerprint: str
    stages: dict = field(default_factory=dict)
    eigensolver: dict = field(default_factory=dict)
    version: str | None = None
    seconds: float = 0.0
    path: str = "dense"
    path_info: dict = field(default_factory=dict)


def _persist(x, client, progress: bool):
    """Persist ``x`` where this run computes and block until it is in memory (with a bar if asked)."""
    if client is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar() if progress else contextlib.nullcontext():
            return x.persist(scheduler="threads")
    from distributed import futures_of, progress as show_progress, wait

    x = client.persist(x)
    (show_progress if progress else wait)(x)
    # waiting does not raise: surface a failed block's own error (e.g. KilledWorker) now, not
    # later as "lost dependencies" of whatever reads the blocks next
    failed = [f for f in futures_of(x) if f.status == "error"]
    if failed:
        failed[0].result()
    return x


def train(store, *, params: TrainParams, client=None, out=None, overwrite: bool = False,
          progress: bool = False, stage_log=None, checkpoint_dir=None, storage_options=None) -> TrainResult:
    """Run Algorithm 1 on the interaction store and (optionally) publish the factors.

    Parameters
    ----------
    store : str or InteractionStore
        The interaction store (see ``edlae-dask ingest``): a local path or an fsspec URL.
    params : TrainParams
    client : distributed.Client or None
        Where the graphs run; ``None`` uses Dask's threaded scheduler in this process.
    out : str, optional
        Factor store to publish into (a new version, atomically); a local path or
        an fsspec URL (``s3://bucket/factors``).
    overwrite : bool, default=False
        Allow publishing into an existing factor store.
    progress : bool, default=False
        Show a progress bar for each distributed stage.
    checkpoint_dir : str or os.PathLike, optional
        Dense path: write the Gram and the inverse there as they are computed, and
        reuse those whose fingerprint (interaction store, dtype, block size; λ, p
        for the inverse) matches, so a killed job resumes after its last finished
        stage (:mod:`edlae_dask.checkpoint`). Must be visible to every worker; costs
        about 2·n²·itemsize bytes of disk. ``None``: no checkpoints. May be a URL.
    storage_options : dict, optional
        fsspec options for the stores given as URLs (default: fsspec's defaults and
        environment). The tasks carry them, so the workers open the stores themselves.
    """
    from edlae_dask.cluster import cluster_memory
    from edlae_dask.diagnostics import StageLog
    from edlae_dask.io.factors import FactorWriter
    from edlae_dask.io.interactions import InteractionStore, open_interactions

    t_start = time.perf_counter()
    store = store if isinstance(store, InteractionStore) else open_interactions(store, storage_options=storage_options)
    n = store.n_items
    params.validate(n)
    dtype = np.dtype(params.dtype)
    block = params.resolved_block_size(n)
    total, smallest, n_workers = cluster_memory(client)
    path, need = choose_path(store, params, total, n_workers, smallest)
    log.info(
        "%s path: %d users x %d items, %d interactions; k=%d, lam=%g, p=%g, %s, %s; "
        "estimated peak memory %.2f GiB, the workers' memory limits sum to %.2f GiB",
        path, store.n_users, n, store.nnz, params.k, params.lam, params.p, params.dtype,
        f"blocks of {block}" if path == "dense" else f"K={min(params.neighbors, n - 1)} neighbours",
        need / 2**30, total / 2**30,
    )
    writer = (FactorWriter(out, overwrite=overwrite, storage_options=storage_options)
              if out is not None else None)
    stages = stage_log or StageLog(client)
    # every graph of this run goes to the same scheduler, including those the stage
    # functions compute internally (a default distributed client would otherwise win)
    scheduler = dask.config.set(scheduler="threads") if client is None else client.as_current()
    with scheduler:
        try:
            if path == "dense":
                result = _train_stages(store, params, client, writer, stages, progress, dtype, block, out, t_start,
                                       checkpoint_dir, storage_options)
            else:
                result = _train_scalable(store, params, client, writer, stages, progress, out, t_start, n_workers)
            peak = max(r.peak_total_bytes for r in stages.records)
            # the estimate counts the matrices only; the sampled peak includes each process's baseline
            log.info("peak memory %.2f GiB (processes included) against the estimate of %.2f GiB for the matrices",
                     peak / 2**30, need / 2**30)
            return result
        except Exception as exc:
            if type(exc).__name__ == "KilledWorker":
                raise ModelFitError(
                    f"a Dask worker died repeatedly while running {exc.args[0] if exc.args else 'a task'}: most often "
                    "it ran out of memory (see the worker logs; lower --block-size or add memory), or its BLAS "
                    "crashed (OpenBLAS's SkylakeX float64 kernels have segfaulted in large Cholesky calls: start "
                    "the workers with OPENBLAS_CORETYPE=Haswell)"
                ) from exc
            raise
        finally:
            if writer is not None and not writer.committed:
                writer.abort()


def _train_stages(store, params, client, writer, stages, progress, dtype, block, out, t_start,
                  checkpoint_dir=None, storage_options=None) -> TrainResult:
    from edlae_dask.checkpoint import StageCheckpoints
    from edlae_dask.gram import gram
    from edlae_dask.linalg import randomized_eigh, spd_inverse

    n = store.n_items
    checkpoints = None if checkpoint_dir is None else StageCheckpoints(
        checkpoint_dir, interactions_fingerprint=store.fingerprint, n_items=n, dtype=dtype.name, block_size=block,
        lam=params.lam, p=params.p, storage_options=storage_options)

    def persist(x):
        return _persist(x, client, progress)

    def checkpointed(stage, compute, info):
        return compute() if checkpoints is None else checkpoints.run(stage, compute, persist, client, info)

    def compute_gram():
        return {"G": persist(gram(store, block_size=block, dtype=dtype))}

    def compute_inverse(P):
        C = persist(spd_inverse(P))
        return {"C": C, "diag_c": da.diagonal(C).compute()}

    with stages.stage("gram", f"XᵀX over {store.n_shards} shards") as info:
        # the persisted blocks stay referenced until M is made: a worker lost meanwhile has its
        # blocks recomputed by the scheduler from their graph (or re-read from the checkpoint)
        G = checkpointed("gram", compute_gram, info)["G"]
        diag_g = da.diagonal(G).compute()
        info["blocks"] = len(G.chunks[0])
    if params.lam == 0 and np.any(diag_g == 0):
        empty = np.flatnonzero(diag_g == 0)
        ids = store.item_ids()[empty[:5]].tolist()
        raise ModelFitError(
            f"{empty.size} items have no interactions (e.g. ids {ids}) and lam = 0, so P = XᵀX + Λ is singular. "
            "Use lam > 0, or re-ingest with --min-item-interactions 1 so such items are dropped."
        )
    with stages.stage("inverse", "C = (XᵀX + Λ)⁻¹, blocked Cholesky") as info:
        P = regularize(G, params.lam, params.p)
        inverse = checkpointed("inverse", functools.partial(compute_inverse, P), info)
        C, diag_c = inverse["C"], inverse["diag_c"]
        del inverse
        d = teacher_scaling(diag_c)
    with stages.stage("student", "M = BᵀPB, block by block"):
        M = student_matrix(P, C, d)
        del G, P  # the Gram's blocks are released as M's blocks are made
        M = _persist(M, client, progress)
    with stages.stage("eigensolve", f"top-{params.k} eigenvectors of M") as info:
        eig = randomized_eigh(
            M.__matmul__,  # a bound method, so `del M` below releases M's blocks
            n,
            params.k,
            row_chunks=M.chunks[0],
            dtype=dtype,
            n_oversamples=params.n_oversamples,
            n_power_iter=params.n_power_iter,
            seed=params.seed,
        )
        info.update(
            n_matvecs=eig.n_matvecs,
            n_oversamples=eig.n_oversamples,
            n_power_iter=eig.n_power_iter,
            ritz_residual_max=float(np.max(eig.ritz_residuals)),
            ritz_residual_median=float(np.median(eig.ritz_residuals)),
        )
        del M
        V = eig.eigenvectors
        U = _persist(student_factors(C, d, V), client, progress)
        V = _persist(V, client, progress)
        del C
    result = _result(store, params, eig, U, V)
    return _finish(result, store, client, writer, stages, out, t_start)


def _result(store, params, eig, U, V, **extra) -> TrainResult:
    return TrainResult(
        U=U,
        V=V,
        eigenvalues=np.asarray(eig.eigenvalues),
        ritz_residuals=np.asarray(eig.ritz_residuals),
        item_ids=store.item_ids(),
        params=params,
        interactions_fingerprint=store.fingerprint,
        eigensolver=dict(n_matvecs=eig.n_matvecs, n_oversamples=eig.n_oversamples, n_power_iter=eig.n_power_iter,
                         method=eig.method, block_size=eig.block_size, n_matvec_columns=eig.n_matvec_columns),
        **extra,
    )


def _finish(result: TrainResult, store, client, writer, stages, out, t_start) -> TrainResult:
    """Publish the factors (if asked) and fill in the stage records."""
    if writer is not None:
        with stages.stage("publish", f"factor store {out}"):
            _store(writer, "U", result.U, client)
            _store(writer, "V", result.V, client)
            writer.write_array("item_ids", result.item_ids)
            writer.write_array("eigenvalues", result.eigenvalues)
            writer.write_array("ritz_residuals", result.ritz_residuals)
            result.version = writer.commit(_factor_attrs(result, store, stages))
    result.stages = stages.as_dict()
    result.seconds = time.perf_counter() - t_start
    return result


def _train_scalable(store, params, client, writer, stages, progress, out, t_start, n_workers) -> TrainResult:
    """The scalable path (:mod:`edlae_dask.scalable`): no n x n matrix anywhere."""
    from edlae_dask.scalable.pipeline import scalable_stages

    operator, eig, info = scalable_stages(store, params, client, stages, progress, n_workers)
    V = eig.eigenvectors
    U = _persist(operator.factors_u(V), client, progress)
    result = _result(store, params, eig, U, V, path="scalable", path_info=info)
    return _finish(result, store, client, writer, stages, out, t_start)


def _store(writer, name, x, client) -> None:
    task = writer.write_array(name, x, compute=False)
    if client is None:
        task.compute(scheduler="threads")
    else:
        client.compute(task).result()


def _factor_attrs(result: TrainResult, store, stages) -> dict:
    p = result.params
    return dict(
        k=p.k,
        lam=float(p.lam),
        p=float(p.p),
        dtype=p.dtype,
        seed=p.seed,
        path=result.path,
        **({"scalable": result.path_info} if result.path_info else {}),
        n_items=int(store.n_items),
        n_users=int(store.n_users),
        nnz=int(store.nnz),
        interactions_fingerprint=store.fingerprint,
        interactions_path=str(store.path),
        eigensolver=result.eigensolver,
        ritz_residual_max=float(np.max(result.ritz_residuals)),
        stages=stages.as_dict(),
    )


# --------------------------------------------------------------------------- estimator


def _current_client():
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


class EDLAE:
    """Low-rank Emphasized Denoising Linear Autoencoder, closed form (Algorithm 1).

    Parameters
    ----------
    k : int, default=100
        Rank of the factors U, V.
    lam : float, default=20.0
        λ ≥ 0, L2 penalty applied equally to all items (eq. 8).
    p : float, default=0.25
        Dropout probability of emphasized denoising, 0 ≤ p < 1; adds
        p/(1−p)·diag(XᵀX) to the penalty (eq. 8).
    dtype : {"float32", "float64"}, default="float32"
    block_size : int, optional
        Side of the square n x n blocks (default: 2,048, or 4,096 above 40,000 items).
    n_oversamples, n_power_iter : int, optional
        Randomized eigensolver settings; ``None`` takes the measured defaults of
        :func:`edlae_dask.linalg.randomized_eigh`.
    seed : int, default=0
        Seed of the eigensolver's random start: same seed, same factors.
    path : {"auto", "dense", "scalable"}, default="auto"
        ``dense`` is exact Algorithm 1 and holds two n x n matrices; ``scalable``
        (:mod:`edlae_dask.scalable`) restricts each item's teacher column to its
        ``neighbors`` strongest co-occurring items and never forms an n x n matrix;
        ``auto`` is dense when it fits the cluster's memory.
    neighbors : int, default=64
        K, neighbours per item on the scalable path (K = n − 1 is the dense teacher).
    neighbor_score : {"count", "cosine"}, default="count"
        How the scalable path ranks candidate neighbours.

    Attributes
    ----------
    U_, V_ : ndarray or dask array of shape (n_items, k)
        Scores of a user row x are ``(x @ U_) @ V_.T`` (eq. 16–17). numpy when fit
        without ``out``; lazily read from the published store otherwise.
    eigenvalues_ : ndarray of shape (k,)
    ritz_residuals_ : ndarray of shape (k,)
    item_ids_ : ndarray of shape (n_items,)
    stages_ : dict
        Seconds and peak memory of each stage.
    version_ : str or None
        The published factor version when fit with ``out``.

    Examples
    --------
    >>> model = EDLAE(k=200, lam=50.0, p=0.33).fit("interactions.zarr")   # doctest: +SKIP
    >>> ids, scores = model.recommend(user_rows, N=20)                    # doctest: +SKIP
    """

    def __init__(self, k: int = 100, *, lam: float = 20.0, p: float = 0.25, dtype: str = "float32",
                 block_size: int | None = None, n_oversamples: int | None = None,
                 n_power_iter: int | None = None, seed: int = 0, path: str = "auto", neighbors: int = DEFAULT_NEIGHBORS,
                 neighbor_score: str = "count"):
        self.k = k
        self.lam = lam
        self.p = p
        self.dtype = dtype
        self.block_size = block_size
        self.n_oversamples = n_oversamples
        self.n_power_iter = n_power_iter
        self.seed = seed
        self.path = path
        self.neighbors = neighbors
        self.neighbor_score = neighbor_score

    def get_params(self) -> dict:
        return {name: getattr(self, name) for name in TrainParams.__dataclass_fields__}

    def fit(self, store, *, out=None, overwrite: bool = False, client=None, progress: bool = False,
            storage_options=None) -> "EDLAE":
        """Train on an interaction store; publish to ``out`` if given. Returns ``self``.

        Runs on ``client``, else on the current distributed client if there is one,
        else on Dask's threaded scheduler. ``store`` and ``out`` may be fsspec URLs
        (``s3://bucket/prefix``), opened with ``storage_options``.
        """
        params = TrainParams(**self.get_params()).validate()
        client = client if client is not None else _current_client()
        res = train(store, params=params, client=client, out=out, overwrite=overwrite, progress=progress,
                    storage_options=storage_options)
        if out is None:
            self.U_ = np.asarray(res.U.compute())
            self.V_ = np.asarray(res.V.compute())
        else:
            from edlae_dask.io.factors import open_factors

            f = open_factors(out, res.version, storage_options=storage_options)
            self.U_, self.V_ = f.U, f.V
        self.eigenvalues_ = res.eigenvalues
        self.ritz_residuals_ = res.ritz_residuals
        self.item_ids_ = res.item_ids
        self.stages_ = res.stages
        self.version_ = res.version
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "V_"):
            raise ParameterError("This EDLAE instance is not fitted yet. Call 'fit' with an interaction store first.")

    def recommend(self, user_items, N: int = 10, *, filter_seen: bool = True):
        """Top-``N`` item indices and scores for each row of ``user_items``.

        Parameters
        ----------
        user_items : scipy.sparse matrix or ndarray of shape (n_users, n_items)
        N : int, default=10
        filter_seen : bool, default=True
            Exclude items the user already has.

        Returns
        -------
        ids : ndarray of shape (n_users, N), int
            Indices into ``item_ids_``, best first.
        scores : ndarray of shape (n_users, N)
        """
        import scipy.sparse as sp

        self._check_fitted()
        U, V = (np.asarray(a) if not isinstance(a, da.Array) else a.compute() for a in (self.U_, self.V_))
        X = sp.csr_matrix(user_items)
        if X.shape[1] != U.shape[0]:
            raise ParameterError(f"user_items has {X.shape[1]} columns; the model has {U.shape[0]} items")
        if not 0 < N <= U.shape[0]:
            raise ParameterError(f"N must be in [1, {U.shape[0]}], got {N}")
        scores = np.asarray(X @ U) @ V.T
        if filter_seen:
            scores[X.nonzero()] = -np.inf
        top = np.argpartition(-scores, N - 1, axis=1)[:, :N]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)

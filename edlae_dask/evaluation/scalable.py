"""Tuning the scalable path: a (K, λ, p) grid at ranks k under strong generalization, never an n × n matrix.

The protocol is the dense evaluation's (:mod:`~edlae_dask.evaluation.search`): the same user
split (:func:`~edlae_dask.evaluation.split.strong_generalization_split`), models trained on the
training users over the kept items, validation users choose the point (nDCG@100), test users
report it, fold-in items excluded from the ranking, the same metrics with standard errors, and a
popularity baseline row first. The model is the scalable path's (:mod:`edlae_dask.scalable`): the
sparse teacher over each item's K strongest neighbours and its matrix-free rank-k student.

What the grid points share (stage functions of :mod:`edlae_dask.scalable.pipeline`)::

    load          once             training users' rows of each shard, kept items' columns; X_s, X_sᵀ stay
                                   on the worker that read them for the whole grid
    neighbors     once, at max K   the lists are strongest first, so the lists at K < max K are their
                                   first K columns (:func:`~edlae_dask.scalable.pipeline.prefix_neighbors`)
    teacher       per (K, λ, p)    B depends on the neighbour sets and on Λ
    eigensolve    per (K, λ, p)    at the largest k; every smaller k' is its leading k' columns, which the
                                   randomized solver (subspace of 2·k_max) finds at least as accurately
                                   as a solve at k'
    scoring       per (K, λ, p)    validation and test users together, in batches against U, V

Memory: the training interactions (about 2·12·nnz bytes over the workers), the neighbour lists
at max K and at the current K, one teacher (B and Bᵀ, 8·n·K bytes each) and one pair of factors
at a time, the eigensolver's n × 2k panels, and per scoring task ``batch_rows`` users × one item
block of scores. Points run one after another; each is itself spread over the cluster.

Example::

    from edlae_dask.evaluation.scalable import evaluate_scalable
    report = evaluate_scalable("interactions.zarr", ks=[100], lams=[20, 100], ps=[0.1, 0.4],
                               neighbors=[32, 64])
    print(report.table())
"""

from __future__ import annotations

import logging
import numbers
import time

import dask
import numpy as np
import scipy.sparse as sp

from edlae_dask.config import DEFAULT_NEIGHBORS, LAM_BOUND, NEIGHBOR_SCORES, P_BOUND, lam_ok, p_ok
from edlae_dask.errors import EdlaeError, MemoryBudgetError, ParameterError, worker_died
from edlae_dask.evaluation.metrics import summarize
from edlae_dask.evaluation.models import parse_models
from edlae_dask.evaluation.popularity import training_popularity
from edlae_dask.evaluation.scoring import lowrank_metrics, put_heldout
from edlae_dask.evaluation.search import (
    METRIC_NAMES,
    SELECT_BY,
    EvaluationReport,
    GridResult,
    _check_floats,
    _check_ks,
    _choose,
    popularity_row,
)
from edlae_dask.evaluation.split import Split, strong_generalization_split

__all__ = ["evaluate_scalable", "scoring_batch_rows"]

log = logging.getLogger("edlae_dask.evaluation")

#: Scores one scoring task holds at once (batch_rows × one item block): 2**25 entries, 128 MiB in float32.
SCORE_BLOCK_ENTRIES = 2**25


def scoring_batch_rows(chunks, entries: int = SCORE_BLOCK_ENTRIES) -> int:
    """Held-out users scored per block product so that a task holds at most ``entries`` scores (16 to 4096)."""
    return int(max(16, min(4096, entries // max(1, max(chunks)))))


def _check_neighbors(values, n_items: int) -> tuple[int, ...]:
    """The K grid: ints >= 1, each capped at n − 1 (every other item), deduplicated, ascending."""
    if isinstance(values, numbers.Integral):
        values = [values]
    out = []
    for K in values or (DEFAULT_NEIGHBORS,):
        if isinstance(K, bool) or not isinstance(K, numbers.Integral) or K < 1:
            raise ParameterError(f"Every value of the 'neighbors' parameter must be an int >= 1 (neighbours per item, "
                                 f"K). Got {K!r}.")
        out.append(min(int(K), n_items - 1))
    return tuple(sorted(set(out)))


def _check_models(models) -> None:
    names = parse_models(models)
    other = [m for m in names if m != "edlae"]
    if other:
        raise ParameterError(f"the scalable path evaluates edlae only (the low-rank student of its sparse teacher), "
                             f"not {', '.join(other)}: use --models edlae, or --path dense for the others")


def _check_memory(store, split: Split, K: int, k: int, dtype, client, n_oversamples) -> dict:
    """Refuse a grid whose largest point cannot fit the smallest worker (estimate, before any work)."""
    from edlae_dask.cluster import cluster_memory
    from edlae_dask.planning import USABLE_MEMORY, scalable_memory_estimate

    total, smallest, n_workers = cluster_memory(client)
    n = int(split.items.size)
    need = scalable_memory_estimate(n, int(split.train_users.size), int(store.nnz), k, K, np.dtype(dtype).itemsize,
                                    n_workers=n_workers, n_oversamples=n_oversamples, n_shards=store.n_shards)
    need += 8 * n * K  # the neighbour lists at the largest K, kept for the whole grid beside the current K's
    usable = int(USABLE_MEMORY * smallest)
    if need > usable:
        raise MemoryBudgetError(
            f"the scalable evaluation at K={K}, k={k} needs about {need / 2**30:.1f} GiB on each of {n_workers} "
            f"workers but the smallest has {smallest / 2**30:.1f} GiB (75 % usable); lower the largest --neighbors "
            "or --k, or add workers"
        )
    return {"per_worker_bytes": int(need), "worker_bytes": int(smallest), "n_workers": n_workers, "concurrent": 1}


def evaluate_scalable(store, *, ks, lams=(20.0,), ps=(0.25,), neighbors=(DEFAULT_NEIGHBORS,),
                      neighbor_score: str = "count", models=("edlae",), n_valid=0.1, n_test=0.1, seed: int = 0,
                      min_items: int = 5, target_fraction: float = 0.2, dtype: str = "float32", client=None,
                      split: Split | None = None, storage_options=None, n_top: int = 100,
                      batch_rows: int | None = None, n_oversamples: int | None = None,
                      n_power_iter: int | None = None, eig_seed: int = 0, progress: bool = False) -> EvaluationReport:
    """Evaluate the scalable path over the grid ``neighbors × lams × ps`` at ranks ``ks``; report on test users.

    Parameters
    ----------
    store : str or InteractionStore
    ks : sequence of int
        Ranks, 0 < k < n_kept_items; one eigensolve per (K, λ, p) at the largest serves all.
    lams, ps : sequence of float
        λ and p grids (as :meth:`~edlae_dask.evaluation.search.Evaluator.run`).
    neighbors : sequence of int, default=(64,)
        The K grid; each K is capped at n_kept_items − 1 (at which the model is dense Algorithm 1).
    neighbor_score : {"count", "cosine"}, default="count"
    models : default=("edlae",)
        Only ``edlae`` (the popularity baseline is always reported).
    n_valid, n_test, seed, min_items, target_fraction
        The split (:func:`~edlae_dask.evaluation.split.strong_generalization_split`); ignored with ``split``.
    dtype : {"float32", "float64"}
    client : distributed.Client, optional
        Where everything runs; ``None``: Dask's threaded scheduler.
    split : Split, optional
        Use this split (e.g. the dense evaluation's) instead of making one.
    storage_options : dict, optional
        fsspec options when ``store`` is a URL.
    n_top : int, default=100
    batch_rows : int, optional
        Held-out users per scoring product (default :func:`scoring_batch_rows`: at most 2**25 scores a task).
    n_oversamples, n_power_iter, eig_seed
        Randomized eigensolver settings (defaults: the training path's).
    progress : bool, default=False
        Progress bars for the stages.

    Returns
    -------
    EvaluationReport
        ``rows``: popularity, then per k the (K, λ, p) with the best validation nDCG@100 (K in
        ``extra["neighbors"]``); ``grid``: every point; ``settings["stages"]``: every stage run, in order
        (one ``load`` and one ``neighbors`` per call).
    """
    from edlae_dask.diagnostics import StageLog
    from edlae_dask.io.interactions import InteractionStore, open_interactions
    from edlae_dask.runtime import StageContext
    from edlae_dask.scalable.pipeline import (
        Neighbors,
        load_stage,
        neighbor_stage,
        prefix_neighbors,
        student_stage,
        teacher_stage,
    )

    t0 = time.perf_counter()
    _check_models(models)
    lams = _check_floats(lams, "lams", lam_ok, LAM_BOUND)  # before the split and the load: a bad grid costs nothing
    ps = _check_floats(ps, "ps", p_ok, P_BOUND)
    if neighbor_score not in NEIGHBOR_SCORES:
        raise ParameterError(f"The 'neighbor_score' parameter must be one of {NEIGHBOR_SCORES}. "
                             f"Got {neighbor_score!r}.")
    if dtype not in ("float32", "float64"):
        raise ParameterError(f"The 'dtype' parameter must be 'float32' or 'float64'. Got {dtype!r} instead.")
    if n_top < 100:
        raise ParameterError(f"n_top must be >= 100 (nDCG@100). Got {n_top!r}.")
    store = store if isinstance(store, InteractionStore) else open_interactions(store, storage_options=storage_options)
    split = split if split is not None else strong_generalization_split(
        store, n_valid=n_valid, n_test=n_test, seed=seed, min_items=min_items, target_fraction=target_fraction,
        client=client)
    for name, h in (("validation", split.valid), ("test", split.test)):
        if h.n_users == 0:
            raise ParameterError(f"no {name} user has >= {split.min_items} items among the kept items; raise "
                                 f"n_{'valid' if name == 'validation' else 'test'} or lower min_items")
    n = int(split.items.size)
    if n < 3:
        raise ParameterError(f"the training users have {n} items; the scalable evaluation needs at least 3")
    ks = _check_ks(ks, n)
    if not ks:
        raise ParameterError("edlae is low rank: give at least one rank k (ks=…, --k).")
    Ks = _check_neighbors(neighbors, n)
    k_max, K_max = max(ks), max(Ks)
    memory = _check_memory(store, split, K_max, k_max, dtype, client, n_oversamples)
    t_split = time.perf_counter() - t0
    log.info("scalable evaluation: %d kept items, %d training users; K %s, λ %s, p %s, k %s: %d points",
             n, split.train_users.size, list(Ks), list(lams), list(ps), list(ks), len(Ks) * len(lams) * len(ps))

    sv, st = split.valid, split.test
    ctx = StageContext(client=client, stages=StageLog(client), progress=progress, n_workers=memory["n_workers"],
                       storage_options=storage_options)
    scheduler = dask.config.set(scheduler="threads") if client is None else client.as_current()
    grid: list[GridResult] = []
    with scheduler:
        held = put_heldout(sp.vstack([sv.fold_in, st.fold_in], format="csr"),
                           sp.vstack([sv.targets, st.targets], format="csr"), sv.n_users, np.dtype(dtype), client)
        t1 = time.perf_counter()
        loaded = load_stage(store, dtype, ctx, users=split.train_users, items=split.items)
        t_load = time.perf_counter() - t1
        t1 = time.perf_counter()
        widest = neighbor_stage(loaded, K_max, neighbor_score, ctx)
        loaded = loaded.without_x()  # the later stages read the shards' X_sᵀ only
        t_neighbors = time.perf_counter() - t1
        rows_per_batch = int(batch_rows or scoring_batch_rows(loaded.chunks))
        t_grid = time.perf_counter()
        for K in Ks:
            nbrs = prefix_neighbors(widest, K)
            if K < K_max:  # the prefix once per K, not once per (λ, p)
                nbrs = Neighbors(rows=ctx.persist(nbrs.rows, progress=False), K=K, score=neighbor_score)
            for lam in lams:
                for p in ps:
                    grid += _point(loaded, nbrs, lam, p, ks, held, ctx, teacher_stage, student_stage,
                                   dict(n_top=n_top, batch_rows=rows_per_batch, n_oversamples=n_oversamples,
                                        n_power_iter=n_power_iter, seed=eig_seed))
                    log.info("grid point %d/%d (K=%d, λ=%g, p=%g) done", len(grid) // len(ks),
                             len(Ks) * len(lams) * len(ps), K, lam, p)
            del nbrs
        t_grid = time.perf_counter() - t_grid
        del widest, loaded
    rows = [popularity_row(split, training_popularity(store, split, client), n_top), *_choose(grid)]
    records = [r.as_dict() for r in ctx.stages.records]
    settings = {
        "path": "scalable", "backend": "scalable", "models": ["edlae"], "ks": list(ks), "lams": list(lams),
        "ps": list(ps), "neighbors": list(Ks), "neighbor_score": neighbor_score, "dtype": dtype, "n_top": n_top,
        "batch_rows": rows_per_batch, "n_oversamples": n_oversamples, "n_power_iter": n_power_iter,
        "eig_seed": eig_seed, "eigensolve_k": k_max, "concurrency": memory, "selected_by": f"valid {SELECT_BY}",
        "stage_runs": {name: sum(r["name"] == name for r in records)
                       for name in ("load", "neighbors", "teacher", "eigensolve")},
        "stages": records,
    }
    timings = {"split": t_split, "load": t_load, "neighbors": t_neighbors, "gram": t_load + t_neighbors,
               "grid": t_grid, "exact_optimum": 0.0, "run": time.perf_counter() - t0}
    return EvaluationReport(rows=rows, grid=grid, split=split.summary(), settings=settings, timings=timings)


def _point(loaded, nbrs, lam: float, p: float, ks, held, ctx, teacher_stage, student_stage, opts: dict) -> list:
    """One (K, λ, p): teacher, eigensolve at the largest k, held-out scores at every k; the GridResults."""
    t0 = time.perf_counter()
    where = f"grid point K={nbrs.K}, λ={lam:g}, p={p:g}"
    try:
        teacher = teacher_stage(loaded, nbrs, lam, p, ctx)
        U, V, eig = student_stage(loaded, teacher, max(ks), ctx, n_oversamples=opts["n_oversamples"],
                                  n_power_iter=opts["n_power_iter"], seed=opts["seed"])
        n_exact = teacher.n_exact
        del teacher
        graphs = lowrank_metrics(U, V, ks, held, n_top=opts["n_top"], batch_rows=opts["batch_rows"])
        keys = sorted(graphs)
        values = dict(zip(keys, ctx.compute(dask.delayed(list)([graphs[k] for k in keys]))))
        del U, V
    except EdlaeError as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    except Exception as exc:
        died = worker_died(exc, f"evaluating {where}", memory_fix="lower --neighbors or --k, or add memory")
        if died is not None:
            raise died from exc
        raise
    seconds = time.perf_counter() - t0
    extra = {"neighbors": nbrs.K, "neighbor_score": nbrs.score, "point_seconds": seconds, "exact_p_ss": n_exact,
             "ritz_residual_max": float(np.max(eig.ritz_residuals)), "n_matvecs": eig.n_matvecs}
    out = []
    nv = held.n_valid
    for k in keys:
        per_user = values[k]
        out.append(GridResult(model="edlae", k=k, lam=lam, p=p,
                              valid={m: summarize(per_user[:nv, i]) for i, m in enumerate(METRIC_NAMES)},
                              test={m: summarize(per_user[nv:, i]) for i, m in enumerate(METRIC_NAMES)},
                              extra=dict(extra), test_per_user=per_user[nv:]))
    return out

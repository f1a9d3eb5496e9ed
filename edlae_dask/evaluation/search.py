"""Evaluation under strong generalization: a (λ, p) grid chosen on validation users, reported on test users.

:class:`Evaluator` does the work that every model and grid point shares, once:
the user split (:func:`~edlae_dask.evaluation.split.strong_generalization_split`),
the Gram of the training users over the kept items (computed once and persisted
on the cluster), and the held-out fold-in/target matrices (put on the cluster
once). :meth:`Evaluator.run` then evaluates any models over any grid, as many
times as wanted (e.g. once per k from ``benchmarks/figure1.py``)::

    with Evaluator("interactions.zarr", n_valid=0.1, n_test=0.1, seed=0, client=client) as ev:
        report = ev.run(models=["edlae", "lae", "full-rank", "ease"], ks=[50, 200],
                        lams=[20.0, 100.0], ps=[0.0, 0.25, 0.5])
    print(report.table())

:func:`evaluate` is the one-call form (used by ``edlae-dask evaluate``).

Why not dask-ml's GridSearchCV over a Pipeline (a Gram step, then the model)
----------------------------------------------------------------------------
dask-ml is a dependency and its ``GridSearchCV`` works with this Dask (its
``IncrementalSearchCV`` / ``HyperbandSearchCV`` do not, dask/dask-ml#1016), and it
does share a Pipeline's identical prefix (the Gram step) across candidates. It
does not fit this protocol, for four reasons:

1. It runs each ``fit`` and ``score`` as *one task on in-memory arrays* (each CV
   split is materialised as a single array). Our model is a distributed graph:
   blocked Gram over zarr shards, blocked Cholesky inverse, distributed
   randomized eigensolver. Inside a GridSearchCV task the n × n inverse would be
   one in-memory LAPACK call on one worker, which is what this package exists to
   avoid (and what the memory budget of the dense path forbids for large n).
2. The data would have to come in as one ``X`` array (users × items) on the
   client, not as the sharded interaction store.
3. Strong generalization is not a CV split of rows: held-out users are scored
   from an 80 % fold-in of their row against the 20 % targets, with fold-in items
   excluded from the ranking, and items without training interactions dropped.
   A scorer could hide that, but the Gram step's ``transform`` would then have to
   pass held-out rows through unchanged while turning training rows into XᵀX —
   a Pipeline that is not a pipeline.
4. Test users are evaluated with the model trained on the training users at the
   chosen point; GridSearchCV's ``refit`` retrains on everything it was given
   (train + validation users), a different protocol.

(For a matrix that fits one worker, dask-ml's ``GridSearchCV`` does run this protocol on EDLAE itself,
one candidate fit per task, with :mod:`~edlae_dask.evaluation.cv`'s user splitter and fold-in scorer; it
chooses the same point as :func:`evaluate` on the same split, without the shared Gram.)

So the grid is written here: every (λ, p) point is one small pipeline over the
same persisted Gram (P = G + Λ lazily, then its own inverse, teacher, student
eigensolves and held-out scoring), and the points run in threads on the client
so their graphs interleave on the cluster, as many at once as the memory
estimate allows (each point holds its n × n inverse and one n × n student matrix).

Points, models and ranks share work: one inverse per (λ, p) serves the full-rank
teacher, EASE (the p = 0 points), Algorithm 1 and the unconstrained LAE; one
eigensolve per (λ, p) and model at the largest requested k serves every smaller k
(the leading columns of the top-k_max eigenvectors, which the randomized solver,
with its 2·k_max subspace, finds at least as accurately as a solve at k).
Validation and test users are scored together; test numbers of points that were
not chosen are kept in ``report.grid`` for analysis, never used for choosing.

Two backends do the per-point work: ``backend="dask"`` (the above, on the cluster)
and ``backend="dense"`` (:mod:`~edlae_dask.evaluation.dense`: one process keeps
the Gram once and evaluates one point at a time in two reused n × n buffers with an
in-place LAPACK inverse, ~3·n² peak instead of ~4.5·n², or ~2·n² without forming
the student matrix; plans against measured peaks in benchmarks/results/design-notes.md,
"Evaluation"). Both use the same solver and scoring graphs and agree to rounding.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import json
import logging
import numbers
import os
import time
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp

from edlae_dask.config import LAM_BOUND, P_BOUND, lam_ok, p_ok
from edlae_dask.errors import EdlaeError, MemoryBudgetError, ParameterError, worker_died
from edlae_dask.evaluation.dense import DenseWorkspace, as_dask, eigensolve, plan_memory
from edlae_dask.evaluation.metrics import METRICS, MetricSummary, summarize
from edlae_dask.evaluation.models import FULL_RANK, emphasis_diagonal, parse_models, scaling
from edlae_dask.evaluation.popularity import training_popularity
from edlae_dask.evaluation.scoring import DEFAULT_BATCH_ROWS, fullrank_metrics, lowrank_metrics, put_heldout
from edlae_dask.evaluation.split import Split, strong_generalization_split
from edlae_dask.linalg.graph import persist

__all__ = ["GridResult", "EvaluationReport", "Evaluator", "evaluate", "popularity_row"]

log = logging.getLogger("edlae_dask.evaluation")
#: the loggers whose lines a grid point's thread writes without saying which point (the eigensolver's passes)
_LABELLED_LOGGERS = ("edlae_dask.linalg",)
_GRID_POINT: contextvars.ContextVar[str | None] = contextvars.ContextVar("edlae_grid_point", default=None)


class _GridPointLabel(logging.Filter):
    """Prefix each line logged while a grid point runs, in its thread, with the point: ``[λ=50, p=0.25] ...``.

    Grid points run concurrently (one thread each), so their eigensolvers' lines interleave;
    the label says whose each line is. Installed on :data:`_LABELLED_LOGGERS` for the grid only.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        label = _GRID_POINT.get()
        if label is not None and not hasattr(record, "edlae_grid_point"):
            record.edlae_grid_point = label
            record.msg = f"[{label}] {record.msg}"
        return True


@contextlib.contextmanager
def _labelled_by_grid_point():
    """Label the lines of :data:`_LABELLED_LOGGERS` with the grid point that logs them, while the grid runs."""
    label = _GridPointLabel()
    loggers = [logging.getLogger(name) for name in _LABELLED_LOGGERS]
    for lg in loggers:
        lg.addFilter(label)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(label)


@contextlib.contextmanager
def _grid_point(label: str):
    """Lines of :data:`_LABELLED_LOGGERS` logged by this thread inside the block are labelled ``[label]``."""
    token = _GRID_POINT.set(label)
    try:
        yield
    finally:
        _GRID_POINT.reset(token)


METRIC_NAMES = tuple(m[0] for m in METRICS)
SELECT_BY = "ndcg@100"


# --------------------------------------------------------------------------- results


@dataclass
class GridResult:
    """Validation and test metrics of one model at one grid point (and rank)."""

    model: str
    k: int | None
    lam: float | None  # None: a model without λ (the popularity baseline)
    p: float | None
    valid: dict
    test: dict
    extra: dict = field(default_factory=dict)
    #: Per test user, the metrics in :data:`METRIC_NAMES` order, shape (n_test_users, 3), NaN for a
    #: user without targets; kept for paired comparisons (:func:`paired_difference`), not serialized.
    test_per_user: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {
            "model": self.model, "k": self.k, "lam": self.lam, "p": self.p,
            "valid": {m: s.as_dict() for m, s in self.valid.items()},
            "test": {m: s.as_dict() for m, s in self.test.items()},
            **({"extra": self.extra} if self.extra else {}),
        }


def _fmt(s: MetricSummary, se: bool = True) -> str:
    if not np.isfinite(s.mean):
        return "-"
    return f"{s.mean:.4f} ± {s.se:.4f}" if se else f"{s.mean:.4f}"


@dataclass
class EvaluationReport:
    """What :meth:`Evaluator.run` found.

    Attributes
    ----------
    rows : list of GridResult
        First the popularity baseline (:func:`popularity_row`, the sanity floor), then per model
        and rank the grid point with the best validation nDCG@100 (ties: the first in grid
        order), with its test metrics.
    grid : list of GridResult
        Every evaluated point.
    split : dict
        :meth:`Split.summary` of the split used.
    settings : dict
    timings : dict
        Seconds per phase (split, gram, grid, exact optimum, total).
    """

    rows: list
    grid: list
    split: dict
    settings: dict
    timings: dict

    def best(self, model: str, k: int | None = None) -> GridResult:
        """The chosen point of ``model`` (at rank ``k`` for low-rank models)."""
        for r in self.rows:
            if r.model == model and r.k == k:
                return r
        raise KeyError(f"no result for model {model!r} at k={k}")

    def as_dict(self) -> dict:
        return {
            "selected_by": f"valid {SELECT_BY}",
            "rows": [r.as_dict() for r in self.rows],
            "grid": [g.as_dict() for g in self.grid],
            "split": self.split,
            "settings": self.settings,
            "timings": self.timings,
        }

    def to_json(self, path, *, overwrite: bool = True) -> None:
        """Write the report as JSON to the local file ``path``, whole (a temporary file renamed into place).

        ``overwrite=False`` refuses an existing file (:class:`~edlae_dask.errors.OutputExistsError`).
        """
        from edlae_dask.io.versioned import write_new_file

        data = json.dumps(self.as_dict(), indent=2, default=_json_default).encode()
        write_new_file(path, data, overwrite=overwrite)

    def table(self) -> str:
        head = ["model", "k", "λ", "p", "valid nDCG@100", "test nDCG@100", "test Recall@20", "test Recall@50"]
        # the scalable path's rows carry their neighbours per item K (a grid axis there)
        with_k = any("neighbors" in r.extra for r in self.rows)
        lines = []
        for r in self.rows:
            lines.append([
                r.model, "-" if r.k is None else str(r.k), "-" if r.lam is None else f"{r.lam:g}",
                "-" if r.p is None else f"{r.p:g}",
                _fmt(r.valid[SELECT_BY], se=False), _fmt(r.test["ndcg@100"]), _fmt(r.test["recall@20"]),
                _fmt(r.test["recall@50"]),
            ])
            if with_k:
                lines[-1].insert(2, str(r.extra.get("neighbors", "-")))
        if with_k:
            head.insert(2, "K")
        widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines]
        notes = [r for r in self.rows if r.model == "edlae-opt"]
        for r in notes:
            e = r.extra
            out.append(
                f"edlae-opt k={r.k} (λ={r.lam:g}, p={r.p:g}; optimised at {e['exact_points']} points): "
                f"eq.-14 objective closed form / optimum = {e['objective_ratio']:.4f} "
                f"({e['objective_eq14_closed_form']:.6g} / "
                f"{e['objective_eq14_optimum']:.6g}, {e['n_iter']} L-BFGS iterations"
                f"{'' if e['converged'] else ', not converged'}); test nDCG@100 optimum − closed form at this point "
                f"{e['test_ndcg_diff']:+.4f} ± {e['test_ndcg_diff_se']:.4f}; edlae-opt − edlae row "
                f"{e['test_ndcg_minus_edlae_row']:+.4f}"
            )
        s = self.split
        out.append(
            f"split (seed {s['seed']}): {s['n_train_users']} train users; {s['n_valid_evaluated']} validation and "
            f"{s['n_test_evaluated']} test users evaluated ({s['n_valid_skipped_lt_min_items']} + "
            f"{s['n_test_skipped_lt_min_items']} held-out users with < {s['min_items']} items skipped); "
            f"{s['n_items_kept']} items, {s['n_items_dropped_no_training_interactions']} dropped (no training "
            "interactions)"
        )
        return "\n".join(out)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# --------------------------------------------------------------------------- validation


def _check_floats(values, name: str, ok, bound: str) -> tuple[float, ...]:
    """The grid's values of λ or p, checked by the model's own rule (``ok``, described by ``bound``)."""
    if isinstance(values, numbers.Real):
        values = [values]
    out = []
    for v in values:
        if not ok(v):
            raise ParameterError(f"Every value of the {name!r} parameter must be {bound}. Got {v!r}.")
        out.append(float(v))
    if not out:
        raise ParameterError(f"The {name!r} parameter needs at least one value.")
    return tuple(dict.fromkeys(out))


def _check_ks(ks, n_items: int) -> tuple[int, ...]:
    if isinstance(ks, numbers.Integral):
        ks = [ks]
    out = []
    for k in ks or ():
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 < k < n_items:
            raise ParameterError(
                f"Every value of the 'ks' parameter must be an int with 0 < k < {n_items} (the kept items; the "
                f"rank-{n_items} model is the full-rank one). Got {k!r}."
            )
        out.append(int(k))
    return tuple(sorted(set(out)))


def _cluster_threads(client) -> int:
    if client is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    return max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))


def _accepts_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


# --------------------------------------------------------------------------- evaluator


class Evaluator:
    """Split, shared Gram and held-out data of one evaluation, reused by every :meth:`run`.

    Creating an Evaluator splits the users, computes the Gram of the training users
    over the kept items and persists it on the cluster, and puts the held-out
    matrices there; :meth:`run` evaluates models over a grid against them.

    Parameters
    ----------
    store : str or InteractionStore
    n_valid, n_test : int or float, default=0.1
        Held-out users per group: a count or a fraction of all users.
    seed : int, default=0
        Seed of the split (users, then fold-in/target per group).
    min_items : int, default=5
    target_fraction : float, default=0.2
        See :func:`~edlae_dask.evaluation.split.strong_generalization_split`.
    dtype : {"float32", "float64"}, default="float32"
        Of the Gram, inverses, factors and scores.
    block_size : int, optional
        Item blocks (default: as for training, 2,048, or 4,096 above 40,000 items).
    client : distributed.Client, optional
        Where everything runs; ``None``: Dask's threaded scheduler in this process.
    split : Split, optional
        Use this split instead of making one (``n_valid`` … ``target_fraction`` are then ignored).
    backend : {"dask", "dense"}, default="dask"
        ``dask``: blocked graphs on the cluster, grid points in parallel (any n the
        cluster holds). ``dense``: this process keeps the Gram once as one array and
        evaluates one grid point at a time in two reused n × n buffers, with an
        in-place LAPACK inverse (:mod:`~edlae_dask.evaluation.dense`): ~3·n² peak
        instead of ~4.5·n², or ~2·n² when the student matrix is not formed. The
        client, if any, then only runs ``edlae-opt``.
    memory_limit : int, optional
        Bytes the dense backend may use (default: the machine's available memory).
    storage_options : dict, optional
        fsspec options when ``store`` is a URL (``s3://…``); the tasks carry them, so
        the workers read the shards themselves.

    Attributes
    ----------
    split_ : Split
    gram_ : dask.array.Array of shape (n_kept_items, n_kept_items)
        Persisted XᵀX of the training users.
    diag_g_ : ndarray of shape (n_kept_items,)
        diag(XᵀX) of the training users (float64), for Λ.
    timings_ : dict
        Seconds of the split and of the Gram.

    Notes
    -----
    Memory (Dask backend; for ``dense`` see :mod:`~edlae_dask.evaluation.dense`): the
    persisted Gram (n²·itemsize over the workers) for the Evaluator's lifetime; during
    :meth:`run`, per grid point in flight about
    3.5·n²·itemsize (its inverse C, one student matrix, the inverse's temporaries)
    plus ~10 n × 2k_max panels; :meth:`concurrency` limits the points in flight to
    what 60 % of the cluster's memory holds. The held-out rows live on the cluster
    as one CSR (validation then test users).

    Cost per grid point: one blocked Cholesky inverse (n³), per low-rank model one
    randomized eigensolve at the largest k (5 applications of an n × n matrix to
    n × 2k_max), and held-out scoring (full rank: nnz(fold-in)·n flops plus one pass
    of C over the network; low rank: nnz·k + n_held·n·k).
    """

    def __init__(self, store, *, n_valid=0.1, n_test=0.1, seed: int = 0, min_items: int = 5,
                 target_fraction: float = 0.2, dtype: str = "float32", block_size: int | None = None,
                 client=None, split: Split | None = None, backend: str = "dask", memory_limit: int | None = None,
                 storage_options=None):
        from edlae_dask.dense.gram import gram
        from edlae_dask.io.interactions import InteractionStore, open_interactions
        from edlae_dask.planning import MAX_BLOCK_SIZE

        t0 = time.perf_counter()
        self.store = (store if isinstance(store, InteractionStore)
                      else open_interactions(store, storage_options=storage_options))
        if dtype not in ("float32", "float64"):
            raise ParameterError(f"The 'dtype' parameter must be 'float32' or 'float64'. Got {dtype!r} instead.")
        self.dtype = np.dtype(dtype)
        if backend not in ("dask", "dense"):
            raise ParameterError(f"The 'backend' parameter must be 'dask' or 'dense'. Got {backend!r} instead.")
        self.backend = backend
        self.client = client
        self.split_ = split if split is not None else strong_generalization_split(
            self.store, n_valid=n_valid, n_test=n_test, seed=seed, min_items=min_items,
            target_fraction=target_fraction, client=client)
        n = int(self.split_.items.size)
        if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral)
                                       or not 1 <= block_size <= MAX_BLOCK_SIZE):
            raise ParameterError(f"The 'block_size' parameter must be an int in [1, {MAX_BLOCK_SIZE}]. "
                                 f"Got {block_size!r}.")
        self.block_size = int(block_size or min(n, 2048 if n <= 40_000 else 4096))
        for name, h in (("validation", self.split_.valid), ("test", self.split_.test)):
            if h.n_users == 0:
                raise ParameterError(
                    f"no {name} user has >= {self.split_.min_items} items among the kept items; raise "
                    f"n_{'valid' if name == 'validation' else 'test'} or lower min_items"
                )
        t_split = time.perf_counter() - t0
        log.info("split: %s", self.split_.summary())
        t1 = time.perf_counter()
        G = gram(self.store, block_size=self.block_size, dtype=self.dtype,
                 users=self.split_.train_users, items=self.split_.items)
        if backend == "dense":
            self._init_dense(G, memory_limit)
        else:
            self._check_shared_memory(n)
            with self._scheduler():
                self.gram_ = self._persist(G)
                self.diag_g_ = np.asarray(da.diagonal(self.gram_).compute(), dtype=np.float64)
        t_gram = time.perf_counter() - t1
        sv, st = self.split_.valid, self.split_.test
        self._held = put_heldout(sp.vstack([sv.fold_in, st.fold_in], format="csr"),
                                 sp.vstack([sv.targets, st.targets], format="csr"), sv.n_users, self.dtype,
                                 None if backend == "dense" else client)
        log.info("gram of %d training users over %d items in %.2f s (blocks of %d, %s), persisted for the whole grid",
                 self.split_.train_users.size, n, t_gram, self.block_size, self.dtype)
        self.timings_ = {"split": t_split, "gram": t_gram}

    # ----------------------------------------------------------------- plumbing

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _init_dense(self, G: da.Array, memory_limit: int | None) -> None:
        """The dense backend's Gram: one C-ordered array, filled block by block (peak n² + a few blocks)."""
        from edlae_dask.cluster import cluster_memory

        n = self.n_items
        self._available = int(memory_limit if memory_limit is not None else cluster_memory(None)[0])
        plan = plan_memory(n, 0, self.dtype.itemsize, self._available)
        if plan.total_bytes > self._available:
            raise MemoryBudgetError(
                f"the dense evaluation of {n} items in {self.dtype} needs at least {plan.describe()}. "
                "Use dtype float32, fewer items, or the Dask backend on a cluster (backend='dask')."
            )
        dense = np.empty((n, n), dtype=self.dtype)
        with dask.config.set(scheduler="threads"):
            da.store(G, dense, lock=False)
        self._ws = DenseWorkspace(dense, plan)
        self.gram_ = as_dask(dense, G.chunks, f"edlae-eval-dense-gram-{time.time_ns()}")
        self.diag_g_ = np.diagonal(dense).astype(np.float64)
        self._ws.log_stage("gram", 0.0)

    def close(self) -> None:
        """Release the persisted Gram and held-out data."""
        for name in ("gram_", "_held", "_ws"):
            if hasattr(self, name):
                delattr(self, name)

    @property
    def n_items(self) -> int:
        return int(self.split_.items.size)

    def _scheduler(self):
        if self.client is not None:
            return self.client.as_current()
        return dask.config.set(scheduler="threads")

    def _persist(self, x):
        with self._scheduler():
            return persist(x, self.client)

    def _check_shared_memory(self, n: int) -> None:
        from edlae_dask.cluster import cluster_memory

        total, _, n_workers = cluster_memory(self.client)
        need = 3.5 * n * n * self.dtype.itemsize  # the Gram plus one grid point's inverse and student
        if need > 0.75 * total:
            raise MemoryBudgetError(
                f"evaluating {n} items in {self.dtype} needs about {need / 2**30:.1f} GiB (the shared Gram plus one "
                f"grid point's n x n inverse and student matrix), but the cluster offers {total / 2**30:.1f} GiB over "
                f"{n_workers} workers (75 % usable). Use dtype float32, fewer items, or more workers."
            )

    def concurrency(self, n_points: int, k_max: int, max_concurrent: int | None = None) -> tuple[int, dict]:
        """How many grid points may run at once, from a memory estimate; returns (count, estimate)."""
        from edlae_dask.cluster import cluster_memory

        n, b = self.n_items, self.dtype.itemsize
        total, smallest, n_workers = cluster_memory(self.client)
        l_max = min(n, 2 * k_max) if k_max else 0
        shared = n * n * b
        # per point: C (n²), one student matrix M (n²), the inverse's temporaries (~1.5 n²: halves of L, W
        # and P's diagonal copies), the eigensolver's and factors' n × l panels
        per_point = int(3.5 * n * n * b + 10 * n * l_max * b)
        budget = 0.6 * total - shared
        by_memory = max(1, int(budget // per_point))
        threads = _cluster_threads(self.client)
        limit = max_concurrent if max_concurrent is not None else max(2, threads)
        count = max(1, min(n_points, by_memory, int(limit)))
        est = {"per_point_bytes": per_point, "shared_bytes": shared, "cluster_bytes": int(total),
               "by_memory": by_memory, "threads": threads, "concurrent": count}
        return count, est

    # ----------------------------------------------------------------- the grid

    def run(self, *, models=("edlae", "lae", "full-rank", "ease"), ks=(), lams=(20.0,), ps=(0.25,),
            max_concurrent: int | None = None, n_top: int = 100, batch_rows: int = DEFAULT_BATCH_ROWS,
            n_oversamples: int | None = None, n_power_iter: int | None = None, eig_seed: int = 0,
            exact_maxiter: int = 300, exact_points: str = "chosen", max_items_exact: int = 4000) -> EvaluationReport:
        """Evaluate ``models`` over the grid ``lams × ps`` (× ``ks`` for low-rank models).

        Parameters
        ----------
        models : sequence of str or comma-separated str, default=("edlae", "lae", "full-rank", "ease")
            Any of ``edlae`` (Algorithm 1), ``lae`` (unconstrained low-rank LAE, Jin et
            al. 2021), ``full-rank`` (the EDLAE teacher B̂), ``ease`` (B̂ at p = 0; its
            grid is ``lams``), ``edlae-opt`` (the numerical optimum of eq. 14 started
            from Algorithm 1 at its chosen point; dense, n <= ``max_items_exact``).
        ks : sequence of int
            Ranks of the low-rank models, 0 < k < n_items.
        lams : sequence of float, default=(20.0,)
            λ values, 0 <= λ <= 1e12 (:data:`edlae_dask.config.MAX_LAM`).
        ps : sequence of float, default=(0.25,)
            Dropout probabilities, 0 <= p <= 1 - 1e-6 (:data:`edlae_dask.config.MAX_P`).
        max_concurrent : int, optional
            Grid points in flight at once (default: the cluster's threads, at least
            2, capped by the memory estimate of :meth:`concurrency`).
        n_top : int, default=100
            Length of the ranked lists (nDCG@100 needs 100).
        batch_rows : int, default=4096
            Held-out users scored per block product.
        n_oversamples, n_power_iter, eig_seed
            Randomized eigensolver settings (defaults: l = 2k, 3 power iterations).
        exact_maxiter : int, default=300
            L-BFGS iterations of ``edlae-opt``.
        exact_points : {"chosen", "grid"}, default="chosen"
            Where ``edlae-opt`` is optimised: at Algorithm 1's chosen (λ, p) per k
            (objective ratio and nDCG difference at equal Λ), or at every grid point,
            with its own (λ, p) chosen on validation users like the other models (the
            paper's protocol: Λ tuned per model and rank). One dense task per (k, λ, p),
            all submitted together.
        max_items_exact : int, default=4000
            Largest item count for which ``edlae-opt`` runs.

        Returns
        -------
        EvaluationReport
        """
        t0 = time.perf_counter()
        models = parse_models(models)
        n = self.n_items
        lams = _check_floats(lams, "lams", lam_ok, LAM_BOUND)
        ps = _check_floats(ps, "ps", p_ok, P_BOUND)
        ks = _check_ks(ks, n)
        low = [m for m in models if m in ("edlae", "lae")]
        if low and not ks:
            raise ParameterError(f"models {', '.join(low)} are low rank: give at least one rank k (ks=…, --k).")
        if "edlae-opt" in models and n > max_items_exact:
            raise ParameterError(
                f"edlae-opt optimises dense n x n matrices in memory; {n} items exceed max_items_exact="
                f"{max_items_exact}. Leave it out, or raise max_items_exact if memory allows (~8 n² bytes x 6)."
            )
        if exact_points not in ("chosen", "grid"):
            raise ParameterError(f"The 'exact_points' parameter must be 'chosen' or 'grid'. Got {exact_points!r}.")
        if n_top < 100:
            raise ParameterError(f"n_top must be >= 100 (nDCG@100). Got {n_top!r}.")
        points = _plan(models, lams, ps)
        k_max = max(ks) if (ks and low) else 0
        if self.backend == "dense":
            plan = plan_memory(n, k_max, self.dtype.itemsize, self._available)
            self._ws.set_plan(plan)
            log.info("dense backend, one grid point at a time: %s", plan.describe())
            count = 1
            est = {"backend": "dense", "concurrent": 1, "per_point_bytes": plan.total_bytes - plan.gram_bytes,
                   "shared_bytes": plan.gram_bytes, "cluster_bytes": plan.available_bytes, **plan.as_dict()}
        else:
            count, est = self.concurrency(len(points), k_max, max_concurrent)
        log.info("grid: %d (λ, p) points for %s, ranks %s; %d at once (memory estimate %.2f GiB per point, "
                 "%.2f GiB shared, %.2f GiB in the cluster)", len(points), ", ".join(models), list(ks) or "-",
                 count, est["per_point_bytes"] / 2**30, est["shared_bytes"] / 2**30, est["cluster_bytes"] / 2**30)
        opts = dict(n_top=n_top, batch_rows=batch_rows, n_oversamples=n_oversamples, n_power_iter=n_power_iter,
                    eig_seed=eig_seed)
        grid: list[GridResult] = []
        t_grid = time.perf_counter()
        with self._scheduler(), _labelled_by_grid_point():
            if count == 1:
                for i, (pt, tasks) in enumerate(points.items()):
                    grid += self._run_point(pt, tasks, ks, opts)
                    log.info("grid point %d/%d (λ=%g, p=%g) done", i + 1, len(points), *pt)
            else:
                grid += self._run_parallel(points, ks, opts, count)
        t_grid = time.perf_counter() - t_grid
        order = {m: i for i, m in enumerate(models)}
        grid.sort(key=lambda g: (order[g.model], g.k or 0, lams.index(g.lam), ps.index(g.p) if g.p in ps else -1))
        rows = _choose(grid)
        t_exact = 0.0
        if "edlae-opt" in models:
            t1 = time.perf_counter()
            with self._scheduler():
                chosen, exact_grid = self._exact(rows, ks, lams, ps, opts, exact_maxiter, exact_points)
            rows += chosen
            grid += exact_grid
            t_exact = time.perf_counter() - t1
            rows.sort(key=lambda r: (order[r.model], r.k or 0))
        rows.insert(0, popularity_row(self.split_, training_popularity(self.store, self.split_, self.client), n_top))
        timings = {**self.timings_, "grid": t_grid, "exact_optimum": t_exact,
                   "run": time.perf_counter() - t0}
        settings = {"models": list(models), "ks": list(ks), "lams": list(lams), "ps": list(ps),
                    "dtype": self.dtype.name, "block_size": self.block_size, "n_top": n_top,
                    "n_oversamples": n_oversamples, "n_power_iter": n_power_iter, "eig_seed": eig_seed,
                    "exact_maxiter": exact_maxiter, "exact_points": exact_points, "concurrency": est,
                    "backend": self.backend,
                    "selected_by": f"valid {SELECT_BY}"}
        return EvaluationReport(rows=rows, grid=grid, split=self.split_.summary(), settings=settings, timings=timings)

    def _run_parallel(self, points: dict, ks, opts, count: int) -> list:
        out: list = []

        def job(pt, tasks):
            ctx = self.client.as_current() if self.client is not None else contextlib.nullcontext()
            with ctx:
                return self._run_point(pt, tasks, ks, opts)

        with concurrent.futures.ThreadPoolExecutor(max_workers=count, thread_name_prefix="edlae-grid") as pool:
            futs = {pool.submit(job, pt, tasks): pt for pt, tasks in points.items()}
            try:
                for i, fut in enumerate(concurrent.futures.as_completed(futs)):
                    out += fut.result()
                    log.info("grid point %d/%d (λ=%g, p=%g) done", i + 1, len(points), *futs[fut])
            except BaseException:
                for f in futs:
                    f.cancel()
                raise
        return out

    def _run_point(self, pt: tuple, tasks: set, ks, opts) -> list:
        lam, p = pt
        t0 = time.perf_counter()
        point = self._point_dense if self.backend == "dense" else self._point_dask
        try:
            with _grid_point(f"λ={lam:g}, p={p:g}"):  # this thread's lines name the point (the pool's threads too)
                values, eig_info, point_extra = point(pt, tasks, ks, opts)
        except EdlaeError as exc:
            raise type(exc)(f"grid point λ={lam:g}, p={p:g}: {exc}") from exc
        except Exception as exc:
            died = worker_died(exc, f"evaluating grid point λ={lam:g}, p={p:g}",
                               memory_fix="lower --max-concurrent or --block-size, or add memory")
            if died is not None:
                raise died from exc
            raise
        seconds = time.perf_counter() - t0
        out = []
        nv = self._held.n_valid
        for key, per_user in values.items():
            if key == "full":
                names = [m for m in FULL_RANK if m in tasks]
                k = None
            else:
                names, k = [key[0]], key[1]
            valid = {m: summarize(per_user[:nv, i]) for i, m in enumerate(METRIC_NAMES)}
            test = {m: summarize(per_user[nv:, i]) for i, m in enumerate(METRIC_NAMES)}
            extra = {"point_seconds": seconds, **point_extra}
            if key != "full":
                extra.update(eig_info[key[0]])
            for m in names:
                out.append(GridResult(model=m, k=k, lam=lam, p=p, valid=valid, test=test, extra=dict(extra),
                                      test_per_user=per_user[nv:]))
        return out

    def _point_dask(self, pt: tuple, tasks: set, ks, opts) -> tuple[dict, dict, dict]:
        """One grid point as Dask graphs on the cluster (inverse, students, scores all persisted there)."""
        from edlae_dask.dense.student import student_factors, student_matrix
        from edlae_dask.dense.teacher import regularize
        from edlae_dask.linalg import randomized_eigh, spd_inverse

        lam, p = pt
        held = self._held
        P = regularize(self.gram_, lam, p)
        C = self._persist(spd_inverse(P))
        diag_c = np.asarray(da.diagonal(C).compute())
        pending: dict = {}
        if tasks & set(FULL_RANK):
            d = scaling("full-rank", diag_c, self.diag_g_, lam, p, self.dtype)
            pending["full"] = self._submit(fullrank_metrics(C, d, held, n_top=opts["n_top"],
                                                            batch_rows=opts["batch_rows"]))
        eig_info = {}
        for model in ("edlae", "lae"):
            if model not in tasks:
                continue
            d = scaling(model, diag_c, self.diag_g_, lam, p, self.dtype)
            M = self._persist(student_matrix(P, C, d))
            with _grid_point(f"λ={lam:g}, p={p:g}, {model}"):
                eig = randomized_eigh(lambda Q, M=M: M @ Q, self.n_items, max(ks), row_chunks=M.chunks[0],
                                      dtype=self.dtype, n_oversamples=opts["n_oversamples"],
                                      n_power_iter=opts["n_power_iter"], seed=opts["eig_seed"])
            del M
            V = eig.eigenvectors
            U = self._persist(student_factors(C, d, V))
            eig_info[model] = {"ritz_residual_max": float(np.max(eig.ritz_residuals)),
                               "n_matvecs": eig.n_matvecs}
            for k, x in lowrank_metrics(U, V, ks, held, n_top=opts["n_top"],
                                        batch_rows=opts["batch_rows"]).items():
                pending[(model, k)] = self._submit(x)
        return self._gather(pending), eig_info, {}

    def _point_dense(self, pt: tuple, tasks: set, ks, opts) -> tuple[dict, dict, dict]:
        """One grid point on the dense backend: each stage in the workspace's buffers, scored as it finishes.

        Scores are computed right after the full-rank inverse and after each low-rank
        model's factors, so that no two models' n × k_max factors are alive at once.
        """
        lam, p = pt
        ws, held = self._ws, self._held
        where = f"λ={lam:g}, p={p:g}"
        tag = f"{lam:g}-{p:g}-{time.time_ns()}"  # unique dask names: the buffers are reused
        blocks = self.gram_.chunks[0]
        lam_diag = emphasis_diagonal(self.diag_g_, lam, p)
        values, eig_info, stages = {}, {}, []

        def score(graphs: dict) -> None:
            keys = list(graphs)
            values.update(zip(keys, dask.compute(*[graphs[k] for k in keys], scheduler="threads")))

        t = time.perf_counter()
        C = ws.inverse(lam_diag)
        diag_c = np.diagonal(C).copy()
        stages.append(ws.log_stage(f"{where}: P formed and inverted in place", time.perf_counter() - t))
        if tasks & set(FULL_RANK):
            t = time.perf_counter()
            d = scaling("full-rank", diag_c, self.diag_g_, lam, p, self.dtype)
            score({"full": fullrank_metrics(as_dask(C, (blocks, blocks), f"edlae-eval-dense-C-{tag}"), d, held,
                                            n_top=opts["n_top"], batch_rows=opts["batch_rows"])})
            stages.append(ws.log_stage(f"{where}: full rank scored", time.perf_counter() - t))
        for model in ("edlae", "lae"):
            if model not in tasks:
                continue
            d = scaling(model, diag_c, self.diag_g_, lam, p, self.dtype)
            t = time.perf_counter()
            apply = ws.student(d, lam_diag)
            form = "formed" if ws.plan.student_matrix else "applied implicitly"
            stages.append(ws.log_stage(f"{where}: {model} student matrix {form}", time.perf_counter() - t))
            t = time.perf_counter()
            with _grid_point(f"{where}, {model}"):
                eig = eigensolve(apply, self.n_items, max(ks), self.dtype, n_oversamples=opts["n_oversamples"],
                                 n_power_iter=opts["n_power_iter"], seed=opts["eig_seed"])
            V = np.ascontiguousarray(eig.eigenvectors.compute(scheduler="threads"))
            eig_info[model] = {"ritz_residual_max": float(np.max(eig.ritz_residuals)), "n_matvecs": eig.n_matvecs}
            del eig
            stages.append(ws.log_stage(f"{where}: {model} eigensolve at k={max(ks)}", time.perf_counter() - t))
            t = time.perf_counter()
            U = ws.factors(d, V)
            chunks = (blocks, (V.shape[1],))
            score({(model, k): g for k, g in lowrank_metrics(
                as_dask(U, chunks, f"edlae-eval-dense-U-{model}-{tag}"),
                as_dask(V, chunks, f"edlae-eval-dense-V-{model}-{tag}"), ks, held,
                n_top=opts["n_top"], batch_rows=opts["batch_rows"]).items()})
            del U, V
            stages.append(ws.log_stage(f"{where}: {model} factors and scores", time.perf_counter() - t))
        return values, eig_info, {"dense_stages": stages}

    def _submit(self, x):
        if self.client is not None:
            return self.client.compute(x)
        return x

    def _gather(self, pending: dict) -> dict:
        if self.client is not None:
            keys = list(pending)
            vals = self.client.gather([pending[k] for k in keys])
            return dict(zip(keys, vals))
        keys = list(pending)
        vals = dask.compute(*[pending[k] for k in keys], scheduler="threads")
        return dict(zip(keys, vals))

    # ----------------------------------------------------------------- exact optimum

    def _exact(self, rows: list, ks, lams, ps, opts, maxiter: int, where: str) -> tuple[list, list]:
        """edlae-opt: L-BFGS on eq. 14 from the closed form, one task per (k, λ, p), all submitted together."""
        G = np.asarray(self._ws.G if self.backend == "dense" else self.gram_.compute(), dtype=np.float64)
        chunks = self.gram_.chunks[0]
        nv = self._held.n_valid
        jobs = []
        for k in ks:
            if where == "chosen":
                base = next(r for r in rows if r.model == "edlae" and r.k == k)
                jobs.append((k, base.lam, base.p))
            else:
                jobs += [(k, lam, p) for lam in lams for p in ps]
        if self.client is not None:
            [g] = self.client.scatter([G], broadcast=True)
            futs = [self.client.submit(_exact_point, g, lam, p, k, maxiter, pure=False) for k, lam, p in jobs]
            solved = self.client.gather(futs)
        else:
            solved = [_exact_point(G, lam, p, k, maxiter) for k, lam, p in jobs]
        pend = {}
        for (k, lam, p), res in zip(jobs, solved):
            log.info("edlae-opt k=%d (λ=%g, p=%g): eq. 14 objective %.6g -> %.6g (ratio %.6f) in %d iterations, %.1f s",
                     k, lam, p, res["objective_start"], res["objective"], res["ratio"], res["n_iter"], res["seconds"])
            for name in ("closed", "opt"):
                U, V = res[name]
                Ud = da.from_array(U.astype(self.dtype), chunks=(chunks, (k,)))
                Vd = da.from_array(V.astype(self.dtype), chunks=(chunks, (k,)))
                pend[(k, lam, p, name)] = self._submit(lowrank_metrics(
                    Ud, Vd, [k], self._held, n_top=opts["n_top"], batch_rows=opts["batch_rows"])[k])
        vals = self._gather(pend)
        grid = []
        for (k, lam, p), res in zip(jobs, solved):
            opt, closed = vals[(k, lam, p, "opt")], vals[(k, lam, p, "closed")]
            sv = {m: summarize(opt[:nv, i]) for i, m in enumerate(METRIC_NAMES)}
            st = {m: summarize(opt[nv:, i]) for i, m in enumerate(METRIC_NAMES)}
            extra = {key: v for key, v in res.items() if key not in ("closed", "opt")}
            extra.update({
                "objective_eq14_closed_form": res["objective_start"],
                "objective_eq14_optimum": res["objective"],
                "objective_ratio": res["ratio"],
                "closed_form_exact_eigh_valid_ndcg": float(np.nanmean(closed[:nv, 0])),
                "closed_form_exact_eigh_test_ndcg": float(np.nanmean(closed[nv:, 0])),
                "valid_ndcg_diff": sv[SELECT_BY].mean - float(np.nanmean(closed[:nv, 0])),
                "test_ndcg_diff": st["ndcg@100"].mean - float(np.nanmean(closed[nv:, 0])),
                "test_ndcg_diff_se": paired_difference(opt[nv:, 0], closed[nv:, 0]).se,
            })
            grid.append(GridResult(model="edlae-opt", k=k, lam=lam, p=p, valid=sv, test=st, extra=extra,
                                   test_per_user=opt[nv:]))
        chosen = _choose(grid)
        for r in chosen:
            base = next(b for b in rows if b.model == "edlae" and b.k == r.k)
            r.extra["test_ndcg_minus_edlae_row"] = r.test["ndcg@100"].mean - base.test["ndcg@100"].mean
            r.extra["exact_points"] = where
        return chosen, grid


def _exact_point(G: np.ndarray, lam: float, p: float, k: int, maxiter: int) -> dict:
    """One edlae-opt problem (runs as a task): closed form by exact eigh, then L-BFGS on eq. 14."""
    from threadpoolctl import threadpool_limits

    from edlae_dask.evaluation.objectives import closed_form_dense, exact_lowrank_optimum, objective_eq15

    with contextlib.ExitStack() as stack:
        if _on_worker():
            stack.enter_context(threadpool_limits(1))  # single-threaded workers: one BLAS thread each
        P = G + np.diag(emphasis_diagonal(np.diag(G), lam, p))
        U0, V0, B, _ = closed_form_dense(P, k)
        opt = exact_lowrank_optimum(P, B, U0, V0, maxiter=maxiter)
        return {
            **opt.as_dict(),
            "objective_eq15_closed_form": objective_eq15(P, B, U0, V0),
            "objective_eq15_optimum": objective_eq15(P, B, opt.U, opt.V),
            "closed": (U0, V0),
            "opt": (opt.U, opt.V),
        }


def _on_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def popularity_row(split: Split, popularity: np.ndarray, n_top: int = 100) -> GridResult:
    """The popularity baseline's row of a report (:mod:`~edlae_dask.evaluation.popularity`) on ``split``.

    Cost: one sort of the n kept items, then O(n_top + fold-in) per held-out user; no grid.
    """
    from edlae_dask.evaluation.popularity import popularity_metrics

    per = {name: popularity_metrics(popularity, h.fold_in, h.targets, n_top)
           for name, h in (("valid", split.valid), ("test", split.test))}
    return GridResult(model="popularity", k=None, lam=None, p=None,
                      valid={m: summarize(per["valid"][:, i]) for i, m in enumerate(METRIC_NAMES)},
                      test={m: summarize(per["test"][:, i]) for i, m in enumerate(METRIC_NAMES)},
                      extra={"score": "training users per item, fold-in items excluded"},
                      test_per_user=per["test"])


def paired_difference(a, b, metric: str = SELECT_BY) -> MetricSummary:
    """Mean of ``a − b`` over the same test users, with its paired standard error.

    Both models are scored on the same held-out users, so the difference's standard
    error is that of the per-user differences — much smaller than the two models' own
    errors combined where they rank alike (the users' spread in difficulty cancels).

    Parameters
    ----------
    a, b : GridResult or ndarray
        Results of one :meth:`Evaluator.run` (or of runs on the same split), or their
        per-user test values of ``metric`` (1-D, the test users in the same order).
    metric : str
        One of :data:`METRIC_NAMES`.
    """
    def values(r):
        if isinstance(r, GridResult):
            if r.test_per_user is None:
                raise ParameterError(f"{r.model} (k={r.k}, λ={r.lam:g}, p={r.p:g}) has no per-user test values "
                                 "(results read back from JSON keep only the summaries); rerun it")
            return r.test_per_user[:, METRIC_NAMES.index(metric)]
        return np.asarray(r, dtype=np.float64)

    if metric not in METRIC_NAMES:
        raise ParameterError(f"metric must be one of {METRIC_NAMES}, not {metric!r}")
    va, vb = values(a), values(b)
    if va.shape != vb.shape:
        raise ParameterError(f"paired values need the same test users: {va.shape} vs {vb.shape}")
    return summarize(np.asarray(va, dtype=np.float64) - np.asarray(vb, dtype=np.float64))


def _plan(models, lams, ps) -> dict:
    """(λ, p) -> set of models to evaluate there; EASE adds its p = 0 points."""
    points: dict = {}
    for lam in lams:
        for p in ps:
            tasks = {m for m in models if m in ("edlae", "lae", "full-rank")}
            if tasks:
                points.setdefault((lam, p), set()).update(tasks)
        if "ease" in models:
            points.setdefault((lam, 0.0), set()).add("ease")
    return points


def _choose(grid: list) -> list:
    """Per (model, k), the first point with the best validation nDCG@100."""
    best: dict = {}
    for g in grid:
        key = (g.model, g.k)
        score = g.valid[SELECT_BY].mean
        if key not in best or score > best[key].valid[SELECT_BY].mean:
            best[key] = g
    return list(best.values())


# --------------------------------------------------------------------------- one call


def evaluate(store, *, models=("edlae", "lae", "full-rank", "ease"), ks=(), lams=(20.0,), ps=(0.25,),
             n_valid=0.1, n_test=0.1, seed: int = 0, min_items: int = 5, target_fraction: float = 0.2,
             dtype: str = "float32", block_size: int | None = None, client=None, backend: str = "dask",
             memory_limit: int | None = None, storage_options=None, **run_options) -> EvaluationReport:
    """Split, build the shared Gram, evaluate ``models`` over the grid, report on test users.

    The one-call form of ``Evaluator(store, …).run(…)``; see :class:`Evaluator` and
    :meth:`Evaluator.run` for the parameters. ``client=None`` runs on Dask's
    threaded scheduler.

    Examples
    --------
    >>> rep = evaluate("interactions.zarr", ks=[50, 200], lams=[50, 200], ps=[0, 0.25])   # doctest: +SKIP
    >>> print(rep.table())                                                                # doctest: +SKIP
    """
    _check_floats(lams, "lams", lam_ok, LAM_BOUND)  # before the split and the Gram: a bad grid costs nothing
    _check_floats(ps, "ps", p_ok, P_BOUND)
    with Evaluator(store, n_valid=n_valid, n_test=n_test, seed=seed, min_items=min_items,
                   target_fraction=target_fraction, dtype=dtype, block_size=block_size, client=client,
                   backend=backend, memory_limit=memory_limit, storage_options=storage_options) as ev:
        return ev.run(models=models, ks=ks, lams=lams, ps=ps, **run_options)

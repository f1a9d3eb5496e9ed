"""Planning a training run before any work: block sizes, memory estimates, the path that fits.

Everything here is arithmetic on the problem's shape and the cluster's memory; no
data is read and nothing is computed on the cluster. :func:`choose_path` is called
by :func:`edlae_dask.pipeline.train` once the interaction store is open and the
cluster is known, and raises :class:`MemoryBudgetError` (naming what fits and how
to make it fit) when the run cannot fit.

The estimates, with ``l`` the eigensolver's panel width and ``s`` the itemsize:

====================  ===========================================================
dense path            ``2.3·n²·s`` (G or M, and C) ``+ 8·n·l·s`` (panels)
scalable path         per worker, with ``w`` workers and ``f`` its share of the shards:
                      ``3·12·nnz·f`` (its X_s, X_sᵀ) ``+ (24/w + 8)·n·K`` (neighbour
                      lists, B, Bᵀ) ``+ max((3·n + 5·n/w + users·f)·l·s, 48·e)``
                      (panels, or a neighbour task of ``e`` entries)
====================  ===========================================================

Their measured peaks against these estimates are in ``benchmarks/results/`` (table1,
scalable-scale).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from edlae_dask.errors import MemoryBudgetError

log = logging.getLogger("edlae_dask.planning")

#: Largest side of the dense path's square blocks. Larger blocks buy no speed, and a single
#: float64 ``potrf`` at n ≥ 16,000 has crashed OpenBLAS's SkylakeX kernels: every LAPACK call stays small.
MAX_BLOCK_SIZE = 8192
#: Share of the workers' summed memory limits a run may plan to use (the rest: process baselines, spills).
USABLE_MEMORY = 0.75


def default_block_size(n_items: int) -> int:
    """The dense path's block side when none is given: 2,048 up to 40,000 items, 4,096 above."""
    return int(min(n_items, 2048 if n_items <= 40_000 else 4096))


def dense_memory_estimate(n_items: int, k: int, itemsize: int, n_oversamples: int = 0) -> int:
    """Bytes the dense path holds at its peak: G/M and C (n² each) plus O(n·l) panels."""
    l = min(n_items, k + max(n_oversamples, k))
    return int(2.3 * n_items**2 * itemsize + 8 * n_items * l * itemsize)


#: Most work (stored entries of G's rows) of one neighbour task; bounds its memory (about 48 bytes an entry: the
#: summed pieces, then the sort of the rows' entries).
NEIGHBOR_TASK_ENTRIES = 10_000_000
#: Least work of one neighbour task: below it, per-task overhead outweighs the memory saved.
NEIGHBOR_TASK_MIN_ENTRIES = 1_000_000


def neighbor_task_entries(nnz: int, n_workers: int) -> int:
    """Work of one neighbour task: about one worker's share of the interactions, within the bounds above.

    A task's working set (~48 bytes an entry) then stays near the memory its worker
    holds for its shards (~24–36 bytes an interaction), so the stage's per-worker peak
    falls as workers are added instead of being fixed by a constant budget.
    """
    return int(min(NEIGHBOR_TASK_ENTRIES, max(NEIGHBOR_TASK_MIN_ENTRIES, nnz // max(1, n_workers))))


def scalable_memory_estimate(n_items: int, n_users: int, nnz: int, k: int, neighbors: int, itemsize: int,
                             n_workers: int = 1, n_oversamples: int | None = None, n_shards: int | None = None) -> int:
    """Bytes one worker of the scalable path holds at its peak (an estimate).

    The path is partitioned (:mod:`edlae_dask.scalable.pipeline`): a worker holds its
    share of the user shards, X_s and X_sᵀ (12 bytes an interaction each, and a
    transient copy while a shard is transposed); its share of the neighbour lists, B
    and Bᵀ (8 bytes an entry each) plus the neighbour lists one teacher block names
    (at most all of them); then the larger of a neighbour task's working set
    (:func:`neighbor_task_entries`, 48 bytes an entry) and the eigensolver's panels: the
    three n × l panels each product broadcasts, its share of the five row-blocked
    n × l panels and its shards' users × l panel.
    A share is ⌈shards / workers⌉ shards (``n_shards`` unknown: 1 / workers). The
    measured peaks against it are in ``benchmarks/results/`` (scale-out, scalable-scale).
    """
    w = max(1, n_workers)
    share = math.ceil(n_shards / w) / n_shards if n_shards else 1 / w
    l = min(n_items, k + (n_oversamples if n_oversamples is not None else max(10, k)))
    interactions = 3 * 12 * nnz * share
    sparse_model = (24 / w + 8) * n_items * neighbors
    panels = (3 * n_items + 5 * n_items / w + n_users * share) * l * itemsize
    neighbor_task = 48 * neighbor_task_entries(nnz, w)
    return int(interactions + sparse_model + max(panels, neighbor_task))


def check_memory(n_items: int, params, total_bytes: int, n_workers: int, worker_bytes: int) -> int:
    """Raise :class:`MemoryBudgetError` if the dense path cannot fit; return the estimate.

    ``params`` is a :class:`edlae_dask.config.TrainParams`.
    """
    itemsize = np.dtype(params.dtype).itemsize
    need = dense_memory_estimate(n_items, params.k, itemsize)
    budget = int(USABLE_MEMORY * total_bytes)
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


def choose_path(store, params, total_bytes: int, n_workers: int, worker_bytes: int) -> tuple[str, int]:
    """Pick the training path before any work; return (path, estimated peak bytes).

    ``auto`` takes the dense path (exact Algorithm 1) when its two n × n matrices fit
    75 % of the cluster's memory, and the scalable path otherwise. Raises
    :class:`MemoryBudgetError` when the chosen path cannot fit.

    Parameters
    ----------
    store : InteractionStore
        Only its shape (``n_items``, ``n_users``, ``nnz``) is read.
    params : TrainParams
    total_bytes, n_workers, worker_bytes : int
        The workers' summed memory limit, their number, and the smallest limit
        (:func:`edlae_dask.cluster.cluster_memory`).
    """
    n = store.n_items
    itemsize = np.dtype(params.dtype).itemsize
    budget = int(USABLE_MEMORY * total_bytes)
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
                                    n_workers, params.n_oversamples, getattr(store, "n_shards", None))
    per_worker = int(USABLE_MEMORY * worker_bytes)
    if need > per_worker:
        raise MemoryBudgetError(
            f"the scalable path needs about {need / 2**30:.1f} GiB on each of {n_workers} workers for "
            f"{store.n_users} users x {n} items ({store.nnz} interactions, K={params.neighbors} neighbours, "
            f"k={params.k}), but the smallest worker has {worker_bytes / 2**30:.1f} GiB (75 % usable: "
            f"{per_worker / 2**30:.1f} GiB). Lower --neighbors or --k, use --dtype float32, add workers (the "
            "interactions are spread over them), or give each worker more memory."
        )
    log.info("path: scalable: K=%d neighbours per item; estimated peak memory %.2f GiB per worker of %.2f GiB usable",
             min(params.neighbors, n - 1), need / 2**30, per_worker / 2**30)
    return "scalable", need

"""``train()``: one entry for both training paths, from an interaction store to a published factor store.

    open the interaction store                   io/interactions.py
    plan: path, memory, block size               planning.py
    run the path's stages                        dense/pipeline.py  or  scalable/pipeline.py
        each returns U, V (dask arrays, persisted) and the eigensolver's result
    publish U, V, item ids, eigen data           io/factors.py (a new version, then LATEST)

A path is a function ``run(store, params, ctx) -> PathResult``; a
:class:`edlae_dask.runtime.StageContext` carries what every stage needs from the run (where to compute, the stage log,
progress, checkpoints). A new path plugs in by adding one such function to
:data:`PATHS` and a branch to :func:`edlae_dask.planning.choose_path`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import dask.array as da
import numpy as np

from edlae_dask.config import TrainParams
from edlae_dask.dense.pipeline import run_dense
from edlae_dask.errors import worker_died
from edlae_dask.runtime import PathResult, StageContext
from edlae_dask.scalable.pipeline import run_scalable

log = logging.getLogger("edlae_dask.pipeline")


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


#: The training paths: name -> ``run(store, params, ctx) -> PathResult``.
PATHS: dict[str, Callable] = {"dense": run_dense, "scalable": run_scalable}


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
    stage_log : StageLog, optional
        Where the stages record their time and memory (default: a new one on ``client``).
    checkpoint_dir : str or os.PathLike, optional
        Dense path: write the Gram and the inverse there as they are computed, and
        reuse those whose fingerprint (interaction store, dtype, block size; λ, p
        for the inverse) matches, so a killed job resumes after its last finished
        stage (:mod:`edlae_dask.io.checkpoints`); also each group of shards' partial Gram,
        so a retrain after an append recomputes only the changed groups. Must be visible to
        every worker; costs about 2·n²·itemsize bytes of disk plus ⌈shards/4⌉·n²·itemsize/2 for
        the partials. ``None``: no checkpoints. May be a URL.
    storage_options : dict, optional
        fsspec options for the stores given as URLs (default: fsspec's defaults and
        environment). The tasks carry them, so the workers open the stores themselves.

    Returns
    -------
    TrainResult
    """
    from edlae_dask.cluster import cluster_memory
    from edlae_dask.diagnostics import StageLog
    from edlae_dask.io.factors import FactorWriter
    from edlae_dask.io.interactions import InteractionStore, open_interactions
    from edlae_dask.planning import choose_path

    t_start = time.perf_counter()
    store = store if isinstance(store, InteractionStore) else open_interactions(store, storage_options=storage_options)
    n = store.n_items
    params.validate(n)
    block = params.resolved_block_size(n)
    total, smallest, n_workers = cluster_memory(client)
    path, need = choose_path(store, params, total, n_workers, smallest)
    log.info(
        "%s path: %d users x %d items, %d interactions; k=%d, lam=%g, p=%g, %s, %s; "
        "estimated peak memory %.2f GiB%s, the workers' memory limits sum to %.2f GiB",
        path, store.n_users, n, store.nnz, params.k, params.lam, params.p, params.dtype,
        f"blocks of {block}" if path == "dense" else f"K={min(params.neighbors, n - 1)} neighbours",
        need / 2**30, " in all" if path == "dense" else " per worker", total / 2**30,
    )
    writer = (FactorWriter(out, overwrite=overwrite, storage_options=storage_options)
              if out is not None else None)
    ctx = StageContext(client=client, stages=stage_log or StageLog(client), progress=progress, n_workers=n_workers,
                       block_size=block, checkpoint_dir=checkpoint_dir, storage_options=storage_options)
    # every graph of this run goes to the same scheduler, including those the stage
    # functions compute internally (a default distributed client would otherwise win)
    scheduler = dask.config.set(scheduler="threads") if client is None else client.as_current()
    with scheduler:
        try:
            factors = PATHS[path](store, params, ctx)
            result = _result(store, params, factors, path)
            if writer is not None:
                with ctx.stages.stage("publish", f"factor store {out}"):
                    result.version = publish(writer, result, store, ctx)
            result.stages = ctx.stages.as_dict()
            result.seconds = time.perf_counter() - t_start
            peak = max(r.peak_total_bytes for r in ctx.stages.records)
            # the estimate counts the matrices only; the sampled peak includes each process's baseline
            log.info("peak memory %.2f GiB (processes included) against the estimate of %.2f GiB for the matrices",
                     peak / 2**30, need / 2**30)
            return result
        except Exception as exc:
            died = worker_died(exc, "training")
            if died is not None:
                raise died from exc
            raise
        finally:
            if writer is not None and not writer.committed:
                writer.abort()


def _result(store, params: TrainParams, factors: PathResult, path: str) -> TrainResult:
    eig = factors.eig
    return TrainResult(
        U=factors.U,
        V=factors.V,
        eigenvalues=np.asarray(eig.eigenvalues),
        ritz_residuals=np.asarray(eig.ritz_residuals),
        item_ids=store.item_ids(),
        params=params,
        interactions_fingerprint=store.fingerprint,
        eigensolver=dict(n_matvecs=eig.n_matvecs, n_oversamples=eig.n_oversamples, n_power_iter=eig.n_power_iter,
                         method=eig.method, block_size=eig.block_size, n_matvec_columns=eig.n_matvec_columns,
                         converged=eig.converged,
                         ritz_sum_change=eig.ritz_sum_change),
        path=path,
        path_info=factors.info,
    )


def publish(writer, result: TrainResult, store, ctx: StageContext) -> str:
    """Write U, V (by the workers), item ids and eigen data into ``writer``'s new version; commit it."""
    for name, x in (("U", result.U), ("V", result.V)):
        ctx.compute(writer.write_array(name, x, compute=False))
    writer.write_array("item_ids", result.item_ids)
    writer.write_array("eigenvalues", result.eigenvalues)
    writer.write_array("ritz_residuals", result.ritz_residuals)
    return writer.commit(_factor_attrs(result, store, ctx.stages))


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

"""The dense path end to end: exact Algorithm 1 with two n × n matrices spread over the workers.

    gram        G = XᵀX                                   dense/gram.py        (checkpointed, incrementally)
    inverse     P = G + Λ, C = P⁻¹, d = 1 ⊘ diag(C)       dense/teacher.py     (checkpointed)
    student     M = BᵀPB, block by block                  dense/student.py
    eigensolve  V = eig_k(M), U = B·V                     linalg/eigen.py, dense/student.py

Each stage's blocks are persisted on the workers before the next starts, so a lost
worker's blocks are recomputed from their graph (or re-read from the checkpoint),
and the Gram's blocks are released as M's are made: at most two n × n matrices
are held at once (:func:`edlae_dask.planning.dense_memory_estimate`).
"""

from __future__ import annotations

import functools
import logging

import dask.array as da
import numpy as np

from edlae_dask.dense.gram import gram, partial_gram, shard_groups, sum_partials
from edlae_dask.dense.student import panel_operator, row_panels, student_factors, student_matrix
from edlae_dask.dense.teacher import inverse, regularize, teacher_scaling
from edlae_dask.errors import ModelFitError, StoreIntegrityError
from edlae_dask.linalg import randomized_eigh
from edlae_dask.runtime import PathResult

log = logging.getLogger("edlae_dask.dense.pipeline")
#: shards per checkpointed partial Gram (the first level of gram()'s tree sum)
GROUP_SIZE = 4


def run_dense(store, params, ctx):
    """Run the dense path's stages on ``store``; return a :class:`edlae_dask.runtime.PathResult`.

    Parameters
    ----------
    store : InteractionStore
    params : TrainParams
    ctx : edlae_dask.runtime.StageContext
        ``block_size`` and ``checkpoint_dir`` are read here.
    """
    from edlae_dask.io.checkpoints import GramPartials, StageCheckpoints, prune_checkpoints

    n = store.n_items
    dtype = np.dtype(params.dtype)
    block = ctx.block_size
    checkpoints = None if ctx.checkpoint_dir is None else StageCheckpoints(
        ctx.checkpoint_dir, interactions_fingerprint=store.fingerprint, n_items=n, dtype=dtype.name,
        block_size=block, lam=params.lam, p=params.p, storage_options=ctx.storage_options)

    used = []  # the partial Grams this run reads or writes, kept by the pruning at the end

    def checkpointed(stage, compute, info):
        return compute() if checkpoints is None else checkpoints.run(stage, compute, ctx.persist, ctx.client, info)

    def compute_gram(info):
        shard_fps = store.attrs.get("shard_fingerprints")
        if ctx.checkpoint_dir is None or not isinstance(shard_fps, list) or len(shard_fps) != store.n_shards:
            return {"G": ctx.persist(gram(store, block_size=block, dtype=dtype))}
        partials = GramPartials(ctx.checkpoint_dir, n_items=n, dtype=dtype.name, block_size=block,
                                storage_options=ctx.storage_options)
        G, group_fps = incremental_gram(store, partials, ctx, info, shard_fps)
        used.extend(partials.path(fp).name for fp in group_fps)
        # the whole Gram's checkpoint records its groups, so a later store's Gram can start from it
        checkpoints.extra_attrs["gram"] = {"group_fingerprints": group_fps}
        return {"G": G}

    def compute_inverse(P):
        C = ctx.persist(inverse(P))
        return {"C": C, "diag_c": da.diagonal(C).compute()}

    with ctx.stages.stage("gram", f"XᵀX over {store.n_shards} shards") as info:
        # the persisted blocks stay referenced until M is made: a worker lost meanwhile has its
        # blocks recomputed by the scheduler from their graph (or re-read from the checkpoint)
        G = checkpointed("gram", functools.partial(compute_gram, info), info)["G"]
        diag_g = da.diagonal(G).compute()
        info["blocks"] = len(G.chunks[0])
    if params.lam == 0 and np.any(diag_g == 0):
        empty = np.flatnonzero(diag_g == 0)
        ids = store.item_ids()[empty[:5]].tolist()
        raise ModelFitError(
            f"{empty.size} items have no interactions (e.g. ids {ids}) and lam = 0, so P = XᵀX + Λ is singular. "
            "Use lam > 0, or re-ingest with --min-item-interactions 1 so such items are dropped."
        )
    with ctx.stages.stage("inverse", "C = (XᵀX + Λ)⁻¹, blocked Cholesky") as info:
        P = regularize(G, params.lam, params.p)
        result = checkpointed("inverse", functools.partial(compute_inverse, P), info)
        C, diag_c = result["C"], result["diag_c"]
        del result
        d = teacher_scaling(diag_c)
    with ctx.stages.stage("student", "M = BᵀPB, block by block"):
        M = student_matrix(P, C, d)
        del G, P  # the Gram's blocks are released as M's blocks are made
        M = ctx.persist(row_panels(M))
    with ctx.stages.stage("eigensolve", f"top-{params.k} eigenvectors of M") as info:
        eig = randomized_eigh(
            panel_operator(M),  # holds M only in a closure the solver drops, so `del M` below releases it
            n,
            params.k,
            row_chunks=M.chunks[0],
            dtype=dtype,
            n_oversamples=params.n_oversamples,
            n_power_iter=params.n_power_iter,
            seed=params.seed,
            tol=params.eig_tol,
            max_power_iter=params.max_power_iter,
        )
        info.update(
            n_matvecs=eig.n_matvecs,
            n_oversamples=eig.n_oversamples,
            n_power_iter=eig.n_power_iter,
            converged=eig.converged,
            ritz_sum_change=eig.ritz_sum_change,
            ritz_residual_max=float(np.max(eig.ritz_residuals)),
            ritz_residual_median=float(np.median(eig.ritz_residuals)),
        )
        del M
        V = eig.eigenvectors
        U = ctx.persist(student_factors(C, d, V))
        V = ctx.persist(V)
        del C
    if checkpoints is not None:
        prune_checkpoints(ctx.checkpoint_dir, [*used, checkpoints.path("gram").name, checkpoints.path("inverse").name])
    return PathResult(U=U, V=V, eig=eig)


def incremental_gram(store, partials, ctx, info: dict, shard_fps: list) -> tuple[da.Array, list[str]]:
    """G = Σ_g G_g over fixed groups of :data:`GROUP_SIZE` shards, reusing checkpointed partials; persisted.

    Two ways to reuse, the cheaper chosen (both compute the groups no partial matches):

    - from partials: a group whose shards' fingerprints match a checkpointed partial Gram
      is read back (verified block by block): one n²/2 read per reused group;
    - from an earlier Gram (:meth:`GramPartials.base`, the whole-Gram checkpoint of an
      earlier store sharing the most groups): ``G = G_old − Σ_{groups gone} G_g + Σ_{groups new} G_g``,
      ``1 + #gone`` reads whatever the number of groups — taken when that is fewer reads.

    Groups computed are written as partials (lower blocks, with checksums) in the same pass
    as the sum and committed once the sum is in memory. A checkpoint found damaged while read
    is not used: the pass is redone without it. Cost: Σ_{u in computed groups} d_u² operations
    plus the reads; memory: the sum's n² plus the blocks in flight.

    Returns G and the group fingerprints. ``info`` (the stage record) gets ``partials_reused``
    (groups not recomputed, either way), ``partials_computed``, ``shards_reused``,
    ``shards_computed`` and ``gram_base`` (the earlier Gram started from, or "").
    """
    from collections import Counter

    groups = shard_groups(store.n_shards, GROUP_SIZE)
    fps = [partials.fingerprint([shard_fps[s] for s in g]) for g in groups]
    broken: set[int] = set()
    use_base = True
    while True:
        parts, writes, handles, reused, minus = [], [], [], [], []
        base = partials.base(fps) if use_base else None
        if base is not None:
            base_path, base_G, old_fps = base
            common = Counter(fps) & Counter(old_fps)
            gone = list((Counter(old_fps) - common).elements())
            minus = [partials.load(fp) for fp in gone]
            n_common = sum(common.values())
            if any(m is None for m in minus) or 1 + len(gone) >= n_common:
                base, minus = None, []  # cheaper (or only possible) from the partials
        left = Counter() if base is None else Counter(common)
        for g, shards in enumerate(groups):
            if left[fps[g]] > 0:  # in the earlier Gram already
                left[fps[g]] -= 1
                reused.append(g)
                continue
            part = None if g in broken or base is not None else partials.load(fps[g])
            if part is not None:
                reused.append(g)
            else:
                part = partial_gram(store, shards, block_size=partials.block_size, dtype=partials.dtype)
                handle, write = partials.writer(fps[g], part, [shard_fps[s] for s in shards])
                handles.append(handle)
                writes.append(write)
            parts.append(part)
        G = sum_partials(parts, split_every=GROUP_SIZE, base=None if base is None else base_G, minus=minus)
        try:
            G, *written = ctx.persist([G, *writes])
            rows = [ctx.compute(w) for w in written]  # persisted: only the digest lists come back
        except StoreIntegrityError as exc:
            for handle in handles:
                partials.discard(handle)
            log.warning("gram: a checkpoint read is damaged (%s): not using it", exc)
            if base is not None:  # the earlier Gram or a partial subtracted: go by the partials
                use_base = False
                continue
            hit = {g for g in reused if str(partials.path(fps[g])) in str(exc)} or set(reused)
            if not hit:
                raise
            broken |= hit
            continue
        except BaseException:
            for handle in handles:
                partials.discard(handle)
            raise
        for handle, r in zip(handles, rows):
            partials.commit(handle, r)
        break
    n_reused_shards = sum(len(groups[g]) for g in reused)
    how = f"; from the Gram at {base_path} minus {len(minus)} groups' partials" if base is not None else ""
    log.info("gram: reused %d of %d shard groups' partial Grams (%d of %d shards)%s", len(reused), len(groups),
             n_reused_shards, store.n_shards, how)
    info.update(partials_reused=len(reused), partials_computed=len(groups) - len(reused),
                shards_reused=n_reused_shards, shards_computed=store.n_shards - n_reused_shards,
                gram_base="" if base is None else base_path)
    return G, fps

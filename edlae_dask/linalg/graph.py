"""Graph helpers shared by every stage: block chunking, symmetric matrices from their lower
blocks, tree sums, and persisting a stage's result where the run computes.

Every stage builds its graph from small pure block functions and names its keys
``edlae-{stage}-{token}``; these helpers wire the parts that recur.
"""

from __future__ import annotations

import contextlib

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph


def item_blocks(n_items: int, block_size: int) -> tuple[int, ...]:
    """Chunk sizes of ``n_items`` in blocks of ``block_size`` (the last one ragged)."""
    from edlae_dask.errors import ParameterError

    if block_size <= 0:
        raise ParameterError(f"block_size must be positive, got {block_size}")
    full, rest = divmod(n_items, block_size)
    return (block_size,) * full + ((rest,) if rest else ())


def block_bounds(chunks) -> tuple[int, ...]:
    """``(0, c₀, c₀ + c₁, …, n)``: where each block of ``chunks`` starts, and the end."""
    return tuple(int(b) for b in np.concatenate([[0], np.cumsum(chunks)]))


def sum_blocks(*parts: np.ndarray) -> np.ndarray:
    """The sum of equally shaped blocks, into a fresh array (the inputs are never modified)."""
    out = parts[0].copy()
    for p in parts[1:]:
        out += p
    return out


def tree_sum(dsk: dict, name: str, keys: list, *, split_every: int = 4, suffix: tuple = ()):
    """Add tasks to ``dsk`` that sum the blocks at ``keys``, ``split_every`` at a time; return the root key.

    The sums form a tree: level ``l`` group ``g`` is the key ``(name, l, g, *suffix)``,
    so no task holds more than ``split_every`` blocks and the depth is
    ⌈log_{split_every}(len(keys))⌉. A single key is returned as it is.
    """
    level = 0
    while len(keys) > 1:
        nxt = []
        for g in range(0, len(keys), split_every):
            key = (name, level, g, *suffix)
            dsk[key] = (sum_blocks, *keys[g : g + split_every])
            nxt.append(key)
        keys, level = nxt, level + 1
    return keys[0]


def task(stage: str, func, *args):
    """A delayed call of the pure block function ``func``, keyed ``edlae-{stage}-{token}``.

    The token hashes the function's name and the arguments (a Delayed argument by its
    key), so the same call gets the same key and different calls never share one.
    """
    return dask.delayed(func, pure=True)(*args, dask_key_name=f"edlae-{stage}-{tokenize(func.__name__, *args)}")


def tree_reduce(stage: str, func, parts: list, *, split_every: int = 4):
    """A delayed ``func(*group)`` over ``parts``, ``split_every`` at a time, down to one result.

    ``func`` must be associative over its arguments (a sum); no task takes more than
    ``split_every`` parts, so a reduction over every user shard never lands on one
    task, and the depth is ⌈log_{split_every}(len(parts))⌉. Keys are ``edlae-{stage}-{token}``.
    A single part is returned as it is.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("tree_reduce needs at least one part")
    while len(parts) > 1:
        parts = [task(stage, func, *parts[g: g + split_every]) if len(parts[g: g + split_every]) > 1
                 else parts[g] for g in range(0, len(parts), split_every)]
    return parts[0]


def symmetric_from_lower(name: str, dsk: dict, lower: dict, chunks: tuple[int, ...], dtype,
                         dependencies=()) -> da.Array:
    """Dask array of a symmetric matrix given the tasks of its lower blocks.

    ``dsk`` holds the tasks the lower blocks need; ``lower`` maps (i, j) with i >= j
    to the key (or task) of that block. Blocks above the diagonal are transposes of
    the ones below (views: no copy on the worker holding them).
    """
    dsk = dict(dsk)
    nb = len(chunks)
    for i in range(nb):
        for j in range(nb):
            dsk[(name, i, j)] = lower[(i, j)] if i >= j else (np.transpose, (name, j, i))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=list(dependencies))
    return da.Array(graph, name, chunks=(chunks, chunks), dtype=dtype)


def persist(collections, client=None, *, progress: bool = False, wait: bool = True):
    """Persist dask collections where this run computes; by default block until they are in memory.

    Parameters
    ----------
    collections : dask collection or list of them
    client : distributed.Client, optional
        Where to compute; ``None``: the current scheduler (``dask.config`` or the
        current client; the training pipeline sets Dask's threaded scheduler when
        it has no client).
    progress : bool, default=False
        Show a progress bar while waiting.
    wait : bool, default=True
        Wait for distributed results, and raise the first failed block's own error
        (e.g. ``KilledWorker``) now rather than later as "lost dependencies" of
        whatever reads the blocks next. ``False`` returns at once (the eigensolver
        overlaps its passes this way).

    Returns
    -------
    The persisted collection, or a list of them if a list was given.
    """
    single = not isinstance(collections, (list, tuple))
    objs = [collections] if single else list(collections)
    if client is not None:
        objs = client.persist(objs)
    else:
        bar = contextlib.nullcontext()
        if progress and current_client() is None:
            from dask.diagnostics import ProgressBar

            bar = ProgressBar()
        with bar:
            objs = list(dask.persist(*objs))
    if wait:
        from distributed import futures_of
        from distributed import progress as show_progress
        from distributed import wait as wait_for

        futures = futures_of(objs)
        if futures:
            (show_progress if progress else wait_for)(objs)
            failed = [f for f in futures if f.status == "error"]
            if failed:
                failed[0].result()
    return objs[0] if single else objs


def compute(obj, client=None):
    """Compute one collection where this run computes (``client``, else the current scheduler)."""
    return obj.compute() if client is None else client.compute(obj).result()


def current_client():
    """The distributed client dask would use now, or None (threaded or synchronous scheduler)."""
    if dask.config.get("scheduler", None) is not None:
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None

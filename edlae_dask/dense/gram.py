"""Stage ``gram``: G = XᵀX as a Dask graph over the interaction shards.

Each shard task reads one user shard (CSR) from the interaction store. For every
pair of item blocks (i, j) with i >= j, a task forms the dense block
``Σ_s X_s[:, I]ᵀ · X_s[:, J]`` over a group of ``split_every`` shards, and the
groups are summed by a tree reduction (``split_every`` at a time). Upper blocks
are transposes of lower ones. No task holds more than ``split_every`` shards and
the one block it produces, so the n x n matrix never has to fit on one worker.

For incremental retraining (:func:`shard_groups`, :func:`partial_gram`,
:func:`sum_partials`) the same sum is split into partial Grams
``G_g = Σ_{s∈g} X_sᵀX_s`` of fixed groups of shards, so a checkpointed ``G_g``
of a group whose shards did not change is read back instead of recomputed.

Costs: the sparse products take Σ_u d_u² operations (d_u: interactions of user u);
the result is n²·itemsize bytes spread over the workers.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
from dask.base import tokenize

from edlae_dask.errors import ParameterError
from edlae_dask.io.interactions import InteractionStore, read_shard
from edlae_dask.linalg.graph import item_blocks, symmetric_from_lower, tree_sum

__all__ = ["gram", "item_blocks", "partial_gram", "shard_groups", "sum_partials"]


def _load_shard_blocks(path: str, s: int, bounds: tuple[int, ...], dtype, rows=None, cols=None) -> tuple[list, list]:
    """Read shard ``s`` and split it into item blocks: (Xᵀ row blocks, X column blocks).

    ``rows`` (local row indices) and ``cols`` (item indices) select a sub-matrix first.
    """
    x = read_shard(path, s)
    if rows is not None:
        x = x[rows]
    if cols is not None:
        x = x[:, cols]
    x = x.astype(dtype, copy=False)
    xt = x.T.tocsr()  # items x users: row slices of it are Xᵀ_I
    xc = x.tocsc()
    left = [xt[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    right = [xc[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return left, right


def _gram_block_part(i: int, j: int, *shard_blocks: tuple[list, list]) -> np.ndarray:
    """Σ over the given shards of X_s[:, I]ᵀ · X_s[:, J], as a dense block."""
    out = None
    for left, right in shard_blocks:
        prod = left[i] @ right[j]
        prod = prod.toarray() if hasattr(prod, "toarray") else np.asarray(prod)
        if out is None:
            out = prod
        else:
            out += prod
    return out


def _selection(sel, n: int, what: str) -> np.ndarray | None:
    """A boolean mask or a sorted array of unique indices, as sorted int64 indices (None: all)."""
    if sel is None:
        return None
    sel = np.asarray(sel)
    if sel.dtype == bool:
        if sel.shape != (n,):
            raise ParameterError(f"{what} as a boolean mask must have shape ({n},); got {sel.shape}")
        return np.flatnonzero(sel)
    if sel.ndim != 1 or sel.dtype.kind not in "iu":
        raise ParameterError(f"{what} must be a boolean mask or a 1-d array of integer indices; "
                             f"got {sel.dtype} {sel.shape}")
    sel = sel.astype(np.int64)
    if sel.size and (sel[0] < 0 or sel[-1] >= n or np.any(np.diff(sel) <= 0)):
        raise ParameterError(f"{what} indices must be sorted, unique and in [0, {n}); sort them with numpy.unique")
    return sel


def gram(store: InteractionStore, *, block_size: int, dtype=np.float32, split_every: int = 4,
         users=None, items=None) -> da.Array:
    """XᵀX of the interaction matrix, as a symmetric block dask array.

    Parameters
    ----------
    store : InteractionStore
        The opened interaction store (users x items, sharded by user range).
    block_size : int
        Side of the square item blocks; the last block is ragged.
    dtype : numpy dtype, default=float32
        Dtype of the product (X is cast before multiplying).
    split_every : int, default=4
        Fan-in of the tree reduction over shards.
    users : ndarray of bool of shape (n_users,) or sorted int indices, optional
        Only these users' rows enter the product (e.g. the training users of an
        evaluation split). Default: all users.
    items : ndarray of bool of shape (n_items,) or sorted int indices, optional
        Only these items' columns, in this order: the result is
        ``X[users][:, items]ᵀ · X[users][:, items]``. Default: all items.

    Returns
    -------
    G : dask.array.Array of shape (n_items, n_items)
        Chunks ``(item_blocks(n_items, block_size),) * 2`` (``n_items`` = the
        number of selected items).
    """
    dtype = np.dtype(dtype)
    user_idx = _selection(users, store.n_users, "users")
    item_idx = _selection(items, store.n_items, "items")
    n_items = store.n_items if item_idx is None else int(item_idx.size)
    if n_items == 0:
        raise ParameterError("items selects no item; the Gram would be empty")
    chunks = item_blocks(n_items, block_size)
    bounds = tuple(np.concatenate([[0], np.cumsum(chunks)]).tolist())
    nb = len(chunks)
    token = tokenize(store.path, store.fingerprint, block_size, dtype.str, split_every)
    if user_idx is not None or item_idx is not None:  # the full Gram keeps its historical keys
        token = tokenize(token, user_idx, item_idx)
    load_name = f"edlae-gram-shard-{token}"
    part_name = f"edlae-gram-part-{token}"
    sum_name = f"edlae-gram-sum-{token}"
    name = f"edlae-gram-{token}"
    offsets = store.shard_offsets
    rows: dict = {}
    for s in range(store.n_shards):
        if offsets[s + 1] <= offsets[s]:
            continue
        if user_idx is None:
            rows[s] = None
            continue
        lo, hi = np.searchsorted(user_idx, [offsets[s], offsets[s + 1]])
        if hi > lo:  # a shard without selected users is not read at all
            local = user_idx[lo:hi] - offsets[s]
            rows[s] = None if local.size == offsets[s + 1] - offsets[s] else local
    shards = list(rows)
    if not shards:
        raise ParameterError(f"interaction store {store.path} holds no "
                             f"{'users' if user_idx is None else 'selected users'}")

    dsk: dict = {}
    for s in shards:
        if rows[s] is None and item_idx is None:
            dsk[(load_name, s)] = (_load_shard_blocks, store.location, s, bounds, dtype)
        else:
            dsk[(load_name, s)] = (_load_shard_blocks, store.location, s, bounds, dtype, rows[s], item_idx)
    lower = {}
    for i in range(nb):
        for j in range(i + 1):
            # the first level multiplies and sums split_every shards in one task, so
            # no more than one dense block per group of shards is ever held
            keys = []
            for g in range(0, len(shards), split_every):
                key = (part_name, g, i, j)
                dsk[key] = (_gram_block_part, i, j, *[(load_name, s) for s in shards[g : g + split_every]])
                keys.append(key)
            lower[(i, j)] = tree_sum(dsk, sum_name, keys, split_every=split_every, suffix=(i, j))
    return symmetric_from_lower(name, dsk, lower, chunks, dtype)



def shard_groups(n_shards: int, group_size: int) -> list[range]:
    """Fixed groups of shards: group ``g`` is shards ``[g·group_size, (g+1)·group_size)``.

    Stable under appends: shards added at the end only add (or complete the last) group,
    so the other groups' partial Grams stay valid.
    """
    if group_size <= 0:
        raise ParameterError(f"group_size must be positive, got {group_size}")
    return [range(a, min(a + group_size, n_shards)) for a in range(0, n_shards, group_size)]


def _zeros(shape: tuple[int, int], dtype) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


def partial_gram(store: InteractionStore, shards, *, block_size: int, dtype=np.float32) -> da.Array:
    """``G_g = Σ_{s∈shards} X_sᵀX_s``: the partial Gram of a group of shards, as a symmetric block dask array.

    Parameters
    ----------
    store : InteractionStore
    shards : sequence of int
        The shards of the group (a few: one task per block holds all of them, like
        the first level of :func:`gram`).
    block_size : int
    dtype : numpy dtype, default=float32

    Returns
    -------
    G_g : dask.array.Array of shape (n_items, n_items)
        Chunks ``(item_blocks(n_items, block_size),) * 2``; only the lower blocks are
        tasks of their own (upper ones are transposes). Cost: Σ_{u in the group} d_u²
        operations, n²·itemsize/2 bytes for the lower blocks.
    """
    dtype = np.dtype(dtype)
    chunks = item_blocks(store.n_items, block_size)
    bounds = tuple(np.concatenate([[0], np.cumsum(chunks)]).tolist())
    offsets = store.shard_offsets
    shards = [s for s in shards if offsets[s + 1] > offsets[s]]  # an empty shard is not read
    token = tokenize(store.path, store.fingerprint, block_size, dtype.str, shards)
    load_name, name = f"edlae-gram-shard-{token}", f"edlae-gram-part-{token}"
    dsk: dict = {}
    for s in shards:
        dsk[(load_name, s)] = (_load_shard_blocks, store.location, s, bounds, dtype)
    lower = {}  # the tasks themselves: (name, i, j) for i >= j are the lower blocks a checkpoint writes
    for i in range(len(chunks)):
        for j in range(i + 1):
            if shards:
                lower[(i, j)] = (_gram_block_part, i, j, *[(load_name, s) for s in shards])
            else:
                lower[(i, j)] = (_zeros, (chunks[i], chunks[j]), dtype)
    return symmetric_from_lower(name, dsk, lower, chunks, dtype)


def _rebase(base: np.ndarray, minus: list, plus: list) -> np.ndarray:
    """``base − Σ minus + Σ plus`` for one block (a new array: ``base`` may be a read-only chunk)."""
    out = np.array(base, copy=True)
    for m in minus:
        out -= m
    for q in plus:
        out += q
    return out


def sum_partials(parts: list[da.Array], *, split_every: int = 4, base: da.Array | None = None,
                 minus: list[da.Array] = ()) -> da.Array:
    """``Σ_g G_g`` (or ``base − Σ minus + Σ parts``) of symmetric block dask arrays; lower blocks only.

    Without ``base`` the parts' lower blocks are tree-summed ``split_every`` at a time.
    With ``base`` (the Gram of an earlier store) each lower block is
    ``base − Σ minus + Σ parts`` in one task: the partials of the groups that left
    and of those that came in, so only ``1 + len(minus) + len(parts)`` matrices are
    read instead of one per group. Upper blocks of the result are transposes.

    The order of the sum differs from :func:`gram`'s: equal exactly when every
    partial sum is an integer the dtype holds exactly (binary or count data: float64
    below 2⁵³, float32 below 2²⁴), to rounding otherwise (with ``base``, a
    difference of two rounded sums: errors of the earlier store's Gram carry over).
    """
    if not parts and base is None:
        raise ParameterError("no partial Gram to sum")
    first = base if base is not None else parts[0]
    chunks, dtype = first.chunks[0], first.dtype
    token = tokenize([p.name for p in parts], split_every, None if base is None else base.name,
                     [m.name for m in minus])
    name, sum_name = f"edlae-gram-{token}", f"edlae-gram-sum-{token}"
    dsk: dict = {}
    lower = {}
    for i in range(len(chunks)):
        for j in range(i + 1):
            keys = [(p.name, i, j) for p in parts]
            if base is None:
                lower[(i, j)] = tree_sum(dsk, sum_name, keys, split_every=split_every, suffix=(i, j))
            else:  # the new groups tree-summed first, so no task holds more than split_every of their blocks
                plus = [tree_sum(dsk, sum_name, keys, split_every=split_every, suffix=(i, j))] if keys else []
                lower[(i, j)] = (_rebase, (base.name, i, j), [(m.name, i, j) for m in minus], plus)
    deps = [*parts, *minus, *([] if base is None else [base])]
    return symmetric_from_lower(name, dsk, lower, chunks, dtype, dependencies=deps)

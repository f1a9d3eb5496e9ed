"""Content checksums: every store records a digest of what it writes, and every reader verifies what it reads.

A chunk that is missing on disk reads as zarr's fill value, a truncated one fails to
decode, a swapped or altered one decodes to other numbers: without a checksum the
first and the last are silently wrong data. So each store records, written with the
data and kept in its group's attributes (where swapping two arrays or shard folders
cannot carry them along):

===================  ============================================================
interaction store    one digest per user shard (its ``indptr``, ``indices``,
                     ``values``), one per id and count array
factor store         one digest per row block of ``U`` and ``V`` (the blocks the
                     workers wrote), one per small array
recommendations      one digest per user shard's rows, in the shard's done marker
checkpoints          one digest per square block of each matrix
===================  ============================================================

and its readers verify every block they read (:func:`read_verified`,
:func:`verified_blocks`): a task verifies the shard or block it reads itself, so the
cost is spread over the workers with the reads. A mismatch, or a chunk that does not
decode, is a :class:`~edlae_dask.errors.StoreIntegrityError` naming the store, the
array and the block. The digest is SHA-256 (hardware-accelerated on current CPUs;
its cost per read is measured in ``benchmarks/results/design-notes.md``) of each
array's dtype, shape and bytes, cut to 128 bits.

Stores written before checksums existed carry none; they are read as before (and
factors checked for NaN/inf block by block), and ``edlae-dask verify`` says so.
"""

from __future__ import annotations

import hashlib

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from edlae_dask.errors import ModelFitError, StoreIntegrityError

#: zarr attribute of an array holding the digests of its blocks while a version is being written
#: (moved into the group's attributes when the version is committed)
BLOCK_DIGESTS_ATTR = "edlae_block_digests"


def digest(*arrays: np.ndarray) -> str:
    """SHA-256 of the arrays' dtypes, shapes and bytes (C order), as 32 hex digits.

    Cost: one pass over the bytes (about 1.7 GB/s on one core of the development machine).
    """
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()[:32]


def damaged(store: str, array: str, part: str, problem: str, fix: str) -> StoreIntegrityError:
    """The one-line error for a damaged part of a store."""
    what = " ".join(w for w in (array, part) if w)
    return StoreIntegrityError(
        f"{store} is damaged: {what} {problem} (a chunk missing, truncated, swapped or altered after it was "
        f"written). {fix}"
    )


def read_verified(arr, expected: str | None, *, store: str, array: str, part: str = "", fix: str,
                  selection=Ellipsis) -> np.ndarray:
    """``arr[selection]`` as numpy, checked against the digest ``expected`` (None: no checksum to check).

    A chunk that does not decode (truncated, or not zarr's at all) is reported the same
    way as one whose content does not match.
    """
    try:
        out = np.asarray(arr[selection])
    except Exception as exc:  # zarr and its codecs raise several types for a chunk they cannot decode
        raise damaged(store, array, part, f"cannot be decoded ({type(exc).__name__}: {exc})", fix) from exc
    if expected is not None and digest(out) != expected:
        raise damaged(store, array, part, "does not match the checksum written with it", fix)
    return out


# --------------------------------------------------------------------------- block-wise, as Dask graphs


def _block_slices(chunks) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """``(block index, slices)`` of every block of a chunk grid, in C order."""
    bounds = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in chunks]
    out = []
    for index in np.ndindex(*[len(c) for c in chunks]):
        out.append((index, tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, index))))
    return out


def _write_block(arr, sel: tuple, block: np.ndarray, finite: str | None) -> str:
    """Write one block into the zarr array ``arr`` at ``sel``; return its digest. Runs on a worker."""
    block = np.asarray(block)
    if finite is not None and block.dtype.kind == "f" and not np.isfinite(block).all():
        rows = f"{sel[0].start}..{sel[0].stop - 1}"
        raise ModelFitError(f"{finite} holds NaN or infinite values in rows {rows}: refusing to write it. "
                            "The computation diverged; see the log above, raise --lam or use --dtype float64")
    arr[sel] = block
    return digest(block)


def _record_digests(arr, shape: tuple[int, ...], *digests: str) -> list:
    """Keep the block digests (a nested list in the block grid's shape) in the array's attributes; return them."""
    grid = np.array(digests, dtype=object).reshape(shape).tolist()
    arr.attrs[BLOCK_DIGESTS_ATTR] = grid
    return grid


def write_blocks(x: da.Array, arr, *, finite: str | None = None):
    """A Delayed that writes the dask array ``x`` block by block into the zarr array ``arr``.

    Each task writes one block (``arr``'s chunks must equal ``x``'s blocks, but for
    the ragged last ones, so no two tasks touch one chunk) and returns its digest;
    the last task stores the grid of digests in ``arr.attrs`` (:data:`BLOCK_DIGESTS_ATTR`)
    and returns it. ``finite``: the array's name, to refuse blocks holding NaN or inf
    (factors) with a :class:`ModelFitError`; None: no check.
    """
    token = tokenize(x, arr.store_path if hasattr(arr, "store_path") else id(arr), finite)
    name = f"edlae-write-{token}"
    dsk: dict = {}
    keys = []
    for index, sel in _block_slices(x.chunks):
        key = (name, *index)
        dsk[key] = (_write_block, arr, sel, (x.name, *index), finite)
        keys.append(key)
    grid_shape = tuple(len(c) for c in x.chunks)
    final = f"edlae-write-digests-{token}"
    dsk[final] = (_record_digests, arr, grid_shape, *keys)
    graph = HighLevelGraph.from_collections(final, dsk, dependencies=[x])
    return Delayed(final, graph)


def _read_block(arr, sel: tuple, expected: str | None, store: str, array: str, index: tuple, fix: str,
                finite: bool) -> np.ndarray:
    part = "block " + ",".join(map(str, index)) + " (" + ", ".join(f"{s.start}..{s.stop - 1}" for s in sel) + ")"
    out = read_verified(arr, expected, store=store, array=array, part=part, fix=fix, selection=sel)
    if finite and out.dtype.kind == "f" and not np.isfinite(out).all():
        raise damaged(store, array, part, "holds NaN or infinite values", fix)
    return out


def verified_blocks(arr, digests, *, store: str, array: str, fix: str, finite: bool = False) -> da.Array:
    """The zarr array ``arr`` as a dask array whose every block is verified against ``digests`` when read.

    Parameters
    ----------
    arr : zarr.Array
        Regularly chunked; the dask blocks are its chunks.
    digests : nested list of str, or None
        One digest per chunk, in the chunk grid's shape (as :func:`write_blocks`
        records them). None: no checksums (a store from before them); blocks are read
        unchecked, but for ``finite``.
    store, array, fix : str
        For the message: the store, the array's name, what to do.
    finite : bool, default=False
        Also refuse blocks holding NaN or inf (a missing chunk of a factor reads as NaN).
    """
    chunks = tuple(tuple(min(c, n - a) for a in range(0, n, c)) for n, c in zip(arr.shape, arr.chunks))
    grid = np.array(digests, dtype=object) if digests is not None else None
    if grid is not None and grid.shape != tuple(len(c) for c in chunks):
        raise damaged(store, array, "", f"has {tuple(len(c) for c in chunks)} blocks but {grid.shape} checksums",
                      fix)
    name = f"edlae-read-{array}-{tokenize(store, array, arr.shape, arr.chunks, digests)}"
    dsk = {}
    for index, sel in _block_slices(chunks):
        expected = None if grid is None else str(grid[index])
        dsk[(name, *index)] = (_read_block, arr, sel, expected, store, array, index, fix, finite)
    return da.Array(HighLevelGraph.from_collections(name, dsk, dependencies=[]), name, chunks=chunks,
                    dtype=arr.dtype)

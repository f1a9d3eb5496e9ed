"""Checkpoints of the dense path's expensive stages, so a killed training job resumes.

The Gram ``G = XᵀX`` and the inverse ``C = P⁻¹`` (with ``diag C``) are written
to a checkpoint directory as they are computed; a later run with the same
inputs finds them and reads them back instead of recomputing them. Layout::

    CHECKPOINTS/
      gram-<fingerprint[:16]>/        zarr v3 group: G (n, n), square chunks of the block size
      inverse-<fingerprint[:16]>/     zarr v3 group: C (n, n), diag_c (n,)
      partial-gram-<fp[:16]>/     zarr v3 group: G (n, n), only the lower blocks written (GramPartials)
        attrs: format, format_version, stage, fingerprint, inputs, created, code_version, complete

A checkpoint is reused only if its fingerprint matches: a sha256 of the inputs
and parameters that determine it — for ``gram`` the interaction store's content
fingerprint, the dtype and the block size; for ``inverse`` the Gram's
fingerprint plus λ and p (not k, the seed or the eigensolver settings, so a run
with another k reuses both). A checkpoint's ``complete`` attribute is written
last, and one without it is never read. In a local directory it is also written
in full under a temporary name and renamed into place
(:func:`edlae_dask.io.versioned.move_into_place`): complete or absent; what a killed
save leaves there is removed by a later save, once nothing has written to it for an
hour (``_fs.PRUNE_GRACE_S``: runs with other inputs may share the directory). Under an fsspec
URL (object storage: no rename) it is written in place, ``complete`` last. One
that is incomplete, damaged (a chunk missing reads as NaN), foreign or not plain
numbers is ignored with a warning and recomputed; nothing in it is unpickled.

The workers write and read the blocks, so the directory must be on storage that
the client and every worker see (like the factor store): a shared file system,
or a URL (``s3://bucket/checkpoints``) that each worker opens itself. It costs about
``2·n²·itemsize`` bytes of disk (before compression) per set of inputs.

A nightly retrain would add a Gram, an inverse and some partials every night, so
each successful local run records the checkpoints it used or wrote (a manifest in
``runs/``) and :func:`prune_checkpoints` then removes the checkpoints of ours that
none of the last :data:`KEEP_RUNS` runs used, once nothing has written to them for
an hour. Remove the directory once no rerun is planned.

Incremental retraining (:class:`GramPartials`): the Gram is also kept as partial
Grams ``G_g = Σ_{s∈g} X_sᵀX_s`` of fixed groups of ``split_every`` consecutive
shards, each keyed by its shards' fingerprints (the interaction store's
``shard_fingerprints``) and n, dtype, block size. A retrain on a store where only
some shards changed (``ingest --append``) reads the other groups' partials and
computes only the changed groups'. Each costs about ``n²·itemsize/2`` bytes (lower
blocks only), so ``⌈n_shards / split_every⌉ · n²·itemsize/2`` in all — per shard
would cost ``split_every`` times more. Partials of groups that no longer exist
are pruned with the rest once the last :data:`KEEP_RUNS` runs did not use them.
A whole-Gram checkpoint also records its ``group_fingerprints``, so when few groups
changed the next store's Gram is ``G_old − Σ_{groups gone} G_g + Σ_{groups new} G_g``
(:meth:`GramPartials.base`): ``1 + #gone`` matrices read instead of one per unchanged group.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import dask.array as da
import numpy as np
import zarr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from edlae_dask.errors import OutputExistsError, StoreFormatError
from edlae_dask.io import _fs
from edlae_dask.io._fs import Location, group_attrs, location
from edlae_dask.io._plain import check_plain_array, get_node
from edlae_dask.io.integrity import damaged, digest, read_verified, verified_blocks, write_blocks
from edlae_dask.io.versioned import (
    StoreFormat,
    check_format,
    mark_complete,
    move_into_place,
    newest_mtime,
    open_group,
    remove_leftovers,
)
from edlae_dask.linalg.graph import item_blocks, symmetric_from_lower

log = logging.getLogger("edlae_dask.io.checkpoints")

FORMAT_NAME = "edlae-dask/checkpoint"
FORMAT_VERSION = 1
# no advice in the messages: they are logged as the reason a checkpoint is recomputed
FORMAT = StoreFormat(FORMAT_NAME, FORMAT_VERSION, "checkpoint")
#: the arrays each stage keeps: name -> "matrix" (n x n, square blocks) or "vector" (n,)
STAGE_ARRAYS = {"gram": {"G": "matrix"}, "inverse": {"C": "matrix", "diag_c": "vector"}}
# a local save's temporary directory, and a replaced checkpoint moved aside (both left by a killed run)
_LEFTOVER = re.compile(rf"\.({'|'.join([*STAGE_ARRAYS, 'partial-gram'])})-[0-9a-f]{{16}}\.(tmp|old)-[0-9a-f]{{32}}")


#: Runs whose checkpoints :func:`prune_checkpoints` keeps: this run's and the one before (whose Gram and
#: partials the next retrain may start from, should this run's be damaged).
KEEP_RUNS = 2
# what prune_checkpoints may remove: a checkpoint's directory name
_PRUNABLE = re.compile(rf"({'|'.join([*STAGE_ARRAYS, 'partial-gram'])})-[0-9a-f]{{16}}")
_MANIFEST = re.compile(r"\d{20}-[0-9a-f]{8}\.json")


def prune_checkpoints(root, used, *, keep_runs: int = KEEP_RUNS, idle_s: float | None = None) -> list[str]:
    """Record this run's checkpoints, and remove those of ours that none of the last ``keep_runs`` runs used.

    Parameters
    ----------
    root : str or os.PathLike
        A local checkpoint directory (under a URL nothing is pruned: returns []).
    used : iterable of str
        Names of the checkpoints this run read or wrote (``gram-…``, ``inverse-…``,
        ``partial-gram-…``).
    keep_runs : int, default=KEEP_RUNS
    idle_s : float, optional
        Keep anything written to in the last ``idle_s`` seconds (default ``_fs.PRUNE_GRACE_S``):
        a run under way with other inputs may be writing it.

    Returns
    -------
    list of str
        The paths removed (each one logged). Only complete checkpoints of this format, or
        directories without a zarr group, are removed; anything else in the directory stays.
    """
    if not isinstance(root, (str, os.PathLike)) or "://" in os.fspath(root):
        return []
    root = Path(root)
    runs = root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    manifest = runs / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
    tmp = runs / f".{manifest.name}.tmp"
    tmp.write_text(json.dumps({"checkpoints": sorted(set(used))}))
    os.replace(tmp, manifest)
    manifests = sorted(p for p in runs.iterdir() if _MANIFEST.fullmatch(p.name))
    keep = set()
    for p in manifests[-keep_runs:]:
        try:
            keep.update(json.loads(p.read_text()).get("checkpoints", []))
        except (OSError, ValueError, AttributeError):
            continue
    idle = _fs.PRUNE_GRACE_S if idle_s is None else idle_s
    removed = []
    for entry in sorted(root.iterdir()):
        if not _PRUNABLE.fullmatch(entry.name) or entry.name in keep or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            if time.time() - newest_mtime(str(entry)) < idle or not _ours_or_bare(str(entry)):
                continue
            shutil.rmtree(entry)
        except FileNotFoundError:
            continue
        log.info("removed checkpoint %s: none of the last %d runs used it", entry, keep_runs)
        removed.append(str(entry))
    for p in manifests[:-keep_runs]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return removed


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps([FORMAT_NAME, FORMAT_VERSION, payload], sort_keys=True).encode()).hexdigest()


class StageCheckpoints:
    """The checkpoints of one dense training run: where they live and what they must match.

    Parameters
    ----------
    root : str, os.PathLike or Location
        The checkpoint directory (created on first write), or an fsspec URL.
    interactions_fingerprint : str
        Content fingerprint of the interaction store.
    n_items : int
    dtype : str
        ``"float32"`` or ``"float64"``.
    block_size : int
        Side of the square blocks.
    lam, p : float
        The regularization of ``P = G + Λ`` (eq. 8).
    storage_options : dict, optional
        fsspec options for a URL.
    """

    def __init__(self, root, *, interactions_fingerprint: str, n_items: int, dtype: str, block_size: int,
                 lam: float, p: float, storage_options=None):
        self.location = location(root, storage_options)
        self.root = Path(self.location.url) if self.location.is_local else self.location
        self.n_items = int(n_items)
        self.dtype = np.dtype(dtype)
        self.block_size = int(block_size)
        gram_inputs = {"interactions_fingerprint": interactions_fingerprint, "n_items": self.n_items,
                       "dtype": self.dtype.name, "block_size": self.block_size}
        gram_fp = _digest(["gram", gram_inputs])
        inverse_inputs = {"gram_fingerprint": gram_fp, "lam": float(lam), "p": float(p)}
        self.inputs = {"gram": gram_inputs, "inverse": inverse_inputs}
        self.fingerprints = {"gram": gram_fp, "inverse": _digest(["inverse", inverse_inputs])}
        #: more attributes a stage's checkpoint records (not part of its fingerprint): the Gram's group
        #: fingerprints, so a later store's Gram can start from it (:meth:`GramPartials.base`)
        self.extra_attrs: dict[str, dict] = {}

    def path(self, stage: str) -> Location:
        """Where the checkpoint of ``stage`` for these inputs is (``str()`` of it: its path or URL)."""
        return self.location.join(f"{stage}-{self.fingerprints[stage][:16]}")

    def run(self, stage: str, compute: Callable[[], dict], persist: Callable, client, info: dict) -> dict:
        """The stage's arrays: read back from a matching checkpoint, else ``compute()``-d and written.

        ``compute`` returns the arrays of :data:`STAGE_ARRAYS` ``[stage]``, the
        matrices as persisted dask arrays, the vectors as numpy arrays.
        ``persist`` puts a dask array in the cluster's memory. ``info`` (the
        stage's record) gets ``checkpoint = "reused"`` or ``"written"``.
        """
        arrays = self.load(stage, persist)
        if arrays is not None:
            info["checkpoint"] = "reused"
            return arrays
        arrays = compute()
        t0 = time.perf_counter()
        self.save(stage, arrays, client)
        info.update(checkpoint="written", checkpoint_seconds=round(time.perf_counter() - t0, 3))
        return arrays

    # ------------------------------------------------------------------ reading

    def load(self, stage: str, persist: Callable) -> dict | None:
        """The checkpointed arrays of ``stage`` (matrices persisted), or None if there is no usable one."""
        path = self.path(stage)
        if not (os.path.exists(path.url) if path.is_local else path.join("zarr.json").read_bytes() is not None):
            log.info("no %s checkpoint for these inputs in %s: computing it", stage, self.root)
            return None
        try:
            arrays, checksums = self._open(stage, path)
            out = {}
            for name, arr in arrays.items():
                # each block is verified by the task that reads it (a chunk missing on disk reads as the NaN
                # fill value: also refused, for a checkpoint from before checksums)
                x = verified_blocks(arr, checksums.get(name), store=f"checkpoint {path}", array=name,
                                    fix="it is recomputed", finite=True)
                out[name] = x.compute() if STAGE_ARRAYS[stage][name] == "vector" else persist(x)
        except StoreFormatError as exc:  # StoreIntegrityError included: a damaged checkpoint is recomputed
            log.warning("ignoring the %s checkpoint at %s (%s): recomputing it", stage, path, exc)
            return None
        log.info("reusing %s checkpoint %s (fingerprint %s…): the %s stage is not recomputed", stage, path,
                 self.fingerprints[stage][:16], stage)
        return out

    def _open(self, stage: str, path: Location) -> tuple[dict, dict]:
        """The checkpoint's arrays (checked to be what this run needs) and their block checksums."""
        group = open_group(path, FORMAT)
        attrs = check_format(dict(group.attrs), path, FORMAT, complete=True)
        for key, want in {"stage": stage, "fingerprint": self.fingerprints[stage]}.items():
            if attrs.get(key) != want:
                raise StoreFormatError(f"attribute {key!r} is {attrs.get(key)!r}, expected {want!r}")
        n = self.n_items
        arrays = {}
        for name, kind in STAGE_ARRAYS[stage].items():
            arr = get_node(group, name, f"{path}/{name}")
            if not isinstance(arr, zarr.Array):
                raise StoreFormatError(f"the array {name!r} is missing")
            check_plain_array(arr, f"{path}/{name}", "f", "checkpoint")
            shape = (n, n) if kind == "matrix" else (n,)
            if arr.shape != shape or arr.dtype != self.dtype:
                raise StoreFormatError(f"{name} is {arr.dtype} {arr.shape}, expected {self.dtype} {shape}")
            arrays[name] = arr
        checksums = attrs.get("checksums")
        return arrays, checksums if isinstance(checksums, dict) else {}

    # ------------------------------------------------------------------ writing

    def save(self, stage: str, arrays: dict, client) -> None:
        """Write the arrays of ``stage`` (dask matrices by the workers) and move them into place."""
        t0 = time.perf_counter()
        final = self.path(stage)
        if final.is_local:
            self.root.mkdir(parents=True, exist_ok=True)
            # runs with other inputs may share the directory, and none holds a lock there: only what nothing
            # wrote to for the grace period is a killed run's (a save writes its blocks without pause)
            remove_leftovers(self.root, _LEFTOVER, ours=_ours_or_bare, idle_s=_fs.PRUNE_GRACE_S)
            tmp = self.location.join(f".{final.name}.tmp-{uuid.uuid4().hex}")
        else:  # no rename on object storage: write in place ("w" clears a leftover), complete last
            tmp = final
        try:
            group = tmp.open_group("w-" if tmp.is_local else "w")
            writes, checksums = [], {}
            for name, kind in STAGE_ARRAYS[stage].items():
                x = arrays[name]
                if kind == "matrix":
                    target = group.create_array(name, shape=x.shape, dtype=x.dtype, fill_value=np.nan,
                                                chunks=(self.block_size, self.block_size))
                    # store chunks = dask blocks: every task writes whole chunks, no two share one, and
                    # returns the block's checksum
                    writes.append((name, write_blocks(x.rechunk(self.block_size), target)))
                else:
                    target = group.create_array(name, shape=x.shape, dtype=x.dtype, fill_value=np.nan,
                                                chunks=x.shape)
                    x = np.asarray(x)
                    target[...] = x
                    checksums[name] = [digest(x)]
            for name, w in writes:
                checksums[name] = w.compute(scheduler="threads") if client is None else client.compute(w).result()
            # the marker last: a checkpoint without it is never read
            mark_complete(group, FORMAT.stamp(self.extra_attrs.get(stage), stage=stage,
                                              fingerprint=self.fingerprints[stage], inputs=self.inputs[stage],
                                              checksums=checksums))
            if final.is_local:
                move_into_place(tmp.url, final.url, check_replaceable=_check_replaceable)
        except BaseException:
            tmp.remove()
            raise
        log.info("%s checkpoint written to %s in %.2f s", stage, final, time.perf_counter() - t0)


class GramPartials:
    """Checkpointed partial Grams ``G_g = Σ_{s∈g} X_sᵀX_s`` of groups of shards, keyed by their content.

    Parameters
    ----------
    root : str, os.PathLike or Location
        The checkpoint directory (shared with :class:`StageCheckpoints`), or an fsspec URL.
    n_items : int
    dtype : str
    block_size : int
    storage_options : dict, optional

    A partial is a zarr group ``partial-gram-<fingerprint[:16]>`` holding ``G`` of shape
    (n, n), chunks of the block size, of which only the lower blocks (i ≥ j) are
    written, each with its checksum (``attrs["checksums"]["G"]``: ``[i, j, digest]``
    rows); ``complete`` last, written under a temporary name and renamed locally.
    """

    STAGE = "partial-gram"

    def __init__(self, root, *, n_items: int, dtype: str, block_size: int, storage_options=None):
        self.location = location(root, storage_options)
        self.root = Path(self.location.url) if self.location.is_local else self.location
        self.n_items = int(n_items)
        self.dtype = np.dtype(dtype)
        self.block_size = int(block_size)
        self.chunks = item_blocks(self.n_items, self.block_size)

    def inputs(self, shard_fingerprints) -> dict:
        """What a group's partial depends on: its shards' content fingerprints, n, dtype and block size."""
        return {"shard_fingerprints": [str(f) for f in shard_fingerprints], "n_items": self.n_items,
                "dtype": self.dtype.name, "block_size": self.block_size}

    def fingerprint(self, shard_fingerprints) -> str:
        """sha256 of :meth:`inputs`."""
        return _digest([self.STAGE, self.inputs(shard_fingerprints)])

    def path(self, fingerprint: str) -> Location:
        return self.location.join(f"{self.STAGE}-{fingerprint[:16]}")

    def _lower(self):
        bounds = np.concatenate([[0], np.cumsum(self.chunks)]).astype(int)
        for i in range(len(self.chunks)):
            for j in range(i + 1):
                yield i, j, (slice(int(bounds[i]), int(bounds[i + 1])), slice(int(bounds[j]), int(bounds[j + 1])))

    def load(self, fingerprint: str) -> da.Array | None:
        """The partial Gram with this fingerprint, its lower blocks verified as the tasks read them; None if absent.

        What can be checked without reading blocks (format, fingerprint, shape, dtype, one
        checksum per lower block) is checked now; a block damaged on disk raises
        :class:`StoreIntegrityError` from the task that reads it (the caller then recomputes
        the group). Cost: n²·itemsize/2 bytes read.
        """
        path = self.path(fingerprint)
        if not (os.path.exists(path.url) if path.is_local else path.join("zarr.json").read_bytes() is not None):
            return None
        try:
            group = open_group(path, FORMAT)
            attrs = check_format(dict(group.attrs), path, FORMAT, complete=True)
            for key, want in {"stage": self.STAGE, "fingerprint": fingerprint}.items():
                if attrs.get(key) != want:
                    raise StoreFormatError(f"attribute {key!r} is {attrs.get(key)!r}, expected {want!r}")
            arr = get_node(group, "G", f"{path}/G")
            if not isinstance(arr, zarr.Array):
                raise StoreFormatError("the array 'G' is missing")
            check_plain_array(arr, f"{path}/G", "f", "checkpoint")
            n = self.n_items
            if arr.shape != (n, n) or arr.dtype != self.dtype:
                raise StoreFormatError(f"G is {arr.dtype} {arr.shape}, expected {self.dtype} {(n, n)}")
            rows = (attrs.get("checksums") or {}).get("G") if isinstance(attrs.get("checksums"), dict) else None
            digests = {(r[0], r[1]): r[2] for r in rows or () if isinstance(r, list) and len(r) == 3}
            if len(digests) != len(self.chunks) * (len(self.chunks) + 1) // 2:
                raise StoreFormatError("the checksums of G's lower blocks are missing")
        except StoreFormatError as exc:
            log.warning("ignoring the partial Gram at %s (%s): recomputing it", path, exc)
            return None
        name = f"edlae-read-gram-part-{fingerprint[:32]}"
        lower = {}
        for i, j, sel in self._lower():
            if (i, j) not in digests:
                log.warning("ignoring the partial Gram at %s (block %d,%d has no checksum): recomputing it", path, i, j)
                return None
            lower[(i, j)] = (_read_lower_block, arr, sel, str(digests[(i, j)]), f"checkpoint {path}", (i, j))
        return symmetric_from_lower(name, {}, lower, self.chunks, self.dtype)

    def base(self, group_fingerprints: list[str]) -> tuple[str, da.Array, list[str]] | None:
        """The whole-Gram checkpoint (of an earlier store) sharing the most groups with ``group_fingerprints``.

        Only a local checkpoint directory is searched; a checkpoint qualifies if it is complete, has
        this n, dtype and block size, and records its ``group_fingerprints``. Returns ``(path, G, its
        group fingerprints)`` with ``G`` verified block by block as read, or None.
        """
        if not self.location.is_local or not self.root.is_dir():
            return None
        want = set(group_fingerprints)
        best = None
        for d in sorted(self.root.glob("gram-*")):
            try:
                group = open_group(location(str(d)), FORMAT)
                attrs = check_format(dict(group.attrs), d, FORMAT, complete=True)
            except StoreFormatError:
                continue
            inputs, fps = attrs.get("inputs") or {}, attrs.get("group_fingerprints")
            if (attrs.get("stage") != "gram" or not isinstance(fps, list)
                    or [inputs.get(k) for k in ("n_items", "dtype", "block_size")]
                    != [self.n_items, self.dtype.name, self.block_size]):
                continue
            common = len(want & set(fps))
            if common and (best is None or common > best[0]):
                best = (common, d, group, attrs, fps)
        if best is None:
            return None
        _, d, group, attrs, fps = best
        try:
            arr = get_node(group, "G", f"{d}/G")
            if not isinstance(arr, zarr.Array) or arr.shape != (self.n_items,) * 2 or arr.dtype != self.dtype:
                raise StoreFormatError("G is missing or of another shape or dtype")
            check_plain_array(arr, f"{d}/G", "f", "checkpoint")
            checksums = attrs.get("checksums")
            G = verified_blocks(arr, checksums.get("G") if isinstance(checksums, dict) else None,
                                store=f"checkpoint {d}", array="G", fix="it is recomputed", finite=True)
        except StoreFormatError as exc:
            log.warning("not starting the Gram from %s (%s)", d, exc)
            return None
        return str(d), G, [str(f) for f in fps]

    def writer(self, fingerprint: str, part: da.Array, shard_fingerprints):
        """Start writing ``part``'s lower blocks: return ``(handle, Delayed of the [i, j, digest] rows)``.

        Compute the Delayed together with whatever else uses ``part`` (its blocks are then
        computed once), then :meth:`commit` or :meth:`discard` the handle.
        """
        final = self.path(fingerprint)
        if final.is_local:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.location.join(f".{final.name}.tmp-{uuid.uuid4().hex}")
        else:
            tmp = final
        group = tmp.open_group("w-" if tmp.is_local else "w")
        arr = group.create_array("G", shape=part.shape, dtype=part.dtype, fill_value=np.nan,
                                 chunks=(self.block_size, self.block_size))
        token = f"{fingerprint[:32]}-{uuid.uuid4().hex[:8]}"  # one write per run, never merged with another's
        name = f"edlae-write-gram-part-{token}"
        dsk = {}
        keys = []
        for i, j, sel in self._lower():
            dsk[(name, i, j)] = (_write_lower_block, arr, sel, (part.name, i, j), i, j)
            keys.append((name, i, j))
        final_key = f"edlae-write-gram-part-digests-{token}"
        dsk[final_key] = (list, keys)
        graph = HighLevelGraph.from_collections(final_key, dsk, dependencies=[part])
        return (tmp, group, final, fingerprint, self.inputs(shard_fingerprints)), Delayed(final_key, graph)

    def commit(self, handle, rows: list) -> None:
        """Mark a written partial complete (with its checksums) and move it into place."""
        tmp, group, final, fingerprint, inputs = handle
        try:
            mark_complete(group, FORMAT.stamp(stage=self.STAGE, fingerprint=fingerprint, inputs=inputs,
                                              checksums={"G": [list(r) for r in rows]}))
            if final.is_local:
                move_into_place(tmp.url, final.url, check_replaceable=_check_replaceable)
        except BaseException:
            tmp.remove()
            raise

    @staticmethod
    def discard(handle) -> None:
        """Remove what a failed write left."""
        handle[0].remove()


def _write_lower_block(arr, sel: tuple, block: np.ndarray, i: int, j: int) -> list:
    """Write one lower block of a partial Gram; return ``[i, j, digest]``. Runs on a worker."""
    block = np.asarray(block)
    arr[sel] = block
    return [i, j, digest(block)]


def _read_lower_block(arr, sel: tuple, expected: str, store: str, index: tuple) -> np.ndarray:
    """Read one lower block of a partial Gram, verified against its checksum (NaN: a chunk missing)."""
    part = f"block {index[0]},{index[1]}"
    fix = "it is recomputed"
    out = read_verified(arr, expected, store=store, array="G", part=part, fix=fix, selection=sel)
    if not np.isfinite(out).all():
        raise damaged(store, "G", part, "holds NaN or infinite values", fix)
    return out


def _ours_or_bare(path: str) -> bool:
    """A leftover is removed if it is a checkpoint or no zarr group at all (never another format)."""
    attrs = group_attrs(path)
    return attrs is None or FORMAT.is_ours(attrs)


def _check_replaceable(path) -> None:
    """Only a checkpoint (e.g. one a concurrent run with the same inputs wrote) is ever replaced."""
    if not FORMAT.is_ours(group_attrs(path)):
        raise OutputExistsError(f"refusing to replace {path}: it is not an edlae-dask checkpoint")

"""The recommendations store: the top-N items and scores of every user, written shard by shard.

This module is the only code that reads or writes this store. Layout in a local
directory (a zarr v3 group; for an fsspec URL see "Under a URL" below)::

    RECS/
      attrs: format, format_version, top_n, n_users, n_items, n_shards, chunk_rows,
             shard_offsets, exclude_seen, factors_path, factor_version,
             factors_interactions_fingerprint, interactions_path,
             interactions_fingerprint, scoring_token, created, code_version,
             item_filter, user_filter (None, or what ``score`` restricted: see below)
      items      int32   (n_users, top_n)  indices into item_ids, best first; -1 where not scored (yet, or
                                            not one of the users ``score --users`` selected)
      scores     float32 (n_users, top_n)  (x·U)·Vᵀ of those items; NaN where not scored
                                            (-inf: a user with fewer than top_n unseen, allowed items)
      user_ids   int64, uint64 or '<U{maxlen}' (n_users,)  row r is user user_ids[r] (as in the interaction store)
      item_ids   int64, uint64 or '<U{maxlen}' (n_items,)  a copy of the factors' item ids, so that ids
                                                    stay resolvable after that version is pruned
      done/00000 zarr group, attributes only: shard 0's completion marker
      done/00001 ...

Rows are chunked by ``chunk_rows``, the largest row count that divides every
interior shard boundary: the interaction store's ``shard_size`` for every store
``edlae-dask ingest`` writes (only its last shard is short). So each shard writes
whole chunks of its own and no two shards share a chunk; workers write shards
concurrently without locks.

A shard is done when its marker exists. The marker is written after the shard's
rows, in one atomic ``os.replace``, and records the factor version, the
interaction store fingerprint, the shard's row range and the scoring token (a
hash of everything the rows depend on); a marker that does not match the store's
attributes is ignored. A store is complete when every shard is done.

A scoring run for new inputs (another factor version, interaction store,
``top_n`` or sharding) writes a fresh store under a hidden sibling name
``.{name}.scoring-{token}`` and moves it to ``RECS`` only once complete, so readers
of ``RECS`` keep the previous complete recommendations until then, and a killed
run's sibling is found and resumed by the next run with the same inputs.

Filters (``score --items-allow/--items-deny``, ``--users``) keep the store's shape:
an excluded item is scored −inf before the top-N, like a seen item, and a user
outside ``--users`` keeps the unscored row (item -1, score NaN; its chunks are
never written, as they equal the fill value). The attribute ``item_filter``
holds the digest and counts of the excluded items, ``user_filter`` the digest and
count of the selected users; both enter the scoring and shard tokens, so a rerun
with other filters rescores (only the shards whose selection changed).

Each shard also has a shard token (attribute ``shard_tokens``): a hash of the
factor version, ``top_n``, ``exclude_seen``, the shard's row range and the
interaction store's fingerprint of that shard (its rows, users and items). When
new interactions change only some shards, the new store takes the rows of every
shard whose token is unchanged from the previous ``RECS`` (:func:`carry_over`),
and only the changed shards are scored.

One run writes ``RECS`` at a time: a run holds an exclusive ``flock`` on the
sibling file ``.{name}.lock`` from before it looks at ``RECS`` until it has
published (:func:`output_lock`); a second run waits for it, then finds the
store complete (nothing to do) or carries on from it. The kernel releases the
lock of a killed run, so no stale lock is left behind. (A lock rather than
per-shard claims: it also serializes the choice and clean-up of staging stores
and the publish, and needs no recovery of abandoned claims. It relies on
``flock`` working on the filesystem: local disks and NFS do.)

Under a URL (``s3://bucket/recs``: object storage, no rename and no ``flock``)
the same store is one version of a versioned layout::

    RECS/
      LATEST                   the name of the published version (one small object)
      versions/<token[:16]>/   zarr v3 group: attrs, user_ids, item_ids as above, and
        runs/<run>/items       the rows written by scoring run <run> (int32, -1 unscored)
        runs/<run>/scores      (float32, NaN unscored); chunked like the local arrays
        done/00000             shard 0's marker; its attributes name the run whose rows it completes

A version is named by its scoring token, so every run with the same inputs works
on the same version (and resumes a killed one). Publishing is one PUT of
``LATEST`` once every shard of the version is done; readers read ``LATEST``, open
that version and read each shard's rows from the run its marker names. After
``LATEST`` moved, versions other than the new one and the one it replaced (so a
reader that read the old ``LATEST`` can finish) are pruned if they were made
before the new one and nothing wrote to them for an hour (``_fs.PRUNE_GRACE_S``):
a run still writing one, for other inputs or resumed, is left alone, and so is
every version on a backend whose listings carry no modification times. A marker
counts only while the rows of its run exist, so should a version be pruned under
a run anyway, the markers that run writes afterwards are ignored and the next run
with its inputs scores those shards again. A rerun with nothing new reads
``LATEST``, finds every marker, and writes nothing.

Two runs at once under a URL take no lock; instead nothing they write can mix.
Each run writes its rows under its own run id (``runs/<run>/``), and only then the
shard's marker, in one PUT: a marker names rows that are complete and all from one
run. If both runs score a shard, the marker written last wins, and both are right,
because rows are a pure function of the scoring token (same factor version, same
interactions, same ``top_n``). Both switch ``LATEST`` to the same version. The
price is that a shard may be scored twice. (Chosen over a lease object: a lease
needs a conditional PUT, which not every fsspec backend offers, and a policy for a
holder that died; this needs neither.) Two runs with *different* inputs at once:
the later publish wins, as with the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from functools import reduce

import dask
import dask.array as da
import numpy as np
import zarr

from edlae_dask.errors import OutputExistsError, StoreFormatError
from edlae_dask.io import _fs
from edlae_dask.io._fs import Location, group_attrs, location
from edlae_dask.io._plain import check_plain_array, get_node
from edlae_dask.io.integrity import damaged, digest, read_verified
from edlae_dask.io.versioned import (
    StoreFormat,
    Versions,
    aside_pattern,
    by_created,
    check_format,
    move_into_place,
    open_group,
    open_lock_file,
    recover_aside,
    remove_leftovers,
    write_object,
)

__all__ = [
    "FORMAT",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Recommendations",
    "carry_over",
    "chunk_rows_for",
    "create_store",
    "done_shards",
    "open_recommendations",
    "output_lock",
    "prepare_output",
    "publish",
    "scoring_token",
    "shard_tokens",
    "start_run",
    "write_shard",
]

FORMAT_NAME = "edlae-dask/recommendations"
FORMAT_VERSION = 1
FORMAT = StoreFormat(
    FORMAT_NAME, FORMAT_VERSION, "recommendations store",
    foreign_fix="Pass the --out directory of `edlae-dask score`",
    version_fix="Score again with this version into another --out (or remove it yourself), or read it with the "
                "edlae-dask that wrote it",
    access="reads and writes",  # a rerun writes into the store it finds
)
_DONE = "done"
_STAGING = ".scoring-"
# under a URL
_LATEST = "LATEST"
_VERSIONS = "versions"
_RUNS = "runs"
_VERSION_NAME = re.compile(r"^[0-9a-f]{16}$")
_RUN_NAME = re.compile(r"^[0-9a-f]{8,32}$")
_REQUIRED_ATTRS = ("top_n", "n_users", "n_items", "n_shards", "chunk_rows", "shard_offsets", "factor_version",
                   "interactions_fingerprint", "scoring_token")
_ID_CHUNK = 1 << 18
log = logging.getLogger("edlae_dask.scoring")

try:  # fixed-width unicode ids have no ratified zarr v3 spec yet; zarr-python reads them back fine
    from zarr.errors import UnstableSpecificationWarning as _UnstableSpecWarning
except ImportError:  # pragma: no cover - older zarr
    _UnstableSpecWarning = UserWarning


# --------------------------------------------------------------------------- layout helpers


def chunk_rows_for(shard_offsets) -> int:
    """Rows per zarr chunk so that every shard boundary is a chunk boundary.

    The greatest common divisor of the interior boundaries ``shard_offsets[1:-1]``
    (the last shard may end inside a chunk: it is the last chunk). Equals the
    shard size when all shards but the last have that size; ``n_users`` for one shard.
    """
    offsets = [int(o) for o in shard_offsets]
    interior = offsets[1:-1]
    return max(1, reduce(math.gcd, interior)) if interior else max(1, offsets[-1])


def scoring_token(*, factor_version: str, n_items: int, interactions_fingerprint: str, shard_offsets,
                  top_n: int, exclude_seen: bool, filters: str | None = None) -> str:
    """sha256 hex of everything a store's rows depend on; stores and markers with equal tokens are interchangeable.

    ``filters``: a digest of the item and user filters of ``score`` (None: no filter, and the token is the one
    stores written before filters existed carry, so they stay valid).
    """
    parts = [FORMAT_NAME, FORMAT_VERSION, factor_version, int(n_items), interactions_fingerprint,
             [int(o) for o in shard_offsets], int(top_n), bool(exclude_seen)]
    if filters is not None:
        parts.append(str(filters))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def shard_tokens(*, factor_version: str, n_items: int, shard_fingerprints, shard_offsets, top_n: int,
                 exclude_seen: bool, shard_filters=None) -> list[str]:
    """sha256 hex per shard of everything its rows depend on; equal tokens, interchangeable rows.

    ``shard_filters``: per shard, a digest of the filters that shape its rows (the item filter and the
    shard's selected users), or None for none (the token of a store written before filters existed).
    """
    offsets = [int(o) for o in shard_offsets]
    filters = list(shard_filters) if shard_filters is not None else [None] * len(offsets[:-1])
    tokens = []
    for s, fp in enumerate(shard_fingerprints):
        parts = [FORMAT_NAME, FORMAT_VERSION, factor_version, int(n_items), int(top_n), bool(exclude_seen), str(fp),
                 offsets[s], offsets[s + 1]]
        if filters[s] is not None:
            parts.append(str(filters[s]))
        tokens.append(hashlib.sha256(json.dumps(parts).encode()).hexdigest())
    return tokens


@contextlib.contextmanager
def output_lock(target):
    """Hold the exclusive lock of the recommendations store ``target`` (waiting for another run if need be).

    The lock file is removed on release. A waiter that then holds a lock on the
    removed file sees that the path no longer names it, and locks the path again.
    A URL takes no lock (none is needed: see the module docstring). The lock file
    is never opened through a symbolic link (:func:`~edlae_dask.io.versioned.open_lock_file`:
    one planted there is refused, so scoring never truncates the file it points to).
    """
    loc = location(target)
    if not loc.is_local:
        yield
        return
    import fcntl  # POSIX only, and only for local stores

    target = loc.url
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f".{name}.lock")
    waited = False
    while True:
        fh = open_lock_file(path)  # held (and locked) across the yield below, closed by hand
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    fh.seek(0)
                    log.info("waiting for another scoring run of %s to finish (%s holds %s)", target,
                             fh.read().strip() or "another process", path)
                    waited = True
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(fh.fileno()), os.stat(path))
            except FileNotFoundError:
                same = False
        except BaseException:
            fh.close()
            raise
        if same:
            break
        fh.close()  # the holder removed the file as it finished: lock the path anew
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        fh.close()  # closing releases the lock


def staging_path(target: str, token: str) -> str:
    """Hidden sibling of ``target`` where a run for ``token`` writes before it is published."""
    parent, name = os.path.split(target)
    return os.path.join(parent, f".{name}{_STAGING}{token[:16]}")


def _versions(root: Location) -> Versions:
    """Under a URL: ``LATEST`` and ``versions/``."""
    return Versions(root, _LATEST, _VERSIONS, valid=lambda text: bool(_VERSION_NAME.match(text)),
                    what="a recommendations version")


def _latest_version(root: Location) -> Location | None:
    """The version ``LATEST`` names under a URL root (None if there is none)."""
    return _versions(root).published()


def _check_ours(path: str, attrs: dict | None) -> dict:
    """Format name first, then version (other checks mean nothing for another format)."""
    check_format(attrs, path, FORMAT)
    for key in _REQUIRED_ATTRS:
        if key not in attrs:
            raise StoreFormatError(f"{path}: attribute {key!r} is missing; the store is damaged, score again")
    return attrs


# --------------------------------------------------------------------------- writing


def prepare_output(out, *, meta: dict, user_ids: np.ndarray, item_ids: np.ndarray) -> tuple[Location, bool]:
    """Decide where a scoring run writes and make sure that store exists; return ``(work, in_place)``.

    Parameters
    ----------
    out : str, os.PathLike or Location
        The recommendations store to produce (a local directory or a URL).
    meta : dict
        Its attributes (see the module docstring); ``meta["scoring_token"]`` decides.
    user_ids, item_ids : numpy.ndarray
        Written when a store is created.

    Returns
    -------
    work : Location
        ``out`` itself when it already holds a store of the same token (a rerun:
        finished shards are skipped, missing ones written in place), else the hidden
        staging sibling for this token (created, or found and resumed). Under a
        URL: the published version if it has this token, else ``versions/<token>``.
    in_place : bool

    Raises
    ------
    OutputExistsError
        ``out`` is a file, or a non-empty directory that is not a recommendations store.
    StoreFormatError
        ``out`` is a recommendations store of another ``format_version``.
    """
    loc = location(out)
    token = meta["scoring_token"]
    if not loc.is_local:
        return _prepare_version(loc, meta=meta, user_ids=user_ids, item_ids=item_ids)
    target = loc.url
    # under the output's lock (scoring holds it), so no live run is between the two renames of a publish: one
    # killed there left the previous store aside and nothing at `out`; put it back, and drop older asides
    def ours(path):
        return FORMAT.is_ours(group_attrs(path))

    recover_aside(target, ours=ours)
    remove_leftovers(os.path.dirname(target), aside_pattern(target), ours=ours)
    existing = _classify_output(target)
    if existing is not None and existing.get("scoring_token") == token:
        return loc, True
    work = staging_path(target, token)
    _remove_stale_staging(target, keep=work)
    if os.path.lexists(work):
        attrs = group_attrs(work)
        if FORMAT.is_ours(attrs) and attrs.get("scoring_token") == token:
            return Location(work), False
        shutil.rmtree(work, ignore_errors=True)  # a half-created staging store: start it again
    os.makedirs(os.path.dirname(target), exist_ok=True)
    create_store(work, meta=meta, user_ids=user_ids, item_ids=item_ids)
    return Location(work), False


def _prepare_version(root: Location, *, meta: dict, user_ids, item_ids) -> tuple[Location, bool]:
    """:func:`prepare_output` under a URL: the version of this token (no lock; see the module docstring)."""
    token = meta["scoring_token"]
    latest = _classify_url_output(root)
    if latest is not None and (group_attrs(latest) or {}).get("scoring_token") == token:
        return latest, True
    work = root.join(_VERSIONS, token[:16])
    attrs = group_attrs(work)
    if FORMAT.is_ours(attrs) and attrs.get("scoring_token") == token:
        return work, False  # resume it (or join a run working on it now)
    create_store(work, meta=meta, user_ids=user_ids, item_ids=item_ids)
    return work, False


def _classify_url_output(root: Location) -> Location | None:
    """The published version under a URL root, None if nothing is published; raise if ``root`` is not ours."""
    latest = _latest_version(root)
    if latest is not None:
        _check_ours(latest.url, group_attrs(latest))
        return latest
    if set(root.children()) - {_VERSIONS, _LATEST}:  # LATEST: another run may have just published
        raise OutputExistsError(
            f"refusing to write recommendations to {root}: it holds objects but no {_LATEST} pointer, so it is not "
            "an edlae-dask recommendations store. Choose another --out, or remove them yourself"
        )
    return None


def _classify_output(target: str) -> dict | None:
    """Attributes of our store at ``target``; None if absent or an empty directory; raise for anything else."""
    if not os.path.lexists(target):
        return None
    if os.path.isdir(target) and not os.path.islink(target):
        if not os.listdir(target):
            return None
        attrs = group_attrs(target)
        if FORMAT.is_ours(attrs):
            return _check_ours(target, attrs)
    raise OutputExistsError(
        f"refusing to write recommendations to {target}: it exists and is not an edlae-dask recommendations store "
        "or an empty directory, and scoring only ever replaces those. Choose another --out, or remove it yourself"
    )


def _remove_stale_staging(target: str, *, keep: str) -> None:
    parent, name = os.path.split(target)
    prefix = f".{name}{_STAGING}"
    if not os.path.isdir(parent):
        return
    for entry in os.listdir(parent):
        path = os.path.join(parent, entry)
        if entry.startswith(prefix) and path != keep:
            attrs = group_attrs(path)
            if attrs is None or FORMAT.is_ours(attrs):  # never touch what is not ours
                shutil.rmtree(path, ignore_errors=True)


def create_store(path, *, meta: dict, user_ids: np.ndarray, item_ids: np.ndarray) -> None:
    """Create an empty recommendations store (all rows unscored) with attributes ``meta``.

    Under a URL the rows arrays are made per run (:func:`start_run`), and two runs
    may create one version at once: every node is written whole, without asking
    zarr whether it exists first (that check and the creation would race), the ids
    first and the group's attributes last, so a version that has them has its ids.
    """
    loc = location(path)
    n_users, top_n, chunk_rows = int(meta["n_users"]), int(meta["top_n"]), int(meta["chunk_rows"])
    # the ids' digests, verified when the store is opened (the rows' are in the shards' markers)
    attrs = FORMAT.stamp(meta, checksums={"user_ids": digest(user_ids), "item_ids": digest(item_ids)})
    if not loc.is_local:
        _write_ids(loc, "user_ids", user_ids, min(chunk_rows, _ID_CHUNK))
        _write_ids(loc, "item_ids", item_ids, _ID_CHUNK)
        group = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
        loc.join("zarr.json").write_bytes(json.dumps(group).encode())
        return
    root = loc.open_group("w-")
    _create_rows(loc, "", n_users, top_n, chunk_rows)
    _write_ids(loc, "user_ids", user_ids, min(chunk_rows, _ID_CHUNK))
    _write_ids(loc, "item_ids", item_ids, _ID_CHUNK)
    root.create_group(_DONE)
    root.attrs.update(attrs)


def _create_rows(loc: Location, prefix: str, n_users: int, top_n: int, chunk_rows: int) -> None:
    row_chunk = (min(chunk_rows, max(1, n_users)), top_n)
    loc.join(f"{prefix}items").create_array(shape=(n_users, top_n), dtype="<i4", chunks=row_chunk, fill_value=-1)
    loc.join(f"{prefix}scores").create_array(shape=(n_users, top_n), dtype="<f4", chunks=row_chunk,
                                            fill_value=np.nan)


def start_run(work) -> dict:
    """Prepare ``work`` for a run's rows; return what that run's markers must carry.

    A local store has one ``items``/``scores`` pair (its writers hold the lock):
    nothing to do. Under a URL a run gets its own arrays ``runs/<run>/`` and its
    markers name the run (see the module docstring).
    """
    loc = location(work)
    if loc.is_local:
        return {}
    run = uuid.uuid4().hex[:16]
    meta = dict(loc.open_group("r").attrs)
    _create_rows(loc, f"{_RUNS}/{run}/", int(meta["n_users"]), int(meta["top_n"]), int(meta["chunk_rows"]))
    return {"run": run}


def _write_ids(loc: Location, name: str, ids: np.ndarray, chunk: int) -> None:
    if ids.dtype == object or ids.dtype.kind not in "iuU":
        raise StoreFormatError(f"{name} has dtype {ids.dtype}; only integer or fixed-width unicode ids are stored")
    n = ids.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _UnstableSpecWarning)
        arr = loc.join(name).create_array(shape=(n,), dtype=ids.dtype, chunks=(max(1, min(chunk, n)),))
    if n:
        arr[:] = ids


def _rows_prefix(marker: dict) -> str:
    """Where the rows a marker completes are: the store's own arrays, or its run's (under a URL)."""
    run = marker.get("run")
    return "" if run is None else f"{_RUNS}/{run}/"


def write_shard(path, shard: int, start: int, items: np.ndarray, scores: np.ndarray, marker: dict) -> None:
    """Write one shard's rows ``start:start + len(items)``, then its completion marker.

    Pure and picklable: runs inside a Dask task (``path`` a Location, so the worker
    opens a URL store itself). The rows cover whole zarr chunks of this shard only
    (see :func:`chunk_rows_for`), so concurrent shards never write one chunk. The
    marker (a zarr group's ``zarr.json``, attributes only) exists whole or not at
    all, and only after the rows: locally it is written to a temporary file and
    moved into place with ``os.replace``; under a URL it is one PUT, and the rows
    are those of the marker's run (``marker["run"]``).
    """
    loc = location(path)
    root = loc.open_group("r+")
    stop = start + items.shape[0]
    prefix = _rows_prefix(marker)
    items, scores = items.astype("<i4", copy=False), scores.astype("<f4", copy=False)
    root[f"{prefix}items"][start:stop] = items
    root[f"{prefix}scores"][start:stop] = scores
    # the rows' checksum goes into the marker, written after them: readers verify the shard against it
    attrs = dict(marker, shard=int(shard), rows=[start, stop], checksum=digest(items, scores))
    doc = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
    write_object(loc.join(_DONE, f"{shard:05d}", "zarr.json"), json.dumps(doc).encode())


def carry_over(previous, work, *, shards, marker: dict) -> list[int]:
    """Copy into ``work`` the rows of each of ``shards`` whose shard token is the same in ``previous``; return them.

    ``previous`` is the published store being replaced (absent, foreign or
    without shard tokens: nothing is carried; under a URL, the root whose
    ``LATEST`` version is read). A shard is taken only if it is done in
    ``previous`` and its token there equals its token in ``work`` (same factor
    version, top_n, rows, users and interactions). Its rows are copied, then its
    marker (``marker`` plus shard and rows) is written, as if it was scored.
    """
    prev = location(previous)
    if not prev.is_local:
        prev = _latest_version(prev)
    elif not os.path.isdir(prev.url):
        prev = None
    attrs = group_attrs(prev) if prev is not None else None
    if not FORMAT.is_readable(attrs):
        return []
    meta = dict(location(work).open_group("r").attrs)
    old_tokens, new_tokens = attrs.get("shard_tokens"), meta.get("shard_tokens")
    if not (isinstance(old_tokens, list) and len(old_tokens) == attrs.get("n_shards") and isinstance(new_tokens, list)):
        return []  # stores written before shard tokens existed: nothing is known to be unchanged
    old_markers = _done_markers(prev, attrs)
    reusable = {old_tokens[s]: s for s in old_markers}
    offsets, old_offsets = meta["shard_offsets"], attrs["shard_offsets"]
    src = prev.open_group("r")
    runs = {}  # rows prefix -> its checked arrays
    carried = []
    for s in shards:
        old = reusable.get(new_tokens[s])
        if old is None:
            continue
        a, b = old_offsets[old], old_offsets[old + 1]
        prefix = _rows_prefix(old_markers[old])
        if prefix not in runs:
            runs[prefix] = _rows_arrays(src, prev.url, prefix, (int(attrs["n_users"]), int(attrs["top_n"])))
        items, scores = _read_rows(runs[prefix]["items"], runs[prefix]["scores"], a, b,
                                   old_markers[old].get("checksum"), f"recommendations store {prev.url}", old)
        write_shard(work, s, offsets[s], items, scores, dict(marker, carried_over=True))
        carried.append(s)
    return carried


def _rows_arrays(root, path: str, prefix: str, shape: tuple[int, int]) -> dict:
    """The ``items`` and ``scores`` arrays under ``prefix``, checked to be plain data of ``shape``."""
    out = {}
    for name, kinds in (("items", "i"), ("scores", "f")):
        where = f"{path}/{prefix}{name}"
        arr = get_node(root, f"{prefix}{name}", where)
        if arr is None:
            raise StoreFormatError(f"{path}: array {prefix}{name!r} is missing; the store is damaged, score again")
        if not isinstance(arr, zarr.Array):
            raise StoreFormatError(f"{where} is a group, expected an array; the store is damaged, score again")
        check_plain_array(arr, where, kinds, "recommendations store")
        if arr.shape != shape:
            raise StoreFormatError(
                f"{where} has shape {arr.shape}, expected {shape}; the store is damaged, score again")
        out[name] = arr
    return out


def _done_markers(path, meta: dict) -> dict[int, dict]:
    """The markers of the store at ``path`` that exist and match its attributes: shard -> marker attributes."""
    loc = location(path)
    offsets = meta["shard_offsets"]
    marker_locs = [loc.join(_DONE, f"{s:05d}", "zarr.json") for s in range(int(meta["n_shards"]))]
    found = loc.read_many(marker_locs)  # one request for all of them under a URL
    done = {}
    for s, mloc in enumerate(marker_locs):
        try:
            attrs = json.loads(found[str(mloc)]).get("attributes", {})
        except (KeyError, ValueError, AttributeError):
            continue
        run = attrs.get("run")
        if (
            isinstance(attrs, dict)
            and attrs.get("scoring_token") == meta["scoring_token"]
            and attrs.get("factor_version") == meta["factor_version"]
            and attrs.get("interactions_fingerprint") == meta["interactions_fingerprint"]
            and attrs.get("rows") == [offsets[s], offsets[s + 1]]
            # a run's rows exist only under a URL; the name never leads outside runs/
            and (run is None if loc.is_local else isinstance(run, str) and bool(_RUN_NAME.match(run)))
        ):
            done[s] = attrs
    if not loc.is_local:
        whole = _runs_with_rows(loc, {m["run"] for m in done.values()}, (int(meta["n_users"]), int(meta["top_n"])))
        done = {s: m for s, m in done.items() if m["run"] in whole}
    return done


def _runs_with_rows(loc: Location, runs: set, shape: tuple[int, int]) -> set:
    """Those of ``runs`` whose ``items`` and ``scores`` arrays exist under ``loc`` with ``shape`` (one request).

    A marker may outlive its run's rows: a publish that pruned this version while
    the run still wrote deletes what it listed, not the markers written after. Such
    a marker must not count, so that a rerun scores its shard again.
    """
    metas = {run: [loc.join(_RUNS, run, name, "zarr.json") for name in ("items", "scores")] for run in sorted(runs)}
    found = loc.read_many([m for pair in metas.values() for m in pair])
    whole = set()
    for run, pair in metas.items():
        try:
            docs = [json.loads(found[str(m)]) for m in pair]
        except (KeyError, ValueError):
            continue
        if all(isinstance(d, dict) and d.get("node_type") == "array" and d.get("shape") == list(shape) for d in docs):
            whole.add(run)
    return whole


def done_shards(path, meta: dict | None = None) -> list[int]:
    """Shards of the store at ``path`` whose markers exist and match its attributes, ascending.

    Under a URL a marker counts only if the rows of the run it names exist (see :func:`_runs_with_rows`).
    """
    loc = location(path)
    meta = meta if meta is not None else dict(loc.open_group("r").attrs)
    return sorted(_done_markers(loc, meta))


def publish(work, out) -> None:
    """Make the complete store ``work`` the recommendations at ``out``, replacing the previous ones there.

    Locally, two renames: ``out`` is moved aside, ``work`` moved into place, the
    old one removed. A reader opening ``out`` between the two renames finds
    nothing (an error, never a mix of versions). Under a URL, one PUT of
    ``LATEST`` naming the version ``work``, then the pruning of older versions
    that nothing has written to for ``_fs.PRUNE_GRACE_S`` seconds (an hour).
    """
    work, root = location(work), location(out)
    if work.is_local:
        # re-check just before replacing: something else may have appeared meanwhile
        move_into_place(work.url, root.url, check_replaceable=_classify_output)
        return
    _classify_url_output(root)  # re-check just before the switch: never publish into what is not ours
    versions = _versions(root)
    previous = versions.publish(work.name)
    # versions are named by token, so aged by their "created" attribute: one a concurrent run created after
    # ours (or one without attributes, which may be being created right now) is left alone. One made earlier
    # may still be written, by a run for other inputs that started before ours or a resumed old run: deleting
    # under it would leave markers without their rows, so recent writes (or a backend that reports no times)
    # keep it until a later publish
    versions.prune(current=work.name, previous=previous, age=by_created(FORMAT), idle_s=_fs.PRUNE_GRACE_S)




# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Recommendations:
    """A recommendations store, opened and validated.

    Attributes
    ----------
    path : str
        The store opened (an absolute local path or a URL).
    user_ids : numpy.ndarray of shape (n_users,)
        Row r holds the recommendations of user ``user_ids[r]``.
    items : dask.array.Array of shape (n_users, top_n), int32
        Indices into ``item_ids``, best first (lazily read, chunked by shard).
    scores : dask.array.Array of shape (n_users, top_n), float32
        ``(x·U)·Vᵀ`` of those items; ``-inf`` pads a user with fewer than
        ``top_n`` unseen items. Rows of unfinished shards (only with
        ``allow_incomplete=True``) hold item -1 and score NaN.
    item_ids : numpy.ndarray of shape (n_items,)
        The factors' item ids: ``item_ids[items]`` are the original ids.
    meta : dict
        The store's attributes: ``top_n``, ``factor_version``, fingerprints, ``shard_offsets``, ...
    complete : bool
        Every shard is done.
    done_shards : tuple of int
    version : str or None
        Under a URL: the version read (the one ``LATEST`` names); None locally.

    Examples
    --------
    >>> rec = open_recommendations("recs")                       # doctest: +SKIP
    >>> rec.item_ids[rec.items[:5].compute()]                     # doctest: +SKIP
    """

    path: str
    user_ids: np.ndarray = field(repr=False)
    items: da.Array = field(repr=False)
    scores: da.Array = field(repr=False)
    item_ids: np.ndarray = field(repr=False)
    meta: dict = field(repr=False)
    complete: bool
    done_shards: tuple[int, ...] = field(repr=False)
    version: str | None = None

    @property
    def top_n(self) -> int:
        return int(self.meta["top_n"])

    @property
    def factor_version(self) -> str:
        return str(self.meta["factor_version"])

    @property
    def shard_offsets(self) -> tuple[int, ...]:
        return tuple(int(o) for o in self.meta["shard_offsets"])


_ARRAY_KINDS = {"items": "i", "scores": "f", "user_ids": "iuU", "item_ids": "iuU"}  # uint64: ids >= 2**63


def open_recommendations(path, *, allow_incomplete: bool = False, storage_options=None) -> Recommendations:
    """Open and validate a recommendations store.

    Parameters
    ----------
    path : str, os.PathLike or Location
        The ``--out`` of ``edlae-dask score``, a local directory or a URL (or, with
        ``allow_incomplete``, a staging store of an unfinished run: the ``path`` of
        its :class:`~edlae_dask.scoring.ScoreReport`).
    allow_incomplete : bool, default=False
        Open a store whose shards are not all done; unscored rows hold item -1
        and score NaN.
    storage_options : dict, optional
        fsspec options for a URL (default: fsspec's defaults and environment).

    Returns
    -------
    Recommendations

    Raises
    ------
    StoreFormatError
        Missing path, not a zarr v3 group, another format or ``format_version``,
        arrays missing or of an unexpected dtype/shape (object dtype is never
        loaded), or an incomplete store without ``allow_incomplete``.
    """
    loc = location(path, storage_options)
    path = loc.url
    if not loc.exists():
        raise StoreFormatError(
            f"no recommendations store at {path}: the path does not exist. Create one with "
            "`edlae-dask score --factors F --interactions S --out PATH`"
        )
    version = None
    if not loc.is_local:
        latest = _latest_version(loc)
        if latest is not None:  # else ``path`` names a version itself (a staging one)
            loc, version = latest, latest.name
        elif loc.join("zarr.json").read_bytes() is None and _VERSIONS in loc.children():
            raise StoreFormatError(
                f"no recommendations are published at {path} yet: a scoring run has not finished (its partial work "
                f"is under {path}/{_VERSIONS}/). Run the same `edlae-dask score` again to finish it"
            )
    root = open_group(loc, FORMAT)
    meta = _check_ours(loc.url, dict(root.attrs))
    n_users, n_items, top_n = int(meta["n_users"]), int(meta["n_items"]), int(meta["top_n"])
    shapes = {"user_ids": (n_users,), "item_ids": (n_items,)}
    if loc.is_local:
        shapes.update(items=(n_users, top_n), scores=(n_users, top_n))
    arrays = {}
    for name, shape in shapes.items():
        arr = get_node(root, name, f"{path}/{name}")
        if arr is None:
            raise StoreFormatError(f"{path}: array {name!r} is missing; the store is damaged, score again")
        if not isinstance(arr, zarr.Array):
            raise StoreFormatError(f"{path}: {name} is a group, expected an array; the store is damaged, score again")
        check_plain_array(arr, f"{path}/{name}", _ARRAY_KINDS[name], "recommendations store")
        if arr.shape != shape:
            raise StoreFormatError(
                f"{path}: {name} has shape {arr.shape}, expected {shape}; the store is damaged, score again"
            )
        arrays[name] = arr
    markers = _done_markers(loc, meta)
    done = sorted(markers)
    complete = len(done) == int(meta["n_shards"])
    if not complete and not allow_incomplete:
        missing = sorted(set(range(int(meta["n_shards"]))) - set(done))
        raise StoreFormatError(
            f"{path} is an incomplete recommendations store: {len(done)} of {meta['n_shards']} shards are scored "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}). Its scoring run was interrupted or is "
            "still going: run the same `edlae-dask score` again to finish it, or pass allow_incomplete=True to "
            "read the finished shards"
        )
    items, scores = _rows_of_runs(root, loc.url, meta, markers)
    sums = meta.get("checksums") if isinstance(meta.get("checksums"), dict) else {}
    ids = {name: read_verified(arrays[name], sums.get(name), store=f"recommendations store {path}", array=name,
                               fix=_DAMAGED_FIX) for name in ("user_ids", "item_ids")}
    return Recommendations(
        path=path,
        user_ids=ids["user_ids"],
        items=items,
        scores=scores,
        item_ids=ids["item_ids"],
        meta=meta,
        complete=complete,
        done_shards=tuple(done),
        version=version,
    )


_DAMAGED_FIX = "Score again into a new --out (or restore the store from a copy)"


def _read_rows(items_arr, scores_arr, a: int, b: int, expected: str | None, store: str,
               shard: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``a:b`` (shard ``shard``) of the two arrays, checked against the shard marker's checksum."""
    part = f"of shard {shard} (rows {a}..{b - 1})"
    items = read_verified(items_arr, None, store=store, array="items", part=part, fix=_DAMAGED_FIX,
                          selection=slice(a, b))
    scores = read_verified(scores_arr, None, store=store, array="scores", part=part, fix=_DAMAGED_FIX,
                           selection=slice(a, b))
    if expected is not None and digest(items, scores) != expected:
        raise damaged(store, "items/scores", part, "do not match the checksum written with them", _DAMAGED_FIX)
    return items, scores


def _rows_of_runs(root, path: str, meta: dict, markers: dict) -> tuple[da.Array, da.Array]:
    """Each done shard's rows, verified when read; the rows of unscored shards -1 / NaN.

    Under a URL a shard's rows are those of the run its marker names.

    One task per shard reads both arrays' rows and checks them against the marker's
    checksum; ``items`` and ``scores`` are its two halves.
    """
    n_users, top_n, offsets = int(meta["n_users"]), int(meta["top_n"]), meta["shard_offsets"]
    runs, items, scores = {}, [], []
    store = f"recommendations store {path}"
    for s in range(int(meta["n_shards"])):
        a, b = int(offsets[s]), int(offsets[s + 1])
        if s not in markers:
            items.append(da.full((b - a, top_n), -1, dtype="<i4"))
            scores.append(da.full((b - a, top_n), np.nan, dtype="<f4"))
            continue
        prefix = _rows_prefix(markers[s])
        if prefix not in runs:
            runs[prefix] = _rows_arrays(root, path, prefix, (n_users, top_n))
        rows = dask.delayed(_read_rows, pure=True)(
            runs[prefix]["items"], runs[prefix]["scores"], a, b, markers[s].get("checksum"), store, s,
            dask_key_name=f"edlae-read-recommendations-{dask.base.tokenize(path, prefix, s, markers[s])}")
        items.append(da.from_delayed(rows[0], shape=(b - a, top_n), dtype="<i4"))
        scores.append(da.from_delayed(rows[1], shape=(b - a, top_n), dtype="<f4"))
    return da.concatenate(items), da.concatenate(scores)

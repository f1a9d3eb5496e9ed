"""The interaction store: a users × items CSR matrix, sharded by user range.

This module is the only code that reads or writes this store. Layout (a zarr v3
group in a local directory, or under an fsspec URL: :mod:`edlae_dask.io._fs`)::

    STORE/
      attrs: format, format_version, n_users, n_items, nnz, n_shards, shard_size,
             fingerprint, shard_fingerprints, created, code_version, source, complete (written last),
             shard_checksums (a digest of each shard's three arrays), checksums (of the 1-d arrays):
             every read is verified against them (:mod:`edlae_dask.io.integrity`)
      shard_offsets          int64 (n_shards + 1,)  shard s holds users offsets[s]:offsets[s+1]
      shards/00000/indptr    int64 (users in shard + 1,)  local, starts at 0
      shards/00000/indices   int32 (nnz of shard,)        item index, sorted and unique per row
      shards/00000/values    float32 (nnz of shard,)
      shards/00001/...       (each array one chunk: a worker reads one shard and nothing else)
      user_ids, item_ids     int64, uint64 (ids of 2**63 and above), or fixed-width unicode '<U{maxlen}'
                             (never object; maxlen <= MAX_ID_CHARS)
      item_counts            int64 (n_items,)  stored entries per item

A store is marked complete last, and a store without that marker is never read.
In a local directory it is written under a temporary sibling name and renamed into
place, so a reader finds a complete store or none. A local ingest holds a claim on
its path from its first look at it to its publish (:func:`claim_output`); a run that
holds it alone puts back a store that a replace killed between its two renames left
aside, and removes killed runs' temporary stores and spill folders.

Under a URL (object storage has no rename) each ingest writes an attempt of its own
and then switches a pointer::

    STORE/
      CURRENT                  the name of the published attempt (one small object)
      attempts/<attempt>/      one ingest's store, laid out as above, ``complete`` last

Publishing is one PUT of ``CURRENT`` (atomic per object in S3 and GCS), after the
attempt is complete: a reader sees the previous complete store until then, and
two ingests at once never write into one prefix; the later publish wins. After
the switch, attempts other than the new one and the one it replaced (a reader that
read the old ``CURRENT`` may still be reading it) are pruned once nothing has
written to them for an hour (``_fs.PRUNE_GRACE_S``): a killed ingest's attempt
goes then, a running one's stays. A reader opens the group at ``STORE`` itself if
there is one (a store written in place by an edlae-dask from before attempts, or an
attempt's own URL), else the attempt ``CURRENT`` names; publishing over a store of
the old layout removes it just after the switch.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import re
import secrets
import shutil
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import zarr

from edlae_dask.errors import InputDataError, OutputExistsError, ParameterError, StoreFormatError
from edlae_dask.io import _fs
from edlae_dask.io._fs import Location, group_attrs, location
from edlae_dask.io._plain import check_plain_array
from edlae_dask.io.integrity import damaged, digest, read_verified
from edlae_dask.io.versioned import (
    StoreFormat,
    Versions,
    aside_pattern,
    check_format,
    claim,
    is_complete,
    mark_complete,
    move_into_place,
    open_group,
    recover_aside,
    remove_leftovers,
)

__all__ = [
    "FORMAT",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "InteractionStore",
    "check_output_path",
    "claim_output",
    "normalize_ids",
    "open_interactions",
    "read_shard",
    "write_interactions",
    "write_interactions_from_shards",
]

FORMAT_NAME = "edlae-dask/interactions"
FORMAT_VERSION = 1
FORMAT = StoreFormat(
    FORMAT_NAME, FORMAT_VERSION, "interaction store",
    foreign_fix="Pass the directory written by `edlae-dask ingest`, or re-ingest the data",
    version_fix="Re-ingest the raw data with this version (`edlae-dask ingest ... --overwrite`)",
    incomplete_fix="Re-run the ingest with --overwrite",
)

_REQUIRED_INT_ATTRS = ("n_users", "n_items", "nnz", "n_shards", "shard_size")
_SHARD_DTYPES = {"indptr": np.dtype("<i8"), "indices": np.dtype("<i4"), "values": np.dtype("<f4")}
# id arrays are chunked so one chunk stays a few MB whatever the catalogue size
_ID_CHUNK = 1 << 18
# under a URL
_CURRENT = "CURRENT"
_ATTEMPTS = "attempts"
_ATTEMPT_NAME = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}$")  # UTC time to the microsecond, then random

try:  # zarr marks fixed-width unicode as "no v3 spec yet"; we accept that, see _write_1d
    from zarr.errors import UnstableSpecificationWarning as _UnstableSpecWarning
except ImportError:  # pragma: no cover - older zarr
    _UnstableSpecWarning = UserWarning


# --------------------------------------------------------------------------- ids


#: The longest id a store takes, in characters. String ids are stored fixed-width (``<U{longest}``, 4 bytes
#: per character for every id), so one long id costs its length in every id; this bound keeps that cost at
#: most 1 KiB an id. Real keys (integers, UUIDs, hex digests) are far shorter; a longer one is usually a
#: field that swallowed others (an unbalanced quote), or an id better mapped to a short key.
MAX_ID_CHARS = 256
#: C0 control characters and DEL: never part of an id (and a NUL at its end would be lost in ``<U..``)
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_INT64_MAX = int(np.iinfo(np.int64).max)


def shown_id(x, limit: int = 60) -> str:
    """``repr`` of an id for a one-line message, cut to about ``limit`` characters."""
    text = repr(x)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(x)):,} characters)"


def id_text_problem(text: str) -> str | None:
    """What makes the string ``text`` unusable as an id (empty, a control character, too long), or None.

    The one rule for string ids, shared by the readers (which name the line) and
    :func:`normalize_ids` (which names the position).
    """
    if not text:
        return "is an empty string; every id must be non-empty"
    bad = CONTROL_CHARS.search(text)
    if bad:
        return (f"{shown_id(text)} contains the control character {bad.group()!r} at position {bad.start()}; ids "
                "must be printable text. Remove control characters (NUL, tab, line breaks, ...) from the ids")
    if len(text) > MAX_ID_CHARS:
        return (f"{shown_id(text)} is {len(text):,} characters long; ids may be at most {MAX_ID_CHARS} characters "
                "(every stored id takes the space of the longest). Map long ids to short keys (e.g. a hash) first")
    return None


def normalize_ids(ids, *, n: int | None = None, what: str = "ids") -> np.ndarray:
    """Return ids in their stored form: int64, uint64, or fixed-width unicode.

    Parameters
    ----------
    ids : array-like of shape (n,)
        Integers, or strings (an object array of ``str``/``int`` is accepted).
    n : int, optional
        Required length.
    what : str, default="ids"
        Name used in error messages (``"user_ids"``, ``"item_ids"``).

    Returns
    -------
    numpy.ndarray of shape (n,)
        ``int64`` if the ids are integers or every id is a canonical integer
        string (``str(int(x)) == x``: ``"7"`` but not ``"007"`` or ``"+7"``) and
        all fit int64; ``uint64`` if they are such integers, none negative and
        some at least 2**63; else ``'<U{maxlen}'``. Never object dtype.

    Raises
    ------
    InputDataError
        Wrong length or ndim, missing or empty ids, float/bool ids, duplicates;
        string ids with a control character or longer than :data:`MAX_ID_CHARS`;
        integers that mix negative values with values of 2**63 or more.
    """
    arr = _as_array(ids)
    if arr.ndim != 1:
        raise InputDataError(f"{what} must be one-dimensional; got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise InputDataError(f"{what} has {arr.shape[0]} entries but the matrix has {n}; pass one id per row/column")
    out = _ids_as_int64_or_unicode(arr, what)
    _check_unique(out, what)
    return out


def _as_array(ids) -> np.ndarray:
    """``ids`` as an array, exactly: numpy would drop a string's trailing NULs and make big integers floats."""
    if isinstance(ids, np.ndarray):
        return ids
    if isinstance(ids, (list, tuple)) and ids and all(isinstance(x, str) for x in ids):
        return np.array(ids, dtype=object)  # checked as Python strings, before any '<U..' array is made of them
    arr = np.asarray(ids)
    if arr.dtype.kind == "f" and arr.ndim == 1 and arr.size:
        exact = np.asarray(ids, dtype=object)
        if all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in exact):
            return exact  # integers beyond int64 made them float: keep them exact
    return arr


def _ids_as_int64_or_unicode(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > _INT64_MAX:
            return arr.astype("<u8")  # above int64: kept unsigned, so every id comes back exactly
        return arr.astype("<i8")
    if arr.dtype.kind == "T":  # numpy's variable-length strings: checked as Python strings below
        arr = arr.astype(object)
    if arr.dtype.kind not in "OUS":
        raise InputDataError(f"{what} must be integers or strings; found dtype {arr.dtype}")
    if arr.dtype.kind == "O":
        bad = [x for x in arr if not isinstance(x, (str, int, np.integer)) or isinstance(x, bool)][:1]
        if bad:
            bad = bad[0]
            raise InputDataError(f"{what} must be integers or strings; found {bad!r} ({type(bad).__name__})")
        # checked before the conversion to '<U..': it would drop trailing NULs, and a long id would set the width
        _check_id_texts([x if isinstance(x, str) else str(x) for x in arr.tolist()], what)
        text = arr.astype(np.str_)
    else:
        text = arr.astype(np.str_) if arr.dtype.kind != "S" else np.char.decode(arr, "utf-8")
        _check_fixed_width_texts(text, what)
    as_int = _canonical_integers(text, what)
    return as_int if as_int is not None else text


def _check_id_texts(texts: list[str], what: str) -> None:
    """Raise for the first unusable string id (see :func:`id_text_problem`), naming its position."""
    if not texts:
        return
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    joined = "".join(texts)
    # C-speed passes over all ids (isprintable() is false for any control character, and for some other
    # characters, which the regex then clears); the loop below runs only to name the culprit
    if (lengths.max() <= MAX_ID_CHARS and lengths.min() > 0
            and (joined.isprintable() or not CONTROL_CHARS.search(joined))):
        return
    for i, text in enumerate(texts):
        problem = id_text_problem(text)
        if problem:
            raise InputDataError(f"{what}[{i}] {problem}")


def _check_fixed_width_texts(text: np.ndarray, what: str) -> None:
    """:func:`_check_id_texts` for a '<U..' array (trailing NULs, already dropped by numpy, are not seen)."""
    step = 1 << 16  # rows at a time: the masks below take a byte per character
    for start in range(0, text.shape[0], step):
        part = np.ascontiguousarray(text[start : start + step])
        lengths = np.char.str_len(part)
        codes = part.view(np.uint32).reshape(part.shape[0], -1)
        inside = np.arange(codes.shape[1]) < lengths[:, None]  # past its length, a '<U..' entry is NUL padding
        bad = (lengths == 0) | (lengths > MAX_ID_CHARS) | (((codes < 0x20) | (codes == 0x7F)) & inside).any(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputDataError(f"{what}[{start + i}] {id_text_problem(str(part[i]))}")


def _canonical_integers(text: np.ndarray, what: str) -> np.ndarray | None:
    """int64 (or uint64 if some id is >= 2**63) of ``text`` if every entry is a canonical integer string, else None."""
    if text.size == 0:
        return np.zeros(0, dtype="<i8")
    for dtype in ("<i8", "<u8"):
        try:
            as_int = text.astype(dtype)
        except ValueError:  # not an integer
            return None
        except OverflowError:  # beyond this type: try the next
            continue
        # the round trip rejects "007", "+7", " 7", "-0" and non-ASCII digits exactly like str(int(x)) == x
        return as_int if bool((as_int.astype(np.str_) == text).all()) else None
    _refuse_mixed_signs(text, what)
    return None  # integers beyond 64 bits: kept as text


def _refuse_mixed_signs(text: np.ndarray, what: str) -> None:
    """Raise if ``text`` holds 64-bit integers that need both signs and 2**63 or more (no 64-bit type holds both)."""
    values = []
    for s in text.tolist():
        try:
            v = int(s)
        except ValueError:
            return
        if str(v) != s:
            return
        values.append(v)
    lo, hi = min(values), max(values)
    if -(2**63) <= lo < 0 and 2**63 <= hi < 2**64:
        raise InputDataError(
            f"{what} mix negative integers (e.g. {lo}) with integers of 2**63 or more (e.g. {hi}): no 64-bit integer "
            "type holds both, and a signed and an unsigned copy of one 64-bit id would count as two ids. Write all "
            "ids in one form: signed (int64) or unsigned (uint64)"
        )


def _check_unique(ids: np.ndarray, what: str) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if uniq.shape[0] != ids.shape[0]:
        dup = uniq[counts > 1]
        raise InputDataError(
            f"{what} must be unique; {dup.shape[0]} ids occur more than once (e.g. {dup[0]!r}); "
            "merge those rows/columns first"
        )


# ------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class InteractionStore:
    """A handle on a complete, validated interaction store (no arrays held; picklable).

    Attributes
    ----------
    path : str
        Absolute path of the store directory, or its URL.
    n_users, n_items, nnz : int
        Shape and number of stored entries of the matrix X of shape (n_users, n_items).
    shard_offsets : tuple of int, of length n_shards + 1
        Shard s holds users ``shard_offsets[s]:shard_offsets[s + 1]``.
    fingerprint : str
        sha256 hex of the matrix and the ids (independent of the sharding).
    attrs : dict
        All group attributes, including ``source`` (how the store was made).
    storage_options : dict or None
        fsspec options of a URL store (never shown: it may hold secrets).
    data_path : str or None
        Under a URL, where the arrays are: the attempt ``CURRENT`` named when the
        store was opened (None: at ``path`` itself). Tasks read shards there, so an
        ingest publishing meanwhile cannot give one job two stores.
    """

    path: str
    n_users: int
    n_items: int
    nnz: int
    shard_offsets: tuple[int, ...]
    fingerprint: str
    attrs: dict = field(repr=False, compare=False, hash=False)
    storage_options: dict | None = field(default=None, repr=False, compare=False, hash=False)
    data_path: str | None = field(default=None, repr=False, compare=False, hash=False)

    @property
    def location(self) -> Location:
        """Where the arrays are, with the storage options: pass this (not ``path``) to tasks that read shards."""
        return Location(self.data_path or self.path, self.storage_options)

    @property
    def n_shards(self) -> int:
        """Number of user shards."""
        return len(self.shard_offsets) - 1

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_users, n_items)``."""
        return (self.n_users, self.n_items)

    def read_shard(self, s: int) -> sp.csr_matrix:
        """Shard ``s`` as a float32 CSR of shape (users in shard, n_items); see :func:`read_shard`."""
        return read_shard(self.location, s)

    def user_ids(self) -> np.ndarray:
        """Original user ids, of shape (n_users,), int64, uint64 or unicode."""
        return self._read_1d("user_ids", self.n_users)

    def item_ids(self) -> np.ndarray:
        """Original item ids, of shape (n_items,), int64, uint64 or unicode; column j of X is item_ids[j]."""
        return self._read_1d("item_ids", self.n_items)

    def item_counts(self) -> np.ndarray:
        """Stored entries per item, int64 of shape (n_items,) (= diag of XᵀX for binary X)."""
        return self._read_1d("item_counts", self.n_items)

    def to_scipy(self) -> sp.csr_matrix:
        """The whole matrix, float32 CSR of shape (n_users, n_items). Loads everything: tests and small data."""
        shards = [self.read_shard(s) for s in range(self.n_shards)]
        return sp.vstack(shards, format="csr", dtype=np.float32)

    def _read_1d(self, name: str, length: int) -> np.ndarray:
        arr = _get_array(_open_store(self.location)[0], name, self.path)
        _check_no_object_dtype(arr, name, self.path)
        out = read_verified(arr, _checksum(self.attrs, name), store=f"interaction store {self.path}", array=name,
                            fix=_DAMAGED_FIX)
        if out.shape != (length,):
            raise StoreFormatError(
                f"{self.path}: {name} has shape {out.shape}, expected ({length},); re-ingest the data"
            )
        return out


def open_interactions(path, *, storage_options=None) -> InteractionStore:
    """Open and validate an interaction store.

    Parameters
    ----------
    path : str, os.PathLike or Location
        Store directory, or an fsspec URL (``s3://bucket/interactions.zarr``).
    storage_options : dict, optional
        fsspec options for a URL (default: fsspec's defaults and environment).

    Returns
    -------
    InteractionStore

    Raises
    ------
    StoreFormatError
        The path is missing, not a zarr v3 group, not an interaction store, of
        another ``format_version``, incomplete, or internally inconsistent
        (shard offsets, id array lengths, object dtypes). The message names the
        path and what to do.
    """
    loc = location(path, storage_options)
    root, data = _open_store(loc)
    return _validated(loc, root, data)


def _validated(loc: Location, root, data: Location) -> InteractionStore:
    """The store ``loc`` whose group ``root`` is at ``data``, checked."""
    path = loc.url
    attrs = _check_attrs(dict(root.attrs), path)
    offsets = _check_offsets(root, attrs, path)
    lengths = {"user_ids": attrs["n_users"], "item_ids": attrs["n_items"], "item_counts": attrs["n_items"]}
    for name, length in lengths.items():
        arr = _get_array(root, name, path)
        _check_no_object_dtype(arr, name, path)
        if arr.shape != (length,):
            raise StoreFormatError(
                f"{path}: {name} has shape {arr.shape} but the store declares {length} entries; "
                "the store is corrupt, re-ingest the data"
            )
    return InteractionStore(
        path=path,
        n_users=attrs["n_users"],
        n_items=attrs["n_items"],
        nnz=attrs["nnz"],
        shard_offsets=tuple(int(o) for o in offsets),
        fingerprint=attrs["fingerprint"],
        attrs=attrs,
        storage_options=loc.storage_options,
        data_path=None if data.url == path else data.url,
    )


def read_shard(path, s: int, *, storage_options=None) -> sp.csr_matrix:
    """Read one user shard; pure and picklable, meant to run inside a Dask task.

    Parameters
    ----------
    path : str, os.PathLike or Location
        Store directory or URL; a task gets :attr:`InteractionStore.location`, so
        the worker opens the store itself with the storage options.
    storage_options : dict, optional
        fsspec options for a URL given as a string.
    s : int
        Shard number, ``0 <= s < n_shards``.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (shard_offsets[s+1] - shard_offsets[s], n_items), float32
        Rows are the shard's users in store order; indices sorted and unique per row.

    Raises
    ------
    ParameterError
        ``s`` outside ``[0, n_shards)``.
    StoreFormatError
        The store or the shard is missing, incomplete or malformed.
    """
    loc = location(path, storage_options)
    path = loc.url
    root, _ = _open_store(loc)
    attrs = _check_attrs(dict(root.attrs), path)
    offsets = read_verified(_get_array(root, "shard_offsets", path), _checksum(attrs, "shard_offsets"),
                            store=f"interaction store {path}", array="shard_offsets", fix=_DAMAGED_FIX)
    n_shards = offsets.shape[0] - 1
    if not (isinstance(s, (int, np.integer)) and 0 <= s < n_shards):
        raise ParameterError(f"shard {s!r} does not exist in {path}: valid shard numbers are 0..{n_shards - 1}")
    n_rows = int(offsets[s + 1] - offsets[s])
    store, part = f"interaction store {path}", f"of shard {s} (shards/{s:05d})"
    parts = {}
    for name, dtype in _SHARD_DTYPES.items():
        arr = _get_array(root, f"shards/{s:05d}/{name}", path)
        check_plain_array(arr, f"{path}/shards/{s:05d}/{name}", "iuf", "interaction store")
        if arr.dtype != dtype:
            raise StoreFormatError(
                f"{path}: shards/{s:05d}/{name} has dtype {arr.dtype}, expected {dtype}; re-ingest the data"
            )
        parts[name] = read_verified(arr, None, store=store, array=name, part=part, fix=_DAMAGED_FIX)
    indptr, indices, values = parts["indptr"], parts["indices"], parts["values"]
    # the task that reads a shard verifies it: the cost is spread over the workers with the reads
    checksums = attrs.get("shard_checksums")
    if isinstance(checksums, list) and len(checksums) == n_shards and digest(indptr, indices, values) != checksums[s]:
        raise _damaged_shard(store, s)
    consistent = (
        indptr.shape[0] == n_rows + 1 and indptr[0] == 0 and indptr[-1] == indices.shape[0]
        and indices.shape == values.shape
    )
    if not consistent:
        raise StoreFormatError(
            f"{path}: shard {s} is inconsistent (indptr length {indptr.shape[0]} for {n_rows} users, "
            f"{indices.shape[0]} indices, {values.shape[0]} values); the store is corrupt, re-ingest the data"
        )
    return sp.csr_matrix((values, indices, indptr), shape=(n_rows, attrs["n_items"]))


_DAMAGED_FIX = "Re-ingest the data (or restore the store from a copy); `edlae-dask verify STORE` checks all of it"


def _checksum(attrs: dict, name: str) -> str | None:
    """The digest the store recorded for its array ``name``; None for a store written before checksums."""
    sums = attrs.get("checksums")
    return sums.get(name) if isinstance(sums, dict) else None


def _damaged_shard(store: str, s: int):
    return damaged(store, "indptr/indices/values", f"of shard {s} (shards/{s:05d})",
                   "do not match the checksum written with them", _DAMAGED_FIX)


def _open_store(loc: Location) -> tuple[zarr.Group, Location]:
    """The store's zarr group and where it is: ``loc``, or under a URL the attempt ``CURRENT`` names."""
    path = loc.url
    missing = StoreFormatError(
        f"no interaction store at {path}: the path does not exist. Create one with "
        "`edlae-dask ingest SOURCE --out PATH` (edlae_dask.ingest)"
    )
    if loc.is_local and not os.path.exists(path):
        raise missing
    try:
        # under a URL: an attempt's own URL, or a store written in place before attempts existed
        return open_group(loc, FORMAT), loc
    except StoreFormatError as exc:
        failure = exc
    attempt = None if loc.is_local else _current_attempt(loc)
    if attempt is not None:
        try:
            return attempt.open_group("r"), attempt
        except Exception as exc:
            raise StoreFormatError(
                f"{path}/{_CURRENT} names the attempt {attempt.url}, which is not a zarr v3 group "
                f"({type(exc).__name__}: {exc}): the store is damaged. Ingest again with --overwrite"
            ) from exc
    if not loc.is_local:
        names = set(loc.children())
        if not names and not loc.exists():
            raise missing from failure
        if names == {_ATTEMPTS}:
            raise StoreFormatError(
                f"no interaction store is published at {path} yet: an ingest into it is still running or was "
                f"interrupted (its partial work is under {path}/{_ATTEMPTS}/). Wait for it, or run the ingest "
                "again (no --overwrite needed)"
            ) from failure
    raise failure


def _attempts(root: Location) -> Versions:
    """Under a URL: ``CURRENT`` and ``attempts/``."""
    return Versions(root, _CURRENT, _ATTEMPTS, valid=lambda text: bool(_ATTEMPT_NAME.match(text)),
                    what="an ingest attempt")


def _current_attempt(root: Location) -> Location | None:
    """The attempt ``CURRENT`` names under a URL root (None if there is no ``CURRENT``)."""
    return _attempts(root).published()


def _check_attrs(attrs: dict, path: str) -> dict:
    check_format(attrs, path, FORMAT, complete=True)
    for key in _REQUIRED_INT_ATTRS:
        value = attrs.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StoreFormatError(
                f"{path}: attribute {key!r} is {value!r}, expected a non-negative integer; re-ingest the data"
            )
    if not isinstance(attrs.get("fingerprint"), str):
        raise StoreFormatError(f"{path}: attribute 'fingerprint' is missing; re-ingest the data")
    return attrs


def _check_offsets(root, attrs: dict, path: str) -> np.ndarray:
    arr = _get_array(root, "shard_offsets", path)
    _check_no_object_dtype(arr, "shard_offsets", path)
    offsets = read_verified(arr, _checksum(attrs, "shard_offsets"), store=f"interaction store {path}",
                            array="shard_offsets", fix=_DAMAGED_FIX)
    n_shards, n_users, shard_size = attrs["n_shards"], attrs["n_users"], attrs["shard_size"]
    sizes = np.diff(offsets)
    ok = (
        offsets.dtype.kind == "i"
        and offsets.shape == (n_shards + 1,)
        and offsets[0] == 0
        and offsets[-1] == n_users
        and bool((sizes > 0).all())
        and bool((sizes <= shard_size).all())
    )
    if not ok:
        raise StoreFormatError(
            f"{path}: shard_offsets {offsets[:5].tolist()}... (length {offsets.shape[0]}) do not split "
            f"{n_users} users into {n_shards} shards of at most {shard_size}; the store is corrupt, re-ingest the data"
        )
    return offsets


def _get_array(root, name: str, path: str):
    try:
        arr = root[name]
    except KeyError as exc:
        raise StoreFormatError(f"{path}: array {name!r} is missing; the store is corrupt, re-ingest the data") from exc
    except Exception as exc:  # metadata zarr cannot parse, e.g. a codec that is not installed
        raise StoreFormatError(f"{path}: {name!r} cannot be read as a zarr v3 array ({type(exc).__name__}: {exc}); "
                               "the store was not written by edlae-dask, re-ingest the data") from exc
    if not isinstance(arr, zarr.Array):
        raise StoreFormatError(
            f"{path}: {name!r} is a group, expected an array; the store is corrupt, re-ingest the data"
        )
    return arr


def _check_no_object_dtype(arr, name: str, path: str) -> None:
    # Object/variable-length strings are refused: the store holds plain numbers and
    # fixed-width unicode only, so nothing that could carry pickled content is loaded.
    if arr.dtype.kind not in "iuU" or arr.dtype == object:
        raise StoreFormatError(
            f"{path}: {name} has dtype {arr.dtype}; interaction stores hold int64, uint64 or fixed-width unicode "
            "ids only (never object/variable-length). The store was not written by edlae-dask; re-ingest the data"
        )
    check_plain_array(arr, f"{path}/{name}", "iuU", "interaction store")  # also: zarr v3, core codecs only


# ------------------------------------------------------------------------ writing


def check_output_path(path, *, overwrite: bool, storage_options=None) -> str:
    """Fail early if ``path`` may not be written; return its absolute form (or its URL).

    Under a URL where nothing is published yet (only the attempts of ingests that
    were killed or are running, or an old-layout store without its ``complete``
    marker) no ``overwrite`` is needed.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False, or it exists and is neither an
        interaction store nor an empty directory (never replaced, even with overwrite).
    """
    loc = location(path, storage_options)
    path = loc.url
    if loc.is_local:
        exists = os.path.lexists(path)
    else:
        state = _url_state(loc)
        if state == "unpublished":
            return path
        exists = state != "absent"
    if exists:
        if not overwrite:
            raise OutputExistsError(
                f"{path} already exists; pass overwrite=True / --overwrite to replace it, or choose another path"
            )
        if not (_replaceable_dir(path) if loc.is_local else state == "published"):
            raise OutputExistsError(
                f"refusing to overwrite {path}: it is not an edlae-dask interaction store or an empty directory, "
                "and overwrite only ever replaces those. Remove it yourself or choose another path"
            )
    return path


# local targets this thread holds a claim on: ingest claims its output, then writes the store through
# write_interactions_from_shards, which must not claim it a second time (flock: two claims would conflict)
_CLAIMED = threading.local()


@contextlib.contextmanager
def claim_output(path, *, overwrite: bool, storage_options=None):
    """Hold the claim on the local output ``path`` while a run looks at it, writes and publishes it.

    With ``overwrite`` runs share it (the later publish wins, as before); without,
    a run holds it alone, so that a second run is refused at once rather than after
    all its work. Whenever a run holds it alone, what killed runs left is tidied
    (:func:`edlae_dask.io.versioned.claim`): a store one moved aside and did not
    replace is renamed back (:func:`edlae_dask.io.versioned.recover_aside`), and
    their temporary stores, spill folders and asides are removed. Under a URL: no
    claim (object storage has no locks; attempts never mix, see the module docstring).

    Raises
    ------
    OutputExistsError
        Another run holds the claim in a way this one may not share.
    """
    loc = location(path, storage_options)
    held = _CLAIMED.__dict__.setdefault("targets", set())
    if not loc.is_local or loc.url in held:
        yield
        return
    target = loc.url

    def busy(holder: str) -> OutputExistsError:
        alone = "" if overwrite else ", and without --overwrite an ingest must be the only one writing there"
        return OutputExistsError(f"refusing to write the interaction store {target}: another ingest ({holder}) is "
                                 f"writing it right now{alone}. Wait for it to finish, or choose another --out")

    with claim(target, exclusive=not overwrite, busy=busy, tidy=lambda: _tidy(target)):
        held.add(target)
        try:
            yield
        finally:
            held.discard(target)


def _tidy(target: str) -> None:
    """Recover and remove what killed runs left beside ``target`` (call it only while no other run writes it)."""
    recover_aside(target, ours=_replaceable_dir)
    parent, name = os.path.split(target)
    # the temporary store of write_interactions_from_shards, the spill folder of edlae_dask.ingestion
    temporary = re.compile(rf"\.{re.escape(name)}\.(tmp-[0-9a-f]{{32}}|ingest-[a-z0-9_]+)")
    remove_leftovers(parent, temporary, ours=_ours_or_bare)
    if os.path.lexists(target):  # an aside whose replacement is in place: the old store, no longer needed
        remove_leftovers(parent, aside_pattern(target), ours=_replaceable_dir)


def _ours_or_bare(path: str) -> bool:
    """A temporary directory is removed if it is a store of ours or no zarr group at all (never another format)."""
    attrs = group_attrs(path)
    return attrs is None or FORMAT.is_ours(attrs)


def _replaceable_dir(path: str) -> bool:
    """A local directory that is empty or holds an interaction store."""
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    return not os.listdir(path) or FORMAT.is_ours(group_attrs(path))


def _url_state(loc: Location) -> str:
    """What is under a URL: "absent", "unpublished" (nothing readable yet), "published" or "foreign"."""
    names = set(loc.children())
    if not names:
        return "absent"
    if _CURRENT in names:
        return "published"  # a malformed CURRENT included: publishing rewrites it
    attrs = group_attrs(loc) if "zarr.json" in names else None
    if FORMAT.is_ours(attrs):  # written in place, before attempts
        return "published" if is_complete(attrs) else "unpublished"
    return "unpublished" if names == {_ATTEMPTS} else "foreign"


def write_interactions(
    path,
    X,
    *,
    user_ids=None,
    item_ids=None,
    shard_size: int = 100_000,
    overwrite: bool = False,
    source: dict | None = None,
    storage_options=None,
) -> InteractionStore:
    """Write a CSR matrix as an interaction store (atomically).

    Parameters
    ----------
    path : str or os.PathLike
        Store directory to create, or an fsspec URL.
    X : scipy.sparse.csr_matrix or csr_array of shape (n_users, n_items)
        Finite values. Duplicate entries are summed and explicit zeros dropped
        (scipy's canonical form), shard by shard.
    user_ids : array-like of shape (n_users,), optional
        Unique original ids; default ``arange(n_users)``.
    item_ids : array-like of shape (n_items,), optional
        Unique original ids; default ``arange(n_items)``.
    shard_size : int, default=100_000
        Users per shard (the last shard may be shorter).
    overwrite : bool, default=False
        Replace an existing interaction store (or empty directory) at ``path``.
    source : dict, optional
        JSON-serialisable provenance stored in the ``source`` attribute.
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    InteractionStore

    Raises
    ------
    InputDataError
        X is not CSR, has non-finite values, or ids do not match / are not unique.
    ParameterError
        ``shard_size < 1``.
    OutputExistsError
        See :func:`check_output_path`.
    """
    if not sp.issparse(X) or X.format != "csr":
        found = type(X).__name__ + (f" ({X.format})" if sp.issparse(X) else "")
        raise InputDataError(f"X must be a scipy.sparse CSR matrix; got {found}. Convert it with X.tocsr()")
    if X.ndim != 2:
        raise InputDataError(f"X must be 2-dimensional; got shape {X.shape}")
    n_users, n_items = X.shape
    shard_size = _check_shard_size(shard_size)
    user_ids = normalize_ids(np.arange(n_users) if user_ids is None else user_ids, n=n_users, what="user_ids")
    item_ids = normalize_ids(np.arange(n_items) if item_ids is None else item_ids, n=n_items, what="item_ids")
    # slicing copies only one shard at a time, so X is never copied whole
    shards = (X[a : min(a + shard_size, n_users)] for a in range(0, n_users, shard_size))
    return write_interactions_from_shards(
        path, shards, n_items=n_items, user_ids=user_ids, item_ids=item_ids,
        shard_size=shard_size, overwrite=overwrite, source=source, storage_options=storage_options,
    )


def write_interactions_from_shards(
    path,
    shards: Iterable,
    *,
    n_items: int,
    user_ids,
    item_ids,
    shard_size: int,
    overwrite: bool = False,
    source: dict | None = None,
    storage_options=None,
) -> InteractionStore:
    """Stream shards into a new interaction store (atomically); never holds the whole matrix.

    Parameters
    ----------
    path : str or os.PathLike
        Store directory to create, or an fsspec URL.
    shards : iterable of scipy.sparse.csr_matrix, each of shape (shard_size, n_items)
        Consecutive user ranges; only the last may have fewer (but > 0) rows.
        Consumed once, one at a time.
    n_items : int
        Number of columns.
    user_ids : array-like of shape (n_users,)
        Unique original user ids; ``n_users`` must equal the rows of all shards.
    item_ids : array-like of shape (n_items,)
        Unique original item ids.
    shard_size : int
        Users per shard.
    overwrite : bool, default=False
        Replace an existing interaction store (or empty directory) at ``path``.
    source : dict, optional
        JSON-serialisable provenance stored in the ``source`` attribute.
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    InteractionStore

    Notes
    -----
    Written to ``{parent}/.{name}.tmp-{uuid}``, marked complete last, then moved
    into place with ``os.rename``; on any exception (including one raised by the
    ``shards`` iterator) the temporary directory is removed and nothing is
    published. Under a URL the store is written as a new attempt, marked complete
    last, and published by switching ``CURRENT`` to it (see the module docstring).
    Memory: one shard plus the id arrays.
    """
    target = check_output_path(path, overwrite=overwrite, storage_options=storage_options)
    shard_size = _check_shard_size(shard_size)
    if not isinstance(n_items, (int, np.integer)) or n_items < 1:
        raise InputDataError(f"n_items must be a positive integer; got {n_items!r}")
    item_ids = normalize_ids(item_ids, n=int(n_items), what="item_ids")
    user_ids = normalize_ids(user_ids, what="user_ids")
    if user_ids.shape[0] == 0:
        raise InputDataError("the matrix has no users; nothing to store")
    loc = location(target, storage_options)
    if not loc.is_local:
        attempt = loc.join(_ATTEMPTS, _new_attempt_name())
        try:
            _write_store(attempt, iter(shards), int(n_items), user_ids, item_ids, shard_size, source or {})
            # re-check just before publishing: another ingest may have published meanwhile
            check_output_path(loc, overwrite=overwrite)
        except BaseException:
            attempt.remove()
            raise
        _publish_attempt(loc, attempt)
        return _validated(loc, attempt.open_group("r"), attempt)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    with claim_output(target, overwrite=overwrite):
        check_output_path(target, overwrite=overwrite)  # again: the claim may have recovered an interrupted replace
        tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex}")
        try:
            _write_store(Location(tmp), iter(shards), int(n_items), user_ids, item_ids, shard_size, source or {})
            # re-check just before replacing: something may have appeared meanwhile
            move_into_place(tmp, target, check_replaceable=lambda t: check_output_path(t, overwrite=overwrite))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return open_interactions(target)


def _new_attempt_name() -> str:
    return f"{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}"


def _publish_attempt(root: Location, attempt: Location) -> None:
    """Make the complete ``attempt`` the store at the URL ``root`` (one PUT), then delete what it replaced."""
    attempts = _attempts(root)
    in_place = FORMAT.is_ours(group_attrs(root))  # a store of the layout before attempts
    previous = attempts.publish(attempt.name)
    if in_place:
        root.join("zarr.json").remove()  # first: from now on readers follow CURRENT
        for name in set(root.children()) - {_CURRENT, _ATTEMPTS}:
            root.join(name).remove()
    # any age: attempts are not ordered against each other. One written to within the grace
    # period may be another ingest's, still running
    attempts.prune(current=attempt.name, previous=previous, age=None, idle_s=_fs.PRUNE_GRACE_S)


def _check_shard_size(shard_size) -> int:
    if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
        raise ParameterError(f"shard_size must be a positive integer (users per shard); got {shard_size!r}")
    return int(shard_size)


class _Fingerprint:
    """sha256 of the matrix content and ids, fed shard by shard.

    indptr (as one global int64 array), indices and values are hashed in three
    separate streams, so the digest does not depend on where shards split.
    """

    def __init__(self):
        self._indptr = hashlib.sha256(np.zeros(1, "<i8").tobytes())
        self._indices = hashlib.sha256()
        self._values = hashlib.sha256()

    def update(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, nnz_before: int) -> None:
        self._indptr.update((indptr[1:] + nnz_before).astype("<i8").tobytes())
        self._indices.update(indices.tobytes())
        self._values.update(values.tobytes())

    def hexdigest(self, n_users: int, n_items: int, user_ids: np.ndarray, item_ids: np.ndarray) -> str:
        h = hashlib.sha256(f"{FORMAT_NAME}/{FORMAT_VERSION}:{n_users}x{n_items}".encode())
        for part in (self._indptr, self._indices, self._values):
            h.update(part.digest())
        for ids in (user_ids, item_ids):
            h.update(ids.dtype.str.encode())
            h.update(np.ascontiguousarray(ids).tobytes())
        return h.hexdigest()


def _write_store(tmp: Location, shards: Iterator, n_items, user_ids, item_ids, shard_size, source) -> None:
    root = tmp.open_group("w-")
    # the format first, so that an interrupted store is recognised as ours (and replaced by the rerun)
    root.attrs.update({"format": FORMAT.name, "format_version": FORMAT.version})
    n_users = user_ids.shape[0]
    fingerprint = _Fingerprint()
    shard_fingerprints, shard_checksums = [], []
    items_digest = hashlib.sha256(item_ids.dtype.str.encode() + np.ascontiguousarray(item_ids).tobytes()).hexdigest()
    item_counts = np.zeros(n_items, dtype=np.int64)
    offsets, nnz = [0], 0
    for s, shard in enumerate(shards):
        shard = _check_shard(shard, s, offsets[-1], n_users, n_items, shard_size)
        indptr = shard.indptr.astype("<i8")
        indices = shard.indices.astype("<i4")
        values = shard.data.astype("<f4")
        for name, arr in (("indptr", indptr), ("indices", indices), ("values", values)):
            _write_1d(root, f"shards/{s:05d}/{name}", arr, chunk=None)
        fingerprint.update(indptr, indices, values, nnz)
        shard_checksums.append(digest(indptr, indices, values))
        # per shard: its rows, their users and the items, so that a rerun of scoring can tell
        # which shards of a new store are unchanged (edlae_dask.scoring)
        users = np.ascontiguousarray(user_ids[offsets[-1] : offsets[-1] + shard.shape[0]])
        h = hashlib.sha256(f"{FORMAT_NAME}/{FORMAT_VERSION}:shard:{n_items}:{items_digest}".encode())
        for part in (indptr, indices, values, users.dtype.str.encode(), users):
            h.update(part if isinstance(part, bytes) else part.tobytes())
        shard_fingerprints.append(h.hexdigest())
        item_counts += np.bincount(indices, minlength=n_items)
        nnz += indices.shape[0]
        offsets.append(offsets[-1] + shard.shape[0])
    if offsets[-1] != n_users:
        raise InputDataError(
            f"the shards hold {offsets[-1]} users but user_ids has {n_users}; pass one id per user row"
        )
    offsets = np.asarray(offsets, dtype="<i8")
    _write_1d(root, "shard_offsets", offsets, chunk=None)
    _write_1d(root, "user_ids", user_ids, chunk=min(shard_size, _ID_CHUNK))
    _write_1d(root, "item_ids", item_ids, chunk=_ID_CHUNK)
    _write_1d(root, "item_counts", item_counts, chunk=_ID_CHUNK)
    checksums = {name: digest(a) for name, a in
                 (("shard_offsets", offsets), ("user_ids", user_ids), ("item_ids", item_ids),
                  ("item_counts", item_counts))}
    mark_complete(root, FORMAT.stamp(
        n_users=int(n_users),
        n_items=int(n_items),
        nnz=int(nnz),
        n_shards=len(offsets) - 1,
        shard_size=int(shard_size),
        fingerprint=fingerprint.hexdigest(n_users, n_items, user_ids, item_ids),
        shard_fingerprints=shard_fingerprints,
        shard_checksums=shard_checksums,
        checksums=checksums,
        source=dict(source),
    ))  # the marker last: a store without it is never read


def _check_shard(shard, s: int, first_user: int, n_users: int, n_items: int, shard_size: int) -> sp.csr_matrix:
    where = f"shard {s} (users {first_user}..)"
    if not sp.issparse(shard) or shard.format != "csr":
        raise InputDataError(f"{where} must be a scipy.sparse CSR matrix; got {type(shard).__name__}")
    rows, cols = shard.shape
    if cols != n_items:
        raise InputDataError(f"{where} has {cols} columns but n_items is {n_items}")
    if rows < 1 or rows > shard_size:
        raise InputDataError(f"{where} has {rows} rows; every shard needs 1..shard_size={shard_size} rows")
    if first_user + rows > n_users:
        raise InputDataError(f"{where} goes past the {n_users} users named by user_ids")
    if rows < shard_size and first_user + rows != n_users:
        raise InputDataError(
            f"{where} has {rows} rows; only the last shard may have fewer than shard_size={shard_size}"
        )
    with np.errstate(over="ignore"):  # a float64 beyond float32 range becomes inf and is reported below
        finite = bool(np.isfinite(shard.data.astype(np.float32)).all())
    if not finite:
        raise InputDataError(f"{where} holds NaN or infinite values (after conversion to float32); drop or fix them")
    if not shard.has_canonical_format or (shard.data == 0).any():
        shard = shard.copy()
        shard.sum_duplicates()  # sorts indices and merges repeats (scipy's canonical form)
        shard.eliminate_zeros()  # an explicit zero is not an interaction
    return shard


def _write_1d(root, name: str, data: np.ndarray, *, chunk: int | None) -> None:
    """One 1-d array; ``chunk=None`` means a single chunk (the shard arrays)."""
    n = data.shape[0]
    chunks = (max(1, n if chunk is None else min(chunk, n)),)
    with warnings.catch_warnings():
        # '<U..' ids have no ratified zarr v3 data-type spec yet; zarr-python reads them back fine
        warnings.simplefilter("ignore", _UnstableSpecWarning)
        arr = root.create_array(name, shape=(n,), dtype=data.dtype, chunks=chunks)
    if n:
        arr[:] = data

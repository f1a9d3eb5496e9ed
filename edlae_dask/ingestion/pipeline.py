"""Ingest raw interaction files into an interaction store, out of core.

The pipeline, for files of any size:

1. **Read** (:mod:`edlae_dask.ingestion.readers`): stream chunks of ``chunk_rows``
   rows, validate, keep rows with ``value >= min_value``, map ids to integer
   codes with growing dictionaries (users in order of first appearance) and
   append the ``(user, item)`` code pairs to on-disk bucket files, one per range
   of ``BUCKET_USERS`` user codes.
2. **Dedupe** each bucket (all rows of a user are in one bucket, so this is
   exact) and count distinct users per item.
3. **Filter** items with fewer than ``min_item_interactions`` users, then users
   with fewer than ``min_user_interactions`` of the remaining items: one pass
   each, in that order, as Liang et al. (2018) do. Items left without any
   interaction after the user filter are dropped too (an empty column would make
   ``P = G + Λ`` singular when λ = 0).
4. **Write**: items are numbered in sorted order of their original ids (numeric
   order for integer ids), users keep their first-appearance order; buckets are
   turned into CSR rows and streamed, ``shard_size`` users at a time, into
   :func:`~edlae_dask.io.interactions.write_interactions_from_shards`.

Memory is O(n_users + n_items) for the id maps plus one bucket; disk is about
8 bytes per kept row in a temporary directory next to ``out`` (removed after).

With a fixed item vocabulary (``items_from``: a model's items; ``append``: the
store's) the item map starts with those ids as codes ``0..n_items-1`` and never
grows: a row on another item is counted and dropped in pass 1, before its user
gets a code, and step 4 keeps every item in its place. ``append`` also starts the
user map with the store's users (codes = store rows, new users after them), uses
buckets of whole shards, and in pass 4 reads each old shard back (verified), merges
the new rows of its users into it (only shards with new entries or new users
change) and writes the result with the new users' shards as a new store, published
like any ingest: every shard is exactly what a fresh ingest of all the rows would write.

References
----------
Liang, Krishnan, Hoffman, Jebara. Variational Autoencoders for Collaborative
Filtering. WWW 2018 (``filter_triplets`` in their preprocessing notebook).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp

from edlae_dask.errors import InputDataError, ParameterError, StoreFormatError
from edlae_dask.ingestion.readers import FORMATS, FilePlan, iter_chunks, plan_file, resolve_sources
from edlae_dask.io._fs import is_url
from edlae_dask.io.interactions import (
    InteractionStore,
    check_output_path,
    claim_output,
    normalize_ids,
    open_interactions,
    write_interactions_from_shards,
)

__all__ = ["IngestReport", "ingest"]

log = logging.getLogger("edlae_dask.ingest")

# User codes per spill bucket. A bucket is the unit held in memory while
# deduplicating and writing; 2**17 users at a few hundred rows each is ~100 MB.
BUCKET_USERS = 1 << 17

DROP_REASONS = ("below_min_value", "duplicate", "item_below_min_interactions", "user_below_min_interactions")
#: more reasons, only in the report of an ingest into a fixed item vocabulary (``items_from`` or ``append``):
#: rows on an item the vocabulary lacks, and (``append``) rows the store already holds
VOCAB_DROP_REASONS = ("unknown_item", "already_stored")
#: users per shard when neither ``shard_size`` nor an appended store says
DEFAULT_SHARD_SIZE = 100_000


@dataclasses.dataclass
class IngestReport:
    """What :func:`ingest` read, dropped and wrote.

    Attributes
    ----------
    sources : list of str
        Absolute paths of the files read, in order.
    fmt : str
        Format used.
    fmt_reason : str
        ``"given"``, or why auto-detection chose ``fmt``.
    out : str
        The interaction store written.
    rows_read : int
        Data rows read (blank lines not counted).
    n_users, n_items, nnz : int
        Shape and entries of the stored matrix.
    dropped : dict of str to int
        Rows dropped per reason (``below_min_value``, ``duplicate``,
        ``item_below_min_interactions``, ``user_below_min_interactions``);
        ``rows_read == nnz + sum(dropped.values())``.
    n_shards : int
    seconds : float
        Wall time of the whole ingest.
    fingerprint : str
        The store's content fingerprint.
    vocabulary : str or None
        Where the item vocabulary came from: the factor store of ``items_from``, the
        store appended to, or None (the items of the source).
    n_unknown_items : int
        Distinct items of the source the vocabulary lacks; their rows are ``dropped["unknown_item"]``.
    appended_to : str or None
        The store appended to (``append``), else None.
    n_new_users : int
        Users the append added (0 otherwise).
    shards_written : list of int or None
        With ``append``: the shards that changed (new rows or new users); the others
        were copied unchanged. None for a fresh ingest (every shard is new).
    """

    sources: list[str]
    fmt: str
    fmt_reason: str
    out: str
    rows_read: int
    n_users: int
    n_items: int
    nnz: int
    dropped: dict[str, int]
    n_shards: int
    seconds: float
    fingerprint: str
    vocabulary: str | None = None
    n_unknown_items: int = 0
    appended_to: str | None = None
    n_new_users: int = 0
    shards_written: list[int] | None = None

    def as_dict(self) -> dict:
        """A JSON-serialisable dict of all fields."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """A few human-readable lines."""
        files = self.sources[0] if len(self.sources) == 1 else f"{len(self.sources)} files ({self.sources[0]}, ...)"
        dropped = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in self.dropped.items() if v) or "none"
        density = self.nnz / max(1, self.n_users * self.n_items)
        verb = "ingested" if self.appended_to is None else "appended"
        lines = [
            f"{verb} {files} as {self.fmt} ({self.fmt_reason}) in {self.seconds:.1f} s",
            f"rows read {self.rows_read:,}; dropped: {dropped}",
        ]
        if self.vocabulary is not None:
            whose = "the store" if self.appended_to is not None else "the model"
            dropped_rows = self.dropped.get("unknown_item", 0)
            unknown = (f"{dropped_rows:,} interactions on {self.n_unknown_items:,} items {whose} does not know were "
                       "dropped") if dropped_rows else f"no item {whose} does not know"
            lines.append(f"items: the {self.n_items:,} of {whose} ({self.vocabulary}); {unknown}")
        if self.appended_to is not None:
            lines.append(f"appended {self.n_new_users:,} new users; rewrote {len(self.shards_written or []):,} of "
                         f"{self.n_shards} shards (the others are unchanged)")
        lines += [
            f"store {self.out}: {self.n_users:,} users x {self.n_items:,} items, {self.nnz:,} interactions "
            f"(density {density:.2e}), {self.n_shards} shards",
            f"fingerprint {self.fingerprint[:16]}",
        ]
        return "\n".join(lines)


def ingest(
    source,
    out=None,
    *,
    fmt: str = "auto",
    user_col: str = "user",
    item_col: str = "item",
    value_col: str | None = None,
    min_value: float | None = None,
    min_user_interactions: int = 1,
    min_item_interactions: int = 1,
    shard_size: int | None = None,
    chunk_rows: int = 1_000_000,
    overwrite: bool = False,
    items_from=None,
    append=None,
    progress: Callable[[str], None] | None = None,
    storage_options: dict | None = None,
) -> IngestReport:
    """Read raw interactions and write a binary interaction store.

    Parameters
    ----------
    source : str, os.PathLike, or list of them
        A file, a glob (``"data/combined_data_*.txt"``) or a list of files.
    out : str or os.PathLike, optional
        Interaction store directory to create, or an fsspec URL (``s3://bucket/x.zarr``).
        Exactly one of ``out`` and ``append`` is given.
    fmt : {"auto", "csv", "parquet", "movielens-csv", "movielens-dat", "netflix", "msd"}, default="auto"
        ``"auto"`` decides from the file name, extension and first line; the
        report says what it chose. All files must have the same format.
    user_col, item_col : str, default="user", "item"
        Id columns of csv/parquet files (for movielens-csv the defaults mean
        ``userId`` / ``movieId``). Ignored by the header-less formats.
    value_col : str, optional
        Value column of csv/parquet files; by default ``rating`` or ``value``
        if present, else none.
    min_value : float, optional
        Keep rows with ``value >= min_value`` (requires a value column). Stored
        values are always 1.0: the matrix is binary.
    min_user_interactions, min_item_interactions : int, default=1
        Minimum distinct items per user / users per item; items are filtered
        first, then users (one pass each).
    shard_size : int, optional
        Users per store shard; default 100,000, with ``append`` the store's (another value is refused).
    chunk_rows : int, default=1_000_000
        Rows read at a time; bounds the reading memory, not the result.
    overwrite : bool, default=False
        Replace an existing interaction store at ``out``.
    items_from : str or os.PathLike, optional
        A factor store (its latest version): the store's items are exactly the
        model's, in its order (``n_items`` is the model's, including items with no
        interaction in the source), so that ``score`` can use that model on it.
        Rows on items the model does not know are dropped (``dropped["unknown_item"]``,
        ``n_unknown_items``); users are whatever the source holds. Refuses
        ``min_item_interactions`` > 1: no model item is ever dropped.
    append : str or os.PathLike, optional
        An existing interaction store to add the source's interactions to, instead
        of writing ``out``: existing users gain the new items of their rows, new users
        come after the existing ones (filling the last shard, then new shards);
        repeats of a stored interaction collapse (``dropped["already_stored"]``). The
        item vocabulary is the store's, kept unchanged so the factors trained on it
        still fit: rows on other items are dropped and counted, as with ``items_from``.
        Only the shards that change are rebuilt; the others are copied, and every shard
        comes out exactly as a fresh ingest of all the data (with ``items_from``) would
        write it, per-shard fingerprints included, so ``score`` rescores only the
        changed shards. Published atomically; a local store is held exclusively
        meanwhile (a second ``append`` or ``ingest`` to it is refused, no update is
        lost). Refuses ``min_user_interactions``/``min_item_interactions`` > 1 (one
        day's rows cannot judge what the store already holds) and ``overwrite``.
    progress : callable of str, optional
        Called with progress lines (also logged at INFO on ``edlae_dask.ingest``).
    storage_options : dict, optional
        fsspec options when ``out`` is a URL (default: fsspec's defaults and environment).

    Returns
    -------
    IngestReport

    Raises
    ------
    InputDataError
        Missing file, missing column, malformed line, missing id, non-numeric
        or NaN value, empty input, or nothing left after filtering.
    ParameterError
        Unknown format or an out-of-range option.
    OutputExistsError
        ``out`` exists and ``overwrite`` is False (checked before reading).
    StoreFormatError
        ``items_from`` is not a factor store, or ``append`` not an interaction store
        of this format version.

    Notes
    -----
    Duplicate ``(user, item)`` rows collapse to one entry. Memory is
    O(n_users + n_items) plus one spill bucket; see the module docstring.
    """
    start = time.perf_counter()
    _check_options(fmt, min_value, min_user_interactions, min_item_interactions,
                   DEFAULT_SHARD_SIZE if shard_size is None else shard_size, chunk_rows)
    if (out is None) == (append is None):
        which = "both" if out is not None else "neither"
        raise ParameterError("ingest writes one store: give either out= (--out, a new store) or append= "
                             f"(--append, an existing store to add to), not {which}")
    if items_from is not None and min_item_interactions != 1:
        raise ParameterError(
            f"min_item_interactions={min_item_interactions} cannot be combined with items_from (--items-from): the "
            "store keeps every item of the model, in its order, so no item is dropped; drop --min-item-interactions"
        )
    files = resolve_sources(source)
    if append is not None:
        return _append(files, append, start, fmt=fmt, user_col=user_col, item_col=item_col, value_col=value_col,
                       min_value=min_value, min_user_interactions=min_user_interactions,
                       min_item_interactions=min_item_interactions, shard_size=shard_size, chunk_rows=chunk_rows,
                       overwrite=overwrite, items_from=items_from, progress=progress,
                       storage_options=storage_options)
    shard_size = DEFAULT_SHARD_SIZE if shard_size is None else shard_size
    vocab = None if items_from is None else _model_items(items_from, storage_options)
    # held from the first look at out to the publish: a killed ingest's leftovers are tidied, never a live one's
    with claim_output(out, overwrite=overwrite, storage_options=storage_options):
        out = check_output_path(out, overwrite=overwrite, storage_options=storage_options)
        plans = [plan_file(f, fmt, user_col=user_col, item_col=item_col, value_col=value_col) for f in files]
        fmt_used, fmt_reason = _common_format(plans, fmt)
        if min_value is not None:
            _require_values(plans, min_value)
        say = _Progress(progress)
        say(f"ingesting {len(files)} file(s) as {fmt_used} ({fmt_reason}) into {out}")

        options = dict(user_col=user_col, item_col=item_col, value_col=value_col, min_value=min_value,
                       min_user_interactions=min_user_interactions, min_item_interactions=min_item_interactions,
                       shard_size=shard_size, chunk_rows=chunk_rows)
        if vocab is not None:
            options["items_from"] = vocab.where
        with _spill_dir(out) as tmp:
            spill, users = _Spill(tmp, BUCKET_USERS), _IdMap()
            items = _IdMap() if vocab is None else _IdMap.of(vocab.item_ids)
            rows_read, below, unknown = _read_into_buckets(plans, chunk_rows, min_value, users, items, spill, say,
                                                           fixed_items=vocab is not None)
            _check_not_empty(files, rows_read, below, min_value)
            if vocab is None:
                sel = _select(spill, users, items, min_user_interactions, min_item_interactions)
                dropped = {"below_min_value": below, **sel.dropped}
            else:
                _check_known(files, spill, unknown, vocab)
                sel = _select_in_vocabulary(spill, users, vocab.item_ids, min_user_interactions)
                dropped = {"below_min_value": below, "unknown_item": unknown.rows, **sel.dropped}
            say(f"read {rows_read:,} rows; writing {sel.user_ids.shape[0]:,} users x {sel.item_ids.shape[0]:,} items")
            record = dict(files=files, format=fmt_used, format_reason=fmt_reason, options=options,
                          columns=[[p.user_col, p.item_col, p.value_col] for p in plans],
                          rows_read=rows_read, dropped=dropped)
            store = write_interactions_from_shards(
                out, _reshard(_bucket_matrices(spill, sel), shard_size), n_items=sel.item_ids.shape[0],
                user_ids=sel.user_ids, item_ids=sel.item_ids, shard_size=shard_size, overwrite=overwrite, source=record,
                storage_options=storage_options,
            )
    report = IngestReport(
        sources=files, fmt=fmt_used, fmt_reason=fmt_reason, out=store.path, rows_read=rows_read,
        n_users=store.n_users, n_items=store.n_items, nnz=store.nnz, dropped=dropped, n_shards=store.n_shards,
        seconds=time.perf_counter() - start, fingerprint=store.fingerprint,
        vocabulary=None if vocab is None else vocab.where, n_unknown_items=0 if vocab is None else unknown.items,
    )
    for line in report.summary().splitlines():
        say(line, report=True)
    return report


@contextlib.contextmanager
def _spill_dir(out: str):
    """A temporary folder for the spill files, next to a local ``out`` (local disk for a URL); removed after."""
    parent, name = os.path.split(out)
    if is_url(out):  # the spill files stay on local disk
        parent = None
    else:
        os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.ingest-", dir=parent) as tmp:
        yield tmp


# ---------------------------------------------------------------------- checks


def _check_options(fmt, min_value, min_user, min_item, shard_size, chunk_rows) -> None:
    if fmt not in ("auto", *FORMATS):
        raise ParameterError(f"unknown format {fmt!r}; use one of auto, {', '.join(FORMATS)}")
    for name, value, least in (
        ("shard_size", shard_size, 1),
        ("chunk_rows", chunk_rows, 1),
        ("min_user_interactions", min_user, 1),
        ("min_item_interactions", min_item, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ParameterError(
                f"The {name!r} parameter of ingest must be an integer >= {least}. Got {value!r} instead."
            )
    if min_value is not None and (isinstance(min_value, bool) or not isinstance(min_value, (int, float, np.number))
                                  or not math.isfinite(min_value)):
        raise ParameterError(
            f"The 'min_value' parameter of ingest must be a finite number or None. Got {min_value!r} instead."
        )


def _common_format(plans: list[FilePlan], fmt: str) -> tuple[str, str]:
    found = sorted({p.fmt for p in plans})
    if len(found) > 1:
        listing = "; ".join(f"{p.path}: {p.fmt}" for p in plans)
        raise ParameterError(
            f"the source files have different formats ({listing}); ingest one format at a time or pass fmt="
        )
    return found[0], ("given" if fmt != "auto" else plans[0].detected)


def _require_values(plans: list[FilePlan], min_value: float) -> None:
    for p in plans:
        if p.value_col is None:
            raise ParameterError(
                f"min_value={min_value} needs a value column, but {p.path} has none (no 'rating' or 'value' column); "
                "name it with --value-col or drop --min-value"
            )


def _check_not_empty(files: list[str], rows_read: int, below: int, min_value) -> None:
    if rows_read == 0:
        raise InputDataError(f"{', '.join(files)}: no data rows (header only or blank); nothing to ingest")
    if below == rows_read:
        raise InputDataError(
            f"nothing left after the min_value filter: all {rows_read:,} rows have a value below "
            f"min_value={min_value}; lower --min-value"
        )


class _Progress:
    """Sends each line to the log and to the optional callback."""

    def __init__(self, callback: Callable[[str], None] | None):
        self.callback = callback

    def __call__(self, message: str, *, report: bool = False) -> None:
        """Log ``message`` (a line of the report with ``report``: see :data:`edlae_dask.diagnostics.REPORT`)."""
        from edlae_dask.diagnostics import REPORT_LINE

        log.info(message, extra=REPORT_LINE if report else None)
        if self.callback is not None:
            self.callback(message)


# --------------------------------------------------------------- pass 1: read


class _IdMap:
    """Raw id -> dense code, codes in order of first appearance.

    Keys are the ids as text, so an id read as the integer 7 from Parquet and
    as "7" from CSV are the same id. Only the distinct ids of each chunk go
    through the Python dict; the rows are mapped with numpy.
    """

    def __init__(self):
        self._codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._codes)

    def encode(self, ids: np.ndarray) -> np.ndarray:
        """Codes of ``ids`` (shape (n,)), adding unseen ids at the end."""
        local, uniques = pd.factorize(ids)  # uniques in order of first appearance
        keys = [str(k) for k in uniques.tolist()]
        table = self._codes
        # setdefault evaluates len(table) before inserting: a new id gets the next code
        glob = np.fromiter((table.setdefault(k, len(table)) for k in keys), dtype=np.int64, count=len(keys))
        return glob[local]

    def keys(self) -> np.ndarray:
        """All ids as text, indexed by code; object array of shape (n_codes,)."""
        return np.array(list(self._codes), dtype=object)

    @classmethod
    def of(cls, ids: np.ndarray) -> _IdMap:
        """A map whose codes ``0..n-1`` are the stored ids ``ids`` (shape (n,)), in their order.

        Stored ids are canonical (:func:`~edlae_dask.io.interactions.normalize_ids`), so ``str`` of a stored
        id is the text a source holds for it, whatever the source's format.
        """
        out = cls()
        out._codes = {str(k): c for c, k in enumerate(ids.tolist())}
        return out

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Codes of ``ids`` (shape (n,)), -1 for an id the map does not hold; adds nothing."""
        local, uniques = pd.factorize(ids)
        table = self._codes
        glob = np.fromiter((table.get(str(k), -1) for k in uniques.tolist()), dtype=np.int64, count=len(uniques))
        return glob[local]


class _Spill:
    """Bucket files of ``(local user, item)`` int32 code pairs, one per user-code range."""

    def __init__(self, root: str, bucket_users: int):
        self.root = root
        self.bucket_users = bucket_users
        self.n_user_codes = 0

    @property
    def n_buckets(self) -> int:
        return -(-self.n_user_codes // self.bucket_users)

    def path(self, b: int, kind: str) -> str:
        return os.path.join(self.root, f"{b:06d}.{kind}")

    def rows_of(self, b: int) -> int:
        """User codes in bucket ``b`` (the last bucket may be short)."""
        return min(self.bucket_users, self.n_user_codes - b * self.bucket_users)

    def add(self, ucodes: np.ndarray, icodes: np.ndarray) -> None:
        """Append pairs; ``ucodes`` of shape (n,), ``icodes`` of shape (n,)."""
        if ucodes.shape[0] == 0:
            return
        bucket = ucodes // self.bucket_users
        order = np.argsort(bucket, kind="stable")
        pairs = np.column_stack([ucodes - bucket * self.bucket_users, icodes])[order].astype("<i4")
        sorted_buckets = bucket[order]
        starts = np.flatnonzero(np.diff(sorted_buckets)) + 1
        for b, part in zip(sorted_buckets[np.r_[0, starts]].tolist(), np.split(pairs, starts)):
            _write_array(self.path(b, "pairs"), part, "ab")
        self.n_user_codes = max(self.n_user_codes, int(ucodes.max()) + 1)

    def load_pairs(self, b: int) -> np.ndarray:
        """Pairs of bucket ``b``, int32 of shape (n, 2); none for a bucket no pair went to.

        (Only with codes given in advance, :meth:`_IdMap.of`, may a bucket get no pair.)
        """
        path = self.path(b, "pairs")
        if not os.path.exists(path):
            return np.zeros((0, 2), dtype="<i4")
        return np.fromfile(path, dtype="<i4").reshape(-1, 2)

    def save_keys(self, b: int, keys: np.ndarray) -> None:
        _write_array(self.path(b, "keys"), keys.astype("<i8"), "wb")
        if os.path.exists(self.path(b, "pairs")):
            os.remove(self.path(b, "pairs"))

    def load_keys(self, b: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        """Deduped ``(local user, item)`` codes of bucket ``b``, sorted by user then item (none past the last)."""
        path = self.path(b, "keys")
        keys = np.fromfile(path, dtype="<i8") if os.path.exists(path) else np.zeros(0, dtype="<i8")
        return keys // n_items, keys % n_items


def _write_array(path: str, array: np.ndarray, mode: str) -> None:
    """Write ``array``'s bytes to ``path`` through Python's file I/O.

    Not numpy's ``tofile``: on a full disk that raises an ``OSError`` with no errno and no file
    name ("N requested and M written"); a Python write names both, so the CLI can say which disk is full.
    """
    try:
        with open(path, mode) as f:
            f.write(memoryview(np.ascontiguousarray(array)).cast("B"))
    except OSError as exc:
        if exc.filename is None:
            exc.filename = path
        raise


@dataclasses.dataclass
class _Unknown:
    """Rows (after the min_value filter, before dedupe) on items a fixed vocabulary lacks, and how many items."""

    rows: int = 0
    ids: _IdMap = dataclasses.field(default_factory=_IdMap)

    @property
    def items(self) -> int:
        return len(self.ids)


def _read_into_buckets(
    plans: list[FilePlan], chunk_rows: int, min_value, users: _IdMap, items: _IdMap, spill: _Spill, say,
    *, fixed_items: bool = False,
) -> tuple[int, int, _Unknown]:
    """Pass 1. Returns ``(rows read, rows below min_value, unknown)``.

    With ``fixed_items`` the item codes are ``items``'s and no others: a row on another item is
    dropped before its user is coded, so a user with no known item never gets a code (as if a
    user filter of one interaction had dropped it) and every user code has rows.
    """
    rows_read = below = 0
    unknown = _Unknown()
    for plan in plans:
        say(f"reading {plan.path}")
        for chunk in iter_chunks(plan, chunk_rows):
            n = len(chunk)
            u, i = chunk.users, chunk.items
            if min_value is not None:
                keep = chunk.values >= min_value
                below += n - int(keep.sum())
                u, i = u[keep], i[keep]
            if fixed_items:
                codes = items.lookup(i)
                known = codes >= 0
                unknown.rows += int(known.shape[0] - known.sum())
                unknown.ids.encode(i[~known])
                spill.add(users.encode(u[known]), codes[known])
            else:
                spill.add(users.encode(u), items.encode(i))
            rows_read += n
            say(f"  {rows_read:,} rows read, {len(users):,} users, {len(items):,} items so far")
    return rows_read, below, unknown


# ------------------------------------------------------ pass 2 and 3: filter


@dataclasses.dataclass
class _Selection:
    """Which user and item codes survive the filters, and where they go in the store."""

    n_item_codes: int
    keep_item: np.ndarray  # bool (n_item_codes,)
    keep_user: np.ndarray  # bool (n_user_codes,)
    new_item: np.ndarray  # int64 (n_item_codes,): store column of each item code, -1 if dropped
    user_ids: np.ndarray  # (n_users,) stored ids, first-appearance order
    item_ids: np.ndarray  # (n_items,) stored ids, sorted
    dropped: dict[str, int]  # rows per reason: duplicate, item_below_..., user_below_...


def _select(spill: _Spill, users: _IdMap, items: _IdMap, min_user: int, min_item: int) -> _Selection:
    """Passes 2 and 3: dedupe, filter items then users, number the survivors."""
    item_users, n_duplicates = _dedupe_buckets(spill, len(items))
    keep_item = item_users >= min_item
    if not keep_item.any():
        raise InputDataError(
            f"nothing left after the item filter: no item has min_item_interactions={min_item} "
            f"distinct users (the most any item has is {item_users.max()}); lower --min-item-interactions"
        )
    keep_user, final_item_users, user_dropped = _filter_users(spill, len(items), keep_item, min_user)
    if not keep_user.any():
        raise InputDataError(
            f"nothing left after the user filter: no user has min_user_interactions={min_user} "
            "interactions with the items kept; lower --min-user-interactions (or --min-item-interactions)"
        )
    item_ids, new_item = _order_items(items.keys(), final_item_users > 0)
    dropped = {
        "duplicate": n_duplicates,
        "item_below_min_interactions": int(item_users[~keep_item].sum()),
        "user_below_min_interactions": user_dropped,
    }
    user_ids = normalize_ids(users.keys()[keep_user], what="user ids")
    return _Selection(len(items), keep_item, keep_user, new_item, user_ids, item_ids, dropped)


def _dedupe_buckets(spill: _Spill, n_items: int) -> tuple[np.ndarray, int]:
    """Pass 2: dedupe each bucket in place.

    Returns
    -------
    item_users : numpy.ndarray of shape (n_items,), int64
        Distinct users per item code.
    n_duplicates : int
        Rows removed as repeats of a (user, item) pair.
    """
    item_users = np.zeros(n_items, dtype=np.int64)
    n_duplicates = 0
    for b in range(spill.n_buckets):
        pairs = spill.load_pairs(b)
        keys = _sorted_unique(pairs[:, 0].astype(np.int64) * n_items + pairs[:, 1])  # by user, then item
        n_duplicates += pairs.shape[0] - keys.shape[0]
        item_users += np.bincount(keys % n_items, minlength=n_items)
        spill.save_keys(b, keys)
    return item_users, n_duplicates


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting; numpy 2.3+'s default hash-based unique is ~50x slower on int64."""
    keys = np.sort(keys)
    if keys.shape[0] == 0:
        return keys
    keep = np.empty(keys.shape[0], dtype=bool)
    keep[0] = True
    np.not_equal(keys[1:], keys[:-1], out=keep[1:])
    return keys[keep]


def _filter_users(
    spill: _Spill, n_items: int, keep_item: np.ndarray, min_user: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Pass 3: keep users with ``min_user`` kept items.

    Returns
    -------
    keep_user : numpy.ndarray of shape (n_user_codes,), bool
    final_item_users : numpy.ndarray of shape (n_items,), int64
        Distinct kept users per item code, after both filters.
    dropped : int
        Rows of kept items that belonged to dropped users.
    """
    keep_user = np.zeros(spill.n_user_codes, dtype=bool)
    final_item_users = np.zeros(n_items, dtype=np.int64)
    dropped = 0
    for b in range(spill.n_buckets):
        u, i = spill.load_keys(b, n_items)
        m = keep_item[i]
        counts = np.bincount(u[m], minlength=spill.rows_of(b))
        ok = counts >= min_user
        keep_user[b * spill.bucket_users : b * spill.bucket_users + ok.shape[0]] = ok
        dropped += int(counts[~ok].sum())
        final_item_users += np.bincount(i[m & ok[u]], minlength=n_items)
    return keep_user, final_item_users, dropped


def _order_items(keys: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Number kept items in sorted order of their ids (numeric for integer ids).

    Returns
    -------
    item_ids : numpy.ndarray of shape (n_kept,), int64, uint64 or unicode
    new_index : numpy.ndarray of shape (n_item_codes,), int64
        Column of each item code, -1 for dropped items.
    """
    codes = np.flatnonzero(kept)
    ids = normalize_ids(keys[codes], what="item ids")
    order = np.argsort(ids, kind="stable")
    new_index = np.full(keys.shape[0], -1, dtype=np.int64)
    new_index[codes[order]] = np.arange(codes.shape[0])
    return ids[order], new_index


# ------------------------------------------------------------- pass 4: write


def _bucket_matrices(spill: _Spill, sel: _Selection) -> Iterator[sp.csr_matrix]:
    """Pass 4: each bucket's kept users as binary CSR of shape (kept users in bucket, n_items)."""
    n_codes, n_items = sel.n_item_codes, sel.item_ids.shape[0]
    for b in range(spill.n_buckets):
        lo = b * spill.bucket_users
        local_keep = sel.keep_user[lo : lo + spill.rows_of(b)]
        n_rows = int(local_keep.sum())
        if n_rows == 0:
            continue
        u, i = spill.load_keys(b, n_codes)
        m = sel.keep_item[i] & local_keep[u]
        rows = (np.cumsum(local_keep) - 1)[u[m]]
        # new item numbers are not in code order: re-sort by (row, new item) through one int64 key
        key = np.sort(rows * n_items + sel.new_item[i[m]])
        rows, cols = key // n_items, (key % n_items).astype(np.int32)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
        data = np.ones(cols.shape[0], dtype=np.float32)
        yield sp.csr_matrix((data, cols, indptr), shape=(n_rows, n_items))


def _reshard(mats: Iterator[sp.csr_matrix], shard_size: int) -> Iterator[sp.csr_matrix]:
    """Regroup consecutive CSR row blocks into blocks of exactly ``shard_size`` rows (the last may be short)."""
    pending: list[sp.csr_matrix] = []
    n_pending = 0
    for m in mats:
        pending.append(m)
        n_pending += m.shape[0]
        if n_pending < shard_size:
            continue
        block = sp.vstack(pending, format="csr")
        start = 0
        while block.shape[0] - start >= shard_size:
            yield block[start : start + shard_size]
            start += shard_size
        rest = block[start:]
        pending, n_pending = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
    if n_pending:
        yield sp.vstack(pending, format="csr")


# ------------------------------------------------- a fixed item vocabulary


@dataclasses.dataclass(frozen=True)
class _Vocabulary:
    """The items a store must have, in order: a model's (``items_from``) or an appended store's."""

    item_ids: np.ndarray  # (n_items,) stored ids, the store's columns in order
    where: str  # the factor store or interaction store they come from


def _model_items(items_from, storage_options) -> _Vocabulary:
    """The item ids of the factor store ``items_from`` (its latest version)."""
    from edlae_dask.io.factors import open_factors

    try:
        f = open_factors(items_from, storage_options=storage_options)
    except StoreFormatError as exc:
        raise StoreFormatError(
            f"--items-from {items_from} is not a factor store ({exc}); pass the factor store the model was "
            "published into (`edlae-dask train --out FACTORS`)"
        ) from exc
    return _Vocabulary(np.asarray(f.item_ids), f"{f.path} version {f.version}")


def _check_known(files: list[str], spill: _Spill, unknown: _Unknown, vocab: _Vocabulary) -> None:
    """Refuse a source none of whose rows is on an item of the vocabulary (nothing would be stored)."""
    if spill.n_user_codes == 0:
        raise InputDataError(
            f"{', '.join(files)}: none of its {unknown.rows:,} interactions is on an item of {vocab.where} (all "
            f"{unknown.items:,} items are unknown there); check that the source and the model/store belong together"
        )


def _select_in_vocabulary(spill: _Spill, users: _IdMap, item_ids: np.ndarray, min_user: int) -> _Selection:
    """Passes 2 and 3 when the items are fixed: dedupe, filter users; every item stays, in its place."""
    n_items = item_ids.shape[0]
    _, n_duplicates = _dedupe_buckets(spill, n_items)
    keep_item = np.ones(n_items, dtype=bool)
    keep_user, _, user_dropped = _filter_users(spill, n_items, keep_item, min_user)
    if not keep_user.any():
        raise InputDataError(
            f"nothing left after the user filter: no user has min_user_interactions={min_user} "
            "interactions with the model's items; lower --min-user-interactions"
        )
    dropped = {"duplicate": n_duplicates, "item_below_min_interactions": 0,
               "user_below_min_interactions": user_dropped}
    user_ids = normalize_ids(users.keys()[keep_user], what="user ids")
    return _Selection(n_items, keep_item, keep_user, np.arange(n_items, dtype=np.int64), user_ids, item_ids, dropped)


# ----------------------------------------------------------------- append


def _open_for_append(append, storage_options) -> InteractionStore:
    try:
        return open_interactions(append, storage_options=storage_options)
    except StoreFormatError as exc:
        raise StoreFormatError(f"cannot --append to {append}: {exc}") from exc


def _append(files, append, start, *, fmt, user_col, item_col, value_col, min_value, min_user_interactions,
            min_item_interactions, shard_size, chunk_rows, overwrite, items_from, progress,
            storage_options) -> IngestReport:
    """:func:`ingest` with ``append``: add the source's interactions to the store ``append`` (see there)."""
    if min_user_interactions != 1 or min_item_interactions != 1:
        raise ParameterError(
            "append (--append) takes no --min-user-interactions / --min-item-interactions: one day's rows cannot "
            "judge users and items the store already holds; filter when ingesting the whole data with --out"
        )
    if overwrite:
        raise ParameterError("overwrite (--overwrite) has no meaning with append (--append), which always replaces "
                             "the store it adds to; drop --overwrite")
    # held alone from reading the store to publishing the new one: two appends at once would each publish
    # the old store plus their own rows, and the later would lose the other's
    with claim_output(append, overwrite=False, storage_options=storage_options):
        store = _open_for_append(append, storage_options)
        size = int(store.attrs["shard_size"])
        if shard_size is not None and shard_size != size:
            raise ParameterError(f"shard_size={shard_size} differs from the {size} users per shard of {store.path}; "
                                 "an append keeps the store's sharding: drop --shard-size")
        offsets = np.asarray(store.shard_offsets)
        if not np.array_equal(offsets, np.minimum(np.arange(store.n_shards + 1) * size, store.n_users)):
            raise StoreFormatError(f"cannot --append to {store.path}: its shards are not of {size} users each "
                                   "(only the last shorter); re-ingest the data with --out")
        item_ids = store.item_ids()
        if items_from is not None:
            model = _model_items(items_from, storage_options)
            if not (model.item_ids.dtype == item_ids.dtype and np.array_equal(model.item_ids, item_ids)):
                raise ParameterError(f"--items-from {items_from}: the model's items are not those of {store.path}, "
                                     "whose item vocabulary an append keeps; drop --items-from")
        vocab = _Vocabulary(item_ids, store.path)
        old_users = store.user_ids()
        plans = [plan_file(f, fmt, user_col=user_col, item_col=item_col, value_col=value_col) for f in files]
        fmt_used, fmt_reason = _common_format(plans, fmt)
        if min_value is not None:
            _require_values(plans, min_value)
        say = _Progress(progress)
        say(f"appending {len(files)} file(s) as {fmt_used} ({fmt_reason}) to {store.path}")
        n_items, n_old = item_ids.shape[0], store.n_users
        with _spill_dir(store.path) as tmp:
            # a bucket holds whole shards, so each shard's new rows are in one bucket
            spill = _Spill(tmp, size * max(1, BUCKET_USERS // size))
            users, items = _IdMap.of(old_users), _IdMap.of(item_ids)
            rows_read, below, unknown = _read_into_buckets(plans, chunk_rows, min_value, users, items, spill, say,
                                                           fixed_items=True)
            _check_not_empty(files, rows_read, below, min_value)
            _check_known(files, spill, unknown, vocab)
            _, n_duplicates = _dedupe_buckets(spill, n_items)
            # old ids first, then the new ones in first-appearance order: as a fresh ingest of old + new rows
            user_ids = normalize_ids(users.keys(), what="user ids")
            dropped = {"below_min_value": below, "unknown_item": unknown.rows, "duplicate": n_duplicates,
                       "item_below_min_interactions": 0, "user_below_min_interactions": 0, "already_stored": 0}
            # counts dropped["already_stored"] as it merges: the record holds the count when the store is marked
            merge = _Merge(store, spill, n_items, user_ids.shape[0], size, dropped)
            record = dict(files=files, format=fmt_used, format_reason=fmt_reason, rows_read=rows_read,
                          options=dict(user_col=user_col, item_col=item_col, value_col=value_col,
                                       min_value=min_value, chunk_rows=chunk_rows),
                          columns=[[p.user_col, p.item_col, p.value_col] for p in plans], dropped=dropped)
            source = dict(store.attrs.get("source") or {})
            source["appended"] = [*source.get("appended", []), record]
            say(f"read {rows_read:,} rows; writing {user_ids.shape[0]:,} users ({user_ids.shape[0] - n_old:,} new)")
            new = write_interactions_from_shards(
                store.path, merge.shards(), n_items=n_items, user_ids=user_ids, item_ids=item_ids,
                shard_size=size, overwrite=True, source=source, storage_options=storage_options,
            )
    report = IngestReport(
        sources=files, fmt=fmt_used, fmt_reason=fmt_reason, out=new.path, rows_read=rows_read,
        n_users=new.n_users, n_items=new.n_items, nnz=new.nnz, dropped=dropped, n_shards=new.n_shards,
        seconds=time.perf_counter() - start, fingerprint=new.fingerprint, vocabulary=store.path,
        n_unknown_items=unknown.items, appended_to=store.path, n_new_users=new.n_users - n_old,
        shards_written=merge.written,
    )
    for line in report.summary().splitlines():
        say(line, report=True)
    return report


class _Merge:
    """The appended store's shards, in order: unchanged ones read back, changed ones merged with the new rows."""

    def __init__(self, store: InteractionStore, spill: _Spill, n_items: int, n_users: int, shard_size: int,
                 dropped: dict):
        self.store, self.spill, self.n_items, self.n_users, self.shard_size = store, spill, n_items, n_users, shard_size
        self.dropped = dropped  # its "already_stored" is counted here
        self.written: list[int] = []
        self._bucket = (-1, None, None)

    def shards(self) -> Iterator[sp.csr_matrix]:
        """Each shard of the new store, a CSR of shape (users in shard, n_items); read once, one at a time."""
        old_offsets = self.store.shard_offsets
        for s, a in enumerate(range(0, self.n_users, self.shard_size)):
            b = min(a + self.shard_size, self.n_users)
            new = self._new_rows(a, b)
            if s >= self.store.n_shards:
                self.written.append(s)
                yield new
                continue
            old = self.store.read_shard(s)  # verified against its checksum
            merged, added = (old, 0) if new.nnz == 0 else self._union(old, new)
            if added == 0 and old_offsets[s + 1] == b:
                yield old  # unchanged (no new row, or only repeats): written again as it was, same fingerprint
                continue
            self.written.append(s)
            yield merged

    def _new_rows(self, a: int, b: int) -> sp.csr_matrix:
        """The source's rows of users ``a:b`` (store rows), binary CSR of shape (b - a, n_items)."""
        size = self.spill.bucket_users
        k = a // size
        if self._bucket[0] != k:
            self._bucket = (k, *self.spill.load_keys(k, self.n_items))
        _, u, i = self._bucket
        lo, hi = np.searchsorted(u, [a - k * size, b - k * size])  # sorted by user, then item
        rows, cols = u[lo:hi] - (a - k * size), i[lo:hi].astype(np.int32)
        indptr = np.zeros(b - a + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=b - a), out=indptr[1:])
        return sp.csr_matrix((np.ones(cols.shape[0], dtype=np.float32), cols, indptr), shape=(b - a, self.n_items))

    def _union(self, old: sp.csr_matrix, new: sp.csr_matrix) -> tuple[sp.csr_matrix, int]:
        """``old`` (padded with empty rows to ``new``'s) plus the entries of ``new`` it lacks (value 1.0), and
        how many those are.

        A stored entry keeps its value: a repeat collapses into it, as ingest collapses repeats.
        """
        n_rows = new.shape[0]
        old = sp.csr_matrix((old.data, old.indices, np.r_[old.indptr, np.full(n_rows - old.shape[0], old.nnz)]),
                            shape=new.shape)
        n = self.n_items

        def keys(m):
            return np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(m.indptr)) * n + m.indices

        old_keys, new_keys = keys(old), keys(new)  # each sorted: canonical CSR
        stored = np.zeros(new_keys.shape[0], dtype=bool)
        if old_keys.shape[0]:
            pos = np.minimum(np.searchsorted(old_keys, new_keys), old_keys.shape[0] - 1)
            stored = old_keys[pos] == new_keys
        self.dropped["already_stored"] += int(stored.sum())
        merged = np.sort(np.concatenate([old_keys, new_keys[~stored]]))
        values = np.ones(merged.shape[0], dtype=np.float32)
        values[np.searchsorted(merged, old_keys)] = old.data  # stored entries keep their values
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(merged // n, minlength=n_rows), out=indptr[1:])
        return sp.csr_matrix((values, (merged % n).astype(np.int32), indptr), shape=new.shape), int((~stored).sum())

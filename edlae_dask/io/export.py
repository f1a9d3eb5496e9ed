"""Export a recommendations store to one flat file for serving: Parquet, CSV or gzipped CSV.

One row per (user, rank)::

    user_id   the user's original id (int64, uint64 or string, as in the interaction store)
    rank      int32, 1 for the best item
    item_id   the item's original id (the factors' item ids, as the store copied them)
    score     float32, (x·U)·Vᵀ of that item

Places whose score is −inf are dropped: they are the padding of a user with fewer
than ``top_n`` items left to recommend (seen, denied or not allowed items), not
recommendations (an index into the list of all items, in ascending order, that the
top-N rule fills in; see :func:`edlae_dask.topn.fill_exhausted`). Since they come
last in a row, the ranks kept are still 1, 2, ... without gaps; such a user has
fewer rows, and a user with none has no row at all.

Streaming: the file is written one shard of the store at a time, read and verified
against its checksum (:func:`edlae_dask.io.recommendations.open_recommendations`),
so memory holds one shard's rows; a Parquet file gets one row group per shard (no
row group for a shard without rows). The file is written to a temporary sibling
and renamed into place (:func:`edlae_dask.io.versioned.new_file`): the path never
holds a half-written file. An incomplete store is refused: a file for serving
should hold every user, and ``edlae-dask score`` run again finishes the store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

import dask
import numpy as np

from edlae_dask.errors import ParameterError
from edlae_dask.io.versioned import check_new_file, new_file

__all__ = ["ExportReport", "FORMATS", "export_recommendations", "export_format"]

log = logging.getLogger("edlae_dask.export")

#: file suffix -> format
FORMATS = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv.gz"}


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_recommendations` wrote.

    Attributes
    ----------
    path : str
        The file written (absolute).
    format : str
        ``"parquet"``, ``"csv"`` or ``"csv.gz"``.
    rows : int
        Rows written: one per (user, rank).
    users : int
        Users with at least one row.
    users_in_store : int
        Users of the store (those without a row had no item left to recommend).
    shards : int
        Shards read; a Parquet file has one row group per shard with rows.
    seconds : float
    """

    path: str
    format: str
    rows: int
    users: int
    users_in_store: int
    shards: int
    seconds: float

    def summary(self) -> str:
        return (f"wrote {self.path} ({self.format}): {self.rows:,} rows, {self.users:,} of {self.users_in_store:,} "
                f"users, {self.shards} shards in {self.seconds:.1f} s")


def export_format(path) -> str:
    """The format that ``path``'s suffix names (``.parquet``, ``.csv``, ``.csv.gz``); ParameterError otherwise."""
    name = os.fspath(path).lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):  # .csv.gz before .gz-less .csv
        if name.endswith(suffix):
            return FORMATS[suffix]
    raise ParameterError(f"{os.fspath(path)!r}: the export format is chosen by the file's suffix; end --out with "
                         f"{', '.join(FORMATS)}")


def _arrow_type(ids: np.ndarray):
    import pyarrow as pa

    return pa.string() if ids.dtype.kind == "U" else pa.from_numpy_dtype(ids.dtype)


def _shard_table(rec, a: int, b: int, schema):
    """The rows of users ``a:b`` (one shard) as an Arrow table; −inf places dropped."""
    import pyarrow as pa

    # one compute of both halves: the shard's read (and checksum) is one task shared by items and scores
    items, scores = dask.compute(rec.items[a:b], rec.scores[a:b], scheduler="sync")
    keep = np.isfinite(scores) & (items >= 0)
    rows, cols = np.nonzero(keep)  # row-major: by user, then by rank
    return pa.Table.from_arrays(
        [pa.array(rec.user_ids[a:b][rows], type=schema.field("user_id").type),
         pa.array((cols + 1).astype(np.int32)),
         pa.array(rec.item_ids[items[rows, cols]], type=schema.field("item_id").type),
         pa.array(scores[rows, cols].astype(np.float32))],
        schema=schema,
    ), int(np.count_nonzero(keep.any(axis=1)))


def export_recommendations(recs, out, *, overwrite: bool = False, storage_options=None) -> ExportReport:
    """Write a recommendations store's rows to the file ``out``, one row per (user, rank), shard by shard.

    Parameters
    ----------
    recs : str, os.PathLike or Recommendations
        A complete recommendations store (``edlae-dask score --out``; a local path or a URL) or an opened one.
    out : str or os.PathLike
        A local file; its suffix chooses the format: ``.parquet``, ``.csv`` or ``.csv.gz``.
    overwrite : bool, default=False
        Replace an existing file at ``out``.
    storage_options : dict, optional
        fsspec options for a ``recs`` URL.

    Returns
    -------
    ExportReport

    Raises
    ------
    OutputExistsError
        ``out`` exists and ``overwrite`` is False (checked before anything is read), or is a directory.
    ParameterError
        ``out`` has no known suffix, or is a URL.
    StoreFormatError
        ``recs`` is not a complete recommendations store.
    StoreIntegrityError
        A shard's rows do not match their checksum.

    Notes
    -----
    Columns ``user_id, rank, item_id, score``; −inf places (users with fewer than
    ``top_n`` items to recommend) are dropped (module docstring). Memory: one
    shard's rows. Cost: one read of the store.
    """
    import pyarrow as pa

    from edlae_dask.io.recommendations import Recommendations, open_recommendations

    t0 = time.perf_counter()
    fmt = export_format(out)
    path = check_new_file(out, overwrite=overwrite)  # before the work: a refusal costs nothing
    rec = recs if isinstance(recs, Recommendations) else open_recommendations(recs, storage_options=storage_options)
    if not rec.complete:
        from edlae_dask.errors import StoreFormatError

        raise StoreFormatError(f"{rec.path} is an incomplete recommendations store ({len(rec.done_shards)} of "
                               f"{rec.meta['n_shards']} shards): run the same `edlae-dask score` again to finish it, "
                               "then export")
    schema = pa.schema([("user_id", _arrow_type(rec.user_ids)), ("rank", pa.int32()),
                        ("item_id", _arrow_type(rec.item_ids)), ("score", pa.float32())])
    offsets = rec.shard_offsets
    n_rows = n_users = 0
    with new_file(path, overwrite=overwrite) as tmp, _writer(fmt, tmp, schema) as write:
        for s in range(len(offsets) - 1):
            table, users = _shard_table(rec, offsets[s], offsets[s + 1], schema)
            if table.num_rows:
                write(table)
            n_rows += table.num_rows
            n_users += users
    report = ExportReport(path=path, format=fmt, rows=n_rows, users=n_users, users_in_store=len(rec.user_ids),
                          shards=len(offsets) - 1, seconds=time.perf_counter() - t0)
    from edlae_dask.diagnostics import REPORT_LINE

    log.info("%s", report.summary(), extra=REPORT_LINE)
    return report


@contextlib.contextmanager
def _writer(fmt: str, path: str, schema):
    """Yield ``write(table)``: a Parquet row group per call, or CSV rows appended (one header)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt == "parquet":
        with pq.ParquetWriter(path, schema) as w:
            # row_group_size: the whole table, so a shard is one row group (pyarrow would split at 1Mi rows)
            yield lambda table: w.write_table(table, row_group_size=table.num_rows)
        return
    with (pa.CompressedOutputStream(path, "gzip") if fmt == "csv.gz" else pa.OSFile(path, "wb")) as sink, \
            pacsv.CSVWriter(sink, schema) as w:
        yield w.write_table

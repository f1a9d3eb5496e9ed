"""Chunked readers of raw interaction files.

Each reader streams one file in chunks of at most ``chunk_rows`` rows (pandas'
chunked C parser, pyarrow record batches) and yields :class:`Chunk` objects
whose ids are present and whose values are finite numbers; anything else raises
:class:`~edlae_dask.errors.InputDataError` naming the file and line (or row).
No reader ever holds a whole file.

Formats
-------
csv
    Header line, columns ``user,item[,rating|value]`` (names configurable);
    other columns ignored. Any compression pandas infers (``.gz``, ``.bz2``, ...).
parquet
    Same columns, read in record batches with pyarrow.
movielens-csv
    MovieLens ``ratings.csv``: ``userId,movieId,rating,timestamp``.
movielens-dat
    MovieLens ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``, no header.
netflix
    Netflix Prize ``combined_data_*.txt``: a ``MovieID:`` line, then
    ``CustomerID,Rating,Date`` lines for that movie.
msd
    Million Song Dataset taste profile: ``user<TAB>song<TAB>count``, no header.

Ids are read as text, so ``"007"`` stays ``"007"``; whether the store keeps them
as integers is decided later on the distinct ids
(:func:`edlae_dask.io.interactions.normalize_ids`). A string id with a control
character or longer than :data:`~edlae_dask.io.interactions.MAX_ID_CHARS` is an
error naming its line; so is a CSV row with more fields than its header (a field
holding the delimiter, unquoted, would shift the ones after it).
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import lzma
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from edlae_dask.errors import InputDataError, ParameterError
from edlae_dask.io.interactions import CONTROL_CHARS, MAX_ID_CHARS, id_text_problem

__all__ = ["FORMATS", "Chunk", "FilePlan", "detect_format", "iter_chunks", "plan_file", "resolve_sources"]

FORMATS = ("csv", "parquet", "movielens-csv", "movielens-dat", "netflix", "msd")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_VALUE_DEFAULTS = ("rating", "value")
_NETFLIX_NAME = re.compile(r"combined_data_\d+\.txt$")
# a CSV row with more fields than its header: the usual cause, and its fix
_QUOTE_FIX = 'a field that holds the delimiter must be quoted ("Smith, John"): quote such fields, or fix the line'


@dataclass
class Chunk:
    """Validated rows of one file.

    Attributes
    ----------
    users, items : numpy.ndarray of shape (n_rows,)
        Raw ids (strings, or integers from a Parquet integer column: int64, or
        uint64 for an unsigned one); none missing, no string id empty, holding a
        control character or longer than ``MAX_ID_CHARS``.
    values : numpy.ndarray of shape (n_rows,), float64, or None
        Finite values, or None when the file has no value column.
    """

    users: np.ndarray
    items: np.ndarray
    values: np.ndarray | None

    def __len__(self) -> int:
        return self.users.shape[0]


@dataclass(frozen=True)
class FilePlan:
    """How one file is read: its format and the columns that hold user, item, value."""

    path: str
    fmt: str
    user_col: str
    item_col: str
    value_col: str | None
    detected: str = ""  # why ``fmt`` was chosen when it was auto-detected


# ---------------------------------------------------------------- sources, formats


def resolve_sources(source) -> list[str]:
    """Expand a path, a glob, or a list of them into existing files, in order.

    Raises
    ------
    InputDataError
        No source, a missing file, a glob matching nothing, or a directory.
    """
    entries = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not entries:
        raise InputDataError("no source files given; pass a path, a glob (e.g. 'data/*.csv') or a list of paths")
    files: list[str] = []
    for entry in entries:
        entry = os.fspath(entry)
        if not os.path.exists(entry) and glob.has_magic(entry):
            matches = sorted(glob.glob(entry))
            if not matches:
                raise InputDataError(f"no file matches the pattern {entry!r}; check the path and the wildcard")
            files.extend(matches)
        else:
            files.append(entry)
    for path in files:
        if not os.path.exists(path):
            raise InputDataError(f"{path}: file not found; check the path (relative paths start at {os.getcwd()})")
        if os.path.isdir(path):
            raise InputDataError(f"{path} is a directory; pass the file(s) in it, or a glob like '{path}/*.csv'")
    return [os.path.abspath(p) for p in files]


def _strip_compression(name: str) -> str:
    for suffix in _COMPRESSION_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _first_line(path: str) -> str | None:
    """The first non-blank line of a (possibly compressed) text file, or None."""
    opener = _OPENERS.get(os.path.splitext(path)[1].lower(), open)
    if opener is open and _strip_compression(path) != path:
        return None  # .zst/.zip: pandas can read them, we cannot peek cheaply
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
            for _, line in zip(range(1000), f):
                if line.strip():
                    return line.rstrip("\r\n")
    except (OSError, EOFError) as exc:
        raise InputDataError(f"{path}: cannot read the file ({exc})") from exc
    return None


def detect_format(path: str) -> tuple[str, str]:
    """Decide a file's format from its name, extension and first line.

    Returns
    -------
    fmt : str
        One of :data:`FORMATS`.
    reason : str
        What the decision rests on (shown in the report).

    Raises
    ------
    ParameterError
        The format cannot be told; the message asks for ``fmt=`` / ``--format``.
    """
    name = _strip_compression(os.path.basename(path))
    ext = os.path.splitext(name)[1].lower()
    if ext in (".parquet", ".pq"):
        return "parquet", f"extension {ext}"
    if _NETFLIX_NAME.search(name):
        return "netflix", "file name combined_data_*.txt"
    first = _first_line(path)
    if ext == ".csv":
        header = set((first or "").lstrip("\ufeff").split(","))
        if {"userId", "movieId"} <= header:
            return "movielens-csv", "a .csv file whose header has userId,movieId"
        return "csv", "extension .csv"
    if first is not None:
        if re.fullmatch(r"\s*\d+:\s*", first):
            return "netflix", f"first line {first!r} is a Netflix 'MovieID:' line"
        if "::" in first:
            return "movielens-dat", f"first line {first!r} has '::' separators"
        if first.count("\t") == 2:
            return "msd", f"first line {first!r} has 3 tab-separated fields"
    raise ParameterError(
        f"cannot tell the format of {path} from its name or its first line {first!r}; "
        f"pass fmt= (--format) one of {', '.join(FORMATS)}"
    )


def plan_file(path: str, fmt: str, *, user_col: str, item_col: str, value_col: str | None) -> FilePlan:
    """Resolve the format (if ``"auto"``) and the columns of one file, checking they exist.

    Raises
    ------
    InputDataError
        Empty file, or a named column missing (the message lists the columns found).
    ParameterError
        Unknown or undetectable format.
    """
    detected = ""
    if fmt == "auto":
        fmt, detected = detect_format(path)
    if fmt not in FORMATS:
        raise ParameterError(f"unknown format {fmt!r}; use one of auto, {', '.join(FORMATS)}")
    if fmt == "movielens-dat":
        return FilePlan(path, fmt, "UserID", "MovieID", "Rating", detected)
    if fmt == "netflix":
        return FilePlan(path, fmt, "CustomerID", "MovieID", "Rating", detected)
    if fmt == "msd":
        return FilePlan(path, fmt, "user", "song", "count", detected)
    if fmt == "movielens-csv":
        # the MovieLens names replace the generic defaults, never names the caller chose
        user_col = "userId" if user_col == "user" else user_col
        item_col = "movieId" if item_col == "item" else item_col
        value_col = value_col or "rating"
    columns = _parquet_columns(path) if fmt == "parquet" else _csv_columns(path)
    value_col = _resolve_columns(path, columns, user_col, item_col, value_col)
    return FilePlan(path, fmt, user_col, item_col, value_col, detected)


def _csv_columns(path: str) -> list[str]:
    try:
        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except pd.errors.EmptyDataError as exc:
        raise InputDataError(f"{path} is empty: no header line and no rows") from exc
    except (UnicodeDecodeError, pd.errors.ParserError, OSError, EOFError) as exc:
        raise InputDataError(f"{path}: cannot read the CSV header ({exc})") from exc


def _parquet_columns(path: str) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for non-Parquet bytes
        raise InputDataError(f"{path} is not a readable Parquet file ({exc})") from exc


def _resolve_columns(path: str, columns: list[str], user_col: str, item_col: str, value_col: str | None) -> str | None:
    if user_col == item_col:
        raise ParameterError(f"user_col and item_col are both {user_col!r}; they must name two different columns")
    for col, flag in ((user_col, "--user-col"), (item_col, "--item-col"), (value_col, "--value-col")):
        if col is not None and col not in columns:
            raise InputDataError(
                f"{path}: column {col!r} not found; the columns are {columns}. "
                f"Name the right one with {flag} ({flag[2:].replace('-', '_')}=...)"
            )
    if value_col is None:
        value_col = next((c for c in _VALUE_DEFAULTS if c in columns), None)
    return value_col


# ----------------------------------------------------------------------- reading


def iter_chunks(plan: FilePlan, chunk_rows: int) -> Iterator[Chunk]:
    """Stream one planned file as validated chunks of at most ``chunk_rows`` rows."""
    yield from _READERS[plan.fmt](plan, chunk_rows)


def _csv_chunks(plan: FilePlan, chunk_rows: int) -> Iterator[Chunk]:
    reader = pd.read_csv(
        plan.path,
        # every column, not only ours: with usecols pandas silently drops a row's fields past the header's
        # (`Smith, John,10,5` under `user,item,rating` would be user "Smith", item " John"); read whole, such
        # a row is a ParserError (or, as the first row, an implicit index), reported by line below
        dtype={plan.user_col: object, plan.item_col: object},  # text as read: "007" stays "007"
        keep_default_na=False,  # only an empty field is missing: "NA" or "null" may be a real id
        na_values=[""],
        skip_blank_lines=False,  # keep blank lines as rows so row k is line k + 2
        chunksize=chunk_rows,
    )
    roles = (plan.user_col, plan.item_col, plan.value_col)
    where = _Where(plan.path, 2, "line")  # row 0 is on line 2, under the header
    for df in _checked(reader, plan.path, fields_fix=_QUOTE_FIX):
        if not isinstance(df.index, pd.RangeIndex):
            # pandas reads a first row longer than the header as index + columns, shifting every field
            raise InputDataError(
                f"{where.at(0)}: more fields than the {df.shape[1]} columns of the header ({','.join(df.columns)}); "
                f"{_QUOTE_FIX}"
            )
        yield _finish(df, roles, where)


def _movielens_dat_chunks(plan: FilePlan, chunk_rows: int) -> Iterator[Chunk]:
    # "u::i::r::t" split on ':' gives 7 fields with empty ones between: the fast C
    # parser handles that, a two-character separator would need the Python engine
    names = ["user", "_1", "item", "_2", "rating", "_3", "timestamp"]
    reader = _headerless(plan.path, ":", names, {"user": object, "item": object}, chunk_rows)
    where = _Where(plan.path, 1, "line")
    for df in _checked(reader, plan.path):
        _check_fields(df, ["user", "item", "rating", "timestamp"], ["_1", "_2", "_3"], where,
                      "UserID::MovieID::Rating::Timestamp", sep=":")
        yield _finish(df, ("user", "item", "rating"), where)


def _msd_chunks(plan: FilePlan, chunk_rows: int) -> Iterator[Chunk]:
    names = ["user", "song", "count"]
    reader = _headerless(plan.path, "\t", names, {"user": object, "song": object}, chunk_rows)
    where = _Where(plan.path, 1, "line")
    for df in _checked(reader, plan.path):
        _check_fields(df, names, [], where, "user<TAB>song<TAB>count", sep="\t")
        yield _finish(df, ("user", "song", "count"), where)


def _netflix_chunks(plan: FilePlan, chunk_rows: int) -> Iterator[Chunk]:
    names = ["customer", "rating", "date"]
    reader = _headerless(plan.path, ",", names, {"customer": object, "date": object}, chunk_rows)
    movie = None  # the current "MovieID:" block carries over chunk boundaries
    where = _Where(plan.path, 1, "line")
    for df in _checked(reader, plan.path):
        df, movie = _attach_netflix_movies(df, movie, where)
        yield _finish(df, ("customer", "movie", "rating"), where)


def _attach_netflix_movies(df: pd.DataFrame, movie: str | None, where: _Where) -> tuple[pd.DataFrame, str | None]:
    """Turn ``MovieID:`` lines into a ``movie`` column of the rating lines below them.

    A header line has only its first field, ending in ``:``; a rating line has
    all three. Only the few header candidates are inspected in Python: the
    rating rows are classified with vectorised null masks.
    """
    present = df.notna().to_numpy()
    is_rating = present.all(axis=1)
    is_blank = ~present.any(axis=1)
    candidates = np.flatnonzero(present[:, 0] & ~present[:, 1] & ~present[:, 2])
    names = [str(x) for x in df["customer"].to_numpy()[candidates]]
    is_header = np.zeros(len(df), dtype=bool)
    is_header[candidates] = [len(n) > 1 and n.endswith(":") for n in names]
    bad = ~(is_header | is_rating | is_blank)
    if bad.any():
        _raise_malformed(df, np.flatnonzero(bad)[0], where, "'MovieID:' or 'CustomerID,Rating,Date'", ",")
    headers = np.flatnonzero(is_header)
    header_movies = np.array([movie] + [n[:-1] for n, h in zip(names, is_header[candidates]) if h], dtype=object)
    rating_rows = np.flatnonzero(is_rating)
    # each rating line belongs to the last header above it; index 0 is the movie carried from the previous chunk
    owner = np.searchsorted(headers, rating_rows, side="right")
    if rating_rows.size and owner[0] == 0 and movie is None:
        raise InputDataError(
            f"{where.at(df.index[rating_rows[0]])}: a rating line before any 'MovieID:' line; a Netflix "
            "combined_data_*.txt file starts with 'MovieID:'. Check the file or pass the right --format"
        )
    rows = df.iloc[rating_rows][["customer", "rating"]].assign(movie=header_movies[owner])
    return rows, header_movies[-1]


def _parquet_chunks(plan: FilePlan, chunk_rows: int) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(plan.path)
    for col in (plan.user_col, plan.item_col):
        typ = pf.schema_arrow.field(col).type
        if pa.types.is_dictionary(typ):
            typ = typ.value_type
        if not (pa.types.is_integer(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise InputDataError(
                f"{plan.path}: id column {col!r} has type {typ}; ids must be integers or strings. "
                "Cast the column, or name another one with --user-col/--item-col"
            )
    cols = [plan.user_col, plan.item_col] + ([plan.value_col] if plan.value_col else [])
    where, first = _Where(plan.path, 1, "row"), 0
    for batch in pf.iter_batches(batch_size=chunk_rows, columns=cols):
        # an integer id column with nulls arrives as float with NaN: _finish reports the null
        df = batch.to_pandas().set_axis(pd.RangeIndex(first, first + batch.num_rows))
        yield _finish(df, (plan.user_col, plan.item_col, plan.value_col), where)
        first += batch.num_rows


_READERS: dict[str, Callable[[FilePlan, int], Iterator[Chunk]]] = {
    "csv": _csv_chunks,
    "movielens-csv": _csv_chunks,
    "parquet": _parquet_chunks,
    "movielens-dat": _movielens_dat_chunks,
    "netflix": _netflix_chunks,
    "msd": _msd_chunks,
}


# ----------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Where:
    """Locates a row in its file for error messages, from its label in the chunk's index.

    Chunked pandas readers number rows across chunks (0, 1, ... over the whole
    file, blank lines included), so ``line = base + label``.
    """

    path: str
    base: int  # 1-based line (or row) number of the file's row 0
    unit: str  # "line" or "row"

    def at(self, label) -> str:
        return f"{self.path}, {self.unit} {self.base + int(label)}"


def _headerless(path: str, sep: str, names: list[str], dtype: dict, chunk_rows: int):
    return pd.read_csv(
        path, sep=sep, header=None, names=names, dtype=dtype, index_col=False,
        quoting=csv.QUOTE_NONE, keep_default_na=False, na_values=[""],
        skip_blank_lines=False, chunksize=chunk_rows,
    )


def _checked(reader, path: str, fields_fix: str | None = None) -> Iterator[pd.DataFrame]:
    """Yield the reader's chunks; parser errors become InputDataError naming the file.

    With ``fields_fix``, a line with more fields than the header is reported by its
    line number with that fix.
    """
    try:
        with reader:
            yield from reader
    except pd.errors.EmptyDataError as exc:
        raise InputDataError(f"{path} is empty: no rows") from exc
    except pd.errors.ParserError as exc:
        detail = str(exc).replace("Error tokenizing data. C error: ", "").strip()
        extra = re.fullmatch(r"Expected (\d+) fields in line (\d+), saw (\d+)", detail)
        if extra and fields_fix:
            expected, line, saw = extra.groups()
            raise InputDataError(
                f"{path}, line {line}: {saw} fields, more than the {expected} columns of the header; {fields_fix}"
            ) from exc
        hint = " (more separators than the format has)" if detail.startswith("Expected") else ""
        raise InputDataError(
            f"{path}: malformed line: {detail}{hint}. Fix the line, or check --format"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{path}: not UTF-8 text ({exc}); re-encode the file as UTF-8") from exc
    except (OSError, EOFError) as exc:  # truncated or corrupt compressed file
        raise InputDataError(f"{path}: cannot read the file ({type(exc).__name__}: {exc})") from exc


def _check_fields(
    df: pd.DataFrame, required: list[str], empty: list[str], where: _Where, layout: str, sep: str
) -> None:
    """Raise on a line whose field count does not match ``layout`` (blank lines pass)."""
    present = df.notna()
    blank = ~present.any(axis=1)
    ok = present[required].all(axis=1) & ~present[empty].any(axis=1) if empty else present[required].all(axis=1)
    bad = ~(ok | blank)
    if bad.any():
        _raise_malformed(df, np.flatnonzero(bad.to_numpy())[0], where, layout, sep)


def _raise_malformed(df: pd.DataFrame, i: int, where: _Where, layout: str, sep: str) -> None:
    """Raise for row position ``i`` of ``df``, quoting the line rebuilt from its fields."""
    # fields come back parsed: print 3.0 as 3 so the line reads as it was written
    fields = [f"{x:g}" if isinstance(x, float) else str(x) for x in df.iloc[i] if not pd.isna(x)]
    raise InputDataError(
        f"{where.at(df.index[i])}: malformed line {sep.join(fields)!r}; expected {layout}. "
        "Fix or remove the line, or pass the right --format"
    )


def _finish(df: pd.DataFrame, roles: tuple[str, str, str | None], where: _Where) -> Chunk:
    """Drop blank rows, check ids are present and values finite; return a Chunk."""
    user_col, item_col, value_col = roles
    cols = [c for c in roles if c is not None]
    df = df[df[cols].notna().any(axis=1).to_numpy()]
    for col, role, flag in ((user_col, "user", "--user-col"), (item_col, "item", "--item-col")):
        missing = df[col].isna().to_numpy()
        if missing.any():
            raise InputDataError(
                f"{where.at(df.index[np.flatnonzero(missing)[0]])}: empty or missing {role} id in column "
                f"{col!r}; every row needs a user and an item. Remove the row, or name the right column with {flag}"
            )
    values = None if value_col is None else _parse_values(df[value_col], where, value_col)
    users, items = _as_ids(df[user_col]), _as_ids(df[item_col])
    for ids, col, role in ((users, user_col, "user"), (items, item_col, "item")):
        _check_id_texts(ids, df.index, where, role, col)
    return Chunk(users, items, values)


def _as_ids(col: pd.Series) -> np.ndarray:
    if col.dtype.kind == "u":  # an unsigned column (Parquet uint64) may hold ids above int64: keep them exact
        return col.to_numpy(dtype=np.uint64)
    return col.to_numpy(dtype=np.int64) if col.dtype.kind == "i" else col.to_numpy(dtype=object)


def _check_id_texts(ids: np.ndarray, index: pd.Index, where: _Where, role: str, col: str) -> None:
    """Raise on the first empty, too long or control-character string id, naming its line and the fix."""
    if ids.dtype != object or ids.shape[0] == 0:
        return
    texts = ids.tolist()
    try:
        joined = "".join(texts)
    except TypeError:  # not all str (a Parquet dictionary of other types): check their text
        texts = [str(x) for x in texts]
        joined = "".join(texts)
    # C-speed passes over the whole chunk (isprintable() is false for any control character, and for some
    # other characters, which the regex then clears); the loop below runs only to name the culprit
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    if (lengths.max() <= MAX_ID_CHARS and lengths.min() > 0
            and (joined.isprintable() or not CONTROL_CHARS.search(joined))):
        return
    for label, text in zip(index, texts):
        problem = id_text_problem(text)
        if problem:
            raise InputDataError(f"{where.at(label)} (column {col!r}): {role} id {problem}")


def _parse_values(col: pd.Series, where: _Where, name: str) -> np.ndarray:
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        found = col.iloc[j]
        found = "an empty or NaN field" if pd.isna(found) else repr(found)
        raise InputDataError(
            f"{where.at(col.index[j])}: value column {name!r} holds {found}; values must be finite numbers. "
            "Fix or remove the row, or name another value column with --value-col"
        )
    return values

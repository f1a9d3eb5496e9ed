"""Exception types of edlae-dask.

Every error says what was found, what is required and how to fix it. All derive
from :class:`EdlaeError`, itself a :class:`ValueError`, so callers that only
care about "bad input" can catch one type.
"""

from __future__ import annotations

import errno
import io
import os
import re
import traceback
from collections.abc import Iterator, Sequence
from typing import NamedTuple


class EdlaeError(ValueError):
    """Base class of every error raised on purpose by edlae-dask."""


class InputDataError(EdlaeError):
    """Raw interaction data that cannot be ingested (malformed rows, NaN, empty, ...)."""


class ParameterError(EdlaeError):
    """A model, job or cluster parameter outside its allowed range."""


class StoreFormatError(EdlaeError):
    """A store that is missing, incomplete, not ours, or of another format version."""


class OutputExistsError(EdlaeError):
    """An output path already holds something and ``overwrite`` was not given."""


class ModelFitError(EdlaeError):
    """Training failed for a reason in the data (e.g. P is not positive definite)."""


class MemoryBudgetError(EdlaeError):
    """The problem will not fit in the memory the cluster has."""


def worker_died(exc: BaseException, during: str, *, memory_fix: str = "lower --block-size, or add memory",
                note: str = "") -> ModelFitError | None:
    """The error to raise when ``exc`` is Dask's ``KilledWorker`` (a task's worker died repeatedly); else None.

    One message for every job: what was running, the two causes seen in practice (memory,
    a BLAS crash) with their fixes (``memory_fix``: the job's own way to need less
    memory), then the job's ``note``.
    """
    try:
        from distributed import KilledWorker
    except ImportError:  # no distributed scheduler, no dying workers
        return None
    if not isinstance(exc, KilledWorker):
        return None
    task = exc.args[0] if exc.args else "a task"
    return ModelFitError(
        f"a Dask worker died repeatedly while {during} ({task}): most often it ran out of memory (see the worker "
        f"logs; {memory_fix}), or its BLAS crashed (OpenBLAS's SkylakeX float64 kernels have segfaulted in large "
        "Cholesky calls: start the workers with OPENBLAS_CORETYPE=Haswell)" + (f". {note}" if note else "")
    )


class StoreIntegrityError(StoreFormatError):
    """A store that was damaged after it was written: a chunk missing, truncated, swapped or altered.

    Raised by the readers when what they read does not match the checksum written with
    it (:mod:`edlae_dask.io.integrity`); the message names the store, the array and the
    shard or block.
    """


class StorageError(EdlaeError):
    """A file system or object store refused a read or a write: full, read-only, no permission, missing, wrong kind."""


# --------------------------------------------------------------------------- OS errors, worded once

#: The problem and the fix for each common OSError, by errno. ``{path}`` is the path ("a file" when unknown),
#: ``{another}`` "another --out" (the option that chose the path) or "another location", ``{for_option}``
#: " for --out" or nothing.
_OS_ERRORS = {
    errno.ENOSPC: ("no space left on device writing {path}", "free space on that disk or choose {another}"),
    errno.EDQUOT: ("disk quota exceeded writing {path}", "free space within the quota or choose {another}"),
    errno.EACCES: ("permission denied on {path}", "give this user access to it or choose {another}"),
    errno.EPERM: ("operation not permitted on {path}", "give this user access to it or choose {another}"),
    errno.EROFS: ("{path} is on a read-only file system", "choose {another} on a writable disk"),
    errno.EISDIR: ("{path} is a directory where a file is expected", "give a file path{for_option}"),
    errno.ENOTDIR: ("{path} is, or lies under, a file where a directory is expected", "choose {another}"),
    errno.ENOENT: ("{path} does not exist", "check the path{for_option}"),
    errno.EEXIST: ("{path} already exists", "remove it yourself or choose {another}"),
    errno.ENAMETOOLONG: ("the path {path} is too long", "choose a shorter path{for_option}"),
    errno.EMFILE: ("too many open files (at {path})", "raise the limit (ulimit -n) or use fewer workers"),
    errno.ENFILE: ("too many open files (at {path})", "raise the limit (ulimit -n) or use fewer workers"),
    errno.EIO: ("input/output error on {path}", "the disk or network file system failed: check it and rerun"),
}
#: numpy's ``tofile`` reports a short write (most often a full disk) without an errno.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def os_error(exc: OSError, doing: str = "", *, path=None, option: str | None = None) -> StorageError:
    """The one-line error for an ``OSError``: the problem, its path and the fix.

    The one place that words OS errors: the CLI sends every ``OSError`` here (through
    :func:`as_user_error`), whether our code raised it, or zarr, fsspec or a Dask task
    whose error was re-raised on the client.

    Parameters
    ----------
    exc : OSError
        The error; its ``filename``, where set, is the path.
    doing : str
        What was being done (``"reading the job spec"``), added to the problem.
    path : str or os.PathLike, optional
        The path where ``exc`` names none (an error re-raised from a Dask task often has lost it).
    option : str, optional
        The option that chose the path (``"--out"``), named in the fix.

    Returns
    -------
    StorageError
        To raise ``from exc``.
    """
    path = exc.filename if exc.filename is not None else path
    path = os.fsdecode(path) if path is not None else None
    code = exc.errno
    if code is None and _SHORT_WRITE.search(str(exc)):
        code = errno.ENOSPC
    if code == errno.EEXIST and path and os.path.isfile(path):
        code = errno.ENOTDIR  # makedirs met a file where it needs a directory
    where = f" while {doing}" if doing else ""
    if code not in _OS_ERRORS:
        reason = exc.strerror or str(exc) or type(exc).__name__
        return StorageError(_one_line(f"{reason}" + (f" on {path}" if path else "") + where))
    problem, fix = _OS_ERRORS[code]
    folder = os.path.dirname(path or "") or "."
    if (code in (errno.EACCES, errno.EPERM) and path and "://" not in path and not os.path.lexists(path)
            and os.access(folder, os.X_OK)):  # (in a folder we cannot search, lexists cannot tell)
        # creating it failed: the folder it goes in is the one to open up
        problem = "permission denied creating {path}"
        fix = "give this user write access to {folder} or choose {another}"
    fix = fix.format(another=f"another {option}" if option else "another location",
                     for_option=f" for {option}" if option else "", folder=folder)
    if code == errno.ENOENT and path and not os.path.isabs(path) and "://" not in path:
        fix += f" (relative paths start at {os.getcwd()})"
    return StorageError(_one_line(f"{problem.format(path=path or 'a file')}{where}: {fix}"))


# --------------------------------------------------------------------------- any exception, as a user sees it


class PathOption(NamedTuple):
    """A path a command was given: its option (``--out``; an argument's name), the value, and whether it is written."""

    option: str
    value: str
    output: bool


#: Errnos of failed writes: where the path is unknown, they name the command's outputs.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def as_user_error(exc: BaseException, paths: Sequence[PathOption] = ()) -> EdlaeError | None:
    """The one-line error a user should see for ``exc``; ``None`` for an internal error (a bug: report it).

    The CLI's one error handler calls this for whatever a command raised:

    - an :class:`EdlaeError` is itself;
    - an ``OSError`` (also as the cause or context of another exception: zarr and fsspec wrap them) goes
      through :func:`os_error`, its path taken from the error, else from the traceback's locals (the file
      being written), else from ``paths`` (the command's outputs, for a failed write re-raised from a Dask
      worker, whose frames carry no locals);
    - an error decoding a chunk (zarr, numcodecs: a truncated or corrupt chunk) is a
      :class:`StoreFormatError` naming the array and the store to re-create;
    - Dask's ``KilledWorker`` and ``MemoryError`` say what ran out and how to need less.

    Parameters
    ----------
    exc : BaseException
        What the command raised.
    paths : sequence of PathOption
        The paths the command was given, to name the option that chose a failing path.
    """
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, EdlaeError):
            return e
        if isinstance(e, OSError):
            return _storage_error(e, paths)
    for e in chain:
        if _decoding(e):
            return _corrupt_chunk(e, paths)
    died = worker_died(exc, "running this command")
    if died is not None:
        return died
    if any(isinstance(e, MemoryError) for e in chain):
        return MemoryBudgetError("this process ran out of memory: lower --block-size (or --workers, --user-batch), "
                                 "or run where there is more memory")
    return None


def internal_error_line(exc: BaseException) -> str:
    """The one line for an error that is not the user's: its type and message, and what to do."""
    text = _one_line(exc) or "(no message)"
    text = text if len(text) <= 300 else text[:299] + "…"
    return f"internal error: {type(exc).__name__}: {text}; rerun with --debug and report it"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its causes and contexts, outermost first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _storage_error(exc: OSError, paths: Sequence[PathOption]) -> StorageError:
    path = exc.filename if exc.filename is not None else _path_in_traceback(exc)
    if path is not None:
        option = _option_of(os.fsdecode(path), paths)
        return os_error(exc, path=path, option=option.option if option else None)
    write = exc.errno in _WRITE_ERRNOS or (exc.errno is None and _SHORT_WRITE.search(str(exc)))
    candidates = [p for p in paths if p.output] if write else []
    if len(candidates) == 1:  # the one place this command writes
        return os_error(exc, path=candidates[0].value, option=candidates[0].option)
    return os_error(exc, option=" or ".join(p.option for p in candidates) or None)


def _option_of(path: str, paths: Sequence[PathOption]) -> PathOption | None:
    """The option whose path holds ``path`` (the deepest, where several do)."""
    holding = [p for p in paths if _within(path, p.value)]
    return max(holding, key=lambda p: len(p.value), default=None)


def _normal(path: str) -> str:
    path = os.fsdecode(path)
    path = path[len("file://"):] if path.startswith("file://") else path
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


def _within(path: str, root: str) -> bool:
    """``path`` is ``root``, under it, or under one of its temporary siblings (``.{name}.tmp-…``, ``.ingest-…``)."""
    path, root = _normal(path), _normal(root)
    parent, name = root.rsplit("/", 1) if "/" in root else ("", root)
    return path == root or path.startswith(root + "/") or path.startswith(f"{parent}/.{name}.")


#: Local variables that name a path in the frames of a failed read or write (zarr's store methods take ``path``).
_PATH_NAMES = ("path", "filename", "file", "fn", "f", "fh", "url", "target", "dest", "dst", "src", "tmp", "final")


def _path_in_traceback(exc: BaseException, *, zarr_only: bool = False) -> str | None:
    """The path that the innermost frame of ``exc``'s traceback was working on, where its locals show one.

    An OS error from a write often carries no file name (``write()`` on an open file, zarr's
    store), but the frame that wrote holds the file or its path. Frames re-raised from a Dask
    worker carry no locals: then there is none.
    """
    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        try:
            found = dict(frame.f_locals)
        except Exception:  # a frame's locals are a best effort
            continue
        for name, value in sorted(found.items(), key=lambda kv: kv[0] not in _PATH_NAMES):
            path = _path_of(name, value, zarr_only)
            if path:
                return path
    return None


def _path_of(name: str, value, zarr_only: bool) -> str | None:
    if type(value).__module__.split(".")[0] == "zarr" and hasattr(value, "store_path"):
        where = str(value.store_path)
        return where[len("file://"):] if where.startswith("file://") else where
    if zarr_only:
        return None
    if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
        return value.name
    if isinstance(value, os.PathLike):
        return os.fsdecode(value)
    if name in _PATH_NAMES and isinstance(value, str) and ("/" in value or os.sep in value):
        return value
    return None


def _decoding(exc: BaseException) -> bool:
    """``exc`` was raised while zarr or numcodecs decoded a chunk (a truncated or corrupt chunk, bad checksum)."""
    if isinstance(exc, (OSError, MemoryError)):
        return False
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        module = str(frame.f_globals.get("__name__", "")).split(".")[0]
        in_codecs = module in ("zarr", "numcodecs") or re.search(r"(^|[/\\])(zarr|numcodecs)[/\\]",
                                                                 frame.f_code.co_filename)
        if in_codecs and ("decode" in frame.f_code.co_name or "decompress" in frame.f_code.co_name):
            return True
    return False


def _corrupt_chunk(exc: BaseException, paths: Sequence[PathOption]) -> StoreFormatError:
    array = _path_in_traceback(exc, zarr_only=True)
    option = _option_of(array, paths) if array else None
    reason = f"({type(exc).__name__}: {_one_line(exc)})"
    if option is not None:
        what = f"{array} cannot be decoded {reason}: a chunk of {option.option} {option.value} is truncated or corrupt"
        fix = "re-create that store (rerun the command that wrote it)"
    elif array:
        what, fix = f"{array} cannot be decoded {reason}: a chunk is truncated or corrupt", "re-create that store"
    else:
        read = [f"{p.option} {p.value}" for p in paths if not p.output] or ["a store"]
        what = f"a chunk of {' or '.join(read)} cannot be decoded {reason}: it is truncated or corrupt"
        fix = "re-create that store (rerun the command that wrote it)"
    return StoreFormatError(f"{what}; {fix}")


def _one_line(text: str) -> str:
    """``text`` on one line: line breaks (a YAML error's context, a wrapped message) become spaces."""
    return " ".join(str(text).split())

"""Exception types of edlae-dask.

Every error says what was found, what is required and how to fix it. All derive
from :class:`EdlaeError`, itself a :class:`ValueError`, so callers that only
care about "bad input" can catch one type.
"""

from __future__ import annotations


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

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

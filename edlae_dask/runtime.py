"""Where and how a training run computes: the context every stage gets, and what a path returns.

:func:`edlae_dask.pipeline.train` makes one :class:`StageContext` per run and passes
it to the path it chose (:mod:`edlae_dask.dense.pipeline` or
:mod:`edlae_dask.scalable.pipeline`), which returns a :class:`PathResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dask.array as da
import numpy as np

from edlae_dask.linalg.graph import compute, persist, task


@dataclass
class StageContext:
    """What the stages of one training run share.

    Attributes
    ----------
    client : distributed.Client or None
        Where the graphs run; ``None``: Dask's threaded scheduler in this process.
    stages : StageLog
        Times and peak memory of each stage (:mod:`edlae_dask.diagnostics`).
    progress : bool
        Progress bars for the distributed stages.
    n_workers : int
        Workers of the cluster (1 without a client).
    block_size : int
        Side of the dense path's square blocks.
    checkpoint_dir : str, os.PathLike or None
        Dense path: where the Gram and the inverse are checkpointed.
    storage_options : dict or None
        fsspec options of stores given as URLs.
    """

    client: object
    stages: object
    progress: bool = False
    n_workers: int = 1
    block_size: int = 2048
    checkpoint_dir: object = None
    storage_options: dict | None = None

    def persist(self, x, *, progress: bool | None = None):
        """Persist ``x`` (a collection or a list of them) where the run computes, and wait for it."""
        return persist(x, self.client, progress=self.progress if progress is None else progress)

    def share(self, stage: str, x):
        """``x`` (an array every task of a stage reads) as one key the tasks name: sent once, not in each task.

        On a cluster it is scattered (data sent directly, not inside a graph); in-process it
        is a persisted delayed value.
        """
        if self.client is not None:
            return self.client.scatter(x, hash=False)
        return self.persist(task(stage, np.asarray, x), progress=False)

    def compute(self, x):
        """Compute ``x`` where the run computes and return the result."""
        return compute(x, self.client)


@dataclass
class PathResult:
    """What a training path returns: the factors (persisted dask arrays of shape (n, k)) and eigen data."""

    U: da.Array
    V: da.Array
    eig: object  # edlae_dask.linalg.EighResult
    info: dict = field(default_factory=dict)

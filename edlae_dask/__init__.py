"""edlae-dask: the low-rank EDLAE recommender (Steck & Garcia Garcia 2021) on Dask.

Python entry points::

    from edlae_dask import EDLAE, ingest, open_factors, open_interactions
    ingest("ratings.csv", "interactions.zarr", min_value=3.5)
    model = EDLAE(k=200, lam=50.0, p=0.33).fit("interactions.zarr", out="factors")
    f = open_factors("factors")        # f.U, f.V (dask), f.item_ids, f.meta
"""

import importlib

from edlae_dask._version import __version__

# Public names, imported on first use so `import edlae_dask` (and the CLI) stay light.
_LAZY = {
    "EDLAE": "edlae_dask.model",
    "TrainParams": "edlae_dask.config",
    "train": "edlae_dask.pipeline",
    "EdlaeError": "edlae_dask.errors",
    "Factors": "edlae_dask.io.factors",
    "open_factors": "edlae_dask.io.factors",
    "InteractionStore": "edlae_dask.io.interactions",
    "open_interactions": "edlae_dask.io.interactions",
    "write_interactions": "edlae_dask.io.interactions",
    "IngestReport": "edlae_dask.ingestion",
    "ingest": "edlae_dask.ingestion",
    "ScoreReport": "edlae_dask.scoring",
    "score": "edlae_dask.scoring",
    "Recommendations": "edlae_dask.io.recommendations",
    "open_recommendations": "edlae_dask.io.recommendations",
    "evaluate": "edlae_dask.evaluation",
    "Evaluator": "edlae_dask.evaluation",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edlae_dask' has no attribute {name!r}")

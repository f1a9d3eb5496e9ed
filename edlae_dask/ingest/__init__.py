"""Ingest raw interaction files (CSV, Parquet, MovieLens, Netflix, MSD) into an interaction store.

Example
-------
>>> from edlae_dask.ingest import ingest
>>> report = ingest("ratings.csv", "interactions.zarr", min_value=3.5)  # doctest: +SKIP
>>> print(report.summary())  # doctest: +SKIP
"""

from edlae_dask.ingest.pipeline import IngestReport, ingest
from edlae_dask.ingest.readers import FORMATS

__all__ = ["FORMATS", "IngestReport", "ingest"]

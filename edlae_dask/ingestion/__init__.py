"""Ingest raw interaction files (CSV, Parquet, MovieLens, Netflix, MSD) into an interaction store.

Example
-------
>>> from edlae_dask.ingestion import ingest
>>> report = ingest("ratings.csv", "interactions.zarr", min_value=3.5)  # doctest: +SKIP
>>> print(report.summary())  # doctest: +SKIP
"""

from edlae_dask.ingestion.pipeline import IngestReport, ingest
from edlae_dask.ingestion.readers import FORMATS

__all__ = ["FORMATS", "IngestReport", "ingest"]

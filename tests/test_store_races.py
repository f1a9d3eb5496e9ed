"""Stores on object storage written by several runs at once, or pruned under a run that still writes.

Object storage has no rename and no lock, so these stores publish by switching a
pointer object. The races are played deterministically: the second writer runs
inside the first one's shard iterator, or one run is left half done while
another publishes. S3 is moto's server on loopback (the fixtures of
test_remote_stores); memory:// stands in for object storage where only the
logic is at stake (it lists modification times like S3 does).
"""

import time

import fsspec
import numpy as np
import pytest

from edlae_dask.errors import StoreFormatError
from edlae_dask.io import _fs
from edlae_dask.io._fs import location
from edlae_dask.io.interactions import open_interactions, write_interactions, write_interactions_from_shards
from edlae_dask.io.recommendations import open_recommendations
from edlae_dask.scoring import score

from conftest import publish_factors, random_interactions, recommendations


def memory_url(request, name):
    """A memory:// prefix of this test's own (memory:// is one store per process)."""
    return f"memory://{request.node.name}/{name}"


def names_under(where):
    return set(location(where).children())


# --------------------------------------------------------------------------- interaction stores


def test_two_ingests_at_once_on_s3_publish_one_whole_store_and_a_reader_meanwhile_sees_the_previous_one(
        s3, url, tmp_path):
    X0, XA, XB = (random_interactions(20, 8, 0.3, seed=s) for s in (10, 11, 12))
    where = f"{url}/x.zarr"
    write_interactions(where, X0, shard_size=10, storage_options=s3)
    seen = {}

    def shards_of_A():
        yield XA[:10]
        seen["during A"] = open_interactions(where, storage_options=s3).to_scipy()
        # a second ingest runs from start to end while A is half written
        write_interactions(where, XB, shard_size=10, overwrite=True, storage_options=s3)
        seen["after B"] = open_interactions(where, storage_options=s3).to_scipy()
        yield XA[10:]

    write_interactions_from_shards(where, shards_of_A(), n_items=8, user_ids=np.arange(20), item_ids=np.arange(8),
                                   shard_size=10, overwrite=True, storage_options=s3)
    assert (seen["during A"] != X0).nnz == 0
    assert (seen["after B"] != XB).nnz == 0
    published = open_interactions(where, storage_options=s3)
    assert (published.to_scipy() != XA).nnz == 0  # A's rows only: none of B's
    # and A's attributes: the fingerprint of A's matrix, as a store written on its own has it
    assert published.fingerprint == write_interactions(tmp_path / "a.zarr", XA, shard_size=10).fingerprint


def test_an_interaction_store_written_in_place_by_an_older_edlae_dask_is_read_and_replaced_by_the_next_ingest(
        request, tmp_path):
    X, X2 = random_interactions(12, 5, 0.4, seed=1), random_interactions(12, 5, 0.4, seed=2)
    # that layout is the local one, at the URL itself
    write_interactions(tmp_path / "x.zarr", X, shard_size=5)
    root = memory_url(request, "x.zarr")
    fsspec.filesystem("memory").put(str(tmp_path / "x.zarr"), root.replace("memory://", "/"), recursive=True)
    assert (open_interactions(root).to_scipy() != X).nnz == 0
    write_interactions(root, X2, shard_size=5, overwrite=True)
    assert names_under(root) == {"CURRENT", "attempts"}
    assert (open_interactions(root).to_scipy() != X2).nnz == 0


def test_ingest_attempts_are_pruned_once_idle_for_the_grace_period_keeping_the_one_replaced(request, monkeypatch):
    import zarr

    X = random_interactions(10, 4, 0.5, seed=3)
    root = memory_url(request, "x.zarr")
    first = write_interactions(root, X, shard_size=5)
    # an attempt of an ingest that died (or is still running: nothing tells them apart but time)
    dead = "20260101T000000000000Z-0000dead"
    zarr.open_group(f"{root}/attempts/{dead}", mode="w", zarr_format=3).attrs["format"] = "edlae-dask/interactions"
    second = write_interactions(root, X, shard_size=5, overwrite=True)
    assert dead in names_under(f"{root}/attempts")  # written to just now: left alone
    monkeypatch.setattr(_fs, "PRUNE_GRACE_S", 0.0)
    third = write_interactions(root, X, shard_size=5, overwrite=True)
    # kept: the new one and the one it replaced (a reader may have opened that just before the switch)
    assert names_under(f"{root}/attempts") == {location(s.data_path).name for s in (second, third)}
    assert location(first.data_path).name not in names_under(f"{root}/attempts")


def test_the_time_of_the_last_write_under_a_url_comes_from_the_listing(s3, url):
    before = time.time()
    location(f"{url}/a/b", s3).write_bytes(b"x")
    written = location(f"{url}/a", s3).last_modified()
    # S3 keeps whole seconds
    assert written is not None and before - 2 <= written <= time.time() + 2
    assert location(f"{url}/nothing", s3).last_modified() is None


# --------------------------------------------------------------------------- recommendations


def scoring_inputs(where, options, *, seed):
    """An interaction store of 40 users in 2 shards and a factor version of 10 items, under ``where``."""
    X = random_interactions(40, 10, 0.3, seed=seed)
    write_interactions(f"{where}/x.zarr", X, shard_size=20, storage_options=options)
    publish_factors(f"{where}/f", np.random.default_rng(seed).standard_normal((10, 3)), options)
    return f"{where}/f", f"{where}/x.zarr", f"{where}/r"


def test_a_marker_whose_rows_are_gone_does_not_count_and_the_rerun_scores_its_shard_again(s3, url):
    import s3fs

    args = scoring_inputs(url, s3, seed=2)
    score(*args, top_n=3, storage_options=s3)
    before = recommendations(args[2], s3)
    version = open_recommendations(args[2], storage_options=s3).version
    # what a publish that pruned this version while its run still wrote leaves: markers without their rows
    s3fs.S3FileSystem(**s3).rm(f"{args[2]}/versions/{version}/runs".replace("s3://", ""), recursive=True)
    with pytest.raises(StoreFormatError, match="run the same `edlae-dask score` again"):
        open_recommendations(args[2], storage_options=s3)
    again = score(*args, top_n=3, storage_options=s3)
    assert again.n_shards_scored == 2
    for got, ref in zip(recommendations(args[2], s3), before):
        np.testing.assert_array_equal(got, ref)


def test_a_publish_leaves_alone_an_older_version_that_another_run_is_still_writing(request):
    args = scoring_inputs(memory_url(request, "in"), None, seed=4)
    slow = score(*args, top_n=3, shards=[0])  # a run for other inputs, half way through
    assert not slow.published
    fast = score(*args, top_n=4)
    assert fast.published
    top4 = recommendations(args[2])
    rest = score(*args, top_n=3)  # the slow run goes on: its shard 0 is still there
    assert rest.published and (rest.n_shards_scored, rest.n_shards_skipped) == (1, 1)
    ids, items, scores = recommendations(args[2])
    np.testing.assert_array_equal(ids, top4[0])
    np.testing.assert_array_equal(items, top4[1][:, :3])  # the top 3 are the first 3 of the top 4
    np.testing.assert_array_equal(scores, top4[2][:, :3])


def test_a_version_nothing_wrote_to_for_the_grace_period_is_pruned_by_the_next_publish(request, monkeypatch):
    args = scoring_inputs(memory_url(request, "in"), None, seed=5)
    score(*args, top_n=3, shards=[0])  # a run for other inputs that died half way
    abandoned = names_under(f"{args[2]}/versions")
    monkeypatch.setattr(_fs, "PRUNE_GRACE_S", 0.0)
    score(*args, top_n=4)
    published = open_recommendations(args[2]).version
    assert names_under(f"{args[2]}/versions") == {published} and published not in abandoned

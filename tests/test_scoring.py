"""Batch scoring into a recommendations store, against a dense numpy oracle.

The oracle (beside the tests): scores = X·U·Vᵀ in float64, the user's items set to
-inf, items ranked by (score desc, item index asc), the first N kept.
"""

import logging
import os

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from click.testing import CliRunner

import edlae_dask
from edlae_dask.cli import cli
from edlae_dask.errors import InputDataError, OutputExistsError, ParameterError, StoreFormatError
from edlae_dask.io.factors import FactorWriter, open_factors
from edlae_dask.io.interactions import write_interactions
from edlae_dask.io.recommendations import open_recommendations
from edlae_dask.scoring import score, top_n_scores

from conftest import random_interactions

N_USERS, N_ITEMS, K, SHARD = 47, 53, 4, 10  # shards of 10, 10, 10, 10, 7 users


def dense_top_n(X, U, V, N, *, exclude_seen=True):
    """(items, scores) of shape (users, N): argsort of the dense score matrix, ties by lower index."""
    S = np.asarray(X.toarray(), dtype=np.float64) @ np.asarray(U, np.float64) @ np.asarray(V, np.float64).T
    if exclude_seen:
        S[X.toarray() != 0] = -np.inf
    order = np.array([np.lexsort((np.arange(S.shape[1]), -row))[:N] for row in S])
    return order, np.take_along_axis(S, order, axis=1)


def publish_factors(path, U, V, *, item_ids=None, overwrite=False, fingerprint="fp"):
    with FactorWriter(path, overwrite=overwrite) as w:
        w.write_array("U", da.from_array(U, chunks=(20, U.shape[1])))  # row chunks that do not divide n
        w.write_array("V", da.from_array(V, chunks=(20, V.shape[1])))
        w.write_array("item_ids", np.arange(U.shape[0]) if item_ids is None else np.asarray(item_ids))
        w.write_array("eigenvalues", np.linspace(2, 1, U.shape[1]))
        return w.commit({"k": U.shape[1], "dtype": str(U.dtype), "interactions_fingerprint": fingerprint})


@pytest.fixture
def problem(tmp_path):
    """An interaction store with ragged shards and a float64 factor store over the same items."""
    rng = np.random.default_rng(0)
    X = random_interactions(N_USERS, N_ITEMS, 0.15, seed=3)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=SHARD)
    U, V = rng.standard_normal((N_ITEMS, K)), rng.standard_normal((N_ITEMS, K))
    publish_factors(tmp_path / "factors", U, V, fingerprint=store.fingerprint)
    return dict(X=X, U=U, V=V, store=tmp_path / "x.zarr", factors=tmp_path / "factors", out=tmp_path / "recs")


def assert_matches_oracle(out, X, U, V, N):
    rec = open_recommendations(out)
    items, scores = rec.items.compute(), rec.scores.compute()
    want_items, want_scores = dense_top_n(X, U, V, N)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_allclose(scores, want_scores.astype(np.float32), rtol=1e-5, atol=1e-5)
    return rec


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize("item_block, user_batch", [(7, 3), (11, 4), (52, 6), (None, None)])
def test_top_n_equals_dense_oracle_for_blocks_that_do_not_divide(problem, item_block, user_batch):
    p = problem
    report = score(p["factors"], p["store"], p["out"], top_n=9, item_block=item_block, user_batch=user_batch)
    assert report.published and report.n_users_scored == N_USERS
    assert_matches_oracle(p["out"], p["X"], p["U"], p["V"], 9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_kernel_equals_dense_oracle_over_many_blocks(dtype):
    rng = np.random.default_rng(7)
    X = random_interactions(300, 2000, 0.02, seed=8)
    U, V = (rng.standard_normal((2000, 8)).astype(dtype) for _ in range(2))
    items, scores = top_n_scores(X, U, V, 20, item_block=301, user_batch=64)  # 7 item blocks, 5 user batches
    want_items, want_scores = dense_top_n(X, U, V, 20)
    # float32 products may swap near-equal neighbours; every set and score must agree
    assert (np.sort(items, axis=1) == np.sort(want_items, axis=1)).all()
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
    if dtype == np.float64:
        np.testing.assert_array_equal(items, want_items)


def test_ties_are_broken_by_the_lower_item_index():
    rng = np.random.default_rng(1)
    U, V = rng.integers(-1, 2, (60, 2)).astype(float), rng.integers(-1, 2, (60, 2)).astype(float)  # many equal scores
    X = random_interactions(25, 60, 0.1, seed=2)
    items, scores = top_n_scores(X, U, V, 17, item_block=7, user_batch=6)
    want_items, want_scores = dense_top_n(X, U, V, 17)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_array_equal(scores, want_scores.astype(np.float32))


def test_user_with_fewer_unseen_items_than_N_gets_seen_items_at_minus_inf_lowest_index_first():
    X = sp.csr_matrix(np.array([[1, 1, 0, 1, 1, 0, 1, 1], [0] * 8], dtype=np.float32))
    rng = np.random.default_rng(2)
    U, V = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    items, scores = top_n_scores(X, U, V, 5, item_block=3, user_batch=1)
    np.testing.assert_array_equal(items, dense_top_n(X, U, V, 5)[0])
    assert set(items[0, :2]) == {2, 5} and items[0, 2:].tolist() == [0, 1, 3] and np.isneginf(scores[0, 2:]).all()


def test_include_seen_ranks_every_item(problem):
    p = problem
    score(p["factors"], p["store"], p["out"], top_n=6, exclude_seen=False, item_block=5)
    rec = open_recommendations(p["out"])
    np.testing.assert_array_equal(rec.items.compute(), dense_top_n(p["X"], p["U"], p["V"], 6, exclude_seen=False)[0])
    assert rec.meta["exclude_seen"] is False


@pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")  # FactorWriter, '<U' item ids
def test_item_and_user_ids_are_resolvable(tmp_path):
    rng = np.random.default_rng(4)
    X = random_interactions(30, 20, 0.2, seed=5)
    item_ids = np.array([f"song-{j:03d}" for j in range(20)])
    user_ids = np.array([f"user{i}" for i in range(30)])
    write_interactions(tmp_path / "x.zarr", X, item_ids=item_ids, user_ids=user_ids, shard_size=8)
    U, V = rng.standard_normal((20, 3)), rng.standard_normal((20, 3))
    publish_factors(tmp_path / "f", U, V, item_ids=item_ids)
    score(tmp_path / "f", tmp_path / "x.zarr", tmp_path / "recs", top_n=4)
    rec = open_recommendations(tmp_path / "recs")
    assert rec.user_ids.dtype.kind == "U" and rec.user_ids.tolist() == user_ids.tolist()
    got = rec.item_ids[rec.items.compute()]
    np.testing.assert_array_equal(got, item_ids[dense_top_n(X, U, V, 4)[0]])


def test_store_layout_chunks_follow_ragged_shards(problem):
    p = problem
    score(p["factors"], p["store"], p["out"], top_n=5)
    rec = open_recommendations(p["out"])
    assert rec.shard_offsets == (0, 10, 20, 30, 40, 47)
    assert rec.items.chunks == ((10, 10, 10, 10, 7), (5,)) and rec.scores.chunks == rec.items.chunks
    assert rec.items.dtype == np.int32 and rec.scores.dtype == np.float32 and rec.user_ids.dtype == np.int64
    f = open_factors(p["factors"])
    m = rec.meta
    assert m["format"] == "edlae-dask/recommendations" and m["format_version"] == 1
    assert (m["top_n"], m["n_users"], m["n_items"]) == (5, N_USERS, N_ITEMS)
    assert (m["factor_version"] == f.version
            and m["factors_interactions_fingerprint"] == f.meta["interactions_fingerprint"])
    assert m["interactions_fingerprint"] == edlae_dask.open_interactions(p["store"]).fingerprint
    assert rec.complete and rec.done_shards == (0, 1, 2, 3, 4)
    g = zarr.open_group(str(p["out"]), mode="r")
    assert g["done/00004"].attrs["factor_version"] == f.version and g["done/00004"].attrs["rows"] == [40, 47]


def test_on_the_distributed_cluster(problem, client):
    p = problem
    report = score(p["factors"], p["store"], p["out"], top_n=8, item_block=9, user_batch=4, client=client)
    assert report.n_shards_scored == 5 and report.published
    assert_matches_oracle(p["out"], p["X"], p["U"], p["V"], 8)


# --------------------------------------------------------------------------- reruns


def test_rerun_with_the_same_factor_version_skips_complete_shards(problem, caplog):
    p = problem
    first = score(p["factors"], p["store"], p["out"], top_n=5)
    assert (first.n_shards_scored, first.n_shards_skipped) == (5, 0)
    with caplog.at_level(logging.INFO, logger="edlae_dask.scoring"):
        again = score(p["factors"], p["store"], p["out"], top_n=5)
    assert (again.n_shards_scored, again.n_shards_skipped, again.n_users_scored) == (0, 5, 0) and again.published
    assert "skipped 5 complete shards" in caplog.text
    assert_matches_oracle(p["out"], p["X"], p["U"], p["V"], 5)


def test_new_factor_version_rescores_everything_and_replaces_the_store_only_when_complete(problem):
    p = problem
    score(p["factors"], p["store"], p["out"], top_n=5)
    v1 = open_recommendations(p["out"]).factor_version
    U2, V2 = -p["U"], p["V"][::-1].copy()
    v2 = publish_factors(p["factors"], U2, V2, overwrite=True)
    partial = score(p["factors"], p["store"], p["out"], top_n=5, shards=[1, 3])
    assert not partial.published and partial.n_shards_pending == 3 and partial.path != str(p["out"])
    assert open_recommendations(p["out"]).factor_version == v1  # readers keep the complete v1 meanwhile
    rest = score(p["factors"], p["store"], p["out"], top_n=5)
    assert (rest.n_shards_scored, rest.n_shards_skipped) == (3, 2) and rest.published
    rec = assert_matches_oracle(p["out"], p["X"], U2, V2, 5)
    assert rec.factor_version == v2 != v1
    assert not [e for e in os.listdir(p["out"].parent) if e.startswith(".recs")]  # no staging or old copy left


def test_changed_interactions_are_rescored(problem, tmp_path):
    p = problem
    score(p["factors"], p["store"], p["out"], top_n=5)
    X2 = random_interactions(N_USERS, N_ITEMS, 0.15, seed=9)
    write_interactions(p["store"], X2, shard_size=SHARD, overwrite=True)
    report = score(p["factors"], p["store"], p["out"], top_n=5)
    assert (report.n_shards_scored, report.n_shards_skipped) == (5, 0)
    assert_matches_oracle(p["out"], X2, p["U"], p["V"], 5)


def test_killed_run_resumes(problem):
    p = problem
    partial = score(p["factors"], p["store"], p["out"], top_n=5, shards=[0, 2])
    assert (partial.n_shards_scored, partial.n_shards_pending, partial.published) == (2, 3, False)
    assert not p["out"].exists()  # nothing half-done at --out
    rest = score(p["factors"], p["store"], p["out"], top_n=5)
    assert (rest.n_shards_scored, rest.n_shards_skipped, rest.n_users_scored) == (3, 2, 27) and rest.published
    assert_matches_oracle(p["out"], p["X"], p["U"], p["V"], 5)


def test_incomplete_store_is_refused_unless_allowed(problem):
    p = problem
    partial = score(p["factors"], p["store"], p["out"], top_n=5, shards=[0, 2])
    with pytest.raises(StoreFormatError, match=r"incomplete recommendations store: 2 of 5 shards.*run the same"):
        open_recommendations(partial.path)
    rec = open_recommendations(partial.path, allow_incomplete=True)
    assert not rec.complete and rec.done_shards == (0, 2)
    items = rec.items.compute()
    assert (items[10:20] == -1).all() and np.isnan(rec.scores.compute()[10:20]).all()
    np.testing.assert_array_equal(items[:10], dense_top_n(p["X"], p["U"], p["V"], 5)[0][:10])


def test_a_missing_marker_is_rescored_in_place(problem):
    p = problem
    score(p["factors"], p["store"], p["out"], top_n=5)
    os.remove(p["out"] / "done" / "00003" / "zarr.json")
    with pytest.raises(StoreFormatError, match="incomplete"):
        open_recommendations(p["out"])
    report = score(p["factors"], p["store"], p["out"], top_n=5)
    assert (report.n_shards_scored, report.n_shards_skipped, report.path) == (1, 4, str(p["out"]))
    assert_matches_oracle(p["out"], p["X"], p["U"], p["V"], 5)


# --------------------------------------------------------------------------- bad input


def test_item_sets_that_disagree_are_refused(problem, tmp_path):
    p = problem
    ids = np.arange(N_ITEMS)
    ids[[4, 9]] = [1000, 1001]
    write_interactions(tmp_path / "other.zarr", p["X"], item_ids=ids, shard_size=SHARD)
    with pytest.raises(InputDataError, match="2 of the factors' items are not in the interaction store and 2 of its"):
        score(p["factors"], tmp_path / "other.zarr", p["out"], top_n=5)
    write_interactions(tmp_path / "perm.zarr", p["X"], item_ids=np.r_[1, 0, 2:N_ITEMS], shard_size=SHARD)
    with pytest.raises(InputDataError, match="same 53 items, but 2 of them at other column positions"):
        score(p["factors"], tmp_path / "perm.zarr", p["out"], top_n=5)
    assert not p["out"].exists()


@pytest.mark.parametrize("top_n", [0, -3, N_ITEMS + 1, True, 2.5])
def test_top_n_out_of_range_is_refused(problem, top_n):
    p = problem
    with pytest.raises(ParameterError, match=r"'top_n' parameter of score must be an int in \[1, 53\]"):
        score(p["factors"], p["store"], p["out"], top_n=top_n)


def test_foreign_output_path_is_refused(problem, tmp_path):
    p = problem
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for out in (tmp_path / "notes", tmp_path / "file", p["store"]):
        with pytest.raises(OutputExistsError, match="not an edlae-dask recommendations store"):
            score(p["factors"], p["store"], out, top_n=5)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine" and (tmp_path / "file").read_text() == "mine"
    edlae_dask.open_interactions(p["store"])  # untouched


def test_other_format_version_is_refused(problem):
    p = problem
    score(p["factors"], p["store"], p["out"], top_n=5)
    g = zarr.open_group(str(p["out"]), mode="r+")
    g.attrs["format_version"] = 2
    with pytest.raises(StoreFormatError, match="format_version 2.*reads and writes format_version 1"):
        open_recommendations(p["out"])
    with pytest.raises(StoreFormatError, match="format_version 2"):
        score(p["factors"], p["store"], p["out"], top_n=5)


def test_incomplete_or_foreign_factor_store_is_refused(problem, tmp_path):
    p = problem
    os.remove(p["factors"] / "LATEST")
    with pytest.raises(StoreFormatError, match="no complete factor version"):
        score(p["factors"], p["store"], p["out"], top_n=5)
    with pytest.raises(StoreFormatError, match="no factor store"):
        score(tmp_path / "nowhere", p["store"], p["out"], top_n=5)


# --------------------------------------------------------------------------- interfaces


def test_cli_scores_and_reports_errors(problem):
    p = problem
    run = CliRunner().invoke(cli, ["score", "--factors", str(p["factors"]), "--interactions", str(p["store"]),
                                   "--out", str(p["out"]), "--top-n", "5", "--cluster", "threads",
                                   "--item-block", "8"], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    assert "scored 47 of 47 users" in run.output and f"published {p['out']}" in run.output
    assert_matches_oracle(p["out"], p["X"], p["U"], p["V"], 5)
    bad = CliRunner().invoke(cli, ["score", "--factors", str(p["factors"]), "--interactions", str(p["store"]),
                                   "--out", str(p["out"]), "--top-n", "0", "--cluster", "threads"])
    assert bad.exit_code == 1 and "error: The 'top_n' parameter" in bad.output


def test_python_api_is_exported():
    from edlae_dask import io, scoring

    assert edlae_dask.score is scoring.score
    assert edlae_dask.open_recommendations is io.recommendations.open_recommendations

"""Incremental retraining: the Gram as checkpointed partial Grams of fixed shard groups, reused when unchanged."""

import logging
import shutil

import dask
import numpy as np
import pytest
import scipy.sparse as sp

from edlae_dask.config import TrainParams
from edlae_dask.dense.gram import partial_gram, shard_groups, sum_partials
from edlae_dask.dense.pipeline import GROUP_SIZE, incremental_gram
from edlae_dask.io.checkpoints import GramPartials
from edlae_dask.io.interactions import open_interactions, write_interactions
from edlae_dask.pipeline import train
from edlae_dask.runtime import StageContext

from conftest import clustered_interactions, random_interactions

SHARD = 10
PARAMS = TrainParams(k=4, lam=3.0, p=0.2, dtype="float64", block_size=16, seed=5, path="dense")


def _changed(X, users, seed=1):
    """X with one more interaction for each of ``users`` (an item they had not)."""
    X = X.tolil(copy=True)
    rng = np.random.default_rng(seed)
    for u in users:
        free = np.flatnonzero(X[u].toarray().ravel() == 0)
        X[u, rng.choice(free)] = 1.0
    return X.tocsr()


def _incremental(store, ck, dtype="float64", block=16):
    partials = GramPartials(ck, n_items=store.n_items, dtype=dtype, block_size=block)
    ctx = StageContext(client=None, stages=None, block_size=block, checkpoint_dir=ck)
    info: dict = {}
    with dask.config.set(scheduler="threads"):
        G = incremental_gram(store, partials, ctx, info, store.attrs["shard_fingerprints"])[0].compute()
    return G, info


def test_shard_groups_are_stable_under_appends():
    assert shard_groups(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert shard_groups(13, 4)[:2] == shard_groups(10, 4)[:2]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sum_of_partials_equals_the_dense_oracle(tmp_path, dtype):
    X = random_interactions(95, 37, 0.15, seed=4)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=SHARD)
    parts = [partial_gram(store, g, block_size=8, dtype=dtype) for g in shard_groups(store.n_shards, 3)]
    G = sum_partials(parts, split_every=2).compute(scheduler="threads")
    assert G.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(G, (X.T @ X).toarray().astype(dtype))


def test_a_retrain_recomputes_only_the_changed_groups_and_equals_the_oracle(tmp_path, caplog):
    X = random_interactions(200, 40, 0.1, seed=7)  # 20 shards: 5 groups of 4
    ck = tmp_path / "ck"
    first = write_interactions(tmp_path / "a.zarr", X, shard_size=SHARD)
    G, info = _incremental(first, ck)
    np.testing.assert_array_equal(G, (X.T @ X).toarray())
    assert (info["partials_reused"], info["partials_computed"]) == (0, 5)
    # users 15 (shard 1, group 0) and 125 (shard 12, group 3) change; 10 new users make shards 20 (group 5)
    X2 = sp.vstack([_changed(X, [15, 125]), random_interactions(10, 40, 0.2, seed=8)]).tocsr()
    second = write_interactions(tmp_path / "b.zarr", X2, shard_size=SHARD)
    with caplog.at_level(logging.INFO, logger="edlae_dask"):
        G2, info2 = _incremental(second, ck)
    np.testing.assert_array_equal(G2, (X2.T @ X2).toarray())  # float64, integer counts: exactly
    assert (info2["partials_reused"], info2["partials_computed"]) == (3, 3)
    assert (info2["shards_reused"], info2["shards_computed"]) == (12, 9)
    assert "gram: reused 3 of 6 shard groups' partial Grams (12 of 21 shards)" in caplog.text


def test_float32_partials_equal_the_oracle_to_rounding(tmp_path):
    X = random_interactions(120, 30, 0.2, seed=9)
    X.data[:] = np.random.default_rng(0).random(X.nnz).astype(np.float32)  # non-integer: order matters
    store = write_interactions(tmp_path / "a.zarr", X, shard_size=SHARD)
    _incremental(store, tmp_path / "ck", dtype="float32")
    G, info = _incremental(store, tmp_path / "ck", dtype="float32")
    assert info["partials_reused"] == 3
    Xd = X.astype(np.float64)
    np.testing.assert_allclose(G, (Xd.T @ Xd).toarray(), rtol=1e-5, atol=1e-5)


def test_a_damaged_partial_is_recomputed(tmp_path, caplog):
    X = random_interactions(100, 30, 0.15, seed=3)
    store = write_interactions(tmp_path / "a.zarr", X, shard_size=SHARD)
    ck = tmp_path / "ck"
    _incremental(store, ck)
    partial = sorted(ck.glob("partial-gram-*"))[0]
    chunk = sorted(p for p in (partial / "G" / "c").rglob("*") if p.is_file())[0]
    chunk.write_bytes(chunk.read_bytes()[:-3] + b"xyz")
    with caplog.at_level(logging.WARNING, logger="edlae_dask"):
        G, info = _incremental(store, ck)
    assert "is damaged" in caplog.text
    assert info["partials_computed"] == 1 and info["partials_reused"] == 2
    np.testing.assert_array_equal(G, (X.T @ X).toarray())
    assert _incremental(store, ck)[1]["partials_reused"] == 3  # rewritten whole


def test_train_on_an_appended_store_reuses_partials_and_equals_a_fresh_train(tmp_path):
    X = clustered_interactions(n_users=300, n_items=50, seed=21)
    ck = tmp_path / "ck"
    first = train(write_interactions(tmp_path / "a.zarr", X, shard_size=SHARD), params=PARAMS, checkpoint_dir=ck)
    assert first.stages["gram"]["detail"]["partials_computed"] == 30 // GROUP_SIZE + 1
    X2 = _changed(X, [5, 7])  # both in shard 0
    store2 = write_interactions(tmp_path / "b.zarr", X2, shard_size=SHARD)
    rerun = train(store2, params=PARAMS, checkpoint_dir=ck)
    detail = rerun.stages["gram"]["detail"]
    assert detail["checkpoint"] == "written" and detail["partials_reused"] == 7 and detail["partials_computed"] == 1
    assert detail["gram_base"].startswith(str(ck / "gram-"))  # G_old − G_0,old + G_0,new: 3 reads, not 7
    fresh = train(open_interactions(str(tmp_path / "b.zarr")), params=PARAMS)
    np.testing.assert_allclose(rerun.U.compute() @ rerun.V.compute().T, fresh.U.compute() @ fresh.V.compute().T,
                               rtol=1e-10, atol=1e-12)
    shutil.rmtree(ck)


def test_a_damaged_earlier_gram_is_not_started_from(tmp_path, caplog):
    X = clustered_interactions(n_users=200, n_items=40, seed=4)
    ck = tmp_path / "ck"
    train(write_interactions(tmp_path / "a.zarr", X, shard_size=SHARD), params=PARAMS, checkpoint_dir=ck)
    (gram_dir,) = [p for p in ck.iterdir() if p.name.startswith("gram-")]
    chunk = sorted(p for p in (gram_dir / "G" / "c").rglob("*") if p.is_file())[-1]
    chunk.write_bytes(chunk.read_bytes()[:-3] + b"xyz")
    X2 = _changed(X, [195])  # the last group
    store2 = write_interactions(tmp_path / "b.zarr", X2, shard_size=SHARD)
    with caplog.at_level(logging.WARNING, logger="edlae_dask"):
        rerun = train(store2, params=PARAMS, checkpoint_dir=ck)
    assert "not using it" in caplog.text
    detail = rerun.stages["gram"]["detail"]
    assert (detail["gram_base"], detail["partials_reused"], detail["partials_computed"]) == ("", 4, 1)
    fresh = train(store2, params=PARAMS)
    np.testing.assert_allclose(rerun.U.compute() @ rerun.V.compute().T, fresh.U.compute() @ fresh.V.compute().T,
                               rtol=1e-10, atol=1e-12)


def test_float32_from_an_earlier_gram_equals_a_fresh_train_on_binary_data(tmp_path):
    params = TrainParams(**{**PARAMS.__dict__, "dtype": "float32"})
    X = clustered_interactions(n_users=200, n_items=40, seed=6)
    ck = tmp_path / "ck"
    train(write_interactions(tmp_path / "a.zarr", X, shard_size=SHARD), params=params, checkpoint_dir=ck)
    X2 = sp.vstack([X, clustered_interactions(n_users=10, n_items=40, seed=7)]).tocsr()  # appended users
    store2 = write_interactions(tmp_path / "b.zarr", X2, shard_size=SHARD)
    rerun = train(store2, params=params, checkpoint_dir=ck)
    assert rerun.stages["gram"]["detail"]["gram_base"]
    fresh = train(store2, params=params)
    # integer co-occurrence counts: the Gram is exact either way, the factors equal to float32 rounding
    np.testing.assert_allclose(rerun.U.compute() @ rerun.V.compute().T, fresh.U.compute() @ fresh.V.compute().T,
                               rtol=1e-4, atol=1e-5)


def test_on_distributed_workers_a_damaged_partial_is_recomputed_and_the_earlier_gram_used(tmp_path, client,
                                                                                          caplog):
    X = clustered_interactions(n_users=200, n_items=40, seed=8)
    ck = tmp_path / "ck"
    train(write_interactions(tmp_path / "a.zarr", X, shard_size=SHARD), params=PARAMS, client=client,
          checkpoint_dir=ck)
    X2 = _changed(X, [3])  # group 0 of 5: from the earlier Gram, 1 + 1 reads < 4
    store2 = write_interactions(tmp_path / "b.zarr", X2, shard_size=SHARD)
    gone = GramPartials(ck, n_items=40, dtype="float64", block_size=16).fingerprint(
        open_interactions(str(tmp_path / "a.zarr")).attrs["shard_fingerprints"][:GROUP_SIZE])
    part = ck / f"partial-gram-{gone[:16]}"
    chunk = sorted(p for p in (part / "G" / "c").rglob("*") if p.is_file())[0]
    chunk.write_bytes(chunk.read_bytes()[:-3] + b"xyz")  # the partial the rebase subtracts
    with caplog.at_level(logging.WARNING, logger="edlae_dask"):
        rerun = train(store2, params=PARAMS, client=client, checkpoint_dir=ck)
    assert "not using it" in caplog.text
    detail = rerun.stages["gram"]["detail"]
    assert (detail["gram_base"], detail["partials_reused"], detail["partials_computed"]) == ("", 4, 1)
    again = train(write_interactions(tmp_path / "c.zarr", X, shard_size=SHARD), params=PARAMS, client=client,
                  checkpoint_dir=ck)  # back to the first store: its whole Gram is reused as it is
    assert again.stages["gram"]["detail"]["checkpoint"] == "reused"
    fresh = train(store2, params=PARAMS)
    np.testing.assert_allclose(rerun.U.compute() @ rerun.V.compute().T, fresh.U.compute() @ fresh.V.compute().T,
                               rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- pruning


def test_pruning_keeps_what_the_last_two_runs_used_and_only_checkpoints(tmp_path):
    import json as _json

    from edlae_dask.io.checkpoints import prune_checkpoints

    ck = tmp_path / "ck"
    names = {s: f"{s}-{c * 16}" for s, c in (("gram", "a"), ("inverse", "b"), ("partial-gram", "c"))}
    for name in names.values():
        (ck / name).mkdir(parents=True)
    foreign = ck / f"gram-{'d' * 16}"  # a zarr group of another format under a checkpoint's name
    foreign.mkdir()
    (foreign / "zarr.json").write_text(_json.dumps({"zarr_format": 3, "node_type": "group",
                                                     "attributes": {"format": "someone-else"}}))
    (ck / "notes.txt").write_text("mine")

    # run 1 used the Gram and the inverse: the partial nobody used goes
    assert prune_checkpoints(ck, [names["gram"], names["inverse"]], idle_s=0) == [str(ck / names["partial-gram"])]
    # run 2 used a new Gram: run 1's are kept (the last two runs)
    (ck / f"gram-{'e' * 16}").mkdir()
    assert prune_checkpoints(ck, [f"gram-{'e' * 16}"], idle_s=0) == []
    # run 3 too: now nothing of run 1's is among the last two runs'
    assert sorted(prune_checkpoints(ck, [f"gram-{'e' * 16}"], idle_s=0)) == sorted(
        str(ck / names[s]) for s in ("gram", "inverse"))
    assert foreign.exists() and (ck / "notes.txt").exists() and (ck / f"gram-{'e' * 16}").exists()
    assert len(list((ck / "runs").iterdir())) == 2  # older manifests are dropped too


def test_pruning_spares_what_was_written_within_the_grace_period(tmp_path):
    from edlae_dask.io.checkpoints import prune_checkpoints

    (tmp_path / f"inverse-{'f' * 16}").mkdir()  # another run's, just written
    assert prune_checkpoints(tmp_path, [], idle_s=3600) == []
    assert (tmp_path / f"inverse-{'f' * 16}").exists()


def test_nightly_retrains_keep_the_checkpoint_directory_bounded(tmp_path, monkeypatch):
    from edlae_dask.io import _fs

    monkeypatch.setattr(_fs, "PRUNE_GRACE_S", 0.0)  # no other run shares the directory here
    X = random_interactions(120, 30, 0.1, seed=9)
    ck = tmp_path / "ck"
    sizes = []
    for night in range(4):
        X = _changed(X, [night * 10], seed=night)  # each night one user changes: one group of 4 shards
        store = write_interactions(tmp_path / f"x{night}.zarr", X, shard_size=SHARD)
        train(store, params=PARAMS, checkpoint_dir=ck)
        sizes.append(sorted(p.name for p in ck.iterdir() if p.name != "runs"))
    # night 1 on: this run's Gram and inverse, the previous run's, and the partials of both (3 groups, 1 changed)
    assert [sum(n.startswith("gram-") for n in s) for s in sizes] == [1, 2, 2, 2]
    assert [sum(n.startswith("inverse-") for n in s) for s in sizes] == [1, 2, 2, 2]
    assert [sum(n.startswith("partial-gram-") for n in s) for s in sizes] == [3, 4, 4, 4]

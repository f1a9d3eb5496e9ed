"""Scheduled scoring: reruns do only what changed, and two runs at once leave one valid store."""

import os
import subprocess

import numpy as np
import pytest
import scipy.sparse as sp
from distributed import Client, Event

from edlae_dask.io.factors import FactorWriter
from edlae_dask.io.interactions import write_interactions
from edlae_dask.io.recommendations import open_recommendations
from edlae_dask.scoring import score

from cluster_procs import LineWatcher, dask_cluster, edlae_cmd, hold_until_set, kill_group, spawn
from conftest import random_interactions

N_USERS, N_ITEMS, SHARD, K = 120, 40, 20, 6


@pytest.fixture
def problem(tmp_path):
    X = random_interactions(N_USERS, N_ITEMS, 0.1, seed=4)
    rng = np.random.default_rng(5)
    with FactorWriter(tmp_path / "factors") as w:
        for name in ("U", "V"):
            w.write_array(name, rng.standard_normal((N_ITEMS, K)).astype(np.float32))
        w.write_array("item_ids", np.arange(N_ITEMS))
        w.write_array("eigenvalues", np.linspace(2, 1, K))
        w.write_array("ritz_residuals", np.zeros(K))
        w.commit(dict(k=K, lam=1.0, p=0.0, dtype="float32"))
    return dict(X=X, store=write_interactions(tmp_path / "x.zarr", X, shard_size=SHARD),
                factors=tmp_path / "factors", out=tmp_path / "recs", tmp=tmp_path)


def assert_same_recommendations(a, b):
    ra, rb = open_recommendations(a), open_recommendations(b)
    np.testing.assert_array_equal(ra.user_ids, rb.user_ids)
    np.testing.assert_array_equal(ra.items.compute(), rb.items.compute())
    np.testing.assert_array_equal(ra.scores.compute(), rb.scores.compute())


def test_a_rerun_with_nothing_new_scores_nothing_and_writes_nothing(problem):
    p = problem
    score(p["factors"], p["store"], p["out"], top_n=5)
    written = {f: os.stat(f).st_mtime_ns for f in p["out"].rglob("*") if f.is_file()}
    again = score(p["factors"], p["store"], p["out"], top_n=5)
    assert (again.n_shards_scored, again.n_users_scored, again.shards_scored) == (0, 0, ())
    assert again.published and again.n_shards_skipped == N_USERS // SHARD
    assert {f: os.stat(f).st_mtime_ns for f in p["out"].rglob("*") if f.is_file()} == written


def test_new_interactions_for_some_users_rescore_only_their_shards(problem):
    p = problem
    score(p["factors"], p["store"], p["out"], top_n=5)
    X2 = p["X"].tolil()
    for user in (25, 87):  # in shards 1 and 4
        X2[user, X2.rows[user][0] if X2.rows[user] else 0] = 0
        X2[user, (max(X2.rows[user], default=0) + 1) % N_ITEMS] = 1.0
    new_store = write_interactions(p["tmp"] / "x2.zarr", X2.tocsr(), shard_size=SHARD)
    report = score(p["factors"], new_store, p["out"], top_n=5)
    assert report.shards_scored == (1, 4) and report.n_shards_reused == 4 and report.published
    assert open_recommendations(p["out"]).meta["interactions_fingerprint"] == new_store.fingerprint
    score(p["factors"], new_store, p["tmp"] / "fresh", top_n=5)
    assert_same_recommendations(p["out"], p["tmp"] / "fresh")


def test_new_users_are_scored_and_the_others_kept(problem):
    p = problem
    score(p["factors"], p["store"], p["out"], top_n=5)
    more = sp.vstack([p["X"], random_interactions(7, N_ITEMS, 0.2, seed=8, all_items=False)], format="csr")
    new_store = write_interactions(p["tmp"] / "x2.zarr", more, shard_size=SHARD)
    report = score(p["factors"], new_store, p["out"], top_n=5)
    assert report.shards_scored == (6,) and report.n_shards_reused == 6
    score(p["factors"], new_store, p["tmp"] / "fresh", top_n=5)
    assert_same_recommendations(p["out"], p["tmp"] / "fresh")


@pytest.mark.cluster
def test_two_scoring_runs_started_at_once_leave_one_complete_store_equal_to_a_single_runs(problem):
    p = problem
    args = ["score", "--factors", str(p["factors"]), "--interactions", p["store"].path, "--out", str(p["out"]),
            "--top-n", "5"]
    with dask_cluster(p["tmp"], n_workers=2) as cluster, Client(cluster.address) as client:
        # both workers are kept busy until both runs are in flight: the first to take the lock cannot
        # finish before the second is waiting for it
        gate = Event("scoring-gate", client=client)
        held = [client.submit(hold_until_set, "scoring-gate", pure=False, workers=[w])
                for w in client.scheduler_info()["workers"]]
        runs = [spawn(edlae_cmd(*args, "--cluster", cluster.address), stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            logs = [LineWatcher(r.stderr) for r in runs]
            outs = [LineWatcher(r.stdout) for r in runs]
            scoring = [log.wait_for("scoring 120 users", timeout=0.1) for log in logs]
            while not any(scoring) and all(r.poll() is None for r in runs):
                scoring = [log.wait_for("scoring 120 users", timeout=0.5) for log in logs]
            first = scoring.index(True)
            second = 1 - first
            assert logs[second].wait_for("waiting for another scoring run"), logs[second].text()
            gate.set()
            client.gather(held)
            codes = [r.wait(timeout=120) for r in runs]
        finally:
            for r in runs:
                kill_group(r)
    assert codes == [0, 0], [log.text() for log in logs]
    assert "120 of 120 users" in outs[first].text() and "scored 0 of 120 users" in outs[second].text()
    score(p["factors"], p["store"], p["tmp"] / "single", top_n=5)
    assert_same_recommendations(p["out"], p["tmp"] / "single")
    assert not [e for e in os.listdir(p["tmp"]) if e.startswith(".recs")]  # no staging store or lock file left

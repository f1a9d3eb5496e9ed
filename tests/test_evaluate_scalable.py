"""Tuning the scalable path (edlae_dask.evaluation.scalable) and the popularity row of every report.

Oracles: the dense evaluation (the scalable path at K = n − 1 is dense Algorithm 1), a direct
run at each K (for the shared neighbour lists), and a plain numpy ranking by popularity.
"""

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from dask.callbacks import Callback

from edlae_dask.cli import cli
from edlae_dask.evaluation import Evaluator
from edlae_dask.evaluation.popularity import popularity_ranking, training_popularity
from edlae_dask.evaluation.scalable import evaluate_scalable
from edlae_dask.io.interactions import write_interactions

from conftest import clustered_interactions

LAMS, PS, KS = (2.0, 60.0), (0.0, 0.4), (2, 4)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    X = clustered_interactions(n_users=400, n_items=80, n_clusters=4, p_in=0.25, p_out=0.02, seed=5)
    store = write_interactions(tmp_path_factory.mktemp("evs") / "x.zarr", X, shard_size=90)  # 5 shards, ragged
    return store, X


@pytest.fixture(scope="module")
def dense(problem):
    with Evaluator(problem[0], n_valid=60, n_test=60, seed=3, dtype="float64", block_size=32) as ev:
        return ev.run(models="edlae", ks=KS, lams=LAMS, ps=PS, n_power_iter=8), ev.split_


def _points(report):
    return {(g.model, g.k, g.lam, g.p, g.extra.get("neighbors")): g for g in report.grid}


def test_scalable_evaluation_at_K_n_minus_1_chooses_and_scores_what_the_dense_evaluation_does(problem, dense):
    report, split = dense
    sc = evaluate_scalable(problem[0], split=split, ks=KS, lams=LAMS, ps=PS, neighbors=[10**6], dtype="float64",
                           n_power_iter=8)
    n = split.items.size
    assert sc.settings["neighbors"] == [n - 1]  # capped: every other item
    assert len(sc.grid) == len(report.grid) == len(LAMS) * len(PS) * len(KS)
    for g in report.grid:
        s = _points(sc)[(g.model, g.k, g.lam, g.p, n - 1)]
        for m in g.valid:
            assert s.valid[m].mean == pytest.approx(g.valid[m].mean, abs=1e-9)
            assert s.test[m].mean == pytest.approx(g.test[m].mean, abs=1e-9)
    chosen = {(r.model, r.k): (r.lam, r.p, r.test["ndcg@100"].mean) for r in report.rows}
    assert chosen.keys() == {("popularity", None), ("edlae", 2), ("edlae", 4)}
    for r in sc.rows:
        lam, p, ndcg = chosen[(r.model, r.k)]
        assert (r.lam, r.p) == (lam, p) and r.test["ndcg@100"].mean == pytest.approx(ndcg, abs=1e-9)


class _Executed(Callback):
    """Counts the tasks dask's local scheduler runs, by key prefix."""

    def __init__(self):
        super().__init__()
        self.keys = []

    def _posttask(self, key, result, dsk, state, worker_id):
        self.keys.append(key[0] if isinstance(key, tuple) else key)

    def count(self, prefix):
        return sum(str(k).startswith(prefix) for k in self.keys)


def test_K_is_a_grid_axis_and_the_shards_and_neighbour_lists_are_computed_once(problem, dense):
    from edlae_dask.planning import neighbor_task_entries
    from edlae_dask.scalable.neighbors import balanced_item_blocks

    store, X = problem
    split = dense[1]
    with _Executed() as ran:
        rep = evaluate_scalable(store, split=split, ks=[3], lams=LAMS, ps=[0.3], neighbors=[16, 4, 8],
                                dtype="float64", n_power_iter=6)
    assert rep.settings["neighbors"] == [4, 8, 16]
    assert sorted((g.extra["neighbors"], g.lam) for g in rep.grid) == sorted(
        (K, lam) for K in (4, 8, 16) for lam in LAMS)
    assert rep.settings["stage_runs"] == {"load": 1, "neighbors": 1, "teacher": 6, "eigensolve": 6}
    # observed, not declared: each shard holding training users is read once, and the Gram rows of every
    # neighbour block are formed once (one piece per (block, shard)), for 3 K × 2 λ points
    offsets = np.asarray(store.shard_offsets)
    shards = sum(bool(np.any((split.train_users >= a) & (split.train_users < b)))
                 for a, b in zip(offsets[:-1], offsets[1:]))
    Xtr = X[split.train_users][:, split.items].tocsr()
    per_user = np.diff(Xtr.indptr)
    bound = np.array([per_user[Xtr[:, j].indices].sum() for j in range(Xtr.shape[1])])
    n_blocks = len(balanced_item_blocks(bound, neighbor_task_entries(Xtr.nnz, 1), max_items=8192))
    assert ran.count("edlae-load-shard-t-") == shards
    assert ran.count("edlae-load-shard-") == 2 * shards  # the shards and their transposes
    assert ran.count("edlae-neighbors-gram-part-") == shards * n_blocks
    # the shared lists' prefixes give what a run at that K alone gives
    alone = evaluate_scalable(store, split=split, ks=[3], lams=LAMS, ps=[0.3], neighbors=[4], dtype="float64",
                              n_power_iter=6)
    for g in alone.grid:
        s = _points(rep)[("edlae", 3, g.lam, g.p, 4)]
        assert s.valid["ndcg@100"].mean == pytest.approx(g.valid["ndcg@100"].mean, abs=1e-12)
        assert s.test["recall@50"].mean == pytest.approx(g.test["recall@50"].mean, abs=1e-12)
    assert rep.best("edlae", 3).extra["neighbors"] in (4, 8, 16)


def test_scalable_evaluation_on_worker_processes_equals_the_threaded_run(problem, dense, client):
    args = dict(split=dense[1], ks=[3], lams=[60.0], ps=[0.0, 0.4], neighbors=[6, 12], dtype="float64",
                n_power_iter=6)
    local, remote = evaluate_scalable(problem[0], **args), evaluate_scalable(problem[0], client=client, **args)
    assert remote.settings["concurrency"]["n_workers"] == 2
    for g in local.grid:
        r = _points(remote)[(g.model, g.k, g.lam, g.p, g.extra["neighbors"])]
        np.testing.assert_allclose(r.test_per_user, g.test_per_user, atol=1e-9)
    assert [(r.model, r.k, r.lam, r.p) for r in remote.rows] == [(r.model, r.k, r.lam, r.p) for r in local.rows]


def test_prefix_of_the_widest_neighbour_lists_is_the_lists_at_K(problem):
    import dask

    from edlae_dask.diagnostics import StageLog
    from edlae_dask.runtime import StageContext
    from edlae_dask.scalable.pipeline import load_stage, neighbor_stage, prefix_neighbors

    store, _ = problem
    ctx = StageContext(client=None, stages=StageLog(None), n_workers=2)
    with dask.config.set(scheduler="threads"):
        loaded = load_stage(store, "float64", ctx)
        wide = neighbor_stage(loaded, 30, "cosine", ctx)
        for K in (1, 7, 29):
            got = dask.compute(*prefix_neighbors(wide, K).rows)
            want = dask.compute(*neighbor_stage(loaded, K, "cosine", ctx).rows)
            for (gn, gg), (wn, wg) in zip(got, want):
                np.testing.assert_array_equal(gn, wn)
                np.testing.assert_array_equal(gg, wg)


# --------------------------------------------------------------------------- popularity


def _oracle_popularity_metrics(pop, fold_in, targets):
    """Per-user nDCG@100, Recall@20/50 of a plain sort by (−popularity, item), fold-in items left out."""
    out = []
    for u in range(fold_in.shape[0]):
        seen = set(fold_in[u].indices.tolist())
        t = set(targets[u].indices.tolist())
        order = sorted((j for j in range(pop.size) if j not in seen), key=lambda j: (-pop[j], j))
        dcg = sum(1 / math.log2(r + 2) for r, j in enumerate(order[:100]) if j in t)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(100, len(t))))
        out.append([dcg / idcg] + [len(t & set(order[:k])) / min(k, len(t)) for k in (20, 50)])
    return np.array(out)


def test_popularity_row_of_both_evaluations_equals_a_numpy_oracle(problem, dense):
    store, X = problem
    report, split = dense
    pop = np.asarray((X[split.train_users][:, split.items] != 0).sum(axis=0)).ravel()
    np.testing.assert_array_equal(training_popularity(store, split), pop)
    # a split made without the counts gets them from the store and the held-out rows
    import dataclasses

    np.testing.assert_array_equal(training_popularity(store, dataclasses.replace(split, popularity=None)), pop)
    want = {name: _oracle_popularity_metrics(pop, h.fold_in, h.targets)
            for name, h in (("valid", split.valid), ("test", split.test))}
    sc = evaluate_scalable(store, split=split, ks=[2], lams=[60.0], ps=[0.0], neighbors=[8], dtype="float64")
    for rep in (report, sc):
        row = rep.rows[0]
        assert row.model == "popularity" and row.lam is None and row.k is None
        np.testing.assert_allclose(row.test_per_user, want["test"], atol=1e-12)
        for i, m in enumerate(("ndcg@100", "recall@20", "recall@50")):
            assert row.valid[m].mean == pytest.approx(want["valid"][:, i].mean(), abs=1e-12)
            assert row.test[m].se == pytest.approx(want["test"][:, i].std(ddof=1) / np.sqrt(len(want["test"])))
        assert "popularity" in rep.table().splitlines()[2]
        assert rep.as_dict()["rows"][0]["model"] == "popularity"


def test_popularity_ranking_breaks_ties_by_lower_index_and_pads_short_lists():
    pop = np.array([5, 9, 5, 0, 9])
    fold_in = sp.csr_matrix(np.array([[0, 1, 0, 0, 0], [1, 1, 1, 1, 0]]))
    ranked = popularity_ranking(pop, fold_in, n_top=4)
    np.testing.assert_array_equal(ranked, [[4, 0, 2, 3], [4, -1, -1, -1]])


# --------------------------------------------------------------------------- CLI


def test_cli_evaluate_path_scalable_end_to_end(problem, tmp_path):
    store, _ = problem
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["evaluate", "--interactions", store.path, "--path", "scalable", "--neighbors", "5",
                                 "10", "--k", "2", "3", "--lam", "2,60", "--p", "0.2", "--n-valid", "60",
                                 "--n-test", "60", "--cluster", "threads", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    head = next(line for line in r.output.splitlines() if line.startswith("model")).split()
    assert head[:5] == ["model", "k", "K", "λ", "p"] and "popularity" in r.output
    assert "neighbours" in r.output and "4 teachers, 4 eigensolves at k=3" in r.output
    rep = json.loads(out.read_text())
    assert [(row["model"], row["k"]) for row in rep["rows"]] == [("popularity", None), ("edlae", 2), ("edlae", 3)]
    assert len(rep["grid"]) == 2 * 2 * 2 and rep["settings"]["path"] == "scalable"
    assert rep["settings"]["stage_runs"]["neighbors"] == 1
    assert {g["extra"]["neighbors"] for g in rep["grid"]} == {5, 10}


@pytest.mark.parametrize("args, message", [
    (["--path", "scalable", "--k", "2", "--models", "edlae,lae"], "scalable path evaluates edlae only"),
    (["--path", "scalable", "--k", "2", "--backend", "dense"], "options of --path dense"),
    (["--k", "2", "--neighbors", "8"], "--neighbors is an option of --path scalable"),
    (["--path", "scalable", "--k", "2", "--neighbors", "0"], "'neighbors' parameter"),
])
def test_cli_evaluate_path_scalable_refuses_what_it_cannot_do_in_one_line(problem, args, message):
    r = CliRunner().invoke(cli, ["evaluate", "--interactions", problem[0].path, "--cluster", "threads", *args])
    assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output

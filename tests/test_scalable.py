"""The scalable path (edlae_dask.scalable): neighbours, sparse teacher, matrix-free student.

The oracle is the dense Algorithm 1 (tests/oracle.py) and, for the restricted teacher,
a direct dense solve of b_S = (P_SS)⁻¹ G_Sj written from its definition.
"""

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from edlae_dask.cli import cli
from edlae_dask.config import TrainParams
from edlae_dask.errors import MemoryBudgetError
from edlae_dask.io.factors import open_factors
from edlae_dask.io.interactions import write_interactions
from edlae_dask.pipeline import train
from edlae_dask.planning import choose_path
from edlae_dask.scalable.neighbors import balanced_item_blocks, row_products_bound, top_neighbors
from edlae_dask.scalable.operator import StudentOperator
from edlae_dask.scalable.teacher import (
    exact_gram_of_sets,
    needed_items,
    solve_exact,
    teacher_transpose,
    teacher_weights,
)

from conftest import clustered_interactions, random_interactions
from oracle import dense_algorithm1, spectrum_of_student


def _gram(X):
    X = sp.csr_matrix(X, dtype=np.float64)
    return X, X.T.tocsr(), (X.T @ X).toarray()


def _regularized_diag(G, lam, p):
    return np.diag(G) * (1 + p / (1 - p)) + lam


def _brute_neighbors(G, K, score):
    n = G.shape[0]
    out = []
    for j in range(n):
        s = G[:, j] / np.sqrt(np.maximum(np.diag(G), 1e-300)) if score == "cosine" else G[:, j].copy()
        cand = [a for a in range(n) if a != j]
        # strongest first, ties (zeros included) to the lower item index
        cand.sort(key=lambda a: (-(s[a] if G[a, j] != 0 else 0.0), a))
        out.append(cand[:K])
    return np.array(out)


@pytest.mark.parametrize("score", ["count", "cosine"])
@pytest.mark.parametrize("K", [1, 5, 39])
def test_top_neighbors_are_the_K_strongest_others_ties_to_lower_index(score, K):
    X, XT, G = _gram(random_interactions(60, 40, 0.08, seed=1))
    nb, g = top_neighbors(sp.csr_matrix(G), 0, K, np.diag(G), score)
    expect = _brute_neighbors(G, K, score)
    np.testing.assert_array_equal(nb, expect)
    np.testing.assert_allclose(g, G[expect, np.arange(40)[:, None]])


def test_top_neighbors_of_a_block_use_global_item_indices():
    X, XT, G = _gram(random_interactions(60, 30, 0.1, seed=2))
    nb, _ = top_neighbors(sp.csr_matrix(G[10:20]), 10, 6, np.diag(G), "count")
    np.testing.assert_array_equal(nb, _brute_neighbors(G, 6, "count")[10:20])


def test_balanced_item_blocks_cover_all_items_within_budget():
    X, XT, _ = _gram(random_interactions(200, 50, 0.1, seed=3))
    bound = row_products_bound(X, XT)
    # the bound is exact work: the number of (user, item, item') products of each row of XᵀX
    per_user = np.diff(X.indptr)
    np.testing.assert_array_equal(bound, [per_user[XT[j].indices].sum() for j in range(50)])
    blocks = balanced_item_blocks(bound, budget=int(bound.max() * 3), max_items=1000)
    assert blocks[0][0] == 0 and blocks[-1][1] == 50
    assert all(a1 == b0 for (_, a1), (b0, _) in zip(blocks, blocks[1:]))
    assert all(bound[a:b].sum() <= bound.max() * 3 for a, b in blocks)


def _graph_mask(nb, n):
    """a ~ b when b is among a's neighbours or a among b's."""
    mask = np.zeros((n, n), dtype=bool)
    mask[np.arange(n)[:, None], nb] = True
    return mask | mask.T


def test_teacher_with_all_other_items_is_the_dense_teacher_eq12():
    X, XT, G = _gram(clustered_interactions(n_users=200, n_items=35, seed=5))
    lam, p, n = 3.0, 0.3, 35
    nb, g = top_neighbors(sp.csr_matrix(G), 0, n - 1, np.diag(G), "count")
    w, failed = teacher_weights(nb, g, _regularized_diag(G, lam, p), np.arange(n), batch=8)
    B = teacher_transpose(nb, w, n, np.float64).T.toarray()
    _, _, _, B0, _, _ = dense_algorithm1(X, 1, lam, p)
    np.testing.assert_allclose(B, B0, atol=1e-12)
    assert failed.size == 0


def test_teacher_column_solves_the_restricted_regression_on_the_neighbour_graph():
    X, XT, G = _gram(random_interactions(150, 40, 0.1, seed=6))
    lam, p, K = 2.0, 0.25, 6
    pd = _regularized_diag(G, lam, p)
    nb, g = top_neighbors(sp.csr_matrix(G), 0, K, np.diag(G), "count")
    masked = np.where(_graph_mask(nb, 40), G, 0.0)  # Gram entries between neighbours, where the graph has them
    items = np.array([3, 17, 0, 39, 22])
    w, _ = teacher_weights(nb, g, pd, items, batch=2)
    for row, j in enumerate(items):
        S = nb[j]
        P_SS = masked[np.ix_(S, S)] + np.diag(pd[S])
        np.testing.assert_allclose(w[row], np.linalg.solve(P_SS, G[S, j]), rtol=1e-9, atol=1e-12)


def test_teacher_needs_only_the_neighbour_lists_its_sets_name():
    X, XT, G = _gram(random_interactions(150, 40, 0.1, seed=6))
    pd = _regularized_diag(G, 2.0, 0.25)
    nb, g = top_neighbors(sp.csr_matrix(G), 0, 6, np.diag(G), "count")
    first = 10
    rows = needed_items(nb[first:20], first)
    assert rows.size < 40  # a block's sets name a part of the catalogue here
    w_part, _ = teacher_weights(nb[rows], g[rows], pd, np.arange(first, 20), rows=rows)
    w_all, _ = teacher_weights(nb, g, pd, np.arange(first, 20))
    np.testing.assert_array_equal(w_part, w_all)


def test_teacher_reports_where_the_masked_P_SS_is_not_positive_definite_and_the_exact_one_solves_it():
    X, XT, G = _gram(random_interactions(150, 20, 0.15, seed=7))
    lam, p, K = 1.0, 0.0, 8
    pd = _regularized_diag(G, lam, p)
    nb, g = top_neighbors(sp.csr_matrix(G), 0, K, np.diag(G), "count")
    # a corrupt neighbour value makes item 0's masked P_SS indefinite (its true Gram is fine)
    a, b = next((a, b) for a in nb[0] for b in nb[0] if a != b and (b in nb[a] or a in nb[b]))
    g_bad = g.copy()
    g_bad[a] = np.where(nb[a] == b, -10 * (pd[a] + pd[b]), g[a])
    g_bad[b] = np.where(nb[b] == a, -10 * (pd[a] + pd[b]), g[b])
    w, failed = teacher_weights(nb, g_bad, pd, np.array([0]))
    np.testing.assert_array_equal(failed, [0])
    assert np.isnan(w[0]).all()
    S = nb[0]
    # the exact Gram of the set, summed over two user shards as the pipeline does
    gram = sum(exact_gram_of_sets(part.T.tocsr(), nb[[0]]) for part in (X[:70], X[70:]))
    np.testing.assert_allclose(gram[0], G[np.ix_(S, S)], rtol=1e-12)
    solved = solve_exact(gram, nb[[0]], g_bad[[0]], pd)
    P_exact = G[np.ix_(S, S)] + np.diag(pd[S] - np.diag(G)[S])
    np.testing.assert_allclose(solved[0], np.linalg.solve(P_exact, G[S, 0]), rtol=1e-9)


def test_student_operator_applies_BtPB_without_forming_it():
    X = random_interactions(90, 24, 0.15, seed=8).astype(np.float64)
    X, XT, G = _gram(X)
    lam, p = 2.0, 0.2
    rng = np.random.default_rng(0)
    B = sp.random(24, 24, density=0.2, random_state=rng, format="csr")
    lam_diag = lam + p / (1 - p) * np.diag(G)
    P = G + np.diag(lam_diag)
    chunks = (10, 10, 4)
    bounds = [(0, 10), (10, 20), (20, 24)]
    shards = [X[:40], X[40:70], X[70:]]
    op = StudentOperator(b_rows=[B[a:b] for a, b in bounds], bt_rows=[B.T.tocsr()[a:b] for a, b in bounds],
                         xt_shards=[s.T.tocsr() for s in shards], lam=lam_diag, row_chunks=chunks,
                         dtype=np.dtype(np.float64), split_every=2)
    Q = rng.standard_normal((24, 5))
    got = op(da.from_array(Q, chunks=(chunks, 5))).compute(scheduler="threads")
    np.testing.assert_allclose(got, B.T @ P @ (B @ Q), rtol=1e-10, atol=1e-10)
    V = da.from_array(Q, chunks=(chunks, 5))
    np.testing.assert_allclose(op.factors_u(V).compute(scheduler="threads"), B @ Q, atol=1e-12)


def _k_at_gap(X, lam, p, candidates=range(3, 9)):
    w = spectrum_of_student(X, lam, p)
    return max(candidates, key=lambda k: w[k - 1] / w[k])


def _rel(U, V, U0, V0):
    return np.linalg.norm(U @ V.T - U0 @ V0.T) / np.linalg.norm(U0 @ V0.T)


def test_scalable_path_with_all_neighbours_equals_dense_algorithm1(tmp_path):
    X = clustered_interactions(n_users=500, n_items=70, seed=7)
    lam, p = 5.0, 0.3
    k = _k_at_gap(X, lam, p)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=120)
    res = train(store, params=TrainParams(k=k, lam=lam, p=p, dtype="float64", path="scalable", neighbors=69,
                                         n_power_iter=8, n_oversamples=20))
    assert res.path == "scalable"
    U0, V0, w0, *_ = dense_algorithm1(X, k, lam, p)
    assert _rel(res.U.compute(), res.V.compute(), U0, V0) < 1e-5
    np.testing.assert_allclose(res.eigenvalues, w0, rtol=1e-8)


def test_scalable_path_on_distributed_workers_matches_threads(tmp_path, client):
    X = clustered_interactions(n_users=300, n_items=50, seed=9)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=70)
    params = TrainParams(k=4, lam=4.0, p=0.2, dtype="float64", seed=3, path="scalable", neighbors=10)
    local = train(store, params=params)
    remote = train(store, params=params, client=client)
    np.testing.assert_allclose(remote.U.compute(), local.U.compute(), atol=1e-9)
    np.testing.assert_allclose(remote.eigenvalues, local.eigenvalues, rtol=1e-10)
    assert {"neighbors", "teacher", "eigensolve"} <= set(remote.stages)
    assert not {"gram", "inverse"} & set(remote.stages)


def test_scalable_student_is_the_top_k_of_its_own_sparse_teacher(tmp_path):
    # with K < n - 1 the student is still exact for its teacher: V = eig_k(BᵀPB), U = B·V
    X = clustered_interactions(n_users=400, n_items=60, seed=11)
    lam, p, K = 5.0, 0.3, 8
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=100)
    res = train(store, params=TrainParams(k=4, lam=lam, p=p, dtype="float64", path="scalable", neighbors=K,
                                         n_power_iter=20))
    Xc, XT, G = _gram(X)
    nb, g = top_neighbors(sp.csr_matrix(G), 0, K, np.diag(G), "count")
    w, _ = teacher_weights(nb, g, _regularized_diag(G, lam, p), np.arange(60))
    B = teacher_transpose(nb, w, 60, np.float64).T.toarray()
    P = G + np.diag(lam + p / (1 - p) * np.diag(G))
    evals, evecs = np.linalg.eigh(B.T @ P @ B)
    V0 = evecs[:, ::-1][:, :4]
    np.testing.assert_allclose(res.eigenvalues, evals[::-1][:4], rtol=1e-8)
    assert _rel(res.U.compute(), res.V.compute(), B @ V0, V0) < 1e-6


def test_auto_path_is_dense_when_it_fits_and_scalable_when_not():
    store = type("Shape", (), dict(n_items=20_000, n_users=100_000, nnz=2_000_000, n_shards=1))()
    params = TrainParams(k=3, neighbors=10).validate()
    dense_need = 2.3 * 20_000**2 * 4  # G and C in float32: 3.7 GB
    assert choose_path(store, params, 2 * dense_need, 1, 2 * dense_need)[0] == "dense"
    small = int(0.8 * dense_need)  # the dense path does not fit, the sparse one (about 0.2 GB) does
    assert choose_path(store, params, small, 1, small)[0] == "scalable"
    with pytest.raises(MemoryBudgetError, match="dense path needs"):
        choose_path(store, TrainParams(k=3, path="dense"), small, 1, small)
    with pytest.raises(MemoryBudgetError, match="scalable path needs about .* Lower --neighbors"):
        choose_path(store, params, 1000, 1, 1000)


def test_cli_train_scalable_publishes_factors_marked_scalable(tmp_path):
    X = clustered_interactions(n_users=200, n_items=40, seed=13)
    write_interactions(tmp_path / "x.zarr", X, shard_size=64)
    out = tmp_path / "factors"
    r = CliRunner().invoke(cli, ["train", "--interactions", str(tmp_path / "x.zarr"), "--out", str(out), "--k", "3",
                                 "--path", "scalable", "--neighbors", "7", "--cluster", "threads", "--no-progress"])
    assert r.exit_code == 0, r.output
    f = open_factors(str(out))
    assert f.meta["path"] == "scalable" and f.meta["scalable"]["neighbors"] == 7
    assert f.U.shape == (40, 3)


# --------------------------------------------------------------------------- partitioned across workers


def _graphs_of_a_scalable_run(store, params):
    """Every task of a threaded scalable run with its direct inputs, as dask's scheduler saw them."""
    from dask.callbacks import Callback

    seen = []

    class Record(Callback):
        def _start_state(self, dsk, state):
            seen.append(dict(state["dependencies"]))

    with Record():
        res = train(store, params=params)
    return res, seen


def test_no_task_of_the_scalable_path_reads_more_than_one_user_shard(tmp_path):
    X = clustered_interactions(n_users=400, n_items=50, seed=21)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=60)  # 7 shards, the last one ragged
    assert store.n_shards == 7
    _, graphs = _graphs_of_a_scalable_run(store, TrainParams(k=3, lam=4.0, p=0.2, dtype="float64",
                                                             path="scalable", neighbors=8))
    shard_x = lambda k: str(k).startswith("edlae-load-shard-") and not str(k).startswith("edlae-load-shard-t-")  # noqa
    shard_t = lambda k: str(k).startswith("edlae-load-shard-t-")  # noqa
    n_tasks = 0
    for deps in graphs:
        for key, inputs in deps.items():
            n_tasks += 1
            assert sum(map(shard_x, inputs)) <= 1, f"{key} reads {sum(map(shard_x, inputs))} shards"
            assert sum(map(shard_t, inputs)) <= 1, f"{key} reads {sum(map(shard_t, inputs))} shard transposes"
    # the property is about a graph that does read the shards: every stage ran through here
    readers = {str(k).rsplit("-", 1)[0] for deps in graphs for k, inp in deps.items()
               if any(map(shard_x, inp)) or any(map(shard_t, inp))}
    assert {"edlae-load-shard-t", "edlae-neighbors-gram-part", "edlae-operator-xy", "edlae-operator-xtz"} <= readers
    assert n_tasks > 7


@pytest.mark.parametrize("entries", [None, 400])  # 400: neighbour blocks of a few items, across row blocks
def test_partitioned_path_on_ragged_shards_and_item_blocks_equals_dense_algorithm1(tmp_path, monkeypatch, entries):
    from edlae_dask import planning
    from edlae_dask.diagnostics import StageLog
    from edlae_dask.runtime import StageContext
    from edlae_dask.scalable.pipeline import row_blocks, run_scalable

    X = clustered_interactions(n_users=450, n_items=61, seed=23)
    lam, p = 5.0, 0.3
    k = _k_at_gap(X, lam, p)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=100)  # 5 shards, the last holds 50 users
    ctx = StageContext(client=None, stages=StageLog(None), n_workers=3)
    assert row_blocks(61, 3) == (11, 11, 11, 11, 11, 6)  # ragged last item block
    if entries is not None:
        monkeypatch.setattr(planning, "NEIGHBOR_TASK_MIN_ENTRIES", entries)
        monkeypatch.setattr(planning, "NEIGHBOR_TASK_ENTRIES", entries)
    import dask

    with dask.config.set(scheduler="threads"):
        res = run_scalable(store, TrainParams(k=k, lam=lam, p=p, dtype="float64", path="scalable", neighbors=60,
                                              n_power_iter=8, n_oversamples=20), ctx)
        U, V = res.U.compute(), res.V.compute()
    n_blocks = ctx.stages.records[1].detail["blocks"]
    assert n_blocks == 1 if entries is None else n_blocks > 6  # more neighbour blocks than row blocks
    U0, V0, w0, *_ = dense_algorithm1(X, k, lam, p)
    assert _rel(U, V, U0, V0) < 1e-5


def test_scalable_path_on_four_worker_processes_equals_the_threaded_run(tmp_path):
    from distributed import Client, LocalCluster

    X = clustered_interactions(n_users=500, n_items=80, seed=25)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=60)
    params = TrainParams(k=4, lam=4.0, p=0.2, dtype="float64", seed=5, path="scalable", neighbors=12)
    local = train(store, params=params)
    with LocalCluster(n_workers=4, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      memory_limit="2GiB") as lc, Client(lc) as c:
        remote = train(store, params=params, client=c)
        U_remote = remote.U.compute()
        assert remote.path_info["row_blocks"] == 8  # two item blocks per worker
    np.testing.assert_allclose(U_remote, local.U.compute(), atol=1e-9)
    np.testing.assert_allclose(remote.eigenvalues, local.eigenvalues, rtol=1e-10)


def test_scalable_memory_estimate_is_per_worker_and_spreads_the_interactions():
    from edlae_dask.planning import scalable_memory_estimate

    def est(w):
        return scalable_memory_estimate(30_000, 300_000, 6_000_000, 32, 32, 4, n_workers=w, n_shards=8)

    # interactions dominate: 3 · 12 bytes · nnz spread over the shards' workers
    assert est(1) - est(4) >= 3 * 12 * 6_000_000 * (1 - 2 / 8)
    assert est(1) > est(2) > est(4) > est(8)
    # a run refused on one small worker fits on four of them (the summed memory is not what counts)
    store = type("Shape", (), dict(n_items=30_000, n_users=300_000, nnz=6_000_000, n_shards=8))()
    params = TrainParams(k=32, neighbors=32, path="scalable").validate()
    worker = int(est(4) / 0.75) + 1
    with pytest.raises(MemoryBudgetError, match="on each of 1 workers"):
        choose_path(store, params, worker, 1, worker)
    assert choose_path(store, params, 4 * worker, 4, worker) == ("scalable", est(4))

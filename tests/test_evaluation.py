"""Evaluation of every model against a dense numpy oracle, the grid's choice, the objectives, the Proposition."""

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from edlae_dask.cli import cli
from edlae_dask.dense.gram import gram
from edlae_dask.errors import MemoryBudgetError, ParameterError
from edlae_dask.evaluation import (
    Evaluator,
    GridResult,
    autoencoder_error_bound,
    closed_form_dense,
    evaluate,
    exact_lowrank_optimum,
    objective_eq14,
    objective_eq15,
    objective_eq15_closed_form,
    paired_difference,
    summarize,
)
from edlae_dask.evaluation.dense import PANELS, DenseWorkspace, eigensolve, plan_memory
from edlae_dask.evaluation.objectives import objective_eq14_grad
from edlae_dask.io.interactions import write_interactions

from conftest import clustered_interactions, random_interactions
from oracle import dense_algorithm1

LAMS, PS, KS = (2.0, 60.0), (0.0, 0.4), (2, 4)  # the student spectra have gaps after 2 and 4


# --------------------------------------------------------------------------- oracle (dense numpy, from the paper)


def oracle_weights(Xtr, model, lam, p, k=None):
    """The n x n matrix W of each model; scores of a fold-in row x are x·W."""
    G = Xtr.T @ Xtr
    n = G.shape[0]
    P = G + lam * np.eye(n) + p / (1 - p) * np.diag(np.diag(G))        # eq. 8, 13
    C = np.linalg.inv(P)
    if model in ("full-rank", "ease"):
        return np.eye(n) - C @ np.diag(1 / np.diag(C))                    # eq. 12
    if model == "edlae":
        U, V, *_ = dense_algorithm1(Xtr, k, lam, p)                      # Algorithm 1
        return U @ V.T
    if model == "lae":                                                   # Jin et al. 2021
        Bf = C @ G
        w, Q = np.linalg.eigh(Bf.T @ P @ Bf)
        V = Q[:, np.argsort(w)[::-1][:k]]
        return Bf @ V @ V.T
    raise AssertionError(model)


def oracle_metrics(S, fold_in, targets):
    """Per-user nDCG@100, Recall@20, Recall@50, by loops over a plainly sorted list."""
    out = []
    for u in range(S.shape[0]):
        seen = set(fold_in[u].indices.tolist())
        t = set(targets[u].indices.tolist())
        order = sorted((j for j in range(S.shape[1]) if j not in seen), key=lambda j: (-S[u, j], j))
        dcg = sum(1 / math.log2(r + 2) for r, j in enumerate(order[:100]) if j in t)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(100, len(t))))
        out.append([dcg / idcg] + [len(t & set(order[:k])) / min(k, len(t)) for k in (20, 50)])
    return np.array(out)


def oracle_grid(X, split):
    Xtr = X[split.train_users][:, split.items].toarray().astype(np.float64)
    res = {}
    for model in ("edlae", "lae", "full-rank", "ease"):
        for lam in LAMS:
            for p in ((0.0,) if model == "ease" else PS):
                for k in (KS if model in ("edlae", "lae") else (None,)):
                    W = oracle_weights(Xtr, model, lam, p, k)
                    per = {}
                    for name, h in (("valid", split.valid), ("test", split.test)):
                        S = h.fold_in.toarray() @ W
                        per[f"{name}_per_user"] = oracle_metrics(S, h.fold_in, h.targets)
                        per[name] = per[f"{name}_per_user"].mean(axis=0)
                    res[(model, k, lam, p)] = per
    return res


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    X = clustered_interactions(n_users=500, n_items=130, n_clusters=4, p_in=0.25, p_out=0.02, seed=5)
    store = write_interactions(tmp_path_factory.mktemp("eval") / "x.zarr", X, shard_size=120)
    return store, X


@pytest.fixture(scope="module")
def threaded(problem):
    store, X = problem
    with Evaluator(store, n_valid=70, n_test=70, seed=3, dtype="float64", block_size=48) as ev:
        report = ev.run(models="edlae,lae,full-rank,ease", ks=KS, lams=LAMS, ps=PS, n_power_iter=8)
        return report, ev.split_


@pytest.fixture(scope="module")
def dense(problem):
    store, X = problem
    with Evaluator(store, n_valid=70, n_test=70, seed=3, dtype="float64", block_size=48, backend="dense") as ev:
        report = ev.run(models="edlae,lae,full-rank,ease", ks=KS, lams=LAMS, ps=PS, n_power_iter=8)
        return report, ev.split_


@pytest.fixture(scope="module")
def oracle(problem, threaded):
    return oracle_grid(problem[1], threaded[1])


# --------------------------------------------------------------------------- the shared Gram


def test_gram_of_selected_users_and_items(tmp_path):
    X = random_interactions(90, 30, 0.2, seed=1)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=25)
    users = np.flatnonzero(np.arange(90) % 3 != 0)
    items = np.array([0, 2, 3, 7, 11, 12, 13, 20, 29])
    expect = (X[users][:, items].T @ X[users][:, items]).toarray()
    for u in (users, np.isin(np.arange(90), users)):  # sorted indices or a boolean mask
        G = gram(store, block_size=4, dtype=np.float64, users=u, items=items)
        assert G.shape == (9, 9) and G.chunks[0] == (4, 4, 1)
        np.testing.assert_array_equal(G.compute(scheduler="threads"), expect)
    # no selection: the same graph as before the keywords existed
    assert gram(store, block_size=4).name == gram(store, block_size=4, users=None, items=None).name
    with pytest.raises(ValueError, match="sorted, unique"):
        gram(store, block_size=4, items=np.array([3, 1]))


# --------------------------------------------------------------------------- models against the oracle


@pytest.mark.parametrize("backend", ["threaded", "dense"])
def test_every_model_and_grid_point_equals_the_dense_oracle(backend, request, oracle):
    report, split = request.getfixturevalue(backend)
    assert len(report.grid) == len(oracle)
    for g in report.grid:
        want = oracle[(g.model, g.k, g.lam, g.p)]
        for name, summaries in (("valid", g.valid), ("test", g.test)):
            got = [summaries[m].mean for m in ("ndcg@100", "recall@20", "recall@50")]
            np.testing.assert_allclose(got, want[name], rtol=0, atol=1e-9,
                                       err_msg=f"{g.model} {g.k} {g.lam} {g.p} {name}")
        assert g.valid["ndcg@100"].n == split.valid.n_users and g.test["ndcg@100"].n == split.test.n_users


@pytest.mark.parametrize("backend", ["threaded", "dense"])
def test_per_user_test_values_equal_the_oracle_and_give_the_paired_difference(backend, request, oracle):
    report, split = request.getfixturevalue(backend)
    for g in report.grid:
        assert g.test_per_user.shape == (split.test.n_users, 3)
        np.testing.assert_allclose(g.test_per_user, oracle[(g.model, g.k, g.lam, g.p)]["test_per_user"],
                                   rtol=0, atol=1e-9, err_msg=f"{g.model} {g.k} {g.lam} {g.p}")
    a, b = report.best("edlae", KS[-1]), report.best("lae", KS[-1])

    d = paired_difference(a, b)

    diff = (oracle[(a.model, a.k, a.lam, a.p)]["test_per_user"][:, 0]
            - oracle[(b.model, b.k, b.lam, b.p)]["test_per_user"][:, 0])
    assert d.n == split.test.n_users
    assert d.mean == pytest.approx(diff.mean(), abs=1e-12)
    assert d.se == pytest.approx(diff.std(ddof=1) / math.sqrt(diff.size), rel=1e-9)
    assert d.mean == pytest.approx(a.test["ndcg@100"].mean - b.test["ndcg@100"].mean, abs=1e-12)
    assert "test_per_user" not in json.dumps(report.as_dict())  # JSON keeps the summaries only


def test_a_paired_difference_needs_per_user_values():
    s = summarize([0.1, 0.2])
    read_back = GridResult(model="edlae", k=5, lam=1.0, p=0.1, valid={"ndcg@100": s}, test={"ndcg@100": s})
    with pytest.raises(ValueError, match="no per-user test values"):
        paired_difference(read_back, read_back)
    with pytest.raises(ValueError, match="same test users"):
        paired_difference(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize("backend", ["threaded", "dense"])
def test_grid_chooses_the_oracles_best_validation_point(backend, request, oracle):
    report, _ = request.getfixturevalue(backend)
    for model in ("edlae", "lae", "full-rank", "ease"):
        for k in (KS if model in ("edlae", "lae") else (None,)):
            points = [(lam, p) for (m, kk, lam, p) in oracle if m == model and kk == k]
            best = max(points, key=lambda pt: oracle[(model, k) + pt]["valid"][0])
            row = report.best(model, k)
            assert (row.lam, row.p) == best, (model, k)
            assert row.test["ndcg@100"].mean == pytest.approx(oracle[(model, k) + best]["test"][0], abs=1e-9)
    # the grid is not flat: the choice matters
    vals = [oracle[key]["valid"][0] for key in oracle if key[0] == "full-rank"]
    assert max(vals) - min(vals) > 1e-3
    assert "edlae" in report.table() and json.dumps(report.as_dict())


def test_parallel_grid_on_the_cluster_matches_the_threaded_run(problem, threaded, client):
    store, _ = problem
    report, _ = threaded
    dist = evaluate(store, models="edlae,ease", ks=KS, lams=LAMS, ps=PS[1:], n_valid=70, n_test=70, seed=3,
                    dtype="float64", block_size=48, client=client, max_concurrent=3, n_power_iter=8)
    assert dist.settings["concurrency"]["concurrent"] == 3  # 4 points (2 for edlae, 2 for EASE), 3 at a time
    assert len(dist.grid) == 2 * 2 + 2
    same = {(g.model, g.k, g.lam, g.p): g for g in report.grid}
    for g in dist.grid:
        t = same[(g.model, g.k, g.lam, g.p)]
        for a, b in ((g.valid, t.valid), (g.test, t.test)):
            assert [a[m].mean for m in a] == pytest.approx([b[m].mean for m in b], abs=1e-9)


def test_dense_backend_without_the_student_matrix_gives_the_same_grid(problem, dense):
    store, _ = problem
    report, split = dense
    n = split.items.size
    with_m = plan_memory(n, max(KS), 8, available=2**40)
    assert with_m.student_matrix
    limit = with_m.total_bytes - 1  # G, C and the panels fit, M does not
    with Evaluator(store, n_valid=70, n_test=70, seed=3, dtype="float64", block_size=48, backend="dense",
                   memory_limit=limit) as ev:
        implicit = ev.run(models="edlae,lae", ks=KS, lams=LAMS[1:], ps=PS, n_power_iter=8)
    assert implicit.settings["concurrency"]["student_matrix"] is False
    same = {(g.model, g.k, g.lam, g.p): g for g in report.grid}
    for g in implicit.grid:
        t = same[(g.model, g.k, g.lam, g.p)]
        assert [g.test[m].mean for m in g.test] == pytest.approx([t.test[m].mean for m in t.test], abs=1e-9)
    # every stage's memory is recorded with the point
    stages = implicit.grid[0].extra["dense_stages"]
    assert [s["stage"].split(": ", 1)[1] for s in stages][:2] == ["P formed and inverted in place",
                                                                  "edlae student matrix applied implicitly"]
    assert all(s["peak_rss_gib"] >= s["rss_gib"] > 0 for s in stages)


def test_memory_plan_forms_m_when_it_fits_and_refuses_when_nothing_fits():
    n, k, b = 1000, 50, 4
    sq, panels = n * n * b, PANELS * n * 2 * k * b
    assert plan_memory(n, k, b, available=3 * sq + panels).student_matrix
    implicit = plan_memory(n, k, b, available=3 * sq + panels - 1)
    assert not implicit.student_matrix and implicit.total_bytes == 2 * sq + panels
    assert plan_memory(n, 0, b, available=2 * sq).total_bytes == 2 * sq  # full rank only: no M, no panels
    with pytest.raises(MemoryBudgetError, match="backend='dask'"):
        plan_memory(n, k, b, available=2 * sq + panels - 1)


def test_dense_workspace_inverts_in_place_and_forms_the_student():
    rng = np.random.default_rng(7)
    n = 23
    X = (rng.random((60, n)) < 0.3).astype(np.float64)
    G = X.T @ X
    lam_diag = 2.0 + 0.5 * np.diag(G)
    plan = plan_memory(n, 4, 8, available=2**30)
    ws = DenseWorkspace(G.copy(), plan, block=5)  # ragged blocks when mirroring the triangle
    C = ws.inverse(lam_diag)
    P = G + np.diag(lam_diag)
    np.testing.assert_allclose(C, np.linalg.inv(P), rtol=1e-10, atol=1e-13)
    assert ws.inverse(lam_diag) is C and np.array_equal(ws.G, G)  # buffer reused, Gram untouched
    d = 1.0 / np.diag(C)
    M = P - 2 * np.diag(d) + np.diag(d) @ C @ np.diag(d)  # Algorithm 1, line 3
    Q = rng.standard_normal((n, 3))
    np.testing.assert_allclose(ws.student(d, lam_diag)(Q), M @ Q, rtol=1e-10, atol=1e-10)
    ws.set_plan(plan_memory(n, 4, 8, available=plan.total_bytes - 1))
    np.testing.assert_allclose(ws.student(d, lam_diag)(Q), M @ Q, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ws.factors(d, Q), (np.eye(n) - C @ np.diag(d)) @ Q, rtol=1e-10, atol=1e-12)


def test_dense_buffers_reach_the_scoring_graphs_as_views_not_copies():
    import dask
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph

    from edlae_dask.evaluation.dense import as_dask

    C = np.arange(30.0 * 30).reshape(30, 30)
    x = as_dask(C, ((8, 8, 8, 6),) * 2, "edlae-test-buffer")
    np.testing.assert_array_equal(x.compute(scheduler="threads"), C)
    layer = "edlae-test-shares"
    graph = HighLevelGraph.from_collections(
        layer, {layer: (lambda *blocks: [np.shares_memory(b, C) for b in blocks], (x.name, 0, 0), (x.name, 3, 2))},
        dependencies=[x])
    assert dask.compute(Delayed(layer, graph, layer=layer), scheduler="threads")[0] == [True, True]


def test_leading_columns_of_one_eigensolve_serve_every_smaller_rank(problem, threaded):
    """The grid takes rank k from the top-k_max Ritz vectors of the randomized solver: for every k < k_max
    they capture the top-k eigenvalue sum at least as well as a solve at k itself would."""
    _, X = problem
    split = threaded[1]
    Xtr = X[split.train_users][:, split.items].toarray().astype(np.float64)
    P = Xtr.T @ Xtr + 20.0 * np.eye(Xtr.shape[1])
    _, _, _, M = closed_form_dense(P, 1)
    exact = np.sort(np.linalg.eigvalsh(M))[::-1]

    def gap(V, k):  # relative excess of eq. 15 over its exact minimum: 1 − tr(V_kᵀ M V_k) / Σ_{i<=k} λ_i
        return 1.0 - np.sum(V[:, :k] * (M @ V[:, :k])) / exact[:k].sum()

    k_max = 30  # default settings: a subspace of 60 < 130 columns, so the solver is not exact
    V = eigensolve(lambda Q: M @ Q, M.shape[0], k_max, np.float64).eigenvectors.compute()
    assert 0 < gap(V, k_max) < 1e-3
    for k in (2, 5, 10, 20):
        alone = eigensolve(lambda Q: M @ Q, M.shape[0], k, np.float64).eigenvectors.compute()
        assert -1e-12 < gap(V, k) <= gap(alone, k) and gap(V, k) <= gap(V, k_max), k


def test_low_rank_models_need_a_rank_and_ranks_below_the_item_count(problem):
    store, _ = problem
    with Evaluator(store, n_valid=30, n_test=30, seed=0) as ev:
        with pytest.raises(ParameterError, match="give at least one rank"):
            ev.run(models="edlae", lams=[1.0])
        with pytest.raises(ParameterError, match="0 < k < 130"):
            ev.run(models="lae", ks=[130])
        with pytest.raises(ParameterError, match="'models' parameter"):
            ev.run(models="svd", ks=[3])


# --------------------------------------------------------------------------- eq. 14 / 15 and the exact optimum


@pytest.fixture(scope="module")
def small_P():
    X = clustered_interactions(n_users=150, n_items=24, n_clusters=3, seed=2).toarray().astype(np.float64)
    G = X.T @ X
    return G + 3.0 * np.eye(24) + 0.3 / 0.7 * np.diag(np.diag(G))


def test_eq14_gradient_matches_finite_differences(small_P):
    rng = np.random.default_rng(0)
    U, V, B, _ = closed_form_dense(small_P, 3)
    U, V = U + 0.1 * rng.standard_normal(U.shape), V + 0.1 * rng.standard_normal(V.shape)
    f, gU, gV = objective_eq14_grad(small_P, small_P @ B, B, U, V)
    assert f == pytest.approx(objective_eq14(small_P, B, U, V), rel=1e-12)
    f5, gU5, gV5 = objective_eq14_grad(small_P, small_P @ B, B, U, V, block=5)  # ragged column blocks
    assert f5 == pytest.approx(f, rel=1e-12)
    np.testing.assert_allclose(gU5, gU, rtol=1e-10, atol=1e-10 * np.abs(gU).max())
    np.testing.assert_allclose(gV5, gV, rtol=1e-10, atol=1e-10 * np.abs(gV).max())
    dU, dV = rng.standard_normal(U.shape), rng.standard_normal(V.shape)
    h = 1e-6
    fd = (objective_eq14(small_P, B, U + h * dU, V + h * dV)
          - objective_eq14(small_P, B, U - h * dU, V - h * dV)) / (2 * h)
    assert fd == pytest.approx(np.sum(gU * dU) + np.sum(gV * dV), rel=1e-6)


def test_closed_form_is_the_eq15_optimum_and_the_exact_optimum_improves_eq14(small_P):
    for k in (2, 5):
        U0, V0, B, M = closed_form_dense(small_P, k)
        # eq. 15 at the closed form: tr(M) − tr(VᵀMV)
        assert objective_eq15(small_P, B, U0, V0) == pytest.approx(objective_eq15_closed_form(M, V0), rel=1e-9)
        opt = exact_lowrank_optimum(small_P, B, U0, V0, maxiter=200)
        f_closed = objective_eq14(small_P, B, U0, V0)
        assert opt.objective_start == pytest.approx(f_closed)
        assert opt.objective <= f_closed and opt.ratio >= 1.0
        assert opt.objective < f_closed * (1 - 1e-6)  # at this small n the diagonal matters: strictly better
        # and the closed form stays the exact minimiser of eq. 15 (Eckart–Young)
        assert objective_eq15(small_P, B, U0, V0) <= objective_eq15(small_P, B, opt.U, opt.V) * (1 + 1e-12)


def test_exact_optimum_model_reports_the_objective_ratio(problem, client):
    store, _ = problem
    # at Algorithm 1's chosen point (threads) ...
    rep = evaluate(store, models="edlae-opt", ks=[4], lams=[2.0, 60.0], ps=[0.4], n_valid=50, n_test=50, seed=1,
                   dtype="float64", block_size=64, exact_maxiter=30)
    row = rep.best("edlae-opt", 4)
    assert (row.lam, row.p) == (rep.best("edlae", 4).lam, rep.best("edlae", 4).p)
    assert row.extra["objective_ratio"] >= 1.0
    assert row.extra["objective_eq14_optimum"] <= row.extra["objective_eq14_closed_form"]
    assert np.isfinite(row.extra["test_ndcg_diff"]) and "closed form / optimum" in rep.table()
    # ... and at every grid point, one task each on the cluster, chosen on validation users
    rep = evaluate(store, models="edlae-opt", ks=[4], lams=[2.0, 60.0], ps=[0.4], n_valid=50, n_test=50, seed=1,
                   dtype="float64", block_size=64, exact_maxiter=30, exact_points="grid", client=client)
    points = [g for g in rep.grid if g.model == "edlae-opt"]
    assert {(g.lam, g.p) for g in points} == {(2.0, 0.4), (60.0, 0.4)}
    best = max(points, key=lambda g: g.valid["ndcg@100"].mean)
    assert (rep.best("edlae-opt", 4).lam, rep.best("edlae-opt", 4).p) == (best.lam, best.p)
    assert all(g.extra["objective_ratio"] >= 1.0 for g in points)


# --------------------------------------------------------------------------- the Proposition


def test_a_trained_nonlinear_autoencoder_does_not_beat_the_linear_bound():
    from sklearn.neural_network import MLPRegressor

    X = clustered_interactions(n_users=120, n_items=20, n_clusters=3, seed=4).toarray().astype(np.float64)
    k = 3
    bound = autoencoder_error_bound(X, k, n_power_iter=10)
    bound_k1 = autoencoder_error_bound(X, k + 1, n_power_iter=10)
    s = np.linalg.svd(X, compute_uv=False)
    assert bound.bound == pytest.approx(np.sum(s[k:] ** 2), rel=1e-9)      # ‖X − X V_k V_kᵀ‖² (eq. 24)
    V = bound.V.compute()
    assert np.linalg.norm(X - X @ V @ V.T) ** 2 == pytest.approx(bound.bound, rel=1e-9)  # attained by the linear AE

    mlp = MLPRegressor(hidden_layer_sizes=(32, k), activation="tanh", solver="lbfgs", alpha=0.0,
                       max_iter=3000, random_state=0).fit(X, X)
    se = float(np.sum((X - mlp.predict(X)) ** 2))
    # sklearn's output layer has a bias: g(X)·W_L + 1·bᵀ = [g(X), 1]·[W_L; bᵀ], a last hidden layer of
    # k + 1 units (one constant), so the Proposition bounds it by the rank-(k+1) linear AE
    assert se >= bound_k1.bound
    # without the bias: the same trained encoder g (k = 3 units), its best linear output layer
    H = X
    for W, b in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1]):
        H = np.tanh(H @ W + b)
    assert H.shape == (120, k)
    W_L = np.linalg.lstsq(H, X, rcond=None)[0]
    se_k = float(np.sum((X - H @ W_L) ** 2))
    assert se_k >= bound.bound
    assert se > 0.5 * bound_k1.bound  # the network was actually trained (not a vacuous comparison)


# --------------------------------------------------------------------------- CLI


def test_cli_evaluate_prints_the_table_and_writes_json(problem, tmp_path):
    store, _ = problem
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["evaluate", "--interactions", store.path, "--k", "2", "4", "--lam", "2", "60",
                                 "--p", "0,0.4", "--models", "edlae,ease", "--n-valid", "60", "--n-test", "0.1",
                                 "--cluster", "threads", "--block-size", "64", "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "test nDCG@100" in r.output and re.search(r"^edlae\s+4\s", r.output, re.M) and "ease" in r.output
    assert re.search(r"^popularity\s+-\s+-\s+-\s", r.output, re.M)  # the baseline row, first
    rep = json.loads(out.read_text())
    assert {(row["model"], row["k"]) for row in rep["rows"]} == {("popularity", None), ("edlae", 2), ("edlae", 4),
                                                                  ("ease", None)}
    assert len(rep["grid"]) == 2 * 2 * 2 + 2 and rep["split"]["n_valid_users"] == 60
    assert rep["split"]["n_test_users"] == 50


def test_cli_evaluate_dense_backend_reports_what_the_dask_backend_does(problem, tmp_path):
    store, _ = problem
    args = ["evaluate", "--interactions", store.path, "--k", "3", "--lam", "2", "60", "--p", "0.4",
            "--models", "edlae,full-rank", "--n-valid", "60", "--n-test", "60", "--cluster", "threads",
            "--block-size", "64", "--dtype", "float64"]
    rows = {}
    for backend in ("dask", "dense"):
        out = tmp_path / f"{backend}.json"
        r = CliRunner().invoke(cli, args + ["--backend", backend, "--memory-limit", "1GiB", "--out", str(out)],
                               catch_exceptions=False)
        assert r.exit_code == 0, r.output
        rep = json.loads(out.read_text())
        assert rep["settings"]["backend"] == backend
        rows[backend] = {(row["model"], row["k"]): row for row in rep["rows"]}
    assert rows["dask"].keys() == rows["dense"].keys() == {("popularity", None), ("edlae", 3), ("full-rank", None)}
    for key, row in rows["dask"].items():
        assert (row["lam"], row["p"]) == (rows["dense"][key]["lam"], rows["dense"][key]["p"])
        assert row["test"]["ndcg@100"]["mean"] == pytest.approx(rows["dense"][key]["test"]["ndcg@100"]["mean"],
                                                                abs=1e-9)


def test_cli_evaluate_rejects_a_memory_limit_that_is_not_a_size(problem):
    store, _ = problem
    r = CliRunner().invoke(cli, ["evaluate", "--interactions", store.path, "--k", "3", "--backend", "dense",
                                 "--memory-limit", "lots", "--cluster", "threads"])
    assert r.exit_code == 2 and "not a size" in r.output


def test_cli_evaluate_reports_bad_input_in_one_line(problem):
    store, _ = problem
    r = CliRunner().invoke(cli, ["evaluate", "--interactions", store.path, "--models", "edlae", "--cluster", "threads"])
    assert r.exit_code == 1 and "give at least one rank" in r.output
    r = CliRunner().invoke(cli, ["evaluate", "--interactions", store.path, "--k", "3", "--p", "1.2",
                                 "--cluster", "threads"])
    assert r.exit_code == 1 and "'ps' parameter" in r.output

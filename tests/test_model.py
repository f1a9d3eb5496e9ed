"""Algorithm 1 stage by stage and end to end, against the dense oracle."""

import dask.array as da
import numpy as np
import pytest

from edlae_dask.config import TrainParams
from edlae_dask.dense.student import (
    panel_operator,
    row_panels,
    student_factors,
    student_matrix,
    student_operator_implicit,
)
from edlae_dask.dense.teacher import regularize, teacher_scaling
from edlae_dask.errors import MemoryBudgetError, ModelFitError, ParameterError
from edlae_dask.io.interactions import write_interactions
from edlae_dask.model import EDLAE
from edlae_dask.pipeline import train
from edlae_dask.planning import check_memory

from conftest import clustered_interactions, random_interactions
from oracle import dense_algorithm1, spectrum_of_student


def _as_dask(A, block):
    return da.from_array(A, chunks=(block, block))


def test_regularize_adds_lambda_and_emphasis_to_the_diagonal():
    X = random_interactions(60, 17, 0.2).toarray().astype(np.float64)
    G = X.T @ X
    lam, p = 3.0, 0.4
    P = regularize(_as_dask(G, 5), lam, p).compute(scheduler="threads")
    expected = G + lam * np.eye(17) + p / (1 - p) * np.diag(np.diag(G))  # eq. 8
    np.testing.assert_allclose(P, expected, rtol=1e-14)


def test_student_matrix_equals_BtPB():
    X = random_interactions(80, 19, 0.2, seed=1)
    _, _, _, B, C, P = dense_algorithm1(X, 3, lam=2.0, p=0.3)
    d = teacher_scaling(np.diag(C))
    M = student_matrix(_as_dask(P, 6), _as_dask(C, 6), d).compute(scheduler="threads")
    np.testing.assert_allclose(M, B.T @ P @ B, rtol=1e-9, atol=1e-9 * np.abs(P).max())


def test_the_eigensolver_applies_M_by_row_panels_one_product_each():
    X = random_interactions(80, 19, 0.2, seed=1)
    _, _, _, B, C, P = dense_algorithm1(X, 3, lam=2.0, p=0.3)
    d = teacher_scaling(np.diag(C))
    M = row_panels(student_matrix(_as_dask(P, 6), _as_dask(C, 6), d))  # ragged: rows 6, 6, 6, 1
    assert M.chunks == ((6, 6, 6, 1), (19,))
    Q = da.from_array(np.random.default_rng(0).standard_normal((19, 4)), chunks=((6, 6, 6, 1), (4,)))
    MQ = panel_operator(M)(Q)
    assert MQ.chunks == ((6, 6, 6, 1), (4,))
    np.testing.assert_allclose(MQ.compute(scheduler="threads"), B.T @ P @ B @ Q.compute(), rtol=1e-9, atol=1e-9)
    # one product per panel, no sum over blocks: the graph's products are as many as the panels
    products = [k for k in dict(MQ.__dask_graph__()) if isinstance(k, tuple) and "matmul" in k[0]]
    assert len(products) == 4
    assert not [k for k in dict(MQ.__dask_graph__()) if isinstance(k, tuple) and "sum" in k[0]]


def test_teacher_from_scaling_equals_closed_form_B():
    X = random_interactions(80, 19, 0.2, seed=2)
    _, _, _, B, C, _ = dense_algorithm1(X, 3, lam=1.0, p=0.2)
    d = teacher_scaling(np.diag(C))
    B_from_d = np.eye(19) - C * d[None, :]  # eq. 12
    np.testing.assert_allclose(B_from_d, B, atol=1e-12)
    np.testing.assert_allclose(np.diag(B_from_d), 0, atol=1e-12)


def test_implicit_operator_equals_explicit_matrix():
    X = random_interactions(70, 21, 0.2, seed=4)
    _, _, _, B, C, P = dense_algorithm1(X, 3, lam=1.5, p=0.25)
    d = teacher_scaling(np.diag(C))
    Q = np.random.default_rng(0).standard_normal((21, 4))
    apply = student_operator_implicit(_as_dask(P, 8), _as_dask(C, 8), d)
    MQ = apply(da.from_array(Q, chunks=(8, 4))).compute(scheduler="threads")
    np.testing.assert_allclose(MQ, B.T @ P @ B @ Q, rtol=1e-9, atol=1e-9)


def test_student_factors_equal_B_times_V():
    X = random_interactions(70, 21, 0.2, seed=5)
    U, V, _, B, C, _ = dense_algorithm1(X, 4, lam=1.0, p=0.1)
    d = teacher_scaling(np.diag(C))
    got = student_factors(_as_dask(C, 8), d, da.from_array(V, chunks=(8, 4))).compute(scheduler="threads")
    np.testing.assert_allclose(got, B @ V, atol=1e-10)


def _k_at_gap(X, lam, p, candidates=range(3, 9)):
    w = spectrum_of_student(X, lam, p)
    return max(candidates, key=lambda k: w[k - 1] / w[k])


@pytest.mark.parametrize("block_size", [16, 25])
def test_pipeline_UVt_equals_dense_algorithm1_float64(tmp_path, block_size):
    X = clustered_interactions(n_users=500, n_items=70, seed=7)
    lam, p = 5.0, 0.3
    k = _k_at_gap(X, lam, p)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=120)
    res = train(store, params=TrainParams(k=k, lam=lam, p=p, dtype="float64", block_size=block_size,
                                         n_power_iter=6, n_oversamples=20))
    U, V = res.U.compute(), res.V.compute()
    U0, V0, w0, *_ = dense_algorithm1(X, k, lam, p)
    rel = np.linalg.norm(U @ V.T - U0 @ V0.T) / np.linalg.norm(U0 @ V0.T)
    assert rel < 1e-6
    np.testing.assert_allclose(res.eigenvalues, w0, rtol=1e-8)


def test_pipeline_float32_close_to_dense_float64(tmp_path):
    X = clustered_interactions(n_users=500, n_items=70, seed=8)
    lam, p = 5.0, 0.3
    k = _k_at_gap(X, lam, p)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=200)
    res = train(store, params=TrainParams(k=k, lam=lam, p=p, dtype="float32", block_size=32))
    assert res.U.dtype == np.float32 and res.V.dtype == np.float32
    U, V = res.U.compute().astype(np.float64), res.V.compute().astype(np.float64)
    U0, V0, *_ = dense_algorithm1(X, k, lam, p)
    rel = np.linalg.norm(U @ V.T - U0 @ V0.T) / np.linalg.norm(U0 @ V0.T)
    assert rel < 1e-3


def test_pipeline_on_distributed_workers_matches_threads(tmp_path, client):
    X = clustered_interactions(n_users=300, n_items=50, seed=9)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=70)
    params = TrainParams(k=4, lam=4.0, p=0.2, dtype="float64", block_size=12, seed=3)
    local = train(store, params=params)
    remote = train(store, params=params, client=client)
    np.testing.assert_allclose(remote.U.compute(), local.U.compute(), atol=1e-10)
    np.testing.assert_allclose(remote.eigenvalues, local.eigenvalues, rtol=1e-12)
    assert set(remote.stages) >= {"gram", "inverse", "student", "eigensolve"}


def test_estimator_fit_sets_fitted_attributes_and_recommends(tmp_path):
    X = clustered_interactions(n_users=300, n_items=50, seed=10)
    write_interactions(tmp_path / "x.zarr", X, shard_size=100)
    k = _k_at_gap(X, 4.0, 0.2)
    model = EDLAE(k=k, lam=4.0, p=0.2, dtype="float64", block_size=20, n_power_iter=6).fit(str(tmp_path / "x.zarr"))
    assert model.U_.shape == model.V_.shape == (50, k)
    ids, scores = model.recommend(X[:5], N=7)
    U0, V0, *_ = dense_algorithm1(X, k, 4.0, 0.2)
    dense_scores = X[:5].toarray() @ U0 @ V0.T
    dense_scores[X[:5].toarray() > 0] = -np.inf
    np.testing.assert_allclose(scores, -np.sort(-dense_scores, axis=1)[:, :7], rtol=1e-6)
    # recommend answers in original item ids (the store's default ids are 0 … n-1, i.e. the indices)
    assert np.isin(ids, model.item_ids_).all()
    idx = np.searchsorted(model.item_ids_, ids)
    assert not np.any(X[:5].toarray()[np.arange(5)[:, None], idx])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(k=0), "'k' parameter"),
        (dict(k=50), "less than the number of items"),
        (dict(lam=-1.0), "'lam' parameter"),
        (dict(p=1.0), "'p' parameter"),
        (dict(p=-0.1), "'p' parameter"),
        (dict(dtype="float16"), "'dtype' parameter"),
    ],
)
def test_bad_parameters_are_refused_with_the_parameter_named(kwargs, fragment):
    with pytest.raises(ParameterError, match=fragment):
        TrainParams(**{"k": 5, **kwargs}).validate(n_items=50)


def test_item_without_interactions_and_zero_lambda_is_an_error(tmp_path):
    X = random_interactions(40, 12, 0.3, all_items=False).tolil()
    X[:, 5] = 0
    store = write_interactions(tmp_path / "x.zarr", X.tocsr(), shard_size=100)
    with pytest.raises(ModelFitError, match="no interactions.*lam = 0"):
        train(store, params=TrainParams(k=2, lam=0.0, p=0.2, block_size=5))


def test_problem_too_large_for_memory_is_refused_before_work():
    with pytest.raises(MemoryBudgetError, match="At most about .* items fit"):
        check_memory(200_000, TrainParams(k=100), total_bytes=16 * 2**30, n_workers=2, worker_bytes=8 * 2**30)
    assert check_memory(5_000, TrainParams(k=100), 16 * 2**30, 2, 8 * 2**30) > 0


def test_blocks_too_large_for_one_worker_are_refused_with_the_fix():
    params = TrainParams(k=10, block_size=8192)
    with pytest.raises(MemoryBudgetError, match="lower --block-size"):
        check_memory(20_000, params, total_bytes=64 * 2**30, n_workers=64, worker_bytes=2**30)


def test_training_work_is_spread_over_workers_and_blocks(tmp_path, client):
    from distributed import get_task_stream

    X = clustered_interactions(n_users=400, n_items=64, seed=12)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=50)
    with get_task_stream(client) as ts:
        train(store, params=TrainParams(k=4, lam=4.0, p=0.2, dtype="float64", block_size=16), client=client)
    workers = {t["worker"] for t in ts.data}
    prefixes = [t["key"][0].rsplit("-", 1)[0] if isinstance(t["key"], tuple) else t["key"] for t in ts.data]
    assert len(workers) == 2
    for stage in ("edlae-gram-part", "edlae-cholesky", "edlae-inverse"):
        assert sum(p.startswith(stage) for p in prefixes) > 4, stage

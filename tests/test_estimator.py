"""The EDLAE estimator: scikit-learn's protocol, fit on a matrix, load, and recommendations against numpy oracles."""

import dataclasses
import shutil
import subprocess
import sys

import fsspec
import numpy as np
import pytest
import scipy.sparse as sp

from edlae_dask.config import TrainParams
from edlae_dask.errors import ParameterError
from edlae_dask.io.interactions import write_interactions
from edlae_dask.model import EDLAE
from edlae_dask.scoring import score, top_n_scores

from conftest import clustered_interactions, recommendations

PARAMS = dict(k=4, lam=4.0, p=0.2, dtype="float64", block_size=16, n_power_iter=6)
ITEM_IDS = np.array([f"i{j:03d}" for j in range(40)])  # original ids that are not the indices


def _oracle_top_n(S, N):
    """Score descending, ties by the lower index: numpy's stable sort of −S."""
    idx = np.argsort(-S, axis=1, kind="stable")[:, :N]
    return idx, np.take_along_axis(S, idx, axis=1)


@pytest.fixture(scope="module")
def data():
    return clustered_interactions(n_users=300, n_items=40, seed=21)


@pytest.fixture(scope="module")
def model(data):
    return EDLAE(**PARAMS).fit(data, item_ids=ITEM_IDS)


# ----------------------------------------------------------------------------- scikit-learn's protocol


def test_get_params_are_trainparams_defaults_and_set_params_changes_them():
    m = EDLAE()
    assert m.get_params(deep=True) == m.get_params(deep=False) == dataclasses.asdict(TrainParams())
    assert m.set_params(k=7, lam=3.0) is m and (m.k, m.lam) == (7, 3.0)
    with pytest.raises(ParameterError, match="no parameter 'rank'"):
        m.set_params(rank=3)


def test_repr_shows_the_parameters_that_differ_from_the_defaults():
    assert repr(EDLAE()) == "EDLAE()"
    assert repr(EDLAE(k=200, lam=50.0, p=0.33)) == "EDLAE(k=200, lam=50.0, p=0.33)"


def test_sklearn_clone_copies_parameters_and_drops_fitted_state(model):
    base = pytest.importorskip("sklearn.base")
    c = base.clone(model)
    assert type(c) is EDLAE and c is not model and c.get_params() == model.get_params()
    assert not hasattr(c, "V_")


def test_importing_the_estimator_does_not_import_sklearn():
    code = "import sys, edlae_dask.model; assert 'sklearn' not in sys.modules, 'sklearn imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unfitted_model_refuses_to_recommend():
    with pytest.raises(ParameterError, match="not fitted"):
        EDLAE().recommend(sp.csr_matrix((1, 3)))


# ----------------------------------------------------------------------------- fit on a matrix


def test_fit_on_a_matrix_equals_fit_on_its_store_and_leaves_no_memory_store(tmp_path, data, model):
    store = write_interactions(tmp_path / "x.zarr", data, item_ids=ITEM_IDS)
    from_store = EDLAE(**PARAMS).fit(str(store.path))
    np.testing.assert_allclose(model.U_ @ model.V_.T, from_store.U_ @ from_store.V_.T, atol=1e-10)
    np.testing.assert_array_equal(model.item_ids_, ITEM_IDS)
    assert not [p for p in fsspec.filesystem("memory").ls("/") if "edlae-fit-" in p["name"]]


def test_fit_on_a_dense_ndarray_with_a_distributed_client(data, model, client):
    on_cluster = EDLAE(**PARAMS).fit(data.toarray(), client=client)
    np.testing.assert_allclose(on_cluster.U_ @ on_cluster.V_.T, model.U_ @ model.V_.T, atol=1e-10)
    np.testing.assert_array_equal(on_cluster.item_ids_, np.arange(40))


# ----------------------------------------------------------------------------- recommend


def test_recommend_returns_original_ids_with_seen_allowed_and_excluded_items_masked(data, model):
    rows = data[:12]
    allowed, denied = ITEM_IDS[::2], ["i004", "i010", "not-an-item"]
    ids, scores = model.recommend(rows, N=6, items=allowed, exclude=denied)
    S = rows.toarray() @ model.U_ @ model.V_.T
    S[rows.toarray() > 0] = -np.inf
    S[:, ~np.isin(ITEM_IDS, allowed)] = -np.inf
    S[:, np.isin(ITEM_IDS, denied)] = -np.inf
    idx, expected = _oracle_top_n(S, 6)
    np.testing.assert_array_equal(ids, ITEM_IDS[idx])
    np.testing.assert_allclose(scores, expected, rtol=1e-6)  # returned as float32, as the batch scorer stores them
    assert not np.isin(ids, denied).any() and np.isin(ids, allowed).all()


def test_recommend_equals_batch_scoring_top_n_scores(data, model):
    ids, scores = model.recommend(data, N=10)
    items, batch = top_n_scores(data, model.U_, model.V_, 10)
    np.testing.assert_array_equal(ids, ITEM_IDS[items])
    np.testing.assert_allclose(scores, batch, rtol=1e-6)


def test_load_reads_once_and_recommends_as_edlae_dask_score(tmp_path, data):
    store = write_interactions(tmp_path / "x.zarr", data, item_ids=ITEM_IDS, shard_size=64)
    EDLAE(**PARAMS).fit(str(store.path), out=tmp_path / "factors")
    score(tmp_path / "factors", store.path, tmp_path / "recs", top_n=10)
    loaded = EDLAE.load(tmp_path / "factors")
    assert loaded.get_params()["k"] == 4 and loaded.lam == 4.0 and loaded.p == 0.2
    assert isinstance(loaded.U_, np.ndarray) and isinstance(loaded.V_, np.ndarray)
    shutil.rmtree(tmp_path / "factors")  # serving never goes back to the store
    users, rec_ids, _ = recommendations(tmp_path / "recs")
    ids, _ = loaded.recommend(data, N=10)
    np.testing.assert_array_equal(users, np.arange(300))
    np.testing.assert_array_equal(ids, rec_ids)


def test_recommend_rejects_a_wrong_width_and_a_bad_N(model):
    with pytest.raises(ParameterError, match="model has 40 items"):
        model.recommend(sp.csr_matrix((2, 39)))
    with pytest.raises(ParameterError, match="N must be"):
        model.recommend(sp.csr_matrix((2, 40)), N=41)


# ----------------------------------------------------------------------------- recommend_ids


def test_recommend_ids_equals_recommend_on_the_same_rows_and_counts_unknown_ids(data, model):
    rows = data[:5]
    histories = {f"u{r}": list(ITEM_IDS[rows[r].indices]) + ["new-item"] * (r % 2) for r in range(5)}
    recs, unknown = model.recommend_ids(histories, N=8, exclude=["i001"])
    ids, scores = model.recommend(rows, N=8, exclude=["i001"])
    assert unknown == {f"u{r}": r % 2 for r in range(5)}
    for r in range(5):
        got_ids, got_scores = recs[f"u{r}"]
        np.testing.assert_array_equal(got_ids, ids[r])
        np.testing.assert_allclose(got_scores, scores[r], rtol=1e-12)


def test_recommend_ids_drops_the_minus_inf_padding(model):
    recs, unknown = model.recommend_ids({"a": ["i000", "i001"]}, N=5, items=["i000", "i001", "i002"])
    assert list(recs["a"][0]) == ["i002"] and unknown == {"a": 0}


# ----------------------------------------------------------------------------- similar_items


def test_similar_items_cosine_on_V(model):
    q = ["i003", "i017", "i030"]
    ids, scores = model.similar_items(q, N=5)
    Vn = model.V_ / np.linalg.norm(model.V_, axis=1)[:, None]
    qi = np.searchsorted(ITEM_IDS, q)
    S = Vn[qi] @ Vn.T
    S[np.arange(3), qi] = -np.inf
    idx, expected = _oracle_top_n(S, 5)
    np.testing.assert_array_equal(ids, ITEM_IDS[idx])
    np.testing.assert_allclose(scores, expected, rtol=1e-12)
    assert not (ids == np.array(q)[:, None]).any()


def test_similar_items_weights_are_columns_of_UVt(model):
    W = model.U_ @ model.V_.T
    ids, scores = model.similar_items(["i005"], N=4, method="weights")
    col = W[:, 5].copy()
    col[5] = -np.inf
    idx, expected = _oracle_top_n(col[None, :], 4)
    np.testing.assert_array_equal(ids, ITEM_IDS[idx])
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_similar_items_refuses_unknown_ids_and_methods(model):
    with pytest.raises(ParameterError, match="unknown to the model"):
        model.similar_items(["nope"])
    with pytest.raises(ParameterError, match="method"):
        model.similar_items(["i000"], method="dot")


def test_fit_on_a_matrix_can_publish_and_load_gives_the_same_recommendations(tmp_path, data, model):
    published = EDLAE(**PARAMS).fit(data, item_ids=ITEM_IDS, out=tmp_path / "factors")
    loaded = EDLAE.load(tmp_path / "factors", published.version_)
    np.testing.assert_array_equal(loaded.item_ids_, ITEM_IDS)
    ids, scores = loaded.recommend(data[:20], N=5)
    ref_ids, ref_scores = model.recommend(data[:20], N=5)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-10)
    assert not [p for p in fsspec.filesystem("memory").ls("/") if "edlae-fit-" in p["name"]]

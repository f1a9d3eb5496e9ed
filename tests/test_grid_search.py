"""dask-ml's GridSearchCV over EDLAE with the strong-generalization splitter and fold-in scorer.

The expected scores come from an independent path: the dense numpy oracle of Algorithm 1 (tests/oracle.py) on
the training rows, scored with numpy and a hand-written nDCG@100; the fold-in/target draw is split.py's rule
(the protocol's one definition, which the scorer must reuse).
"""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
from dask_ml.model_selection import GridSearchCV  # a dependency: a hard import, never a silent skip

from edlae_dask.errors import ParameterError
from edlae_dask.evaluation import evaluate, strong_generalization_split
from edlae_dask.evaluation.cv import StrongGeneralizationCV, fold_in_scorer
from edlae_dask.evaluation.split import fold_in_target
from edlae_dask.model import EDLAE

from conftest import clustered_interactions
from oracle import dense_algorithm1

K = 4
GRID = {"lam": [1.0, 30.0, 300.0], "p": [0.0, 0.5]}
SEED = 1
N_HELD, N_TEST = 60, 40


@pytest.fixture(scope="module")
def X():
    return clustered_interactions(n_users=400, n_items=60, seed=3)


def oracle_ndcg100(X, train, held, lam, p):
    """Mean nDCG@100 over held-out users, from the dense oracle and plain numpy."""
    Xt = X[train]
    items = np.flatnonzero(np.asarray((Xt != 0).sum(axis=0)).ravel() > 0)
    U, V, *_ = dense_algorithm1(Xt[:, items], K, lam, p)
    _, fold_in, targets = fold_in_target(X[held][:, items], SEED)
    F, T = fold_in.toarray(), targets.toarray() > 0
    S = (F @ U) @ V.T
    S[F != 0] = -np.inf
    out = []
    for s, t in zip(S, T):
        order = np.lexsort((np.arange(s.size), -s))[:100]  # score descending, ties by the lower item
        dcg = np.sum(t[order] / np.log2(np.arange(2, order.size + 2)))
        idcg = np.sum(1 / np.log2(np.arange(2, min(100, t.sum()) + 2)))
        out.append(dcg / idcg)
    return float(np.mean(out))


def points():
    return [{"lam": lam, "p": p} for lam in GRID["lam"] for p in GRID["p"]]


def search(**kw):
    return GridSearchCV(
        EDLAE(k=K, dtype="float64"), GRID, cv=StrongGeneralizationCV(n_heldout=N_HELD, n_test=N_TEST, seed=SEED),
        scoring=fold_in_scorer(seed=SEED), **kw)


def test_splitter_is_the_protocols_user_split_deterministic_and_picklable(X, tmp_path):
    from edlae_dask.io.interactions import write_interactions

    cv = StrongGeneralizationCV(n_splits=2, n_heldout=N_HELD, n_test=N_TEST, seed=SEED)
    folds = list(cv.split(X))
    assert cv.get_n_splits(X) == len(folds) == 2
    again = list(pickle.loads(pickle.dumps(cv)).split(X))
    for (tr, he), (tr2, he2) in zip(folds, again):
        np.testing.assert_array_equal(tr, tr2)
        np.testing.assert_array_equal(he, he2)
        assert tr.size == X.shape[0] - N_HELD - N_TEST and he.size == N_HELD
        assert np.intersect1d(tr, he).size == 0
    assert not np.array_equal(folds[0][1], folds[1][1])
    split = strong_generalization_split(write_interactions(tmp_path / "s.zarr", X), n_valid=N_HELD, n_test=N_TEST,
                                        seed=SEED)
    np.testing.assert_array_equal(folds[0][0], split.train_users)
    np.testing.assert_array_equal(folds[0][1], split.valid_users)
    # the scorer's fold-in/targets are the split's validation ones
    _, fold_in, targets = fold_in_target(X[split.valid_users][:, split.items], SEED)
    assert (fold_in != split.valid.fold_in).nnz == 0 and (targets != split.valid.targets).nnz == 0
    pickle.loads(pickle.dumps(fold_in_scorer(seed=SEED)))
    with pytest.raises(ParameterError):
        list(StrongGeneralizationCV(n_heldout=300, n_test=100).split(X))
    with pytest.raises(ParameterError):
        fold_in_scorer("ndcg@10")


def test_grid_search_matches_the_oracle_loop_and_evaluate(X, tmp_path):
    from edlae_dask.io.interactions import write_interactions

    gs = search(scheduler="threads").fit(X)
    train, held = next(StrongGeneralizationCV(n_heldout=N_HELD, n_test=N_TEST, seed=SEED).split(X))
    expected = np.array([oracle_ndcg100(X, train, held, **pt) for pt in points()])
    assert [dict(c) for c in gs.cv_results_["params"]] == points()
    np.testing.assert_allclose(gs.cv_results_["mean_test_score"], expected, atol=1e-6)
    assert gs.best_params_ == points()[int(np.argmax(expected))]
    assert isinstance(gs.best_estimator_, EDLAE) and gs.best_estimator_.lam == gs.best_params_["lam"]

    # edlae-dask evaluate's protocol on the same split (same seed and group sizes) chooses the same point
    store = write_interactions(tmp_path / "i.zarr", X)
    rep = evaluate(store, models=["edlae"], ks=[K], lams=GRID["lam"], ps=GRID["p"], n_valid=N_HELD,
                   n_test=N_TEST, seed=SEED, dtype="float64")
    best = rep.best("edlae", K)
    assert {"lam": best.lam, "p": best.p} == gs.best_params_
    np.testing.assert_allclose(best.valid["ndcg@100"].mean, gs.best_score_, atol=1e-6)


def test_scorer_needs_the_training_items(X):
    model = EDLAE(k=K, dtype="float64").fit(X[:300])
    assert model.item_counts_.shape == (X.shape[1],)
    assert np.isfinite(fold_in_scorer(seed=SEED)(model, X[300:]))
    del model.item_counts_
    with pytest.raises(ParameterError, match="item_counts_"):
        fold_in_scorer(seed=SEED)(model, X[300:])


def test_scorer_drops_items_unseen_in_training(X):
    # an item no training user has is dropped from the held-out rows, as split.py does
    Xz = sp.lil_matrix(X)
    train, held = next(StrongGeneralizationCV(n_heldout=N_HELD, n_test=N_TEST, seed=SEED).split(X))
    Xz[train, 0] = 0
    Xz = sp.csr_matrix(Xz)
    Xz.eliminate_zeros()
    model = EDLAE(k=K, dtype="float64").fit(Xz[train])
    assert model.item_counts_[0] == 0
    got = fold_in_scorer(seed=SEED)(model, Xz[held])
    np.testing.assert_allclose(got, oracle_ndcg100(Xz, train, held, lam=model.lam, p=model.p), atol=1e-6)


@pytest.mark.cluster
@pytest.mark.timeout(240)  # dask-ml retries a failed candidate forever: fail rather than hang
def test_grid_search_on_a_distributed_client(X, client):
    # candidate fits run as tasks on the workers; inside them EDLAE.fit uses threads, not the worker's client
    gs = search().fit(X)
    assert isinstance(gs.best_estimator_, EDLAE)
    train, held = next(StrongGeneralizationCV(n_heldout=N_HELD, n_test=N_TEST, seed=SEED).split(X))
    expected = np.array([oracle_ndcg100(X, train, held, **pt) for pt in points()])
    np.testing.assert_allclose(gs.cv_results_["mean_test_score"], expected, atol=1e-6)
    assert gs.best_params_ == points()[int(np.argmax(expected))]
    # a threaded search in this process while the client is the default one: concurrent fits must not undo
    # each other's scheduler setting (dask.config is process-wide; model._LOCAL_FITS serializes them)
    ref = search(scheduler="threads").fit(X)
    np.testing.assert_allclose(ref.cv_results_["mean_test_score"], expected, atol=1e-6)

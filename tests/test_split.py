"""The strong-generalization split against its definition (Liang et al. 2018)."""

import numpy as np
import pytest
import scipy.sparse as sp

from edlae_dask.errors import ParameterError
from edlae_dask.evaluation import strong_generalization_split
from edlae_dask.io.interactions import write_interactions

from conftest import random_interactions


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """300 users x 50 items; users have 2..15 items; items 45..49 are rare (one user each)."""
    rng = np.random.default_rng(7)
    rows, cols = [], []
    for u in range(300):
        n_u = rng.integers(2, 16)
        items = rng.choice(45, n_u, replace=False)
        rows += [u] * n_u
        cols += items.tolist()
    for j in range(45, 50):  # rare items: likely held-out-only for some seed
        rows.append(int(rng.integers(300)))
        cols.append(j)
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(300, 50))
    X.sum_duplicates()
    X.data[:] = 1.0
    store = write_interactions(tmp_path_factory.mktemp("split") / "x.zarr", X, shard_size=70)
    return store, X


def test_users_are_split_into_disjoint_groups_of_the_requested_sizes(data):
    store, _ = data
    s = strong_generalization_split(store, n_valid=40, n_test=0.2, seed=1)
    assert (s.valid_users.size, s.test_users.size, s.train_users.size) == (40, 60, 200)
    everyone = np.concatenate([s.train_users, s.valid_users, s.test_users])
    assert np.array_equal(np.sort(everyone), np.arange(300))  # disjoint and complete
    for a in (s.train_users, s.valid_users, s.test_users):
        assert np.all(np.diff(a) > 0)


def test_items_are_limited_to_those_seen_in_training(data):
    store, X = data
    for seed in range(4):
        s = strong_generalization_split(store, n_valid=50, n_test=50, seed=seed)
        seen = np.flatnonzero(np.asarray(X[s.train_users].sum(axis=0)).ravel() > 0)
        assert np.array_equal(s.items, seen)
        assert s.n_dropped_items == 50 - seen.size
        assert s.summary()["n_items_dropped_no_training_interactions"] == s.n_dropped_items
    # at least one seed drops a rare item (held-out users only)
    assert any(strong_generalization_split(store, n_valid=50, n_test=50, seed=sd).n_dropped_items > 0
               for sd in range(4))


def test_held_out_users_with_five_kept_items_are_split_80_20(data):
    store, X = data
    s = strong_generalization_split(store, n_valid=60, n_test=60, seed=3)
    for group, users in ((s.valid, s.valid_users), (s.test, s.test_users)):
        kept_rows = X[users][:, s.items]
        n_kept = np.diff(kept_rows.indptr)
        # >= 5-item rule: exactly the users with at least 5 kept items are evaluated
        assert np.array_equal(group.users, users[n_kept >= 5])
        assert group.n_skipped == int((n_kept < 5).sum()) > 0
        full = X[group.users][:, s.items].toarray() > 0
        f, t = group.fold_in.toarray() > 0, group.targets.toarray() > 0
        assert not np.any(f & t)                       # disjoint
        assert np.array_equal(f | t, full)             # together: the user's kept items
        n = full.sum(axis=1)
        assert np.array_equal(t.sum(axis=1), np.floor(0.2 * n).astype(int))  # 20 % targets (Liang: int(0.2 n))
        assert np.all(t.sum(axis=1) >= 1)


def test_split_is_determined_by_the_seed(data):
    store, _ = data
    a = strong_generalization_split(store, n_valid=50, n_test=50, seed=11)
    b = strong_generalization_split(store, n_valid=50, n_test=50, seed=11)
    c = strong_generalization_split(store, n_valid=50, n_test=50, seed=12)
    assert np.array_equal(a.test_users, b.test_users) and np.array_equal(a.items, b.items)
    assert (a.test.targets != b.test.targets).nnz == 0 and (a.valid.fold_in != b.valid.fold_in).nnz == 0
    assert not np.array_equal(a.test_users, c.test_users)


def test_targets_are_a_random_subset_not_the_first_items(data):
    store, _ = data
    s = strong_generalization_split(store, n_valid=100, n_test=100, seed=0)
    full = (s.test.fold_in + s.test.targets).tocsr()
    t = s.test.targets.tocsr()
    # if targets were the first (or last) items of each row, this would be always (or never) true
    first_is_target = [full[u].indices.min() in t[u].indices for u in range(full.shape[0])]
    assert 0 < np.mean(first_is_target) < 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_valid=150, n_test=150), "leave no training user"),
        (dict(n_valid=0), "'n_valid' parameter"),
        (dict(n_test=1.5), "'n_test' parameter"),
        (dict(min_items=1), "'min_items' parameter"),
        (dict(seed=-1), "'seed' parameter"),
    ],
)
def test_bad_split_parameters_are_rejected(data, kwargs, message):
    with pytest.raises(ParameterError, match=message):
        strong_generalization_split(data[0], **{"n_valid": 10, "n_test": 10, **kwargs})


def test_split_reads_held_out_rows_on_distributed_workers(data, client):
    store, _ = data
    a = strong_generalization_split(store, n_valid=30, n_test=30, seed=5)
    b = strong_generalization_split(store, n_valid=30, n_test=30, seed=5, client=client)
    assert np.array_equal(a.items, b.items)
    assert (a.test.fold_in != b.test.fold_in).nnz == 0 and (a.valid.targets != b.valid.targets).nnz == 0


def test_fractions_are_rounded_to_user_counts(tmp_path):
    X = random_interactions(80, 20, 0.3, seed=2)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=30)
    s = strong_generalization_split(store, n_valid=0.1, n_test=0.1, seed=0)
    assert s.valid_users.size == 8 and s.test_users.size == 8

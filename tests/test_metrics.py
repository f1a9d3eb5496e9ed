"""nDCG@k and Recall@k on hand-computed cases."""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from edlae_dask.evaluation.metrics import ndcg_at_k, recall_at_k, summarize, user_metrics
from edlae_dask.evaluation.scoring import rank_dense


def _targets(rows, n_items):
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [j for items in rows for j in items]
    return sp.csr_matrix((np.ones(len(c)), (r, c)), shape=(len(rows), n_items))


def test_ndcg_of_one_user_by_hand():
    # ranked 3, 1, 4, 0, 2; targets {1, 2}: hits at ranks 2 and 5
    ranked = np.array([[3, 1, 4, 0, 2]])
    T = _targets([[1, 2]], 5)
    dcg = 1 / math.log2(3) + 1 / math.log2(6)        # 0.63093 + 0.38685
    idcg = 1 / math.log2(2) + 1 / math.log2(3)       # 1 + 0.63093
    assert ndcg_at_k(ranked, T, 100)[0] == pytest.approx(dcg / idcg)  # 0.62405
    assert ndcg_at_k(ranked, T, 100)[0] == pytest.approx(0.624050, abs=1e-6)
    # at k = 2 only the hit at rank 2 counts, and the ideal has min(2, 2) = 2 hits
    assert ndcg_at_k(ranked, T, 2)[0] == pytest.approx((1 / math.log2(3)) / idcg)
    # perfect ranking: 1
    assert ndcg_at_k(np.array([[2, 1, 0]]), T, 100)[0] == pytest.approx(1.0)
    # no hit: 0
    assert ndcg_at_k(np.array([[0, 3, 4]]), T, 100)[0] == 0.0


def test_ndcg_ideal_is_truncated_at_k():
    # 3 targets, k = 2: a ranking with both top slots hits is perfect
    T = _targets([[0, 1, 2]], 6)
    assert ndcg_at_k(np.array([[1, 0, 5, 4]]), T, 2)[0] == pytest.approx(1.0)
    # at k = 4 the ideal has 3 hits: DCG = 1 + 1/log2(3), IDCG = 1 + 1/log2(3) + 1/2
    assert ndcg_at_k(np.array([[1, 0, 5, 4]]), T, 4)[0] == pytest.approx(
        (1 + 1 / math.log2(3)) / (1.5 + 1 / math.log2(3)))


def test_recall_divides_by_min_of_k_and_number_of_targets():
    n = 200
    # user 0: 30 targets = items 0..29; the top 20 holds 10 of them, the top 50 all 30
    ranked0 = list(range(10)) + list(range(100, 110)) + list(range(10, 30)) + list(range(110, 170))
    # user 1: 3 targets {7, 8, 9}, 2 of them in the top 20, all 3 in the top 50
    ranked1 = [7] + list(range(100, 118)) + [8] + list(range(120, 149)) + [9] + list(range(150, 200))
    ranked1 = ranked1[:100]
    ranked = np.array([ranked0[:100], ranked1])
    T = _targets([list(range(30)), [7, 8, 9]], n)
    np.testing.assert_allclose(recall_at_k(ranked, T, 20), [10 / 20, 2 / 3])
    np.testing.assert_allclose(recall_at_k(ranked, T, 50), [30 / 30, 3 / 3])
    cols = user_metrics(ranked, T)
    assert cols.shape == (2, 3)
    np.testing.assert_allclose(cols[:, 1:], [[0.5, 1.0], [2 / 3, 1.0]])


def test_padding_never_hits_and_users_without_targets_are_nan():
    T = _targets([[0], []], 4)
    ranked = np.array([[-1, 0, 1], [0, 1, 2]])
    np.testing.assert_allclose(recall_at_k(ranked, T, 2)[:1], [1.0])
    assert np.isnan(recall_at_k(ranked, T, 2)[1]) and np.isnan(ndcg_at_k(ranked, T, 100)[1])
    assert ndcg_at_k(ranked, T, 100)[0] == pytest.approx(1 / math.log2(3))


def test_summary_is_mean_and_standard_error_over_users():
    s = summarize([0.0, 1.0, 1.0, 0.0, np.nan])  # NaN: a user without targets, ignored
    assert s.n == 4 and s.mean == 0.5
    assert s.se == pytest.approx(np.std([0, 1, 1, 0], ddof=1) / 2)   # 0.288675
    assert s.se == pytest.approx(0.288675, abs=1e-6)


def test_ranking_excludes_fold_in_items_and_breaks_ties_by_item_index():
    S = np.array([[0.5, 0.9, 0.5, 0.1, 0.9]])
    fold_in = sp.csr_matrix(np.array([[0, 1, 0, 0, 0]]))
    ranked = rank_dense(S, fold_in, n_top=5)
    # item 1 (fold-in) goes last; ties 4 vs -, 0 vs 2 go to the smaller index
    assert ranked.tolist() == [[4, 0, 2, 3, 1]]

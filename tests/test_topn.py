"""Top-N selection (edlae_dask.topn): score descending, ties by the lower item index, in every entry point.

The oracle is a plain Python sort by (−score, index) of each row.
"""

from itertools import pairwise

import numpy as np
import pytest
import scipy.sparse as sp

from edlae_dask.scoring import top_n_scores
from edlae_dask.topn import empty_top_n, fill_exhausted, merge_block, top_n, top_n_candidates


def oracle(S, N, offset=0):
    """Each row's N best item indices: sorted by (−score, index)."""
    return np.array([[offset + j for j in sorted(range(len(row)), key=lambda j: (-row[j], j))[:N]]
                     for row in np.asarray(S).tolist()], dtype=np.int64).reshape(len(S), N)


def tied_scores(rng, n_rows, n, levels=4, neg_inf=0.0):
    """Integer-valued float scores in [0, levels): many ties; a fraction ``neg_inf`` of them −inf."""
    S = rng.integers(0, levels, size=(n_rows, n)).astype(np.float64)
    S[rng.random(S.shape) < neg_inf] = -np.inf
    return S


def streamed(S, N, widths, j0=0):
    """The streaming merge of S's columns in blocks of the given widths (ascending item order)."""
    best_s, best_i = empty_top_n(S.shape[0], N, S.dtype)
    a = 0
    for w in widths:
        merge_block(np.ascontiguousarray(S[:, a : a + w]), j0 + a, best_s, best_i)
        a += w
    assert a == S.shape[1]
    fill_exhausted(best_s, best_i, start=j0)
    return best_i, best_s


@pytest.mark.parametrize("N", [1, 3, 7, 20])
def test_top_n_breaks_ties_by_the_lower_index(N):
    S = tied_scores(np.random.default_rng(N), 30, 20)
    idx, _ = top_n(S, N)
    np.testing.assert_array_equal(idx, oracle(S, N))


def test_top_n_returns_the_scores_of_its_indices_in_the_blocks_dtype():
    S = tied_scores(np.random.default_rng(1), 10, 15).astype(np.float32)
    idx, val = top_n(S, 5)
    assert val.dtype == np.float32
    np.testing.assert_array_equal(val, np.take_along_axis(S, idx, axis=1))


@pytest.mark.parametrize("N", [1, 5, 12])
def test_top_n_ranks_neg_inf_entries_last_lowest_index_first(N):
    S = tied_scores(np.random.default_rng(2), 40, 12, levels=3, neg_inf=0.6)
    S[0] = -np.inf  # a row with no finite score
    idx, val = top_n(S, N)
    np.testing.assert_array_equal(idx, oracle(S, N))
    np.testing.assert_array_equal(val, np.take_along_axis(S, idx, axis=1))


def test_top_n_offset_shifts_the_indices_only():
    S = tied_scores(np.random.default_rng(3), 8, 10)
    idx, val = top_n(S, 4, offset=1000)
    np.testing.assert_array_equal(idx, oracle(S, 4, offset=1000))
    np.testing.assert_array_equal(val, top_n(S, 4)[1])


def test_top_n_rejects_more_places_than_columns():
    with pytest.raises(ValueError, match="N must be in"):
        top_n(np.zeros((2, 3)), 4)


@pytest.mark.parametrize("N", [1, 4, 25])
@pytest.mark.parametrize("widths", [[25], [1] * 25, [3, 7, 1, 10, 4], [9, 9, 7]])
def test_streaming_merge_of_ragged_blocks_equals_the_one_shot_rule(N, widths):
    S = tied_scores(np.random.default_rng(N + len(widths)), 30, 25, neg_inf=0.3)
    idx, val = streamed(S, N, widths)
    np.testing.assert_array_equal(idx, oracle(S, N))
    np.testing.assert_array_equal(val, np.take_along_axis(S, idx.astype(np.int64), axis=1))


def test_streaming_merge_fills_rows_short_of_finite_scores_with_their_neg_inf_items_from_the_first_block():
    S = tied_scores(np.random.default_rng(5), 20, 16, neg_inf=0.8)
    idx, _ = streamed(S, 10, [5, 6, 5], j0=300)
    np.testing.assert_array_equal(idx, oracle(S, 10, offset=300))


@pytest.mark.parametrize("N", [1, 6, 30])
def test_candidates_of_blocks_merged_in_any_order_give_the_top_n_of_all_blocks(N):
    rng = np.random.default_rng(N)
    S = tied_scores(rng, 25, 30, neg_inf=0.2)
    bounds = [0, 4, 11, 12, 23, 30]
    parts = [top_n(S[:, a:b], min(N, b - a), offset=a) for a, b in pairwise(bounds)]
    order = rng.permutation(len(parts))  # the lower index must win a tie across blocks wherever it sits
    items = np.concatenate([parts[p][0] for p in order], axis=1)
    scores = np.concatenate([parts[p][1] for p in order], axis=1)
    idx, val = top_n_candidates(items, scores, N)
    np.testing.assert_array_equal(idx, oracle(S, N))
    np.testing.assert_array_equal(val, np.take_along_axis(S, idx, axis=1))


def test_batch_scorer_follows_the_same_rule_on_tied_scores():
    rng = np.random.default_rng(7)
    n_items = 23
    U = rng.integers(-1, 2, size=(n_items, 2)).astype(np.float32)  # integer factors: many exactly equal scores
    V = rng.integers(-1, 2, size=(n_items, 2)).astype(np.float32)
    X = sp.random(17, n_items, density=0.2, random_state=7, format="csr")
    X.data[:] = 1
    S = (X @ U) @ V.T
    S[X.nonzero()] = -np.inf
    items, _ = top_n_scores(X, U, V, 9, item_block=5, user_batch=4)
    np.testing.assert_array_equal(items, oracle(S, 9))

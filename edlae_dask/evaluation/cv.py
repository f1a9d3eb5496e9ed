"""Strong generalization for scikit-learn / dask-ml model selection: a user splitter and a fold-in scorer.

What dask-ml is for in this package: tuning λ and p of :class:`~edlae_dask.model.EDLAE` on an in-memory
users × items matrix with ``dask_ml.model_selection.GridSearchCV``, one candidate fit per Dask task (on a
cluster's workers when a distributed client is the default)::

    from dask_ml.model_selection import GridSearchCV
    from edlae_dask import EDLAE
    from edlae_dask.evaluation.cv import StrongGeneralizationCV, fold_in_scorer

    cv = StrongGeneralizationCV(n_heldout=600, n_test=600, seed=0)
    search = GridSearchCV(EDLAE(k=100), {"lam": [10, 100], "p": [0.1, 0.3]}, cv=cv,
                          scoring=fold_in_scorer(seed=0))
    search.fit(X)                  # X: scipy.sparse, users × items
    search.best_params_, search.cv_results_["mean_test_score"]

The protocol is :mod:`~edlae_dask.evaluation.split`'s, reused, not re-implemented:

- :class:`StrongGeneralizationCV` yields ``(train_users, heldout_users)``: fold 0 with ``seed=s`` is the
  training and validation users of ``strong_generalization_split(store, n_valid=n_heldout, n_test=n_test,
  seed=s)`` (:func:`~edlae_dask.evaluation.split.user_groups`); fold i uses seed ``s + i`` (folds are
  independent draws, as in scikit-learn's ``ShuffleSplit``). Test users are in neither set of any fold: they
  stay untouched for the final report, as in ``edlae-dask evaluate``.
- :func:`fold_in_scorer` splits each held-out row into fold-in and targets with
  :func:`~edlae_dask.evaluation.split.fold_in_target` (the validation group's random stream of ``seed``),
  keeps the items seen in training (``EDLAE.item_counts_``), scores ``(x_foldin · U) · Vᵀ`` with fold-in items
  excluded and returns the mean of one metric of :mod:`~edlae_dask.evaluation.metrics`.

With the same ``seed``, ``n_heldout``/``n_test`` and ``min_items``/``target_fraction``, fold 0 scores exactly
the validation users, fold-ins and targets that :func:`~edlae_dask.evaluation.evaluate` chooses (λ, p) on, for
an interaction store holding the rows of ``X`` in the same order.

Differences from :class:`~edlae_dask.evaluation.Evaluator` to know: each candidate fit computes its own Gram
(the Evaluator shares one across the grid), and one candidate is one task holding the whole matrix and its
n × n matrices in one worker, so this suits matrices that fit a worker; ``GridSearchCV``'s ``refit=True``
retrains on every row of ``X`` (test users included); to keep test users unseen, pass ``refit=False`` (dask-ml
then has no ``best_params_``: the chosen point is ``cv_results_["rank_test_score"] == 1``) and train it on the
training users, or hold test users out of ``X``.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

from edlae_dask.errors import ParameterError
from edlae_dask.evaluation.metrics import METRICS, ndcg_at_k, recall_at_k
from edlae_dask.evaluation.split import fold_in_target, resolve_count, user_groups
from edlae_dask.topn import top_n

__all__ = ["StrongGeneralizationCV", "FoldInScorer", "fold_in_scorer"]


def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ParameterError(f"The {name!r} parameter must be in (0, 1). Got {value!r}.")
    return float(value)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ParameterError(f"The 'seed' parameter must be an int >= 0. Got {seed!r} instead.")
    return int(seed)


class StrongGeneralizationCV:
    """Cross-validation over users for strong generalization: held-out users are never trained on.

    A scikit-learn splitter (``split``, ``get_n_splits``) over the rows (users) of a users × items matrix.
    Plain attributes only: deterministic, picklable, safe to ship to workers.

    Parameters
    ----------
    n_splits : int, default=1
        Folds; fold ``i`` draws its users with seed ``seed + i`` (folds may share held-out users).
    n_heldout : int or float, default=0.1
        Held-out (validation) users per fold: a count (int >= 1) or a fraction of all users.
    n_test : int or float, default=0.1
        Test users of each fold's draw, left out of both sets (reserved for the final report), so that fold 0
        equals ``strong_generalization_split(..., n_valid=n_heldout, n_test=n_test, seed=seed)``.
    target_fraction : float, default=0.2
        Recorded for :func:`fold_in_scorer` (:meth:`scorer`); the splitter itself yields whole users.
    seed : int, default=0
    min_items : int, default=5
        Recorded for :meth:`scorer`: held-out users with fewer kept items are not evaluated.

    Examples
    --------
    >>> cv = StrongGeneralizationCV(n_heldout=20, n_test=20, seed=3)
    >>> train, held = next(cv.split(np.zeros((200, 1))))
    >>> len(train), len(held), len(np.intersect1d(train, held))
    (160, 20, 0)
    """

    def __init__(self, n_splits: int = 1, *, n_heldout=0.1, n_test=0.1, target_fraction: float = 0.2,
                 seed: int = 0, min_items: int = 5):
        if isinstance(n_splits, bool) or not isinstance(n_splits, numbers.Integral) or n_splits < 1:
            raise ParameterError(f"The 'n_splits' parameter must be an int >= 1. Got {n_splits!r} instead.")
        self.n_splits = int(n_splits)
        self.n_heldout = n_heldout
        self.n_test = n_test
        self.target_fraction = _check_fraction(target_fraction, "target_fraction")
        self.seed = _check_seed(seed)
        self.min_items = int(min_items)

    def __repr__(self) -> str:
        return (f"StrongGeneralizationCV(n_splits={self.n_splits}, n_heldout={self.n_heldout!r}, "
                f"n_test={self.n_test!r}, target_fraction={self.target_fraction}, seed={self.seed}, "
                f"min_items={self.min_items})")

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """The number of folds, ``n_splits`` (``X``, ``y``, ``groups`` are ignored, as in scikit-learn)."""
        return self.n_splits

    def split(self, X, y=None, groups=None):
        """Yield ``(train_users, heldout_users)``: sorted int64 row indices of ``X``, disjoint.

        Parameters
        ----------
        X : array-like or scipy.sparse matrix of shape (n_users, n_items)
            Only its number of rows is used.
        y, groups : None
            Ignored; there for scikit-learn's splitter convention.
        """
        n = int(X.shape[0])
        nv = resolve_count(self.n_heldout, n, "n_heldout")
        nt = resolve_count(self.n_test, n, "n_test")
        if nv + nt >= n:
            raise ParameterError(f"n_heldout + n_test = {nv} + {nt} leave no training user among {n} users; "
                                 "lower them")
        for i in range(self.n_splits):
            train, held, _test = user_groups(n, nv, nt, self.seed + i)
            yield train, held

    def scorer(self, metric: str = "ndcg@100") -> "FoldInScorer":
        """The :func:`fold_in_scorer` matching this splitter's fold 0 (same seed, fraction, ``min_items``)."""
        return FoldInScorer(metric, target_fraction=self.target_fraction, seed=self.seed, min_items=self.min_items)


class FoldInScorer:
    """``scorer(estimator, X_heldout, y=None) -> float``: the mean of a metric over held-out users.

    See :func:`fold_in_scorer`. A class, not a closure, so that it pickles to workers.
    """

    _METRICS = {name: (kind, k) for name, kind, k in METRICS}

    def __init__(self, metric: str = "ndcg@100", *, target_fraction: float = 0.2, seed: int = 0,
                 min_items: int = 5):
        if metric not in self._METRICS:
            raise ParameterError(f"The 'metric' parameter must be one of {', '.join(self._METRICS)}. "
                                 f"Got {metric!r} instead.")
        if isinstance(min_items, bool) or not isinstance(min_items, numbers.Integral) or min_items < 2:
            raise ParameterError(f"The 'min_items' parameter must be an int >= 2. Got {min_items!r}.")
        self.metric = metric
        self.target_fraction = _check_fraction(target_fraction, "target_fraction")
        self.seed = _check_seed(seed)
        self.min_items = int(min_items)

    def __repr__(self) -> str:
        return (f"fold_in_scorer(metric={self.metric!r}, target_fraction={self.target_fraction}, "
                f"seed={self.seed}, min_items={self.min_items})")

    def __call__(self, estimator, X, y=None) -> float:
        U, V = estimator._factors()  # numpy, read once (a fit with out= leaves them lazy on the store)
        counts = getattr(estimator, "item_counts_", None)
        if counts is None:
            raise ParameterError("the fold-in scorer needs the items seen in training (EDLAE.item_counts_), "
                                 "which a fit on a matrix sets; fit the estimator on a users × items matrix")
        X = sp.csr_matrix(X)
        if X.shape[1] != V.shape[0]:
            raise ParameterError(f"held-out rows have {X.shape[1]} items, the model {V.shape[0]}")
        items = np.flatnonzero(np.asarray(counts) > 0)
        keep, fold_in, targets = fold_in_target(X[:, items], self.seed, min_items=self.min_items,
                                                target_fraction=self.target_fraction)
        if fold_in.shape[0] == 0:
            return float("nan")
        kind, k = self._METRICS[self.metric]
        Uk, Vk = U[items].astype(np.float64), V[items].astype(np.float64)
        S = (fold_in @ Uk) @ Vk.T  # eq. 16-17 restricted to the kept items
        S[fold_in.nonzero()] = -np.inf  # fold-in items are not recommended
        ranked, _ = top_n(S, min(k, S.shape[1]))
        values = ndcg_at_k(ranked, targets, k) if kind == "ndcg" else recall_at_k(ranked, targets, k)
        return float(np.nanmean(values))


def fold_in_scorer(metric: str = "ndcg@100", *, target_fraction: float = 0.2, seed: int = 0,
                   min_items: int = 5) -> FoldInScorer:
    """A scikit-learn scorer of the strong-generalization protocol for :class:`~edlae_dask.model.EDLAE`.

    Parameters
    ----------
    metric : {"ndcg@100", "recall@20", "recall@50"}, default="ndcg@100"
    target_fraction : float, default=0.2
        Targets per evaluated user: ``max(1, floor(target_fraction · n_u))``.
    seed : int, default=0
        The split's seed: fold-ins and targets are the validation group's draw of
        :func:`~edlae_dask.evaluation.split.strong_generalization_split` with this seed.
    min_items : int, default=5
        Held-out users with fewer kept items are not evaluated.

    Returns
    -------
    FoldInScorer
        ``scorer(estimator, X_heldout, y=None) -> float``, the mean metric over the evaluated users (greater is
        better, as scikit-learn expects); NaN when no held-out user has ``min_items`` kept items.

    Notes
    -----
    ``X_heldout`` must hold the held-out users' rows in sorted user order (what
    :class:`StrongGeneralizationCV` yields and scikit-learn / dask-ml index), columns in the model's item
    order. Cost: nnz(fold-in)·k + n_heldout·n·k flops and an n_heldout × n score matrix in memory.
    """
    return FoldInScorer(metric, target_fraction=target_fraction, seed=seed, min_items=min_items)

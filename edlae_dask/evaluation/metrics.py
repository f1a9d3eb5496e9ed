"""Ranking metrics of the strong-generalization protocol: nDCG@k and Recall@k.

With binary relevance (Liang et al. 2018, the paper's Sec. 3.4), for a user with
target set T and ranked list r_1, r_2, … (fold-in items excluded):

    DCG@k    = Σ_{i=1..k} [r_i ∈ T] / log2(i + 1)
    nDCG@k   = DCG@k / Σ_{i=1..min(k, |T|)} 1 / log2(i + 1)
    Recall@k = |{r_1..r_k} ∩ T| / min(k, |T|)

Each metric is averaged over the evaluated users, with its standard error
``std(ddof=1) / sqrt(n_users)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from edlae_dask.errors import ParameterError

__all__ = ["METRICS", "MetricSummary", "hits", "ndcg_at_k", "recall_at_k", "user_metrics", "summarize"]

#: The metrics reported, as (name, function, k).
METRICS = (("ndcg@100", "ndcg", 100), ("recall@20", "recall", 20), ("recall@50", "recall", 50))


def hits(ranked: np.ndarray, targets: sp.csr_matrix) -> np.ndarray:
    """Boolean (n_users, N): whether the item at each rank is a target of that user.

    Parameters
    ----------
    ranked : ndarray of int, of shape (n_users, N)
        Item indices, best first (entries < 0 are padding and never hit).
    targets : scipy.sparse matrix of shape (n_users, n_items)
        Non-zero entries are the targets.
    """
    ranked = np.asarray(ranked)
    targets = sp.csr_matrix(targets)
    if ranked.ndim != 2 or ranked.shape[0] != targets.shape[0]:
        raise ParameterError(f"ranked must be (n_users, N) with n_users = {targets.shape[0]}; got shape {ranked.shape}")
    out = np.zeros(ranked.shape, dtype=bool)
    if ranked.size == 0:
        return out
    rows = np.repeat(np.arange(ranked.shape[0]), ranked.shape[1])
    cols = ranked.ravel()
    valid = cols >= 0
    looked = np.asarray(targets[rows[valid], cols[valid]]).ravel() != 0
    out.ravel()[np.flatnonzero(valid)] = looked
    return out


def _n_targets(targets) -> np.ndarray:
    return np.diff(sp.csr_matrix(targets).indptr)


def ndcg_at_k(ranked: np.ndarray, targets, k: int = 100) -> np.ndarray:
    """nDCG@k per user (binary relevance); NaN for a user without targets."""
    h = hits(ranked[:, :k], targets)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = h.astype(np.float64) @ discount[: h.shape[1]]
    cum = np.concatenate([[0.0], np.cumsum(discount)])
    idcg = cum[np.minimum(_n_targets(targets), k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)


def recall_at_k(ranked: np.ndarray, targets, k: int) -> np.ndarray:
    """Recall@k per user: hits in the top k / min(k, number of targets); NaN without targets."""
    n_hit = hits(ranked[:, :k], targets).sum(axis=1).astype(np.float64)
    denom = np.minimum(_n_targets(targets), k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, n_hit / np.where(denom > 0, denom, 1.0), np.nan)


def user_metrics(ranked: np.ndarray, targets) -> np.ndarray:
    """Per-user values of :data:`METRICS`, of shape (n_users, 3): nDCG@100, Recall@20, Recall@50."""
    cols = []
    for _, kind, k in METRICS:
        cols.append(ndcg_at_k(ranked, targets, k) if kind == "ndcg" else recall_at_k(ranked, targets, k))
    return np.stack(cols, axis=1) if cols else np.zeros((ranked.shape[0], 0))


@dataclass(frozen=True)
class MetricSummary:
    """Mean of a per-user metric and its standard error ``std(ddof=1)/sqrt(n)``."""

    mean: float
    se: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "se": self.se, "n": self.n}


def summarize(values) -> MetricSummary:
    """Mean and standard error over users (NaN entries — users without targets — are ignored)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        return MetricSummary(float("nan"), float("nan"), 0)
    se = float(np.std(v, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return MetricSummary(float(v.mean()), se, n)

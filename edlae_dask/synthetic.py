"""Synthetic implicit-feedback data with realistic skew, for the demo and benchmarks.

Item popularity follows a power law (Zipf exponent ``item_alpha``), user activity
a log-normal law, and users prefer items of a few latent "topics", so the data has
the low-rank co-occurrence structure the model is meant to find.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def make_interactions(n_users: int = 20_000, n_items: int = 5_000, *, mean_per_user: float = 30.0,
                      item_alpha: float = 0.9, n_topics: int = 50, topic_affinity: float = 0.7,
                      seed: int = 0) -> sp.csr_matrix:
    """Binary users x items CSR matrix with power-law popularity and topical users.

    Parameters
    ----------
    n_users, n_items : int
    mean_per_user : float, default=30
        Mean interactions per user (log-normal activity, at least 1).
    item_alpha : float, default=0.9
        Zipf exponent of item popularity.
    n_topics : int, default=50
        Items are split into this many topics; each user picks one.
    topic_affinity : float, default=0.7
        Share of a user's draws from their topic (the rest from global popularity).
    seed : int, default=0

    Returns
    -------
    X : scipy.sparse.csr_matrix of shape (n_users, n_items), float32, values 1
        Duplicates collapse, so users end up with slightly fewer items than drawn.
    """
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** item_alpha
    rng.shuffle(popularity)  # popular items spread over all topics and indices
    popularity /= popularity.sum()
    activity = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    activity = np.maximum(1, np.round(activity / activity.mean() * mean_per_user)).astype(np.int64)
    activity = np.minimum(activity, n_items // 2)
    rows = np.repeat(np.arange(n_users), activity)
    total = rows.size

    topic_of_item = rng.integers(0, n_topics, size=n_items)
    user_topic = rng.integers(0, n_topics, size=n_users)
    nonempty = np.unique(topic_of_item)
    if nonempty.size < n_topics:  # few items: users only pick topics that have items
        user_topic = nonempty[user_topic % nonempty.size]
    from_topic = rng.random(total) < topic_affinity
    cols = rng.choice(n_items, size=total, p=popularity)
    # topical draws: popularity-weighted within the user's topic
    order = np.argsort(topic_of_item, kind="stable")
    starts = np.searchsorted(topic_of_item[order], np.arange(n_topics + 1))
    cum = np.cumsum(popularity[order])
    t = user_topic[rows[from_topic]]
    lo = np.where(starts[t] > 0, cum[np.maximum(starts[t] - 1, 0)], 0.0)
    hi = cum[np.maximum(starts[t + 1] - 1, 0)]
    u = lo + rng.random(t.size) * (hi - lo)
    pos = np.clip(np.searchsorted(cum, u, side="right"), starts[t], np.maximum(starts[t + 1] - 1, starts[t]))
    cols[from_topic] = order[pos]
    X = sp.csr_matrix((np.ones(total, dtype=np.float32), (rows, cols)), shape=(n_users, n_items))
    X.sum_duplicates()
    X.data[:] = 1.0
    return X

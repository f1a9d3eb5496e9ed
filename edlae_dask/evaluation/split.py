"""Strong generalization split (Liang et al. 2018), as used by Steck & Garcia Garcia (2021), Sec. 3.4.

Definition (``strong_generalization_split``)::

    users   a seeded permutation of all users of the store: the first n_test are
            test users, the next n_valid validation users, the rest training users
            (the three sets are disjoint and cover every user)
    items   only items with at least one interaction of a training user are kept
            ("items limited to those seen in training"); the others are dropped
            from the model and from the evaluation, and held-out interactions on
            them are discarded before anything else
    held-out user with >= min_items (5) kept items:
            a seeded random subset of floor(target_fraction · n_u) items (at
            least one) is the target, the rest (80 %) the fold-in
    held-out user with fewer kept items: not evaluated (counted in the summary)

Models are trained on the training users' rows only; a held-out user's scores come
from their fold-in row, and fold-in items are excluded from the ranking.

This is the protocol of the public notebook of Liang et al. (``dawenl/vae_cf``):
``split_train_test_proportion`` draws ``int(0.2 · n_u)`` targets per user with at
least 5 items; users with fewer give their items to the fold-in and, having no
target, are not evaluated.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from edlae_dask.errors import ParameterError

__all__ = ["HeldOut", "Split", "fold_in_target", "resolve_count", "strong_generalization_split", "user_groups"]


@dataclass(frozen=True)
class HeldOut:
    """The evaluated held-out users of one group (validation or test).

    Attributes
    ----------
    users : ndarray of int64, of shape (n_eval,)
        Row indices into the interaction store, sorted.
    fold_in : scipy.sparse.csr_matrix of shape (n_eval, n_kept_items)
        The ~80 % of each user's kept items the model sees (stored values).
    targets : scipy.sparse.csr_matrix of shape (n_eval, n_kept_items)
        The ~20 % to be recovered (binary relevance).
    n_skipped : int
        Held-out users of this group with fewer than ``min_items`` kept items.
    """

    users: np.ndarray
    fold_in: sp.csr_matrix
    targets: sp.csr_matrix
    n_skipped: int

    @property
    def n_users(self) -> int:
        return int(self.users.shape[0])


@dataclass(frozen=True)
class Split:
    """A strong generalization split of an interaction store.

    Attributes
    ----------
    train_users : ndarray of int64
        Sorted row indices of the training users (the Gram is computed on these).
    valid_users, test_users : ndarray of int64
        Sorted row indices of every held-out user of each group (evaluated or not).
    items : ndarray of int64, of shape (n_kept_items,)
        Sorted column indices of the kept items: column j of every model and of
        ``fold_in`` / ``targets`` is store item ``items[j]``.
    valid, test : HeldOut
    n_users, n_items : int
        Shape of the store.
    seed : int
    min_items : int
    target_fraction : float
    popularity : ndarray of int64, of shape (n_kept_items,) or None
        Training users' interactions per kept item.
    """

    train_users: np.ndarray
    valid_users: np.ndarray
    test_users: np.ndarray
    items: np.ndarray
    valid: HeldOut
    test: HeldOut
    n_users: int
    n_items: int
    seed: int
    min_items: int
    target_fraction: float
    extra: dict = field(default_factory=dict, compare=False)
    #: Training users' interactions per kept item (int64, shape (n_kept_items,)): the popularity baseline's
    #: scores (:mod:`~edlae_dask.evaluation.popularity`); None for a split made without it.
    popularity: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def n_dropped_items(self) -> int:
        """Items without any training interaction (dropped from model and evaluation)."""
        return self.n_items - int(self.items.shape[0])

    def summary(self) -> dict:
        """Counts of the split, JSON-serialisable."""
        return {
            "seed": self.seed,
            "n_users": self.n_users,
            "n_train_users": int(self.train_users.size),
            "n_valid_users": int(self.valid_users.size),
            "n_test_users": int(self.test_users.size),
            "n_valid_evaluated": self.valid.n_users,
            "n_test_evaluated": self.test.n_users,
            "n_valid_skipped_lt_min_items": self.valid.n_skipped,
            "n_test_skipped_lt_min_items": self.test.n_skipped,
            "n_items": self.n_items,
            "n_items_kept": int(self.items.size),
            "n_items_dropped_no_training_interactions": self.n_dropped_items,
            "min_items": self.min_items,
            "target_fraction": self.target_fraction,
            "valid_fold_in_nnz": int(self.valid.fold_in.nnz),
            "valid_target_nnz": int(self.valid.targets.nnz),
            "test_fold_in_nnz": int(self.test.fold_in.nnz),
            "test_target_nnz": int(self.test.targets.nnz),
            **self.extra,
        }


def resolve_count(value, n_users: int, name: str) -> int:
    """A group size given as a count (int >= 1) or a fraction of all users (float in (0, 1))."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterError(f"The {name!r} parameter must be a count (int >= 1) or a fraction in (0, 1). "
                             f"Got {value!r}.")
    if isinstance(value, numbers.Integral) or (float(value).is_integer() and value >= 1):
        count = int(value)
    elif 0 < value < 1:
        count = int(round(float(value) * n_users))
    else:
        raise ParameterError(f"The {name!r} parameter must be a count (int >= 1) or a fraction in (0, 1). "
                             f"Got {value!r}.")
    if count < 1:
        raise ParameterError(f"The {name!r} parameter selects no user ({value!r} of {n_users} users); raise it.")
    return count


def _read_rows(store, users: np.ndarray, client) -> sp.csr_matrix:
    """Rows ``users`` (sorted) of the store, read shard by shard on the cluster (or threads)."""
    import dask

    offsets = np.asarray(store.shard_offsets)
    parts = []
    for s in range(store.n_shards):
        lo, hi = np.searchsorted(users, [offsets[s], offsets[s + 1]])
        if hi > lo:
            parts.append(dask.delayed(_shard_rows, pure=True)(store.location, s, users[lo:hi] - offsets[s]))
    if not parts:
        return sp.csr_matrix((0, store.n_items), dtype=np.float32)
    if client is not None:
        got = client.compute(parts, sync=True)
    else:
        got = dask.compute(*parts, scheduler="threads")
    return sp.vstack(list(got), format="csr", dtype=np.float32)


def _shard_rows(path, s: int, local: np.ndarray) -> sp.csr_matrix:
    from edlae_dask.io.interactions import read_shard

    return read_shard(path, s)[local]


def _fold_in_target(X: sp.csr_matrix, rng: np.random.Generator, min_items: int, target_fraction: float):
    """Split each row with >= min_items entries into fold-in and target; drop the other rows."""
    X = X.tocsr()
    X.sort_indices()
    n_u = np.diff(X.indptr)
    keep = n_u >= min_items
    X = X[np.flatnonzero(keep)]
    n_u = np.diff(X.indptr)
    n_target = np.maximum(1, np.floor(target_fraction * n_u + 1e-9).astype(np.int64))
    row = np.repeat(np.arange(X.shape[0]), n_u)
    keys = rng.random(X.nnz)  # one key per interaction, in (user, item) order: deterministic
    order = np.lexsort((keys, row))  # within each row, entries by key
    pos = np.empty(X.nnz, dtype=np.int64)
    pos[order] = np.arange(X.nnz) - X.indptr[row[order]]
    is_target = pos < n_target[row]
    coo = X.tocoo()
    shape = X.shape

    def part(mask, values):
        return sp.csr_matrix((values[mask], (coo.row[mask], coo.col[mask])), shape=shape, dtype=np.float32)

    fold_in = part(~is_target, coo.data)
    targets = part(is_target, np.ones_like(coo.data))
    return keep, fold_in, targets


def user_groups(n_users: int, n_valid: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted (train, valid, test) user indices of :func:`strong_generalization_split` for ``seed``.

    The one definition of the user permutation, shared with
    :class:`~edlae_dask.evaluation.cv.StrongGeneralizationCV` so that its first fold is
    this function's validation group (counts already resolved, ``n_valid + n_test < n_users``).
    """
    users_seq = np.random.SeedSequence(int(seed)).spawn(3)[0]
    perm = np.random.default_rng(users_seq).permutation(int(n_users))
    test_users = np.sort(perm[:n_test]).astype(np.int64)
    valid_users = np.sort(perm[n_test : n_test + n_valid]).astype(np.int64)
    train_users = np.sort(perm[n_test + n_valid :]).astype(np.int64)
    return train_users, valid_users, test_users


def fold_in_target(rows, seed: int, *, group: str = "valid", min_items: int = 5, target_fraction: float = 0.2):
    """The fold-in / target rule of :func:`strong_generalization_split`, for held-out rows given directly.

    Parameters
    ----------
    rows : scipy.sparse matrix of shape (n_heldout, n_kept_items)
        Held-out users' rows, in sorted user order, restricted to the kept items.
    seed : int
        The split's seed; with ``group`` it selects the same random stream as the split's group.
    group : {"valid", "test"}, default="valid"
    min_items, target_fraction
        As in :func:`strong_generalization_split`.

    Returns
    -------
    keep : ndarray of bool, of shape (n_heldout,)
        The evaluated rows (>= ``min_items`` entries).
    fold_in, targets : scipy.sparse.csr_matrix of shape (keep.sum(), n_kept_items)
    """
    seq = np.random.SeedSequence(int(seed)).spawn(3)[{"valid": 1, "test": 2}[group]]
    return _fold_in_target(sp.csr_matrix(rows, copy=True), np.random.default_rng(seq), min_items, target_fraction)


def strong_generalization_split(store, *, n_valid=0.1, n_test=0.1, seed: int = 0, min_items: int = 5,
                                target_fraction: float = 0.2, client=None) -> Split:
    """Split the users of an interaction store for strong generalization (Liang et al. 2018).

    Parameters
    ----------
    store : str or InteractionStore
    n_valid, n_test : int or float, default=0.1
        Held-out users per group: a count (int >= 1) or a fraction of all users.
    seed : int, default=0
        Seeds the user permutation and, independently per group, the fold-in /
        target draw. The same store and seed give the same split.
    min_items : int, default=5
        Held-out users with fewer kept items are not evaluated.
    target_fraction : float, default=0.2
        Targets per evaluated user: ``max(1, floor(target_fraction · n_u))``.
    client : distributed.Client, optional
        Where the held-out rows are read (one task per shard); threads otherwise.

    Returns
    -------
    Split

    Notes
    -----
    Reads only the held-out users' rows (one task per shard that holds any) and
    the store's ``item_counts``; the training rows are read later by the Gram.
    Memory on the client: the held-out rows as CSR.
    """
    from edlae_dask.io.interactions import InteractionStore, open_interactions

    store = store if isinstance(store, InteractionStore) else open_interactions(store)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ParameterError(f"The 'seed' parameter must be an int >= 0. Got {seed!r} instead.")
    if isinstance(min_items, bool) or not isinstance(min_items, numbers.Integral) or min_items < 2:
        raise ParameterError(f"The 'min_items' parameter must be an int >= 2 (one fold-in, one target). "
                             f"Got {min_items!r}.")
    if not isinstance(target_fraction, numbers.Real) or not 0 < target_fraction < 1:
        raise ParameterError(f"The 'target_fraction' parameter must be in (0, 1). Got {target_fraction!r}.")
    n = store.n_users
    nv, nt = resolve_count(n_valid, n, "n_valid"), resolve_count(n_test, n, "n_test")
    if nv + nt >= n:
        raise ParameterError(
            f"n_valid + n_test = {nv} + {nt} held-out users leave no training user among the store's {n} users; "
            "lower them"
        )
    train_users, valid_users, test_users = user_groups(n, nv, nt, seed)
    _, valid_seq, test_seq = np.random.SeedSequence(int(seed)).spawn(3)

    held = np.sort(np.concatenate([valid_users, test_users]))
    H = _read_rows(store, held, client)
    counts = store.item_counts() - np.bincount(H.indices, minlength=store.n_items)
    items = np.flatnonzero(counts > 0).astype(np.int64)
    if items.size == 0:
        raise ParameterError("the training users have no interactions; the store is too small for this split")
    in_valid = np.isin(held, valid_users)

    groups = {}
    for name, mask, seq, users in (("valid", in_valid, valid_seq, valid_users),
                                   ("test", ~in_valid, test_seq, test_users)):
        rows = H[np.flatnonzero(mask)][:, items]
        keep, fold_in, targets = _fold_in_target(rows, np.random.default_rng(seq), min_items, target_fraction)
        groups[name] = HeldOut(users=users[keep], fold_in=fold_in, targets=targets, n_skipped=int((~keep).sum()))
    return Split(
        train_users=train_users, valid_users=valid_users, test_users=test_users, items=items,
        valid=groups["valid"], test=groups["test"], n_users=n, n_items=store.n_items, seed=int(seed),
        min_items=int(min_items), target_fraction=float(target_fraction),
        extra={"store": store.path, "store_fingerprint": store.fingerprint}, popularity=counts[items].astype(np.int64),
    )

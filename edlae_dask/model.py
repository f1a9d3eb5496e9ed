"""The ``EDLAE`` estimator: scikit-learn's estimator protocol over ``pipeline.train``, and recommendations.

``fit`` runs :func:`edlae_dask.pipeline.train` (Algorithm 1 of Steck & Garcia Garcia
2021 on the dense or scalable path) on an interaction store or an in-memory users × items
matrix; the parameters and their defaults are those of :class:`edlae_dask.config.TrainParams`.
:meth:`EDLAE.load` opens a published factor store once for serving: :meth:`~EDLAE.recommend`,
:meth:`~EDLAE.recommend_ids` and :meth:`~EDLAE.similar_items` answer in original item ids.

The estimator follows scikit-learn's protocol (``get_params``/``set_params``, parameters
stored as given in ``__init__``, fitted attributes ending in ``_``) without importing
scikit-learn: ``sklearn.base.clone`` and grid-search tools work on it, and the package does
not need scikit-learn installed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Iterable, Mapping

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp

from edlae_dask.config import TrainParams
from edlae_dask.errors import ParameterError
from edlae_dask.linalg.graph import current_client
from edlae_dask.pipeline import train
from edlae_dask.scoring import top_n_scores
from edlae_dask.topn import top_n

log = logging.getLogger("edlae_dask.model")

_DEFAULT = TrainParams()

# Fits on Dask's threaded scheduler, one at a time per process. They choose that scheduler with dask.config,
# which is process-wide, not per thread: concurrent fits (grid-search candidates in the threads of one worker,
# or of a threaded search in a process whose default scheduler is a distributed client) would restore each
# other's setting mid-run and send part of a graph elsewhere ("Missing dependency"). Each fit already uses
# every core of its threaded scheduler, so little is lost. Reentrant: a matrix fit calls fit on its store.
_LOCAL_FITS = threading.RLock()


class EDLAE:
    """Low-rank Emphasized Denoising Linear Autoencoder, closed form (Algorithm 1).

    Parameters
    ----------
    k : int, default=100
        Rank of the factors U, V.
    lam : float, default=20.0
        λ ≥ 0, L2 penalty applied equally to all items (eq. 8).
    p : float, default=0.25
        Dropout probability of emphasized denoising, 0 ≤ p < 1; adds
        p/(1−p)·diag(XᵀX) to the penalty (eq. 8).
    dtype : {"float32", "float64"}, default="float32"
    block_size : int, optional
        Side of the square n x n blocks (default: 2,048, or 4,096 above 40,000 items).
    n_oversamples, n_power_iter : int, optional
        Randomized eigensolver settings; ``None`` takes the measured defaults of
        :func:`edlae_dask.linalg.randomized_eigh`. ``n_power_iter`` is the least number
        of passes under ``eig_tol``, the exact number with ``eig_tol=0``.
    eig_tol : float, default=2e-2
        Eigensolver convergence rule: stop when the sum of the top-k Ritz values changes
        by less than this (relative) between passes; 0 turns it off.
    max_power_iter : int, default=20
        Most eigensolver power iterations under ``eig_tol``.
    seed : int, default=0
        Seed of the eigensolver's random start: same seed, same factors.
    path : {"auto", "dense", "scalable"}, default="auto"
        ``dense`` is exact Algorithm 1 and holds two n x n matrices; ``scalable``
        (:mod:`edlae_dask.scalable`) restricts each item's teacher column to its
        ``neighbors`` strongest co-occurring items and never forms an n x n matrix;
        ``auto`` is dense when it fits the cluster's memory.
    neighbors : int, default=64
        K, neighbours per item on the scalable path (K = n − 1 is the dense teacher).
    neighbor_score : {"count", "cosine"}, default="count"
        How the scalable path ranks candidate neighbours.

    Attributes
    ----------
    U_, V_ : ndarray or dask array of shape (n_items, k)
        Scores of a user row x are ``(x @ U_) @ V_.T`` (eq. 16–17). numpy when fit
        without ``out``; lazily read from the published store otherwise.
    eigenvalues_ : ndarray of shape (k,)
    ritz_residuals_ : ndarray of shape (k,)
    item_ids_ : ndarray of shape (n_items,)
        Original item ids; :meth:`recommend` and :meth:`similar_items` answer in them.
    stages_ : dict
        Seconds and peak memory of each stage.
    version_ : str or None
        The published factor version when fit with ``out``.
    item_counts_ : ndarray of shape (n_items,)
        Training interactions per item; set by a fit on a matrix (the fold-in scorer of
        :mod:`edlae_dask.evaluation.cv` keeps only items seen in training).

    Examples
    --------
    >>> model = EDLAE(k=200, lam=50.0, p=0.33).fit("interactions.zarr")   # doctest: +SKIP
    >>> ids, scores = model.recommend(user_rows, N=20)                    # doctest: +SKIP
    >>> served = EDLAE.load("factors")        # U, V, item_ids read once   # doctest: +SKIP
    >>> recs, unknown = served.recommend_ids({"u1": ["i3", "i7"]}, N=20)   # doctest: +SKIP
    """

    # the defaults are TrainParams's (edlae_dask.config), named here so that the signature shows them
    def __init__(self, k: int = _DEFAULT.k, *, lam: float = _DEFAULT.lam, p: float = _DEFAULT.p,
                 dtype: str = _DEFAULT.dtype, block_size: int | None = _DEFAULT.block_size,
                 n_oversamples: int | None = _DEFAULT.n_oversamples, n_power_iter: int | None = _DEFAULT.n_power_iter,
                 eig_tol: float = _DEFAULT.eig_tol, max_power_iter: int = _DEFAULT.max_power_iter,
                 seed: int = _DEFAULT.seed, path: str = _DEFAULT.path, neighbors: int = _DEFAULT.neighbors,
                 neighbor_score: str = _DEFAULT.neighbor_score):
        self.k = k
        self.lam = lam
        self.p = p
        self.dtype = dtype
        self.block_size = block_size
        self.n_oversamples = n_oversamples
        self.n_power_iter = n_power_iter
        self.eig_tol = eig_tol
        self.max_power_iter = max_power_iter
        self.seed = seed
        self.path = path
        self.neighbors = neighbors
        self.neighbor_score = neighbor_score

    # ------------------------------------------------------------------ scikit-learn's estimator protocol

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """The parameters, in TrainParams's order (the one place they are declared)."""
        return list(TrainParams.__dataclass_fields__)

    def get_params(self, deep: bool = True) -> dict:
        """The estimator's parameters, as ``{name: value}``.

        Parameters
        ----------
        deep : bool, default=True
            Accepted for scikit-learn's protocol; EDLAE holds no nested estimators, so
            it changes nothing.
        """
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params) -> "EDLAE":
        """Set parameters by name; returns ``self``. Values are checked by :meth:`fit`, as in scikit-learn."""
        names = self._get_param_names()
        for name, value in params.items():
            if name not in names:
                raise ParameterError(
                    f"EDLAE has no parameter {name!r}; the parameters are: {', '.join(names)}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        # like scikit-learn's default repr: only the parameters that differ from the defaults
        defaults = TrainParams()
        changed = [f"{n}={v!r}" for n, v in self.get_params().items() if v != getattr(defaults, n)]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):
        # scikit-learn >= 1.6 asks estimators for tags; only reached when scikit-learn is in use
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False), input_tags=InputTags(sparse=True))

    # ------------------------------------------------------------------ fit and load

    def fit(self, X, y=None, *, out=None, overwrite: bool = False, client=None, progress: bool = False,
            storage_options=None, item_ids=None) -> "EDLAE":
        """Train on an interaction store or a users × items matrix; publish to ``out`` if given.

        Parameters
        ----------
        X : str, os.PathLike, InteractionStore, scipy.sparse matrix or ndarray of shape (n_users, n_items)
            An interaction store (a local path or an fsspec URL such as ``s3://bucket/prefix``),
            or the interactions themselves.
        y : None
            Ignored; there for scikit-learn's ``fit(X, y)`` convention.
        out : str or os.PathLike, optional
            A factor store to publish a new version into.
        overwrite : bool, default=False
            Passed to :func:`edlae_dask.pipeline.train`.
        client : distributed.Client, optional
            Default: the current distributed client if there is one, else Dask's threaded scheduler.
        progress : bool, default=False
        storage_options : dict, optional
            fsspec options for the URLs of ``X`` and ``out``.
        item_ids : array-like of shape (n_items,), optional
            Original ids of a matrix's columns (default ``0 … n_items − 1``); not for a store,
            which holds its own.

        Returns
        -------
        self : EDLAE

        Notes
        -----
        A matrix goes through the same Dask graphs as a store: it is written to a
        temporary interaction store first (in memory, fsspec ``memory://``, when the
        work runs in this process; in a temporary local directory when a distributed
        client's workers, other processes, must read it), removed when ``fit`` returns.
        """
        params = TrainParams(**self.get_params()).validate()
        if client is None and _in_worker_task():
            # a fit that is itself one task of a Dask graph (e.g. a candidate of dask-ml's GridSearchCV) runs
            # its own graphs on threads in this worker: the worker's client would submit them to the cluster
            # and block this task's thread on them, and with every worker thread held by such fits none would
            # be left to run them (a deadlock)
            with _LOCAL_FITS, dask.config.set(scheduler="threads"):
                return self._fit(X, params, out=out, overwrite=overwrite, client=None, progress=progress,
                                 storage_options=storage_options, item_ids=item_ids)
        client = client if client is not None else current_client()
        if client is None:
            with _LOCAL_FITS:
                return self._fit(X, params, out=out, overwrite=overwrite, client=None, progress=progress,
                                 storage_options=storage_options, item_ids=item_ids)
        return self._fit(X, params, out=out, overwrite=overwrite, client=client, progress=progress,
                         storage_options=storage_options, item_ids=item_ids)

    def _fit(self, X, params, *, out, overwrite, client, progress, storage_options, item_ids) -> "EDLAE":
        if _is_matrix(X):
            return self._fit_matrix(X, params, item_ids=item_ids, out=out, overwrite=overwrite, client=client,
                                    progress=progress, storage_options=storage_options)
        if item_ids is not None:
            raise ParameterError("item_ids is for a matrix; an interaction store holds its own item ids")
        res = train(X, params=params, client=client, out=out, overwrite=overwrite, progress=progress,
                    storage_options=storage_options)
        if out is None:
            self.U_ = np.asarray(res.U.compute())
            self.V_ = np.asarray(res.V.compute())
        else:
            from edlae_dask.io.factors import open_factors

            f = open_factors(out, res.version, storage_options=storage_options)
            self.U_, self.V_ = f.U, f.V
        self.eigenvalues_ = res.eigenvalues
        self.ritz_residuals_ = res.ritz_residuals
        self.item_ids_ = np.asarray(res.item_ids)
        self.stages_ = res.stages
        self.version_ = res.version
        self.__dict__.pop("item_counts_", None)  # a matrix fit sets it again; a store's would be stale
        self._forget_cache()
        return self

    def _fit_matrix(self, X, params, *, item_ids, out, overwrite, client, progress, storage_options):
        X = sp.csr_matrix(X)
        # training interactions per item: the strong-generalization scorer keeps only the items seen in training
        # (edlae_dask.evaluation.cv.fold_in_scorer); set after the nested fit, which clears fitted state it owns
        counts = np.bincount(X.indices[X.data != 0], minlength=X.shape[1])
        fitted = self._fit_matrix_store(X, item_ids=item_ids, out=out, overwrite=overwrite, client=client,
                                        progress=progress, storage_options=storage_options)
        fitted.item_counts_ = counts
        return fitted

    def _fit_matrix_store(self, X, *, item_ids, out, overwrite, client, progress, storage_options):
        from edlae_dask.io.interactions import write_interactions

        if client is None:
            import fsspec

            root = f"edlae-fit-{uuid.uuid4().hex}"
            try:
                # the store object, not its URL: storage_options are out's, and must not reach memory://
                store = write_interactions(f"memory://{root}/interactions.zarr", X, item_ids=item_ids)
                return self.fit(store, out=out, overwrite=overwrite, client=None, progress=progress,
                                storage_options=storage_options)
            finally:
                fs = fsspec.filesystem("memory")
                if fs.exists(f"/{root}"):
                    fs.rm(f"/{root}", recursive=True)
        # a distributed client's workers may be other processes: they read a local temporary store
        with tempfile.TemporaryDirectory(prefix="edlae-fit-") as tmp:
            store = write_interactions(os.path.join(tmp, "interactions.zarr"), X, item_ids=item_ids)
            return self.fit(store, out=out, overwrite=overwrite, client=client, progress=progress,
                            storage_options=storage_options)

    @classmethod
    def load(cls, factors, version: str | None = None, *, storage_options=None) -> "EDLAE":
        """A fitted estimator from a published factor store, read once into memory.

        Parameters
        ----------
        factors : str, os.PathLike or Location
            A factor store (``edlae-dask train --out``), a local path or an fsspec URL.
        version : str, optional
            Default: the one ``LATEST`` names.
        storage_options : dict, optional

        Returns
        -------
        EDLAE
            Parameters from the version's metadata; ``U_``, ``V_`` (numpy), ``item_ids_``,
            ``eigenvalues_``, ``version_``, ``stages_`` set. Recommendation calls never read
            the store again.
        """
        from edlae_dask.io.factors import open_factors

        f = open_factors(factors, version, storage_options=storage_options)
        model = cls(**{n: f.meta[n] for n in cls._get_param_names() if n in f.meta})
        model.U_, model.V_ = f.load()
        model.item_ids_ = np.asarray(f.item_ids)
        model.eigenvalues_ = np.asarray(f.eigenvalues)
        model.ritz_residuals_ = None  # not stored per vector (the metadata has ritz_residual_max)
        model.stages_ = f.meta.get("stages", {})
        model.version_ = f.version
        return model

    # ------------------------------------------------------------------ recommendations

    def _check_fitted(self) -> None:
        if not hasattr(self, "V_"):
            raise ParameterError(
                "This EDLAE instance is not fitted yet. Call 'fit' with an interaction store or a matrix, "
                "or use EDLAE.load(FACTORS)."
            )

    def _forget_cache(self) -> None:
        self.__dict__.pop("_serving", None)

    def _factors(self) -> tuple[np.ndarray, np.ndarray]:
        """U and V as numpy, read once (``fit(out=…)`` leaves them lazy on the store)."""
        self._check_fitted()
        cached = self.__dict__.get("_serving")
        if cached is None or cached[0] is not self.V_:
            U, V = (a.compute() if isinstance(a, da.Array) else a for a in (self.U_, self.V_))
            cached = (self.V_, np.asarray(U), np.asarray(V))
            self.__dict__["_serving"] = cached
        return cached[1], cached[2]

    def _item_index(self) -> dict:
        """Original item id → index into ``item_ids_``, built once."""
        cached = self.__dict__.get("_index")
        if cached is None or cached[0] is not self.item_ids_:
            cached = (self.item_ids_, {v: i for i, v in enumerate(self.item_ids_.tolist())})
            self.__dict__["_index"] = cached
        return cached[1]

    def _indices(self, ids) -> tuple[np.ndarray, int]:
        """Indices of the known ``ids`` and how many were unknown."""
        index = self._item_index()
        ids = np.asarray(ids).ravel().tolist()
        found = [index[i] for i in ids if i in index]
        return np.asarray(found, dtype=np.int64), len(ids) - len(found)

    def _check_N(self, N: int, n_items: int) -> int:
        if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or not 1 <= N <= n_items:
            raise ParameterError(f"N must be an integer in [1, {n_items}] (the model's items), got {N!r}")
        return int(N)

    def recommend(self, user_items, N: int = 10, *, filter_seen: bool = True, items=None, exclude=None):
        """Top-``N`` original item ids and scores for each row of ``user_items``.

        Parameters
        ----------
        user_items : scipy.sparse matrix or ndarray of shape (n_users, n_items)
            Histories, one row per user, columns in the model's item order (``item_ids_``).
        N : int, default=10
            ``1 <= N <= n_items``.
        filter_seen : bool, default=True
            Items the user already has (stored entries of the row) are not recommended.
        items : array-like of item ids, optional
            Allow-list of original ids: only these are recommended. Ids the model does not know are ignored.
        exclude : array-like of item ids, optional
            Deny-list of original ids: never recommended. Ids the model does not know are ignored.

        Returns
        -------
        ids : ndarray of shape (n_users, N)
            Original item ids (from ``item_ids_``), best first; equal scores by the lower item
            index (:mod:`edlae_dask.topn`, the rule of ``edlae-dask score``).
        scores : ndarray of shape (n_users, N), float32
            ``(x·U)·Vᵀ``, computed in the factors' dtype and returned as float32, as the batch scorer
            stores them. Seen, excluded and not-allowed items score ``−inf``; a row with fewer
            than ``N`` eligible items ends in such ``−inf`` entries, which are not recommendations.

        Notes
        -----
        Runs the batch scorer's kernel (:func:`edlae_dask.scoring.top_n_scores`): scores are formed
        one block of users × items at a time (32 MiB), so memory is x·U and the running top-N, not a
        users × items matrix. Cost: 2·nnz·k + 2·n_users·n_items·k flops.
        """
        U, V = self._factors()
        n_items = U.shape[0]
        X = sp.csr_matrix(user_items)
        if X.ndim != 2 or X.shape[1] != n_items:
            raise ParameterError(f"user_items has {X.shape[1]} columns; the model has {n_items} items")
        N = self._check_N(N, n_items)
        idx, scores = self._top_n(X, U, V, N, filter_seen, items, exclude)
        return self.item_ids_[idx], scores

    def _top_n(self, X, U, V, N, filter_seen, items, exclude):
        # the batch scorer's own kernel (streaming over item blocks, the one top-N rule): `recommend` and
        # `edlae-dask score` give the same lists by construction, and no users × items block is held
        excluded = [] if exclude is None else [self._indices(exclude)[0]]
        if items is not None:
            allowed = np.zeros(U.shape[0], dtype=bool)
            allowed[self._indices(items)[0]] = True
            excluded.append(np.flatnonzero(~allowed))
        exclude_items = np.unique(np.concatenate(excluded)).astype(np.int64) if excluded else None
        return top_n_scores(X, U, V, N, exclude_seen=filter_seen, exclude_items=exclude_items)

    def recommend_ids(self, histories: Mapping, N: int = 10, *, filter_seen: bool = True, items=None,
                      exclude=None):
        """Top-``N`` for users given as ``{user: [original item ids]}``.

        Parameters
        ----------
        histories : mapping of user → iterable of original item ids
            Ids the model does not know (items new since training) are ignored and counted.
        N, filter_seen, items, exclude
            As in :meth:`recommend`.

        Returns
        -------
        recommendations : dict of user → (ids, scores)
            Original ids and scores, best first, as :meth:`recommend`, without the ``−inf``
            entries (so possibly fewer than ``N``).
        unknown : dict of user → int
            How many of the user's ids the model does not know.
        """
        U, V = self._factors()
        N = self._check_N(N, U.shape[0])
        users = list(histories)
        rows, unknown = [], {}
        for user in users:
            hist = histories[user]
            if isinstance(hist, (str, bytes)) or not isinstance(hist, Iterable):
                raise ParameterError(f"the history of user {user!r} must be a list of item ids, got {hist!r}")
            idx, unknown[user] = self._indices(list(hist))
            rows.append(np.unique(idx))
        if sum(unknown.values()):
            log.info("recommend_ids: %d item id(s) unknown to the model ignored", sum(unknown.values()))
        indptr = np.r_[0, np.cumsum([r.size for r in rows])]
        indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        X = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(len(users), U.shape[0]))
        idx, scores = self._top_n(X, U, V, N, filter_seen, items, exclude)
        out = {}
        for r, user in enumerate(users):
            keep = np.isfinite(scores[r])
            out[user] = (self.item_ids_[idx[r][keep]], scores[r][keep])
        return out, unknown

    def similar_items(self, item_ids, N: int = 10, *, method: str = "cosine"):
        """The ``N`` items most similar to each of ``item_ids`` (the item itself left out).

        Parameters
        ----------
        item_ids : array-like of original item ids, shape (q,)
            Every id must be one of ``item_ids_``.
        N : int, default=10
            ``1 <= N < n_items``.
        method : {"cosine", "weights"}, default="cosine"
            ``cosine``: cosine similarity of the items' rows of V (the item embeddings).
            ``weights``: the model's own item–item weights W = U·Vᵀ; item j's neighbours are
            the items i with the largest ``W[i, j]``, the column of W: how much having item i
            adds to j's score.

        Returns
        -------
        ids : ndarray of shape (q, N)
            Original item ids, best first, ties by the lower item index (:mod:`edlae_dask.topn`).
        scores : ndarray of shape (q, N)
        """
        U, V = self._factors()
        n_items = U.shape[0]
        if method not in ("cosine", "weights"):
            raise ParameterError(f"method must be 'cosine' or 'weights', got {method!r}")
        N = self._check_N(N, n_items - 1)
        query = np.asarray(item_ids).ravel()
        index = self._item_index()
        missing = [i for i in query.tolist() if i not in index]
        if missing:
            raise ParameterError(f"item id(s) unknown to the model: {missing[:5]}{' …' if len(missing) > 5 else ''}")
        q = np.asarray([index[i] for i in query.tolist()], dtype=np.int64)
        if method == "cosine":
            norms = np.linalg.norm(V, axis=1)
            Vn = V / np.where(norms > 0, norms, 1)[:, None]  # an all-zero row has cosine 0 with everything
            S = Vn[q] @ Vn.T
        else:
            S = (U @ V[q].T).T  # S[r, i] = W[i, q_r]
        S[np.arange(q.size), q] = -np.inf
        idx, scores = top_n(S, N)
        return self.item_ids_[idx], scores


def _in_worker_task() -> bool:
    """Whether this code runs inside a task on a ``distributed`` worker."""
    try:
        from distributed import get_worker
    except ImportError:
        return False
    try:
        get_worker()
    except ValueError:
        return False
    return True


def _is_matrix(X) -> bool:
    """An in-memory users × items matrix (as opposed to a store, its path or URL)."""
    return sp.issparse(X) or isinstance(X, np.ndarray)

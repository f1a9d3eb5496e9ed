"""The ``EDLAE`` estimator: scikit-learn style parameters, ``fit`` on an interaction store, ``recommend``.

``fit`` runs :func:`edlae_dask.pipeline.train` (Algorithm 1 of Steck & Garcia Garcia
2021 on the dense or scalable path); the parameters and their defaults are those of
:class:`edlae_dask.config.TrainParams`.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from edlae_dask.config import TrainParams
from edlae_dask.errors import ParameterError
from edlae_dask.linalg.graph import current_client
from edlae_dask.pipeline import train
from edlae_dask.topn import top_n

_DEFAULT = TrainParams()


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
        :func:`edlae_dask.linalg.randomized_eigh`.
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
    stages_ : dict
        Seconds and peak memory of each stage.
    version_ : str or None
        The published factor version when fit with ``out``.

    Examples
    --------
    >>> model = EDLAE(k=200, lam=50.0, p=0.33).fit("interactions.zarr")   # doctest: +SKIP
    >>> ids, scores = model.recommend(user_rows, N=20)                    # doctest: +SKIP
    """

    # the defaults are TrainParams's (edlae_dask.config), named here so that the signature shows them
    def __init__(self, k: int = _DEFAULT.k, *, lam: float = _DEFAULT.lam, p: float = _DEFAULT.p,
                 dtype: str = _DEFAULT.dtype, block_size: int | None = _DEFAULT.block_size,
                 n_oversamples: int | None = _DEFAULT.n_oversamples, n_power_iter: int | None = _DEFAULT.n_power_iter,
                 seed: int = _DEFAULT.seed, path: str = _DEFAULT.path, neighbors: int = _DEFAULT.neighbors,
                 neighbor_score: str = _DEFAULT.neighbor_score):
        self.k = k
        self.lam = lam
        self.p = p
        self.dtype = dtype
        self.block_size = block_size
        self.n_oversamples = n_oversamples
        self.n_power_iter = n_power_iter
        self.seed = seed
        self.path = path
        self.neighbors = neighbors
        self.neighbor_score = neighbor_score

    def get_params(self) -> dict:
        return {name: getattr(self, name) for name in TrainParams.__dataclass_fields__}

    def fit(self, store, *, out=None, overwrite: bool = False, client=None, progress: bool = False,
            storage_options=None) -> "EDLAE":
        """Train on an interaction store; publish to ``out`` if given. Returns ``self``.

        Runs on ``client``, else on the current distributed client if there is one,
        else on Dask's threaded scheduler. ``store`` and ``out`` may be fsspec URLs
        (``s3://bucket/prefix``), opened with ``storage_options``.
        """
        params = TrainParams(**self.get_params()).validate()
        client = client if client is not None else current_client()
        res = train(store, params=params, client=client, out=out, overwrite=overwrite, progress=progress,
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
        self.item_ids_ = res.item_ids
        self.stages_ = res.stages
        self.version_ = res.version
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "V_"):
            raise ParameterError("This EDLAE instance is not fitted yet. Call 'fit' with an interaction store first.")

    def recommend(self, user_items, N: int = 10, *, filter_seen: bool = True):
        """Top-``N`` item indices and scores for each row of ``user_items``.

        Parameters
        ----------
        user_items : scipy.sparse matrix or ndarray of shape (n_users, n_items)
        N : int, default=10
        filter_seen : bool, default=True
            Exclude items the user already has.

        Returns
        -------
        ids : ndarray of shape (n_users, N), int
            Indices into ``item_ids_``, best first; equal scores by the lower index (:mod:`edlae_dask.topn`).
        scores : ndarray of shape (n_users, N)
        """
        import scipy.sparse as sp

        self._check_fitted()
        U, V = (np.asarray(a) if not isinstance(a, da.Array) else a.compute() for a in (self.U_, self.V_))
        X = sp.csr_matrix(user_items)
        if X.shape[1] != U.shape[0]:
            raise ParameterError(f"user_items has {X.shape[1]} columns; the model has {U.shape[0]} items")
        if not 0 < N <= U.shape[0]:
            raise ParameterError(f"N must be in [1, {U.shape[0]}], got {N}")
        scores = np.asarray(X @ U) @ V.T
        if filter_seen:
            scores[X.nonzero()] = -np.inf
        return top_n(scores, N)

"""Randomized top-k eigensolver for a symmetric PSD operator given as ``Q -> M·Q``.

Subspace iteration with re-orthonormalization and Rayleigh–Ritz (Halko,
Martinsson & Tropp 2011, Algorithms 4.4 and 5.3), on dask arrays of shape
(n, l) that are chunked by rows only. ``M`` itself is never formed here: the
caller passes ``apply_m`` (e.g. ``M·Ω = P·Ω − D·(Ω + B·Ω)`` for EDLAE).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import scipy.linalg
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from edlae_dask.errors import ModelFitError, ParameterError
from edlae_dask.linalg import _kernels as K

__all__ = ["EighResult", "randomized_eigh", "default_n_oversamples", "DEFAULT_N_POWER_ITER"]

logger = logging.getLogger("edlae_dask.linalg")

# Defaults chosen with benchmarks/bench_linalg.py (results in benchmarks/results/linalg.json,
# 2026-11): the eq.-15 objective tr(M) − tr(VᵀMV) of EDLAE's M = BᵀPB (λ = 50, p = 0.25,
# float32), excess over the exact one, for k = 10 / 100 / 500:
#   ml-1m (2,810 items; λ_{k+1}/λ_k = 0.83 / 0.994 / 0.998):  1.6e-5 / 4.9e-4 / 1.0e-5
#   beibei (7,977 items; 0.85 / 0.990 / 0.997):               2.1e-5 / 3.3e-4 / 6.6e-5
# with l = 2k (n_oversamples = k) and 3 power iterations: within the 0.1 % target with a
# margin of 2x or more everywhere, at 5 applications of M to 2k columns (k = 500 on
# beibei: 17 s vs 67 s for scipy's exact subset eigh). Cheaper rules each miss somewhere:
# q = 2 with l = 2k gives 1.9e-3 / 1.35e-3 at k = 100; l = 1.5k with q = 3 gives 1.6e-3 at
# k = 100 on beibei; oversampling 10 is far off for large k (k = 500, q = 6: 5.4e-3).
# Oversampling costs memory (each persisted n × l block) as well as time, iterations only
# time, so we stop at l = 2k; raise n_power_iter for tighter eigenvectors.

#: Default number of power (subspace) iterations.
DEFAULT_N_POWER_ITER = 3


def default_n_oversamples(k: int) -> int:
    """Default oversampling for rank ``k``: ``max(10, k)``, i.e. a subspace of 2k columns.

    With :data:`DEFAULT_N_POWER_ITER` = 3 this kept EDLAE's objective within 0.1 %
    of exact for k = 10, 100 and 500 on two data sets in ``benchmarks/bench_linalg.py``
    (the worst case was 4.9e-4).
    """
    return max(10, int(k))


@dataclass
class EighResult:
    """Result of :func:`randomized_eigh`.

    Attributes
    ----------
    eigenvalues : ndarray of shape (k,)
        Ritz values, descending (float64).

    eigenvectors : dask.array.Array of shape (n, k)
        Orthonormal Ritz vectors, persisted, row-chunked like the input, in the
        requested dtype. Signs are fixed: the largest-magnitude entry of each
        column is positive.

    ritz_residuals : ndarray of shape (k,)
        ``‖M v − θ v‖₂ / θ`` per Ritz pair (float64).

    n_matvecs : int
        Applications of ``M`` to an (n, l) block (``n_power_iter + 2``).

    n_oversamples : int
        Oversampling actually used (``l − k``, after clipping ``l`` to ``n``).

    n_power_iter : int
        Power (subspace) iterations.

    seconds : float
        Wall time of the solve.
    """

    eigenvalues: np.ndarray
    eigenvectors: da.Array
    ritz_residuals: np.ndarray
    n_matvecs: int
    n_oversamples: int
    n_power_iter: int
    seconds: float


def _gaussian(n_cols: int, row_chunks: tuple[int, ...], dtype, seed: int) -> da.Array:
    name = "edlae-omega-" + tokenize(seed, row_chunks, n_cols, np.dtype(dtype).str)
    dsk = {}
    start = 0
    for i, c in enumerate(row_chunks):
        dsk[name, i, 0] = (K.gaussian_rows, seed, start, start + c, n_cols, np.dtype(dtype))
        start += c
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[])
    return da.Array(graph, name, chunks=(row_chunks, (n_cols,)), dtype=dtype)


def _orthonormalize(Y: da.Array) -> tuple[da.Array, np.ndarray]:
    """Q, R with Y = Q·R, Q orthonormal (persisted), R (l × l) upper triangular in float64.

    CholeskyQR2: R₁ = chol(YᵀY), Q₁ = Y·R₁⁻¹, then once more on Q₁. The l × l Grams
    are summed over the row blocks in float64, and the rest is one parallel BLAS-3
    product per block, where ``dask.array.linalg.tsqr`` ends each call with one serial
    QR of all blocks' R factors stacked (about 10× slower at l = 1,600 on 2,000-row
    blocks, measured here). When YᵀY is too ill-conditioned for Cholesky (rank-deficient
    Y), falls back to TSQR.
    """
    Q, R = Y, np.eye(Y.shape[1])
    for _ in range(2):
        Q64 = Q.astype(np.float64)
        G = np.asarray((Q64.T @ Q64).compute(), dtype=np.float64)
        try:
            Ri = scipy.linalg.cholesky(0.5 * (G + G.T), lower=False)
        except np.linalg.LinAlgError:
            Qt, Rt = dask.persist(*da.linalg.tsqr(Y))
            return Qt, np.asarray(Rt.compute(), dtype=np.float64)
        inv = scipy.linalg.solve_triangular(Ri, np.eye(Ri.shape[0]), lower=False)
        (Q,) = dask.persist(Q @ inv.astype(Y.dtype))
        R = Ri @ R
    return Q, R


def _validate(n, k, row_chunks, dtype, n_oversamples, n_power_iter, seed):
    def bad_int(x):
        return isinstance(x, bool) or not isinstance(x, (int, np.integer))

    if bad_int(n) or n < 1:
        raise ParameterError(f"The 'n' parameter of randomized_eigh must be a positive int. Got {n!r} instead.")
    if bad_int(k) or not 0 < k < n:
        raise ParameterError(
            f"The 'k' parameter of randomized_eigh must be an int with 0 < k < n = {n}. "
            f"Got {k!r} instead. (For k >= n use scipy.linalg.eigh on the dense matrix.)"
        )
    try:
        row_chunks = tuple(int(c) for c in row_chunks)
    except TypeError as exc:
        raise ParameterError(
            f"The 'row_chunks' parameter of randomized_eigh must be a tuple of ints. Got {row_chunks!r}."
        ) from exc
    if not row_chunks or any(c < 1 for c in row_chunks) or sum(row_chunks) != n:
        raise ParameterError(
            f"The 'row_chunks' parameter of randomized_eigh must be positive block sizes "
            f"summing to n = {n}. Got {row_chunks!r} (sum {sum(row_chunks)})."
        )
    dtype = K.check_float_dtype(dtype, "dtype")
    if n_oversamples is not None and (bad_int(n_oversamples) or n_oversamples < 0):
        raise ParameterError(
            f"The 'n_oversamples' parameter of randomized_eigh must be an int >= 0 or None. "
            f"Got {n_oversamples!r} instead."
        )
    if n_power_iter is not None and (bad_int(n_power_iter) or n_power_iter < 0):
        raise ParameterError(
            f"The 'n_power_iter' parameter of randomized_eigh must be an int >= 0 or None. "
            f"Got {n_power_iter!r} instead."
        )
    if bad_int(seed) or seed < 0:
        raise ParameterError(f"The 'seed' parameter of randomized_eigh must be an int >= 0. Got {seed!r} instead.")
    return row_chunks, dtype


def randomized_eigh(
    apply_m: Callable[[da.Array], da.Array],
    n: int,
    k: int,
    *,
    row_chunks: tuple[int, ...],
    dtype=np.float32,
    n_oversamples: int | None = None,
    n_power_iter: int | None = None,
    seed: int = 0,
    log: Callable[[str], object] | None = None,
) -> EighResult:
    """Top-``k`` eigenpairs of a symmetric positive semi-definite operator.

    Parameters
    ----------
    apply_m : callable
        ``apply_m(Q)`` returns the lazy product ``M·Q`` for a dask array ``Q`` of
        shape (n, l) with chunks ``(row_chunks, (l,))``; the result should have the
        same shape (it is rechunked to ``Q``'s chunks and cast to ``dtype`` if
        not). ``M`` must be symmetric PSD.

    n : int
        Order of ``M``.

    k : int
        Number of eigenpairs, ``0 < k < n``.

    row_chunks : tuple of int
        Row block sizes (summing to ``n``) of ``Q`` and of the returned vectors.

    dtype : {numpy.float32, numpy.float64}, default=numpy.float32
        Dtype of the (n, l) blocks. The small l × l eigenproblem is always solved
        in float64.

    n_oversamples : int or None, default=None
        Extra columns beyond ``k``; the subspace has ``l = min(k + n_oversamples, n)``
        columns. ``None`` uses :func:`default_n_oversamples`.

    n_power_iter : int or None, default=None
        Subspace iterations after the first range sketch (each re-orthonormalized
        by CholeskyQR2, :func:`_orthonormalize`). ``None`` uses :data:`DEFAULT_N_POWER_ITER`.

    seed : int, default=0
        Seed of the Gaussian test matrix. It is generated in fixed pages of rows,
        so the test matrix is the same for any ``row_chunks`` and any scheduler;
        the same seed and chunks give identical results on a given scheduler, and
        results that agree to rounding across schedulers and chunkings (BLAS
        threading and reduction order differ).

    log : callable or None, default=None
        Called with one line of progress per pass; ``None`` logs to
        ``logging.getLogger("edlae_dask.linalg")`` at INFO level.

    Returns
    -------
    EighResult
        Eigenvalues (descending), persisted eigenvectors (n, k) with fixed signs,
        relative Ritz residuals and counters.

    Raises
    ------
    ParameterError
        For k outside (0, n), row chunks that do not sum to n, a dtype other than
        float32/float64 or a negative n_oversamples / n_power_iter / seed.
    ModelFitError
        If the small projected matrix has non-finite entries (``M·Q`` produced
        NaN or inf).

    Notes
    -----
    Algorithm: ``Q = orth(M Ω)``, then ``n_power_iter`` times ``Q = orth(M Q)``,
    then Rayleigh–Ritz ``Z = M Q``, ``T = Qᵀ Z``, ``T = W Θ Wᵀ``, ``V = Q W_k``.
    Every pass re-orthonormalizes (dask's ``svd_compressed`` default
    ``iterator='power'`` does not, and diverged on EDLAE's M in
    shared/notes/measured-2026-11.md). Residuals come from ``Z W_k − V Θ_k``
    without another application of ``M``.

    Cost: ``n_power_iter + 2`` applications of ``M`` to an (n, l) block, plus
    ``O(n l²)`` flops per pass for CholeskyQR2 and the projections. Memory: two or three
    persisted (n, l) blocks (``Q``, ``M Q``) across the cluster, and O(l²) on the
    client. After each pass the sum of the top-k singular values of ``M Q``
    (free from the QR's R factor; it converges to the sum of the top-k
    eigenvalues) is logged, so convergence can be watched.

    References
    ----------
    N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with
    randomness: probabilistic algorithms for constructing approximate matrix
    decompositions", SIAM Review 53(2), 2011.
    """
    t0 = time.perf_counter()
    row_chunks, dtype = _validate(n, k, row_chunks, dtype, n_oversamples, n_power_iter, seed)
    if n_oversamples is None:
        n_oversamples = default_n_oversamples(k)
    if n_power_iter is None:
        n_power_iter = DEFAULT_N_POWER_ITER
    n_oversamples, n_power_iter, seed = int(n_oversamples), int(n_power_iter), int(seed)
    l = min(k + n_oversamples, n)
    emit = log if log is not None else logger.info
    q_chunks = (row_chunks, (l,))

    def apply(Q: da.Array) -> da.Array:
        Y = apply_m(Q)
        if not isinstance(Y, da.Array):
            Y = da.from_array(np.asarray(Y), chunks=q_chunks)
        if Y.shape != (n, l):
            raise ParameterError(f"apply_m(Q) must return shape {(n, l)} for Q of that shape. Got {Y.shape}.")
        if Y.dtype != dtype:
            Y = Y.astype(dtype)
        if Y.chunks != q_chunks:
            Y = Y.rechunk(q_chunks)
        return Y

    emit(
        f"randomized_eigh: n={n}, k={k}, l={l} (n_oversamples={l - k}), "
        f"n_power_iter={n_power_iter}, dtype={dtype}, {len(row_chunks)} row blocks"
    )
    n_matvecs = 0
    prev = None
    n_passes = n_power_iter + 1
    Q = _gaussian(l, row_chunks, dtype, seed)
    for it in range(n_passes):
        tp = time.perf_counter()
        (Y,) = dask.persist(apply(Q))
        Q, R = _orthonormalize(Y)
        del Y
        n_matvecs += 1
        if it == 0:  # σ(M·Ω) are not eigenvalue estimates (Ω is not orthonormal)
            emit(f"randomized_eigh: pass 1/{n_passes} (range sketch) [{time.perf_counter() - tp:.2f} s]")
            continue
        sv = scipy.linalg.svdvals(R)
        est = float(np.sum(sv[:k]))
        change = "" if prev is None else f", rel. change {abs(est - prev) / max(abs(est), 1e-300):.2e}"
        emit(
            f"randomized_eigh: pass {it + 1}/{n_passes} (power iteration): "
            f"sum of top-{k} singular values of M·Q = {est:.6g}{change} "
            f"[{time.perf_counter() - tp:.2f} s]"
        )
        prev = est

    # Rayleigh–Ritz on span(Q)
    tp = time.perf_counter()
    Z = apply(Q)
    n_matvecs += 1
    (Z,) = dask.persist(Z)
    T = np.asarray((Q.T @ Z).compute(), dtype=np.float64)
    if not np.isfinite(T).all():
        raise ModelFitError(
            "randomized_eigh: Qᵀ·M·Q has NaN or inf entries; apply_m produced non-finite "
            "values (check M, e.g. C = P⁻¹ for an ill-conditioned P)."
        )
    T = 0.5 * (T + T.T)
    theta, W = scipy.linalg.eigh(T, subset_by_index=(l - k, l - 1))
    theta, W = theta[::-1].copy(), W[:, ::-1].copy()
    Wk = W.astype(dtype)

    V0 = Q @ Wk
    resid = da.sqrt(((Z @ Wk - V0 * theta.astype(dtype)) ** 2).sum(axis=0))
    cands = V0.map_blocks(
        K.signed_absmax, chunks=((1,) * len(row_chunks), (k,)), dtype=dtype
    )
    res_norm, cand = dask.compute(resid, cands)
    del Z
    res_norm = np.asarray(res_norm, dtype=np.float64)
    best = np.argmax(np.abs(cand), axis=0)  # first block holding the column's largest |entry|
    signs = np.where(cand[best, np.arange(k)] < 0, -1.0, 1.0)
    (V,) = dask.persist(Q @ (Wk * signs.astype(dtype)))
    scale = np.maximum(np.abs(theta), np.finfo(np.float64).tiny * max(1.0, float(np.abs(theta).max())))
    residuals = res_norm / scale
    seconds = time.perf_counter() - t0
    emit(
        f"randomized_eigh: Rayleigh–Ritz: θ_1 = {theta[0]:.6g}, θ_{k} = {theta[-1]:.6g}, "
        f"sum = {theta.sum():.6g}; relative Ritz residuals ‖Mv − θv‖/θ: "
        f"max {residuals.max():.3e}, median {np.median(residuals):.3e} "
        f"[{time.perf_counter() - tp:.2f} s]; total {n_matvecs} applications of M, {seconds:.2f} s"
    )
    return EighResult(
        eigenvalues=theta,
        eigenvectors=V,
        ritz_residuals=residuals,
        n_matvecs=n_matvecs,
        n_oversamples=l - k,
        n_power_iter=n_power_iter,
        seconds=seconds,
    )

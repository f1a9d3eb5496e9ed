"""Randomized top-k eigensolvers for a symmetric PSD operator given as ``Q -> M·Q``.

Two methods, on dask arrays of shape (n, ·) that are chunked by rows only. ``M``
itself is never formed here: the caller passes ``apply_m`` (e.g.
``M·Ω = P·Ω − D·(Ω + B·Ω)`` for EDLAE).

- ``"subspace"``: subspace iteration with re-orthonormalization and Rayleigh–Ritz
  (Halko, Martinsson & Tropp 2011, Algorithms 4.4 and 5.3) on ``l`` columns.
- ``"krylov"``: randomized block Krylov (Musco & Musco 2015): the basis of
  ``[MΩ, M²Ω, …, M^{q+1}Ω]`` for a narrower block Ω, built block by block with
  full re-orthogonalization (block Lanczos), and Rayleigh–Ritz on all of it.
  For the same Rayleigh–Ritz dimension it applies ``M`` to ``q + 1`` times fewer
  columns.

Both run a fixed number of passes (``n_power_iter``), or, with ``tol``, at least that many
and then until the sum of the top-k Ritz values changes by less than ``tol`` (relatively)
between two passes, at most ``max_power_iter`` (:func:`randomized_eigh`, Notes, for what a
check costs; the measured defaults of training are in benchmarks/results/convergence.md).
"""

from __future__ import annotations

import functools
import logging
import math
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
from edlae_dask.linalg import graph

__all__ = [
    "EighResult",
    "randomized_eigh",
    "default_method",
    "default_n_oversamples",
    "default_n_power_iter",
    "DEFAULT_N_POWER_ITER",
    "DEFAULT_MAX_POWER_ITER",
    "EIGEN_METHODS",
]

logger = logging.getLogger("edlae_dask.linalg")

#: Methods of :func:`randomized_eigh`.
EIGEN_METHODS = ("subspace", "krylov")

# The defaults below were chosen by measurement on the MovieLens-20M-shaped M = BᵀPB against the exact
# eq.-15 objective (target: excess ≤ 1e-3); the runs behind each are in benchmarks/results/eigen-defaults.md.

#: Power iterations of the subspace method.
DEFAULT_N_POWER_ITER = 3

#: Most power iterations under a convergence rule (``tol``) when none is given.
DEFAULT_MAX_POWER_ITER = 20

#: Least oversampling of the subspace method (l = 2k alone fails at small k, where the top
#: eigenvalues are not separated).
SUBSPACE_MIN_OVERSAMPLES = 50

#: From this k on, block Krylov is the default method.
KRYLOV_MIN_K = 500

#: Default Krylov rule: q + 1 = 12 blocks of ceil(k / 4) columns, a Rayleigh–Ritz space of 3k.
KRYLOV_N_POWER_ITER = 11
KRYLOV_OVERSAMPLE_FRACTION = 2.0
#: ... but 10 blocks (2.5k) where 3k > n / 2 (k > n / 6): there the Rayleigh–Ritz step, a dense
#: float64 eigh of the 3k × 3k projected matrix on the client, outweighs the passes over M.
KRYLOV_LARGE_K_BLOCKS = 10


def default_method(k: int) -> str:
    """Default method for rank ``k``: ``"subspace"`` below :data:`KRYLOV_MIN_K` (500), else ``"krylov"``."""
    return "subspace" if k < KRYLOV_MIN_K else "krylov"


def _krylov_blocks(k: int, n: int | None) -> int:
    """Blocks of the default Krylov rule: 12, or :data:`KRYLOV_LARGE_K_BLOCKS` where 3k > n / 2."""
    if n is not None and 6 * int(k) > int(n):
        return KRYLOV_LARGE_K_BLOCKS
    return KRYLOV_N_POWER_ITER + 1


def default_n_oversamples(k: int, method: str | None = None, n: int | None = None) -> int:
    """Default oversampling p for rank ``k`` (Rayleigh–Ritz on ``k + p`` dimensions).

    Subspace method: ``max(50, k)`` (l = 2k from k = 50). Krylov: ``2k`` (a 3k-dimensional
    space of 12 blocks of ``ceil(k / 4)`` columns with :func:`default_n_power_iter`), or
    ``1.5k`` (10 blocks) when ``n`` is given and k > n / 6 (see :data:`KRYLOV_LARGE_K_BLOCKS`).
    """
    method = default_method(k) if method is None else method
    if method == "krylov":
        blocks = _krylov_blocks(k, n)
        if blocks == KRYLOV_N_POWER_ITER + 1:
            return max(10, math.ceil(KRYLOV_OVERSAMPLE_FRACTION * int(k)))
        return blocks * math.ceil(int(k) / 4) - int(k)
    return max(SUBSPACE_MIN_OVERSAMPLES, int(k))


def default_n_power_iter(k: int, method: str | None = None, n: int | None = None) -> int:
    """Default power iterations q for rank ``k``: 3 (subspace), 11 (Krylov: 12 blocks; 9 where k > n / 6)."""
    method = default_method(k) if method is None else method
    return _krylov_blocks(k, n) - 1 if method == "krylov" else DEFAULT_N_POWER_ITER


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
        Applications of ``M`` to an (n, block) panel: ``n_power_iter + 2`` for both
        methods (the block is l columns for ``"subspace"``, ``block_size`` for ``"krylov"``).

    n_oversamples : int
        Oversampling actually used: the Rayleigh–Ritz dimension minus k.

    n_power_iter : int
        Power iterations (``"krylov"``: Krylov blocks beyond the first).

    seconds : float
        Wall time of the solve.

    method : str
        ``"subspace"`` or ``"krylov"``.

    block_size : int
        Columns of each application of ``M``.

    n_matvec_columns : int
        Matrix–vector products in all: ``n_matvecs · block_size``.

    converged : bool or None
        Whether the convergence rule stopped the solve (the relative change of the top-k
        Ritz value sum fell below ``tol``); ``False`` if the pass cap stopped it; ``None``
        when no rule was asked for (a fixed number of passes).

    ritz_sum_change : float or None
        ``|s_q − s_{q−1}| / |s_q|`` of the top-k Ritz value sums s of the last two passes;
        None when fewer than two were formed (always, without a rule).
    """

    eigenvalues: np.ndarray
    eigenvectors: da.Array
    ritz_residuals: np.ndarray
    n_matvecs: int
    n_oversamples: int
    n_power_iter: int
    seconds: float
    method: str = "subspace"
    block_size: int = 0
    n_matvec_columns: int = 0
    converged: bool | None = None
    ritz_sum_change: float | None = None


# --------------------------------------------------------------------------- block kernels
# Plain numpy on one row block each. Grams are accumulated in float64 whatever the working
# dtype: CholeskyQR squares the condition number of the block.


def _k_gram(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    a64 = a.astype(np.float64)
    if b is None:
        return a64.T @ a64  # numpy calls syrk for this pattern: half the flops
    return a64.T @ b.astype(np.float64)


def _k_gram_basis(qs: list, w: np.ndarray) -> np.ndarray:
    w64 = w.astype(np.float64)
    return np.concatenate([q.astype(np.float64).T @ w64 for q in qs], axis=0)


def _k_gram_basis_working(qs: list, w: np.ndarray) -> np.ndarray:
    """As :func:`_k_gram_basis` in the working dtype: for the second Gram–Schmidt projection, whose
    coefficients are rounding-sized corrections (never part of T), float64 buys nothing and costs
    twice the flops and a float64 copy of the basis."""
    return np.concatenate([q.T @ w for q in qs], axis=0).astype(np.float64)


def _k_project_out(qs: list, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    out = np.array(w, copy=True)
    start = 0
    for q in qs:
        out -= q @ h[start : start + q.shape[1]].astype(w.dtype)
        start += q.shape[1]
    return out


def _k_residual_gram(qs: list, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    return _k_gram(_k_project_out(qs, w, h), None)


def _k_combine(*args: np.ndarray) -> np.ndarray:
    qs, c = args[:-1], args[-1]
    out = None
    start = 0
    for q in qs:
        part = q @ c[start : start + q.shape[1]].astype(q.dtype)
        out = part if out is None else out + part
        start += q.shape[1]
    return out


def _k_times_chain(y: np.ndarray, *mats: np.ndarray) -> np.ndarray:
    for m in mats:
        y = y @ m.astype(y.dtype)
    return y


def _k_gram_of_chain(y: np.ndarray, *mats: np.ndarray) -> np.ndarray:
    return _k_gram(_k_times_chain(y, *mats), None)


def _k_gram_pair(q: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``[qᵀq; qᵀz]`` in float64: the two l × l Grams of a generalized Rayleigh–Ritz step, one read of the block."""
    q64 = q.astype(np.float64)
    return np.concatenate([q64.T @ q64, q64.T @ z.astype(np.float64)], axis=0)


def _k_sum(*parts: np.ndarray) -> np.ndarray:
    out = np.array(parts[0], copy=True)
    for p in parts[1:]:
        out += p
    return out


# --------------------------------------------------------------------------- graphs


def _gaussian(n_cols: int, row_chunks: tuple[int, ...], dtype, seed: int) -> da.Array:
    name = "edlae-omega-" + tokenize(seed, row_chunks, n_cols, np.dtype(dtype).str)
    dsk = {}
    start = 0
    for i, c in enumerate(row_chunks):
        dsk[name, i, 0] = (K.gaussian_rows, seed, start, start + c, n_cols, np.dtype(dtype))
        start += c
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[])
    return da.Array(graph, name, chunks=(row_chunks, (n_cols,)), dtype=dtype)


def _small(mats) -> list:
    """Small dense matrices as one-chunk dask arrays: shipped once, not once per task."""
    return [da.from_array(np.ascontiguousarray(m), chunks=m.shape) for m in mats]


def _rowwise(func, panels: list[da.Array], extra: list[da.Array], n_cols: int, dtype, prefix: str,
             as_list: bool = False) -> da.Array:
    """One task per row block r: ``func(panels[r]…, extra…)`` → an (n, n_cols) array with the panels' row chunks.

    ``panels`` are (n, ·) arrays with one column chunk each and equal row chunks; with
    ``as_list`` all but the last are passed as one list (a Krylov basis).
    """
    row_chunks = panels[0].chunks[0]
    name = prefix + tokenize(func, *panels, *extra, n_cols, as_list)
    dsk = {}
    xkeys = [(x.name, 0, 0) for x in extra]
    for r in range(len(row_chunks)):
        pkeys = [(p.name, r, 0) for p in panels]
        args = ([pkeys[:-1], pkeys[-1]] if as_list else pkeys) + xkeys
        dsk[name, r, 0] = (func, *args)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[*panels, *extra])
    return da.Array(graph, name, chunks=(row_chunks, (n_cols,)), dtype=dtype)


def _rowsum(func, panels: list[da.Array], extra: list[da.Array], shape: tuple[int, int],
            as_list: bool = False) -> da.Array:
    """Σ over row blocks r of ``func(panels[r]…, extra…)`` (small float64 matrices), lazily: one chunk.

    The partial results are added in a binary tree, so that few of them (l × l each, up to
    hundreds of MB for large l) are alive at once; a dask matmul ``AᵀB`` over r row blocks
    would hold all r partial products of every output block before summing.
    """
    n_blocks = len(panels[0].chunks[0])
    token = tokenize(func, *panels, *extra, shape, as_list)
    name, part = "edlae-rowsum-" + token, "edlae-rowsum-part-" + token
    dsk = {}
    xkeys = [(x.name, 0, 0) for x in extra]
    keys = []
    for r in range(n_blocks):
        pkeys = [(p.name, r, 0) for p in panels]
        args = ([pkeys[:-1], pkeys[-1]] if as_list else pkeys) + xkeys
        dsk[part, 0, r] = (func, *args)
        keys.append((part, 0, r))
    level = 0
    while len(keys) > 2:
        level += 1
        nxt = []
        for j in range(0, len(keys), 2):
            if j + 1 < len(keys):
                dsk[part, level, j // 2] = (_k_sum, keys[j], keys[j + 1])
                nxt.append((part, level, j // 2))
            else:
                nxt.append(keys[j])
        keys = nxt
    dsk[name, 0, 0] = (_k_sum, *keys)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[*panels, *extra])
    return da.Array(graph, name, chunks=((shape[0],), (shape[1],)), dtype=np.float64)


def _reduce_rows(func, panels: list[da.Array], extra: list[da.Array], shape: tuple[int, int],
                 as_list: bool = False) -> np.ndarray:
    """:func:`_rowsum`, computed."""
    return np.asarray(_rowsum(func, panels, extra, shape, as_list).compute(), dtype=np.float64)


def _gram(A: da.Array, B: da.Array | None = None) -> np.ndarray:
    """AᵀB (AᵀA if B is None) in float64, of row-chunked arrays with one column chunk."""
    if B is None:
        return _reduce_rows(_gram_self, [A], [], (A.shape[1], A.shape[1]))
    return _reduce_rows(_k_gram, [A, B], [], (A.shape[1], B.shape[1]))


def _gram_self(a: np.ndarray) -> np.ndarray:
    return _k_gram(a, None)


def _k_cholesky_upper(G: np.ndarray) -> np.ndarray:
    """R (upper) with RᵀR = G; raises numpy.linalg.LinAlgError when G is not positive definite."""
    return scipy.linalg.cholesky(0.5 * (G + G.T), lower=False)


def _k_inverse_upper(R: np.ndarray, dtype) -> np.ndarray:
    return scipy.linalg.solve_triangular(R, np.eye(R.shape[0]), lower=False).astype(dtype)


def _on_one_chunk(func, *args: da.Array, dtype, **kwargs) -> da.Array:
    """``func`` applied to small one-chunk arrays, as a task of the graph (not on the client)."""
    return da.map_blocks(func, *args, dtype=dtype, meta=np.empty((0, 0), dtype=dtype), **kwargs)


def _cholesky_qr(Y: da.Array, twice: bool) -> tuple[da.Array, da.Array]:
    """Lazy Q, R of CholeskyQR2 (``twice``) or CholeskyQR: one graph, the l × l steps in its tasks."""
    l = Y.shape[1]
    inverses, R = [], None
    for _ in range(2 if twice else 1):
        if not inverses:
            G = _rowsum(_gram_self, [Y], [], (l, l))
        else:
            G = _rowsum(_k_gram_of_chain, [Y], inverses, (l, l))
        Ri = _on_one_chunk(_k_cholesky_upper, G, dtype=np.float64)
        inverses.append(_on_one_chunk(functools.partial(_k_inverse_upper, dtype=np.dtype(Y.dtype)), Ri,
                                      dtype=Y.dtype))
        R = Ri if R is None else _on_one_chunk(np.matmul, Ri, R, dtype=np.float64)
    Q = _rowwise(_k_times_chain, [Y], inverses, l, Y.dtype, "edlae-cholqr-")
    return Q, R


def _orthonormalize(Y: da.Array, twice: bool = True, also=()) -> tuple:
    """Q, R with Y = Q·R, Q orthonormal (persisted), R (l × l) upper triangular in float64.

    CholeskyQR2: R₁ = chol(YᵀY), Q₁ = Y·R₁⁻¹, R₂ = chol(Q₁ᵀQ₁), Q = Q₁·R₂⁻¹. The l × l Grams
    are summed over the row blocks in float64, and the rest is one parallel BLAS-3
    product per block, where ``dask.array.linalg.tsqr`` ends each call with one serial
    QR of all blocks' R factors stacked (much slower at large l: benchmarks/results/design-notes.md,
    "Eigensolver"). Q₁ is never stored: its Gram is taken block by block as it
    is formed, and Q = (Y·R₁⁻¹)·R₂⁻¹ is formed again from Y (the same rounding as
    CholeskyQR2, one (n, l) panel less in memory for 2·n·l² more flops). When YᵀY is too
    ill-conditioned for Cholesky (rank-deficient Y), falls back to TSQR.

    The whole of it, Y's own graph included when Y is lazy (e.g. ``M·Q`` and its projections),
    is one graph with the small Cholesky factors and inverses as tasks: one round trip to the
    scheduler instead of one per Gram. (On the 2-worker loopback cluster of Table 1 that made no
    measurable difference, the passes being compute-bound; it is for clusters with slower links.)

    With ``twice=False``, one CholeskyQR step (R = chol(YᵀY), Q = Y·R⁻¹): the same span,
    but Q is orthonormal only to about κ(Y)·eps of the working dtype — enough between
    two passes of subspace iteration, not for a Rayleigh–Ritz basis.

    ``also``: further small lazy arrays of the same graph (e.g. the projection coefficients),
    computed with it and returned after R as numpy arrays.
    """
    Q, R = _cholesky_qr(Y, twice)
    try:
        Q, R, *rest = graph.persist([Q, R, *also], wait=False)
        R, *rest = dask.compute(R, *rest)
    except np.linalg.LinAlgError:
        rest = dask.compute(*also)
        Qt, Rt = dask.persist(*da.linalg.tsqr(graph.persist(Y, wait=False)))
        Q, R = Qt, Rt.compute()
    return (Q, np.asarray(R, dtype=np.float64), *(np.asarray(x, dtype=np.float64) for x in rest))


def _validate(n, k, row_chunks, dtype, n_oversamples, n_power_iter, seed, method, tol=None, max_power_iter=None):
    def bad_int(x):
        return isinstance(x, bool) or not isinstance(x, (int, np.integer))

    def check_count(name, x):
        if x is not None and (bad_int(x) or x < 0):
            raise ParameterError(
                f"The {name!r} parameter of randomized_eigh must be an int >= 0 or None. Got {x!r} instead."
            )

    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer))
                            or not 0 <= tol < 1):
        raise ParameterError(
            f"The 'tol' parameter of randomized_eigh must be a float in [0, 1) or None (0 or None: a fixed "
            f"number of passes). Got {tol!r} instead."
        )
    check_count("max_power_iter", max_power_iter)
    if tol and max_power_iter is not None and n_power_iter is not None and n_power_iter > max_power_iter:
        raise ParameterError(
            f"The 'n_power_iter' parameter of randomized_eigh ({n_power_iter}, the least passes under 'tol') must "
            f"not exceed 'max_power_iter' ({max_power_iter}). Lower n_power_iter or raise max_power_iter."
        )

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
    check_count("n_oversamples", n_oversamples)
    check_count("n_power_iter", n_power_iter)
    if bad_int(seed) or seed < 0:
        raise ParameterError(f"The 'seed' parameter of randomized_eigh must be an int >= 0. Got {seed!r} instead.")
    if method is not None and method not in EIGEN_METHODS:
        raise ParameterError(
            f"The 'method' parameter of randomized_eigh must be one of {EIGEN_METHODS} or None "
            f"(None: 'krylov' from k = {KRYLOV_MIN_K}). Got {method!r} instead."
        )
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
    method: str | None = None,
    monitor: Callable[[dict], object] | None = None,
    tol: float | None = None,
    max_power_iter: int | None = None,
) -> EighResult:
    """Top-``k`` eigenpairs of a symmetric positive semi-definite operator.

    Parameters
    ----------
    apply_m : callable
        ``apply_m(Q)`` returns the lazy product ``M·Q`` for a dask array ``Q`` of
        shape (n, b) with chunks ``(row_chunks, (b,))`` (b is the method's block
        width); the result should have the same shape (it is rechunked to ``Q``'s
        chunks and cast to ``dtype`` if not). ``M`` must be symmetric PSD.

    n : int
        Order of ``M``.

    k : int
        Number of eigenpairs, ``0 < k < n``.

    row_chunks : tuple of int
        Row block sizes (summing to ``n``) of ``Q`` and of the returned vectors.

    dtype : {numpy.float32, numpy.float64}, default=numpy.float32
        Dtype of the (n, ·) panels. Grams and the small projected eigenproblem are
        always computed in float64.

    n_oversamples : int or None, default=None
        The Rayleigh–Ritz space has ``l = min(k + n_oversamples, n)`` dimensions.
        ``None`` uses :func:`default_n_oversamples`.

    n_power_iter : int or None, default=None
        ``"subspace"``: iterations after the first range sketch (each
        re-orthonormalized by CholeskyQR2, :func:`_orthonormalize`). ``"krylov"``:
        Krylov blocks beyond the first (the basis spans ``MΩ … M^{q+1}Ω``). ``None``
        uses :func:`default_n_power_iter`. Without ``tol`` exactly this many; with
        ``tol``, the least number of them (the rule is checked from there on).

    tol : float or None, default=None
        Convergence rule: after each pass from ``n_power_iter`` on, stop when the
        relative change of the sum of the top-k Ritz values between the last two
        passes, ``|s_q − s_{q−1}| / |s_q|``, is below ``tol``. ``None`` or 0: no rule,
        exactly ``n_power_iter`` passes (the solver as it was before the rule). See
        Notes for what the rule costs per pass.

    max_power_iter : int or None, default=None
        With ``tol``: the most power iterations (``"krylov"``: blocks beyond the first,
        so also the most memory, ``(max_power_iter + 1)·b`` columns of basis); the
        solve stops there converged or not (``EighResult.converged`` says which).
        ``None``: :data:`DEFAULT_MAX_POWER_ITER`. A default ``n_power_iter`` above it is
        lowered to it; a given one above it is an error.

    seed : int, default=0
        Seed of the Gaussian test matrix. It is generated in fixed pages of rows,
        so the test matrix is the same for any ``row_chunks`` and any scheduler;
        the same seed and chunks give identical results on a given scheduler, and
        results that agree to rounding across schedulers and chunkings (BLAS
        threading and reduction order differ).

    log : callable or None, default=None
        Called with one line of progress per pass; ``None`` logs to
        ``logging.getLogger("edlae_dask.linalg")`` at INFO level.

    method : {"subspace", "krylov"} or None, default=None
        ``None`` uses :func:`default_method` (Krylov from k = :data:`KRYLOV_MIN_K`).

    monitor : callable or None, default=None
        For benchmarks: called after every application of ``M`` whose result allows
        a Rayleigh–Ritz step, with a dict of ``n_matvecs``, ``n_matvec_columns``,
        ``dim`` (of the space), ``ritz_sum`` (sum of its top-k Ritz values, or None if
        ``dim < k``) and ``seconds`` (of the solve so far, the monitor's own work
        excluded). Costs one extra (l × l) Gram per pass for ``"subspace"``.

    Returns
    -------
    EighResult
        Eigenvalues (descending), persisted eigenvectors (n, k) with fixed signs,
        relative Ritz residuals and counters.

    Raises
    ------
    ParameterError
        For k outside (0, n), row chunks that do not sum to n, a dtype other than
        float32/float64, a negative n_oversamples / n_power_iter / max_power_iter / seed,
        a tol outside [0, 1), n_power_iter > max_power_iter under tol, or an unknown method.
    ModelFitError
        If the small projected matrix has non-finite entries (``M·Q`` produced
        NaN or inf).

    Notes
    -----
    ``"subspace"``: ``Q = orth(M Ω)``, then ``n_power_iter`` times ``Q = orth(M Q)``,
    then Rayleigh–Ritz ``Z = M Q``, ``T = Qᵀ Z``, ``T = W Θ Wᵀ``, ``V = Q W_k``.
    Every pass re-orthonormalizes (dask's ``svd_compressed`` default
    ``iterator='power'`` does not, and diverged on EDLAE's M in
    benchmarks/results/measured-2026-11.md). Residuals come from ``Z W_k − V Θ_k``
    without another application of ``M``. After each pass the sum of the top-k
    singular values of ``M Q`` (free from the QR's R factor) is logged.

    ``"krylov"``: ``Q₁ = orth(M Ω)`` with Ω of ``b = ceil(l / (q + 1))`` columns; then
    for j = 1 … q: ``W = M Q_j``, W minus its projection on ``Q₁ … Q_j`` (twice,
    block classical Gram–Schmidt with re-orthogonalization), ``Q_{j+1} = orth(W)``;
    and ``W = M Q_{q+1}``. The projections ``Q_iᵀ M Q_j`` are the entries of
    ``T = Qᵀ M Q`` on the whole basis (block tridiagonal up to rounding), so the
    Rayleigh–Ritz step needs no further application of ``M``. The residual of a Ritz
    pair (v = Q w) is ``(I − QQᵀ) M Q_{q+1} w_{q+1}`` (the basis is invariant up to
    its last block), whose norm comes from one b × b Gram — exact up to the basis'
    loss of orthogonality. ``(q + 2)·b`` columns pass through ``M`` against
    ``(q + 2)·l`` for the subspace method with the same l and q.

    The convergence rule (``tol``). ``"subspace"``: after each pass, the Ritz values of
    the current basis Q come from ``S = [QᵀQ; QᵀMQ]`` (one (2l × l) float64 sum over the
    row blocks of the panels Q and ``Z = M Q`` that the pass forms anyway, no further
    application of ``M``) by the generalized l × l problem ``QᵀMQ w = θ QᵀQ w`` on the
    client, so a basis orthonormalized by one CholeskyQR step suffices; the last
    basis' Rayleigh–Ritz step is the same generalized problem (V = Q·R_G⁻¹·W, R_G the
    Cholesky factor of QᵀQ), with the residuals from ``Z``. Per pass that is ``3 n l²``
    flops more than the fixed-pass solve and one more round trip to the scheduler,
    and ``Z`` is held as a panel (the fixed-pass solve fuses it into the next QR):
    two n × l panels at a time, as before. ``"krylov"``: the Ritz values of the basis
    so far come from the T it already assembles (no work on the panels); each check is
    a float64 eigenvalue problem of the basis' dimension on the client, from block
    ``n_power_iter`` on (the one before: eigenvalues only). From ``n_power_iter + 1``
    blocks on a check is the Rayleigh–Ritz step itself, reused when the solve stops
    there, so a solve that stops at its least passes pays one eigenvalues-only problem of
    ``n_power_iter·b`` dimensions more than the fixed-pass solve; the residual Gram of
    the last block is ``RᵀR`` of the next block's orthonormalization (computed anyway,
    unused at the end: b more columns of QR).
    Each pass past ``n_power_iter`` costs one more application of ``M`` (subspace: to
    l columns; Krylov: to b columns, and b more columns of basis held).

    Cost and memory: ``n_power_iter + 2`` applications of ``M`` to an (n, b) panel
    (b = l for ``"subspace"``), plus ``O(n l²)`` flops per pass for
    orthonormalization; the persisted panels are ``Q`` and ``M Q`` (subspace: 2 of
    n × l; Krylov: the n × l basis and 2–3 of n × b) across the cluster, O(l²) on the
    client.

    References
    ----------
    N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with
    randomness: probabilistic algorithms for constructing approximate matrix
    decompositions", SIAM Review 53(2), 2011.

    C. Musco and C. Musco, "Randomized block Krylov methods for stronger and faster
    approximate singular value decomposition", NeurIPS 2015.
    """
    t0 = time.perf_counter()
    row_chunks, dtype = _validate(n, k, row_chunks, dtype, n_oversamples, n_power_iter, seed, method, tol,
                                  max_power_iter)
    method = default_method(k) if method is None else method
    if n_oversamples is None:
        n_oversamples = default_n_oversamples(k, method, n)
    tol = float(tol) if tol else None
    q_max = None
    if tol is not None:
        q_max = DEFAULT_MAX_POWER_ITER if max_power_iter is None else int(max_power_iter)
    if n_power_iter is None:
        n_power_iter = default_n_power_iter(k, method, n)
        if q_max is not None:
            n_power_iter = min(n_power_iter, q_max)
    n_oversamples, n_power_iter, seed = int(n_oversamples), int(n_power_iter), int(seed)
    l = min(k + n_oversamples, n)
    emit = log if log is not None else logger.info
    solver = _Solver(apply_m, n, k, row_chunks, dtype, emit, monitor, t0)
    if method == "krylov":
        # b·(q + 1) >= l; a basis can have at most n columns
        b = math.ceil(l / (n_power_iter + 1))
        n_blocks = min(n_power_iter + 1, n // b)
        if n_blocks * b < k:  # too close to n for blocks: the subspace method clips l to n
            method = "subspace"
    emit(
        f"randomized_eigh: n={n}, k={k}, method={method}, "
        + (f"l={l} (n_oversamples={l - k})" if method == "subspace" else
           f"block {b} x {n_blocks} blocks = {b * n_blocks} dims (n_oversamples={b * n_blocks - k})")
        + f", n_power_iter={n_power_iter if method == 'subspace' else n_blocks - 1}"
        + ("" if tol is None else f" (at least; at most {q_max} until the top-{k} Ritz sum changes < {tol:g})")
        + f", dtype={dtype}, {len(row_chunks)} row blocks"
    )
    if method == "krylov":
        if tol is None:
            return solver.krylov(b, n_blocks, seed)
        return solver.krylov_converging(b, n_blocks, max(n_blocks, min(q_max + 1, n // b)), tol, seed)
    if tol is None:
        return solver.subspace(l, n_power_iter, seed)
    return solver.subspace_converging(l, n_power_iter, q_max, tol, seed)


class _Solver:
    """The two methods' passes and their common Rayleigh–Ritz step (one solve)."""

    def __init__(self, apply_m, n, k, row_chunks, dtype, emit, monitor, t0):
        self.apply_m, self.n, self.k, self.row_chunks, self.dtype = apply_m, n, k, row_chunks, dtype
        self.emit, self.monitor, self.t0 = emit, monitor, t0
        self.n_matvecs = 0
        self.monitor_seconds = 0.0

    def apply(self, Q: da.Array, persist: bool = True) -> da.Array:
        """M·Q, checked, in ``dtype`` and Q's chunks; persisted unless the caller fuses it into its graph."""
        n, b = Q.shape
        Y = self.apply_m(Q)
        if not isinstance(Y, da.Array):
            Y = da.from_array(np.asarray(Y), chunks=Q.chunks)
        if Y.shape != (n, b):
            raise ParameterError(f"apply_m(Q) must return shape {(n, b)} for Q of that shape. Got {Y.shape}.")
        if Y.dtype != self.dtype:
            Y = Y.astype(self.dtype)
        if Y.chunks != Q.chunks:
            Y = Y.rechunk(Q.chunks)
        self.n_matvecs += 1
        return graph.persist(Y, wait=False) if persist else Y

    def report(self, dim: int, cols: int, ritz: np.ndarray | None, extra_seconds: float) -> None:
        self.monitor_seconds += extra_seconds
        if self.monitor is None:
            return
        self.monitor(dict(
            n_matvecs=self.n_matvecs, n_matvec_columns=cols, dim=dim,
            ritz_sum=None if ritz is None else float(np.sum(ritz)),
            seconds=time.perf_counter() - self.t0 - self.monitor_seconds,
        ))

    @staticmethod
    def check_finite(T: np.ndarray) -> None:
        if not np.isfinite(T).all():
            raise ModelFitError(
                "randomized_eigh: Qᵀ·M·Q has NaN or inf entries; apply_m produced non-finite "
                "values (check M, e.g. C = P⁻¹ for an ill-conditioned P)."
            )

    def top_k(self, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.check_finite(T)
        T = 0.5 * (T + T.T)
        # numpy's eigh (LAPACK syevd, every pair), not scipy.linalg.eigh: scipy's LAPACK wrappers hold
        # the GIL, and on the client of an embedded LocalCluster that stops the scheduler's event loop
        # in the same process: at k = 5,000 (a 12,500² problem, ~12 min) the workers missed their
        # heartbeats and were restarted, losing every persisted block. syevd releases the GIL, and was
        # also faster than the subset driver (syevr, top third): benchmarks/results/eigen-defaults.md.
        theta, W = np.linalg.eigh(T)
        return theta[::-1][: self.k].copy(), W[:, ::-1][:, : self.k].copy()

    # ------------------------------------------------------------------ subspace iteration

    def subspace(self, l: int, n_power_iter: int, seed: int) -> EighResult:
        k, emit = self.k, self.emit
        n_passes = n_power_iter + 1
        prev = None
        Q = _gaussian(l, self.row_chunks, self.dtype, seed)
        tp = time.perf_counter()
        Q, _ = _orthonormalize(self.apply(Q, persist=False), twice=n_passes == 1 or self.monitor is not None)
        emit(f"randomized_eigh: pass 1/{n_passes} (range sketch) [{time.perf_counter() - tp:.2f} s]")
        # Z = M·Q is both the next pass's Y and, after the last pass, the Rayleigh–Ritz product
        for it in range(1, n_passes + 1):
            tp = time.perf_counter()
            # kept for the Rayleigh–Ritz step (and a monitor's); else fused into the next CholeskyQR's graph
            Z = self.apply(Q, persist=it == n_passes or self.monitor is not None)
            if self.monitor is not None and it < n_passes:
                tm = time.perf_counter()
                theta, _ = self.top_k(_gram(Q, Z))
                self.report(l, self.n_matvecs * l, theta, time.perf_counter() - tm)
            if it == n_passes:
                break
            Q = None  # release the old basis before the new one is formed: two (n, l) panels, not three
            # one CholeskyQR step is enough for the span between passes; the Rayleigh–Ritz
            # basis (the last one) needs both (a monitored run measures every pass's basis)
            Q, R = _orthonormalize(Z, twice=it == n_passes - 1 or self.monitor is not None)
            Z = None
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
        theta, W = self.top_k(_gram(Q, Z))
        Wk = W.astype(self.dtype)
        V0 = Q @ Wk
        resid = da.sqrt(((Z @ Wk - V0 * theta.astype(self.dtype)) ** 2).sum(axis=0))
        res_norm = np.asarray(resid.compute(), dtype=np.float64)
        del Z
        V = self.finish(V0, theta, res_norm, tp)
        self.report(l, self.n_matvecs * l, theta, 0.0)
        return self.result(theta, V, res_norm, l - k, n_power_iter, "subspace", l)

    def ritz_generalized(self, S: np.ndarray, l: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k θ and coefficients C (V = Q·C, VᵀV = I) of ``QᵀMQ w = θ QᵀQ w`` from ``S = [QᵀQ; QᵀMQ]``."""
        self.check_finite(S)
        try:
            Rinv = _k_inverse_upper(_k_cholesky_upper(S[:l]), np.float64)
        except np.linalg.LinAlgError:  # a rank-deficient basis: take it as orthonormal (TSQR made it so)
            Rinv = np.eye(l)
        theta, W = self.top_k(Rinv.T @ S[l:] @ Rinv)
        return theta, Rinv @ W

    def subspace_converging(self, l: int, q_min: int, q_max: int, tol: float, seed: int) -> EighResult:
        """Subspace iteration under the convergence rule (see :func:`randomized_eigh`, Notes)."""
        k, emit, dtype = self.k, self.emit, self.dtype
        tp = time.perf_counter()
        Q, _ = _orthonormalize(self.apply(_gaussian(l, self.row_chunks, dtype, seed), persist=False), twice=False)
        emit(f"randomized_eigh: pass 1 (range sketch) [{time.perf_counter() - tp:.2f} s]")
        prev, change, converged, q = None, float("nan"), False, 0
        while True:
            tp = time.perf_counter()
            # Z = M·Q and the Grams [QᵀQ; QᵀZ] of the generalized Rayleigh–Ritz step: one graph
            Z = self.apply(Q, persist=False)
            Z, S = graph.persist([Z, _rowsum(_k_gram_pair, [Q, Z], [], (2 * l, l))], wait=False)
            theta, C = self.ritz_generalized(np.asarray(S.compute(), dtype=np.float64), l)
            del S
            est = float(np.sum(theta))
            if prev is not None:
                change = abs(est - prev) / max(abs(est), 1e-300)
                converged = change < tol
            emit(
                f"randomized_eigh: pass {q + 2} (power iteration {q}): sum of top-{k} Ritz values = {est:.8g}"
                + ("" if prev is None else f", rel. change {change:.2e} (tol {tol:g})")
                + f" [{time.perf_counter() - tp:.2f} s]"
            )
            self.report(l, self.n_matvecs * l, theta, 0.0)
            if (converged and q >= q_min) or q >= q_max:
                break
            prev = est
            Q = None  # released before the next basis is formed: Z and the new Q, two (n, l) panels
            Q, _ = _orthonormalize(Z, twice=False)
            Z = None
            q += 1
        tp = time.perf_counter()
        Ck = C.astype(dtype)
        V0 = graph.persist(Q @ Ck, wait=False)
        resid = da.sqrt(((Z @ Ck - V0 * theta.astype(dtype)) ** 2).sum(axis=0))
        res_norm = np.asarray(resid.compute(), dtype=np.float64)
        Q = Z = None
        V = self.finish(V0, theta, res_norm, tp)
        self.log_rule(converged, q, change, tol)
        return self.result(theta, V, res_norm, l - k, q, "subspace", l, converged, change)

    def log_rule(self, converged: bool, q: int, change: float, tol: float) -> None:
        self.emit(f"randomized_eigh: {'converged' if converged else 'NOT converged'} after {q} power iterations "
                  f"(top-{self.k} Ritz sum rel. change {change:.2e}, tol {tol:g})")

    # ------------------------------------------------------------------ block Krylov

    def krylov_converging(self, b: int, min_blocks: int, max_blocks: int, tol: float, seed: int) -> EighResult:
        """Block Krylov under the convergence rule: blocks are added until the Ritz sum settles (at most
        ``max_blocks``); the residual Gram of the last block is ``RᵀR`` of the next block's QR."""
        k, emit = self.k, self.emit
        tp = time.perf_counter()
        Q, _ = _orthonormalize(self.apply(_gaussian(b, self.row_chunks, self.dtype, seed), persist=False))
        emit(f"randomized_eigh: pass 1 (block 1 of {b} columns) [{time.perf_counter() - tp:.2f} s]")
        basis, columns = [Q], []
        prev, change, converged = None, float("nan"), False
        while True:
            tp = time.perf_counter()
            j = len(basis) - 1
            W = self.apply(basis[j], persist=False)
            H = _rowsum(_k_gram_basis, [*basis, W], [], (b * (j + 1), b), as_list=True)
            W1 = _rowwise(_k_project_out, [*basis, W], [H], b, self.dtype, "edlae-proj-", as_list=True)
            H2 = _rowsum(_k_gram_basis_working, [*basis, W1], [], (b * (j + 1), b), as_list=True)
            W2 = _rowwise(_k_project_out, [*basis, W1], [H2], b, self.dtype, "edlae-proj-", as_list=True)
            Qn, R, H = _orthonormalize(W2, also=(H,))
            del W, W1, W2, H2
            columns.append(H)
            n_blocks, dim = j + 1, b * (j + 1)
            est = ritz = None
            if dim >= k and n_blocks >= min_blocks:
                # the Rayleigh–Ritz step itself (eigenvectors too): reused if the solve stops here
                ritz = self.top_k(_assemble(columns, b))
                est = float(np.sum(ritz[0]))
            elif dim >= k and (n_blocks == min_blocks - 1 or self.monitor is not None):
                T = _assemble(columns, b)
                self.check_finite(T)
                est = float(np.sum(np.linalg.eigvalsh(0.5 * (T + T.T))[::-1][:k]))
            if est is not None:
                if prev is not None:
                    change = abs(est - prev) / max(abs(est), 1e-300)
                    converged = change < tol
                prev = est
            self.report(dim, self.n_matvecs * b, None if est is None else np.array([est]), 0.0)
            emit(
                f"randomized_eigh: pass {j + 2} (Krylov block {j + 1} applied): {dim} dims"
                + ("" if est is None else f", sum of top-{k} Ritz values = {est:.8g}")
                + ("" if est is None or np.isnan(change) else f", rel. change {change:.2e} (tol {tol:g})")
                + f" [{time.perf_counter() - tp:.2f} s]"
            )
            if (converged and n_blocks >= min_blocks) or n_blocks >= max_blocks:
                break
            basis.append(Qn)
        # the residual Gram: (I − QQᵀ)·M·Q_last = Qn·R, so its Gram is RᵀR
        F = R.T @ R
        tp = time.perf_counter()
        theta, Wt = ritz if ritz is not None else self.top_k(_assemble(columns, b))
        w_last = Wt[-b:]
        res_norm = np.sqrt(np.maximum(np.einsum("ij,ij->j", w_last, F @ w_last), 0.0))
        V0 = graph.persist(_rowwise(_k_combine, basis, _small([Wt]), k, self.dtype, "edlae-ritz-"), wait=False)
        basis = Q = Qn = None
        V = self.finish(V0, theta, res_norm, tp)
        del V0
        self.log_rule(converged, n_blocks - 1, change, tol)
        return self.result(theta, V, res_norm, b * n_blocks - k, n_blocks - 1, "krylov", b, converged, change)

    def krylov(self, b: int, n_blocks: int, seed: int) -> EighResult:
        k, emit = self.k, self.emit
        n_passes = n_blocks + 1
        tp = time.perf_counter()
        Q, _ = _orthonormalize(self.apply(_gaussian(b, self.row_chunks, self.dtype, seed), persist=False))
        emit(f"randomized_eigh: pass 1/{n_passes} (block 1 of {b} columns) [{time.perf_counter() - tp:.2f} s]")
        basis = [Q]
        columns = []  # columns[j] = [Q₁ … Q_j]ᵀ M Q_j, the block column j of T above its diagonal
        for j in range(n_blocks):
            tp = time.perf_counter()
            last = j == n_blocks - 1
            # one graph a pass: W = M·Q_j, its projections and the next block's CholeskyQR2
            W = self.apply(basis[j], persist=False)
            H = _rowsum(_k_gram_basis, [*basis, W], [], (b * (j + 1), b), as_list=True)
            if last:
                # the residual's Gram: the part of M·Q_last outside the basis (for the Ritz residuals)
                F = _rowsum(_k_residual_gram, [*basis, W], [H], (b, b), as_list=True)
                H, F = (np.asarray(x, dtype=np.float64) for x in dask.compute(H, F))
                columns.append(H)
                break
            # block classical Gram–Schmidt, twice ("twice is enough"; for a nearly invariant block
            # the second projection still leaves the rounding noise orthogonal to the basis to ~eps
            # of its own norm: tests/test_eigen.py, rank-9 operator)
            W1 = _rowwise(_k_project_out, [*basis, W], [H], b, self.dtype, "edlae-proj-", as_list=True)
            H2 = _rowsum(_k_gram_basis_working, [*basis, W1], [], (b * (j + 1), b), as_list=True)
            W2 = _rowwise(_k_project_out, [*basis, W1], [H2], b, self.dtype, "edlae-proj-", as_list=True)
            Qn, R, H = _orthonormalize(W2, also=(H,))
            del W, W1, W2, H2
            columns.append(H)
            if self.monitor is not None:
                tm = time.perf_counter()
                dim = b * (j + 1)
                theta = self.top_k(_assemble(columns, b))[0] if dim >= k else None
                self.report(dim, self.n_matvecs * b, theta, time.perf_counter() - tm)
            basis.append(Qn)
            emit(
                f"randomized_eigh: pass {j + 2}/{n_passes} (Krylov block {j + 2}): ‖T_(j+1,j)‖ = "
                f"{np.linalg.norm(R, 2):.4g}, {b * (j + 2)} dims [{time.perf_counter() - tp:.2f} s]"
            )
        tp = time.perf_counter()
        T = _assemble(columns, b)
        theta, Wt = self.top_k(T)
        # residual: the part of M·Q_last outside the basis, times each Ritz vector's last block
        w_last = Wt[-b:]
        res_norm = np.sqrt(np.maximum(np.einsum("ij,ij->j", w_last, F @ w_last), 0.0))
        # persisted, and the basis released before the signs are applied: forming V = Q·W twice (as
        # this did) costs another 2·n·d·k flops (~a minute at k = 5,000), for the same peak memory
        V0 = graph.persist(_rowwise(_k_combine, basis, _small([Wt]), k, self.dtype, "edlae-ritz-"), wait=False)
        basis = Q = Qn = None
        V = self.finish(V0, theta, res_norm, tp)
        del V0
        dim = b * n_blocks
        self.report(dim, self.n_matvecs * b, theta, 0.0)
        return self.result(theta, V, res_norm, dim - k, n_blocks - 1, "krylov", b)

    # ------------------------------------------------------------------ common end

    def finish(self, V0: da.Array, theta: np.ndarray, res_norm: np.ndarray, tp: float) -> da.Array:
        """Sign-fixed V (persisted) from the Ritz vectors V0."""
        k = self.k
        cand = V0.map_blocks(K.signed_absmax, chunks=((1,) * len(self.row_chunks), (k,)), dtype=self.dtype)
        cand = np.asarray(cand.compute())
        best = np.argmax(np.abs(cand), axis=0)  # first block holding the column's largest |entry|
        signs = np.where(cand[best, np.arange(k)] < 0, -1.0, 1.0)
        V = graph.persist(V0 * signs.astype(self.dtype), wait=False)
        scale = np.maximum(np.abs(theta), np.finfo(np.float64).tiny * max(1.0, float(np.abs(theta).max())))
        self.residuals = res_norm / scale
        self.seconds = time.perf_counter() - self.t0 - self.monitor_seconds
        self.emit(
            f"randomized_eigh: Rayleigh–Ritz: θ_1 = {theta[0]:.6g}, θ_{k} = {theta[-1]:.6g}, "
            f"sum = {theta.sum():.6g}; relative Ritz residuals ‖Mv − θv‖/θ: "
            f"max {self.residuals.max():.3e}, median {np.median(self.residuals):.3e} "
            f"[{time.perf_counter() - tp:.2f} s]; total {self.n_matvecs} applications of M, {self.seconds:.2f} s"
        )
        return V

    def result(self, theta, V, res_norm, n_oversamples, n_power_iter, method, block, converged=None,
               change=float("nan")) -> EighResult:
        return EighResult(
            eigenvalues=theta,
            eigenvectors=V,
            ritz_residuals=self.residuals,
            n_matvecs=self.n_matvecs,
            n_oversamples=n_oversamples,
            n_power_iter=n_power_iter,
            seconds=self.seconds,
            method=method,
            block_size=block,
            n_matvec_columns=self.n_matvecs * block,
            converged=converged,
            ritz_sum_change=None if np.isnan(change) else float(change),
        )


def _assemble(columns: list[np.ndarray], b: int) -> np.ndarray:
    """T = QᵀMQ (symmetric) from its block columns above the diagonal."""
    m = b * len(columns)
    T = np.zeros((m, m))
    for j, H in enumerate(columns):
        T[: H.shape[0], j * b : (j + 1) * b] = H
        T[j * b : (j + 1) * b, : j * b] = H[: j * b].T
    return T

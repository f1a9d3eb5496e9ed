"""Blocked inverse of a symmetric positive definite matrix, as a Dask graph.

``spd_inverse(A)`` builds three stages over the square blocks of ``A``:

1. ``edlae-cholesky-{token}``: tile Cholesky ``A = L Lᵀ`` (potrf on diagonal
   blocks, trsm for the panel, syrk/gemm updates of the trailing blocks);
2. ``edlae-trtri-{token}``: ``W = L⁻¹`` by columns of blocks (trtri on the
   diagonal, trmm/gemm accumulation, trsm);
3. ``edlae-inverse-{token}``: ``C = A⁻¹ = Wᵀ W``, lower blocks only (lauum /
   syrk on the diagonal, trmm/gemm off it); upper blocks are transposes.

Each stage only wires keys; the arithmetic is in :mod:`._kernels`. Intermediate
results of the chained updates live under ``edlae-{stage}-update-{token}``.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from edlae_dask.errors import ParameterError
from edlae_dask.linalg import _kernels as K

__all__ = ["cholesky_lower", "spd_inverse"]


def _validate(A) -> np.dtype:
    if not isinstance(A, da.Array):
        raise ParameterError(
            f"A must be a dask.array.Array. Got {type(A).__name__}; wrap it with "
            "dask.array.from_array(A, chunks=(c, c))."
        )
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ParameterError(f"A must be 2-dimensional and square. Got shape {A.shape}.")
    if any(math.isnan(c) for axis in A.chunks for c in axis):
        raise ParameterError(
            "A has unknown chunk sizes; call A.compute_chunk_sizes() or "
            "A.rechunk((c, c)) first."
        )
    if A.chunks[0] != A.chunks[1]:
        c = max(A.chunks[0])
        raise ParameterError(
            "A must have the same chunks on both axes so that diagonal blocks are "
            f"square. Got row chunks {A.chunks[0]} and column chunks {A.chunks[1]}. "
            f"Use A.rechunk(({c}, {c})) (any block size; the last block may be "
            "smaller)."
        )
    return K.check_float_dtype(A.dtype, "A")


def _offsets(chunks: tuple[int, ...]) -> list[int]:
    out = [0]
    for c in chunks[:-1]:
        out.append(out[-1] + c)
    return out


def _names(token: str) -> dict[str, str]:
    return {
        "chol": f"edlae-cholesky-{token}",
        "chol_upd": f"edlae-cholesky-update-{token}",
        "trtri": f"edlae-trtri-{token}",
        "trtri_upd": f"edlae-trtri-update-{token}",
        "inv": f"edlae-inverse-{token}",
        "inv_upd": f"edlae-inverse-update-{token}",
    }


def _cholesky_dsk(a_name: str, chunks, dtype, names, *, with_upper: bool) -> dict:
    """Tile Cholesky. Reads only lower blocks (i >= j) of ``a_name``.

    S⁽⁰⁾_ij = A_ij; L_kk = potrf(S⁽ᵏ⁾_kk); L_ik = S⁽ᵏ⁾_ik L_kk⁻ᵀ;
    S⁽ᵏ⁺¹⁾_ij = S⁽ᵏ⁾_ij − L_ik L_jkᵀ for i >= j > k.
    """
    name, upd = names["chol"], names["chol_upd"]
    nb = len(chunks)
    offsets = _offsets(chunks)
    dsk: dict = {}

    def s(i, j, k):  # S⁽ᵏ⁾_ij
        return (a_name, i, j) if k == 0 else (upd, i, j, k - 1)

    for k in range(nb):
        dsk[name, k, k] = (K.potrf_lower, s(k, k, k), offsets[k])
        for i in range(k + 1, nb):
            dsk[name, i, k] = (K.chol_panel, s(i, k, k), (name, k, k))
        for j in range(k + 1, nb):
            dsk[upd, j, j, k] = (K.syrk_update, s(j, j, k), (name, j, k))
            for i in range(j + 1, nb):
                dsk[upd, i, j, k] = (K.gemm_update, s(i, j, k), (name, i, k), (name, j, k))
    if with_upper:
        for i in range(nb):
            for j in range(i + 1, nb):
                dsk[name, i, j] = (K.zeros, (chunks[i], chunks[j]), dtype)
    return dsk


def _trtri_dsk(chunks, dtype, names, *, with_upper: bool) -> dict:
    """W = L⁻¹: W_jj = trtri(L_jj); W_ij = −L_ii⁻¹ Σ_{m=j}^{i−1} L_im W_mj."""
    L, name, upd = names["chol"], names["trtri"], names["trtri_upd"]
    nb = len(chunks)
    dsk: dict = {}
    for j in range(nb):
        dsk[name, j, j] = (K.trtri_lower, (L, j, j))
        for i in range(j + 1, nb):
            # R⁽ᵐ⁾_ij = Σ_{m'=j}^{m} L_im' W_m'j, chained over m
            dsk[upd, i, j, j] = (K.trtri_first, (L, i, j), (name, j, j))
            for m in range(j + 1, i):
                dsk[upd, i, j, m] = (K.gemm_acc, (upd, i, j, m - 1), (L, i, m), (name, m, j))
            dsk[name, i, j] = (K.trtri_finish, (upd, i, j, i - 1), (L, i, i))
    if with_upper:
        for i in range(nb):
            for j in range(i + 1, nb):
                dsk[name, i, j] = (K.zeros, (chunks[i], chunks[j]), dtype)
    return dsk


def _inverse_dsk(chunks, names) -> dict:
    """C = Wᵀ W: C_ij = Σ_{k=i}^{nb−1} W_kiᵀ W_kj (i >= j); C_ji = C_ijᵀ."""
    W, name, upd = names["trtri"], names["inv"], names["inv_upd"]
    nb = len(chunks)
    dsk: dict = {}
    for i in range(nb):
        for j in range(i + 1):
            if i == j:
                dsk[upd, i, i, i] = (K.lauum_lower, (W, i, i))
            else:
                dsk[upd, i, j, i] = (K.inv_first, (W, i, i), (W, i, j))
            for k in range(i + 1, nb):
                if i == j:
                    dsk[upd, i, i, k] = (K.syrk_tn_acc, (upd, i, i, k - 1), (W, k, i))
                else:
                    dsk[upd, i, j, k] = (K.gemm_tn_acc, (upd, i, j, k - 1), (W, k, i), (W, k, j))
            last = (upd, i, j, nb - 1)
            if i == j:
                dsk[name, i, i] = (K.symmetrize_lower, last)
            else:
                dsk[name, i, j] = last
                dsk[name, j, i] = (K.transpose, (name, i, j))
    return dsk


def cholesky_lower(A: da.Array) -> da.Array:
    """Lower Cholesky factor ``L`` of a symmetric positive definite dask array.

    Parameters
    ----------
    A : dask.array.Array of shape (n, n), float32 or float64
        Symmetric positive definite. Its chunks must be the same on both axes
        (square diagonal blocks); they may be ragged (e.g. ``(4, 4, 2)``). Only
        the lower blocks (i >= j) are read, and of the diagonal blocks only their
        lower triangles, so the upper blocks may be anything (e.g. lazy
        transposes of the lower ones, never computed).

    Returns
    -------
    L : dask.array.Array of shape (n, n)
        Lower triangular, ``A = L Lᵀ``, same chunks and dtype as ``A``; the upper
        blocks are zero.

    Raises
    ------
    ParameterError
        If ``A`` is not square, has different chunks on the two axes, or a dtype
        other than float32/float64.
    ModelFitError
        At compute time, if ``A`` is not positive definite; the message names
        the global row/column where the factorization failed.

    Notes
    -----
    Tile (PLASMA-style) right-looking Cholesky: with ``nb`` blocks per axis the
    graph has about ``nb³/6`` tasks, each a BLAS-3 call on blocks, n³/3 flops in
    total. Each task holds at most three blocks; the peak memory beyond ``A`` is
    about the lower half of ``L`` plus one trailing-update block per live task.

    See Also
    --------
    dask.array.linalg.cholesky : needs equal square chunks and reads both halves.
    """
    dtype = _validate(A)
    token = tokenize(A)
    names = _names(token)
    dsk = _cholesky_dsk(A.name, A.chunks[0], dtype, names, with_upper=True)
    graph = HighLevelGraph.from_collections(names["chol"], dsk, dependencies=[A])
    return da.Array(graph, names["chol"], chunks=A.chunks, meta=meta_from_array(A, dtype=dtype))


def spd_inverse(A: da.Array) -> da.Array:
    """Inverse of a symmetric positive definite dask array, by blocks.

    ``C = A⁻¹`` via Cholesky ``A = L Lᵀ``, ``W = L⁻¹`` and ``C = Wᵀ W`` — the
    blocked counterpart of LAPACK ``potrf`` + ``potri``: about n³ flops, against
    ~4.7 n³ for :func:`dask.array.linalg.inv` (block LU solve against the
    identity, which also ignores symmetry).

    Parameters
    ----------
    A : dask.array.Array of shape (n, n), float32 or float64
        Symmetric positive definite, with the same (possibly ragged) chunks on
        both axes. Only the lower blocks (i >= j) are read — of the diagonal
        blocks only their lower triangles — so the upper blocks may be lazy
        transposes of the lower ones (they are never computed). Computation stays
        in the input dtype (float32 in, float32 arithmetic and result).

    Returns
    -------
    C : dask.array.Array of shape (n, n)
        The symmetric inverse, with ``A``'s chunks and dtype. Lower blocks are
        computed; each upper block is a task that transposes its lower mirror
        (no recomputation), and diagonal blocks are exactly symmetric.

    Raises
    ------
    ParameterError
        If ``A`` is not a square float32/float64 dask array with equal chunks on
        both axes (the message gives the ``A.rechunk((c, c))`` that fixes it).
    ModelFitError
        At compute time (also across processes on a distributed cluster), if
        ``A`` is not positive definite; the message names the failing global
        row/column and the usual EDLAE cause (an item with no interactions and
        ``lam = 0``).

    Notes
    -----
    Cost with ``nb`` blocks per axis: about ``nb³/2`` tasks (three stages of
    ~``nb³/6`` chained BLAS-3 updates), n³ flops in total. Peak memory beyond
    ``A`` is about 1.5 · n² · itemsize (lower halves of ``L``, ``W`` and ``C``;
    ``L`` and ``W`` blocks are released as soon as their last consumer ran).
    Blocks move between workers once per consumer, like any tiled algorithm;
    larger blocks mean fewer, bigger tasks and less scheduler overhead. Since the
    kernels release the GIL (:mod:`._kernels`), a worker keeps sending and
    fetching blocks while it computes. Its rate against one in-memory LAPACK
    ``potrf`` + ``potri`` is measured by ``benchmarks/bench_linalg.py``
    (benchmarks/results/design-notes.md, "Blocked inverse").

    The block size is the caller's choice. Keep float64 blocks below ~16,000
    rows: OpenBLAS's SkylakeX ``dpotrf`` segfaults on larger single matrices on
    our machines (benchmarks/results/measured-2026-11.md).

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> X = np.random.default_rng(0).standard_normal((50, 10))
    >>> A = da.from_array(X.T @ X + np.eye(10), chunks=(4, 4))
    >>> C = spd_inverse(A)
    >>> np.allclose(C.compute() @ A.compute(), np.eye(10))
    True
    """
    dtype = _validate(A)
    token = tokenize(A)
    names = _names(token)
    chunks = A.chunks[0]
    meta = meta_from_array(A, dtype=dtype)

    # Built as three stacked HighLevelGraph layers; the upper (zero) blocks of
    # L and W are not needed here and are left out of the graph.
    dsk_chol = _cholesky_dsk(A.name, chunks, dtype, names, with_upper=False)
    g_chol = HighLevelGraph.from_collections(names["chol"], dsk_chol, dependencies=[A])
    L = da.Array(g_chol, names["chol"], chunks=A.chunks, meta=meta)

    dsk_trtri = _trtri_dsk(chunks, dtype, names, with_upper=False)
    g_trtri = HighLevelGraph.from_collections(names["trtri"], dsk_trtri, dependencies=[L])
    W = da.Array(g_trtri, names["trtri"], chunks=A.chunks, meta=meta)

    dsk_inv = _inverse_dsk(chunks, names)
    g_inv = HighLevelGraph.from_collections(names["inv"], dsk_inv, dependencies=[W])
    return da.Array(g_inv, names["inv"], chunks=A.chunks, meta=meta)

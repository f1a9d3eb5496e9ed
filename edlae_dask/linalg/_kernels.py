"""Block kernels of the blocked SPD inverse: thin wrappers over LAPACK / BLAS.

Every function here takes and returns plain NumPy blocks, is pure (it never
modifies its arguments), and computes in the dtype of its inputs: the routines
come from :mod:`scipy.linalg.lapack` / :mod:`scipy.linalg.blas` picked by dtype
(``spotrf`` for float32, ``dpotrf`` for float64). ``numpy.linalg`` is avoided on
purpose: it computes float32 input in float64 (slower, ~7x the block in
temporaries; see shared/notes/measured-2026-11.md).

No dask import: the wiring lives in :mod:`edlae_dask.linalg.inverse`.

Notation (tile Cholesky, PLASMA style): ``S`` is a block of the trailing
matrix being updated, ``L`` a block of the Cholesky factor ``A = L Lᵀ``, ``W``
a block of ``L⁻¹`` and ``C`` a block of ``A⁻¹ = Wᵀ W``. Only lower triangles
of diagonal blocks are meaningful until :func:`symmetrize_lower`.

The BLAS wrappers return Fortran-ordered results; a C-ordered input is copied
once on entry (``overwrite_*`` can then work on our own copy), which costs
O(b²) against the O(b³) of the kernel.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas, lapack

from edlae_dask.errors import ModelFitError, ParameterError

__all__ = [
    "SUPPORTED_DTYPES",
    "check_float_dtype",
    "potrf_lower",
    "chol_panel",
    "syrk_update",
    "gemm_update",
    "trtri_lower",
    "trtri_first",
    "gemm_acc",
    "trtri_finish",
    "lauum_lower",
    "inv_first",
    "gemm_tn_acc",
    "syrk_tn_acc",
    "symmetrize_lower",
    "transpose",
    "zeros",
    "gaussian_rows",
    "signed_absmax",
]

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float_dtype(dtype, what: str = "A") -> np.dtype:
    """Return ``dtype`` as a NumPy dtype if it is float32 or float64, else raise.

    Raises
    ------
    ParameterError
        For any other dtype, naming the cast that fixes it.
    """
    dt = np.dtype(dtype)
    if dt not in SUPPORTED_DTYPES:
        raise ParameterError(
            f"{what} must have dtype float32 or float64 (LAPACK single or double "
            f"precision). Got {dt}. Cast it first, e.g. {what}.astype(numpy.float64)."
        )
    return dt


def _lapack(name: str, a: np.ndarray):
    return lapack.get_lapack_funcs((name,), (a,))[0]


def _blas(name: str, a: np.ndarray):
    return blas.get_blas_funcs((name,), (a,))[0]


# --------------------------------------------------------------------------- #
# Cholesky  A = L Lᵀ
# --------------------------------------------------------------------------- #
def potrf_lower(s_kk: np.ndarray, offset: int) -> np.ndarray:
    """Cholesky factor of one diagonal block: ``L_kk`` with ``S_kk = L_kk L_kkᵀ``.

    Only the lower triangle of ``s_kk`` is read; the result's upper triangle is 0.

    Parameters
    ----------
    s_kk : ndarray of shape (b, b)
        The diagonal block after all updates from the columns to its left (the
        Schur complement block), so a failure at local row ``r`` means the leading
        ``offset + r + 1`` minor of the whole matrix is not positive definite.

    offset : int
        Global index of the block's first row, used in the error message.

    Raises
    ------
    ModelFitError
        If the block is not positive definite (LAPACK ``info > 0``).

    Notes
    -----
    float64 ``dpotrf`` on one *single large* matrix (n >= 16,000) segfaults with
    OpenBLAS's SkylakeX kernels on the machines in shared/notes/measured-2026-11.md
    (fine with OPENBLAS_CORETYPE=Haswell or one BLAS thread). Our blocks are the
    caller's chunk size, normally at most a few thousand, far below that, so the
    blocked algorithm avoids the crash; do not pass chunks >= 16,000 in float64.
    """
    potrf = _lapack("potrf", s_kk)
    c, info = potrf(s_kk, lower=1, clean=1, overwrite_a=0)
    if info > 0:
        row = int(offset) + int(info) - 1
        lower = np.tril(s_kk)
        if not np.isfinite(lower).all():
            cause = (
                "The matrix contains NaN or inf in or above this block; check the "
                "input data and parameters."
            )
        else:
            cause = (
                "The usual cause: an item with no interactions and lam = 0 makes P "
                "singular: raise lam or drop the item."
            )
        raise ModelFitError(
            f"Matrix is not positive definite: the blocked Cholesky factorization "
            f"failed at global row/column {row} (0-based; the leading minor of order "
            f"{row + 1} is not positive definite). {cause}"
        )
    if info < 0:  # pragma: no cover - would be a bug in our call
        raise ModelFitError(f"LAPACK potrf: illegal value in argument {-info}")
    return c


def chol_panel(s_ik: np.ndarray, l_kk: np.ndarray) -> np.ndarray:
    """``L_ik = S_ik L_kk⁻ᵀ`` (triangular solve from the right)."""
    trsm = _blas("trsm", s_ik)
    return trsm(1.0, l_kk, s_ik, side=1, lower=1, trans_a=1, diag=0)


def syrk_update(s_ii: np.ndarray, l_ik: np.ndarray) -> np.ndarray:
    """``S_ii − L_ik L_ikᵀ`` on the lower triangle (upper triangle: copied from s_ii)."""
    syrk = _blas("syrk", l_ik)
    return syrk(-1.0, l_ik, beta=1.0, c=s_ii, trans=0, lower=1)


def gemm_update(s_ij: np.ndarray, l_ik: np.ndarray, l_jk: np.ndarray) -> np.ndarray:
    """``S_ij − L_ik L_jkᵀ``."""
    gemm = _blas("gemm", l_ik)
    return gemm(-1.0, l_ik, l_jk, beta=1.0, c=s_ij, trans_a=0, trans_b=1)


# --------------------------------------------------------------------------- #
# W = L⁻¹ (lower triangular), by columns of blocks
#   W_jj = L_jj⁻¹,   W_ij = −L_ii⁻¹ Σ_{m=j}^{i−1} L_im W_mj   (i > j)
# --------------------------------------------------------------------------- #
def trtri_lower(l_kk: np.ndarray) -> np.ndarray:
    """``W_kk = L_kk⁻¹`` of a lower-triangular diagonal block (upper triangle 0)."""
    trtri = _lapack("trtri", l_kk)
    w, info = trtri(l_kk, lower=1, unitdiag=0, overwrite_c=0)
    if info != 0:  # pragma: no cover - potrf succeeded, so the diagonal is > 0
        raise ModelFitError(f"LAPACK trtri failed with info={info}: singular factor")
    return w


def trtri_first(l_ij: np.ndarray, w_jj: np.ndarray) -> np.ndarray:
    """First term ``L_ij W_jj`` of the sum (``W_jj`` lower triangular: trmm)."""
    trmm = _blas("trmm", l_ij)
    return trmm(1.0, w_jj, l_ij, side=1, lower=1, trans_a=0, diag=0)


def gemm_acc(r: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``R + A B``."""
    gemm = _blas("gemm", a)
    return gemm(1.0, a, b, beta=1.0, c=r, trans_a=0, trans_b=0)


def trtri_finish(r_ij: np.ndarray, l_ii: np.ndarray) -> np.ndarray:
    """``W_ij = −L_ii⁻¹ R_ij`` (triangular solve from the left)."""
    trsm = _blas("trsm", r_ij)
    return trsm(-1.0, l_ii, r_ij, side=0, lower=1, trans_a=0, diag=0)


# --------------------------------------------------------------------------- #
# C = Wᵀ W, lower blocks:  C_ij = Σ_{k=i}^{nb−1} W_kiᵀ W_kj   (i >= j)
# --------------------------------------------------------------------------- #
def lauum_lower(w_ii: np.ndarray) -> np.ndarray:
    """Lower triangle of ``W_iiᵀ W_ii`` for lower-triangular ``W_ii`` (LAPACK lauum)."""
    lauum = _lapack("lauum", w_ii)
    c, info = lauum(w_ii, lower=1, overwrite_c=0)
    if info != 0:  # pragma: no cover
        raise ModelFitError(f"LAPACK lauum failed with info={info}")
    return c


def inv_first(w_ii: np.ndarray, w_ij: np.ndarray) -> np.ndarray:
    """First term ``W_iiᵀ W_ij`` of an off-diagonal block (``W_ii`` lower: trmm)."""
    trmm = _blas("trmm", w_ij)
    return trmm(1.0, w_ii, w_ij, side=0, lower=1, trans_a=1, diag=0)


def gemm_tn_acc(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``C + Aᵀ B``."""
    gemm = _blas("gemm", a)
    return gemm(1.0, a, b, beta=1.0, c=c, trans_a=1, trans_b=0)


def syrk_tn_acc(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``C + Aᵀ A`` on the lower triangle."""
    syrk = _blas("syrk", a)
    return syrk(1.0, a, beta=1.0, c=c, trans=1, lower=1)


def symmetrize_lower(c: np.ndarray) -> np.ndarray:
    """Full symmetric block from its lower triangle (the upper one is ignored)."""
    out = np.tril(c)
    out += np.tril(c, -1).T
    return out


def transpose(x: np.ndarray) -> np.ndarray:
    """``xᵀ`` (a view; used for upper blocks that mirror lower ones)."""
    return x.T


def zeros(shape: tuple[int, int], dtype) -> np.ndarray:
    """A block of zeros (upper blocks of triangular factors)."""
    return np.zeros(shape, dtype=dtype)


# --------------------------------------------------------------------------- #
# Randomized eigensolver helpers
# --------------------------------------------------------------------------- #
GAUSSIAN_PAGE_ROWS = 1024


def gaussian_rows(seed: int, start: int, stop: int, n_cols: int, dtype, page: int = GAUSSIAN_PAGE_ROWS) -> np.ndarray:
    """Rows ``start:stop`` of a seeded standard Gaussian matrix with ``n_cols`` columns.

    The matrix is generated in fixed pages of ``page`` rows, page ``p`` from
    ``SeedSequence([seed, p])``, so any row range gives the same numbers whatever
    the block boundaries are: the test matrix does not depend on the chunking.
    """
    dt = np.dtype(dtype)
    if stop <= start:
        return np.empty((0, n_cols), dtype=dt)
    p0, p1 = start // page, (stop - 1) // page
    parts = [
        np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, p]))).standard_normal(
            (page, n_cols), dtype=dt
        )
        for p in range(p0, p1 + 1)
    ]
    block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return np.ascontiguousarray(block[start - p0 * page : stop - p0 * page])


def signed_absmax(v: np.ndarray) -> np.ndarray:
    """Per column, the entry of largest magnitude (first one on ties), shape (1, k)."""
    if v.shape[0] == 0:
        return np.zeros((1, v.shape[1]), dtype=v.dtype)
    idx = np.argmax(np.abs(v), axis=0)
    return v[idx, np.arange(v.shape[1])][None, :]

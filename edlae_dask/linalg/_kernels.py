"""Block kernels of the blocked SPD inverse: LAPACK / BLAS called without the GIL.

Every function here takes and returns plain NumPy blocks, is pure (it never
modifies its arguments), and computes in the dtype of its inputs (``spotrf``
for float32, ``dpotrf`` for float64, ...). ``numpy.linalg`` is avoided on
purpose: it computes float32 input in float64 (slower, ~7x the block in
temporaries; see benchmarks/results/measured-2026-11.md).

The routines are SciPy's own BLAS/LAPACK (the public Cython API,
:mod:`scipy.linalg.cython_blas` / :mod:`scipy.linalg.cython_lapack`), called
through :mod:`ctypes`, which releases the GIL for the duration of the call. The
f2py wrappers of :mod:`scipy.linalg.blas` hold the GIL during the whole BLAS
call, which freezes every other thread of the process (benchmarks/results/design-notes.md,
"BLAS kernels"). On a Dask worker that froze the event loop: no block was sent to
or fetched from another worker while a kernel ran, and the other worker waited.

Layouts: results are Fortran-ordered. A C-ordered operand that is only read is
passed as its transpose (a free Fortran view) with the BLAS transpose / triangle
flags flipped; the operand that is overwritten (the result) is copied once into
a new Fortran-ordered array, O(b²) against the O(b³) of the kernel.

No dask import: the wiring lives in :mod:`edlae_dask.linalg.inverse`.

Notation (tile Cholesky, PLASMA style): ``S`` is a block of the trailing
matrix being updated, ``L`` a block of the Cholesky factor ``A = L Lᵀ``, ``W``
a block of ``L⁻¹`` and ``C`` a block of ``A⁻¹ = Wᵀ W``. Only lower triangles
of diagonal blocks are meaningful until :func:`symmetrize_lower`.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
from scipy.linalg import cython_blas, cython_lapack

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


# --------------------------------------------------------------------------- #
# Raw BLAS / LAPACK through ctypes (Fortran calling convention: every argument
# by reference; these routines have no hidden string-length arguments in
# SciPy's Cython API)
# --------------------------------------------------------------------------- #
_P = ctypes.c_void_p
_N_ARGS = {"gemm": 13, "syrk": 10, "trsm": 11, "trmm": 11, "potrf": 5, "trtri": 6, "lauum": 5}
_PREFIX = {np.dtype(np.float32): ("s", ctypes.c_float), np.dtype(np.float64): ("d", ctypes.c_double)}

_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype, _capsule_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]


@functools.lru_cache(maxsize=None)
def _routine(name: str, dtype: np.dtype):
    """``ctypes`` function for BLAS/LAPACK routine ``name`` in ``dtype`` (GIL released while it runs)."""
    prefix, _ = _PREFIX[dtype]
    module = cython_lapack if name in ("potrf", "trtri", "lauum") else cython_blas
    capsule = module.__pyx_capi__[prefix + name]
    address = _capsule_pointer(capsule, _capsule_name(capsule))
    return ctypes.CFUNCTYPE(None, *([_P] * _N_ARGS[name]))(address)


class _Args:
    """Builds by-reference arguments and keeps them alive until the call returns."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.real = _PREFIX[dtype][1]
        self.keep = []

    def _ref(self, obj):
        self.keep.append(obj)
        return ctypes.cast(ctypes.pointer(obj), _P)

    def ch(self, c: str):
        return self._ref(ctypes.c_char(c.encode()))

    def i(self, v: int):
        return self._ref(ctypes.c_int(int(v)))

    def r(self, v: float):
        return self._ref(self.real(v))

    def arr(self, a: np.ndarray):
        self.keep.append(a)
        return _P(a.ctypes.data)


def _read_f(a: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, bool]:
    """A Fortran-contiguous array holding ``a`` or ``aᵀ``, and whether it is the transpose."""
    a = np.asarray(a, dtype=dtype)
    if a.flags.f_contiguous:
        return a, False
    if a.flags.c_contiguous:
        return a.T, True
    return np.asfortranarray(a), False


def _own_f(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A new Fortran-ordered copy of ``a`` in ``dtype`` (the kernel's output, overwritten in place)."""
    return np.array(a, dtype=dtype, order="F", copy=True)


def _ld(a: np.ndarray) -> int:
    return max(1, a.shape[0])


def _gemm(alpha: float, a, trans_a: bool, b, trans_b: bool, beta: float, c: np.ndarray) -> np.ndarray:
    """``c ← alpha op(a) op(b) + beta c`` in place; ``c`` Fortran-ordered, owned by the caller."""
    dt = c.dtype
    af, ta = _read_f(a, dt)
    bf, tb = _read_f(b, dt)
    ta, tb = ta != trans_a, tb != trans_b
    m, n = c.shape
    k = af.shape[0] if ta else af.shape[1]
    if m and n:
        x = _Args(dt)
        _routine("gemm", dt)(x.ch("T" if ta else "N"), x.ch("T" if tb else "N"), x.i(m), x.i(n), x.i(k),
                             x.r(alpha), x.arr(af), x.i(_ld(af)), x.arr(bf), x.i(_ld(bf)),
                             x.r(beta), x.arr(c), x.i(_ld(c)))
    return c


def _syrk_lower(alpha: float, a, trans: bool, beta: float, c: np.ndarray) -> np.ndarray:
    """Lower triangle of ``c ← alpha op(a) op(a)ᵀ + beta c`` in place (op = ᵀ if ``trans``)."""
    dt = c.dtype
    af, t = _read_f(a, dt)
    t = t != trans
    n = c.shape[0]
    k = af.shape[0] if t else af.shape[1]
    if n:
        x = _Args(dt)
        _routine("syrk", dt)(x.ch("L"), x.ch("T" if t else "N"), x.i(n), x.i(k), x.r(alpha), x.arr(af),
                             x.i(_ld(af)), x.r(beta), x.arr(c), x.i(_ld(c)))
    return c


def _tri(name: str, side_left: bool, alpha: float, t, trans: bool, b: np.ndarray) -> np.ndarray:
    """``b ← alpha op(T)⁻¹ b`` (trsm) or ``alpha op(T) b`` (trmm), or with op(T) on the right;
    ``T`` lower triangular with a non-unit diagonal, ``b`` Fortran-ordered and owned by the caller."""
    dt = b.dtype
    tf, flipped = _read_f(t, dt)  # a transposed view of a lower triangle is an upper one
    uplo = "U" if flipped else "L"
    trans = trans != flipped
    m, n = b.shape
    if m and n:
        x = _Args(dt)
        _routine(name, dt)(x.ch("L" if side_left else "R"), x.ch(uplo), x.ch("T" if trans else "N"), x.ch("N"),
                           x.i(m), x.i(n), x.r(alpha), x.arr(tf), x.i(_ld(tf)), x.arr(b), x.i(_ld(b)))
    return b


def _lapack_lower(name: str, a: np.ndarray) -> tuple[np.ndarray, int]:
    """Run potrf / trtri / lauum on the lower triangle of a copy of ``a``; return it and ``info``."""
    dt = check_float_dtype(a.dtype, "block")
    c = _own_f(a, dt)
    n = c.shape[0]
    if n == 0:
        return c, 0
    x = _Args(dt)
    info = ctypes.c_int(0)
    args = [x.ch("L")] + ([x.ch("N")] if name == "trtri" else []) + [x.i(n), x.arr(c), x.i(_ld(c)),
                                                                       ctypes.cast(ctypes.pointer(info), _P)]
    _routine(name, dt)(*args)
    return c, int(info.value)


def _zero_strict_upper(c: np.ndarray) -> np.ndarray:
    for j in range(1, c.shape[1]):  # column slices of a Fortran array: contiguous, cheap
        c[: min(j, c.shape[0]), j] = 0
    return c


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
    OpenBLAS's SkylakeX kernels on the machines in benchmarks/results/measured-2026-11.md
    (fine with OPENBLAS_CORETYPE=Haswell or one BLAS thread). Our blocks are the
    caller's chunk size, normally at most a few thousand, far below that, so the
    blocked algorithm avoids the crash; do not pass chunks >= 16,000 in float64.
    """
    c, info = _lapack_lower("potrf", s_kk)
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
    return _zero_strict_upper(c)


def chol_panel(s_ik: np.ndarray, l_kk: np.ndarray) -> np.ndarray:
    """``L_ik = S_ik L_kk⁻ᵀ`` (triangular solve from the right)."""
    return _tri("trsm", False, 1.0, l_kk, True, _own_f(s_ik, l_kk.dtype))


def syrk_update(s_ii: np.ndarray, l_ik: np.ndarray) -> np.ndarray:
    """``S_ii − L_ik L_ikᵀ`` on the lower triangle (upper triangle: copied from s_ii)."""
    return _syrk_lower(-1.0, l_ik, False, 1.0, _own_f(s_ii, l_ik.dtype))


def gemm_update(s_ij: np.ndarray, l_ik: np.ndarray, l_jk: np.ndarray) -> np.ndarray:
    """``S_ij − L_ik L_jkᵀ``."""
    return _gemm(-1.0, l_ik, False, l_jk, True, 1.0, _own_f(s_ij, l_ik.dtype))


# --------------------------------------------------------------------------- #
# W = L⁻¹ (lower triangular), by columns of blocks
#   W_jj = L_jj⁻¹,   W_ij = −L_ii⁻¹ Σ_{m=j}^{i−1} L_im W_mj   (i > j)
# --------------------------------------------------------------------------- #
def trtri_lower(l_kk: np.ndarray) -> np.ndarray:
    """``W_kk = L_kk⁻¹`` of a lower-triangular diagonal block (upper triangle 0)."""
    w, info = _lapack_lower("trtri", l_kk)
    if info != 0:  # pragma: no cover - potrf succeeded, so the diagonal is > 0
        raise ModelFitError(f"LAPACK trtri failed with info={info}: singular factor")
    return _zero_strict_upper(w)


def trtri_first(l_ij: np.ndarray, w_jj: np.ndarray) -> np.ndarray:
    """First term ``L_ij W_jj`` of the sum (``W_jj`` lower triangular: trmm)."""
    return _tri("trmm", False, 1.0, w_jj, False, _own_f(l_ij, w_jj.dtype))


def gemm_acc(r: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``R + A B``."""
    return _gemm(1.0, a, False, b, False, 1.0, _own_f(r, a.dtype))


def trtri_finish(r_ij: np.ndarray, l_ii: np.ndarray) -> np.ndarray:
    """``W_ij = −L_ii⁻¹ R_ij`` (triangular solve from the left)."""
    return _tri("trsm", True, -1.0, l_ii, False, _own_f(r_ij, l_ii.dtype))


# --------------------------------------------------------------------------- #
# C = Wᵀ W, lower blocks:  C_ij = Σ_{k=i}^{nb−1} W_kiᵀ W_kj   (i >= j)
# --------------------------------------------------------------------------- #
def lauum_lower(w_ii: np.ndarray) -> np.ndarray:
    """Lower triangle of ``W_iiᵀ W_ii`` for lower-triangular ``W_ii`` (LAPACK lauum)."""
    c, info = _lapack_lower("lauum", w_ii)
    if info != 0:  # pragma: no cover
        raise ModelFitError(f"LAPACK lauum failed with info={info}")
    return c


def inv_first(w_ii: np.ndarray, w_ij: np.ndarray) -> np.ndarray:
    """First term ``W_iiᵀ W_ij`` of an off-diagonal block (``W_ii`` lower: trmm)."""
    return _tri("trmm", True, 1.0, w_ii, True, _own_f(w_ij, w_ii.dtype))


def gemm_tn_acc(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``C + Aᵀ B``."""
    return _gemm(1.0, a, True, b, False, 1.0, _own_f(c, a.dtype))


def syrk_tn_acc(c: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``C + Aᵀ A`` on the lower triangle."""
    return _syrk_lower(1.0, a, True, 1.0, _own_f(c, a.dtype))


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

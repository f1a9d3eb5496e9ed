"""One process, one grid point at a time: the evaluation's n × n work in reused buffers.

The ``"dense"`` backend of :class:`~edlae_dask.evaluation.Evaluator`. The Dask
backend holds, per grid point in flight, the inverse C, a student matrix M and the
blocked inverse's temporaries next to the persisted Gram (~4.5·n² in all); at
41k items in float32 that is ~28 GiB. Here the Gram G is kept once, as one numpy
array, and each grid point (λ, p) reuses two more n × n buffers:

====================  =====================================================================
stage                 what happens, in place
====================  =====================================================================
P                     ``C ← G``, then ``diag(C) += diag(Λ)``                  (eq. 8, 13)
inverse               ``potrf`` then ``potri`` on that buffer (LAPACK, ``overwrite``),
                      one triangle copied onto the other: ``C = P⁻¹``
full rank             held-out scores from C (the teacher B̂ = I − C·diagM(1 ⊘ diag C), EASE)
student               ``M ← G + C ∘ (d dᵀ)``, ``diag(M) += diag(Λ) − 2d``:
                      M = P − 2D + DCD, one model (d) at a time in the same buffer
eigensolve            randomized, at the largest k; M·Q one GEMM per application
factors               U = V − C·(d ∘ V)
====================  =====================================================================

Peak: 3·n² (G, C, M) plus the eigensolver's n × l panels (l = 2·k_max). When that
does not fit, the student is applied without forming M (``M·Q = G·Q +
(Λ − 2D)·Q + D·C·(D·Q)``: two GEMMs per application instead of one) and the peak is
2·n² plus panels; :func:`plan_memory` decides, and every stage logs the resident
memory of the process.

All k of one (λ, p) and model come from one eigensolve at k_max: the leading k
columns of the top-k_max Ritz vectors. For an exact eigensolver these are the
top-k eigenvectors. The randomized solver's leading columns come from a
2·k_max subspace and are more accurate than a separate solve at k (tests/test_evaluation.py
holds it on a small problem; the ml-1m measurement is in benchmarks/results/design-notes.md,
"Evaluation"). When 2·k_max ≥ n the subspace is the whole space and the solve is exact.
"""

from __future__ import annotations

import ctypes
import logging
import operator
import resource
from dataclasses import dataclass

import dask.array as da
import numpy as np
import scipy.linalg.lapack as lapack
from dask.highlevelgraph import HighLevelGraph

from edlae_dask.errors import MemoryBudgetError, ModelFitError, ParameterError

__all__ = ["MemoryPlan", "plan_memory", "DenseWorkspace", "process_memory", "eigensolve", "as_dask"]

log = logging.getLogger("edlae_dask.evaluation")

#: n × l panels alive at the eigensolver's peak (Q, M·Q, QR's work copies, Z, V, U and C·(d∘V)),
#: as measured (benchmarks/results/design-notes.md, "Evaluation").
PANELS = 9
#: Rows / columns per block when copying triangles and forming M (bounds the temporaries).
COPY_BLOCK = 1024


def process_memory() -> tuple[float, float]:
    """(resident now, peak so far) of this process, in GiB."""
    import psutil

    rss = psutil.Process().memory_info().rss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return rss / 2**30, max(peak, rss) / 2**30


def release_freed_memory() -> None:
    """Hand memory freed by finished tasks back to the system (glibc keeps freed heap blocks otherwise).

    The Gram's and the scoring's blocks (a few MiB each) are freed into malloc's arenas,
    which the next n × n buffer (a fresh mmap) cannot reuse; without this the process's
    resident size after the Gram stays ~n² above the Gram itself.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes of the dense backend's buffers, and whether M is formed.

    Attributes
    ----------
    gram_bytes, inverse_bytes, student_bytes, panel_bytes : int
        G, C, M (0 when the student is applied implicitly), the eigensolver's panels.
    student_matrix : bool
        M formed in its own buffer (one GEMM per application) or not (two).
    available_bytes : int
    """

    gram_bytes: int
    inverse_bytes: int
    student_bytes: int
    panel_bytes: int
    student_matrix: bool
    available_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.gram_bytes + self.inverse_bytes + self.student_bytes + self.panel_bytes

    def as_dict(self) -> dict:
        return {"gram_bytes": self.gram_bytes, "inverse_bytes": self.inverse_bytes,
                "student_bytes": self.student_bytes, "panel_bytes": self.panel_bytes,
                "student_matrix": self.student_matrix, "total_bytes": self.total_bytes,
                "available_bytes": self.available_bytes}

    def describe(self) -> str:
        g = 2**30
        return (f"G {self.gram_bytes / g:.2f} GiB + C {self.inverse_bytes / g:.2f} GiB + "
                f"M {self.student_bytes / g:.2f} GiB"
                f"{'' if self.student_matrix else ' (not formed: applied as G·Q + D·C·D·Q)'} + "
                f"eigensolver panels {self.panel_bytes / g:.2f} GiB = {self.total_bytes / g:.2f} GiB "
                f"(budget {self.available_bytes / g:.2f} GiB)")


def plan_memory(n: int, k_max: int, itemsize: int, available: int, student: str = "auto") -> MemoryPlan:
    """Memory of one grid point on the dense backend; raises if even the implicit student does not fit.

    Parameters
    ----------
    n : int
        Items.
    k_max : int
        Largest rank (0: no low-rank model).
    itemsize : int
    available : int
        Bytes this process may use.
    student : {"auto", "matrix", "implicit"}
        Form M when it fits (``auto``), always, or never.
    """
    sq = n * n * itemsize
    l_max = min(n, 2 * k_max) if k_max else 0
    panels = PANELS * n * l_max * itemsize
    with_m = 3 * sq + panels
    if student == "matrix" or (student == "auto" and (with_m <= available or not k_max)):
        return MemoryPlan(sq, sq, sq if k_max else 0, panels, True, int(available))
    plan = MemoryPlan(sq, sq, 0, panels, False, int(available))
    if student == "auto" and plan.total_bytes > available:
        raise MemoryBudgetError(
            f"the dense evaluation of {n} items at k_max={k_max} needs {plan.describe()}: more than this process "
            "may use. Use lower ranks, fewer items, or the Dask backend on a cluster (backend='dask')."
        )
    return plan


class DenseWorkspace:
    """The Gram and the two reused n × n buffers of the dense backend.

    Parameters
    ----------
    gram : ndarray of shape (n, n)
        XᵀX of the training users (C-contiguous, symmetric); kept, never modified.
    plan : MemoryPlan
    block : int, default=COPY_BLOCK
        Rows per step when mirroring the inverse's triangle and forming M.
    """

    def __init__(self, gram: np.ndarray, plan: MemoryPlan, block: int = COPY_BLOCK):
        if not (gram.flags.c_contiguous and gram.ndim == 2 and gram.shape[0] == gram.shape[1]):
            raise ParameterError("gram must be a square C-contiguous array")
        self.G = gram
        self.n = gram.shape[0]
        self.dtype = gram.dtype
        self.plan = plan
        self.block = int(block)
        self._C = None
        self._M = None

    def set_plan(self, plan: MemoryPlan) -> None:
        """Use ``plan`` from now on (a run with another k_max); drops M if it is no longer formed."""
        self.plan = plan
        if not plan.student_matrix:
            self._M = None

    def release(self) -> None:
        """Drop the per-point buffers (G stays)."""
        self._C = self._M = None

    def log_stage(self, stage: str, seconds: float) -> dict:
        release_freed_memory()
        rss, peak = process_memory()
        held = sum(b.nbytes for b in (self.G, self._C, self._M) if b is not None) / 2**30
        log.info("dense %s: %.1f s; n x n buffers %.2f GiB (G%s%s); process resident %.2f GiB, peak %.2f GiB",
                 stage, seconds, held, ", C" if self._C is not None else "", ", M" if self._M is not None else "",
                 rss, peak)
        return {"stage": stage, "seconds": seconds, "buffers_gib": held, "rss_gib": rss, "peak_rss_gib": peak}

    # ----------------------------------------------------------------- inverse

    def inverse(self, lam_diag: np.ndarray) -> np.ndarray:
        """C = (G + diagM(lam_diag))⁻¹ in the reused buffer, by in-place potrf/potri."""
        if self._C is None:
            self._C = np.empty_like(self.G)
        C = self._C
        np.copyto(C, self.G)
        C.reshape(-1)[:: self.n + 1] += lam_diag.astype(self.dtype)
        # C is C-contiguous and symmetric: its transpose is the same matrix, Fortran-ordered, so
        # LAPACK works on this memory; lower=1 there is the upper triangle here.
        f = C.T
        potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (f,))
        out, info = potrf(f, lower=1, clean=0, overwrite_a=1)
        if info == 0:
            out, info = potri(out, lower=1, overwrite_c=1)
        if info != 0 or not np.shares_memory(out, C):
            raise ModelFitError(
                f"the Cholesky inverse of P = XᵀX + Λ failed (LAPACK info {info}): P is not numerically positive "
                "definite in this dtype. Raise λ, or use dtype float64."
            )
        _mirror_upper(C, self.block)
        return C

    # ----------------------------------------------------------------- student

    def student(self, d: np.ndarray, lam_diag: np.ndarray):
        """Q ↦ M·Q for M = P − 2D + DCD (Algorithm 1, line 3); M formed in its buffer when planned."""
        C = self._C
        d = d.astype(self.dtype)
        shift = (lam_diag - 2.0 * d.astype(np.float64)).astype(self.dtype)
        if not self.plan.student_matrix:
            G = self.G

            def apply(Q: np.ndarray) -> np.ndarray:
                Y = C @ (d[:, None] * Q)
                Y *= d[:, None]
                Y += G @ Q
                Y += shift[:, None] * Q
                return Y

            return apply
        if self._M is None:
            self._M = np.empty_like(self.G)
        M = self._M
        for lo in range(0, self.n, self.block):
            hi = min(self.n, lo + self.block)
            np.multiply(C[lo:hi], d[None, :], out=M[lo:hi])
            M[lo:hi] *= d[lo:hi, None]
            M[lo:hi] += self.G[lo:hi]
        M.reshape(-1)[:: self.n + 1] += shift
        return lambda Q: M @ Q

    def factors(self, d: np.ndarray, V: np.ndarray) -> np.ndarray:
        """U = B·V = V − C·(d ∘ V) (eq. 16)."""
        U = self._C @ (d.astype(self.dtype)[:, None] * V)
        np.subtract(V, U, out=U)
        return U


def _mirror_upper(A: np.ndarray, block: int) -> None:
    """Copy the upper triangle of the square C-ordered ``A`` onto its lower triangle, block by block."""
    n = A.shape[0]
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        D = A[lo:hi, lo:hi]
        iu = np.triu_indices(hi - lo, 1)
        D.T[iu] = D[iu]
        for lo2 in range(hi, n, block):
            hi2 = min(n, lo2 + block)
            A[lo2:hi2, lo:hi] = A[lo:hi, lo2:hi2].T


def as_dask(x: np.ndarray, chunks, name: str) -> da.Array:
    """A dask array whose blocks are views of the numpy buffer ``x`` (``name`` must be unique).

    ``dask.array.from_array`` copies a numpy input into its blocks (measured with
    dask 2026.8: no block shares memory with the source), which would duplicate an
    n × n buffer; here every block is a ``getitem`` of the one array in the graph.
    """
    chunks = tuple(tuple(int(c) for c in cs) for cs in chunks)
    bounds = [np.concatenate([[0], np.cumsum(cs)]).astype(int) for cs in chunks]
    src = f"{name}-buffer"
    dsk: dict = {src: x}
    for idx in np.ndindex(*(len(cs) for cs in chunks)):
        where = tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, idx))
        dsk[(name, *idx)] = (operator.getitem, src, where)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[])
    return da.Array(graph, name, chunks=chunks, dtype=x.dtype)


def eigensolve(apply, n: int, k: int, dtype, *, n_oversamples=None, n_power_iter=None, seed: int = 0,
               tol: float | None = None, max_power_iter: int | None = None):
    """:func:`~edlae_dask.linalg.randomized_eigh` of a numpy operator, in one row block.

    The same solver, test matrix and settings as the Dask backend (so the two backends
    agree to rounding); ``apply`` maps an (n, l) ndarray to ``M·Q``. ``tol`` and
    ``max_power_iter``: the convergence rule (default off: ``n_power_iter`` passes).
    """
    import dask

    from edlae_dask.linalg import randomized_eigh

    calls = iter(range(1 << 30))

    def apply_m(Q: da.Array) -> da.Array:
        Y = apply(np.asarray(Q.compute()))  # wrapped as a view: from_array would copy the n × l panel
        return as_dask(Y, ((n,), (Y.shape[1],)), f"edlae-eval-dense-mq-{id(Y):x}-{next(calls)}")

    with dask.config.set(scheduler="threads"):
        return randomized_eigh(apply_m, n, k, row_chunks=(n,), dtype=dtype, n_oversamples=n_oversamples,
                               n_power_iter=n_power_iter, seed=seed, tol=tol, max_power_iter=max_power_iter)

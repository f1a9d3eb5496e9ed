"""Training objectives of the paper, the exact low-rank EDLAE optimum, and the Proposition's bound.

With Z = [X; Λ^{1/2}] (eq. 9), ZᵀZ = P = XᵀX + Λ, and any n × n matrices,
‖Z·A‖²_F = tr(Aᵀ P A). So, for the teacher B̂ (eq. 12) and factors U, V (n × k):

    eq. 14   f₁₄(U, V) = tr((B̂ − W)ᵀ P (B̂ − W)),   W = UVᵀ − diagM(diag(UVᵀ))
    eq. 15   f₁₅(U, V) = tr((B̂ − UVᵀ)ᵀ P (B̂ − UVᵀ))

Eq. 15 is what Algorithm 1 minimises exactly (U = B̂V, V = eig_k(B̂ᵀPB̂), and then
f₁₅ = tr(M) − tr(VᵀMV) with M = B̂ᵀPB̂); eq. 14 is the real (non-convex) EDLAE
objective, whose optimum :func:`exact_lowrank_optimum` finds numerically,
started from the closed form.

The Proposition (Sec. 2.2): an autoencoder whose last hidden layer has k units
and whose output layer is linear cannot reach a training squared error below
‖X − X·V_k·V_kᵀ‖²_F = tr(XᵀX) − Σ_{i≤k} λ_i(XᵀX) (:func:`autoencoder_error_bound`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize

__all__ = [
    "objective_eq14",
    "objective_eq14_grad",
    "objective_eq15",
    "objective_eq15_closed_form",
    "closed_form_dense",
    "OptimumResult",
    "exact_lowrank_optimum",
    "BoundResult",
    "autoencoder_error_bound",
]


def _trace_quadratic(P: np.ndarray, R: np.ndarray) -> float:
    return float(np.sum(R * (P @ R)))


def objective_eq14(P: np.ndarray, B: np.ndarray, U: np.ndarray, V: np.ndarray) -> float:
    """tr((B − W)ᵀ P (B − W)) with W = UVᵀ − diagM(diag(UVᵀ)) (eq. 14; dense, small n)."""
    W = U @ V.T
    W[np.diag_indices_from(W)] = 0.0
    return _trace_quadratic(P, B - W)


def objective_eq15(P: np.ndarray, B: np.ndarray, U: np.ndarray, V: np.ndarray) -> float:
    """tr((B − UVᵀ)ᵀ P (B − UVᵀ)) (eq. 15; dense, small n)."""
    return _trace_quadratic(P, B - U @ V.T)


def objective_eq15_closed_form(M, V) -> float:
    """tr(M) − tr(VᵀMV): eq. 15 at U = B̂V for orthonormal V, M = B̂ᵀPB̂ (numpy or dask arrays)."""
    import dask.array as da

    if isinstance(M, da.Array) or isinstance(V, da.Array):
        tr_m = da.trace(M) if isinstance(M, da.Array) else np.trace(M)
        t = tr_m - (V * (M @ V)).sum()
        return float(t.compute() if hasattr(t, "compute") else t)
    return float(np.trace(M) - np.sum(V * (M @ V)))


def objective_eq14_grad(P: np.ndarray, PB: np.ndarray, B: np.ndarray, U: np.ndarray, V: np.ndarray,
                        block: int = 256):
    """f₁₄ and its gradients (∂f/∂U, ∂f/∂V); ``PB = P·B`` is precomputed.

    With R = B − W and A = UVᵀ: ∂f/∂A = −2·offdiag(P·R), so ∂f/∂U = (∂f/∂A)·V and
    ∂f/∂V = (∂f/∂A)ᵀ·U. P·W = (P·U)·Vᵀ − P·diagM(diag A) avoids the n³ product:
    each call costs about 5·n²·k flops, done in column blocks of ``block`` so that
    no n × n temporary is made.
    """
    n, k = U.shape
    a = np.einsum("ij,ij->i", U, V)  # diag(UVᵀ)
    PU = P @ U
    f = 0.0
    gU = np.zeros_like(U)
    gV = np.empty_like(V)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        VJ = V[lo:hi]
        rows = np.arange(lo, hi)
        R = U @ VJ.T  # W[:, J] with its diagonal entries zeroed next
        R[rows, rows - lo] = 0.0
        np.subtract(B[:, lo:hi], R, out=R)
        PR = PU @ VJ.T
        np.subtract(PB[:, lo:hi], PR, out=PR)
        PR += P[:, lo:hi] * a[lo:hi]  # (P·R)[:, J] = (PB − PU·Vᵀ + P·diagM(a))[:, J]
        f += float(np.vdot(R, PR))
        PR *= -2.0  # ∂f/∂A[:, J], off-diagonal
        PR[rows, rows - lo] = 0.0
        gU += PR @ VJ
        gV[lo:hi] = PR.T @ U
    return f, gU, gV


def closed_form_dense(P: np.ndarray, k: int):
    """Algorithm 1 on a dense P (exact eigensolver): returns (U, V, B, M)."""
    C = scipy.linalg.cho_solve(scipy.linalg.cho_factor(P, lower=True), np.eye(P.shape[0]))
    C = 0.5 * (C + C.T)
    d = 1.0 / np.diag(C)
    B = np.eye(P.shape[0]) - C * d[None, :]
    M = P - 2.0 * np.diag(d) + (C * d[None, :]) * d[:, None]
    M = 0.5 * (M + M.T)
    n = P.shape[0]
    w, Q = scipy.linalg.eigh(M, subset_by_index=(n - k, n - 1))
    V = Q[:, ::-1]
    return B @ V, V, B, M


@dataclass
class OptimumResult:
    """Result of :func:`exact_lowrank_optimum`.

    Attributes
    ----------
    U, V : ndarray of shape (n, k)
        The optimised factors.
    objective_start : float
        f₁₄ at the start (the closed form).
    objective : float
        f₁₄ at the optimum found (never above ``objective_start``).
    ratio : float
        ``objective_start / objective`` (>= 1; 1 means the closed form is optimal).
    n_iter, n_eval : int
    converged : bool
    message : str
    seconds : float
    """

    U: np.ndarray
    V: np.ndarray
    objective_start: float
    objective: float
    ratio: float
    n_iter: int
    n_eval: int
    converged: bool
    message: str
    seconds: float

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("objective_start", "objective", "ratio", "n_iter", "n_eval",
                                              "converged", "message", "seconds")}


def exact_lowrank_optimum(P: np.ndarray, B: np.ndarray, U0: np.ndarray, V0: np.ndarray, *,
                          maxiter: int = 300, tol: float = 1e-12) -> OptimumResult:
    """Minimise eq. 14 over (U, V) by L-BFGS, started from the closed form (U0, V0).

    Parameters
    ----------
    P : ndarray of shape (n, n)
        XᵀX + Λ (float64).
    B : ndarray of shape (n, n)
        The teacher B̂ of eq. 12.
    U0, V0 : ndarray of shape (n, k)
        Start, normally Algorithm 1's U = B̂V, V.
    maxiter : int, default=300
        L-BFGS iterations.
    tol : float, default=1e-12
        Relative decrease of f at which L-BFGS stops (``ftol``).

    Notes
    -----
    Dense and in memory (for small problems, n up to a few thousand): each
    evaluation costs ~3·n²·k flops and a few n² float64 temporaries. L-BFGS
    only accepts points that decrease f, so the result is never worse than the
    start; a local optimum of this non-convex problem is what is found.
    """
    t0 = time.perf_counter()
    P = np.asarray(P, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    U0 = np.asarray(U0, dtype=np.float64)
    V0 = np.asarray(V0, dtype=np.float64)
    n, k = U0.shape
    PB = P @ B
    scale = max(objective_eq14(P, B, U0, V0), np.finfo(float).tiny)

    def fun(z):
        U, V = z[: n * k].reshape(n, k), z[n * k :].reshape(n, k)
        f, gU, gV = objective_eq14_grad(P, PB, B, U, V)
        return f / scale, np.concatenate([gU.ravel(), gV.ravel()]) / scale

    z0 = np.concatenate([U0.ravel(), V0.ravel()])
    f0 = fun(z0)[0] * scale
    res = scipy.optimize.minimize(fun, z0, jac=True, method="L-BFGS-B",
                                  options={"maxiter": int(maxiter), "ftol": tol, "gtol": 1e-14, "maxcor": 20})
    z = res.x if res.fun * scale <= f0 else z0
    U, V = z[: n * k].reshape(n, k), z[n * k :].reshape(n, k)
    f = objective_eq14(P, B, U, V)
    return OptimumResult(U=U, V=V, objective_start=f0, objective=f, ratio=f0 / f if f > 0 else float("inf"),
                         n_iter=int(res.nit), n_eval=int(res.nfev), converged=bool(res.success),
                         message=str(res.message), seconds=time.perf_counter() - t0)


@dataclass
class BoundResult:
    """Result of :func:`autoencoder_error_bound`.

    Attributes
    ----------
    bound : float
        tr(XᵀX) − Σ top-k Ritz values = ‖X − X·V_k·V_kᵀ‖²_F for the computed V_k.
    trace : float
        tr(XᵀX) = ‖X‖²_F.
    eigenvalues : ndarray of shape (k,)
        Top-k (Ritz) eigenvalues of XᵀX.
    ritz_residuals : ndarray of shape (k,)
    V : dask.array.Array of shape (n, k)
        The top-k eigenvectors (``X·V·Vᵀ`` is a linear AE attaining the bound).
    k : int
    """

    bound: float
    trace: float
    eigenvalues: np.ndarray
    ritz_residuals: np.ndarray
    V: object
    k: int


def autoencoder_error_bound(X, k: int, *, block_size: int | None = None, dtype=np.float64,
                            n_oversamples: int | None = None, n_power_iter: int | None = None, seed: int = 0,
                            client=None) -> BoundResult:
    """The Proposition's lower bound on the training squared error of any k-unit-bottleneck autoencoder.

    ``SE_deep >= SE_linear = ‖X − X·V_k·V_kᵀ‖²_F = tr(XᵀX) − Σ_{i≤k} λ_i(XᵀX)`` (eqs. 4–6, 24),
    where V_k are the top-k eigenvectors of XᵀX, found by
    :func:`edlae_dask.linalg.randomized_eigh` on the Gram.

    Parameters
    ----------
    X : InteractionStore, str, dask array of shape (n, n), or ndarray / scipy.sparse of shape (m, n)
        An interaction store (the Gram is built over its shards), an already
        built Gram ``XᵀX`` as a dask array, or the data matrix itself.
    k : int
        Units in the last hidden layer, 0 < k < n.
    block_size : int, optional
        Item blocks of the Gram (default: the training default).
    dtype : default=float64
    n_oversamples, n_power_iter, seed
        Eigensolver settings (see :func:`~edlae_dask.linalg.randomized_eigh`).
    client : distributed.Client, optional

    Notes
    -----
    The Ritz values never exceed the true eigenvalues (Cauchy interlacing), so
    the computed bound is >= the exact one by the eigensolver's error: compare
    it with ``ritz_residuals``, or raise ``n_power_iter``.
    """
    import dask
    import dask.array as da

    from edlae_dask.dense.gram import gram
    from edlae_dask.io.interactions import InteractionStore, open_interactions
    from edlae_dask.linalg import randomized_eigh
    from edlae_dask.linalg.graph import persist

    dtype = np.dtype(dtype)
    if isinstance(X, da.Array):
        G = X.astype(dtype)
    elif isinstance(X, (str, InteractionStore)) or hasattr(X, "__fspath__"):
        store = X if isinstance(X, InteractionStore) else open_interactions(X)
        G = gram(store, block_size=block_size or min(store.n_items, 2048), dtype=dtype)
    else:
        import scipy.sparse as sp

        Xs = sp.csr_matrix(X, dtype=dtype)
        Gd = np.asarray((Xs.T @ Xs).toarray())
        c = block_size or min(Gd.shape[0], 2048)
        G = da.from_array(Gd, chunks=(c, c))
    n = G.shape[0]
    ctx = client.as_current() if client is not None else dask.config.set(scheduler="threads")
    with ctx:
        G = persist(G, wait=False)
        trace = float(da.trace(G).compute())
        eig = randomized_eigh(lambda Q: G @ Q, n, k, row_chunks=G.chunks[0], dtype=dtype,
                              n_oversamples=n_oversamples, n_power_iter=n_power_iter, seed=seed)
    theta = np.asarray(eig.eigenvalues, dtype=np.float64)
    return BoundResult(bound=max(trace - float(theta.sum()), 0.0), trace=trace, eigenvalues=theta,
                       ritz_residuals=eig.ritz_residuals, V=eig.eigenvectors, k=int(k))

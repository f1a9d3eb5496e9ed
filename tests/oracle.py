"""Dense numpy oracle of Algorithm 1, written from the paper's equations.

Independent of the library: plain numpy on dense matrices, exact eigensolver.
"""

import numpy as np


def dense_algorithm1(X, k, lam, p):
    """Return (U, V, eigenvalues, B, C, P) of Algorithm 1 for a dense or sparse X (m x n)."""
    X = np.asarray(X.todense() if hasattr(X, "todense") else X, dtype=np.float64)
    G = X.T @ X
    Lam = lam * np.eye(G.shape[0]) + p / (1 - p) * np.diag(np.diag(G))     # eq. 8
    P = G + Lam
    C = np.linalg.inv(P)                                                     # eq. 13
    B = np.eye(G.shape[0]) - C @ np.diag(1 / np.diag(C))                     # eq. 12
    M = B.T @ P @ B                                                          # Algorithm 1, line 3
    w, Q = np.linalg.eigh((M + M.T) / 2)
    order = np.argsort(w)[::-1][:k]
    V = Q[:, order]                                                          # eq. 17
    U = B @ V                                                                # eq. 16
    return U, V, w[order], B, C, P


def spectrum_of_student(X, lam, p):
    """All eigenvalues of BᵀPB, descending."""
    U, V, w, B, C, P = dense_algorithm1(X, 1, lam, p)
    M = B.T @ P @ B
    return np.sort(np.linalg.eigvalsh((M + M.T) / 2))[::-1]

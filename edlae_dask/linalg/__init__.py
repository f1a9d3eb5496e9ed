"""Distributed linear algebra for EDLAE: blocked SPD inverse and randomized top-k eigensolver.

- :func:`spd_inverse` / :func:`cholesky_lower`: tile Cholesky, ``L⁻¹`` and
  ``Wᵀ W`` as a Dask graph over square (possibly ragged) blocks, LAPACK/BLAS
  kernels in the input dtype (:mod:`._kernels`).
- :func:`randomized_eigh`: subspace iteration + Rayleigh–Ritz for a symmetric
  PSD operator given as ``Q -> M·Q``.
"""

from edlae_dask.linalg.eigen import DEFAULT_N_POWER_ITER, EighResult, default_n_oversamples, randomized_eigh
from edlae_dask.linalg.inverse import cholesky_lower, spd_inverse

__all__ = [
    "cholesky_lower",
    "spd_inverse",
    "randomized_eigh",
    "EighResult",
    "default_n_oversamples",
    "DEFAULT_N_POWER_ITER",
]

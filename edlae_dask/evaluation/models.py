"""The evaluated models, all built from one shared Gram G of the training users.

For a grid point (λ, p): ``P = G + Λ`` (eq. 8, 13), ``C = P⁻¹`` (blocked Cholesky
inverse), and for a scaling vector d the full-rank model and its rank-k student::

    B_d = I − C·diagM(d)                          full rank
    M_d = B_dᵀ P B_d = P − 2·diagM(d) + diagM(d)·C·diagM(d)
    V = eig_k(M_d),  U = B_d·V                     low rank (eq. 16–17)

Two choices of d give the four models of the paper's Figure 1:

=================  ==========================  =======================================================
model              d                           B_d
=================  ==========================  =======================================================
``full-rank``      1 ⊘ diag(C)                 EDLAE teacher, diag(B) = 0 (eq. 12)
``ease``           1 ⊘ diag(C), with p = 0     EASE (Steck 2019): the teacher without emphasis
``edlae``          1 ⊘ diag(C)                 Algorithm 1: the low-rank student of the teacher
``lae``            diag(Λ)                     B_f = P⁻¹·XᵀX = I − C·Λ, the unconstrained low-rank
                                               LAE of Jin et al. 2021 (top-k eigenvectors of B_fᵀ P B_f)
=================  ==========================  =======================================================

(With d = diag Λ: B_fᵀ P B_f = (I − ΛC) P (I − CΛ) = P − 2Λ + ΛCΛ, the same block
formula as the EDLAE student, so :func:`edlae_dask.model.student_matrix` and
:func:`edlae_dask.model.student_factors` serve both.)

The functions here build graphs; :mod:`edlae_dask.evaluation.search` decides what is
persisted and when.
"""

from __future__ import annotations

import numpy as np

from edlae_dask.errors import ParameterError

__all__ = ["MODELS", "LOW_RANK", "FULL_RANK", "parse_models", "emphasis_diagonal", "scaling"]

#: Every model name evaluate() accepts, in report order.
MODELS = ("edlae", "lae", "full-rank", "ease", "edlae-opt")
LOW_RANK = ("edlae", "lae", "edlae-opt")
FULL_RANK = ("full-rank", "ease")


def parse_models(models) -> tuple[str, ...]:
    """Model names from a list or a comma-separated string, validated, in report order."""
    if isinstance(models, str):
        models = [m for m in models.split(",")]
    names = [str(m).strip().lower() for m in models if str(m).strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        raise ParameterError(
            f"The 'models' parameter must name some of {', '.join(MODELS)}. Got {unknown or names!r}."
        )
    if "edlae-opt" in names and "edlae" not in names:
        names.append("edlae")  # the exact optimum starts from Algorithm 1's chosen point
    return tuple(m for m in MODELS if m in names)


def emphasis_diagonal(diag_g: np.ndarray, lam: float, p: float) -> np.ndarray:
    """diag(Λ) = λ + p/(1−p)·diag(G) (eq. 8)."""
    return lam + (p / (1.0 - p)) * np.asarray(diag_g, dtype=np.float64)


def scaling(model: str, diag_c: np.ndarray, diag_g: np.ndarray, lam: float, p: float, dtype) -> np.ndarray:
    """The vector d of ``B_d = I − C·diagM(d)`` for ``model`` (see the module docstring)."""
    from edlae_dask.dense.teacher import teacher_scaling

    if model == "lae":
        return emphasis_diagonal(diag_g, lam, p).astype(dtype)
    return teacher_scaling(np.asarray(diag_c)).astype(dtype)

"""The dense training path: exact Algorithm 1 with n × n matrices in square blocks over the workers.

Stages, in data-flow order (one module each)::

    gram        G = XᵀX, tree-summed over the user shards                    (dense/gram.py)
    teacher     P = G + Λ, C = P⁻¹, d = 1 ⊘ diag(C): B = I − C·diagM(d)      (eq. 8, 12, 13)
    student     M = BᵀPB block by block; V = eig_k(M), U = B·V               (Sec. 3.2, eq. 16–17)
    pipeline    the stages in order, persisted and checkpointed              (run_dense)
"""

from edlae_dask.dense.gram import gram
from edlae_dask.dense.student import student_factors, student_matrix, student_operator_implicit
from edlae_dask.dense.teacher import inverse, regularize, teacher_scaling

__all__ = ["gram", "regularize", "inverse", "teacher_scaling", "student_matrix", "student_operator_implicit",
           "student_factors"]

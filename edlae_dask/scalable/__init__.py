"""The scalable training path: never forms an n × n matrix.

Stages, in data-flow order (one module each)::

    neighbors   S_j = the K items that co-occur most with item j          (out of core, by item block)
    teacher     b_j = (P_SS)⁻¹ · G_Sj for S = S_j, the sparse teacher B      (eq. 12 restricted to S_j)
    operator    M·Ω = Bᵀ(Xᵀ(X(BΩ)) + Λ(BΩ)), matrix-free                    (Sec. 3.2, M = BᵀPB)
    pipeline    V = eig_k(M) with the randomized eigensolver, U = B·V     (eq. 16–17)

At K = n − 1 every S_j is "all other items" and B is the dense teacher of
Algorithm 1, so the path agrees with the dense one; the tests hold it to that.
"""

from edlae_dask.config import NEIGHBOR_SCORES
from edlae_dask.scalable.neighbors import top_neighbors
from edlae_dask.scalable.teacher import teacher_transpose, teacher_weights

__all__ = ["NEIGHBOR_SCORES", "top_neighbors", "teacher_weights", "teacher_transpose"]

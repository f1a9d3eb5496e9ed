"""Stage ``operator``: M·Ω = BᵀPB·Ω applied matrix-free, as a Dask graph per call.

    M·Ω = Bᵀ·( Xᵀ·(X·(B·Ω)) + Λ·(B·Ω) )          (P = XᵀX + Λ, Sec. 3.2)

Every factor is sparse and held in blocks: B and Bᵀ by item rows, X by user shards,
Xᵀ by item rows. One call costs 2·nnz(B)·l + 2·nnz(X)·l flops and moves three
dense (n or users) × l panels between the workers; nothing n × n is formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from edlae_dask.linalg.graph import task


def stack_rows(*blocks: np.ndarray) -> np.ndarray:
    """The whole panel from its row blocks (each product below needs all rows)."""
    return np.concatenate(blocks, axis=0)


def apply_sparse(a, panel: np.ndarray) -> np.ndarray:
    """A sparse block times a dense panel."""
    return np.asarray(a @ panel)


def apply_gram_rows(xt_rows, z: np.ndarray, lam_rows: np.ndarray, y_rows: np.ndarray) -> np.ndarray:
    """Rows of P·Y = Xᵀ(X·Y) + Λ·Y for one item block, given Z = X·Y."""
    out = np.asarray(xt_rows @ z)
    out += lam_rows[:, None].astype(out.dtype) * y_rows
    return out


@dataclass
class StudentOperator:
    """M = BᵀPB of the scalable path, for :func:`edlae_dask.linalg.randomized_eigh`.

    Attributes
    ----------
    b_rows, bt_rows : list of Delayed
        Row blocks of B and of Bᵀ (CSR), one per item block of ``row_chunks``.
    x_rows : list of Delayed
        The interaction shards (CSR, users × n).
    xt_rows : list of Delayed
        Row blocks of Xᵀ (CSR, items × users), one per item block.
    lam : ndarray of shape (n,)
        diag(Λ) = λ + p/(1−p)·diag(XᵀX).
    row_chunks : tuple of int
    dtype : numpy dtype
    """

    b_rows: list
    bt_rows: list
    x_rows: list
    xt_rows: list
    lam: np.ndarray
    row_chunks: tuple
    dtype: np.dtype

    def _bounds(self):
        b = np.concatenate([[0], np.cumsum(self.row_chunks)])
        return list(zip(b[:-1], b[1:]))

    def _as_array(self, blocks, row_sizes, l):
        return da.concatenate(
            [da.from_delayed(x, shape=(int(r), l), dtype=self.dtype) for x, r in zip(blocks, row_sizes)], axis=0
        )

    def __call__(self, Q: da.Array) -> da.Array:
        l = Q.shape[1]
        # optimize_graph=False keeps the persisted blocks' futures in the graph: an optimized
        # copy refers to their keys only, and the scheduler may forget them before this runs
        q_full = task("operator-q", stack_rows, *Q.to_delayed(optimize_graph=False).ravel())
        y = [task("operator-bq", apply_sparse, b, q_full) for b in self.b_rows]
        y_full = task("operator-bq-stack", stack_rows, *y)
        z = [task("operator-xy", apply_sparse, x, y_full) for x in self.x_rows]
        z_full = task("operator-xy-stack", stack_rows, *z)
        t = [task("operator-py", apply_gram_rows, xt, z_full, self.lam[a:b], yr)
             for xt, (a, b), yr in zip(self.xt_rows, self._bounds(), y)]
        t_full = task("operator-py-stack", stack_rows, *t)
        mq = [task("operator-mq", apply_sparse, bt, t_full) for bt in self.bt_rows]
        return self._as_array(mq, self.row_chunks, l)

    def factors_u(self, V: da.Array) -> da.Array:
        """U = B·V (eq. 16)."""
        v_full = task("factors-v", stack_rows, *V.to_delayed(optimize_graph=False).ravel())
        u = [task("factors-u", apply_sparse, b, v_full) for b in self.b_rows]
        return self._as_array(u, self.row_chunks, V.shape[1])

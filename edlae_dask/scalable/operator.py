"""Stage ``operator``: M·Ω = BᵀPB·Ω applied matrix-free, as a partitioned Dask graph per call.

    Y   = B·Ω                          by item row blocks I:  Y_I = B[I, :]·Ω
    Z_s = X_s·Y = (X_sᵀ)ᵀ·Y            by user shards s (never gathered)
    T_I = Σ_s X_sᵀ[I]·Z_s + Λ_I·Y_I    one piece per (item block, user shard), tree-summed over s
    M·Ω = Bᵀ·T                         by item row blocks J:  (M·Ω)_J = Bᵀ[J, :]·T

(P = XᵀX + Λ, Sec. 3.2.) Every factor is sparse and stays where it was made: B and
Bᵀ by item rows, X by user shard, held once, as X_sᵀ (CSR, items × users of shard s):
its rows give X_sᵀ[I] and its transpose, a CSC view, gives X_s·Y without a copy.
One call costs 2·nnz(B)·l + 2·nnz(X)·l flops. Three n × l panels are broadcast once
per call — Ω, Y and T, each n·l·itemsize bytes, as one key that every block task of
the next product reads (each worker receives it once) — because a row block of the
sparse B or Bᵀ touches columns anywhere; the users × l panel Z is never gathered,
and no task reads more than one shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np

from edlae_dask.linalg.graph import sum_blocks, task, tree_reduce


def stack_rows(*blocks: np.ndarray) -> np.ndarray:
    """A whole n × l panel from its row blocks: the one broadcast of a product."""
    return np.concatenate(blocks, axis=0)


def apply_sparse(a, panel: np.ndarray) -> np.ndarray:
    """A sparse block times a dense panel."""
    return np.asarray(a @ panel)


def apply_transposed(xt, panel: np.ndarray) -> np.ndarray:
    """``(X_sᵀ)ᵀ·Y`` from the shard's transpose (a CSC view: no copy of the shard)."""
    return np.asarray(xt.T @ panel)


def shard_rows_times(xt_shard, a: int, b: int, z_shard: np.ndarray) -> np.ndarray:
    """One shard's term ``X_sᵀ[a:b]·Z_s`` of the rows a..b of Xᵀ·Z (dense, (b − a) × l)."""
    return np.asarray(xt_shard[a:b] @ z_shard)


def add_penalty(t_rows: np.ndarray, lam_rows: np.ndarray, y_rows: np.ndarray) -> np.ndarray:
    """Rows of P·Y = Xᵀ(X·Y) + Λ·Y for one item block, given the rows of Xᵀ(X·Y) (a fresh array)."""
    return t_rows + lam_rows[:, None].astype(t_rows.dtype) * y_rows


@dataclass
class StudentOperator:
    """M = BᵀPB of the scalable path, for :func:`edlae_dask.linalg.randomized_eigh`.

    Attributes
    ----------
    b_rows, bt_rows : list of Delayed
        Row blocks of B and of Bᵀ (CSR, |I| × n), one per item block of ``row_chunks``.
    xt_shards : list of Delayed
        The interaction shards' transposes X_sᵀ (CSR, n × users_s), one per shard.
    lam : ndarray of shape (n,)
        diag(Λ) = λ + p/(1−p)·diag(XᵀX).
    row_chunks : tuple of int
    dtype : numpy dtype
    split_every : int, default=4
        Fan-in of the tree sums over shards.
    """

    b_rows: list
    bt_rows: list
    xt_shards: list
    lam: np.ndarray
    row_chunks: tuple
    dtype: np.dtype
    split_every: int = 4

    def _bounds(self):
        b = np.concatenate([[0], np.cumsum(self.row_chunks)]).astype(int)
        return list(zip(b[:-1].tolist(), b[1:].tolist()))

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
        z = [task("operator-xy", apply_transposed, xt, y_full) for xt in self.xt_shards]
        t = []
        for (a, b), y_rows in zip(self._bounds(), y):
            pieces = [task("operator-xtz", shard_rows_times, xt, a, b, zs) for xt, zs in zip(self.xt_shards, z)]
            xtz = tree_reduce("operator-xtz-sum", sum_blocks, pieces, split_every=self.split_every)
            t.append(task("operator-py", add_penalty, xtz, self.lam[a:b], y_rows))
        t_full = task("operator-py-stack", stack_rows, *t)
        mq = [task("operator-mq", apply_sparse, bt, t_full) for bt in self.bt_rows]
        return self._as_array(mq, self.row_chunks, l)

    def factors_u(self, V: da.Array) -> da.Array:
        """U = B·V (eq. 16); V (n × k) is broadcast once."""
        v_full = task("factors-v", stack_rows, *V.to_delayed(optimize_graph=False).ravel())
        u = [task("factors-u", apply_sparse, b, v_full) for b in self.b_rows]
        return self._as_array(u, self.row_chunks, V.shape[1])

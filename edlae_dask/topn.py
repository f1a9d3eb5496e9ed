"""Top-N selection: the N best items of each row of a score matrix, under one rule.

The rule: **score descending, ties broken by the lower item index.** ``−inf`` is a
score like any other (such items rank last, lowest index first); NaN scores are not
supported. Every top-N of the package goes through this module (batch scoring,
evaluation, ``EDLAE.recommend``, the ``demo`` command), so the same scores give the
same lists everywhere.

Three entry points::

    top_n(S, N, offset)                   one dense block of scores → (indices, scores), best first
    top_n_candidates(items, scores, N)    candidates (item, score) gathered from several blocks → the N best
    empty_top_n / merge_block / fill_exhausted
                                          streaming: blocks of consecutive items, in ascending item
                                          order, folded into a running top-N in place

All of them apply the rule in the same two steps: cut each row to its N best with
one partition, keeping the lowest indices among ties at the cut (:func:`_cut`),
then lay those entries out in ascending index order and sort them stably by score
alone, so equal scores stay in index order.
"""

from __future__ import annotations

import numpy as np

from edlae_dask.errors import ParameterError

__all__ = ["empty_top_n", "fill_exhausted", "merge_block", "top_n", "top_n_candidates"]

#: the item index of an empty place in a running top-N (never a real item: indices are int32)
_SENTINEL = np.iinfo(np.int32).max


def _cut(S: np.ndarray, N: int, scratch: np.ndarray | None = None) -> np.ndarray:
    """Mask of each row's N best entries under the rule: exactly N True per row (needs ``N < S.shape[1]``).

    One ``np.partition`` of a copy of ``S`` (into ``scratch``, a flat buffer of at
    least ``S.size`` entries, when given) finds each row's N-th best score; of the
    entries equal to it, the lowest indices fill the places left. Cost: the copy and
    partition (O(S.size)), plus a cumulative sum over the rows with ties at the cut.
    """
    width = S.shape[1]
    if scratch is not None:
        part = scratch[: S.size].reshape(S.shape)
        np.copyto(part, S)
    else:
        part = S.copy()
    part.partition(width - N, axis=1)
    cut = part[:, width - N].copy()  # the row's N-th best; copied so the scratch buffer is free again
    del part
    keep = S >= cut[:, None]
    over = np.flatnonzero(np.count_nonzero(keep, axis=1) > N)
    if over.size:  # more ties at the cut than places: the lowest item indices win
        sub, c = S[over], cut[over][:, None]
        ties = sub == c
        need = N - np.count_nonzero(sub > c, axis=1)
        keep[over] = (sub > c) | (ties & (np.cumsum(ties, axis=1, dtype=np.int32) <= need[:, None]))
    return keep


def top_n(S, N: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The N best entries of each row of a dense score block, best first.

    Parameters
    ----------
    S : array_like of shape (n_rows, width)
        Scores of items ``offset, …, offset + width − 1``; ``−inf`` allowed (e.g.
        for items to exclude: they come last). Non-float scores are taken as float64.
    N : int
        ``0 <= N <= width``.
    offset : int, default=0
        Item index of the first column.

    Returns
    -------
    indices : numpy.ndarray of shape (n_rows, N), int64
        Item indices (``offset + column``), by score descending, ties by the lower index.
    scores : numpy.ndarray of shape (n_rows, N)
        Their scores, in ``S``'s dtype.

    Notes
    -----
    Cost: one copy and partition of ``S`` (O(n_rows·width)) when ``N < width``,
    then a sort of N entries per row (O(n_rows·N·log N)). Memory: the copy and
    a boolean mask of ``S``'s shape.
    """
    S = np.asarray(S)
    if S.ndim != 2:
        raise ParameterError(f"S must be 2-d (rows × items), got shape {S.shape}")
    if S.dtype.kind != "f":
        S = S.astype(np.float64)
    n_rows, width = S.shape
    N = int(N)
    if not 0 <= N <= width:
        raise ParameterError(f"N must be in [0, {width}] (the block's columns), got {N}")
    if N == width:
        idx = np.broadcast_to(np.arange(width, dtype=np.int64), S.shape)
    else:
        # row-major flat positions: each row's N kept entries come out in ascending index order
        idx = (np.flatnonzero(_cut(S, N)) % width).reshape(n_rows, N)
    vals = np.take_along_axis(S, idx, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")  # stable over ascending indices: ties go to the lower index
    return np.take_along_axis(idx, order, axis=1) + np.int64(offset), np.take_along_axis(vals, order, axis=1)


def top_n_candidates(items, scores, N: int) -> tuple[np.ndarray, np.ndarray]:
    """The N best of candidate ``(item, score)`` pairs per row, e.g. per-block top-N lists merged.

    Parameters
    ----------
    items : array_like of int, shape (n_rows, P)
        Candidate item indices, in any order; distinct within a row.
    scores : array_like of shape (n_rows, P)
        Their scores.
    N : int
        ``0 <= N <= P``.

    Returns
    -------
    indices : numpy.ndarray of shape (n_rows, N), int64
        By score descending, ties by the lower item index.
    scores : numpy.ndarray of shape (n_rows, N)

    Notes
    -----
    When each block contributes its own top-N under the rule (:func:`top_n`), the
    result is the top-N of all blocks together. Cost: a sort of the P candidates
    per row by item (O(n_rows·P·log P)), then :func:`top_n` on them.
    """
    items = np.asarray(items, dtype=np.int64)
    scores = np.asarray(scores)
    by_item = np.argsort(items, axis=1, kind="stable")  # in index order, a position tie-break is the index tie-break
    items = np.take_along_axis(items, by_item, axis=1)
    pos, best = top_n(np.take_along_axis(scores, by_item, axis=1), N)
    return np.take_along_axis(items, pos, axis=1), best


def empty_top_n(n_rows: int, N: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """A running top-N before any block: ``(best_s, best_i)`` of shape (n_rows, N), scores −inf, no items."""
    return np.full((n_rows, N), -np.inf, dtype=dtype), np.full((n_rows, N), _SENTINEL, dtype=np.int32)


def merge_block(S: np.ndarray, j0: int, best_s: np.ndarray, best_i: np.ndarray, scratch=None) -> None:
    """Merge block scores ``S`` (items ``j0 + col``) into the running top-N, in place.

    Parameters
    ----------
    S : numpy.ndarray of shape (n_rows, width)
        Scores of items ``j0, …, j0 + width − 1``. Blocks must arrive in ascending
        item order without overlap. ``−inf`` entries never enter: :func:`fill_exhausted`
        puts them in the places left empty at the end.
    j0 : int
        Item index of the block's first column.
    best_s : numpy.ndarray of shape (n_rows, N)
    best_i : numpy.ndarray of shape (n_rows, N), int32
        The running top-N (from :func:`empty_top_n`), best first under the rule;
        updated in place.
    scratch : numpy.ndarray, optional
        A flat buffer of at least ``S.size`` entries of ``S``'s dtype for the
        partition (saves an allocation per block).

    Notes
    -----
    Blocks arrive in ascending item order, so a new item tying the running N-th
    best loses (it has the higher index): only ``S > threshold`` can enter. Rows
    with more than N such entries are first cut to the block's own top N
    (:func:`_cut`), so the merge sorts at most 2N entries per touched row, most
    of them already in order. Cost: a comparison pass over ``S``; the partition
    only on rows with more than N candidates (most rows of the first blocks, few
    later); memory: the mask, and the partition copy of those rows.
    """
    n_rows, width = S.shape
    N = best_s.shape[1]
    thr = best_s[:, N - 1]
    cand = S > thr[:, None]
    if np.isneginf(thr).any():  # a first block: most entries are candidates, count them without listing them
        flat = None
        heavy = np.flatnonzero(np.count_nonzero(cand, axis=1) > N)
    else:  # later blocks: few candidates, and listing a sparse mask flat is much cheaper than 2-d np.nonzero
        flat = np.flatnonzero(cand)
        if flat.size == 0:
            return
        heavy = np.flatnonzero(np.bincount(flat // width, minlength=n_rows) > N)
    if heavy.size:
        Sh = S if heavy.size == n_rows else S[heavy]
        keep = _cut(Sh, N, scratch)
        if heavy.size == n_rows:
            cand = keep
        else:
            cand[heavy] = keep
        flat = None
    if flat is None:
        flat = np.flatnonzero(cand)
        if flat.size == 0:
            return
    rows, cols = np.divmod(flat, width)  # row-major: sorted by row, then by item
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    touched = rows[starts]
    counts = np.diff(np.r_[starts, rows.size])
    local = np.repeat(np.arange(touched.size), counts)
    pos = N + np.arange(rows.size) - np.repeat(starts, counts)
    # per touched row: its N best (score desc, item asc), then its candidates (item asc, all of higher
    # index than the N best); a stable sort by score alone then breaks every tie by the lower item index
    ps = np.full((touched.size, N + int(counts.max())), -np.inf, dtype=best_s.dtype)
    pi = np.full(ps.shape, _SENTINEL, dtype=np.int32)
    ps[:, :N] = best_s[touched]
    pi[:, :N] = best_i[touched]
    ps[local, pos] = S.ravel()[flat]
    pi[local, pos] = cols + j0
    order = np.argsort(-ps, axis=1, kind="stable")[:, :N]
    best_s[touched] = np.take_along_axis(ps, order, axis=1)
    best_i[touched] = np.take_along_axis(pi, order, axis=1)


def fill_exhausted(best_s: np.ndarray, best_i: np.ndarray, start: int = 0) -> None:
    """Fill the empty places of a running top-N with the −inf items, lowest index first, in place.

    After the last :func:`merge_block`, a row with fewer than N entries above −inf
    has empty places; under the rule its −inf items follow, in ascending index
    order. Those are the lowest indices from ``start`` (the first block's ``j0``)
    not already in the row. Cost: O(N) per such row.
    """
    for r in np.flatnonzero(best_i[:, -1] == _SENTINEL):
        have = best_i[r][best_i[r] != _SENTINEL]
        free = best_i.shape[1] - have.size
        pad, lo = [], start
        while len(pad) < free:  # the lowest indices not already in the row
            cand = np.setdiff1d(np.arange(lo, lo + 2 * best_i.shape[1]), have)
            pad.extend(cand[: free - len(pad)].tolist())
            lo += 2 * best_i.shape[1]
        best_i[r, have.size:] = pad
        best_s[r, have.size:] = -np.inf

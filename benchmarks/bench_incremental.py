"""Incremental retraining: the gram stage on a store where 5 % of users changed, fresh vs from partial Grams.

    python benchmarks/bench_incremental.py                                  # ml-1m-diffrec-clean, shards of 100 users
    python benchmarks/bench_incremental.py --data /work/shared/data/yelp-s3rec/interactions.csv.gz --shard-size 500

Reads a real data set (``user,item`` CSV; never committed), writes it as an interaction store with small
shards, trains the dense path with a checkpoint directory (the partial Grams of every group of 4 shards are
written), then for each scenario writes the changed store (same shard size) and retrains it twice: with a copy
of that checkpoint directory (incremental: unchanged groups' partial Grams are read back) and without one
(fresh). The incremental gram stage starts from the base store's whole Gram minus the replaced groups'
partials when that reads fewer matrices, else from the unchanged groups' partials; its seconds include
writing the new partials and the whole-Gram checkpoint. Reports the gram stage's seconds both ways, the
shard groups reused, and max |U·Vᵀ − U₀·V₀ᵀ| between the two models. Scenarios (each changes 5 % of the users' rows):

- ``random``: one new interaction for each of a random 5 % of the users. They spread over nearly every
  shard, so every group is recomputed: no saving, only the cost of writing the partials.
- ``new-users``: 5 % new users (copies of random users' rows) appended at the end: only the last group(s).
- ``recent``: one new interaction for each of the 5 % of users with the highest ids (a stand-in for users
  active lately when ids are given in order of arrival): a contiguous range, few groups.

The saving is the share of groups reused: it depends on how the changed users spread over the shards, not on
how many there are. Writes ``benchmarks/results/incremental.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = "/work/shared/data/ml-1m-diffrec-clean/interactions.csv.gz"


def _load(path: str) -> sp.csr_matrix:
    df = pd.read_csv(path, usecols=["user", "item"])
    users, items = pd.factorize(df["user"])[0], pd.factorize(df["item"])[0]
    X = sp.csr_matrix((np.ones(len(df), np.float32), (users, items)), shape=(users.max() + 1, items.max() + 1))
    X.sum_duplicates()
    X.data[:] = 1.0
    return X


def _add_one_each(X: sp.csr_matrix, users: np.ndarray, rng) -> sp.csr_matrix:
    """X with one new interaction (an item the user had not) for each of ``users``."""
    X = X.tolil(copy=True)
    for u in users:
        row = set(X.rows[u])
        while True:
            i = int(rng.integers(X.shape[1]))
            if i not in row:
                X[u, i] = 1.0
                break
    return X.tocsr()


def scenarios(X: sp.csr_matrix, frac: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    m = max(1, round(frac * n))
    return {
        "random": _add_one_each(X, np.sort(rng.choice(n, m, replace=False)), rng),
        "new-users": sp.vstack([X, X[rng.choice(n, m, replace=False)]]).tocsr(),
        "recent": _add_one_each(X, np.arange(n - m, n), rng),
    }


def _train(store, params, ck):
    from edlae_dask.pipeline import train

    t0 = time.perf_counter()
    res = train(store, params=params, checkpoint_dir=ck)
    gram = res.stages["gram"]
    return res, {"gram_seconds": round(gram["seconds"], 3), "train_seconds": round(time.perf_counter() - t0, 3),
                 **{k: v for k, v in gram["detail"].items() if k.startswith(("partials", "shards", "checkpoint"))},
                 **({"from_earlier_gram": bool(gram["detail"]["gram_base"])} if "gram_base" in gram["detail"] else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "incremental.json"))
    args = ap.parse_args()

    from edlae_dask.config import TrainParams
    from edlae_dask.dense.pipeline import GROUP_SIZE
    from edlae_dask.io.interactions import write_interactions

    params = TrainParams(k=args.k, lam=50.0, p=0.25, dtype=args.dtype, block_size=args.block_size, seed=1,
                         path="dense")
    X = _load(args.data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = write_interactions(tmp / "base.zarr", X, shard_size=args.shard_size)
        _, base_fresh = _train(base, params, None)
        _, base_ck = _train(base, params, tmp / "ck-base")
        print(f"{Path(args.data).parent.name}: {X.shape[0]} users x {X.shape[1]} items, {X.nnz} interactions, "
              f"{base.n_shards} shards of {args.shard_size} users, groups of {GROUP_SIZE} shards; "
              f"base gram {base_fresh['gram_seconds']:.2f} s without checkpoints, "
              f"{base_ck['gram_seconds']:.2f} s writing the partials")
        for name, X2 in scenarios(X, args.fraction, args.seed).items():
            store = write_interactions(tmp / f"{name}.zarr", X2, shard_size=args.shard_size)
            ck = tmp / f"ck-{name}"
            shutil.copytree(tmp / "ck-base", ck)
            inc, inc_rec = _train(store, params, ck)
            fresh, fresh_rec = _train(store, params, None)
            diff = float(np.max(np.abs(inc.U.compute() @ inc.V.compute().T - fresh.U.compute() @ fresh.V.compute().T)))
            scale = float(np.max(np.abs(fresh.U.compute() @ fresh.V.compute().T)))
            rows.append({"scenario": name, "changed_users": int((abs(X2[: X.shape[0]] - X).sum(axis=1) > 0).sum()
                                                                 + X2.shape[0] - X.shape[0]),
                         "n_shards": store.n_shards, "fresh": fresh_rec, "incremental": inc_rec,
                         "gram_speedup": round(fresh_rec["gram_seconds"] / max(inc_rec["gram_seconds"], 1e-9), 2),
                         "max_abs_diff_UVt": diff, "max_abs_UVt": scale})
    print(f"{'scenario':<11}{'changed':>8}{'groups reused':>15}{'shards reused':>15}"
          f"{'gram fresh s':>14}{'gram incr s':>13}{'speedup':>9}{'max|ΔUVᵀ|':>12}")
    for r in rows:
        inc = r["incremental"]
        groups = f"{inc['partials_reused']}/{inc['partials_reused'] + inc['partials_computed']}"
        shards = f"{inc['shards_reused']}/{r['n_shards']}"
        print(f"{r['scenario']:<11}{r['changed_users']:>8}{groups:>15}{shards:>15}{r['fresh']['gram_seconds']:>14.2f}"
              f"{inc['gram_seconds']:>13.2f}{r['gram_speedup']:>9.2f}{r['max_abs_diff_UVt']:>12.2e}")
    out = {"command": "python benchmarks/bench_incremental.py " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
           "data": Path(args.data).parent.name, "n_users": X.shape[0], "n_items": X.shape[1], "nnz": int(X.nnz),
           "shard_size": args.shard_size, "group_size": GROUP_SIZE, "fraction": args.fraction,
           "dtype": args.dtype, "block_size": args.block_size, "k": args.k,
           "base": {"fresh": base_fresh, "with_checkpoints": base_ck}, "scenarios": rows,
           "environment": {"python": platform.python_version(), "machine": platform.machine(),
                           "scheduler": "dask threads, one process"}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

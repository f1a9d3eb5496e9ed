"""The scalable training path: accuracy against the dense path, and growth to 10⁶ items.

    python benchmarks/bench_scalable.py accuracy --dataset gowalla --k 200 --neighbors 32 64 128 256
    python benchmarks/bench_scalable.py scale --items 10000 100000 1000000 --neighbors 64

``accuracy``: a strong-generalization split of a real dataset from ../shared/data
(10 % test users, 80/20 fold-in/targets); the dense path (exact Algorithm 1) and the
scalable path at each K are trained on the training users with the same k, λ, p, and
nDCG@100 / Recall@20 / Recall@50 of the test users are reported, with K's relative
nDCG loss against dense. Writes ``results/scalable-accuracy-<dataset>.json`` and ``.md``.

``scale``: synthetic power-law data with 2 users per item and ~25 interactions per user
(10⁶ items: 2·10⁶ users, ~5·10⁷ interactions), trained on the scalable path on the
embedded cluster; time and peak memory per stage at each size, then batch scoring of
10⁴ users against the factors. Writes ``results/scalable-scale.json``, ``.md`` and a plot.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
log = logging.getLogger("bench_scalable")


def _machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M")}


def _rank(fold_in, U, V, n_top=100):
    """Top-n items per user from x·U·Vᵀ, fold-in items excluded."""
    batch = max(16, int(5e7 // U.shape[0]))  # users x items scores of one batch: about 200 MB
    out = np.empty((fold_in.shape[0], n_top), dtype=np.int64)
    for a in range(0, fold_in.shape[0], batch):
        x = fold_in[a: a + batch]
        S = np.asarray(x @ U) @ V.T
        S[x.nonzero()] = -np.inf
        top = np.argpartition(-S, n_top - 1, axis=1)[:, :n_top]
        order = np.argsort(-np.take_along_axis(S, top, axis=1), axis=1, kind="stable")
        out[a: a + batch] = np.take_along_axis(top, order, axis=1)
    return out


def _metrics(fold_in, targets, U, V) -> dict:
    from edlae_dask.evaluation.metrics import METRICS, summarize, user_metrics

    values = user_metrics(_rank(fold_in, U, V), targets)
    return {name: summarize(values[:, i]).mean for i, (name, _, _) in enumerate(METRICS)} | {
        "ndcg@100_se": summarize(values[:, 0]).se}


def _stage_table(stages: dict) -> dict:
    return {name: {"seconds": round(r["seconds"], 2), "peak_total_gib": round(r["peak_total_bytes"] / 2**30, 2),
                   "peak_worker_gib": round(r["peak_worker_bytes"] / 2**30, 2)} for name, r in stages.items()}


def accuracy(args) -> None:
    from edlae_dask.cluster import connect
    from edlae_dask.config import TrainParams
    from edlae_dask.evaluation.split import strong_generalization_split
    from edlae_dask.ingestion import ingest
    from edlae_dask.io.interactions import open_interactions, write_interactions
    from edlae_dask.pipeline import train

    work = args.workdir / args.dataset
    work.mkdir(parents=True, exist_ok=True)
    full = work / "interactions.zarr"
    if not full.exists():
        ingest(str(args.data_dir / args.dataset / "interactions.csv.gz"), str(full), min_value=args.min_value)
    store = open_interactions(str(full))
    split = strong_generalization_split(store, n_valid=1, n_test=0.1, seed=0)
    X = store.to_scipy()[split.train_users][:, split.items].tocsr()
    train_store = write_interactions(work / "train.zarr", X, shard_size=5000, overwrite=True)
    fold_in, targets = split.test.fold_in.astype(np.float32), split.test.targets
    print(f"{args.dataset}: {X.shape[0]} training users x {X.shape[1]} items, {X.nnz} interactions; "
          f"{split.test.n_users} test users; k={args.k}, lam={args.lam}, p={args.p}", flush=True)
    rows = []
    with connect("local", n_workers=args.workers) as client:
        runs = ([("dense", None)] if not args.skip_dense else []) + [("scalable", K) for K in args.neighbors]
        for path, K in runs:
            params = TrainParams(k=args.k, lam=args.lam, p=args.p, dtype=args.dtype, path=path,
                                 neighbors=K or 1, neighbor_score=args.score).validate()
            res = train(train_store, params=params, client=client)
            U, V = res.U.compute(), res.V.compute()
            m = _metrics(fold_in, targets, U, V)
            rows.append({"path": path, "K": K, "seconds": round(res.seconds, 2),
                         "peak_total_gib": round(max(r["peak_total_bytes"] for r in res.stages.values()) / 2**30, 2),
                         **{k: round(v, 5) for k, v in m.items()}, "stages": _stage_table(res.stages),
                         "eigenvalue_sum": float(np.sum(res.eigenvalues))})
            print(f"{path:<9}{K or '':>6}  nDCG@100 {m['ndcg@100']:.4f}  R@20 {m['recall@20']:.4f}  "
                  f"R@50 {m['recall@50']:.4f}  {res.seconds:7.1f} s", flush=True)
            del U, V, res
    dense = next((r for r in rows if r["path"] == "dense"), None)
    lines = [f"# Scalable path vs dense: {args.dataset}", "",
             f"{X.shape[0]} training users x {X.shape[1]} items, {X.nnz} interactions; {split.test.n_users} test "
             f"users (strong generalization, 80/20 fold-in/targets); k={args.k}, λ={args.lam}, p={args.p}, "
             f"{args.dtype}, neighbour score `{args.score}`. Machine: {_machine()['cpu']}, {os.cpu_count()} cores.",
             "", "| path | K | nDCG@100 | Recall@20 | Recall@50 | nDCG vs dense | train s | peak GiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rel = "" if dense is None else f"{(r['ndcg@100'] / dense['ndcg@100'] - 1) * 100:+.2f} %"
        lines.append(f"| {r['path']} | {r['K'] or ''} | {r['ndcg@100']:.4f} | {r['recall@20']:.4f} | "
                     f"{r['recall@50']:.4f} | {rel} | {r['seconds']:.1f} | {r['peak_total_gib']:.2f} |")
    lines += ["", f"Command: `python benchmarks/bench_scalable.py accuracy --dataset {args.dataset} --k {args.k} "
              f"--lam {args.lam} --p {args.p} --neighbors {' '.join(map(str, args.neighbors))} --score {args.score}`"]
    out = HERE / "results" / f"scalable-accuracy-{args.dataset}-{args.score}"
    out.parent.mkdir(exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"dataset": args.dataset,
                                                    "args": {k: str(v) for k, v in vars(args).items()},
                                                    "split": split.summary(), "runs": rows, "machine": _machine()},
                                                   indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def scale(args) -> None:
    from edlae_dask.cluster import connect
    from edlae_dask.config import TrainParams
    from edlae_dask.io.interactions import write_interactions
    from edlae_dask.pipeline import train
    from edlae_dask.scoring import score
    from edlae_dask.synthetic import make_interactions

    rows = []
    results = HERE / "results" / f"scalable-scale{'-' + args.tag if args.tag else ''}"
    for n in args.items:
        work = args.workdir / f"synthetic-{n}-{args.users_per_item:g}-{args.mean_per_user:g}"
        store_path = work / "interactions.zarr"
        if not (store_path / "zarr.json").exists():
            t0 = time.perf_counter()
            X = make_interactions(int(args.users_per_item * n), n, mean_per_user=args.mean_per_user,
                                  item_alpha=args.alpha, n_topics=max(50, n // 2000), seed=0)
            write_interactions(store_path, X, shard_size=100_000, overwrite=True)
            print(f"made {X.shape[0]} x {X.shape[1]}, {X.nnz} interactions in {time.perf_counter() - t0:.0f} s",
                  flush=True)
            del X
        params = TrainParams(k=args.k, lam=args.lam, p=args.p, path="scalable", neighbors=args.neighbors).validate()
        with connect("local", n_workers=args.workers) as client:
            res = train(str(store_path), params=params, client=client, out=str(work / "factors"), overwrite=True)
            peak = max(r["peak_total_bytes"] for r in res.stages.values()) / 2**30
            from edlae_dask.io.interactions import open_interactions

            shape = open_interactions(str(store_path))
            eig = res.stages["eigensolve"]["detail"]
            row = {"n_items": n, "n_users": shape.n_users, "nnz": shape.nnz, "workers": len(client.nthreads()),
                   "K": args.neighbors, "k": args.k, "train_seconds": round(res.seconds, 1),
                   "peak_total_gib": round(peak, 2),
                   "peak_worker_gib": round(max(r["peak_worker_bytes"] for r in res.stages.values()) / 2**30, 2),
                   "eigensolver": {k: v for k, v in eig.items() if not isinstance(v, (list, dict))},
                   "stages": _stage_table(res.stages),
                   "peak_by_worker_gib": {name: {w.rsplit(":", 1)[-1]: round(b / 2**30, 2)
                                                 for w, b in r.get("peak_by_worker", {}).items()}
                                          for name, r in res.stages.items()}}
            if args.score_users:
                from edlae_dask.io.interactions import read_shard

                # the first users, as their own store (same items, so the factors apply)
                Xs = read_shard(str(store_path), 0)[: args.score_users]
                users_store = write_interactions(work / "score-users.zarr", Xs, shard_size=2_500, overwrite=True)
                t0 = time.perf_counter()
                score(str(work / "factors"), users_store, str(work / "recs"), top_n=100, client=client)
                secs = time.perf_counter() - t0
                row["score"] = {"users": int(Xs.shape[0]), "top_n": 100, "seconds": round(secs, 1),
                                "users_per_s": round(Xs.shape[0] / secs, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        results.with_suffix(".json").write_text(json.dumps({"runs": rows, "machine": _machine(),
                                                            "args": {k: str(v) for k, v in vars(args).items()}},
                                                           indent=2))
    _scale_report(rows, args, results)


def _scale_report(rows, args, results) -> None:
    lines = ["# Scalable path: growth with the number of items", "",
             f"Synthetic power-law data, {args.users_per_item:g} users per item, ~{args.mean_per_user:g} interactions "
             f"per user; k={args.k}, K={args.neighbors}, "
             f"λ={args.lam}, p={args.p}, float32, embedded LocalCluster. Machine: {_machine()['cpu']}, "
             f"{os.cpu_count()} cores.", "",
             "| items | interactions | train s | peak GiB | " + " | ".join(f"{s} s" for s in rows[0]["stages"])
             + " | score 10⁴ users: s | users/s |",
             "|---:|---:|---:|---:|" + "---:|" * (len(rows[0]["stages"]) + 2)]
    for r in rows:
        sc = r.get("score", {})
        lines.append(f"| {r['n_items']:,} | {r.get('nnz', '')} | {r['train_seconds']} | {r['peak_total_gib']} | "
                     + " | ".join(str(v["seconds"]) for v in r["stages"].values())
                     + f" | {sc.get('seconds', '')} | {sc.get('users_per_s', '')} |")
    lines += ["", "Peak memory: all worker processes and this one, sampled every 0.5 s. Command: "
              f"`python benchmarks/bench_scalable.py scale --items {' '.join(str(r['n_items']) for r in rows)} "
              f"--neighbors {args.neighbors} --k {args.k} --users-per-item {args.users_per_item:g} "
              f"--mean-per-user {args.mean_per_user:g}" + (f" --tag {args.tag}" if args.tag else "") + "`"]
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        ns = [r["n_items"] for r in rows]
        ax[0].loglog(ns, [r["train_seconds"] for r in rows], "o-")
        ax[0].set(xlabel="items", ylabel="train seconds", title="time")
        ax[1].loglog(ns, [r["peak_total_gib"] for r in rows], "o-")
        ax[1].set(xlabel="items", ylabel="peak GiB (all processes)", title="memory")
        fig.tight_layout()
        fig.savefig(results.with_suffix(".png"), dpi=120)
    except ImportError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--dataset", default="gowalla")
    a.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    a.add_argument("--min-value", type=float, default=None)
    a.add_argument("--k", type=int, default=200)
    a.add_argument("--lam", type=float, default=200.0)
    a.add_argument("--p", type=float, default=0.25)
    a.add_argument("--dtype", default="float32")
    a.add_argument("--neighbors", type=int, nargs="+", default=[32, 64, 128, 256])
    a.add_argument("--score", default="count", choices=["count", "cosine"])
    a.add_argument("--skip-dense", action="store_true")
    a.add_argument("--workers", type=int, default=None)
    a.add_argument("--workdir", type=Path, default=Path("/tmp/edlae-bench"))
    s = sub.add_parser("scale")
    s.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    s.add_argument("--alpha", type=float, default=0.9)
    s.add_argument("--users-per-item", type=float, default=2.0)
    s.add_argument("--mean-per-user", type=float, default=25.0)
    s.add_argument("--tag", default="", help="results/scalable-scale-TAG.{json,md,png} (default: no tag)")
    s.add_argument("--k", type=int, default=100)
    s.add_argument("--lam", type=float, default=50.0)
    s.add_argument("--p", type=float, default=0.25)
    s.add_argument("--neighbors", type=int, default=64)
    s.add_argument("--score-users", type=int, default=10_000)
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--workdir", type=Path, default=Path("/tmp/edlae-bench"))
    s.add_argument("--report-only", action="store_true", help="re-make the table and plot from the last JSON")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import distributed  # noqa: F401

    for noisy in ("distributed", "bokeh", "tornado"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if args.cmd == "accuracy":
        accuracy(args)
    elif args.report_only:  # re-make the table and plot from the JSON of the last run
        results = HERE / "results" / f"scalable-scale{'-' + args.tag if args.tag else ''}"
        _scale_report(json.loads(results.with_suffix(".json").read_text())["runs"], args, results)
    else:
        scale(args)


if __name__ == "__main__":
    main()

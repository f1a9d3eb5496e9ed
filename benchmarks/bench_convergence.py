"""The eigensolver's convergence rule: what more passes buy, and which tolerance and cap to default to.

    python benchmarks/bench_convergence.py --dataset yelp-s3rec --k 100 --lam 100 --p 0.25

A strong-generalization split of a real dataset from ../shared/data (10 % test users,
80/20 fold-in/targets; :mod:`edlae_dask.evaluation.split`), ingested with the library's
own ``edlae_dask.ingest``. On the training users, each path (``--paths``: the scalable
path at ``--neighbors`` K, the dense path) is trained

- with a fixed number of power iterations q (``--passes``, ``eig_tol = 0``: the solver
  without the rule), and
- under the rule at each tolerance (``--tols``; the default least passes and cap),

with the same k, λ, p and seed. Per run: the power iterations run, whether the rule
converged, the relative change of the top-k Ritz value sum in the last pass (for a
fixed q, from the runs at q − 1 and q: the same seed gives the same bases), the
largest relative Ritz residual, the eigensolve stage's and the whole training's
seconds, and the test users' nDCG@100 / Recall@20 / Recall@50 (fold-in scoring of
:mod:`edlae_dask.evaluation.scoring`). The dense path keeps its Gram and inverse in a
checkpoint directory, so only its first run pays for them. Writes
``results/convergence.json`` and ``results/convergence.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_table1 import machine_info  # noqa: E402

DEFAULT_DATA = HERE.parent.parent / "shared" / "data"


def _machine() -> dict:
    """bench_table1's machine record, with the load when this run started (the machine is shared)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {**machine_info(), "load_average_1min_at_start": round(load, 2)}


def _prepare(args):
    """The training store and the test users' fold-in rows and targets (items seen in training)."""
    from edlae_dask import ingest
    from edlae_dask.evaluation.split import strong_generalization_split
    from edlae_dask.io.interactions import open_interactions, write_interactions

    work = args.workdir / args.dataset
    work.mkdir(parents=True, exist_ok=True)
    full = work / "interactions.zarr"
    if not full.exists() and args.dataset.startswith("synthetic-"):
        from edlae_dask.synthetic import make_interactions

        # the data of bench_scalable.py scale at n items (synthetic-N), or with T topics (synthetic-N-tT)
        parts = args.dataset.split("-")
        n = int(parts[1])
        topics = int(parts[2][1:]) if len(parts) > 2 else max(50, n // 2000)
        X = make_interactions(2 * n, n, mean_per_user=25, item_alpha=0.9, n_topics=topics, seed=0)
        write_interactions(full, X, shard_size=100_000)
        del X
    elif not full.exists():
        ingest(str(args.data_dir / args.dataset / "interactions.csv.gz"), str(full), min_value=args.min_value)
    store = open_interactions(str(full))
    split = strong_generalization_split(store, n_valid=1, n_test=0.1, seed=0)
    X = store.to_scipy()[split.train_users][:, split.items].tocsr()
    train_store = write_interactions(work / "train.zarr", X, shard_size=5000, overwrite=True)
    return train_store, X, split


def _metrics(U, V, held) -> dict:
    import dask.array as da

    from edlae_dask.evaluation.metrics import METRICS, summarize
    from edlae_dask.evaluation.scoring import lowrank_metrics

    U = da.from_array(np.asarray(U), chunks=(4096, -1))
    V = da.from_array(np.asarray(V), chunks=(4096, -1))
    values = np.asarray(lowrank_metrics(U, V, [U.shape[1]], held)[U.shape[1]].compute())[held.n_valid:]
    out = {name: float(summarize(values[:, i]).mean) for i, (name, _, _) in enumerate(METRICS)}
    out["ndcg@100_se"] = float(summarize(values[:, 0]).se)
    return out


def _run(train_store, held, params, checkpoint_dir) -> dict:
    from edlae_dask.pipeline import train

    t0 = time.perf_counter()
    res = train(train_store, params=params, checkpoint_dir=checkpoint_dir)
    seconds = time.perf_counter() - t0
    info = res.stages["eigensolve"]["detail"]
    row = {"n_power_iter": int(res.eigensolver["n_power_iter"]), "n_matvecs": int(res.eigensolver["n_matvecs"]),
           "converged": info["converged"], "ritz_sum_change": res.eigensolver["ritz_sum_change"],
           "ritz_sum": float(np.sum(res.eigenvalues)), "ritz_residual_max": float(np.max(res.ritz_residuals)),
           "ritz_residual_median": float(np.median(res.ritz_residuals)),
           "eigensolve_seconds": round(res.stages["eigensolve"]["seconds"], 2), "train_seconds": round(seconds, 2)}
    row.update({k: round(v, 5) for k, v in _metrics(res.U.compute(), res.V.compute(), held).items()})
    return row


def _overhead(X, args) -> list[dict]:
    """Seconds of the eigensolver alone, fixed q against the rule, on the dense Gram ``XᵀX + λI`` (interleaved, min).

    The rule at the default tolerance against a fixed run of as many passes, and at a tolerance
    it meets at once (0.5, least passes 3) against the fixed q = 3: the differences are what the
    checks cost; the default rule's passes are those this operator needs.
    """
    import dask.array as da

    from edlae_dask.linalg import randomized_eigh

    G = (X.T @ X).toarray().astype(args.dtype)
    G[np.diag_indices_from(G)] += args.lam
    Gd = da.from_array(G, chunks=(4096, 4096))
    n = G.shape[0]
    from edlae_dask.config import TrainParams

    tol = TrainParams.eig_tol  # the default rule
    settings = [("tol", tol, dict(tol=tol)), ("fixed", None, {}), ("tol", 0.5, dict(tol=0.5)), ("fixed", 3, {})]
    times: dict = {}
    rows = []
    for rep in range(args.overhead_reps):
        for i, (kind, value, kw) in enumerate(settings):
            q = value if kind == "fixed" else 3
            t0 = time.perf_counter()
            r = randomized_eigh(Gd.__matmul__, n, args.k, row_chunks=Gd.chunks[0], dtype=args.dtype, n_power_iter=q,
                                log=lambda line: None, **kw)
            times.setdefault(i, []).append(time.perf_counter() - t0)
            if rep == 0:
                if i == 0:  # the fixed run beside it: as many passes as the default rule took
                    settings[1] = ("fixed", r.n_power_iter, {})
                rows.append({"rule": kind, "value": settings[i][1], "n": n, "n_power_iter": r.n_power_iter,
                             "converged": r.converged})
    for i, row in enumerate(rows):
        t = times[i]
        row.update(seconds_min=round(min(t), 2), seconds_all=[round(x, 2) for x in t])
        print(f"overhead {row['rule']:>6} {row['value']:<6g} q={row['n_power_iter']:<3} min {row['seconds_min']:.2f} s "
              f"of {row['seconds_all']}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="yelp-s3rec",
                    help="A folder of --data-dir, or synthetic-N[-tT]: bench_scalable.py scale's synthetic data at N "
                         "items (T topics; default its rule, max(50, N / 2000)).")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edlae-bench-convergence"))
    ap.add_argument("--min-value", type=float, default=None, help="Keep ratings >= this (explicit datasets).")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--lam", type=float, default=100.0)
    ap.add_argument("--p", type=float, default=0.25)
    ap.add_argument("--neighbors", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--paths", nargs="*", default=["scalable", "dense"], choices=["scalable", "dense"])
    ap.add_argument("--passes", type=int, nargs="+", default=[0, 1, 2, 3, 4, 6, 8, 12])
    ap.add_argument("--dense-passes", type=int, nargs="+", default=None,
                    help="Fixed passes of the dense path (default: --passes).")
    ap.add_argument("--tols", type=float, nargs="+", default=[1e-2, 3e-3, 1e-3, 3e-4, 1e-4])
    ap.add_argument("--max-power-iter", type=int, default=None, help="Cap under the rule (default: TrainParams').")
    ap.add_argument("--overhead-reps", type=int, default=3,
                    help="Repeats of the eigensolver-alone timing on the dense Gram (0: skip it).")
    ap.add_argument("--out", default="convergence")
    args = ap.parse_args()

    import dask

    from edlae_dask.config import TrainParams
    from edlae_dask.evaluation.scoring import put_heldout

    logging.basicConfig(level=logging.WARNING)
    machine = _machine()
    train_store, X, split = _prepare(args)
    held = put_heldout(split.test.fold_in, split.test.targets, 0, np.float32)
    head = (f"{args.dataset}: {X.shape[0]} training users x {X.shape[1]} items, {X.nnz} interactions; "
            f"{split.test.n_users} test users; k={args.k}, λ={args.lam}, p={args.p}, {args.dtype}")
    print(head, flush=True)
    cap = TrainParams.max_power_iter if args.max_power_iter is None else args.max_power_iter
    rows = []
    ckpt = args.workdir / args.dataset / "checkpoints"
    shutil.rmtree(ckpt, ignore_errors=True)
    print(f"{'path':<9}{'setting':>14}{'q':>4}{'conv':>6}{'Δ Ritz sum':>12}{'max resid':>11}{'eig s':>8}"
          f"{'train s':>9}{'nDCG@100':>10}", flush=True)
    with dask.config.set(scheduler="threads"):
        for path in args.paths:
            base = dict(k=args.k, lam=args.lam, p=args.p, dtype=args.dtype, path=path, neighbors=args.neighbors)
            fixed = args.dense_passes if path == "dense" and args.dense_passes else args.passes
            settings = [("fixed", q, dict(n_power_iter=q, eig_tol=0.0)) for q in sorted(fixed)]
            settings += [("tol", t, dict(eig_tol=t, max_power_iter=cap)) for t in args.tols]
            prev = None
            for kind, value, extra in settings:
                params = TrainParams(**base, **extra).validate()
                row = {"path": path, "rule": kind, "value": value,
                       **_run(train_store, held, params, str(ckpt) if path == "dense" else None)}
                if kind == "fixed" and prev is not None and prev["n_power_iter"] == value - 1:
                    row["ritz_sum_change"] = abs(row["ritz_sum"] - prev["ritz_sum"]) / abs(row["ritz_sum"])
                prev = row if kind == "fixed" else prev
                rows.append(row)
                change = row["ritz_sum_change"]
                setting = f"q={value}" if kind == "fixed" else f"tol={value:g}"
                print(f"{path:<9}{setting:>14}{row['n_power_iter']:>4}{str(row['converged'])[:5]:>6}"
                      f"{'' if change is None else f'{change:.2e}':>12}{row['ritz_residual_max']:>11.3e}"
                      f"{row['eigensolve_seconds']:>8.1f}{row['train_seconds']:>9.1f}{row['ndcg@100']:>10.4f}",
                      flush=True)
    shutil.rmtree(ckpt, ignore_errors=True)
    with dask.config.set(scheduler="threads"):
        overhead = _overhead(X, args) if args.overhead_reps and X.shape[1] <= 30_000 else []  # a dense n x n Gram
    _report(args, head, rows, machine, split, cap, overhead)


def _report(args, head, rows, machine, split, cap, overhead) -> None:
    lines = [f"# Eigensolver convergence rule: {args.dataset}", "", head + f"; K={args.neighbors} (scalable). "
             f"Machine: {machine['cpu_model']}, {machine['cores']} cores, shared (1-min load "
             f"{machine['load_average_1min_at_start']} at the start: seconds are indicative).", "",
             "`q=N`: N power iterations, no rule (`--eig-tol 0 --power-iters N`); `tol=t`: the rule at t with the "
             f"default least passes (3 subspace) and cap {cap}. Δ Ritz sum: relative change of the top-k Ritz value "
             "sum in the last pass. Residual: max ‖Mv − θv‖/θ over the k Ritz pairs. nDCG@100 of the test users "
             "(± its standard error in the JSON).", "",
             "| path | setting | q | converged | Δ Ritz sum | max residual | eigensolve s | train s | nDCG@100 | "
             "Recall@20 | Recall@50 |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        change = r["ritz_sum_change"]
        setting = f"q={r['value']}" if r["rule"] == "fixed" else f"tol={r['value']:g}"
        lines.append(f"| {r['path']} | {setting} | {r['n_power_iter']} | {r['converged']} | "
                     f"{'' if change is None else f'{change:.2e}'} | {r['ritz_residual_max']:.3e} | "
                     f"{r['eigensolve_seconds']:.1f} | {r['train_seconds']:.1f} | {r['ndcg@100']:.4f} | "
                     f"{r['recall@20']:.4f} | {r['recall@50']:.4f} |")
    if overhead:
        lines += ["", f"The eigensolver alone on the dense Gram XᵀX + λI of these {overhead[0]['n']} items "
                  f"(k={args.k}, least passes 3; {args.overhead_reps} interleaved repeats, the least seconds; not M: a "
                  "slower spectrum):", "",
                  "| setting | q | converged | seconds (min) | all |", "|---|---:|---|---:|---|"]
        for r in overhead:
            setting = f"q={r['value']}, no rule" if r["rule"] == "fixed" else f"tol={r['value']:g}"
            lines.append(f"| {setting} | {r['n_power_iter']} | {r['converged']} | {r['seconds_min']:.2f} | "
                         f"{', '.join(f'{x:.2f}' for x in r['seconds_all'])} |")
    command = "python benchmarks/bench_convergence.py " + " ".join(sys.argv[1:])
    lines += ["", f"Command: `{command}`"]
    out = HERE / "results" / args.out
    out.parent.mkdir(exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"dataset": args.dataset, "args": {k: str(v) for k, v in vars(args).items()}, "split": split.summary(),
         "runs": rows, "eigensolver_overhead": overhead, "machine": machine, "command": command}, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

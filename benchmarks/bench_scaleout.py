"""Scale-out: the same training run on 1, 2 and 4 local worker processes, per-worker peak memory and time.

    python benchmarks/bench_scaleout.py                       # scalable path, 300k users x 30k items x ~6e6
    python benchmarks/bench_scaleout.py --path dense --users 60000 --items 6000 --mean-per-user 40

Each run starts a fresh ``LocalCluster`` (1 thread a worker, a memory limit each), measures
every worker's idle resident memory after the library is imported there, trains, and
records per stage the peak resident memory of every worker (the library's own stage log,
sampled every 0.2 s). The table gives the largest per-worker peak above that worker's
idle baseline and the wall time; the JSON keeps n_items, n_users, nnz, the worker count
and the per-stage, per-worker peaks. Target (issue #15): on 4 workers ≤ 0.5 × the
1-worker peak for a run whose interactions dominate memory. The machine has 2 cores,
so times on 4 workers show overhead, not speed-up.

Writes ``results/scaleout-<path>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_table1 import machine_info  # noqa: E402

GiB = 2**30


NOTE = ("Peaks: each worker's resident memory, sampled every 0.2 s, above that worker's idle resident memory "
        "(measured after importing the library there). Resident memory does not fall back when a stage frees "
        "arrays, so a stage's peak includes what the allocator kept from the stages before it.")


def _rss() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


def _warm() -> None:
    """Import what a training task imports, so the baseline is a ready worker's, not a bare interpreter's."""
    import edlae_dask.dense.pipeline  # noqa: F401
    import edlae_dask.scalable.pipeline  # noqa: F401


def run_once(store_path: str, params, n_workers: int, memory_limit: str) -> dict:
    from distributed import Client, LocalCluster

    from edlae_dask.diagnostics import StageLog
    from edlae_dask.pipeline import train

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=memory_limit) as lc, Client(lc) as client:
        client.run(_warm)
        time.sleep(1.0)
        baseline = client.run(_rss)
        t0 = time.perf_counter()
        res = train(store_path, params=params, client=client, stage_log=StageLog(client, interval=0.2))
        seconds = time.perf_counter() - t0
    stages = {}
    for name, rec in res.stages.items():
        above = {w: peak - baseline.get(w, 0) for w, peak in rec["peak_by_worker"].items()}
        stages[name] = {"seconds": round(rec["seconds"], 2),
                        "peak_above_idle_gib_by_worker": {w.rsplit(":", 1)[-1]: round(b / GiB, 3)
                                                          for w, b in above.items()},
                        "max_peak_above_idle_gib": round(max(above.values()) / GiB, 3)}
    return {"workers": n_workers, "seconds": round(seconds, 1), "path": res.path,
            "idle_gib_by_worker": {w.rsplit(":", 1)[-1]: round(b / GiB, 3) for w, b in baseline.items()},
            "max_peak_above_idle_gib": max(s["max_peak_above_idle_gib"] for s in stages.values()),
            "bounding_stage": max(stages, key=lambda s: stages[s]["max_peak_above_idle_gib"]),
            "stages": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", choices=("scalable", "dense"), default="scalable")
    ap.add_argument("--users", type=int, default=300_000)
    ap.add_argument("--items", type=int, default=30_000)
    ap.add_argument("--mean-per-user", type=float, default=25.0)
    ap.add_argument("--shard-size", type=int, default=25_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--memory-limit", default="5GiB", help="Per worker.")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--neighbors", type=int, default=32)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edlae-bench-scaleout"))
    args = ap.parse_args()

    import numpy as np

    from edlae_dask.config import TrainParams
    from edlae_dask.io.interactions import open_interactions, write_interactions
    from edlae_dask.synthetic import make_interactions

    store_path = args.workdir / f"synthetic-{args.users}x{args.items}-{args.mean_per_user:g}.zarr"
    if not (store_path / "zarr.json").exists():
        X = make_interactions(args.users, args.items, mean_per_user=args.mean_per_user,
                              n_topics=max(50, args.items // 500), seed=0)
        write_interactions(store_path, X, shard_size=args.shard_size, overwrite=True)
        del X
    store = open_interactions(str(store_path))
    params = TrainParams(k=args.k, path=args.path, neighbors=args.neighbors).validate()
    runs = []
    for w in args.workers:
        row = run_once(str(store_path), params, w, args.memory_limit)
        row.update(n_items=store.n_items, n_users=store.n_users, nnz=store.nnz, shards=store.n_shards)
        runs.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "stages"}), flush=True)

    one = runs[0]["max_peak_above_idle_gib"]
    lines = [f"# Scale-out, {args.path} path",
             "",
             f"{store.n_users} users x {store.n_items} items, {store.nnz} interactions in {store.n_shards} shards "
             f"(synthetic, power-law popularity), k={args.k}"
             + (f", K={args.neighbors}" if args.path == "scalable" else "")
             + f"; LocalCluster, 1 thread a worker, {args.memory_limit} a worker; {os.cpu_count()} cores.",
             "",
             "Command: `python benchmarks/bench_scaleout.py " + " ".join(
                 f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                 for k, v in vars(args).items() if k != "workdir") + "`",
             "",
             "| workers | seconds | largest per-worker peak above idle (GiB) | vs 1 worker | stage that bounds it |",
             "|---:|---:|---:|---:|---|"]
    for r in runs:
        lines.append(f"| {r['workers']} | {r['seconds']} | {r['max_peak_above_idle_gib']:.3f} | "
                     f"{r['max_peak_above_idle_gib'] / one:.2f} | {r['bounding_stage']} |")
    lines += ["", "Per stage, the largest per-worker peak above idle (GiB):", "",
              "| stage | " + " | ".join(f"{r['workers']} workers" for r in runs) + " |",
              "|---|" + "---:|" * len(runs)]
    for name in runs[0]["stages"]:
        lines.append(f"| {name} | " + " | ".join(f"{r['stages'].get(name, {}).get('max_peak_above_idle_gib', 0):.3f}"
                                               for r in runs) + " |")
    lines += ["", NOTE]
    table = "\n".join(lines)
    print(table)
    out = HERE / "results" / f"scaleout-{args.path}"
    out.with_suffix(".json").write_text(json.dumps({"runs": runs, "machine": machine_info(),
                                                    "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    out.with_suffix(".md").write_text(table + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ws = np.array([r["workers"] for r in runs])
        ax.plot(ws, [r["max_peak_above_idle_gib"] for r in runs], "o-", label="measured")
        ax.plot(ws, one / ws, "--", color="grey", label="1 / workers")
        ax.set_xlabel("workers")
        ax.set_ylabel("largest per-worker peak above idle (GiB)")
        ax.set_xticks(ws)
        ax.set_title(f"{args.path} path, {store.nnz / 1e6:.1f}M interactions")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    main()

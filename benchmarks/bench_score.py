"""Batch scoring throughput: users per second, and the share of the machine's measured GEMM rate.

    python benchmarks/bench_score.py                       # 20,000 users; n = 20k, 200k; k = 100, 1,000

Synthetic factors (random float32 U, V of shape (n, k), published with FactorWriter in
row chunks of 4,096) and synthetic interactions (edlae_dask.synthetic.make_interactions,
power-law popularity, about 30 items per user) are scored with ``edlae_dask.score`` on an
embedded LocalCluster of ``--workers`` single-threaded worker processes (default 2), top 100.

The scoring work is counted as 2·users·k·n flops (the product XU·Vᵀ; XU itself is
2·nnz·k, negligible). The reference rate is numpy's sgemm measured in the same run
on as many BLAS threads as there are workers: a large square product (the machine's
peak), and the product of the scoring block's shape (1,024 users × k) · (k × 8,192
items). Wall-clock rates suffer when other jobs share the machine, so the workers' CPU
seconds are measured too: GFLOP per worker CPU second, against one-thread sgemm of
the block's shape ("CPU eff."), says how close the code itself comes to GEMM speed;
the load average before and after each run is recorded. Last, the kernel alone
(``top_n_scores`` on 512 users, one thread) is timed in CPU seconds against the bare
GEMMs over the same blocks, alternating, so load affects both alike ("kernel: GEMM",
the share of the kernel's CPU time that is GEMM). Prints a table, writes
``benchmarks/results/score.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def sgemm_gflops(m: int, k: int, n: int, threads: int, repeat: int = 3) -> float:
    """Best-of-``repeat`` GFLOP/s of a float32 (m × k)·(k × n) product on ``threads`` BLAS threads."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    A = rng.standard_normal((m, k), dtype=np.float32)
    B = rng.standard_normal((n, k), dtype=np.float32)
    with threadpool_limits(threads, user_api="blas"):
        A @ B.T  # warm up
        best = min(_timed(lambda: A @ B.T) for _ in range(repeat))
    return 2.0 * m * n * k / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def kernel_efficiency(n: int, k: int, top_n: int, users: int = 512, repeat: int = 2) -> dict:
    """CPU seconds of the GEMMs alone over the scoring blocks vs the whole scoring kernel, one thread.

    Both run in this process, alternated ``repeat`` times, on a ``users`` sample, so
    machine load affects both alike: the ratio is what the top-N selection, masking
    and merging cost on top of the products.
    """
    from threadpoolctl import threadpool_limits

    from edlae_dask.scoring import default_blocks, top_n_scores
    from edlae_dask.synthetic import make_interactions

    rng = np.random.default_rng(1)
    U = rng.standard_normal((n, k), dtype=np.float32)
    V = rng.standard_normal((n, k), dtype=np.float32)
    X = make_interactions(users, n, seed=1)
    ib, ub = default_blocks(n, users, 4)
    XU = np.asarray(X @ U, dtype=np.float32)
    gemm = kern = 0.0
    with threadpool_limits(1, user_api="blas"):
        for _ in range(repeat):
            t0 = time.process_time()
            for j in range(0, n, ib):
                for r in range(0, users, ub):
                    XU[r : r + ub] @ V[j : j + ib].T
            gemm += time.process_time() - t0
            t0 = time.process_time()
            top_n_scores(X, U, V, top_n)
            kern += time.process_time() - t0
    return {"users": users, "gemm_cpu_seconds": round(gemm / repeat, 3), "kernel_cpu_seconds": round(kern / repeat, 3),
            "kernel_over_gemm": round(gemm / kern, 3)}


def _warm_up() -> None:
    """Import what a scoring task needs, so the first run does not pay for the imports."""
    import edlae_dask.io.factors  # noqa: F401
    import edlae_dask.io.interactions  # noqa: F401
    import edlae_dask.io.recommendations  # noqa: F401
    import edlae_dask.scoring  # noqa: F401


def _cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used; run on each worker."""
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


def make_inputs(work: Path, n_users: int, n_items: int, k: int, shard_size: int, seed: int = 0):
    from edlae_dask.io.factors import FactorWriter
    from edlae_dask.io.interactions import write_interactions
    from edlae_dask.synthetic import make_interactions

    store_path, factors_path = work / f"x-{n_users}x{n_items}.zarr", work / f"factors-n{n_items}-k{k}"
    if not store_path.exists():
        X = make_interactions(n_users, n_items, seed=seed)
        write_interactions(store_path, X, shard_size=shard_size)
    if factors_path.exists():
        shutil.rmtree(factors_path)
    rng = np.random.default_rng(seed)
    with FactorWriter(factors_path) as w:
        for name in ("U", "V"):
            M = rng.standard_normal((n_items, k), dtype=np.float32) / np.sqrt(k)
            w.write_array(name, M, chunks=(4096, k))  # numpy: written here, not shipped to the cluster
            del M
        w.write_array("item_ids", np.arange(n_items))
        w.write_array("eigenvalues", np.ones(k))
        w.commit({"k": k, "dtype": "float32", "synthetic": True})
    return store_path, factors_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--k", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--top-n", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=5_000, help="users per shard (one task each)")
    ap.add_argument("--item-block", type=int, default=None)
    ap.add_argument("--user-batch", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=HERE / "work" / "score")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "score.json")
    args = ap.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import distributed  # noqa: F401

    for noisy in ("distributed", "bokeh", "tornado"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("edlae_dask.scoring").setLevel(logging.WARNING)  # one line per shard is too much here

    from edlae_dask.cluster import connect
    from edlae_dask.scoring import score

    args.workdir.mkdir(parents=True, exist_ok=True)
    peak = sgemm_gflops(4096, 4096, 4096, args.workers)
    print(f"sgemm 4096^3 on {args.workers} BLAS threads: {peak:.1f} GFLOP/s")
    rows = []
    with connect("local", n_workers=args.workers) as client:
        client.run(_warm_up)
        for n in args.items:
            for k in args.k:
                t0 = time.perf_counter()
                store, factors = make_inputs(args.workdir, args.users, n, k, args.shard_size)
                prep = time.perf_counter() - t0
                shaped = sgemm_gflops(1024, k, min(8192, n), args.workers)
                shaped_1 = sgemm_gflops(1024, k, min(8192, n), 1)
                out = args.workdir / f"recs-n{n}-k{k}"
                load0, cpu0 = os.getloadavg()[0], client.run(_cpu_seconds)
                report = score(factors, store, out, top_n=args.top_n, client=client, item_block=args.item_block,
                               user_batch=args.user_batch)
                cpu = sum(client.run(_cpu_seconds)[w] - c for w, c in cpu0.items())
                load1 = os.getloadavg()[0]
                assert report.n_users_scored == args.users and report.published
                flops = 2.0 * args.users * k * n
                gflops = flops / report.score_seconds / 1e9
                per_cpu = flops / cpu / 1e9
                rec = report.stages["score"]
                rows.append(dict(
                    n_users=args.users, n_items=n, k=k, top_n=args.top_n, workers=args.workers,
                    shards=report.n_shards, user_batch=report.user_batch, item_block=report.item_block,
                    seconds=round(report.score_seconds, 3), users_per_second=round(report.users_per_second, 1),
                    gflops=round(gflops, 2), sgemm_peak_gflops=round(peak, 2),
                    sgemm_block_shape_gflops=round(shaped, 2), fraction_of_peak=round(gflops / peak, 3),
                    fraction_of_block_shape=round(gflops / shaped, 3),
                    worker_cpu_seconds=round(cpu, 1), gflops_per_worker_cpu_second=round(per_cpu, 2),
                    sgemm_block_shape_1thread_gflops=round(shaped_1, 2),
                    cpu_efficiency=round(per_cpu / shaped_1, 3),
                    load_average_before_after=[round(load0, 2), round(load1, 2)],
                    peak_worker_gib=round(rec["peak_worker_bytes"] / 2**30, 2), prepare_seconds=round(prep, 1),
                ))
                print(f"n={n:>7} k={k:>5}: {report.score_seconds:7.1f} s, {report.users_per_second:9.0f} users/s, "
                      f"{gflops:6.1f} GFLOP/s = {gflops / peak:5.1%} of sgemm peak; {per_cpu:.1f} GFLOP per worker "
                      f"CPU second = {per_cpu / shaped_1:.0%} of 1-thread block sgemm (load {load0:.1f}/{load1:.1f})",
                      flush=True)
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(factors, ignore_errors=True)
                rows[-1]["kernel"] = kernel_efficiency(n, k, args.top_n)
                print(f"  kernel alone, 1 thread, 512 users: GEMMs are {rows[-1]['kernel']['kernel_over_gemm']:.0%} of "
                      "its CPU time (the rest: selection, masking, merging)", flush=True)

    head = (f"{'items':>8} {'k':>5} {'seconds':>8} {'users/s':>9} {'GFLOP/s':>8} {'of peak':>8} "
            f"{'of block sgemm':>15} {'GFLOP/CPU-s':>12} {'CPU eff.':>9} {'load':>10} {'peak worker GiB':>16} "
            f"{'kernel: GEMM':>13}")
    print(f"\n{args.users:,} users, top {args.top_n}, {args.workers} workers x 1 thread; "
          f"sgemm peak {peak:.1f} GFLOP/s on {args.workers} threads")
    print(head)
    for r in rows:
        print(f"{r['n_items']:>8} {r['k']:>5} {r['seconds']:>8.1f} {r['users_per_second']:>9.0f} {r['gflops']:>8.1f} "
              f"{r['fraction_of_peak']:>8.1%} {r['fraction_of_block_shape']:>15.1%} "
              f"{r['gflops_per_worker_cpu_second']:>12.1f} {r['cpu_efficiency']:>9.0%} "
              f"{'%.1f/%.1f' % tuple(r['load_average_before_after']):>10} {r['peak_worker_gib']:>16.2f} "
              f"{r['kernel']['kernel_over_gemm']:>13.0%}")
    try:
        from threadpoolctl import threadpool_info

        blas = [{k: v for k, v in i.items() if k in ("internal_api", "version", "architecture")}
                for i in threadpool_info()]
    except Exception:  # pragma: no cover
        blas = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "blas": blas},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sgemm_peak_gflops": peak,
        "flops_counted": "2 * users * k * n_items (XU·Vᵀ)",
        "results": rows,
    }, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

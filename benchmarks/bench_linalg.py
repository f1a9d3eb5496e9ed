"""Benchmark of edlae_dask.linalg: blocked SPD inverse and randomized eigensolver.

One command::

    python benchmarks/bench_linalg.py                 # everything (~15 min on 2 cores)
    python benchmarks/bench_linalg.py --quick         # n = 2,000 only, small grid
    python benchmarks/bench_linalg.py --skip-inverse  # eigensolver part only

Prints tables and writes ``benchmarks/results/linalg.json``.

(a) ``spd_inverse`` against LAPACK ``potrf`` + ``potri`` on the same matrix (a
    real-shaped sparse Gram + Λ), float32 and float64, block sizes 1024, 2048
    and a ragged 1500, on the threaded scheduler (default BLAS threads, and one
    BLAS thread per task) and on a 2-worker x 1-thread LocalCluster. Rate =
    n³ / seconds (both compute ~n³ flops); "speedup" = best LAPACK time (2 or 1
    BLAS threads) / spd_inverse time. Timing covers the graph computed and
    persisted (blocks kept in memory, no gather to one array); the cluster gets
    ``A`` persisted on the workers before the clock starts.

(b) ``randomized_eigh`` on EDLAE's ``M = BᵀPB`` from a real data set (item
    Gram of binary interactions, λ = 50, p = 0.25): for k in {10, 100, 500} and a
    grid of n_oversamples / n_power_iter, the eq.-15 objective
    ``tr(M) − tr(VᵀMV)`` relative to the exact one (``scipy.linalg.eigh``), the
    largest relative eigenvalue error, and the time (threaded scheduler, one
    BLAS thread per task). Skipped when the data file is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import scipy
import scipy.linalg
import scipy.sparse as sp
from scipy.linalg import lapack
from threadpoolctl import threadpool_info, threadpool_limits

from edlae_dask.linalg import randomized_eigh, spd_inverse

HERE = Path(__file__).resolve().parent
DATA = Path("/work/shared/data")
DEFAULT_DATASETS = ["ml-1m-diffrec-clean", "beibei-ehcf"]  # 2,810 and 7,977 items


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def real_shaped_spd(n: int, dtype, seed: int = 0, lam: float = 50.0, p: float = 0.25) -> np.ndarray:
    """P = XᵀX + λI + p/(1−p)·diag(XᵀX) for a Zipf-like sparse binary X (4n users)."""
    rng = np.random.default_rng(seed)
    m = 4 * n
    pop = (np.arange(n) + 1.0) ** -0.8
    pop *= 0.01 * n / pop.sum()  # mean density 1 %
    nnz_per_item = rng.binomial(m, np.minimum(pop, 1.0))
    rows = np.concatenate([rng.choice(m, c, replace=False) for c in nnz_per_item])
    cols = np.repeat(np.arange(n), nnz_per_item)
    X = sp.csr_matrix((np.ones(rows.size, dtype=np.float64), (rows, cols)), shape=(m, n))
    G = (X.T @ X).toarray()
    d = np.diag(G).copy()
    G[np.diag_indices(n)] += lam + p / (1 - p) * d
    return G.astype(dtype)


def lapack_inverse(A: np.ndarray) -> tuple[np.ndarray, float]:
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (A,))
    t = time.perf_counter()
    c, info = potrf(A, lower=1)
    assert info == 0, info
    ci, info = potri(c, lower=1)
    assert info == 0, info
    secs = time.perf_counter() - t
    return ci, secs


def ragged(n: int, c: int) -> tuple[int, ...]:
    return (c,) * (n // c) + ((n % c,) if n % c else ())


def persist_wait(x, client):
    if client is not None:
        from distributed import wait

        x = client.persist(x)
        wait(x)
        return x
    (x,) = dask.persist(x)
    return x


def _n_inverse_keys(dask_scheduler=None) -> int:
    return sum(1 for key in dask_scheduler.tasks if "edlae-" in str(key))


def lower_max_rel_err(C_blocks: da.Array, ref_lower: np.ndarray, client) -> float:
    C = client.gather(client.compute(C_blocks)) if client is not None else C_blocks.compute()
    il = np.tril_indices_from(ref_lower)
    ref = ref_lower[il].astype(np.float64)
    return float(np.abs(C[il].astype(np.float64) - ref).max() / np.abs(ref).max())


def fmt_table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = " | ".join(f"{h:>{w}}" for h, _, w in [(c[1], c[0], c[2]) for c in cols])
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for key, _, w in cols:
            v = r.get(key, "")
            if isinstance(v, float):
                v = f"{v:.3g}" if abs(v) < 1e4 else f"{v:.4g}"
            cells.append(f"{str(v):>{w}}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# (a) inverse
# --------------------------------------------------------------------------- #
def bench_inverse(sizes, dtypes, block_specs, repeat, client) -> list[dict]:
    warnings.filterwarnings("ignore", message="Sending large graph")
    lapack_inverse(real_shaped_spd(500, np.float64))  # warm-up
    rows = []
    for n in sizes:
        A64 = real_shaped_spd(n, np.float64)
        for dtype in dtypes:
            A = A64.astype(dtype)
            for n_thr in (None, 1):  # OpenBLAS default (2 threads here), then 1 thread
                times = []
                for _ in range(repeat):
                    with threadpool_limits(n_thr, user_api="blas"):
                        ref, secs = lapack_inverse(A)
                    times.append(secs)
                t = min(times)
                rows.append(dict(n=n, dtype=np.dtype(dtype).name, method="lapack potrf+potri", chunks="-",
                                 scheduler=f"numpy ({n_thr or 'all'} BLAS thr)", seconds=t,
                                 gflops=n**3 / t / 1e9, rel_err=0.0))
                print(fmt_table(rows[-1:], INV_COLS).splitlines()[-1], flush=True)
            for spec in block_specs:
                c = {"1024": 1024, "2048": 2048, "ragged1500": 1500}[spec]
                chunks = ragged(n, c)
                Ad = da.from_array(A, chunks=(chunks, chunks))
                for sched in ("threads", "threads+blas1", "distributed"):
                    if sched == "distributed" and client is None:
                        continue
                    cl = client if sched == "distributed" else None
                    A_in = persist_wait(Ad, cl) if cl is not None else Ad
                    times = []
                    Cp = None
                    for _ in range(repeat):
                        if Cp is not None and cl is not None:
                            # same keys: let the scheduler forget the last result, else it is reused
                            del Cp
                            while cl.run_on_scheduler(_n_inverse_keys) > 0:
                                time.sleep(0.2)
                        C = spd_inverse(A_in)
                        t0 = time.perf_counter()
                        if sched == "threads+blas1":
                            with threadpool_limits(1, user_api="blas"), dask.config.set(scheduler="threads"):
                                Cp = persist_wait(C, None)
                        elif sched == "threads":
                            with dask.config.set(scheduler="threads"):
                                Cp = persist_wait(C, None)
                        else:
                            Cp = persist_wait(C, cl)
                        times.append(time.perf_counter() - t0)
                    t = min(times)
                    err = lower_max_rel_err(Cp, ref, cl)
                    del Cp, C
                    rows.append(dict(n=n, dtype=np.dtype(dtype).name, method="spd_inverse",
                                     chunks=f"{c}{'' if n % c == 0 else ' (ragged)'} x{len(chunks)}",
                                     scheduler=sched, seconds=t, gflops=n**3 / t / 1e9, rel_err=err))
                    # against the faster of the two LAPACK runs
                    base = min((r["seconds"] for r in rows if r["n"] == n and r["dtype"] == np.dtype(dtype).name
                                and r["method"].startswith("lapack")))
                    rows[-1]["vs_lapack"] = base / t
                    print(fmt_table(rows[-1:], INV_COLS).splitlines()[-1], flush=True)
                    if cl is not None:
                        del A_in
    return rows


INV_COLS = [("n", "n", "6"), ("dtype", "dtype", "7"), ("method", "method", "18"), ("chunks", "chunks", "17"),
            ("scheduler", "scheduler", "18"), ("seconds", "seconds", "7"), ("gflops", "n³/s GF", "7"),
            ("vs_lapack", "speedup", "7"), ("rel_err", "max rel err", "11")]


# --------------------------------------------------------------------------- #
# (b) eigensolver on EDLAE's M
# --------------------------------------------------------------------------- #
def edlae_m(path: Path, lam: float = 50.0, p: float = 0.25):
    import pandas as pd

    df = pd.read_csv(path, usecols=["user", "item"])
    u, _ = pd.factorize(df["user"])
    i, items = pd.factorize(df["item"])
    X = sp.csr_matrix((np.ones(len(df)), (u, i)), shape=(u.max() + 1, len(items)))
    X.data[:] = 1.0  # binary (duplicates summed above)
    G = (X.T @ X).toarray()
    n = G.shape[0]
    P = G.copy()
    P[np.diag_indices(n)] += lam + p / (1 - p) * np.diag(G)
    C = scipy.linalg.inv(P, assume_a="pos")
    C = 0.5 * (C + C.T)
    d = 1.0 / np.diag(C)
    M = P - 2.0 * np.diag(d) + d[:, None] * C * d[None, :]
    M = 0.5 * (M + M.T)
    return M, dict(n_users=int(X.shape[0]), n_items=n, nnz=int(X.nnz))


def bench_eigen(dataset: str, ks, grid, chunk, dtype, seed=0) -> dict | None:
    path = DATA / dataset / "interactions.csv.gz"
    if not path.exists():
        print(f"[eigen] {path} not found: skipping the real-data part", flush=True)
        return None
    t = time.perf_counter()
    M, info = edlae_m(path)
    n = M.shape[0]
    print(f"[eigen] {dataset}: {info}, M built in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    w = scipy.linalg.eigvalsh(M)[::-1]
    info["exact_eigh_seconds"] = time.perf_counter() - t
    trace = float(np.trace(M))
    info["spectrum"] = {f"lambda_{j}": float(w[j - 1]) for j in (1, 10, 11, 100, 101, 500, 501, 1000) if j <= n}
    Md = da.from_array(M.astype(dtype), chunks=(chunk, chunk))
    M64 = M
    rows = []
    # one BLAS thread per task, two task threads: what single-threaded workers do
    with dask.config.set(scheduler="threads"), threadpool_limits(1, user_api="blas"):
        for k in ks:
            t = time.perf_counter()
            scipy.linalg.eigh(M, subset_by_index=(n - k, n - 1), eigvals_only=True)
            exact_t = time.perf_counter() - t
            obj_exact = trace - float(w[:k].sum())
            # the grid is subspace iteration's; the library's default rule (block Krylov from
            # k = KRYLOV_MIN_K) is run once more per k, as the row with rule = "default"
            settings = [(p_over, q, "subspace") for p_over in grid["oversamples"](k) for q in grid["power_iter"]]
            for p_over, q, method in settings + [(None, None, None)]:
                if p_over is not None and k + p_over > n:
                    continue
                r = randomized_eigh(lambda Q: Md @ Q, n, k, row_chunks=Md.chunks[0], dtype=dtype,
                                    n_oversamples=p_over, n_power_iter=q, seed=seed, log=lambda s: None,
                                    method=method)
                p_over, q = r.n_oversamples, r.n_power_iter
                V = r.eigenvectors.compute().astype(np.float64)
                obj = trace - float(np.einsum("ij,ij->", V, M64 @ V))
                rows.append(dict(k=k, n_oversamples=p_over, n_power_iter=q, l=k + p_over, method=r.method,
                                 rule="grid" if method else "default", block=r.block_size,
                                 seconds=r.seconds, exact_subset_seconds=exact_t,
                                 obj_rel_excess=(obj - obj_exact) / obj_exact,
                                 eig_max_rel_err=float(np.max(np.abs(r.eigenvalues - w[:k]) / w[:k])),
                                 eig_median_rel_err=float(np.median(np.abs(r.eigenvalues - w[:k]) / w[:k])),
                                 ritz_res_max=float(r.ritz_residuals.max()),
                                 ritz_res_median=float(np.median(r.ritz_residuals)),
                                 n_matvecs=r.n_matvecs, cost_cols=r.n_matvec_columns))
                print(fmt_table(rows[-1:], EIG_COLS).splitlines()[-1], flush=True)
    return dict(dataset=dataset, dtype=np.dtype(dtype).name, chunk=chunk, seed=seed, info=info, rows=rows)


EIG_COLS = [("k", "k", "4"), ("n_oversamples", "p", "4"), ("n_power_iter", "q", "2"), ("seconds", "sec", "6"),
            ("exact_subset_seconds", "exact sec", "9"), ("obj_rel_excess", "obj excess", "10"),
            ("eig_max_rel_err", "eig max err", "11"), ("eig_median_rel_err", "eig med err", "11"),
            ("ritz_res_max", "res max", "8"), ("ritz_res_median", "res med", "8"), ("cost_cols", "M·cols", "7")]


def choose_defaults(eig: dict, tol: float = 1e-3) -> list[dict]:
    """Per k: the cheapest (fewest columns pushed through M) setting within tol."""
    out = []
    for k in sorted({r["k"] for r in eig["rows"]}):
        ok = [r for r in eig["rows"] if r["k"] == k and r["obj_rel_excess"] <= tol]
        best = min(ok, key=lambda r: (r["cost_cols"], r["seconds"])) if ok else None
        out.append(dict(k=k, tol=tol, cheapest=None if best is None else
                        {key: best[key] for key in ("n_oversamples", "n_power_iter", "seconds", "obj_rel_excess")}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes and grid (smoke run)")
    ap.add_argument("--skip-inverse", action="store_true")
    ap.add_argument("--skip-eigen", action="store_true")
    ap.add_argument("--no-cluster", action="store_true", help="threaded scheduler only")
    ap.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS,
                    help="folders under /work/shared/data; the first gets the full grid, the others a smaller one")
    ap.add_argument("--eigen-dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeat", type=int, default=2, help="timings per configuration (min is reported)")
    ap.add_argument("--out", default=str(HERE / "results" / "linalg.json"))
    args = ap.parse_args(argv)

    result = dict(
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), python=sys.version.split()[0]),
        versions=dict(numpy=np.__version__, scipy=scipy.__version__, dask=dask.__version__),
        blas=[{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture", "filepath")}
              for d in threadpool_info()],
        args=vars(args),
    )

    if not args.skip_inverse:
        sizes = [2000] if args.quick else [4000, 8000]
        client = cluster = None
        if not args.no_cluster:
            from distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None)
            client = Client(cluster)  # default client; threaded runs set scheduler="threads" explicitly
            client.wait_for_workers(2)
            time.sleep(3)  # let worker start-up finish before timing
        try:
            print("\n## (a) spd_inverse vs LAPACK potrf+potri\n" + fmt_table([], INV_COLS), flush=True)
            inv = bench_inverse(sizes, [np.float32, np.float64], ["1024", "2048", "ragged1500"], args.repeat, client)
        finally:
            if client is not None:
                client.close()
                cluster.close()
        result["inverse"] = inv
        print("\n" + fmt_table(inv, INV_COLS), flush=True)

    if not args.skip_eigen:
        ks = [10, 100] if args.quick else [10, 100, 500]
        full = dict(oversamples=lambda k: sorted({10, max(10, k // 4), max(10, k // 2), k, 2 * k}),
                    power_iter=[0, 1, 2, 3, 4, 6])
        small = dict(oversamples=lambda k: sorted({max(10, k // 2), max(10, k), 2 * k}), power_iter=[1, 2, 3, 4])
        if args.quick:
            full = small = dict(oversamples=lambda k: sorted({10, k}), power_iter=[0, 1, 2])
        result["eigen"] = []
        for idx, dataset in enumerate(args.datasets):
            print(f"\n## (b) randomized_eigh on M = BᵀPB of {dataset} (objective relative to exact)\n"
                  + fmt_table([], EIG_COLS), flush=True)
            eig = bench_eigen(dataset, ks, full if idx == 0 else small, chunk=1024,
                              dtype=np.dtype(args.eigen_dtype))
            if eig is None:
                continue
            eig["chosen_per_k"] = choose_defaults(eig)
            eig["default_rule"] = [r for r in eig["rows"] if r["rule"] == "default"]
            result["eigen"].append(eig)
            print(f"\ncheapest (fewest M·columns) setting with objective within 0.1 % of exact, {dataset}:")
            for c in eig["chosen_per_k"]:
                print("  ", c)
            print(f"library defaults (default_method(k), default_n_oversamples(k), default_n_power_iter(k)) "
                  f"on {dataset}:\n" + fmt_table(eig["default_rule"], EIG_COLS))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Algorithm 1 three ways on the same data and machine, in one run: naive numpy, optimised numpy, edlae-dask.

    python benchmarks/bench_side_by_side.py                      # ML-20M shape, k = 1000 (~15 min)
    python benchmarks/bench_side_by_side.py --scale 0.5          # 10,054 items: the naive path finishes
    python benchmarks/bench_side_by_side.py --quick              # scale 0.25, k = 100 (smoke run)

Data: the MovieLens-20M-shaped synthetic set of ``bench_table1.py`` (same generator, same cache under
``--workdir``), optionally scaled; float32 everywhere, same λ, p, k. Each path starts from the
interactions (the CSR matrix in memory for (a) and (b), the interaction store for (c)) and ends with
the item factors U, V; making and storing the data is not timed.

(a) naive in-memory numpy/scipy: ``G = (XᵀX).toarray()``, ``C = numpy.linalg.inv(P)``,
    ``B = I − C·diagM(1 ⊘ diag C)``, ``M = Bᵀ P B`` (two dense products), top-k of M by
    ``scipy.sparse.linalg.eigsh``, ``U = B V``.
(b) optimised in-memory numpy/scipy: the Gram in float32 by scipy, LAPACK ``potrf`` + ``potri``,
    ``M = P − 2D + DCD`` in place (no dense products), the same eigensolver as edlae-dask
    (:func:`edlae_dask.linalg.randomized_eigh` with its default rule: block Krylov from k = 500) on M
    as one in-memory block, so that every step is one numpy/LAPACK call with all BLAS threads,
    ``U = V − C (d ∘ V)``.
(c) edlae-dask: :func:`edlae_dask.model.train` on the embedded LocalCluster (one single-threaded
    worker per core), publishing a factor store.

(a) and (b) run in child processes (so that their memory is returned and a time limit can stop
them): a path that passes ``--timeout`` is reported as "> T s" and its ratio as an upper bound.
(a) needs ~8·n²·4 B (numpy's inv works in float64); it is skipped above ``--naive-max-items`` (the
reason is recorded). Ratios c/a and c/b are the figures issue #5 tracks (targets: c/b ≤ 1.25, c/a ≤ 0.3).
The quality of each path's V is compared by the eq.-15 objective tr(VᵀMV) on (b)'s M.

Writes ``benchmarks/results/side_by_side[-scaleS].json``; every number with its command.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_table1 import RESULTS, command_line, machine_info, synthetic_store, train_once  # noqa: E402

GiB = 2**30
log = logging.getLogger("bench_side_by_side")


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _load_csr(store: str):
    import scipy.sparse as sp

    from edlae_dask.io.interactions import open_interactions, read_shard

    st = open_interactions(store)
    return sp.vstack([read_shard(store, s) for s in range(st.n_shards)], format="csr").astype(np.float32)


def _fill_upper(C: np.ndarray, panel: int = 2048) -> None:
    """Copy the lower triangle of ``C`` onto its upper one, in place, panel by panel (no n x n temporary)."""
    n = C.shape[0]
    for a in range(0, n, panel):
        b = min(n, a + panel)
        C[a:b, b:] = C[b:, a:b].T
        iu = np.triu_indices(b - a, 1)
        blk = C[a:b, a:b]
        blk[iu] = blk.T[iu]


def _regularized(X, lam: float, p: float) -> np.ndarray:
    Xc = X.tocsc()
    P = (Xc.T @ Xc).toarray()
    idx = np.arange(P.shape[0])
    P[idx, idx] += (lam + p / (1 - p) * P[idx, idx]).astype(P.dtype)
    return P


def naive(X, k: int, lam: float, p: float) -> dict:
    """(a): the textbook numpy/scipy transcription of Algorithm 1."""
    import scipy.sparse.linalg as sla

    t = {}
    t0 = time.perf_counter()
    P = _regularized(X, lam, p)
    t["gram"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    C = np.linalg.inv(P)
    t["inverse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    B = np.eye(P.shape[0], dtype=P.dtype) - C * (1.0 / np.diag(C))[None, :]
    del C
    M = B.T @ (P @ B)
    t["student"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    w, V = sla.eigsh(M, k=k, which="LA")
    t["eigensolve"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    U = B @ V
    t["factors"] = time.perf_counter() - t0
    return dict(stages=t, V=V[:, ::-1].astype(np.float32), eigenvalues=w[::-1], U_shape=U.shape)


def optimised(X, k: int, lam: float, p: float, n_oversamples: int, n_power_iter: int, seed: int) -> dict:
    """(b): the best single-process numpy/scipy code we know for the same algorithm."""
    from scipy.linalg import lapack

    t = {}
    t0 = time.perf_counter()
    P = _regularized(X, lam, p)
    n = P.shape[0]
    t["gram"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    L, info = lapack.get_lapack_funcs("potrf", (P,))(P, lower=1, overwrite_a=0)
    assert info == 0, info
    C, info = lapack.get_lapack_funcs("potri", (L,))(L, lower=1, overwrite_c=1)
    assert info == 0, info
    del L
    _fill_upper(C)
    t["inverse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = (1.0 / np.diag(C).astype(np.float64)).astype(P.dtype)
    M = P  # M = P − 2D + D C D, in place, by row panels (no n x n temporaries)
    for a in range(0, n, 2048):
        b = min(n, a + 2048)
        M[a:b] += C[a:b] * d[a:b, None] * d[None, :]
    M[np.arange(n), np.arange(n)] -= 2 * d
    t["student"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the library's eigensolver and rule on M as one in-memory block: every step is one numpy/LAPACK
    # call with all BLAS threads, no task graph to distribute (the sync scheduler runs it inline)
    import dask
    import dask.array as da

    from edlae_dask.linalg import randomized_eigh

    Md = da.from_array(M, chunks=M.shape)
    with dask.config.set(scheduler="sync"):
        r = randomized_eigh(lambda Q: Md @ Q, n, k, row_chunks=(n,), dtype=M.dtype, seed=seed,
                            n_oversamples=n_oversamples, n_power_iter=n_power_iter, log=lambda s: None)
        V = r.eigenvectors.compute()
    w = r.eigenvalues[::-1]
    t["eigensolve"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    U = V - C @ (d[:, None] * V)
    t["factors"] = time.perf_counter() - t0
    return dict(stages=t, V=V, eigenvalues=w[::-1], U_shape=U.shape, n_matvecs=r.n_matvecs, l=k + r.n_oversamples,
                eigensolver=f"{r.method}, {r.n_matvecs} x {r.block_size} cols (RR dim {k + r.n_oversamples})")


def _child(which: str, store: str, kwargs: dict, conn) -> None:
    try:
        from threadpoolctl import threadpool_info

        X = _load_csr(store)
        t0 = time.perf_counter()
        res = naive(X, **kwargs) if which == "naive" else optimised(X, **kwargs)
        res["seconds"] = time.perf_counter() - t0
        res["peak_rss_gib"] = _peak_rss_gib()
        res["blas_threads"] = [d.get("num_threads") for d in threadpool_info()]
        V = res.pop("V")
        np.save(Path(store).parent / f"side-by-side-V-{which}.npy", V)
        conn.send(res)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(dict(error=f"{type(exc).__name__}: {exc}"))


def run_child(which: str, store: Path, kwargs: dict, timeout: float) -> dict:
    load_before = os.getloadavg()[0]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(which, str(store), kwargs, child), daemon=True)
    t0 = time.perf_counter()
    proc.start()
    if parent.poll(timeout):
        res = parent.recv()
        proc.join(30)
    else:
        proc.kill()
        proc.join()
        res = dict(timed_out=True, error=f"stopped after the time limit of {timeout:.0f} s")
    res["wall_seconds"] = time.perf_counter() - t0
    res["load_average_1min"] = dict(before=load_before, after=os.getloadavg()[0])
    return res


def objective(store_dir: Path, which: str, M_apply) -> float | None:
    path = store_dir / f"side-by-side-V-{which}.npy"
    if not path.exists():
        return None
    V = np.load(path).astype(np.float32)
    path.unlink()
    return float(np.einsum("ij,ij->", V.astype(np.float64), M_apply(V).astype(np.float64)))


def quality(store: Path, paths: dict, args) -> None:
    """tr(VᵀMV) of each path's V on one M (float32 LAPACK inverse), stored in ``paths``."""
    X = _load_csr(str(store))
    P = _regularized(X, args.lam, args.p)
    del X
    from scipy.linalg import lapack

    L, info = lapack.spotrf(P, lower=1)
    assert info == 0, info
    C, info = lapack.spotri(L, lower=1, overwrite_c=1)
    del L
    _fill_upper(C)
    d = (1.0 / np.diag(C).astype(np.float64)).astype(np.float32)

    def apply_m(V):
        return P @ V - 2 * d[:, None] * V + d[:, None] * (C @ (d[:, None] * V))

    for which, res in paths.items():
        obj = objective(store.parent, which, apply_m)
        if obj is not None:
            res["trace_VtMV"] = obj


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--scale", type=float, default=1.0, help="users and items x this (1 = ML-20M shape)")
    ap.add_argument("--quick", action="store_true", help="--scale 0.25 --k 100")
    ap.add_argument("--lam", type=float, default=50.0)
    ap.add_argument("--p", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds allowed to (a) and (b) each")
    ap.add_argument("--naive-max-items", type=int, default=12_000,
                    help="skip (a) above this many items (numpy's inv needs ~8 n² · 4 B)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["naive", "optimised", "edlae"])
    ap.add_argument("--no-quality", action="store_true",
                    help="skip the tr(VᵀMV) comparison (it recomputes P and C in this process: ~n³ flops, 2·n²·4 B)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edlae-bench"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.scale, args.k = 0.25, 100
    out = args.out or RESULTS / ("side_by_side" if args.scale == 1.0 else f"side_by_side-scale{args.scale:g}")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import distributed  # noqa: F401

    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("bokeh").setLevel(logging.ERROR)

    args.workdir.mkdir(parents=True, exist_ok=True)
    store, meta = synthetic_store(args.workdir, args.scale, args.seed)
    n = meta["n_items"]
    n_over, n_iter = None, None  # (b) and (c) both take the library's default eigensolver rule
    common = dict(k=args.k, lam=args.lam, p=args.p)
    paths: dict = {}
    if "naive" not in args.skip:
        if n > args.naive_max_items:
            paths["naive"] = dict(skipped=f"{n} items > --naive-max-items {args.naive_max_items}: numpy.linalg.inv "
                                          f"needs ~{8 * n * n * 4 / GiB:.0f} GiB and eigsh at k={args.k} "
                                          "takes far longer; see the scaled run")
        else:
            log.info("(a) naive numpy/scipy, time limit %.0f s", args.timeout)
            paths["naive"] = run_child("naive", store, common, args.timeout)
    if "optimised" not in args.skip:
        log.info("(b) optimised numpy/scipy, time limit %.0f s", args.timeout)
        paths["optimised"] = run_child("optimised", store, dict(common, n_oversamples=n_over, n_power_iter=n_iter,
                                                                 seed=args.seed), args.timeout)
    if "edlae" not in args.skip:
        log.info("(c) edlae-dask train() on the embedded LocalCluster")
        r = train_once(store, args.k, workdir=store.parent, lam=args.lam, p=args.p, dtype="float32",
                       block_size=None, seed=args.seed)
        from edlae_dask.io.factors import open_factors

        np.save(store.parent / "side-by-side-V-edlae.npy",
                open_factors(str(store.parent / f"factors-k{args.k}")).V.compute())
        paths["edlae"] = dict(seconds=r["seconds"], stages={s: v["seconds"] for s, v in r["stages"].items()},
                              peak_total_gib=r["peak_total_gib"], peak_worker_gib=r["peak_worker_gib"],
                              eigensolver=r["eigensolver"], n_workers=r["n_workers"],
                              load_average_1min=r["load_average_1min"])

    # quality: eq.-15 term tr(VᵀMV) of each V on the same M (larger is better; exact top-k is the max)
    if args.no_quality:
        for which in paths:
            (store.parent / f"side-by-side-V-{which}.npy").unlink(missing_ok=True)
    else:
        quality(store, paths, args)

    def secs(res):
        return res.get("seconds", res.get("wall_seconds")) if "skipped" not in res else None

    c = paths.get("edlae", {}).get("seconds")
    ratios = {}
    for which, name in (("naive", "c/a"), ("optimised", "c/b")):
        res = paths.get(which)
        if c is None or res is None or "skipped" in res:
            continue
        if res.get("timed_out"):
            ratios[name] = f"< {c / args.timeout:.3f} ({which} stopped at {args.timeout:.0f} s)"
        elif "error" in res:
            ratios[name] = f"n/a ({res['error']})"
        else:
            ratios[name] = c / res["seconds"]
    result = dict(
        benchmark="Algorithm 1: (a) naive numpy/scipy, (b) optimised numpy/scipy, (c) edlae-dask, same data",
        command=command_line(), date=time.strftime("%Y-%m-%dT%H:%M:%S"), machine=machine_info(), data=meta,
        params=dict(common, dtype="float32", n_oversamples=n_over, n_power_iter=n_iter, seed=args.seed,
                    timeout=args.timeout),
        paths=paths, ratios=ratios, targets={"c/b": "<= 1.25", "c/a": "<= 0.3"},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(result, indent=1, default=str))

    print(f"\nML-20M shape x {args.scale:g}: {meta['n_users']:,} users x {n:,} items, {meta['nnz']:,} "
          f"interactions; k={args.k}, float32")
    print(f"{'path':<12}{'seconds':>10}{'gram':>8}{'inverse':>9}{'student':>9}{'eigen':>8}{'factors':>9}"
          f"{'peak GiB':>10}{'tr(VᵀMV)':>14}")
    for which, res in paths.items():
        if "skipped" in res:
            print(f"{which:<12}  skipped: {res['skipped']}")
            continue
        if "error" in res:
            print(f"{which:<12}{'> ' + format(args.timeout, '.0f') if res.get('timed_out') else 'error':>10}  "
                  f"{res['error']}")
            continue
        st = res["stages"]
        fac = st.get("factors", st.get("publish"))
        peak = res.get("peak_rss_gib", res.get("peak_total_gib"))
        print(f"{which:<12}{secs(res):>10.1f}{st.get('gram', 0):>8.1f}{st.get('inverse', 0):>9.1f}"
              f"{st.get('student', 0):>9.1f}{st.get('eigensolve', 0):>8.1f}{fac or 0:>9.1f}{peak:>10.2f}"
              f"{res.get('trace_VtMV', float('nan')):>14.6g}")
    for name, v in ratios.items():
        print(f"{name} = {v:.3f}" if isinstance(v, float) else f"{name} {v}")
    print(f"wrote {out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

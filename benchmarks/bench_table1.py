"""The paper's Table 1 on a MovieLens-20M-shaped synthetic set: end-to-end training time against k.

    python benchmarks/bench_table1.py                        # k = 10 500 1000 2000 5000 (~25 min on 2 cores)
    python benchmarks/bench_table1.py --ks 1000              # one full run (~2 min)
    python benchmarks/bench_table1.py --quick                # a quarter-size set, k = 10 100 (smoke run)

Steck & Garcia Garcia (2021), Table 1, time Algorithm 1 on MovieLens-20M (136,677 users, 20,108
items, ~10M interactions) on a 16-vCPU, 128 GB machine: 171, 191, 220, 393 and 1,496 s at
k = 10, 500, 1,000, 2,000 and 5,000. Here the same shape is made by
:func:`edlae_dask.synthetic.make_interactions` (Zipf item popularity with exponent 0.9, log-normal
user activity with mean 120 draws, 50 topics; duplicates collapse to ~10.1M interactions), so that
the item Gram XᵀX is about half dense like ML-20M's (the density is measured once and recorded).
The set is written once to an interaction store under ``--workdir`` (default ``/tmp/edlae-bench``)
and reused by later runs and by ``bench_side_by_side.py``; making it is not timed.

Each k is one full end-to-end :func:`edlae_dask.model.train` run on a fresh embedded LocalCluster
(``edlae_dask.cluster.connect("local")``: one single-threaded worker process per core), float32,
publishing a factor store: the stages (gram, inverse, student, eigensolve, publish) are timed by
train's own stage log, with the peak resident memory of each worker and of all workers together
(sampled every 0.5 s; it includes each process's baseline, which is measured before the run and
reported). The Gram and the inverse do not depend on k but are recomputed in every run, as a user
training one model would.

Writes ``benchmarks/results/table1.json`` (every number with the command that produced it; rows
of earlier invocations for other k are kept, each with its own command and date),
``table1.md`` and ``table1.png`` (time against k, ours by stage against the paper's).
Needs matplotlib for the plot (``pip install ".[bench]"``); the rest runs without it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PAPER_SECONDS = {10: 171, 500: 191, 1000: 220, 2000: 393, 5000: 1496}  # Table 1, 16 vCPUs, 128 GB
ML20M = dict(n_users=136_677, n_items=20_108)
# chosen so that nnz ≈ 10.1M and the Gram is ~half dense (see --help); measured values go in the JSON
SYNTH = dict(mean_per_user=120.0, item_alpha=0.9, n_topics=50, topic_affinity=0.7)
STAGES = ("gram", "inverse", "student", "eigensolve", "publish")
GiB = 2**30

log = logging.getLogger("bench_table1")


# --------------------------------------------------------------------------- machine and provenance


def machine_info() -> dict:
    """CPU model, cores, memory, library versions and BLAS, for the results file."""
    import dask
    import psutil
    import scipy
    from threadpoolctl import threadpool_info

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return dict(
        cpu_model=model,
        cores=cores,
        memory_gib=round(psutil.virtual_memory().total / GiB, 1),
        platform=platform.platform(),
        python=platform.python_version(),
        numpy=np.__version__,
        scipy=scipy.__version__,
        dask=dask.__version__,
        blas=[{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
              for d in threadpool_info()],
        note="shared development machine: other jobs may have run at the same time; timings are single runs",
    )


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], HERE.parent)] + sys.argv[1:])


# --------------------------------------------------------------------------- the data set


def ml20m_shape(scale: float = 1.0) -> dict:
    """Users and items of the MovieLens-20M shape, scaled (``scale`` = 1: the published counts)."""
    return dict(n_users=int(round(ML20M["n_users"] * scale)), n_items=int(round(ML20M["n_items"] * scale)))


def synthetic_store(workdir: Path, scale: float = 1.0, seed: int = 0) -> tuple[Path, dict]:
    """The ML-20M-shaped interaction store under ``workdir`` (made once), and its description.

    The description (``meta.json`` beside the store) holds the generator's parameters, the
    interaction count, the item-popularity spread and the measured density of the item Gram.
    """
    import scipy.sparse as sp

    from edlae_dask.io.interactions import write_interactions
    from edlae_dask.synthetic import make_interactions

    shape = ml20m_shape(scale)
    name = (f"ml20m-shape-u{shape['n_users']}-i{shape['n_items']}-m{SYNTH['mean_per_user']:g}"
            f"-a{SYNTH['item_alpha']:g}-t{SYNTH['n_topics']}-s{seed}")
    root = Path(workdir) / name
    store, meta_path = root / "interactions.zarr", root / "meta.json"
    if store.is_dir() and meta_path.exists():
        return store, json.loads(meta_path.read_text())
    root.mkdir(parents=True, exist_ok=True)
    log.info("making the synthetic set %s (once; not timed in the benchmark)", name)
    t0 = time.perf_counter()
    X = make_interactions(shape["n_users"], shape["n_items"], seed=seed, **SYNTH)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_interactions(str(store), X, overwrite=True, source=dict(generator="edlae_dask.synthetic.make_interactions",
                                                                  seed=seed, **shape, **SYNTH))
    write_s = time.perf_counter() - t0
    Xc = sp.csc_matrix(X, dtype=np.float32)
    t0 = time.perf_counter()
    G = Xc.T @ Xc  # also the scipy reference time for the Gram stage
    gram_s = time.perf_counter() - t0
    items = np.diff(Xc.indptr)
    users = np.diff(X.indptr)
    meta = dict(
        name=name, generator="edlae_dask.synthetic.make_interactions", seed=seed, **shape, **SYNTH,
        nnz=int(X.nnz), density=X.nnz / (shape["n_users"] * shape["n_items"]),
        gram_nnz=int(G.nnz), gram_density=G.nnz / shape["n_items"] ** 2,
        scipy_gram_seconds=gram_s,
        items_per_user=dict(median=float(np.median(users)), mean=float(users.mean()), max=int(users.max())),
        users_per_item=dict(median=float(np.median(items)), min=int(items.min()), max=int(items.max()),
                            top1pct_share=float(np.sort(items)[::-1][: max(1, len(items) // 100)].sum() / X.nnz)),
        generate_seconds=gen_s, write_seconds=write_s,
        reference="MovieLens-20M as in Liang et al. (2018) / the paper: 136,677 users, 20,108 items, ~10.0M "
                  "interactions; its Gram is about half dense (issue #5: 207.7M nonzeros, 51 %)",
    )
    meta_path.write_text(json.dumps(meta, indent=1))
    log.info("synthetic set: %d users x %d items, %d interactions, Gram %.1f %% dense",
             shape["n_users"], shape["n_items"], X.nnz, 100 * meta["gram_density"])
    return store, meta


# --------------------------------------------------------------------------- one training run


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def train_once(store: Path, k: int, *, workdir: Path, lam: float, p: float, dtype: str, block_size, seed: int,
               n_workers=None) -> dict:
    """One end-to-end train() on a fresh embedded LocalCluster; stage times and memory."""
    from edlae_dask.cluster import connect
    from edlae_dask.config import TrainParams
    from edlae_dask.pipeline import train
    from edlae_dask.planning import dense_memory_estimate

    params = TrainParams(k=k, lam=lam, p=p, dtype=dtype, block_size=block_size, seed=seed).validate()
    load_before = os.getloadavg()
    with connect("local", n_workers=n_workers) as client:
        baseline = client.run(_rss)
        t0 = time.perf_counter()
        res = train(str(store), params=params, client=client, out=str(workdir / f"factors-k{k}"), overwrite=True)
        wall = time.perf_counter() - t0
        n_workers = len(baseline)
    n = res.U.shape[0]
    itemsize = np.dtype(dtype).itemsize
    peak_total = max(r["peak_total_bytes"] for r in res.stages.values())
    peak_worker = max(r["peak_worker_bytes"] for r in res.stages.values())
    base_total = sum(baseline.values())
    return dict(
        k=k, seconds=res.seconds, wall_seconds=wall,
        stages={name: dict(seconds=r["seconds"], peak_total_gib=r["peak_total_bytes"] / GiB,
                           peak_worker_gib=r["peak_worker_bytes"] / GiB, detail=r.get("detail", {}))
                for name, r in res.stages.items()},
        peak_total_gib=peak_total / GiB, peak_worker_gib=peak_worker / GiB,
        worker_baseline_gib=base_total / GiB, n_workers=n_workers,
        peak_over_baseline_gib=(peak_total - base_total) / GiB,
        n2_itemsize_gib=n * n * itemsize / GiB,
        peak_over_baseline_in_n2_itemsize=(peak_total - base_total) / (n * n * itemsize),
        estimate_gib=dense_memory_estimate(n, k, itemsize) / GiB,
        eigensolver=res.eigensolver, ritz_residual_max=float(np.max(res.ritz_residuals)),
        ritz_residual_median=float(np.median(res.ritz_residuals)),
        ritz_sum=float(np.sum(res.eigenvalues)),
        params=dict(k=k, lam=lam, p=p, dtype=dtype, block_size=params.resolved_block_size(n), seed=seed),
        version=res.version,
        # the machine is shared: a 1-minute load average well above the core count means other jobs ran too
        load_average_1min=dict(before=load_before[0], after=os.getloadavg()[0]),
    )


def objective_excess(workdir: Path, run: dict, args) -> float | None:
    """The eq.-15 objective's relative excess (Σλ_top-k − Σθ) / (tr M − Σλ_top-k) of the run's Ritz values.

    Uses the exact spectrum of this M that ``bench_eigen_k.py build`` caches beside the store
    (``M-eigvals-float64.npy``, M formed with λ = 50, p = 0.25 in float32: the defaults here); None
    when it is absent or the run used other parameters.
    """
    path = workdir / "M-eigvals-float64.npy"
    if not path.exists() or (args.lam, args.p, args.dtype) != (50.0, 0.25, "float32"):
        return None
    w = np.sort(np.load(path))[::-1]
    top = float(np.sum(w[: run["k"]]))
    return (top - run["ritz_sum"]) / (float(np.sum(w)) - top)


# --------------------------------------------------------------------------- report


def _merge(out: Path, fresh: dict) -> dict:
    """Keep rows of earlier invocations for k not run now (each carries its own command and date)."""
    if out.exists():
        try:
            old = json.loads(out.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("data", {}).get("name") == fresh["data"]["name"]:
            ks = {r["k"] for r in fresh["runs"]}
            fresh["runs"] = sorted([r for r in old.get("runs", []) if r["k"] not in ks] + fresh["runs"],
                                   key=lambda r: r["k"])
    return fresh


def _solver(run: dict) -> str:
    """The eigensolver's method and cost: "krylov, 6 × 520 cols (K = 2,600)"."""
    e = run.get("eigensolver", {})
    method = e.get("method", "subspace")  # runs before the method was recorded used subspace iteration
    block = e.get("block_size") or (run["k"] + e.get("n_oversamples", 0))
    dim = run["k"] + e.get("n_oversamples", 0)
    return f"{method}, {e.get('n_matvecs', '?')} × {block:,} cols (RR dim {dim:,})"


def markdown(result: dict) -> str:
    d = result["data"]
    lines = [
        "# Table 1 on a MovieLens-20M-shaped synthetic set",
        "",
        f"Data: {d['n_users']:,} users x {d['n_items']:,} items, {d['nnz']:,} interactions (synthetic, "
        f"`make_interactions(mean_per_user={d['mean_per_user']:g}, item_alpha={d['item_alpha']:g}, "
        f"n_topics={d['n_topics']}, seed={d['seed']})`); item Gram {100 * d['gram_density']:.1f} % dense "
        "(ML-20M: ~51 %).",
        f"Machine: {result['machine']['cpu_model']}, {result['machine']['cores']} cores, "
        f"{result['machine']['memory_gib']} GiB (shared; single runs). Paper: 16 vCPUs, 128 GB.",
        "Each row is one full `train()` on a fresh embedded LocalCluster, float32, publishing a factor store; "
        "ingest is not timed. Memory: peak resident memory of all workers (incl. their baseline), "
        "and above the baseline in units of n²·itemsize (target ≤ ~2.3). eq.-15 excess: (Σλ_top-k − Σθ) / "
        "(tr M − Σλ_top-k) of the Ritz values against M's exact spectrum (`bench_eigen_k.py build`; target ≤ 1e-3).",
        "",
        "| k | paper (s) | ours (s) | ours/paper | gram | inverse | student | eigensolve | publish "
        "| peak total GiB | peak/worker GiB | (peak − baseline)/(n²·4 B) | Ritz res. max | eq.-15 excess "
        "| eigensolver |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        st = r["stages"]
        paper = PAPER_SECONDS.get(r["k"])
        lines.append(
            f"| {r['k']:,} | {paper or '–'} | {r['seconds']:.0f} | "
            + (f"{r['seconds'] / paper:.2f}" if paper else "–") + " | "
            + " | ".join(f"{st[s]['seconds']:.1f}" if s in st else "–" for s in STAGES)
            + f" | {r['peak_total_gib']:.2f} | {r['peak_worker_gib']:.2f} | "
              f"{r['peak_over_baseline_in_n2_itemsize']:.2f} | {r['ritz_residual_max']:.1e} | "
              + (f"{r['objective_excess']:.1e}" if r.get("objective_excess") is not None else "–")
              + f" | {_solver(r)} |"
        )
    lines += ["", "Commands:", ""]
    for cmd in sorted({r["command"] for r in result["runs"]}):
        dates = sorted({r["date"] for r in result["runs"] if r["command"] == cmd})
        lines.append(f"- `{cmd}` ({', '.join(dates)})")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed (pip install '.[bench]'): no plot")
        return False
    runs = result["runs"]
    ks = [r["k"] for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bottom = np.zeros(len(runs))
    for s, colour in zip(STAGES, ("tab:gray", "tab:blue", "tab:cyan", "tab:orange", "tab:green")):
        h = np.array([r["stages"].get(s, {}).get("seconds", 0.0) for r in runs])
        ax.bar(range(len(runs)), h, bottom=bottom, color=colour, label=f"ours: {s}", width=0.6)
        bottom += h
    pk = [k for k in ks if k in PAPER_SECONDS]
    ax.plot([ks.index(k) for k in pk], [PAPER_SECONDS[k] for k in pk], "r:o",
            label="paper, Table 1 (16 vCPUs)")
    ax.set_xticks(range(len(runs)), [f"{k:,}" for k in ks])
    ax.set_xlabel("rank k")
    ax.set_ylabel("seconds, end to end")
    ax.set_title(f"ML-20M shape ({result['data']['n_items']:,} items), {result['machine']['cores']} cores, float32")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=sorted(PAPER_SECONDS))
    ap.add_argument("--quick", action="store_true", help="quarter-size set, k = 10 100; writes table1-quick.*")
    ap.add_argument("--scale", type=float, default=None, help="users and items x this (default 1 = ML-20M)")
    ap.add_argument("--lam", type=float, default=50.0)
    ap.add_argument("--p", type=float, default=0.25)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--block-size", type=int, default=None, help="default: train()'s own choice")
    ap.add_argument("--workers", type=int, default=None, help="default: one per core")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edlae-bench"))
    ap.add_argument("--out", type=Path, default=None, help="results prefix (default results/table1[-quick])")
    args = ap.parse_args(argv)
    if args.quick:
        args.scale = args.scale or 0.25
        if args.ks == sorted(PAPER_SECONDS):
            args.ks = [10, 100]
    scale = args.scale or 1.0
    out = args.out or RESULTS / ("table1" if scale == 1.0 else f"table1-scale{scale:g}")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import distributed  # noqa: F401

    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("bokeh").setLevel(logging.ERROR)

    args.workdir.mkdir(parents=True, exist_ok=True)
    store, meta = synthetic_store(args.workdir, scale, args.seed)
    cmd, date = command_line(), time.strftime("%Y-%m-%dT%H:%M:%S")
    runs = []
    for k in args.ks:
        log.info("k = %d: one full train() run", k)
        r = train_once(store, k, workdir=store.parent, lam=args.lam, p=args.p, dtype=args.dtype,
                       block_size=args.block_size, seed=args.seed, n_workers=args.workers)
        r.update(command=cmd, date=date, paper_seconds=PAPER_SECONDS.get(k))
        r["objective_excess"] = objective_excess(store.parent, r, args)
        runs.append(r)
        print(f"k={k}: {r['seconds']:.1f} s end to end (paper {PAPER_SECONDS.get(k, '–')} s); "
              + ", ".join(f"{s} {v['seconds']:.1f}" for s, v in r["stages"].items())
              + f"; peak {r['peak_total_gib']:.2f} GiB total, {r['peak_worker_gib']:.2f} GiB per worker", flush=True)
    result = _merge(Path(f"{out}.json"), dict(
        benchmark="Table 1 of Steck & Garcia Garcia (2021) on a MovieLens-20M-shaped synthetic set",
        machine=machine_info(), data=meta, paper=dict(seconds=PAPER_SECONDS, machine="16 vCPUs, 128 GB"),
        targets=dict(k1000_seconds_max=120, k5000_seconds_max=1496, peak_over_baseline_in_n2_itemsize_max=2.3,
                     flat_in_k_up_to=1000),
        runs=runs,
    ))
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(result, indent=1, default=str))
    md = markdown(result)
    Path(f"{out}.md").write_text(md)
    plotted = plot(result, Path(f"{out}.png"))
    print("\n" + md)
    print(f"wrote {out}.json, {out}.md" + (f", {out}.png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

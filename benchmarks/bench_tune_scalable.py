"""Tuning the scalable path on a sparse long-tail set: tuned (K, λ, p) against popularity and the untuned default.

    python benchmarks/bench_tune_scalable.py          # epinions-tang, ratings >= 4, k = 100

One ``evaluate_scalable`` run (what ``edlae-dask evaluate --path scalable`` runs) on the
strong-generalization split of the dataset (10 % validation and 10 % test users, 80/20
fold-in/targets): a small grid over K × λ × p at one k that holds the untuned default
(:class:`edlae_dask.config.TrainParams`: K = 64, λ = 20, p = 0.25, k = 100) as one of its
points. The neighbour lists are computed once (at the largest K), every (K, λ, p) gets its
own teacher and eigensolve. Reported on the test users: the popularity baseline, the default
point, and the point chosen on validation nDCG@100, with standard errors, and the tuned
model's paired differences (same test users) against both. Writes
``results/tune-scalable-<dataset>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def _m(r, metric="ndcg@100") -> str:
    s = r.test[metric]
    return f"{s.mean:.4f} ± {s.se:.4f}"


def main() -> None:
    from edlae_dask.cluster import connect
    from edlae_dask.config import TrainParams
    from edlae_dask.evaluation import paired_difference
    from edlae_dask.evaluation.scalable import evaluate_scalable
    from edlae_dask.ingestion import ingest
    from edlae_dask.io.interactions import open_interactions

    d = TrainParams()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="epinions-tang")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--min-value", type=float, default=4.0, help="keep ratings >= this (explicit sets)")
    ap.add_argument("--k", type=int, default=d.k)
    ap.add_argument("--lams", type=float, nargs="+", default=[d.lam, 200.0])
    ap.add_argument("--ps", type=float, nargs="+", default=[d.p, 0.5])
    ap.add_argument("--neighbors", type=int, nargs="+", default=[32, d.neighbors])
    ap.add_argument("--cluster", default="local")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edlae-bench"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("distributed", "bokeh", "tornado"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    work = args.workdir / f"{args.dataset}-min{args.min_value:g}"
    work.mkdir(parents=True, exist_ok=True)
    path = work / "interactions.zarr"
    if not path.exists():
        ingest(str(args.data_dir / args.dataset / "interactions.csv.gz"), str(path), min_value=args.min_value)
    store = open_interactions(str(path))
    t0 = time.perf_counter()
    with connect(args.cluster, n_workers=args.workers) as client:
        rep = evaluate_scalable(store, ks=[args.k], lams=args.lams, ps=args.ps, neighbors=args.neighbors,
                                client=client, n_valid=0.1, n_test=0.1, seed=0)
    seconds = time.perf_counter() - t0

    pop, tuned = rep.rows[0], rep.best("edlae", args.k)
    default = next((g for g in rep.grid if (g.extra["neighbors"], g.lam, g.p) == (d.neighbors, d.lam, d.p)), None)
    rows = [("popularity", pop), *([("untuned default", default)] if default else []), ("tuned", tuned)]
    diffs = {name: paired_difference(tuned, r) for name, r in rows if name != "tuned"}
    s = rep.split
    lines = [f"# Tuning the scalable path: {args.dataset} (ratings >= {args.min_value:g})", "",
             f"{s['n_train_users']:,} training users × {s['n_items_kept']:,} items (of {s['n_items']:,}; the rest "
             f"have no training interactions); {s['n_valid_evaluated']:,} validation and {s['n_test_evaluated']:,} "
             f"test users evaluated (strong generalization, 80/20 fold-in/targets). Grid at k = {args.k}: "
             f"K ∈ {{{', '.join(map(str, rep.settings['neighbors']))}}} × "
             f"λ ∈ {{{', '.join(f'{x:g}' for x in args.lams)}}} × p ∈ {{{', '.join(f'{x:g}' for x in args.ps)}}} "
             f"({len(rep.grid)} points), chosen on validation "
             f"nDCG@100; the untuned default is TrainParams' (K = {d.neighbors}, λ = {d.lam:g}, p = {d.p:g}, "
             f"k = {d.k}). Test users, mean ± standard error; Δ = tuned − row, paired over the same test users.",
             "", "| model | K | λ | p | valid nDCG@100 | test nDCG@100 | Recall@20 | Recall@50 | Δ nDCG@100 (paired) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        dlt = diffs.get(name)
        dlt = "" if dlt is None else f"{dlt.mean:+.4f} ± {dlt.se:.4f}"
        lines.append(
            f"| {name} | {r.extra.get('neighbors', '-')} | {'-' if r.lam is None else f'{r.lam:g}'} | "
            f"{'-' if r.p is None else f'{r.p:g}'} | {r.valid['ndcg@100'].mean:.4f} | {_m(r)} | "
            f"{_m(r, 'recall@20')} | {_m(r, 'recall@50')} | {dlt} |")
    lines += ["", "Every grid point (test nDCG@100; seconds of its teacher, eigensolve and scoring):", "",
              "| K | λ | p | valid nDCG@100 | test nDCG@100 | s |", "|---:|---:|---:|---:|---:|---:|"]
    for g in rep.grid:
        lines.append(f"| {g.extra['neighbors']} | {g.lam:g} | {g.p:g} | {g.valid['ndcg@100'].mean:.4f} | {_m(g)} | "
                     f"{g.extra['point_seconds']:.0f} |")
    t, runs = rep.timings, rep.settings["stage_runs"]
    lines += ["", f"Time {seconds:.0f} s on {args.workers} worker processes ({_machine()['cpu']}, {os.cpu_count()} "
              f"cores, shared): split {t['split']:.0f} s, load {t['load']:.0f} s and neighbours {t['neighbors']:.0f} s "
              f"once (K = {max(rep.settings['neighbors'])}; smaller K take prefixes), grid {t['grid']:.0f} s "
              f"({runs['teacher']} teachers, {runs['eigensolve']} eigensolves at k = {args.k}).", "",
              f"Command: `python benchmarks/bench_tune_scalable.py --dataset {args.dataset} --min-value "
              f"{args.min_value:g} --k {args.k} --lams {' '.join(f'{x:g}' for x in args.lams)} --ps "
              f"{' '.join(f'{x:g}' for x in args.ps)} --neighbors {' '.join(map(str, args.neighbors))}`"]
    out = HERE / "results" / f"tune-scalable-{args.dataset}"
    out.parent.mkdir(exist_ok=True)
    data = {"dataset": args.dataset, "args": {k: str(v) for k, v in vars(args).items()}, "seconds": seconds,
            "summary": {name: r.as_dict() for name, r in rows},
            "paired_tuned_minus": {name: v.as_dict() for name, v in diffs.items()},
            "report": rep.as_dict(), "machine": _machine()}
    out.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(rep.table())
    print("\n".join(lines))


if __name__ == "__main__":
    main()

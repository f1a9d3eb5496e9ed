"""Figure 1 of Steck & Garcia Garcia (2021) on real data: test nDCG@100 against rank k.

    python benchmarks/figure1.py                                   # ml-1m-diffrec-clean, beibei-ehcf
    python benchmarks/figure1.py --quick                           # fewer ranks / grid points (smoke run)
    python benchmarks/figure1.py --datasets tmall-buy-hkuds --models edlae,lae,full-rank \
        --ks 10,50,100,200,500,1000,2000 --lams 160 --ps 0.33 --no-opt   # ~30k items: one grid point
    python benchmarks/figure1.py --datasets tmall-buy-hkuds ... --lams 40 --add   # per command, merged by --add
    python benchmarks/figure1.py --datasets '' --import OTHER/figure1.json        # merge results, re-render

For each dataset: ingest ``<data-dir>/<name>/interactions.csv.gz`` into a work store
(``benchmarks/work/figure1/<name>``, git-ignored; explicit ratings binarized at
``--min-value``, default 3.5 for MovieLens and 4 for other explicit sets), make one
:class:`~edlae_dask.evaluation.Evaluator` (strong-generalization split, one shared Gram)
and run, with λ and p chosen per model and rank on validation users and reported on
test users:

- ``edlae``      Algorithm 1 (red dotted in the paper's figure),
- ``lae``        the unconstrained low-rank linear autoencoder (Jin et al. 2021; blue dashed),
- ``full-rank``  the full-rank EDLAE teacher B̂ (horizontal reference line), and ``ease`` (p = 0),
- ``edlae-opt``  the numerical optimum of eq. 14 started from Algorithm 1 (black solid), only where
  affordable: n_items <= ``--opt-max-items`` and k <= ``--opt-max-k``. It is a second ``run`` at the
  small ranks (its edlae rows are recomputed there, so its objective ratio and nDCG difference compare
  it with Algorithm 1 at the same (λ, p)); ``--opt-points grid`` tunes its own (λ, p) as the paper does.

All ranks go into one ``run`` (each (λ, p) point's inverse and eigensolve at the largest k serve every
smaller k: the leading columns of the top-k_max Ritz vectors). The default backend is the Evaluator's
``dense`` one (one process keeps the Gram once and reuses two n × n buffers, in-place LAPACK inverse;
see :mod:`edlae_dask.evaluation.dense`); ``--backend dask`` uses a local Dask cluster instead.

Coarse, then refined: ``--add`` evaluates more grid points for a dataset already in the JSON (same
split) and merges them; each (model, k) is then chosen over the union, every grid number names the
run (command) that produced it, and the markdown lists the runs. Chosen points on the edge of the
evaluated grid (λ at its smallest / largest value among the points with the same p, p likewise) are
listed under each table. Outputs, rewritten after each dataset (datasets from earlier invocations are
kept; ``--import`` merges those of another output directory):

- ``benchmarks/results/figure1/figure1.json``  the index: environment, and the file of each dataset,
- ``benchmarks/results/figure1/figure1-<dataset>.json``  every number of one dataset (chosen rows and
  the whole grid),
- ``benchmarks/results/figure1/figure1.md``    the markdown table,
- ``benchmarks/results/figure1/figure1.png``   one panel per dataset (matplotlib, Agg backend;
  matplotlib is a benchmark-only extra: ``pip install matplotlib``).

Cost per grid point: one n × n inverse (n³ flops) and, per low-rank model, one randomized eigensolve
at k_max (the library's default rule: block Krylov from k = 500, 13 passes over M with 3·k_max basis
columns) and U = B̂V (2n²k_max). On the shared 2-core development machine (float32) that is seconds at
ml-1m's 2,810 items and about a minute a point at beibei's 7,976 items with k_max = 1,000. At tmall-buy's
29,318 kept items with k_max = 2,000 one point takes 11–12 min (2026-11-27 evening: inverse 171–187 s,
eigensolves 184–217 s each, factors and scores 40–46 s each; peak resident 12.5 GiB, of which G, C, M
9.6 GiB), hence one point per command there; at ijcai15-buy's 32,952 kept items 13–16 min (inverse
271 s, eigensolves 240–308 s; peak resident 15.1 GiB, G, C, M 12.1 GiB). The earlier tmall point made with
``--n-power-iter 1`` (randomized subspace, l = 4,000) took 1,113 s with eigensolves of 377 + 385 s, and left
Ritz residuals up to 0.14 at k = 2,000 against 0.002–0.026 with the default rule. The eigensolver's accuracy: on
ml-1m (λ = 50, p = 0.25, k_max = 1,000) the leading k columns reach the exact eq.-15 optimum within
rounding (|excess| < 4e-7) for k = 10 … 500, and 1.6e-5 at k = k_max (with one power iteration of the
subspace method); see also
tests/test_evaluation.py::test_leading_columns_of_one_eigensolve_serve_every_smaller_rank.
gowalla (40,981 items) fits the dense backend without the student matrix (2·n² = 12.5 GiB plus panels)
for k_max up to ~500 in 14 GiB (13.9 GiB planned), but a 41k inverse is ~7 min per point here
(n³ scaling of the inverse at 29k), and it was not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
DEFAULT_OUT = HERE / "results" / "figure1"
DEFAULT_DATASETS = "ml-1m-diffrec-clean,beibei-ehcf"
DEFAULT_KS = "10,20,50,100,200,500,1000,2000"
DEFAULT_LAMS = "30,200,2000"
DEFAULT_PS = "0.2,0.45,0.7"
QUICK_KS = "10,50,200,1000"
QUICK_LAMS = "30,300"
QUICK_PS = "0.25,0.5"

MODEL_STYLE = {  # the paper's colours: Algorithm 1 red dotted, exact black solid, unconstrained LAE blue dashed
    "edlae-opt": dict(color="black", linestyle="-", marker="s", label="EDLAE, numerical optimum of eq. 14"),
    "edlae": dict(color="red", linestyle=":", marker="o", label="EDLAE, closed form (Algorithm 1)"),
    "lae": dict(color="tab:blue", linestyle="--", marker="^", label="unconstrained low-rank LAE"),
}

log = logging.getLogger("figure1")


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _dataset_info(data_dir: Path, name: str) -> dict:
    try:
        for d in json.loads((data_dir / "datasets.json").read_text()):
            if d.get("name") == name:
                return d
    except (OSError, ValueError):
        pass
    return {}


def _default_min_value(name: str, info: dict) -> float | None:
    if info.get("type") != "explicit":
        return None
    return 3.5 if name.startswith("ml-") else 4.0


def _edge_notes(rows: list, grid: list) -> list[str]:
    """Chosen points on the edge of the evaluated grid (a hint to widen it).

    The grid need not be a full product (coarse, then refined around the best): λ is
    at an edge when no evaluated point of the same model and rank has the same p and a
    smaller (larger) λ; likewise p at the same λ. p = 0 is the domain's edge, not flagged.
    """
    notes = []
    for r in rows:
        if r["model"] in ("ease",):
            continue
        same = [(g["lam"], g["p"]) for g in grid if g["model"] == r["model"] and g["k"] == r["k"]]
        lams = sorted({lam for lam, p in same if p == r["p"]})
        ps = sorted({p for lam, p in same if lam == r["lam"]})
        where = []
        if len(lams) > 1 and r["lam"] == min(lams):
            where.append(f"λ={r['lam']:g} at the low end")
        elif len(lams) > 1 and r["lam"] == max(lams):
            where.append(f"λ={r['lam']:g} at the high end")
        if r["model"] != "edlae-opt" and len(ps) > 1:
            if r["p"] == max(ps):
                where.append(f"p={r['p']:g} at the high end")
            elif r["p"] == min(ps) > 0:
                where.append(f"p={r['p']:g} at the low end")
        if where:
            label = r["model"] if r["k"] is None else f"{r['model']} k={r['k']}"
            notes.append(f"{label}: " + ", ".join(where))
    return notes


def _choose(grid: list) -> list:
    """Per (model, k), the grid entry with the best validation nDCG@100 (first on ties), as the Evaluator does."""
    best: dict = {}
    for g in grid:
        key = (g["model"], g["k"])
        if key not in best or g["valid"]["ndcg@100"]["mean"] > best[key]["valid"]["ndcg@100"]["mean"]:
            best[key] = g
    order = {"edlae": 0, "lae": 1, "full-rank": 2, "ease": 3, "edlae-opt": 4}
    return sorted(best.values(), key=lambda g: (order.get(g["model"], 9), g["k"] or 0))


def _merge(old: dict, new: dict) -> dict:
    """``new``'s grid entries added to ``old``'s (an entry of the same model, k, λ, p is replaced)."""
    if old["split"].get("store_fingerprint") != new["split"].get("store_fingerprint") or \
            old["split"]["seed"] != new["split"]["seed"]:
        raise SystemExit("--add: the existing results of this dataset come from another split or store; "
                         "rerun without --add (or with --fresh)")
    key = lambda g: (g["model"], g["k"], g["lam"], g["p"])  # noqa: E731
    fresh = {key(g) for g in new["grid"]}
    grid = [g for g in old["grid"] if key(g) not in fresh] + new["grid"]
    out = dict(new)
    out["grid"] = grid
    out["rows"] = _choose(grid)
    s = dict(new["settings"])
    s["lams"] = sorted({g["lam"] for g in grid})
    s["ps"] = sorted({g["p"] for g in grid})
    s["ks"] = sorted({g["k"] for g in grid if g["k"] is not None})
    out["settings"] = s
    out["timings"] = {k: old["timings"].get(k, 0.0) + v for k, v in new["timings"].items()}
    return out


def _label_runs(d: dict) -> None:
    """Results written before runs were recorded: one run, named after its command, owns every number."""
    if d.get("runs"):
        return
    run_id = "earlier (Dask backend)"
    d["runs"] = [{"id": run_id, "command": d.get("command", "?"), "seconds": d["seconds"]["total"],
                  "lams": d["main"]["settings"]["lams"], "ps": d["main"]["settings"]["ps"], "ks": d["ks"],
                  "n_power_iter": d["main"]["settings"].get("n_power_iter"), "backend": "dask"}]
    for run in (d["main"], d.get("edlae_opt_run") or {}):
        for g in run.get("grid", []):
            g.setdefault("run", run_id)


def run_dataset(name: str, args, client, previous: dict | None, command: str) -> dict:
    from edlae_dask.evaluation import Evaluator
    from edlae_dask.ingestion import ingest

    info = _dataset_info(args.data_dir, name)
    min_value = args.min_value if args.min_value is not None else _default_min_value(name, info)
    source = args.data_dir / name / "interactions.csv.gz"
    work = args.workdir / name
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = work / "interactions.zarr"
    rep_ingest = ingest(str(source), str(store), min_value=min_value, overwrite=True)
    t_ingest = time.perf_counter() - t0
    log.info("%s: ingested in %.1f s (%s)", name, t_ingest, rep_ingest)
    run_id = time.strftime("%Y-%m-%dT%H:%M:%S")

    out: dict = {"dataset": name, "source": str(source.relative_to(args.data_dir.parent))
                 if args.data_dir.parent in source.parents else str(source),
                 "type": info.get("type"), "min_value": min_value}
    with Evaluator(str(store), n_valid=args.n_valid, n_test=args.n_test, seed=args.seed, dtype=args.dtype,
                   client=client, backend=args.backend) as ev:
        n = ev.n_items
        ks = sorted({k for k in args.ks if 0 < k < n and k <= args.max_k_fraction * n})
        dropped = [k for k in args.ks if k not in ks]
        if dropped:
            log.info("%s: ranks %s dropped (need 0 < k <= %g n_items = %d)", name, dropped, args.max_k_fraction, n)
        models = list(args.models)
        log.info("%s: %d items; ranks %s; λ %s; p %s", name, n, ks, args.lams, args.ps)
        t1 = time.perf_counter()
        rep = ev.run(models=models, ks=ks, lams=args.lams, ps=args.ps, n_power_iter=args.n_power_iter)
        log.info("%s: grid in %.1f s\n%s", name, time.perf_counter() - t1, rep.table())
        main = rep.as_dict()
        opt = None
        opt_ks = [k for k in ks if k <= args.opt_max_k]
        if args.opt and n <= args.opt_max_items and opt_ks:
            t2 = time.perf_counter()
            rep_opt = ev.run(models=["edlae", "edlae-opt"], ks=opt_ks, lams=args.lams, ps=args.ps,
                             exact_points=args.opt_points, exact_maxiter=args.opt_maxiter,
                             max_items_exact=max(args.opt_max_items, n), n_power_iter=args.n_power_iter)
            log.info("%s: edlae-opt at k=%s in %.1f s\n%s", name, opt_ks, time.perf_counter() - t2, rep_opt.table())
            opt = rep_opt.as_dict()
        else:
            log.info("%s: edlae-opt skipped (n_items %d, opt_max_items %d, ranks <= %d: %s)", name, n,
                     args.opt_max_items, args.opt_max_k, opt_ks)
    for g in main["grid"]:
        g["run"] = run_id
    for g in (opt or {}).get("grid", []):
        g["run"] = run_id
    seconds = time.perf_counter() - t0
    run = {"id": run_id, "command": command, "seconds": seconds, "lams": list(args.lams), "ps": list(args.ps),
           "ks": ks, "n_power_iter": args.n_power_iter, "backend": args.backend}
    runs = [run]
    if previous is not None:
        main = _merge(previous["main"], main)
        if opt is None:
            opt = previous.get("edlae_opt_run")
        runs = previous.get("runs", []) + runs
        ks = sorted(set(ks) | set(previous["ks"]))
    rows = list(_choose(main["grid"]))
    if opt is not None:
        rows += [r for r in opt["rows"] if r["model"] == "edlae-opt"]
    main["rows"] = [r for r in rows if r["model"] != "edlae-opt"]
    vectors = _load_vectors(args.out, name) if previous is not None else {}
    # this run's chosen rows: the union's choice of a (model, k) is always one of some run's choices
    vectors.update({_vector_key(run_id, r.model, r.k, r.lam, r.p): r.test_per_user[:, 0] for r in rep.rows
                    if r.lam is not None})  # the popularity row has no λ
    live = {_vector_key(g["run"], g["model"], g["k"], g["lam"], g["p"]) for g in main["grid"]}
    vectors = {key: v for key, v in vectors.items() if key in live}
    _save_vectors(args.out, name, vectors)
    out.update({
        "n_items": n,
        "ks": ks,
        "ks_dropped": dropped,
        "rows": rows,
        "edge_notes": _edge_notes(rows, main["grid"] + ((opt or {}).get("grid") or [])),
        "paired": _paired(rows, ks, vectors),
        "main": main,
        "edlae_opt_run": opt,
        "runs": runs,
        "seconds": {"ingest": t_ingest, "total": sum(r["seconds"] for r in runs),
                    "main_run": main["timings"]["run"], "opt_run": opt["timings"]["run"] if opt else None},
    })
    return out


# --------------------------------------------------------------------------- paired differences

PAIRS = (("edlae", "lae"), ("edlae", "full-rank"), ("lae", "full-rank"))


def _vectors_file(out: Path, name: str) -> Path:
    return out / f"figure1-{name}-per-user.npz"


def _vector_key(run: str, model: str, k, lam: float, p: float) -> str:
    return f"{run}|{model}|{k}|{lam:g}|{p:g}"


def _load_vectors(out: Path, name: str) -> dict:
    path = _vectors_file(out, name)
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {key: z[key] for key in z.files}


def _save_vectors(out: Path, name: str, vectors: dict) -> None:
    """Per-user test nDCG@100 of the chosen rows (float32, compressed; tens of kB a dataset)."""
    path = _vectors_file(out, name)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **{key: np.asarray(v, dtype=np.float32) for key, v in vectors.items()})
    tmp.replace(path)


def _paired(rows: list, ks: list, vectors: dict) -> list:
    """Paired test differences of the chosen rows (same test users), where both have per-user values.

    Rows chosen from runs made before per-user values were recorded have none: their
    difference is reported without a paired standard error.
    """
    from edlae_dask.evaluation import paired_difference

    out = []
    for a_model, b_model in PAIRS:
        for k in ks:
            a = _row(rows, a_model, k)
            b = _row(rows, b_model, None if b_model == "full-rank" else k)
            if a is None or b is None:
                continue
            va, vb = (vectors.get(_vector_key(r["run"], r["model"], r["k"], r["lam"], r["p"])) for r in (a, b))
            if va is None or vb is None:
                continue
            d = paired_difference(va, vb)
            out.append({"a": a_model, "b": b_model, "k": k, "mean": d.mean, "se": d.se, "n": d.n})
    return out


def _paired_cell(d: dict, a: str, b: str, k, unpaired: float) -> str:
    for x in d.get("paired") or []:
        if (x["a"], x["b"], x["k"]) == (a, b, k):
            return f"{x['mean']:+.4f} ± {x['se']:.4f}"
    return f"{unpaired:+.4f}"


# --------------------------------------------------------------------------- outputs


def _row(rows, model, k=None):
    for r in rows:
        if r["model"] == model and r["k"] == k:
            return r
    return None


def _cell(r) -> str:
    if r is None:
        return "–"
    t = r["test"]["ndcg@100"]
    return f"{t['mean']:.4f} ± {t['se']:.4f} (λ={r['lam']:g}, p={r['p']:g})"


def write_markdown(results: dict, path: Path, command: str) -> None:
    lines = ["# Figure 1 on real data: test nDCG@100 vs rank k", "",
             f"Last written by `{command}`; each dataset lists the runs (commands) that produced its numbers.", "",
             "Strong generalization (Liang et al. 2018); λ and p chosen per model and rank on validation users "
             "(nDCG@100), reported on test users as mean ± standard error; (λ, p) is the chosen point. "
             "`edlae-opt` = numerical optimum of eq. 14 started from Algorithm 1 (only where affordable); "
             "its ratio column is the eq.-14 objective of the closed form over that of the optimum, and its "
             "Δ is optimum − closed form test nDCG@100 at the same (λ, p). EDLAE − LAE is the difference of "
             "the two chosen rows' test nDCG@100, ± its paired standard error (same test users) where both "
             "rows come from runs that recorded per-user values (`figure1-<dataset>-per-user.npz`; runs from "
             "2026-11-27 21:00 on), without one otherwise.", ""]
    for name, d in results["datasets"].items():
        rows = d["rows"]
        sp = d["main"]["split"]
        runs = d.get("runs") or [{"id": "-", "command": d.get("command", command), "seconds": d["seconds"]["total"],
                                  "lams": d["main"]["settings"]["lams"], "ps": d["main"]["settings"]["ps"],
                                  "ks": d["ks"]}]
        points = sorted({(g["lam"], g["p"]) for g in d["main"]["grid"] if g["model"] != "ease"})
        kept = (f"{d['n_items']:,} items" if sp.get("n_items", d["n_items"]) == d["n_items"] else
                f"{sp['n_items']:,} items, {d['n_items']:,} with training interactions kept")
        lines += [f"## {name} ({kept})", "",
                  f"{sp['n_train_users']:,} training users, {sp['n_valid_evaluated']:,} validation / "
                  f"{sp['n_test_evaluated']:,} test users evaluated; {len(points)} (λ, p) points in all, "
                  f"λ ∈ {{{', '.join(f'{x:g}' for x in sorted({pt[0] for pt in points}))}}}, "
                  f"p ∈ {{{', '.join(f'{x:g}' for x in sorted({pt[1] for pt in points}))}}}; "
                  f"{sum(r['seconds'] for r in runs):.0f} s in all"
                  f"{' (dense backend)' if d['main']['settings'].get('backend') == 'dense' else ''}.", ""]
        if len(runs) > 1 or d.get("runs"):
            lines += ["Runs (each grid number in the JSON names its run):", ""]
            lines += [f"- `{r['id']}`: λ ∈ {{{', '.join(f'{x:g}' for x in r['lams'])}}} × p ∈ "
                      f"{{{', '.join(f'{x:g}' for x in r['ps'])}}}, k ∈ {{{', '.join(str(k) for k in r['ks'])}}}, "
                      f"{r['seconds']:.0f} s: `{r['command']}`" for r in runs]
            lines.append("")
        lines += ["| k | EDLAE, Algorithm 1 | unconstrained LAE | EDLAE − LAE | edlae-opt (numerical optimum) "
                  "| objective ratio | Δ opt − closed |",
                  "|---:|---|---|---:|---|---:|---:|"]
        for k in d["ks"]:
            e, l, o = _row(rows, "edlae", k), _row(rows, "lae", k), _row(rows, "edlae-opt", k)
            diff = (_paired_cell(d, "edlae", "lae", k, e["test"]["ndcg@100"]["mean"] - l["test"]["ndcg@100"]["mean"])
                    if e and l else "–")
            ratio = f"{o['extra']['objective_ratio']:.4f}" if o else "–"
            dd = (f"{o['extra']['test_ndcg_diff']:+.4f} ± {o['extra']['test_ndcg_diff_se']:.4f}" if o else "–")
            lines.append(f"| {k} | {_cell(e)} | {_cell(l)} | {diff} | {_cell(o)} | {ratio} | {dd} |")
        for m, label in (("full-rank", "full-rank EDLAE (reference line)"), ("ease", "EASE (full rank, p = 0)")):
            r = _row(rows, m)
            if r:
                lines.append(f"| {label} | {_cell(r)} | | | | | |")
        lines.append("")
        if d["edge_notes"]:
            lines += ["Chosen points on the grid edge: " + "; ".join(d["edge_notes"]) + ".", ""]
    for name, e in results.get("skipped", {}).items():
        lines += [f"## {name}: skipped", "", f"{e['error']} (command: `{e['command']}`)", ""]
    notes = path.parent / "notes.md"  # hand-written reading of the numbers, kept across re-renders
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    path.write_text("\n".join(lines) + "\n")


def write_plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed (pip install matplotlib): no PNG written")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    if not names:
        return False
    ncols = len(names) if len(names) <= 3 else -(-len(names) // 2)  # four panels as 2 × 2, not a strip
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        d = results["datasets"][name]
        rows = d["rows"]
        for m in ("lae", "edlae", "edlae-opt"):
            pts = sorted((r["k"], r["test"]["ndcg@100"]["mean"], r["test"]["ndcg@100"]["se"])
                         for r in rows if r["model"] == m)
            if pts:
                k, y, se = zip(*pts)
                st = MODEL_STYLE[m]
                ax.errorbar(k, y, yerr=se, color=st["color"], linestyle=st["linestyle"], marker=st["marker"],
                            markersize=4, capsize=2, label=st["label"], linewidth=1.6 if m != "edlae" else 2.2)
        fr = _row(rows, "full-rank")
        if fr:
            y = fr["test"]["ndcg@100"]["mean"]
            ax.axhline(y, color="tab:green", linestyle="-", linewidth=1.2, label="full-rank EDLAE")
            ax.axhspan(y - fr["test"]["ndcg@100"]["se"], y + fr["test"]["ndcg@100"]["se"], color="tab:green",
                       alpha=0.12, linewidth=0)
        ax.set_xscale("log")
        ax.set_xlabel("model rank k")
        ax.set_ylabel("nDCG@100 (test users)")
        ax.set_title(f"{name} ({d['n_items']:,} items)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _rounded(x):
    """Floats to 7 significant digits (metrics and times; the JSON stays under the repository's 2 MB)."""
    if isinstance(x, float):
        return float(f"{x:.7g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_rounded(v) for v in x]
    return x


def _dumps(results: dict) -> str:
    from edlae_dask.evaluation.search import _json_default

    return json.dumps(_rounded(json.loads(json.dumps(results, default=_json_default))), separators=(",", ":"))


def _dataset_file(name: str) -> str:
    return f"figure1-{name}.json"


def load_results(path: Path) -> dict:
    """The results behind ``path`` (a ``figure1.json`` index), every dataset read in.

    The index names one file per dataset (``figure1-<name>.json`` beside it); an index written
    before the split holds the datasets inline, and is read as it is.
    """
    results = json.loads(path.read_text())
    datasets = results.setdefault("datasets", {})
    for name, entry in list(datasets.items()):
        if isinstance(entry, str):
            datasets[name] = json.loads((path.parent / entry).read_text())
    return results


def save_results(results: dict, path: Path) -> None:
    """Write ``results`` as the index ``path`` and one JSON per dataset beside it.

    One file per dataset keeps each under the repository's 2 MB per file as datasets are added
    (ml-1m's 48-point grid alone is 1.4 MB). Each file is written whole to a temporary
    name and renamed, dataset files before the index that names them.
    """
    before = set()
    if path.exists():
        with contextlib.suppress(ValueError, AttributeError):
            before = set(json.loads(path.read_text()).get("datasets", {}))
    index = {k: v for k, v in results.items() if k != "datasets"}
    index["datasets"] = {}
    for name, d in results.get("datasets", {}).items():
        _write_atomic(path.parent / _dataset_file(name), _dumps(d))
        index["datasets"][name] = _dataset_file(name)
    _write_atomic(path, json.dumps(index, indent=1, default=str))
    for name in before - set(index["datasets"]):  # dropped by --fresh; other files in the folder are left alone
        for stale in (path.parent / _dataset_file(name), _vectors_file(path.parent, name)):
            stale.unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=DEFAULT_DATASETS, help=f"comma-separated (default {DEFAULT_DATASETS})")
    ap.add_argument("--ks", default=None, help=f"ranks (default {DEFAULT_KS}; those >= n_items are dropped)")
    ap.add_argument("--lams", default=None, help=f"λ grid (default {DEFAULT_LAMS})")
    ap.add_argument("--ps", default=None, help=f"p grid (default {DEFAULT_PS})")
    ap.add_argument("--quick", action="store_true",
                    help=f"smaller defaults: ks {QUICK_KS}, λ {QUICK_LAMS}, p {QUICK_PS}, edlae-opt at k <= 50")
    ap.add_argument("--no-opt", dest="opt", action="store_false", help="skip edlae-opt")
    ap.add_argument("--opt-max-items", type=int, default=3000, help="edlae-opt only up to this many items")
    ap.add_argument("--opt-max-k", type=int, default=None, help="edlae-opt only up to this rank (default 100)")
    ap.add_argument("--opt-maxiter", type=int, default=200, help="L-BFGS iterations of edlae-opt")
    ap.add_argument("--opt-points", choices=("chosen", "grid"), default="chosen",
                    help="edlae-opt at Algorithm 1's chosen (λ, p) per k, or over the whole grid")
    ap.add_argument("--n-valid", type=float, default=0.1, help="validation users (count, or fraction if < 1)")
    ap.add_argument("--n-test", type=float, default=0.1, help="test users (count, or fraction if < 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--min-value", type=float, default=None,
                    help="binarization threshold for explicit ratings (default 3.5 MovieLens, 4 others)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workdir", type=Path, default=HERE / "work" / "figure1")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--fresh", action="store_true", help="drop results of datasets not run now")
    ap.add_argument("--add", action="store_true",
                    help="refine: evaluate these grid points and merge them into the dataset's existing grid "
                         "(same split); each (model, k) is then chosen over the union")
    ap.add_argument("--import", dest="imports", type=Path, action="append", default=[],
                    help="merge the datasets of another figure1.json (a slow dataset run with --out elsewhere) "
                         "into this output; with --datasets '' only merge and render")
    ap.add_argument("--backend", choices=("dense", "dask"), default="dense",
                    help="Evaluator backend (default dense: one process, reused n x n buffers)")
    ap.add_argument("--n-power-iter", type=int, default=None, help="eigensolver power iterations (default 3)")
    ap.add_argument("--models", default="edlae,lae,full-rank,ease",
                    help="models of the grid (ease adds a p = 0 point per λ: an extra inverse each)")
    ap.add_argument("--max-k-fraction", type=float, default=0.5, help="drop ranks above this fraction of n_items")
    args = ap.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.ks = _ints(args.ks or (QUICK_KS if args.quick else DEFAULT_KS))
    args.lams = _floats(args.lams or (QUICK_LAMS if args.quick else DEFAULT_LAMS))
    args.ps = _floats(args.ps or (QUICK_PS if args.quick else DEFAULT_PS))
    args.opt_max_k = args.opt_max_k if args.opt_max_k is not None else (50 if args.quick else 100)
    for name in ("n_valid", "n_test"):
        v = getattr(args, name)
        setattr(args, name, int(v) if v >= 1 else v)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import distributed  # noqa: F401

    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("bokeh").setLevel(logging.ERROR)
    from edlae_dask import __version__
    from edlae_dask.cluster import connect
    from edlae_dask.errors import MemoryBudgetError

    command = "python benchmarks/figure1.py" + ("" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "figure1.json"
    results = {"datasets": {}}
    if json_path.exists() and not args.fresh:
        results = load_results(json_path)  # a damaged file stops here: it holds hours of results
    results["environment"] = {"python": platform.python_version(), "machine": platform.machine(),
                              "processor": platform.processor(), "edlae_dask": __version__}
    for path in args.imports:
        other = load_results(path)
        results["datasets"].update(other["datasets"])
        for name in other["datasets"]:
            if _vectors_file(path.parent, name).exists() and path.parent.resolve() != args.out.resolve():
                _save_vectors(args.out, name, _load_vectors(path.parent, name))
        log.info("imported %s from %s", ", ".join(other["datasets"]), path)
    for d in results["datasets"].values():
        _label_runs(d)
    datasets = [s.strip() for s in args.datasets.split(",") if s.strip()]
    t0 = time.perf_counter()
    with (connect("local", n_workers=args.workers) if args.backend == "dask" else contextlib.nullcontext()) as client:
        results["environment"]["workers"] = len(client.scheduler_info()["workers"]) if client else 0
        results["environment"]["backend"] = args.backend
        for name in datasets:
            try:
                d = run_dataset(name, args, client, results["datasets"].get(name) if args.add else None, command)
            except MemoryBudgetError as e:  # e.g. gowalla on a small machine: record it, go on with the rest
                log.error("%s skipped: %s", name, e)
                results.setdefault("skipped", {})[name] = {"error": str(e), "command": command}
                save_results(results, json_path)
                continue
            results["datasets"][name] = d
            results.get("skipped", {}).pop(name, None)
            save_results(results, json_path)
            write_markdown(results, args.out / "figure1.md", command)
            write_plot(results, args.out / "figure1.png")
            log.info("%s done in %.0f s; results in %s", name, d["seconds"]["total"], args.out)
    save_results(results, json_path)
    write_markdown(results, args.out / "figure1.md", command)
    write_plot(results, args.out / "figure1.png")
    print((args.out / "figure1.md").read_text())
    print(f"total {time.perf_counter() - t0:.0f} s; outputs in {args.out}")


if __name__ == "__main__":
    main()

"""float32 against float64: test nDCG@100 of Algorithm 1 on real data at the same λ, p and k.

    python benchmarks/bench_precision.py                                # ml-1m-diffrec-clean, beibei-ehcf; k = 100, 500
    python benchmarks/bench_precision.py --datasets ml-1m-diffrec-clean --ks 100

float32 is the default dtype of training only if it costs no accuracy (issue #5). For each dataset
(``<data-dir>/<name>/interactions.csv.gz``, ingested into ``--workdir``, binarized as in
``figure1.py``) one strong-generalization split (Liang et al. 2018) is made; two
:class:`~edlae_dask.evaluation.Evaluator` objects share it, one computing in float32 (Gram,
inverse, eigensolve, scores) and one in float64, and each evaluates Algorithm 1 at the same
(λ, p) and ranks, with the same eigensolver seed. Reported: test nDCG@100 and Recall@20/50 of
both, their difference, and the standard error of each (the users are the same, so the
difference is far more precise than either SE suggests). As a noise floor, float64 is run a second
time with another eigensolver seed: a float32 − float64 difference of the size of that seed
difference costs nothing beyond the randomized eigensolver's own variation.

Writes ``benchmarks/results/precision.json`` (every number with its command).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_table1 import RESULTS, command_line, machine_info  # noqa: E402
from figure1 import DEFAULT_DATA, _dataset_info, _default_min_value  # noqa: E402

log = logging.getLogger("bench_precision")
METRICS = ("ndcg@100", "recall@20", "recall@50")


def run_dataset(name: str, args) -> dict:
    from edlae_dask.evaluation import Evaluator
    from edlae_dask.ingestion import ingest

    info = _dataset_info(args.data_dir, name)
    min_value = _default_min_value(name, info)
    work = args.workdir / name
    work.mkdir(parents=True, exist_ok=True)
    store = work / "interactions.zarr"
    ingest(str(args.data_dir / name / "interactions.csv.gz"), str(store), min_value=min_value, overwrite=True)
    out = dict(dataset=name, min_value=min_value, lam=args.lam, p=args.p, rows=[])
    split = None
    by_dtype = {}
    for dtype in ("float32", "float64"):
        t0 = time.perf_counter()
        with Evaluator(str(store), n_valid=args.n_valid, n_test=args.n_test, seed=args.seed, dtype=dtype,
                       split=split) as ev:
            split = ev.split_
            ks = [k for k in args.ks if 0 < k < ev.n_items]
            rep = ev.run(models=["edlae"], ks=ks, lams=[args.lam], ps=[args.p], eig_seed=args.seed)
            by_dtype[dtype] = {k: rep.best("edlae", k) for k in ks}
            if dtype == "float64":  # the eigensolver's own noise floor: another random start, same dtype
                rep = ev.run(models=["edlae"], ks=ks, lams=[args.lam], ps=[args.p], eig_seed=args.seed + 1)
                by_dtype["float64-seed+1"] = {k: rep.best("edlae", k) for k in ks}
            out["n_items"] = ev.n_items
            out[f"{dtype}_seconds"] = time.perf_counter() - t0
    for k in by_dtype["float32"]:
        r32, r64, r64s = by_dtype["float32"][k], by_dtype["float64"][k], by_dtype["float64-seed+1"][k]
        row = dict(k=k)
        for m in METRICS:
            a, b, c = r32.test[m], r64.test[m], r64s.test[m]
            row[m] = dict(float32=a.mean, float64=b.mean, diff=a.mean - b.mean, se32=a.se, se64=b.se, n_users=a.n,
                          float64_other_seed=c.mean, seed_diff_float64=c.mean - b.mean)
        out["rows"].append(row)
        print(f"{name:<22}{k:>6}" + "".join(
            f"{row[m]['float32']:>15.4f}{row[m]['float64']:>10.4f}{row[m]['diff']:>+11.5f}" for m in METRICS)
            + f"{row['ndcg@100']['se32']:>8.4f}{row['ndcg@100']['seed_diff_float64']:>+12.5f}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["ml-1m-diffrec-clean", "beibei-ehcf"])
    ap.add_argument("--ks", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--lam", type=float, default=200.0, help="λ (figure1's choice at k = 100 on ml-1m)")
    ap.add_argument("--p", type=float, default=0.2)
    ap.add_argument("--n-valid", type=float, default=0.1)
    ap.add_argument("--n-test", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edlae-bench/precision"))
    ap.add_argument("--out", type=Path, default=RESULTS / "precision.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    print(f"{'dataset':<22}{'k':>6}" + "".join(f"{m + ' f32':>15}{'f64':>10}{'f32−f64':>11}" for m in METRICS)
          + f"{'SE':>8}{'f64 seed Δ':>12}")
    results = [run_dataset(name, args) for name in args.datasets]
    out = dict(
        benchmark="test metrics of Algorithm 1, float32 vs float64, same split, λ, p, k and eigensolver seed",
        command=command_line(), date=time.strftime("%Y-%m-%dT%H:%M:%S"), machine=machine_info(),
        datasets=results,
        max_abs_ndcg_diff=max(abs(r["ndcg@100"]["diff"]) for d in results for r in d["rows"]),
        max_abs_ndcg_seed_diff_float64=max(abs(r["ndcg@100"]["seed_diff_float64"]) for d in results for r in d["rows"]),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"largest |nDCG@100 float32 − float64| = {out['max_abs_ndcg_diff']:.5f}; largest float64 seed-to-seed "
          f"|difference| = {out['max_abs_ndcg_seed_diff_float64']:.5f}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

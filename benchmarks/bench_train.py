"""End-to-end training time per stage on a real dataset from ../shared/data.

    python benchmarks/bench_train.py --dataset yelp-s3rec --k 100

Ingests ``<data-dir>/<dataset>/interactions.csv.gz`` (binarized at --min-value for
explicit sets), trains on the embedded LocalCluster, prints a table of stage times
and peak memory, and writes ``benchmarks/results/train-<dataset>-k<k>-<dtype>.json``.
The data is read from the shared folder and never copied into the project.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="yelp-s3rec")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--min-value", type=float, default=None, help="binarize explicit ratings (e.g. 4)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--lam", type=float, default=20.0)
    ap.add_argument("--p", type=float, default=0.25)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--workdir", type=Path, default=HERE / "work")
    args = ap.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import distributed  # noqa: F401

    logging.getLogger("distributed").setLevel(logging.WARNING)
    logging.getLogger("bokeh").setLevel(logging.ERROR)

    from edlae_dask.cluster import connect
    from edlae_dask.config import TrainParams
    from edlae_dask.ingestion import ingest
    from edlae_dask.pipeline import train

    source = args.data_dir / args.dataset / "interactions.csv.gz"
    work = args.workdir / args.dataset
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = ingest(str(source), str(work / "interactions.zarr"), min_value=args.min_value, overwrite=True)
    ingest_s = time.perf_counter() - t0
    params = TrainParams(k=args.k, lam=args.lam, p=args.p, dtype=args.dtype, block_size=args.block_size).validate()
    with connect("local", n_workers=args.workers) as client:
        res = train(str(work / "interactions.zarr"), params=params, client=client, out=str(work / "factors"),
                    overwrite=True)
    rows = [("ingest", ingest_s, None, None)] + [
        (name, rec["seconds"], rec["peak_total_bytes"] / 2**30, rec["peak_worker_bytes"] / 2**30)
        for name, rec in res.stages.items()
    ]
    print(f"\n{args.dataset}: {report.n_users} users x {report.n_items} items, {report.nnz} interactions; "
          f"k={args.k}, {args.dtype}")
    print(f"{'stage':<12}{'seconds':>9}{'peak total GiB':>16}{'peak worker GiB':>17}")
    for name, s, tot, wk in rows:
        print(f"{name:<12}{s:>9.2f}" + (f"{tot:>16.2f}{wk:>17.2f}" if tot is not None else ""))
    print(f"{'train total':<12}{res.seconds:>9.2f}")
    out = HERE / "results" / f"train-{args.dataset}-k{args.k}-{args.dtype}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "dataset": args.dataset, "n_users": report.n_users, "n_items": report.n_items, "nnz": report.nnz,
        "params": vars(params), "ingest_seconds": ingest_s, "train_seconds": res.seconds, "stages": res.stages,
        "eigensolver": res.eigensolver, "ritz_residual_max": float(res.ritz_residuals.max()),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    }, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""What verified reads cost: the checksum of each part against reading that part.

    python benchmarks/bench_integrity.py                   # 100,000 users x 20,000 items, ~5M interactions; k = 200
    python benchmarks/bench_integrity.py --users 20000     # smaller

Writes a synthetic interaction store (4 user shards) and a factor store (U, V in row blocks of
2,048), then reads every shard (``read_shard``) and every block of U and V
(``open_factors(...).U.blocks``) ``--repeats`` times, each read verified against its checksum
as in production, and times the SHA-256 of the same bytes on its own. Prints a table of
medians and writes ``benchmarks/results/integrity.json``. The share of the checksum in a
verified read is what every task pays; scoring and training do far more work per byte read.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--per-user", type=float, default=50.0)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import dask.array as da

    from edlae_dask.io.factors import FactorWriter, open_factors
    from edlae_dask.io.integrity import digest
    from edlae_dask.io.interactions import read_shard, write_interactions
    from edlae_dask.synthetic import make_interactions

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        X = make_interactions(args.users, args.items, mean_per_user=args.per_user, seed=0)
        store = write_interactions(Path(tmp) / "s.zarr", X, shard_size=-(-args.users // 4))
        for s in range(store.n_shards):
            x = read_shard(store.location, s)
            parts = (x.indptr.astype("<i8"), x.indices.astype("<i4"), x.data.astype("<f4"))
            nbytes = sum(p.nbytes for p in parts)
            read = _median_seconds(lambda s=s: read_shard(store.location, s), args.repeats)
            check = _median_seconds(lambda parts=parts: digest(*parts), args.repeats)
            rows.append(dict(part=f"interaction shard {s}", bytes=nbytes, read_verified_s=read, checksum_s=check))

        rng = np.random.default_rng(0)
        U = rng.standard_normal((args.items, args.k)).astype(np.float32)
        with FactorWriter(Path(tmp) / "f") as w:
            for name in ("U", "V"):
                w.write_array(name, da.from_array(U, chunks=(2048, args.k)))
            w.write_array("item_ids", np.arange(args.items))
            w.write_array("eigenvalues", np.ones(args.k))
            w.commit({"k": args.k})
        f = open_factors(Path(tmp) / "f")
        blocks = [b for b in f.U.blocks]
        read = _median_seconds(lambda: [b.compute(scheduler="sync") for b in blocks], args.repeats)
        check = _median_seconds(lambda: [digest(U[i:i + 2048]) for i in range(0, args.items, 2048)], args.repeats)
        rows.append(dict(part=f"U, {len(blocks)} blocks of 2,048 x {args.k}", bytes=U.nbytes, read_verified_s=read,
                         checksum_s=check))

    print(f"{'part':<34}{'MB':>8}{'verified read s':>17}{'checksum s':>12}{'checksum share':>16}{'GB/s':>7}")
    for r in rows:
        r["checksum_share"] = r["checksum_s"] / r["read_verified_s"]
        r["checksum_gb_per_s"] = r["bytes"] / r["checksum_s"] / 1e9
        print(f"{r['part']:<34}{r['bytes'] / 1e6:>8.1f}{r['read_verified_s']:>17.4f}{r['checksum_s']:>12.4f}"
              f"{r['checksum_share']:>15.0%}{r['checksum_gb_per_s']:>8.2f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "integrity.json"
    out.write_text(json.dumps({"args": vars(args), "machine": platform.processor() or platform.machine(),
                               "note": "medians over --repeats; read_verified_s includes the checksum",
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

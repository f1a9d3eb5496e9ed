"""The ``edlae-dask`` command line: ingest, train, score, evaluate, run (a job spec), demo, info.

The commands parse options, set up logging and the cluster, and call the library;
they hold no math and no zarr. User errors (:class:`EdlaeError`) print one line to
stderr and exit with status 1, without a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path

import click

from edlae_dask._version import __version__
from edlae_dask.jobspec import JsonMapping, SpecCommand

_CLUSTER_HELP = ("'local' (embedded LocalCluster), 'threads', a scheduler address tcp://… / tls://…, "
                 "or a cluster spec file (cluster/README.md)")
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_storage_options = click.option(
    "--storage-options", type=JsonMapping(), default=None,
    help="fsspec options (a JSON object) for the stores given as URLs (s3://bucket/prefix, gcs://…), e.g. "
         "'{\"endpoint_url\": \"http://minio:9000\"}'. Default: fsspec's defaults and environment (AWS_* variables, "
         "…). The workers get them with their tasks.")
log = logging.getLogger("edlae_dask.cli")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    import distributed  # noqa: F401  (configures its loggers on import; quiet them after)

    for noisy in ("distributed", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.INFO)
    # bokeh warns that the (loopback-bound) dashboard accepts any Host header
    logging.getLogger("bokeh").setLevel(logging.ERROR if verbose < 2 else logging.INFO)


def _user_errors(fn):
    """Turn our errors into a one-line message and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from edlae_dask.errors import EdlaeError

        try:
            return fn(*args, **kwargs)
        except EdlaeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="edlae-dask")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: also Dask's).")
@click.pass_context
def cli(ctx, verbose):
    """Train and serve the low-rank EDLAE recommender (Steck & Garcia Garcia 2021) on Dask."""
    _setup_logging(verbose)


# --------------------------------------------------------------------------- ingest


@cli.command(cls=SpecCommand)
@click.argument("source", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(), help="Interaction store to write (a directory).")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "csv", "parquet", "movielens-csv", "movielens-dat", "netflix", "msd"]))
@click.option("--user-col", default="user", show_default=True, help="Column holding user ids (csv/parquet).")
@click.option("--item-col", default="item", show_default=True, help="Column holding item ids (csv/parquet).")
@click.option("--value-col", default=None, help="Column holding ratings/counts (default: 'rating' or 'value' if present).")
@click.option("--min-value", type=float, default=None, help="Keep rows with value >= this (e.g. 3.5 for MovieLens).")
@click.option("--min-user-interactions", type=int, default=1, show_default=True)
@click.option("--min-item-interactions", type=int, default=1, show_default=True)
@click.option("--shard-size", type=int, default=100_000, show_default=True, help="Users per shard.")
@click.option("--chunk-rows", type=int, default=1_000_000, show_default=True, help="Rows read at a time.")
@click.option("--overwrite", is_flag=True, help="Replace an existing interaction store at --out.")
@_storage_options
@_user_errors
def ingest(source, out, fmt, user_col, item_col, value_col, min_value, min_user_interactions,
           min_item_interactions, shard_size, chunk_rows, overwrite, storage_options):
    """Read raw interactions (CSV, Parquet, MovieLens, Netflix, MSD) into an interaction store."""
    from edlae_dask.ingest import ingest as run_ingest

    report = run_ingest(
        list(source) if len(source) > 1 else source[0], out, fmt=fmt, user_col=user_col, item_col=item_col,
        value_col=value_col, min_value=min_value, min_user_interactions=min_user_interactions,
        min_item_interactions=min_item_interactions, shard_size=shard_size, chunk_rows=chunk_rows,
        overwrite=overwrite, storage_options=storage_options,
    )
    click.echo(report.summary())


# --------------------------------------------------------------------------- train


def _train_options(fn):
    opts = [
        click.option("--k", "k", type=int, default=100, show_default=True, help="Rank of U, V."),
        click.option("--lam", type=float, default=20.0, show_default=True, help="λ: L2 penalty on every item (eq. 8)."),
        click.option("--p", "p", type=float, default=0.25, show_default=True, help="Dropout probability, 0 <= p < 1 (eq. 8)."),
        click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the eigensolver."),
        click.option("--block-size", type=int, default=None, help="Side of the n x n blocks (default 2048/4096)."),
        click.option("--oversamples", "n_oversamples", type=int, default=None, help="Eigensolver oversampling (default: measured rule)."),
        click.option("--power-iters", "n_power_iter", type=int, default=None, help="Eigensolver power iterations."),
        click.option("--path", "train_path", type=click.Choice(["auto", "dense", "scalable"]), default="auto",
                     show_default=True, help="dense: exact Algorithm 1 (n x n matrices); scalable: K neighbours per "
                     "item, no n x n matrix; auto: dense if it fits the cluster's memory."),
        click.option("--neighbors", type=int, default=64, show_default=True,
                     help="Scalable path: neighbours per item (K)."),
        click.option("--neighbor-score", type=click.Choice(["count", "cosine"]), default="count", show_default=True,
                     help="Scalable path: how neighbours are ranked."),
        click.option("--cluster", default="local", show_default=True,
                     help=_CLUSTER_HELP),
        click.option("--workers", "n_workers", type=int, default=None, help="Workers of the local cluster (default: one per core)."),
        click.option("--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a terminal)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@cli.command(cls=SpecCommand)
@click.option("--interactions", required=True, type=click.Path(), help="Interaction store (from `edlae-dask ingest`).")
@click.option("--out", required=True, type=click.Path(), help="Factor store to publish into.")
@click.option("--overwrite", is_flag=True, help="Publish a new version into an existing factor store.")
@click.option("--checkpoint-dir", type=click.Path(), default=None,
              help="Dense path: keep the Gram and the inverse here (about 2·n²·itemsize bytes; a directory all "
                   "workers see) and reuse them when a rerun has the same inputs, so a killed job resumes. "
                   "Default: no checkpoints.")
@_train_options
@_storage_options
@_user_errors
def train(interactions, out, overwrite, k, lam, p, dtype, seed, block_size, n_oversamples, n_power_iter,
          train_path, neighbors, neighbor_score, cluster, n_workers, progress, checkpoint_dir, storage_options):
    """Train U, V of Algorithm 1 on an interaction store and publish them to a factor store."""
    from edlae_dask.cluster import connect
    from edlae_dask.config import TrainParams
    from edlae_dask.pipeline import train as run_train

    params = TrainParams(k=k, lam=lam, p=p, dtype=dtype, seed=seed, block_size=block_size,
                         n_oversamples=n_oversamples, n_power_iter=n_power_iter, path=train_path,
                         neighbors=neighbors, neighbor_score=neighbor_score).validate()
    progress = sys.stderr.isatty() if progress is None else progress
    with connect(cluster, n_workers=n_workers) as client:
        res = run_train(interactions, params=params, client=client, out=out, overwrite=overwrite, progress=progress,
                        checkpoint_dir=checkpoint_dir, storage_options=storage_options)
    _print_train_summary(res, out)


def _print_train_summary(res, out) -> None:
    from edlae_dask.diagnostics import GiB

    click.echo(f"published {out} version {res.version}: {res.U.shape[0]} items, k={res.params.k}, "
               f"{res.params.dtype}, in {res.seconds:.1f} s")
    click.echo(f"{'stage':<12}{'seconds':>9}{'peak total GiB':>16}{'peak worker GiB':>17}")
    for name, rec in res.stages.items():
        click.echo(f"{name:<12}{rec['seconds']:>9.2f}{rec['peak_total_bytes'] / GiB:>16.2f}"
                   f"{rec['peak_worker_bytes'] / GiB:>17.2f}")
    r = res.ritz_residuals
    click.echo(f"eigensolver: {res.eigensolver}; Ritz residuals max {r.max():.2e}, median {float(sorted(r)[len(r) // 2]):.2e}; "
               f"eigenvalues {res.eigenvalues[0]:.4g} … {res.eigenvalues[-1]:.4g}")


# --------------------------------------------------------------------------- demo


@cli.command()
@click.option("--workdir", default="edlae-demo", show_default=True, type=click.Path(),
              help="Where the demo writes its CSV and stores (replaced on each run).")
@click.option("--users", "n_users", type=int, default=50_000, show_default=True)
@click.option("--items", "n_items", type=int, default=8_000, show_default=True)
@_train_options
@_user_errors
def demo(workdir, n_users, n_items, k, lam, p, dtype, seed, block_size, n_oversamples, n_power_iter,
         train_path, neighbors, neighbor_score, cluster, n_workers, progress):
    """Make skewed synthetic interactions, ingest them, train on the embedded cluster, summarize."""
    import shutil

    import numpy as np
    import pandas as pd

    from edlae_dask.cluster import connect
    from edlae_dask.ingest import ingest as run_ingest
    from edlae_dask.config import TrainParams
    from edlae_dask.pipeline import train as run_train
    from edlae_dask.synthetic import make_interactions

    work = Path(workdir)
    for sub in ("interactions.csv.gz", "interactions.zarr", "factors"):
        target = work / sub
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    X = make_interactions(n_users, n_items, seed=seed).tocoo()
    csv = work / "interactions.csv.gz"
    pd.DataFrame({"user": X.row + 1, "item": X.col + 1, "rating": 1}).to_csv(csv, index=False)
    log.info("demo: wrote %d synthetic interactions (%d users, %d items) to %s in %.1f s",
             X.nnz, n_users, n_items, csv, time.perf_counter() - t0)
    report = run_ingest(str(csv), str(work / "interactions.zarr"))
    click.echo(report.summary())
    params = TrainParams(k=k, lam=lam, p=p, dtype=dtype, seed=seed, block_size=block_size,
                         n_oversamples=n_oversamples, n_power_iter=n_power_iter, path=train_path,
                         neighbors=neighbors, neighbor_score=neighbor_score).validate()
    progress = sys.stderr.isatty() if progress is None else progress
    with connect(cluster, n_workers=n_workers) as client:
        res = run_train(str(work / "interactions.zarr"), params=params, client=client, out=str(work / "factors"),
                        progress=progress)
    _print_train_summary(res, work / "factors")
    from edlae_dask.io.factors import open_factors
    from edlae_dask.io.interactions import open_interactions

    f = open_factors(work / "factors")
    U, V = f.load()
    store = open_interactions(work / "interactions.zarr")
    x = store.read_shard(0)[:1]
    scores = np.asarray(x @ U) @ V.T
    scores[0, x.indices] = -np.inf
    top = np.argsort(-scores[0])[:10]
    click.echo(f"user {store.user_ids()[0]} has items {f.item_ids[x.indices][:10].tolist()}; "
               f"top-10 recommendations: {f.item_ids[top].tolist()}")


# --------------------------------------------------------------------------- evaluate


class _ManyValues(click.Option):
    """An option that takes one or more values: ``--k 50 200``, ``--k 50,200`` or ``--k 50 --k 200``.

    Following arguments are taken until the next option. (It wraps click's parser
    entry for this option; should a click release rename those internals, the
    option still takes repeated and comma-separated values.)
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser, ctx):
        result = super().add_to_parser(parser, ctx)
        entry = next((parser._long_opt.get(o) for o in self.opts if o in getattr(parser, "_long_opt", {})), None)
        if entry is not None and hasattr(entry, "process"):
            take_one = entry.process
            prefixes = tuple(getattr(parser, "_opt_prefixes", {"-", "--"}))

            def take_many(value, state):
                values = [value]
                while state.rargs and not (state.rargs[0].startswith(prefixes) and not _is_number(state.rargs[0])):
                    values.append(state.rargs.pop(0))
                for v in values:
                    take_one(v, state)

            entry.process = take_many
        return result


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _many(values, cast, name):
    out = []
    for v in values:
        for part in str(v).split(","):
            if part.strip():
                try:
                    out.append(cast(part.strip()))
                except ValueError as exc:
                    raise click.BadParameter(f"{part!r} is not a valid {cast.__name__}", param_hint=name) from exc
    return out


def _bytes_option(text, name):
    """``12GiB``, ``500MB`` or a plain byte count, as Dask spells memory sizes."""
    if text is None:
        return None
    from dask.utils import parse_bytes

    try:
        value = parse_bytes(text)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(f"{text!r} is not a size; write e.g. 12GiB or 500MB", param_hint=name) from exc
    if value <= 0:
        raise click.BadParameter(f"{text!r} must be a positive size, e.g. 12GiB", param_hint=name)
    return value


def _count_or_fraction(text: str):
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() and "." not in text else value


@cli.command(cls=SpecCommand)
@click.option("--interactions", required=True, type=click.Path(), help="Interaction store (from `edlae-dask ingest`).")
@click.option("--k", "ks", cls=_ManyValues, help="Ranks of the low-rank models: --k 50 200 (or 50,200).")
@click.option("--lam", "lams", cls=_ManyValues, help="λ grid: --lam 50 200 500.  [default: 20]")
@click.option("--p", "ps", cls=_ManyValues, help="p grid (dropout probability, 0 <= p < 1): --p 0 0.25 0.5.  [default: 0.25]")
@click.option("--models", default="edlae,lae,full-rank,ease", show_default=True,
              help="Comma-separated: edlae (Algorithm 1), lae (unconstrained low-rank LAE), full-rank (EDLAE "
                   "teacher), ease (full rank at p = 0), edlae-opt (numerical optimum of eq. 14; small n only).")
@click.option("--n-valid", default="0.1", show_default=True, help="Validation users: a count, or a fraction (0.1).")
@click.option("--n-test", default="0.1", show_default=True, help="Test users: a count, or a fraction (0.1).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the user split and the 80/20 split.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--block-size", type=int, default=None, help="Side of the n x n blocks (default 2048/4096).")
@click.option("--max-concurrent", type=int, default=None,
              help="Grid points in flight at once (default: cluster threads, capped by a memory estimate).")
@click.option("--backend", type=click.Choice(["dask", "dense"]), default="dask", show_default=True,
              help="dask: grid points as Dask graphs on the cluster; dense: one process, in-place n x n buffers "
                   "reused across grid points (about half the memory per point; for large n on one machine).")
@click.option("--memory-limit", type=str, default=None,
              help="dense backend: bytes it may use, e.g. 12GiB (default: the machine's available memory).")
@click.option("--power-iters", "n_power_iter", type=int, default=None, help="Eigensolver power iterations.")
@click.option("--exact-maxiter", type=int, default=300, show_default=True, help="L-BFGS iterations of edlae-opt.")
@click.option("--exact-points", type=click.Choice(["chosen", "grid"]), default="chosen", show_default=True,
              help="edlae-opt at Algorithm 1's chosen (λ, p) per k, or at every grid point (tuned on validation).")
@click.option("--cluster", default="local", show_default=True,
              help=_CLUSTER_HELP)
@click.option("--workers", "n_workers", type=int, default=None, help="Workers of the local cluster (default: one per core).")
@click.option("--out", type=click.Path(), default=None, help="Write the full report (every grid point) as JSON here.")
@_storage_options
@_user_errors
def evaluate(interactions, ks, lams, ps, models, n_valid, n_test, seed, dtype, block_size, max_concurrent,
             backend, memory_limit, n_power_iter, exact_maxiter, exact_points, cluster, n_workers, out,
             storage_options):
    """Strong-generalization evaluation: λ and p chosen on validation users, nDCG/Recall on test users."""
    from edlae_dask.cluster import connect
    from edlae_dask.evaluation import evaluate as run_evaluate

    ks = _many(ks, int, "--k")
    lams = _many(lams, float, "--lam") or [20.0]
    ps = _many(ps, float, "--p") or [0.25]
    n_valid = _many([n_valid], _count_or_fraction, "--n-valid")[0]
    n_test = _many([n_test], _count_or_fraction, "--n-test")[0]
    t0 = time.perf_counter()
    with connect(cluster, n_workers=n_workers) as client:
        report = run_evaluate(interactions, models=models, ks=ks, lams=lams, ps=ps, n_valid=n_valid, n_test=n_test,
                              seed=seed, dtype=dtype, block_size=block_size, client=client,
                              backend=backend, memory_limit=_bytes_option(memory_limit, "--memory-limit"),
                              storage_options=storage_options,
                              max_concurrent=max_concurrent, n_power_iter=n_power_iter, exact_maxiter=exact_maxiter,
                              exact_points=exact_points)
    click.echo(report.table())
    t = report.timings
    click.echo(f"time: {time.perf_counter() - t0:.1f} s in all (split {t['split']:.1f} s, gram {t['gram']:.1f} s, "
               f"grid {t['grid']:.1f} s with {report.settings['concurrency']['concurrent']} points at once"
               + (f", exact optimum {t['exact_optimum']:.1f} s" if t["exact_optimum"] else "") + ")")
    if out:
        report.to_json(out)
        click.echo(f"wrote {out}")


# --------------------------------------------------------------------------- score


@cli.command(cls=SpecCommand)
@click.option("--factors", required=True, type=click.Path(), help="Factor store (from `edlae-dask train`); its latest version.")
@click.option("--interactions", required=True, type=click.Path(), help="Interaction store of the users to score.")
@click.option("--out", required=True, type=click.Path(), help="Recommendations store to write (a directory).")
@click.option("--top-n", "top_n", type=int, default=100, show_default=True, help="Items kept per user, best first.")
@click.option("--cluster", default="local", show_default=True,
              help=_CLUSTER_HELP)
@click.option("--workers", "n_workers", type=int, default=None, help="Workers of the local cluster (default: one per core).")
@click.option("--item-block", type=int, default=None, help="Items per score block (default: 32 MiB blocks).")
@click.option("--user-batch", type=int, default=None, help="Users per score block (default 1024).")
@click.option("--include-seen", is_flag=True, help="Also recommend items the user already has.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@_storage_options
@_user_errors
def score(factors, interactions, out, top_n, cluster, n_workers, item_block, user_batch, include_seen, progress,
          storage_options):
    """Write the top-N items of every user to a recommendations store; reruns skip finished shards."""
    from edlae_dask.cluster import connect
    from edlae_dask.scoring import score as run_score

    progress = sys.stderr.isatty() if progress is None else progress
    with connect(cluster, n_workers=n_workers) as client:
        report = run_score(factors, interactions, out, top_n=top_n, client=client, item_block=item_block,
                           user_batch=user_batch, exclude_seen=not include_seen, progress=progress,
                           storage_options=storage_options)
    click.echo(report.summary())


# --------------------------------------------------------------------------- run


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("spec_file", metavar="SPEC", type=click.Path())
@click.argument("flags", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
@_user_errors
def run(ctx, spec_file, flags):
    """Run the job a spec names (jobs/*.yaml); FLAGS of that job override the spec's keys.

    \b
    edlae-dask run jobs/train.yaml
    edlae-dask run jobs/train.yaml --k 200 --cluster tls-cluster.yaml
    edlae-dask run jobs/score.yaml --check     # validate and print the options; no work
    """
    from edlae_dask.jobspec import job_of

    job = job_of(spec_file)
    command = cli.commands[job]
    with command.make_context(job, ["--spec", spec_file, *flags], parent=ctx) as sub:
        return command.invoke(sub)


# --------------------------------------------------------------------------- info


@cli.command()
@click.argument("path", type=click.Path())
@_storage_options
@_user_errors
def info(path, storage_options):
    """Describe an interaction store or a factor store (a local path or a URL)."""
    from edlae_dask.io.factors import is_factor_store, open_factors
    from edlae_dask.io.interactions import open_interactions

    if is_factor_store(path, storage_options=storage_options):
        f = open_factors(path, storage_options=storage_options)
        meta = {k: v for k, v in f.meta.items() if k != "stages"}
        click.echo(json.dumps({"kind": "factors", "version": f.version, **meta}, indent=2, default=str))
    else:
        s = open_interactions(path, storage_options=storage_options)
        click.echo(json.dumps({"kind": "interactions", **s.attrs}, indent=2, default=str))


def main() -> None:
    cli(prog_name="edlae-dask")


if __name__ == "__main__":
    main()

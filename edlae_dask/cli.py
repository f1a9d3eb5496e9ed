"""The ``edlae-dask`` command line: ingest, train, score, export, evaluate, run (a job spec), demo, info.

The commands parse options, set up logging and the cluster, and call the library;
they hold no math and no zarr. Their options are made from the declarations of
:mod:`edlae_dask.config` (:func:`options_from`), so each default, choice list and
help text is written once, there. Every error a command meets prints one line to
stderr, without a traceback (``edlae-dask --debug`` prints it too): a user's error
(:class:`EdlaeError`, and OS errors, corrupt chunks, ... worded by
:func:`edlae_dask.errors.as_user_error`) exits with status 1, any other (a bug) with 70;
click's usage errors keep their status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

import click
from click.core import ParameterSource

from edlae_dask._version import __version__
from edlae_dask.config import (
    INPUT,
    JOB_OPTIONS,
    PATH,
    DemoOptions,
    EvaluateOptions,
    ExportOptions,
    InfoOptions,
    IngestOptions,
    Option,
    ScoreOptions,
    TrainOptions,
    TrainParams,
    VerifyOptions,
    build,
    options_of,
)
from edlae_dask.errors import EdlaeError, ParameterError, PathOption, as_user_error, internal_error_line
from edlae_dask.jobspec import check_inputs, describe, job_of, load_job_spec, missing_key, plan

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
log = logging.getLogger("edlae_dask.cli")


def _setup_logging(verbosity: int) -> None:
    """Log to stderr: warnings only below 0 (``-q``), INFO at 0, DEBUG at 1 (``-v``), Dask's INFO too at 2 (``-vv``).

    A job's report lines (:data:`edlae_dask.diagnostics.REPORT`) are left out: the command prints them on stdout.
    """
    from edlae_dask.diagnostics import is_report_line

    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-5s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: not is_report_line(record))
    import distributed  # noqa: F401  (configures its loggers on import; quiet them after)

    for noisy in ("distributed", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbosity < 2 else logging.INFO)
    # bokeh warns that the (loopback-bound) dashboard accepts any Host header
    logging.getLogger("bokeh").setLevel(logging.ERROR if verbosity < 2 else logging.INFO)


_VERBOSITY = "edlae_dask.verbosity"  # the root context's meta key: -v counts up, -q down, wherever given


def _more_or_less(sign: int):
    def callback(ctx: click.Context, param, value: int):
        if value:
            meta = ctx.find_root().meta
            meta[_VERBOSITY] = meta.get(_VERBOSITY, 0) + sign * value
            _setup_logging(meta[_VERBOSITY])
        return value

    return callback


def verbosity_options(fn):
    """``-v``/``--verbose`` and ``-q``/``--quiet`` on a command: the same as given before it (``edlae-dask -q``)."""
    fn = click.option("-q", "--quiet", count=True, expose_value=False, callback=_more_or_less(-1),
                      help="Less log output: warnings and errors only (the results still print).")(fn)
    return click.option("-v", "--verbose", count=True, expose_value=False, callback=_more_or_less(+1),
                        help="More log output (-vv: also Dask's).")(fn)


#: Exit statuses: a user's error (bad input, a full disk, ...: fix it and rerun), and an internal error (a bug:
#: report it); 70 is EX_SOFTWARE of sysexits.h. click's usage errors exit with 2.
EXIT_USER_ERROR, EXIT_INTERNAL_ERROR = 1, 70
#: What passes through the handlers: click's own ways out (usage errors, --help, ctx.exit), which click reports
#: itself, exits, and Ctrl-C (click says "Aborted!"). Anything else, even a BaseException such as the
#: CancelledError of an event loop shutting down, ends as one line.
_PASS_THROUGH = (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit, KeyboardInterrupt,
                 GeneratorExit)


def _user_errors(fn):
    """Turn any error of the command into one line on stderr and an exit status (:func:`_fail`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # every error ends here, as one line
            _fail(exc, click.get_current_context(silent=True))

    return wrapper


def _fail(exc: BaseException, ctx: click.Context | None) -> NoReturn:
    """Print ``exc`` as one line on stderr, after its traceback with ``--debug``, and exit.

    A user's error (:func:`edlae_dask.errors.as_user_error`: ours, OS errors naming the path
    and the option that chose it, corrupt chunks, ...) exits with :data:`EXIT_USER_ERROR`;
    anything else is a bug: its type and message, and :data:`EXIT_INTERNAL_ERROR`.
    """
    debug = ctx is not None and bool(ctx.find_root().params.get("debug"))
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    error = as_user_error(exc, _path_options(ctx))
    if error is not None:
        click.echo("error: " + " ".join(str(error).split()), err=True)
        sys.exit(EXIT_USER_ERROR)
    line = internal_error_line(exc)
    if debug:
        line = line.replace("rerun with --debug and report it", "report it with the traceback above")
    click.echo(line, err=True)
    sys.exit(EXIT_INTERNAL_ERROR)


def _path_options(ctx: click.Context | None) -> list[PathOption]:
    """The paths the running command was given (from its declared PATH and INPUT options), to name in errors."""
    declared = {**JOB_OPTIONS, "demo": DemoOptions, "info": InfoOptions}.get(ctx.command.name) if ctx else None
    found = []
    for opt in options_of(declared) if declared else ():
        value = ctx.params.get(opt.name)
        if opt.kind not in (PATH, INPUT) or value is None:
            continue
        label = opt.flag or opt.name.upper()
        found += [PathOption(label, str(v), opt.kind == PATH) for v in (value if opt.many else [value])]
    return found


# --------------------------------------------------------------------------- options from the declarations


class JsonMapping(click.ParamType):
    """A mapping: a JSON object on the command line (``'{"anon": true}'``), a YAML mapping in a job spec."""

    name = "JSON"

    def convert(self, value, param, ctx):
        from edlae_dask.io._fs import parse_storage_options

        if value is None or isinstance(value, dict):
            return value
        try:
            return parse_storage_options(value)
        except EdlaeError as exc:
            self.fail(str(exc), param, ctx)


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


def options_from(cls: type):
    """Give a command the options that ``cls`` declares (:func:`edlae_dask.config.options_of`), in that order.

    Each command gets its own click parameters, so commands sharing declarations (train and demo) share no state.
    """

    def decorate(fn):
        for add in reversed([_click_param(opt) for opt in options_of(cls)]):  # decorators apply bottom-up
            fn = add(fn)
        return fn

    return decorate


def _click_param(opt: Option):
    """The click decorator adding a declared option; defaults are given only where the option has one."""
    if opt.flag is None:
        return click.argument(opt.name, nargs=-1 if opt.many else 1, required=opt.required, type=_click_type(opt))
    if opt.switch:  # true, false or unset: the job decides (progress bars: is stderr a terminal?)
        return click.option(f"{opt.flag}/--no-{opt.flag[2:]}", opt.name, default=None, help=opt.help)
    if opt.type is bool:
        return click.option(opt.flag, opt.name, is_flag=True, help=opt.help)
    if opt.many:
        return click.option(opt.flag, opt.name, cls=_ManyValues, type=_click_type(opt), required=opt.required,
                            help=opt.help)
    if opt.required:
        return click.option(opt.flag, opt.name, type=_click_type(opt), required=True, help=opt.help)
    shown = True if opt.default is not None else None  # click shows no default of None anyway
    return click.option(opt.flag, opt.name, type=_click_type(opt), default=opt.default, show_default=shown,
                        help=opt.help)


def _click_type(opt: Option) -> click.ParamType:
    if opt.choices:
        return click.Choice(list(opt.choices))
    if opt.kind in (PATH, INPUT):
        return click.Path()
    return {int: click.INT, float: click.FLOAT, str: click.STRING, dict: JsonMapping()}[opt.type]


# --------------------------------------------------------------------------- job specs: --spec, --check


class SpecCommand(click.Command):
    """A job command that also takes ``--spec FILE`` (its keys become defaults that flags override) and ``--check``.

    The command's name is its job's (:data:`edlae_dask.config.JOB_OPTIONS`); the spec is read and
    checked by :mod:`edlae_dask.jobspec`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(
            ["--spec", "spec_file"], type=click.Path(), default=None,
            help="Job spec (YAML, see jobs/README.md); flags given here override its keys."))
        self.params.append(click.Option(
            ["--check"], is_flag=True,
            help="Validate the spec and options (keys, types, value ranges, inputs exist, cluster spec; for train "
                 "also the output path, the memory estimate and the path auto would choose), print them as a "
                 "spec, and stop; no cluster is started."))

    def parse_args(self, ctx, args):
        try:
            spec_file = _spec_arg(args)
            if spec_file is not None:
                spec = load_job_spec(spec_file, self.name)
                ctx.default_map = {**(ctx.default_map or {}), **spec.values}
            try:
                rest = super().parse_args(ctx, args)
            except click.MissingParameter as exc:
                if spec_file is None or exc.param is None:
                    raise
                raise missing_key(spec_file, self.name, exc.param.name) from exc
            if "cluster" in ctx.params:  # DASK_SCHEDULER_ADDRESS, where no --cluster was given
                from edlae_dask.cluster import cluster_from_environment

                given = ctx.get_parameter_source("cluster") not in (ParameterSource.DEFAULT, None)
                ctx.params["cluster"] = cluster_from_environment(ctx.params["cluster"], given=given)
            if spec_file is not None or ctx.params.get("check"):
                from_spec = {n: ctx.get_parameter_source(n) == ParameterSource.DEFAULT_MAP for n in ctx.params}
                check_inputs(self.name, ctx.params, sources=from_spec, spec_file=spec_file)
                model = {o.name for o in options_of(TrainParams)}
                if model <= set(ctx.params):  # the model's value ranges too: `--check` says what the run would
                    build(TrainParams, {name: ctx.params[name] for name in model}).validate()
            return rest
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # a spec's errors end as one line too
            _fail(exc, ctx)

    def invoke(self, ctx):
        ctx.params.pop("spec_file", None)
        if ctx.params.pop("check", False):
            try:  # what the run would find before its first task: the store's shape, the output, the memory
                notes = plan(self.name, ctx.params)
            except _PASS_THROUGH:
                raise
            except BaseException as exc:
                _fail(exc, ctx)
            click.echo(describe(self.name, ctx.params, notes))
            return None
        return super().invoke(ctx)


def _spec_arg(args: list[str]) -> str | None:
    """The value of the last ``--spec`` in ``args`` (read before parsing, to set the defaults)."""
    found = None
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--spec" and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--spec="):
            found = arg[len("--spec="):]
    return found


# --------------------------------------------------------------------------- the commands


class _Group(click.Group):
    """The ``edlae-dask`` group: an error that no command caught (finding the command, logging) is one line too."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # every error ends here, as one line
            _fail(exc, ctx)


@click.group(cls=_Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="edlae-dask")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: also Dask's); also after the command.")
@click.option("-q", "--quiet", count=True, help="Less log output: warnings and errors only; also after the command.")
@click.option("--debug", is_flag=True, help="On an error, also print its Python traceback.")
@click.pass_context
def cli(ctx, verbose, quiet, debug):
    """Train and serve the low-rank EDLAE recommender (Steck & Garcia Garcia 2021) on Dask."""
    ctx.meta[_VERBOSITY] = verbose - quiet
    _setup_logging(ctx.meta[_VERBOSITY])


# --------------------------------------------------------------------------- ingest


@cli.command(cls=SpecCommand)
@verbosity_options
@options_from(IngestOptions)
@_user_errors
def ingest(source, out, append, items_from, fmt, user_col, item_col, value_col, min_value, min_user_interactions,
           min_item_interactions, shard_size, chunk_rows, overwrite, storage_options):
    """Read raw interactions (CSV, Parquet, MovieLens, Netflix, MSD) into an interaction store, or add them to one."""
    from edlae_dask.ingestion import ingest as run_ingest

    report = run_ingest(
        list(source) if len(source) > 1 else source[0], out, fmt=fmt, user_col=user_col, item_col=item_col,
        value_col=value_col, min_value=min_value, min_user_interactions=min_user_interactions,
        min_item_interactions=min_item_interactions, shard_size=shard_size, chunk_rows=chunk_rows,
        overwrite=overwrite, items_from=items_from, append=append, storage_options=storage_options,
    )
    click.echo(report.summary())


# --------------------------------------------------------------------------- train


@cli.command(cls=SpecCommand)
@verbosity_options
@options_from(TrainOptions)
@_user_errors
def train(interactions, out, overwrite, checkpoint_dir, cluster, n_workers, progress, storage_options, **model):
    """Train U, V of Algorithm 1 on an interaction store and publish them to a factor store."""
    from edlae_dask.cluster import connect
    from edlae_dask.pipeline import train as run_train

    params = build(TrainParams, model).validate()  # model: TrainParams's options, by name (train_path)
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
    click.echo(f"eigensolver: {_eigensolver_words(res.eigensolver)}; Ritz residuals max {r.max():.2e}, "
               f"median {float(sorted(r)[len(r) // 2]):.2e}; "
               f"eigenvalues {res.eigenvalues[0]:.4g} … {res.eigenvalues[-1]:.4g}")


def _eigensolver_words(info: dict) -> str:
    """The eigensolver's settings as words: ``subspace iteration, 3 power passes, 27 oversamples, 5 products``."""
    words = {"method": "{} iteration", "n_power_iter": "{} power passes", "n_oversamples": "{} oversamples",
             "n_matvecs": "{} products with the student matrix", "n_matvec_columns": "{} columns in all",
             "block_size": "blocks of {}"}
    keys = [k for k in words if k in info] + [k for k in info if k not in words]
    return ", ".join(words.get(key, key.replace("_", " ") + " {}").format(info[key]) for key in keys)


# --------------------------------------------------------------------------- demo


@cli.command()
@verbosity_options
@options_from(DemoOptions)
@_user_errors
def demo(workdir, n_users, n_items, cluster, n_workers, progress, **model):
    """Make skewed synthetic interactions, ingest them, train on the embedded cluster, summarize."""
    import shutil

    import numpy as np
    import pandas as pd

    from edlae_dask.cluster import cluster_from_environment, connect

    ctx = click.get_current_context()
    cluster = cluster_from_environment(cluster, given=ctx.get_parameter_source("cluster") != ParameterSource.DEFAULT)
    from edlae_dask.ingestion import ingest as run_ingest
    from edlae_dask.pipeline import train as run_train
    from edlae_dask.synthetic import make_interactions

    params = build(TrainParams, model)  # model: TrainParams's options, by name (train_path)
    work = Path(workdir)
    _claim_demo_dir(work)  # refuses a directory holding anything the demo did not make, before touching it
    for sub in _DEMO_OUTPUTS:
        target = work / sub
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    t0 = time.perf_counter()
    X = make_interactions(n_users, n_items, seed=params.seed).tocoo()
    csv = work / "interactions.csv.gz"
    pd.DataFrame({"user": X.row + 1, "item": X.col + 1, "rating": 1}).to_csv(csv, index=False)
    log.info("demo: wrote %d synthetic interactions (%d users, %d items) to %s in %.1f s",
             X.nnz, n_users, n_items, csv, time.perf_counter() - t0)
    report = run_ingest(str(csv), str(work / "interactions.zarr"))
    click.echo(report.summary())
    params.validate()
    progress = sys.stderr.isatty() if progress is None else progress
    with connect(cluster, n_workers=n_workers) as client:
        res = run_train(str(work / "interactions.zarr"), params=params, client=client, out=str(work / "factors"),
                        progress=progress)
    _print_train_summary(res, work / "factors")
    from edlae_dask.io.factors import open_factors
    from edlae_dask.io.interactions import open_interactions
    from edlae_dask.topn import top_n

    f = open_factors(work / "factors")
    U, V = f.load()
    store = open_interactions(work / "interactions.zarr")
    x = store.read_shard(0)[:1]
    scores = np.asarray(x @ U) @ V.T
    scores[0, x.indices] = -np.inf
    top = top_n(scores, min(10, scores.shape[1]))[0][0]  # the package's one top-N rule
    click.echo(f"user {store.user_ids()[0]} has items {_ids(f.item_ids[x.indices][:10])}; "
               f"top-10 recommendations: {_ids(f.item_ids[top])}")


def _ids(ids) -> str:
    """Ids as a person writes them: ``1, 50, 260``."""
    return ", ".join(str(i) for i in ids.tolist())


_DEMO_MARKER = ".edlae-demo"
_DEMO_OUTPUTS = ("interactions.csv.gz", "interactions.zarr", "factors")


def _claim_demo_dir(work: Path) -> None:
    """Make ``work`` the demo's directory, or refuse it; nothing in it is touched here.

    A new or empty directory is taken, and marked with the file ``.edlae-demo``.
    A marked one is an earlier demo's: its outputs may be replaced, but only if each
    is what the demo writes there (the CSV, an interaction store, a factor store),
    and nothing else may be there but the hidden siblings the stores' writers use.

    Raises
    ------
    OutputExistsError
        ``work`` is a file, or holds anything else; the message names it.
    """
    from edlae_dask.errors import OutputExistsError
    from edlae_dask.io import factors, interactions
    from edlae_dask.io._fs import group_attrs

    def refuse(problem: str) -> OutputExistsError:
        return OutputExistsError(f"refusing to use {work} as the demo's work directory: {problem}; the demo only "
                                 f"replaces its own {', '.join(_DEMO_OUTPUTS)} there. Choose another --workdir (a new "
                                 "or empty directory), or move that away yourself")

    if work.exists() and not work.is_dir():
        raise refuse("it is not a directory")
    names = sorted(p.name for p in work.iterdir()) if work.is_dir() else []
    marker = work / _DEMO_MARKER
    if names and not (marker.is_file() and not marker.is_symlink()):
        raise refuse(f"it holds {names[0]!r}, and no earlier demo made it (there is no {_DEMO_MARKER} file)")
    for name in names:
        path = work / name
        if name == _DEMO_MARKER or name.startswith((".interactions.zarr.", ".factors.")):
            continue  # the writers' own lock files and temporaries: they tidy those themselves
        if path.is_symlink() or name not in _DEMO_OUTPUTS:
            own = False
        elif name == "interactions.csv.gz":
            own = path.is_file()
        else:  # a store of the kind the demo writes there (or an empty directory)
            ours = interactions.FORMAT.is_ours(group_attrs(path)) if name == "interactions.zarr" else (
                factors.is_factor_store(path))
            own = path.is_dir() and (ours or not any(path.iterdir()))
        if not own:
            raise refuse(f"it holds {name!r}, which the demo did not make")
    work.mkdir(parents=True, exist_ok=True)
    if not names:
        marker.write_text("made by `edlae-dask demo`: a rerun replaces its interactions.csv.gz, interactions.zarr "
                          "and factors here\n")


# --------------------------------------------------------------------------- evaluate


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
@verbosity_options
@options_from(EvaluateOptions)
@_user_errors
def evaluate(interactions, ks, lams, ps, models, eval_path, neighbors, neighbor_score, n_valid, n_test, seed, dtype,
             block_size, max_concurrent, backend, memory_limit, n_power_iter, exact_maxiter, exact_points, cluster,
             n_workers, out, overwrite, storage_options):
    """Strong-generalization evaluation: λ and p (and K) chosen on validation users, nDCG/Recall on test users."""
    from edlae_dask.cluster import connect
    from edlae_dask.evaluation import evaluate as run_evaluate
    from edlae_dask.evaluation.scalable import evaluate_scalable
    from edlae_dask.io.versioned import check_new_file

    if out:  # before the evaluation: its hours of work are not lost to a path that cannot be written
        out = check_new_file(out, overwrite=overwrite, option="--out")
    ks = _many(ks, int, "--k")
    lams = _many(lams, float, "--lam") or [TrainParams.lam]  # the model's default
    ps = _many(ps, float, "--p") or [TrainParams.p]
    Ks = _many(neighbors, int, "--neighbors") or [TrainParams.neighbors]
    n_valid = _many([n_valid], _count_or_fraction, "--n-valid")[0]
    n_test = _many([n_test], _count_or_fraction, "--n-test")[0]
    scalable = eval_path == "scalable"
    if scalable and (backend != "dask" or memory_limit or max_concurrent or block_size or exact_points != "chosen"):
        raise ParameterError("--backend, --memory-limit, --max-concurrent, --block-size and --exact-points are "
                             "options of --path dense; drop them with --path scalable")
    if not scalable and neighbors:
        raise ParameterError("--neighbors is an option of --path scalable; add --path scalable or drop it")
    models = models or ("edlae" if scalable else "edlae,lae,full-rank,ease")
    t0 = time.perf_counter()
    with connect(cluster, n_workers=n_workers) as client:
        if scalable:
            report = evaluate_scalable(interactions, models=models, ks=ks, lams=lams, ps=ps, neighbors=Ks,
                                       neighbor_score=neighbor_score, n_valid=n_valid, n_test=n_test, seed=seed,
                                       dtype=dtype, client=client, storage_options=storage_options,
                                       n_power_iter=n_power_iter)
        else:
            report = run_evaluate(interactions, models=models, ks=ks, lams=lams, ps=ps, n_valid=n_valid,
                                  n_test=n_test, seed=seed, dtype=dtype, block_size=block_size, client=client,
                                  backend=backend, memory_limit=_bytes_option(memory_limit, "--memory-limit"),
                                  storage_options=storage_options, max_concurrent=max_concurrent,
                                  n_power_iter=n_power_iter, exact_maxiter=exact_maxiter, exact_points=exact_points)
    click.echo(report.table())
    t = report.timings
    if scalable:
        runs = report.settings["stage_runs"]
        click.echo(f"time: {time.perf_counter() - t0:.1f} s in all (split {t['split']:.1f} s, load {t['load']:.1f} s, "
                   f"neighbours {t['neighbors']:.1f} s once for K={max(report.settings['neighbors'])}, grid "
                   f"{t['grid']:.1f} s: {runs['teacher']} teachers, {runs['eigensolve']} eigensolves at "
                   f"k={report.settings['eigensolve_k']})")
    else:
        click.echo(f"time: {time.perf_counter() - t0:.1f} s in all (split {t['split']:.1f} s, gram {t['gram']:.1f} s, "
                   f"grid {t['grid']:.1f} s with {report.settings['concurrency']['concurrent']} points at once"
                   + (f", exact optimum {t['exact_optimum']:.1f} s" if t["exact_optimum"] else "") + ")")
    if out:
        report.to_json(out, overwrite=overwrite)
        click.echo(f"wrote {out}")


# --------------------------------------------------------------------------- score


@cli.command(cls=SpecCommand)
@verbosity_options
@options_from(ScoreOptions)
@_user_errors
def score(factors, interactions, out, top_n, cluster, n_workers, item_block, user_batch, include_seen, items_allow,
          items_deny, users, progress, storage_options):
    """Write the top-N items of every user to a recommendations store; reruns skip finished shards."""
    from edlae_dask.cluster import connect
    from edlae_dask.scoring import score as run_score

    progress = sys.stderr.isatty() if progress is None else progress
    with connect(cluster, n_workers=n_workers) as client:
        report = run_score(factors, interactions, out, top_n=top_n, client=client, item_block=item_block,
                           user_batch=user_batch, exclude_seen=not include_seen, progress=progress,
                           storage_options=storage_options, items_allow=items_allow, items_deny=items_deny,
                           users=users)
    click.echo(report.summary())


@cli.command()
@verbosity_options
@options_from(ExportOptions)
@_user_errors
def export(recs, out, overwrite, storage_options):
    """Write a recommendations store to a Parquet or CSV file for serving: user_id, rank, item_id, score.

    Original ids, rank from 1, one row per (user, rank); places padded with score
    -inf (a user with fewer than top-n items left) are left out. Streamed shard by
    shard; the file appears whole or not at all.
    """
    from edlae_dask.io.export import export_recommendations

    click.echo(export_recommendations(recs, out, overwrite=overwrite, storage_options=storage_options).summary())


# --------------------------------------------------------------------------- run


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@verbosity_options
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
    job = job_of(spec_file)
    command = cli.commands[job]
    with command.make_context(job, ["--spec", spec_file, *flags], parent=ctx) as sub:
        return command.invoke(sub)


# --------------------------------------------------------------------------- info


@cli.command()
@verbosity_options
@options_from(InfoOptions)
@_user_errors
def info(path, storage_options):
    """Describe an interaction store or a factor store (a local path or a URL)."""
    from edlae_dask.io.factors import is_factor_store, open_factors
    from edlae_dask.io.interactions import open_interactions

    if is_factor_store(path, storage_options=storage_options):
        f = open_factors(path, storage_options=storage_options)
        meta = {k: v for k, v in f.meta.items() if k not in ("stages", "checksums")}
        click.echo(json.dumps({"kind": "factors", "version": f.version, **meta}, indent=2, default=str))
    else:
        s = open_interactions(path, storage_options=storage_options)
        attrs = {k: v for k, v in s.attrs.items() if k not in ("checksums", "shard_checksums")}
        click.echo(json.dumps({"kind": "interactions", **attrs}, indent=2, default=str))


@cli.command()
@verbosity_options
@options_from(VerifyOptions)
@_user_errors
def verify(path, version, storage_options):
    """Read a whole store and check every part against the checksum written with it (exit 1 if any is damaged)."""
    from edlae_dask.errors import StoreIntegrityError
    from edlae_dask.io.verify import verify_store

    report = verify_store(path, version=version, storage_options=storage_options)
    if report.damaged:
        for line in report.damaged:
            click.echo(line, err=True)
        raise StoreIntegrityError(f"{report.summary()}; each is listed above")
    click.echo(report.summary())
    for part in report.unverifiable:
        click.echo(f"warning: {part}: read, but cannot be verified", err=True)


def main() -> None:
    cli(prog_name="edlae-dask")


if __name__ == "__main__":
    main()

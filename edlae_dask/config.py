"""Parameters, their defaults and their checks, and job-spec YAML reading: no click, no Dask.

Everything a user can set is declared here once, as a dataclass field made by
:func:`option`: its default, its flag, its help text, its choices and what kind of
value it is. :class:`TrainParams` holds the model's parameters (those of the
estimator :class:`edlae_dask.model.EDLAE` and of ``edlae-dask train``);
:class:`IngestOptions`, :class:`TrainOptions`, :class:`ScoreOptions` and
:class:`EvaluateOptions` hold the jobs' options (:data:`JOB_OPTIONS`), sharing
groups of them (:class:`FitOptions`, :class:`ClusterOptions`, :class:`StorageOptions`).
:func:`options_of` lists a class's options: the CLI (:mod:`edlae_dask.cli`) makes its
click options from that list, and job specs (:mod:`edlae_dask.jobspec`) are validated
against it. The generic checks of a YAML mapping (keys, types), which job specs and
cluster specs (:mod:`edlae_dask.cluster`) share, are here too.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import numbers
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edlae_dask.errors import ParameterError, os_error
from edlae_dask.planning import MAX_BLOCK_SIZE, default_block_size

#: ``dense``: exact Algorithm 1 (n × n matrices); ``scalable``: neighbour-restricted teacher,
#: matrix-free student (:mod:`edlae_dask.scalable`); ``auto``: dense if it fits the cluster's memory.
TRAINING_PATHS = ("auto", "dense", "scalable")
#: Working precision of every stage.
DTYPES = ("float32", "float64")
#: How the scalable path ranks candidate neighbours: the co-occurrence count ``G_aj``, or its
#: cosine ``G_aj / sqrt(G_aa·G_jj)`` (which favours less popular items).
NEIGHBOR_SCORES = ("count", "cosine")
#: Most passes of the eigensolver a run may ask for: the measured defaults use 3 (subspace) and 11 (block Krylov,
#: benchmarks/results/eigen-defaults.md); far more only makes a job run for days.
MAX_POWER_ITER = 100
#: Default convergence rule of the eigensolver (``--eig-tol``): stop when the top-k Ritz value sum changes by less
#: than this, relatively, between two passes; 0 turns the rule off (exactly ``--power-iters`` passes). Measured
#: (benchmarks/results/convergence*.md, k = 100): test nDCG@100 stops rising once the change is ~1.5e-2 (yelp-s3rec,
#: dense) and never rises with more passes (yelp-s3rec scalable; synthetic 10⁵ items), while on a synthetic set whose
#: top-k lies inside a flat stretch of the spectrum it falls with every pass (0.157 at 3 passes, change 1.0e-2;
#: 0.139 at 5e-3; 0.118 at 1e-3). 2e-2 keeps all of them at the measured 3 passes and adds passes only to a solve
#: still moving more than that (where the dense nDCG was still rising); tighter is for eigenvectors, not ranking.
DEFAULT_EIG_TOL = 2e-2
#: Default most power iterations under the rule (``--max-power-iters``; Krylov: blocks beyond the first). Equal to
#: ``edlae_dask.linalg.eigen.DEFAULT_MAX_POWER_ITER`` (a test holds them together).
DEFAULT_MAX_POWER_ITER = 20
#: Default K of the scalable path; its accuracy against the dense path on real data is in
#: benchmarks/results/design-notes.md and scalable-accuracy-*.md. The teacher costs K³ per item, so larger
#: K is for smaller catalogues.
DEFAULT_NEIGHBORS = 64
#: ``edlae-dask evaluate --path``: the dense evaluation (n x n Gram) or the scalable path's (no n x n matrix).
EVALUATION_PATHS = ("dense", "scalable")
#: ``edlae-dask ingest --format``: ``auto`` and :data:`edlae_dask.ingestion.FORMATS` (not imported: it needs pandas).
INGEST_FORMATS = ("auto", "csv", "parquet", "movielens-csv", "movielens-dat", "netflix", "msd")

#: The largest λ accepted. λ is added to every item's count in P = G + Λ (eq. 8); item counts are at most the
#: number of users, so a λ beyond 1e12 dwarfs any data set's counts: B ≈ G/λ, every score is ≈ 0 (in float32
#: they underflow), and a value like 1e300 is a typo, not a model. Refused rather than warned about: the run
#: would spend its hours and publish a useless model.
MAX_LAM = 1e12
#: The largest p accepted: 1 − 1e-6. The dropout penalty is p/(1−p)·diag(G); within 1e-6 of 1 it is over 1e6
#: times each item's count, swamps the data (float32 keeps 7 digits) and every score is ≈ 0. Refused for the
#: reason λ is.
MAX_P = 1 - 1e-6
#: Why λ and p are bounded, for the errors.
LAM_BOUND = (f"a finite float in [0, {MAX_LAM:g}] (λ is added to every item's count; beyond {MAX_LAM:g} it dwarfs "
             "any data set's counts and every score is ≈ 0)")
P_BOUND = ("a float in [0, 1 - 1e-6] (the dropout probability; within 1e-6 of 1 the penalty p/(1-p) is over 1e6 "
           "times each item's count and every score is ≈ 0)")


def lam_ok(value) -> bool:
    """``value`` is a λ the model accepts: a finite real in ``[0, MAX_LAM]``."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool) and bool(np.isfinite(value))
            and 0 <= value <= MAX_LAM)


def p_ok(value) -> bool:
    """``value`` is a p the model accepts: a real in ``[0, MAX_P]``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= MAX_P


# --------------------------------------------------------------------------- declaring options

#: Kinds of value that job specs treat specially (the ``kind`` of :func:`option`).
PATH = "path"  # a path or fsspec URL: relative ones in a spec are relative to the spec's folder
INPUT = "input"  # a path the job reads: it must exist before the job starts
CLUSTER = "cluster"  # 'local', 'threads', a scheduler address, or a cluster spec file (a path)
KINDS = (PATH, INPUT, CLUSTER)
_META = "edlae_dask"  # the key of a field's metadata holding its declaration


def option(default=None, *, flag: str | None = None, name: str | None = None, help: str | None = None,
           choices=None, kind: str | None = None, required: bool = False, many: bool = False,
           argument: bool = False):
    """Declare a parameter: a dataclass field holding its one default, with what the CLI and job specs need.

    Parameters
    ----------
    default : optional
        The default (``None``: unset, the job decides). A many-valued option defaults to no values.
    flag : str, optional
        The command-line flag, default ``--`` and the field's name with dashes (``block_size`` is
        ``--block-size``). The spec key is the flag without its dashes.
    name : str, optional
        The parameter's name in the command (click's, and the keys of ``JobSpec.values``) where it
        is not the field's name.
    help : str, optional
        The ``--help`` text; the default is appended (``[default: 20.0]``) unless it is ``None`` or a flag's.
    choices : sequence of str, optional
        The allowed values.
    kind : {None, PATH, INPUT, CLUSTER}
        What job specs do with the value: resolve a relative path against the spec's folder,
        and also check that it exists (an input), or resolve and check a cluster value.
    required : bool
        The job needs a value (it has no default).
    many : bool
        Takes several values: an option (``--k 50 200``) or an argument (``SOURCE...``); a list in a spec.
    argument : bool
        A positional argument of the command rather than a flag.

    Returns
    -------
    dataclasses.Field
        A field whose type is its annotation: ``int``, ``float``, ``str``, ``bool`` (a flag; ``bool | None``:
        ``--x/--no-x``) or ``dict``, optionally ``| None``; ``tuple[str, ...]`` if ``many``.
    """
    if kind not in (None, *KINDS):
        raise ValueError(f"kind must be one of {KINDS} or None, not {kind!r}")
    if many and default is None:
        default = ()
    decl = {"flag": None if argument else flag, "name": name, "help": help, "kind": kind, "required": required,
            "choices": tuple(choices) if choices else None, "many": many, "argument": argument}
    return field(default=default, metadata={_META: decl})


def like(cls: type, name: str, **changes):
    """Declare a parameter as the field ``name`` of ``cls`` is declared (default, flag, help, ...), but for ``changes``.

    For a parameter that several jobs take with the same meaning (``--dtype`` of train and evaluate).
    """
    source = next(f for f in dataclasses.fields(cls) if f.name == name)
    return option(**{"default": source.default, **source.metadata[_META], **changes})


def group(cls: type, *, first: tuple[str, ...] = ()):
    """Declare a field holding a dataclass of options: a command takes those options in its place.

    Parameters
    ----------
    cls : dataclass
        The group, e.g. :class:`TrainParams`.
    first : tuple of str
        Fields of ``cls`` whose options come first, in this order (the rest follow in field order):
        the order of the flags in ``--help``, where it is not the order of the fields.
    """
    return field(default_factory=cls, metadata={_META: {"group": cls, "first": tuple(first)}})


@dataclass(frozen=True)
class Option:
    """One declared parameter, as :func:`options_of` lists it.

    Attributes
    ----------
    field : str
        The dataclass field.
    name : str
        The command's name for it (``train_path`` for :attr:`TrainParams.path`).
    flag : str or None
        ``--path``; ``None`` for an argument.
    type : type
        The type of one value: ``int``, ``float``, ``str``, ``bool`` or ``dict``.
    default, help, choices, kind, required, many
        As declared (see :func:`option`).
    """

    field: str
    name: str
    flag: str | None
    type: type
    default: object
    help: str | None
    choices: tuple[str, ...] | None
    kind: str | None
    required: bool
    many: bool

    @property
    def key(self) -> str:
        """The key in a job spec: the flag without its dashes, or an argument's name."""
        return self.flag[2:] if self.flag else self.name

    @property
    def switch(self) -> bool:
        """A ``--x/--no-x`` option: true, false, or unset (``None``: the job decides)."""
        return self.type is bool and self.default is None


@functools.cache
def options_of(cls: type) -> tuple[Option, ...]:
    """The options a dataclass declares, groups expanded in place, in the order a command lists them."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        decl = f.metadata.get(_META)
        if decl is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with option(), like() or group()")
        if "group" in decl:
            inner = options_of(decl["group"])
            first = [o for name in decl["first"] for o in inner if o.field == name]
            if len(first) != len(decl["first"]):
                raise TypeError(f"{cls.__name__}.{f.name}: first={decl['first']} names no option of the group")
            found += first + [o for o in inner if o not in first]
            continue
        found.append(Option(
            field=f.name, name=decl["name"] or f.name,
            flag=None if decl["argument"] else decl["flag"] or "--" + f.name.replace("_", "-"),
            type=_value_type(hints[f.name], decl["many"], f"{cls.__name__}.{f.name}"), default=f.default,
            help=decl["help"], choices=decl["choices"], kind=decl["kind"], required=decl["required"],
            many=decl["many"]))
    names = [o.name for o in found]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise TypeError(f"{cls.__name__} declares option names twice: {twice}")
    return tuple(found)


def _value_type(hint, many: bool, where: str) -> type:
    """The type of one value from a field's annotation: ``int | None`` is int, ``tuple[str, ...]`` str."""
    if many:
        if typing.get_origin(hint) is not tuple:
            raise TypeError(f"{where} takes many values: annotate it tuple[str, ...]")
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None: None is "unset"
        values = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = values[0] if len(values) == 1 else hint
    if hint not in (int, float, str, bool, dict):
        raise TypeError(f"{where}: an option holds int, float, str, bool or dict values, not {hint!r}")
    return hint


def build(cls: type, values: dict):
    """An instance of ``cls`` from option values by name (``train_path``); groups nested, absent names at defaults.

    Raises
    ------
    TypeError
        A name in ``values`` is not an option of ``cls``.
    """
    unknown = set(values) - {o.name for o in options_of(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no options {sorted(unknown)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        decl = f.metadata[_META]
        if "group" in decl:
            inner = {o.name for o in options_of(decl["group"])}
            kwargs[f.name] = build(decl["group"], {k: v for k, v in values.items() if k in inner})
        elif (decl["name"] or f.name) in values:
            kwargs[f.name] = values[decl["name"] or f.name]
    return cls(**kwargs)


# --------------------------------------------------------------------------- training parameters


@dataclass(frozen=True)
class TrainParams:
    """Parameters of one training run; see :class:`EDLAE` for their meaning.

    Their defaults here are the estimator's and ``edlae-dask train``'s.
    """

    k: int = option(100, help="Rank of U, V.")
    lam: float = option(20.0, help="λ: L2 penalty on every item (eq. 8).")
    p: float = option(0.25, help="Dropout probability, 0 <= p < 1 (eq. 8).")
    dtype: str = option("float32", choices=DTYPES)
    block_size: int | None = option(None, help="Side of the n x n blocks (default 2048/4096).")
    n_oversamples: int | None = option(None, flag="--oversamples",
                                       help="Eigensolver oversampling (default: measured rule).")
    n_power_iter: int | None = option(None, flag="--power-iters",
                                      help="Eigensolver power iterations: the least under --eig-tol, exactly this "
                                           "many with --eig-tol 0 (default: measured, 3; Krylov 11).")
    eig_tol: float = option(DEFAULT_EIG_TOL, flag="--eig-tol",
                            help="Eigensolver convergence rule: after --power-iters passes, stop once the sum of the "
                                 "top-k Ritz values changes by less than this (relative) between passes; 0: off.")
    max_power_iter: int = option(DEFAULT_MAX_POWER_ITER, flag="--max-power-iters",
                                 help="Eigensolver: most power iterations under --eig-tol (the run stops there, "
                                      "converged or not, and says which).")
    seed: int = option(0, help="Seed of the eigensolver.")
    # train_path in the commands and in JobSpec.values, as it was before the declarations (there a `path` reads
    # as a file's)
    path: str = option("auto", name="train_path", choices=TRAINING_PATHS,
                       help="dense: exact Algorithm 1 (n x n matrices); scalable: K neighbours per item, no n x n "
                            "matrix; auto: dense if it fits the cluster's memory.")
    neighbors: int = option(DEFAULT_NEIGHBORS, help="Scalable path: neighbours per item (K).")
    neighbor_score: str = option("count", choices=NEIGHBOR_SCORES, help="Scalable path: how neighbours are ranked.")

    def validate(self, n_items: int | None = None) -> TrainParams:
        def bad(name, want, got):
            return ParameterError(f"The {name!r} parameter of EDLAE must be {want}. Got {got!r} instead.")

        if not isinstance(self.k, numbers.Integral) or isinstance(self.k, bool) or self.k <= 0:
            raise bad("k", "a positive int (the rank of U, V)", self.k)
        if n_items is not None and self.k >= n_items:
            raise bad("k", f"less than the number of items ({n_items}); a rank-{n_items} model is the full-rank "
                           "teacher", self.k)
        if not lam_ok(self.lam):
            raise bad("lam", LAM_BOUND, self.lam)
        if not p_ok(self.p):
            raise bad("p", P_BOUND, self.p)
        if self.dtype not in DTYPES:
            raise bad("dtype", "'float32' or 'float64'", self.dtype)
        # MAX_BLOCK_SIZE keeps every LAPACK call small (see edlae_dask.planning)
        if self.block_size is not None and (
            not isinstance(self.block_size, numbers.Integral) or not 1 <= self.block_size <= MAX_BLOCK_SIZE
        ):
            raise bad("block_size", f"an int in [1, {MAX_BLOCK_SIZE}] or None", self.block_size)
        for name, most in (("n_oversamples", None), ("n_power_iter", MAX_POWER_ITER)):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, numbers.Integral) or v < 0 or (most is not None and v > most)):
                limit = f" and <= {most} (each pass is a product with the n x n student matrix)" if most else ""
                raise bad(name, f"an int >= 0{limit}, or None (chosen by measurement)", v)
        if (isinstance(self.eig_tol, bool) or not isinstance(self.eig_tol, numbers.Real)
                or not 0 <= self.eig_tol < 1):
            raise bad("eig_tol", "a float in [0, 1) (relative change of the top-k Ritz sum; 0: a fixed number of "
                                 "passes)", self.eig_tol)
        if (isinstance(self.max_power_iter, bool) or not isinstance(self.max_power_iter, numbers.Integral)
                or not 0 <= self.max_power_iter <= MAX_POWER_ITER):
            raise bad("max_power_iter", f"an int in [0, {MAX_POWER_ITER}] (each pass is a product with the student "
                                        "matrix)", self.max_power_iter)
        if self.eig_tol and self.n_power_iter is not None and self.n_power_iter > self.max_power_iter:
            raise bad("n_power_iter", f"at most max_power_iter = {self.max_power_iter} (the least passes under "
                                      "eig_tol; raise max_power_iter, or set eig_tol 0 for a fixed count)",
                      self.n_power_iter)
        if self.path not in TRAINING_PATHS:
            raise bad("path", f"one of {TRAINING_PATHS}", self.path)
        if not isinstance(self.neighbors, numbers.Integral) or isinstance(self.neighbors, bool) or self.neighbors < 1:
            raise bad("neighbors", "a positive int (neighbours per item of the scalable path)", self.neighbors)
        if self.neighbor_score not in NEIGHBOR_SCORES:
            raise bad("neighbor_score", f"one of {NEIGHBOR_SCORES}", self.neighbor_score)
        return self

    def resolved_block_size(self, n_items: int) -> int:
        """The block size, or the rule's (:func:`edlae_dask.planning.default_block_size`) if not set."""
        return int(self.block_size or default_block_size(n_items))


# --------------------------------------------------------------------------- the jobs' options


@dataclass(frozen=True)
class ClusterOptions:
    """Where a job runs."""

    cluster: str = option("local", kind=CLUSTER,
                          help="'local' (embedded LocalCluster), 'threads', a scheduler address tcp://… / tls://…, "
                               "or a cluster spec file (cluster/README.md)")
    n_workers: int | None = option(None, flag="--workers", help="Workers of the local cluster (default: one per core).")


@dataclass(frozen=True)
class StorageOptions:
    """How a job opens the stores given as URLs."""

    storage_options: dict | None = option(
        None, help="fsspec options (a JSON object) for the stores given as URLs (s3://bucket/prefix, gcs://…), e.g. "
                   "'{\"endpoint_url\": \"http://minio:9000\"}'. Default: fsspec's defaults and environment (AWS_* "
                   "variables, …). The workers get them with their tasks.")


@dataclass(frozen=True)
class FitOptions:
    """What ``train`` and ``demo`` share: the model's parameters, where it trains, progress bars."""

    # the flags' order in `train --help` (--seed after --dtype), which is not the fields'
    params: TrainParams = group(TrainParams, first=("k", "lam", "p", "dtype", "seed"))
    where: ClusterOptions = group(ClusterOptions)
    progress: bool | None = option(None, help="Progress bars (default: when stderr is a terminal).")


@dataclass(frozen=True)
class IngestOptions:
    """``edlae-dask ingest``."""

    source: tuple[str, ...] = option(argument=True, many=True, required=True, kind=INPUT)
    out: str | None = option(None, kind=PATH, help="Interaction store to write (a directory); or use --append.")
    append: str | None = option(
        None, kind=INPUT,
        help="Add the source's interactions to this existing interaction store instead of writing --out: new users "
             "after the old ones, new items of old users in their rows, repeats collapsed; the store's items are "
             "kept (interactions on others are dropped and counted); only the changed shards are rebuilt, so "
             "`score` rescores only those.")
    items_from: str | None = option(
        None, kind=INPUT,
        help="Factor store (from `edlae-dask train`): the store's items are exactly the model's, in its order, so "
             "`score` can use that model on new data; interactions on items the model does not know are dropped "
             "and counted. Not with --min-item-interactions.")
    fmt: str = option("auto", flag="--format", choices=INGEST_FORMATS)
    user_col: str = option("user", help="Column holding user ids (csv/parquet).")
    item_col: str = option("item", help="Column holding item ids (csv/parquet).")
    value_col: str | None = option(None,
                                   help="Column holding ratings/counts (default: 'rating' or 'value' if present).")
    min_value: float | None = option(None, help="Keep rows with value >= this (e.g. 3.5 for MovieLens).")
    min_user_interactions: int = option(1)
    min_item_interactions: int = option(1)
    shard_size: int | None = option(None, help="Users per shard (default 100000; with --append: the store's).")
    chunk_rows: int = option(1_000_000, help="Rows read at a time.")
    overwrite: bool = option(False, help="Replace an existing interaction store at --out.")
    storage: StorageOptions = group(StorageOptions)


@dataclass(frozen=True)
class TrainOptions:
    """``edlae-dask train``."""

    interactions: str = option(required=True, kind=INPUT, help="Interaction store (from `edlae-dask ingest`).")
    out: str = option(required=True, kind=PATH, help="Factor store to publish into.")
    overwrite: bool = option(False, help="Publish a new version into an existing factor store.")
    checkpoint_dir: str | None = option(
        None, kind=PATH,
        help="Dense path: keep the Gram and the inverse here (about 2·n²·itemsize bytes; a directory all workers "
             "see) and reuse them when a rerun has the same inputs, so a killed job resumes. Default: no checkpoints.")
    fit: FitOptions = group(FitOptions)
    storage: StorageOptions = group(StorageOptions)


@dataclass(frozen=True)
class ScoreOptions:
    """``edlae-dask score``."""

    factors: str = option(required=True, kind=INPUT,
                          help="Factor store (from `edlae-dask train`); its latest version.")
    interactions: str = option(required=True, kind=INPUT, help="Interaction store of the users to score.")
    out: str = option(required=True, kind=PATH, help="Recommendations store to write (a directory).")
    top_n: int = option(100, help="Items kept per user, best first.")
    where: ClusterOptions = group(ClusterOptions)
    item_block: int | None = option(None, help="Items per score block (default: 32 MiB blocks).")
    user_batch: int | None = option(None, help="Users per score block (default 1024).")
    include_seen: bool = option(False, help="Also recommend items the user already has.")
    items_allow: str | None = option(None, kind=INPUT,
                                     help="File of item ids, one a line: recommend only these (ids the factors do "
                                          "not know are ignored with a warning).")
    items_deny: str | None = option(None, kind=INPUT, help="File of item ids, one a line: never recommend these.")
    users: str | None = option(None, kind=INPUT,
                               help="File of user ids, one a line: score only these users (the others' rows stay "
                                    "unscored, and export leaves them out).")
    progress: bool | None = option(None, help="Progress bar (default: when stderr is a terminal).")
    storage: StorageOptions = group(StorageOptions)


@dataclass(frozen=True)
class ExportOptions:
    """``edlae-dask export`` (not a job: it takes no spec)."""

    recs: str = option(argument=True, required=True, kind=PATH)
    out: str = option(required=True, kind=PATH,
                      help="File to write: .parquet (a row group per shard), .csv or .csv.gz; columns user_id, rank, "
                           "item_id, score, one row per (user, rank).")
    overwrite: bool = option(False, help="Replace an existing file at --out.")
    storage: StorageOptions = group(StorageOptions)


@dataclass(frozen=True)
class EvaluateOptions:
    """``edlae-dask evaluate``: the grid takes many values per parameter; without values, the model's default."""

    interactions: str = like(TrainOptions, "interactions")
    ks: tuple[str, ...] = option(flag="--k", many=True, help="Ranks of the low-rank models: --k 50 200 (or 50,200).")
    # click shows no default for a many-valued option, so the help says it
    lams: tuple[str, ...] = option(flag="--lam", many=True,
                                   help=f"λ grid: --lam 50 200 500.  [default: {TrainParams.lam:g}]")
    ps: tuple[str, ...] = option(flag="--p", many=True, help="p grid (dropout probability, 0 <= p < 1): --p 0 0.25 "
                                                             f"0.5.  [default: {TrainParams.p:g}]")
    models: str | None = option(
        None, help="Comma-separated: edlae (Algorithm 1), lae (unconstrained low-rank LAE), full-rank (EDLAE teacher), "
                   "ease (full rank at p = 0), edlae-opt (numerical optimum of eq. 14; small n only). A popularity "
                   "row is always reported.  [default: edlae,lae,full-rank,ease; with --path scalable: edlae]")
    # eval_path in the command, as train's path is train_path (a `path` reads as a file's)
    path: str = option("dense", name="eval_path", choices=EVALUATION_PATHS,
                       help="dense: exact Algorithm 1 and the baselines from the n x n Gram (--backend: where); "
                            "scalable: the scalable path's model (K neighbours per item, edlae only), no n x n "
                            "matrix, for catalogues the dense path cannot hold.")
    neighbors: tuple[str, ...] = option(many=True, help="--path scalable: K grid, neighbours per item: --neighbors "
                                                        f"32 64 (the lists are computed once, at the largest).  "
                                                        f"[default: {DEFAULT_NEIGHBORS}]")
    neighbor_score: str = like(TrainParams, "neighbor_score")
    n_valid: str = option("0.1", help="Validation users: a count, or a fraction (0.1).")
    n_test: str = option("0.1", help="Test users: a count, or a fraction (0.1).")
    seed: int = option(0, help="Seed of the user split and the 80/20 split.")
    dtype: str = like(TrainParams, "dtype")
    block_size: int | None = like(TrainParams, "block_size")
    max_concurrent: int | None = option(
        None, help="Grid points in flight at once (default: cluster threads, capped by a memory estimate).")
    backend: str = option("dask", choices=("dask", "dense"),
                          help="dask: grid points as Dask graphs on the cluster; dense: one process, in-place n x n "
                               "buffers reused across grid points (about half the memory per point; for large n on "
                               "one machine).")
    memory_limit: str | None = option(
        None, help="dense backend: bytes it may use, e.g. 12GiB (default: the machine's available memory).")
    n_power_iter: int | None = like(TrainParams, "n_power_iter")
    exact_maxiter: int = option(300, help="L-BFGS iterations of edlae-opt.")
    exact_points: str = option("chosen", choices=("chosen", "grid"),
                               help="edlae-opt at Algorithm 1's chosen (λ, p) per k, or at every grid point (tuned "
                                    "on validation).")
    where: ClusterOptions = group(ClusterOptions)
    out: str | None = option(None, kind=PATH, help="Write the full report (every grid point) as JSON here.")
    overwrite: bool = option(False, help="Replace an existing report at --out.")
    storage: StorageOptions = group(StorageOptions)


@dataclass(frozen=True)
class DemoOptions:
    """``edlae-dask demo`` (not a job: it takes no spec)."""

    workdir: str = option("edlae-demo", kind=PATH,
                          help="Where the demo writes its CSV and stores: a new or empty directory, or one an earlier "
                               "demo made (its outputs are replaced; anything else there is refused).")
    n_users: int = option(50_000, flag="--users")
    n_items: int = option(8_000, flag="--items")
    fit: FitOptions = group(FitOptions)


@dataclass(frozen=True)
class InfoOptions:
    """``edlae-dask info`` (not a job: it takes no spec)."""

    path: str = option(argument=True, required=True, kind=PATH)
    storage: StorageOptions = group(StorageOptions)


@dataclass(frozen=True)
class VerifyOptions:
    """``edlae-dask verify`` (not a job: it takes no spec)."""

    path: str = option(argument=True, required=True, kind=PATH)
    version: str | None = option(None, help="Factor store: verify this version only (default: every complete one).")
    storage: StorageOptions = group(StorageOptions)


#: The jobs (``job:`` of a spec) and their options.
JOB_OPTIONS = {"ingest": IngestOptions, "train": TrainOptions, "score": ScoreOptions, "evaluate": EvaluateOptions}


# --------------------------------------------------------------------------- YAML mappings (job and cluster specs)


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """Read a YAML file that must hold a mapping, as data only (``yaml.safe_load``).

    Raises
    ------
    ParameterError
        The file is missing or unreadable, is not UTF-8 text, is not YAML, or does not hold a mapping with
        string keys; always one line.
    """
    import yaml

    path = Path(path)
    try:
        if not path.is_file():
            raise ParameterError(f"{what} {str(path)!r} does not exist"
                                 + (" (it is a directory)" if path.is_dir() else ""))
        raw = path.read_bytes()
    except OSError as exc:
        raise ParameterError(str(os_error(exc, f"reading {what}", path=path))) from exc
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (some Windows editors write one) is harmless
    except UnicodeDecodeError as exc:
        raise ParameterError(f"{what} {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): "
                             "save it as UTF-8") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParameterError(f"{what} {path} is not valid YAML: {_yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise ParameterError(f"{what} {path} must hold a mapping of keys to values, not "
                             f"{type(data).__name__ if data is not None else 'nothing'}")
    for key in data:
        if not isinstance(key, str):
            raise ParameterError(f"{what} {path}: key {key!r} must be a string")
    return data


def _yaml_problem(exc) -> str:
    """A YAML error on one line: what is wrong and where (PyYAML's own message spans several lines)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem or mark is None:
        return " ".join(str(exc).split())
    context = getattr(exc, "context", None)
    return f"{context + ', ' if context else ''}{problem} (line {mark.line + 1}, column {mark.column + 1})"


def check_keys(data: dict, allowed, where: str) -> None:
    """Reject keys not in ``allowed``, naming the nearest valid key."""
    for key in data:
        if key in allowed:
            continue
        normal = {k.replace("_", "-").lower(): k for k in allowed}
        near = difflib.get_close_matches(str(key).replace("_", "-").lower(), list(normal), n=1, cutoff=0.6)
        hint = f"; did you mean {normal[near[0]]!r}?" if near else ""
        raise ParameterError(f"{where}: unknown key {key!r}{hint} Valid keys: {', '.join(sorted(allowed))}")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping", type(None): "null"}


def check_type(value, types: tuple, key: str, where: str) -> None:
    """Require ``value`` to be one of ``types`` (a bool is not an int; list items must be strings)."""
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if ok and isinstance(value, list):
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        named = [t for t in types if not (t is int and float in types)]  # "a number" covers integers
        expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in named)
        if list in types:
            expected = expected.replace("a list", "a list of strings")
        raise ParameterError(f"{where}: {key!r} must be {expected}, not {value!r} ({type(value).__name__})")

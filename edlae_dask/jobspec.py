"""Job specs: one YAML file per job (``jobs/train.yaml``, ...), validated before any work starts.

A job spec names a job and gives its options under the names of the command's flags
(``--top-n`` is ``top-n``)::

    job: train                           # ingest | train | score | evaluate
    interactions: interactions.zarr      # relative paths are relative to the spec file
    out: factors
    k: 200
    cluster: ../cluster/tls.yaml         # local | threads | tcp://… | tls://… | a cluster spec

``edlae-dask run SPEC [FLAGS]`` runs it; ``edlae-dask train --spec SPEC [FLAGS]`` too.
Flags given on the command line override the spec's keys: the spec's values become the
command's defaults. ``--check`` validates and prints the resolved options, and stops.

Validation, before any work: the file is YAML (``yaml.safe_load``: data only) holding a
mapping; every key is an option of the job (an unknown key names the nearest valid one);
every value has the option's type; required keys are present; input paths exist; the
cluster value is a keyword, an address or a valid cluster spec file. Each failure is a
:class:`ParameterError` naming the key and the file.

The options, their types and kinds are those :mod:`edlae_dask.config` declares
(:data:`edlae_dask.config.JOB_OPTIONS`); this module needs neither click nor the CLI,
whose ``--spec`` and ``--check`` (:class:`edlae_dask.cli.SpecCommand`) call it.
"""

from __future__ import annotations

import difflib
import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edlae_dask.config import (
    CLUSTER,
    INPUT,
    JOB_OPTIONS,
    PATH,
    Option,
    check_keys,
    check_type,
    options_of,
    read_yaml_mapping,
)
from edlae_dask.errors import ParameterError

JOBS = tuple(JOB_OPTIONS)
# keys holding paths (or fsspec URLs): relative ones in a spec are relative to the spec's folder
PATH_KEYS = {job: tuple(o.key for o in options_of(cls) if o.kind in (PATH, INPUT)) for job, cls in JOB_OPTIONS.items()}
# keys naming what a job reads: they must exist before it starts
INPUT_KEYS = {job: tuple(o.key for o in options_of(cls) if o.kind == INPUT) for job, cls in JOB_OPTIONS.items()}


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec.

    Attributes
    ----------
    job : str
        ``ingest``, ``train``, ``score`` or ``evaluate``.
    path : str
        The spec file.
    values : dict
        The command's parameter names (``top_n``) to values, relative paths resolved
        against the spec's folder.
    """

    job: str
    path: str
    values: dict


def spec_key(param) -> str:
    """The spec key of a command parameter (a click parameter or an :class:`Option`): its long flag without
    dashes, or an argument's name."""
    if isinstance(param, Option):
        return param.key
    # a click parameter, by its attributes: an argument's opts hold its name, an option's its flags
    return next((o[2:] for o in param.opts if o.startswith("--")), param.name)


def job_options(job: str) -> tuple[Option, ...]:
    """The options of a job, in the order of its command's flags."""
    if job not in JOB_OPTIONS:
        raise ParameterError(f"{job!r} is not a job; the jobs are {', '.join(JOBS)}")
    return options_of(JOB_OPTIONS[job])


def job_of(path: str | os.PathLike) -> str:
    """The ``job:`` of a spec file (``run`` dispatches on it)."""
    data = read_yaml_mapping(path, "job spec")
    job = data.get("job")
    if job is None:
        raise ParameterError(f"job spec {path}: the key 'job' is missing; set it to one of {', '.join(JOBS)}")
    if job not in JOBS:
        near = difflib.get_close_matches(str(job), JOBS, n=1)
        raise ParameterError(f"job spec {path}: job {job!r} is not one of {', '.join(JOBS)}"
                             + (f"; did you mean {near[0]!r}?" if near else ""))
    return job


def load_job_spec(path: str | os.PathLike, job: str | None = None, *, complete: bool = False) -> JobSpec:
    """Read and validate a job spec's keys and types; resolve its relative paths.

    Parameters
    ----------
    path : path
        The spec file.
    job : str, optional
        The job it must be (default: its ``job:`` key).
    complete : bool
        Also require every required key (by default flags may supply them, see :func:`missing_key`).

    Raises
    ------
    ParameterError
        Unreadable file, unknown key, wrong type or choice, a spec of another job, or (``complete``)
        a missing required key.
    """
    where = f"job spec {path}"
    data = read_yaml_mapping(path, "job spec")
    named = job_of(path) if "job" in data or job is None else None
    if job is not None and named is not None and named != job:
        raise ParameterError(f"{where} is a {named} job, not {job}; run it with `edlae-dask run {path}`")
    job = job or named
    schema = {o.key: o for o in job_options(job)}
    body = {k: v for k, v in data.items() if k != "job"}
    check_keys(body, schema, where)
    base = Path(path).parent
    values = {}
    for key, value in body.items():
        if value is None:
            continue  # null: the command's default
        opt = schema[key]
        value = _check_value(value, opt, key, where)
        if opt.kind in (PATH, INPUT):
            value = [_resolve(v, base) for v in value] if isinstance(value, list) else _resolve(value, base)
        elif opt.kind == CLUSTER:
            value = _resolve_cluster(value, base)
        values[opt.name] = value
    if complete:
        missing = next((o for o in schema.values() if o.required and o.name not in values), None)
        if missing is not None:
            raise missing_key(path, job, missing.name)
    return JobSpec(job, str(path), values)


def missing_key(path: str | os.PathLike, job: str, name: str) -> ParameterError:
    """The error for a required option that neither the spec ``path`` nor a flag gives."""
    opt = next(o for o in job_options(job) if o.name == name)
    return ParameterError(f"job spec {path}: the required key {opt.key!r} is missing; set it in the spec or give "
                          f"{opt.flag or opt.name.upper()}")


def _check_value(value, opt: Option, key: str, where: str):
    if opt.many:
        items = value if isinstance(value, list) else [value]
        return [_check_scalar(v, opt, key, where) for v in items]
    return _check_scalar(value, opt, key, where)


def _check_scalar(value, opt: Option, key: str, where: str):
    if opt.type is bool:
        check_type(value, (bool,), key, where)
    elif opt.type is int:
        check_type(value, (int,), key, where)
    elif opt.type is float:
        check_type(value, (int, float), key, where)
    elif opt.choices:
        check_type(value, (str,), key, where)
        if value not in opt.choices:
            raise ParameterError(f"{where}: {key!r} must be one of {', '.join(map(str, opt.choices))}, not {value!r}")
    elif opt.kind is not None:  # a path, or a cluster keyword, address or spec file
        check_type(value, (str,), key, where)
    elif opt.type is dict:  # storage options: a mapping, or its JSON text as on the command line
        from edlae_dask.io._fs import parse_storage_options

        check_type(value, (dict, str), key, where)
        try:
            parse_storage_options(value)
        except ParameterError as exc:
            raise ParameterError(f"{where}: {key!r}: {exc}") from exc
    else:  # free text; numbers are fine (n-valid: 0.1, k: [50, 200])
        check_type(value, (str, int, float), key, where)
    return value


def _is_url(value: str) -> bool:
    return "://" in value and not value.startswith("file://")


def _resolve(value: str, base: Path) -> str:
    if "://" in value:  # a URL (file:// ones are absolute)
        return value
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _resolve_cluster(value: str, base: Path) -> str:
    from edlae_dask.cluster import KEYWORDS, SCHEDULER_FILE

    if value.startswith(SCHEDULER_FILE):
        return SCHEDULER_FILE + _resolve(value[len(SCHEDULER_FILE):], base)
    return value if value in KEYWORDS or "://" in value else _resolve(value, base)


def check_inputs(job: str, params: dict, *, sources: dict | None = None, spec_file: str | None = None) -> None:
    """Check that a job's inputs exist and its cluster value is valid, before any work.

    Parameters
    ----------
    job : str
        The job.
    params : dict
        Its parameters by name (spec values merged with flags).
    sources : dict, optional
        Parameter name to True where the value came from the spec (for messages).
    spec_file : str, optional
        The spec, for messages.
    """
    from edlae_dask.cluster import parse_cluster

    sources = sources or {}

    def where(name):
        return f"job spec {spec_file}: " if spec_file and sources.get(name) else ""

    for opt in job_options(job):
        value = params.get(opt.name)
        if opt.kind == INPUT:
            for item in value if isinstance(value, (list, tuple)) else [value] if value else []:
                if _is_url(item):
                    continue  # object storage: checked by the job itself, with its credentials
                local = item.removeprefix("file://")
                found = (glob.glob(local) if glob.has_magic(local) and not os.path.exists(local)
                         else os.path.exists(local))
                if not found:
                    raise ParameterError(f"{where(opt.name)}{opt.key!r}: {item!r} does not exist; the {job} job "
                                         "reads it, so make it first (or fix the path: relative paths in a spec are "
                                         "relative to the spec file)")
        elif opt.kind == CLUSTER and value is not None:
            try:
                parse_cluster(value)
            except ParameterError as exc:
                raise ParameterError(f"{where(opt.name)}{opt.key!r}: {exc}") from exc


def describe(job: str, params: dict, notes: list[str] | tuple[str, ...] = ()) -> str:
    """The resolved options as a job spec (YAML): what ``--check`` prints, the job would run with.

    Local paths are absolute (so the printed spec is a spec that runs the same job from
    anywhere); ``notes`` (what the job would do: :func:`plan_train`) are YAML comments
    above the keys.
    """
    import yaml

    by_name = {o.name: o for o in job_options(job)}
    body = {"job": job}
    for name, value in params.items():
        if value is not None and value != ():
            opt = by_name[name]
            value = _redacted(value) if opt.type is dict else value
            if opt.kind in (PATH, INPUT, CLUSTER):
                value = [_absolute(v, opt.kind) for v in value] if isinstance(value, (list, tuple)) else (
                    _absolute(value, opt.kind))
            body[opt.key] = list(value) if isinstance(value, tuple) else value
    comments = "".join(f"# {line}\n" for line in notes)
    return f"# {job}: spec and options are valid\n{comments}" + yaml.safe_dump(body, sort_keys=False)


def _absolute(value, kind: str):
    """A local path (or a cluster spec file, or ``scheduler-file:PATH``) made absolute; the rest as it is."""
    from edlae_dask.cluster import KEYWORDS, SCHEDULER_FILE

    if not isinstance(value, str) or "://" in value and not value.startswith("file://"):
        return value
    if kind == CLUSTER:
        if value.startswith(SCHEDULER_FILE):
            return SCHEDULER_FILE + os.path.abspath(value[len(SCHEDULER_FILE):])
        if value in KEYWORDS:
            return value
    return os.path.abspath(os.path.expanduser(value.removeprefix("file://")))


def plan(job: str, params: dict) -> list[str]:
    """What ``--check`` finds of a job beyond its options: lines to print (:func:`describe`'s notes).

    ``train``: :func:`plan_train`. ``ingest --out`` and ``evaluate --out``: the output path
    rule (an existing output needs ``--overwrite``), as the job checks it before its work.

    Raises
    ------
    EdlaeError
        What the job would raise before its work.
    """
    if job == "train":
        return plan_train(params)
    out = params.get("out")
    if job == "ingest" and out is not None:
        from edlae_dask.io.interactions import check_output_path

        path = check_output_path(out, overwrite=bool(params.get("overwrite")),
                                 storage_options=params.get("storage_options"))
        return [f"out: {path} " + ("will be replaced (--overwrite)" if _exists(path) else "will be created")]
    if job == "evaluate" and out is not None:
        from edlae_dask.io.versioned import check_new_file

        path = check_new_file(out, overwrite=bool(params.get("overwrite")), option="--out")
        return [f"out: {path} " + ("will be replaced (--overwrite)" if os.path.lexists(path) else "will be written")]
    return []


def _exists(path: str) -> bool:
    if "://" not in path:
        return os.path.lexists(path)
    from edlae_dask.io._fs import location

    return location(path).exists()


def plan_train(params: dict) -> list[str]:
    """What a train job with these parameters would do, found before any cluster starts; lines to print.

    Reads the interaction store's metadata (its shape), checks the model's values
    against it (k below the number of items), the output path rules (exists: needs
    ``--overwrite``), and estimates the memory of both paths with
    :mod:`edlae_dask.planning`. For the embedded cluster (``local``, ``threads``) the
    planned workers' memory limits are known, and the path ``auto`` would choose is
    said (or the run's :class:`MemoryBudgetError`, raised); for an existing scheduler
    or SLURM only the estimates (the path is chosen against the workers that join).

    Raises
    ------
    EdlaeError
        What the run would raise before its first task: an unreadable store, a bad k,
        an output that needs ``--overwrite``, a run that cannot fit the local cluster.
    """
    import numpy as np
    from dask.utils import format_bytes

    from edlae_dask.cluster import parse_cluster, planned_memory
    from edlae_dask.config import TrainParams, build
    from edlae_dask.io.factors import OUTPUT_STATES, output_state
    from edlae_dask.io.interactions import open_interactions
    from edlae_dask.planning import USABLE_MEMORY, choose_path, dense_memory_estimate, scalable_memory_estimate

    storage = params.get("storage_options")
    store = open_interactions(params["interactions"], storage_options=storage)
    model = build(TrainParams, {o.name: params[o.name] for o in options_of(TrainParams) if o.name in params})
    model.validate(store.n_items)
    n, itemsize = store.n_items, np.dtype(model.dtype).itemsize
    interactions = _absolute(params["interactions"], INPUT)
    lines = [f"interactions: {interactions} holds {store.n_users:,} users x {n:,} items, {store.nnz:,} interactions, "
             f"{store.n_shards} shards"]
    if params.get("out") is not None:
        state = output_state(params["out"], overwrite=bool(params.get("overwrite")), storage_options=storage)
        lines.append(f"out: {_absolute(params['out'], PATH)} {OUTPUT_STATES[state]}")
    memory = planned_memory(params.get("cluster"), n_workers=params.get("n_workers"))
    dense = dense_memory_estimate(n, model.k, itemsize)
    if memory is None:
        kind = parse_cluster(params.get("cluster")).kind
        scalable = scalable_memory_estimate(n, store.n_users, store.nnz, model.k, min(model.neighbors, n - 1),
                                            itemsize, 1, model.n_oversamples)
        lines += [f"memory: the dense path needs about {format_bytes(dense)} in all, the scalable path about "
                  f"{format_bytes(scalable)} on one worker (less on each of more: the interactions are spread)",
                  f"path: {model.path}, " + ("chosen" if model.path == "auto" else "checked")
                  + f" against the memory limits of the workers of the {kind} cluster once connected "
                  "(--check contacts no cluster)"]
        return lines
    total, smallest, n_workers = memory
    planning = logging.getLogger("edlae_dask.planning")
    level = planning.level
    planning.setLevel(logging.WARNING)  # its "path: ..." line would say again what is printed here
    try:
        path, need = choose_path(store, model, total, n_workers, smallest)
    finally:
        planning.setLevel(level)
    if path == "dense":
        need_text = (f"about {format_bytes(need)} of {format_bytes(USABLE_MEMORY * total)} usable "
                     f"({USABLE_MEMORY:.0%} of {n_workers} workers' {format_bytes(total)})")
    else:
        need_text = (f"about {format_bytes(need)} on each worker of {format_bytes(USABLE_MEMORY * smallest)} usable "
                     f"({USABLE_MEMORY:.0%} of the smallest; {n_workers} workers' {format_bytes(total)} in all); "
                     f"the dense path would need {format_bytes(dense)}")
    lines += [f"memory: the {path} path needs {need_text}",
              f"path: {path}" + (" (auto would choose it)" if model.path == "auto" else f" (--path {path})")]
    return lines


_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session")


def _redacted(options):
    """Storage options with credentials masked: `--check` output ends up in logs and CI output."""
    if isinstance(options, dict):
        return {k: ("***" if any(w in str(k).lower() for w in _SECRET_WORDS) and not isinstance(v, (dict, list))
                    else _redacted(v)) for k, v in options.items()}
    if isinstance(options, list):
        return [_redacted(v) for v in options]
    return options

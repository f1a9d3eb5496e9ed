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
command's defaults (click's ``default_map``). ``--check`` validates and prints the
resolved options, and stops.

Validation, before any work: the file is YAML (``yaml.safe_load``: data only) holding a
mapping; every key is an option of the job (an unknown key names the nearest valid one);
every value has the option's type; required keys are present; input paths exist; the
cluster value is a keyword, an address or a valid cluster spec file. Each failure is a
:class:`ParameterError` naming the key and the file.
"""

from __future__ import annotations

import difflib
import glob
import os
from dataclasses import dataclass
from pathlib import Path

import click
from click.core import ParameterSource

from edlae_dask.config import check_keys, check_type, read_yaml_mapping
from edlae_dask.errors import EdlaeError, ParameterError

JOBS = ("ingest", "train", "score", "evaluate")
# keys holding paths (or fsspec URLs): relative ones in a spec are relative to the spec's folder
PATH_KEYS = {
    "ingest": ("source", "out"),
    "train": ("interactions", "out", "checkpoint-dir"),
    "score": ("factors", "interactions", "out"),
    "evaluate": ("interactions", "out"),
}
# keys naming what a job reads: they must exist before it starts
INPUT_KEYS = {"ingest": ("source",), "train": ("interactions",), "score": ("factors", "interactions"),
              "evaluate": ("interactions",)}
_OWN_OPTIONS = ("spec_file", "check")  # added by SpecCommand; never spec keys

# --------------------------------------------------------------------------- the click parameter types


class JsonMapping(click.ParamType):
    """A mapping: a JSON object on the command line (``'{"anon": true}'``), a YAML mapping in a job spec."""

    name = "JSON"

    def convert(self, value, param, ctx):
        from edlae_dask.io._fs import parse_storage_options

        if value is None or isinstance(value, dict):
            return value
        try:
            return parse_storage_options(value)
        except ParameterError as exc:
            self.fail(str(exc), param, ctx)


# --------------------------------------------------------------------------- job specs


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


def spec_key(param: click.Parameter) -> str:
    """The spec key of a command parameter: its long flag without dashes, or an argument's name."""
    if isinstance(param, click.Argument):
        return param.name
    return next((o[2:] for o in param.opts if o.startswith("--")), param.name)


def _schema(command: click.Command) -> dict:
    return {spec_key(p): p for p in command.params
            if p.name not in _OWN_OPTIONS and not getattr(p, "is_eager", False)}


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


def load_job_spec(path: str | os.PathLike, job: str | None = None, *, command: click.Command | None = None) -> JobSpec:
    """Read and validate a job spec's keys and types; resolve its relative paths.

    Parameters
    ----------
    path : path
        The spec file.
    job : str, optional
        The job it must be (default: its ``job:`` key).
    command : click.Command, optional
        The job's command (default: ``edlae-dask``'s subcommand of that name).

    Raises
    ------
    ParameterError
        Unreadable file, unknown key, wrong type, or a spec of another job.
    """
    where = f"job spec {path}"
    data = read_yaml_mapping(path, "job spec")
    named = job_of(path) if "job" in data or job is None else None
    if job is not None and named is not None and named != job:
        raise ParameterError(f"{where} is a {named} job, not {job}; run it with `edlae-dask run {path}`")
    job = job or named
    if command is None:
        from edlae_dask.cli import cli

        command = cli.commands[job]
    schema = _schema(command)
    body = {k: v for k, v in data.items() if k != "job"}
    check_keys(body, schema, where)
    base = Path(path).parent
    values = {}
    for key, value in body.items():
        if value is None:
            continue  # null: the command's default
        param = schema[key]
        value = _check_value(value, param, key, where)
        if key in PATH_KEYS.get(job, ()):
            value = [_resolve(v, base) for v in value] if isinstance(value, list) else _resolve(value, base)
        if key == "cluster":
            value = _resolve_cluster(value, base)
        values[param.name] = value
    return JobSpec(job, str(path), values)


def _check_value(value, param: click.Parameter, key: str, where: str):
    if param.multiple or param.nargs == -1:
        items = value if isinstance(value, list) else [value]
        return [_check_scalar(v, param, key, where) for v in items]
    return _check_scalar(value, param, key, where)


def _check_scalar(value, param: click.Parameter, key: str, where: str):
    t = param.type
    if getattr(param, "is_flag", False):
        check_type(value, (bool,), key, where)
    elif isinstance(t, click.types.IntParamType):
        check_type(value, (int,), key, where)
    elif isinstance(t, click.types.FloatParamType):
        check_type(value, (int, float), key, where)
    elif isinstance(t, click.Choice):
        check_type(value, (str,), key, where)
        if value not in t.choices:
            raise ParameterError(f"{where}: {key!r} must be one of {', '.join(map(str, t.choices))}, not {value!r}")
    elif isinstance(t, click.Path):
        check_type(value, (str,), key, where)
    elif isinstance(t, JsonMapping):
        check_type(value, (dict, str), key, where)
        try:
            t.convert(value, param, None)
        except click.BadParameter as exc:
            raise ParameterError(f"{where}: {key!r}: {exc.message}") from exc
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
    from edlae_dask.cluster import KEYWORDS

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

    for name in INPUT_KEYS.get(job, ()):
        value = params.get(name)
        for item in value if isinstance(value, (list, tuple)) else [value] if value else []:
            if _is_url(item):
                continue  # object storage: checked by the job itself, with its credentials
            local = item[len("file://"):] if item.startswith("file://") else item
            found = glob.glob(local) if glob.has_magic(local) and not os.path.exists(local) else os.path.exists(local)
            if not found:
                raise ParameterError(f"{where(name)}{name!r}: {item!r} does not exist; the {job} job reads it, so "
                                     "make it first (or fix the path: relative paths in a spec are relative to "
                                     "the spec file)")
    if params.get("cluster") is not None:
        try:
            parse_cluster(params["cluster"])
        except ParameterError as exc:
            raise ParameterError(f"{where('cluster')}'cluster': {exc}") from exc


# --------------------------------------------------------------------------- the click side


class SpecCommand(click.Command):
    """A job command that also takes ``--spec FILE`` (its keys become defaults that flags override) and ``--check``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(
            ["--spec", "spec_file"], type=click.Path(), default=None,
            help="Job spec (YAML, see jobs/README.md); flags given here override its keys."))
        self.params.append(click.Option(
            ["--check"], is_flag=True,
            help="Validate the spec and options (keys, types, inputs exist, cluster spec), print them, and stop."))

    def parse_args(self, ctx, args):
        try:
            spec_file = _spec_arg(args)
            if spec_file is not None:
                spec = load_job_spec(spec_file, self.name, command=self)
                ctx.default_map = {**(ctx.default_map or {}), **spec.values}
            try:
                rest = super().parse_args(ctx, args)
            except click.MissingParameter as exc:
                if spec_file is None or exc.param is None:
                    raise
                flag = exc.param.opts[0] if isinstance(exc.param, click.Option) else exc.param.name.upper()
                raise ParameterError(f"job spec {spec_file}: the required key {spec_key(exc.param)!r} is missing; "
                                     f"set it in the spec or give {flag}") from exc
            if spec_file is not None or ctx.params.get("check"):
                from_spec = {n: ctx.get_parameter_source(n) == ParameterSource.DEFAULT_MAP for n in ctx.params}
                check_inputs(self.name, ctx.params, sources=from_spec, spec_file=spec_file)
            return rest
        except EdlaeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)

    def invoke(self, ctx):
        ctx.params.pop("spec_file", None)
        if ctx.params.pop("check", False):
            click.echo(_describe(self, ctx.params))
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


def _describe(command: click.Command, params: dict) -> str:
    """The resolved options as a job spec (YAML): what the job would run with."""
    import yaml

    names = {p.name: spec_key(p) for p in command.params}
    body = {"job": command.name}
    for name, value in params.items():
        if value is not None and value != ():
            value = _redacted(value) if name == "storage_options" else value
            body[names[name]] = list(value) if isinstance(value, tuple) else value
    return f"# {command.name}: spec and options are valid\n" + yaml.safe_dump(body, sort_keys=False)


_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "session")


def _redacted(options):
    """Storage options with credentials masked: `--check` output ends up in logs and CI output."""
    if isinstance(options, dict):
        return {k: ("***" if any(w in str(k).lower() for w in _SECRET_WORDS) and not isinstance(v, (dict, list))
                    else _redacted(v)) for k, v in options.items()}
    if isinstance(options, list):
        return [_redacted(v) for v in options]
    return options

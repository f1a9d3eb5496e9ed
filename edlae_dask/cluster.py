"""Getting a Dask cluster: the embedded LocalCluster, an existing scheduler, SLURM, or none.

``--cluster`` / ``cluster=`` takes

- ``"local"`` (default): a :class:`distributed.LocalCluster` on this machine, one
  single-threaded worker process per core, bound to 127.0.0.1, dashboard on
  loopback only;
- ``"threads"``: no cluster, Dask's threaded scheduler in this process (small
  problems, debugging);
- ``"tcp://host:port"`` or ``"tls://host:port"``: an existing scheduler (workers
  started elsewhere: ``dask worker``, SLURM, Kubernetes; see ``cluster/README.md``);
- ``"scheduler-file:PATH"``: the scheduler that ``dask scheduler --scheduler-file PATH``
  started (its address read from that JSON file, as ``Client(scheduler_file=PATH)``;
  a relative PATH is relative to the working directory, or to the job spec naming it);
- the path of a cluster spec file (YAML), one of::

      kind: local      # n-workers, threads-per-worker, memory-limit, host, dashboard-address
      kind: address    # address (tcp:// or tls://, may name ${ENV_VAR}s), tls, timeout,
                       # wait-for-workers, wait-timeout
      kind: slurm      # dask-jobqueue SLURMCluster keywords (cores, memory, queue, walltime, ...),
                       # scale (jobs to submit), tls, wait-for-workers, wait-timeout

  ``tls: {ca-file, cert, key}`` requires TLS with mutual authentication: this
  process shows ``cert`` and accepts only peers whose certificate ``ca-file`` signed.

Nothing edlae-dask starts listens beyond 127.0.0.1 unless a spec says so (``host:``
of a local spec; ``interface:``/``host:`` of a SLURM spec, which needs one because
its workers run on other nodes), and dashboards bind to loopback unless a spec
names another ``dashboard-address``.

The CLI's default, ``local``, gives way to the environment as Dask users expect:
with ``DASK_SCHEDULER_ADDRESS`` set (the Dask Kubernetes operator sets it in a job's
pod) and no ``--cluster`` given, a job connects to that scheduler and logs so
(:func:`cluster_from_environment`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from edlae_dask.config import check_keys, check_type, read_yaml_mapping
from edlae_dask.errors import ParameterError

log = logging.getLogger("edlae_dask.cluster")

KEYWORDS = ("local", "threads")
#: ``--cluster scheduler-file:PATH``: the scheduler that wrote PATH (``dask scheduler --scheduler-file PATH``)
SCHEDULER_FILE = "scheduler-file:"
#: The environment variable naming the scheduler of a job whose ``--cluster`` is left at its default
ADDRESS_VARIABLE = "DASK_SCHEDULER_ADDRESS"
_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss")  # distributed's comm protocols
LOOPBACK = "127.0.0.1"

# key -> (accepted types, what it is); kebab-case, as dask-jobqueue's own YAML config
_TLS_KEYS = {
    "ca-file": ((str,), "PEM file of the certificate authority that signed every peer's certificate"),
    "cert": ((str,), "PEM certificate this process shows to its peers"),
    "key": ((str,), "PEM private key of cert"),
}
_COMMON = {"kind": ((str,), "local | threads | address | slurm")}
_WAIT = {
    "wait-for-workers": ((int,), "workers to wait for before the job starts"),
    "wait-timeout": ((str, int, float), "how long to wait for them (e.g. 10min; seconds if a number)"),
}
_KIND_KEYS = {
    "threads": {},
    "local": {
        "n-workers": ((int,), "worker processes (default: one per core)"),
        "threads-per-worker": ((int,), "threads per worker process (default 1)"),
        "memory-limit": ((str, int), "memory limit per worker, e.g. 4GiB (default: 90 % of RAM split evenly)"),
        "host": ((str,), "interface the scheduler and workers listen on (default 127.0.0.1)"),
        "dashboard-address": ((str, type(None)), "dashboard address (default 127.0.0.1:0; null: none)"),
    },
    "address": {
        "address": ((str,), "scheduler address, tcp://host:port or tls://host:port"),
        "tls": ((dict,), "mutual TLS: ca-file, cert, key"),
        "timeout": ((str, int, float), "how long to try to reach the scheduler (default 20s)"),
        **_WAIT,
    },
    "slurm": {
        "scale": ((int,), "SLURM jobs to submit (default 1)"),
        "tls": ((dict,), "mutual TLS for scheduler, workers and client: ca-file, cert, key"),
        **_WAIT,
        # dask-jobqueue SLURMCluster keywords (kebab-case here, snake_case there)
        "cores": ((int,), "cores per job"),
        "memory": ((str,), "memory per job, e.g. 64GiB"),
        "processes": ((int,), "worker processes per job (default: cores, single-threaded workers)"),
        "queue": ((str,), "SLURM partition (-p)"),
        "account": ((str,), "SLURM account (-A)"),
        "walltime": ((str,), "job time limit (-t), e.g. 04:00:00"),
        "job-cpu": ((int,), "--cpus-per-task (default: cores)"),
        "job-mem": ((str,), "--mem (default: memory)"),
        "job-name": ((str,), "job name (-J)"),
        "job-extra-directives": ((list,), "more #SBATCH lines, e.g. [--exclusive]"),
        "job-directives-skip": ((list,), "generated #SBATCH lines to drop"),
        "job-script-prologue": ((list,), "shell lines run before the worker (activate the environment)"),
        "worker-extra-args": ((list,), "more `dask worker` arguments"),
        "worker-command": ((str,), "worker module (default distributed.cli.dask_worker)"),
        "python": ((str,), "Python of the workers (default: this one)"),
        "interface": ((str,), "network interface of scheduler and workers, e.g. ib0"),
        "host": ((str,), "address the scheduler listens on"),
        "dashboard-address": ((str, type(None)), "dashboard address (default 127.0.0.1:0)"),
        "scheduler-options": ((dict,), "more Scheduler keywords (snake_case), e.g. {port: 8786}"),
        "local-directory": ((str,), "workers' scratch directory"),
        "log-directory": ((str,), "where SLURM writes the jobs' output"),
        "shared-temp-directory": ((str,), "shared directory for temporary security files"),
        "death-timeout": ((str, int, float), "seconds a worker waits for an absent scheduler"),
        "nanny": ((bool,), "run workers under a nanny (default true)"),
        "shebang": ((str,), "first line of the job script"),
    },
}
_REQUIRED = {"address": ("address",), "slurm": ("cores", "memory")}


@dataclass(frozen=True)
class TLSFiles:
    """Certificate files of one party of a mutual-TLS cluster (absolute paths)."""

    ca_file: str
    cert: str
    key: str

    def security(self):
        """A :class:`distributed.Security` that requires encryption and this identity for every role."""
        from distributed import Security

        roles = {f"tls_{role}_{part}": getattr(self, part)
                 for role in ("client", "scheduler", "worker") for part in ("cert", "key")}
        return Security(tls_ca_file=self.ca_file, require_encryption=True, **roles)


@dataclass(frozen=True)
class ClusterSpec:
    """A validated cluster description; ``connect`` turns it into a client.

    Attributes
    ----------
    kind : str
        ``"local"``, ``"threads"``, ``"address"``, ``"scheduler-file"`` or ``"slurm"``.
    options : dict
        The kind's keys, snake_case, defaults not filled in.
    tls : TLSFiles or None
        Certificates, when the cluster requires mutual TLS.
    source : str or None
        The spec file it was read from (for messages).
    """

    kind: str
    options: dict = field(default_factory=dict)
    tls: TLSFiles | None = None
    source: str | None = None

    @property
    def where(self) -> str:
        return f"cluster spec {self.source}" if self.source else "cluster spec"


def parse_cluster(value, *, base_dir: str | os.PathLike | None = None) -> ClusterSpec:
    """Turn a ``--cluster`` value into a :class:`ClusterSpec`, validating spec files fully.

    Parameters
    ----------
    value : str, path, dict or ClusterSpec
        ``"local"``, ``"threads"``, a scheduler address, a spec file, or a spec mapping.
    base_dir : path, optional
        Directory that a relative spec file path is relative to (default: the working directory).

    Raises
    ------
    ParameterError
        An unknown keyword, an unreadable or invalid spec file, missing certificate files.
    """
    if isinstance(value, ClusterSpec):
        return value
    if value is None or value == "":
        return ClusterSpec("local")
    if isinstance(value, dict):
        return _from_mapping(dict(value), source=None, base_dir=Path(base_dir or "."))
    text = str(value)
    if text in KEYWORDS:
        return ClusterSpec(text)
    if text.startswith(SCHEDULER_FILE):
        return _scheduler_file_spec(text, base_dir)
    if "://" in text:
        return _from_mapping({"kind": "address", "address": text}, source=None, base_dir=Path("."))
    path = Path(base_dir or ".") / text
    if not path.exists():
        raise ParameterError(
            f"--cluster {text!r} is not understood: use 'local' (default), 'threads', a scheduler address "
            "such as tcp://127.0.0.1:8786 or tls://scheduler:8786, or a cluster spec file "
            f"(no file {str(path)!r} exists; see cluster/README.md)"
        )
    return load_cluster_spec(path)


def _scheduler_file_spec(text: str, base_dir) -> ClusterSpec:
    """``scheduler-file:PATH``: the file need not exist yet (its scheduler may still be starting)."""
    name = text[len(SCHEDULER_FILE):]
    if not name.strip():
        raise ParameterError(f"--cluster {text!r} names no file: write scheduler-file:PATH, PATH the file that "
                             "`dask scheduler --scheduler-file PATH` writes")
    path = (Path(base_dir or ".") / os.path.expanduser(name)).resolve()
    if path.is_dir():
        raise ParameterError(f"--cluster {text!r}: {str(path)!r} is a directory, not a scheduler file; give the "
                             "file `dask scheduler --scheduler-file PATH` writes")
    return ClusterSpec("scheduler-file", {"scheduler_file": str(path)})


def cluster_from_environment(cluster, *, given: bool):
    """The cluster a job uses: ``cluster``, or the scheduler ``DASK_SCHEDULER_ADDRESS`` names.

    Parameters
    ----------
    cluster : str or None
        The ``--cluster`` value (its default, ``local``, when not given).
    given : bool
        Whether the user chose it (on the command line or in a job spec): then it is kept.

    Returns
    -------
    str
        ``DASK_SCHEDULER_ADDRESS`` when it is set (not empty) and ``cluster`` was not given; else ``cluster``.
        Which one is logged.

    Raises
    ------
    ParameterError
        ``DASK_SCHEDULER_ADDRESS`` is not a scheduler address.
    """
    address = os.environ.get(ADDRESS_VARIABLE, "").strip()
    if given or not address:
        return cluster
    _check_address(address, None, f"the environment variable {ADDRESS_VARIABLE}")
    log.info("cluster: %s is set and no --cluster was given: the job uses the scheduler at %s (--cluster local: "
             "the embedded cluster)", ADDRESS_VARIABLE, address)
    return address


def load_cluster_spec(path: str | os.PathLike) -> ClusterSpec:
    """Read and validate a cluster spec file (YAML); relative file names in it are relative to it."""
    path = Path(path)
    data = read_yaml_mapping(path, "cluster spec")
    return _from_mapping(data, source=str(path), base_dir=path.parent)


def _from_mapping(data: dict, *, source: str | None, base_dir: Path) -> ClusterSpec:
    where = f"cluster spec {source}" if source else "cluster spec"
    kind = data.get("kind")
    if kind is None:
        raise ParameterError(f"{where}: the key 'kind' is missing; set it to one of {', '.join(_KIND_KEYS)}")
    check_type(kind, (str,), "kind", where)
    if kind not in _KIND_KEYS:
        raise ParameterError(f"{where}: kind {kind!r} is not one of {', '.join(_KIND_KEYS)}")
    allowed = {**_COMMON, **_KIND_KEYS[kind]}
    check_keys(data, allowed, where)
    for key in _REQUIRED.get(kind, ()):
        if data.get(key) is None:
            raise ParameterError(f"{where}: kind {kind} needs the key {key!r} ({allowed[key][1]})")
    options = {}
    for key, value in data.items():
        if key in ("kind", "tls") or (value is None and key != "dashboard-address"):
            continue  # null means "the default", except a dashboard address: null is "none"
        check_type(value, allowed[key][0], key, where)
        options[key.replace("-", "_")] = value
    tls = _tls_files(data["tls"], where, base_dir) if data.get("tls") is not None else None
    if kind == "address":
        _check_address(options["address"], tls, where)
    if kind == "slurm":
        _check_slurm_network(options, where)
    return ClusterSpec(kind, options, tls, source)


def _tls_files(block, where: str, base_dir: Path) -> TLSFiles:
    check_type(block, (dict,), "tls", where)
    check_keys(block, _TLS_KEYS, f"{where}, tls")
    for key in _TLS_KEYS:
        if block.get(key) is None:
            raise ParameterError(f"{where}: tls needs {key!r} ({_TLS_KEYS[key][1]}); see cluster/tls/make-certs.sh")
        check_type(block[key], _TLS_KEYS[key][0], f"tls.{key}", where)
    paths = {}
    for key in _TLS_KEYS:
        path = (base_dir / os.path.expanduser(block[key])).resolve()
        if not path.is_file():
            raise ParameterError(f"{where}: tls.{key} {str(path)!r} does not exist; make the certificates with "
                                 "cluster/tls/make-certs.sh (cluster/README.md)")
        paths[key.replace("-", "_")] = str(path)
    return TLSFiles(**paths)


def _check_address(address: str, tls: TLSFiles | None, where: str) -> None:
    if "${" in address:
        return  # checked when expanded, at connect time
    scheme = address.split("://", 1)[0] if "://" in address else ""
    if scheme not in _SCHEMES:
        raise ParameterError(f"{where}: address {address!r} must start with tcp:// or tls:// "
                             f"(or another of Dask's comm protocols: {', '.join(_SCHEMES[2:])})")
    if tls is not None and scheme != "tls":
        raise ParameterError(f"{where}: a tls: block needs a tls:// address, not {address!r}")


def _check_slurm_network(options: dict, where: str) -> None:
    sched = options.get("scheduler_options") or {}
    if not any((options.get("interface"), options.get("host"), sched.get("interface"), sched.get("host"))):
        raise ParameterError(
            f"{where}: a SLURM cluster's workers run on other nodes, so the scheduler must listen where they "
            "can reach it, and edlae-dask listens only on 127.0.0.1 unless told otherwise: set "
            "'interface' (e.g. ib0 or eth0) or 'host'"
        )


def _expand_address(address: str, where: str) -> str:
    def lookup(match):
        name = match.group(1)
        if name not in os.environ:
            raise ParameterError(f"{where}: address {address!r} names ${{{name}}}, which is not set")
        return os.environ[name]

    expanded = re.sub(r"\$\{(\w+)\}", lookup, address)
    _check_address(expanded, None, where)
    return expanded


# --------------------------------------------------------------------------- building clusters


def _local_cluster_kwargs(n_workers: int | None, memory_limit: str | int | None) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n_workers = n_workers or cores
    if memory_limit is None:
        # leave a little for the client process, which holds small (n x l) matrices
        memory_limit = int(psutil.virtual_memory().total * 0.9 / n_workers)
    return dict(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host=LOOPBACK,
        dashboard_address=_loopback_dashboard(),
        memory_limit=memory_limit,
    )


def _loopback_dashboard() -> str | None:
    try:
        import bokeh  # noqa: F401

        return f"{LOOPBACK}:0"
    except ImportError:
        return None


def make_cluster(spec: ClusterSpec, *, n_workers: int | None = None, memory_limit=None):
    """Build (without scaling) the cluster object of a ``local`` or ``slurm`` spec.

    Parameters
    ----------
    spec : ClusterSpec
        Of kind ``local`` or ``slurm``.
    n_workers, memory_limit : optional
        Override the local spec's ``n-workers`` / ``memory-limit``.

    Returns
    -------
    distributed.LocalCluster or dask_jobqueue.SLURMCluster
        A SLURM cluster has its scheduler running in this process and no jobs submitted
        yet; ``cluster.job_script()`` shows what ``scale`` would submit.
    """
    opts = dict(spec.options)
    if spec.kind == "local":
        from distributed import LocalCluster

        spec_workers, spec_memory = opts.pop("n_workers", None), opts.pop("memory_limit", None)
        kwargs = _local_cluster_kwargs(n_workers or spec_workers, memory_limit or spec_memory)
        kwargs.update(opts)  # host, dashboard_address, threads_per_worker: the spec says so
        return LocalCluster(**kwargs)
    if spec.kind == "slurm":
        return _slurm_cluster(spec, opts)
    raise ParameterError(f"{spec.where}: kind {spec.kind} has no cluster to build")


def _slurm_cluster(spec: ClusterSpec, opts: dict):
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise ParameterError(f"{spec.where}: kind slurm needs dask-jobqueue: pip install 'edlae-dask[slurm]'") from exc
    for ours in ("scale", "wait_for_workers", "wait_timeout"):
        opts.pop(ours, None)
    # one single-threaded worker process per core, as the local cluster: the block kernels
    # are single-threaded BLAS calls sized for one core each
    opts.setdefault("processes", opts["cores"])
    sched = dict(opts.pop("scheduler_options", None) or {})
    sched.setdefault("dashboard_address", opts.pop("dashboard_address", _loopback_dashboard()))
    if spec.tls is not None:
        opts.update(security=spec.tls.security(), protocol="tls://")
    try:
        return SLURMCluster(scheduler_options=sched, **opts)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{spec.where}: dask-jobqueue refused it: {exc}") from exc


# --------------------------------------------------------------------------- connecting


@contextlib.contextmanager
def connect(cluster="local", *, n_workers: int | None = None, memory_limit=None):
    """Yield a connected :class:`distributed.Client`, or ``None`` for ``"threads"``.

    Parameters
    ----------
    cluster : str, path, dict or ClusterSpec, default="local"
        ``"local"``, ``"threads"``, a scheduler address (``tcp://``, ``tls://``) or a
        cluster spec file (see the module docstring and ``cluster/README.md``).
    n_workers : int, optional
        Workers of the local cluster (default: the spec's, or one per core).
    memory_limit : int or str, optional
        Memory limit per local worker (default: the spec's, or 90 % of RAM split evenly).

    Raises
    ------
    ParameterError
        An invalid spec, an unreachable scheduler, or workers that did not come.
    """
    spec = parse_cluster(cluster)
    if spec.kind == "threads":
        yield None
        return
    from distributed import Client

    if spec.kind in ("address", "scheduler-file"):
        with _address_client(spec) as client:
            _log_client(client)
            yield client
        return
    with make_cluster(spec, n_workers=n_workers, memory_limit=memory_limit) as cl:
        n_workers_expected = 0  # a LocalCluster's workers are up when it is built
        if spec.kind == "slurm":
            n_jobs = spec.options.get("scale", 1)
            n_workers_expected = n_jobs * (spec.options.get("processes") or spec.options["cores"])
            log.info("cluster: submitting %d SLURM job(s):\n%s", n_jobs, cl.job_script())
            cl.scale(jobs=n_jobs)
        with Client(cl, security=spec.tls.security() if spec.tls else None) as client:
            if spec.kind == "local":
                _quiet_task_failures(client)
            _wait_for_workers(client, spec, default=n_workers_expected)
            _log_client(client)
            yield client


def _quiet_task_failures(client) -> None:
    """Keep the local workers from logging each failed task ("Compute Failed", a traceback) to our stderr.

    The workers of the embedded cluster share this process's stderr; the task's error is
    re-raised here, where the CLI reports it in one line (with ``--debug``, with its traceback).
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class QuietTaskFailures(WorkerPlugin):
        name = "edlae-quiet-task-failures"

        def setup(self, worker):
            logging.getLogger("distributed.worker").addFilter(_drop_compute_failed)

    client.register_plugin(QuietTaskFailures())


def _drop_compute_failed(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Compute Failed")


def _read_scheduler_file(path: str, timeout) -> str:
    """The address in the scheduler file ``path``, waiting up to ``timeout`` for its scheduler to write it."""
    import json
    import time

    from dask.utils import parse_timedelta

    deadline = time.monotonic() + parse_timedelta(timeout, "s")
    problem = "it does not exist"
    while True:
        try:
            with open(path, encoding="utf-8") as fh:
                address = json.load(fh)["address"]
            if isinstance(address, str) and "://" in address:
                return address
            problem = f"its address {address!r} is not a scheduler address"
        except FileNotFoundError:
            problem = "it does not exist"
        except (ValueError, KeyError, TypeError):  # being written, or not a scheduler file
            problem = "it holds no scheduler address (JSON with an 'address')"
        except OSError as exc:
            raise ParameterError(f"--cluster {SCHEDULER_FILE}{path}: cannot read it: {exc.strerror or exc}") from exc
        if time.monotonic() > deadline:
            raise ParameterError(f"--cluster {SCHEDULER_FILE}{path}: {problem} after waiting {timeout}; start the "
                                 f"scheduler with `dask scheduler --scheduler-file {path}`, or fix the path")
        time.sleep(0.1)


@contextlib.contextmanager
def _address_client(spec: ClusterSpec):
    from distributed import Client

    if spec.kind == "scheduler-file":
        address = _read_scheduler_file(spec.options["scheduler_file"], spec.options.get("timeout", "20s"))
        log.info("cluster: scheduler %s, read from %s", address, spec.options["scheduler_file"])
    else:
        address = _expand_address(spec.options["address"], spec.where)
    security = spec.tls.security() if spec.tls else None
    try:
        timeout = spec.options.get("timeout", "20s")
        client = (Client(scheduler_file=spec.options["scheduler_file"], timeout=timeout, security=security)
                  if spec.kind == "scheduler-file" else Client(address, timeout=timeout, security=security))
    except (OSError, TypeError) as exc:
        no_certificates = address.startswith("tls://") and security is None
        if isinstance(exc, TypeError) and not no_certificates:
            raise
        if no_certificates:  # distributed: "TLS expects a `ssl_context` argument"
            hint = ("A tls:// scheduler needs certificates: give --cluster a spec file with a tls: block "
                    "(cluster/README.md).")
        else:
            hint = "Is `dask scheduler` running there, and are this machine's address and the port allowed?"
        if security:
            hint += " With TLS: did the same CA sign the scheduler's certificate and this one?"
        raise ParameterError(f"could not reach the Dask scheduler at {address}: {exc}. {hint}") from exc
    with client:
        _wait_for_workers(client, spec, default=0)
        yield client


def _wait_for_workers(client, spec: ClusterSpec, *, default: int) -> None:
    n = spec.options.get("wait_for_workers", default)
    if not n:
        return
    timeout = spec.options.get("wait_timeout", "30min")
    log.info("cluster: waiting for %d workers (at most %s)", n, timeout)
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError as exc:
        have = len(client.scheduler_info().get("workers", {}))
        raise ParameterError(f"{spec.where}: {have} of {n} workers joined within {timeout}; "
                             "raise wait-timeout, or lower wait-for-workers") from exc


def _log_client(client) -> None:
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    workers = info.get("workers", {})
    mem = sum(w.get("memory_limit", 0) or 0 for w in workers.values())
    log.info(
        "cluster: scheduler %s, %d workers, %d threads, %.1f GiB memory limit in all",
        client.scheduler.address,
        len(workers),
        sum(w.get("nthreads", 0) for w in workers.values()),
        mem / 1024**3,
    )
    if client.dashboard_link and "None" not in str(client.dashboard_link):
        log.info("dashboard: %s", client.dashboard_link)


def _accepts_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def planned_memory(cluster, *, n_workers: int | None = None) -> tuple[int, int, int] | None:
    """(total memory limit, smallest worker limit, workers) a job on ``cluster`` would have; None if unknown.

    Nothing is started: ``local`` (a keyword or a ``local`` spec) is what :func:`make_cluster`
    would build (``n_workers`` overrides the spec's), ``threads`` this machine's available
    memory (as :func:`cluster_memory` without a client); an existing scheduler or a SLURM
    cluster is known only once connected (None).
    """
    from dask.utils import parse_bytes

    spec = parse_cluster(cluster)
    if spec.kind == "threads":
        return cluster_memory(None)
    if spec.kind != "local":
        return None
    limit = spec.options.get("memory_limit")
    if limit == "auto":
        limit = None  # distributed's "auto": the machine's memory split evenly, as our default
    elif isinstance(limit, str):
        try:
            limit = parse_bytes(limit)
        except ValueError as exc:
            raise ParameterError(f"{spec.where}: memory-limit {limit!r} is not a size; write e.g. 4GiB") from exc
    kwargs = _local_cluster_kwargs(n_workers or spec.options.get("n_workers"), limit)
    per_worker = int(kwargs["memory_limit"])
    return per_worker * kwargs["n_workers"], per_worker, kwargs["n_workers"]


def cluster_memory(client) -> tuple[int, int, int]:
    """Return (total memory limit, smallest worker limit, worker count) of ``client``'s cluster.

    Without a client, the machine's available memory and one "worker".
    """
    if client is None:
        avail = psutil.virtual_memory().available
        return avail, avail, 1
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    limits = [w.get("memory_limit") or psutil.virtual_memory().total for w in info["workers"].values()]
    if not limits:
        raise ParameterError("the Dask cluster has no workers: start some (`dask worker ADDRESS`) and retry")
    return sum(limits), min(limits), len(limits)

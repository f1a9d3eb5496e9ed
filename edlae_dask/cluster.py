"""Getting a Dask cluster: the embedded LocalCluster, an existing scheduler, or none.

``--cluster`` / ``cluster=`` takes

- ``"local"`` (default): a :class:`distributed.LocalCluster` on this machine, one
  single-threaded worker process per core, bound to 127.0.0.1, dashboard on
  loopback only;
- ``"tcp://host:port"`` or ``"tls://host:port"``: an existing scheduler (workers
  started elsewhere: ``dask worker``, SLURM, Kubernetes; see ``cluster/README.md``);
- ``"threads"``: no cluster, Dask's threaded scheduler in this process (small
  problems, debugging).
"""

from __future__ import annotations

import contextlib
import logging
import os

import psutil

from edlae_dask.errors import ParameterError

log = logging.getLogger("edlae_dask.cluster")


def _local_cluster_kwargs(n_workers: int | None, memory_limit: str | int | None) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n_workers = n_workers or cores
    if memory_limit is None:
        # leave a little for the client process, which holds small (n x l) matrices
        memory_limit = int(psutil.virtual_memory().total * 0.9 / n_workers)
    try:
        import bokeh  # noqa: F401

        dashboard = "127.0.0.1:0"
    except ImportError:
        dashboard = None
    return dict(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=dashboard,
        memory_limit=memory_limit,
    )


@contextlib.contextmanager
def connect(cluster: str | None = "local", *, n_workers: int | None = None, memory_limit=None):
    """Yield a connected :class:`distributed.Client`, or ``None`` for ``"threads"``.

    Parameters
    ----------
    cluster : str, default="local"
        ``"local"``, ``"threads"`` or a scheduler address (``tcp://``, ``tls://``).
    n_workers : int, optional
        Workers of the local cluster (default: one per core).
    memory_limit : int or str, optional
        Memory limit per local worker (default: 90 % of RAM split evenly).
    """
    cluster = cluster or "local"
    if cluster == "threads":
        yield None
        return
    from distributed import Client, LocalCluster

    if cluster == "local":
        with LocalCluster(**_local_cluster_kwargs(n_workers, memory_limit)) as lc, Client(lc) as client:
            _log_client(client)
            yield client
        return
    if "://" not in cluster:
        raise ParameterError(
            f"--cluster {cluster!r} is not understood: use 'local' (default), 'threads', "
            "or a scheduler address such as tcp://127.0.0.1:8786 or tls://scheduler:8786"
        )
    try:
        client = Client(cluster, timeout="20s")
    except OSError as exc:
        raise ParameterError(
            f"could not reach the Dask scheduler at {cluster}: {exc}. Is `dask scheduler` running there, "
            "and are this machine's address and the port allowed?"
        ) from exc
    with client:
        _log_client(client)
        yield client


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

"""Real `dask scheduler` / `dask worker` processes on 127.0.0.1 for the tests, and ways to hurt them.

Every process is started in its own session (its own process group), so that
:func:`kill_group` ends it with everything it spawned (a nanny's worker, a
LocalCluster's workers), whatever happens in the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from distributed import WorkerPlugin

TESTS_DIR = Path(__file__).resolve().parent


def dask_cmd(*args) -> list[str]:
    """The `dask` console script of this interpreter's environment."""
    exe = Path(sys.executable).with_name("dask")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "dask", *args]


def edlae_cmd(*args) -> list[str]:
    """`edlae-dask ARGS` run by this interpreter."""
    return [sys.executable, "-m", "edlae_dask", *args]


def spawn(cmd, *, env=None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw) -> subprocess.Popen:
    """Start ``cmd`` in a new session; the tests directory is importable in it (for worker plugins)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    return subprocess.Popen(cmd, env=full_env, stdout=stdout, stderr=stderr, start_new_session=True, **kw)


def kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Send ``sig`` to ``proc``'s process group (it and all it started); never fails."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(procs, timeout: float = 20) -> None:
    """SIGKILL each group (a graceful close of a scheduler and its workers takes many seconds) and reap it."""
    for p in reversed(procs):
        kill_group(p, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=timeout)


@dataclass
class Cluster:
    """A scheduler and its worker processes; ``workers[i].pid`` is the worker itself when ``nanny=False``."""

    address: str
    scheduler: subprocess.Popen
    workers: list = field(default_factory=list)
    scheduler_file: Path | None = None  # the JSON file `dask scheduler --scheduler-file` wrote


@contextlib.contextmanager
def dask_cluster(workdir, *, n_workers: int = 2, nanny: bool = True, memory_limit: str = "2GiB", env=None):
    """Start ``dask scheduler`` and ``n_workers`` single-threaded ``dask worker`` processes on loopback.

    ``env`` is added to every process's environment (e.g. Dask config as
    ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES``). All are killed on exit.
    """
    sched_file = Path(workdir) / f"scheduler-{time.monotonic_ns()}.json"
    procs = [spawn(dask_cmd("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                            "127.0.0.1:0", "--scheduler-file", str(sched_file)), env=env, cwd=workdir)]
    try:
        deadline = time.time() + 60
        address = None
        while address is None and time.time() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):  # written in more than one step
                address = json.loads(sched_file.read_text())["address"]
            time.sleep(0.1)
        assert address and address.startswith("tcp://127.0.0.1:"), "dask scheduler did not start"
        cluster = Cluster(address, procs[0], scheduler_file=sched_file)
        for _ in range(n_workers):
            args = ["worker", address, "--nthreads", "1", "--host", "127.0.0.1", "--memory-limit", memory_limit,
                    "--no-dashboard"] + ([] if nanny else ["--no-nanny"])
            proc = spawn(dask_cmd(*args), env=env, cwd=workdir)  # its scratch space goes there
            procs.append(proc)
            cluster.workers.append(proc)
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(n_workers, timeout=60)
        yield cluster
    finally:
        stop(procs)


class LineWatcher:
    """Collects the lines a process writes to a pipe, in a thread; :meth:`wait_for` a line containing a text."""

    def __init__(self, pipe):
        import threading

        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for line in pipe:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    closed = False

    def wait_for(self, text: str, timeout: float = 120) -> bool:
        """True once a line contains ``text``; False if the pipe closed or ``timeout`` passed first."""
        deadline = time.time() + timeout
        with self._changed:
            while not any(text in line for line in self.lines):
                if self.closed or time.time() > deadline:
                    return False
                self._changed.wait(timeout=0.5)
            return True

    def text(self, timeout: float = 60) -> str:
        """Everything, once the pipe is closed (the process ended)."""
        self._thread.join(timeout=timeout)
        return "\n".join(self.lines)


class CrashOnTask(WorkerPlugin):
    """Worker plugin: the worker process segfaults as it starts a task whose key begins with ``prefix``.

    What a worker crashing inside a BLAS call looks like to Dask. Registered with
    ``client.register_plugin``; a nanny restarts the worker and the scheduler
    installs the plugin again, so every retry of such a task crashes too.
    """

    name = "crash-on-task"

    def __init__(self, prefix: str):
        self.prefix = prefix

    def transition(self, key, start, finish, **kwargs):
        name = key[0] if isinstance(key, tuple) else key
        if finish == "executing" and str(name).startswith(self.prefix):
            os.kill(os.getpid(), signal.SIGSEGV)


def hold_until_set(event_name: str) -> None:
    """A task that keeps its worker's thread busy until the distributed Event ``event_name`` is set."""
    from distributed import Event

    Event(event_name).wait()

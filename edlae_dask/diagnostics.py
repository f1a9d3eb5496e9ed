"""Stage timing and memory accounting for long jobs.

Each stage of a job (gram, inverse, eigensolve, publish, ...) runs inside
:meth:`StageLog.stage`, which logs when it starts, how long it took and the peak
resident memory it held: per worker and in total on a distributed cluster
(sampled with ``Client.run`` every ``interval`` seconds), or of this process when
no cluster is used. The records end up in the factor store's attributes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field

import psutil

log = logging.getLogger("edlae_dask")

GiB = 1024**3

#: A log record's attribute that marks it as a line of a job's report (the summary a command prints on stdout):
#: ``log.info(line, extra=REPORT_LINE)``. The CLI drops such records from the log, so that no line appears twice.
REPORT = "edlae_report"
REPORT_LINE = {REPORT: True}


def is_report_line(record: logging.LogRecord) -> bool:
    """Whether ``record`` was logged with :data:`REPORT_LINE`."""
    return bool(getattr(record, REPORT, False))


def _rss() -> int:
    return psutil.Process(os.getpid()).memory_info().rss


@dataclass
class StageRecord:
    """What one stage did: wall time and peak memory (bytes)."""

    name: str
    seconds: float
    peak_total_bytes: int
    peak_worker_bytes: int
    detail: dict = field(default_factory=dict)
    #: Peak resident memory of each worker (address: bytes) during the stage; this process's under "local".
    peak_by_worker: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class _MemoryPoller:
    """Polls the resident memory of the workers (or this process) in a thread."""

    def __init__(self, client, interval: float):
        self.client = client
        self.interval = interval
        self.peak_total = 0
        self.peak_worker = 0
        self.peak_by_worker: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="edlae-memory-poller")

    def _sample(self) -> None:
        if self.client is None:
            by_worker = {"local": _rss()}
        else:
            try:
                by_worker = self.client.run(_rss)
            except Exception:  # a worker may be restarting; skip this sample
                return
        for who, rss in by_worker.items():
            self.peak_by_worker[who] = max(self.peak_by_worker.get(who, 0), rss)
        per_worker = list(by_worker.values())
        if per_worker:
            self.peak_total = max(self.peak_total, sum(per_worker))
            self.peak_worker = max(self.peak_worker, max(per_worker))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()


class StageLog:
    """Times the stages of a job and records their peak memory.

    Parameters
    ----------
    client : distributed.Client or None
        The cluster whose workers are sampled; ``None`` samples this process.
    interval : float, default=0.5
        Sampling interval in seconds.
    """

    def __init__(self, client=None, *, interval: float = 0.5, logger: logging.Logger | None = None):
        self.client = client
        self.interval = interval
        self.records: list[StageRecord] = []
        self.log = logger or log

    @contextlib.contextmanager
    def stage(self, name: str, what: str = ""):
        """Run the body as stage ``name``; yields a dict the body may fill with details."""
        self.log.info("stage %-10s started%s", name, f": {what}" if what else "")
        detail: dict = {}
        t0 = time.perf_counter()
        with _MemoryPoller(self.client, self.interval) as mem:
            yield detail
        seconds = time.perf_counter() - t0
        rec = StageRecord(name, seconds, mem.peak_total, mem.peak_worker, detail, dict(mem.peak_by_worker))
        self.records.append(rec)
        self.log.info(
            "stage %-10s done in %7.2f s, peak memory %.2f GiB total, %.2f GiB on one %s%s",
            name,
            seconds,
            mem.peak_total / GiB,
            mem.peak_worker / GiB,
            "process" if self.client is None else "worker",
            "".join(f", {k}={v}" for k, v in detail.items() if not isinstance(v, (list, dict))),
        )

    def as_dict(self) -> dict:
        return {r.name: r.as_dict() for r in self.records}

    def summary(self) -> str:
        lines = [f"{'stage':<12}{'seconds':>10}{'peak total GiB':>16}{'peak worker GiB':>17}"]
        for r in self.records:
            lines.append(
                f"{r.name:<12}{r.seconds:>10.2f}{r.peak_total_bytes / GiB:>16.2f}{r.peak_worker_bytes / GiB:>17.2f}"
            )
        lines.append(f"{'total':<12}{sum(r.seconds for r in self.records):>10.2f}")
        return "\n".join(lines)

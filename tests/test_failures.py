"""Real failures on a real cluster: a worker killed (kill -9) mid-stage, a worker that segfaults.

`dask scheduler` and `dask worker` run as separate OS processes on 127.0.0.1. The
workers run without a nanny where one is killed, so a dead worker stays dead and
the job must finish on the two that remain; the results must equal an
undisturbed run's.
"""

import os
import signal
import threading
import time

import numpy as np
import pytest
from distributed import Client

from edlae_dask.config import TrainParams
from edlae_dask.errors import ModelFitError
from edlae_dask.io.factors import FactorWriter, open_factors
from edlae_dask.io.interactions import write_interactions
from edlae_dask.io.recommendations import done_shards, open_recommendations
from edlae_dask.pipeline import train
from edlae_dask.scoring import score

from cluster_procs import CrashOnTask, dask_cluster
from conftest import random_interactions

pytestmark = pytest.mark.cluster


class WorkerKiller(threading.Thread):
    """Watches the scheduler through its own client; kill -9s the first worker for which ``choose`` says so.

    ``choose(monitor, worker_address, keys_processing_there)`` is asked about every
    worker with tasks in flight, every 20 ms, until it answers True once.
    """

    def __init__(self, address, choose):
        super().__init__(daemon=True)
        self.monitor = Client(address, timeout="30s")
        self.pids = self.monitor.run(os.getpid)  # worker address -> the worker process's PID (no nanny)
        self.choose = choose
        self.killed = None
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set() and self.killed is None:
            for worker, keys in self.monitor.processing().items():
                if keys and self.choose(self.monitor, worker, [str(k) for k in keys]):
                    os.kill(self.pids[worker], signal.SIGKILL)
                    self.killed = worker
                    break
            time.sleep(0.02)

    def stop(self):
        self.done.set()
        self.join(timeout=30)
        self.monitor.close()


def test_worker_killed_in_the_middle_of_the_inverse_the_job_finishes_with_the_same_factors(tmp_path):
    store = write_interactions(tmp_path / "x.zarr", random_interactions(1200, 480, 0.02, seed=3), shard_size=150)
    params = TrainParams(k=4, lam=5.0, p=0.2, dtype="float64", block_size=60, seed=1, path="dense")
    held = {}

    def mid_inverse_holding_gram_blocks(monitor, worker, keys):
        # the second of the inverse's three sub-stages (W = L⁻¹) is running there, and the worker
        # holds persisted Gram blocks: they are lost with it and must be recomputed
        if not any(k.startswith("('edlae-trtri-") for k in keys):
            return False
        held["gram"] = [k for k in monitor.has_what().get(worker, ()) if str(k).startswith("('edlae-gram-")]
        return bool(held["gram"])

    with dask_cluster(tmp_path, n_workers=3, nanny=False) as cluster, Client(cluster.address) as client:
        killer = WorkerKiller(cluster.address, mid_inverse_holding_gram_blocks)
        killer.start()
        try:
            result = train(store, params=params, client=client, out=tmp_path / "factors")
        finally:
            killer.stop()
        assert killer.killed is not None, "the inverse finished before a worker could be killed in it"
        assert held["gram"] and len(client.scheduler_info()["workers"]) == 2
    reference = train(store, params=params, client=None)
    U, V = open_factors(tmp_path / "factors").load()
    Ur, Vr = reference.U.compute(), reference.V.compute()
    np.testing.assert_allclose(U @ V.T, Ur @ Vr.T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result.eigenvalues, reference.eigenvalues, rtol=1e-10)


def _random_factors(path, item_ids, k, seed):
    rng = np.random.default_rng(seed)
    with FactorWriter(path) as w:
        for name in ("U", "V"):
            w.write_array(name, rng.standard_normal((item_ids.size, k)).astype(np.float32), chunks=(2048, k))
        w.write_array("item_ids", item_ids)
        w.write_array("eigenvalues", np.sort(rng.uniform(1, 2, k))[::-1])
        w.write_array("ritz_residuals", np.zeros(k))
        w.commit(dict(k=k, lam=1.0, p=0.0, dtype="float32"))


def test_worker_killed_in_the_middle_of_scoring_the_job_finishes_with_the_same_recommendations(tmp_path):
    # shards big enough (2,000 users x 12,000 items) that a shard task takes a noticeable time
    X = random_interactions(16_000, 12_000, 0.0005, seed=5, all_items=False)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=2000)
    _random_factors(tmp_path / "factors", np.arange(12_000), k=48, seed=6)
    out = tmp_path / "recs"

    def after_a_shard_is_written(monitor, worker, keys):
        return any(k.startswith("edlae-score-shard-") for k in keys) and _done(out) >= 1

    def _done(path):
        staging = [p for p in tmp_path.iterdir() if p.name.startswith(".recs.scoring-")]
        return len(done_shards(str(staging[0]))) if staging else 0

    with dask_cluster(tmp_path, n_workers=3, nanny=False) as cluster, Client(cluster.address) as client:
        killer = WorkerKiller(cluster.address, after_a_shard_is_written)
        killer.start()
        try:
            report = score(tmp_path / "factors", store, out, top_n=20, client=client)
        finally:
            killer.stop()
        assert killer.killed is not None, "scoring finished before a worker could be killed in it"
    assert report.published and report.n_shards_scored == store.n_shards
    score(tmp_path / "factors", store, tmp_path / "reference", top_n=20, client=None)
    got, want = open_recommendations(out), open_recommendations(tmp_path / "reference")
    np.testing.assert_array_equal(got.items.compute(), want.items.compute())
    np.testing.assert_allclose(got.scores.compute(), want.scores.compute(), rtol=1e-5)


def test_a_worker_that_keeps_crashing_is_a_model_fit_error_that_names_the_causes(tmp_path):
    store = write_interactions(tmp_path / "x.zarr", random_interactions(200, 40, 0.1, seed=1), shard_size=100)
    params = TrainParams(k=3, lam=5.0, p=0.2, dtype="float64", block_size=20, path="dense")
    # each worker process segfaults when it starts a Cholesky task, as OpenBLAS's dpotrf has; the
    # nannies restart them, and the scheduler gives up on the task after its second crash
    env = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    with dask_cluster(tmp_path, n_workers=2, nanny=True, env=env) as cluster, Client(cluster.address) as client:
        client.register_plugin(CrashOnTask("edlae-cholesky-"))
        with pytest.raises(ModelFitError, match="died repeatedly.*ran out of memory.*OPENBLAS_CORETYPE=Haswell"):
            train(store, params=params, client=client)


# --------------------------------------------------------------------------- a publish killed under a reader

_READER = """
import json, sys, time
from edlae_dask.io.factors import open_factors
while True:
    try:
        f = open_factors(sys.argv[1])
        U = f.U.compute(scheduler="sync")
        print(json.dumps(dict(version=f.version, shape=list(U.shape), first=float(U[0, 0]), last=float(U[-1, -1]),
                              total=float(U.sum()))), flush=True)
    except Exception as exc:
        print(json.dumps(dict(error=f"{type(exc).__name__}: {exc}")), flush=True)
    time.sleep(0.01)
"""

_PUBLISHER = """
import sys, time
import dask.array as da, numpy as np
from edlae_dask.io.factors import FactorWriter
n, k, offset = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
U = np.arange(n * k, dtype=np.float64).reshape(n, k) + offset
def slowly(block):
    time.sleep(0.3)
    return block
with FactorWriter(sys.argv[1], overwrite=True) as w:
    w.write_array("U", da.from_array(U, chunks=(10, k)).map_blocks(slowly), compute=False).compute(scheduler="sync")
    w.write_array("V", U)
    w.write_array("item_ids", np.arange(n))
    w.write_array("eigenvalues", np.ones(k))
    w.write_array("ritz_residuals", np.zeros(k))
    w.commit(dict(k=k, lam=1.0, p=0.0, dtype="float64"))
"""


def _expected(n, k, offset):
    U = np.arange(n * k, dtype=np.float64).reshape(n, k) + offset
    return dict(shape=[n, k], first=float(U[0, 0]), last=float(U[-1, -1]), total=float(U.sum()))


def test_a_reader_sees_only_complete_versions_while_a_publish_is_killed_and_while_one_completes(tmp_path):
    import json
    import subprocess
    import sys

    from cluster_procs import LineWatcher, kill_group, spawn

    path = tmp_path / "factors"
    publish = [sys.executable, "-c", _PUBLISHER, str(path)]
    subprocess.run([*publish, "60", "3", "0"], check=True, timeout=120)
    v1 = open_factors(path).version
    reader = spawn([sys.executable, "-c", _READER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        reads = LineWatcher(reader.stdout)
        assert reads.wait_for('"version"'), reads.lines
        killed = spawn([*publish, "80", "3", "1000"])
        partial = path / "versions"
        # kill -9 the publisher once part of its new version is on disk, and the reader has read meanwhile
        deadline = time.time() + 60
        while len([c for c in partial.glob(".tmp-*/U/c/**/*") if c.is_file()]) < 2 and time.time() < deadline:
            time.sleep(0.05)
        n_before = len(reads.lines)
        while len(reads.lines) < n_before + 3 and time.time() < deadline:
            time.sleep(0.05)
        kill_group(killed)
        killed.wait(timeout=30)
        assert list(partial.glob(".tmp-*")), "the publish was not under way when it was killed"
        assert open_factors(path).version == v1 and open_factors(path).load()[0].shape == (60, 3)
        n_killed = len(reads.lines)
        subprocess.run([*publish, "80", "3", "1000"], check=True, timeout=120)
        v2 = open_factors(path).version
        while not any(v2 in line for line in reads.lines[n_killed:]) and time.time() < deadline:
            time.sleep(0.05)
    finally:
        kill_group(reader)
    seen = [json.loads(line) for line in reads.lines]
    assert [s for s in seen if "error" in s] == []
    versions = [s.pop("version") for s in seen]
    expected = {v1: _expected(60, 3, 0), v2: _expected(80, 3, 1000)}
    assert all(s == expected[v] for s, v in zip(seen, versions))  # each read is one whole version
    assert set(versions[:n_killed]) == {v1} and versions[-1] == v2
    assert versions == sorted(versions, key=[v1, v2].index)  # never back to the old one

"""Training through a real `dask scheduler` and two `dask worker` processes on loopback."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import clustered_interactions
from edlae_dask.cli import cli
from edlae_dask.io.factors import open_factors
from edlae_dask.io.interactions import write_interactions

pytestmark = pytest.mark.cluster


def _dask_cmd(*args):
    # the `dask` console script of this interpreter's environment
    exe = Path(sys.executable).with_name("dask")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "dask", *args]


@pytest.fixture
def scheduler_address(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen(_dask_cmd("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                                        "127.0.0.1:0", "--scheduler-file", str(sched_file)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "dask scheduler did not start"
        time.sleep(0.3)  # the file is written before it is complete on some versions
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            procs.append(subprocess.Popen(_dask_cmd("worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                                    "--memory-limit", "2GiB", "--no-dashboard"),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def test_train_through_scheduler_and_worker_processes_equals_embedded_run(tmp_path, scheduler_address):
    X = clustered_interactions(n_users=300, n_items=48, seed=21)
    store = tmp_path / "x.zarr"
    write_interactions(store, X, shard_size=60)
    common = ["train", "--interactions", str(store), "--k", "4", "--lam", "3", "--p", "0.2", "--dtype", "float64",
              "--block-size", "16", "--seed", "5"]
    remote = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "remote"), "--cluster", scheduler_address])
    assert remote.exit_code == 0, remote.output
    local = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "local"), "--cluster", "threads"])
    assert local.exit_code == 0, local.output
    (Ur, Vr), (Ul, Vl) = open_factors(tmp_path / "remote").load(), open_factors(tmp_path / "local").load()
    np.testing.assert_allclose(Ur @ Vr.T, Ul @ Vl.T, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(open_factors(tmp_path / "remote").eigenvalues,
                               open_factors(tmp_path / "local").eigenvalues, rtol=1e-10)


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    X = clustered_interactions(n_users=50, n_items=10, seed=1)
    write_interactions(tmp_path / "x.zarr", X)
    r = CliRunner().invoke(cli, ["train", "--interactions", str(tmp_path / "x.zarr"), "--out", str(tmp_path / "f"),
                                 "--k", "2", "--cluster", "tcp://127.0.0.1:1"])
    assert r.exit_code == 1 and "could not reach the Dask scheduler" in r.stderr

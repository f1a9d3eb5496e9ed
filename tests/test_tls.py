"""Mutual TLS: a real `dask scheduler` and `dask worker` holding certificates from cluster/tls/make-certs.sh.

Only a client with a certificate that the cluster's CA signed gets in; with one, the
training job runs through the TLS cluster and equals the embedded run.
"""

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from edlae_dask.cli import cli
from edlae_dask.cluster import connect
from edlae_dask.errors import ParameterError
from edlae_dask.io.factors import open_factors
from edlae_dask.io.interactions import write_interactions

from conftest import clustered_interactions

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]


def _dask_cmd(*args):
    exe = Path(sys.executable).with_name("dask")
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "dask", *args]


def _tls_args(certs: Path, who: str):
    return ["--tls-ca-file", str(certs / "ca.pem"), "--tls-cert", str(certs / f"{who}.pem"),
            "--tls-key", str(certs / f"{who}-key.pem")]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """Certificates of our cluster, and of a stranger's (another CA), made by the shipped script."""
    if shutil.which("openssl") is None:
        pytest.skip("cluster/tls/make-certs.sh needs openssl")
    root = tmp_path_factory.mktemp("certs")
    for name in ("ours", "stranger"):
        subprocess.run(["bash", str(REPO / "cluster" / "tls" / "make-certs.sh"), str(root / name)],
                       check=True, capture_output=True)
    return root / "ours", root / "stranger"


@pytest.fixture(scope="module")
def tls_address(certs, tmp_path_factory):
    """A TLS-only scheduler and one worker, separate processes on loopback, with the node certificate."""
    ours, _ = certs
    sched_file = tmp_path_factory.mktemp("sched") / "scheduler.json"
    procs = []

    def start(*args):
        procs.append(subprocess.Popen(_dask_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))

    try:
        # --dashboard-address too: without it /health and /metrics are still served, on all interfaces
        start("scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file), *_tls_args(ours, "node"))
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "dask scheduler did not start"
        time.sleep(0.3)  # the file is written before it is complete on some versions
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        start("worker", address, "--nthreads", "1", "--host", "127.0.0.1", "--memory-limit", "2GiB",
              "--no-dashboard", "--dashboard-address", "127.0.0.1:0", *_tls_args(ours, "node"))
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


def _spec(path: Path, address: str, certs: Path, ca: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "kind": "address", "address": address, "wait-for-workers": 1, "wait-timeout": "60s",
        "tls": {"ca-file": str(ca / "ca.pem"), "cert": str(certs / "client.pem"), "key": str(certs / "client-key.pem")},
    }))
    return path


def test_a_client_showing_no_certificate_is_refused_by_the_scheduler(tls_address, certs):
    # a plain TLS client that trusts our CA, so only the scheduler's own check can refuse it
    ours, _ = certs
    host, port = tls_address.removeprefix("tls://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ours / "ca.pem"))
    ctx.check_hostname = False
    with pytest.raises(ssl.SSLError, match="(?i)certificate"):
        with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
            tls.recv(1)  # TLS 1.3: the scheduler's refusal arrives after the client's side of the handshake


def test_a_certificate_from_another_ca_is_refused(tls_address, certs, tmp_path):
    ours, stranger = certs
    spec = _spec(tmp_path / "stranger.yaml", tls_address, stranger, ca=ours)
    with pytest.raises(ParameterError, match="could not reach the Dask scheduler"):
        with connect(str(spec)):
            pass


def test_a_tls_address_without_certificates_is_a_clear_error(tls_address):
    with pytest.raises(ParameterError, match="tls: block"):
        with connect(tls_address):
            pass


def test_a_client_with_the_certificates_trains_like_the_embedded_run(tls_address, certs, tmp_path):
    ours, _ = certs
    spec = _spec(tmp_path / "tls-cluster.yaml", tls_address, ours, ca=ours)
    X = clustered_interactions(n_users=200, n_items=40, seed=8)
    store = tmp_path / "x.zarr"
    write_interactions(store, X, shard_size=50)
    common = ["train", "--interactions", str(store), "--k", "4", "--lam", "3", "--p", "0.2", "--dtype", "float64",
              "--block-size", "16", "--seed", "2"]
    remote = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "remote"), "--cluster", str(spec)])
    assert remote.exit_code == 0, remote.output
    local = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "local"), "--cluster", "threads"])
    assert local.exit_code == 0, local.output
    (Ur, Vr), (Ul, Vl) = open_factors(tmp_path / "remote").load(), open_factors(tmp_path / "local").load()
    np.testing.assert_allclose(Ur @ Vr.T, Ul @ Vl.T, rtol=1e-9, atol=1e-12)

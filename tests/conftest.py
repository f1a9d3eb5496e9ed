import socket

import numpy as np
import pytest
import scipy.sparse as sp


def random_interactions(n_users, n_items, density, seed=0, *, all_items=True):
    """Binary CSR with every item used at least once (unless all_items=False)."""
    rng = np.random.default_rng(seed)
    X = sp.random(n_users, n_items, density=density, random_state=rng, format="csr", dtype=np.float32)
    X.data[:] = 1.0
    if all_items:
        X = X.tolil()
        for j in np.flatnonzero(np.asarray(X.sum(0)).ravel() == 0):
            X[rng.integers(n_users), j] = 1.0
        X = X.tocsr()
    X.sort_indices()
    return X


def clustered_interactions(n_users=400, n_items=60, n_clusters=4, p_in=0.5, p_out=0.03, seed=0):
    """Users in clusters that favour their own block of items: a spectrum with clear gaps."""
    rng = np.random.default_rng(seed)
    uc = rng.integers(0, n_clusters, n_users)
    ic = np.arange(n_items) % n_clusters
    prob = np.where(uc[:, None] == ic[None, :], p_in, p_out) * rng.uniform(0.5, 1.5, n_items)[None, :]
    X = (rng.random((n_users, n_items)) < prob).astype(np.float32)
    X[rng.integers(0, n_users, n_items), np.arange(n_items)] = 1.0
    return sp.csr_matrix(X)


@pytest.fixture(scope="session")
def client():
    """A real LocalCluster: two worker processes, one thread each, on loopback."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit="4GiB") as lc, Client(lc) as c:
        yield c


# --------------------------------------------------------------------------- stores on S3 (moto on loopback)

BUCKET = "edlae-test"


_SERVER = """
import logging, sys, time
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("listening", flush=True)
time.sleep(3600)
"""


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server in its own process on a free loopback port, one bucket; yields the options that reach it."""
    import subprocess
    import sys

    # hard imports, not importorskip: the `test` extra installs them, and a skipped S3 suite would pass unseen
    import boto3
    import moto.server  # noqa: F401
    import s3fs  # noqa: F401

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # a process of its own: in this one, the server's threads would compete for the GIL with the client's
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "listening"
        endpoint = f"http://127.0.0.1:{port}"
        keys = dict(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
        boto3.client("s3", endpoint_url=endpoint, **keys).create_bucket(Bucket=BUCKET)
        yield {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
               "client_kwargs": {"region_name": "us-east-1"}}
    finally:
        server.kill()
        server.wait(timeout=30)


@pytest.fixture
def url(request):
    """A fresh prefix in the bucket for each test."""
    return f"s3://{BUCKET}/{request.module.__name__}/{request.node.name}"


def recommendations(path, options=None):
    """User ids, recommended item ids and scores, read in this process (memory:// lives only here)."""
    from edlae_dask.io.recommendations import open_recommendations

    rec = open_recommendations(path, storage_options=options)
    return rec.user_ids, rec.item_ids[rec.items.compute(scheduler="threads")], rec.scores.compute(scheduler="threads")


def publish_factors(path, U, options, *, version_hook=None):
    """A factor version of U (V = U); ``version_hook(writer)`` runs after the arrays, before commit."""
    from edlae_dask.io.factors import FactorWriter

    w = FactorWriter(path, overwrite=True, storage_options=options)
    w.write_array("U", U)
    w.write_array("V", U)
    w.write_array("item_ids", np.arange(U.shape[0]))
    w.write_array("eigenvalues", np.ones(U.shape[1]))
    w.write_array("ritz_residuals", np.zeros(U.shape[1]))
    if version_hook is not None:
        version_hook(w)
    return w.commit(dict(k=U.shape[1], lam=1.0, p=0.0, dtype="float64"))

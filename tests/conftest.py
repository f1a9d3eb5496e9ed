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

"""Training through a real `dask scheduler` and two `dask worker` processes on loopback."""

import numpy as np
import pytest
from click.testing import CliRunner

from edlae_dask.cli import cli
from edlae_dask.io.factors import open_factors
from edlae_dask.io.interactions import write_interactions
from edlae_dask.io.recommendations import open_recommendations

from cluster_procs import dask_cluster
from conftest import clustered_interactions

pytestmark = pytest.mark.cluster


@pytest.fixture
def scheduler_address(tmp_path):
    with dask_cluster(tmp_path, n_workers=2) as cluster:
        yield cluster.address


def test_train_and_score_through_scheduler_and_worker_processes_equal_the_embedded_run(tmp_path, scheduler_address):
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
    for where, cluster in (("remote", scheduler_address), ("local", "threads")):
        scored = CliRunner().invoke(cli, ["score", "--factors", str(tmp_path / where), "--interactions", str(store),
                                          "--out", str(tmp_path / f"recs-{where}"), "--top-n", "5",
                                          "--cluster", cluster])
        assert scored.exit_code == 0, scored.output
    remote_recs = open_recommendations(tmp_path / "recs-remote")
    local_recs = open_recommendations(tmp_path / "recs-local")
    np.testing.assert_array_equal(remote_recs.items.compute(), local_recs.items.compute())
    np.testing.assert_allclose(remote_recs.scores.compute(), local_recs.scores.compute(), rtol=1e-5)


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    X = clustered_interactions(n_users=50, n_items=10, seed=1)
    write_interactions(tmp_path / "x.zarr", X)
    r = CliRunner().invoke(cli, ["train", "--interactions", str(tmp_path / "x.zarr"), "--out", str(tmp_path / "f"),
                                 "--k", "2", "--cluster", "tcp://127.0.0.1:1"])
    assert r.exit_code == 1 and "could not reach the Dask scheduler" in r.stderr


def _small_store(tmp_path):
    write_interactions(tmp_path / "x.zarr", clustered_interactions(n_users=80, n_items=12, seed=3), shard_size=40)
    return tmp_path / "x.zarr"


def test_cluster_scheduler_file_connects_to_the_scheduler_that_wrote_it(tmp_path):
    store = _small_store(tmp_path)
    with dask_cluster(tmp_path, n_workers=1) as cluster:
        r = CliRunner().invoke(cli, ["train", "--interactions", str(store), "--out", str(tmp_path / "f"), "--k", "2",
                                     "--cluster", f"scheduler-file:{cluster.scheduler_file}"])
        assert r.exit_code == 0, r.stderr[-3000:]
        assert f"cluster: scheduler {cluster.address}, 1 workers" in r.stderr
    assert open_factors(tmp_path / "f").k == 2


def test_dask_scheduler_address_is_used_when_no_cluster_is_given(tmp_path):
    store = _small_store(tmp_path)
    with dask_cluster(tmp_path, n_workers=1) as cluster:
        env = {"DASK_SCHEDULER_ADDRESS": cluster.address}
        r = CliRunner(env=env).invoke(cli, ["train", "--interactions", str(store), "--out", str(tmp_path / "f"),
                                            "--k", "2"])
        assert r.exit_code == 0, r.stderr[-3000:]
        assert "DASK_SCHEDULER_ADDRESS is set and no --cluster was given" in r.stderr
        assert f"cluster: scheduler {cluster.address}, 1 workers" in r.stderr
        # a --cluster given wins over the environment: here the threaded scheduler, so no cluster line at all
        r = CliRunner(env=env).invoke(cli, ["train", "--interactions", str(store), "--out", str(tmp_path / "g"),
                                            "--k", "2", "--cluster", "threads"])
        assert r.exit_code == 0, r.stderr[-3000:]
        assert "DASK_SCHEDULER_ADDRESS" not in r.stderr and "cluster: scheduler" not in r.stderr

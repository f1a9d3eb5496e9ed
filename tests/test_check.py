"""``--check``: what the run would do, found before any cluster starts, printed as a reusable spec.

The oracle of the memory lines is :mod:`edlae_dask.planning`'s arithmetic on the store's shape and the local
cluster's planned workers; of the printed spec, running it.
"""

import re

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from dask.utils import format_bytes

from edlae_dask.cli import cli
from edlae_dask.io.factors import open_factors
from edlae_dask.io.interactions import write_interactions
from edlae_dask.planning import dense_memory_estimate

from conftest import clustered_interactions

N_ITEMS = 40


def _invoke(*args, env=None):
    return CliRunner(env=env).invoke(cli, [str(a) for a in args])


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "x.zarr"
    write_interactions(path, clustered_interactions(n_users=120, n_items=N_ITEMS, seed=7), shard_size=50)
    return path


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail any attempt to build or reach a cluster: --check must not."""
    import edlae_dask.cluster as cluster

    def refuse(*args, **kwargs):
        raise AssertionError("--check started a cluster")

    monkeypatch.setattr(cluster, "make_cluster", refuse)
    monkeypatch.setattr(cluster, "_address_client", refuse)


def _notes(output: str) -> dict[str, str]:
    """The ``# key: text`` comment lines --check prints above the spec."""
    return dict(re.findall(r"^# (\w+): (.*)$", output, flags=re.M))


def test_check_prints_the_estimate_and_the_path_auto_chooses_on_the_local_cluster(tmp_path, store, no_cluster):
    r = _invoke("train", "--interactions", store, "--out", tmp_path / "f", "--k", 4, "--dtype", "float64",
                "--workers", 2, "--check")
    assert r.exit_code == 0, r.stderr
    notes = _notes(r.stdout)
    assert notes["interactions"].startswith(f"{store} holds 120 users x {N_ITEMS} items, ")
    need = format_bytes(dense_memory_estimate(N_ITEMS, 4, 8))
    assert notes["memory"].startswith(f"the dense path needs about {need}")
    assert "of 2 workers'" in notes["memory"]
    assert notes["path"] == "dense (auto would choose it)"
    assert notes["out"] == f"{tmp_path / 'f'} does not exist: it will be created"
    assert not (tmp_path / "f").exists()


def test_check_takes_the_scalable_path_where_the_dense_one_does_not_fit(tmp_path, no_cluster):
    import scipy.sparse as sp

    from edlae_dask.planning import scalable_memory_estimate

    n_users, n_items = 600, 4000  # many items, few interactions: the dense path's n² is what does not fit
    X = sp.random(n_users, n_items, density=0.003, random_state=np.random.default_rng(1), format="csr")
    X.data[:] = 1
    write_interactions(tmp_path / "wide.zarr", X)
    spec = tmp_path / "small.yaml"  # two planned workers of 100 MiB: 150 MiB usable, 75 MiB on each
    spec.write_text("kind: local\nn-workers: 2\nmemory-limit: 100MiB\n")
    assert dense_memory_estimate(n_items, 2, 8) > 0.75 * 2 * 100 * 2**20
    assert scalable_memory_estimate(n_items, n_users, X.nnz, 2, 4, 8, 2) < 0.75 * 100 * 2**20
    common = ["train", "--interactions", tmp_path / "wide.zarr", "--out", tmp_path / "f", "--k", 2, "--dtype",
              "float64", "--neighbors", 4, "--cluster", spec, "--check"]
    r = _invoke(*common)
    assert r.exit_code == 0, r.stderr
    notes = _notes(r.stdout)
    assert notes["path"] == "scalable (auto would choose it)"
    assert "on each worker of 75.00 MiB usable" in notes["memory"] and "the dense path would need" in notes["memory"]
    forced = _invoke(*common, "--path", "dense")  # the run's own error, as one line
    assert forced.exit_code == 1 and "the dense path needs about" in forced.stderr and forced.stdout == ""


def test_check_applies_the_output_rules(tmp_path, store, no_cluster):
    out = tmp_path / "f"
    assert _invoke("train", "--interactions", store, "--out", out, "--k", 3, "--cluster", "threads").exit_code == 0
    version = open_factors(out).version
    refused = _invoke("train", "--interactions", store, "--out", out, "--k", 3, "--check")
    assert refused.exit_code == 1 and "--overwrite" in refused.stderr and refused.stdout == ""
    ok = _invoke("train", "--interactions", store, "--out", out, "--k", 3, "--overwrite", "--check")
    assert ok.exit_code == 0 and _notes(ok.stdout)["out"].endswith("a new version will be published into it "
                                                                    "(--overwrite)")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    foreign = _invoke("train", "--interactions", store, "--out", tmp_path / "other", "--k", 3, "--check")
    assert foreign.exit_code == 1 and "is not an edlae-dask factor store" in foreign.stderr
    assert open_factors(out).version == version


def test_check_refuses_a_rank_the_store_cannot_have(tmp_path, store, no_cluster):
    r = _invoke("train", "--interactions", store, "--out", tmp_path / "f", "--k", N_ITEMS, "--check")
    assert r.exit_code == 1 and f"less than the number of items ({N_ITEMS})" in r.stderr


def test_check_on_a_scheduler_says_the_estimates_only(tmp_path, store, no_cluster):
    r = _invoke("train", "--interactions", store, "--out", tmp_path / "f", "--k", 4, "--cluster",
                "tcp://127.0.0.1:1", "--check")
    assert r.exit_code == 0, r.stderr
    notes = _notes(r.stdout)
    assert notes["memory"].startswith("the dense path needs about") and "the scalable path about" in notes["memory"]
    assert notes["path"].startswith("auto, chosen against the memory limits of the workers")


def test_dask_scheduler_address_is_the_default_cluster_and_a_given_one_wins(tmp_path, store, no_cluster):
    env = {"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:8786"}
    r = _invoke("train", "--interactions", store, "--out", tmp_path / "f", "--k", 4, "--check", env=env)
    assert r.exit_code == 0 and yaml.safe_load(r.stdout)["cluster"] == "tcp://127.0.0.1:8786"
    assert "DASK_SCHEDULER_ADDRESS is set and no --cluster was given" in r.stderr
    given = _invoke("train", "--interactions", store, "--out", tmp_path / "f", "--k", 4, "--cluster", "local",
                    "--check", env=env)
    assert given.exit_code == 0 and yaml.safe_load(given.stdout)["cluster"] == "local"
    bad = _invoke("train", "--interactions", store, "--out", tmp_path / "f", "--k", 4, "--check",
                  env={"DASK_SCHEDULER_ADDRESS": "scheduler:8786"})
    assert bad.exit_code == 1 and "DASK_SCHEDULER_ADDRESS" in bad.stderr and "tcp://" in bad.stderr


def test_the_printed_spec_runs_the_same_job_from_anywhere(tmp_path, store, monkeypatch):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "train.yaml").write_text("job: train\ninteractions: ../x.zarr\nout: ../f\nk: 3\ndtype: float64\n"
                                     "cluster: scheduler-file:sched.json\n")
    checked = _invoke("run", jobs / "train.yaml", "--check")
    assert checked.exit_code == 0, checked.stderr
    printed = yaml.safe_load(checked.stdout)
    assert printed["interactions"] == str(store) and printed["out"] == str(tmp_path / "f")
    assert printed["cluster"] == f"scheduler-file:{jobs / 'sched.json'}"  # relative to the spec file
    # the printed spec, saved elsewhere and run from another directory, is the same job
    elsewhere = tmp_path / "a" / "b"
    elsewhere.mkdir(parents=True)
    (elsewhere / "again.yaml").write_text(checked.stdout)
    monkeypatch.chdir(elsewhere)
    again = _invoke("run", "again.yaml", "--check")
    assert again.exit_code == 0 and yaml.safe_load(again.stdout) == printed
    ran = _invoke("run", "again.yaml", "--cluster", "threads")
    assert ran.exit_code == 0, ran.stderr
    f = open_factors(tmp_path / "f")
    assert f.k == 3 and f.meta["dtype"] == "float64" and np.isfinite(f.eigenvalues).all()


def test_check_of_ingest_and_evaluate_applies_their_output_rules(tmp_path, store, no_cluster):
    csv = tmp_path / "day.csv"
    csv.write_text("user,item\n1,10\n2,11\n")
    exists = _invoke("ingest", csv, "--out", store, "--check")
    assert exists.exit_code == 1 and "--overwrite" in exists.stderr and exists.stdout == ""
    replace = _invoke("ingest", csv, "--out", store, "--overwrite", "--check")
    assert replace.exit_code == 0 and _notes(replace.stdout)["out"] == f"{store} will be replaced (--overwrite)"
    new = _invoke("ingest", csv, "--out", tmp_path / "new.zarr", "--check")
    assert new.exit_code == 0 and _notes(new.stdout)["out"] == f"{tmp_path / 'new.zarr'} will be created"
    assert not (tmp_path / "new.zarr").exists()
    taken = _invoke("evaluate", "--interactions", store, "--k", 3, "--out", csv, "--check")
    assert taken.exit_code == 1 and "--overwrite" in taken.stderr

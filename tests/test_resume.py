"""Job loss: the Gram and the inverse are checkpointed, and a rerun with the same inputs reuses them."""

import json
import logging
import subprocess

import numpy as np
import pytest
import zarr
from distributed import get_task_stream

from edlae_dask.config import TrainParams
from edlae_dask.io.factors import open_factors
from edlae_dask.io.interactions import write_interactions
from edlae_dask.pipeline import train

from cluster_procs import LineWatcher, dask_cluster, edlae_cmd, kill_group, spawn
from conftest import clustered_interactions

PARAMS = TrainParams(k=4, lam=3.0, p=0.2, dtype="float64", block_size=16, seed=5, path="dense")
# tasks of the stages a checkpoint replaces (see edlae_dask.gram and edlae_dask.linalg.inverse)
RECOMPUTING = ("edlae-gram-part-", "edlae-cholesky-", "edlae-trtri-", "edlae-inverse-")


@pytest.fixture
def store(tmp_path):
    return write_interactions(tmp_path / "x.zarr", clustered_interactions(n_users=300, n_items=50, seed=21),
                              shard_size=60)


def _uvt(result):
    return result.U.compute() @ result.V.compute().T


def _checkpoint(stage, result):
    return result.stages[stage]["detail"].get("checkpoint")


def test_a_rerun_reuses_both_checkpoints_and_runs_no_gram_or_cholesky_task(store, tmp_path, client, caplog):
    undisturbed = train(store, params=PARAMS, client=client)
    first = train(store, params=PARAMS, client=client, checkpoint_dir=tmp_path / "ck")
    assert (_checkpoint("gram", first), _checkpoint("inverse", first)) == ("written", "written")
    with caplog.at_level(logging.INFO, logger="edlae_dask"), get_task_stream(client) as tasks:
        rerun = train(store, params=PARAMS, client=client, checkpoint_dir=tmp_path / "ck")
    assert (_checkpoint("gram", rerun), _checkpoint("inverse", rerun)) == ("reused", "reused")
    assert "reusing gram checkpoint" in caplog.text and "reusing inverse checkpoint" in caplog.text
    ran = {t["key"][0] if isinstance(t["key"], tuple) else t["key"] for t in tasks.data}
    assert ran and not [k for k in ran if k.startswith(RECOMPUTING)]
    np.testing.assert_allclose(_uvt(rerun), _uvt(undisturbed), rtol=1e-10, atol=1e-12)


def test_another_k_reuses_both_but_another_lambda_recomputes_the_inverse_only(store, tmp_path):
    train(store, params=PARAMS, checkpoint_dir=tmp_path / "ck")
    other_k = train(store, params=TrainParams(**{**PARAMS.__dict__, "k": 3}), checkpoint_dir=tmp_path / "ck")
    assert (_checkpoint("gram", other_k), _checkpoint("inverse", other_k)) == ("reused", "reused")
    other_lam = TrainParams(**{**PARAMS.__dict__, "lam": 7.0})
    resumed = train(store, params=other_lam, checkpoint_dir=tmp_path / "ck")
    assert (_checkpoint("gram", resumed), _checkpoint("inverse", resumed)) == ("reused", "written")
    np.testing.assert_allclose(_uvt(resumed), _uvt(train(store, params=other_lam)), rtol=1e-10, atol=1e-12)


def test_changed_interactions_recompute_both(store, tmp_path):
    train(store, params=PARAMS, checkpoint_dir=tmp_path / "ck")
    X = store.to_scipy().tolil()
    X[0, 1] = 1.0 - X[0, 1]  # one interaction more or less
    changed = write_interactions(tmp_path / "y.zarr", X.tocsr(), shard_size=60)
    resumed = train(changed, params=PARAMS, checkpoint_dir=tmp_path / "ck")
    assert (_checkpoint("gram", resumed), _checkpoint("inverse", resumed)) == ("written", "written")
    np.testing.assert_allclose(_uvt(resumed), _uvt(train(changed, params=PARAMS)), rtol=1e-10, atol=1e-12)


def _tamper_fingerprint(path):
    zarr.open_group(str(path), mode="r+", zarr_format=3).attrs["fingerprint"] = "0" * 64


def _drop_a_chunk(path):
    chunk = sorted(p for p in (path / "C" / "c").rglob("*") if p.is_file())[-1]
    chunk.unlink()


def _make_object_typed(path):
    meta = path / "diag_c" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["data_type"] = "string"
    doc["codecs"] = [{"name": "vlen-utf8"}]
    meta.write_text(json.dumps(doc))


@pytest.mark.parametrize("damage", [_tamper_fingerprint, _drop_a_chunk, _make_object_typed])
def test_a_checkpoint_that_does_not_match_or_is_damaged_is_recomputed(store, tmp_path, damage, caplog):
    train(store, params=PARAMS, checkpoint_dir=tmp_path / "ck")
    [inverse_dir] = (tmp_path / "ck").glob("inverse-*")
    damage(inverse_dir)
    with caplog.at_level(logging.WARNING, logger="edlae_dask"):
        resumed = train(store, params=PARAMS, checkpoint_dir=tmp_path / "ck")
    assert "ignoring the inverse checkpoint" in caplog.text
    assert (_checkpoint("gram", resumed), _checkpoint("inverse", resumed)) == ("reused", "written")
    np.testing.assert_allclose(_uvt(resumed), _uvt(train(store, params=PARAMS)), rtol=1e-10, atol=1e-12)


@pytest.mark.cluster
def test_a_training_job_killed_after_its_checkpoints_resumes_from_them(store, tmp_path):
    args = ["train", "--interactions", store.path, "--out", str(tmp_path / "factors"), "--k", "4", "--lam", "3",
            "--p", "0.2", "--dtype", "float64", "--block-size", "16", "--seed", "5", "--path", "dense",
            "--checkpoint-dir", str(tmp_path / "ck")]
    with dask_cluster(tmp_path, n_workers=2) as cluster:
        job = spawn(edlae_cmd(*args, "--cluster", cluster.address), stderr=subprocess.PIPE, text=True)
        try:
            log = LineWatcher(job.stderr)
            assert log.wait_for("inverse checkpoint written"), log.text()
            kill_group(job)  # kill -9 of the job (and anything it started)
            job.wait(timeout=30)
        finally:
            kill_group(job)
        assert not (tmp_path / "factors" / "LATEST").exists(), "the job published before it was killed"
        rerun = subprocess.run(edlae_cmd(*args, "--cluster", cluster.address), capture_output=True, text=True,
                               timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "reusing gram checkpoint" in rerun.stderr and "reusing inverse checkpoint" in rerun.stderr
    assert "checkpoint written" not in rerun.stderr
    f = open_factors(tmp_path / "factors")
    assert {s: f.meta["stages"][s]["detail"]["checkpoint"] for s in ("gram", "inverse")} == {
        "gram": "reused", "inverse": "reused"}
    U, V = f.load()
    np.testing.assert_allclose(U @ V.T, _uvt(train(store, params=PARAMS)), rtol=1e-10, atol=1e-12)

"""Stores addressed by fsspec URLs: a real S3-compatible object store on loopback, and memory://.

The object store is moto's S3 server (an HTTP server in its own process, bound to
127.0.0.1), reached through s3fs. Its endpoint and keys are given only as storage options, never
through the environment, so a worker process that reads a store does so with the
URL and options its task carries. The reference for every result is the same job
run on local paths, which the other test modules check against the numpy oracle.
"""

import json
import threading

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from edlae_dask.cli import cli
from edlae_dask.config import TrainParams
from edlae_dask.errors import StoreFormatError
from edlae_dask.ingestion import ingest
from edlae_dask.io.factors import FactorWriter, list_versions, open_factors
from edlae_dask.io.interactions import open_interactions, write_interactions
from edlae_dask.io.recommendations import open_recommendations
from edlae_dask.pipeline import train
from edlae_dask.scoring import score

from conftest import publish_factors, random_interactions, recommendations

PARAMS = TrainParams(k=4, lam=2.0, p=0.2, dtype="float64", block_size=12, path="dense", seed=3)
def objects(prefix, options):
    """Every object under ``prefix``: key -> ETag (changes whenever the object is written)."""
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.invalidate_cache()
    return {k: v["ETag"] for k, v in fs.find(prefix.replace("s3://", ""), detail=True).items()}


def write_csv(path, X):
    coo = X.tocoo()
    pd.DataFrame({"user": coo.row + 1, "item": coo.col + 1, "rating": 1}).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- the pipeline on s3


def test_ingest_train_score_on_s3_through_worker_processes_equal_the_run_on_local_paths(s3, url, client, tmp_path):
    X = random_interactions(80, 24, 0.15, seed=5)
    csv = write_csv(tmp_path / "x.csv", X)
    local = dict(x=str(tmp_path / "x.zarr"), f=str(tmp_path / "f"), r=str(tmp_path / "r"))
    remote = dict(x=f"{url}/x.zarr", f=f"{url}/f", r=f"{url}/r", ck=f"{url}/ck")
    options = json.dumps(s3)
    for where in (local, remote):
        flags = ["--storage-options", options] if where is remote else []
        run = CliRunner().invoke(cli, ["ingest", str(csv), "--out", where["x"], "--shard-size", "40", *flags])
        assert run.exit_code == 0, run.output
    assert open_interactions(remote["x"], storage_options=s3).fingerprint == open_interactions(local["x"]).fingerprint

    train(local["x"], params=PARAMS, client=client, out=local["f"])
    got = train(remote["x"], params=PARAMS, client=client, out=remote["f"], checkpoint_dir=remote["ck"],
                storage_options=s3)
    U_ref, V_ref = open_factors(local["f"]).load()
    U, V = open_factors(remote["f"], storage_options=s3).load()
    np.testing.assert_allclose(U, U_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(V, V_ref, rtol=1e-10, atol=1e-12)
    assert got.stages["gram"]["detail"]["checkpoint"] == "written"
    for store, kind in ((remote["f"], "factors"), (remote["x"], "interactions")):
        about = CliRunner().invoke(cli, ["info", store, "--storage-options", options])
        assert about.exit_code == 0, about.output
        assert json.loads(about.output)["kind"] == kind

    score(local["f"], local["x"], local["r"], top_n=6, client=client)
    report = score(remote["f"], remote["x"], remote["r"], top_n=6, client=client, storage_options=s3)
    assert report.published and report.n_shards_scored == 2
    ids_ref, items_ref, scores_ref = recommendations(local["r"])
    ids, items, scores = recommendations(remote["r"], s3)
    np.testing.assert_array_equal(ids, ids_ref)
    np.testing.assert_array_equal(items, items_ref)
    np.testing.assert_allclose(scores, scores_ref, rtol=1e-6)


def test_evaluate_on_s3_through_worker_processes_reports_what_it_reports_on_the_local_store(s3, url, client, tmp_path):
    from edlae_dask.evaluation import evaluate

    X = random_interactions(120, 20, 0.25, seed=7)
    write_interactions(tmp_path / "x.zarr", X, shard_size=50)
    write_interactions(f"{url}/x.zarr", X, shard_size=50, storage_options=s3)
    args = dict(models="edlae,full-rank", ks=[3], lams=[2.0], ps=[0.2], n_valid=30, n_test=30, seed=1,
                dtype="float64", block_size=12, client=client)
    ref = evaluate(str(tmp_path / "x.zarr"), **args)
    got = evaluate(f"{url}/x.zarr", storage_options=s3, **args)
    assert [(r.model, r.k) for r in got.rows] == [(r.model, r.k) for r in ref.rows]
    for r, r_ref in zip(got.rows, ref.rows):
        assert r.test["ndcg@100"].mean == pytest.approx(r_ref.test["ndcg@100"].mean, abs=1e-12)
        assert r.test["ndcg@100"].n == r_ref.test["ndcg@100"].n > 0


def test_an_interrupted_scoring_run_on_s3_is_finished_by_the_rerun_and_a_rerun_with_nothing_new_writes_nothing(
        s3, url):
    X = random_interactions(40, 10, 0.3, seed=2)
    write_interactions(f"{url}/x.zarr", X, shard_size=20, storage_options=s3)
    publish_factors(f"{url}/f", np.random.default_rng(0).standard_normal((10, 3)), s3)
    partial = score(f"{url}/f", f"{url}/x.zarr", f"{url}/r", top_n=3, storage_options=s3, shards=[0])
    assert not partial.published
    with pytest.raises(StoreFormatError, match="scoring run has not finished"):
        open_recommendations(f"{url}/r", storage_options=s3)
    first = score(f"{url}/f", f"{url}/x.zarr", f"{url}/r", top_n=3, storage_options=s3)
    assert first.published and (first.n_shards_scored, first.n_shards_skipped) == (1, 1)
    before = objects(f"{url}/r", s3)
    args = ["score", "--factors", f"{url}/f", "--interactions", f"{url}/x.zarr", "--out", f"{url}/r", "--top-n", "3",
            "--cluster", "threads", "--storage-options", json.dumps(s3)]
    run = CliRunner().invoke(cli, args)
    assert run.exit_code == 0, run.output
    assert "scored 0 of 40 users" in run.output and "already complete" in run.output
    assert objects(f"{url}/r", s3) == before


def test_two_scoring_runs_at_once_on_s3_publish_the_single_run_result(s3, url, tmp_path):
    X = random_interactions(60, 12, 0.25, seed=4)
    write_interactions(f"{url}/x.zarr", X, shard_size=20, storage_options=s3)
    U = np.random.default_rng(1).standard_normal((12, 3))
    publish_factors(f"{url}/f", U, s3)
    start = threading.Barrier(2)
    reports, errors = [], []

    def one_run():
        try:
            start.wait()
            reports.append(score(f"{url}/f", f"{url}/x.zarr", f"{url}/r", top_n=4, storage_options=s3))
        except Exception as exc:  # reported below
            errors.append(exc)

    runs = [threading.Thread(target=one_run) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert errors == [] and all(r.published for r in reports)
    write_interactions(tmp_path / "x.zarr", X, shard_size=20)
    publish_factors(tmp_path / "f", U, None)
    score(tmp_path / "f", tmp_path / "x.zarr", tmp_path / "r", top_n=4)
    for got, ref in zip(recommendations(f"{url}/r", s3), recommendations(tmp_path / "r")):
        np.testing.assert_array_equal(got, ref)


# --------------------------------------------------------------------------- publishing without rename


def test_a_reader_sees_the_previous_version_while_a_publish_is_under_way_and_after_it_dies(s3, url):
    rng = np.random.default_rng(0)
    U1, U2 = rng.standard_normal((10, 2)), rng.standard_normal((10, 2))
    v1 = publish_factors(f"{url}/f", U1, s3)
    seen = {}

    class Killed(BaseException):
        """The publishing process dies: no clean-up runs."""

    def read_then_die(writer):
        seen["while writing"] = open_factors(f"{url}/f", storage_options=s3)
        writer.group.attrs["complete"] = True  # the version is whole; only LATEST is left to move
        raise Killed

    with pytest.raises(Killed):
        publish_factors(f"{url}/f", U2, s3, version_hook=read_then_die)
    after = open_factors(f"{url}/f", storage_options=s3)
    assert seen["while writing"].version == after.version == v1
    np.testing.assert_array_equal(after.load()[0], U1)
    assert len(list_versions(f"{url}/f", storage_options=s3)) == 2  # the dead publish's version is there, unnamed
    v3 = publish_factors(f"{url}/f", U2, s3)
    assert open_factors(f"{url}/f", storage_options=s3).version == v3 != v1


def test_pruning_counts_complete_versions_only_and_keeps_the_previous_latest():
    # memory:// behaves like object storage here (versions written under their final names)
    root = "memory://prune-test/f"
    U = np.ones((6, 2))

    def dies(writer):
        raise KeyboardInterrupt  # a killed publish: its incomplete version stays, unnamed

    v1 = publish_factors(root, U, None)
    dead = []
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            publish_factors(root, U, None, version_hook=lambda w: (dead.append(w.version), dies(w)))
    v4 = publish_factors(root, U, None)
    # two incomplete versions must not push v1 (LATEST until just now) out of keep = 3
    assert list_versions(root) == [v1, *dead, v4]
    assert open_factors(root, v1).version == v1
    v5, v6 = publish_factors(root, U, None), publish_factors(root, U, None)
    # keep = 3 complete ones; the dead publishes, older than all of them, go with v1
    assert list_versions(root) == [v4, v5, v6]


def test_a_factor_version_without_its_marker_is_not_opened(s3, url):
    U = np.ones((6, 2))
    publish_factors(f"{url}/f", U, s3)
    w = FactorWriter(f"{url}/f", overwrite=True, storage_options=s3)
    w.write_array("U", U)  # and then the writer dies: no "complete" marker
    with pytest.raises(StoreFormatError, match="incomplete"):
        open_factors(f"{url}/f", w.version, storage_options=s3)


def test_an_ingest_killed_before_its_publish_leaves_nothing_readable_and_its_rerun_needs_no_overwrite(s3, url):
    import zarr

    X = random_interactions(20, 8, 0.3, seed=3)
    # what an ingest killed before its publish leaves: an attempt of its own, which CURRENT does not name
    dead = zarr.open_group(f"{url}/x.zarr/attempts/20260101T000000000000Z-0000dead", mode="w", zarr_format=3,
                           storage_options=s3)
    dead.attrs.update(format="edlae-dask/interactions", format_version=1)
    with pytest.raises(StoreFormatError, match="no interaction store is published .* yet"):
        open_interactions(f"{url}/x.zarr", storage_options=s3)
    store = write_interactions(f"{url}/x.zarr", X, shard_size=10, storage_options=s3)  # no overwrite needed
    assert (open_interactions(f"{url}/x.zarr", storage_options=s3).to_scipy() != X).nnz == 0
    assert store.path == f"{url}/x.zarr"


def test_a_pickled_array_on_s3_is_refused_unread(s3, url):
    import s3fs

    publish_factors(f"{url}/f", np.ones((4, 2)), s3)
    version = open_factors(f"{url}/f", storage_options=s3).version
    fs = s3fs.S3FileSystem(**s3)
    meta_key = f"{url}/f/versions/{version}/U/zarr.json".replace("s3://", "")
    meta = json.loads(fs.cat_file(meta_key))
    meta["codecs"] = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "numcodecs.pickle"}]
    fs.pipe_file(meta_key, json.dumps(meta).encode())
    with pytest.raises(StoreFormatError, match="U"):
        open_factors(f"{url}/f", storage_options=s3)


def test_a_bad_url_or_storage_options_is_a_clear_error(tmp_path):
    X = random_interactions(10, 4, 0.5, seed=0)
    run = CliRunner().invoke(cli, ["ingest", str(write_csv(tmp_path / "x.csv", X)), "--out", "memory://bad",
                                   "--storage-options", "[1, 2]"])
    assert run.exit_code == 2 and "storage options must be a JSON object" in run.output
    with pytest.raises(StoreFormatError, match="no factor store at memory://nothing-here"):
        open_factors("memory://nothing-here")


# --------------------------------------------------------------------------- memory://


def test_memory_urls_work_with_the_threaded_scheduler_and_checkpoints_there_are_reused(tmp_path):
    X = random_interactions(50, 16, 0.2, seed=6)
    csv = write_csv(tmp_path / "x.csv", X)
    ref = dict(x=tmp_path / "x.zarr", f=tmp_path / "f", r=tmp_path / "r")
    mem = dict(x="memory://edlae/x.zarr", f="memory://edlae/f", r="memory://edlae/r", ck="memory://edlae/ck")
    for where in (ref, mem):
        ingest(str(csv), where["x"], shard_size=20, overwrite=True)
        train(where["x"], params=PARAMS, out=where["f"], overwrite=True, checkpoint_dir=where.get("ck"))
        score(where["f"], where["x"], where["r"], top_n=5)
    ids, items, scores = recommendations(mem["r"])
    ids_ref, items_ref, scores_ref = recommendations(ref["r"])
    np.testing.assert_array_equal(ids, ids_ref)
    np.testing.assert_array_equal(items, items_ref)
    np.testing.assert_allclose(scores, scores_ref, rtol=1e-6)
    again = train(mem["x"], params=PARAMS, out=mem["f"], overwrite=True, checkpoint_dir=mem["ck"])
    assert (again.stages["gram"]["detail"]["checkpoint"], again.stages["inverse"]["detail"]["checkpoint"]) == (
        "reused", "reused")
    np.testing.assert_array_equal(open_factors(mem["f"]).load()[0], open_factors(ref["f"]).load()[0])


def test_a_job_spec_takes_store_urls_and_storage_options_as_a_mapping(tmp_path):
    spec = tmp_path / "score.yaml"
    spec.write_text("job: score\nfactors: s3://bucket/factors\ninteractions: s3://bucket/x.zarr\n"
                    "out: s3://bucket/recs\nstorage-options: {endpoint_url: 'http://127.0.0.1:9000', anon: false, "
                    "key: AKIA-PLAIN, secret: s3cr3t-PLAIN, client_kwargs: {region_name: eu-west-1}}\n")
    run = CliRunner().invoke(cli, ["run", str(spec), "--check"])
    assert run.exit_code == 0, run.output
    assert "out: s3://bucket/recs" in run.output and "endpoint_url: http://127.0.0.1:9000" in run.output
    # credentials are masked in what --check prints (it lands in logs); the rest is shown
    assert "PLAIN" not in run.output and "key: '***'" in run.output and "region_name: eu-west-1" in run.output
    spec.write_text("job: score\nfactors: s3://bucket/factors\ninteractions: s3://bucket/x.zarr\n"
                    "out: s3://bucket/recs\nstorage-options: [endpoint_url, anon]\n")
    bad = CliRunner().invoke(cli, ["run", str(spec), "--check"])
    assert bad.exit_code == 1 and "'storage-options' must be a mapping or a string" in bad.output


def test_each_task_of_the_scalable_path_reads_only_its_own_shard_from_s3(s3, url):
    import logging
    import re

    import dask
    from dask.callbacks import Callback

    from edlae_dask.diagnostics import StageLog
    from edlae_dask.runtime import StageContext
    from edlae_dask.scalable.pipeline import run_scalable

    X = random_interactions(150, 30, 0.15, seed=31)
    write_interactions(f"{url}/x.zarr", X, shard_size=30, storage_options=s3)
    store = open_interactions(f"{url}/x.zarr", storage_options=s3)
    assert store.n_shards == 5
    running, reads = [None], []

    class Current(Callback):  # the synchronous scheduler runs one task at a time, in this thread
        def _pretask(self, key, dsk, state):
            running[0] = key

        def _posttask(self, key, result, dsk, state, worker_id):
            running[0] = None

    class Requests(logging.Handler):  # every S3 call s3fs makes, logged by s3fs itself
        def emit(self, record):
            found = re.search(r"'Key': '[^']*/shards/(\d+)/", record.getMessage())
            if found:
                reads.append((running[0], int(found.group(1))))

    s3fs_log = logging.getLogger("s3fs")
    handler, level = Requests(), s3fs_log.level
    s3fs_log.addHandler(handler)
    s3fs_log.setLevel(logging.DEBUG)
    try:
        with Current(), dask.config.set(scheduler="sync"):
            run_scalable(store, TrainParams(k=3, lam=2.0, p=0.2, path="scalable", neighbors=6),
                         StageContext(client=None, stages=StageLog(None), n_workers=2))
    finally:
        s3fs_log.removeHandler(handler)
        s3fs_log.setLevel(level)
    by_task = {}
    for key, shard in reads:
        by_task.setdefault(str(key), set()).add(shard)
    assert set().union(*by_task.values()) == set(range(5))  # every shard was read …
    assert all(k.startswith("edlae-load-shard-") for k in by_task)  # … by the tasks that load a shard …
    assert sorted(len(s) for s in by_task.values()) == [1] * 5  # … one shard each, each shard by one task

"""No command destroys data it did not make: refusals, lock files, interrupted replaces, leftovers.

Each test is one behaviour, and checks the exit status, the one-line message (no
traceback) and that what was there before is unchanged, byte for byte.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner

from edlae_dask import pipeline
from edlae_dask.cli import cli
from edlae_dask.errors import ModelFitError
from edlae_dask.io.factors import FactorWriter, list_versions, open_factors
from edlae_dask.io.interactions import claim_output, open_interactions, write_interactions

from conftest import clustered_interactions

SMALL = ["--k", "3", "--cluster", "threads"]


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _refused(r, *words) -> str:
    """The one error line of a run that exited with status 1; it must name each of ``words``."""
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert "Traceback" not in r.output and isinstance(r.exception, SystemExit), r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr  # one line, the last thing said
    for word in words:
        assert str(word) in errors[0], (word, errors[0])
    return errors[0]


def _snapshot(path: Path) -> dict:
    """Every file under ``path`` (or ``path`` itself) with its bytes, and every folder (as None)."""
    path = Path(path)
    if not path.is_dir():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): (None if p.is_dir() else p.read_bytes()) for p in sorted(path.rglob("*"))}


@pytest.fixture
def csv(tmp_path):
    X = clustered_interactions(n_users=150, n_items=32, seed=4).tocoo()
    path = tmp_path / "ratings.csv"
    pd.DataFrame({"user": X.row, "item": X.col, "rating": 1.0}).to_csv(path, index=False)
    return path


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "x.zarr"
    write_interactions(path, clustered_interactions(n_users=150, n_items=32, seed=4), shard_size=50)
    return path


@pytest.fixture
def factors(tmp_path, store):
    path = tmp_path / "f"
    assert _run("train", "--interactions", store, "--out", path, *SMALL).exit_code == 0
    return path


def _score(factors, store, out) -> list:
    return ["score", "--factors", factors, "--interactions", store, "--out", out, "--top-n", 5, "--cluster", "threads"]


def _foreign_dir(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("mine, not edlae-dask's")
    return path


# --------------------------------------------------------------------------- demo


def test_demo_refuses_a_directory_it_did_not_make(tmp_path):
    work = _foreign_dir(tmp_path / "work")
    before = _snapshot(work)
    _refused(_run("demo", "--workdir", work, "--users", 100, "--items", 20, *SMALL), work, "notes.txt", "--workdir")
    assert _snapshot(work) == before  # not even a marker added


def test_demo_refuses_something_else_in_place_of_its_own_outputs(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / ".edlae-demo").write_text("made by an earlier demo")
    _foreign_dir(work / "factors")  # not a factor store: someone's own folder under the demo's name
    before = _snapshot(work)
    _refused(_run("demo", "--workdir", work, "--users", 100, "--items", 20, *SMALL), "'factors'", "--workdir")
    assert _snapshot(work) == before


def test_demo_refuses_a_file_as_its_work_directory(tmp_path):
    work = tmp_path / "work"
    work.write_text("a file")
    _refused(_run("demo", "--workdir", work, "--users", 100, "--items", 20, *SMALL), "not a directory")
    assert work.read_text() == "a file"


def test_demo_replaces_its_own_outputs_on_a_rerun(tmp_path):
    work = tmp_path / "work"
    args = ["demo", "--workdir", work, "--users", 300, "--items", 40, *SMALL]
    r = _run(*args)
    assert r.exit_code == 0, r.output
    first = open_factors(work / "factors").version
    r = _run(*args, "--seed", 1)
    assert r.exit_code == 0, r.output
    assert open_factors(work / "factors").version != first
    assert sorted(p.name for p in work.iterdir()) == [".edlae-demo", "factors", "interactions.csv.gz",
                                                      "interactions.zarr"]


# --------------------------------------------------------------------------- evaluate --out


@pytest.fixture
def no_evaluation(monkeypatch):
    """The evaluation must not start: the output is checked before it."""
    import edlae_dask.evaluation

    def evaluate(*args, **kwargs):
        raise AssertionError("the evaluation ran before --out was checked")

    monkeypatch.setattr(edlae_dask.evaluation, "evaluate", evaluate)


EVALUATE = ["--k", "2", "--lam", "10", "--p", "0.25", "--models", "edlae", "--cluster", "threads"]


def test_evaluate_refuses_an_existing_report_before_evaluating(tmp_path, store, no_evaluation):
    report = tmp_path / "eval.json"
    report.write_text('{"mine": true}')
    _refused(_run("evaluate", "--interactions", store, *EVALUATE, "--out", report), report, "--overwrite")
    assert report.read_text() == '{"mine": true}'


def test_evaluate_refuses_a_directory_as_its_report_even_with_overwrite(tmp_path, store, no_evaluation):
    folder = _foreign_dir(tmp_path / "reports")
    before = _snapshot(folder)
    _refused(_run("evaluate", "--interactions", store, *EVALUATE, "--out", folder, "--overwrite"), folder,
             "is a directory")
    assert _snapshot(folder) == before


def test_evaluate_refuses_a_report_whose_folder_cannot_be_made_before_evaluating(tmp_path, store, no_evaluation):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the report's folder should be")
    _refused(_run("evaluate", "--interactions", store, *EVALUATE, "--out", blocker / "eval.json"), blocker,
             "a file where a directory is expected")
    assert blocker.read_text() == "a file where the report's folder should be"


def test_evaluate_with_overwrite_replaces_the_report_whole(tmp_path, store):
    report = tmp_path / "eval.json"
    report.write_text('{"mine": true}')
    r = _run("evaluate", "--interactions", store, *EVALUATE, "--out", report, "--overwrite")
    assert r.exit_code == 0, r.output
    rows = json.loads(report.read_text())["rows"]
    assert [r["model"] for r in rows][:2] == ["popularity", "edlae"]  # the baseline row first, then the model
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".eval.json")) == []  # no temporary


# --------------------------------------------------------------------------- other outputs: refused without --overwrite


def test_ingest_refuses_an_existing_store_without_overwrite(tmp_path, csv, store):
    before = _snapshot(store)
    _refused(_run("ingest", csv, "--out", store), store, "--overwrite")
    assert _snapshot(store) == before


def test_ingest_never_replaces_a_folder_that_is_not_a_store_even_with_overwrite(tmp_path, csv):
    out = _foreign_dir(tmp_path / "x.zarr")
    before = _snapshot(out)
    _refused(_run("ingest", csv, "--out", out, "--overwrite"), out, "not an edlae-dask interaction store")
    assert _snapshot(out) == before


def test_train_refuses_an_existing_factor_store_without_overwrite(store, factors):
    before = _snapshot(factors)
    _refused(_run("train", "--interactions", store, "--out", factors, *SMALL), factors, "--overwrite")
    assert _snapshot(factors) == before


def test_train_never_writes_into_a_folder_that_is_not_a_factor_store_even_with_overwrite(tmp_path, store):
    out = _foreign_dir(tmp_path / "f")
    before = _snapshot(out)
    _refused(_run("train", "--interactions", store, "--out", out, "--overwrite", *SMALL), out,
             "not an edlae-dask factor store")
    assert _snapshot(out) == before


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_score_never_replaces_what_is_not_a_recommendations_store(tmp_path, store, factors, kind):
    out = _foreign_dir(tmp_path / "recs") if kind == "folder" else tmp_path / "recs"
    if kind == "file":
        out.write_text("mine")
    before = _snapshot(out)
    _refused(_run(*_score(factors, store, out)), out, "not an edlae-dask recommendations store")
    assert _snapshot(out) == before


# --------------------------------------------------------------------------- lock files never followed


@pytest.mark.parametrize("command", ["score", "train", "ingest"])
def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_what_it_points_to_is_untouched(tmp_path, csv, store,
                                                                                          factors, command):
    victim = tmp_path / "precious.txt"
    victim.write_text("must not be truncated")
    out = {"score": tmp_path / "recs", "train": tmp_path / "f2", "ingest": tmp_path / "y.zarr"}[command]
    lock = out.parent / f".{out.name}.lock"
    lock.symlink_to(victim)
    args = {"score": _score(factors, store, out),
            "train": ["train", "--interactions", store, "--out", out, *SMALL],
            "ingest": ["ingest", csv, "--out", out]}[command]
    _refused(_run(*args), lock, "symbolic link")
    assert victim.read_text() == "must not be truncated"
    assert lock.is_symlink() and not out.exists()


# --------------------------------------------------------------------------- an ingest killed between its renames

_KILLED_BETWEEN_RENAMES = """
import os, signal, sys
rename = os.rename
def rename_then_die(src, dst, *args, **kwargs):
    rename(src, dst, *args, **kwargs)
    if ".old-" in os.path.basename(dst):  # the old store is aside, the new one not yet in place
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = rename_then_die
from edlae_dask.cli import main
sys.argv = ["edlae-dask", "ingest", *sys.argv[1:]]
main()
"""


@pytest.fixture
def killed_between_renames(tmp_path, csv):
    """An ingest --overwrite of new data, SIGKILLed between moving the old store aside and the new one in."""
    out = tmp_path / "x.zarr"
    assert _run("ingest", csv, "--out", out).exit_code == 0
    before = _snapshot(out), open_interactions(out).fingerprint
    X = clustered_interactions(n_users=90, n_items=20, seed=9).tocoo()
    newer = tmp_path / "newer.csv"
    pd.DataFrame({"user": X.row, "item": X.col, "rating": 1.0}).to_csv(newer, index=False)
    r = subprocess.run([sys.executable, "-c", _KILLED_BETWEEN_RENAMES, str(newer), "--out", str(out), "--overwrite"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not out.exists() and list(tmp_path.glob(".x.zarr.old-*")), "not killed between the renames"
    return out, newer, before


def test_an_ingest_killed_between_its_renames_is_recovered_by_the_next_run(tmp_path, csv, killed_between_renames):
    out, _, (files, fingerprint) = killed_between_renames
    r = _run("ingest", csv, "--out", out)  # no --overwrite: it puts the old store back, then refuses to replace it
    _refused(r, out, "--overwrite")
    assert "recovered" in r.stderr
    assert _snapshot(out) == files and open_interactions(out).fingerprint == fingerprint
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".x.zarr")) == []  # nothing left over


def test_an_ingest_killed_between_its_renames_is_replaced_by_the_next_overwrite(tmp_path, killed_between_renames):
    out, newer, (_, fingerprint) = killed_between_renames
    r = _run("ingest", newer, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    new = open_interactions(out)
    assert new.n_items == 20 and new.n_users < 150 and new.fingerprint != fingerprint
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".x.zarr")) == []


# --------------------------------------------------------------------------- leftovers of killed runs


def _group(path: Path, **attrs) -> Path:
    zarr.open_group(str(path), mode="w", zarr_format=3).attrs.update(attrs)
    return path


def test_a_killed_publishs_leftovers_are_removed_by_the_next_train(store, factors):
    published = open_factors(factors)
    kept = _snapshot(factors / "versions" / published.version)
    tmp_version = _group(factors / "versions" / ".tmp-v20200101T000000000000Z-abcdef", format="edlae-dask/factors")
    tmp_latest = factors / f".LATEST.tmp-{'0' * 32}"
    tmp_latest.write_text("v20200101T000000000000Z-abcdef\n")
    r = _run("train", "--interactions", store, "--out", factors, "--overwrite", *SMALL)
    assert r.exit_code == 0, r.output
    assert not tmp_version.exists() and not tmp_latest.exists()
    assert _snapshot(factors / "versions" / published.version) == kept  # the previous version, still whole
    assert not (factors.parent / ".f.lock").exists()


def test_a_running_writers_temporary_version_is_left_alone(store, factors):
    with FactorWriter(factors, overwrite=True) as running:  # another run, still writing its version
        running.write_array("U", np.ones((32, 3)))
        r = _run("train", "--interactions", store, "--out", factors, "--overwrite", *SMALL)
        assert r.exit_code == 0, r.output
        assert Path(running.url).is_dir()
        for name, x in (("V", np.ones((32, 3))), ("item_ids", np.arange(32)), ("eigenvalues", np.ones(3))):
            running.write_array(name, x)
        version = running.commit({"k": 3})
    assert open_factors(factors).version == version and len(list_versions(factors)) == 3


def test_a_killed_ingests_leftovers_are_removed_by_the_next_ingest(tmp_path, csv, store):
    tmp_store = _group(tmp_path / f".x.zarr.tmp-{'1' * 32}", format="edlae-dask/interactions")
    spill = tmp_path / ".x.zarr.ingest-abc_1234"
    spill.mkdir()
    (spill / "bucket-0.npy").write_bytes(b"\0" * 64)
    foreign = _group(tmp_path / f".x.zarr.tmp-{'2' * 32}", format="someone-elses")
    r = _run("ingest", csv, "--out", store, "--overwrite")
    assert r.exit_code == 0, r.output
    assert not tmp_store.exists() and not spill.exists()
    assert foreign.exists()  # same name pattern, but not ours: left alone
    assert open_interactions(store).n_users == 150


def test_checkpoint_leftovers_are_removed_only_once_nothing_wrote_to_them_for_an_hour(tmp_path, store):
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    old = _group(checkpoints / f".gram-{'a' * 16}.tmp-{'3' * 32}", format="edlae-dask/checkpoint")
    recent = _group(checkpoints / f".gram-{'b' * 16}.tmp-{'4' * 32}", format="edlae-dask/checkpoint")
    two_hours_ago = time.time() - 7200
    for p in [old, *old.rglob("*")]:
        os.utime(p, (two_hours_ago, two_hours_ago))
    r = _run("train", "--interactions", store, "--out", tmp_path / "f", "--checkpoint-dir", checkpoints, *SMALL)
    assert r.exit_code == 0, r.output
    assert not old.exists() and recent.exists()  # a run with other inputs may still be writing the recent one
    assert len(list(checkpoints.glob("gram-*"))) == 1


def test_a_failed_train_leaves_no_factor_store_behind(tmp_path, store, monkeypatch):
    def fails(store, params, ctx):
        raise ModelFitError("P is not positive definite (simulated)")

    monkeypatch.setitem(pipeline.PATHS, "dense", fails)
    out = tmp_path / "f"
    _refused(_run("train", "--interactions", store, "--out", out, *SMALL), "simulated")
    assert not out.exists() and not (tmp_path / ".f.lock").exists()


def test_a_failed_train_into_an_existing_store_leaves_it_as_it_was(store, factors, monkeypatch):
    def fails(store, params, ctx):
        raise ModelFitError("P is not positive definite (simulated)")

    before = _snapshot(factors)
    monkeypatch.setitem(pipeline.PATHS, "dense", fails)
    _refused(_run("train", "--interactions", store, "--out", factors, "--overwrite", *SMALL), "simulated")
    assert _snapshot(factors) == before


def test_a_second_train_into_a_fresh_out_is_refused_while_the_first_runs(tmp_path, store):
    out = tmp_path / "f"
    with FactorWriter(out) as first:  # the first run, not yet published
        _refused(_run("train", "--interactions", store, "--out", out, *SMALL), out, "another run", "pid")
        for name, x in (("U", np.ones((32, 3))), ("V", np.ones((32, 3))), ("item_ids", np.arange(32)),
                        ("eigenvalues", np.ones(3))):
            first.write_array(name, x)
        version = first.commit({"k": 3})
    assert list_versions(out) == [version] and open_factors(out).version == version
    _refused(_run("train", "--interactions", store, "--out", out, *SMALL), out, "--overwrite")  # published now
    assert list_versions(out) == [version]


def test_a_second_ingest_into_a_fresh_out_is_refused_at_once_while_the_first_runs(tmp_path, csv):
    import threading

    out = tmp_path / "x.zarr"
    claimed, done = threading.Event(), threading.Event()

    def first_ingest():  # still reading its source: it holds the claim, nothing is published yet
        with claim_output(out, overwrite=False):
            claimed.set()
            done.wait(60)

    first = threading.Thread(target=first_ingest)
    first.start()
    try:
        assert claimed.wait(60)
        _refused(_run("ingest", csv, "--out", out), out, "another ingest", "pid")
        assert not out.exists()
    finally:
        done.set()
        first.join()
    assert _run("ingest", csv, "--out", out).exit_code == 0  # once it is gone

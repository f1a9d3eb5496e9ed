"""Job specs (jobs/*.yaml): `edlae-dask run SPEC`, `--spec` with flags overriding it, validation before any work."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from edlae_dask.cli import cli
from edlae_dask.errors import ParameterError
from edlae_dask.io.factors import open_factors
from edlae_dask.io.interactions import open_interactions, write_interactions
from edlae_dask.io.recommendations import open_recommendations
from edlae_dask.jobspec import INPUT_KEYS, JOBS, PATH_KEYS, load_job_spec, spec_key

from conftest import clustered_interactions

REPO = Path(__file__).resolve().parents[1]
SMALL_TRAIN = ["--k", "4", "--lam", "3", "--p", "0.2", "--dtype", "float64", "--block-size", "16", "--seed", "1"]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _write_spec(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "x.zarr"
    write_interactions(path, clustered_interactions(n_users=150, n_items=32, seed=4), shard_size=50)
    return path


def test_the_shipped_specs_run_the_whole_pipeline(tmp_path):
    # jobs/ copied beside the edlae-demo/ folder its relative paths name; flags make the problem small
    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    demo = tmp_path / "edlae-demo"
    demo.mkdir()
    X = clustered_interactions(n_users=240, n_items=36, seed=3).tocoo()
    pd.DataFrame({"user": X.row, "item": X.col, "rating": 1.0}).to_csv(demo / "interactions.csv.gz", index=False)
    jobs = tmp_path / "jobs"

    r = _invoke("run", jobs / "ingest.yaml", "--shard-size", 80)
    assert r.exit_code == 0, r.output
    assert open_interactions(demo / "interactions.zarr").shape == X.shape
    r = _invoke("run", jobs / "train.yaml", *SMALL_TRAIN, "--cluster", "threads")
    assert r.exit_code == 0, r.output
    assert open_factors(demo / "factors").k == 4
    r = _invoke("run", jobs / "score.yaml", "--top-n", 5, "--cluster", "threads")
    assert r.exit_code == 0, r.output
    assert open_recommendations(demo / "recommendations").items.shape == (X.shape[0], 5)
    r = _invoke("run", jobs / "evaluate.yaml", "--k", 4, "--lam", 10, "--p", 0.25, "--models", "edlae",
                "--cluster", "threads")
    assert r.exit_code == 0, r.output
    assert (demo / "evaluation.json").exists()


def test_flags_override_the_spec_and_the_run_equals_the_flags_alone(tmp_path, store):
    spec = _write_spec(tmp_path / "train.yaml", {"job": "train", "interactions": "x.zarr", "out": "spec-factors",
                                                 "k": 6, "lam": 3.0, "p": 0.2, "dtype": "float64", "block-size": 16,
                                                 "seed": 1, "cluster": "local"})
    r = _invoke("train", "--spec", spec, "--k", 4, "--cluster", "threads")
    assert r.exit_code == 0, r.output
    r = _invoke("train", "--interactions", store, "--out", tmp_path / "flag-factors", *SMALL_TRAIN,
                "--cluster", "threads")
    assert r.exit_code == 0, r.output
    by_spec, by_flags = open_factors(tmp_path / "spec-factors"), open_factors(tmp_path / "flag-factors")
    assert by_spec.k == 4
    (Us, Vs), (Uf, Vf) = by_spec.load(), by_flags.load()
    np.testing.assert_allclose(Us @ Vs.T, Uf @ Vf.T, rtol=1e-12, atol=1e-12)


def test_relative_paths_are_relative_to_the_spec_file(tmp_path, store, monkeypatch):
    spec = _write_spec(tmp_path / "train.yaml", {"job": "train", "interactions": "x.zarr", "out": "factors"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_job_spec(spec).values["interactions"] == str(store)


def test_check_validates_prints_the_options_and_does_no_work(tmp_path, store):
    spec = _write_spec(tmp_path / "train.yaml", {"job": "train", "interactions": "x.zarr", "out": "factors", "k": 7})
    r = _invoke("run", spec, "--lam", 9, "--check")
    assert r.exit_code == 0, r.output
    resolved = yaml.safe_load(r.output)
    assert resolved["job"] == "train" and resolved["k"] == 7 and resolved["lam"] == 9.0
    assert resolved["interactions"] == str(store)
    assert not (tmp_path / "factors").exists()


@pytest.mark.parametrize("body, message", [
    ({"interactions": "x.zarr", "out": "f", "lamda": 5}, r"unknown key 'lamda'; did you mean 'lam'\?"),
    ({"interactions": "x.zarr", "out": "f", "block_size": 5}, r"unknown key 'block_size'; did you mean 'block-size'\?"),
    ({"interactions": "x.zarr", "out": "f", "k": "many"}, r"'k' must be an integer, not 'many'"),
    ({"interactions": "x.zarr", "out": "f", "k": True}, r"'k' must be an integer, not True"),
    ({"interactions": "x.zarr", "out": "f", "lam": [1, 2]}, r"'lam' must be a number, not \[1, 2\]"),
    ({"interactions": "x.zarr", "out": "f", "dtype": "float16"}, r"'dtype' must be one of float32, float64"),
    ({"interactions": "x.zarr", "out": "f", "overwrite": "yes please"}, r"'overwrite' must be true or false"),
])
def test_a_bad_key_or_value_is_an_error_naming_the_key_and_the_file(tmp_path, store, body, message):
    spec = _write_spec(tmp_path / "train.yaml", {"job": "train", **body})
    with pytest.raises(ParameterError, match=message) as info:
        load_job_spec(spec)
    assert str(spec) in str(info.value)
    r = _invoke("run", spec)
    assert r.exit_code == 1 and str(spec) in r.stderr
    assert not (tmp_path / "f").exists()


def test_a_missing_input_is_an_error_before_any_work(tmp_path):
    spec = _write_spec(tmp_path / "train.yaml", {"job": "train", "interactions": "nowhere.zarr", "out": "f"})
    r = _invoke("run", spec)
    assert r.exit_code == 1
    assert (f"job spec {spec}" in r.stderr and "'interactions'" in r.stderr
            and "nowhere.zarr' does not exist" in r.stderr)
    assert not (tmp_path / "f").exists()


def test_a_missing_required_key_is_an_error_naming_it(tmp_path, store):
    spec = _write_spec(tmp_path / "score.yaml", {"job": "score", "factors": "x.zarr", "interactions": "x.zarr"})
    r = _invoke("run", spec)
    assert r.exit_code == 1 and "the required key 'out' is missing" in r.stderr and str(spec) in r.stderr


def test_a_flag_can_supply_what_the_spec_lacks(tmp_path, store):
    spec = _write_spec(tmp_path / "train.yaml", {"job": "train", "interactions": "x.zarr"})
    # --k too: the default rank (200) is not below the store's 32 items, which --check refuses as the run would
    assert _invoke("run", spec, "--out", tmp_path / "f", "--k", 4, "--check").exit_code == 0


def test_an_invalid_cluster_spec_named_by_a_job_spec_is_an_error_before_any_work(tmp_path, store):
    _write_spec(tmp_path / "cluster.yaml", {"kind": "local", "n-workers": "two"})
    spec = _write_spec(tmp_path / "train.yaml", {"job": "train", "interactions": "x.zarr", "out": "f",
                                                 "cluster": "cluster.yaml"})
    r = _invoke("run", spec)
    assert r.exit_code == 1 and "'n-workers' must be an integer" in r.stderr and "cluster.yaml" in r.stderr


def test_a_spec_of_another_job_is_refused_by_a_subcommand(tmp_path, store):
    spec = _write_spec(tmp_path / "score.yaml", {"job": "score", "factors": "x.zarr", "interactions": "x.zarr",
                                                 "out": "r"})
    r = _invoke("train", "--spec", spec)
    assert r.exit_code == 1 and "is a score job, not train" in r.stderr


@pytest.mark.parametrize("text, message", [
    ("interactions: x.zarr\n", "the key 'job' is missing"),
    ("job: trian\n", "did you mean 'train'"),
    ("- job\n- train\n", "must hold a mapping"),
    ("job: [train\n", "not valid YAML"),
])
def test_run_needs_a_readable_spec_that_names_its_job(tmp_path, text, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    r = _invoke("run", spec)
    assert r.exit_code == 1 and message in r.stderr


def test_a_spec_is_read_as_data_only(tmp_path):
    marker = tmp_path / "executed"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"job: !!python/object/apply:os.system ['touch {marker}']\n")
    r = _invoke("run", spec)
    assert r.exit_code == 1 and "not valid YAML" in r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("job", JOBS)
def test_path_and_input_keys_are_options_of_their_command(job):
    keys = {spec_key(p) for p in cli.commands[job].params}
    assert set(PATH_KEYS[job]) <= keys and set(INPUT_KEYS[job]) <= set(PATH_KEYS[job])


def test_check_without_a_spec_validates_the_flags(tmp_path, store):
    ok = _invoke("train", "--interactions", store, "--out", tmp_path / "f", "--k", 4, "--check")
    assert ok.exit_code == 0 and yaml.safe_load(ok.output)["interactions"] == str(store)
    missing = _invoke("train", "--interactions", tmp_path / "nowhere.zarr", "--out", tmp_path / "f", "--check")
    assert missing.exit_code == 1 and "nowhere.zarr' does not exist" in missing.stderr


def test_check_refuses_what_the_run_would_refuse(tmp_path, store):
    r = _invoke("train", "--interactions", store, "--out", tmp_path / "f", "--p", "1.5", "--check")
    assert r.exit_code == 1 and "'p' parameter" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "f").exists()

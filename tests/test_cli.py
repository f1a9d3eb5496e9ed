"""The edlae-dask command line, end to end on small files."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from edlae_dask.cli import cli
from edlae_dask.io.factors import open_factors

from conftest import clustered_interactions
from oracle import dense_algorithm1, spectrum_of_student


@pytest.fixture
def ratings_csv(tmp_path):
    """A MovieLens-like CSV with string user ids and ratings, plus its binarized matrix (rating >= 3.5)."""
    X = clustered_interactions(n_users=300, n_items=45, seed=11).tocoo()
    rng = np.random.default_rng(0)
    liked = pd.DataFrame({"user": [f"u{r}" for r in X.row], "item": X.col + 100,
                          "rating": rng.choice([4.0, 5.0], X.nnz)})
    # disliked rows on pairs the binarized matrix does not hold: --min-value must drop them
    dense = X.toarray()
    zr, zc = np.nonzero(dense == 0)
    pick = rng.choice(zr.size, 200, replace=False)
    disliked = pd.DataFrame({"user": [f"u{r}" for r in zr[pick]], "item": zc[pick] + 100, "rating": 1.0})
    path = tmp_path / "ratings.csv"
    pd.concat([liked, disliked]).sample(frac=1, random_state=0).to_csv(path, index=False)
    return path, X.tocsr()


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_ingest_then_train_matches_dense_algorithm1(tmp_path, ratings_csv):
    csv, X = ratings_csv
    store, factors = tmp_path / "x.zarr", tmp_path / "factors"
    r = _run("ingest", csv, "--out", store, "--min-value", 3.5, "--shard-size", 70)
    assert r.exit_code == 0, r.output
    lam, p = 3.0, 0.3
    w = spectrum_of_student(X, lam, p)
    k = max(range(2, 8), key=lambda k: w[k - 1] / w[k])
    r = _run("train", "--interactions", store, "--out", factors, "--k", k, "--lam", lam, "--p", p,
             "--dtype", "float64", "--cluster", "threads", "--block-size", 16, "--power-iters", 6)
    assert r.exit_code == 0, r.output
    assert "published" in r.output and "eigensolve" in r.output
    f = open_factors(factors)
    U, V = f.load()
    # the store orders items by id and users by first appearance: map the oracle's columns to item ids
    order = np.argsort(f.item_ids)
    U0, V0, *_ = dense_algorithm1(X, k, lam, p)
    S, S0 = U @ V.T, (U0 @ V0.T)[np.ix_(f.item_ids[order] - 100, f.item_ids[order] - 100)]
    S = S[np.ix_(order, order)]
    assert np.linalg.norm(S - S0) / np.linalg.norm(S0) < 1e-6
    assert f.meta["k"] == k and f.meta["lam"] == lam and f.meta["dtype"] == "float64"
    assert set(f.meta["stages"]) >= {"gram", "inverse", "eigensolve"}


def test_train_on_the_embedded_local_cluster(tmp_path, ratings_csv):
    csv, _ = ratings_csv
    store = tmp_path / "x.zarr"
    assert _run("ingest", csv, "--out", store).exit_code == 0
    r = _run("train", "--interactions", store, "--out", tmp_path / "f", "--k", 5, "--workers", 2, "--block-size", 20)
    assert r.exit_code == 0, r.output
    assert open_factors(tmp_path / "f").U.shape == (45, 5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--k", "0"], "'k' parameter"),
        (["--k", "45"], "less than the number of items"),
        (["--lam", "-1"], "'lam' parameter"),
        (["--p", "1.5"], "'p' parameter"),
        (["--cluster", "somewhere"], "--cluster 'somewhere' is not understood"),
    ],
)
def test_train_rejects_bad_options_with_a_clear_message(tmp_path, ratings_csv, args, message):
    csv, _ = ratings_csv
    store = tmp_path / "x.zarr"
    assert _run("ingest", csv, "--out", store).exit_code == 0
    r = CliRunner().invoke(cli, ["train", "--interactions", str(store), "--out", str(tmp_path / "f"),
                                 "--cluster", "threads", *args])
    assert r.exit_code == 1
    assert message in r.stderr and "Traceback" not in r.stderr


def test_train_refuses_existing_output_without_overwrite(tmp_path, ratings_csv):
    csv, _ = ratings_csv
    store, out = tmp_path / "x.zarr", tmp_path / "f"
    assert _run("ingest", csv, "--out", store).exit_code == 0
    common = ["train", "--interactions", store, "--out", out, "--k", 3, "--cluster", "threads"]
    assert _run(*common).exit_code == 0
    first = open_factors(out).version
    r = CliRunner().invoke(cli, [str(a) for a in common])
    assert r.exit_code == 1 and "--overwrite" in r.stderr
    assert _run(*common, "--overwrite").exit_code == 0
    assert open_factors(out).version != first


def test_train_on_a_store_that_is_not_ours(tmp_path):
    (tmp_path / "junk").mkdir()
    r = CliRunner().invoke(cli, ["train", "--interactions", str(tmp_path / "junk"), "--out", str(tmp_path / "f"),
                                 "--cluster", "threads"])
    assert r.exit_code == 1 and str(tmp_path / "junk") in r.stderr


def test_console_script_runs_demo(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "edlae_dask", "demo", "--workdir", str(tmp_path / "demo"), "--users", "3000",
         "--items", "400", "--k", "10", "--workers", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "published" in r.stdout and "top-10 recommendations" in r.stdout
    assert open_factors(tmp_path / "demo" / "factors").U.shape == (400, 10)


def test_info_describes_both_kinds_of_store(tmp_path, ratings_csv):
    import json

    csv, _ = ratings_csv
    store, out = tmp_path / "x.zarr", tmp_path / "f"
    assert _run("ingest", csv, "--out", store, "--min-value", 3.5).exit_code == 0
    assert _run("train", "--interactions", store, "--out", out, "--k", 3, "--cluster", "threads").exit_code == 0
    about_store = json.loads(_run("info", store).output)
    assert about_store["kind"] == "interactions" and about_store["n_items"] == 45
    about_factors = json.loads(_run("info", out).output)
    assert about_factors["kind"] == "factors" and about_factors["k"] == 3
    assert about_factors["interactions_fingerprint"] == about_store["fingerprint"]

"""The Figure-1 benchmark's results files: an index plus one JSON per dataset."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

FIGURE1 = Path(__file__).resolve().parent.parent / "benchmarks" / "figure1.py"


@pytest.fixture(scope="module")
def figure1():
    spec = importlib.util.spec_from_file_location("figure1_under_test", FIGURE1)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results():
    return {"environment": {"python": "3"},
            "datasets": {"a": {"n_items": 3, "rows": [{"k": 1, "ndcg": 0.123456789}]},
                         "b": {"n_items": 5, "rows": []}}}


def test_results_are_written_one_file_per_dataset_and_read_back_whole(tmp_path, figure1):
    path = tmp_path / "figure1.json"
    figure1.save_results(_results(), path)

    assert json.loads(path.read_text())["datasets"] == {"a": "figure1-a.json", "b": "figure1-b.json"}
    assert json.loads((tmp_path / "figure1-b.json").read_text()) == {"n_items": 5, "rows": []}
    back = figure1.load_results(path)
    assert back["environment"] == {"python": "3"}
    assert back["datasets"]["a"]["rows"][0]["ndcg"] == pytest.approx(0.123456789, rel=1e-6)
    assert set(back["datasets"]) == {"a", "b"}


def test_a_dataset_no_longer_in_the_results_loses_its_file(tmp_path, figure1):
    path = tmp_path / "figure1.json"
    figure1.save_results(_results(), path)
    results = figure1.load_results(path)
    del results["datasets"]["b"]

    (tmp_path / "figure1-a-before-tuning.json").write_text("{}")  # not the index's: left alone
    figure1.save_results(results, path)

    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["figure1-a-before-tuning.json", "figure1-a.json",
                                                               "figure1.json"]


def test_an_index_from_before_the_split_is_read_as_it_is(tmp_path, figure1):
    path = tmp_path / "figure1.json"
    path.write_text(json.dumps(_results()))

    assert figure1.load_results(path)["datasets"] == _results()["datasets"]


def test_figure1_runs_from_one_command_and_add_merges_a_second_grid_point(tmp_path):
    """The benchmark end to end on a tiny data set: outputs written, and after ``--add`` every
    (model, k) reports the grid point with the best validation nDCG@100 over both runs."""
    import gzip
    import subprocess
    import sys

    import pandas as pd

    from conftest import clustered_interactions

    data = tmp_path / "data"
    (data / "tiny").mkdir(parents=True)
    X = clustered_interactions(n_users=300, n_items=40, seed=1).tocoo()
    with gzip.open(data / "tiny" / "interactions.csv.gz", "wt") as f:
        pd.DataFrame({"user": X.row + 1, "item": X.col + 1}).to_csv(f, index=False)
    (data / "datasets.json").write_text(json.dumps([{"name": "tiny", "type": "implicit", "items": 40}]))
    out = tmp_path / "out"
    base = [sys.executable, str(FIGURE1), "--datasets", "tiny", "--data-dir", str(data), "--out", str(out),
            "--workdir", str(tmp_path / "work"), "--ks", "2,5", "--ps", "0.3", "--models", "edlae,lae,full-rank",
            "--no-opt", "--n-valid", "40", "--n-test", "40"]
    for lam in ("3", "300"):
        done = subprocess.run(base + ["--lams", lam] + (["--add"] if lam == "300" else []),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    d = json.loads((out / "figure1-tiny.json").read_text())
    assert len(d["runs"]) == 2
    assert {g["lam"] for g in d["main"]["grid"]} == {3.0, 300.0}
    for row in d["rows"]:
        points = [g for g in d["main"]["grid"] if g["model"] == row["model"] and g["k"] == row["k"]]
        best = max(points, key=lambda g: g["valid"]["ndcg@100"]["mean"])
        assert (row["lam"], row["p"]) == (best["lam"], best["p"])
        assert row["test"] == best["test"]
    assert {(r["model"], r["k"]) for r in d["rows"]} == {("edlae", 2), ("edlae", 5), ("lae", 2), ("lae", 5),
                                                        ("full-rank", None)}
    assert "## tiny (40 items" in (out / "figure1.md").read_text()
    # paired differences of the chosen rows, from the per-user values both runs recorded
    with np.load(out / "figure1-tiny-per-user.npz") as z:
        per_user = {key: z[key].astype(np.float64) for key in z.files}
    assert len(per_user) == 2 * len(d["rows"])  # each run's chosen rows (a later run may replace a point)
    paired = {(x["a"], x["b"], x["k"]): x for x in d["paired"]}
    assert set(paired) >= {("edlae", "lae", 2), ("edlae", "lae", 5), ("edlae", "full-rank", 5)}
    for (a, b, k), x in paired.items():
        ra = next(r for r in d["rows"] if (r["model"], r["k"]) == (a, k))
        rb = next(r for r in d["rows"] if (r["model"], r["k"]) == (b, None if b == "full-rank" else k))
        diff = (per_user[f"{ra['run']}|{a}|{k}|{ra['lam']:g}|{ra['p']:g}"]
                - per_user[f"{rb['run']}|{b}|{rb['k']}|{rb['lam']:g}|{rb['p']:g}"])
        assert x["mean"] == pytest.approx(ra["test"]["ndcg@100"]["mean"] - rb["test"]["ndcg@100"]["mean"], abs=1e-6)
        assert x["se"] == pytest.approx(np.nanstd(diff, ddof=1) / np.sqrt(np.sum(~np.isnan(diff))), rel=1e-5)

"""The Figure-1 benchmark's results files: an index plus one JSON per dataset."""

import importlib.util
import json
from pathlib import Path

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

    figure1.save_results(results, path)

    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["figure1-a.json", "figure1.json"]


def test_an_index_from_before_the_split_is_read_as_it_is(tmp_path, figure1):
    path = tmp_path / "figure1.json"
    path.write_text(json.dumps(_results()))

    assert figure1.load_results(path)["datasets"] == _results()["datasets"]

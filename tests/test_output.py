"""What the commands print is for a person: each line once, -q/-v on every command, no Python reprs on stdout,
the evaluation's interleaved eigensolver lines labelled by their grid point."""

import re

import pandas as pd
import pytest
from click.testing import CliRunner

from edlae_dask.cli import cli

from conftest import clustered_interactions

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+[\w.]+: (.*)$")
REPR = re.compile(r"\{'|\{\"|': |\[\d+, \d+")  # a dict's or a list's repr


def _run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.stderr[-3000:]
    return r


def _log(result) -> list[tuple[str, str]]:
    """(level, message) of each log line on stderr."""
    return [(m.group(1), m.group(2)) for m in map(LOG_LINE.match, result.stderr.splitlines()) if m]


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("output")
    X = clustered_interactions(n_users=90, n_items=24, seed=5).tocoo()
    csv = tmp / "day.csv"
    pd.DataFrame({"user": X.row + 1000, "item": X.col + 10}).to_csv(csv, index=False)
    return tmp, csv


@pytest.fixture(scope="module")
def job(day):
    """The daily job's commands, run once: their results."""
    tmp, csv = day
    store, factors, recs = tmp / "x.zarr", tmp / "f", tmp / "recs"
    return {
        "ingest": _run("ingest", csv, "--out", store, "--shard-size", 30),
        "train": _run("train", "--interactions", store, "--out", factors, "--k", 3, "--cluster", "threads"),
        "score": _run("score", "--factors", factors, "--interactions", store, "--out", recs, "--top-n", 5,
                      "--cluster", "threads"),
        "export": _run("export", recs, "--out", tmp / "recs.csv"),
        "verify": _run("verify", store),
        "evaluate": _run("evaluate", "--interactions", store, "--k", 3, "--lam", 5, 50, "--p", 0.1, 0.3,
                         "--models", "edlae,lae", "--max-concurrent", 4, "--cluster", "threads"),
    }


@pytest.mark.parametrize("command", ["ingest", "train", "score", "export", "verify", "evaluate"])
def test_no_line_is_both_printed_and_logged(job, command):
    printed = {line.strip() for line in job[command].stdout.splitlines() if line.strip()}
    logged = {message.strip() for _, message in _log(job[command])}
    assert printed and not printed & logged


@pytest.mark.parametrize("command", ["ingest", "train", "score", "export", "verify", "evaluate"])
def test_stdout_holds_no_python_reprs(job, command):
    assert not REPR.search(job[command].stdout), job[command].stdout


def test_every_command_takes_q_and_v():
    for name, command in cli.commands.items():
        flags = {opt for p in command.params for opt in p.opts}
        assert {"-q", "--quiet", "-v", "--verbose"} <= flags, name


@pytest.mark.parametrize("where", ["after", "before"])
def test_quiet_leaves_the_results_and_drops_the_log(day, tmp_path, where):
    _, csv = day
    args = ["ingest", csv, "--out", tmp_path / "x.zarr"]
    r = _run(*(args + ["-q"] if where == "after" else ["-q", *args]))
    assert r.stdout.startswith("ingested ") and "interactions" in r.stdout
    assert all(level in ("WARNING", "ERROR") for level, _ in _log(r))
    loud = _run("ingest", csv, "--out", tmp_path / "y.zarr", "-v")
    assert any(level == "INFO" for level, _ in _log(loud)) and loud.stdout.startswith("ingested ")


def test_verbose_and_quiet_add_up_wherever_given(day, tmp_path):
    _, csv = day
    r = _run("-q", "ingest", csv, "--out", tmp_path / "x.zarr", "-v")  # -q then -v: the default, INFO
    assert any(level == "INFO" for level, _ in _log(r))


def test_the_evaluations_eigensolver_lines_name_their_grid_point(job):
    lines = [message for _, message in _log(job["evaluate"]) if "randomized_eigh" in message]
    label = re.compile(r"^\[λ=(\S+), p=(\S+), (edlae|lae)\] randomized_eigh: ")
    found = [label.match(line) for line in lines]
    assert lines and all(found), [line for line, m in zip(lines, found) if not m][:3]
    points = {(float(m.group(1)), float(m.group(2)), m.group(3)) for m in found}
    assert points == {(lam, p, model) for lam in (5, 50) for p in (0.1, 0.3) for model in ("edlae", "lae")}

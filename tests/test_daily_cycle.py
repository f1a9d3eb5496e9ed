"""The nightly job, end to end through the ``edlae-dask`` CLI: the specification of the daily cycle.

Day 1's interactions go into the history store and a model is trained on it, keeping partial Grams in a
checkpoint directory. Day 2 brings new users, two items the model does not know and one of its items gone: it
is ingested against the model's items (``--items-from``), scored and exported for serving. Day 3 is appended to
day 2's store (``--append``) and scored again: only the shards the append touched are rescored. Then days 2 and
3 are appended to the history and the model retrained: the shard groups no day touched reuse their partial Grams.

Every recommendation is checked against a dense numpy fold-in from the published factors, ``(x·U)·Vᵀ`` with the
user's items excluded and ties to the lower item index; every exported id against the source's ids. Bad input
of the same job is one error line, and leaves every store and file as it was.
"""

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from edlae_dask.cli import cli
from edlae_dask.io.factors import open_factors
from edlae_dask.io.interactions import open_interactions
from edlae_dask.io.recommendations import open_recommendations

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")
MODEL_ITEMS = list(range(100, 130))  # day 1's items: the model's
NEW_ITEMS = (130, 131)  # on day 2, unknown to the model
GONE_ITEM = 129  # no interaction on day 2 or 3
OLD_USERS = list(range(60))  # day 1's users
NEW_USERS = list(range(1000, 1013))  # day 2's users the model never saw
DAY3_USERS = (2000, 2001, 2002)  # new on day 3
SHARD, TOP_N, K = 8, 5, 4
TRAIN = ("--k", K, "--lam", 5, "--p", 0.25, "--dtype", "float64", "--cluster", "threads")


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert not isinstance(result.exception, Exception), f"uncaught {result.exception!r}"  # SystemExit is not one
    return result


def _ok(*args):
    result = _run(*args)
    assert result.exit_code == 0, result.stderr[-3000:]
    return result


def _error_line(result) -> str:
    """The one ``error:`` line of a failed command (exit status 1, no traceback, nothing else but log lines)."""
    assert result.exit_code == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr[-3000:]
    return lines[0]


def _tree(path) -> str:
    """A digest of every file's name and bytes under ``path`` (or of ``path`` itself): equal iff nothing changed."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path.parent)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _rows(rng, users, items, density):
    """(user, item) rows, every user with at least one item, shuffled so first appearance is not sorted."""
    out = []
    for u in users:
        chosen = [i for i in items if rng.random() < density] or [items[int(rng.integers(len(items)))]]
        out += [(u, i) for i in chosen]
    return pd.DataFrame([out[j] for j in rng.permutation(len(out))], columns=["user", "item"])


def fold_in_oracle(rows: pd.DataFrame, users, model):
    """Dense numpy fold-in of ``users`` from published factors: top-N item ids and scores, seen items excluded.

    ``model`` is ``(U, V, item_ids)`` as published. ``scores = x·U·Vᵀ`` with ``x`` the user's binary row over the
    model's items (rows on other items ignored); seen items get −inf; the top N by score descending, ties to the
    lower item index.
    """
    U, V, item_ids = model
    n_items = len(item_ids)
    column = {int(i): c for c, i in enumerate(item_ids.tolist())}
    where = {int(u): r for r, u in enumerate(users)}
    X = np.zeros((len(users), n_items))
    for u, i in zip(rows["user"], rows["item"]):
        if int(u) in where and int(i) in column:
            X[where[int(u)], column[int(i)]] = 1.0
    S = (X @ U) @ V.T
    S[X > 0] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(n_items), S.shape), -S), axis=1)[:, :TOP_N]
    return item_ids[order], np.take_along_axis(S, order, axis=1)


def _served(recs_path):
    """A recommendations store as original ids: user ids, item ids (users x N) and scores."""
    r = open_recommendations(recs_path)
    return r.user_ids, r.item_ids[r.items.compute()], r.scores.compute()


def _markers(recs_path) -> dict[int, dict]:
    """Each shard's completion marker in a local recommendations store: shard -> its attributes."""
    return {int(p.parent.name): json.loads(p.read_text())["attributes"]
            for p in sorted((recs_path / "done").glob("*/zarr.json"))}


@pytest.fixture(scope="module")
def cycle(tmp_path_factory):
    """Run the three days' commands in order; every command must succeed. Returns paths, frames and outputs."""
    tmp = tmp_path_factory.mktemp("cycle")
    rng = np.random.default_rng(16)
    day1 = _rows(rng, OLD_USERS, MODEL_ITEMS, 0.25)
    day1 = pd.concat([day1, pd.DataFrame({"user": 0, "item": MODEL_ITEMS})]).drop_duplicates()  # every item seen
    day1 = day1.sort_values("user", kind="stable")  # users by first appearance: user u in the history's shard u // 8
    day2_items = [i for i in MODEL_ITEMS if i != GONE_ITEM] + list(NEW_ITEMS)
    day2 = _rows(rng, OLD_USERS[40:] + NEW_USERS, day2_items, 0.2)
    day2 = pd.concat([day2, pd.DataFrame({"user": [NEW_USERS[0], 50], "item": list(NEW_ITEMS)})])  # unknown items
    first = day2["user"].drop_duplicates().tolist()[1]  # a user of today's first shard
    more = [i for i in MODEL_ITEMS[:-1] if i not in set(day2.loc[day2["user"] == first, "item"])][:2]
    day3 = pd.DataFrame({"user": [first, first, *DAY3_USERS, DAY3_USERS[0]],
                         "item": [*more, 103, 104, 105, NEW_ITEMS[0]]})
    csv = {}
    for name, frame in (("day1", day1), ("day2", day2), ("day3", day3)):
        csv[name] = tmp / f"{name}.csv"
        frame.to_csv(csv[name], index=False)
    history, today, factors, ck = tmp / "history.zarr", tmp / "today.zarr", tmp / "factors", tmp / "ck"
    recs, served = tmp / "recs", tmp / "recs.parquet"
    out = {}
    # day 1: the history, and a model trained on it (the partial Grams kept in the checkpoint directory)
    _ok("ingest", csv["day1"], "--out", history, "--shard-size", SHARD)
    _ok("train", "--interactions", history, "--out", factors, "--checkpoint-dir", ck, *TRAIN)
    f = open_factors(factors)
    out["model1"] = (*f.load(), f.item_ids)  # what day 2 and 3 are scored with
    # day 2: today's interactions on the model's items, scored with it, exported for serving
    out["ingest2"] = _ok("ingest", csv["day2"], "--out", today, "--items-from", factors, "--shard-size", SHARD)
    _ok("score", "--factors", factors, "--interactions", today, "--out", recs, "--top-n", TOP_N, "--cluster",
        "threads")
    out["recs2"] = _served(recs)
    out["export"] = _ok("export", recs, "--out", served)
    # day 3: appended to today's store, scored again
    out["shards_before_append"] = open_interactions(today).n_shards
    out["append"] = _ok("ingest", csv["day3"], "--append", today)
    out["score3"] = _ok("score", "--factors", factors, "--interactions", today, "--out", recs, "--top-n", TOP_N,
                        "--cluster", "threads")
    out["markers3"] = _markers(recs)
    out["recs3"] = _served(recs)
    # the nightly retrain: days 2 and 3 added to the history, the model retrained from the checkpoint directory
    _ok("ingest", csv["day2"], csv["day3"], "--append", history)
    out["retrain"] = _ok("train", "--interactions", history, "--out", factors, "--checkpoint-dir", ck,
                         "--overwrite", *TRAIN)
    return dict(tmp=tmp, csv=csv, frames=dict(day1=day1, day2=day2, day3=day3), history=history, today=today,
                factors=factors, ck=ck, recs=recs, served=served, out=out)


def test_todays_store_holds_the_models_items_and_counts_the_unknown_ones(cycle):
    f, s = open_factors(cycle["factors"]), open_interactions(cycle["today"])
    np.testing.assert_array_equal(s.item_ids(), f.item_ids)  # the model's items in its order, the gone one too
    assert s.item_counts()[MODEL_ITEMS.index(GONE_ITEM)] == 0
    unknown = int(cycle["frames"]["day2"]["item"].isin(NEW_ITEMS).sum())
    assert f"{unknown:,} interactions on 2 items the model does not know" in cycle["out"]["ingest2"].stdout


def test_new_users_get_the_fold_in_of_the_published_factors(cycle):
    users, items, scores = cycle["out"]["recs2"]
    day2 = cycle["frames"]["day2"]
    np.testing.assert_array_equal(users, day2["user"].drop_duplicates().to_numpy())  # original ids
    expect_items, expect_scores = fold_in_oracle(day2, users.tolist(), cycle["out"]["model1"])
    new = np.isin(users, NEW_USERS)
    assert new.sum() == len(NEW_USERS)
    np.testing.assert_array_equal(items[new], expect_items[new])
    np.testing.assert_allclose(scores[new], expect_scores[new], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(items, expect_items)  # and the users the model was trained on


def test_the_export_holds_the_recommendations_under_their_original_ids(cycle):
    table = pq.read_table(cycle["served"]).to_pandas()
    assert list(table.columns) == ["user_id", "rank", "item_id", "score"]
    users, items, scores = cycle["out"]["recs2"]
    expect = pd.DataFrame({"user_id": np.repeat(users, TOP_N), "rank": np.tile(np.arange(1, TOP_N + 1), len(users)),
                           "item_id": items.ravel(), "score": scores.ravel()})
    pd.testing.assert_frame_equal(table, expect, check_dtype=False)
    assert set(table["item_id"]) <= set(MODEL_ITEMS)
    assert set(table["user_id"]) == set(OLD_USERS[40:]) | set(NEW_USERS)


def test_an_append_is_rescored_only_where_it_touched(cycle):
    markers, n_before = cycle["out"]["markers3"], cycle["out"]["shards_before_append"]
    touched = {0, n_before - 1}  # day 3's rows of a first-shard user; its new users fill the last shard on
    assert "rewrote 2 of" in cycle["out"]["append"].stdout
    scored = {s for s, m in markers.items() if not m.get("carried_over")}
    carried = {s for s, m in markers.items() if m.get("carried_over")}
    assert scored == touched | set(range(n_before, len(markers)))
    assert carried == set(range(n_before)) - touched
    assert f"{len(carried)} unchanged (taken from the previous recommendations)" in cycle["out"]["score3"].stdout
    users, items, _ = cycle["out"]["recs3"]
    rows = pd.concat([cycle["frames"]["day2"], cycle["frames"]["day3"]])
    expect_items, _ = fold_in_oracle(rows, users.tolist(), cycle["out"]["model1"])
    np.testing.assert_array_equal(items, expect_items)  # carried shards too: they are what a rescoring gives


def test_the_retrain_reuses_the_untouched_shard_groups_and_equals_a_fresh_train(cycle, tmp_path):
    log = cycle["out"]["retrain"].stderr
    # history: 60 users in 8 shards, groups of 4 shards; days 2 and 3 touch users 40.. and add 16 users
    assert "gram: reused 1 of 3 shard groups' partial Grams (4 of 10 shards)" in log
    detail = open_factors(cycle["factors"]).meta["stages"]["gram"]["detail"]
    assert (detail["partials_reused"], detail["partials_computed"]) == (1, 2)
    fresh = tmp_path / "fresh"
    _ok("train", "--interactions", cycle["history"], "--out", fresh, *TRAIN)  # no checkpoints: all from X
    U, V = open_factors(cycle["factors"]).load()
    U0, V0 = open_factors(fresh).load()
    np.testing.assert_allclose(U @ V.T, U0 @ V0.T, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- bad input: one line, nothing written


def test_items_from_a_path_that_is_not_a_factor_store(cycle, tmp_path):
    out = tmp_path / "x.zarr"
    for not_factors in (cycle["history"], tmp_path / "missing"):
        line = _error_line(_run("ingest", cycle["csv"]["day2"], "--out", out, "--items-from", not_factors))
        assert "--items-from" in line and "not a factor store" in line
        assert not out.exists() and not list(tmp_path.glob(".x.zarr*"))


def test_a_source_with_no_item_the_model_knows(cycle, tmp_path):
    unknown = tmp_path / "unknown.csv"
    pd.DataFrame({"user": [1, 2], "item": list(NEW_ITEMS)}).to_csv(unknown, index=False)
    out = tmp_path / "y.zarr"
    line = _error_line(_run("ingest", unknown, "--out", out, "--items-from", cycle["factors"]))
    assert "none of its 2 interactions" in line
    assert not out.exists() and not list(tmp_path.glob(".y.zarr*"))
    before = _tree(cycle["today"])
    assert "none of its" in _error_line(_run("ingest", unknown, "--append", cycle["today"]))
    assert _tree(cycle["today"]) == before


def test_append_to_a_store_of_another_format_version(cycle, tmp_path):
    import shutil

    store = tmp_path / "old.zarr"
    shutil.copytree(cycle["today"], store)
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["format_version"] = 99
    meta.write_text(json.dumps(doc))
    before = _tree(store)
    line = _error_line(_run("ingest", cycle["csv"]["day3"], "--append", store))
    assert "cannot --append" in line and "version" in line
    assert _tree(store) == before and sorted(p.name for p in tmp_path.iterdir()) == ["old.zarr"]


def test_an_allow_list_naming_only_unknown_ids(cycle, tmp_path):
    allow = tmp_path / "allow.txt"
    allow.write_text("\n".join(str(i) for i in NEW_ITEMS) + "\n")
    before = _tree(cycle["recs"])
    line = _error_line(_run("score", "--factors", cycle["factors"], "--interactions", cycle["today"], "--out",
                            cycle["recs"], "--top-n", TOP_N, "--items-allow", allow, "--cluster", "threads"))
    assert "none of its 2 ids" in line and "--items-allow" in line
    assert _tree(cycle["recs"]) == before

"""Scheduled scoring of fresh data: ingest against a model's items (--items-from), append a day (--append).

Day 1 is ingested and a tiny model trained on it; day 2 has new users, two items the model does not know and
one of its items gone, and is ingested with the model's items, then scored; day 3 is appended to day 2's store,
and scoring it again rescores only the shards the append changed.
"""

import json
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from edlae_dask.cli import cli
from edlae_dask.errors import ParameterError
from edlae_dask.ingestion import ingest
from edlae_dask.io.factors import open_factors
from edlae_dask.io.interactions import open_interactions
from edlae_dask.io.recommendations import open_recommendations
from edlae_dask.scoring import score

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")
MODEL_ITEMS = list(range(100, 130))  # day 1's items
NEW_ITEMS = (130, 131)  # on day 2, unknown to the model
GONE_ITEM = 129  # no interaction on day 2
SHARD, TOP_N = 8, 5


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _error_line(result) -> str:
    """The one ``error:`` line of a failed command (exit status 1, no traceback)."""
    assert not isinstance(result.exception, Exception), f"uncaught {result.exception!r}"
    assert result.exit_code == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr[-3000:]
    return lines[0]


def _rows(rng, users, items, density):
    """(user, item) rows, every user with at least one item; shuffled so first appearance is not sorted."""
    out = []
    for u in users:
        chosen = [i for i in items if rng.random() < density] or [items[int(rng.integers(len(items)))]]
        out += [(u, i) for i in chosen]
    order = rng.permutation(len(out))
    return pd.DataFrame([out[j] for j in order], columns=["user", "item"])


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Day 1 ingested and trained on; day 2 (fresh) and day 3 (an append) written as CSV."""
    tmp = tmp_path_factory.mktemp("fresh")
    rng = np.random.default_rng(11)
    day1 = _rows(rng, list(range(60)), MODEL_ITEMS, 0.25)
    day1 = pd.concat([day1, pd.DataFrame({"user": 0, "item": MODEL_ITEMS})]).drop_duplicates()  # every item seen
    day2_items = [i for i in MODEL_ITEMS if i != GONE_ITEM] + list(NEW_ITEMS)
    day2 = _rows(rng, list(range(40, 60)) + list(range(1000, 1013)), day2_items, 0.2)
    day2 = pd.concat([day2, pd.DataFrame({"user": [1000, 50], "item": [NEW_ITEMS[0], NEW_ITEMS[1]]}),
                      day2.iloc[:2]])  # rows on unknown items for sure, and two repeated rows
    # day 3: new items for two users of shard 0, a repeat of a stored row, an unknown item, three new users
    first = day2["user"].drop_duplicates().tolist()
    stored = day2.iloc[0]

    def not_stored(user, n):
        return [i for i in MODEL_ITEMS if i not in set(day2.loc[day2["user"] == user, "item"])][:n]

    day3 = pd.DataFrame({"user": [first[1], first[1], first[3], stored["user"], 2000, 2001, 2002, 2000, 2003],
                         "item": [*not_stored(first[1], 2), *not_stored(first[3], 1), stored["item"], 103, 104, 105,
                                  106, NEW_ITEMS[0]]})
    paths = {name: tmp / f"{name}.csv" for name in ("day1", "day2", "day3")}
    for name, frame in (("day1", day1), ("day2", day2), ("day3", day3)):
        frame.to_csv(paths[name], index=False)
    store1, factors = tmp / "day1.zarr", tmp / "factors"
    assert _run("ingest", paths["day1"], "--out", store1, "--shard-size", SHARD).exit_code == 0
    r = _run("train", "--interactions", store1, "--out", factors, "--k", 4, "--lam", 5, "--p", 0.25,
             "--dtype", "float64", "--cluster", "threads")
    assert r.exit_code == 0, r.output
    return dict(tmp=tmp, frames=dict(day1=day1, day2=day2, day3=day3), factors=factors, **paths)


def _oracle(rows: pd.DataFrame, users, factors):
    """Dense numpy fold-in ``(x·U)·Vᵀ`` of each user in ``users``: top-N item columns, seen excluded, ties low."""
    f = open_factors(factors)
    U, V = np.asarray(f.U, dtype=np.float64), np.asarray(f.V, dtype=np.float64)
    column = {int(i): c for c, i in enumerate(f.item_ids.tolist())}
    X = np.zeros((len(users), f.n_items))
    where = {u: r for r, u in enumerate(users)}
    for u, i in zip(rows["user"], rows["item"]):
        if int(u) in where and int(i) in column:
            X[where[int(u)], column[int(i)]] = 1.0
    S = (X @ U) @ V.T
    S[X > 0] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(f.n_items), S.shape), -S), axis=1)[:, :TOP_N]
    return order, np.take_along_axis(S, order, axis=1)


def test_items_from_makes_a_store_the_model_scores(days):
    f = open_factors(days["factors"])
    store2 = days["tmp"] / "day2.zarr"
    report = ingest(days["day2"], store2, shard_size=SHARD, items_from=days["factors"])
    s = open_interactions(store2)
    assert s.n_items == f.n_items == len(MODEL_ITEMS)
    np.testing.assert_array_equal(s.item_ids(), f.item_ids)  # the model's items, in its order, the gone one too
    assert s.item_counts()[MODEL_ITEMS.index(GONE_ITEM)] == 0
    day2 = days["frames"]["day2"]
    unknown_rows = int(day2["item"].isin(NEW_ITEMS).sum())
    assert report.dropped["unknown_item"] == unknown_rows and report.n_unknown_items == len(NEW_ITEMS)
    assert report.rows_read == report.nnz + sum(report.dropped.values())
    assert f"{unknown_rows:,} interactions on 2 items the model does not know" in report.summary()
    users = day2["user"].drop_duplicates().tolist()  # first-appearance order
    np.testing.assert_array_equal(s.user_ids(), users)

    out = days["tmp"] / "recs"
    rep = score(days["factors"], store2, out, top_n=TOP_N)
    assert rep.published and rep.n_users == len(users)
    recs = open_recommendations(out)
    items, scores = recs.items.compute(), recs.scores.compute()
    expect_i, expect_s = _oracle(day2, users, days["factors"])
    new = [r for r, u in enumerate(users) if u >= 1000]  # users the model never saw
    assert len(new) == 13
    np.testing.assert_array_equal(items[new], expect_i[new])
    np.testing.assert_allclose(scores[new], expect_s[new], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(items, expect_i)  # and everybody else


def test_append_rewrites_only_the_changed_shards_and_score_rescores_only_those(days):
    store, out = days["tmp"] / "day2.zarr", days["tmp"] / "recs"
    before = open_interactions(store)
    report = ingest(days["day3"], append=store)
    after = open_interactions(store)
    day3 = days["frames"]["day3"]
    # rows of users 1 and 3 of shard 0 (3 rows), a stored repeat, three new users (4 rows), one unknown item
    assert report.dropped["unknown_item"] == 1 and report.n_unknown_items == 1
    assert report.dropped["already_stored"] == 1 and report.n_new_users == 3
    assert report.rows_read == len(day3) == after.nnz - before.nnz + sum(report.dropped.values())
    assert after.n_users == before.n_users + 3 and after.n_items == before.n_items
    last = before.n_shards - 1  # 33 users in shards of 8: the last holds one user, and the new ones fill it
    assert report.shards_written == [0, last]
    old_fp, new_fp = before.attrs["shard_fingerprints"], after.attrs["shard_fingerprints"]
    assert [s for s in range(after.n_shards) if s >= len(old_fp) or old_fp[s] != new_fp[s]] == [0, last]
    assert "rewrote 2 of" in report.summary()
    # the appended store is exactly a fresh ingest of both days with the model's items, shard for shard
    fresh = ingest([days["day2"], days["day3"]], days["tmp"] / "both.zarr", shard_size=SHARD,
                   items_from=days["factors"])
    both = open_interactions(fresh.out)
    assert after.fingerprint == both.fingerprint
    assert after.attrs["shard_fingerprints"] == both.attrs["shard_fingerprints"]
    assert after.attrs["shard_checksums"] == both.attrs["shard_checksums"]
    assert after.attrs["source"]["appended"][0]["dropped"]["already_stored"] == 1

    rep = score(days["factors"], store, out, top_n=TOP_N)
    assert rep.shards_scored == (0, last) and rep.n_shards_reused == after.n_shards - 2 and rep.published
    users = after.user_ids().tolist()
    rows = pd.concat([days["frames"]["day2"], day3])
    expect_i, _ = _oracle(rows, users, days["factors"])
    np.testing.assert_array_equal(open_recommendations(out).items.compute(), expect_i)
    # the same day again: only repeats, so no shard changes and the store's content stays the same
    again = ingest(days["day3"], append=store)
    assert again.shards_written == [] and again.n_new_users == 0 and again.fingerprint == after.fingerprint
    assert again.dropped["already_stored"] == len(day3) - 1 and again.dropped["unknown_item"] == 1


def test_cli_items_from_and_append(days, tmp_path):
    store = tmp_path / "s.zarr"
    r = _run("ingest", days["day2"], "--out", store, "--items-from", days["factors"], "--shard-size", SHARD)
    assert r.exit_code == 0, r.stderr
    assert "items the model does not know were dropped" in r.output
    r = _run("ingest", days["day3"], "--append", store)
    assert r.exit_code == 0, r.stderr
    assert "appended 3 new users; rewrote 2 of" in r.output
    r = _run("score", "--factors", days["factors"], "--interactions", store, "--out", tmp_path / "recs",
             "--top-n", TOP_N, "--cluster", "threads")
    assert r.exit_code == 0, r.stderr


def test_without_items_from_the_score_error_says_to_use_it(days, tmp_path):
    store = tmp_path / "plain.zarr"
    assert _run("ingest", days["day2"], "--out", store).exit_code == 0
    line = _error_line(_run("score", "--factors", days["factors"], "--interactions", store, "--out",
                            tmp_path / "recs", "--top-n", TOP_N, "--cluster", "threads"))
    assert "disagree on item ids" in line and "--items-from" in line


def test_bad_input_is_one_error_line(days, tmp_path):
    day1_store = tmp_path / "d1.zarr"
    assert _run("ingest", days["day1"], "--out", day1_store).exit_code == 0
    # --items-from something that is not a factor store
    for not_factors in (day1_store, tmp_path / "missing"):
        line = _error_line(_run("ingest", days["day2"], "--out", tmp_path / "x.zarr", "--items-from", not_factors))
        assert "--items-from" in line and "not a factor store" in line
    # a source with no item the model knows
    unknown = tmp_path / "unknown.csv"
    pd.DataFrame({"user": [1, 2], "item": [900, 901]}).to_csv(unknown, index=False)
    line = _error_line(_run("ingest", unknown, "--out", tmp_path / "y.zarr", "--items-from", days["factors"]))
    assert "none of its 2 interactions" in line
    assert not (tmp_path / "y.zarr").exists()
    # --min-item-interactions would drop model items
    line = _error_line(_run("ingest", days["day2"], "--out", tmp_path / "z.zarr", "--items-from", days["factors"],
                            "--min-item-interactions", 2))
    assert "--min-item-interactions" in line
    # --append to a non-store, to a store of another format version, with filters, with another shard size
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("hello")
    line = _error_line(_run("ingest", days["day3"], "--append", plain))
    assert "cannot --append" in line
    meta = day1_store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["format_version"] = 99
    meta.write_text(json.dumps(doc))
    line = _error_line(_run("ingest", days["day3"], "--append", day1_store))
    assert "cannot --append" in line and "version" in line
    store = tmp_path / "ok.zarr"
    assert _run("ingest", days["day2"], "--out", store, "--items-from", days["factors"]).exit_code == 0
    fingerprint = open_interactions(store).fingerprint
    assert "--min-user-interactions" in _error_line(_run("ingest", days["day3"], "--append", store,
                                                         "--min-user-interactions", 2))
    assert "--shard-size" in _error_line(_run("ingest", days["day3"], "--append", store, "--shard-size", 3))
    assert "none of its" in _error_line(_run("ingest", unknown, "--append", store))
    assert open_interactions(store).fingerprint == fingerprint  # nothing changed by the refusals
    # neither --out nor --append
    with pytest.raises(ParameterError, match="either out="):
        ingest(days["day3"])


def test_append_under_a_url(tmp_path):
    """An fsspec store: the append is a new attempt, published by switching CURRENT, and equals a fresh ingest."""
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    pd.DataFrame({"user": [1, 1, 2, 3, 3], "item": [10, 11, 11, 12, 10]}).to_csv(one, index=False)
    pd.DataFrame({"user": [2, 4, 4, 5], "item": [12, 10, 99, 11]}).to_csv(two, index=False)
    url = f"memory://fresh-{tmp_path.name}/s.zarr"
    ingest(one, url, shard_size=2)
    report = ingest(two, append=url)
    assert report.shards_written == [0, 1, 2] and report.n_new_users == 2 and report.dropped["unknown_item"] == 1
    assert "no item the store does not know" not in report.summary()
    known = tmp_path / "known.csv"  # day two without its row on item 99, which the store does not know
    pd.DataFrame({"user": [2, 4, 5], "item": [12, 10, 11]}).to_csv(known, index=False)
    fresh = ingest([one, known], tmp_path / "both.zarr", shard_size=2)
    appended = open_interactions(url)
    assert appended.fingerprint == fresh.fingerprint
    assert appended.attrs["shard_fingerprints"] == open_interactions(fresh.out).attrs["shard_fingerprints"]


def test_an_append_is_refused_while_another_run_writes_the_store(tmp_path):
    """An append holds the store alone from reading it to publishing: a second writer would lose its rows."""
    from concurrent.futures import ThreadPoolExecutor

    from edlae_dask.errors import OutputExistsError
    from edlae_dask.io.interactions import claim_output

    one = tmp_path / "one.csv"
    pd.DataFrame({"user": [1, 2], "item": [10, 11]}).to_csv(one, index=False)
    store = tmp_path / "s.zarr"
    ingest(one, store)
    before = open_interactions(store).fingerprint
    with claim_output(store, overwrite=True), ThreadPoolExecutor(1) as pool:  # another ingest --overwrite, running
        with pytest.raises(OutputExistsError, match="another ingest"):
            pool.submit(ingest, one, append=store).result()
    assert open_interactions(store).fingerprint == before


def test_append_with_items_from_checks_the_model_fits_the_store(days, tmp_path):
    store = tmp_path / "s.zarr"
    ingest(days["day2"], store, shard_size=SHARD, items_from=days["factors"])
    report = ingest(days["day3"], append=store, items_from=days["factors"])  # the same items: fine
    assert report.n_new_users == 3
    other = tmp_path / "other.csv"
    pd.DataFrame({"user": [1, 2], "item": [10, 11]}).to_csv(other, index=False)
    ingest(other, tmp_path / "other.zarr")
    line = _error_line(_run("ingest", days["day3"], "--append", tmp_path / "other.zarr", "--items-from",
                            days["factors"]))
    assert "the model's items are not those of" in line

"""Specification of ingest (edlae_dask.ingestion): formats, filters, ids, errors."""

import gzip
import json
import logging
import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from edlae_dask.errors import InputDataError, OutputExistsError, ParameterError
from edlae_dask.ingestion import IngestReport, ingest, pipeline
from edlae_dask.ingestion.readers import detect_format
from edlae_dask.io.interactions import open_interactions

# (user, item, value) rows shared by the format tests: a repeated pair (u1, 20),
# string-free integer ids, items out of numeric order (100 < 20 as text).
ROWS = [
    (1, 20, 5.0),
    (2, 100, 3.0),
    (1, 3, 1.0),
    (3, 20, 4.5),
    (1, 20, 2.0),
    (2, 3, 4.0),
    (4, 7, 0.5),
]


def oracle(rows, *, min_value=None, min_user=1, min_item=1):
    """Expected (X, user_ids, item_ids) by the rules of ingest, written with pandas.

    Filters: value >= min_value; one entry per (user, item); items with fewer than
    min_item users, then users with fewer than min_user items (Liang et al. 2018);
    users in order of first appearance, items sorted by id, values 1.
    """
    df = pd.DataFrame(rows, columns=["user", "item", "value"])
    if min_value is not None:
        df = df[df["value"] >= min_value]
    df = df.drop_duplicates(["user", "item"])
    per_item = df.groupby("item")["user"].count()
    df = df[df["item"].isin(per_item.index[per_item >= min_item])]
    per_user = df.groupby("user")["item"].count()
    df = df[df["user"].isin(per_user.index[per_user >= min_user])]
    users = pd.unique(df["user"])
    items = np.sort(df["item"].unique())
    rows_ = pd.Index(users).get_indexer(df["user"])
    cols = pd.Index(items).get_indexer(df["item"])
    X = sp.csr_matrix((np.ones(len(df), np.float32), (rows_, cols)), shape=(len(users), len(items)))
    return X, np.asarray(users), items


def assert_store_is(store_path, rows, **filters):
    X, users, items = oracle(rows, **filters)
    store = open_interactions(store_path)
    got = store.to_scipy()
    assert got.shape == X.shape
    assert abs(got - X).nnz == 0
    assert store.user_ids().tolist() == users.tolist()
    assert store.item_ids().tolist() == items.tolist()
    return store


def write_text(path, text, *, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as f:
        f.write(text)
    return str(path)


def csv_text(rows, header="user,item,rating"):
    return header + "\n" + "".join(f"{u},{i},{v}\n" for u, i, v in rows)


def netflix_text(rows):
    """Group rows by item as 'MovieID:' blocks (order of first appearance kept per block)."""
    lines = []
    for item in dict.fromkeys(i for _, i, _ in rows):
        lines.append(f"{item}:")
        lines += [f"{u},{int(v) if v >= 1 else 1},2005-09-06" for u, i, v in rows if i == item]
    return "\n".join(lines) + "\n"


def users_in_netflix_order(rows):
    """Netflix files list ratings by movie: the order users first appear in such a file."""
    return [r for item in dict.fromkeys(i for _, i, _ in rows) for r in rows if r[1] == item]


# ------------------------------------------------------------------- formats


@pytest.mark.parametrize("gz", [False, True])
def test_csv_gives_the_oracle_matrix(tmp_path, gz):
    src = write_text(tmp_path / ("r.csv.gz" if gz else "r.csv"), csv_text(ROWS), gz=gz)
    report = ingest(src, tmp_path / "out")
    assert_store_is(tmp_path / "out", ROWS)
    assert (report.fmt, report.rows_read, report.nnz, report.n_users, report.n_items) == ("csv", 7, 6, 4, 4)
    assert report.dropped["duplicate"] == 1


def test_csv_extra_columns_are_ignored_and_names_configurable(tmp_path):
    text = "ts,who,what,stars\n" + "".join(f"0,{u},{i},{v}\n" for u, i, v in ROWS)
    src = write_text(tmp_path / "r.csv", text)
    ingest(src, tmp_path / "out", user_col="who", item_col="what", value_col="stars", min_value=3.0)
    assert_store_is(tmp_path / "out", ROWS, min_value=3.0)


def test_csv_without_value_column(tmp_path):
    src = write_text(tmp_path / "r.csv", "user,item\n" + "".join(f"{u},{i}\n" for u, i, _ in ROWS))
    report = ingest(src, tmp_path / "out")
    assert_store_is(tmp_path / "out", ROWS)
    assert report.nnz == 6


@pytest.mark.parametrize("string_ids", [False, True])
def test_parquet_gives_the_oracle_matrix(tmp_path, string_ids):
    rows = [(f"u{u}", f"i{i}", v) for u, i, v in ROWS] if string_ids else ROWS
    df = pd.DataFrame(rows, columns=["user", "item", "rating"])
    df.to_parquet(tmp_path / "r.parquet", row_group_size=3)
    report = ingest(tmp_path / "r.parquet", tmp_path / "out", chunk_rows=2, min_value=1.0)
    assert report.fmt == "parquet"
    assert_store_is(tmp_path / "out", rows, min_value=1.0)


def test_movielens_csv_is_detected_and_read(tmp_path):
    text = csv_text([(u, i, f"{v},964982703") for u, i, v in ROWS], header="userId,movieId,rating,timestamp")
    src = write_text(tmp_path / "ratings.csv", text)
    report = ingest(src, tmp_path / "out", min_value=3.0)
    assert report.fmt == "movielens-csv" and "userId,movieId" in report.fmt_reason
    assert_store_is(tmp_path / "out", ROWS, min_value=3.0)


def test_movielens_dat_gives_the_oracle_matrix(tmp_path):
    text = "".join(f"{u}::{i}::{int(v) or 1}::978300760\n" for u, i, v in ROWS)
    src = write_text(tmp_path / "ratings.dat", text)
    report = ingest(src, tmp_path / "out", chunk_rows=3)
    assert report.fmt == "movielens-dat"
    assert_store_is(tmp_path / "out", ROWS)


def test_netflix_files_by_glob_give_the_oracle_matrix(tmp_path):
    first, second = ROWS[:4], ROWS[4:]
    write_text(tmp_path / "combined_data_1.txt", netflix_text(first))
    write_text(tmp_path / "combined_data_2.txt", netflix_text(second))
    # chunk_rows=2 splits 'MovieID:' blocks across chunks: the movie must carry over
    report = ingest(str(tmp_path / "combined_data_*.txt"), tmp_path / "out", chunk_rows=2)
    assert report.fmt == "netflix" and len(report.sources) == 2
    expected_rows = users_in_netflix_order(first) + users_in_netflix_order(second)
    assert_store_is(tmp_path / "out", expected_rows)


def test_netflix_values_are_ratings(tmp_path):
    src = write_text(tmp_path / "combined_data_1.txt", "7:\n1,5,2005-01-01\n2,2,2005-01-01\n8:\n2,4,2005-01-02\n")
    report = ingest(src, tmp_path / "out", min_value=4)
    assert_store_is(tmp_path / "out", [(1, 7, 5), (2, 8, 4)])
    assert report.dropped["below_min_value"] == 1


def test_msd_triplets_give_the_oracle_matrix(tmp_path):
    rows = [(f"b80344d063b5ccb3212f76538f3d9e43d87dca9e{u}", f"SOAKIMP12A8C130995{i}", int(v) + 1) for u, i, v in ROWS]
    src = write_text(tmp_path / "train_triplets.txt", "".join(f"{u}\t{i}\t{v}\n" for u, i, v in rows))
    report = ingest(src, tmp_path / "out", min_value=2)
    assert report.fmt == "msd"
    assert_store_is(tmp_path / "out", rows, min_value=2)


@pytest.mark.parametrize(
    ("name", "text", "fmt"),
    [
        ("r.csv", "user,item\n1,2\n", "csv"),
        ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n", "movielens-csv"),
        ("ratings.dat", "1::2::3::4\n", "movielens-dat"),
        ("combined_data_3.txt", "1:\n5,3,2005-01-01\n", "netflix"),
        ("probe.txt", "\n12:\n5,3,2005-01-01\n", "netflix"),
        ("train_triplets.txt", "u\ts\t1\n", "msd"),
        ("x.tsv.gz", "u\ts\t1\n", "msd"),
    ],
)
def test_auto_detects_the_format(tmp_path, name, text, fmt):
    path = write_text(tmp_path / name, text, gz=name.endswith(".gz"))
    assert detect_format(path)[0] == fmt


def test_auto_says_when_it_cannot_tell(tmp_path):
    path = write_text(tmp_path / "mystery.txt", "1 2 3\n")
    with pytest.raises(ParameterError, match=r"cannot tell the format of .*mystery.txt.*pass fmt= \(--format\)"):
        ingest(path, tmp_path / "out")


def test_explicit_format_overrides_the_name(tmp_path):
    src = write_text(tmp_path / "data.txt", "user,item\n1,2\n")
    report = ingest(src, tmp_path / "out", fmt="csv")
    assert (report.fmt, report.fmt_reason) == ("csv", "given")


# ------------------------------------------------------- ids, filters, values


def test_string_ids_are_preserved(tmp_path):
    rows = [("alice", "The Matrix", 1), ("bob", "Amélie", 1), ("alice", "Amélie", 1), ("007", "42", 1)]
    src = write_text(tmp_path / "r.csv", "user,item\n" + "".join(f"{u},{i}\n" for u, i, _ in rows))
    store = open_interactions(ingest(src, tmp_path / "out").out)
    assert store.user_ids().tolist() == ["alice", "bob", "007"]
    assert store.item_ids().tolist() == ["42", "Amélie", "The Matrix"]  # sorted as text
    assert store.user_ids().dtype.kind == "U"


def test_integer_ids_are_int64_and_items_sorted_numerically(tmp_path):
    rows = [(30, 100, 1), (10, 9, 1), (20, 20, 1)]
    src = write_text(tmp_path / "r.csv", "user,item\n" + "".join(f"{u},{i}\n" for u, i, _ in rows))
    store = open_interactions(ingest(src, tmp_path / "out").out)
    assert store.user_ids().tolist() == [30, 10, 20]  # first-appearance order
    assert store.item_ids().tolist() == [9, 20, 100]
    assert store.item_ids().dtype == np.int64


def test_leading_zero_ids_stay_text(tmp_path):
    src = write_text(tmp_path / "r.csv", "user,item\n007,1\n7,1\n")
    store = open_interactions(ingest(src, tmp_path / "out").out)
    assert store.user_ids().tolist() == ["007", "7"]


def test_min_value_keeps_rows_at_or_above_it_and_binarizes(tmp_path):
    src = write_text(tmp_path / "r.csv", csv_text(ROWS))
    report = ingest(src, tmp_path / "out", min_value=4.0)
    store = assert_store_is(tmp_path / "out", ROWS, min_value=4.0)
    assert set(store.to_scipy().data) == {1.0}
    assert report.dropped["below_min_value"] == 4  # 3.0, 1.0, 2.0, 0.5


@pytest.mark.parametrize(("min_user", "min_item"), [(2, 1), (1, 2), (2, 2), (3, 1)])
def test_min_interaction_filters_match_the_oracle(tmp_path, min_user, min_item):
    rng = np.random.default_rng(min_user * 10 + min_item)
    rows = [(int(u), int(i), 1.0) for u, i in zip(rng.integers(0, 15, 80), rng.integers(0, 12, 80))]
    src = write_text(tmp_path / "r.csv", csv_text(rows))
    report = ingest(src, tmp_path / "out", min_user_interactions=min_user, min_item_interactions=min_item)
    store = assert_store_is(tmp_path / "out", rows, min_user=min_user, min_item=min_item)
    assert report.rows_read == report.nnz + sum(report.dropped.values())
    np.testing.assert_array_equal(store.item_counts(), np.diff(store.to_scipy().tocsc().indptr))


def test_items_are_filtered_before_users(tmp_path):
    # user 1 has two items, but item 9 has one user: after the item filter user 1
    # keeps one item and is dropped; filtering users first would have kept them
    rows = [(1, 5, 1), (1, 9, 1), (2, 5, 1), (2, 6, 1), (3, 6, 1), (3, 5, 1)]
    src = write_text(tmp_path / "r.csv", csv_text(rows))
    report = ingest(src, tmp_path / "out", min_user_interactions=2, min_item_interactions=2)
    assert open_interactions(report.out).user_ids().tolist() == [2, 3]
    assert report.dropped == {"below_min_value": 0, "duplicate": 0,
                              "item_below_min_interactions": 1, "user_below_min_interactions": 1}


def test_items_emptied_by_the_user_filter_are_dropped(tmp_path):
    rows = [(1, 5, 1), (2, 5, 1), (2, 6, 1), (3, 7, 1)]  # min_user=2 keeps only user 2
    src = write_text(tmp_path / "r.csv", csv_text(rows))
    store = open_interactions(ingest(src, tmp_path / "out", min_user_interactions=2).out)
    assert store.item_ids().tolist() == [5, 6]
    assert (store.item_counts() > 0).all()


# --------------------------------------------------- chunking does not matter


@pytest.mark.parametrize("chunk_rows", [1, 2, 5])
def test_small_chunks_give_the_same_store_as_one_chunk(tmp_path, chunk_rows):
    rng = np.random.default_rng(0)
    users, items, values = rng.integers(0, 9, 40), rng.integers(0, 7, 40), rng.integers(1, 6, 40)
    rows = [(int(u), int(i), float(v)) for u, i, v in zip(users, items, values)]
    src = write_text(tmp_path / "r.csv", csv_text(rows))
    whole = ingest(src, tmp_path / "whole", chunk_rows=1000, min_value=2, shard_size=3)
    small = ingest(src, tmp_path / "small", chunk_rows=chunk_rows, min_value=2, shard_size=3)
    assert small.fingerprint == whole.fingerprint
    assert small.dropped == whole.dropped


def test_many_spill_buckets_give_the_same_store(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    rows = [(int(u), int(i), 1.0) for u, i in zip(rng.integers(0, 20, 100), rng.integers(0, 10, 100))]
    src = write_text(tmp_path / "r.csv", csv_text(rows))
    one = ingest(src, tmp_path / "one", shard_size=4, min_user_interactions=3)
    monkeypatch.setattr(pipeline, "BUCKET_USERS", 3)
    many = ingest(src, tmp_path / "many", shard_size=4, min_user_interactions=3, chunk_rows=7)
    assert many.fingerprint == one.fingerprint
    assert_store_is(tmp_path / "many", rows, min_user=3)


def test_shards_have_shard_size_users(tmp_path):
    rows = [(u, u % 3, 1.0) for u in range(10)]
    report = ingest(write_text(tmp_path / "r.csv", csv_text(rows)), tmp_path / "out", shard_size=4)
    store = open_interactions(report.out)
    assert store.shard_offsets == (0, 4, 8, 10) and report.n_shards == 3


# ----------------------------------------------------------- report, logging


def test_report_accounts_for_every_row_and_is_json(tmp_path):
    src = write_text(tmp_path / "r.csv", csv_text(ROWS))
    report = ingest(src, tmp_path / "out", min_value=1.0)
    assert isinstance(report, IngestReport)
    assert report.rows_read == report.nnz + sum(report.dropped.values())
    d = json.loads(json.dumps(report.as_dict()))
    assert d["sources"] == [os.path.abspath(src)] and d["fingerprint"] == report.fingerprint
    text = report.summary()
    assert "3 users x 3 items" in text and "below min value 1" in text and "duplicate 1" in text


def test_store_records_the_source_and_options(tmp_path):
    src = write_text(tmp_path / "r.csv", csv_text(ROWS))
    report = ingest(src, tmp_path / "out", min_value=1.0, min_item_interactions=1)
    source = open_interactions(report.out).attrs["source"]
    assert source["files"] == [os.path.abspath(src)] and source["format"] == "csv"
    assert source["options"]["min_value"] == 1.0 and source["columns"] == [["user", "item", "rating"]]
    assert source["dropped"] == report.dropped


def test_progress_lines_go_to_the_callback_and_the_log(tmp_path, caplog):
    lines = []
    with caplog.at_level(logging.INFO, logger="edlae_dask.ingest"):
        ingest(write_text(tmp_path / "r.csv", csv_text(ROWS)), tmp_path / "out", progress=lines.append)
    assert any("rows read" in line for line in lines)
    assert [r.getMessage() for r in caplog.records if r.name == "edlae_dask.ingest"] == lines


def test_temporary_files_are_removed(tmp_path):
    out_dir = tmp_path / "stores"
    out_dir.mkdir()
    ingest(write_text(tmp_path / "r.csv", csv_text(ROWS)), out_dir / "good")
    with pytest.raises(InputDataError):
        ingest(write_text(tmp_path / "bad.csv", "user,item\n1,2\n3,\n"), out_dir / "bad")
    assert sorted(os.listdir(out_dir)) == ["good"]


# --------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(InputDataError, match=r"nope\.csv: file not found"):
        ingest(tmp_path / "nope.csv", tmp_path / "out")


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(InputDataError, match=r"no file matches the pattern .*combined_data_\*\.txt"):
        ingest(str(tmp_path / "combined_data_*.txt"), tmp_path / "out")


def test_missing_column_lists_the_columns_and_the_flag(tmp_path):
    src = write_text(tmp_path / "r.csv", "uid,item\n1,2\n")
    with pytest.raises(InputDataError, match=r"column 'user' not found; the columns are \['uid', 'item'\].*--user-col"):
        ingest(src, tmp_path / "out")


def test_missing_value_column_named_explicitly(tmp_path):
    src = write_text(tmp_path / "r.csv", "user,item\n1,2\n")
    with pytest.raises(InputDataError, match=r"column 'score' not found.*--value-col"):
        ingest(src, tmp_path / "out", value_col="score")


def test_min_value_without_a_value_column(tmp_path):
    src = write_text(tmp_path / "r.csv", "user,item\n1,2\n")
    with pytest.raises(ParameterError, match=r"min_value=3 needs a value column.*--value-col"):
        ingest(src, tmp_path / "out", min_value=3)


@pytest.mark.parametrize(("text", "message"), [("", "is empty"), ("user,item\n", "no data rows")])
def test_empty_file(tmp_path, text, message):
    with pytest.raises(InputDataError, match=message):
        ingest(write_text(tmp_path / "r.csv", text), tmp_path / "out")


def test_empty_id_names_the_line(tmp_path):
    src = write_text(tmp_path / "r.csv", "user,item\n1,2\n\n3,4\n5,\n")
    with pytest.raises(InputDataError, match=r"r\.csv, line 5: empty or missing item id in column 'item'"):
        ingest(src, tmp_path / "out", chunk_rows=2)


@pytest.mark.parametrize(("field", "shown"), [("abc", "'abc'"), ("", "an empty or NaN field"), ("nan", "'nan'")])
def test_bad_value_names_the_line_and_what_was_found(tmp_path, field, shown):
    src = write_text(tmp_path / "r.csv", f"user,item,rating\n1,2,4\n3,4,1\n5,6,{field}\n")
    with pytest.raises(InputDataError, match=rf"line 4: value column 'rating' holds {shown}; values must be finite"):
        ingest(src, tmp_path / "out", chunk_rows=2)


def test_malformed_dat_line(tmp_path):
    src = write_text(tmp_path / "ratings.dat", "1::2::3::4\n1::2::3\n")
    with pytest.raises(InputDataError, match=r"ratings\.dat, line 2: malformed line '1:2:3'; expected UserID::MovieID"):
        ingest(src, tmp_path / "out")


def test_dat_line_with_extra_fields(tmp_path):
    src = write_text(tmp_path / "ratings.dat", "1::2::3::4\n1::2::3::4::5\n")
    with pytest.raises(InputDataError, match=r"ratings\.dat: malformed line: Expected 7 fields in line 2, saw 9"):
        ingest(src, tmp_path / "out")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("u\ts\t1\nu\ts\n", r"line 2: malformed line 'u\\ts'; expected user<TAB>song<TAB>count"),
        ("u\ts\t1\nv\ts\t1\nu\ts\t1\tx\n", r"malformed line: Expected 3 fields in line 3, saw 4"),
    ],
)
def test_malformed_msd_line(tmp_path, text, message):
    src = write_text(tmp_path / "train_triplets.txt", text)
    with pytest.raises(InputDataError, match=message):
        ingest(src, tmp_path / "out", fmt="msd")


def test_malformed_netflix_line(tmp_path):
    src = write_text(tmp_path / "combined_data_1.txt", "1:\n5,3,2005-01-01\n6,3\n")
    message = r"line 3: malformed line '6,3'; expected 'MovieID:' or 'CustomerID,Rating,Date'"
    with pytest.raises(InputDataError, match=message):
        ingest(src, tmp_path / "out")


def test_netflix_rating_before_any_movie(tmp_path):
    src = write_text(tmp_path / "combined_data_1.txt", "5,3,2005-01-01\n1:\n6,3,2005-01-01\n")
    with pytest.raises(InputDataError, match=r"line 1: a rating line before any 'MovieID:' line"):
        ingest(src, tmp_path / "out")


def test_parquet_float_ids_are_refused(tmp_path):
    pd.DataFrame({"user": [1.5, 2.0], "item": [1, 2]}).to_parquet(tmp_path / "r.parquet")
    with pytest.raises(InputDataError, match=r"id column 'user' has type double; ids must be integers or strings"):
        ingest(tmp_path / "r.parquet", tmp_path / "out")


def test_parquet_null_id_names_the_row(tmp_path):
    pd.DataFrame({"user": ["a", None, "c"], "item": ["x", "y", "z"]}).to_parquet(tmp_path / "r.parquet")
    with pytest.raises(InputDataError, match=r"r\.parquet, row 2: empty or missing user id"):
        ingest(tmp_path / "r.parquet", tmp_path / "out")


def test_everything_below_min_value(tmp_path):
    src = write_text(tmp_path / "r.csv", csv_text(ROWS))
    with pytest.raises(InputDataError, match=r"nothing left after the min_value filter: all 7 rows .* --min-value"):
        ingest(src, tmp_path / "out", min_value=10)


def test_everything_removed_by_the_item_filter(tmp_path):
    src = write_text(tmp_path / "r.csv", csv_text(ROWS))
    with pytest.raises(InputDataError, match=r"nothing left after the item filter.*the most any item has is 2"):
        ingest(src, tmp_path / "out", min_item_interactions=3)


def test_everything_removed_by_the_user_filter(tmp_path):
    src = write_text(tmp_path / "r.csv", csv_text(ROWS))
    with pytest.raises(InputDataError, match=r"nothing left after the user filter.*--min-user-interactions"):
        ingest(src, tmp_path / "out", min_user_interactions=4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "xlsx"}, "unknown format 'xlsx'"),
        ({"shard_size": 0}, "'shard_size' parameter of ingest must be an integer >= 1. Got 0"),
        ({"chunk_rows": -5}, "'chunk_rows' parameter of ingest must be an integer >= 1"),
        ({"min_user_interactions": 0}, "'min_user_interactions' parameter"),
        ({"min_item_interactions": 1.5}, "'min_item_interactions' parameter"),
        ({"min_value": float("nan")}, "'min_value' parameter of ingest must be a finite number"),
    ],
)
def test_bad_parameters(tmp_path, kwargs, message):
    src = write_text(tmp_path / "r.csv", csv_text(ROWS))
    with pytest.raises(ParameterError, match=message):
        ingest(src, tmp_path / "out", **kwargs)


def test_existing_output_is_refused_before_reading(tmp_path):
    (tmp_path / "out").mkdir()
    bad = write_text(tmp_path / "r.csv", "user,item\n1,\n")  # reading it would raise InputDataError
    with pytest.raises(OutputExistsError, match="already exists; pass overwrite=True / --overwrite"):
        ingest(bad, tmp_path / "out")


def test_overwrite_replaces_a_previous_ingest(tmp_path):
    src = write_text(tmp_path / "r.csv", csv_text(ROWS))
    ingest(src, tmp_path / "out")
    report = ingest(src, tmp_path / "out", min_value=4.0, overwrite=True)
    assert open_interactions(tmp_path / "out").fingerprint == report.fingerprint
    assert_store_is(tmp_path / "out", ROWS, min_value=4.0)

"""Ids come back exactly, or the input is refused with one line naming where and how to fix it.

- unsigned 64-bit ids (2**63 and above) round-trip as uint64 through ingest, train and score;
- a CSV row with more fields than its header (an unquoted delimiter) is refused by line;
- string ids with control characters (NUL, tab, DEL, ...) are refused by line, row or position;
- string ids are bounded (MAX_ID_CHARS) so that one long id cannot widen every stored id.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from click.testing import CliRunner

from edlae_dask.cli import cli
from edlae_dask.errors import InputDataError
from edlae_dask.ingestion import ingest
from edlae_dask.io import interactions
from edlae_dask.io.factors import open_factors
from edlae_dask.io.interactions import MAX_ID_CHARS, normalize_ids, open_interactions, write_interactions
from edlae_dask.io.recommendations import open_recommendations

from conftest import clustered_interactions, random_interactions

BIG = 2**63  # the first id int64 cannot hold


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _refused(result, *fragments):
    """The command failed with exit code 1 and one error line (after the progress log) holding every fragment."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _write(path, text):
    path.write_text(text)
    return path


# ------------------------------------------------------------------ uint64 ids


def test_uint64_ids_round_trip_through_ingest_train_and_score(tmp_path):
    X = clustered_interactions(n_users=80, n_items=14, seed=3).tocoo()
    users = np.uint64(2**64 - 1) - X.row.astype(np.uint64)  # the largest uint64 ids, none fits int64
    items = np.uint64(BIG) + X.col.astype(np.uint64) * np.uint64(1000)
    src = tmp_path / "r.parquet"
    pq.write_table(pa.table({"user": pa.array(users, pa.uint64()), "item": pa.array(items, pa.uint64())}), src)
    store, factors, recs = tmp_path / "x.zarr", tmp_path / "f", tmp_path / "recs"

    assert _cli("ingest", src, "--out", store, "--shard-size", 30).exit_code == 0
    s = open_interactions(store)
    assert s.user_ids().dtype == np.uint64 and s.item_ids().dtype == np.uint64
    assert s.user_ids().tolist() == list(dict.fromkeys(users.tolist()))  # first appearance, exactly
    assert s.item_ids().tolist() == sorted(set(items.tolist()))  # numeric order, exactly

    r = _cli("train", "--interactions", store, "--out", factors, "--k", 3, "--cluster", "threads")
    assert r.exit_code == 0, r.output
    f = open_factors(factors)
    assert f.item_ids.dtype == np.uint64 and f.item_ids.tolist() == s.item_ids().tolist()

    r = _cli("score", "--factors", factors, "--interactions", store, "--out", recs, "--top-n", 3,
             "--cluster", "threads")
    assert r.exit_code == 0, r.output
    rec = open_recommendations(recs)
    assert rec.user_ids.dtype == np.uint64 and rec.user_ids.tolist() == s.user_ids().tolist()
    assert rec.item_ids.dtype == np.uint64 and rec.item_ids.tolist() == s.item_ids().tolist()
    top = rec.item_ids[rec.items.compute()[0]]
    assert all(int(i) >= BIG for i in top)


def test_csv_integers_above_int64_are_stored_as_uint64(tmp_path):
    src = _write(tmp_path / "r.csv", f"user,item\n{2**64 - 1},1\n{BIG},2\n7,{BIG + 5}\n")
    s = open_interactions(ingest(src, tmp_path / "x").out)
    assert s.user_ids().dtype == np.uint64 and s.user_ids().tolist() == [2**64 - 1, BIG, 7]
    assert s.item_ids().dtype == np.uint64 and s.item_ids().tolist() == [1, 2, BIG + 5]


def test_ids_that_fit_int64_stay_int64(tmp_path):
    src = _write(tmp_path / "r.csv", f"user,item\n{BIG - 1},1\n-{BIG},2\n")
    s = open_interactions(ingest(src, tmp_path / "x").out)
    assert s.user_ids().dtype == np.int64 and s.user_ids().tolist() == [BIG - 1, -BIG]
    assert s.item_ids().dtype == np.int64


@pytest.mark.parametrize(
    ("ids", "dtype", "values"),
    [
        (np.array([2**64 - 1, 0], dtype=np.uint64), "uint64", [2**64 - 1, 0]),
        (np.array([BIG - 1, 0], dtype=np.uint64), "int64", [BIG - 1, 0]),  # fits int64: int64 as before
        ([2**64 - 1, 3], "uint64", [2**64 - 1, 3]),  # a list numpy would have made float
        ([str(BIG), "3"], "uint64", [BIG, 3]),
        (np.array([BIG, "x"], dtype=object), "<U19", [str(BIG), "x"]),  # not all integers: text
        ([str(2**64), "-1"], "<U20", [str(2**64), "-1"]),  # beyond 64 bits: text, as before
        ([f"0{BIG}", "1"], "<U20", [f"0{BIG}", "1"]),  # not canonical: text
    ],
)
def test_normalize_ids_keeps_unsigned_ids_exact(ids, dtype, values):
    out = normalize_ids(ids)
    assert out.dtype == np.dtype(dtype) and out.tolist() == values


@pytest.mark.parametrize("ids", [["-1", str(2**64 - 1)], [-1, BIG], np.array([-1, BIG], dtype=object)])
def test_normalize_ids_refuses_negative_and_unsigned_ids_together(ids):
    with pytest.raises(InputDataError, match=r"mix negative integers \(e.g. -1\) with integers of 2\*\*63"):
        normalize_ids(ids, what="item_ids")


def test_ingest_refuses_negative_and_unsigned_ids_in_one_column(tmp_path):
    src = _write(tmp_path / "r.csv", f"user,item\n1,-5\n2,{2**64 - 1}\n")
    _refused(_cli("ingest", src, "--out", tmp_path / "x"), "item ids mix negative integers (e.g. -5)",
             "signed (int64) or unsigned (uint64)")
    assert not (tmp_path / "x").exists()


def test_uint64_and_int64_files_share_ids(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"user": pa.array([BIG + 1, 5], pa.uint64()), "item": pa.array([1, 2], pa.int64())}), a)
    pq.write_table(pa.table({"user": pa.array([5], pa.int64()), "item": pa.array([3], pa.uint64())}), b)
    s = open_interactions(ingest([a, b], tmp_path / "x").out)
    assert s.user_ids().tolist() == [BIG + 1, 5] and s.user_ids().dtype == np.uint64
    assert s.to_scipy()[1].indices.tolist() == [1, 2]  # user 5 of both files is one user


# ------------------------------------------------------------- CSV field counts


def test_a_row_with_more_fields_than_the_header_is_refused_by_line(tmp_path):
    src = _write(tmp_path / "r.csv", "user,item,rating\nalice,10,5\nSmith, John,10,5\nbob,11,4\n")
    line = _refused(_cli("ingest", src, "--out", tmp_path / "x"), f"{src}, line 3", "4 fields",
                    "3 columns of the header", "quoted")
    assert "Smith, John" in line  # the fix shows how
    assert not (tmp_path / "x").exists()


def test_a_first_row_with_more_fields_is_refused_too(tmp_path):
    # pandas would read it as an index column plus shifted fields
    src = _write(tmp_path / "r.csv", "user,item,rating\nSmith, John,10,5\nbob,11,4\n")
    _refused(_cli("ingest", src, "--out", tmp_path / "x"), f"{src}, line 2", "more fields than the 3 columns",
             "quoted")


def test_a_late_row_with_more_fields_names_its_line_across_chunks(tmp_path):
    rows = "".join(f"u{i},i{i % 5},1\n" for i in range(30))
    src = _write(tmp_path / "r.csv", "user,item,rating\n" + rows + "\nSmith, John,10,5\n")
    with pytest.raises(InputDataError, match=r"r\.csv, line 33: 4 fields, more than the 3 columns"):
        ingest(src, tmp_path / "x", chunk_rows=7)


def test_a_quoted_field_with_the_delimiter_is_one_field(tmp_path):
    src = _write(tmp_path / "r.csv", 'user,item,rating\n"Smith, John",10,5\nbob,11,4\n')
    s = open_interactions(ingest(src, tmp_path / "x").out)
    assert s.user_ids().tolist() == ["Smith, John", "bob"]


def test_a_row_missing_a_used_field_is_refused_by_line(tmp_path):
    src = _write(tmp_path / "r.csv", "user,item,rating\nalice,10,5\nbob\n")
    _refused(_cli("ingest", src, "--out", tmp_path / "x"), f"{src}, line 3", "missing item id")


# ---------------------------------------------------------- control characters


@pytest.mark.parametrize("bad", ["\x00", "\x01", "\x1f", "\x7f"])
def test_control_characters_in_csv_ids_are_refused_by_line(tmp_path, bad):
    src = tmp_path / "r.csv"
    src.write_bytes(f"user,item\nalice,10\nbob{bad},11\n".encode())
    line = _refused(_cli("ingest", src, "--out", tmp_path / "x"), f"{src}, line 3 (column 'user')",
                    f"contains the control character {bad!r}", "Remove control characters")
    assert "bob" in line


def test_a_trailing_nul_is_refused_not_dropped(tmp_path):
    # numpy's fixed-width strings drop trailing NULs: "a\0" would have become "a", one id with "a"
    src = tmp_path / "r.csv"
    src.write_bytes(b"user,item\na,1\na\x00,2\n")
    with pytest.raises(InputDataError, match=r"line 3 \(column 'user'\): user id 'a\\x00' contains"):
        ingest(src, tmp_path / "x")


def test_line_breaks_and_tabs_inside_quoted_ids_are_refused(tmp_path):
    src = _write(tmp_path / "r.csv", 'user,item\nalice,"The\tMatrix"\n')
    with pytest.raises(InputDataError, match=r"line 2 \(column 'item'\): item id .* control character '\\t'"):
        ingest(src, tmp_path / "x")


def test_control_characters_in_parquet_ids_are_refused_by_row(tmp_path):
    src = tmp_path / "r.parquet"
    pq.write_table(pa.table({"user": ["a", "b", "c"], "item": ["x", "y\x00z", "z"]}), src)
    _refused(_cli("ingest", src, "--out", tmp_path / "x"), f"{src}, row 2 (column 'item')", "'\\x00'")


@pytest.mark.parametrize("ids", [["a", "b\x00"], np.array(["a", "b\x00c"]), np.array(["a", "b\x7f"], dtype=object)])
def test_write_interactions_refuses_control_characters_by_position(tmp_path, ids):
    with pytest.raises(InputDataError, match=r"user_ids\[1\] 'b.*' contains the control character"):
        write_interactions(tmp_path / "s", random_interactions(2, 3, 0.5), user_ids=ids)


# ------------------------------------------------------------------ long ids


def test_one_long_id_is_refused_by_line_before_it_widens_every_id(tmp_path):
    rows = "".join(f"u{i},i{i % 7}\n" for i in range(50))
    src = _write(tmp_path / "r.csv", "user,item\n" + rows + "x" * 10_000 + ",i1\n")
    line = _refused(_cli("ingest", src, "--out", tmp_path / "x"), f"{src}, line 52 (column 'user')",
                    "10,000 characters long", f"at most {MAX_ID_CHARS} characters", "short keys")
    assert len(line) < 400  # the id itself is cut short in the message


def test_ids_up_to_the_bound_are_stored_fixed_width(tmp_path):
    longest = "y" * MAX_ID_CHARS
    src = _write(tmp_path / "r.csv", f"user,item\nu1,{longest}\nu2,i1\n")
    s = open_interactions(ingest(src, tmp_path / "x").out)
    assert s.item_ids().tolist() == ["i1", longest]
    assert s.item_ids().dtype == np.dtype(f"<U{MAX_ID_CHARS}")  # at most 4 * MAX_ID_CHARS bytes an id
    assert s.user_ids().dtype == np.dtype("<U2")  # a long item id does not widen the user ids


def test_normalize_ids_refuses_a_long_id_by_position():
    with pytest.raises(InputDataError, match=rf"item_ids\[2\] .* is 300 characters long; ids may be at most "
                                             rf"{MAX_ID_CHARS} characters"):
        normalize_ids(["a", "b", "z" * 300], what="item_ids")


def test_stores_written_with_longer_fixed_width_ids_still_read(tmp_path, monkeypatch):
    # as an earlier edlae-dask, without the bound, wrote them
    ids = np.array(["w" * 400, "v"])
    monkeypatch.setattr(interactions, "MAX_ID_CHARS", 10_000)
    write_interactions(tmp_path / "s", random_interactions(2, 3, 0.9), user_ids=ids)
    monkeypatch.undo()
    s = open_interactions(tmp_path / "s")
    assert s.user_ids().dtype == np.dtype("<U400") and s.user_ids().tolist() == ids.tolist()
    assert zarr.open_group(str(tmp_path / "s"), mode="r")["user_ids"].dtype == np.dtype("<U400")

"""Specification of the interaction store (edlae_dask.io.interactions)."""

import os
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from edlae_dask import __version__
from edlae_dask.errors import InputDataError, OutputExistsError, ParameterError, StoreFormatError
from edlae_dask.io.interactions import (
    FORMAT_NAME,
    FORMAT_VERSION,
    normalize_ids,
    open_interactions,
    read_shard,
    write_interactions,
    write_interactions_from_shards,
)


def random_csr(n_users=10, n_items=6, density=0.4, seed=0):
    X = sp.random(n_users, n_items, density=density, format="csr", random_state=seed, dtype=np.float32)
    X.data[:] = np.arange(1, X.nnz + 1)  # distinct values, so a misplaced entry shows
    return X


def assert_csr_equal(A, B):
    assert A.shape == B.shape
    assert A.dtype == np.float32
    assert abs(A - B).nnz == 0


def leftovers(parent):
    """Hidden temporary siblings a writer may leave behind."""
    return [n for n in os.listdir(parent) if n.startswith(".")]


# ------------------------------------------------------------------ round trip


@pytest.mark.parametrize("shard_size", [1, 3, 4, 10, 1000])
def test_round_trip_equals_input_with_ragged_last_shard(tmp_path, shard_size):
    X = random_csr(10, 6)
    store = write_interactions(tmp_path / "s", X, shard_size=shard_size)
    expected_offsets = (*range(0, 10, shard_size), 10)
    assert store.shard_offsets == expected_offsets
    assert (store.n_users, store.n_items, store.nnz) == (10, 6, X.nnz)
    assert_csr_equal(store.to_scipy(), X)
    for s in range(store.n_shards):
        a, b = store.shard_offsets[s], store.shard_offsets[s + 1]
        shard = read_shard(str(tmp_path / "s"), s)
        assert_csr_equal(shard, X[a:b])
        assert shard.has_sorted_indices and shard.indices.dtype == np.int32


def test_open_returns_the_same_handle_as_write(tmp_path):
    store = write_interactions(tmp_path / "s", random_csr(), shard_size=4)
    assert open_interactions(tmp_path / "s") == store
    assert store.path == str(tmp_path / "s")


def test_store_handle_is_small_and_picklable(tmp_path):
    store = write_interactions(tmp_path / "s", random_csr(), shard_size=4)
    again = pickle.loads(pickle.dumps(store))
    assert again == store
    assert_csr_equal(again.read_shard(1), store.read_shard(1))
    assert len(pickle.dumps(store)) < 5_000


def test_item_counts_are_entries_per_column(tmp_path):
    X = random_csr(12, 5)
    store = write_interactions(tmp_path / "s", X, shard_size=5)
    np.testing.assert_array_equal(store.item_counts(), np.diff(X.tocsc().indptr))
    assert store.item_counts().dtype == np.int64


def test_duplicate_entries_are_summed_and_indices_sorted(tmp_path):
    # row 0 holds item 2 twice and unsorted indices; scipy's canonical form sums repeats
    X = sp.csr_matrix((np.array([1.0, 2.0, 3.0], np.float32), np.array([2, 0, 2]), np.array([0, 3])), shape=(1, 3))
    store = write_interactions(tmp_path / "s", X)
    got = store.read_shard(0)
    np.testing.assert_array_equal(got.indices, [0, 2])
    np.testing.assert_array_equal(got.data, [2.0, 4.0])


def test_explicit_zeros_are_not_stored(tmp_path):
    X = sp.csr_matrix((np.array([0.0, 1.0], np.float32), np.array([0, 1]), np.array([0, 2])), shape=(1, 2))
    store = write_interactions(tmp_path / "s", X)
    assert store.nnz == 1
    np.testing.assert_array_equal(store.item_counts(), [0, 1])


def test_attributes_describe_the_store(tmp_path):
    X = random_csr(7, 4)
    store = write_interactions(tmp_path / "s", X, shard_size=3, source={"files": ["a.csv"]})
    attrs = dict(zarr.open_group(str(tmp_path / "s"), mode="r").attrs)
    assert attrs["format"] == FORMAT_NAME and attrs["format_version"] == FORMAT_VERSION
    shape = (attrs["n_users"], attrs["n_items"], attrs["nnz"], attrs["n_shards"], attrs["shard_size"])
    assert shape == (7, 4, X.nnz, 3, 3)
    assert attrs["complete"] is True and list(attrs)[-1] == "complete"
    assert attrs["code_version"] == __version__
    assert attrs["source"] == {"files": ["a.csv"]}
    assert attrs["fingerprint"] == store.fingerprint and len(store.fingerprint) == 64
    assert store.attrs == attrs


def test_each_shard_array_is_one_chunk(tmp_path):
    write_interactions(tmp_path / "s", random_csr(10, 6), shard_size=4)
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    for name in ("indptr", "indices", "values"):
        arr = g[f"shards/00001/{name}"]
        assert arr.chunks == arr.shape
    assert (g["shards/00001/indptr"].dtype, g["shards/00001/indices"].dtype, g["shards/00001/values"].dtype) == (
        np.int64, np.int32, np.float32)


@pytest.mark.parametrize("s", [-1, 3, 1.0])
def test_read_shard_rejects_shard_numbers_out_of_range(tmp_path, s):
    write_interactions(tmp_path / "s", random_csr(10, 6), shard_size=4)
    with pytest.raises(ParameterError, match=r"valid shard numbers are 0\.\.2"):
        read_shard(str(tmp_path / "s"), s)


# ------------------------------------------------------------------------ ids


def test_default_ids_are_positions(tmp_path):
    store = write_interactions(tmp_path / "s", random_csr(5, 3))
    np.testing.assert_array_equal(store.user_ids(), np.arange(5))
    np.testing.assert_array_equal(store.item_ids(), np.arange(3))
    assert store.user_ids().dtype == np.int64


def test_string_and_integer_ids_round_trip(tmp_path):
    users = ["alice", "bob", "carol", "dé"]
    items = ["10", "2", "300"]  # canonical integer strings: stored as int64
    store = write_interactions(tmp_path / "s", random_csr(4, 3), user_ids=users, item_ids=items)
    assert store.user_ids().tolist() == users and store.user_ids().dtype.kind == "U"
    assert store.item_ids().tolist() == [10, 2, 300] and store.item_ids().dtype == np.int64


@pytest.mark.parametrize(
    ("ids", "dtype", "values"),
    [
        ([3, 1, 2], "int64", [3, 1, 2]),
        (np.array([3, 1], dtype=np.uint16), "int64", [3, 1]),
        (["7", "-12", "0"], "int64", [7, -12, 0]),
        (["007", "7"], "<U3", ["007", "7"]),  # str(int("007")) != "007": kept as text
        (["+7", "8"], "<U2", ["+7", "8"]),
        (["-0", "1"], "<U2", ["-0", "1"]),
        (["a", "bbb"], "<U3", ["a", "bbb"]),
        (np.array(["x", 5], dtype=object), "<U1", ["x", "5"]),
        (["99999999999999999999", "1"], "<U20", ["99999999999999999999", "1"]),  # beyond int64
    ],
)
def test_normalize_ids_picks_int64_only_for_canonical_integers(ids, dtype, values):
    out = normalize_ids(ids)
    assert out.dtype == np.dtype(dtype)
    assert out.tolist() == values


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["a", "b", "a"], "must be unique; 1 ids occur more than once"),
        ([1.5, 2.5], "must be integers or strings; found dtype float64"),
        (np.array(["a", None], dtype=object), "found None"),
        (["a", ""], r"\[1\] is an empty string"),
        ([[1, 2]], "one-dimensional"),
    ],
)
def test_normalize_ids_rejects_bad_ids(ids, message):
    with pytest.raises(InputDataError, match=message):
        normalize_ids(ids, what="user_ids")


def test_write_rejects_ids_of_the_wrong_length(tmp_path):
    with pytest.raises(InputDataError, match="item_ids has 2 entries but the matrix has 3"):
        write_interactions(tmp_path / "s", random_csr(4, 3), item_ids=[1, 2])
    assert not (tmp_path / "s").exists()


def test_write_rejects_duplicate_user_ids(tmp_path):
    with pytest.raises(InputDataError, match="user_ids must be unique.*'u1'"):
        write_interactions(tmp_path / "s", random_csr(3, 3), user_ids=["u1", "u2", "u1"])


# -------------------------------------------------------------- input checks


def test_write_rejects_non_csr_input(tmp_path):
    with pytest.raises(InputDataError, match=r"CSR.*got coo_matrix \(coo\).*X\.tocsr\(\)"):
        write_interactions(tmp_path / "s", random_csr().tocoo())


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])
def test_write_rejects_non_finite_values(tmp_path, bad):
    X = random_csr()
    X.data = X.data.astype(np.float64)
    X.data[2] = bad  # 1e300 overflows float32 to inf
    with pytest.raises(InputDataError, match="NaN or infinite values"):
        write_interactions(tmp_path / "s", X, shard_size=4)
    assert not (tmp_path / "s").exists() and leftovers(tmp_path) == []


def test_write_rejects_bad_shard_size(tmp_path):
    with pytest.raises(ParameterError, match="shard_size must be a positive integer"):
        write_interactions(tmp_path / "s", random_csr(), shard_size=0)


def test_streaming_writer_checks_shard_sizes(tmp_path):
    X = random_csr(10, 6)
    shards = [X[0:4], X[4:6], X[6:10]]  # a short shard in the middle
    with pytest.raises(InputDataError, match="only the last shard may have fewer"):
        write_interactions_from_shards(tmp_path / "s", shards, n_items=6, user_ids=np.arange(10),
                                       item_ids=np.arange(6), shard_size=4)
    assert not (tmp_path / "s").exists()


def test_streaming_writer_checks_rows_against_user_ids(tmp_path):
    X = random_csr(10, 6)
    with pytest.raises(InputDataError, match="the shards hold 8 users but user_ids has 10"):
        write_interactions_from_shards(tmp_path / "s", [X[0:4], X[4:8]], n_items=6, user_ids=np.arange(10),
                                       item_ids=np.arange(6), shard_size=4)


def test_streaming_writer_equals_whole_matrix_writer(tmp_path):
    X = random_csr(10, 6)
    a = write_interactions(tmp_path / "a", X, shard_size=4)
    b = write_interactions_from_shards(tmp_path / "b", (X[i : i + 4] for i in range(0, 10, 4)), n_items=6,
                                       user_ids=np.arange(10), item_ids=np.arange(6), shard_size=4)
    assert a.fingerprint == b.fingerprint
    assert_csr_equal(b.to_scipy(), X)


# ----------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_independent_of_sharding(tmp_path):
    X = random_csr(10, 6)
    prints = {write_interactions(tmp_path / f"s{k}", X, shard_size=k).fingerprint for k in (1, 3, 10)}
    prints.add(write_interactions(tmp_path / "again", X.copy(), shard_size=3).fingerprint)
    assert len(prints) == 1


@pytest.mark.parametrize("change", ["value", "position", "user_ids", "item_ids", "empty_column"])
def test_fingerprint_changes_with_content(tmp_path, change):
    X = random_csr(6, 4)
    base = write_interactions(tmp_path / "base", X).fingerprint
    Y, kw = X.copy(), {}
    if change == "value":
        Y.data[0] += 1
    elif change == "position":
        Y = sp.csr_matrix(X.toarray()[:, [1, 0, 2, 3]])
    elif change == "user_ids":
        kw["user_ids"] = np.arange(1, 7)
    elif change == "item_ids":
        kw["item_ids"] = ["0", "1", "2", "x"]
    else:
        Y = sp.hstack([X, sp.csr_matrix((6, 1), dtype=np.float32)], format="csr")
    assert write_interactions(tmp_path / "other", Y, **kw).fingerprint != base


# ----------------------------------------------------------- opening a store


def _edit_attrs(path, **changes):
    g = zarr.open_group(str(path), mode="r+")
    g.attrs.update(changes)


def test_open_missing_path_names_the_fix(tmp_path):
    with pytest.raises(StoreFormatError, match=r"no interaction store at .*nope: the path does not exist.*ingest"):
        open_interactions(tmp_path / "nope")


def test_open_plain_directory_is_not_a_store(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("hi")
    with pytest.raises(StoreFormatError, match=r"d is not a zarr v3 group"):
        open_interactions(tmp_path / "d")


def test_open_rejects_another_format(tmp_path):
    write_interactions(tmp_path / "s", random_csr())
    _edit_attrs(tmp_path / "s", format="edlae-dask/factors")
    message = "'format' attribute is 'edlae-dask/factors', expected 'edlae-dask/interactions'"
    with pytest.raises(StoreFormatError, match=message):
        open_interactions(tmp_path / "s")


def test_open_rejects_another_format_version_and_says_reingest(tmp_path):
    write_interactions(tmp_path / "s", random_csr())
    _edit_attrs(tmp_path / "s", format_version=2)
    with pytest.raises(StoreFormatError, match=r"format_version 2.*reads format_version 1.*Re-ingest") as err:
        open_interactions(tmp_path / "s")
    assert str(tmp_path / "s") in str(err.value)


def test_open_rejects_an_incomplete_store(tmp_path):
    write_interactions(tmp_path / "s", random_csr())
    _edit_attrs(tmp_path / "s", complete=False)
    with pytest.raises(StoreFormatError, match="incomplete interaction store"):
        open_interactions(tmp_path / "s")
    with pytest.raises(StoreFormatError, match="incomplete interaction store"):
        read_shard(str(tmp_path / "s"), 0)


def test_open_rejects_object_dtype_ids(tmp_path):
    write_interactions(tmp_path / "s", random_csr(4, 3))
    g = zarr.open_group(str(tmp_path / "s"), mode="r+")
    arr = g.create_array("user_ids", shape=(4,), dtype=str, chunks=(4,), overwrite=True)  # variable-length strings
    arr[:] = np.array(["a", "b", "c", "d"])
    with pytest.raises(StoreFormatError, match="user_ids has dtype .*never object/variable-length"):
        open_interactions(tmp_path / "s")


def test_open_rejects_inconsistent_shapes(tmp_path):
    write_interactions(tmp_path / "s", random_csr(10, 6), shard_size=4)
    _edit_attrs(tmp_path / "s", n_users=11)
    with pytest.raises(StoreFormatError, match="shard_offsets .* do not split 11 users"):
        open_interactions(tmp_path / "s")


def test_open_rejects_item_id_length_mismatch(tmp_path):
    write_interactions(tmp_path / "s", random_csr(10, 6), shard_size=4)
    g = zarr.open_group(str(tmp_path / "s"), mode="r+")
    g.create_array("item_ids", shape=(5,), dtype="int64", chunks=(5,), overwrite=True)
    with pytest.raises(StoreFormatError, match=r"item_ids has shape \(5,\) but the store declares 6 entries"):
        open_interactions(tmp_path / "s")


# ------------------------------------------------------ overwrite, atomicity


def test_existing_output_is_refused_without_overwrite(tmp_path):
    write_interactions(tmp_path / "s", random_csr())
    with pytest.raises(OutputExistsError, match="already exists; pass overwrite=True / --overwrite"):
        write_interactions(tmp_path / "s", random_csr(seed=1))


def test_overwrite_replaces_an_interaction_store(tmp_path):
    write_interactions(tmp_path / "s", random_csr(seed=0))
    Y = random_csr(5, 3, seed=1)
    store = write_interactions(tmp_path / "s", Y, overwrite=True)
    assert_csr_equal(open_interactions(tmp_path / "s").to_scipy(), Y)
    assert store.n_users == 5
    assert leftovers(tmp_path) == []


def test_overwrite_fills_an_empty_directory(tmp_path):
    (tmp_path / "s").mkdir()
    write_interactions(tmp_path / "s", random_csr(), overwrite=True)
    assert open_interactions(tmp_path / "s").n_users == 10


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_overwrite_never_deletes_something_else(tmp_path, kind):
    target = tmp_path / "precious"
    if kind == "directory":
        target.mkdir()
        (target / "thesis.tex").write_text("years of work")
    else:
        target.write_text("years of work")
    message = "refusing to overwrite .*precious: it is not an edlae-dask interaction store"
    with pytest.raises(OutputExistsError, match=message):
        write_interactions(target, random_csr(), overwrite=True)
    assert (target / "thesis.tex" if kind == "directory" else target).read_text() == "years of work"
    assert leftovers(tmp_path) == []


def _failing_shards(X, fail_at):
    for s in range(0, X.shape[0], 2):
        if s // 2 == fail_at:
            raise RuntimeError("killed while writing")
        yield X[s : s + 2]


def test_a_killed_write_leaves_no_store(tmp_path):
    X = random_csr(10, 6)
    with pytest.raises(RuntimeError, match="killed while writing"):
        write_interactions_from_shards(tmp_path / "s", _failing_shards(X, 3), n_items=6, user_ids=np.arange(10),
                                       item_ids=np.arange(6), shard_size=2)
    assert not (tmp_path / "s").exists()
    assert leftovers(tmp_path) == []


def test_a_killed_overwrite_keeps_the_old_store(tmp_path):
    old = write_interactions(tmp_path / "s", random_csr(seed=5))
    X = random_csr(10, 6)
    with pytest.raises(RuntimeError, match="killed while writing"):
        write_interactions_from_shards(tmp_path / "s", _failing_shards(X, 2), n_items=6, user_ids=np.arange(10),
                                       item_ids=np.arange(6), shard_size=2, overwrite=True)
    assert open_interactions(tmp_path / "s").fingerprint == old.fingerprint
    assert leftovers(tmp_path) == []


def test_parent_directories_are_created(tmp_path):
    store = write_interactions(tmp_path / "a" / "b" / "s", random_csr())
    assert open_interactions(store.path).nnz == store.nnz

"""``export``: a recommendations store to Parquet / CSV, against open_recommendations."""

import gzip
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_scoring import publish_factors

from edlae_dask.cli import cli
from edlae_dask.errors import OutputExistsError, ParameterError, StoreFormatError
from edlae_dask.io.export import export_recommendations
from edlae_dask.io.interactions import write_interactions
from edlae_dask.io.recommendations import open_recommendations
from edlae_dask.scoring import score

from conftest import random_interactions

# zarr: fixed-width string ids have no ratified v3 spec yet
pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")

N_USERS, N_ITEMS, K, SHARD = 37, 23, 3, 10  # shards of 10, 10, 10, 7 users


def make_recs(tmp_path, *, ids="int64", top_n=5, dense_user=False):
    rng = np.random.default_rng(1)
    X = random_interactions(N_USERS, N_ITEMS, 0.2, seed=5)
    if dense_user:  # user 3 has all but 2 items: top_n > 2 pads it with -inf
        X = X.tolil()
        X[3, 2:] = 1.0
        X = X.tocsr()
    if ids == "str":
        users = np.array([f"user-{i}" for i in range(N_USERS)])
        items = np.array([f"item/{i:03d}" for i in range(N_ITEMS)])
    elif ids == "uint64":  # ids >= 2**63: no int64 holds them
        users = np.arange(N_USERS, dtype=np.uint64) + np.uint64(2**63 + 5)
        items = np.arange(N_ITEMS, dtype=np.uint64) * np.uint64(3) + np.uint64(2**64 - 100)
    else:
        users = np.arange(N_USERS, dtype=np.int64) * 1000 + 7
        items = np.arange(N_ITEMS, dtype=np.int64) * 10 - 50
    store = write_interactions(tmp_path / "x.zarr", X, user_ids=users, item_ids=items, shard_size=SHARD)
    U, V = rng.standard_normal((N_ITEMS, K)), rng.standard_normal((N_ITEMS, K))
    publish_factors(tmp_path / "f", U, V, item_ids=items, fingerprint=store.fingerprint)
    score(tmp_path / "f", tmp_path / "x.zarr", tmp_path / "recs", top_n=top_n)
    return tmp_path / "recs"


def expected_rows(recs):
    """(user_id, rank, item_id, score) of every finite place, from open_recommendations."""
    rec = open_recommendations(recs)
    items, scores = rec.items.compute(), rec.scores.compute()
    out = []
    for r in range(items.shape[0]):
        for c in range(items.shape[1]):
            if np.isfinite(scores[r, c]):
                out.append((rec.user_ids[r].item(), c + 1, rec.item_ids[items[r, c]].item(), float(scores[r, c])))
    return out


def rows_of(table):
    d = table.to_pydict()
    return list(zip(d["user_id"], d["rank"], d["item_id"], d["score"]))


def read_any(path, id_type=None):
    """The file as an Arrow table; CSV ids read as ``id_type`` (CSV has no types: uint64 would be inferred double)."""
    if str(path).endswith(".parquet"):
        return pq.read_table(path)
    data = open(path, "rb").read()
    if str(path).endswith(".gz"):
        data = gzip.decompress(data)
    types = {"user_id": id_type, "item_id": id_type} if id_type is not None else {}
    return pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(column_types=types))


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".csv.gz"])
@pytest.mark.parametrize("ids", ["int64", "uint64", "str"])
def test_round_trip_against_open_recommendations(tmp_path, suffix, ids):
    recs = make_recs(tmp_path, ids=ids)
    out = tmp_path / f"recs{suffix}"
    report = export_recommendations(recs, out)
    got, want = rows_of(read_any(out, {"int64": pa.int64(), "uint64": pa.uint64(), "str": pa.string()}[ids])), \
        expected_rows(recs)
    assert [g[:3] for g in got] == [w[:3] for w in want]
    np.testing.assert_allclose([g[3] for g in got], [w[3] for w in want], rtol=1e-6)
    assert report.rows == len(want) == N_USERS * 5 and report.users == N_USERS
    ranks = [g[1] for g in got]
    assert min(ranks) == 1 and max(ranks) == 5
    assert len({(g[0], g[1]) for g in got}) == len(got)  # one row per (user, rank)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # no temporary file left


def test_parquet_types_and_one_row_group_per_shard(tmp_path):
    recs = make_recs(tmp_path)
    out = tmp_path / "r.parquet"
    export_recommendations(recs, out)
    f = pq.ParquetFile(out)
    assert f.metadata.num_row_groups == 4  # shards of 10, 10, 10, 7 users: memory holds one shard
    assert [f.metadata.row_group(g).num_rows for g in range(4)] == [50, 50, 50, 35]
    schema = f.schema_arrow
    assert [str(t) for t in schema.types] == ["int64", "int32", "int64", "float"]


def test_minus_inf_padding_is_dropped(tmp_path):
    recs = make_recs(tmp_path, top_n=4, dense_user=True)
    rec = open_recommendations(recs)
    assert np.isneginf(rec.scores.compute()[3]).sum() == 2  # user 3 has 2 unseen items
    rows = rows_of(pq.read_table(export_recommendations(recs, tmp_path / "r.parquet").path))
    user3 = [r for r in rows if r[0] == rec.user_ids[3]]
    assert [r[1] for r in user3] == [1, 2]
    assert len(rows) == N_USERS * 4 - 2


def test_existing_file_refused_before_the_work_and_left_intact(tmp_path):
    recs = make_recs(tmp_path)
    out = tmp_path / "r.csv"
    out.write_text("keep me\n")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        export_recommendations(recs, out)
    assert out.read_text() == "keep me\n"
    with pytest.raises(OutputExistsError):  # checked before the store is opened
        export_recommendations(tmp_path / "no-such-store", out)
    export_recommendations(recs, out, overwrite=True)
    assert read_any(out).num_rows == N_USERS * 5


def test_a_failed_export_leaves_no_file(tmp_path, monkeypatch):
    import edlae_dask.io.export as export

    recs = make_recs(tmp_path)
    calls = []

    def broken(rec, a, b, schema):
        calls.append(a)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(rec, a, b, schema)

    real = export._shard_table
    monkeypatch.setattr(export, "_shard_table", broken)
    with pytest.raises(OSError):
        export_recommendations(recs, tmp_path / "r.parquet")
    assert sorted(os.listdir(tmp_path)) == ["f", "recs", "x.zarr"]


def test_bad_suffix_and_incomplete_store(tmp_path):
    with pytest.raises(ParameterError, match=".parquet"):
        export_recommendations(tmp_path / "recs", tmp_path / "r.json")
    rng = np.random.default_rng(0)
    X = random_interactions(N_USERS, N_ITEMS, 0.2, seed=5)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=SHARD)
    publish_factors(tmp_path / "f", rng.standard_normal((N_ITEMS, K)), rng.standard_normal((N_ITEMS, K)),
                    fingerprint=store.fingerprint)
    report = score(tmp_path / "f", tmp_path / "x.zarr", tmp_path / "recs", top_n=3, shards=[0])
    with pytest.raises(StoreFormatError, match="incomplete"):
        export_recommendations(report.path, tmp_path / "r.parquet")
    assert not (tmp_path / "r.parquet").exists()


def test_cli_export_and_one_line_errors(tmp_path):
    recs = make_recs(tmp_path, ids="str")
    runner = CliRunner()
    res = runner.invoke(cli, ["export", str(recs), "--out", str(tmp_path / "r.parquet")])
    assert res.exit_code == 0, res.output
    assert "185 rows" in res.output
    res = runner.invoke(cli, ["export", str(recs), "--out", str(tmp_path / "r.parquet")])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines() if hasattr(res, "stderr") else res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--overwrite" in lines[0]
    res = runner.invoke(cli, ["export", str(recs), "--out", str(tmp_path / "r.parquet"), "--overwrite"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 1 and res.output.count("error:") == 1

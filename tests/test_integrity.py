"""Stores detect damage: a chunk deleted, truncated, swapped or altered after it was written is a
StoreIntegrityError naming the store, the array and the shard or block, never read as zeros or NaN.

Each test writes small real stores on disk, damages one chunk file the way a partial copy, a
bucket lifecycle rule or a disk error would, and checks what the reader, the commands and
``edlae-dask verify`` say, and that nothing they did changed the store.
"""

import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edlae_dask.cli import cli
from edlae_dask.config import TrainParams
from edlae_dask.errors import ModelFitError, StoreIntegrityError
from edlae_dask.io.factors import FactorWriter, open_factors
from edlae_dask.io.integrity import digest
from edlae_dask.io.interactions import open_interactions, read_shard, write_interactions
from edlae_dask.io.recommendations import open_recommendations
from edlae_dask.pipeline import train
from edlae_dask.scoring import score

from conftest import clustered_interactions

PARAMS = TrainParams(k=4, lam=3.0, p=0.2, block_size=16, seed=1, path="dense")


def _chunk_files(array_dir: Path) -> list[Path]:
    return sorted(p for p in (array_dir / "c").rglob("*") if p.is_file())


def _damage(kind: str, array_dir: Path, other_dir: Path | None = None) -> None:
    """Damage the first chunk of the zarr array at ``array_dir`` (``swap``: with ``other_dir``'s)."""
    chunk = _chunk_files(array_dir)[0]
    if kind == "delete":
        chunk.unlink()
    elif kind == "truncate":
        with open(chunk, "r+b") as fh:
            fh.truncate(max(1, chunk.stat().st_size // 2))
    elif kind == "alter":  # one bit of the last byte: still decodes (raw) or not (compressed): both are caught
        data = bytearray(chunk.read_bytes())
        data[-1] ^= 0x01
        chunk.write_bytes(bytes(data))
    elif kind == "swap":
        other = _chunk_files(other_dir)[0]
        tmp = chunk.with_suffix(".swap")
        os.replace(chunk, tmp)
        os.replace(other, chunk)
        os.replace(tmp, other)
    else:
        raise AssertionError(kind)


def _tree_digest(root: Path) -> str:
    """A digest of every file under ``root`` (names and bytes): equal before and after means untouched."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def stores(tmp_path):
    """An interaction store of 5 shards, factors trained on it, and their recommendations."""
    X = clustered_interactions(n_users=250, n_items=40, seed=3)
    s = write_interactions(tmp_path / "s.zarr", X, shard_size=50)
    train(s, params=PARAMS, out=str(tmp_path / "f"))
    score(str(tmp_path / "f"), s, str(tmp_path / "r"), top_n=5)
    return tmp_path / "s.zarr", tmp_path / "f", tmp_path / "r"


def _version_dir(factors: Path) -> Path:
    return factors / "versions" / (factors / "LATEST").read_text().strip()


# --------------------------------------------------------------------------- interaction store


@pytest.mark.parametrize("kind", ["delete", "truncate", "alter", "swap"])
def test_a_damaged_shard_is_named_by_the_reader(stores, kind):
    s, _, _ = stores
    _damage(kind, s / "shards/00001/indices", s / "shards/00002/indices")
    with pytest.raises(StoreIntegrityError, match=r"interaction store .* is damaged: .*shard 1 \(shards/00001\)"):
        read_shard(str(s), 1)


def test_swapped_shard_folders_are_detected_not_read_as_each_others_users(stores):
    s, _, _ = stores
    os.replace(s / "shards/00002", s / "shards/tmp")
    os.replace(s / "shards/00003", s / "shards/00002")
    os.replace(s / "shards/tmp", s / "shards/00003")
    for shard in (2, 3):
        with pytest.raises(StoreIntegrityError, match=f"shard {shard}"):
            read_shard(str(s), shard)
    read_shard(str(s), 1)  # the others still read


@pytest.mark.parametrize("kind", ["delete", "truncate", "alter"])
def test_damaged_item_ids_are_detected_when_read(stores, kind):
    s, _, _ = stores
    _damage(kind, s / "item_ids")
    with pytest.raises(StoreIntegrityError, match="item_ids"):
        open_interactions(s).item_ids()


def test_score_on_a_damaged_shard_exits_1_with_one_line_and_writes_nothing(stores, tmp_path):
    s, f, _ = stores
    _damage("delete", s / "shards/00003/values")
    before = _tree_digest(s)
    r = _invoke("score", "--factors", f, "--interactions", s, "--out", tmp_path / "r2", "--top-n", 5,
                "--cluster", "threads")
    _one_line_error(r, "interaction store", "shard 3")
    assert not (tmp_path / "r2").exists() or not open_recommendations_ok(tmp_path / "r2")
    assert _tree_digest(s) == before


def open_recommendations_ok(path) -> bool:
    try:
        open_recommendations(str(path))
        return True
    except Exception:
        return False


def test_train_on_a_damaged_shard_exits_1_and_publishes_nothing(stores, tmp_path):
    s, _, _ = stores
    _damage("alter", s / "shards/00000/indptr")
    r = _invoke("train", "--interactions", s, "--out", tmp_path / "f2", "--k", 3, "--block-size", 16,
                "--cluster", "threads")
    _one_line_error(r, "interaction store", "shard 0")
    assert not (tmp_path / "f2" / "LATEST").exists()


def test_verify_names_every_damaged_shard_and_leaves_the_store_as_it_was(stores):
    s, _, _ = stores
    _damage("delete", s / "shards/00001/indices")
    _damage("alter", s / "shards/00004/values")
    before = _tree_digest(s)
    r = _invoke("verify", s)
    line = _one_line_error(r, "2 of", "damaged")
    assert "shard 1 " in r.stderr and "shard 4 " in r.stderr, line
    assert _tree_digest(s) == before


def test_verify_of_an_intact_store_exits_0(stores):
    for path in stores:
        r = _invoke("verify", path)
        assert r.exit_code == 0 and r.output.startswith("verified "), r.output


# --------------------------------------------------------------------------- factor store


@pytest.mark.parametrize("kind", ["delete", "truncate", "alter", "swap"])
def test_a_damaged_block_of_U_is_named_when_read(stores, kind):
    _, f, _ = stores
    v = _version_dir(f)
    chunks = _chunk_files(v / "U")
    if kind == "swap":  # two blocks of the same array trade places
        tmp = chunks[0].with_suffix(".swap")
        os.replace(chunks[0], tmp)
        os.replace(chunks[1], chunks[0])
        os.replace(tmp, chunks[1])
    else:
        _damage(kind, v / "U")
    with pytest.raises(StoreIntegrityError, match=r"factor store .* is damaged: U block"):
        open_factors(str(f)).U.compute()


def test_a_flipped_value_in_V_stops_scoring_instead_of_changing_every_score(stores, tmp_path):
    s, f, _ = stores
    _damage("alter", _version_dir(f) / "V")
    r = _invoke("score", "--factors", f, "--interactions", s, "--out", tmp_path / "r2", "--top-n", 5,
                "--cluster", "threads")
    _one_line_error(r, "factor store", "V block")


def test_info_on_factors_with_damaged_eigenvalues_exits_1(stores):
    _, f, _ = stores
    _damage("truncate", _version_dir(f) / "eigenvalues")
    _one_line_error(_invoke("info", f), "factor store", "eigenvalues")


def test_factors_holding_nan_are_refused_at_publish(tmp_path):
    U = np.ones((30, 3), dtype=np.float32)
    U[7, 1] = np.nan
    with pytest.raises(ModelFitError, match="U holds NaN"), FactorWriter(tmp_path / "f") as w:
        w.write_array("U", U)
    assert not (tmp_path / "f" / "LATEST").exists()


def test_a_version_without_a_checksum_for_an_array_is_not_published(tmp_path):
    import dask.array as da

    U = da.from_array(np.ones((30, 3), dtype=np.float32), chunks=(10, 3))
    with pytest.raises(Exception, match="not written completely"), FactorWriter(tmp_path / "f") as w:
        w.write_array("U", U, compute=False)  # the graph that writes U (and its checksums) never runs
        w.write_array("V", np.ones((30, 3), dtype=np.float32))
        w.write_array("item_ids", np.arange(30))
        w.write_array("eigenvalues", np.ones(3))
        w.commit({"k": 3})
    assert not (tmp_path / "f" / "LATEST").exists()


def test_factor_checksums_are_those_of_the_blocks_written(stores):
    _, f, _ = stores
    fac = open_factors(str(f))
    U = fac.U.compute()
    rows = fac.U.chunks[0]
    bounds = np.concatenate([[0], np.cumsum(rows)])
    want = [[digest(np.ascontiguousarray(U[a:b]))] for a, b in zip(bounds[:-1], bounds[1:])]
    assert fac.meta["checksums"]["U"] == want


# --------------------------------------------------------------------------- recommendations store


@pytest.mark.parametrize("kind", ["delete", "truncate", "alter"])
def test_damaged_rows_of_recommendations_are_named_with_their_shard(stores, kind):
    _, _, r = stores
    _damage(kind, r / "scores")
    with pytest.raises(StoreIntegrityError, match=r"recommendations store .* is damaged: .*shard 0"):
        open_recommendations(str(r)).scores.compute()
    _one_line_error(_invoke("verify", r), "1 of", "damaged")


def test_a_rerun_of_score_does_not_carry_damaged_rows_over(stores, tmp_path):
    _, f, r = stores
    X = clustered_interactions(n_users=250, n_items=40, seed=3).tolil()
    X[240, 0] = 1 - X[240, 0]  # new interactions in the last shard only: shards 0-3 would be copied over
    fresh = write_interactions(tmp_path / "fresh.zarr", X.tocsr(), shard_size=50)
    _damage("alter", r / "items")
    with pytest.raises(StoreIntegrityError, match="shard 0"):
        score(str(f), fresh, str(r), top_n=5)


# --------------------------------------------------------------------------- checkpoints


def test_a_damaged_checkpoint_block_is_recomputed_not_used(tmp_path, caplog):
    s = write_interactions(tmp_path / "s.zarr", clustered_interactions(n_users=200, n_items=40, seed=4),
                           shard_size=50)
    first = train(s, params=PARAMS, checkpoint_dir=tmp_path / "ck")
    (gram_dir,) = [p for p in (tmp_path / "ck").iterdir() if p.name.startswith("gram-")]
    _damage("alter", gram_dir / "G")
    with caplog.at_level(logging.WARNING, logger="edlae_dask"):
        rerun = train(s, params=PARAMS, checkpoint_dir=tmp_path / "ck")
    assert "ignoring the gram checkpoint" in caplog.text and "is damaged: G block" in caplog.text
    assert rerun.stages["gram"]["detail"]["checkpoint"] == "written"
    np.testing.assert_allclose(rerun.U.compute() @ rerun.V.compute().T, first.U.compute() @ first.V.compute().T,
                               rtol=1e-4, atol=1e-5)


def test_verify_refuses_what_is_not_a_store(tmp_path):
    (tmp_path / "x").mkdir()
    r = _invoke("verify", tmp_path / "x")
    assert r.exit_code == 1 and "Traceback" not in r.output
    shutil.rmtree(tmp_path / "x")


# --------------------------------------------------------------------------- object storage


def test_a_shard_object_deleted_from_a_bucket_is_detected_not_read_as_zeros(s3, url):
    """A lifecycle rule or a partial copy removes one chunk object: the shard's reader says so."""
    import s3fs

    X = clustered_interactions(n_users=60, n_items=20, seed=5)
    store = write_interactions(f"{url}/s.zarr", X, shard_size=20, storage_options=s3)
    fs = s3fs.S3FileSystem(**s3)
    data = store.location.url.replace("s3://", "")
    (chunk,) = [k for k in fs.find(f"{data}/shards/00001/indices") if "/c/" in k]
    fs.rm(chunk)
    with pytest.raises(StoreIntegrityError, match=r"shard 1 \(shards/00001\)"):
        read_shard(store.location, 1)
    assert (read_shard(store.location, 0) != X[:20]).nnz == 0


def test_recommendations_moved_aside_by_a_killed_publish_are_put_back_by_the_next_score(stores):
    """A publish killed between its two renames leaves `out` missing and the old store aside: nothing is lost."""
    s, f, r = stores
    before = _tree_digest(r)
    aside = r.parent / f".{r.name}.old-{'0' * 32}"
    os.replace(r, aside)
    report = score(str(f), s, str(r), top_n=5)  # the same inputs: the recovered store is complete already
    assert report.n_users_scored == 0 and _tree_digest(r) == before and not aside.exists()

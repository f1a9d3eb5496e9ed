"""The factor store: versions published atomically, validated on open."""

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from edlae_dask.errors import OutputExistsError, StoreFormatError
from edlae_dask.io.factors import FactorWriter, list_versions, open_factors


def _publish(path, U, V, *, overwrite=False, attrs=None):
    with FactorWriter(path, overwrite=overwrite) as w:
        w.write_array("U", da.from_array(U, chunks=(7, U.shape[1])), compute=True)
        w.write_array("V", V)
        w.write_array("item_ids", np.arange(U.shape[0]) * 10)
        w.write_array("eigenvalues", np.linspace(2, 1, U.shape[1]))
        return w.commit({"k": U.shape[1], **(attrs or {})})


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    U, V = rng.standard_normal((20, 3)), rng.standard_normal((20, 3))
    version = _publish(tmp_path / "f", U, V, attrs={"lam": 1.5})
    f = open_factors(tmp_path / "f")
    assert f.version == version
    np.testing.assert_array_equal(f.U.compute(), U)
    np.testing.assert_array_equal(f.load()[1], V)
    np.testing.assert_array_equal(f.item_ids, np.arange(20) * 10)
    assert f.meta["lam"] == 1.5 and f.meta["complete"] is True and f.k == 3


def test_new_version_needs_overwrite_and_becomes_latest(tmp_path):
    U = np.ones((10, 2))
    v1 = _publish(tmp_path / "f", U, U)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _publish(tmp_path / "f", 2 * U, U)
    v2 = _publish(tmp_path / "f", 2 * U, U, overwrite=True)
    assert open_factors(tmp_path / "f").version == v2 != v1
    np.testing.assert_array_equal(open_factors(tmp_path / "f", v1).U.compute(), U)


def test_failed_publish_leaves_previous_version_readable_and_no_partial(tmp_path):
    U = np.ones((10, 2))
    v1 = _publish(tmp_path / "f", U, U)
    with pytest.raises(RuntimeError):
        with FactorWriter(tmp_path / "f", overwrite=True) as w:
            w.write_array("U", 5 * U)
            raise RuntimeError("killed mid-publish")
    assert open_factors(tmp_path / "f").version == v1
    assert list_versions(tmp_path / "f") == [v1]
    assert not [p for p in (tmp_path / "f" / "versions").iterdir() if p.name.startswith(".tmp")]


def test_old_versions_are_pruned(tmp_path):
    U = np.ones((5, 1))
    versions = [_publish(tmp_path / "f", U, U, overwrite=True) for _ in range(5)]
    assert list_versions(tmp_path / "f") == versions[-3:]


def test_refuses_to_write_into_a_foreign_directory(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not an edlae-dask factor store"):
        FactorWriter(tmp_path / "f", overwrite=True)
    assert (tmp_path / "f" / "notes.txt").read_text() == "mine"


def test_open_missing_store(tmp_path):
    with pytest.raises(StoreFormatError, match="no factor store"):
        open_factors(tmp_path / "nothing")


def _edit_attrs(path, **changes):
    version = (Path(path) / "LATEST").read_text().strip()
    g = zarr.open_group(str(Path(path) / "versions" / version), mode="r+", zarr_format=3)
    g.attrs.update(changes)


def test_other_format_version_is_refused(tmp_path):
    _publish(tmp_path / "f", np.ones((4, 1)), np.ones((4, 1)))
    _edit_attrs(tmp_path / "f", format_version=99)
    with pytest.raises(StoreFormatError, match="format version 99"):
        open_factors(tmp_path / "f")


def test_foreign_format_and_incomplete_are_refused(tmp_path):
    _publish(tmp_path / "f", np.ones((4, 1)), np.ones((4, 1)))
    _edit_attrs(tmp_path / "f", complete=False)
    with pytest.raises(StoreFormatError, match="incomplete"):
        open_factors(tmp_path / "f")
    _edit_attrs(tmp_path / "f", complete=True, format="something-else")
    with pytest.raises(StoreFormatError, match="not an edlae-dask factor store"):
        open_factors(tmp_path / "f")


def test_inconsistent_shapes_are_refused(tmp_path):
    _publish(tmp_path / "f", np.ones((4, 2)), np.ones((4, 2)))
    _edit_attrs(tmp_path / "f", k=3)
    with pytest.raises(StoreFormatError, match="inconsistent"):
        open_factors(tmp_path / "f")

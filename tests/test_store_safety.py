"""Stores are read as data only: no object-typed, pickled or foreign-codec array is ever loaded.

Each test hand-edits one array's zarr.json in a store written by edlae-dask, the way a
tampered or foreign store would look, and opening (or reading) it must be a
StoreFormatError that says why.
"""

import json
import shutil

import numpy as np
import pytest

from edlae_dask.errors import StoreFormatError
from edlae_dask.io.factors import FactorWriter, open_factors
from edlae_dask.io.interactions import open_interactions, read_shard, write_interactions
from edlae_dask.io.recommendations import open_recommendations
from edlae_dask.scoring import score

from conftest import random_interactions

# the numcodecs stand-in below makes zarr warn that it is not a v3 codec: that is the point
pytestmark = pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")

# a zarr v2 array of Python objects, decoded by numcodecs' Pickle filter: unpickling it could run any code
V2_PICKLED = {"zarr_format": 2, "shape": [4], "chunks": [4], "dtype": "|O", "compressor": None, "fill_value": None,
              "filters": [{"id": "pickle", "protocol": 5}], "order": "C"}


def variable_length_strings(meta):
    meta.update(data_type="string", fill_value="", codecs=[{"name": "vlen-utf8"}])


def a_codec_that_is_not_installed(meta):
    meta["codecs"] = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "numcodecs.pickle"}]


def an_installed_codec_outside_the_core_ones(meta):
    meta["codecs"] = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "numcodecs.zlib",
                                                                                 "configuration": {"level": 1}}]


TAMPERINGS = [variable_length_strings, a_codec_that_is_not_installed, an_installed_codec_outside_the_core_ones,
              "v2 pickled"]


def tamper(array_dir, how):
    if how == "v2 pickled":
        shutil.rmtree(array_dir)
        array_dir.mkdir()
        (array_dir / ".zarray").write_text(json.dumps(V2_PICKLED))
        return
    meta = json.loads((array_dir / "zarr.json").read_text())
    how(meta)
    (array_dir / "zarr.json").write_text(json.dumps(meta))


@pytest.fixture
def stores(tmp_path):
    X = random_interactions(30, 12, 0.3, seed=1)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=10)
    rng = np.random.default_rng(2)
    with FactorWriter(tmp_path / "factors") as w:
        for name in ("U", "V"):
            w.write_array(name, rng.standard_normal((12, 3)))
        w.write_array("item_ids", np.arange(12))
        w.write_array("eigenvalues", np.ones(3))
        w.write_array("ritz_residuals", np.zeros(3))
        w.commit(dict(k=3, lam=1.0, p=0.0, dtype="float64"))
    score(tmp_path / "factors", store, tmp_path / "recs", top_n=4)
    version = open_factors(tmp_path / "factors").version
    return dict(interactions=tmp_path / "x.zarr", factors=tmp_path / "factors",
                factor_version=tmp_path / "factors" / "versions" / version, recs=tmp_path / "recs")


@pytest.mark.parametrize("how", TAMPERINGS)
@pytest.mark.parametrize("array", ["U", "item_ids"])
def test_factor_store(stores, array, how):
    tamper(stores["factor_version"] / array, how)
    with pytest.raises(StoreFormatError, match=f"{array}"):
        open_factors(stores["factors"])


@pytest.mark.parametrize("how", TAMPERINGS)
def test_interaction_store_ids(stores, how):
    tamper(stores["interactions"] / "user_ids", how)
    with pytest.raises(StoreFormatError, match="user_ids"):
        open_interactions(stores["interactions"])


@pytest.mark.parametrize("how", TAMPERINGS)
def test_interaction_store_shard(stores, how):
    tamper(stores["interactions"] / "shards" / "00001" / "indices", how)
    with pytest.raises(StoreFormatError, match="00001/indices"):
        read_shard(stores["interactions"], 1)


@pytest.mark.parametrize("how", TAMPERINGS)
def test_recommendations_store(stores, how):
    tamper(stores["recs"] / "items", how)
    with pytest.raises(StoreFormatError, match="items"):
        open_recommendations(stores["recs"])


def test_the_refusal_says_why_and_what_to_do(stores):
    tamper(stores["factor_version"] / "U", an_installed_codec_outside_the_core_ones)
    with pytest.raises(StoreFormatError, match=r"numcodecs.zlib.*nothing pickled or object-typed is ever loaded"):
        open_factors(stores["factors"])

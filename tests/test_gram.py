"""G = XᵀX over shards, against scipy's product."""

import numpy as np
import pytest

from edlae_dask.dense.gram import gram, item_blocks
from edlae_dask.io.interactions import write_interactions

from conftest import random_interactions


@pytest.mark.parametrize("block_size", [7, 10, 40])
@pytest.mark.parametrize("shard_size", [13, 1000])
def test_gram_equals_scipy_product(tmp_path, block_size, shard_size):
    X = random_interactions(90, 40, 0.15, seed=block_size + shard_size)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=shard_size)
    G = gram(store, block_size=block_size, dtype=np.float64)
    assert G.chunks[0] == item_blocks(40, block_size)
    np.testing.assert_array_equal(G.compute(scheduler="threads"), (X.T @ X).toarray())


def test_gram_dtype_and_symmetry(tmp_path):
    X = random_interactions(50, 23, 0.2)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=8)
    G = gram(store, block_size=5, dtype=np.float32).compute(scheduler="threads")
    assert G.dtype == np.float32
    np.testing.assert_array_equal(G, G.T)


def test_gram_on_distributed_workers(tmp_path, client):
    X = random_interactions(120, 33, 0.1, seed=3)
    store = write_interactions(tmp_path / "x.zarr", X, shard_size=25)
    G = client.compute(gram(store, block_size=8, dtype=np.float64)).result()
    np.testing.assert_array_equal(G, (X.T @ X).toarray())


def test_item_blocks_cover_all_items():
    assert item_blocks(10, 4) == (4, 4, 2)
    assert item_blocks(8, 4) == (4, 4)
    assert item_blocks(3, 10) == (3,)

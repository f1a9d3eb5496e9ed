"""``score --items-allow/--items-deny/--users`` against a dense numpy oracle ``(x·U)·Vᵀ`` with exclusions."""

import logging

import numpy as np
import pytest
from click.testing import CliRunner
from test_scoring import publish_factors

from edlae_dask.cli import cli
from edlae_dask.errors import InputDataError
from edlae_dask.io.export import export_recommendations
from edlae_dask.io.interactions import write_interactions
from edlae_dask.io.recommendations import open_recommendations
from edlae_dask.scoring import score, top_n_scores

from conftest import random_interactions

pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")

N_USERS, N_ITEMS, K, SHARD, TOP = 41, 29, 4, 10, 6  # shards of 10, 10, 10, 10, 1 users


def oracle(X, U, V, N, *, excluded=(), users=None):
    """Dense top-N with seen and ``excluded`` items at -inf; rows of users not in ``users`` -1 / NaN."""
    S = np.asarray(X.toarray(), np.float64) @ U @ V.T
    S[X.toarray() != 0] = -np.inf
    S[:, list(excluded)] = -np.inf
    order = np.array([np.lexsort((np.arange(S.shape[1]), -row))[:N] for row in S])
    scores = np.take_along_axis(S, order, axis=1)
    if users is not None:
        others = np.setdiff1d(np.arange(X.shape[0]), users)
        order[others], scores[others] = -1, np.nan
    return order, scores


@pytest.fixture
def p(tmp_path):
    rng = np.random.default_rng(2)
    X = random_interactions(N_USERS, N_ITEMS, 0.25, seed=4)
    user_ids = np.arange(N_USERS, dtype=np.int64) + 1000
    item_ids = np.array([f"sku-{i}" for i in range(N_ITEMS)])
    store = write_interactions(tmp_path / "x.zarr", X, user_ids=user_ids, item_ids=item_ids, shard_size=SHARD)
    U, V = rng.standard_normal((N_ITEMS, K)), rng.standard_normal((N_ITEMS, K))
    publish_factors(tmp_path / "f", U, V, item_ids=item_ids, fingerprint=store.fingerprint)
    return dict(X=X, U=U, V=V, tmp=tmp_path, item_ids=item_ids, user_ids=user_ids,
                run=lambda out="recs", **kw: score(tmp_path / "f", tmp_path / "x.zarr", tmp_path / out, top_n=TOP,
                                                   **kw))


def check(path, want):
    rec = open_recommendations(path)
    items, scores = rec.items.compute(), rec.scores.compute()
    np.testing.assert_array_equal(items, want[0])
    np.testing.assert_allclose(scores, want[1].astype(np.float32), rtol=1e-5, atol=1e-5)
    return rec


@pytest.mark.parametrize("item_block, user_batch", [(5, 3), (None, None)])
def test_kernel_exclusions_equal_the_oracle(p, item_block, user_batch):
    excl = np.array([0, 3, 4, 5, 17, 28])
    got = top_n_scores(p["X"], p["U"], p["V"], TOP, item_block=item_block, user_batch=user_batch,
                       exclude_items=excl)
    want = oracle(p["X"], p["U"], p["V"], TOP, excluded=excl)
    finite = np.isfinite(want[1])
    np.testing.assert_array_equal(got[0][finite], want[0][finite])
    np.testing.assert_allclose(got[1], want[1].astype(np.float32), rtol=1e-5, atol=1e-5)


def test_allow_and_deny_files_equal_the_oracle(p):
    allow = p["tmp"] / "allow.txt"
    deny = p["tmp"] / "deny.txt"
    allowed = list(range(0, N_ITEMS, 2)) + [1, 3]
    allow.write_text("\n".join(p["item_ids"][allowed]) + "\n\nsku-unknown\n")
    deny.write_text("sku-3\nsku-4\n")
    p["run"](items_allow=allow, items_deny=deny)
    excluded = sorted(set(range(N_ITEMS)) - set(allowed) | {3, 4})
    rec = check(p["tmp"] / "recs", oracle(p["X"], p["U"], p["V"], TOP, excluded=excluded))
    assert rec.meta["item_filter"]["excluded"] == len(excluded)
    assert rec.meta["item_filter"]["allowed"] == len(allowed)


def test_users_filter_scores_only_them_and_keeps_the_shape(p):
    chosen = [1003, 1015, 1016, 1040]  # shards 0, 1 and 4; shards 2 and 3 hold none
    report = p["run"](users=chosen, items_deny=["sku-0"])
    assert report.published and report.n_users_scored == 4
    rec = check(p["tmp"] / "recs", oracle(p["X"], p["U"], p["V"], TOP, excluded=[0],
                                          users=np.array(chosen) - 1000))
    assert rec.complete and len(rec.user_ids) == N_USERS and rec.meta["user_filter"]["users"] == 4
    out = export_recommendations(p["tmp"] / "recs", p["tmp"] / "r.parquet")
    assert out.users == 4 and out.rows == 4 * TOP


def test_filters_are_part_of_the_token(p):
    first = p["run"]()
    assert first.n_shards_scored == 5
    assert p["run"]().n_shards_scored == 0  # same inputs: nothing to do
    denied = p["run"](items_deny=["sku-1"])
    assert denied.n_shards_scored == 5  # another item filter: every shard rescored
    check(p["tmp"] / "recs", oracle(p["X"], p["U"], p["V"], TOP, excluded=[1]))
    assert p["run"](items_deny=["sku-1"]).n_shards_scored == 0
    some = p["run"](items_deny=["sku-1"], users=[1003, 1015])
    # every shard gets its marker (those without a chosen user: unscored rows, no factor read)
    assert some.n_shards_scored == 5 and some.n_users_scored == 2
    # shard 0's selection and the empty ones of shards 2..4 unchanged: carried over
    other = p["run"](items_deny=["sku-1"], users=[1003, 1019])
    assert other.shards_scored == (1,) and other.n_shards_reused == 4
    check(p["tmp"] / "recs", oracle(p["X"], p["U"], p["V"], TOP, excluded=[1], users=[3, 19]))
    assert p["run"]().n_shards_scored == 5  # no filter again: the unfiltered token


def test_unknown_ids_warn_and_none_known_is_an_error(p, caplog):
    with caplog.at_level(logging.WARNING, logger="edlae_dask.scoring"):
        p["run"](items_allow=["sku-1", "sku-2", "nope"])
    assert "1 of its 3 ids are not the factors' items" in caplog.text and "nope" in caplog.text
    with pytest.raises(InputDataError, match="none of its 2 ids"):
        p["run"](items_allow=["nope", "neither"])
    with pytest.raises(InputDataError, match="none of its 1 ids"):
        p["run"](users=[5])
    bad = p["tmp"] / "users.txt"
    bad.write_text("1003\nalice\n")
    with pytest.raises(InputDataError, match="line 2: 'alice' is not an integer id the stores can hold \\(int64\\)"):
        p["run"](users=bad)


def test_cli_filters_and_one_line_errors(p):
    allow = p["tmp"] / "allow.txt"
    allow.write_text("sku-2\nsku-5\nsku-7\n")
    users = p["tmp"] / "users.txt"
    users.write_text("1000\n1011\n")
    args = ["score", "--factors", str(p["tmp"] / "f"), "--interactions", str(p["tmp"] / "x.zarr"),
            "--out", str(p["tmp"] / "recs"), "--top-n", "2"]
    res = CliRunner().invoke(cli, [*args, "--items-allow", str(allow), "--users", str(users)])
    assert res.exit_code == 0, res.output
    check(p["tmp"] / "recs", oracle(p["X"], p["U"], p["V"], 2, excluded=sorted(set(range(N_ITEMS)) - {2, 5, 7}),
                                    users=[0, 11]))
    users.write_text("1000\nbob\n")
    res = CliRunner().invoke(cli, [*args, "--users", str(users)])
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bob" in errors[0]
    res = CliRunner().invoke(cli, [*args, "--items-deny", str(p["tmp"] / "missing.txt")])
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "missing.txt" in errors[0], res.output


def test_filters_on_a_distributed_client(p):
    """The excluded items travel as one graph node that every shard task depends on."""
    from distributed import Client

    with Client(processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None) as client:
        report = p["run"](client=client, items_deny=["sku-2", "sku-9"], users=[1001, 1012, 1040])
    assert report.published and report.n_users_scored == 3
    check(p["tmp"] / "recs", oracle(p["X"], p["U"], p["V"], TOP, excluded=[2, 9], users=[1, 12, 40]))

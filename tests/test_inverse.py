"""spd_inverse / cholesky_lower against numpy/scipy oracles.

The distributed tests use the session-wide ``client`` fixture of conftest.py
(LocalCluster, processes=True, 2 workers x 1 thread), started once.
"""

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.linalg

from edlae_dask.errors import ModelFitError, ParameterError
from edlae_dask.linalg import _kernels as K
from edlae_dask.linalg import cholesky_lower, spd_inverse


@pytest.fixture(autouse=True)
def _threads_unless_client(request):
    """Local tests run on the threaded scheduler even when a session client exists."""
    if "client" in request.fixturenames:
        yield
    else:
        with dask.config.set(scheduler="threads"):
            yield


def spd(n, seed=0, dtype=np.float64, cond_shift=1.0):
    """A well-conditioned random SPD matrix (Gram + shift)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((2 * n + 3, n))
    A = X.T @ X / (2 * n + 3) + cond_shift * np.eye(n)
    return A.astype(dtype)


def gram_with_empty_item(n, empty, seed=0):
    """G = XᵀX + 0·I where item `empty` has no interactions: P singular at `empty`."""
    rng = np.random.default_rng(seed)
    X = (rng.random((5 * n, n)) < 0.3).astype(np.float64)
    X[:, empty] = 0.0
    return X.T @ X


def _explode(block):
    raise AssertionError("an upper block of A was computed")


CHUNKINGS = [(30, 6), (30, 7), (31, 31), (10, 4), (31, 8), (1, 1)]


@pytest.mark.parametrize("n,c", CHUNKINGS)
def test_inverse_matches_numpy_float64(n, c):
    A = spd(n, seed=n + c)
    C = spd_inverse(da.from_array(A, chunks=(c, c)))
    assert C.chunks == ((c,) * (n // c) + ((n % c,) if n % c else ()),) * 2
    out = C.compute()
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, np.linalg.inv(A), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,c", [(30, 6), (30, 7), (31, 31)])
def test_inverse_float32_stays_float32(n, c):
    A = spd(n, seed=1, dtype=np.float32)
    out = spd_inverse(da.from_array(A, chunks=(c, c))).compute()
    assert out.dtype == np.float32
    oracle = np.linalg.inv(A.astype(np.float64))  # the float32 matrix, inverted exactly
    np.testing.assert_allclose(out, oracle, rtol=1e-4, atol=1e-5)


def test_only_lower_blocks_are_read():
    n, c = 30, 7
    A = spd(n, seed=3)
    garbage = A.copy()
    rng = np.random.default_rng(9)
    # garbage in every upper block and in the strict upper triangles of diagonal blocks
    garbage[np.triu_indices(n, 1)] = rng.standard_normal(n * (n - 1) // 2) * 1e3
    expected = np.linalg.inv(A)
    np.testing.assert_allclose(
        spd_inverse(da.from_array(garbage, chunks=(c, c))).compute(), expected, rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        cholesky_lower(da.from_array(garbage, chunks=(c, c))).compute(),
        scipy.linalg.cholesky(A, lower=True),
        rtol=1e-12,
        atol=1e-12,
    )


def test_upper_blocks_never_computed():
    """Upper blocks that would raise if computed are not touched."""
    n, c = 20, 6
    A = spd(n, seed=4)
    lower = da.from_array(np.tril(A), chunks=(c, c))
    boom = da.map_blocks(_explode, lower, dtype=A.dtype, meta=np.empty((0, 0), dtype=A.dtype))
    nb = len(lower.chunks[0])
    blocks = [[lower.blocks[i, j] if i >= j else boom.blocks[i, j] for j in range(nb)] for i in range(nb)]
    # diagonal blocks: only their lower triangle is valid, which is all potrf reads
    np.testing.assert_allclose(spd_inverse(da.block(blocks)).compute(), np.linalg.inv(A), rtol=1e-10)


def test_inverse_is_symmetric_with_transposed_upper_blocks():
    n, c = 25, 6
    C = spd_inverse(da.from_array(spd(n, seed=5), chunks=(c, c)))
    out = C.compute()
    np.testing.assert_array_equal(out, out.T)
    graph = dict(C.__dask_graph__())
    upper = graph[(C.name, 0, 2)]
    assert getattr(upper, "func", upper[0] if isinstance(upper, tuple) else None) is K.transpose


def test_graph_names_are_deterministic_and_staged():
    A = da.from_array(spd(20, seed=6), chunks=(7, 7))
    C1, C2 = spd_inverse(A), spd_inverse(A)
    assert C1.name == C2.name and C1.name.startswith("edlae-inverse-")
    token = C1.name.removeprefix("edlae-inverse-")
    layers = set(C1.__dask_graph__().layers)
    assert {f"edlae-cholesky-{token}", f"edlae-trtri-{token}", f"edlae-inverse-{token}"} <= layers
    assert cholesky_lower(A).name == f"edlae-cholesky-{token}"


@pytest.mark.parametrize("n,c", [(30, 7), (12, 12)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cholesky_lower_matches_scipy(n, c, dtype):
    A = spd(n, seed=7, dtype=dtype)
    L = cholesky_lower(da.from_array(A, chunks=(c, c))).compute()
    assert L.dtype == dtype
    np.testing.assert_array_equal(np.triu(L, 1), 0)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(L, scipy.linalg.cholesky(A, lower=True), rtol=tol, atol=tol)


@pytest.mark.parametrize("empty", [0, 17, 29])
def test_not_positive_definite_names_the_row(empty):
    G = gram_with_empty_item(30, empty)
    with pytest.raises(ModelFitError, match=rf"row/column {empty} \(0-based") as info:
        spd_inverse(da.from_array(G, chunks=(7, 7))).compute()
    assert "raise lam or drop the item" in str(info.value)


def test_not_positive_definite_on_distributed_cluster(client):
    G = gram_with_empty_item(30, 17)
    future = client.compute(spd_inverse(da.from_array(G, chunks=(7, 7))))
    with pytest.raises(ModelFitError, match=r"row/column 17 .*raise lam or drop the item"):
        future.result()


def test_inverse_on_distributed_cluster(client):
    A = spd(40, seed=8, dtype=np.float32)
    out = client.compute(spd_inverse(da.from_array(A, chunks=(12, 12)))).result()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.linalg.inv(A.astype(np.float64)), rtol=1e-4, atol=1e-5)


def test_mismatched_chunks_name_the_fix():
    A = da.from_array(spd(20), chunks=(5, 10))
    with pytest.raises(ParameterError, match=r"A\.rechunk\(\(5, 5\)\)"):
        spd_inverse(A)
    with pytest.raises(ParameterError, match="rechunk"):
        cholesky_lower(A)


@pytest.mark.parametrize(
    "bad,match",
    [
        (da.ones((4, 5), chunks=2), "square"),
        (da.ones((4,), chunks=2), "square"),
        (da.from_array(np.eye(4, dtype=np.int64), chunks=2), "float32 or float64"),
        (np.eye(4), "dask.array"),
    ],
)
def test_bad_input_raises_parameter_error(bad, match):
    with pytest.raises(ParameterError, match=match):
        spd_inverse(bad)


# --------------------------------------------------------------------------- block kernels
# The kernels call SciPy's BLAS/LAPACK through ctypes (GIL released) and accept blocks in
# either memory layout (C-ordered input blocks, Fortran-ordered kernel outputs, transposed
# views after a transfer); each is checked against numpy on both layouts and dtypes.

LAYOUTS = ["C", "F"]


def _block(rng, shape, dtype, order):
    return np.asarray(rng.standard_normal(shape), dtype=dtype, order=order)


def _lower_factor(rng, b, dtype, order):
    """A well-conditioned lower-triangular block (the shape of L_kk and W_kk)."""
    L = np.tril(rng.standard_normal((b, b))) + 4 * np.eye(b)
    return np.asarray(L, dtype=dtype, order=order)


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order_s", LAYOUTS)
@pytest.mark.parametrize("order_l", LAYOUTS)
def test_update_kernels_match_numpy_in_any_layout(dtype, order_s, order_l):
    rng = np.random.default_rng(11)
    s, s_sq = _block(rng, (7, 5), dtype, order_s), _block(rng, (5, 5), dtype, order_s)
    a, b = _block(rng, (7, 4), dtype, order_l), _block(rng, (5, 4), dtype, order_l)
    a_t, b_t = _block(rng, (4, 7), dtype, order_l), _block(rng, (4, 5), dtype, order_l)
    s64, a64, b64 = (x.astype(np.float64) for x in (s, a, b))
    tol = _tol(dtype)
    np.testing.assert_allclose(K.gemm_update(s, a, b), s64 - a64 @ b64.T, **tol)
    np.testing.assert_allclose(K.gemm_acc(s, a, b_t), s64 + a64 @ b_t.astype(np.float64), **tol)
    np.testing.assert_allclose(K.gemm_tn_acc(s, a_t, b_t), s64 + a_t.T.astype(np.float64) @ b_t, **tol)
    lower = np.tril_indices(5)
    np.testing.assert_allclose(K.syrk_update(s_sq, b)[lower], (s_sq - b.astype(np.float64) @ b.T)[lower], **tol)
    np.testing.assert_allclose(K.syrk_tn_acc(s_sq, b_t)[lower], (s_sq + b_t.T.astype(np.float64) @ b_t)[lower], **tol)
    for out in (K.gemm_update(s, a, b), K.syrk_update(s_sq, b)):
        assert out.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order_x", LAYOUTS)
@pytest.mark.parametrize("order_t", LAYOUTS)
def test_triangular_kernels_match_numpy_in_any_layout(dtype, order_x, order_t):
    rng = np.random.default_rng(12)
    T = _lower_factor(rng, 5, dtype, order_t)
    x_right, x_left = _block(rng, (7, 5), dtype, order_x), _block(rng, (5, 7), dtype, order_x)
    T64 = T.astype(np.float64)
    tol = _tol(dtype)
    np.testing.assert_allclose(K.chol_panel(x_right, T), x_right @ np.linalg.inv(T64).T, **tol)
    np.testing.assert_allclose(K.trtri_first(x_right, T), x_right @ T64, **tol)
    np.testing.assert_allclose(K.trtri_finish(x_left, T), -np.linalg.solve(T64, x_left), **tol)
    np.testing.assert_allclose(K.inv_first(T, x_left), T64.T @ x_left, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", LAYOUTS)
def test_diagonal_kernels_match_lapack_oracles(dtype, order):
    A = np.asarray(spd(6, seed=13), dtype=dtype, order=order)
    garbage_upper = A.copy()
    garbage_upper[np.triu_indices(6, 1)] = 1e3  # only the lower triangle may be read
    L = K.potrf_lower(garbage_upper, 0)
    tol = _tol(dtype)
    np.testing.assert_allclose(L, scipy.linalg.cholesky(A.astype(np.float64), lower=True), **tol)
    np.testing.assert_array_equal(np.triu(L, 1), 0)
    W = K.trtri_lower(np.asarray(L, order=order))
    np.testing.assert_allclose(W, np.linalg.inv(L.astype(np.float64)), **tol)
    np.testing.assert_array_equal(np.triu(W, 1), 0)
    lower = np.tril_indices(6)
    np.testing.assert_allclose(K.lauum_lower(W)[lower], (W.T.astype(np.float64) @ W)[lower], **tol)
    assert L.dtype == W.dtype == dtype


def test_kernels_leave_their_inputs_unchanged():
    rng = np.random.default_rng(14)
    s, a, b = (_block(rng, (6, 6), np.float64, o) for o in "CFC")
    T = _lower_factor(rng, 6, np.float64, "F")
    before = [x.copy() for x in (s, a, b, T)]
    K.gemm_update(s, a, b), K.syrk_update(s, a), K.chol_panel(s, T), K.trtri_finish(s, T)
    K.potrf_lower(spd(6), 0), K.trtri_lower(T), K.lauum_lower(T), K.inv_first(T, s)
    for x, x0 in zip((s, a, b, T), before):
        np.testing.assert_array_equal(x, x0)


def test_kernels_release_the_gil():
    """While a BLAS kernel runs in one thread, another Python thread keeps running.

    With the GIL held (scipy.linalg.blas's f2py wrappers) the main thread gets a handful of
    turns during one ~0.1 s call (measured: 5); released (ctypes), one per millisecond.
    """
    import threading

    from threadpoolctl import threadpool_limits

    a = np.asfortranarray(np.random.default_rng(15).standard_normal((1500, 1500)))
    started, done = threading.Event(), threading.Event()

    def work():
        with threadpool_limits(1):
            started.set()
            K.gemm_update(a, a, a)
        done.set()

    thread = threading.Thread(target=work)
    thread.start()
    started.wait()
    turns = 0
    while not done.is_set():
        turns += 1
        done.wait(0.001)
    thread.join()
    assert turns > 40

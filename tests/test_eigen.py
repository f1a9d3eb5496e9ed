"""randomized_eigh against numpy.linalg.eigh on PSD matrices with known spectra.

Tolerances: with a spectrum decaying like 0.7^i, k = 8 and l = 16, the basis
after 3 power iterations is span(M⁴Ω), so the k-th Ritz vector's error is about
(λ_{l+1}/λ_k)⁴ = (0.7⁹)⁴ ≈ 3e-6 and the eigenvalue errors about its square
(~1e-11, float64); float32 is limited by rounding (~1e-5).
"""

import logging

import dask
import dask.array as da
import numpy as np
import pytest

from edlae_dask.errors import ParameterError
from edlae_dask.linalg import EighResult, default_n_oversamples, randomized_eigh
from edlae_dask.linalg import _kernels as K


@pytest.fixture(autouse=True)
def _threads_unless_client(request):
    if "client" in request.fixturenames:
        with dask.config.set(scheduler="dask.distributed"):
            yield
    else:
        with dask.config.set(scheduler="threads"):
            yield


def psd(n, decay=0.7, seed=0, floor=1e-3):
    """M = U diag(λ) Uᵀ with λ_i = 100·decay^i + floor (PSD, decaying)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = 100.0 * decay ** np.arange(n) + floor
    return (U * lam) @ U.T, lam, U


def solve(M, k, chunks, dtype=np.float64, **kw):
    Md = da.from_array(M.astype(dtype), chunks=(chunks, chunks))
    kw.setdefault("n_oversamples", 8)
    kw.setdefault("n_power_iter", 3)
    return randomized_eigh(lambda Q: Md @ Q, M.shape[0], k, row_chunks=Md.chunks[0], dtype=dtype, **kw)


def subspace_distance(V, U):
    """‖V Vᵀ − U Uᵀ‖₂ = sin of the largest principal angle."""
    return np.linalg.norm(V @ V.T - U @ U.T, 2)


def test_float64_matches_numpy_eigh():
    M, lam, U = psd(120)
    r = solve(M, 8, 25)
    w, Uo = np.linalg.eigh(M)
    np.testing.assert_allclose(r.eigenvalues, w[::-1][:8], rtol=1e-10)
    assert subspace_distance(r.eigenvectors.compute(), Uo[:, ::-1][:, :8]) < 1e-4


def test_float32_matches_loosely():
    M, lam, U = psd(120)
    r = solve(M, 8, 25, dtype=np.float32)
    V = r.eigenvectors.compute()
    assert V.dtype == np.float32 and r.eigenvalues.dtype == np.float64
    np.testing.assert_allclose(r.eigenvalues, lam[:8], rtol=1e-4)
    assert subspace_distance(V.astype(np.float64), U[:, :8]) < 1e-2


def test_result_fields_and_orthonormal_sign_fixed_vectors():
    M, lam, U = psd(90, seed=1)
    r = solve(M, 6, 20, n_oversamples=5, n_power_iter=2)
    assert isinstance(r, EighResult)
    assert r.eigenvectors.shape == (90, 6) and r.eigenvectors.chunks[0] == (20, 20, 20, 20, 10)
    assert np.all(np.diff(r.eigenvalues) <= 0)
    assert (r.n_matvecs, r.n_oversamples, r.n_power_iter) == (4, 5, 2)
    assert r.seconds > 0
    V = r.eigenvectors.compute()
    np.testing.assert_allclose(V.T @ V, np.eye(6), atol=1e-12)
    big = V[np.argmax(np.abs(V), axis=0), np.arange(6)]
    assert np.all(big > 0)


def test_same_seed_identical_other_seed_close():
    M, lam, U = psd(100, seed=2)
    a, b = solve(M, 5, 30, seed=7), solve(M, 5, 30, seed=7)
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    np.testing.assert_array_equal(a.eigenvectors.compute(), b.eigenvectors.compute())
    np.testing.assert_array_equal(a.ritz_residuals, b.ritz_residuals)
    c = solve(M, 5, 30, seed=8)
    assert not np.array_equal(a.eigenvalues, c.eigenvalues)
    np.testing.assert_allclose(c.eigenvalues, a.eigenvalues, rtol=1e-9)
    # signs are fixed, so the vectors agree too (not just up to sign)
    np.testing.assert_allclose(c.eigenvectors.compute(), a.eigenvectors.compute(), atol=1e-4)


@pytest.mark.parametrize("chunks", [100, 33, 7])
def test_chunking_does_not_change_the_answer(chunks):
    M, lam, U = psd(100, seed=3)
    ref = solve(M, 5, 50)
    r = solve(M, 5, chunks)
    np.testing.assert_allclose(r.eigenvalues, ref.eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(r.eigenvectors.compute(), ref.eigenvectors.compute(), atol=1e-8)


def test_gaussian_test_matrix_does_not_depend_on_blocks():
    full = K.gaussian_rows(3, 0, 2500, 4, np.float32)
    parts = [K.gaussian_rows(3, a, b, 4, np.float32) for a, b in [(0, 7), (7, 1030), (1030, 2049), (2049, 2500)]]
    np.testing.assert_array_equal(np.concatenate(parts), full)
    assert full.dtype == np.float32


def test_reported_residuals_are_true_residuals():
    # slow decay + no power iteration: not converged, residuals clearly nonzero
    M, lam, U = psd(150, decay=0.97, seed=4)
    r = solve(M, 10, 40, n_oversamples=5, n_power_iter=0)
    V = r.eigenvectors.compute()
    true = np.linalg.norm(M @ V - V * r.eigenvalues, axis=0) / r.eigenvalues
    np.testing.assert_allclose(r.ritz_residuals, true, rtol=1e-8)
    assert r.ritz_residuals.max() > 1e-2


def test_residuals_small_when_converged():
    M, lam, U = psd(120, seed=5)
    r = solve(M, 8, 25, n_power_iter=6)
    assert r.ritz_residuals.max() < 1e-8


def test_subspace_clipped_to_n():
    M, lam, U = psd(12, seed=6)
    r = solve(M, 10, 5, n_oversamples=50, n_power_iter=0)
    assert r.n_oversamples == 2  # l = min(k + 50, n) = 12
    np.testing.assert_allclose(r.eigenvalues, lam[:10], rtol=1e-10)


def test_logs_progress_and_residuals(caplog):
    M, lam, U = psd(60, seed=7)
    lines = []
    solve(M, 4, 20, log=lines.append)
    assert len(lines) == 1 + 4 + 1  # header, 1 + n_power_iter passes, Rayleigh–Ritz
    assert "pass 4/4" in lines[-2] and "residuals" in lines[-1] and "median" in lines[-1]
    with caplog.at_level(logging.INFO, logger="edlae_dask.linalg"):
        solve(M, 4, 20)
    assert any("Rayleigh–Ritz" in rec.getMessage() for rec in caplog.records)


def test_default_parameters_are_used():
    M, lam, U = psd(80, seed=8)
    r = solve(M, 4, 20, n_oversamples=None, n_power_iter=None)
    assert r.n_oversamples == default_n_oversamples(4)


def test_distributed_matches_threads(client):
    M, lam, U = psd(100, seed=9)
    r = solve(M, 6, 30)
    with dask.config.set(scheduler="threads"):
        ref = solve(M, 6, 30)
    np.testing.assert_allclose(r.eigenvalues, ref.eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(r.eigenvectors.compute(), ref.eigenvectors.compute(), atol=1e-9)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(k=0), "'k' parameter"),
        (dict(k=-1), "'k' parameter"),
        (dict(k=20), "'k' parameter"),
        (dict(k=25), "'k' parameter"),
        (dict(k=2.0), "'k' parameter"),
        (dict(row_chunks=(10, 5)), "'row_chunks'"),
        (dict(dtype=np.int32), "float32 or float64"),
        (dict(n_oversamples=-1), "'n_oversamples'"),
        (dict(n_power_iter=-2), "'n_power_iter'"),
        (dict(seed=-1), "'seed'"),
    ],
)
def test_parameter_validation(kw, match):
    args = dict(k=3, row_chunks=(10, 10), dtype=np.float64)
    args.update(kw)
    k = args.pop("k")
    with pytest.raises(ParameterError, match=match):
        randomized_eigh(lambda Q: Q, 20, k, **args)


@pytest.mark.parametrize("rank_deficient", [False, True])
def test_orthonormalize_gives_an_orthonormal_Q_with_QR_equal_to_Y(rank_deficient):
    # CholeskyQR2, and TSQR where YᵀY is singular (two equal columns)
    from edlae_dask.linalg.eigen import _orthonormalize

    rng = np.random.default_rng(3)
    Y = rng.standard_normal((90, 12))
    if rank_deficient:
        Y[:, 5] = Y[:, 2]
    Q, R = _orthonormalize(da.from_array(Y, chunks=(25, 12)))
    Q = Q.compute(scheduler="threads")
    np.testing.assert_allclose(Q @ R, Y, atol=1e-10)
    np.testing.assert_allclose(Q.T @ Q, np.eye(12), atol=1e-10)
    assert np.allclose(R, np.triu(R))


@pytest.mark.parametrize("rank_deficient", [False, True])
def test_orthonormalize_of_a_lazy_panel_on_the_cluster(client, rank_deficient):
    # Y is a graph (as M·Q is in the solver): its Cholesky steps run as tasks on the workers, and a
    # failed one (YᵀY singular: a zero column) comes back as LinAlgError, answered by TSQR
    from edlae_dask.linalg.eigen import _orthonormalize

    rng = np.random.default_rng(4)
    A, B = rng.standard_normal((90, 30)), rng.standard_normal((30, 12))
    if rank_deficient:
        B[:, 7] = 0.0
    Y = da.from_array(A, chunks=(25, 30)) @ da.from_array(B, chunks=(30, 12))
    extra = da.from_array(B.T @ B, chunks=(12, 12))
    Q, R, E = _orthonormalize(Y, also=(extra,))
    Q = Q.compute()
    np.testing.assert_allclose(Q @ R, A @ B, atol=1e-10)
    np.testing.assert_allclose(Q.T @ Q, np.eye(12), atol=1e-10)
    assert np.allclose(R, np.triu(R))
    np.testing.assert_allclose(E, B.T @ B)


# --------------------------------------------------------------------------- block Krylov
# Oracle: numpy.linalg.eigh. With decay 0.7, k = 8 and a basis of 4 blocks of 8 columns
# (n_oversamples = 24, q = 3) spanning MΩ … M⁴Ω, the Krylov space holds every degree-4
# polynomial filter of M applied to Ω, at least as good as subspace iteration's M⁴Ω with l = 8;
# the Chebyshev filters converge much faster than that (λ_{k+1}/λ_k = 0.7): the subspace
# method's tolerances above hold. Blocks narrower than k converge slowly on the k-th pair.


def krylov(M, k, chunks, dtype=np.float64, **kw):
    kw.setdefault("method", "krylov")
    kw.setdefault("n_oversamples", 3 * k)
    return solve(M, k, chunks, dtype=dtype, **kw)


def test_krylov_float64_matches_numpy_eigh():
    M, lam, U = psd(120)
    r = krylov(M, 8, 25)
    w, Uo = np.linalg.eigh(M)
    assert r.method == "krylov"
    np.testing.assert_allclose(r.eigenvalues, w[::-1][:8], rtol=1e-10)
    assert subspace_distance(r.eigenvectors.compute(), Uo[:, ::-1][:, :8]) < 1e-4


def test_krylov_float32_matches_loosely():
    M, lam, U = psd(120)
    r = krylov(M, 8, 25, dtype=np.float32)
    V = r.eigenvectors.compute()
    assert V.dtype == np.float32 and r.eigenvalues.dtype == np.float64
    np.testing.assert_allclose(r.eigenvalues, lam[:8], rtol=1e-4)
    assert subspace_distance(V.astype(np.float64), U[:, :8]) < 1e-2


def test_krylov_counts_blocks_and_columns():
    # l = k + p = 16 over q + 1 = 4 blocks: b = 4; q + 2 = 5 applications of M to 4 columns
    M, lam, U = psd(90, seed=1)
    r = krylov(M, 6, 20, n_oversamples=10, n_power_iter=3)
    assert (r.method, r.block_size, r.n_matvecs, r.n_matvec_columns) == ("krylov", 4, 5, 20)
    assert (r.n_oversamples, r.n_power_iter) == (16 - 6, 3)
    V = r.eigenvectors.compute()
    np.testing.assert_allclose(V.T @ V, np.eye(6), atol=1e-12)
    assert np.all(V[np.argmax(np.abs(V), axis=0), np.arange(6)] > 0)
    assert np.all(np.diff(r.eigenvalues) <= 0)


def test_krylov_reported_residuals_are_true_residuals():
    # slow decay, two small blocks: not converged, residuals clearly nonzero
    M, lam, U = psd(150, decay=0.97, seed=4)
    r = krylov(M, 10, 40, n_oversamples=2, n_power_iter=1)
    V = r.eigenvectors.compute()
    true = np.linalg.norm(M @ V - V * r.eigenvalues, axis=0) / r.eigenvalues
    np.testing.assert_allclose(r.ritz_residuals, true, rtol=1e-6)
    assert r.ritz_residuals.max() > 1e-2


def test_krylov_ritz_values_never_exceed_the_eigenvalues_and_grow_with_blocks():
    # Rayleigh–Ritz on nested spaces: each Ritz value is a lower bound that can only rise
    # (Cauchy interlacing), which the monitor shows block by block
    M, lam, U = psd(150, decay=0.97, seed=10)
    events = []
    r = krylov(M, 10, 40, n_oversamples=20, n_power_iter=5, monitor=events.append)
    sums = [e["ritz_sum"] for e in events if e["ritz_sum"] is not None]
    assert len(sums) >= 3 and np.all(np.diff(sums) >= -1e-9 * sums[-1])
    assert [e["n_matvecs"] for e in events] == list(range(2, r.n_matvecs + 1))
    np.testing.assert_allclose(sums[-1], r.eigenvalues.sum(), rtol=1e-12)
    assert np.all(r.eigenvalues <= lam[:10] * (1 + 1e-12))


@pytest.mark.parametrize("chunks", [120, 33, 7])
def test_krylov_chunking_does_not_change_the_answer(chunks):
    M, lam, U = psd(120, seed=3)
    ref = krylov(M, 6, 60)
    r = krylov(M, 6, chunks)
    np.testing.assert_allclose(r.eigenvalues, ref.eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(r.eigenvectors.compute(), ref.eigenvectors.compute(), atol=1e-8)


def test_krylov_on_a_low_rank_operator(caplog):
    # rank 9 = three blocks of 3: M·Q_3 lies in the basis, so the fourth block is rounding noise
    # (~1e-14 of ‖M·Q_3‖ ~ 6); block Gram–Schmidt twice must still leave it orthogonal to the basis
    rng = np.random.default_rng(5)
    U, _ = np.linalg.qr(rng.standard_normal((90, 9)))
    lam = np.array([40.0, 30, 20, 10, 6, 4, 3, 2, 1])
    M = (U * lam) @ U.T
    with caplog.at_level(logging.INFO, logger="edlae_dask.linalg"):
        r = krylov(M, 3, 30, n_oversamples=9, n_power_iter=3)
    assert r.block_size == 3
    assert "(Krylov block 4): " in caplog.text
    np.testing.assert_allclose(r.eigenvalues, lam[:3], rtol=1e-10)
    V = r.eigenvectors.compute()
    np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-10)
    assert subspace_distance(V, U[:, :3]) < 1e-6


def test_krylov_too_close_to_n_uses_the_subspace_method():
    # l = min(11 + 50, 13) = 13 over 2 blocks: b = 7, and only one block of 7 < k fits in n
    M, lam, U = psd(13, seed=6)
    r = krylov(M, 11, 5, n_oversamples=50, n_power_iter=1)
    assert r.method == "subspace" and r.n_oversamples == 2
    np.testing.assert_allclose(r.eigenvalues, lam[:11], rtol=1e-10)


def test_krylov_distributed_matches_threads(client):
    M, lam, U = psd(100, seed=9)
    r = krylov(M, 6, 30)
    with dask.config.set(scheduler="threads"):
        ref = krylov(M, 6, 30)
    np.testing.assert_allclose(r.eigenvalues, ref.eigenvalues, rtol=1e-12)
    np.testing.assert_allclose(r.eigenvectors.compute(), ref.eigenvectors.compute(), atol=1e-9)


def test_default_method_switches_to_krylov_at_large_k(monkeypatch):
    # the threshold is a measured constant; the switch is tested at a small one
    from edlae_dask.linalg import eigen

    monkeypatch.setattr(eigen, "KRYLOV_MIN_K", 12)
    assert eigen.default_method(11) == "subspace" and eigen.default_method(12) == "krylov"
    M, lam, U = psd(150, decay=0.97, seed=12)
    r = solve(M, 12, 50, n_oversamples=None, n_power_iter=None)
    assert r.method == "krylov"
    assert r.n_oversamples >= eigen.default_n_oversamples(12) and r.n_power_iter == eigen.default_n_power_iter(12)


def test_default_krylov_rule_takes_10_blocks_where_3k_exceeds_half_of_n(monkeypatch):
    # 12 blocks of ceil(k/4) (a 3k space) while 3k <= n/2; beyond, 10 blocks (2.5k): the dense
    # Rayleigh–Ritz eigh (~d³ on the client) is what large k pays for
    from edlae_dask.linalg import eigen

    assert eigen.default_n_power_iter(1000, "krylov", n=20_108) == 11
    assert eigen.default_n_oversamples(1000, "krylov", n=20_108) == 2000
    assert eigen.default_n_power_iter(5000, "krylov", n=20_108) == 9
    assert eigen.default_n_oversamples(5000, "krylov", n=20_108) == 10 * 1250 - 5000
    monkeypatch.setattr(eigen, "KRYLOV_MIN_K", 12)
    M, lam, U = psd(100, decay=0.9, seed=15)  # 6k = 120 > n = 100
    r = solve(M, 20, 25, n_oversamples=None, n_power_iter=None)
    assert r.method == "krylov" and r.block_size == 5 and r.n_matvecs == 11 and r.n_oversamples == 30
    w, Uo = np.linalg.eigh(M)
    np.testing.assert_allclose(r.eigenvalues, w[::-1][:20], rtol=1e-6)
    assert subspace_distance(r.eigenvectors.compute(), Uo[:, ::-1][:, :20]) < 1e-3  # gap λ₂₁/λ₂₀ = 0.9


def test_unknown_method_is_rejected():
    with pytest.raises(ParameterError, match="'method' parameter.*'subspace', 'krylov'"):
        randomized_eigh(lambda Q: Q, 20, 3, row_chunks=(10, 10), method="lanczos")


def test_gram_sums_row_blocks_in_float64():
    from edlae_dask.linalg.eigen import _gram

    rng = np.random.default_rng(13)
    A, B = rng.standard_normal((103, 9)).astype(np.float32), rng.standard_normal((103, 4)).astype(np.float32)
    Ad, Bd = da.from_array(A, chunks=(15, 9)), da.from_array(B, chunks=(15, 4))
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    with dask.config.set(scheduler="threads"):
        np.testing.assert_allclose(_gram(Ad), A64.T @ A64, rtol=1e-12)
        np.testing.assert_allclose(_gram(Ad, Bd), A64.T @ B64, rtol=1e-12, atol=1e-12)


def test_single_cholesky_qr_keeps_the_span():
    from edlae_dask.linalg.eigen import _orthonormalize

    rng = np.random.default_rng(14)
    Y = rng.standard_normal((90, 12)) @ np.diag(np.logspace(0, 3, 12))
    Q, R = _orthonormalize(da.from_array(Y, chunks=(25, 12)), twice=False)
    Q = Q.compute(scheduler="threads")
    np.testing.assert_allclose(Q @ R, Y, atol=1e-9)
    np.testing.assert_allclose(Q.T @ Q, np.eye(12), atol=1e-8)


# --------------------------------------------------------------------------- the convergence rule (tol)


def gapped(n, k, ratio, seed=0):
    """Q·diag(λ)·Qᵀ whose eigenvalues beyond the k-th are ``ratio`` times the k-th or less (ratio → 1: slow)."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.concatenate([10.0 - 0.5 * np.arange(k), (10.0 - 0.5 * (k - 1)) * ratio * 0.98 ** np.arange(n - k)])
    return (U * lam) @ U.T, lam


def ritz_sums(M, k, method, **kw):
    sums = []
    res = solve(M, k, (40, 40, 40), method=method, monitor=lambda d: sums.append(d["ritz_sum"]), **kw)
    return res, [s for s in sums if s is not None]


@pytest.mark.parametrize("method", ["subspace", "krylov"])
def test_the_rule_stops_when_the_ritz_sum_settles_and_a_slow_gap_takes_more_passes(method):
    k, tol = 4, 1e-6
    fast, lam_fast = gapped(120, k, 0.3)
    slow, lam_slow = gapped(120, k, 0.9)
    kw = dict(n_oversamples=4, n_power_iter=1, tol=tol, max_power_iter=60)
    rf, sums_f = ritz_sums(fast, k, method, **kw)
    rs, sums_s = ritz_sums(slow, k, method, **kw)
    assert rf.converged and rs.converged
    assert rs.n_power_iter > rf.n_power_iter
    for r, sums, lam in ((rf, sums_f, lam_fast), (rs, sums_s, lam_slow)):
        # it stopped at the first pass (from n_power_iter on) where the change fell below tol
        changes = np.abs(np.diff(sums)) / np.abs(np.asarray(sums[1:]))
        assert r.ritz_sum_change == pytest.approx(changes[-1]) and changes[-1] < tol
        assert np.all(changes[:-1] >= tol)
        assert r.n_matvecs == r.n_power_iter + 2
        np.testing.assert_allclose(r.eigenvalues, lam[:k], rtol=1e-4)


@pytest.mark.parametrize("method", ["subspace", "krylov"])
def test_the_pass_cap_is_honoured_and_says_not_converged(method, caplog):
    M, _ = gapped(120, 4, 0.95)
    with caplog.at_level(logging.INFO, logger="edlae_dask.linalg"):
        r = solve(M, 4, (40, 40, 40), method=method, n_oversamples=4, n_power_iter=1, tol=1e-12, max_power_iter=3)
    assert r.converged is False and r.n_power_iter == 3 and r.n_matvecs == 5
    assert r.ritz_sum_change >= 1e-12
    assert "NOT converged after 3 power iterations" in caplog.text


@pytest.mark.parametrize("method", ["subspace", "krylov"])
def test_n_power_iter_is_the_least_passes_under_the_rule(method):
    M, _ = gapped(120, 4, 0.3)
    r = solve(M, 4, (40, 40, 40), method=method, n_oversamples=4, n_power_iter=6, tol=0.5, max_power_iter=10)
    assert r.converged and r.n_power_iter == 6


def test_without_a_rule_the_passes_are_fixed_and_unreported():
    M, _, _ = psd(60)
    old = solve(M, 5, (20, 20, 20))
    assert old.converged is None and old.ritz_sum_change is None and old.n_power_iter == 3
    zero = solve(M, 5, (20, 20, 20), tol=0.0, max_power_iter=1)  # 0 is off too: the cap is not used
    np.testing.assert_array_equal(zero.eigenvalues, old.eigenvalues)


@pytest.mark.parametrize("method", ["subspace", "krylov"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_rule_gives_orthonormal_vectors_and_true_residuals(method, dtype):
    M, lam, _ = psd(120, decay=0.9)
    r = solve(M, 6, (50, 50, 20), dtype=dtype, method=method, n_oversamples=6, n_power_iter=1, tol=1e-5,
              max_power_iter=40)
    V = r.eigenvectors.compute().astype(np.float64)
    eps = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(V.T @ V, np.eye(6), atol=20 * eps)
    true = np.linalg.norm(M @ V - V * r.eigenvalues, axis=0) / r.eigenvalues
    np.testing.assert_allclose(r.ritz_residuals, true, rtol=1e-3, atol=50 * eps)
    assert r.converged and r.ritz_residuals.max() < 0.05
    np.testing.assert_allclose(r.eigenvalues, lam[:6], rtol=1e-3)


def test_the_default_least_passes_are_lowered_to_the_cap():
    M, _, _ = psd(60)
    r = solve(M, 5, (20, 20, 20), n_power_iter=None, tol=1e-12, max_power_iter=1)
    assert r.n_power_iter == 1 and r.converged is False


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(tol=-1e-3), "'tol' parameter"),
        (dict(tol=1.0), "'tol' parameter"),
        (dict(tol="1e-3"), "'tol' parameter"),
        (dict(tol=True), "'tol' parameter"),
        (dict(max_power_iter=-1), "'max_power_iter' parameter"),
        (dict(max_power_iter=2.0), "'max_power_iter' parameter"),
        (dict(tol=1e-3, n_power_iter=5, max_power_iter=4), "must not exceed 'max_power_iter'"),
    ],
)
def test_rule_parameter_validation(kw, match):
    with pytest.raises(ParameterError, match=match) as err:
        randomized_eigh(lambda Q: Q, 20, 3, row_chunks=(10, 10), dtype=np.float64, **kw)
    assert "\n" not in str(err.value)


def test_one_process_evaluation_eigensolve_takes_the_rule():
    from edlae_dask.evaluation.dense import eigensolve

    M, lam = gapped(100, 3, 0.5)
    r = eigensolve(lambda Q: M @ Q, 100, 3, np.float64, n_oversamples=5, n_power_iter=1, tol=1e-8,
                   max_power_iter=50)
    assert r.converged and r.n_power_iter > 1
    np.testing.assert_allclose(r.eigenvalues, lam[:3], rtol=1e-6)


@pytest.mark.parametrize("path", ["dense", "scalable"])
def test_the_training_stage_info_reports_passes_and_convergence(tmp_path, path):
    from edlae_dask.config import TrainParams
    from edlae_dask.io.factors import open_factors
    from edlae_dask.io.interactions import write_interactions
    from edlae_dask.pipeline import train

    from conftest import clustered_interactions

    store = write_interactions(tmp_path / "x.zarr", clustered_interactions(n_users=300, n_items=50, seed=3),
                               shard_size=100)
    base = dict(k=4, lam=4.0, p=0.2, dtype="float64", path=path, neighbors=10, block_size=16, n_oversamples=4)
    done = train(store, params=TrainParams(**base, n_power_iter=1, eig_tol=1e-6, max_power_iter=40))
    info = done.stages["eigensolve"]["detail"]
    assert info["converged"] is True and 1 <= info["n_power_iter"] < 40 and info["ritz_sum_change"] < 1e-6
    assert done.eigensolver["converged"] is True and done.eigensolver["n_power_iter"] == info["n_power_iter"]
    capped = train(store, params=TrainParams(**base, n_power_iter=0, eig_tol=1e-15, max_power_iter=1))
    info = capped.stages["eigensolve"]["detail"]
    assert info["converged"] is False and info["n_power_iter"] == 1
    fixed = train(store, params=TrainParams(**base, n_power_iter=2, eig_tol=0.0), out=tmp_path / "f")
    info = fixed.stages["eigensolve"]["detail"]
    assert info["converged"] is None and info["n_power_iter"] == 2 and info["ritz_sum_change"] is None
    published = open_factors(tmp_path / "f").meta
    assert published["eigensolver"]["converged"] is None
    assert published["stages"]["eigensolve"]["detail"]["n_power_iter"] == 2


@pytest.mark.parametrize("method", ["subspace", "krylov"])
def test_a_rule_met_at_the_least_passes_gives_the_fixed_solve(method):
    M, _, _ = psd(120, decay=0.9)
    fixed = solve(M, 6, (50, 70), method=method, n_oversamples=6, n_power_iter=4)
    rule = solve(M, 6, (50, 70), method=method, n_oversamples=6, n_power_iter=4, tol=0.5, max_power_iter=9)
    assert rule.converged and rule.n_power_iter == 4 and rule.n_matvecs == fixed.n_matvecs
    np.testing.assert_allclose(rule.eigenvalues, fixed.eigenvalues, rtol=1e-10)
    np.testing.assert_allclose(np.abs(rule.eigenvectors.compute().T @ fixed.eigenvectors.compute()), np.eye(6),
                               atol=1e-6)

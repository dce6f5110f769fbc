"""The attention micro-kernels (``src_pyx/_attn_gemm.h``) against NumPy, at every SIMD
level, and the fused attention kernel on them against the textbook equations."""
import numpy as np
import pytest

import nn_core.attention._sdpa_kernels as sdp
from nn_core._kernels import _testing

from simd_levels import level_fixture
from test_sdpa_kernel import _reference, _run, _tol

level = level_fixture(2, 1, 0, doc="Every SIMD level the CPU has (AVX-512F, AVX2+FMA, "
                      "baseline).")

# (m, n, k): single elements, row remainders of every size, partial and whole column
# panels (16 / 32 floats, 8 / 16 doubles), empty k, the attention shapes
SIZES = [(1, 1, 1), (1, 7, 3), (5, 17, 2), (7, 31, 9), (9, 33, 0), (13, 40, 37),
         (8, 64, 32), (16, 16, 16), (3, 129, 5), (32, 32, 128)]


def _operand(rng, shape, dtype, pad):
    """A random ``shape`` array whose rows are ``pad`` elements longer than wide."""
    buf = rng.standard_normal((shape[0], shape[1] + pad)).astype(dtype)
    return buf[:, :shape[1]]


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("sizes", SIZES, ids=str)
@pytest.mark.parametrize("trans_a", [False, True], ids=["A", "At"])
@pytest.mark.parametrize("acc", [False, True], ids=["write", "acc"])
def test_micro_kernel_matches_numpy(rng, dtype, sizes, trans_a, acc):
    m, n, k = sizes
    a = _operand(rng, (k, m) if trans_a else (m, k), dtype, 3)
    b = _operand(rng, (k, n), dtype, 5)
    c0 = _operand(rng, (m, n), dtype, 2)
    c = c0.copy()
    _testing.attn_gemm_memview(trans_a, 0.75, a, b, acc, c)
    want = 0.75 * ((a.T if trans_a else a).astype(np.float64) @ b) + (c0 if acc else 0)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(c, want, **tol)
    assert not np.shares_memory(c, c0)


@pytest.mark.usefixtures("level")
def test_micro_kernel_rows_do_not_depend_on_blocking(rng, dtype):
    """A row's bits are the same whether it is computed with 12 others or alone."""
    a = rng.standard_normal((13, 37)).astype(dtype)
    b = rng.standard_normal((37, 45)).astype(dtype)
    whole = np.zeros((13, 45), dtype)
    _testing.attn_gemm_memview(False, 0.5, a, b, False, whole)
    for i in range(13):
        row = np.zeros((1, 45), dtype)
        _testing.attn_gemm_memview(False, 0.5, a[i:i + 1], b, False, row)
        np.testing.assert_array_equal(row[0], whole[i])


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("sizes", [(1, 1, 1), (1, 9, 3), (2, 5, 17), (3, 130, 64),
                                   (4, 7, 67), (1, 33, 128), (2, 3, 0)], ids=str)
def test_nt_micro_kernel_matches_numpy(rng, dtype, sizes):
    m, n, k = sizes
    a = _operand(rng, (m, k), dtype, 3)
    b = _operand(rng, (n, k), dtype, 1)
    c = _operand(rng, (m, n), dtype, 2)
    _testing.attn_gemm_nt_memview(0.6, a, b, c)
    want = 0.6 * (a.astype(np.float64) @ b.T)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(c, want, **tol)


def test_micro_kernel_checks_shapes():
    a, b, c = np.ones((3, 4)), np.ones((5, 6)), np.ones((3, 6))
    with pytest.raises(ValueError, match="inconsistent"):
        _testing.attn_gemm_memview(False, 1.0, a, b, False, c)
    with pytest.raises(ValueError, match="inconsistent"):
        _testing.attn_gemm_nt_memview(1.0, a, b, c)


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("own", [True, False], ids=["own", "blas"])
@pytest.mark.parametrize("layout", [((2, 3), (2, 3)), ((2, 2, 3), (2, 2, 1))], ids=str)
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("L_q", [23, 3, 1], ids=["L_q=23", "L_q=3", "L_q=1"])
def test_fused_kernel_on_each_gemm_path(rng, dtype, monkeypatch, own, layout, is_causal,
                                        L_q):
    """Also a few query rows (KV-cache decoding: the scores from K's rows)."""
    monkeypatch.setattr(sdp, "OWN_GEMM", own)
    monkeypatch.setattr(sdp, "BLOCK_Q", 7)
    monkeypatch.setattr(sdp, "BLOCK_K", 9)
    (ql, kl), L_k, (d_k, d_v) = layout, 30, (19, 37)
    q = rng.standard_normal(ql + (L_q, d_k))
    k = rng.standard_normal(kl + (L_k, d_k))
    v = rng.standard_normal(kl + (L_k, d_v))
    g = rng.standard_normal(np.broadcast_shapes(ql, kl) + (L_q, d_v))
    got = _run(q, k, v, g, dtype, is_causal=is_causal)
    want = _reference(q, k, v, g, is_causal=is_causal)
    for name, a, b in zip(("out", "weights", "grad_q", "grad_k", "grad_v"), got, want):
        np.testing.assert_allclose(a, b, err_msg=name, **_tol(dtype))


def test_own_gemm_rule(monkeypatch):
    monkeypatch.setattr(sdp, "OWN_GEMM", None)
    assert sdp.own_gemm(128, 128, 32, 32)
    assert not sdp.own_gemm(128, 128, 256, 64)
    monkeypatch.setattr(sdp, "OWN_GEMM", False)
    assert not sdp.own_gemm(128, 128, 32, 32)

"""The row-major GEMM/GEMV wrappers of src_pyx/_blas.pxd against NumPy."""
import numpy as np
import pytest

from nn_core._kernels import _testing


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_every_transpose(dtype, trans_a, trans_b, rng):
    m, n, k = rng.integers(1, 40, size=3)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    alpha, beta = rng.standard_normal(2)
    expected = alpha * ((a.T if trans_a else a).astype(np.float64)
                        @ (b.T if trans_b else b).astype(np.float64)) + beta * c
    _testing.gemm_memview(trans_a, trans_b, dtype(alpha), a, b, dtype(beta), c)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, expected, rtol=tol, atol=tol * k)


@pytest.mark.parametrize("trans_a", [False, True])
def test_gemv_both_transposes(dtype, trans_a, rng):
    m, n = rng.integers(1, 40, size=2)
    a = rng.standard_normal((m, n)).astype(dtype)
    x = rng.standard_normal(m if trans_a else n).astype(dtype)
    y = rng.standard_normal(n if trans_a else m).astype(dtype)
    expected = 1.5 * ((a.T if trans_a else a).astype(np.float64) @ x) - 0.5 * y
    _testing.gemv_memview(trans_a, dtype(1.5), a, x, dtype(-0.5), y)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol * max(m, n))


def test_gemm_rejects_inconsistent_shapes():
    a = np.ones((3, 4))
    with pytest.raises(ValueError, match="inconsistent"):
        _testing.gemm_memview(False, False, 1.0, a, np.ones((5, 2)), 0.0, np.ones((3, 2)))
    with pytest.raises(ValueError, match="inconsistent"):
        _testing.gemm_repeat(False, False, a, np.ones((5, 2)), np.ones((3, 2)), 1)
    with pytest.raises(ValueError, match="inconsistent"):
        _testing.gemv_memview(False, 1.0, a, np.ones(3), 0.0, np.ones(3))


def test_gemm_repeat_computes_the_product(rng):
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    c = np.full((5, 4), np.nan)
    _testing.gemm_repeat(False, True, a, b, c, 3)
    np.testing.assert_allclose(c, a @ b.T, rtol=1e-12)


def test_gemm_rejects_non_contiguous():
    a = np.ones((3, 8))[:, ::2]
    with pytest.raises(ValueError):
        _testing.gemm_memview(False, False, 1.0, a, np.ones((4, 2)), 0.0, np.ones((3, 2)))

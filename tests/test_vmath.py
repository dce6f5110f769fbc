"""The vectorised primitives of src_pyx/_vmath.h (exp, exp-sum, transpose) against
NumPy, at every SIMD level the CPU has, and the one SIMD switch."""
import importlib
import pkgutil

import numpy as np
import pytest

import nn_core._kernels as kernels_pkg
from nn_core._kernels import _simd, _testing

from simd_levels import level_fixture


level = level_fixture(0, 1, 2)


@pytest.mark.usefixtures("level")
def test_vexp_accuracy_float32(rng):
    x = np.concatenate([rng.uniform(-87, 0, 20000), rng.uniform(-1, 1, 2000), rng.uniform(0, 88, 2000)])
    x = x.astype(np.float32)
    y = np.empty_like(x)
    _testing.vexp_memview(x, y)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(y - ref) / ref) < 3e-7            # ~2 ulp


@pytest.mark.usefixtures("level")
def test_vexp_accuracy_float64(rng):
    x = np.concatenate([rng.uniform(-708, 0, 20000), rng.uniform(-1, 1, 2000), rng.uniform(0, 709, 2000)])
    y = np.empty_like(x)
    _testing.vexp_memview(x, y)
    ref = np.exp(x)
    assert np.max(np.abs(y - ref) / ref) < 1e-15


@pytest.mark.usefixtures("level")
def test_vexp_special_values(dtype):
    x = np.array([-np.inf, np.nan, 0.0, -1e4, 1e4, np.inf], dtype=dtype)
    y = np.empty_like(x)
    _testing.vexp_memview(x, y)
    assert y[0] == 0 and np.isnan(y[1]) and y[2] == 1 and y[3] == 0
    assert y[4] == np.inf and y[5] == np.inf


@pytest.mark.usefixtures("level")
def test_vexp_odd_lengths(rng):
    for n in (1, 7, 8, 9, 17):
        x = rng.uniform(-5, 0, n)
        y = np.empty_like(x)
        _testing.vexp_memview(x, y)
        np.testing.assert_allclose(y, np.exp(x), rtol=1e-15)


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("n", [1, 5, 8, 15, 16, 17, 33, 512])
def test_vexp_sum(rng, dtype, n):
    """The softmax exp pass: ``y = exp(x - shift)``, returns ``sum(y)``; in place too;
    ``-inf`` entries give 0, a NaN entry gives NaN."""
    x = rng.uniform(-30, 3, n).astype(dtype)
    x[1::3] = -np.inf
    shift = dtype(x.max())
    y = np.empty_like(x)
    s = _testing.vexp_sum_memview(x, y, shift)
    ref = np.exp((x - shift).astype(np.float64))         # the kernel subtracts in dtype
    tol = 3e-7 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(y, ref, rtol=tol, atol=0)
    np.testing.assert_allclose(s, ref.sum(), rtol=4 * tol)
    z = x.copy()
    assert _testing.vexp_sum_memview(z, z, shift) == s
    np.testing.assert_array_equal(z, y)
    x[n // 2] = np.nan
    assert np.isnan(_testing.vexp_sum_memview(x, y, shift)) and np.isnan(y[n // 2])


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("R, C", [(1, 1), (3, 5), (8, 8), (17, 9), (64, 33), (512, 64)])
def test_transpose(rng, dtype, R, C):
    src = rng.standard_normal((R, C + 3)).astype(dtype)[:, 1:C + 1]     # row stride C + 3
    dst = np.full((C, R + 2), np.nan, dtype)[:, :R]                     # row stride R + 2
    _testing.transpose_memview(src, dst, False)
    np.testing.assert_array_equal(dst, src.T)
    base = rng.standard_normal((C, R)).astype(dtype)
    acc = base.copy()
    _testing.transpose_memview(src, acc, True)
    np.testing.assert_array_equal(acc, base + src.T)
    with pytest.raises(ValueError, match="dst must have shape"):
        _testing.transpose_memview(src, np.empty((C, R + 1), dtype), False)


def test_one_simd_switch_reaches_every_kernel_module():
    """Every kernel extension binds its dispatch to the switch owned by ``_simd``."""
    # _simd owns the switch; _alloc (NumPy memory handlers), _textparse (the data
    # file parser) and _team (the thread team; its GEMM blocks are BLAS calls) have no
    # SIMD code, nor has _cyutility (Cython's memoryview support code, shared by the
    # other modules)
    names = [m.name for m in pkgutil.iter_modules(kernels_pkg.__path__)
             if m.name not in ("_simd", "_alloc", "_textparse", "_team", "_cyutility")]
    for name in names:
        importlib.import_module(f"{kernels_pkg.__name__}.{name}")
    assert {f"{kernels_pkg.__name__}.{n}" for n in names} <= set(_simd.bound_modules())
    cpu = _simd.cpu_level()
    try:
        assert _testing.set_simd_level(0) == 0 == _simd.simd_level()
        assert _testing.set_simd_level(9) == cpu == _simd.simd_level()
    finally:
        _testing.set_simd_level(2)
    assert _simd.simd_level() == cpu

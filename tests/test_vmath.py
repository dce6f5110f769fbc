"""Accuracy of the vectorised exp in src_pyx/_vmath.h against float64 NumPy."""
import numpy as np

from nn_core._kernels import _softmax


def test_vexp_accuracy_float32(rng):
    x = np.concatenate([rng.uniform(-87, 0, 20000), rng.uniform(-1, 1, 2000), rng.uniform(0, 88, 2000)])
    x = x.astype(np.float32)
    y = np.empty_like(x)
    _softmax.vexp_memview(x, y)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(y - ref) / ref) < 3e-7            # ~2 ulp


def test_vexp_accuracy_float64(rng):
    x = np.concatenate([rng.uniform(-708, 0, 20000), rng.uniform(-1, 1, 2000), rng.uniform(0, 709, 2000)])
    y = np.empty_like(x)
    _softmax.vexp_memview(x, y)
    ref = np.exp(x)
    assert np.max(np.abs(y - ref) / ref) < 1e-15


def test_vexp_special_values(dtype):
    x = np.array([-np.inf, np.nan, 0.0, -1e4, 1e4, np.inf], dtype=dtype)
    y = np.empty_like(x)
    _softmax.vexp_memview(x, y)
    assert y[0] == 0 and np.isnan(y[1]) and y[2] == 1 and y[3] == 0
    assert y[4] == np.inf and y[5] == np.inf


def test_vexp_odd_lengths(rng):
    for n in (1, 7, 8, 9, 17):
        x = rng.uniform(-5, 0, n)
        y = np.empty_like(x)
        _softmax.vexp_memview(x, y)
        np.testing.assert_allclose(y, np.exp(x), rtol=1e-15)

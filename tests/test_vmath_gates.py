"""Accuracy of the vectorised sigmoid / tanh appended to ``_vmath.h`` (against an
extended-precision NumPy reference), including the special values."""
import numpy as np
import pytest

from nn_core._kernels import _testing as K

from simd_levels import level_fixture

_GRID = np.concatenate([np.linspace(-40, 40, 40001), np.logspace(-30, 1.7, 3000),
                        -np.logspace(-30, 1.7, 3000), [0.0, 0.6249999, 0.625, 0.6250001]])


def _ulps(y, ref, dtype):
    ref = ref.astype(np.longdouble)
    spacing = np.spacing(np.abs(ref).astype(dtype)).astype(np.longdouble)
    return np.abs(y.astype(np.longdouble) - ref) / spacing


level = level_fixture(0, 1)


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_accuracy(name, dtype, rng):
    x = np.concatenate([_GRID, rng.uniform(-20, 20, 5000)]).astype(dtype)
    xl = x.astype(np.longdouble)
    if name == "sigmoid":
        fn, ref = K.vsigmoid_memview, 1 / (1 + np.exp(-xl))
    else:
        fn, ref = K.vtanh_memview, np.tanh(xl)
    y = np.empty_like(x)
    fn(x, y)
    assert _ulps(y, ref, dtype).max() <= 4
    # in place (y aliases x) gives the same
    z = x.copy()
    fn(z, z)
    np.testing.assert_array_equal(z, y)


@pytest.mark.usefixtures("level")
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_special_values(name, dtype):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e4, -1e4], dtype=dtype)
    y = np.empty_like(x)
    (K.vsigmoid_memview if name == "sigmoid" else K.vtanh_memview)(x, y)
    if name == "sigmoid":
        expected = [1, 0, np.nan, 0.5, 0.5, 1, 0]
    else:
        expected = [1, -1, np.nan, 0, -0.0, 1, -1]
        assert np.signbit(y[4])
    np.testing.assert_array_equal(y, np.array(expected, dtype=dtype))


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="same length"):
        K.vtanh_memview(np.zeros(3), np.zeros(4))

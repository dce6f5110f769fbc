"""Masked softmax (Python function and the Cython kernel behind it)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nn_core.attention import softmax
from reference import masked_softmax


def _tol(dtype):
    return dict(rtol=2e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 17), (2, 1, 4, 33)])
def test_matches_reference(dtype, shape, rng):
    x = (rng.standard_normal(shape) * 5).astype(dtype)
    y = softmax(x)
    assert y.dtype == dtype and y.shape == shape
    np.testing.assert_allclose(y, masked_softmax(x), **_tol(dtype))


@pytest.mark.parametrize("axis", [0, 1, -2])
def test_other_axes(dtype, axis, rng):
    x = rng.standard_normal((4, 5, 6)).astype(dtype)
    m = rng.random((4, 5, 6)) > 0.3
    y = softmax(x, axis=axis, mask=m)
    ref = np.moveaxis(masked_softmax(np.moveaxis(x, axis, -1), np.moveaxis(m, axis, -1)), -1, axis)
    np.testing.assert_allclose(y, ref, **_tol(dtype))


def test_bool_mask_broadcast_and_fully_masked_rows(dtype, rng):
    x = rng.standard_normal((2, 3, 4, 6)).astype(dtype)
    m = rng.random((2, 1, 4, 6)) > 0.5
    m[0, 0, 1] = False                                      # a fully masked row
    y = softmax(x, mask=m)
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y[0, :, 1], 0)
    np.testing.assert_array_equal(y[np.broadcast_to(~m, y.shape)], 0)
    np.testing.assert_allclose(y, masked_softmax(x, m), **_tol(dtype))


def test_float_mask_is_additive(dtype, rng):
    x = rng.standard_normal((3, 5)).astype(dtype)
    fm = rng.standard_normal((3, 5)).astype(dtype)
    fm[0, 2] = -np.inf
    fm[2, :] = -np.inf                                      # all -inf: fully masked
    y = softmax(x, mask=fm)
    ref = masked_softmax(x.astype(np.float64) + fm)
    np.testing.assert_allclose(y, ref, **_tol(dtype))
    np.testing.assert_array_equal(y[2], 0)
    assert y[0, 2] == 0


def test_large_values_are_stable(dtype):
    x = np.array([[1e4, 1e4 - 1, -1e4], [-np.inf, 3.0, -np.inf]], dtype=dtype)
    y = softmax(x)
    np.testing.assert_allclose(y, masked_softmax(x), **_tol(dtype))
    assert np.all(np.isfinite(y))


def test_other_input_dtypes_are_cast():
    assert softmax(np.arange(4, dtype=np.int32)).dtype == np.float64
    y16 = softmax(np.arange(4, dtype=np.float16))
    np.testing.assert_allclose(y16, masked_softmax(np.arange(4.0)), rtol=1e-12)
    assert softmax(np.arange(4.0).astype(">f8")).dtype == np.float64


def test_input_not_modified(rng):
    x = rng.standard_normal((3, 4))
    x0 = x.copy()
    softmax(x, mask=rng.random((3, 4)) > 0.5)
    np.testing.assert_array_equal(x, x0)


def test_errors():
    with pytest.raises(TypeError, match="x must be a real-valued"):
        softmax(np.ones(3, dtype=complex))
    with pytest.raises(TypeError, match="mask must be a bool mask"):
        softmax(np.ones(3), mask=np.array(["a", "b", "c"]))
    with pytest.raises(TypeError, match="0/1 integer mask is ambiguous"):
        softmax(np.ones(3), mask=np.array([1, 0, 1]))
    with pytest.raises(TypeError, match="axis must be an int, got float"):
        softmax(np.ones((2, 3)), axis=1.0)
    with pytest.raises(ValueError, match=r"mask must broadcast to x's shape \(2, 3\), got \(4,\)"):
        softmax(np.ones((2, 3)), mask=np.ones(4, bool))
    with pytest.raises(ValueError, match="axis must be in"):
        softmax(np.ones((2, 3)), axis=2)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_rows_sum_to_one_or_zero(rows, cols, seed):
    r = np.random.default_rng(seed)
    x = r.standard_normal((rows, cols)) * r.uniform(0.1, 50)
    m = r.random((rows, cols)) > r.uniform(0, 1)
    y = softmax(x, mask=m)
    sums = y.sum(-1)
    has_any = m.any(-1)
    np.testing.assert_allclose(sums[has_any], 1.0, rtol=1e-12)
    np.testing.assert_array_equal(sums[~has_any], 0.0)
    assert np.all(y >= 0)


# ------------------------------------------------ NaN propagation (as torch) --
@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 33])
def test_nan_row_is_nan(dtype, n, rng):
    """A NaN among a row's allowed entries makes the row NaN (it used to be skipped
    by the max, and an all-NaN row came out as zeros)."""
    x = rng.standard_normal((4, n)).astype(dtype)
    x[0] = np.nan                                 # all NaN
    x[1, rng.integers(n)] = np.nan                # one NaN anywhere in the row
    y = softmax(x)
    assert np.isnan(y[:2]).all()
    np.testing.assert_allclose(y[2:], masked_softmax(x[2:]), **_tol(dtype))
    x[3] = -np.inf                                # still fully "masked": zeros
    assert (softmax(x)[3] == 0).all()


def test_nan_at_masked_position_is_ignored(dtype, rng):
    """A bool-masked entry never enters the row, so a NaN there is harmless."""
    x = rng.standard_normal((3, 9)).astype(dtype)
    m = rng.random((3, 9)) > 0.3
    m[:, 4] = False
    x[:, 4] = np.nan
    y = softmax(x, mask=m)
    assert not np.isnan(y).any()
    np.testing.assert_allclose(y, masked_softmax(np.where(m, x, 0), m), **_tol(dtype))
    m[1] = False
    assert (softmax(x, mask=m)[1] == 0).all()     # fully masked row with a NaN: 0
    # an additive -inf cannot hide it: NaN + -inf = NaN (torch does the same)
    fm = np.where(m, 0.0, -np.inf)
    fm[0] = 0
    fm[0, 4] = -np.inf
    assert np.isnan(softmax(x, mask=fm)[0]).all()


@pytest.mark.parametrize("shape, axis", [((3, 0), -1), ((0,), 0), ((0, 4), -1), ((3, 0), 0),
                                         ((2, 0, 5), 1)])
def test_empty_axes(dtype, shape, axis):
    """An empty array (or an empty softmax axis) gives an empty result, not a crash."""
    x = np.zeros(shape, dtype)
    y = softmax(x, axis=axis)
    assert y.shape == shape and y.dtype == dtype
    assert softmax(x, axis=axis, mask=np.ones(shape, bool)).shape == shape
    assert softmax(x, axis=axis, mask=np.zeros(shape)).shape == shape


@pytest.mark.parametrize("n", [1, 8, 9, 17, 64])
def test_nan_detection_all_payloads_and_positions(dtype, n, rng):
    """vmax's NaN check reads bit patterns: every NaN (sign, quiet or signalling,
    smallest payload) at every position is caught, and +-inf are not NaN."""
    itype = np.int32 if dtype == np.float32 else np.int64
    nans = [np.nan, -np.nan]
    for bits in ((0x7f800001, 0x7fc00000, -0x007fffff) if dtype == np.float32 else
                 (0x7ff0000000000001, 0x7ff8000000000000, -0x000fffffffffffff)):
        nans.append(np.array(bits, itype).view(dtype)[()])
    for val in nans:
        assert np.isnan(val)
        for pos in {0, n - 1, int(rng.integers(n))}:
            x = rng.standard_normal((2, n)).astype(dtype)
            x[0, pos] = val
            if n > 2:
                x[:, (pos + 1) % n] = -np.inf
            y = softmax(x)
            assert np.isnan(y[0]).all(), (val, pos)
            assert not np.isnan(y[1]).any()
    x = np.full((1, n), -np.inf, dtype)             # -inf is not NaN: a fully masked row
    assert (softmax(x) == 0).all()


def test_an_infinite_score_makes_the_row_nan_as_in_torch():
    """torch.softmax([inf, 1, 2]) is [nan, nan, nan] (exp(inf - inf) is NaN and the
    sum is NaN): the same here, and other rows are untouched."""
    out = softmax(np.array([[np.inf, 1.0, 2.0], [0.0, 1.0, 2.0]]))
    assert np.isnan(out[0]).all()
    np.testing.assert_allclose(out[1].sum(), 1.0)


def test_softmax_kernel_entry_validates_before_nogil():
    """``_softmax.softmax_forward`` checks its mask description before ``nogil``."""
    from nn_core._kernels import _softmax as ks

    x, out = np.zeros((2, 3, 4)), np.empty((2, 3, 4))
    ok = (np.ones(12, np.uint8), np.zeros(2, np.intp), 4, 1)
    ks.softmax_forward(x, out, 1.0, mask=ok, causal_offset=0)       # well-formed: runs
    np.testing.assert_allclose(out[:, 0], [[1, 0, 0, 0]] * 2)
    bad = {
        "reaches outside": (np.ones(11, np.uint8), np.zeros(2, np.intp), 4, 1),
        "mask offsets": (np.ones(12, np.uint8), np.zeros(1, np.intp), 4, 1),
        "non-negative": (np.ones(12, np.uint8), np.zeros(2, np.intp), 4, -1),
        "dtype mismatch": (np.ones(12, np.float32), np.zeros(2, np.intp), 4, 1),
    }
    for match, mask in bad.items():
        with pytest.raises(ValueError, match=match):
            ks.softmax_forward(x, out, 1.0, mask=mask)
    with pytest.raises(ValueError, match="out must have shape"):
        ks.softmax_forward(x, np.empty((2, 3, 5)), 1.0)
    ks.softmax_forward(np.zeros((0, 3, 4)), np.empty((0, 3, 4)), 1.0, mask=bad["mask offsets"])

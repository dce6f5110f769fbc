"""Mask creators against explicit double loops, plus hypothesis properties."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nn_core.attention import (
    apply_causal_mask,
    create_causal_mask,
    create_causal_padding_mask,
    create_local_attention_mask,
    create_padding_mask,
    create_sliding_window_mask,
)


def loops(L, rule):
    m = np.zeros((L, L), dtype=bool)
    for i in range(L):
        for j in range(L):
            m[i, j] = rule(i, j)
    return m


@pytest.mark.parametrize("L", [1, 2, 7])
def test_causal(L):
    m = create_causal_mask(L)
    assert m.dtype == np.bool_ and m.shape == (L, L)
    np.testing.assert_array_equal(m, loops(L, lambda i, j: j <= i))


@pytest.mark.parametrize("L,w", [(6, 1), (6, 3), (9, 4), (5, 10)])
def test_sliding_window(L, w):
    np.testing.assert_array_equal(create_sliding_window_mask(L, w),
                                  loops(L, lambda i, j: 0 <= i - j < w))
    np.testing.assert_array_equal(create_sliding_window_mask(L, w, causal=False),
                                  loops(L, lambda i, j: abs(i - j) <= w // 2))


def test_local_attention_with_globals():
    L, w, g = 8, 3, (0, 5)
    expected = loops(L, lambda i, j: abs(i - j) <= w // 2 or i in g or j in g)
    np.testing.assert_array_equal(create_local_attention_mask(L, w, g), expected)


def test_padding_masks(rng):
    lengths = rng.integers(0, 7, size=4)
    L = 6
    pm = create_padding_mask(lengths, L)
    assert pm.shape == (4, 1, 1, L)
    for b in range(4):
        for j in range(L):
            assert pm[b, 0, 0, j] == (j < lengths[b])
    cpm = create_causal_padding_mask(lengths, L)
    assert cpm.shape == (4, 1, L, L)
    np.testing.assert_array_equal(cpm, create_causal_mask(L) & pm)
    assert create_padding_mask([2, 3]).shape == (2, 1, 1, 3)       # max_len defaults to max


@pytest.mark.parametrize("fdtype", [np.float32, np.float64])
def test_float_form(fdtype):
    m = create_sliding_window_mask(5, 2, dtype=fdtype)
    b = create_sliding_window_mask(5, 2)
    assert m.dtype == fdtype
    np.testing.assert_array_equal(m[b], 0)
    assert np.all(np.isneginf(m[~b]))
    f = create_padding_mask([1, 3], 3, dtype=fdtype)
    assert np.isneginf(f[0, 0, 0, 1]) and f[1, 0, 0, 2] == 0


def test_apply_causal_mask(rng):
    s = rng.standard_normal((2, 3, 5))
    out = apply_causal_mask(s)
    keep = np.tri(3, 5, k=2, dtype=bool)                # bottom-right aligned
    np.testing.assert_array_equal(out[:, keep], s[:, keep])
    assert np.all(np.isneginf(out[:, ~keep]))
    custom = rng.random((3, 5)) > 0.5
    out = apply_causal_mask(s, custom, fill_value=-1e9)
    np.testing.assert_array_equal(out, np.where(custom, s, -1e9))
    assert s.dtype == np.float64 and not np.any(np.isneginf(s))   # input untouched


def test_errors():
    with pytest.raises(ValueError, match="seq_len must be >= 0, got -1"):
        create_causal_mask(-1)
    with pytest.raises(ValueError, match="window_size must be >= 1, got 0"):
        create_sliding_window_mask(4, 0)
    with pytest.raises(ValueError, match=r"lengths must satisfy 0 <= lengths\[b\] <= max_len=3, got 5"):
        create_padding_mask([1, 5], 3)
    with pytest.raises(ValueError, match=r"global_tokens must be indices in \[0, 4\), got 4"):
        create_local_attention_mask(4, 2, [4])
    with pytest.raises(TypeError, match="lengths must be an integer array"):
        create_padding_mask([1.5, 2.0])
    with pytest.raises(ValueError, match="mask must broadcast"):
        apply_causal_mask(np.ones((3, 3)), np.ones((4, 3), bool))
    with pytest.raises(TypeError, match="dtype must be bool or a float dtype"):
        create_causal_mask(3, dtype=np.int32)


@settings(max_examples=50, deadline=None)
@given(L=st.integers(0, 30), extra=st.integers(0, 10))
def test_window_at_least_length_is_causal(L, extra):
    np.testing.assert_array_equal(create_sliding_window_mask(L, max(L, 1) + extra),
                                  create_causal_mask(L))


@settings(max_examples=50, deadline=None)
@given(L=st.integers(1, 25), w=st.integers(1, 30))
def test_window_properties(L, w):
    causal = create_sliding_window_mask(L, w)
    sym = create_sliding_window_mask(L, w, causal=False)
    np.testing.assert_array_equal(sym, sym.T)
    assert np.all(np.diag(causal)) and np.all(np.diag(sym))
    assert np.all(causal.sum(1) == np.minimum(np.arange(L) + 1, w))
    np.testing.assert_array_equal(causal & ~create_causal_mask(L), False)


def test_padding_masks_of_an_empty_batch():
    """An empty lengths list is B = 0 (it used to raise a TypeError about float64)."""
    assert create_padding_mask([]).shape == (0, 1, 1, 0)
    assert create_padding_mask([], 4).shape == (0, 1, 1, 4)
    assert create_padding_mask((), 3, dtype=np.float32).shape == (0, 1, 1, 3)
    assert create_causal_padding_mask([]).shape == (0, 1, 0, 0)
    assert create_causal_padding_mask([], 2).shape == (0, 1, 2, 2)
    with pytest.raises(TypeError, match="integer"):
        create_padding_mask([1.0, 2.0])


def test_huge_unsigned_lengths_are_reported_as_given():
    big = np.array([2, 2**64 - 1], dtype=np.uint64)
    with pytest.raises(ValueError, match=str(2**64 - 1)):
        create_padding_mask(big, 5)
    with pytest.raises(ValueError, match=str(2**63 + 1)):
        create_causal_padding_mask(np.array([2**63 + 1], dtype=np.uint64), 5)
    np.testing.assert_array_equal(create_padding_mask(np.array([1, 3], np.uint64), 3),
                                  create_padding_mask([1, 3], 3))


@pytest.mark.parametrize("tokens", [(1.0,), (True,), [0, False], np.array([True]),
                                    np.array([1.5]), np.array([2.0])])
def test_global_tokens_must_be_integers(tokens):
    with pytest.raises(TypeError, match="global_tokens must be integer"):
        create_local_attention_mask(5, 3, global_tokens=tokens)


def test_global_tokens_integer_forms():
    ref = create_local_attention_mask(6, 1, global_tokens=[1, 4])
    for g in ((1, 4), np.array([1, 4], np.uint8), np.array([4, 1], np.int32), [np.int64(1), 4]):
        np.testing.assert_array_equal(create_local_attention_mask(6, 1, global_tokens=g), ref)
    np.testing.assert_array_equal(create_local_attention_mask(6, 1, global_tokens=[]),
                                  create_local_attention_mask(6, 1))
    with pytest.raises(ValueError, match=str(2**64 - 1)):
        create_local_attention_mask(6, 1, global_tokens=np.array([2**64 - 1], np.uint64))


@pytest.mark.parametrize("call", [
    lambda: create_padding_mask([2 ** 63 - 1]),
    lambda: create_padding_mask([3], 2 ** 63 - 1),
    lambda: create_causal_padding_mask([2 ** 63 - 1]),
    lambda: create_causal_mask(2 ** 63 - 1),
    lambda: create_sliding_window_mask(2 ** 40, 3),
    lambda: create_local_attention_mask(2 ** 40, 3),
])
def test_masks_too_large_to_exist_raise_instead_of_coming_back_empty(call):
    with pytest.raises(ValueError, match="the mask would have shape"):
        call()


def test_contract_path_holds_every_creator():
    """``nn_core.attention.causal_mask`` (the public path) re-exports every creator of
    ``nn_core.attention.masks``."""
    from nn_core.attention import causal_mask, masks
    assert causal_mask.__all__ == masks.__all__
    for name in masks.__all__:
        assert getattr(causal_mask, name) is getattr(masks, name)

import numpy as np
import pytest
from _attention_reference import randomize

from nn_core.attention import (
    GroupedQueryAttention,
    KVCache,
    MultiHeadAttention,
    MultiQueryAttention,
)

MODULES = {
    "mha": lambda dt, r: MultiHeadAttention(16, 4, dtype=dt, rng=r),
    "gqa": lambda dt, r: GroupedQueryAttention(16, 4, 2, dtype=dt, rng=r),
    "mqa": lambda dt, r: MultiQueryAttention(16, 4, dtype=dt, rng=r),
}


def tol(dtype):
    return dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("kind", list(MODULES))
def test_token_by_token_equals_full_causal(rng, dtype, kind):
    m = randomize(MODULES[kind](dtype, 0), rng)
    B, T = 3, 7
    x = rng.standard_normal((B, T, 16))
    full = m(x, is_causal=True)
    cache = m.new_kv_cache(B, T)
    steps = [m(x[:, t:t + 1], kv_cache=cache) for t in range(T)]
    assert cache.length == T
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, **tol(dtype))


@pytest.mark.parametrize("kind", list(MODULES))
def test_chunked_prefill_then_decode(rng, kind):
    m = randomize(MODULES[kind](np.float64, 0), rng)
    B, T = 2, 9
    x = rng.standard_normal((B, T, 16))
    full, w_full = m(x, is_causal=True, return_weights=True)
    cache = m.new_kv_cache(B, 16)
    outs = [m(x[:, :4], kv_cache=cache), m(x[:, 4:6], kv_cache=cache)]
    for t in range(6, T):
        y, w = m(x[:, t:t + 1], kv_cache=cache, return_weights=True)
        assert w.shape == (B, 4, 1, t + 1)
        np.testing.assert_allclose(w[:, :, 0], w_full[:, :, t, :t + 1], rtol=1e-10, atol=1e-12)
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=1e-10, atol=1e-11)
    # keys/values views hold what was appended
    assert cache.keys.shape == (B, m.num_kv_groups, T, 4)
    K = (x @ m.params["W_k"] + m.params["b_k"]).reshape(B, T, m.num_kv_groups, 4)
    np.testing.assert_allclose(cache.keys, K.transpose(0, 2, 1, 3), rtol=1e-12)


def test_cache_with_padding_mask(rng):
    m = randomize(MODULES["gqa"](np.float64, 0), rng)
    B, T = 2, 6
    x = rng.standard_normal((B, T, 16))
    keep = np.ones((B, 1, 1, T), bool)
    keep[1, ..., 1] = False                       # batch 1 never attends to position 1
    full = m(x, mask=keep, is_causal=True)
    cache = m.new_kv_cache(B, T)
    steps = [m(x[:, t:t + 1], mask=keep[..., :t + 1], kv_cache=cache) for t in range(T)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-11)


def test_cache_object_and_sizes():
    m = MultiHeadAttention(512, 8, rng=0)
    c = m.new_kv_cache(2, 100)
    assert isinstance(c, KVCache)
    assert (c.length, c.max_len) == (0, 100)
    assert c.nbytes == m.get_kv_cache_size(2, 100) == 2 * 2 * 100 * 512 * 4
    g = GroupedQueryAttention(512, 8, 2, dtype=np.float64, rng=0)
    assert g.new_kv_cache(2, 100).nbytes == g.get_kv_cache_size(2, 100) == 2 * 2 * 100 * 128 * 8
    assert m.get_kv_cache_size(1, 10, num_layers=4) == 4 * m.get_kv_cache_size(1, 10)
    for bad, exc in [((0, 10), ValueError), ((1, -1), ValueError), ((1.5, 10), TypeError)]:
        with pytest.raises(exc):
            m.get_kv_cache_stats(*bad)
    with pytest.raises(ValueError, match="max_len"):
        m.new_kv_cache(1, 0)


def test_overflow_reset_and_errors(rng):
    m = randomize(MODULES["mqa"](np.float64, 0), rng)
    x = rng.standard_normal((1, 5, 16))
    cache = m.new_kv_cache(1, 4)
    m(x[:, :3], kv_cache=cache)
    with pytest.raises(RuntimeError, match="overflow"):
        m(x[:, 3:5], kv_cache=cache)
    assert cache.length == 3                       # nothing written by the failed call
    y = m(x[:, 3:4], kv_cache=cache)
    np.testing.assert_allclose(y, m(x[:, :4], is_causal=True)[:, 3:], rtol=1e-10)
    with pytest.raises(RuntimeError, match="overflow"):
        m(x[:, 4:5], kv_cache=cache)
    cache.reset()
    assert cache.length == 0
    np.testing.assert_allclose(m(x[:, :1], kv_cache=cache), m(x[:, :1]), rtol=1e-10)
    with pytest.raises(ValueError, match="kv_cache does not fit"):
        m(rng.standard_normal((2, 1, 16)), kv_cache=cache)
    with pytest.raises(ValueError, match="kv_cache does not fit"):
        m(x[:, :1], kv_cache=MODULES["mha"](np.float64, 0).new_kv_cache(1, 4))
    with pytest.raises(TypeError, match="kv_cache must be a KVCache"):
        m(x[:, :1], kv_cache=np.zeros(3))


def test_backward_after_cached_forward_raises(rng):
    m = MODULES["mha"](np.float32, 0)
    cache = m.new_kv_cache(1, 4)
    y = m(rng.standard_normal((1, 1, 16)), kv_cache=cache)
    with pytest.raises(RuntimeError, match="kv_cache"):
        m.backward(np.ones_like(y))
    with pytest.raises(RuntimeError):
        m.backward(np.ones_like(y))
    x = rng.standard_normal((1, 2, 16))            # a normal forward works again afterwards
    m.backward(np.ones_like(m(x)))


@pytest.mark.parametrize("kind", list(MODULES))
def test_decode_step_per_head_float_mask(rng, kind):
    """Per-head additive masks [B, h, 1, T] in the single-token decode path."""
    m = randomize(MODULES[kind](np.float64, 0), rng)
    B, T = 2, 5
    x = rng.standard_normal((B, T, 16))
    fmask = np.where(rng.random((B, 4, T, T)) < 0.7, 0.0, -np.inf) + rng.standard_normal((B, 4, T, T))
    fmask[..., 0] = 0.0
    full = m(x, mask=fmask, is_causal=True)
    cache = m.new_kv_cache(B, T)
    steps = [m(x[:, t:t + 1], mask=fmask[:, :, t:t + 1, :t + 1], kv_cache=cache)
             for t in range(T)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("kind", list(MODULES))
def test_failed_cached_forward_leaves_cache_untouched(rng, kind):
    """Every check runs before the append: a rejected call writes nothing."""
    m = randomize(MODULES[kind](np.float64, 0), rng).eval()
    x = rng.standard_normal((2, 5, 16))
    cache = m.new_kv_cache(2, 10)
    m(x[:, :2], kv_cache=cache)
    keys = cache.keys.copy()
    bad = [
        (ValueError, dict(mask=np.ones((3, 3), bool))),        # must be [.., 3, 2 + 3]
        (ValueError, dict(mask=np.zeros((7, 7)))),
        (TypeError, dict(mask=np.ones((3, 5), complex))),
    ]
    for exc, kw in bad:
        with pytest.raises(exc, match="mask"):
            m(x[:, 2:5], kv_cache=cache, **kw)
        assert cache.length == 2
        np.testing.assert_array_equal(cache.keys, keys)
    with pytest.raises(ValueError):
        m(x[:1, 2:5], kv_cache=cache)                            # wrong batch
    assert cache.length == 2
    # the corrected retry continues exactly as if nothing had happened
    y = m(x[:, 2:5], kv_cache=cache, mask=np.ones((3, 5), bool))
    assert cache.length == 5
    np.testing.assert_allclose(y, m(x, is_causal=True)[:, 2:5], rtol=1e-10, atol=1e-11)


def test_failed_cached_forward_review_repro():
    m = MultiHeadAttention(8, 2).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 8))
    kv = m.new_kv_cache(1, 10)
    with pytest.raises(ValueError, match="mask"):
        m(x, kv_cache=kv, mask=np.ones((7, 7), bool))
    assert kv.length == 0


@pytest.mark.parametrize("kind", list(MODULES))
def test_backward_bad_grad_output_keeps_cache_for_retry(rng, kind):
    """(Not kv_cache specific: the multi-head backward validates grad_output before
    consuming the forward cache, so a corrected retry works.)"""
    m = randomize(MODULES[kind](np.float64, 0), rng)
    x = rng.standard_normal((2, 3, 16))
    y = m(x)
    g = rng.standard_normal(y.shape)
    with pytest.raises(ValueError, match="grad_output"):
        m.backward(g[:, :2])
    with pytest.raises(TypeError, match="grad_output"):
        m.backward(g.astype(complex))
    gx = m.backward(g)[0]
    assert gx.shape == x.shape
    with pytest.raises(RuntimeError):
        m.backward(g)


def test_append_and_check_room_are_the_caches_own_api(rng):
    """``append`` writes by slice at ``length`` and returns the filled views;
    ``check_room`` refuses before any write."""
    cache = GroupedQueryAttention(16, 4, 2, dtype=np.float64, rng=0).new_kv_cache(2, 5)
    assert cache.num_kv_groups == 2
    k1, v1 = (rng.standard_normal((2, 2, 3, 4)) for _ in range(2))
    keys, values = cache.append(k1, v1)
    assert cache.length == 3 and keys.shape == (2, 2, 3, 4)
    np.testing.assert_array_equal(keys, k1)
    np.testing.assert_array_equal(values, v1)
    cache.check_room(2)
    with pytest.raises(RuntimeError, match="kv_cache overflow"):
        cache.append(k1, v1)
    assert cache.length == 3
    np.testing.assert_array_equal(cache.keys, k1)

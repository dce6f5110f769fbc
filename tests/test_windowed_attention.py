"""Windowed and local attention (``window=`` / ``global_tokens=``) without a dense mask.

Oracle: the same attention with the dense ``[L_q, L_k]`` mask of the existing creators
(``create_sliding_window_mask``, ``create_local_attention_mask``), and torch's SDPA with
that mask.  Small tiles (``tiles`` fixture) make windows narrower than, equal to and
wider than a tile, remainder tiles and global rows/columns crossing tiles.
"""
import tracemalloc

import numpy as np
import pytest

import nn_core
import nn_core.attention._sdpa_kernels as sdp
from nn_core.attention import (GroupedQueryAttention, MultiHeadAttention,
                               ScaledDotProductAttention, create_local_attention_mask,
                               create_sliding_window_mask)
from nn_core.attention.masks import band_mask
from nn_core.transformer import TransformerDecoderLayer, TransformerEncoderLayer

from simd_levels import at_level

TILES = [(8, 16), (5, 7), (64, 128)]


@pytest.fixture(params=TILES, ids=[f"{a}x{b}" for a, b in TILES])
def tiles(request, monkeypatch):
    """Tile sizes of the tiled kernel, with and without a window."""
    bq, bk = request.param
    for name, val in (("FLASH_BLOCK_Q", bq), ("FLASH_BLOCK_K", bk), ("WINDOW_BLOCK_Q", bq),
                      ("WINDOW_BLOCK_K", bk)):
        monkeypatch.setattr(sdp, name, val)
    return request.param


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)


def _inputs(rng, lead, L_q, L_k, d=8, d_v=5, dtype=np.float64):
    q = rng.standard_normal(lead + (L_q, d)).astype(dtype)
    k = rng.standard_normal(lead + (L_k, d)).astype(dtype)
    v = rng.standard_normal(lead + (L_k, d_v)).astype(dtype)
    g = rng.standard_normal(lead + (L_q, d_v)).astype(dtype)
    return q, k, v, g


def _fb(dtype, q, k, v, g, windowed=None, **kw):
    """Output and gradients; ``windowed``: assert which kernel ran."""
    m = ScaledDotProductAttention(dtype=dtype)
    out = m(q, k, v, **kw)
    if windowed is not None:
        assert (m._peek_cache().flash is not None) == windowed
    return (out,) + m.backward(g)


def _close(got, want, dtype, what=""):
    for name, a, b in zip(("out", "grad_q", "grad_k", "grad_v"), got, want):
        np.testing.assert_allclose(a, b, **_tol(dtype), err_msg=f"{name} {what}")


# ----------------------------------------------------------------- parity --
@pytest.mark.parametrize("w", [3, 8, 16, 40], ids=lambda w: f"w{w}")
def test_causal_window_equals_sliding_window_mask(tiles, dtype, rng, w):
    L = 53
    q, k, v, g = _inputs(rng, (2, 3), L, L, dtype=dtype)
    got = _fb(dtype, q, k, v, g, windowed=True, window=w)
    want = _fb(dtype, q, k, v, g, mask=create_sliding_window_mask(L, w))
    _close(got, want, dtype, f"w={w}")


@pytest.mark.parametrize("w", [4, 16, 33], ids=lambda w: f"w{w}")
def test_two_sided_window_equals_non_causal_creator(tiles, dtype, rng, w):
    L = 47
    q, k, v, g = _inputs(rng, (2,), L, L, dtype=dtype)
    got = _fb(dtype, q, k, v, g, window=(w // 2, w // 2))
    want = _fb(dtype, q, k, v, g, mask=create_sliding_window_mask(L, w, causal=False))
    _close(got, want, dtype, f"w={w}")


@pytest.mark.parametrize("glob", [(0,), (0, 1, 2, 30), (5, 44, 45)], ids=str)
@pytest.mark.parametrize("w", [4, 16, 40], ids=lambda w: f"w{w}")
def test_local_attention_equals_local_mask(tiles, dtype, rng, w, glob):
    L = 46
    q, k, v, g = _inputs(rng, (1, 2), L, L, dtype=dtype)
    got = _fb(dtype, q, k, v, g, window=(w // 2, w // 2), global_tokens=glob)
    want = _fb(dtype, q, k, v, g, mask=create_local_attention_mask(L, w, glob))
    _close(got, want, dtype, f"w={w} glob={glob}")


def test_asymmetric_window(tiles, rng):
    L = 40
    q, k, v, g = _inputs(rng, (3,), L, L)
    i, j = np.arange(L)[:, None], np.arange(L)[None, :]
    dense = (j >= i - 2) & (j <= i + 11)
    _close(_fb(np.float64, q, k, v, g, window=(2, 11)),
           _fb(np.float64, q, k, v, g, mask=dense), np.float64)


@pytest.mark.parametrize("L_q,L_k", [(13, 50), (50, 21), (1, 30), (30, 1)])
@pytest.mark.parametrize("window,glob", [(6, ()), ((3, 4), ()), ((2, 2), (0, 7))],
                         ids=["causal", "two-sided", "local"])
def test_unequal_lengths_align_bottom_right(tiles, dtype, rng, L_q, L_k, window, glob):
    """Query ``i`` stands at key position ``i + L_k - L_q``: for ``L_q < L_k`` the
    window is the last ``L_q`` rows of the creators' ``[L_k, L_k]`` mask."""
    glob = tuple(t for t in glob if t < L_k)
    q, k, v, g = _inputs(rng, (2,), L_q, L_k, dtype=dtype)
    left, right = (window - 1, 0) if isinstance(window, int) else window
    gq = np.isin(np.arange(L_q) + L_k - L_q, glob)
    dense = band_mask(L_q, L_k, left, right, gq, np.isin(np.arange(L_k), glob))
    if L_q <= L_k and (left == right or isinstance(window, int)):
        if isinstance(window, int):
            full = create_sliding_window_mask(L_k, window)
        else:
            full = create_local_attention_mask(L_k, 2 * left, glob)
        np.testing.assert_array_equal(dense, full[L_k - L_q:])
    got = _fb(dtype, q, k, v, g, window=window, global_tokens=glob)
    want = _fb(dtype, q, k, v, g, mask=dense)
    _close(got, want, dtype)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_window_ands_with_mask_and_is_causal(tiles, rng, kind):
    L_q, L_k = 31, 37
    q, k, v, g = _inputs(rng, (2, 2), L_q, L_k)
    keep = rng.random((2, 1, L_q, L_k)) > 0.3
    mask = keep if kind == "bool" else np.where(keep, rng.standard_normal(keep.shape), -np.inf)
    i = np.arange(L_q)[:, None] + L_k - L_q
    j = np.arange(L_k)[None, :]
    band = (j >= i - 4) & (j <= i + 9) & (j <= i)
    dense = keep & band if kind == "bool" else np.where(band, mask, -np.inf)
    got = _fb(np.float64, q, k, v, g, mask=mask, is_causal=True, window=(4, 9))
    want = _fb(np.float64, q, k, v, g, mask=dense)
    _close(got, want, np.float64)


def test_fully_masked_rows_give_zero_output_and_gradient(tiles, dtype, rng):
    """Rows whose window holds no allowed key: output 0, gradient 0, never NaN."""
    L_q, L_k = 30, 20                 # causal: the first 10 query rows see no key
    q, k, v, g = _inputs(rng, (2,), L_q, L_k, dtype=dtype)
    mask = np.ones((L_q, L_k), bool)
    mask[25] = False                  # and one row masked by the mask
    got = _fb(dtype, q, k, v, g, mask=mask, is_causal=True, window=3)
    for a in got[:2]:
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a[:, :10], 0)
        np.testing.assert_array_equal(a[:, 25], 0)
    want = _fb(dtype, q, k, v, g, mask=mask & band_mask(L_q, L_k, 2, 0), is_causal=True)
    _close(got, want, dtype)


@pytest.mark.parametrize("window,glob", [(5, ()), ((4, 4), ()), ((3, 3), (0, 20))],
                         ids=["causal", "two-sided", "local"])
def test_matches_torch(dtype, rng, window, glob):
    torch = pytest.importorskip("torch")
    L = 300                            # long enough for the default tiles to matter
    q, k, v, g = _inputs(rng, (2, 3), L, L, d=16, d_v=16, dtype=dtype)
    if isinstance(window, int):
        dense = create_sliding_window_mask(L, window)
    elif glob:
        dense = create_local_attention_mask(L, 2 * window[0], glob)
    else:
        dense = create_sliding_window_mask(L, 2 * window[0], causal=False)
    got = _fb(dtype, q, k, v, g, windowed=True, window=window, global_tokens=glob)
    tq, tk, tv = (torch.from_numpy(a).requires_grad_(True) for a in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv,
                                                           attn_mask=torch.from_numpy(dense))
    out.backward(torch.from_numpy(g))
    want = (out.detach().numpy(), tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy())
    _close(got, want, dtype, "vs torch")


def test_return_weights_is_the_dense_band(rng):
    L = 19
    q, k, v, _ = _inputs(rng, (2,), L, L)
    m = ScaledDotProductAttention(dtype=np.float64)
    out, w = m(q, k, v, window=(2, 1), global_tokens=[4], return_weights=True)
    out2, w2 = m(q, k, v, mask=band_mask(L, L, 2, 1, np.isin(np.arange(L), [4]),
                                       np.isin(np.arange(L), [4])), return_weights=True)
    np.testing.assert_allclose(out, out2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(w, w2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window,glob", [(4, ()), ((2, 3), (1, 9))], ids=["causal", "local"])
def test_gradcheck(tiles, window, glob, rng):
    q, k, v, _ = _inputs(rng, (2,), 11, 13, d=3, d_v=2)

    class Windowed(ScaledDotProductAttention):
        def forward(self, q, k, v):
            return super().forward(q, k, v, window=window, global_tokens=glob)

    rep = nn_core.gradcheck(Windowed(dtype=np.float64), (q, k, v))
    assert rep.ok, str(rep)


@pytest.mark.parametrize("window,glob", [(6, ()), ((3, 5), (2,))], ids=["causal", "local"])
def test_dropout_equals_dense_mask_with_same_counter_mask(tiles, monkeypatch, rng, window,
                                                          glob):
    """The counter-based dropout mask depends on (slab, row, key) only: the windowed
    kernel and the tiled kernel with the dense mask drop the same weights."""
    monkeypatch.setattr(sdp, "FLASH_MIN_SCORES", 0)
    monkeypatch.setattr(sdp, "FLASH_MIN_ROWS", 0)
    L = 41
    q, k, v, g = _inputs(rng, (2, 2), L, L)
    left, right = (window - 1, 0) if isinstance(window, int) else window
    flags = np.isin(np.arange(L), glob)
    dense = band_mask(L, L, left, right, flags, flags)

    def go(**kw):
        m = ScaledDotProductAttention(dropout=0.3, dtype=np.float64, rng=7)
        out = m(q, k, v, **kw)
        assert m._peek_cache().flash is not None
        return (out,) + m.backward(g)

    got = go(window=window, global_tokens=glob)
    want = go(mask=dense)
    _close(got, want, np.float64)
    eval_out = ScaledDotProductAttention(dtype=np.float64)(q, k, v, mask=dense)
    assert not np.allclose(got[0], eval_out)            # dropout did act


@pytest.mark.parametrize("level", [0, 1, 2], ids=["baseline", "avx2", "avx512"])
def test_every_simd_level(monkeypatch, rng, level):
    with at_level(level):
        monkeypatch.setattr(sdp, "WINDOW_BLOCK_Q", 8)
        monkeypatch.setattr(sdp, "WINDOW_BLOCK_K", 19)
        q, k, v, g = _inputs(rng, (2,), 45, 45)
        flags = np.isin(np.arange(45), [10])
        for dtype in (np.float32, np.float64):
            a = [x.astype(dtype) for x in (q, k, v, g)]
            _close(_fb(dtype, *a, window=(3, 6), global_tokens=[10]),
                   _fb(dtype, *a, mask=band_mask(45, 45, 3, 6, flags, flags)), dtype,
                   f"level {level}")


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_thread_count_does_not_change_bits(tiles, monkeypatch, rng, workers):
    q, k, v, g = _inputs(rng, (2, 3), 29, 33)

    def go():
        m = ScaledDotProductAttention(dropout=0.2, dtype=np.float64, rng=3)
        out = m(q, k, v, window=(5, 2), global_tokens=[0, 17], is_causal=True)
        return (out,) + m.backward(g)

    monkeypatch.setattr(sdp, "MAX_WORKERS", 1)
    want = go()
    monkeypatch.setattr(sdp, "MAX_WORKERS", workers)
    monkeypatch.setattr(sdp, "MIN_WORK_PER_THREAD", 1)
    for a, b in zip(go(), want):
        np.testing.assert_array_equal(a, b, err_msg=f"workers={workers}")


def test_no_dense_mask_is_built(rng):
    """At L = 8192 a dense bool mask alone is 64 MiB: the windowed call stays far
    below (inputs of 1 MiB each)."""
    L = 8192
    q, k, v, g = _inputs(rng, (1,), L, L, d=16, d_v=16, dtype=np.float32)
    m = ScaledDotProductAttention(dtype=np.float32)
    tracemalloc.start()
    try:
        m(q, k, v, window=64, global_tokens=[0])
        m.backward(g)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


# ---------------------------------------------------------------- modules --
@pytest.mark.parametrize("make", [lambda: MultiHeadAttention(24, 4, dtype=np.float64, rng=0),
                                  lambda: GroupedQueryAttention(24, 4, 2, dtype=np.float64,
                                                                rng=0)],
                         ids=["mha", "gqa"])
def test_modules_pass_window_through(make, rng):
    L = 21
    x = rng.standard_normal((2, L, 24))
    g = rng.standard_normal((2, L, 24))
    for window, glob, dense in [(5, (), create_sliding_window_mask(L, 5)),
                                ((2, 2), (3,), create_local_attention_mask(L, 4, [3]))]:
        a, b = make(), make()
        ya = a(x, window=window, global_tokens=glob)
        ga = a.backward(g)[0]
        yb = b(x, mask=dense)
        gb = b.backward(g)[0]
        np.testing.assert_allclose(ya, yb, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ga, gb, rtol=1e-10, atol=1e-12)
        for name in a.grads:
            np.testing.assert_allclose(a.grads[name], b.grads[name], rtol=1e-10, atol=1e-12)


def test_single_query_with_window(rng):
    """L = 1 (the folded decoding layout) keeps the window's keys only."""
    mha = MultiHeadAttention(16, 2, dtype=np.float64, rng=0)
    x, ctx = rng.standard_normal((2, 1, 16)), rng.standard_normal((2, 9, 16))
    dense = band_mask(1, 9, 2, 0)
    np.testing.assert_allclose(mha(x, ctx, window=3), mha(x, ctx, mask=dense),
                               rtol=1e-12, atol=1e-12)


def test_transformer_blocks_pass_window_through(rng):
    L = 17
    x = rng.standard_normal((2, L, 16))
    enc = TransformerEncoderLayer(16, 2, 32, dropout=0.0, dtype=np.float64, rng=0)
    np.testing.assert_allclose(enc(x, window=(3, 3), global_tokens=[0]),
                               enc(x, mask=create_local_attention_mask(L, 6, [0])),
                               rtol=1e-10, atol=1e-12)
    dec = TransformerDecoderLayer(16, 2, 32, dropout=0.0, cross_attention=False,
                                  dtype=np.float64, rng=0)
    np.testing.assert_allclose(dec(x, window=4), dec(x, mask=create_sliding_window_mask(L, 4)),
                               rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------- KV cache --
@pytest.mark.parametrize("chunks", [[1] * 30, [4, 1, 9, 1, 1, 14]], ids=["steps", "chunks"])
def test_ring_cache_decoding_equals_full_window(rng, chunks):
    w = 6
    dec = TransformerDecoderLayer(16, 4, 32, dropout=0.0, cross_attention=False,
                                  num_kv_groups=2, dtype=np.float64, rng=0)
    dec.eval()
    T = sum(chunks)
    x = rng.standard_normal((2, T, 16))
    full = dec(x, window=w)
    cache = dec.self_attn.new_kv_cache(2, T, window=w)
    outs, t = [], 0
    for n in chunks:
        outs.append(dec(x[:, t:t + n], kv_cache=cache))
        t += n
        assert cache.held == min(t, w)
        assert cache.keys.shape[2] == min(t, w)
    np.testing.assert_allclose(np.concatenate(outs, 1), full, rtol=1e-10, atol=1e-12)
    assert cache.length == T and cache.capacity == w
    assert cache.nbytes == dec.self_attn.get_kv_cache_size(2, T, window=w)
    stats = dec.self_attn.get_kv_cache_stats(2, 4096, window=256)
    assert stats["positions"] == 256
    assert stats["bytes"] == 2 * 2 * 256 * 2 * 4 * 8


def test_ring_cache_keeps_the_last_positions_in_order(rng):
    mha = MultiHeadAttention(8, 2, dtype=np.float64, rng=0)
    cache = mha.new_kv_cache(1, 50, window=4)
    ks = []
    for t in range(11):
        x = rng.standard_normal((1, 1, 8))
        mha(x, kv_cache=cache)
        ks.append((x.reshape(1, 8) @ mha.params["W_k"] + mha.params["b_k"]).reshape(1, 2, 4))
    want = np.stack(ks[-4:], axis=2)                             # (B, g, 4, d_k)
    np.testing.assert_allclose(cache.keys, want, rtol=1e-12, atol=1e-12)


def test_full_cache_with_window_equals_ring(rng):
    mha = MultiHeadAttention(8, 2, dtype=np.float64, rng=0)
    x = rng.standard_normal((1, 12, 8))
    ring, full = mha.new_kv_cache(1, 12, window=3), mha.new_kv_cache(1, 12)
    for t in range(12):
        a = mha(x[:, t:t + 1], kv_cache=ring)
        b = mha(x[:, t:t + 1], kv_cache=full, window=3)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------- bad values --
@pytest.mark.parametrize("window,exc", [(0, ValueError), (-3, ValueError), ((1,), ValueError),
                                        ((1, 2, 3), ValueError), ((-1, 2), ValueError),
                                        ((1, 2.5), TypeError), (2.0, TypeError),
                                        ("4", TypeError), (True, TypeError)])
def test_bad_window_raises(rng, window, exc):
    q, k, v, _ = _inputs(rng, (1,), 5, 5)
    with pytest.raises(exc, match="window"):
        ScaledDotProductAttention(dtype=np.float64)(q, k, v, window=window)


def test_bad_global_tokens_raise(rng):
    q, k, v, _ = _inputs(rng, (1,), 5, 5)
    m = ScaledDotProductAttention(dtype=np.float64)
    with pytest.raises(ValueError, match="global_tokens"):
        m(q, k, v, global_tokens=[1])                      # no window
    with pytest.raises(ValueError, match="global_tokens"):
        m(q, k, v, window=2, global_tokens=[5])
    with pytest.raises(TypeError, match="global_tokens"):
        m(q, k, v, window=2, global_tokens=[1.5])


def test_bad_cache_window_raises(rng):
    mha = MultiHeadAttention(8, 2, dtype=np.float64, rng=0)
    x = rng.standard_normal((1, 1, 8))
    with pytest.raises(ValueError, match="window"):
        mha.new_kv_cache(1, 8, window=0)
    cache = mha.new_kv_cache(1, 8, window=3)
    with pytest.raises(ValueError, match="window"):
        mha(x, kv_cache=cache, window=4)
    with pytest.raises(TypeError, match="window"):
        mha(x, kv_cache=cache, window=(2, 0))
    with pytest.raises(ValueError, match="global_tokens"):
        mha(x, kv_cache=cache, global_tokens=[0])
    assert cache.length == 0


def test_output_is_read_only_while_the_backward_needs_it(rng):
    q, k, v, g = _inputs(rng, (1,), 9, 9)
    m = ScaledDotProductAttention(dtype=np.float64)
    out = m(q, k, v, window=3)
    with pytest.raises(ValueError, match="read-only"):
        out[0, 0, 0] = 1.0
    m.backward(g)
    m.eval()
    m(q, k, v, window=3)[0, 0, 0] = 1.0                   # nothing kept: writable

"""ScaledDotProductAttention: reference values, gradients, masks, dropout, contract."""
import numpy as np
import pytest

import nn_core
from nn_core.attention import ScaledDotProductAttention, create_causal_mask, scaled_dot_product_attention
from contract import check_contract
from reference import causal_allowed, sdpa as ref_sdpa


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


def qkv(rng, lead=(2, 3), L_q=5, L_k=7, d_k=4, d_v=6):
    return (rng.standard_normal(lead + (L_q, d_k)), rng.standard_normal(lead + (L_k, d_k)),
            rng.standard_normal(lead + (L_k, d_v)))


@pytest.mark.parametrize("L_q,L_k", [(5, 7), (7, 5), (1, 6), (6, 6)])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_reference(dtype, L_q, L_k, causal, rng):
    q, k, v = qkv(rng, L_q=L_q, L_k=L_k)
    m = rng.random((2, 1, L_q, L_k)) > 0.3
    m[1, 0, 0] = False
    attn = ScaledDotProductAttention(dtype=dtype)
    out, w = attn(q, k, v, mask=m, is_causal=causal, return_weights=True)
    allowed = m & causal_allowed(L_q, L_k) if causal else m
    ref_out, ref_w = ref_sdpa(q, k, v, allowed)
    assert out.dtype == dtype and out.shape == (2, 3, L_q, 6) and w.shape == (2, 3, L_q, L_k)
    np.testing.assert_allclose(out, ref_out, **_tol(dtype))
    np.testing.assert_allclose(w, ref_w, **_tol(dtype))
    if causal and L_q > L_k:
        np.testing.assert_array_equal(out[..., : L_q - L_k, :], 0)   # queries with no key


def test_scale_and_float_mask(rng):
    q, k, v = qkv(rng)
    fm = rng.standard_normal((5, 7))
    fm[2] = -np.inf
    out = ScaledDotProductAttention(dtype=np.float64)(q, k, v, mask=fm, scale=0.37)
    s = 0.37 * q @ np.swapaxes(k, -1, -2) + fm
    p = np.exp(s - np.max(np.where(np.isfinite(s), s, -1e300), -1, keepdims=True))
    p = np.where(np.isfinite(s), p, 0)
    den = p.sum(-1, keepdims=True)
    ref = np.where(den > 0, p / np.where(den > 0, den, 1), 0) @ v
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(out[:, :, 2], 0)


def test_broadcast_leading_dims_and_grad_shapes(rng):
    q = rng.standard_normal((2, 4, 3, 5, 4))             # (B, g, r, L_q, d_k)
    k = rng.standard_normal((2, 4, 1, 6, 4))             # (B, g, 1, L_k, d_k): shared by r heads
    v = rng.standard_normal((1, 4, 1, 6, 3))
    attn = ScaledDotProductAttention(dtype=np.float64)
    out = attn(q, k, v, is_causal=True)
    ref, _ = ref_sdpa(q, np.broadcast_to(k, (2, 4, 3, 6, 4)), np.broadcast_to(v, (2, 4, 3, 6, 3)),
                      causal_allowed(5, 6))
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-13)
    g = rng.standard_normal(out.shape)
    gq, gk, gv = attn.backward(g)
    assert gq.shape == q.shape and gk.shape == k.shape and gv.shape == v.shape
    # the same gradients as attention over explicitly repeated K/V, summed back
    attn2 = ScaledDotProductAttention(dtype=np.float64)
    kk, vv = np.repeat(k, 3, axis=2), np.repeat(np.repeat(v, 2, axis=0), 3, axis=2)
    attn2(q, kk, vv, is_causal=True)
    gq2, gk2, gv2 = attn2.backward(g)
    np.testing.assert_allclose(gq, gq2, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(gk, gk2.sum(2, keepdims=True), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(gv, gv2.sum((0, 2), keepdims=True), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masking", ["none", "bool", "float"])
def test_gradcheck(causal, masking, rng):
    q, k, v = qkv(rng, lead=(2,), L_q=4, L_k=5, d_k=3, d_v=2)
    mask = None
    if masking == "bool":
        mask = rng.random((4, 5)) > 0.4
        mask[1] = False                                  # fully masked row: grad 0, not NaN
    elif masking == "float":
        mask = np.where(rng.random((2, 4, 5)) > 0.3, rng.standard_normal((2, 4, 5)), -np.inf)
    attn = ScaledDotProductAttention(dtype=np.float64)
    rep = nn_core.gradcheck(attn, (q, k, v, mask, causal))
    assert rep.ok, str(rep)


def test_fully_masked_rows_have_zero_gradient(rng):
    q, k, v = qkv(rng)
    m = np.ones((5, 7), bool)
    m[3] = False
    attn = ScaledDotProductAttention(dtype=np.float64)
    attn(q, k, v, mask=m)
    gq, gk, gv = attn.backward(rng.standard_normal((2, 3, 5, 6)))
    assert np.all(np.isfinite(gq)) and np.all(np.isfinite(gk)) and np.all(np.isfinite(gv))
    np.testing.assert_array_equal(gq[..., 3, :], 0)


def test_causal_and_mask_combine_with_and(rng):
    q, k, v = qkv(rng, L_q=6, L_k=6)
    m = rng.random((6, 6)) > 0.3
    a = ScaledDotProductAttention(dtype=np.float64)(q, k, v, mask=m, is_causal=True)
    b = ScaledDotProductAttention(dtype=np.float64)(q, k, v, mask=m & create_causal_mask(6))
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-14)


def test_dropout_train_eval_and_backward(rng):
    q, k, v = qkv(rng)
    attn = ScaledDotProductAttention(dropout=0.5, dtype=np.float64, rng=int(rng.integers(1 << 30)))
    out, w = attn(q, k, v, return_weights=True)
    probs = ref_sdpa(q, k, v)[1]
    dropped = w == 0
    assert 0.3 < dropped.mean() < 0.7
    np.testing.assert_allclose(w[~dropped], 2 * probs[~dropped], rtol=1e-12)
    np.testing.assert_allclose(out, w @ v, rtol=1e-12, atol=1e-13)
    # backward must use the same dropped weights: grad_value = W^T g exactly
    g = rng.standard_normal(out.shape)
    _, _, gv = attn.backward(g)
    np.testing.assert_allclose(gv, np.swapaxes(w, -1, -2) @ g, rtol=1e-12, atol=1e-13)
    attn.eval()
    np.testing.assert_allclose(attn(q, k, v), ref_sdpa(q, k, v)[0], rtol=1e-12, atol=1e-13)


def test_dropout_gradient_is_consistent(rng):
    """Finite differences through a fixed dropout pattern (same rng state each call)."""
    q, k, v = qkv(rng, lead=(1,), L_q=3, L_k=4, d_k=2, d_v=2)

    class FixedDrop(ScaledDotProductAttention):
        def forward(self, *a, **kw):
            self.rng = np.random.default_rng(1234)
            return super().forward(*a, **kw)

    assert nn_core.gradcheck(FixedDrop(dropout=0.3, dtype=np.float64), (q, k, v)).ok


def test_functional_form(rng):
    q, k, v = qkv(rng)
    np.testing.assert_allclose(scaled_dot_product_attention(q, k, v, is_causal=True),
                               ref_sdpa(q, k, v, causal_allowed(5, 7))[0], rtol=1e-12, atol=1e-13)
    assert scaled_dot_product_attention(q.astype(np.float32), k, v).dtype == np.float32


def test_contract():
    check_contract(
        lambda dt: ScaledDotProductAttention(dtype=dt, rng=0),
        lambda r: qkv(r, lead=(2,), L_q=3, L_k=4, d_k=5, d_v=2),
        bad=[
            ((np.ones((2, 3, 4)), np.ones((2, 4, 5)), np.ones((2, 4, 2))), ValueError,
             r"key.shape\[-1\] must equal query.shape\[-1\] \(d_k\): expected 4, got 5"),
            ((np.ones((2, 3, 4)), np.ones((2, 4, 4)), np.ones((2, 5, 2))), ValueError,
             r"value.shape\[-2\] must equal key.shape\[-2\] \(L_k\): expected 4, got 5"),
            ((np.ones((2, 3, 4)), np.ones((3, 4, 4)), np.ones((3, 4, 2))), ValueError,
             "leading dims of query, key and value must broadcast"),
            ((np.ones(4), np.ones((4, 4)), np.ones((4, 2))), ValueError,
             "query must have at least 2 dimensions"),
            ((np.ones((3, 4), complex), np.ones((4, 4)), np.ones((4, 2))), TypeError,
             "query must be a real-valued"),
        ],
    )


def test_bad_mask_and_grad_shape(rng):
    q, k, v = qkv(rng)
    attn = ScaledDotProductAttention(dtype=np.float64)
    with pytest.raises(ValueError, match=r"mask must broadcast to the attention score shape \(2, 3, 5, 7\)"):
        attn(q, k, v, mask=np.ones((5, 6), bool))
    with pytest.raises(TypeError, match="mask must be a bool mask"):
        attn(q, k, v, mask=np.ones((5, 7), complex))
    with pytest.raises(TypeError, match="integer mask is ambiguous"):    # e.g. HF's 0/1
        attn(q, k, v, mask=np.ones((5, 7), np.int64))
    attn(q, k, v)
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 3, 5, 6\)"):
        attn.backward(np.ones((2, 3, 5, 5)))
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        ScaledDotProductAttention(dropout=1.0)


def test_special_inputs(rng):
    q, k, v = qkv(rng)
    attn = ScaledDotProductAttention(dtype=np.float32)
    ref = ref_sdpa(q, k, v)[0]
    np.testing.assert_allclose(attn(q.astype(np.float16), k.astype(">f8"), v), ref, rtol=2e-2, atol=2e-2)
    out = attn(np.broadcast_to(q[:1], q.shape), k, v)    # zero-stride view
    np.testing.assert_allclose(out, ref_sdpa(np.broadcast_to(q[:1], q.shape), k, v)[0], rtol=1e-5, atol=1e-6)
    ints = attn(np.arange(8).reshape(2, 4), np.ones((3, 4), int), np.ones((3, 2), int))
    np.testing.assert_allclose(ints, 1.0)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_nan_key_at_masked_position_leaves_forward_finite(dtype, fused, causal, rng, monkeypatch):
    """A NaN score at a bool-masked (or causally excluded) key never enters the softmax
    (the forward is finite and equals the result with that key replaced).  Only the
    forward is guaranteed: gradients pass through GEMMs where 0 * NaN = NaN."""
    from nn_core.attention import _sdpa_kernels as sdp
    monkeypatch.setattr(sdp, "FUSED_ENABLED", fused)
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in ((2, 6, 4), (2, 6, 4), (2, 6, 3)))
    mask = rng.random((6, 6)) > 0.3
    mask[:, 5] = False
    mask[:, 0] = True
    k_nan = k.copy()
    k_nan[:, 5, 1] = np.nan
    attn = ScaledDotProductAttention(dtype=dtype)
    out = attn(q, k_nan, v, mask=mask, is_causal=causal)
    ref = attn(q, k, v, mask=mask, is_causal=causal)
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("fused", [True, False])
def test_backward_bad_grad_output_keeps_cache_for_retry(dtype, fused, rng, monkeypatch):
    """grad_output is validated before the forward cache is consumed."""
    from nn_core.attention import _sdpa_kernels as sdp
    monkeypatch.setattr(sdp, "FUSED_ENABLED", fused)
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in ((2, 4, 3), (2, 5, 3), (2, 5, 2)))
    attn = ScaledDotProductAttention(dtype=dtype)
    out = attn(q, k, v)
    g = rng.standard_normal(out.shape).astype(dtype)
    with pytest.raises(ValueError, match="grad_output"):
        attn.backward(g[:, :3])
    with pytest.raises(TypeError, match="grad_output"):
        attn.backward(g.astype(complex))
    grads = attn.backward(g)                       # the corrected retry works
    ref = ScaledDotProductAttention(dtype=dtype)
    ref(q, k, v)
    for a, b in zip(grads, ref.backward(g)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeError, match="without a matching forward"):
        attn.backward(g)


@pytest.mark.parametrize("empty", ["L_q", "L_k", "batch"])
@pytest.mark.parametrize("masking", ["none", "bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
def test_zero_length_axes(dtype, empty, masking, causal, rng):
    """L_q = 0 -> empty output and grads; L_k = 0 -> every row fully masked: zero
    output and zero grads (they used to crash in a NumPy reshape)."""
    B, L_q, L_k, d_k, d_v = 2, 3, 4, 5, 2
    if empty == "L_q":
        L_q = 0
    elif empty == "L_k":
        L_k = 0
    else:
        B = 0
    q, k, v = (rng.standard_normal(s).astype(dtype)
               for s in ((B, L_q, d_k), (B, L_k, d_k), (B, L_k, d_v)))
    mask = None
    if masking == "bool":
        mask = np.ones((L_q, L_k), bool)
    elif masking == "float":
        mask = np.zeros((1, L_q, L_k), dtype)
    attn = ScaledDotProductAttention(dtype=dtype)
    out, w = attn(q, k, v, mask=mask, is_causal=causal, return_weights=True)
    assert out.shape == (B, L_q, d_v) and out.dtype == dtype
    assert w.shape == (B, L_q, L_k)
    assert (out == 0).all()
    grads = attn.backward(rng.standard_normal(out.shape).astype(dtype))
    for gr, a in zip(grads, (q, k, v)):
        assert gr.shape == a.shape and gr.dtype == dtype
        assert (gr == 0).all()

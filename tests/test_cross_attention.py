import numpy as np
import pytest
from _attention_reference import randomize, ref_attention
from contract import check_contract

from nn_core import gradcheck
from nn_core.attention import CachedCrossAttention, CrossAttention, MultimodalCrossAttention


def tol(dtype):
    return dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)


# --------------------------------------------------------------- CrossAttention
def test_cross_parameters():
    ca = CrossAttention(16, 4, kv_dim=6, rng=0)
    assert ca.params["W_k"].shape == (6, 16) and ca.params["W_v"].shape == (6, 16)
    assert ca.params["W_q"].shape == (16, 16) and ca.params["b_k"].shape == (16,)
    assert CrossAttention(16, 4, rng=0).params["W_k"].shape == (16, 16)


@pytest.mark.parametrize("T", [3, 1])
def test_cross_matches_reference(rng, dtype, T):
    ca = randomize(CrossAttention(12, 3, kv_dim=5, dtype=dtype, rng=0), rng)
    q, c = rng.standard_normal((2, T, 12)), rng.standard_normal((2, 7, 5))
    pad = np.ones((2, 1, 1, 7), bool)
    pad[1, ..., 4:] = False
    for mask in (None, pad):
        y, w = ca(q, c, mask=mask, return_weights=True)
        ref, ref_w = ref_attention(ca.params, q, c, c, 3, 3, mask)
        np.testing.assert_allclose(y, ref, **tol(dtype))
        np.testing.assert_allclose(w, ref_w, **tol(dtype))


def test_cross_gradcheck(rng):
    ca = randomize(CrossAttention(8, 2, kv_dim=5, dtype=np.float64, rng=0), rng)
    q, c = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 4, 5))
    mask = rng.random((2, 1, 3, 4)) < 0.7
    mask[..., 0] = True
    rep = gradcheck(ca, (q, c, mask))
    assert rep.ok, str(rep)
    assert gradcheck(ca, (q[:, :1], c)).ok


def test_cross_contract():
    check_contract(
        lambda dt: CrossAttention(8, 2, kv_dim=6, dtype=dt, rng=0),
        lambda r: (r.standard_normal((2, 3, 8)), r.standard_normal((2, 5, 6))),
        bad=[((np.zeros((2, 3, 8)), np.zeros((2, 5, 8))), ValueError,
              r"context must have shape \(2, \*, 6\)"),
             ((np.zeros((2, 3, 8)), np.zeros((1, 5, 6))), ValueError, "context must have shape"),
             ((np.zeros((2, 3, 8)), np.zeros((2, 5, 6)), np.ones((2, 1, 1, 4), bool)),
              ValueError, "mask must broadcast")],
    )


# ---------------------------------------------------------- CachedCrossAttention
def test_cached_equals_cross(rng, dtype):
    ca = randomize(CrossAttention(12, 3, kv_dim=5, dtype=dtype, rng=0), rng)
    cc = CachedCrossAttention(12, 3, kv_dim=5, dtype=dtype, rng=1)
    for k, v in ca.params.items():
        cc.params[k][...] = v
    c = rng.standard_normal((2, 7, 5))
    cc.set_context(c)
    assert cc.has_context
    for T in (1, 1, 4):                           # several decoding steps reuse the K/V
        q = rng.standard_normal((2, T, 12))
        g = rng.standard_normal((2, T, 12))
        ca.zero_grad()
        cc.zero_grad()
        np.testing.assert_allclose(cc(q), ca(q, c), **tol(dtype))
        gq_ref, _ = ca.backward(g)
        np.testing.assert_allclose(cc.backward(g), gq_ref, **tol(dtype))
        for k in ca.params:
            np.testing.assert_allclose(cc.grads[k], ca.grads[k], **tol(dtype), err_msg=k)


def test_cached_call_order_errors(rng):
    cc = CachedCrossAttention(8, 2, rng=0)
    with pytest.raises(RuntimeError, match="set_context"):
        cc(rng.standard_normal((1, 1, 8)))
    cc.set_context(rng.standard_normal((2, 3, 8)))
    with pytest.raises(ValueError, match=r"query must have shape \(2, \*, 8\)"):
        cc(rng.standard_normal((1, 1, 8)))
    cc(rng.standard_normal((2, 1, 8)))
    cc.clear_cache()
    assert not cc.has_context
    with pytest.raises(RuntimeError, match="set_context"):
        cc(rng.standard_normal((2, 1, 8)))
    with pytest.raises(ValueError, match="context must have shape"):
        cc.set_context(rng.standard_normal((2, 3, 5)))


class _SetContextEachCall(CachedCrossAttention):
    """Test wrapper: set_context inside forward, so gradcheck perturbs W_k/W_v too."""

    def forward(self, query, context):
        self.set_context(context)
        return super().forward(query)


def test_cached_gradcheck(rng):
    m = randomize(_SetContextEachCall(8, 2, kv_dim=3, dtype=np.float64, rng=0), rng)
    rep = gradcheck(m, (rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 4, 3))))
    # the context gets no gradient from CachedCrossAttention.backward (documented)
    assert rep.ok, str(rep)
    assert "input[1]" not in rep.entries and "W_k" in rep.entries


def test_cached_contract():
    check_contract(
        lambda dt: CachedCrossAttention(8, 2, kv_dim=6, dtype=dt, rng=0),
        lambda r: (r.standard_normal((2, 3, 8)), r.standard_normal((2, 5, 6))),
        forward=lambda m, q, c: (m.set_context(c), m(q))[1],
    )


# ------------------------------------------------------ MultimodalCrossAttention
def test_multimodal_parameters():
    mm = MultimodalCrossAttention(16, 4, vision_dim=10, rng=0)
    assert set(mm.params) == {"W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v", "b_o", "alpha"}
    assert mm.params["W_k"].shape == (10, 16) and mm.params["alpha"].shape == (1,)
    assert mm.params["alpha"][0] == 0
    ng = MultimodalCrossAttention(16, 4, vision_dim=10, gated=False, bias=False, rng=0)
    assert set(ng.params) == {"W_q", "W_k", "W_v", "W_o"}


def test_multimodal_zero_gate_returns_text(rng, dtype):
    mm = MultimodalCrossAttention(12, 3, vision_dim=7, dtype=dtype, rng=0)
    text, image = rng.standard_normal((2, 4, 12)), rng.standard_normal((2, 9, 7))
    y = mm(text, image)
    np.testing.assert_array_equal(y, text.astype(dtype))
    g = rng.standard_normal(y.shape)
    gt, gi = mm.backward(g)
    np.testing.assert_allclose(gt, g.astype(dtype))           # identity path only
    np.testing.assert_array_equal(gi, 0)
    assert mm.grads["alpha"][0] != 0                           # but alpha learns


def test_multimodal_equals_residual_cross_attention(rng):
    mm = randomize(MultimodalCrossAttention(12, 3, vision_dim=7, dtype=np.float64, rng=0), rng)
    ng = MultimodalCrossAttention(12, 3, vision_dim=7, gated=False, dtype=np.float64, rng=0)
    ca = CrossAttention(12, 3, kv_dim=7, dtype=np.float64, rng=0)
    for k in ca.params:
        ca.params[k][...] = mm.params[k]
        ng.params[k][...] = mm.params[k]
    text, image = rng.standard_normal((2, 4, 12)), rng.standard_normal((2, 9, 7))
    z = ca(text, image)
    t = np.tanh(mm.params["alpha"][0])
    np.testing.assert_allclose(mm(text, image), text + t * z, rtol=1e-12)
    np.testing.assert_allclose(ng(text, image), text + z, rtol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.7])
@pytest.mark.parametrize("gated", [True, False])
def test_multimodal_gradcheck(rng, alpha, gated):
    mm = MultimodalCrossAttention(8, 2, vision_dim=5, gated=gated, dtype=np.float64, rng=0)
    randomize(mm, rng)
    if gated:
        mm.params["alpha"][...] = alpha
    text, image = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 4, 5))
    rep = gradcheck(mm, (text, image))
    assert rep.ok, str(rep)


def test_multimodal_contract():
    def factory(dt):
        m = MultimodalCrossAttention(8, 2, vision_dim=6, dtype=dt, rng=0)
        m.params["alpha"][...] = 0.5
        return m

    check_contract(factory,
                   lambda r: (r.standard_normal((2, 3, 8)), r.standard_normal((2, 5, 6))),
                   bad=[((np.zeros((2, 3, 8)), np.zeros((2, 5, 8))), ValueError,
                         r"image must have shape \(2, \*, 6\)")])

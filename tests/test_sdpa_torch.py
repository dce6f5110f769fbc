"""Parity with torch.nn.functional.scaled_dot_product_attention (forward and backward)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from nn_core.attention import ScaledDotProductAttention, softmax  # noqa: E402


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)


def run_both(q, k, v, dtype, mask=None, is_causal=False, scale=None, rng=None):
    attn = ScaledDotProductAttention(dtype=dtype)
    out = attn(q.astype(dtype), k.astype(dtype), v.astype(dtype), mask=mask,
               is_causal=is_causal, scale=scale)
    g = rng.standard_normal(out.shape)
    grads = attn.backward(g.astype(dtype))

    tt = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    tq, tk, tv = (torch.tensor(a, dtype=tt, requires_grad=True) for a in (q, k, v))
    L_q, L_k = q.shape[-2], k.shape[-2]
    tmask = None if mask is None else torch.tensor(mask if mask.dtype == bool else mask.astype(dtype))
    if is_causal:
        # torch's is_causal aligns top-left; bottom-right alignment as an explicit mask
        causal = torch.ones(L_q, L_k, dtype=torch.bool).tril(L_k - L_q)
        if tmask is None:
            tmask = causal
        elif tmask.dtype == torch.bool:
            tmask = tmask & causal
        else:
            tmask = tmask.masked_fill(~causal, float("-inf"))
    tout = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, scale=scale)
    tout.backward(torch.tensor(g, dtype=tt))
    return out, grads, tout.detach().numpy(), (tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy())


def fully_masked_ok(tout):
    # torch >= 2.5 returns 0 for fully masked rows (_safe_softmax); NaN in older versions
    return not np.isnan(tout).any()


@pytest.mark.parametrize("shape", [(2, 3, 6, 6, 8, 8), (2, 2, 4, 9, 5, 3), (1, 4, 16, 16, 32, 32)])
@pytest.mark.parametrize("masking", ["none", "bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
def test_parity(dtype, shape, masking, causal, rng):
    B, h, L_q, L_k, d_k, d_v = shape
    q = rng.standard_normal((B, h, L_q, d_k))
    k = rng.standard_normal((B, h, L_k, d_k))
    v = rng.standard_normal((B, h, L_k, d_v))
    mask = None
    if masking == "bool":
        mask = rng.random((B, 1, L_q, L_k)) > 0.3
        mask[..., 0] = True                          # keep every row alive here
    elif masking == "float":
        mask = np.where(rng.random((1, h, L_q, L_k)) > 0.3, rng.standard_normal((1, h, L_q, L_k)), -np.inf)
        mask[..., -1] = 0.0
    out, grads, tout, tgrads = run_both(q, k, v, dtype, mask, causal, rng=rng)
    np.testing.assert_allclose(out, tout, **_tol(dtype))
    for a, b, name in zip(grads, tgrads, ("query", "key", "value")):
        np.testing.assert_allclose(a, b, **_tol(dtype), err_msg=name)


def test_parity_fully_masked_rows(dtype, rng):
    q, k, v = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 6, 4)), rng.standard_normal((2, 2, 6, 3))
    mask = rng.random((2, 1, 5, 6)) > 0.5
    mask[0, 0, 2] = False
    mask[1, 0, 4] = False
    out, grads, tout, tgrads = run_both(q, k, v, dtype, mask, rng=rng)
    assert fully_masked_ok(tout)
    np.testing.assert_allclose(out, tout, **_tol(dtype))
    for a, b in zip(grads, tgrads):
        np.testing.assert_allclose(a, b, **_tol(dtype))
    np.testing.assert_array_equal(out[0, :, 2], 0)


def test_parity_scale_and_lq_less_than_lk(rng):
    q, k, v = rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 9, 4)), rng.standard_normal((3, 9, 7))
    out, grads, tout, tgrads = run_both(q, k, v, np.float64, None, True, scale=0.21, rng=rng)
    np.testing.assert_allclose(out, tout, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, tgrads):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_softmax_matches_torch(dtype, rng):
    x = rng.standard_normal((3, 4, 10)).astype(dtype) * 4
    np.testing.assert_allclose(softmax(x), torch.softmax(torch.tensor(x), -1).numpy(), **_tol(dtype))


@pytest.mark.parametrize("fused", [True, False])
def test_parity_nan_rows(dtype, fused, rng, monkeypatch):
    """NaN scores propagate as in torch (an all-NaN row used to give 0)."""
    from nn_core.attention import _sdpa_kernels as sdp
    monkeypatch.setattr(sdp, "FUSED_ENABLED", fused)
    q, k, v = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 6, 4)), rng.standard_normal((2, 2, 6, 3))
    q[0, 1, 1, 0] = np.nan          # a whole score row NaN
    q[1, 0, 3, :] = np.nan
    out, grads, tout, tgrads = run_both(q, k, v, dtype, rng=rng)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(tout))
    assert np.isnan(out[0, 1, 1]).all() and np.isnan(out[1, 0, 3]).all()
    ok = ~np.isnan(tout)
    np.testing.assert_allclose(out[ok], tout[ok], **_tol(dtype))
    for a, b in zip(grads, tgrads):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a[~np.isnan(b)], b[~np.isnan(b)], **_tol(dtype))


def test_nan_repro_from_review():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 1, 3, 4))
    q[0, 0, 1, 0] = np.nan
    out = ScaledDotProductAttention(dtype=np.float64)(q, np.ones((1, 1, 5, 4)), np.ones((1, 1, 5, 2)))
    assert np.isnan(out[0, 0, 1]).all() and not np.isnan(out[0, 0, [0, 2]]).any()
    assert np.isnan(softmax(np.array([np.nan, np.nan]))).all()
    assert np.isnan(torch.softmax(torch.tensor([np.nan, np.nan]), -1).numpy()).all()

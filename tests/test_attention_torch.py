"""Parity with torch.nn.MultiheadAttention and F.scaled_dot_product_attention(enable_gqa)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from _attention_reference import randomize  # noqa: E402

from nn_core.attention import (  # noqa: E402
    CrossAttention,
    GroupedQueryAttention,
    MultiHeadAttention,
    MultiQueryAttention,
)
from nn_core.interop import load_torch_state_dict, to_torch_state_dict  # noqa: E402

TORCH_DT = {np.float32: torch.float32, np.float64: torch.float64}


def assert_close(actual, desired, dtype, err_msg="", scale=None):
    """rtol 1e-5 (f32) / 1e-10 (f64), with atol the same fraction of the array's scale
    (float32 sums of O(10) terms cancel to small entries with O(1e-6) absolute error)."""
    desired = np.asarray(desired)
    r = 1e-5 if dtype == np.float32 else 1e-10
    if scale is None:
        scale = float(np.abs(desired).max(initial=0.0))
    np.testing.assert_allclose(actual, desired, rtol=r, atol=r * max(scale, 1.0),
                               err_msg=err_msg)


def _torch_mha(m, kdim=None):
    tm = torch.nn.MultiheadAttention(m.d_model, m.num_heads, bias=m.bias, batch_first=True,
                                     kdim=kdim, vdim=kdim, dtype=TORCH_DT[m.dtype.type])
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch_state_dict(m).items()})
    return tm


def _grads_torch_layout(m):
    """nn_core's parameter gradients under torch's key names (via the interop export)."""
    clone = type(m).__new__(type(m))
    clone.__dict__.update(m.__dict__)
    clone.params = m.grads
    return to_torch_state_dict(clone)


def _torch_mask(mask, B, h, L, S):
    """nn_core bool mask (True = attend) -> torch MHA attn_mask (True = NOT allowed)."""
    if mask is None:
        return None
    m = np.broadcast_to(mask, (B, h, L, S)).reshape(B * h, L, S)
    if m.dtype == bool:
        return torch.from_numpy(~m)
    return torch.from_numpy(np.array(m))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", ["self", "self_bool", "self_float", "causal", "cross",
                                  "cross_kdim", "no_bias"])
def test_mha_parity(rng, dtype, case):
    B, L, S, d, h = 2, 5, 7, 16, 4
    kdim = 6 if case == "cross_kdim" else None
    if kdim:
        m = CrossAttention(d, h, kv_dim=kdim, dtype=dtype, rng=0)
    else:
        m = MultiHeadAttention(d, h, bias=case != "no_bias", dtype=dtype, rng=0)
    randomize(m, rng)
    tm = _torch_mha(m, kdim)
    x = rng.standard_normal((B, L, d)).astype(dtype)
    cross = case.startswith("cross")
    ctx = rng.standard_normal((B, S, kdim or d)).astype(dtype) if cross else None
    Lk = S if cross else L
    mask, causal = None, False
    if case == "self_bool":
        mask = rng.random((B, h, L, Lk)) < 0.7
        mask[..., 0] = True
    elif case == "self_float":
        mask = (rng.standard_normal((B, h, L, Lk))
                + np.where(rng.random((B, h, L, Lk)) < 0.7, 0, -np.inf)).astype(dtype)
        mask[..., 0] = 0.1
    elif case == "causal":
        causal = True
    elif case == "cross":
        mask = np.ones((B, 1, 1, S), bool)
        mask[1, ..., 5:] = False
    g = rng.standard_normal((B, L, d)).astype(dtype)

    if kdim:
        y = m(x, ctx, mask=mask)
        gx, gc = m.backward(g)
    elif cross:
        y = m(x, ctx, ctx, mask=mask)
        gx, gk, gv = m.backward(g)
        gc = gk + gv
    else:
        y = m(x, mask=mask, is_causal=causal)
        gx, _, _ = m.backward(g)

    tx = torch.from_numpy(x).requires_grad_()
    tc = torch.from_numpy(ctx).requires_grad_() if cross else tx
    tmask = _torch_mask(mask, B, h, L, Lk)
    if causal:
        tmask = torch.from_numpy(~np.tril(np.ones((L, L), bool)))
    ty, tw = tm(tx, tc, tc, attn_mask=tmask, need_weights=True, average_attn_weights=False,
                is_causal=causal)
    ty.backward(torch.from_numpy(g))
    assert_close(y, ty.detach().numpy(), dtype)
    assert_close(gx, tx.grad.numpy(), dtype)
    if cross:
        assert_close(gc, tc.grad.numpy(), dtype)
    ours = _grads_torch_layout(m)
    scale = max(float(p.grad.abs().max()) for p in tm.parameters())
    for name, p in tm.named_parameters():
        assert_close(ours[name], p.grad.numpy(), dtype, err_msg=name, scale=scale)
    # weights too
    _, w = (m(x, ctx, mask=mask, return_weights=True) if kdim else
            m(x, ctx, ctx, mask=mask, return_weights=True) if cross else
            m(x, mask=mask, is_causal=causal, return_weights=True))
    assert_close(w, tw.detach().numpy(), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("g", [1, 2, 4])
@pytest.mark.parametrize("L,S", [(6, 6), (1, 5)])
def test_gqa_parity_with_sdpa_enable_gqa(rng, dtype, g, L, S):
    B, d, h = 2, 32, 8
    m = (MultiQueryAttention(d, h, dtype=dtype, rng=0) if g == 1 else
         GroupedQueryAttention(d, h, g, dtype=dtype, rng=0))
    randomize(m, rng)
    x = rng.standard_normal((B, L, d)).astype(dtype)
    kv = rng.standard_normal((B, S, d)).astype(dtype)
    mask = rng.random((B, h, L, S)) < 0.7
    mask[..., -1] = True
    gy = rng.standard_normal((B, L, d)).astype(dtype)
    y = m(x, kv, mask=mask)
    gx, gkv, _ = m.backward(gy)

    P = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in m.params.items()}
    tx = torch.from_numpy(x).requires_grad_()
    tkv = torch.from_numpy(kv).requires_grad_()
    d_k = d // h
    q = (tx @ P["W_q"] + P["b_q"]).reshape(B, L, h, d_k).transpose(1, 2)
    k = (tkv @ P["W_k"] + P["b_k"]).reshape(B, S, g, d_k).transpose(1, 2)
    v = (tkv @ P["W_v"] + P["b_v"]).reshape(B, S, g, d_k).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.from_numpy(mask),
                                       enable_gqa=True)
    ty = o.transpose(1, 2).reshape(B, L, d) @ P["W_o"] + P["b_o"]
    ty.backward(torch.from_numpy(gy))
    assert_close(y, ty.detach().numpy(), dtype)
    assert_close(gx, tx.grad.numpy(), dtype)
    assert_close(gkv, tkv.grad.numpy(), dtype)
    # b_k's exact gradient is 0 (a shift of every key by b_k shifts each score row
    # by a constant): compare parameter gradients on the scale of all of them
    scale = max(float(p.grad.abs().max()) for p in P.values())
    for k_, p in P.items():
        assert_close(m.grads[k_], p.grad.numpy(), dtype, err_msg=k_, scale=scale)


def test_interop_roundtrip_and_errors(rng):
    tm = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    m = MultiHeadAttention(16, 4, dtype=np.float64, rng=0)
    load_torch_state_dict(m, tm.state_dict())            # torch tensors, cast to float64
    assert m.params["W_q"].dtype == np.float64
    np.testing.assert_allclose(m.params["W_q"], tm.in_proj_weight.detach().numpy()[:16].T,
                               rtol=1e-7)
    back = to_torch_state_dict(m)
    for k, v in tm.state_dict().items():
        np.testing.assert_allclose(back[k], v.numpy(), rtol=1e-7)
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    with pytest.raises(ValueError, match="missing keys .'out_proj.bias'"):
        load_torch_state_dict(m, {k: v for k, v in sd.items() if k != "out_proj.bias"})
    with pytest.raises(ValueError, match="unexpected keys .'extra'"):
        load_torch_state_dict(m, dict(sd, extra=np.zeros(1)))
    with pytest.raises(ValueError, match="in_proj_weight"):
        load_torch_state_dict(m, dict(sd, in_proj_weight=np.zeros((16, 16))))
    nb = MultiHeadAttention(16, 4, bias=False, rng=0)
    assert set(to_torch_state_dict(nb)) == {"in_proj_weight", "out_proj.weight"}
    tnb = torch.nn.MultiheadAttention(16, 4, bias=False, batch_first=True)
    load_torch_state_dict(nb, tnb.state_dict())

"""Plain-NumPy oracle of grouped-query attention (K/V heads explicitly repeated).

The readable statement of the math the nn_core attention modules implement; used by
the multi-head / grouped-query / cross-attention / KV-cache tests.
"""
import numpy as np


def ref_attention(params, xq, xk, xv, num_heads, num_kv_groups, mask=None, causal=False):
    """``softmax(Q K^T / sqrt(d_k) + M) V`` per head, ``[B, L, d_model]`` output.

    Query head ``i`` uses K/V head ``i // (h // g)`` (np.repeat along the head axis).
    Returns ``(output, weights [B, h, L, S])``; fully-masked rows give 0.
    """
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    xq, xk, xv = (np.asarray(a, dtype=np.float64) for a in (xq, xk, xv))
    h, g = num_heads, num_kv_groups
    B, L, _ = xq.shape
    S = xk.shape[1]
    Q = xq @ p["W_q"] + p.get("b_q", 0.0)
    K = xk @ p["W_k"] + p.get("b_k", 0.0)
    V = xv @ p["W_v"] + p.get("b_v", 0.0)
    d_k = Q.shape[-1] // h
    q = Q.reshape(B, L, h, d_k).transpose(0, 2, 1, 3)
    k = np.repeat(K.reshape(B, S, g, d_k).transpose(0, 2, 1, 3), h // g, axis=1)
    v = np.repeat(V.reshape(B, S, g, d_k).transpose(0, 2, 1, 3), h // g, axis=1)
    s = q @ k.swapaxes(-1, -2) / np.sqrt(d_k)                       # (B, h, L, S)
    allowed = np.ones(s.shape, dtype=bool)
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype == bool:
            allowed &= np.broadcast_to(m, s.shape)
        else:
            s = s + m.astype(np.float64)
    if causal:
        i = np.arange(L)[:, None]
        j = np.arange(S)[None, :]
        allowed &= j <= i + S - L
    allowed &= np.isfinite(s) | (s > 0)
    s = np.where(allowed, s, -np.inf)
    any_ok = allowed.any(-1, keepdims=True)
    mx = np.where(any_ok, np.max(np.where(allowed, s, -np.inf), -1, keepdims=True), 0.0)
    e = np.where(allowed, np.exp(s - mx), 0.0)
    den = e.sum(-1, keepdims=True)
    w = np.where(any_ok, e / np.where(den > 0, den, 1.0), 0.0)
    o = (w @ v).transpose(0, 2, 1, 3).reshape(B, L, h * d_k)
    return o @ p["W_o"] + p.get("b_o", 0.0), w


def randomize(module, rng, scale=0.5):
    """Overwrite every parameter with fresh normal draws (biases included)."""
    for p in module.params.values():
        p[...] = scale * rng.standard_normal(p.shape)
    return module

"""Plain-NumPy statements of the math, used as oracles in tests."""
import numpy as np


def masked_softmax(x, allowed=None):
    """Softmax over the last axis; ``allowed`` (bool) drops entries; empty rows -> 0."""
    x = np.asarray(x, dtype=np.float64)
    if allowed is None:
        allowed = np.isfinite(x) | (x > 0)
    allowed = np.broadcast_to(allowed, x.shape) & (x > -np.inf)
    z = np.where(allowed, x, -np.inf)
    mx = np.max(z, axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    e = np.where(allowed, np.exp(z - mx), 0.0)
    s = e.sum(-1, keepdims=True)
    return np.where(s > 0, e / np.where(s > 0, s, 1.0), 0.0)


def sdpa(q, k, v, allowed=None, scale=None):
    """Reference attention in float64: ``softmax(scale q k^T | allowed) v``."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * q @ np.swapaxes(k, -1, -2)
    p = masked_softmax(s, allowed)
    return p @ v, p


def causal_allowed(L_q, L_k):
    """Bottom-right aligned causal mask by explicit loops."""
    m = np.zeros((L_q, L_k), dtype=bool)
    for i in range(L_q):
        for j in range(L_k):
            m[i, j] = j <= i + L_k - L_q
    return m

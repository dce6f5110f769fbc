"""Plain-NumPy step-by-step statement of the recurrent cells (the tests' oracle).

``reference_sequence(kind, params, x, h0, c0, lengths, reverse)`` loops over time in
float64 and states each documented equation literally; padding and the reverse
direction are handled per sequence (each sequence run alone, reversed by slicing).
"""
import numpy as np


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def reference_step(kind, p, x, h, c=None):
    """One step for one batch; ``kind`` in rnn_tanh, rnn_relu, lstm, gru, gru_ra."""
    W_ih, W_hh = p["W_ih"], p["W_hh"]
    b_ih = p.get("b_ih", np.zeros(W_ih.shape[0]))
    b_hh = p.get("b_hh", np.zeros(W_ih.shape[0]))
    H = W_hh.shape[1]
    if kind in ("rnn_tanh", "rnn_relu"):
        a = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh
        return (np.tanh(a) if kind == "rnn_tanh" else np.maximum(a, 0)), None
    if kind == "lstm":
        a = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh
        i, f, g, o = (a[:, k * H:(k + 1) * H] for k in range(4))
        c_new = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        return _sigmoid(o) * np.tanh(c_new), c_new
    xi = x @ W_ih.T + b_ih
    r = _sigmoid(xi[:, :H] + h @ W_hh[:H].T + b_hh[:H])
    z = _sigmoid(xi[:, H:2 * H] + h @ W_hh[H:2 * H].T + b_hh[H:2 * H])
    if kind == "gru":      # the paper's equation: reset before the recurrent product
        n = np.tanh(xi[:, 2 * H:] + (r * h) @ W_hh[2 * H:].T + b_hh[2 * H:])
    else:                  # reset_after=True (PyTorch / cuDNN)
        n = np.tanh(xi[:, 2 * H:] + r * (h @ W_hh[2 * H:].T + b_hh[2 * H:]))
    return (1 - z) * n + z * h, None


def reference_sequence(kind, p, x, h0, c0=None, lengths=None, reverse=False):
    """``x [T, B, D]`` -> ``(out [T, B, H], h_T [B, H], c_T or None)`` in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    T, B, _ = x.shape
    H = p["W_hh"].shape[1]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    out = np.zeros((T, B, H))
    hT, cT = np.zeros((B, H)), np.zeros((B, H))
    for b in range(B):
        L = int(lengths[b])
        h = np.asarray(h0, np.float64)[b:b + 1]
        c = None if c0 is None else np.asarray(c0, np.float64)[b:b + 1]
        steps = range(L - 1, -1, -1) if reverse else range(L)
        for t in steps:
            h, c = reference_step(kind, p, np.asarray(x[t, b:b + 1], np.float64), h, c)
            out[t, b] = h[0]
        hT[b] = h[0]
        if c is not None:
            cT[b] = c[0]
    return out, hT, (cT if c0 is not None else None)

"""Attention mask creators.

Convention (same as ``torch.nn.functional.scaled_dot_product_attention``):
a bool mask is ``True`` where query ``i`` may attend to key ``j``.  Passing a float
``dtype`` returns the additive form instead: ``0`` where kept, ``-inf`` where dropped.

Shape legend: ``L`` sequence length, ``B`` batch, ``i`` query index (row),
``j`` key index (column).

==============================  ======================  ===============================
creator                         shape                   allowed (i, j)
==============================  ======================  ===============================
create_causal_mask              ``[L, L]``              ``j <= i``
create_padding_mask             ``[B, 1, 1, L]``        ``j < lengths[b]``
create_causal_padding_mask      ``[B, 1, L, L]``        ``j <= i and j < lengths[b]``
create_sliding_window_mask      ``[L, L]``              causal: ``0 <= i - j < w``;
                                                        else ``|i - j| <= w // 2``
create_local_attention_mask     ``[L, L]``              ``|i - j| <= w // 2``, or ``i``
                                                        or ``j`` a global token
==============================  ======================  ===============================

Padded query rows are not blanked by ``create_causal_padding_mask`` (their
outputs are normally ignored); a row with no allowed key gives output 0 in
nn_core's attention, never NaN.
"""
from __future__ import annotations

import numbers

import numpy as np

from .._validation import broadcasts_to, check_int

__all__ = [
    "create_causal_mask",
    "create_padding_mask",
    "create_causal_padding_mask",
    "create_sliding_window_mask",
    "create_local_attention_mask",
    "apply_causal_mask",
]


def _length(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _window(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"window_size must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"window_size must be >= 1, got {value}")
    return int(value)


def _finish(allowed, dtype):
    """Bool mask as is, or the additive float form (0 keep, -inf drop)."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return allowed
    if dt.kind != "f":
        raise TypeError(f"dtype must be bool or a float dtype, got {dt}")
    out = np.zeros(allowed.shape, dtype=dt)
    out[~allowed] = -np.inf
    return out


_MAX_ELEMENTS = 1 << 48      # far beyond any real mask; below NumPy's index overflow


def _fits(shape):
    """``shape``, after checking the mask can exist (NumPy would overflow silently on
    sizes near 2**63 and return an empty array)."""
    n = 1
    for d in shape:
        n *= int(d)
    if n > _MAX_ELEMENTS:
        raise ValueError(f"the mask would have shape {tuple(shape)} ({n} elements); "
                         f"at most {_MAX_ELEMENTS} are supported")
    return shape


def _lengths(lengths, max_len):
    """``lengths`` as int64 ``[B]`` and the resolved ``max_len``.

    An empty sequence is ``B = 0`` (``np.asarray([])`` is float64, accepted since it
    holds no value).  Range checks run in the input's own dtype, so a huge ``uint64``
    is reported as itself, not as the negative number a cast to int64 would give.
    """
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise ValueError(f"lengths must be 1-dimensional [B], got shape {arr.shape}")
    if arr.size == 0:
        arr = np.zeros(0, dtype=np.int64)
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be an integer array, got dtype {arr.dtype}")
    if max_len is None:
        max_len = int(arr.max()) if arr.size else 0
    max_len = _length(max_len, "max_len")
    if arr.size:
        out = (arr < 0) | (arr > max_len)
        if out.any():
            raise ValueError(f"lengths must satisfy 0 <= lengths[b] <= max_len={max_len}, "
                             f"got {int(arr[out][0])}")
    return arr.astype(np.int64), max_len


def _indices(tokens, L):
    """Global token indices as int64 ``[n]``: integers in ``[0, L)``, else an error."""
    items = tokens if isinstance(tokens, (list, tuple)) else ()
    if any(isinstance(t, (bool, np.bool_)) for t in items):
        raise TypeError("global_tokens must be integer indices, got a bool")
    g = np.asarray(tokens)
    if g.size == 0:
        return np.zeros(0, dtype=np.int64)
    if g.dtype.kind not in "iu":
        raise TypeError(f"global_tokens must be integer indices, got dtype {g.dtype}")
    g = g.reshape(-1)
    out = (g < 0) | (g >= L)
    if out.any():
        raise ValueError(f"global_tokens must be indices in [0, {L}), got {int(g[out][0])}")
    return g.astype(np.int64)


def create_causal_mask(seq_len, dtype=bool):
    """Lower-triangular ``[L, L]`` mask: query ``i`` attends to keys ``j <= i``.

    >>> create_causal_mask(3).astype(int)
    array([[1, 0, 0],
           [1, 1, 0],
           [1, 1, 1]])
    """
    L = _length(seq_len, "seq_len")
    _fits((L, L))
    return _finish(np.tri(L, L, dtype=bool), dtype)


def create_padding_mask(lengths, max_len=None, dtype=bool):
    """``[B, 1, 1, max_len]`` mask, True at the valid keys ``j < lengths[b]``.

    ``max_len`` defaults to ``max(lengths)``.  It broadcasts over heads and queries.
    """
    arr, L = _lengths(lengths, max_len)
    _fits((arr.size, L))
    allowed = np.arange(L)[None, :] < arr[:, None]
    return _finish(allowed[:, None, None, :], dtype)


def create_causal_padding_mask(lengths, max_len=None, dtype=bool):
    """``[B, 1, L, L]``: ``create_causal_mask(L) & create_padding_mask(lengths, L)``."""
    arr, L = _lengths(lengths, max_len)
    _fits((arr.size, L, L))
    allowed = np.tri(L, L, dtype=bool)[None, None] & (np.arange(L) < arr[:, None])[:, None, None, :]
    return _finish(allowed, dtype)


def create_sliding_window_mask(seq_len, window_size, causal=True, dtype=bool):
    """``[L, L]`` band mask.

    causal: ``0 <= i - j < window_size`` (each query sees itself and the previous
    ``window_size - 1`` keys, as in Mistral).  Otherwise ``|i - j| <= window_size // 2``.
    With ``window_size >= L`` the causal form equals :func:`create_causal_mask`.
    """
    L = _length(seq_len, "seq_len")
    w = _window(window_size)
    _fits((L, L))
    d = np.arange(L)[:, None] - np.arange(L)[None, :]        # i - j
    allowed = (d >= 0) & (d < w) if causal else np.abs(d) <= w // 2
    return _finish(allowed, dtype)


def create_local_attention_mask(seq_len, window_size, global_tokens=(), dtype=bool):
    """Longformer-style ``[L, L]`` mask: the band ``|i - j| <= window_size // 2`` plus
    global positions that attend to, and are attended by, every position.

    ``global_tokens``: integer indices in ``[0, L)`` (negative indices are not
    accepted; floats and bools raise ``TypeError``).
    """
    L = _length(seq_len, "seq_len")
    w = _window(window_size)
    _fits((L, L))
    g = _indices(global_tokens, L)
    d = np.arange(L)[:, None] - np.arange(L)[None, :]
    allowed = np.abs(d) <= w // 2
    allowed[g, :] = True
    allowed[:, g] = True
    return _finish(allowed, dtype)


def apply_causal_mask(scores, mask=None, fill_value=-np.inf):
    """Return a copy of ``scores`` with the disallowed positions set to ``fill_value``.

    Parameters
    ----------
    scores : array ``[..., L_q, L_k]``
    mask : bool array broadcastable to ``scores`` (True = keep), optional
        ``None`` means causal over the last two dims, aligned bottom-right
        (key ``j`` allowed for query ``i`` iff ``j <= i + L_k - L_q``).
    fill_value : float
    """
    s = np.asarray(scores)
    if s.ndim < 2:
        raise ValueError(f"scores must have at least 2 dimensions [..., L_q, L_k], got shape {s.shape}")
    if s.dtype.kind not in "fiu":
        raise TypeError(f"scores must be a real-valued array, got dtype {s.dtype}")
    L_q, L_k = s.shape[-2:]
    if mask is None:
        keep = np.tri(L_q, L_k, k=L_k - L_q, dtype=bool)
    else:
        keep = np.asarray(mask)
        if keep.dtype != np.bool_:
            raise TypeError(f"mask must be a bool array (True = keep), got dtype {keep.dtype}")
        if not broadcasts_to(keep.shape, s.shape):
            raise ValueError(f"mask must broadcast to scores' shape {s.shape}, got {keep.shape}")
    dt = s.dtype if s.dtype.kind == "f" else np.dtype(np.float64)
    return np.where(keep, s.astype(dt, copy=False), dt.type(fill_value))


def window_bounds(window):
    """``window`` of :meth:`ScaledDotProductAttention.forward` as ``(left, right)``:
    query ``i`` keeps keys ``i - left <= j <= i + right`` (bottom-right aligned).

    An int ``w >= 1`` is the causal band ``(w - 1, 0)``; a pair ``(left, right)`` of
    ints ``>= 0`` is taken as given.  Anything else raises TypeError / ValueError
    naming ``window``.
    """
    if isinstance(window, (tuple, list)):
        if len(window) != 2:
            raise ValueError(f"window must be an int or a pair (left, right), got a "
                             f"sequence of length {len(window)}")
        return (check_int(window[0], "window[0] (left)", lo=0),
                check_int(window[1], "window[1] (right)", lo=0))
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise TypeError(f"window must be None, an int or a pair (left, right), got "
                        f"{type(window).__name__} {window!r:.40}")
    return check_int(window, "window", lo=1) - 1, 0


def global_flags(global_tokens, L_q, L_k):
    """Global rows ``[L_q]`` and keys ``[L_k]`` as bool flags, or ``(None, None)``.

    ``global_tokens`` are key positions in ``[0, L_k)``; query ``i`` is global when its
    position ``i + L_k - L_q`` (bottom-right aligned, as ``is_causal``) is one of them.
    """
    g = _indices(global_tokens, L_k)
    if g.size == 0:
        return None, None
    gk = np.zeros(L_k, dtype=bool)
    gk[g] = True
    pos = np.arange(L_q) + (L_k - L_q)
    gq = np.zeros(L_q, dtype=bool)
    inside = (pos >= 0) & (pos < L_k)
    gq[inside] = gk[pos[inside]]
    return gq, gk


def band_mask(L_q, L_k, left, right, gq=None, gk=None):
    """The dense bool ``[L_q, L_k]`` form of a window: ``i + off - left <= j <= i + off +
    right`` with ``off = L_k - L_q``, or ``gq[i]`` or ``gk[j]`` (what the tiled kernel
    computes without building it; used where the weights are returned anyway)."""
    d = np.arange(L_k)[None, :] - (np.arange(L_q) + (L_k - L_q))[:, None]   # j - (i + off)
    allowed = (d >= -left) & (d <= right)
    if gq is not None:
        allowed |= gq[:, None] | gk[None, :]
    return allowed

"""Multi-head attention (Vaswani et al., 2017, "Attention Is All You Need", §3.2.2).

``MultiHeadAttention`` is the grouped-query core of :mod:`nn_core.attention._gqa` with
one K/V head per query head (``num_kv_groups = num_heads``).

Shape legend: ``B`` batch, ``L`` query length, ``S`` key length, ``h`` heads,
``d_k = d_model / h``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._validation import check_positive_int
from ._gqa import _SelfAttentionBase
from .kv_cache import KVCache

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import DTypeLike, RNGLike

__all__ = ["MultiHeadAttention", "KVCache", "split_heads", "combine_heads"]


def split_heads(x, num_heads):
    """Split the last axis into heads: ``[B, L, h*d_k] -> [B, h, L, d_k]``.

    Parameters
    ----------
    x : array ``[B, L, h*d_k]``
    num_heads : int
        ``h``; must divide ``x.shape[-1]``.

    Returns
    -------
    ndarray ``[B, h, L, d_k]``
        A view of ``x`` (transposed, not copied) when ``x`` is an ndarray.

    Examples
    --------
    >>> x = np.arange(2 * 3 * 8).reshape(2, 3, 8)
    >>> split_heads(x, 4).shape
    (2, 4, 3, 2)
    >>> np.array_equal(combine_heads(split_heads(x, 4)), x)
    True
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must be 3-dimensional [B, L, h*d_k], got shape {tuple(x.shape)}")
    h = check_positive_int(num_heads, "num_heads")
    B, L, D = x.shape
    if D % h:
        raise ValueError(f"num_heads must divide x.shape[-1]: got num_heads={h}, "
                         f"x.shape[-1]={D}")
    return x.reshape(B, L, h, D // h).transpose(0, 2, 1, 3)       # (B, h, L, d_k)


def combine_heads(x):
    """Concatenate heads: ``[B, h, L, d_k] -> [B, L, h*d_k]`` (inverse of :func:`split_heads`).

    Parameters
    ----------
    x : array ``[B, h, L, d_k]``

    Returns
    -------
    ndarray ``[B, L, h*d_k]`` (C-contiguous)
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-dimensional [B, h, L, d_k], got shape {tuple(x.shape)}")
    B, h, L, d_k = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(B, L, h * d_k)


class MultiHeadAttention(_SelfAttentionBase):
    r"""Multi-head scaled dot-product attention with an optional KV cache.

    Parameters
    ----------
    d_model : int
        Model width; ``num_heads`` must divide it (``d_k = d_model // num_heads``).
    num_heads : int
        ``h``, the number of query (and key/value) heads.
    bias : bool
        Learn the biases ``b_q, b_k, b_v, b_o``.
    dropout : float
        Attention-weight dropout probability (training mode only).
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only
        Initialisation and dropout.  Same seed, same weights.

    Attributes
    ----------
    params : dict
        ``W_q, W_k, W_v, W_o`` each ``[d_model, d_model]``, used as ``x @ W``;
        ``b_q, b_k, b_v, b_o`` each ``[d_model]`` when ``bias``.  ``W_q, W_k, W_v``
        are Xavier-uniform, ``W_o`` is ``U(-1/sqrt(d_model), 1/sqrt(d_model))``,
        biases start at 0 (as ``torch.nn.MultiheadAttention``).

    Notes
    -----
    Forward, for rows ``X`` of ``query`` and ``X_kv`` of ``key``/``value``::

        Q = X W_q + b_q,  K = X_kv W_k + b_k,  V = X_kv W_v + b_v      (split into h heads)
        O_i = softmax(Q_i K_i^T / sqrt(d_k) + M) V_i                    i = 0 .. h-1
        Y = [O_0 ... O_{h-1}] W_o + b_o

    Backward, given ``dY``: ``dW_o = A^T dY`` with ``A = [O_0 ... O_{h-1}]``,
    ``dA = dY W_o^T``, the SDPA backward per head (see
    :mod:`nn_core.attention.scaled_dot_product`) gives ``dQ, dK, dV``; then
    ``dW_q = X^T dQ``, ``dX = dQ W_q^T`` (and likewise for K, V); biases get the row
    sums.  Parameter gradients accumulate.

    When ``key``/``value`` are omitted (self-attention) the three input projections
    are one GEMM ``X [W_q | W_k | W_v]`` over all ``B * L`` rows and their weight
    gradients one GEMM ``X^T [dQ | dK | dV]``.

    **KV cache.**  ``forward(x_new, kv_cache=cache)`` appends the new keys/values
    ``[B, h, L_new, d_k]`` at ``cache.length`` (by slice, no reallocation) and attends
    over all cached positions with a bottom-right causal alignment: new token ``i``
    sees every earlier cached position and the new tokens ``<= i``.  Feeding a
    sequence token by token (or in chunks) gives the same outputs as one forward
    with ``is_causal=True`` over the whole sequence.  Inference only.

    Reference: Vaswani et al., 2017; PyTorch ``torch.nn.MultiheadAttention`` (whose
    ``in_proj_weight`` is ``[W_q^T; W_k^T; W_v^T]``, see
    :func:`nn_core.interop.to_torch_state_dict`).

    Examples
    --------
    >>> mha = MultiHeadAttention(16, 4, rng=0)
    >>> x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    >>> y = mha(x, is_causal=True)              # (B, L, d_model)
    >>> gx, gk, gv = mha.backward(np.ones_like(y))
    >>> gx.shape, gk is None
    ((2, 5, 16), True)
    >>> cache = mha.new_kv_cache(batch_size=2, max_len=8)
    >>> steps = [mha(x[:, t:t + 1], kv_cache=cache) for t in range(5)]
    >>> bool(np.allclose(np.concatenate(steps, axis=1), y, atol=1e-5))
    True
    """

    def __init__(self, d_model: int, num_heads: int, bias: bool = True, dropout: float = 0.0, *,
                 dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self._setup(d_model, num_heads, None, bias, dropout)

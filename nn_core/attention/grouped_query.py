"""Grouped-query attention (Ainslie et al., 2023, "GQA: Training Generalized
Multi-Query Transformer Models from Multi-Head Checkpoints").

``h`` query heads share ``g`` key/value heads: query head ``i`` reads K/V group
``i // (h // g)`` (the order of PyTorch's ``enable_gqa`` and of Llama).  ``g = h`` is
multi-head attention, ``g = 1`` multi-query attention.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._validation import check_heads
from ._gqa import _GQACore, _SelfAttentionBase

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import DTypeLike, RNGLike

__all__ = ["GroupedQueryAttention", "convert_from_mha"]


class GroupedQueryAttention(_SelfAttentionBase):
    """Grouped-query attention with ``num_kv_groups`` shared K/V heads.

    Parameters
    ----------
    d_model : int
    num_heads : int
        ``h``; must divide ``d_model`` (``d_k = d_model // h``).
    num_kv_groups : int
        ``g`` with ``1 <= g <= h`` and ``h % g == 0``.
    bias : bool
    dropout : float
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only

    Attributes
    ----------
    params : dict
        ``W_q, W_o`` ``[d_model, d_model]``; ``W_k, W_v`` ``[d_model, g*d_k]``;
        ``b_q, b_o`` ``[d_model]``, ``b_k, b_v`` ``[g*d_k]`` when ``bias``.

    Notes
    -----
    With ``r = h // g`` and ``j(i) = i // r``::

        O_i = softmax(Q_i K_{j(i)}^T / sqrt(d_k) + M) V_{j(i)},   Y = [O_0 ... O_{h-1}] W_o + b_o

    Backward: each query head's SDPA backward gives ``dK_i, dV_i``; group ``j``
    receives ``dK_j = sum_{i: j(i) = j} dK_i`` (likewise ``dV_j``), then
    ``dW_k = X^T dK`` etc. as in multi-head attention.  Internally the query heads
    are a ``[B, g, r, L, d_k]`` view and K/V a ``[B, g, 1, S, d_k]`` view, so K/V are
    never repeated; for a single query position (decoding) the ``r`` heads of a
    group are the rows of one matrix product over the cached keys.

    The KV cache holds ``g`` heads: ``get_kv_cache_stats(...)["reduction_factor"]
    == h / g`` relative to multi-head attention.  ``forward``/``backward``/
    ``new_kv_cache`` are as :class:`~nn_core.attention.MultiHeadAttention`'s.

    Examples
    --------
    >>> gqa = GroupedQueryAttention(32, 8, 2, rng=0)
    >>> gqa.params["W_k"].shape                 # (d_model, g * d_k)
    (32, 8)
    >>> x = np.ones((1, 3, 32), np.float32)
    >>> gqa(x, is_causal=True).shape
    (1, 3, 32)
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_groups: int, bias: bool = True,
                 dropout: float = 0.0, *, dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self._setup(d_model, num_heads, num_kv_groups, bias, dropout)

    @classmethod
    def convert_from_mha(cls, mha, num_kv_groups, *, rng=None):
        """Build a GQA from a multi-head checkpoint by mean-pooling K/V heads.

        Parameters
        ----------
        mha : MultiHeadAttention (or any grouped-query module whose number of K/V
            heads is a multiple of ``num_kv_groups``)
        num_kv_groups : int
            ``g``, dividing ``mha.num_heads``.
        rng : None, int or Generator, keyword-only
            The new module's dropout generator.

        Returns
        -------
        GroupedQueryAttention
            Same ``d_model``, ``num_heads``, bias, dropout, dtype and training mode;
            ``W_q, b_q, W_o, b_o`` copied; the K/V projection columns (and biases) of
            group ``j`` are the mean of those of the source heads it replaces
            (source heads ``j*m .. j*m + m - 1``, ``m = g_source / g``).

        Notes
        -----
        Ainslie et al. (2023) convert multi-head checkpoints this way ("mean
        pooling") and then *uptrain* for a small fraction (~5%) of the original
        pre-training steps.  A converted GQA with a moderate number of groups is
        usable at once (its outputs stay close to the MHA's when the heads of a
        group are similar, and equal them when ``g = h``); the paper finds that
        MQA (``g = 1``) loses more quality and usually needs uptraining.
        """
        if not isinstance(mha, _GQACore) or mha.q_dim != mha.d_model or \
                mha.kv_dim != mha.d_model:
            raise TypeError(
                "mha must be a MultiHeadAttention (or a grouped-query self-attention "
                f"module), got {type(mha).__name__}")
        h, g_src = mha.num_heads, mha.num_kv_groups
        g = check_heads(mha.d_model, h, num_kv_groups)
        if g_src % g:
            raise ValueError(
                f"num_kv_groups must divide the source's {g_src} K/V heads, got {g}")
        out = cls(mha.d_model, h, g, bias=mha.bias, dropout=mha.dropout,
                  dtype=mha.dtype, rng=rng)
        d_k, m = mha.head_dim, g_src // g
        p = mha.params
        out.params["W_q"][...] = p["W_q"]
        out.params["W_o"][...] = p["W_o"]
        for name in ("W_k", "W_v"):
            w = p[name].reshape(-1, g, m, d_k).mean(axis=2)              # (D, g, d_k)
            out.params[name][...] = w.reshape(-1, g * d_k)
        if mha.bias:
            out.params["b_q"][...] = p["b_q"]
            out.params["b_o"][...] = p["b_o"]
            for name in ("b_k", "b_v"):
                out.params[name][...] = p[name].reshape(g, m, d_k).mean(axis=1).reshape(-1)
        out.train(mha.training)
        return out


def convert_from_mha(mha, num_kv_groups, *, rng=None):
    """Function form of :meth:`GroupedQueryAttention.convert_from_mha`."""
    return GroupedQueryAttention.convert_from_mha(mha, num_kv_groups, rng=rng)

"""Multi-query attention (Shazeer, 2019, "Fast Transformer Decoding: One Write-Head
is All You Need").

All ``h`` query heads share one key/value head: the grouped-query core with
``num_kv_groups = 1``.  The KV cache is ``h`` times smaller than multi-head
attention's, which is what makes incremental decoding faster (less memory traffic).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._gqa import _SelfAttentionBase

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import DTypeLike, RNGLike

__all__ = ["MultiQueryAttention"]


class MultiQueryAttention(_SelfAttentionBase):
    """Multi-query attention: ``h`` query heads, one shared K/V head.

    Parameters
    ----------
    d_model : int
    num_heads : int
        Must divide ``d_model``; ``d_k = d_model // num_heads``.
    bias : bool
    dropout : float
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only

    Attributes
    ----------
    params : dict
        ``W_q, W_o`` ``[d_model, d_model]``; ``W_k, W_v`` ``[d_model, d_k]``;
        ``b_q, b_o`` ``[d_model]`` and ``b_k, b_v`` ``[d_k]`` when ``bias``.

    Notes
    -----
    Forward: ``Q = X W_q + b_q`` split into ``h`` heads, ``K = X_kv W_k + b_k`` and
    ``V = X_kv W_v + b_v`` are single heads ``[B, S, d_k]``;
    ``O_i = softmax(Q_i K^T / sqrt(d_k) + M) V`` and ``Y = [O_0 ... O_{h-1}] W_o + b_o``.
    Backward: as multi-head attention, except that ``dK = sum_i dK_i`` and
    ``dV = sum_i dV_i`` over all query heads (the shared head received every head's
    gradient).  The shared K/V is never repeated in memory: the query heads
    broadcast against it.  ``forward``/``backward``/``new_kv_cache`` behave exactly
    as :class:`~nn_core.attention.MultiHeadAttention`'s.

    Examples
    --------
    >>> mqa = MultiQueryAttention(16, 4, rng=0)
    >>> mqa.params["W_k"].shape
    (16, 4)
    >>> mqa.get_kv_cache_stats(1, 128)["reduction_factor"]
    4.0
    """

    def __init__(self, d_model: int, num_heads: int, bias: bool = True, dropout: float = 0.0, *,
                 dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self._setup(d_model, num_heads, 1, bias, dropout)

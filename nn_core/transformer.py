"""Transformer blocks: :class:`TransformerEncoderLayer` and :class:`TransformerDecoderLayer`.

Both follow ``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer`` (same
sub-layers, same order, same residual dropouts, post-LN by default, ``norm_first=True``
for pre-LN), batch-first, with nn_core's mask convention (bool ``True`` = may attend,
float masks additive; see :mod:`nn_core.attention`).  Their torch state dicts convert
through :mod:`nn_core.interop`.

Shape legend: ``B`` batch, ``L`` positions, ``S`` memory positions, ``d`` = ``d_model``,
``F`` = ``dim_feedforward``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from ._validation import (as_float_array, check_choice, check_grad_output, check_positive_int,
                          check_probability)
from .attention import CrossAttention, GroupedQueryAttention, MultiHeadAttention
from .layers import GELU, Dropout, LayerNorm, Linear, ReLU
from .module import Module

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import ArrayLike, DTypeLike, RNGLike
    from nn_core.attention.kv_cache import KVCache

__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer", "ACTIVATIONS"]

#: feed-forward activations: name -> (class, keyword arguments)
ACTIVATIONS = {"relu": (ReLU, {}), "gelu": (GELU, {"approximate": "none"}),
               "gelu_tanh": (GELU, {"approximate": "tanh"})}


@dataclass
class _BlockCache:
    out_shape: tuple
    has_cross: bool


class _Block(Module):
    """Shared construction and the feed-forward / residual helpers of both blocks."""

    def _setup(self, d_model, num_heads, dim_feedforward, dropout, activation,
               layer_norm_eps, norm_first, bias, n_norms, num_kv_groups):
        d = check_positive_int(d_model, "d_model")
        check_positive_int(num_heads, "num_heads")
        F = check_positive_int(dim_feedforward, "dim_feedforward")
        p = check_probability(dropout, "dropout")
        check_choice(activation, "activation", tuple(ACTIVATIONS))
        self.d_model, self.num_heads, self.dim_feedforward = d, int(num_heads), F
        self.dropout_p, self.activation, self.norm_first = p, activation, bool(norm_first)
        kw = dict(dtype=self.dtype, rng=self.rng)
        if num_kv_groups is None or num_kv_groups == num_heads:
            self.self_attn = MultiHeadAttention(d, num_heads, bias=bias, dropout=p, **kw)
        else:
            self.self_attn = GroupedQueryAttention(d, num_heads, num_kv_groups, bias=bias,
                                                   dropout=p, **kw)
        self.linear1 = Linear(d, F, bias=bias, **kw)
        act_cls, act_kw = ACTIVATIONS[activation]
        self.act = act_cls(dtype=self.dtype, **act_kw)
        self.linear2 = Linear(F, d, bias=bias, **kw)
        for i in range(1, n_norms + 1):
            setattr(self, f"norm{i}", LayerNorm(d, eps=layer_norm_eps, dtype=self.dtype))
            setattr(self, f"dropout{i}", Dropout(p, **kw))
        self.dropout = Dropout(p, **kw)

    def _drop(self, layer, x):
        return layer(x) if self.dropout_p > 0 else x

    def _drop_back(self, layer, g):
        return layer.backward(g) if self.dropout_p > 0 else g

    def _ff(self, x):
        return self.linear2(self._drop(self.dropout, self.act(self.linear1(x))))

    def _ff_back(self, g):
        g = self._drop_back(self.dropout, self.linear2.backward(g))
        return self.linear1.backward(self.act.backward(g))

    def _sublayer(self, x, norm, drop, fn):
        """``x + drop(fn(norm(x)))`` (pre-LN) or ``norm(x + drop(fn(x)))`` (post-LN)."""
        if self.norm_first:
            return x + self._drop(drop, fn(norm(x)))
        return norm(x + self._drop(drop, fn(x)))

    def _sublayer_back(self, g, norm, drop, fn_back):
        """Gradient of :meth:`_sublayer` w.r.t. its ``x``; ``fn_back`` maps the gradient
        of ``fn``'s output to the gradient of its input."""
        if self.norm_first:
            return g + norm.backward(fn_back(self._drop_back(drop, g)))
        g = norm.backward(g)
        return g + fn_back(self._drop_back(drop, g))

    def _input(self, x):
        x = as_float_array(x, "x", self.dtype, ndim=3)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x.shape[-1] must equal d_model: expected {self.d_model}, "
                             f"got {x.shape[-1]}")
        return x


_DOC_PARAMS = """
    Parameters
    ----------
    d_model : int
        ``d``, the width of every position.
    num_heads : int
        Attention heads (must divide ``d_model``).
    dim_feedforward : int, default 2048
        ``F``, the feed-forward hidden width.
    dropout : float, default 0.1
        Attention-weight dropout, dropout after the feed-forward activation and on each
        residual branch (training mode only).
    activation : {"relu", "gelu", "gelu_tanh"}, default "relu"
        Feed-forward activation (``"gelu"`` is the exact erf form, as in BERT).
    layer_norm_eps : float, default 1e-5
    norm_first : bool, default False
        ``False``: post-LN, ``x = norm(x + sublayer(x))`` (the original transformer and
        BERT).  ``True``: pre-LN, ``x = x + sublayer(norm(x))`` (GPT-2 style).
    bias : bool, default True
        Biases of the attention projections, the linear layers (not the norms).
    num_kv_groups : int, optional
        K/V heads of the self-attention: ``None`` (or ``num_heads``) is
        :class:`~nn_core.attention.MultiHeadAttention`, fewer is
        :class:`~nn_core.attention.GroupedQueryAttention` (no torch layout then).
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only
"""


class TransformerEncoderLayer(_Block):
    __doc__ = """Self-attention and a feed-forward network, each in a residual branch.
""" + _DOC_PARAMS + """

    Interface
    ---------
    Sub-modules (parameter prefixes): ``self_attn`` (:class:`~nn_core.attention.MultiHeadAttention`),
    ``linear1`` ``[d, F]``, ``linear2`` ``[F, d]``, ``norm1``, ``norm2``.

    Notes
    -----
    With ``SA`` the self-attention and ``FF(x) = linear2(dropout(act(linear1(x))))``::

        post-LN:  h = norm1(x + dropout1(SA(x))),     y = norm2(h + dropout2(FF(h)))
        pre-LN:   h = x + dropout1(SA(norm1(x))),     y = h + dropout2(FF(norm2(h)))

    Backward runs the two branches in reverse; each residual adds the branch's
    gradient to the identity path (post-LN: after the norm's backward).
    Reference: Vaswani et al., 2017; Devlin et al., 2019 (BERT, post-LN, GELU);
    Xiong et al., 2020 (pre-LN).

    Examples
    --------
    >>> layer = TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation="gelu", rng=0)
    >>> x = np.ones((2, 5, 16), np.float32)
    >>> y = layer(x)
    >>> gx = layer.backward(np.ones_like(y))
    >>> y.shape, gx.shape
    ((2, 5, 16), (2, 5, 16))
"""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu", layer_norm_eps: float = 1e-5,
                 norm_first: bool = False, bias: bool = True, num_kv_groups: int | None = None, *,
                 dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self._setup(d_model, num_heads, dim_feedforward, dropout, activation, layer_norm_eps,
                    norm_first, bias, 2, num_kv_groups)

    def forward(self, x: ArrayLike, mask: ArrayLike | None = None,
                is_causal: bool = False, window: int | tuple[int, int] | None = None,
                global_tokens: ArrayLike = ()) -> np.ndarray:
        """``x [B, L, d] -> [B, L, d]``.

        ``mask``: bool (``True`` = may attend) or additive float, broadcastable to
        ``[B, h, L, L]`` -- e.g. :func:`~nn_core.attention.create_padding_mask`
        ``(lengths)`` ``[B, 1, 1, L]`` for padded batches; ``is_causal`` adds a causal
        mask.  ``window`` / ``global_tokens``: a sliding window (and Longformer's
        global positions) computed in ``O(L * w)``, as in
        :meth:`~nn_core.attention.ScaledDotProductAttention.forward`.
        """
        x = self._input(x)
        h = self._sublayer(x, self.norm1, self.dropout1,
                           lambda z: self.self_attn(z, mask=mask, is_causal=is_causal,
                                                    window=window,
                                                    global_tokens=global_tokens))
        y = self._sublayer(h, self.norm2, self.dropout2, self._ff)
        self._save_cache(_BlockCache(y.shape, False))
        return y

    def backward(self, grad_output: ArrayLike) -> np.ndarray:
        """``grad_x [B, L, d]``; parameter gradients accumulate."""
        cache = self._peek_cache()
        g = check_grad_output(grad_output, cache.out_shape, self.dtype)
        g = self._sublayer_back(g, self.norm2, self.dropout2, self._ff_back)
        g = self._sublayer_back(g, self.norm1, self.dropout1,
                                lambda gz: self.self_attn.backward(gz)[0])
        self._pop_cache()
        return g


class TransformerDecoderLayer(_Block):
    __doc__ = """Causal self-attention, optional cross-attention to a memory, and a
    feed-forward network, each in a residual branch.
""" + _DOC_PARAMS + """    cross_attention : bool, default True
        ``True``: torch's ``TransformerDecoderLayer`` (self-attention, attention to the
        encoder's ``memory``, feed-forward).  ``False``: a decoder-only (GPT) block,
        self-attention and feed-forward only.
    memory_dim : int, optional
        Width of ``memory`` (default ``d_model``).

    Sub-modules: ``self_attn``, ``cross_attn`` (:class:`~nn_core.attention.CrossAttention`,
    with ``cross_attention``), ``linear1``, ``linear2``, ``norm1``, ``norm2`` (and
    ``norm3`` with ``cross_attention``; the feed-forward branch uses the last norm).

    Notes
    -----
    ``forward(x, memory=None, mask=None, memory_mask=None, is_causal=True,
    kv_cache=None, window=None, global_tokens=())``; the branches are as in :class:`TransformerEncoderLayer`::

        h1 = branch(x,  SA(., causal));  h2 = branch(h1, CA(., memory));  y = branch(h2, FF)

    With ``kv_cache`` (from ``layer.self_attn.new_kv_cache(B, max_len)``) the new
    positions attend over everything cached (incremental decoding, inference only).
    ``window`` / ``global_tokens`` restrict the self-attention to a sliding window
    (see :meth:`~nn_core.attention.ScaledDotProductAttention.forward`); a ring cache
    ``new_kv_cache(B, max_len, window=w)`` then holds only the last ``w`` positions.

    Examples
    --------
    >>> gpt = TransformerDecoderLayer(16, 4, 32, dropout=0.0, norm_first=True,
    ...                               cross_attention=False, rng=0)
    >>> x = np.ones((2, 5, 16), np.float32)
    >>> y = gpt(x)
    >>> cache = gpt.self_attn.new_kv_cache(2, 8)
    >>> steps = [gpt(x[:, t:t + 1], kv_cache=cache) for t in range(5)]
    >>> bool(np.allclose(np.concatenate(steps, 1), y, atol=1e-5))
    True
"""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu", layer_norm_eps: float = 1e-5,
                 norm_first: bool = False, bias: bool = True, num_kv_groups: int | None = None,
                 cross_attention: bool = True, memory_dim: int | None = None, *,
                 dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self.cross_attention = bool(cross_attention)
        self._setup(d_model, num_heads, dim_feedforward, dropout, activation, layer_norm_eps,
                    norm_first, bias, 3 if self.cross_attention else 2, num_kv_groups)
        if self.cross_attention:
            self.cross_attn = CrossAttention(self.d_model, num_heads, kv_dim=memory_dim,
                                             bias=bias, dropout=self.dropout_p,
                                             dtype=self.dtype, rng=self.rng)
        self._ff_norm = "norm3" if self.cross_attention else "norm2"

    def forward(self, x: ArrayLike, memory: ArrayLike | None = None, mask: ArrayLike | None = None,
                memory_mask: ArrayLike | None = None, is_causal: bool = True,
                kv_cache: KVCache | None = None, window: int | tuple[int, int] | None = None,
                global_tokens: ArrayLike = ()) -> np.ndarray:
        """``x [B, L, d]`` (and ``memory [B, S, memory_dim]``) ``-> [B, L, d]``."""
        x = self._input(x)
        if self.cross_attention and memory is None:
            raise ValueError("memory is required: this TransformerDecoderLayer has "
                             "cross_attention=True")
        if not self.cross_attention and memory is not None:
            raise ValueError("memory must be None for a decoder-only layer "
                             "(cross_attention=False)")
        h = self._sublayer(x, self.norm1, self.dropout1,
                           lambda z: self.self_attn(z, mask=mask, is_causal=is_causal,
                                                    kv_cache=kv_cache, window=window,
                                                    global_tokens=global_tokens))
        if self.cross_attention:
            h = self._sublayer(h, self.norm2, self.dropout2,
                               lambda z: self.cross_attn(z, memory, mask=memory_mask))
        drop = self.dropout3 if self.cross_attention else self.dropout2
        y = self._sublayer(h, getattr(self, self._ff_norm), drop, self._ff)
        if kv_cache is None:
            self._save_cache(_BlockCache(y.shape, self.cross_attention))
        else:
            self._save_no_backward("the forward used a kv_cache (decoding is inference only)")
        return y

    def backward(self, grad_output: ArrayLike) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``grad_x`` (and ``grad_memory`` with cross-attention, as a pair)."""
        cache = self._peek_cache()
        g = check_grad_output(grad_output, cache.out_shape, self.dtype)
        drop = self.dropout3 if cache.has_cross else self.dropout2
        g = self._sublayer_back(g, getattr(self, self._ff_norm), drop, self._ff_back)
        g_mem = []
        if cache.has_cross:
            def cross_back(gz):
                gq, gm = self.cross_attn.backward(gz)
                g_mem.append(gm)
                return gq
            g = self._sublayer_back(g, self.norm2, self.dropout2, cross_back)
        g = self._sublayer_back(g, self.norm1, self.dropout1,
                                lambda gz: self.self_attn.backward(gz)[0])
        self._pop_cache()
        return (g, g_mem[0]) if cache.has_cross else g

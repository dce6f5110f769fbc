"""Cross attention: queries from one sequence, keys/values from another.

``CrossAttention`` (encoder-decoder attention, Vaswani et al., 2017),
``CachedCrossAttention`` (the context's K/V projected once and reused at every
decoding step) and ``MultimodalCrossAttention`` (text attending to image features,
with Flamingo's ``tanh``-gated residual; Alayrac et al., 2022) all run on the same
projection/attention core as :class:`~nn_core.attention.MultiHeadAttention`.

Shape legend: ``B`` batch, ``T`` query (text) length, ``S`` context length, ``P``
image patches, ``h`` heads, ``d_k = d_model / h``, ``kv_dim`` / ``vision_dim`` the
context's feature width.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from .._validation import check_grad_output
from ._gqa import AttentionState, _GQACore

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import ArrayLike, DTypeLike, RNGLike

__all__ = ["CrossAttention", "CachedCrossAttention", "MultimodalCrossAttention"]


@dataclass
class _CrossCache:
    state: AttentionState
    query_shape: tuple
    context_shape: tuple | None = None      # None for CachedCrossAttention


@dataclass
class _GatedCache:
    state: AttentionState
    z: np.ndarray           # attn(text, image) [B, T, d_model]
    t: float | None         # tanh(alpha), None when not gated
    text_shape: tuple
    image_shape: tuple

_NOTES = """
    Notes
    -----
    Forward, with ``X`` the query rows and ``C`` the context rows::

        Q = X W_q + b_q   [B*T, d_model]       K = C W_k + b_k,  V = C W_v + b_v   [B*S, d_model]
        O_i = softmax(Q_i K_i^T / sqrt(d_k) + M) V_i,   Y = [O_0 ... O_{h-1}] W_o + b_o

    Backward: ``dW_o = A^T dY``, ``dA = dY W_o^T``, per-head SDPA backward to
    ``dQ, dK, dV``, then ``dW_q = X^T dQ``, ``dX = dQ W_q^T``,
    ``[dW_k | dW_v] = C^T [dK | dV]``, ``dC = dK W_k^T + dV W_v^T`` (one fused GEMM
    each for K and V, which read the same context).
"""


class CrossAttention(_GQACore):
    __doc__ = """Multi-head attention whose keys/values come from another sequence.

    Parameters
    ----------
    d_model : int
        Query and output width; ``num_heads`` must divide it.
    num_heads : int
    kv_dim : int, optional
        Width of the context features (default ``d_model``).
    bias : bool
    dropout : float
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only

    Attributes
    ----------
    params : dict
        ``W_q, W_o`` ``[d_model, d_model]``; ``W_k, W_v`` ``[kv_dim, d_model]``;
        ``b_q, b_k, b_v, b_o`` ``[d_model]`` when ``bias``.
    """ + _NOTES + """
    Examples
    --------
    >>> ca = CrossAttention(16, 4, kv_dim=6, rng=0)
    >>> q = np.ones((2, 3, 16), np.float32); c = np.ones((2, 5, 6), np.float32)
    >>> ca(q, c).shape
    (2, 3, 16)
    >>> gq, gc = ca.backward(np.ones((2, 3, 16), np.float32))
    >>> gc.shape
    (2, 5, 6)
    """

    def __init__(self, d_model: int, num_heads: int, kv_dim: int | None = None, bias: bool = True,
                 dropout: float = 0.0, *, dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self._setup(d_model, num_heads, None, bias, dropout, kv_dim=kv_dim)

    def forward(self, query: ArrayLike, context: ArrayLike, mask: ArrayLike | None = None,
                return_weights: bool = False, window: int | tuple[int, int] | None = None,
                global_tokens: ArrayLike = ()) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Attend ``query [B, T, d_model]`` to ``context [B, S, kv_dim]``.

        Parameters
        ----------
        query : array ``[B, T, d_model]``
        context : array ``[B, S, kv_dim]``
        mask : bool or float array broadcastable to ``[B, h, T, S]``, optional
            (e.g. a context padding mask ``[B, 1, 1, S]``; ``True`` = may attend).
        return_weights : bool
            Also return per-head weights ``[B, h, T, S]``.
        window, global_tokens : optional
            For a query aligned position by position with the context (query ``i``
            at context position ``i + S - T``): a band of context positions, as in
            :meth:`ScaledDotProductAttention.forward`, in ``O(T * w)``.

        Returns
        -------
        output : ndarray ``[B, T, d_model]`` (and weights if asked)
        """
        xq = self._check_input(query, "query", self.d_model)
        xc = self._check_input(context, "context", self.kv_dim, xq.shape[0])
        y, w, state = self._attn_forward([(xq, "q"), (xc, "kv")], mask,
                                         return_weights=return_weights, window=window,
                                         global_tokens=global_tokens)
        self._save_cache(_CrossCache(state, xq.shape, xc.shape))
        return (y, w) if return_weights else y

    def backward(self, grad_output: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Gradients ``(grad_query [B, T, d_model], grad_context [B, S, kv_dim])``."""
        cache = self._peek_cache()
        g = self._check_grad_output(cache.state, grad_output)   # before consuming it
        self._pop_cache()
        dq, dc = self._attn_backward(cache.state, g)
        return dq.reshape(cache.query_shape), dc.reshape(cache.context_shape)


class CachedCrossAttention(_GQACore):
    __doc__ = """Cross attention whose context K/V are projected once per context.

    Same constructor and parameters as :class:`CrossAttention`.  ``set_context(c)``
    computes ``K = c W_k + b_k`` and ``V = c W_v + b_v`` once; every
    ``forward(query)`` (e.g. each decoding step of a decoder attending to a fixed
    encoder output) reuses them and gives exactly ``CrossAttention``'s result.
    Call ``set_context`` again after changing ``W_k, W_v, b_k, b_v`` (the cached
    K/V are not refreshed automatically); ``clear_cache()`` drops them.

    Parameters
    ----------
    d_model, num_heads, kv_dim, bias, dropout, dtype, rng
        As :class:`CrossAttention`.
    """ + _NOTES + """
    ``backward`` returns ``grad_query`` only (the forward's single array input) and
    accumulates the gradients of *every* parameter, ``W_k, W_v, b_k, b_v`` through
    the cached context included.  For the context's own gradient use
    :class:`CrossAttention`.

    Examples
    --------
    >>> cca = CachedCrossAttention(16, 4, rng=0)
    >>> cca.set_context(np.ones((1, 7, 16), np.float32))
    >>> [cca(np.ones((1, 1, 16), np.float32)).shape for _ in range(2)]
    [(1, 1, 16), (1, 1, 16)]
    """

    def __init__(self, d_model: int, num_heads: int, kv_dim: int | None = None, bias: bool = True,
                 dropout: float = 0.0, *, dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self._setup(d_model, num_heads, None, bias, dropout, kv_dim=kv_dim)
        self._context = None

    @property
    def has_context(self) -> bool:
        return self._context is not None

    def set_context(self, context: ArrayLike) -> None:
        """Project ``context [B, S, kv_dim]`` to per-head K/V and keep them."""
        xc = self._check_input(context, "context", self.kv_dim)
        B, S = xc.shape[0], xc.shape[1]
        x2 = np.array(xc.reshape(B * S, self.kv_dim), dtype=self.dtype, copy=True)
        W, proj = self._project(x2, "kv")
        self._context = (self._kv_heads(proj["k"], B, S),               # (B, h, S, d_k)
                         self._kv_heads(proj["v"], B, S), (x2, W))

    def clear_cache(self) -> None:
        """Forget the context K/V (a later ``forward`` raises RuntimeError)."""
        self._context = None
        self.clear_pending()

    def forward(self, query: ArrayLike, mask: ArrayLike | None = None,
                return_weights: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Attend ``query [B, T, d_model]`` to the context given to :meth:`set_context`.

        Parameters
        ----------
        query : array ``[B, T, d_model]`` (``B`` as the context's)
        mask : bool or float array broadcastable to ``[B, h, T, S]``, optional
        return_weights : bool

        Returns
        -------
        output : ndarray ``[B, T, d_model]`` (and weights ``[B, h, T, S]`` if asked)
        """
        if self._context is None:
            raise RuntimeError("CachedCrossAttention.forward called without a context: "
                               "call set_context(context) first")
        B = self._context[0].shape[0]
        xq = self._check_input(query, "query", self.d_model, B)
        y, w, state = self._attn_forward([(xq, "q")], mask, fixed_kv=self._context,
                                         return_weights=return_weights)
        self._save_cache(_CrossCache(state, xq.shape))
        return (y, w) if return_weights else y

    def backward(self, grad_output: ArrayLike) -> np.ndarray:
        """``grad_query [B, T, d_model]``; all parameter gradients accumulate."""
        cache = self._peek_cache()
        g = self._check_grad_output(cache.state, grad_output)   # before consuming it
        self._pop_cache()
        return self._attn_backward(cache.state, g)[0].reshape(cache.query_shape)


class MultimodalCrossAttention(_GQACore):
    r"""Text attends to image features through a (Flamingo-style) gated residual.

    Parameters
    ----------
    d_model : int
        Text width.
    num_heads : int
    vision_dim : int
        Width of the image features.
    gated : bool
        ``True``: ``Y = text + tanh(alpha) * attn(text, image)`` with a learnable
        scalar ``alpha`` initialised to 0, so a freshly added layer leaves the
        (pre-trained) text path unchanged.  ``False``: ``Y = text + attn(text, image)``.
    bias : bool
    dropout : float
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only

    Attributes
    ----------
    params : dict
        ``W_q, W_o`` ``[d_model, d_model]``, ``W_k, W_v`` ``[vision_dim, d_model]``,
        ``b_*`` ``[d_model]`` when ``bias``, ``alpha`` ``(1,)`` when ``gated``.

    Notes
    -----
    With ``Z = attn(text, image)`` the cross attention of :class:`CrossAttention`
    and ``t = tanh(alpha)``::

        Y = text + t * Z
        d text = dY + dZ/d text,   dZ = t * dY,   d alpha = (1 - t^2) * sum(dY * Z)

    and the cross-attention backward of ``dZ`` gives the image and projection
    gradients.  Reference: Alayrac et al., 2022, "Flamingo: a Visual Language Model
    for Few-Shot Learning" (gated xattn-dense, ``tanh`` gating initialised at 0).

    Examples
    --------
    >>> mm = MultimodalCrossAttention(16, 4, vision_dim=10, rng=0)
    >>> text = np.random.default_rng(0).standard_normal((2, 3, 16))
    >>> image = np.ones((2, 9, 10))
    >>> bool(np.allclose(mm(text, image), text, atol=1e-6))   # alpha = 0: text unchanged
    True
    """

    def __init__(self, d_model: int, num_heads: int, vision_dim: int, gated: bool = True,
                 bias: bool = True, dropout: float = 0.0, *, dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self._setup(d_model, num_heads, None, bias, dropout, kv_dim=vision_dim)
        if not isinstance(gated, (bool, np.bool_)):
            raise TypeError(f"gated must be a bool, got {type(gated).__name__}")
        self.gated = bool(gated)
        self.vision_dim = self.kv_dim
        if self.gated:
            self.add_param("alpha", np.zeros(1))

    def forward(self, text: ArrayLike, image: ArrayLike, mask: ArrayLike | None = None,
                return_weights: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``text [B, T, d_model]`` attends to ``image [B, P, vision_dim]``.

        Parameters
        ----------
        text : array ``[B, T, d_model]``
        image : array ``[B, P, vision_dim]``
        mask : bool or float array broadcastable to ``[B, h, T, P]``, optional
        return_weights : bool
            Also return the per-head weights ``[B, h, T, P]``.

        Returns
        -------
        output : ndarray ``[B, T, d_model]`` (and weights if asked)
        """
        xt = self._check_input(text, "text", self.d_model)
        xi = self._check_input(image, "image", self.vision_dim, xt.shape[0])
        z, w, state = self._attn_forward([(xt, "q"), (xi, "kv")], mask,
                                         return_weights=return_weights)
        if self.gated:
            t = np.tanh(self.params["alpha"][0])
            y = xt + t * z
        else:
            t = None
            y = xt + z
        self._save_cache(_GatedCache(state, z, t, xt.shape, xi.shape))
        return (y, w) if return_weights else y

    def backward(self, grad_output: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Gradients ``(grad_text [B, T, d_model], grad_image [B, P, vision_dim])``."""
        c = self._peek_cache()
        g = check_grad_output(grad_output, c.text_shape, self.dtype)   # before consuming
        self._pop_cache()
        if self.gated:
            self.grads["alpha"] += (1 - c.t * c.t) * np.vdot(g, c.z)
            gz = c.t * g
        else:
            gz = g
        dt_, di = self._attn_backward(c.state, gz)
        return g + dt_.reshape(c.text_shape), di.reshape(c.image_shape)

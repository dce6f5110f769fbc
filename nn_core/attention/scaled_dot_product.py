"""Numerically stable masked softmax and scaled dot-product attention.

Shape legend
------------
``...``  any number of leading (batch, head) dims that broadcast;
``L_q``  query length, ``L_k`` key length, ``d_k`` query/key width, ``d_v`` value width.

Equations (Vaswani et al., 2017, "Attention Is All You Need", eq. 1)
--------------------------------------------------------------------
Forward, with ``s`` the scale (default ``1/sqrt(d_k)``) and ``M`` the mask::

    S = s * Q K^T + M_add                      [..., L_q, L_k]
    P = softmax(S) over allowed keys           (masked keys get exactly 0)
    P~ = P * Z / (1 - p)                       (dropout; Z ~ Bernoulli(1 - p), training only)
    O = P~ V                                   [..., L_q, d_v]

Backward, given ``dO``::

    dV  = P~^T dO
    dP~ = dO V^T ;  dP = dP~ * Z / (1 - p)
    dS  = P * (dP - rowsum(dP * P))            (softmax Jacobian-vector product)
    dQ  = s * dS K ;  dK = s * dS^T Q

Each gradient is summed over the dims its input was broadcast along, so it has
the shape of its own input.  A fully masked row has ``P = 0``, hence output 0 and
gradient 0 — never NaN (PyTorch's ``_safe_softmax`` behaviour).  NaN scores
propagate as in PyTorch: a NaN among a row's allowed scores makes that row NaN.  A
NaN at a bool-masked or causally excluded key never enters the softmax, so the
forward stays finite there (PyTorch's math path gives NaN); gradients still pass
through GEMMs where ``0 * NaN = NaN``.

Empty axes work: ``L_q = 0`` (or an empty batch) gives empty outputs and
gradients; ``L_k = 0`` leaves every query without keys, i.e. fully masked: output 0
and gradients 0.  ``softmax`` of an empty array or axis is an empty array.

Mask convention: bool ``True`` = this query may attend to this key; float masks are
additive (0 keep, ``-inf`` drop).  ``is_causal`` aligns the diagonal bottom-right:
query ``i`` of ``L_q`` sees keys ``j <= i + L_k - L_q`` (as when decoding with a
cache); with ``L_q > L_k`` the first ``L_q - L_k`` queries see nothing and output 0.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from .._dropout import dropout_key
from .._validation import (as_float_array, as_mask, broadcasts_to, check_grad_output,
                           check_probability)
from ..memory import Workspace
from ..module import Module
from . import _sdpa_kernels as _k
from .masks import _indices, band_mask, global_flags, window_bounds

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import ArrayLike, DTypeLike, RNGLike

__all__ = ["softmax", "ScaledDotProductAttention", "scaled_dot_product_attention"]

_WORKSPACE_MAX_BYTES = 128 << 20   # a module keeps its probabilities buffer up to this


@dataclass
class _GenericCache:
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    probs: np.ndarray       # [..., L_q, L_k] before dropout
    applied: np.ndarray     # the weights applied to V (after dropout)
    keep: np.ndarray | None  # dropout mask
    scale: float


@dataclass
class _SDPACache:
    out_shape: tuple
    fused: _k.FusedCache | None = None
    generic: _GenericCache | None = None
    flash: _k.FlashCache | None = None
    spare: np.ndarray | None = None     # the workspace's probabilities buffer, to give back


def softmax(x, axis=-1, mask=None):
    """Numerically stable softmax with an optional mask.

    Parameters
    ----------
    x : array_like, float
        Scores.  float32 stays float32; every other real dtype is computed in float64.
    axis : int
        Axis to normalise over.
    mask : array_like of bool or float, optional
        Broadcastable to ``x``.  Bool: ``True`` keeps an entry.  Float: added to
        ``x`` (0 keep, ``-inf`` drop).

    Returns
    -------
    ndarray
        Same shape as ``x``; masked entries are exactly 0 and a slice whose entries
        are all masked (or all ``-inf``) is all 0 instead of NaN.  A NaN among a
        slice's unmasked entries makes that slice NaN (as in PyTorch); a NaN at a
        bool-masked entry is ignored.

    Examples
    --------
    >>> softmax(np.array([1.0, 2.0, 3.0]), mask=np.array([True, True, False])).round(4)
    array([0.2689, 0.7311, 0.    ])
    """
    arr = np.asarray(x)
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    arr = as_float_array(arr, "x", dtype, min_ndim=1)
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {type(axis).__name__} {axis!r}")
    axis = int(axis)
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(f"axis must be in [-{arr.ndim}, {arr.ndim}), got {axis}")
    kind, m = as_mask(mask, "mask", dtype)
    if m is not None:
        if not broadcasts_to(m.shape, arr.shape):
            raise ValueError(f"mask must broadcast to x's shape {arr.shape}, got {m.shape}")
        # align dims, then move the softmax axis last: views only, no expansion
        m = np.moveaxis(m.reshape((1,) * (arr.ndim - m.ndim) + m.shape), axis, -1)[..., None, :]
    moved = np.ascontiguousarray(np.moveaxis(arr, axis, -1))[..., None, :]   # (..., 1, N)
    out = _k.masked_softmax(moved, 1.0, kind, m)[..., 0, :]
    return np.moveaxis(out, -1, axis)


def scaled_dot_product_attention(query, key, value, mask=None, is_causal=False, scale=None,
                                 dropout_p=0.0, rng=None, dtype=None, window=None,
                                 global_tokens=()):
    """Functional SDPA (no dropout unless ``dropout_p`` and ``rng`` are given).

    Same arguments and result as :meth:`ScaledDotProductAttention.forward`; returns
    the output only.
    """
    if dtype is None:
        dtype = np.float32 if np.asarray(query).dtype == np.float32 else np.float64
    mod = ScaledDotProductAttention(dropout=dropout_p, dtype=dtype, rng=rng)
    return mod.forward(query, key, value, mask=mask, is_causal=is_causal, scale=scale,
                       window=window, global_tokens=global_tokens)


def _band(window, global_tokens, L_q, L_k):
    """``(left, right, gq, gk)`` of a window (None without one)."""
    if window is None:
        if len(_indices(global_tokens, L_k)):
            raise ValueError("global_tokens needs a window: without one every position "
                             "already attends to every other")
        return None
    left, right = window_bounds(window)
    return (left, right) + global_flags(global_tokens, L_q, L_k)


def _and_mask(kind, m, allowed, dt):
    """``mask AND allowed`` in the mask's own kind (bool, or additive with -inf)."""
    if kind is None:
        return "bool", allowed
    if kind == "bool":
        return "bool", m & allowed
    return "float", np.where(allowed, m, dt.type(-np.inf)).astype(dt, copy=False)


class ScaledDotProductAttention(Module):
    """Scaled dot-product attention with masks, causal alignment and dropout.

    Parameters
    ----------
    dropout : float
        Probability of zeroing an attention weight during training (inverted
        dropout: survivors are scaled by ``1/(1-p)``); off in ``eval()``.
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or Generator, keyword-only
        Draws the dropout masks.

    Notes
    -----
    See the module docstring for the forward and backward equations.

    Without dropout (always in ``eval()``) forward and backward run in the fused
    Cython kernel ``nn_core._kernels._attention``: each (batch, head) slab is
    processed in blocks of query rows (score GEMM, masked softmax, ``P V`` GEMM)
    and, with ``is_causal``, blocks entirely above the diagonal are skipped in the
    forward and in all four backward GEMMs -- about half the work of the full
    product for ``L_q = L_k``.  Inputs that broadcast (e.g. grouped-query K/V
    ``[B, g, 1, S, d]`` against queries ``[B, g, r, L, d]``) are read in place, never
    repeated, and their gradients are accumulated into their own shape.  Masks are
    read through their own (broadcast) strides, never expanded.  The slabs are split
    over as many threads as the thread budget allows (the BLAS thread count, see
    :mod:`nn_core._parallel`), with BLAS itself single-threaded meanwhile.
    With dropout in training (short sequences) the same equations run as NumPy
    matmuls around the masked-softmax kernel ``nn_core._kernels._softmax``.

    Memory: the probabilities ``[..., L_q, L_k]`` are kept for the backward (in a
    buffer reused across calls, and overwritten by the backward, unless
    ``return_weights`` handed them to the caller) -- for short sequences only.  Once
    a slab has ``L_q * L_k >= FLASH_MIN_SCORES`` scores (and at least
    ``FLASH_MIN_ROWS`` query rows; decoding keeps the fused kernel; both in
    :mod:`nn_core.attention._sdpa_kernels`), and the weights are not asked for, the
    tiled kernel runs instead (FlashAttention, Dao et al., 2022): an online softmax
    over query x key tiles that keeps only the output and one log-sum-exp per query
    row, and recomputes the probabilities tile by tile in the backward -- O(L)
    memory, the causal upper triangle skipped in both passes.
    On that path dropout (in training) is fused too: its mask is counter-based
    (``nn_core.layers.Dropout``'s generator, keyed from ``rng``) and regenerated in
    the backward, so the masks drawn for a given seed differ from those of the
    short-sequence path.

    ``return_weights=True`` returns the weights actually applied to ``V`` (after
    dropout), as ``torch.nn.MultiheadAttention`` does.

    Examples
    --------
    >>> sdpa = ScaledDotProductAttention(rng=0)
    >>> q = np.ones((2, 4, 5, 8), np.float32)     # (B, h, L_q, d_k)
    >>> k = np.ones((2, 4, 7, 8), np.float32)     # (B, h, L_k, d_k)
    >>> v = np.ones((2, 4, 7, 3), np.float32)     # (B, h, L_k, d_v)
    >>> sdpa(q, k, v, is_causal=True).shape
    (2, 4, 5, 3)
    >>> gq, gk, gv = sdpa.backward(np.ones((2, 4, 5, 3), np.float32))
    """

    _TRANSIENT = {"_work": lambda: Workspace(_WORKSPACE_MAX_BYTES)}

    def __init__(self, dropout: float = 0.0, *, dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self.dropout = check_probability(dropout, "dropout")
        self._work = Workspace(_WORKSPACE_MAX_BYTES)

    def forward(self, query: ArrayLike, key: ArrayLike, value: ArrayLike,
                mask: ArrayLike | None = None, is_causal: bool = False, scale: float | None = None,
                return_weights: bool = False, window: int | tuple[int, int] | None = None,
                global_tokens: ArrayLike = ()) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Attend ``query`` to ``key``/``value``.

        Parameters
        ----------
        query : array ``[..., L_q, d_k]``
        key : array ``[..., L_k, d_k]``
        value : array ``[..., L_k, d_v]``
        mask : bool or float array broadcastable to ``[..., L_q, L_k]``, optional
        is_causal : bool
            Bottom-right aligned causal mask, combined with ``mask`` (logical AND).
        scale : float, optional
            Multiplies ``Q K^T``; default ``1/sqrt(d_k)``.
        return_weights : bool
            Also return the attention weights ``[..., L_q, L_k]``.
        window : int or (int, int), optional
            Sliding window, combined with ``mask`` and ``is_causal`` (logical AND) and
            aligned bottom-right like ``is_causal`` (query ``i`` stands at position
            ``p = i + L_k - L_q``).  An int ``w >= 1``: the causal band ``p - w < j <=
            p`` (``create_sliding_window_mask(L, w)``).  A pair ``(left, right)`` of
            ints ``>= 0``: ``p - left <= j <= p + right``
            (``create_sliding_window_mask(L, w, causal=False)`` is ``(w // 2, w //
            2)``).  Only the score tiles the band reaches are computed, forward and
            backward, and no ``[L_q, L_k]`` mask is built: time and memory grow as
            ``L * w``.  Windowed calls take the tiled kernel at every length (so
            dropout uses its counter-based mask); with ``return_weights`` the band
            is applied as a dense mask.  When the call keeps its cache for a
            backward, its output is read-only: the backward reads it, and a private
            copy would double the memory the window saves.
        global_tokens : sequence of int
            With ``window``: key positions in ``[0, L_k)`` that every query attends
            to and whose queries (at the same position) attend to every key
            (Longformer; ``create_local_attention_mask``).

        Returns
        -------
        output : ndarray ``[..., L_q, d_v]``
        weights : ndarray ``[..., L_q, L_k]``, only if ``return_weights``
        """
        dt = self.dtype
        q = as_float_array(query, "query", dt, min_ndim=2)
        k = as_float_array(key, "key", dt, min_ndim=2)
        v = as_float_array(value, "value", dt, min_ndim=2)
        if q.shape[-1] != k.shape[-1]:
            raise ValueError(
                f"key.shape[-1] must equal query.shape[-1] (d_k): expected {q.shape[-1]}, "
                f"got {k.shape[-1]}"
            )
        if v.shape[-2] != k.shape[-2]:
            raise ValueError(
                f"value.shape[-2] must equal key.shape[-2] (L_k): expected {k.shape[-2]}, "
                f"got {v.shape[-2]}"
            )
        try:
            lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        except ValueError:
            raise ValueError(
                "leading dims of query, key and value must broadcast: got "
                f"{q.shape[:-2]}, {k.shape[:-2]}, {v.shape[:-2]}"
            ) from None
        L_q, L_k, d_k = q.shape[-2], k.shape[-2], q.shape[-1]
        if scale is None:
            scale = 1.0 / np.sqrt(d_k) if d_k > 0 else 1.0
        kind, m = as_mask(mask, "mask", dt)
        causal_offset = (L_k - L_q) if is_causal else None
        band = _band(window, global_tokens, L_q, L_k)
        if band is not None and not _k.use_flash(return_weights, lead, L_q, L_k, d_k,
                                                 v.shape[-1], windowed=True):
            # the weights (or an empty result) are [L_q, L_k] anyway: a dense band
            kind, m = _and_mask(kind, m, band_mask(L_q, L_k, *band), dt)
            band = None
        if band is not None or _k.use_flash(return_weights, lead, L_q, L_k, d_k,
                                            v.shape[-1]):
            key = None
            if self.training and self.dropout > 0.0:
                key = dropout_key(self.rng, self.dropout)
            out, flash = _k.flash_forward(q, k, v, lead, kind, m, causal_offset,
                                        dt.type(scale), key, self.keeps_cache(), band)
            self._save_cache(_SDPACache(out.shape, flash=flash))
            return out
        if _k.use_fused(self, lead, L_q, L_k, d_k, v.shape[-1]):
            shape = lead + (L_q, L_k)
            keeps = self.keeps_cache()
            if not keeps:                       # inference: nothing pinned between calls
                self._work.clear()
            # the fused backward overwrites the probabilities with dS: a buffer the
            # caller does not receive comes from the workspace and goes back after it
            reuse = keeps and not return_weights
            probs = self._work.take("probs", shape, dt) if reuse else np.empty(shape, dt)
            out, weights, fused = _k.fused_forward(
                q, k, v, lead, kind, m, causal_offset, dt.type(scale), return_weights, probs)
            self._save_cache(_SDPACache(out.shape, fused=fused,
                                        spare=probs if reuse else None))
        else:
            out, weights, generic = self._generic_forward(
                q, k, v, lead, kind, m, causal_offset, dt.type(scale))
            self._save_cache(_SDPACache(out.shape, generic=generic))
        if return_weights:
            return out, weights
        return out

    def _generic_forward(self, q, k, v, lead, kind, m, causal_offset, scale):
        """NumPy matmuls around the masked-softmax kernel (handles dropout, empty dims)."""
        dt = self.dtype
        L_q, L_k = q.shape[-2], k.shape[-2]
        scores = np.matmul(q, np.swapaxes(k, -1, -2))          # (..., L_q, L_k)
        if scores.shape != lead + (L_q, L_k):
            scores = np.broadcast_to(scores, lead + (L_q, L_k))
        scores = np.ascontiguousarray(scores, dtype=dt)
        probs = _k.masked_softmax(scores, scale, kind, m, causal_offset)
        keep = None
        applied = probs
        if self.training and self.dropout > 0.0:
            keep = self.rng.random(probs.shape) >= self.dropout
            applied = probs * keep * dt.type(1.0 / (1.0 - self.dropout))
        out = np.matmul(applied, v)                              # (..., L_q, d_v)
        return out, applied, _GenericCache(q, k, v, probs, applied, keep, scale)

    def backward(self, grad_output: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Gradients ``(grad_query, grad_key, grad_value)``, each shaped like its input.

        ``grad_output`` is validated before the forward cache is consumed, so a
        corrected retry after a ValueError / TypeError still works."""
        g = check_grad_output(grad_output, self._peek_cache().out_shape, self.dtype)
        cache = self._pop_cache()
        if cache.fused is not None:
            grads = _k.fused_backward(cache.fused, g, self.dtype)
            if cache.spare is not None:
                self._work.give("probs", cache.spare)
            return grads
        if cache.flash is not None:
            return _k.flash_backward(cache.flash, g, self.dtype)
        c = cache.generic
        q, k, v, probs, applied, keep, scale = (c.q, c.k, c.v, c.probs, c.applied, c.keep,
                                                c.scale)
        grad_v = np.matmul(np.swapaxes(applied, -1, -2), g)     # (..., L_k, d_v)
        grad_p = np.matmul(g, np.swapaxes(v, -1, -2))           # (..., L_q, L_k)
        if keep is not None:
            grad_p = grad_p * keep * self.dtype.type(1.0 / (1.0 - self.dropout))
        grad_s = _k.softmax_backward(probs, grad_p, scale)        # includes the scale
        grad_q = np.matmul(grad_s, k)                           # (..., L_q, d_k)
        grad_k = np.matmul(np.swapaxes(grad_s, -1, -2), q)      # (..., L_k, d_k)
        return (_k.reduce_to(grad_q, q.shape), _k.reduce_to(grad_k, k.shape),
                _k.reduce_to(grad_v, v.shape))


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

from .. import _parallel
from .._kernels import _attention as _kattn
from .._kernels import _flash_attention as _kflash
from .._kernels import _softmax as _ksoftmax
from .._validation import (as_float_array, as_mask, broadcasts_to, check_grad_output,
                           check_probability)
from .._dropout import dropout_key
from ..module import Module, NoBackward

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import ArrayLike, DTypeLike, RNGLike

__all__ = ["softmax", "ScaledDotProductAttention", "scaled_dot_product_attention"]

def _mask_layout(mask_kind, mask, score_shape, dtype):
    """``mask`` as the kernels read it: None, or ``(buffer, offsets, row stride, col
    stride)`` with ``offsets [prod(score_shape[:-2])]`` the element offset of each
    slab's mask.

    The mask is made contiguous in its *own* shape (no expansion to the score
    shape); broadcasting is expressed by zero strides.  A bool mask crosses as uint8.
    """
    if mask_kind is None:
        return None
    if not broadcasts_to(mask.shape, score_shape):
        raise ValueError(
            f"mask must broadcast to the attention score shape {tuple(score_shape)} "
            f"([..., L_q, L_k]), got shape {tuple(mask.shape)}"
        )
    if mask_kind == "bool":
        buf = np.ascontiguousarray(mask).view(np.uint8)
    else:
        buf = np.ascontiguousarray(mask, dtype=dtype)
    view = np.broadcast_to(buf, score_shape)
    strides = [s // buf.itemsize for s in view.strides]
    lead = score_shape[:-2]
    off = np.zeros(lead, dtype=np.intp)
    for d, (n, st) in enumerate(zip(lead, strides[:-2])):
        if st:
            shape = [1] * len(lead)
            shape[d] = n
            off = off + (np.arange(n, dtype=np.intp) * st).reshape(shape)
    off = np.ascontiguousarray(np.broadcast_to(off, lead).reshape(-1), dtype=np.intp)
    return buf.reshape(-1), off, strides[-2], strides[-1]


def _masked_softmax(scores, scale, mask_kind, mask, causal_offset=None):
    """Softmax over the last axis of ``scale * scores`` (+mask), via the Cython kernel.

    ``scores`` is C-contiguous ``[..., R, N]`` of float32/float64 and is not modified.
    ``causal_offset``: keep only keys ``j <= i + causal_offset`` (None: no causal part).
    """
    shape = scores.shape
    R, N = shape[-2], shape[-1]
    x3 = scores.reshape(int(np.prod(shape[:-2], dtype=np.int64)), R, N)   # (no -1: may be empty)
    out = np.empty_like(x3)
    _ksoftmax.softmax_forward(x3, out, scores.dtype.type(scale),
                              mask=_mask_layout(mask_kind, mask, shape, scores.dtype),
                              causal_offset=causal_offset)
    return out.reshape(shape)


def _softmax_backward(probs, grad_probs, scale):
    """``scale * P * (dP - rowsum(dP * P))`` for C-contiguous ``[..., N]`` arrays."""
    N = probs.shape[-1]
    rows = int(np.prod(probs.shape[:-1], dtype=np.int64))      # (no -1: may be empty)
    gp = np.ascontiguousarray(grad_probs, dtype=probs.dtype)
    out = np.empty_like(probs)
    _ksoftmax.softmax_backward(probs.reshape(rows, N), gp.reshape(rows, N),
                               out.reshape(rows, N), probs.dtype.type(scale))
    return out


# ---------------------------------------------------------------- fused path --
# Query-row block of the fused kernel (rows of S / P kept hot in L2 between the
# score GEMM, the softmax and the P V GEMM) and key block of the dK / dV GEMMs.
# With is_causal they are also the granularity of the skipped upper triangle.
_BLOCK_Q = None             # None: chosen by _blocks(); an int forces it (tuning)
_BLOCK_K = None
_FUSED_ENABLED = True        # tests flip this to compare with the generic path
_WORKSPACE_MAX_BYTES = 128 << 20   # a module keeps its probabilities buffer up to this


def _blocks(L_q, L_k, d_k, d_v):
    """Query / key block sizes.

    OpenBLAS multiplies matrices with ``m * n * k <= 1e6`` by unpacked "small
    matrix" kernels, faster than its packed path at these sizes.  The blocks are the
    largest of 32, 24, 16, 8, 4 rows that keep every GEMM of a slab (``block x L x d``)
    under that bound; they also make the causal staircase fine-grained.  Beyond
    (``L * d > 2.5e5``) 64-row blocks on the packed path are used
    (docs/performance.md has the measurements).
    """
    b = 1_000_000 // (max(L_q, L_k) * max(d_k, d_v))
    if b >= 16:
        b = min(32, b - b % 8)
    elif b >= 4:
        b = 8 if b >= 8 else 4
    else:
        b = 64
    return (_BLOCK_Q or b), (_BLOCK_K or b)


def _use_fused(module, lead, L_q, L_k, d_k, d_v):
    """The fused kernel handles everything except dropout and empty dims."""
    if not _FUSED_ENABLED or (module.training and module.dropout > 0.0):
        return False
    if min(L_q, L_k, d_k, d_v) < 1 or 0 in lead or len(lead) > 4:
        return False
    return max(L_q, L_k) * max(L_q, L_k, d_k, d_v) < 2 ** 31


# Copy inputs whose rows are not contiguous (e.g. heads split from a [B, L, h*d_k]
# projection by a transpose) into compact slabs first: the kernel could read them in
# place, but the small-matrix GEMMs stream adjacent rows faster (docs/performance.md).
_COPY_STRIDED_ROWS = True


def _kernel_view(a):
    """``a [..., L, d]`` as the kernel's 6-D view ``[1.., lead.., L, d]``.

    No copy when its rows are contiguous and its lead strides non-negative multiples
    of the item size (any lead layout, zero strides of broadcast views included);
    otherwise a C-contiguous copy in its own shape (never expanded to the broadcast
    shape)."""
    isz = a.itemsize
    row_ok = a.shape[-2] <= 1 or (a.strides[-2] == a.shape[-1] * isz if _COPY_STRIDED_ROWS
                                  else a.strides[-2] >= a.shape[-1] * isz)
    ok = (row_ok and (a.shape[-1] <= 1 or a.strides[-1] == isz)
          and all(st >= 0 and st % isz == 0 for st in a.strides))
    if not ok:
        a = np.ascontiguousarray(a)
    return a.reshape((1,) * (6 - a.ndim) + a.shape)


def _broadcasts(shape6, lead4):
    return any(n == 1 and m > 1 for n, m in zip(shape6[:4], lead4))


def _split(P, parts):
    """``parts`` contiguous slab ranges covering ``[0, P)``."""
    return _parallel.split(P, parts)


# Slabs are split over up to this many threads of nn_core's pool, each running the
# nogil kernel with single-threaded BLAS.  None: the thread budget
# (:func:`nn_core._parallel.blas_threads`).
_MAX_WORKERS = None
_MIN_WORK_PER_THREAD = 2_000_000      # multiply-adds; below this a thread costs more


def _n_workers(P, work=None):
    """Threads to split ``P`` slabs over (1 = run in the calling thread only)."""
    n = _MAX_WORKERS if _MAX_WORKERS is not None else _parallel.blas_threads()
    if work is not None:
        n = min(n, work // _MIN_WORK_PER_THREAD)
    return int(max(1, min(n, P)))


def _run_tasks(work, n):
    """``work(t)`` for ``t < n`` on nn_core's threads, BLAS on one thread each (the
    parallelism comes from the slabs, as in PyTorch's CPU attention)."""
    _parallel.run_tasks(work, n)


def _run(fn, P, work=None):
    ranges = _split(P, _n_workers(P, work))
    _run_tasks(lambda t: fn(*ranges[t]), len(ranges))


def _fused_forward(q, k, v, lead, kind, m, causal_offset, scale, return_weights,
                   workspace):
    """Forward through ``_kernels._attention``; returns ``(out, probs, cache)``.

    ``workspace(shape)`` returns the buffer for the probabilities (a module reuses
    one across calls unless the caller keeps the weights)."""
    dt = q.dtype
    L_q, d_k, L_k, d_v = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    P = int(np.prod(lead, dtype=np.int64))
    q6, k6, v6 = (_kernel_view(a) for a in (q, k, v))       # own shapes, no expansion
    out = np.empty(lead + (L_q, d_v), dtype=dt)                 # (..., L_q, d_v)
    probs = workspace(lead + (L_q, L_k))                        # (..., L_q, L_k)
    bq, bk = _blocks(L_q, L_k, d_k, d_v)
    # dS overwrites P in the backward (the cache is consumed) unless the caller holds P
    call = _kattn.SdpaCall(q6, k6, v6, probs.reshape(P, L_q, L_k), scale,
                           mask=_mask_layout(kind, m, lead + (L_q, L_k), dt),
                           causal_offset=causal_offset, block_q=bq, block_k=bk,
                           keep_probs=return_weights)
    out3 = out.reshape(P, L_q, d_v)
    _run(lambda p0, p1: _kattn.sdpa_forward(call, out3, p0, p1), P,
         P * L_q * L_k * (d_k + d_v))
    return out, probs, _FusedCache(q6, k6, v6, call, q.shape, k.shape, v.shape)


@dataclass
class _FusedCache:
    q6: np.ndarray          # the inputs as the kernel's 6-D views (own shapes)
    k6: np.ndarray
    v6: np.ndarray
    call: object            # the checked kernel call, holding the probabilities
    q_shape: tuple
    k_shape: tuple
    v_shape: tuple


def _fused_backward(cache, g, dt):
    """Backward through ``_kernels._attention`` from a checked ``g`` of the output's shape."""
    q6, k6, v6, call = cache.q6, cache.k6, cache.v6, cache.call
    L_q, d_k, L_k, d_v = call.L_q, call.d_k, call.L_k, call.d_v
    g6 = _kernel_view(g)
    P = call.slabs
    ranges = _split(P, _n_workers(P, 2 * P * L_q * L_k * (d_k + d_v)))
    # gradients are C-contiguous in the inputs' own (6-D padded) shapes; one that
    # broadcasts is accumulated into (zeroed), worker t > 0 into its own buffer
    acc = [_broadcasts(a.shape, call.lead) for a in (q6, k6, v6)]
    shared = [np.zeros(a.shape, dt) if b else np.empty(a.shape, dt)
              for a, b in zip((q6, k6, v6), acc)]
    bufs = [shared] + [[np.zeros(a.shape, dt) if b else s
                        for a, b, s in zip((q6, k6, v6), acc, shared)]
                       for _ in range(1, len(ranges))]

    def work(t):
        _kattn.sdpa_backward(call, g6, *bufs[t], *ranges[t])

    _run_tasks(work, len(ranges))
    for t in range(1, len(ranges)):
        for i in range(3):
            if acc[i]:
                shared[i] += bufs[t][i]
    gq, gk, gv = shared
    return gq.reshape(cache.q_shape), gk.reshape(cache.k_shape), gv.reshape(cache.v_shape)


# ---------------------------------------------------------------- tiled path --
# The tiled ("flash") kernel keeps one log-sum-exp per query row instead of the
# [L_q, L_k] probabilities: memory O(L) per slab, the probabilities recomputed tile by
# tile in the backward.  It replaces the fused kernel when a slab has at least
# _FLASH_MIN_SCORES scores (L_q * L_k) and _FLASH_MIN_ROWS query rows (decoding, one
# row at a time, keeps the fused kernel); below, keeping the probabilities is faster
# (docs/performance.md).  Tests set both to 0 to run it at small sizes.
_FLASH_MIN_SCORES = 384 * 384
_FLASH_MIN_ROWS = 16
_FLASH_BLOCK_Q = 128         # query rows of a score tile
_FLASH_BLOCK_K = 512         # keys of a score tile


def _use_flash(return_weights, lead, L_q, L_k, d_k, d_v):
    """The tiled kernel: long enough, no weights asked for, non-empty dims."""
    if return_weights or L_q * L_k < _FLASH_MIN_SCORES or L_q < _FLASH_MIN_ROWS:
        return False
    if min(L_q, L_k, d_k, d_v) < 1 or 0 in lead or len(lead) > 4:
        return False
    return max(L_q, L_k) * max(d_k, d_v) < 2 ** 31


@dataclass
class _FlashCache:
    q6: np.ndarray          # the inputs as the kernel's 6-D views (own shapes)
    k6: np.ndarray
    v6: np.ndarray
    call: object            # the checked kernel call
    out: np.ndarray         # [P, L_q, d_v], a private copy of the output
    lse: np.ndarray         # [P, L_q] log-sum-exp per query row (+inf: no allowed key)
    lead: tuple
    q_shape: tuple
    k_shape: tuple
    v_shape: tuple


def _flash_tasks(P, L):
    """One task per slab, ``(p, 0, L)``: the split over threads only decides which
    thread runs a slab, so results do not depend on the thread count."""
    t = np.zeros((P, 3), dtype=np.intp)
    t[:, 0] = np.arange(P)
    t[:, 2] = L
    return t


def _flash_forward(q, k, v, lead, kind, m, causal_offset, scale, dropout_key, keep):
    """Forward through the tiled kernel; returns ``(out, cache)``.

    ``dropout_key``: None or ``(k0, k1, threshold, scale)`` of the counter-based mask
    over the flat ``[P, L_q, L_k]`` weights (``nn_core._dropout.dropout_key``).
    ``keep``: the cache will be kept for a backward (else the output is not copied)."""
    dt = q.dtype
    L_q, d_k, L_k, d_v = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    P = int(np.prod(lead, dtype=np.int64))
    q6, k6, v6 = (_kernel_view(a) for a in (q, k, v))       # own shapes, no expansion
    call = _kflash.FlashCall(q6, k6, v6, scale,
                            mask=_mask_layout(kind, m, lead + (L_q, L_k), dt),
                            causal_offset=causal_offset, dropout=dropout_key)
    out3 = np.empty((P, L_q, d_v), dtype=dt)                    # (P, L_q, d_v)
    lse = np.empty((P, L_q), dtype=dt)                          # (P, L_q)
    tasks = _flash_tasks(P, L_q)
    _run(lambda t0, t1: _kflash.flash_forward(call, out3, lse, tasks, t0, t1,
                                             _FLASH_BLOCK_Q, _FLASH_BLOCK_K),
         P, P * L_q * L_k * (d_k + d_v))
    # the backward reads O: keep a copy the caller cannot modify
    cache = _FlashCache(q6, k6, v6, call, out3.copy() if keep else out3, lse, lead,
                        q.shape, k.shape, v.shape)
    return out3.reshape(lead + (L_q, d_v)), cache


def _flash_backward(cache, g, dt):
    """Backward through the tiled kernel from a checked ``g`` of the output's shape.

    Gradients are computed per slab (``[P, L, d]``) and then summed over the lead
    dims an input was broadcast along, so the sum order never depends on threads."""
    call, lead = cache.call, cache.lead
    L_q, d_k, L_k, d_v = call.L_q, call.d_k, call.L_k, call.d_v
    P = call.slabs
    g6 = _kernel_view(g)
    gq = np.zeros((P, L_q, d_k), dtype=dt)          # added to, slab by slab
    gk = np.empty((P, L_k, d_k), dtype=dt)
    gv = np.empty((P, L_k, d_v), dtype=dt)
    tasks = _flash_tasks(P, L_k)
    _run(lambda t0, t1: _kflash.flash_backward(call, cache.out, cache.lse, g6, gq, gk, gv,
                                              tasks, t0, t1, _FLASH_BLOCK_Q,
                                              _FLASH_BLOCK_K),
         P, 2 * P * L_q * L_k * (d_k + d_v))
    return (_reduce_to(gq.reshape(lead + (L_q, d_k)), cache.q_shape),
            _reduce_to(gk.reshape(lead + (L_k, d_k)), cache.k_shape),
            _reduce_to(gv.reshape(lead + (L_k, d_v)), cache.v_shape))


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
    fused: _FusedCache | None = None
    generic: _GenericCache | None = None
    flash: _FlashCache | None = None


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
    out = _masked_softmax(moved, 1.0, kind, m)[..., 0, :]
    return np.moveaxis(out, -1, axis)


def _reduce_to(grad, shape):
    """Sum ``grad`` over the dims along which an input of ``shape`` was broadcast."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    g = grad.sum(axis=tuple(range(extra))) if extra else grad
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


def scaled_dot_product_attention(query, key, value, mask=None, is_causal=False, scale=None,
                                 dropout_p=0.0, rng=None, dtype=None):
    """Functional SDPA (no dropout unless ``dropout_p`` and ``rng`` are given).

    Same arguments and result as :meth:`ScaledDotProductAttention.forward`; returns
    the output only.
    """
    if dtype is None:
        dtype = np.float32 if np.asarray(query).dtype == np.float32 else np.float64
    mod = ScaledDotProductAttention(dropout=dropout_p, dtype=dtype, rng=rng)
    return mod.forward(query, key, value, mask=mask, is_causal=is_causal, scale=scale)


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
    a slab has ``L_q * L_k >= _FLASH_MIN_SCORES`` scores (and at least
    ``_FLASH_MIN_ROWS`` query rows; decoding keeps the fused kernel), and the weights
    are not asked for, the tiled kernel runs instead (FlashAttention, Dao et al.,
    2022): an online softmax over query x key tiles that keeps only the output and
    one log-sum-exp per query row, and recomputes the probabilities tile by tile in
    the backward -- O(L) memory, the causal upper triangle skipped in both passes.
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

    _TRANSIENT = {"_ws": None}

    def __init__(self, dropout: float = 0.0, *, dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self.dropout = check_probability(dropout, "dropout")

    def forward(self, query: ArrayLike, key: ArrayLike, value: ArrayLike,
                mask: ArrayLike | None = None, is_causal: bool = False, scale: float | None = None,
                return_weights: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
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
        if _use_flash(return_weights, lead, L_q, L_k, d_k, v.shape[-1]):
            key = None
            if self.training and self.dropout > 0.0:
                key = dropout_key(self.rng, self.dropout)
            out, flash = _flash_forward(q, k, v, lead, kind, m, causal_offset,
                                        dt.type(scale), key, self.keeps_cache())
            self._save_cache(_SDPACache(out.shape, flash=flash))
            return out
        if _use_fused(self, lead, L_q, L_k, d_k, v.shape[-1]):
            keeps = self.keeps_cache()
            if not keeps:                       # inference: nothing pinned between calls
                self._ws = None
            probs = self._probs_workspace if keeps and not return_weights else self._fresh_probs
            out, weights, fused = _fused_forward(
                q, k, v, lead, kind, m, causal_offset, dt.type(scale), return_weights, probs)
            self._save_cache(_SDPACache(out.shape, fused=fused))
        else:
            out, weights, generic = self._generic_forward(
                q, k, v, lead, kind, m, causal_offset, dt.type(scale))
            self._save_cache(_SDPACache(out.shape, generic=generic))
        if return_weights:
            return out, weights
        return out

    def _fresh_probs(self, shape):
        return np.empty(shape, dtype=self.dtype)

    def _probs_workspace(self, shape):
        """The probabilities buffer, reused across calls when nobody else holds it.

        The fused backward overwrites it with ``dS``; while another forward's cache is
        pending (a module applied twice before its backwards) a fresh buffer is used."""
        if any(not isinstance(c, NoBackward) for _, c in self._stack):
            return np.empty(shape, dtype=self.dtype)
        ws = getattr(self, "_ws", None)
        if ws is None or ws.shape != shape or ws.dtype != self.dtype:
            self._ws = None
            ws = np.empty(shape, dtype=self.dtype)
            if ws.nbytes <= _WORKSPACE_MAX_BYTES:      # don't pin huge buffers
                self._ws = ws
        return ws

    def _generic_forward(self, q, k, v, lead, kind, m, causal_offset, scale):
        """NumPy matmuls around the masked-softmax kernel (handles dropout, empty dims)."""
        dt = self.dtype
        L_q, L_k = q.shape[-2], k.shape[-2]
        scores = np.matmul(q, np.swapaxes(k, -1, -2))          # (..., L_q, L_k)
        if scores.shape != lead + (L_q, L_k):
            scores = np.broadcast_to(scores, lead + (L_q, L_k))
        scores = np.ascontiguousarray(scores, dtype=dt)
        probs = _masked_softmax(scores, scale, kind, m, causal_offset)
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
        cache = self._peek_cache()
        return self._backward(check_grad_output(grad_output, cache.out_shape, self.dtype))

    def _backward(self, g):
        """Backward from a checked ``g`` of the output's shape (consumes the cache)."""
        cache = self._pop_cache()
        if cache.fused is not None:
            return _fused_backward(cache.fused, g, self.dtype)
        if cache.flash is not None:
            return _flash_backward(cache.flash, g, self.dtype)
        c = cache.generic
        q, k, v, probs, applied, keep, scale = (c.q, c.k, c.v, c.probs, c.applied, c.keep,
                                                c.scale)
        grad_v = np.matmul(np.swapaxes(applied, -1, -2), g)     # (..., L_k, d_v)
        grad_p = np.matmul(g, np.swapaxes(v, -1, -2))           # (..., L_q, L_k)
        if keep is not None:
            grad_p = grad_p * keep * self.dtype.type(1.0 / (1.0 - self.dropout))
        grad_s = _softmax_backward(probs, grad_p, scale)        # includes the scale
        grad_q = np.matmul(grad_s, k)                           # (..., L_q, d_k)
        grad_k = np.matmul(np.swapaxes(grad_s, -1, -2), q)      # (..., L_k, d_k)
        return (_reduce_to(grad_q, q.shape), _reduce_to(grad_k, k.shape),
                _reduce_to(grad_v, v.shape))

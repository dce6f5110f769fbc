"""The paths of scaled dot-product attention over the compiled kernels (private).

:class:`~nn_core.attention.ScaledDotProductAttention` picks one path per call and
keeps its cache; this module builds the kernels' buffers and views, validates once,
and splits the (batch, head) slabs over nn_core's threads:

* the fused kernel (``_kernels._attention``): probabilities kept for the backward,
  blocked, causal blocks skipped (:func:`fused_forward`, :func:`fused_backward`);
* the tiled kernel (``_kernels._flash_attention``) for long sequences: one
  log-sum-exp per query row, probabilities recomputed in the backward
  (:func:`flash_forward`, :func:`flash_backward`);
* the masked-softmax kernel (``_kernels._softmax``) under the NumPy path that handles
  dropout on short sequences and empty dims (:func:`masked_softmax`,
  :func:`softmax_backward`).

The module-level switches (``FUSED_ENABLED``, ``FLASH_MIN_SCORES``, block sizes,
``MAX_WORKERS``) are tuning and test hooks.  The equations are in
:mod:`nn_core.attention.scaled_dot_product`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _parallel
from .._kernels import _attention as _kattn
from .._kernels import _flash_attention as _kflash
from .._kernels import _softmax as _ksoftmax
from .._validation import broadcasts_to

__all__ = ["FUSED_ENABLED", "OWN_GEMM", "own_gemm", "FLASH_MIN_SCORES", "FLASH_MIN_ROWS", "mask_layout",
           "masked_softmax", "softmax_backward", "use_fused", "fused_forward",
           "fused_backward", "use_flash", "flash_forward", "flash_backward", "reduce_to",
           "FusedCache", "FlashCache"]


def mask_layout(mask_kind, mask, score_shape, dtype):
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


def masked_softmax(scores, scale, mask_kind, mask, causal_offset=None):
    """Softmax over the last axis of ``scale * scores`` (+mask), via the Cython kernel.

    ``scores`` is C-contiguous ``[..., R, N]`` of float32/float64 and is not modified.
    ``causal_offset``: keep only keys ``j <= i + causal_offset`` (None: no causal part).
    """
    shape = scores.shape
    R, N = shape[-2], shape[-1]
    x3 = scores.reshape(int(np.prod(shape[:-2], dtype=np.int64)), R, N)   # (no -1: may be empty)
    out = np.empty_like(x3)
    _ksoftmax.softmax_forward(x3, out, scores.dtype.type(scale),
                              mask=mask_layout(mask_kind, mask, shape, scores.dtype),
                              causal_offset=causal_offset)
    return out.reshape(shape)


def softmax_backward(probs, grad_probs, scale):
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
BLOCK_Q = None             # None: chosen by blocks(); an int forces it (tuning)
BLOCK_K = None
FUSED_ENABLED = True        # tests flip this to compare with the generic path


OWN_BLOCK = 32              # query / key rows of a block on the micro-kernels


def blocks(L_q, L_k, d_k, d_v, own=False):
    """Query / key block sizes.

    On the attention micro-kernels (``own``) every product is fast at any size:
    ``OWN_BLOCK`` rows, which keep a block of ``P`` in L2 at L = 512.  OpenBLAS multiplies matrices with ``m * n * k <= 1e6`` by unpacked "small
    matrix" kernels, faster than its packed path at these sizes.  The blocks are the
    largest of 32, 24, 16, 8, 4 rows that keep every GEMM of a slab (``block x L x d``)
    under that bound; they also make the causal staircase fine-grained.  Beyond
    (``L * d > 2.5e5``) 64-row blocks on the packed path are used
    (docs/performance.md has the measurements).
    """
    b = 1_000_000 // (max(L_q, L_k) * max(d_k, d_v))
    if own:
        b = OWN_BLOCK
    elif b >= 16:
        b = min(32, b - b % 8)
    elif b >= 4:
        b = 8 if b >= 8 else 4
    else:
        b = 64
    return (BLOCK_Q or b), (BLOCK_K or b)


# The products on the attention micro-kernels (``_attn_gemm.h``) or on OpenBLAS.
OWN_GEMM = None             # None: chosen by own_gemm(); True / False force it (tests)
OWN_GEMM_MAX_D = 128


# With at most this many query rows (KV-cache decoding) and the micro-kernels, the
# forward's scores are dot products with K's rows: no K^T stored per slab.
SCORES_NT_MAX_ROWS = 4


def own_gemm(L_q, L_k, d_k, d_v):
    """Whether the fused kernel's products run on the attention micro-kernels: for
    head dims up to ``OWN_GEMM_MAX_D`` (docs/performance.md has the crossover)."""
    if OWN_GEMM is not None:
        return bool(OWN_GEMM)
    return max(d_k, d_v) <= OWN_GEMM_MAX_D


def use_fused(module, lead, L_q, L_k, d_k, d_v):
    """The fused kernel handles everything except dropout and empty dims."""
    if not FUSED_ENABLED or (module.training and module.dropout > 0.0):
        return False
    if min(L_q, L_k, d_k, d_v) < 1 or 0 in lead or len(lead) > 4:
        return False
    return max(L_q, L_k) * max(L_q, L_k, d_k, d_v) < 2 ** 31


# Copy inputs whose rows are not contiguous (e.g. heads split from a [B, L, h*d_k]
# projection by a transpose) into compact slabs first: the kernel could read them in
# place, but the small-matrix GEMMs stream adjacent rows faster (docs/performance.md).
COPY_STRIDED_ROWS = True


def kernel_view(a):
    """``a [..., L, d]`` as the kernel's 6-D view ``[1.., lead.., L, d]``.

    No copy when its rows are contiguous and its lead strides non-negative multiples
    of the item size (any lead layout, zero strides of broadcast views included);
    otherwise a C-contiguous copy in its own shape (never expanded to the broadcast
    shape)."""
    isz = a.itemsize
    row_ok = a.shape[-2] <= 1 or (a.strides[-2] == a.shape[-1] * isz if COPY_STRIDED_ROWS
                                  else a.strides[-2] >= a.shape[-1] * isz)
    ok = (row_ok and (a.shape[-1] <= 1 or a.strides[-1] == isz)
          and all(st >= 0 and st % isz == 0 for st in a.strides))
    if not ok:
        dense = np.empty(a.shape, a.dtype)
        _parallel.copy(dense, a)
        a = dense
    return a.reshape((1,) * (6 - a.ndim) + a.shape)


def _broadcasts(shape6, lead4):
    return any(n == 1 and m > 1 for n, m in zip(shape6[:4], lead4))


def _split(P, parts):
    """``parts`` contiguous slab ranges covering ``[0, P)``."""
    return _parallel.split(P, parts)


# Slabs are split over up to this many threads of nn_core's pool, each running the
# nogil kernel with single-threaded BLAS.  None: the thread budget
# (:func:`nn_core._parallel.blas_threads`).
MAX_WORKERS = None
MIN_WORK_PER_THREAD = 2_000_000      # multiply-adds; below this a thread costs more


def _n_workers(P, work=None):
    """Threads to split ``P`` slabs over (1 = run in the calling thread only)."""
    n = MAX_WORKERS if MAX_WORKERS is not None else _parallel.blas_threads()
    if work is not None:
        n = min(n, work // MIN_WORK_PER_THREAD)
    return int(max(1, min(n, P)))


def _run_tasks(work, n):
    """``work(t)`` for ``t < n`` on nn_core's threads, BLAS on one thread each (the
    parallelism comes from the slabs, as in PyTorch's CPU attention)."""
    _parallel.run_tasks(work, n)


def _run(fn, P, work=None):
    ranges = _split(P, _n_workers(P, work))
    _run_tasks(lambda t: fn(*ranges[t]), len(ranges))


def fused_forward(q, k, v, lead, kind, m, causal_offset, scale, return_weights, probs):
    """Forward through ``_kernels._attention``; returns ``(out, probs, cache)``.

    ``probs``: the ``[..., L_q, L_k]`` buffer the probabilities are written to (the
    backward overwrites it with ``dS`` unless ``return_weights``)."""
    dt = q.dtype
    L_q, d_k, L_k, d_v = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    P = int(np.prod(lead, dtype=np.int64))
    q6, k6, v6 = (kernel_view(a) for a in (q, k, v))       # own shapes, no expansion
    out = np.empty(lead + (L_q, d_v), dtype=dt)                 # (..., L_q, d_v)
    own = own_gemm(L_q, L_k, d_k, d_v)
    bq, bk = blocks(L_q, L_k, d_k, d_v, own)
    # dS overwrites P in the backward (the cache is consumed) unless the caller holds P
    call = _kattn.SdpaCall(q6, k6, v6, probs.reshape(P, L_q, L_k), scale,
                           mask=mask_layout(kind, m, lead + (L_q, L_k), dt),
                           causal_offset=causal_offset, block_q=bq, block_k=bk,
                           keep_probs=return_weights,
                           own_gemm=own, scores_nt=own and L_q <= SCORES_NT_MAX_ROWS)
    out3 = out.reshape(P, L_q, d_v)
    _run(lambda p0, p1: _kattn.sdpa_forward(call, out3, p0, p1), P,
         P * L_q * L_k * (d_k + d_v))
    return out, probs, FusedCache(q6, k6, v6, call, q.shape, k.shape, v.shape)


@dataclass
class FusedCache:
    q6: np.ndarray          # the inputs as the kernel's 6-D views (own shapes)
    k6: np.ndarray
    v6: np.ndarray
    call: object            # the checked kernel call, holding the probabilities
    q_shape: tuple
    k_shape: tuple
    v_shape: tuple


def fused_backward(cache, g, dt):
    """Backward through ``_kernels._attention`` from a checked ``g`` of the output's shape."""
    q6, k6, v6, call = cache.q6, cache.k6, cache.v6, cache.call
    L_q, d_k, L_k, d_v = call.L_q, call.d_k, call.L_k, call.d_v
    g6 = kernel_view(g)
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
# FLASH_MIN_SCORES scores (L_q * L_k) and FLASH_MIN_ROWS query rows (decoding, one
# row at a time, keeps the fused kernel); below, keeping the probabilities is faster
# on the micro-kernels up to L = 512 (docs/performance.md).  Tests set both to 0 to
# run it at small sizes.
FLASH_MIN_SCORES = 640 * 640
FLASH_MIN_ROWS = 16
FLASH_BLOCK_Q = 128         # query rows of a score tile
FLASH_BLOCK_K = 512         # keys of a score tile
# With a window a query block visits about block_q + band keys: smaller tiles waste
# less outside a narrow band (docs/performance.md).
WINDOW_BLOCK_Q = 64
WINDOW_BLOCK_K = 128


def use_flash(return_weights, lead, L_q, L_k, d_k, d_v, windowed=False):
    """The tiled kernel: long enough (or ``windowed``: any length), no weights asked
    for, non-empty dims."""
    if return_weights:
        return False
    if not windowed and (L_q * L_k < FLASH_MIN_SCORES or L_q < FLASH_MIN_ROWS):
        return False
    if min(L_q, L_k, d_k, d_v) < 1 or 0 in lead or len(lead) > 4:
        return False
    return max(L_q, L_k) * max(d_k, d_v) < 2 ** 31


def _flash_blocks(band, L_q, L_k):
    """Tile sizes: the window's smaller tiles when its band is at most a default key
    tile wide."""
    if band is not None and band[0] + band[1] + 1 <= FLASH_BLOCK_K:
        return WINDOW_BLOCK_Q, WINDOW_BLOCK_K
    return FLASH_BLOCK_Q, FLASH_BLOCK_K


def _band_args(band, L_q, L_k):
    """``FlashCall``'s window arguments: the window bounded by what can matter (a
    window beyond ``L_q + L_k`` reaches every key), its offset and the global flags."""
    if band is None:
        return {}
    left, right, gq, gk = band
    big = L_q + L_k
    return {"window": (min(left, big), min(right, big), L_k - L_q),
            "global_q": gq, "global_k": gk}


@dataclass
class FlashCache:
    q6: np.ndarray          # the inputs as the kernel's 6-D views (own shapes)
    k6: np.ndarray
    v6: np.ndarray
    call: object            # the checked kernel call
    out: np.ndarray         # [P, L_q, d_v], a private copy of the output
    lse: np.ndarray         # [P, L_q] log-sum-exp per query row (+inf: no allowed key)
    blocks: tuple           # (block_q, block_k) of the tiles
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


def flash_forward(q, k, v, lead, kind, m, causal_offset, scale, dropout_key, keep,
                  band=None):
    """Forward through the tiled kernel; returns ``(out, cache)``.

    ``dropout_key``: None or ``(k0, k1, threshold, scale)`` of the counter-based mask
    over the flat ``[P, L_q, L_k]`` weights (``nn_core._dropout.dropout_key``).
    ``keep``: the cache will be kept for a backward (else the output is not copied).
    ``band``: None or ``(left, right, gq, gk)``, a window (``masks.window_bounds``) and
    its global rows / keys (``masks.global_flags``); only the tiles it reaches are
    computed."""
    dt = q.dtype
    L_q, d_k, L_k, d_v = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    P = int(np.prod(lead, dtype=np.int64))
    q6, k6, v6 = (kernel_view(a) for a in (q, k, v))       # own shapes, no expansion
    call = _kflash.FlashCall(q6, k6, v6, scale,
                            mask=mask_layout(kind, m, lead + (L_q, L_k), dt),
                            causal_offset=causal_offset, dropout=dropout_key,
                            **_band_args(band, L_q, L_k))
    out3 = np.empty((P, L_q, d_v), dtype=dt)                    # (P, L_q, d_v)
    lse = np.empty((P, L_q), dtype=dt)                          # (P, L_q)
    tasks = _flash_tasks(P, L_q)
    bq, bk = _flash_blocks(band, L_q, L_k)
    _run(lambda t0, t1: _kflash.flash_forward(call, out3, lse, tasks, t0, t1, bq, bk),
         P, P * L_q * L_k * (d_k + d_v))
    # the backward reads O: keep a copy the caller cannot modify; a windowed call,
    # whose memory is meant to stay O(L * w) beyond its results, instead hands out
    # its output read-only and keeps the array itself
    shared = keep and band is not None
    cache = FlashCache(q6, k6, v6, call, out3.copy() if keep and not shared else out3, lse,
                       (bq, bk), lead, q.shape, k.shape, v.shape)
    out = out3.reshape(lead + (L_q, d_v))
    if shared:
        out.flags.writeable = False
    return out, cache


def flash_backward(cache, g, dt):
    """Backward through the tiled kernel from a checked ``g`` of the output's shape.

    Gradients are computed per slab (``[P, L, d]``) and then summed over the lead
    dims an input was broadcast along, so the sum order never depends on threads."""
    call, lead = cache.call, cache.lead
    L_q, d_k, L_k, d_v = call.L_q, call.d_k, call.L_k, call.d_v
    P = call.slabs
    g6 = kernel_view(g)
    gq = np.zeros((P, L_q, d_k), dtype=dt)          # added to, slab by slab
    gk = np.empty((P, L_k, d_k), dtype=dt)
    gv = np.empty((P, L_k, d_v), dtype=dt)
    tasks = _flash_tasks(P, L_k)
    _run(lambda t0, t1: _kflash.flash_backward(call, cache.out, cache.lse, g6, gq, gk, gv,
                                              tasks, t0, t1, *cache.blocks),
         P, 2 * P * L_q * L_k * (d_k + d_v))
    return (reduce_to(gq.reshape(lead + (L_q, d_k)), cache.q_shape),
            reduce_to(gk.reshape(lead + (L_k, d_k)), cache.k_shape),
            reduce_to(gv.reshape(lead + (L_k, d_v)), cache.v_shape))




def reduce_to(grad, shape):
    """Sum ``grad`` over the dims along which an input of ``shape`` was broadcast."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    g = grad.sum(axis=tuple(range(extra))) if extra else grad
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g



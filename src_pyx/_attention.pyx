"""Fused scaled dot-product attention: forward and backward over (batch, head) slabs.

Layout
------
The leading (batch, head, ...) dims (at most 4) are flattened into ``P`` slabs.
Each input comes as a 6-D view ``[l0, l1, l2, l3, L, d]`` in its *own* shape (never
expanded to the broadcast shape): a lead dim of size 1 is broadcast (every slab
reads the same data, e.g. the ``r`` query heads sharing one K/V head in
grouped-query attention), rows may be any distance >= ``d`` apart.  The entry
points derive every slab offset from the views' own shapes and strides.  Per slab::

    Q [L_q, d_k]   K [L_k, d_k]   V [L_k, d_v]   O, dO [L_q, d_v]   P [L_q, L_k]

Forward (Vaswani et al., 2017, eq. 1), one query-row block ``r0:r1`` at a time::

    S = scale * Q[r0:r1] K[0:e]^T          (GEMM, written into P's rows)
    P = softmax over the allowed keys      (mask and causal limit fused; 0 elsewhere)
    O[r0:r1] = P[r0:r1, 0:e] V[0:e]        (GEMM)

Backward, with ``dP = dO V^T`` and ``D_i = sum_j dP_ij P_ij``::

    dV = P^T dO                            (key blocks, before P is overwritten)
    dS = P * (dP - D)                      (query blocks; may overwrite P in place)
    dQ = scale * dS K ;  dK = scale * dS^T Q

Causal skipping: with ``is_causal`` query ``i`` sees keys ``j < n(i) = i + off + 1``
(``off = L_k - L_q``, bottom-right alignment).  A query block ``r0:r1`` only
touches keys ``0:e`` with ``e = n(r1 - 1)``, and a key block ``c0:c1`` only the
queries ``i >= c0 - off``: blocks entirely above the diagonal are never computed,
in the forward nor in any of the four backward GEMMs.  Entries of ``P``/``dS``
inside a computed block but above the diagonal are exact zeros, so the GEMMs that
read them are exact.

A row with no allowed key (fully masked, or ``n(i) <= 0``) gets ``P = 0``, hence
``O = 0`` and zero gradients, never NaN.  A NaN among a row's allowed scores makes
that row of ``P`` (and its output and gradients) NaN, as in PyTorch.

Gradients of broadcast inputs are accumulated (``beta = 1`` into a zeroed buffer);
the others are written (``beta = 0``), including explicit zeros for skipped blocks.

The row blocking and the causal block skipping follow FlashAttention (Dao et al.,
2022, "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness"),
but ``P`` is materialised: the module returns it on request, and keeping it saves
the backward the recomputation of ``Q K^T`` (6 GEMMs per slab instead of 7).

Tiled path
----------
``FlashCall`` / ``flash_forward`` / ``flash_backward`` never materialise ``P``: they
work on score tiles of at most ``block_q x block_k`` entries and keep, besides the
output, one log-sum-exp per query row (memory O(L) per slab).  Forward, per query
block ``r0:r1`` and key block ``c0:c1`` (online softmax: Milakov & Gimelshein, 2018;
Dao et al., 2022)::

    S = scale * Q[r0:r1] K[c0:c1]^T        (GEMM)
    m' = max(m, rowmax(S + mask)) ;  P = exp(S + mask - m')
    l = l exp(m - m') + rowsum(P) ;  O[r0:r1] = O[r0:r1] exp(m - m') + (P * Z) V[c0:c1]

and at the end ``O /= l``, ``lse = m + log(l)`` (``+inf`` and ``O = 0`` for a row
without any allowed key).  Backward, per key block (outer) and query block (inner),
with ``D = rowsum(dO * O)``::

    P = exp(scale * Q K^T + mask - lse)    (recomputed, exactly the forward's P)
    dP = (dO V^T) * Z ;  dS = P * (dP - D)
    dV += (P * Z)^T dO ;  dQ += scale * dS K ;  dK += scale * dS^T Q

``Z`` is the optional dropout multiplier (0 or ``1/(1-p)``), a counter-based mask
(``_layers.h``) over the flat ``[P, L_q, L_k]`` weights that the backward regenerates
from the key.  The causal staircase is skipped tile by tile in both passes; tiles
crossing the diagonal get exact zeros above it.  The tile row passes are in
``_flash.h``.
"""
import numpy as np

from cython cimport floating
from libc.math cimport INFINITY, log
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from _blas cimport gemm
from _softmax_row cimport MASK_ADD, MASK_BOOL, MaskRef, mask_ref, softmax_row
from _vmath cimport bind_simd, transpose, vdot

bind_simd(__name__)


cdef inline Py_ssize_t _clamp(Py_ssize_t x, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    return lo if x < lo else (hi if x > hi else x)


cdef inline void _zero(floating* x, Py_ssize_t n) noexcept nogil:
    if n > 0:
        memset(x, 0, n * sizeof(floating))


cdef void _forward_slab(const floating* Q, Py_ssize_t ldq, const floating* KT,
                        const floating* V, Py_ssize_t ldv, floating* O, floating* Pm,
                        Py_ssize_t L_q, Py_ssize_t L_k, Py_ssize_t d_k, Py_ssize_t d_v,
                        floating scale, int mask_kind, const uint8_t* bm, const floating* fm,
                        Py_ssize_t mrs, Py_ssize_t mcs, bint causal, Py_ssize_t off,
                        Py_ssize_t bq) noexcept nogil:
    cdef Py_ssize_t blk, r0, r1, i, e, n
    cdef const uint8_t* br = NULL
    cdef const floating* fr = NULL
    for blk in range((L_q + bq - 1) // bq):
        r0 = blk * bq
        r1 = r0 + bq if r0 + bq < L_q else L_q
        e = _clamp(r1 - 1 + off + 1, 0, L_k) if causal else L_k
        if e == 0:                   # no query of this block sees any key
            _zero(Pm + r0 * L_k, (r1 - r0) * L_k)
            _zero(O + r0 * d_v, (r1 - r0) * d_v)
            continue
        # S = scale * Q[r0:r1] K[0:e]^T  -> P[r0:r1, 0:e]   (bq, e); K^T is [d_k, L_k]
        gemm(False, False, <int>(r1 - r0), <int>e, <int>d_k, scale, Q + r0 * ldq, <int>ldq,
             KT, <int>L_k, 0, Pm + r0 * L_k, <int>L_k)
        for i in range(r0, r1):
            n = _clamp(i + off + 1, 0, L_k) if causal else L_k
            if mask_kind == 1:
                br = bm + i * mrs
            elif mask_kind == 2:
                fr = fm + i * mrs
            softmax_row(Pm + i * L_k, Pm + i * L_k, <floating> 1, n, L_k, mask_kind, br, fr,
                        mcs)
        # O[r0:r1] = P[r0:r1, 0:e] V[0:e]   (bq, d_v)
        gemm(False, False, <int>(r1 - r0), <int>d_v, <int>e, 1, Pm + r0 * L_k, <int>L_k,
             V, <int>ldv, 0, O + r0 * d_v, <int>d_v)


cdef void _backward_slab(const floating* Q, Py_ssize_t ldq, const floating* K,
                         Py_ssize_t ldk, const floating* VT, floating* Pm,
                         const floating* dO, Py_ssize_t ldg, floating* dS, floating* dP,
                         floating* dQ, floating* dK, floating* dV,
                         bint acc_q, bint acc_k, bint acc_v,
                         Py_ssize_t L_q, Py_ssize_t L_k, Py_ssize_t d_k, Py_ssize_t d_v,
                         floating scale, bint causal, Py_ssize_t off,
                         Py_ssize_t bq, Py_ssize_t bk) noexcept nogil:
    """``dS`` is either ``Pm`` (in place) or a scratch ``[L_q, L_k]``; ``dP`` is a
    scratch ``[bq, L_k]``; ``VT`` is ``V^T [d_v, L_k]``."""
    cdef Py_ssize_t blk, r0, r1, c0, c1, i, j, e, n, qs, zend
    cdef bint inplace = dS == Pm
    cdef floating Di
    cdef floating* pr
    cdef floating* gr
    cdef floating* sr
    cdef floating beta_q = 1 if acc_q else 0
    cdef floating beta_k = 1 if acc_k else 0
    cdef floating beta_v = 1 if acc_v else 0
    # (1) dV[c0:c1] = P[qs:, c0:c1]^T dO[qs:]            (key blocks; reads P)
    for blk in range((L_k + bk - 1) // bk):
        c0 = blk * bk
        c1 = c0 + bk if c0 + bk < L_k else L_k
        qs = _clamp(c0 - off, 0, L_q) if causal else 0
        if qs >= L_q:
            if not acc_v:
                _zero(dV + c0 * d_v, (c1 - c0) * d_v)
            continue
        gemm(True, False, <int>(c1 - c0), <int>d_v, <int>(L_q - qs), 1,
             Pm + qs * L_k + c0, <int>L_k, dO + qs * ldg, <int>ldg,
             beta_v, dV + c0 * d_v, <int>d_v)
    # (2) query blocks: dP = dO V^T, dS = P * (dP - D), dQ = scale * dS K
    for blk in range((L_q + bq - 1) // bq):
        r0 = blk * bq
        r1 = r0 + bq if r0 + bq < L_q else L_q
        e = _clamp(r1 - 1 + off + 1, 0, L_k) if causal else L_k
        if e == 0:
            if not acc_q:
                _zero(dQ + r0 * d_k, (r1 - r0) * d_k)
            if not inplace:
                _zero(dS + r0 * L_k, (r1 - r0) * L_k)
            continue
        gemm(False, False, <int>(r1 - r0), <int>e, <int>d_v, 1, dO + r0 * ldg, <int>ldg,
             VT, <int>L_k, 0, dP, <int>L_k)
        for i in range(r0, r1):
            n = _clamp(i + off + 1, 0, L_k) if causal else L_k
            pr = Pm + i * L_k
            gr = dP + (i - r0) * L_k
            sr = dS + i * L_k
            Di = vdot(gr, pr, n)
            for j in range(n):
                sr[j] = pr[j] * (gr[j] - Di)
            if not inplace:
                # zeros wherever a later GEMM reads this row: up to e (dQ below) and
                # up to the end of the key block holding column n - 1 (dK)
                zend = ((n + bk - 1) // bk) * bk
                if zend < e:
                    zend = e
                if zend > L_k:
                    zend = L_k
                _zero(sr + n, zend - n)
        gemm(False, False, <int>(r1 - r0), <int>d_k, <int>e, scale, dS + r0 * L_k, <int>L_k,
             K, <int>ldk, beta_q, dQ + r0 * d_k, <int>d_k)
    # (3) dK[c0:c1] = scale * dS[qs:, c0:c1]^T Q[qs:]     (key blocks)
    for blk in range((L_k + bk - 1) // bk):
        c0 = blk * bk
        c1 = c0 + bk if c0 + bk < L_k else L_k
        qs = _clamp(c0 - off, 0, L_q) if causal else 0
        if qs >= L_q:
            if not acc_k:
                _zero(dK + c0 * d_k, (c1 - c0) * d_k)
            continue
        gemm(True, False, <int>(c1 - c0), <int>d_k, <int>(L_q - qs), scale,
             dS + qs * L_k + c0, <int>L_k, Q + qs * ldq, <int>ldq,
             beta_k, dK + c0 * d_k, <int>d_k)


# ----------------------------------------------------------------- validation --
cdef tuple _shape6(const Py_ssize_t* sh):
    return sh[0], sh[1], sh[2], sh[3], sh[4], sh[5]


cdef struct Slabs:
    # The P slabs [L, d] of one input: slab p starts at element off[p] of base,
    # rows ld elements apart; bcast: some lead dim is broadcast (size 1).
    const void* base
    const Py_ssize_t* off
    Py_ssize_t ld
    bint bcast


cdef int _slabs(Slabs* out, list pins, const floating[:, :, :, :, :, :] a,
                const Py_ssize_t* lead, Py_ssize_t L, Py_ssize_t d, str name) except -1:
    """Describe the ``P`` slabs of a 6-D view ``[l0, l1, l2, l3, L, d]`` whose lead
    dims are ``lead`` or 1 (broadcast).

    Offsets are computed here from the view's own shape and strides, so every
    element the kernels address (``off[p] + i * ld + j``, ``i < L``, ``j < d``) is an
    element of ``a``: memory safety does not depend on the caller."""
    cdef Py_ssize_t isz = sizeof(floating), P = lead[0] * lead[1] * lead[2] * lead[3]
    cdef Py_ssize_t st[4]
    cdef Py_ssize_t dim, p, rem, off, ld
    cdef bint bcast = False
    if a.shape[4] != L or a.shape[5] != d:
        raise ValueError(f"{name} slabs must be [{L}, {d}], got [{a.shape[4]}, {a.shape[5]}]")
    if d > 1 and a.strides[5] != isz:
        raise ValueError(f"{name}: the last dim must be contiguous")
    for dim in range(4):
        if a.shape[dim] == 1:
            st[dim] = 0
            bcast = bcast or lead[dim] > 1
        elif a.shape[dim] == lead[dim]:
            if a.strides[dim] < 0 or a.strides[dim] % isz:
                raise ValueError(f"{name}: lead strides must be non-negative multiples "
                                 f"of the item size")
            st[dim] = a.strides[dim] // isz
        else:
            raise ValueError(f"{name}.shape[{dim}] must be 1 or {lead[dim]}, "
                             f"got {a.shape[dim]}")
    ld = d
    if L > 1:
        if a.strides[4] % isz or a.strides[4] // isz < d:
            raise ValueError(f"{name}: row stride must be a multiple of the item size "
                             f"and >= {d} elements, got {a.strides[4]} bytes")
        ld = a.strides[4] // isz
    cdef Py_ssize_t[::1] o = np.empty(P, dtype=np.intp)
    for p in range(P):
        rem = p
        off = 0
        for dim in range(3, -1, -1):
            off += (rem % lead[dim]) * st[dim]
            rem = rem // lead[dim]
        o[p] = off
    out.base, out.off, out.ld, out.bcast = &a[0, 0, 0, 0, 0, 0], &o[0], ld, bcast
    pins += [a, o]
    return 0


cdef class _Call:
    """What every kernel call checks once: the ``q``/``k``/``v`` slabs, the mask, the
    scale and the causal offset (see :class:`SdpaCall` and :class:`FlashCall`)."""
    cdef readonly Py_ssize_t slabs, L_q, L_k, d_k, d_v
    cdef readonly tuple lead, shapes
    cdef Py_ssize_t lead4[4]
    cdef bint ready, double, causal
    cdef Slabs q, k, v
    cdef double scale
    cdef Py_ssize_t causal_offset
    cdef MaskRef mask
    cdef list pins

    cdef int _start(self, q, double scale, causal_offset) except -1:
        self.ready = False
        memset(&self.q, 0, sizeof(Slabs))
        memset(&self.k, 0, sizeof(Slabs))
        memset(&self.v, 0, sizeof(Slabs))
        dt = np.asarray(q).dtype
        if dt != np.float32 and dt != np.float64:
            raise TypeError(f"q must be float32 or float64, got {dt}")
        self.double, self.pins, self.scale = dt == np.float64, [], scale
        self.causal = causal_offset is not None
        self.causal_offset = causal_offset if self.causal else 0
        return 0


cdef class SdpaCall(_Call):
    """One attention call, checked once: ``sdpa_forward`` / ``sdpa_backward`` run
    ranges of its slabs (on any threads) and check only what they are given.

    ``q``, ``k``, ``v``: 6-D views ``[l0, l1, l2, l3, L, d]`` in their own shapes
    (``q [.., L_q, d_k]``, ``k [.., L_k, d_k]``, ``v [.., L_k, d_v]``), each lead dim
    1 (broadcast) or the broadcast size; the last dim contiguous, any non-negative
    row / lead strides (a transposed ``[B, L, h, d_k]`` projection is used as it
    is).  ``probs [P, L_q, L_k]`` (C-contiguous, ``P`` the product of the lead dims)
    receives the probabilities, which the backward reads (and, unless
    ``keep_probs``, overwrites with ``dS``).  ``mask``: None or ``(buf, off, rs,
    cs)`` as in ``_softmax.softmax_forward``.  ``causal_offset``: None, or query
    ``i`` sees keys ``j <= i + causal_offset``.  ``block_q``, ``block_k``: query /
    key block sizes.  All float32 or all float64.
    """
    cdef bint keep_probs
    cdef void* probs
    cdef Py_ssize_t block_q, block_k

    def __init__(self, q, k, v, probs, double scale, mask=None, causal_offset=None,
                 Py_ssize_t block_q=64, Py_ssize_t block_k=64, bint keep_probs=False):
        self._start(q, scale, causal_offset)
        if block_q < 1 or block_k < 1:
            raise ValueError(f"block sizes must be >= 1, got {block_q}, {block_k}")
        self.block_q, self.block_k, self.keep_probs = block_q, block_k, keep_probs
        if self.double:
            _fill_call[double](self, q, k, v, True)
            _fill_probs[double](self, probs)
        else:
            _fill_call[float](self, q, k, v, True)
            _fill_probs[float](self, probs)
        mask_ref(mask, self.double, self.slabs, self.L_q, self.L_k, &self.mask, self.pins)
        self.ready = True


cdef int _fill_call(_Call c, const floating[:, :, :, :, :, :] q,
                    const floating[:, :, :, :, :, :] k, const floating[:, :, :, :, :, :] v,
                    bint whole_probs) except -1:
    """The shared checks; ``whole_probs``: the kernel addresses a whole ``[L_q, L_k]``
    slab with 32-bit BLAS sizes (the tiled kernel only ``L`` x ``d`` panels)."""
    cdef Py_ssize_t L_q = q.shape[4], d_k = q.shape[5], L_k = k.shape[4], d_v = v.shape[5]
    cdef Py_ssize_t dim, n
    for dim in range(4):
        n = c.lead4[dim] = max(q.shape[dim], k.shape[dim], v.shape[dim])
        if q.shape[dim] not in (1, n) or k.shape[dim] not in (1, n) or v.shape[dim] not in (1, n):
            raise ValueError(f"the lead dims of query, key and value must broadcast, got "
                             f"{_shape6(q.shape)[:4]}, {_shape6(k.shape)[:4]}, "
                             f"{_shape6(v.shape)[:4]}")
    c.lead = (c.lead4[0], c.lead4[1], c.lead4[2], c.lead4[3])
    c.slabs = c.lead4[0] * c.lead4[1] * c.lead4[2] * c.lead4[3]
    if min(L_q, L_k, d_k, d_v) < 1:
        raise ValueError("L_q, L_k, d_k, d_v must be >= 1 for the fused kernel")
    if max(L_q * d_k, L_k * d_k, L_q * d_v, L_k * d_v,
           L_q * L_k if whole_probs else 0) >= 2 ** 31:
        raise ValueError("a (batch, head) slab is too large for 32-bit BLAS")
    c.L_q, c.L_k, c.d_k, c.d_v = L_q, L_k, d_k, d_v
    _slabs(&c.q, c.pins, q, c.lead4, L_q, d_k, "query")
    _slabs(&c.k, c.pins, k, c.lead4, L_k, d_k, "key")
    _slabs(&c.v, c.pins, v, c.lead4, L_k, d_v, "value")
    c.shapes = (_shape6(q.shape), _shape6(k.shape), _shape6(v.shape))
    return 0


cdef int _fill_probs(SdpaCall c, floating[:, :, ::1] probs) except -1:
    if probs.shape[0] != c.slabs or probs.shape[1] != c.L_q or probs.shape[2] != c.L_k:
        raise ValueError(f"probs must have shape {(c.slabs, c.L_q, c.L_k)}, got "
                         f"{(probs.shape[0], probs.shape[1], probs.shape[2])}")
    c.probs = &probs[0, 0, 0]
    c.pins.append(probs)
    return 0


cdef int _check_call(_Call call, bint double, Py_ssize_t p0, Py_ssize_t p1) except -1:
    if not call.ready:
        raise ValueError("the SdpaCall was not initialised")
    if double != call.double:
        raise TypeError("the arrays must have the dtype of the call's inputs")
    if not 0 <= p0 <= p1 <= call.slabs:
        raise ValueError(f"slab range must satisfy 0 <= p0 <= p1 <= {call.slabs}, "
                         f"got [{p0}, {p1})")
    return 0


# --------------------------------------------------------------- entry points --
def sdpa_forward(SdpaCall call not None, floating[:, :, ::1] out, Py_ssize_t p0,
                 Py_ssize_t p1):
    """Forward over slabs ``p0 <= p < p1`` of ``call`` (see the module docstring);
    ``out [P, L_q, d_v]`` C-contiguous."""
    cdef Py_ssize_t L_q = call.L_q, L_k = call.L_k, d_k = call.d_k, d_v = call.d_v, p
    cdef Py_ssize_t last = -1
    cdef const floating* Q = <const floating*> call.q.base
    cdef const floating* K = <const floating*> call.k.base
    cdef const floating* V = <const floating*> call.v.base
    cdef floating* Pm = <floating*> call.probs
    cdef const MaskRef* m = &call.mask
    cdef const uint8_t* bm = NULL
    cdef const floating* fm = NULL
    _check_call(call, floating is double, p0, p1)
    if out.shape[0] != call.slabs or out.shape[1] != L_q or out.shape[2] != d_v:
        raise ValueError(f"out must have shape {(call.slabs, L_q, d_v)}, got "
                         f"{(out.shape[0], out.shape[1], out.shape[2])}")
    if p0 == p1:
        return
    cdef floating* KT = <floating*> malloc(d_k * L_k * sizeof(floating))
    if KT == NULL:
        raise MemoryError("sdpa_forward: cannot allocate K^T")
    try:
        with nogil:
            for p in range(p0, p1):
                if m.kind == MASK_BOOL:
                    bm = m.b + m.off[p]
                elif m.kind == MASK_ADD:
                    fm = <const floating*> m.f + m.off[p]
                # the score GEMM runs as Q @ K^T with K^T stored (OpenBLAS's NN path
                # and its small-matrix kernels suit these shapes); GQA slabs share it
                if call.k.off[p] != last:
                    transpose(K + call.k.off[p], call.k.ld, L_k, d_k, KT, L_k, False)
                    last = call.k.off[p]
                _forward_slab(Q + call.q.off[p], call.q.ld, KT, V + call.v.off[p],
                              call.v.ld, &out[p, 0, 0], Pm + p * L_q * L_k, L_q, L_k, d_k,
                              d_v, <floating> call.scale, m.kind, bm, fm, m.rs, m.cs,
                              call.causal, call.causal_offset, call.block_q)
    finally:
        free(KT)


cdef int _check_grad(Slabs* g, list pins, floating[:, :, :, :, :, :] a, tuple shape,
                     const Py_ssize_t* lead, Py_ssize_t L, Py_ssize_t d, str name) except -1:
    """A gradient buffer: C-contiguous rows in the shape of its input."""
    if _shape6(a.shape) != shape:
        raise ValueError(f"{name} must have the shape of its input {shape}, "
                         f"got {_shape6(a.shape)}")
    _slabs(g, pins, a, lead, L, d, name)
    if g.ld != d and L > 1:
        raise ValueError(f"{name} rows must be contiguous (row stride = width)")
    return 0


def sdpa_backward(SdpaCall call not None, const floating[:, :, :, :, :, :] grad_out,
                  floating[:, :, :, :, :, :] grad_q, floating[:, :, :, :, :, :] grad_k,
                  floating[:, :, :, :, :, :] grad_v, Py_ssize_t p0, Py_ssize_t p1):
    """Backward over slabs ``p0 <= p < p1`` of ``call`` (see the module docstring).

    ``grad_out``: a 6-D view with the full lead shape, as the inputs of
    :class:`SdpaCall`.  ``grad_q``/``grad_k``/``grad_v``: C-contiguous 6-D arrays in
    the (padded) shapes of ``q``/``k``/``v``; one that broadcasts over a lead dim is
    accumulated into (the caller zeroes it), the others are overwritten.
    """
    cdef Py_ssize_t L_q = call.L_q, L_k = call.L_k, d_k = call.d_k, d_v = call.d_v, p
    cdef Py_ssize_t last = -1, dim, need
    cdef Slabs go, gq, gk, gv
    cdef list pins = []
    cdef bint overwrite = not call.keep_probs
    cdef const floating* Q = <const floating*> call.q.base
    cdef const floating* K = <const floating*> call.k.base
    cdef const floating* V = <const floating*> call.v.base
    cdef floating* Pm = <floating*> call.probs
    cdef floating* dS
    cdef floating* dP
    cdef floating* VT
    _check_call(call, floating is double, p0, p1)
    for dim in range(4):
        if grad_out.shape[dim] != call.lead4[dim]:
            raise ValueError(f"grad_out must have the full lead shape {call.lead}")
    _slabs(&go, pins, grad_out, call.lead4, L_q, d_v, "grad_out")
    _check_grad(&gq, pins, grad_q, call.shapes[0], call.lead4, L_q, d_k, "grad_q")
    _check_grad(&gk, pins, grad_k, call.shapes[1], call.lead4, L_k, d_k, "grad_k")
    _check_grad(&gv, pins, grad_v, call.shapes[2], call.lead4, L_k, d_v, "grad_v")
    if p0 == p1:
        return
    need = (d_v + call.block_q) * L_k + (0 if overwrite else L_q * L_k)
    VT = <floating*> malloc(need * sizeof(floating))
    if VT == NULL:
        raise MemoryError("sdpa_backward: cannot allocate the scratch")
    dP = VT + d_v * L_k
    try:
        with nogil:
            for p in range(p0, p1):
                dS = Pm + p * L_q * L_k if overwrite else dP + call.block_q * L_k
                if call.v.off[p] != last:        # slabs sharing a V head (GQA) share V^T
                    transpose(V + call.v.off[p], call.v.ld, L_k, d_v, VT, L_k, False)
                    last = call.v.off[p]
                _backward_slab(Q + call.q.off[p], call.q.ld, K + call.k.off[p], call.k.ld,
                               VT, Pm + p * L_q * L_k,
                               <const floating*> go.base + go.off[p], go.ld, dS, dP,
                               <floating*> gq.base + gq.off[p],
                               <floating*> gk.base + gk.off[p],
                               <floating*> gv.base + gv.off[p], gq.bcast, gk.bcast,
                               gv.bcast, L_q, L_k, d_k, d_v, <floating> call.scale,
                               call.causal, call.causal_offset, call.block_q, call.block_k)
    finally:
        free(VT)


# ================================================================ tiled kernel ==
# The "flash" path: probabilities never materialised (module docstring, "Tiled path";
# the row passes are in _flash.h).

cdef extern from "_flash.h" nogil:
    ctypedef struct nn_fa_drop:
        uint64_t off, row
        uint32_t k0, k1, threshold
        double scale
        const void* ones
        void* keep
    void nn_fa_fwd_tile_f(float* s, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t w,
                          int causal, Py_ssize_t lim, int mk, const uint8_t* bm,
                          const float* fm, Py_ssize_t mrs, Py_ssize_t mcs, float* m,
                          float* l, float* o, Py_ssize_t ldo, Py_ssize_t dv,
                          const nn_fa_drop* drop) noexcept
    void nn_fa_fwd_tile_d(double* s, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t w,
                          int causal, Py_ssize_t lim, int mk, const uint8_t* bm,
                          const double* fm, Py_ssize_t mrs, Py_ssize_t mcs, double* m,
                          double* l, double* o, Py_ssize_t ldo, Py_ssize_t dv,
                          const nn_fa_drop* drop) noexcept
    void nn_fa_bwd_p_f(float* s, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t w, int causal,
                       Py_ssize_t lim, int mk, const uint8_t* bm, const float* fm,
                       Py_ssize_t mrs, Py_ssize_t mcs, const float* lse) noexcept
    void nn_fa_bwd_p_d(double* s, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t w,
                       int causal, Py_ssize_t lim, int mk, const uint8_t* bm,
                       const double* fm, Py_ssize_t mrs, Py_ssize_t mcs,
                       const double* lse) noexcept
    void nn_fa_bwd_ds_f(float* p, float* dp, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t w,
                        int causal, Py_ssize_t lim, const float* lse, const float* D,
                        const nn_fa_drop* drop) noexcept
    void nn_fa_bwd_ds_d(double* p, double* dp, Py_ssize_t ld, Py_ssize_t rows,
                        Py_ssize_t w, int causal, Py_ssize_t lim, const double* lse,
                        const double* D, const nn_fa_drop* drop) noexcept


cdef inline void _fwd_tile(floating* s, Py_ssize_t rows, Py_ssize_t w, bint causal,
                           Py_ssize_t lim, const MaskRef* mk, const uint8_t* bm,
                           const floating* fm, floating* m, floating* l, floating* o,
                           Py_ssize_t dv, const nn_fa_drop* drop) noexcept nogil:
    if floating is float:
        nn_fa_fwd_tile_f(s, w, rows, w, causal, lim, mk.kind, bm, fm, mk.rs, mk.cs, m, l, o,
                         dv, dv, drop)
    else:
        nn_fa_fwd_tile_d(s, w, rows, w, causal, lim, mk.kind, bm, fm, mk.rs, mk.cs, m, l, o,
                         dv, dv, drop)


cdef inline void _bwd_p(floating* s, Py_ssize_t rows, Py_ssize_t w, bint causal,
                        Py_ssize_t lim, const MaskRef* mk, const uint8_t* bm,
                        const floating* fm, const floating* lse) noexcept nogil:
    if floating is float:
        nn_fa_bwd_p_f(s, w, rows, w, causal, lim, mk.kind, bm, fm, mk.rs, mk.cs, lse)
    else:
        nn_fa_bwd_p_d(s, w, rows, w, causal, lim, mk.kind, bm, fm, mk.rs, mk.cs, lse)


cdef inline void _bwd_ds(floating* p, floating* dp, Py_ssize_t rows, Py_ssize_t w,
                         bint causal, Py_ssize_t lim, const floating* lse, const floating* D,
                         const nn_fa_drop* drop) noexcept nogil:
    if floating is float:
        nn_fa_bwd_ds_f(p, dp, w, rows, w, causal, lim, lse, D, drop)
    else:
        nn_fa_bwd_ds_d(p, dp, w, rows, w, causal, lim, lse, D, drop)


cdef inline void _mask_at(const MaskRef* mk, Py_ssize_t p, Py_ssize_t i, Py_ssize_t j,
                          const uint8_t** bm, const floating** fm) noexcept nogil:
    """The mask element (i, j) of slab p (NULL without a mask of that kind)."""
    bm[0] = NULL
    fm[0] = NULL
    if mk.kind == MASK_BOOL:
        bm[0] = mk.b + mk.off[p] + i * mk.rs + j * mk.cs
    elif mk.kind == MASK_ADD:
        fm[0] = <const floating*> mk.f + mk.off[p] + i * mk.rs + j * mk.cs


cdef void _flash_fwd_rows(const floating* Q, Py_ssize_t ldq, const floating* K,
                          Py_ssize_t ldk, const floating* V, Py_ssize_t ldv, floating* O,
                          floating* lse, Py_ssize_t p, Py_ssize_t a0, Py_ssize_t a1,
                          Py_ssize_t L_q, Py_ssize_t L_k, Py_ssize_t d_k, Py_ssize_t d_v,
                          floating scale, const MaskRef* mk, bint causal, Py_ssize_t off,
                          Py_ssize_t bq, Py_ssize_t bk, floating* S, floating* m,
                          floating* l, nn_fa_drop* drop) noexcept nogil:
    """Query rows ``a0:a1`` of slab ``p``: ``O [L_q, d_v]`` and ``lse [L_q]`` of the slab.

    Per query block ``r0:r1`` and key block ``c0:c0+w`` (keys ``>= e`` never seen by
    the block are skipped: the causal upper triangle)::

        S = scale * Q[r0:r1] K[c0:c0+w]^T      (GEMM)
        online-softmax step on S -> P           (_flash.h; rescales O[r0:r1])
        O[r0:r1] += P V[c0:c0+w]                (GEMM)

    then ``O /= l`` and ``lse = m + log(l)`` (``+inf`` for a row with no allowed key,
    whose output is 0)."""
    cdef Py_ssize_t r0, r1, nr, e, c0, w, r, j
    cdef floating inv
    cdef floating* orow
    cdef const uint8_t* bm
    cdef const floating* fm
    cdef uint64_t base = <uint64_t> p * <uint64_t> L_q * <uint64_t> L_k
    r0 = a0
    while r0 < a1:
        r1 = r0 + bq if r0 + bq < a1 else a1
        nr = r1 - r0
        e = _clamp(r1 - 1 + off + 1, 0, L_k) if causal else L_k
        for r in range(nr):
            m[r] = -INFINITY
            l[r] = 0
        _zero(O + r0 * d_v, nr * d_v)
        c0 = 0
        while c0 < e:
            w = bk if c0 + bk < e else e - c0
            gemm(False, True, <int>nr, <int>w, <int>d_k, scale, Q + r0 * ldq, <int>ldq,
                 K + c0 * ldk, <int>ldk, 0, S, <int>w)
            _mask_at(mk, p, r0, c0, &bm, &fm)
            if drop != NULL:
                drop.off = base + <uint64_t> r0 * <uint64_t> L_k + <uint64_t> c0
            _fwd_tile(S, nr, w, causal, r0 + off + 1 - c0, mk, bm, fm, m, l,
                      O + r0 * d_v, d_v, drop)
            gemm(False, False, <int>nr, <int>d_v, <int>w, 1, S, <int>w, V + c0 * ldv,
                 <int>ldv, 1, O + r0 * d_v, <int>d_v)
            c0 += w
        for r in range(nr):
            orow = O + (r0 + r) * d_v
            if m[r] == -INFINITY:                # no allowed key: output 0
                _zero(orow, d_v)
                lse[r0 + r] = INFINITY
            else:
                inv = 1 / l[r]
                for j in range(d_v):
                    orow[j] = orow[j] * inv
                lse[r0 + r] = m[r] + log(l[r])
        r0 = r1


cdef void _flash_bwd_keys(const floating* Q, Py_ssize_t ldq, const floating* K,
                          Py_ssize_t ldk, const floating* V, Py_ssize_t ldv,
                          const floating* O, const floating* lse, const floating* dO,
                          Py_ssize_t ldg, floating* dQ, floating* dK, floating* dV,
                          Py_ssize_t p, Py_ssize_t a0,
                          Py_ssize_t a1, Py_ssize_t L_q, Py_ssize_t L_k, Py_ssize_t d_k,
                          Py_ssize_t d_v, floating scale, const MaskRef* mk, bint causal,
                          Py_ssize_t off, Py_ssize_t bq, Py_ssize_t bk, floating* S,
                          floating* dP, floating* dKa, floating* dVa, floating* D,
                          nn_fa_drop* drop) noexcept nogil:
    """Keys ``a0:a1`` of slab ``p``: their ``dK``/``dV`` rows (written) and their
    contribution to ``dQ`` (added).

    ``D_i = dO_i . O_i`` (= rowsum(dP * P), also with dropout), then per key block
    ``c0:c1`` (accumulators ``dKa``, ``dVa``) and query block ``r0:r1`` (from the
    first query that sees ``c0``; keys ``>= e`` unseen by the block are cut)::

        S  = scale * Q[r0:r1] K[c0:e]^T ;  P = exp(S + mask - lse)   (recomputed)
        dP = dO[r0:r1] V[c0:e]^T ;  dS = P * (dP * Z - D) ;  P~ = P * Z
        dV[c0:e] += P~^T dO[r0:r1]
        dQ[r0:r1] += scale * dS K[c0:e] ;  dK[c0:e] += scale * dS^T Q[r0:r1]
    """
    cdef Py_ssize_t c0, c1, wk, qs, r0, r1, nr, e, w, i, j
    cdef const uint8_t* bm
    cdef const floating* fm
    cdef uint64_t base = <uint64_t> p * <uint64_t> L_q * <uint64_t> L_k
    qs = _clamp(a0 - off, 0, L_q) if causal else 0
    for i in range(qs, L_q):
        D[i] = vdot(dO + i * ldg, O + i * d_v, d_v)
    c0 = a0
    while c0 < a1:
        c1 = c0 + bk if c0 + bk < a1 else a1
        wk = c1 - c0
        _zero(dKa, wk * d_k)
        _zero(dVa, wk * d_v)
        r0 = _clamp(c0 - off, 0, L_q) if causal else 0
        while r0 < L_q:
            r1 = r0 + bq if r0 + bq < L_q else L_q
            nr = r1 - r0
            e = c1
            if causal:
                e = _clamp(r1 - 1 + off + 1, 0, L_k)
                if e > c1:
                    e = c1
            w = e - c0
            gemm(False, True, <int>nr, <int>w, <int>d_k, scale, Q + r0 * ldq, <int>ldq,
                 K + c0 * ldk, <int>ldk, 0, S, <int>w)
            _mask_at(mk, p, r0, c0, &bm, &fm)
            _bwd_p(S, nr, w, causal, r0 + off + 1 - c0, mk, bm, fm, lse + r0)
            gemm(False, True, <int>nr, <int>w, <int>d_v, 1, dO + r0 * ldg, <int>ldg,
                 V + c0 * ldv, <int>ldv, 0, dP, <int>w)
            if drop != NULL:
                drop.off = base + <uint64_t> r0 * <uint64_t> L_k + <uint64_t> c0
            _bwd_ds(S, dP, nr, w, causal, r0 + off + 1 - c0, lse + r0, D + r0, drop)
            gemm(True, False, <int>w, <int>d_v, <int>nr, 1, S, <int>w, dO + r0 * ldg,
                 <int>ldg, 1, dVa, <int>d_v)
            gemm(False, False, <int>nr, <int>d_k, <int>w, scale, dP, <int>w, K + c0 * ldk,
                 <int>ldk, 1, dQ + r0 * d_k, <int>d_k)
            gemm(True, False, <int>w, <int>d_k, <int>nr, scale, dP, <int>w, Q + r0 * ldq,
                 <int>ldq, 1, dKa, <int>d_k)
            r0 = r1
        memcpy(dK + c0 * d_k, dKa, wk * d_k * sizeof(floating))
        memcpy(dV + c0 * d_v, dVa, wk * d_v * sizeof(floating))
        c0 = c1


cdef class FlashCall(_Call):
    """One tiled attention call, checked once; ``flash_forward`` / ``flash_backward``
    run lists of tasks of it (on any threads).

    ``q``, ``k``, ``v``, ``mask``, ``causal_offset``: as :class:`SdpaCall` (no
    ``probs``: the tiled kernel keeps one log-sum-exp per query row instead).
    ``dropout``: None or ``(k0, k1, threshold, scale)``, the key of the
    counter-based mask of ``_layers.h`` over the flat ``[P, L_q, L_k]`` scores:
    score ``(p, i, j)`` is kept iff ``hash(((p * L_q) + i) * L_k + j) >= threshold``
    and then scaled by ``scale``.
    """
    cdef bint has_drop
    cdef nn_fa_drop drop

    def __init__(self, q, k, v, double scale, mask=None, causal_offset=None, dropout=None):
        self._start(q, scale, causal_offset)
        memset(&self.drop, 0, sizeof(nn_fa_drop))
        self.has_drop = dropout is not None
        if self.has_drop:
            k0, k1, threshold, dscale = dropout
            if not (0 <= k0 < 2 ** 32 and 0 <= k1 < 2 ** 32 and 0 <= threshold < 2 ** 32):
                raise ValueError("dropout keys and threshold must be 32-bit unsigned")
            self.drop.k0, self.drop.k1, self.drop.threshold = k0, k1, threshold
            self.drop.scale = dscale
        if self.double:
            _fill_call[double](self, q, k, v, False)
        else:
            _fill_call[float](self, q, k, v, False)
        self.drop.row = self.L_k
        mask_ref(mask, self.double, self.slabs, self.L_q, self.L_k, &self.mask, self.pins)
        self.ready = True


cdef int _check_tasks(const Py_ssize_t[:, ::1] tasks, Py_ssize_t t0, Py_ssize_t t1,
                      Py_ssize_t P, Py_ssize_t L, str what) except -1:
    cdef Py_ssize_t t
    if tasks.shape[1] != 3:
        raise ValueError(f"tasks must be [T, 3] (slab, start, end), got {tasks.shape[1]} columns")
    if not 0 <= t0 <= t1 <= tasks.shape[0]:
        raise ValueError(f"task range must satisfy 0 <= t0 <= t1 <= {tasks.shape[0]}, "
                         f"got [{t0}, {t1})")
    for t in range(t0, t1):
        if not (0 <= tasks[t, 0] < P and 0 <= tasks[t, 1] <= tasks[t, 2] <= L):
            raise ValueError(f"task {t} = {tuple(tasks[t])} is not (slab < {P}, "
                             f"0 <= start <= end <= {L} {what})")
    return 0


cdef int _check_blocks(Py_ssize_t bq, Py_ssize_t bk) except -1:
    if not (1 <= bq <= 65536 and 1 <= bk <= 65536):
        raise ValueError(f"block sizes must be in [1, 65536], got {bq}, {bk}")
    return 0


cdef nn_fa_drop* _drop_scratch(FlashCall call, nn_fa_drop* d, floating* ones,
                               floating* keep, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    if not call.has_drop:
        return NULL
    d[0] = call.drop
    for j in range(n):
        ones[j] = 1
    d.ones, d.keep = ones, keep
    return d


def flash_forward(FlashCall call not None, floating[:, :, ::1] out, floating[:, ::1] lse,
                  const Py_ssize_t[:, ::1] tasks, Py_ssize_t t0, Py_ssize_t t1,
                  Py_ssize_t block_q, Py_ssize_t block_k):
    """Forward of tasks ``t0 <= t < t1`` of ``call``: task ``(p, r0, r1)`` computes the
    query rows ``r0:r1`` of slab ``p`` of ``out [P, L_q, d_v]`` and ``lse [P, L_q]``
    (C-contiguous), in query blocks of ``block_q`` rows and key blocks of ``block_k``."""
    cdef Py_ssize_t L_q = call.L_q, L_k = call.L_k, d_k = call.d_k, d_v = call.d_v
    cdef Py_ssize_t t, p, bq = block_q, bk = block_k
    cdef const floating* Q = <const floating*> call.q.base
    cdef const floating* K = <const floating*> call.k.base
    cdef const floating* V = <const floating*> call.v.base
    cdef nn_fa_drop dr
    cdef nn_fa_drop* drop
    _check_call(call, floating is double, 0, 0)
    _check_blocks(bq, bk)
    if out.shape[0] != call.slabs or out.shape[1] != L_q or out.shape[2] != d_v:
        raise ValueError(f"out must have shape {(call.slabs, L_q, d_v)}, got "
                         f"{(out.shape[0], out.shape[1], out.shape[2])}")
    if lse.shape[0] != call.slabs or lse.shape[1] != L_q:
        raise ValueError(f"lse must have shape {(call.slabs, L_q)}, got "
                         f"{(lse.shape[0], lse.shape[1])}")
    _check_tasks(tasks, t0, t1, call.slabs, L_q, "query rows")
    if t0 == t1:
        return
    # S [bq, bk], m, l [bq], ones, keep [bk]
    cdef floating* S = <floating*> malloc((bq * bk + 2 * bq + 2 * bk) * sizeof(floating))
    if S == NULL:
        raise MemoryError("flash_forward: cannot allocate the scratch")
    cdef floating* m = S + bq * bk
    cdef floating* l = m + bq
    try:
        with nogil:
            drop = _drop_scratch(call, &dr, l + bq, l + bq + bk, bk)
            for t in range(t0, t1):
                p = tasks[t, 0]
                _flash_fwd_rows(Q + call.q.off[p], call.q.ld, K + call.k.off[p], call.k.ld,
                                V + call.v.off[p], call.v.ld, &out[p, 0, 0], &lse[p, 0],
                                p, tasks[t, 1], tasks[t, 2], L_q, L_k, d_k, d_v,
                                <floating> call.scale, &call.mask, call.causal,
                                call.causal_offset, bq, bk, S, m, l, drop)
    finally:
        free(S)


def flash_backward(FlashCall call not None, const floating[:, :, ::1] out,
                   const floating[:, ::1] lse, const floating[:, :, :, :, :, :] grad_out,
                   floating[:, :, ::1] grad_q, floating[:, :, ::1] grad_k,
                   floating[:, :, ::1] grad_v, const Py_ssize_t[:, ::1] tasks,
                   Py_ssize_t t0, Py_ssize_t t1, Py_ssize_t block_q, Py_ssize_t block_k):
    """Backward of tasks ``t0 <= t < t1``: task ``(p, c0, c1)`` handles the keys
    ``c0:c1`` of slab ``p``.

    ``out``, ``lse``: what :func:`flash_forward` wrote.  ``grad_out``: a 6-D view with
    the full lead shape.  ``grad_q [P, L_q, d_k]``, ``grad_k [P, L_k, d_k]``,
    ``grad_v [P, L_k, d_v]``: C-contiguous, one slab per (broadcast) slab, never
    summed over a broadcast lead dim here (the caller reduces them, in an order that
    does not depend on the threads).  Rows ``c0:c1`` of ``grad_k``/``grad_v`` are
    written; ``grad_q`` is added to (zero it first; tasks of one slab must not run at
    the same time).
    """
    cdef Py_ssize_t L_q = call.L_q, L_k = call.L_k, d_k = call.d_k, d_v = call.d_v
    cdef Py_ssize_t t, p, dim, bq = block_q, bk = block_k
    cdef Slabs go
    cdef list pins = []
    cdef const floating* Q = <const floating*> call.q.base
    cdef const floating* K = <const floating*> call.k.base
    cdef const floating* V = <const floating*> call.v.base
    cdef nn_fa_drop dr
    cdef nn_fa_drop* drop
    _check_call(call, floating is double, 0, 0)
    _check_blocks(bq, bk)
    for dim in range(4):
        if grad_out.shape[dim] != call.lead4[dim]:
            raise ValueError(f"grad_out must have the full lead shape {call.lead}")
    _check_3d(out, call.slabs, L_q, d_v, "out")
    _check_3d(grad_q, call.slabs, L_q, d_k, "grad_q")
    _check_3d(grad_k, call.slabs, L_k, d_k, "grad_k")
    _check_3d(grad_v, call.slabs, L_k, d_v, "grad_v")
    if lse.shape[0] != call.slabs or lse.shape[1] != L_q:
        raise ValueError(f"lse must have shape {(call.slabs, L_q)}, got "
                         f"{(lse.shape[0], lse.shape[1])}")
    _slabs(&go, pins, grad_out, call.lead4, L_q, d_v, "grad_out")
    _check_tasks(tasks, t0, t1, call.slabs, L_k, "keys")
    if t0 == t1:
        return
    # S, dP [bq, bk]; dK, dV accumulators [bk, d]; D [L_q]; ones, keep [bk]
    cdef Py_ssize_t need = 2 * bq * bk + bk * (d_k + d_v) + L_q + 2 * bk
    cdef floating* S = <floating*> malloc(need * sizeof(floating))
    if S == NULL:
        raise MemoryError("flash_backward: cannot allocate the scratch")
    cdef floating* dP = S + bq * bk
    cdef floating* dKa = dP + bq * bk
    cdef floating* dVa = dKa + bk * d_k
    cdef floating* D = dVa + bk * d_v
    try:
        with nogil:
            drop = _drop_scratch(call, &dr, D + L_q, D + L_q + bk, bk)
            for t in range(t0, t1):
                p = tasks[t, 0]
                _flash_bwd_keys(Q + call.q.off[p], call.q.ld, K + call.k.off[p], call.k.ld,
                                V + call.v.off[p], call.v.ld, &out[p, 0, 0], &lse[p, 0],
                                <const floating*> go.base + go.off[p], go.ld,
                                &grad_q[p, 0, 0], &grad_k[p, 0, 0], &grad_v[p, 0, 0],
                                p, tasks[t, 1], tasks[t, 2], L_q, L_k, d_k,
                                d_v, <floating> call.scale, &call.mask, call.causal,
                                call.causal_offset, bq, bk, S, dP, dKa, dVa, D, drop)
    finally:
        free(S)


cdef int _check_3d(const floating[:, :, ::1] a, Py_ssize_t P, Py_ssize_t L, Py_ssize_t d,
                   str name) except -1:
    if a.shape[0] != P or a.shape[1] != L or a.shape[2] != d:
        raise ValueError(f"{name} must have shape {(P, L, d)}, got "
                         f"{(a.shape[0], a.shape[1], a.shape[2])}")
    return 0

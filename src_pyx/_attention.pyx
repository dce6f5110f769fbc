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

The tiled ("flash") kernel, which never materialises ``P``, is in
``_flash_attention.pyx``; the checks both share are in ``_attn_call.pxd``.
"""
import numpy as np

from cython cimport floating
from libc.stdint cimport uint8_t
from libc.stdlib cimport free, malloc

from _attn_call cimport (CallCore, Slabs, check_call, check_grad_out, clamp, core_fill,
                         core_mask, core_start, shape6, slabs_of, zero_fill)
from _attn_gemm cimport agemm, agemm_nt
from _blas cimport gemm
from _softmax_row cimport MASK_ADD, MASK_BOOL, MaskRef, softmax_row
from _vmath cimport bind_simd, transpose, vdot

bind_simd(__name__)


cdef inline Py_ssize_t t_ld(Py_ssize_t L_k) noexcept nogil:
    """Row stride of a stored ``K^T`` / ``V^T``: ``L_k`` plus 16, so that the rows of a
    column panel do not all fall in one L1 set (``L_k * itemsize`` a multiple of
    4 KiB)."""
    return L_k + 16


cdef inline void mm(bint own, bint ta, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                    floating alpha, const floating* A, Py_ssize_t lda, const floating* B,
                    Py_ssize_t ldb, bint acc, floating* C, Py_ssize_t ldc) noexcept nogil:
    """``C[m, n] (+)= alpha * op(A) @ B`` by the attention micro-kernels (``own``) or
    OpenBLAS."""
    if own:
        agemm(ta, m, n, k, alpha, A, lda, B, ldb, acc, C, ldc)
    else:
        gemm(ta, False, <int>m, <int>n, <int>k, alpha, A, <int>lda, B, <int>ldb,
             <floating>(1 if acc else 0), C, <int>ldc)


cdef void _forward_slab(const floating* Q, Py_ssize_t ldq, const floating* KT,
                        Py_ssize_t ldkt, bint nt, const floating* V, Py_ssize_t ldv, floating* O, floating* Pm,
                        Py_ssize_t L_q, Py_ssize_t L_k, Py_ssize_t d_k, Py_ssize_t d_v,
                        floating scale, int mask_kind, const uint8_t* bm, const floating* fm,
                        Py_ssize_t mrs, Py_ssize_t mcs, bint causal, Py_ssize_t off,
                        Py_ssize_t bq, bint own) noexcept nogil:
    cdef Py_ssize_t blk, r0, r1, i, e, n
    cdef const uint8_t* br = NULL
    cdef const floating* fr = NULL
    for blk in range((L_q + bq - 1) // bq):
        r0 = blk * bq
        r1 = r0 + bq if r0 + bq < L_q else L_q
        e = clamp(r1 - 1 + off + 1, 0, L_k) if causal else L_k
        if e == 0:                   # no query of this block sees any key
            zero_fill(Pm + r0 * L_k, (r1 - r0) * L_k)
            zero_fill(O + r0 * d_v, (r1 - r0) * d_v)
            continue
        # S = scale * Q[r0:r1] K[0:e]^T  -> P[r0:r1, 0:e]   (bq, e); KT is K^T
        # [d_k, L_k], or with nt K itself [L_k, d_k] (rows ldkt apart)
        if nt:
            agemm_nt(r1 - r0, e, d_k, scale, Q + r0 * ldq, ldq, KT, ldkt, Pm + r0 * L_k, L_k)
        else:
            mm(own, False, r1 - r0, e, d_k, scale, Q + r0 * ldq, ldq, KT, ldkt, False,
               Pm + r0 * L_k, L_k)
        for i in range(r0, r1):
            n = clamp(i + off + 1, 0, L_k) if causal else L_k
            if mask_kind == 1:
                br = bm + i * mrs
            elif mask_kind == 2:
                fr = fm + i * mrs
            softmax_row(Pm + i * L_k, Pm + i * L_k, <floating> 1, n, L_k, mask_kind, br, fr,
                        mcs)
        # O[r0:r1] = P[r0:r1, 0:e] V[0:e]   (bq, d_v)
        mm(own, False, r1 - r0, d_v, e, <floating> 1, Pm + r0 * L_k, L_k, V, ldv, False,
           O + r0 * d_v, d_v)


cdef void _backward_slab(const floating* Q, Py_ssize_t ldq, const floating* K,
                         Py_ssize_t ldk, const floating* VT, Py_ssize_t ldvt, floating* Pm,
                         const floating* dO, Py_ssize_t ldg, floating* dS, floating* dP,
                         floating* dQ, floating* dK, floating* dV,
                         bint acc_q, bint acc_k, bint acc_v,
                         Py_ssize_t L_q, Py_ssize_t L_k, Py_ssize_t d_k, Py_ssize_t d_v,
                         floating scale, bint causal, Py_ssize_t off,
                         Py_ssize_t bq, Py_ssize_t bk, bint own) noexcept nogil:
    """``dS`` is either ``Pm`` (in place) or a scratch ``[L_q, L_k]``; ``dP`` is a
    scratch ``[bq, L_k]``; ``VT`` is ``V^T [d_v, L_k]`` (rows ``ldvt`` apart)."""
    cdef Py_ssize_t blk, r0, r1, c0, c1, i, j, e, n, qs, zend
    cdef bint inplace = dS == Pm
    cdef floating Di
    cdef floating* pr
    cdef floating* gr
    cdef floating* sr
    # (1) dV[c0:c1] = P[qs:, c0:c1]^T dO[qs:]            (key blocks; reads P)
    for blk in range((L_k + bk - 1) // bk):
        c0 = blk * bk
        c1 = c0 + bk if c0 + bk < L_k else L_k
        qs = clamp(c0 - off, 0, L_q) if causal else 0
        if qs >= L_q:
            if not acc_v:
                zero_fill(dV + c0 * d_v, (c1 - c0) * d_v)
            continue
        mm(own, True, c1 - c0, d_v, L_q - qs, <floating> 1, Pm + qs * L_k + c0, L_k,
           dO + qs * ldg, ldg, acc_v, dV + c0 * d_v, d_v)
    # (2) query blocks: dP = dO V^T, dS = P * (dP - D), dQ = scale * dS K
    for blk in range((L_q + bq - 1) // bq):
        r0 = blk * bq
        r1 = r0 + bq if r0 + bq < L_q else L_q
        e = clamp(r1 - 1 + off + 1, 0, L_k) if causal else L_k
        if e == 0:
            if not acc_q:
                zero_fill(dQ + r0 * d_k, (r1 - r0) * d_k)
            if not inplace:
                zero_fill(dS + r0 * L_k, (r1 - r0) * L_k)
            continue
        mm(own, False, r1 - r0, e, d_v, <floating> 1, dO + r0 * ldg, ldg, VT, ldvt, False,
           dP, L_k)
        for i in range(r0, r1):
            n = clamp(i + off + 1, 0, L_k) if causal else L_k
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
                zero_fill(sr + n, zend - n)
        mm(own, False, r1 - r0, d_k, e, scale, dS + r0 * L_k, L_k, K, ldk, acc_q,
           dQ + r0 * d_k, d_k)
    # (3) dK[c0:c1] = scale * dS[qs:, c0:c1]^T Q[qs:]     (key blocks)
    for blk in range((L_k + bk - 1) // bk):
        c0 = blk * bk
        c1 = c0 + bk if c0 + bk < L_k else L_k
        qs = clamp(c0 - off, 0, L_q) if causal else 0
        if qs >= L_q:
            if not acc_k:
                zero_fill(dK + c0 * d_k, (c1 - c0) * d_k)
            continue
        mm(own, True, c1 - c0, d_k, L_q - qs, scale, dS + qs * L_k + c0, L_k,
           Q + qs * ldq, ldq, acc_k, dK + c0 * d_k, d_k)




# ----------------------------------------------------------------- the call --
cdef class SdpaCall:
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
    cdef readonly Py_ssize_t slabs, L_q, L_k, d_k, d_v
    cdef readonly tuple lead, shapes
    cdef CallCore c
    cdef list pins
    cdef bint keep_probs
    cdef void* probs
    cdef Py_ssize_t block_q, block_k
    cdef bint own_gemm, scores_nt

    def __init__(self, q, k, v, probs, double scale, mask=None, causal_offset=None,
                 Py_ssize_t block_q=64, Py_ssize_t block_k=64, bint keep_probs=False,
                 bint own_gemm=False, bint scores_nt=False):
        self.pins = []
        core_start(&self.c, np.asarray(q).dtype, scale, causal_offset)
        if block_q < 1 or block_k < 1:
            raise ValueError(f"block sizes must be >= 1, got {block_q}, {block_k}")
        self.block_q, self.block_k, self.keep_probs = block_q, block_k, keep_probs
        self.own_gemm, self.scores_nt = own_gemm, scores_nt
        self.lead, self.shapes = core_fill(&self.c, self.pins, q, k, v, True)
        self.slabs, self.L_q, self.L_k = self.c.slabs, self.c.L_q, self.c.L_k
        self.d_k, self.d_v = self.c.d_k, self.c.d_v
        if self.c.double:
            _fill_probs[double](self, probs)
        else:
            _fill_probs[float](self, probs)
        core_mask(&self.c, self.pins, mask)
        self.c.ready = True



cdef int _fill_probs(SdpaCall c, floating[:, :, ::1] probs) except -1:
    if probs.shape[0] != c.slabs or probs.shape[1] != c.L_q or probs.shape[2] != c.L_k:
        raise ValueError(f"probs must have shape {(c.slabs, c.L_q, c.L_k)}, got "
                         f"{(probs.shape[0], probs.shape[1], probs.shape[2])}")
    c.probs = &probs[0, 0, 0]
    c.pins.append(probs)
    return 0



# --------------------------------------------------------------- entry points --
def sdpa_forward(SdpaCall call not None, floating[:, :, ::1] out, Py_ssize_t p0,
                 Py_ssize_t p1):
    """Forward over slabs ``p0 <= p < p1`` of ``call`` (see the module docstring);
    ``out [P, L_q, d_v]`` C-contiguous."""
    cdef Py_ssize_t L_q = call.L_q, L_k = call.L_k, d_k = call.d_k, d_v = call.d_v, p
    cdef Py_ssize_t last = -1, ldkt
    cdef const CallCore* c = &call.c
    cdef const floating* Q = <const floating*> c.q.base
    cdef const floating* K = <const floating*> c.k.base
    cdef const floating* V = <const floating*> c.v.base
    cdef const floating* kt
    cdef floating* Pm = <floating*> call.probs
    cdef const MaskRef* m = &c.mask
    cdef const uint8_t* bm = NULL
    cdef const floating* fm = NULL
    check_call(c, "SdpaCall", floating is double, p0, p1)
    if out.shape[0] != call.slabs or out.shape[1] != L_q or out.shape[2] != d_v:
        raise ValueError(f"out must have shape {(call.slabs, L_q, d_v)}, got "
                         f"{(out.shape[0], out.shape[1], out.shape[2])}")
    if p0 == p1:
        return
    cdef bint nt = call.scores_nt
    cdef floating* KT = <floating*> malloc((1 if nt else d_k * t_ld(L_k)) * sizeof(floating))
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
                if nt:                        # the scores straight from K's rows
                    kt, ldkt = K + c.k.off[p], c.k.ld
                else:
                    if c.k.off[p] != last:
                        transpose(K + c.k.off[p], c.k.ld, L_k, d_k, KT, t_ld(L_k), False)
                        last = c.k.off[p]
                    kt, ldkt = KT, t_ld(L_k)
                _forward_slab(Q + c.q.off[p], c.q.ld, kt, ldkt, nt, V + c.v.off[p],
                              c.v.ld, &out[p, 0, 0], Pm + p * L_q * L_k, L_q, L_k, d_k,
                              d_v, <floating> c.scale, m.kind, bm, fm, m.rs, m.cs,
                              c.causal, c.causal_offset, call.block_q, call.own_gemm)
    finally:
        free(KT)


cdef int check_grad(Slabs* g, list pins, floating[:, :, :, :, :, :] a, tuple shape,
                     const Py_ssize_t* lead, Py_ssize_t L, Py_ssize_t d, str name) except -1:
    """A gradient buffer: C-contiguous rows in the shape of its input."""
    if shape6(a.shape) != shape:
        raise ValueError(f"{name} must have the shape of its input {shape}, "
                         f"got {shape6(a.shape)}")
    slabs_of(g, pins, a, lead, L, d, name)
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
    cdef Py_ssize_t last = -1, need
    cdef Slabs go, gq, gk, gv
    cdef list pins = []
    cdef bint overwrite = not call.keep_probs
    cdef const CallCore* c = &call.c
    cdef const floating* Q = <const floating*> c.q.base
    cdef const floating* K = <const floating*> c.k.base
    cdef const floating* V = <const floating*> c.v.base
    cdef floating* Pm = <floating*> call.probs
    cdef floating* dS
    cdef floating* dP
    cdef floating* VT
    check_call(c, "SdpaCall", floating is double, p0, p1)
    check_grad_out(c, &go, pins, grad_out, call.lead)
    check_grad(&gq, pins, grad_q, call.shapes[0], c.lead4, L_q, d_k, "grad_q")
    check_grad(&gk, pins, grad_k, call.shapes[1], c.lead4, L_k, d_k, "grad_k")
    check_grad(&gv, pins, grad_v, call.shapes[2], c.lead4, L_k, d_v, "grad_v")
    if p0 == p1:
        return
    need = d_v * t_ld(L_k) + call.block_q * L_k + (0 if overwrite else L_q * L_k)
    VT = <floating*> malloc(need * sizeof(floating))
    if VT == NULL:
        raise MemoryError("sdpa_backward: cannot allocate the scratch")
    dP = VT + d_v * t_ld(L_k)
    try:
        with nogil:
            for p in range(p0, p1):
                dS = Pm + p * L_q * L_k if overwrite else dP + call.block_q * L_k
                if c.v.off[p] != last:        # slabs sharing a V head (GQA) share V^T
                    transpose(V + c.v.off[p], c.v.ld, L_k, d_v, VT, t_ld(L_k), False)
                    last = c.v.off[p]
                _backward_slab(Q + c.q.off[p], c.q.ld, K + c.k.off[p], c.k.ld,
                               VT, t_ld(L_k), Pm + p * L_q * L_k,
                               <const floating*> go.base + go.off[p], go.ld, dS, dP,
                               <floating*> gq.base + gq.off[p],
                               <floating*> gk.base + gk.off[p],
                               <floating*> gv.base + gv.off[p], gq.bcast, gk.bcast,
                               gv.bcast, L_q, L_k, d_k, d_v, <floating> c.scale,
                               c.causal, c.causal_offset, call.block_q, call.block_k,
                               call.own_gemm)
    finally:
        free(VT)



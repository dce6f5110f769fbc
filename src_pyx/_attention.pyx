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
"""
import numpy as np

from cython cimport floating
from libc.stdint cimport uint8_t
from libc.string cimport memset

from _blas cimport gemm
from _softmax_row cimport softmax_row
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


cdef _check_offsets(const Py_ssize_t[::1] off, Py_ssize_t p0, Py_ssize_t p1,
                    Py_ssize_t span, Py_ssize_t size, str name):
    cdef Py_ssize_t p
    if off.shape[0] < p1:
        raise ValueError(f"{name} offsets: expected at least {p1} entries, got {off.shape[0]}")
    for p in range(p0, p1):
        if off[p] < 0 or off[p] + span > size:
            raise ValueError(f"{name} slab {p} (offset {off[p]}, {span} elements) lies "
                             f"outside its buffer of {size} elements")


cdef _check_common(Py_ssize_t P, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t L_q,
                   Py_ssize_t L_k, Py_ssize_t d_k, Py_ssize_t d_v, Py_ssize_t bq,
                   Py_ssize_t bk):
    if not 0 <= p0 <= p1 <= P:
        raise ValueError(f"slab range must satisfy 0 <= p0 <= p1 <= {P}, got [{p0}, {p1})")
    if L_q < 0 or L_k < 0 or d_k < 0 or d_v < 0:
        raise ValueError("sizes must be non-negative")
    if bq < 1 or bk < 1:
        raise ValueError(f"block sizes must be >= 1, got {bq}, {bk}")
    if max(L_q * L_k, L_q * d_k, L_k * d_k, L_q * d_v, L_k * d_v) >= 2 ** 31:
        raise ValueError("a (batch, head) slab is too large for 32-bit BLAS")


cdef _check_mask(int mask_kind, Py_ssize_t msize, const Py_ssize_t[::1] moff,
                 Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t L_q, Py_ssize_t L_k,
                 Py_ssize_t mrs, Py_ssize_t mcs):
    cdef Py_ssize_t p, need
    if mask_kind not in (0, 1, 2):
        raise ValueError(f"mask_kind must be 0, 1 or 2, got {mask_kind}")
    if mask_kind == 0 or L_q == 0 or L_k == 0:
        return
    if mrs < 0 or mcs < 0:
        raise ValueError("mask strides must be non-negative")
    need = (L_q - 1) * mrs + (L_k - 1) * mcs + 1
    _check_offsets(moff, p0, p1, need, msize, "mask")


cdef tuple _slab_layout(const floating[:, :, :, :, :, :] a, const Py_ssize_t* lead,
                        Py_ssize_t L, Py_ssize_t d, str name):
    """``(offsets [P], row stride, broadcast?)`` of the ``P`` slabs of a 6-D view
    ``[l0, l1, l2, l3, L, d]`` whose lead dims are ``lead`` or 1 (broadcast).

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
    offs = np.empty(P, dtype=np.intp)
    cdef Py_ssize_t[::1] o = offs
    for p in range(P):
        rem = p
        off = 0
        for dim in range(3, -1, -1):
            off += (rem % lead[dim]) * st[dim]
            rem = rem // lead[dim]
        o[p] = off
    return offs, ld, bcast


cdef _lead4(tuple lead, Py_ssize_t* out):
    if len(lead) != 4 or min(lead) < 1:
        raise ValueError(f"lead must be 4 dims >= 1, got {lead}")
    for i in range(4):
        out[i] = lead[i]
    return out[0] * out[1] * out[2] * out[3]


def sdpa_forward(const floating[:, :, :, :, :, :] q, const floating[:, :, :, :, :, :] k,
                 const floating[:, :, :, :, :, :] v, floating[::1] out,
                 floating[::1] probs, tuple lead, Py_ssize_t p0, Py_ssize_t p1,
                 floating scale, int mask_kind, const uint8_t[::1] bmask,
                 const floating[::1] fmask, const Py_ssize_t[::1] moff,
                 Py_ssize_t mrs, Py_ssize_t mcs, bint causal, Py_ssize_t causal_offset,
                 floating[::1] scratch, Py_ssize_t block_q=64):
    """Forward over slabs ``p0 <= p < p1``; see the module docstring.

    ``q``/``k``/``v``: 6-D views ``[l0, l1, l2, l3, L, d]`` in their own shapes, each
    lead dim equal to ``lead``'s or 1 (broadcast); the last dim contiguous, any
    non-negative row / lead strides (a transposed ``[B, L, h, d_k]`` projection is
    used as it is).  ``out`` ``[P, L_q, d_v]`` and ``probs`` ``[P, L_q, L_k]``: flat,
    C-contiguous.  ``mask_kind`` 0 none, 1 bool (``bmask`` as uint8), 2 additive
    (``fmask``), addressed like ``_softmax.softmax_forward``.  ``scratch`` holds
    ``d_k * L_k`` elements (``K^T``).  Everything is validated here, before the GIL
    is released.
    """
    cdef Py_ssize_t lead4[4]
    cdef Py_ssize_t P = _lead4(lead, lead4)
    cdef Py_ssize_t L_q = q.shape[4], d_k = q.shape[5], L_k = k.shape[4], d_v = v.shape[5]
    cdef Py_ssize_t p, last = -1, ldq, ldk, ldv
    cdef const Py_ssize_t[::1] qo
    cdef const Py_ssize_t[::1] ko
    cdef const Py_ssize_t[::1] vo
    cdef floating* KT
    cdef const uint8_t* bm = NULL
    cdef const floating* fm = NULL
    _check_common(P, p0, p1, L_q, L_k, d_k, d_v, block_q, 1)
    if min(L_q, L_k, d_k, d_v) < 1:
        raise ValueError("L_q, L_k, d_k, d_v must be >= 1 for the fused kernel")
    if out.shape[0] != P * L_q * d_v:
        raise ValueError(f"out must hold {P * L_q * d_v} elements, got {out.shape[0]}")
    if probs.shape[0] != P * L_q * L_k:
        raise ValueError(f"probs must hold {P * L_q * L_k} elements, got {probs.shape[0]}")
    qoff, ldq, _ = _slab_layout(q, lead4, L_q, d_k, "query")
    koff, ldk, _ = _slab_layout(k, lead4, L_k, d_k, "key")
    voff, ldv, _ = _slab_layout(v, lead4, L_k, d_v, "value")
    qo, ko, vo = qoff, koff, voff
    _check_mask(mask_kind, bmask.shape[0] if mask_kind == 1 else fmask.shape[0], moff,
                p0, p1, L_q, L_k, mrs, mcs)
    if scratch.shape[0] < d_k * L_k:
        raise ValueError(f"scratch must hold {d_k * L_k} elements, got {scratch.shape[0]}")
    if p0 == p1:
        return
    KT = &scratch[0]
    with nogil:
        for p in range(p0, p1):
            if mask_kind == 1:
                bm = &bmask[0] + moff[p]
            elif mask_kind == 2:
                fm = &fmask[0] + moff[p]
            if ko[p] != last:            # slabs sharing a K head (GQA) share K^T
                transpose(&k[0, 0, 0, 0, 0, 0] + ko[p], ldk, L_k, d_k, KT, L_k, False)
                last = ko[p]
            _forward_slab(&q[0, 0, 0, 0, 0, 0] + qo[p], ldq, KT,
                          &v[0, 0, 0, 0, 0, 0] + vo[p], ldv,
                          &out[0] + p * L_q * d_v, &probs[0] + p * L_q * L_k,
                          L_q, L_k, d_k, d_v, scale, mask_kind, bm, fm, mrs, mcs,
                          causal, causal_offset, block_q)


def sdpa_backward(const floating[:, :, :, :, :, :] q, const floating[:, :, :, :, :, :] k,
                  const floating[:, :, :, :, :, :] v, floating[::1] probs,
                  const floating[:, :, :, :, :, :] grad_out,
                  floating[:, :, :, :, :, :] grad_q, floating[:, :, :, :, :, :] grad_k,
                  floating[:, :, :, :, :, :] grad_v, tuple lead,
                  Py_ssize_t p0, Py_ssize_t p1, floating scale, bint causal,
                  Py_ssize_t causal_offset, bint overwrite_probs, floating[::1] scratch,
                  Py_ssize_t block_q=64, Py_ssize_t block_k=64):
    """Backward over slabs ``p0 <= p < p1``; see the module docstring.

    ``q``/``k``/``v``/``grad_out``: 6-D views as in :func:`sdpa_forward`
    (``grad_out`` with the full lead shape).  ``grad_q``/``grad_k``/``grad_v``:
    C-contiguous 6-D arrays in the (padded) shapes of ``q``/``k``/``v``; one that
    broadcasts over a lead dim is accumulated into (the caller zeroes it), the
    others are overwritten.  ``overwrite_probs``: reuse ``probs`` for ``dS``
    (destroys it); otherwise ``scratch`` also holds an ``[L_q, L_k]`` dS buffer.
    ``scratch`` holds ``(d_v + block_q) * L_k`` (+ ``L_q * L_k``) elements (``V^T``,
    a ``dP`` row block, ``dS``).
    """
    cdef Py_ssize_t lead4[4]
    cdef Py_ssize_t P = _lead4(lead, lead4)
    cdef Py_ssize_t L_q = q.shape[4], d_k = q.shape[5], L_k = k.shape[4], d_v = v.shape[5]
    cdef Py_ssize_t p, need, last = -1, ldq, ldk, ldv, ldg, x
    cdef bint acc_q, acc_k, acc_v
    cdef const Py_ssize_t[::1] qo
    cdef const Py_ssize_t[::1] ko
    cdef const Py_ssize_t[::1] vo
    cdef const Py_ssize_t[::1] go
    cdef const Py_ssize_t[::1] gqo
    cdef const Py_ssize_t[::1] gko
    cdef const Py_ssize_t[::1] gvo
    cdef floating* dS
    cdef floating* dP
    cdef floating* VT
    _check_common(P, p0, p1, L_q, L_k, d_k, d_v, block_q, block_k)
    if min(L_q, L_k, d_k, d_v) < 1:
        raise ValueError("L_q, L_k, d_k, d_v must be >= 1 for the fused kernel")
    if probs.shape[0] != P * L_q * L_k:
        raise ValueError(f"probs must hold {P * L_q * L_k} elements, got {probs.shape[0]}")
    qoff, ldq, _ = _slab_layout(q, lead4, L_q, d_k, "query")
    koff, ldk, _ = _slab_layout(k, lead4, L_k, d_k, "key")
    voff, ldv, _ = _slab_layout(v, lead4, L_k, d_v, "value")
    goff, ldg, _ = _slab_layout(grad_out, lead4, L_q, d_v, "grad_out")
    for x in range(6):
        if grad_q.shape[x] != q.shape[x] or grad_k.shape[x] != k.shape[x] or \
                grad_v.shape[x] != v.shape[x]:
            raise ValueError("grad_q, grad_k, grad_v must have the shapes of q, k, v")
    for x in range(4):
        if grad_out.shape[x] != lead4[x]:
            raise ValueError(f"grad_out must have the full lead shape {lead}")
    # the gradient buffers are C-contiguous in their own shapes: row stride = width
    gqoff, x, acc_q = _slab_layout(grad_q, lead4, L_q, d_k, "grad_q")
    if x != d_k and L_q > 1:
        raise ValueError("grad_q rows must be contiguous (row stride = width)")
    gkoff, x, acc_k = _slab_layout(grad_k, lead4, L_k, d_k, "grad_k")
    if x != d_k and L_k > 1:
        raise ValueError("grad_k rows must be contiguous (row stride = width)")
    gvoff, x, acc_v = _slab_layout(grad_v, lead4, L_k, d_v, "grad_v")
    if x != d_v and L_k > 1:
        raise ValueError("grad_v rows must be contiguous (row stride = width)")
    qo, ko, vo, go, gqo, gko, gvo = qoff, koff, voff, goff, gqoff, gkoff, gvoff
    need = (d_v + block_q) * L_k + (0 if overwrite_probs else L_q * L_k)
    if scratch.shape[0] < need:
        raise ValueError(f"scratch must hold {need} elements, got {scratch.shape[0]}")
    if p0 == p1:
        return
    VT = &scratch[0]
    dP = VT + d_v * L_k
    with nogil:
        for p in range(p0, p1):
            dS = &probs[0] + p * L_q * L_k if overwrite_probs else dP + block_q * L_k
            if vo[p] != last:            # slabs sharing a V head (GQA) share V^T
                transpose(&v[0, 0, 0, 0, 0, 0] + vo[p], ldv, L_k, d_v, VT, L_k, False)
                last = vo[p]
            _backward_slab(&q[0, 0, 0, 0, 0, 0] + qo[p], ldq, &k[0, 0, 0, 0, 0, 0] + ko[p],
                           ldk, VT, &probs[0] + p * L_q * L_k,
                           &grad_out[0, 0, 0, 0, 0, 0] + go[p], ldg, dS, dP,
                           &grad_q[0, 0, 0, 0, 0, 0] + gqo[p],
                           &grad_k[0, 0, 0, 0, 0, 0] + gko[p],
                           &grad_v[0, 0, 0, 0, 0, 0] + gvo[p], acc_q, acc_k, acc_v,
                           L_q, L_k, d_k, d_v, scale, causal, causal_offset,
                           block_q, block_k)


# ------------------------------------------------------------ BLAS threads --
# The Python driver may split the slabs over several threads, each running the
# nogil kernels above; OpenBLAS must then run single-threaded inside them or the
# cores are oversubscribed (and OpenBLAS serialises concurrent threaded calls).
# These helpers find the OpenBLAS that scipy.linalg.cython_blas (hence _blas.pxd)
# calls, through the address of its sgemm, and read / set its thread count.

cdef extern from "dlfcn.h" nogil:
    ctypedef struct Dl_info:
        const char* dli_fname
        void* dli_fbase
        const char* dli_sname
        void* dli_saddr
    int dladdr(const void* addr, Dl_info* info)
    void* dlopen(const char* filename, int flag)
    void* dlsym(void* handle, const char* symbol)
    int RTLD_NOW
    int RTLD_NOLOAD

from scipy.linalg.cython_blas cimport sgemm as _sgemm_for_address

ctypedef int (*_get_threads_t)() noexcept nogil
ctypedef void (*_set_threads_t)(int) noexcept nogil

cdef _get_threads_t _blas_get = NULL
cdef _set_threads_t _blas_set = NULL
cdef bint _blas_probed = False


cdef void _probe_blas() noexcept:
    global _blas_get, _blas_set, _blas_probed
    cdef Dl_info info
    cdef void* handle
    cdef void* g
    cdef void* s
    _blas_probed = True
    if not dladdr(<const void*> _sgemm_for_address, &info) or info.dli_fname == NULL:
        return
    handle = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD)
    if handle == NULL:
        return
    for get_name, set_name in ((b"scipy_openblas_get_num_threads", b"scipy_openblas_set_num_threads"),
                               (b"openblas_get_num_threads", b"openblas_set_num_threads"),
                               (b"scipy_openblas_get_num_threads64_", b"scipy_openblas_set_num_threads64_"),
                               (b"openblas_get_num_threads64_", b"openblas_set_num_threads64_")):
        g = dlsym(handle, <const char*> get_name)
        s = dlsym(handle, <const char*> set_name)
        if g != NULL and s != NULL:
            _blas_get = <_get_threads_t> g
            _blas_set = <_set_threads_t> s
            return


def blas_threads():
    """Threads of the OpenBLAS behind ``scipy.linalg.cython_blas``; 0 if unknown."""
    if not _blas_probed:
        _probe_blas()
    return _blas_get() if _blas_get != NULL else 0


def set_blas_threads(int n):
    """Set that OpenBLAS's thread count (process-wide); returns False if unknown."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not _blas_probed:
        _probe_blas()
    if _blas_set == NULL:
        return False
    _blas_set(n)
    return True

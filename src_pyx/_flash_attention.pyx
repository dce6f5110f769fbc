"""Tiled ("flash") scaled dot-product attention: forward and backward over (batch,
head) slabs without materialising the probabilities.

Inputs, slabs, masks and the causal alignment are those of the fused kernel
(``_attention.pyx``; the shared checks are in ``_attn_call.pxd``).

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
crossing the diagonal get exact zeros above it.  A window (``FlashCall(window=...)``,
with optional global rows and keys) is handled the same way: both passes visit only
the tiles that meet the band or a global row / key, and a tile partly outside the band
gets ``-inf`` scores there (``_band_tile``) before the row passes, which are in
``_flash.h``.
"""
import numpy as np

from cython cimport floating
from libc.math cimport INFINITY, log
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from _attn_call cimport (CallCore, Slabs, check_call, check_grad_out, clamp, core_fill,
                         core_mask, core_start, zero_fill)
from _attn_gemm cimport agemm
from _blas cimport gemm
from _softmax_row cimport MASK_ADD, MASK_BOOL, MaskRef
from _vmath cimport bind_simd, vdot

bind_simd(__name__)


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


cdef struct Band:
    # A window on the keys (``on``): query ``i`` keeps keys ``i + off - left <= j <=
    # i + off + right``; global rows (``gq[i]``) and keys (``gk[j]``) are kept whole.
    # ``qruns`` / ``kruns``: the global rows / keys as ``n`` sorted runs ``[a, b)``.
    bint on
    Py_ssize_t left, right, off
    const uint8_t* gq
    const uint8_t* gk
    const Py_ssize_t* qruns
    const Py_ssize_t* kruns
    Py_ssize_t nq, nk


cdef inline bint _any(const uint8_t* flags, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    cdef Py_ssize_t i
    if flags == NULL:
        return False
    for i in range(a, b):
        if flags[i]:
            return True
    return False


cdef Py_ssize_t _next_seg(Py_ssize_t pos, Py_ssize_t end, Py_ssize_t b0, Py_ssize_t b1,
                          const Py_ssize_t* runs, Py_ssize_t n,
                          Py_ssize_t* seg_end) noexcept nogil:
    """Start of the first position ``>= pos`` (``end`` if none before it) of the union of
    ``[b0, b1)`` and the runs; ``seg_end``: the end of that stretch of the union, cut at
    ``end``."""
    cdef Py_ssize_t best = end, be = end, s, t
    cdef bint grew = True
    if b0 < b1:
        s = pos if pos > b0 else b0
        if s < b1 and s < best:
            best, be = s, b1
    for t in range(n):
        s = pos if pos > runs[2 * t] else runs[2 * t]
        if s < runs[2 * t + 1] and s < best:
            best, be = s, runs[2 * t + 1]
    while grew:                                  # merge what touches the stretch
        grew = False
        if b0 <= be < b1:
            be, grew = b1, True
        for t in range(n):
            if runs[2 * t] <= be < runs[2 * t + 1]:
                be, grew = runs[2 * t + 1], True
    seg_end[0] = be if be < end else end
    return best


cdef void _band_tile(floating* S, Py_ssize_t rows, Py_ssize_t w, Py_ssize_t i0,
                     Py_ssize_t j0, const Band* bd) noexcept nogil:
    """Set to ``-inf`` the entries of the score tile ``S [rows, w]`` (query ``i0 + r``,
    key ``j0 + j``) outside the window, unless their row or key is global."""
    cdef Py_ssize_t r, j, lo, hi
    cdef floating* x
    for r in range(rows):
        if bd.gq != NULL and bd.gq[i0 + r]:
            continue
        x = S + r * w
        lo = clamp(i0 + r + bd.off - bd.left - j0, 0, w)
        hi = clamp(i0 + r + bd.off + bd.right + 1 - j0, lo, w)
        if bd.gk == NULL:
            for j in range(lo):
                x[j] = -INFINITY
            for j in range(hi, w):
                x[j] = -INFINITY
        else:
            for j in range(lo):
                if not bd.gk[j0 + j]:
                    x[j] = -INFINITY
            for j in range(hi, w):
                if not bd.gk[j0 + j]:
                    x[j] = -INFINITY


cdef void _flash_fwd_rows(const floating* Q, Py_ssize_t ldq, const floating* K,
                          Py_ssize_t ldk, const floating* V, Py_ssize_t ldv, floating* O,
                          floating* lse, Py_ssize_t p, Py_ssize_t a0, Py_ssize_t a1,
                          Py_ssize_t L_q, Py_ssize_t L_k, Py_ssize_t d_k, Py_ssize_t d_v,
                          floating scale, const MaskRef* mk, bint causal, Py_ssize_t off,
                          Py_ssize_t bq, Py_ssize_t bk, floating* S, floating* m,
                          floating* l, nn_fa_drop* drop, const Band* bd) noexcept nogil:
    """Query rows ``a0:a1`` of slab ``p``: ``O [L_q, d_v]`` and ``lse [L_q]`` of the slab.

    Per query block ``r0:r1`` and key block ``c0:c0+w`` (keys ``>= e`` never seen by
    the block are skipped: the causal upper triangle; with a window only the keys of
    the band and the global keys are visited, the rest of a tile masked)::

        S = scale * Q[r0:r1] K[c0:c0+w]^T      (GEMM)
        online-softmax step on S -> P           (_flash.h; rescales O[r0:r1])
        O[r0:r1] += P V[c0:c0+w]                (GEMM)

    then ``O /= l`` and ``lse = m + log(l)`` (``+inf`` for a row with no allowed key,
    whose output is 0)."""
    cdef Py_ssize_t r0, r1, nr, e, c0, ce, b0, b1, w, r, j
    cdef floating inv
    cdef floating* orow
    cdef const uint8_t* bm
    cdef const floating* fm
    cdef uint64_t base = <uint64_t> p * <uint64_t> L_q * <uint64_t> L_k
    r0 = a0
    while r0 < a1:
        r1 = r0 + bq if r0 + bq < a1 else a1
        nr = r1 - r0
        e = clamp(r1 - 1 + off + 1, 0, L_k) if causal else L_k
        for r in range(nr):
            m[r] = -INFINITY
            l[r] = 0
        zero_fill(O + r0 * d_v, nr * d_v)
        # keys the block may see: all before e, or the window's plus the global keys
        b0, b1 = 0, e
        if bd.on and not _any(bd.gq, r0, r1):
            b0 = clamp(r0 + bd.off - bd.left, 0, e)
            b1 = clamp(r1 - 1 + bd.off + bd.right + 1, b0, e)
        c0 = _next_seg(0, e, b0, b1, bd.kruns, bd.nk, &ce)
        while c0 < e:
            w = bk if c0 + bk < ce else ce - c0
            gemm(False, True, <int>nr, <int>w, <int>d_k, scale, Q + r0 * ldq, <int>ldq,
                 K + c0 * ldk, <int>ldk, 0, S, <int>w)
            if bd.on:
                _band_tile(S, nr, w, r0, c0, bd)
            _mask_at(mk, p, r0, c0, &bm, &fm)
            if drop != NULL:
                drop.off = base + <uint64_t> r0 * <uint64_t> L_k + <uint64_t> c0
            _fwd_tile(S, nr, w, causal, r0 + off + 1 - c0, mk, bm, fm, m, l,
                      O + r0 * d_v, d_v, drop)
            agemm(False, nr, d_v, w, <floating> 1, S, w, V + c0 * ldv, ldv, True,
                  O + r0 * d_v, d_v)
            c0 += w
            if c0 >= ce:
                c0 = _next_seg(c0, e, b0, b1, bd.kruns, bd.nk, &ce)
        for r in range(nr):
            orow = O + (r0 + r) * d_v
            if m[r] == -INFINITY:                # no allowed key: output 0
                zero_fill(orow, d_v)
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
                          nn_fa_drop* drop, const Band* bd) noexcept nogil:
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
    cdef Py_ssize_t c0, c1, wk, qs, r0, r1, re, b0, b1, nr, e, w, i, j
    cdef const uint8_t* bm
    cdef const floating* fm
    cdef uint64_t base = <uint64_t> p * <uint64_t> L_q * <uint64_t> L_k
    qs = clamp(a0 - off, 0, L_q) if causal else 0
    for i in range(qs, L_q):
        D[i] = vdot(dO + i * ldg, O + i * d_v, d_v)
    c0 = a0
    while c0 < a1:
        c1 = c0 + bk if c0 + bk < a1 else a1
        wk = c1 - c0
        zero_fill(dKa, wk * d_k)
        zero_fill(dVa, wk * d_v)
        qs = clamp(c0 - off, 0, L_q) if causal else 0
        # query rows that see the block: all from qs, or the window's plus the global rows
        b0, b1 = qs, L_q
        if bd.on and not _any(bd.gk, c0, c1):
            b0 = clamp(c0 - bd.off - bd.right, qs, L_q)
            b1 = clamp(c1 - 1 - bd.off + bd.left + 1, b0, L_q)
        r0 = _next_seg(qs, L_q, b0, b1, bd.qruns, bd.nq, &re)
        while r0 < L_q:
            r1 = r0 + bq if r0 + bq < re else re
            nr = r1 - r0
            e = c1
            if causal:
                e = clamp(r1 - 1 + off + 1, 0, L_k)
                if e > c1:
                    e = c1
            w = e - c0
            gemm(False, True, <int>nr, <int>w, <int>d_k, scale, Q + r0 * ldq, <int>ldq,
                 K + c0 * ldk, <int>ldk, 0, S, <int>w)
            if bd.on:
                _band_tile(S, nr, w, r0, c0, bd)
            _mask_at(mk, p, r0, c0, &bm, &fm)
            _bwd_p(S, nr, w, causal, r0 + off + 1 - c0, mk, bm, fm, lse + r0)
            gemm(False, True, <int>nr, <int>w, <int>d_v, 1, dO + r0 * ldg, <int>ldg,
                 V + c0 * ldv, <int>ldv, 0, dP, <int>w)
            if drop != NULL:
                drop.off = base + <uint64_t> r0 * <uint64_t> L_k + <uint64_t> c0
            _bwd_ds(S, dP, nr, w, causal, r0 + off + 1 - c0, lse + r0, D + r0, drop)
            agemm(True, w, d_v, nr, <floating> 1, S, w, dO + r0 * ldg, ldg, True, dVa, d_v)
            agemm(False, nr, d_k, w, scale, dP, w, K + c0 * ldk, ldk, True, dQ + r0 * d_k,
                  d_k)
            agemm(True, w, d_k, nr, scale, dP, w, Q + r0 * ldq, ldq, True, dKa, d_k)
            r0 = r1
            if r0 >= re:
                r0 = _next_seg(r0, L_q, b0, b1, bd.qruns, bd.nq, &re)
        memcpy(dK + c0 * d_k, dKa, wk * d_k * sizeof(floating))
        memcpy(dV + c0 * d_v, dVa, wk * d_v * sizeof(floating))
        c0 = c1


cdef class FlashCall:
    """One tiled attention call, checked once; ``flash_forward`` / ``flash_backward``
    run lists of tasks of it (on any threads).

    ``q``, ``k``, ``v``, ``mask``, ``causal_offset``: as :class:`SdpaCall` (no
    ``probs``: the tiled kernel keeps one log-sum-exp per query row instead).
    ``dropout``: None or ``(k0, k1, threshold, scale)``, the key of the
    counter-based mask of ``_layers.h`` over the flat ``[P, L_q, L_k]`` scores:
    score ``(p, i, j)`` is kept iff ``hash(((p * L_q) + i) * L_k + j) >= threshold``
    and then scaled by ``scale``.
    """
    cdef readonly Py_ssize_t slabs, L_q, L_k, d_k, d_v
    cdef readonly tuple lead, shapes
    cdef CallCore c
    cdef list pins
    cdef bint has_drop
    cdef nn_fa_drop drop
    cdef Band band

    def __init__(self, q, k, v, double scale, mask=None, causal_offset=None, dropout=None,
                 window=None, global_q=None, global_k=None):
        self.pins = []
        memset(&self.band, 0, sizeof(Band))
        core_start(&self.c, np.asarray(q).dtype, scale, causal_offset)
        memset(&self.drop, 0, sizeof(nn_fa_drop))
        self.has_drop = dropout is not None
        if self.has_drop:
            k0, k1, threshold, dscale = dropout
            if not (0 <= k0 < 2 ** 32 and 0 <= k1 < 2 ** 32 and 0 <= threshold < 2 ** 32):
                raise ValueError("dropout keys and threshold must be 32-bit unsigned")
            self.drop.k0, self.drop.k1, self.drop.threshold = k0, k1, threshold
            self.drop.scale = dscale
        self.lead, self.shapes = core_fill(&self.c, self.pins, q, k, v, False)
        self.slabs, self.L_q, self.L_k = self.c.slabs, self.c.L_q, self.c.L_k
        self.d_k, self.d_v = self.c.d_k, self.c.d_v
        self.drop.row = self.L_k
        core_mask(&self.c, self.pins, mask)
        if window is not None:
            self._set_band(window, global_q, global_k)
        self.c.ready = True

    cdef int _set_band(self, window, global_q, global_k) except -1:
        cdef const uint8_t[::1] fq
        cdef const uint8_t[::1] fk
        cdef const Py_ssize_t[:, ::1] rq
        cdef const Py_ssize_t[:, ::1] rk
        left, right, off = window
        big = self.L_q + self.L_k + 1
        if not (0 <= left and 0 <= right and abs(off) < big):
            raise ValueError(f"window must be (left >= 0, right >= 0, |offset| < {big}), "
                             f"got {window}")
        self.band.on = True
        self.band.left, self.band.right, self.band.off = min(left, big), min(right, big), off
        if global_q is None and global_k is None:
            return 0
        fq = np.ascontiguousarray(global_q, dtype=np.uint8)
        fk = np.ascontiguousarray(global_k, dtype=np.uint8)
        if fq.shape[0] != self.L_q or fk.shape[0] != self.L_k:
            raise ValueError(f"global flags must be [{self.L_q}] and [{self.L_k}], got "
                             f"[{fq.shape[0]}] and [{fk.shape[0]}]")
        rq, rk = _runs(fq), _runs(fk)
        self.pins += [fq, fk, rq, rk]
        self.band.gq, self.band.gk = &fq[0], &fk[0]
        self.band.nq, self.band.nk = rq.shape[0], rk.shape[0]
        self.band.qruns = &rq[0, 0] if rq.shape[0] else NULL
        self.band.kruns = &rk[0, 0] if rk.shape[0] else NULL
        return 0


def _runs(flags):
    """The runs ``[a, b)`` of nonzero ``flags`` as a C-contiguous ``[n, 2]`` intp array."""
    f = np.concatenate(([0], np.asarray(flags) != 0, [0])).astype(np.int8)
    edges = np.flatnonzero(np.diff(f))
    return np.ascontiguousarray(edges.reshape(-1, 2), dtype=np.intp)


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
    cdef const CallCore* c = &call.c
    cdef const floating* Q = <const floating*> c.q.base
    cdef const floating* K = <const floating*> c.k.base
    cdef const floating* V = <const floating*> c.v.base
    cdef nn_fa_drop dr
    cdef nn_fa_drop* drop
    check_call(c, "FlashCall", floating is double, 0, 0)
    _check_blocks(bq, bk)
    _check_3d(out, call.slabs, L_q, d_v, "out")
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
                _flash_fwd_rows(Q + c.q.off[p], c.q.ld, K + c.k.off[p], c.k.ld,
                                V + c.v.off[p], c.v.ld, &out[p, 0, 0], &lse[p, 0],
                                p, tasks[t, 1], tasks[t, 2], L_q, L_k, d_k, d_v,
                                <floating> c.scale, &c.mask, c.causal,
                                c.causal_offset, bq, bk, S, m, l, drop, &call.band)
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
    cdef Py_ssize_t t, p, bq = block_q, bk = block_k
    cdef Slabs go
    cdef list pins = []
    cdef const CallCore* c = &call.c
    cdef const floating* Q = <const floating*> c.q.base
    cdef const floating* K = <const floating*> c.k.base
    cdef const floating* V = <const floating*> c.v.base
    cdef nn_fa_drop dr
    cdef nn_fa_drop* drop
    check_call(c, "FlashCall", floating is double, 0, 0)
    _check_blocks(bq, bk)
    _check_3d(out, call.slabs, L_q, d_v, "out")
    _check_3d(grad_q, call.slabs, L_q, d_k, "grad_q")
    _check_3d(grad_k, call.slabs, L_k, d_k, "grad_k")
    _check_3d(grad_v, call.slabs, L_k, d_v, "grad_v")
    if lse.shape[0] != call.slabs or lse.shape[1] != L_q:
        raise ValueError(f"lse must have shape {(call.slabs, L_q)}, got "
                         f"{(lse.shape[0], lse.shape[1])}")
    check_grad_out(c, &go, pins, grad_out, call.lead)
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
                _flash_bwd_keys(Q + c.q.off[p], c.q.ld, K + c.k.off[p], c.k.ld,
                                V + c.v.off[p], c.v.ld, &out[p, 0, 0], &lse[p, 0],
                                <const floating*> go.base + go.off[p], go.ld,
                                &grad_q[p, 0, 0], &grad_k[p, 0, 0], &grad_v[p, 0, 0],
                                p, tasks[t, 1], tasks[t, 2], L_q, L_k, d_k,
                                d_v, <floating> c.scale, &c.mask, c.causal,
                                c.causal_offset, bq, bk, S, dP, dKa, dVa, D, drop,
                                &call.band)
    finally:
        free(S)


cdef int _check_3d(const floating[:, :, ::1] a, Py_ssize_t P, Py_ssize_t L, Py_ssize_t d,
                   str name) except -1:
    if a.shape[0] != P or a.shape[1] != L or a.shape[2] != d:
        raise ValueError(f"{name} must have shape {(P, L, d)}, got "
                         f"{(a.shape[0], a.shape[1], a.shape[2])}")
    return 0

"""Test and benchmark hooks of the kernels: Python-callable twins of the ``nogil``
primitives in ``_blas.pxd`` and ``_vmath.pxd``, and the SIMD switch.  Nothing in
``nn_core`` imports this module."""
from cython cimport floating

from libc.stdlib cimport free, malloc

import numpy as np

from _attn_gemm cimport agemm, agemm_nt
from _blas cimport gemm, gemv
from _rnn_pack cimport nn_row_plan, pack_fwd, panel_width, pgemm, pgemv
from _vmath cimport (bind_simd, nn_simd_set_switch, transpose, vexp, vexp_sum, vsigmoid,
                     vtanh)

bind_simd(__name__)


def set_simd_level(int level):
    """Cap the SIMD level of every kernel module (0 baseline, 1 AVX2+FMA, 2 AVX-512F;
    process-wide); returns the level now in use (capped by the CPU)."""
    return nn_simd_set_switch(level)


# ------------------------------------------------------------------- BLAS --
cdef int _gemm_shapes(bint trans_a, bint trans_b, object a, object b, object c) except -1:
    m, n = c.shape[0], c.shape[1]
    k = a.shape[0] if trans_a else a.shape[1]
    if ((a.shape[1] if trans_a else a.shape[0]) != m
            or (b.shape[0] if trans_b else b.shape[1]) != n
            or (b.shape[1] if trans_b else b.shape[0]) != k):
        raise ValueError("gemm: inconsistent shapes")
    return 0


def gemm_memview(bint trans_a, bint trans_b, double alpha,
                 const floating[:, ::1] a, const floating[:, ::1] b,
                 double beta, floating[:, ::1] c):
    """``c = alpha * op(a) @ op(b) + beta * c`` through ``_blas.gemm`` (row-major)."""
    _gemm_shapes(trans_a, trans_b, a, b, c)
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    with nogil:
        gemm(trans_a, trans_b, c.shape[0], c.shape[1], k, <floating> alpha, &a[0, 0],
             a.shape[1], &b[0, 0], b.shape[1], <floating> beta, &c[0, 0], c.shape[1])


def gemm_repeat(bint trans_a, bint trans_b, const floating[:, ::1] a,
                const floating[:, ::1] b, floating[:, ::1] c, int repeat):
    """``c = op(a) @ op(b)``, ``repeat`` times in one ``nogil`` block (benchmark hook:
    the GEMM rate the kernels get, without the Python call overhead)."""
    _gemm_shapes(trans_a, trans_b, a, b, c)
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int i
    with nogil:
        for i in range(repeat):
            gemm(trans_a, trans_b, c.shape[0], c.shape[1], k, <floating> 1, &a[0, 0],
                 a.shape[1], &b[0, 0], b.shape[1], <floating> 0, &c[0, 0], c.shape[1])


cdef int _rows_contiguous(str name, Py_ssize_t isz, tuple views) except -1:
    for x in views:
        if x.shape[1] > 1 and x.strides[1] != isz:
            raise ValueError(f"{name}: rows must be contiguous")
    return 0


def attn_gemm_memview(bint trans_a, double alpha, const floating[:, :] a,
                      const floating[:, :] b, bint acc, floating[:, :] c, int repeat=1):
    """``c (+)= alpha * op(a) @ b`` through ``_attn_gemm.agemm``, ``repeat`` times in one
    ``nogil`` block; rows may be strided (the last dim contiguous)."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], k = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t isz = sizeof(floating), i
    if (a.shape[1] if trans_a else a.shape[0]) != m or b.shape[0] != k or b.shape[1] != n:
        raise ValueError("attn_gemm: inconsistent shapes")
    _rows_contiguous("attn_gemm", isz, (a, b, c))
    if m == 0 or n == 0:
        return
    with nogil:
        for i in range(repeat):
            agemm(trans_a, m, n, k, <floating> alpha, &a[0, 0], a.strides[0] // isz,
                  &b[0, 0], b.strides[0] // isz, acc, &c[0, 0], c.strides[0] // isz)


def attn_gemm_nt_memview(double alpha, const floating[:, :] a, const floating[:, :] b,
                         floating[:, :] c):
    """``c = alpha * a @ b^T`` through ``_attn_gemm.agemm_nt``; rows may be strided."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], k = a.shape[1]
    cdef Py_ssize_t isz = sizeof(floating)
    if a.shape[0] != m or b.shape[0] != n or b.shape[1] != k:
        raise ValueError("attn_gemm_nt: inconsistent shapes")
    _rows_contiguous("attn_gemm_nt", isz, (a, b, c))
    if m == 0 or n == 0:
        return
    with nogil:
        agemm_nt(m, n, k, <floating> alpha, &a[0, 0], a.strides[0] // isz, &b[0, 0],
                 b.strides[0] // isz, &c[0, 0], c.strides[0] // isz)


def gemv_memview(bint trans_a, double alpha, const floating[:, ::1] a,
                 const floating[::1] x, double beta, floating[::1] y):
    """``y = alpha * op(a) @ x + beta * y`` through ``_blas.gemv`` (row-major)."""
    cdef int m = a.shape[0], n = a.shape[1]
    if x.shape[0] != (m if trans_a else n) or y.shape[0] != (n if trans_a else m):
        raise ValueError("gemv: inconsistent shapes")
    with nogil:
        gemv(trans_a, m, n, <floating> alpha, &a[0, 0], n, &x[0], <floating> beta, &y[0])


# ------------------------------------------------------------------ vmath --
cdef int _same_length(object x, object y) except -1:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and "
                         f"{y.shape[0]}")
    return 0


def vexp_memview(const floating[::1] x, floating[::1] y):
    """``y = exp(x)`` (``vexp``)."""
    _same_length(x, y)
    if x.shape[0]:
        with nogil:
            vexp(&y[0], &x[0], x.shape[0])


def vexp_sum_memview(const floating[::1] x, floating[::1] y, floating shift):
    """``y = exp(x - shift)``, returns ``sum(y)`` (``vexp_sum``, the softmax exp pass)."""
    cdef floating s = 0
    _same_length(x, y)
    if x.shape[0]:
        with nogil:
            s = vexp_sum(&y[0], &x[0], shift, x.shape[0])
    return s


def vsigmoid_memview(const floating[::1] x, floating[::1] y):
    """``y = sigmoid(x)`` (``vsigmoid``)."""
    _same_length(x, y)
    if x.shape[0]:
        with nogil:
            vsigmoid(&y[0], &x[0], x.shape[0])


def vtanh_memview(const floating[::1] x, floating[::1] y):
    """``y = tanh(x)`` (``vtanh``)."""
    _same_length(x, y)
    if x.shape[0]:
        with nogil:
            vtanh(&y[0], &x[0], x.shape[0])


def transpose_memview(const floating[:, :] src, floating[:, :] dst, bint add):
    """``dst = src.T`` (``add``: ``dst += src.T``) through ``transpose``; both with a
    contiguous last dim (any row stride)."""
    cdef Py_ssize_t R = src.shape[0], C = src.shape[1], isz = sizeof(floating)
    if dst.shape[0] != C or dst.shape[1] != R:
        raise ValueError(f"dst must have shape {(C, R)}, got {(dst.shape[0], dst.shape[1])}")
    if R == 0 or C == 0:
        return
    if (C > 1 and src.strides[1] != isz) or (R > 1 and dst.strides[1] != isz):
        raise ValueError("the last dims must be contiguous")
    if src.strides[0] % isz or dst.strides[0] % isz or src.strides[0] < 0 or dst.strides[0] < 0:
        raise ValueError("row strides must be non-negative multiples of the item size")
    with nogil:
        transpose(&src[0, 0], src.strides[0] // isz, R, C, &dst[0, 0],
                  dst.strides[0] // isz, add)


# ------------------------------------------------------- packed recurrence --
def packed_step(const floating[:, ::1] W_hh, const floating[:, ::1] h, int G, int repeat=1):
    """``h @ W_hh^T`` (``W_hh [G*H, H]``, ``h [B, H]``) the way the packed step loops
    compute it: ``W_hh`` packed once into the forward panels of ``_rnn_pack.h``, then
    ``repeat`` products by the micro-kernel (the matrix-vector kernel for ``B == 1``) in
    one ``nogil`` block.  Returns ``[B, G*H]`` (test and benchmark hook)."""
    cdef Py_ssize_t B = h.shape[0], H = h.shape[1], GH = W_hh.shape[0]
    if G < 1 or GH != G * H or W_hh.shape[1] != H or B < 1:
        raise ValueError(f"packed_step: expected W_hh [G*H, H] = [{G * H}, {H}] and h "
                         f"[B >= 1, H], got ({GH}, {W_hh.shape[1]}) and ({B}, {H})")
    dt = np.float32 if floating is float else np.float64
    cdef Py_ssize_t NR = panel_width(&h[0, 0]), NQ = (H + NR - 1) // NR, NP = NQ * G
    cdef Py_ssize_t psz = H * NR, p, i
    store = np.empty(NP * psz + 64, dt)
    cdef Py_ssize_t off = (-store.ctypes.data % 64) // store.itemsize
    cdef floating[::1] pk = store[off:off + NP * psz]
    out = np.zeros((B, NP * NR), dt)
    cdef floating[:, ::1] o = out
    cdef unsigned char* plan = <unsigned char*> malloc(B // 4 + 3)
    if plan == NULL:
        raise MemoryError()
    cdef int nb = nn_row_plan(B, plan)
    try:
        with nogil:
            pack_fwd(&W_hh[0, 0], H, G, G, 0, NQ, &pk[0])
            for i in range(repeat):
                if B == 1:
                    pgemv(NP, H, &h[0, 0], &pk[0], psz, &o[0, 0], NR, False)
                else:
                    for p in range(NP):
                        pgemm(plan, nb, H, &h[0, 0], H, &pk[p * psz], &o[0, p * NR],
                              NP * NR, NR, False)
    finally:
        free(plan)
    # panel p = q*G + g holds units q*NR .. q*NR+NR-1 of gate g
    return np.ascontiguousarray(out.reshape(B, NQ, G, NR).transpose(0, 2, 1, 3)
                                .reshape(B, G, NQ * NR)[:, :, :H].reshape(B, GH))

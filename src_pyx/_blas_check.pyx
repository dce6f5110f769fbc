"""Python-callable twins of the ``_blas.pxd`` wrappers, for tests only."""
from cython cimport floating
cimport _blas


def gemm_memview(bint trans_a, bint trans_b, double alpha,
                 const floating[:, ::1] a, const floating[:, ::1] b,
                 double beta, floating[:, ::1] c):
    """``c = alpha * op(a) @ op(b) + beta * c`` through ``_blas.gemm`` (row-major)."""
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int kb = b.shape[1] if trans_b else b.shape[0]
    if (a.shape[1] if trans_a else a.shape[0]) != m or (b.shape[0] if trans_b else b.shape[1]) != n or kb != k:
        raise ValueError("gemm_memview: inconsistent shapes")
    with nogil:
        _blas.gemm(trans_a, trans_b, m, n, k, <floating> alpha, &a[0, 0], a.shape[1],
                   &b[0, 0], b.shape[1], <floating> beta, &c[0, 0], c.shape[1])


def gemv_memview(bint trans_a, double alpha, const floating[:, ::1] a,
                 const floating[::1] x, double beta, floating[::1] y):
    """``y = alpha * op(a) @ x + beta * y`` through ``_blas.gemv`` (row-major)."""
    cdef int m = a.shape[0], n = a.shape[1]
    if x.shape[0] != (m if trans_a else n) or y.shape[0] != (n if trans_a else m):
        raise ValueError("gemv_memview: inconsistent shapes")
    with nogil:
        _blas.gemv(trans_a, m, n, <floating> alpha, &a[0, 0], n, &x[0], <floating> beta,
                   &y[0])

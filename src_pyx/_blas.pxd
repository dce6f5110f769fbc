# cython: language_level=3
"""Row-major GEMM / GEMV over ``scipy.linalg.cython_blas`` (header only).

BLAS is column-major.  A C-order (row-major) matrix ``A [m, k]`` with row stride
``lda`` is, read column-major, the matrix ``A^T [k, m]`` with leading dimension
``lda``.  So the row-major product ``C = op(A) op(B)`` is computed as the
column-major product ``C^T = op(B)^T op(A)^T``: swap the operands and the sizes
``m``/``n``, keep each operand's transpose flag.

Every function here is ``cdef inline ... noexcept nogil`` so that ``.pyx`` files
can ``cimport`` them without a shared module at run time.  Fused over
``float``/``double`` (``cython.floating``).
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """Row-major ``C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C``.

    ``lda``, ``ldb``, ``ldc`` are the row strides (in elements) of the arrays as
    stored: ``A`` is stored ``[m, k]`` (or ``[k, m]`` when ``trans_a``).
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*> b, &ldb, <float*> a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*> b, &ldb, <double*> a, &lda,
              &beta, c, &ldc)


cdef inline void gemv(bint trans_a, int m, int n, floating alpha,
                      const floating* a, int lda, const floating* x,
                      floating beta, floating* y) noexcept nogil:
    """Row-major ``y = alpha * op(A) @ x + beta * y`` with ``A`` stored ``[m, n]``.

    ``op(A) = A`` gives ``y[m]``; ``op(A) = A^T`` gives ``y[n]``.
    """
    # Column-major view of the row-major A is A^T [n, m]: flip the flag.
    cdef char t = b'N' if trans_a else b'T'
    cdef int one = 1
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemv(&t, &n, &m, &alpha, <float*> a, &lda, <float*> x, &one, &beta, y, &one)
    else:
        dgemv(&t, &n, &m, &alpha, <double*> a, &lda, <double*> x, &one, &beta, y, &one)

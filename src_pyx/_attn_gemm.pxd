# cython: language_level=3
"""Fused-type front of the attention micro-kernels in ``_attn_gemm.h`` (header only;
see the header for the layouts and the rounding order)."""
from cython cimport floating


cdef extern from "_attn_gemm.h" nogil:
    void nn_agemm_f(int ta, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                    const float* A, Py_ssize_t lda, const float* B, Py_ssize_t ldb,
                    int acc, float* C, Py_ssize_t ldc) noexcept
    void nn_agemm_d(int ta, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, double alpha,
                    const double* A, Py_ssize_t lda, const double* B, Py_ssize_t ldb,
                    int acc, double* C, Py_ssize_t ldc) noexcept
    void nn_agemm_nt_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                       const float* A, Py_ssize_t lda, const float* B, Py_ssize_t ldb,
                       float* C, Py_ssize_t ldc) noexcept
    void nn_agemm_nt_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, double alpha,
                       const double* A, Py_ssize_t lda, const double* B, Py_ssize_t ldb,
                       double* C, Py_ssize_t ldc) noexcept


cdef inline void agemm(bint ta, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                       const floating* A, Py_ssize_t lda, const floating* B,
                       Py_ssize_t ldb, bint acc, floating* C,
                       Py_ssize_t ldc) noexcept nogil:
    """``C[m, n] (+)= alpha * op(A)[m, k] @ B[k, n]``; ``op(A)`` is ``A`` stored
    ``[m, k]``, or with ``ta`` ``A^T`` of ``A`` stored ``[k, m]``; row strides
    ``lda``, ``ldb``, ``ldc``; ``acc`` adds to ``C``."""
    if floating is float:
        nn_agemm_f(ta, m, n, k, alpha, A, lda, B, ldb, acc, C, ldc)
    else:
        nn_agemm_d(ta, m, n, k, alpha, A, lda, B, ldb, acc, C, ldc)


cdef inline void agemm_nt(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                          const floating* A, Py_ssize_t lda, const floating* B,
                          Py_ssize_t ldb, floating* C, Py_ssize_t ldc) noexcept nogil:
    """``C[m, n] = alpha * A[m, k] @ B[n, k]^T`` (both stored by rows)."""
    if floating is float:
        nn_agemm_nt_f(m, n, k, alpha, A, lda, B, ldb, C, ldc)
    else:
        nn_agemm_nt_d(m, n, k, alpha, A, lda, B, ldb, C, ldc)

# cython: language_level=3
"""Fused-type front of the packed recurrence product in ``_rnn_pack.h`` (header only;
see the header for the layouts)."""
from cython cimport floating


cdef extern from "_rnn_pack.h" nogil:
    int NN_NR_F
    int NN_NR_D
    Py_ssize_t nn_fwd_panel(Py_ssize_t q, Py_ssize_t g, Py_ssize_t NQ, Py_ssize_t G,
                            Py_ssize_t G1) noexcept
    int nn_row_plan(Py_ssize_t B, unsigned char* plan) noexcept
    void nn_pack_fwd_f(const float* W, Py_ssize_t H, Py_ssize_t G, Py_ssize_t G1,
                       Py_ssize_t q0, Py_ssize_t q1, float* P) noexcept
    void nn_pack_fwd_d(const double* W, Py_ssize_t H, Py_ssize_t G, Py_ssize_t G1,
                       Py_ssize_t q0, Py_ssize_t q1, double* P) noexcept
    void nn_pack_bwd_f(const float* W, Py_ssize_t H, Py_ssize_t GH, Py_ssize_t q0,
                       Py_ssize_t q1, float* P) noexcept
    void nn_pack_bwd_d(const double* W, Py_ssize_t H, Py_ssize_t GH, Py_ssize_t q0,
                       Py_ssize_t q1, double* P) noexcept
    void nn_pgemm_f(const unsigned char* plan, int nb, Py_ssize_t K, const float* A,
                    Py_ssize_t lda, const float* P, float* C, Py_ssize_t ldc, int nc,
                    int acc) noexcept
    void nn_pgemm_d(const unsigned char* plan, int nb, Py_ssize_t K, const double* A,
                    Py_ssize_t lda, const double* P, double* C, Py_ssize_t ldc, int nc,
                    int acc) noexcept
    void nn_pgemv_f(Py_ssize_t np, Py_ssize_t K, const float* a, const float* P,
                    Py_ssize_t ps, float* C, int nc, int acc) noexcept
    void nn_pgemv_d(Py_ssize_t np, Py_ssize_t K, const double* a, const double* P,
                    Py_ssize_t ps, double* C, int nc, int acc) noexcept


cdef inline Py_ssize_t panel_width(const floating* like) noexcept nogil:
    """Columns per panel: two AVX2 vectors (16 floats, 8 doubles)."""
    return NN_NR_F if floating is float else NN_NR_D


cdef inline void pack_fwd(const floating* W, Py_ssize_t H, Py_ssize_t G, Py_ssize_t G1,
                          Py_ssize_t q0, Py_ssize_t q1, floating* P) noexcept nogil:
    """Forward panels of unit blocks ``[q0, q1)`` (``_rnn_pack.h``)."""
    if floating is float:
        nn_pack_fwd_f(W, H, G, G1, q0, q1, P)
    else:
        nn_pack_fwd_d(W, H, G, G1, q0, q1, P)


cdef inline void pack_bwd(const floating* W, Py_ssize_t H, Py_ssize_t GH, Py_ssize_t q0,
                          Py_ssize_t q1, floating* P) noexcept nogil:
    """Backward panels of unit blocks ``[q0, q1)``."""
    if floating is float:
        nn_pack_bwd_f(W, H, GH, q0, q1, P)
    else:
        nn_pack_bwd_d(W, H, GH, q0, q1, P)


cdef inline void pgemm(const unsigned char* plan, int nb, Py_ssize_t K, const floating* A,
                       Py_ssize_t lda, const floating* P, floating* C, Py_ssize_t ldc,
                       Py_ssize_t nc, bint acc) noexcept nogil:
    """``C[rows, nc] (+)= A[rows, K] @ P[K, NR]`` over the row blocks of ``plan``."""
    if floating is float:
        nn_pgemm_f(plan, nb, K, A, lda, P, C, ldc, <int> nc, acc)
    else:
        nn_pgemm_d(plan, nb, K, A, lda, P, C, ldc, <int> nc, acc)


cdef inline void pgemv(Py_ssize_t np, Py_ssize_t K, const floating* a, const floating* P,
                       Py_ssize_t ps, floating* C, Py_ssize_t nc, bint acc) noexcept nogil:
    """One row times ``np`` panels (stride ``ps``) into ``np*NR`` contiguous outputs (the
    last panel: ``nc``)."""
    if floating is float:
        nn_pgemv_f(np, K, a, P, ps, C, <int> nc, acc)
    else:
        nn_pgemv_d(np, K, a, P, ps, C, <int> nc, acc)

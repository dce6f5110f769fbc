# cython: language_level=3
"""Fused front of the vectorised C helpers in ``_vmath.h`` and the SIMD switch of
``_simd.h`` (header only: nothing here is imported at run time)."""
from cython cimport floating
from cpython.pycapsule cimport PyCapsule_GetPointer

cdef extern from "_vmath.h" nogil:
    int nn_cpu_level() noexcept
    int nn_simd_level() noexcept
    int nn_simd_set_switch(int level) noexcept
    void nn_simd_bind(int* shared) noexcept
    const char* NN_SIMD_CAPSULE
    float nn_expf(float x) noexcept
    double nn_exp(double x) noexcept
    float nn_vexp_sum_f(float* y, const float* x, float shift, Py_ssize_t n) noexcept
    double nn_vexp_sum_d(double* y, const double* x, double shift, Py_ssize_t n) noexcept
    void nn_vexp_f(float* y, const float* x, Py_ssize_t n) noexcept
    void nn_vexp_d(double* y, const double* x, Py_ssize_t n) noexcept
    float nn_vmax_f(const float* x, Py_ssize_t n) noexcept
    double nn_vmax_d(const double* x, Py_ssize_t n) noexcept
    float nn_vdot_f(const float* x, const float* y, Py_ssize_t n) noexcept
    double nn_vdot_d(const double* x, const double* y, Py_ssize_t n) noexcept
    void nn_vsigmoid_f(float* y, const float* x, Py_ssize_t n) noexcept
    void nn_vsigmoid_d(double* y, const double* x, Py_ssize_t n) noexcept
    void nn_vtanh_f(float* y, const float* x, Py_ssize_t n) noexcept
    void nn_vtanh_d(double* y, const double* x, Py_ssize_t n) noexcept
    void nn_transpose_f(const float* src, Py_ssize_t lds, Py_ssize_t R, Py_ssize_t C,
                        float* dst, Py_ssize_t ldd, int add) noexcept
    void nn_transpose_d(const double* src, Py_ssize_t lds, Py_ssize_t R, Py_ssize_t C,
                        double* dst, Py_ssize_t ldd, int add) noexcept


cdef inline int bind_simd(str module) except -1:
    """Point this module's SIMD dispatch at the process-wide switch owned by
    ``nn_core._kernels._simd``; every kernel module calls it once at import."""
    from nn_core._kernels import _simd
    nn_simd_bind(<int*> PyCapsule_GetPointer(_simd.register(module), NN_SIMD_CAPSULE))
    return 0


cdef inline floating vexp_sum(floating* y, const floating* x, floating shift,
                              Py_ssize_t n) noexcept nogil:
    """``y[i] = exp(x[i] - shift)``; returns ``sum(y)`` (``y`` may alias ``x``).
    The one exp-sum of the softmax rows (AVX-512F at SIMD level 2)."""
    if floating is float:
        return nn_vexp_sum_f(y, x, shift, n)
    else:
        return nn_vexp_sum_d(y, x, shift, n)


cdef inline void vexp(floating* y, const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        nn_vexp_f(y, x, n)
    else:
        nn_vexp_d(y, x, n)


cdef inline floating vmax(const floating* x, Py_ssize_t n) noexcept nogil:
    """Max of ``x[0:n]``; ``-inf`` when empty, NaN if any entry is NaN."""
    if floating is float:
        return nn_vmax_f(x, n)
    else:
        return nn_vmax_d(x, n)


cdef inline floating vdot(const floating* x, const floating* y, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return nn_vdot_f(x, y, n)
    else:
        return nn_vdot_d(x, y, n)


cdef inline void vsigmoid(floating* y, const floating* x, Py_ssize_t n) noexcept nogil:
    """``y[i] = 1 / (1 + exp(-x[i]))`` (stable; ``y`` may alias ``x``)."""
    if floating is float:
        nn_vsigmoid_f(y, x, n)
    else:
        nn_vsigmoid_d(y, x, n)


cdef inline void vtanh(floating* y, const floating* x, Py_ssize_t n) noexcept nogil:
    """``y[i] = tanh(x[i])`` (exp-based; ``y`` may alias ``x``)."""
    if floating is float:
        nn_vtanh_f(y, x, n)
    else:
        nn_vtanh_d(y, x, n)


cdef inline void transpose(const floating* src, Py_ssize_t lds, Py_ssize_t R,
                           Py_ssize_t C, floating* dst, Py_ssize_t ldd,
                           bint add) noexcept nogil:
    """``dst[c, r] = src[r, c]`` (``add``: ``+=``) for ``src [R, C]`` with row stride
    ``lds`` and ``dst [C, R]`` with row stride ``ldd``; no overlap."""
    if floating is float:
        nn_transpose_f(src, lds, R, C, dst, ldd, add)
    else:
        nn_transpose_d(src, lds, R, C, dst, ldd, add)

# cython: language_level=3
"""Fused Cython front for the vectorised C helpers in ``_vmath.h`` (header only)."""
from cython cimport floating

cdef extern from "_vmath.h" nogil:
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


cdef inline floating vexp_sum(floating* y, const floating* x, floating shift,
                              Py_ssize_t n) noexcept nogil:
    """``y[i] = exp(x[i] - shift)``; returns ``sum(y)`` (``y`` may alias ``x``)."""
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
    """Max of ``x[0:n]``, ``-inf`` when empty (NaN entries skipped)."""
    if floating is float:
        return nn_vmax_f(x, n)
    else:
        return nn_vmax_d(x, n)


cdef inline floating vdot(const floating* x, const floating* y, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return nn_vdot_f(x, y, n)
    else:
        return nn_vdot_d(x, y, n)


# --- appended for the recurrent kernels -------------------------------------------
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

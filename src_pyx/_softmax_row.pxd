# cython: language_level=3
"""The masked-softmax row shared by ``_softmax`` and ``_attention`` (header only)."""
from cython cimport floating
from libc.math cimport INFINITY
from libc.stdint cimport uint8_t
from libc.string cimport memset

from _vmath cimport vexp_sum, vmax

cdef enum:
    MASK_NONE = 0
    MASK_BOOL = 1       # uint8, nonzero = attend
    MASK_ADD = 2        # additive, in the scores' dtype


cdef inline void softmax_row(floating* z, const floating* x, floating scale, Py_ssize_t n,
                             Py_ssize_t N, int mask_kind, const uint8_t* bm,
                             const floating* fm, Py_ssize_t mcs) noexcept nogil:
    """``z[0:n] = softmax(scale * x[0:n] + mask)``, ``z[n:N] = 0``.

    ``x`` may be ``z`` (scores already in place; ``scale == 1`` then skips the
    scaling pass when there is no mask).  Mask row ``bm`` (bool, 0 = drop) or ``fm``
    (additive), column stride ``mcs``.  A row with no allowed entry (all masked or
    ``-inf``, or ``n == 0``) is all zeros; a NaN among the allowed entries makes
    the row NaN (``vmax`` is NaN-sticky).
    """
    cdef Py_ssize_t j
    cdef floating mx, s, inv
    cdef floating neg_inf = -INFINITY
    if mask_kind == MASK_BOOL:
        if mcs == 1:
            for j in range(n):
                z[j] = scale * x[j] if bm[j] else neg_inf
        else:
            for j in range(n):
                z[j] = scale * x[j] if bm[j * mcs] else neg_inf
    elif mask_kind == MASK_ADD:
        if mcs == 1:
            for j in range(n):
                z[j] = scale * x[j] + fm[j]
        else:
            for j in range(n):
                z[j] = scale * x[j] + fm[j * mcs]
    elif x != z or scale != 1:
        for j in range(n):
            z[j] = scale * x[j]
    if N > n:
        memset(z + n, 0, (N - n) * sizeof(floating))
    mx = vmax(z, n)
    if mx == neg_inf:
        if n > 0:
            memset(z, 0, n * sizeof(floating))
        return
    s = vexp_sum(z, z, mx, n)
    inv = 1 / s
    for j in range(n):
        z[j] = z[j] * inv

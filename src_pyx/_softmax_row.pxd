# cython: language_level=3
"""The masked-softmax row shared by ``_softmax`` and ``_attention``, and the check of
their mask argument (header only)."""
from cython cimport floating
from libc.math cimport INFINITY
from libc.stdint cimport uint8_t
from libc.string cimport memset

from _vmath cimport vexp_sum, vmax

cdef enum:
    MASK_NONE = 0
    MASK_BOOL = 1       # uint8, nonzero = attend
    MASK_ADD = 2        # additive, in the scores' dtype


cdef struct MaskRef:
    # A mask read through its own (broadcast) strides, never expanded: row i, column j
    # of slab p is element off[p] + i * rs + j * cs of the flat buffer.
    int kind                    # MASK_*
    const uint8_t* b            # MASK_BOOL buffer
    const void* f               # MASK_ADD buffer (float or double, as the scores)
    const Py_ssize_t* off       # [P]
    Py_ssize_t rs, cs           # row / column strides in elements (0: broadcast)


cdef inline int mask_ref(object mask, bint double, Py_ssize_t P, Py_ssize_t R,
                         Py_ssize_t N, MaskRef* m, list pins) except -1:
    """Check ``mask`` for ``P`` slabs of ``[R, N]`` scores and describe it in ``m``.

    ``mask``: None, or ``(buf, off, rs, cs)`` with ``buf`` a contiguous 1-D uint8
    (bool, nonzero = attend) or scores-dtype (additive) array, ``off`` intp ``[P]``
    and ``rs, cs >= 0``.  Every element the kernels may address lies in ``buf``;
    the views are appended to ``pins`` (keep it as long as ``m`` is used).
    """
    cdef const uint8_t[::1] b
    cdef const float[::1] f32
    cdef const double[::1] f64
    cdef const Py_ssize_t[::1] off
    cdef Py_ssize_t p, size, need
    m.kind, m.b, m.f, m.off, m.rs, m.cs = MASK_NONE, NULL, NULL, NULL, 0, 0
    if mask is None:
        return 0
    buf, offsets, m.rs, m.cs = mask
    if m.rs < 0 or m.cs < 0:
        raise ValueError(f"mask strides must be non-negative, got {m.rs}, {m.cs}")
    off = offsets
    if off.shape[0] != P:
        raise ValueError(f"mask offsets: expected {P} entries, got {off.shape[0]}")
    if buf.dtype.char == "B":
        b = buf
        size, m.kind = b.shape[0], MASK_BOOL
        m.b = &b[0] if size else NULL
        pins.append(b)
    elif double:
        f64 = buf
        size, m.kind = f64.shape[0], MASK_ADD
        m.f = &f64[0] if size else NULL
        pins.append(f64)
    else:
        f32 = buf
        size, m.kind = f32.shape[0], MASK_ADD
        m.f = &f32[0] if size else NULL
        pins.append(f32)
    if P > 0 and R > 0 and N > 0:
        need = (R - 1) * m.rs + (N - 1) * m.cs
        for p in range(P):
            if off[p] < 0 or off[p] + need >= size:
                raise ValueError(f"mask slab {p} (offset {off[p]}, strides {m.rs}, {m.cs}) "
                                 f"reaches outside its buffer of {size} elements")
        m.off = &off[0]
    pins.append(off)
    return 0


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

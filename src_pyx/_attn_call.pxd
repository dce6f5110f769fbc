# cython: language_level=3
"""What every attention kernel call checks once (header only): the ``q``/``k``/``v``
slabs of 6-D views, the broadcast lead shape, the mask, the scale and the causal
offset.  Shared by the fused kernel (``_attention.pyx``, ``SdpaCall``) and the tiled
one (``_flash_attention.pyx``, ``FlashCall``).

Each input comes as a 6-D view ``[l0, l1, l2, l3, L, d]`` in its *own* shape (never
expanded to the broadcast shape): a lead dim of size 1 is broadcast, rows may be any
distance >= ``d`` apart.  The ``P`` slabs are the flattened lead dims; every slab
offset is derived here from the views' own shapes and strides.
"""
from cython cimport floating
from cython.view cimport array as cvarray
from libc.string cimport memset

from _softmax_row cimport MaskRef, mask_ref


cdef struct Slabs:
    # The P slabs [L, d] of one input: slab p starts at element off[p] of base,
    # rows ld elements apart; bcast: some lead dim is broadcast (size 1).
    const void* base
    const Py_ssize_t* off
    Py_ssize_t ld
    bint bcast


cdef struct CallCore:
    # One checked call: sizes, the broadcast lead shape, the slabs, mask and scalars.
    Py_ssize_t slabs, L_q, L_k, d_k, d_v
    Py_ssize_t lead4[4]
    bint ready, double, causal
    Slabs q, k, v
    double scale
    Py_ssize_t causal_offset
    MaskRef mask


cdef inline Py_ssize_t clamp(Py_ssize_t x, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    return lo if x < lo else (hi if x > hi else x)


cdef inline void zero_fill(floating* x, Py_ssize_t n) noexcept nogil:
    if n > 0:
        memset(x, 0, n * sizeof(floating))


cdef inline tuple shape6(const Py_ssize_t* sh):
    return sh[0], sh[1], sh[2], sh[3], sh[4], sh[5]


cdef inline int slabs_of(Slabs* out, list pins, const floating[:, :, :, :, :, :] a,
                         const Py_ssize_t* lead, Py_ssize_t L, Py_ssize_t d,
                         str name) except -1:
    """Describe the ``P`` slabs of a 6-D view ``[l0, l1, l2, l3, L, d]`` whose lead
    dims are ``lead`` or 1 (broadcast).

    Offsets are computed here from the view's own shape and strides, so every
    element the kernels address (``off[p] + i * ld + j``, ``i < L``, ``j < d``) is an
    element of ``a``: memory safety does not depend on the caller."""
    cdef Py_ssize_t isz = sizeof(floating), P = lead[0] * lead[1] * lead[2] * lead[3]
    cdef Py_ssize_t st[4]
    cdef Py_ssize_t dim, p, rem, off, ld
    cdef bint bcast = False
    if a.shape[4] != L or a.shape[5] != d:
        raise ValueError(f"{name} slabs must be [{L}, {d}], got [{a.shape[4]}, {a.shape[5]}]")
    if d > 1 and a.strides[5] != isz:
        raise ValueError(f"{name}: the last dim must be contiguous")
    for dim in range(4):
        if a.shape[dim] == 1:
            st[dim] = 0
            bcast = bcast or lead[dim] > 1
        elif a.shape[dim] == lead[dim]:
            if a.strides[dim] < 0 or a.strides[dim] % isz:
                raise ValueError(f"{name}: lead strides must be non-negative multiples "
                                 f"of the item size")
            st[dim] = a.strides[dim] // isz
        else:
            raise ValueError(f"{name}.shape[{dim}] must be 1 or {lead[dim]}, "
                             f"got {a.shape[dim]}")
    ld = d
    if L > 1:
        if a.strides[4] % isz or a.strides[4] // isz < d:
            raise ValueError(f"{name}: row stride must be a multiple of the item size "
                             f"and >= {d} elements, got {a.strides[4]} bytes")
        ld = a.strides[4] // isz
    # the offsets, as a Cython array (this header cannot import NumPy)
    cdef Py_ssize_t[::1] o = cvarray(shape=(P if P > 0 else 1,), itemsize=sizeof(Py_ssize_t),
                                     format="l" if sizeof(long) == sizeof(Py_ssize_t) else "q")
    for p in range(P):
        rem = p
        off = 0
        for dim in range(3, -1, -1):
            off += (rem % lead[dim]) * st[dim]
            rem = rem // lead[dim]
        o[p] = off
    out.base, out.off, out.ld, out.bcast = &a[0, 0, 0, 0, 0, 0], &o[0], ld, bcast
    pins += [a, o]
    return 0


cdef inline int core_start(CallCore* c, dtype, double scale, causal_offset) except -1:
    """Reset ``c`` and take the dtype (``q``'s NumPy dtype), the scale and the causal
    offset."""
    memset(c, 0, sizeof(CallCore))
    if dtype != "float32" and dtype != "float64":
        raise TypeError(f"q must be float32 or float64, got {dtype}")
    c.double = dtype == "float64"
    c.scale = scale
    c.causal = causal_offset is not None
    c.causal_offset = causal_offset if c.causal else 0
    return 0


cdef inline tuple fill_typed(CallCore* c, list pins, const floating[:, :, :, :, :, :] q,
                             const floating[:, :, :, :, :, :] k,
                             const floating[:, :, :, :, :, :] v, bint whole_probs):
    """The shared checks of ``q``, ``k``, ``v``; returns ``(lead, shapes)`` (the lead
    shape and the three 6-D input shapes).  ``whole_probs``: the kernel addresses a
    whole ``[L_q, L_k]`` slab with 32-bit BLAS sizes (the tiled kernel only ``L`` x
    ``d`` panels)."""
    cdef Py_ssize_t L_q = q.shape[4], d_k = q.shape[5], L_k = k.shape[4], d_v = v.shape[5]
    cdef Py_ssize_t dim, n
    for dim in range(4):
        n = c.lead4[dim] = max(q.shape[dim], k.shape[dim], v.shape[dim])
        if q.shape[dim] not in (1, n) or k.shape[dim] not in (1, n) or v.shape[dim] not in (1, n):
            raise ValueError(f"the lead dims of query, key and value must broadcast, got "
                             f"{shape6(q.shape)[:4]}, {shape6(k.shape)[:4]}, "
                             f"{shape6(v.shape)[:4]}")
    c.slabs = c.lead4[0] * c.lead4[1] * c.lead4[2] * c.lead4[3]
    if min(L_q, L_k, d_k, d_v) < 1:
        raise ValueError("L_q, L_k, d_k, d_v must be >= 1 for the fused kernel")
    if max(L_q * d_k, L_k * d_k, L_q * d_v, L_k * d_v,
           L_q * L_k if whole_probs else 0) >= 2 ** 31:
        raise ValueError("a (batch, head) slab is too large for 32-bit BLAS")
    c.L_q, c.L_k, c.d_k, c.d_v = L_q, L_k, d_k, d_v
    slabs_of(&c.q, pins, q, c.lead4, L_q, d_k, "query")
    slabs_of(&c.k, pins, k, c.lead4, L_k, d_k, "key")
    slabs_of(&c.v, pins, v, c.lead4, L_k, d_v, "value")
    return ((c.lead4[0], c.lead4[1], c.lead4[2], c.lead4[3]),
            (shape6(q.shape), shape6(k.shape), shape6(v.shape)))


cdef inline tuple core_fill(CallCore* c, list pins, q, k, v, bint whole_probs):
    """:func:`fill_typed` at the call's dtype (set by :func:`core_start`)."""
    if c.double:
        return fill_typed[double](c, pins, q, k, v, whole_probs)
    return fill_typed[float](c, pins, q, k, v, whole_probs)


cdef inline int core_mask(CallCore* c, list pins, mask) except -1:
    """Check and describe ``mask`` for the call's slabs (after :func:`core_fill`)."""
    return mask_ref(mask, c.double, c.slabs, c.L_q, c.L_k, &c.mask, pins)


cdef inline int check_call(const CallCore* c, str cls, bint double, Py_ssize_t p0,
                           Py_ssize_t p1) except -1:
    """An entry point's call: initialised, of the arrays' dtype, slabs ``[p0, p1)``."""
    if not c.ready:
        raise ValueError(f"the {cls} was not initialised")
    if double != c.double:
        raise TypeError("the arrays must have the dtype of the call's inputs")
    if not 0 <= p0 <= p1 <= c.slabs:
        raise ValueError(f"slab range must satisfy 0 <= p0 <= p1 <= {c.slabs}, "
                         f"got [{p0}, {p1})")
    return 0


cdef inline int check_grad_out(const CallCore* c, Slabs* go, list pins,
                               const floating[:, :, :, :, :, :] grad_out,
                               tuple lead) except -1:
    """``grad_out``: a 6-D view with the full lead shape, ``L_q`` x ``d_v`` slabs."""
    cdef Py_ssize_t dim
    for dim in range(4):
        if grad_out.shape[dim] != c.lead4[dim]:
            raise ValueError(f"grad_out must have the full lead shape {lead}")
    return slabs_of(go, pins, grad_out, c.lead4, c.L_q, c.d_v, "grad_out")

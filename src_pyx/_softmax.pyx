"""Masked, scaled softmax over the last axis: forward and backward kernels.

Layout: scores ``x [P, R, N]`` (C-contiguous; ``P`` = product of the leading dims,
``R`` rows (queries), ``N`` columns (keys)).  Per row ``i`` of slab ``p``::

    z_j = scale * x_j + a_j            (a = additive float mask, or 0)
    allowed_j = bmask_j and j <= i + causal_offset   (each part optional)
    y_j = exp(z_j - max_allowed z) / sum_allowed exp(...)   for allowed j, else 0

A row with no allowed entry (every ``z_j`` masked or ``-inf``) is written as zeros
(never NaN).  A NaN in an allowed ``z_j`` makes the whole row NaN, as in PyTorch;
a NaN score at a bool-masked or causally excluded position is ignored (it never
enters the row), whereas an additive mask cannot hide it (``NaN + -inf = NaN``).

The mask is never expanded to the score shape: the caller passes the mask's own
(contiguous, un-broadcast) buffer, one element offset per slab ``p`` and the row /
column strides in elements (0 where the mask broadcasts); see ``_softmax_row.pxd``.

Backward (``dy`` = upstream gradient, ``y`` = forward output)::

    dx_j = scale * y_j * (dy_j - sum_k dy_k y_k)

Masked entries have ``y_j = 0`` so they receive 0; a fully-masked row gets 0.
"""
from cython cimport floating
from libc.stdint cimport uint8_t

from _softmax_row cimport MASK_ADD, MASK_BOOL, MaskRef, mask_ref, softmax_row
from _vmath cimport bind_simd, vdot

bind_simd(__name__)


cdef void _softmax_rows(const floating* x, floating* y, Py_ssize_t P, Py_ssize_t R,
                        Py_ssize_t N, floating scale, const MaskRef* m, bint causal,
                        Py_ssize_t causal_offset) noexcept nogil:
    cdef Py_ssize_t p, i, n_row, r
    cdef const uint8_t* br = NULL
    cdef const floating* fr = NULL
    for p in range(P):
        for i in range(R):
            r = (p * R + i) * N
            n_row = N
            if causal:
                n_row = i + causal_offset + 1
                if n_row > N:
                    n_row = N
                elif n_row < 0:
                    n_row = 0
            if m.kind == MASK_BOOL:
                br = m.b + m.off[p] + i * m.rs
            elif m.kind == MASK_ADD:
                fr = <const floating*> m.f + m.off[p] + i * m.rs
            softmax_row(y + r, x + r, scale, n_row, N, m.kind, br, fr, m.cs)


cdef void _softmax_rows_backward(const floating* y, const floating* dy, floating* dx,
                                 Py_ssize_t rows, Py_ssize_t N,
                                 floating scale) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef const floating* yr
    cdef const floating* gr
    cdef floating* dr
    cdef floating s
    for r in range(rows):
        yr = y + r * N
        gr = dy + r * N
        dr = dx + r * N
        s = vdot(gr, yr, N)
        for j in range(N):
            dr[j] = scale * yr[j] * (gr[j] - s)


def softmax_forward(const floating[:, :, ::1] x, floating[:, :, ::1] out, floating scale,
                    mask=None, causal_offset=None):
    """Masked scaled softmax of ``x [P, R, N]`` into ``out`` (same shape).

    ``mask``: None or ``(buf, off, rs, cs)``: a flat uint8 (bool, nonzero = attend)
    or additive buffer in ``x``'s dtype, the element offset of each slab ``off [P]``
    and the row / column strides in elements (0 = broadcast).  ``causal_offset``:
    keep only ``j <= i + causal_offset``.  Shapes and offsets are checked here,
    before ``nogil``.
    """
    cdef Py_ssize_t P = x.shape[0], R = x.shape[1], N = x.shape[2]
    cdef MaskRef m
    cdef bint causal = causal_offset is not None
    cdef Py_ssize_t coff = causal_offset if causal else 0
    if out.shape[0] != P or out.shape[1] != R or out.shape[2] != N:
        raise ValueError(f"out must have shape {(P, R, N)}, got "
                         f"{(out.shape[0], out.shape[1], out.shape[2])}")
    if P == 0 or R == 0 or N == 0:
        return                  # nothing to compute (nor to read from a maybe-empty mask)
    pins = []
    mask_ref(mask, floating is double, P, R, N, &m, pins)
    with nogil:
        _softmax_rows(&x[0, 0, 0], &out[0, 0, 0], P, R, N, scale, &m, causal, coff)


def softmax_backward(const floating[:, ::1] y, const floating[:, ::1] dy,
                     floating[:, ::1] dx, floating scale):
    """``dx = scale * y * (dy - sum(dy * y, axis=-1))`` row by row, ``[rows, N]``."""
    cdef Py_ssize_t rows = y.shape[0], N = y.shape[1]
    if dy.shape[0] != rows or dy.shape[1] != N:
        raise ValueError(f"dy must have shape {(rows, N)}, got {(dy.shape[0], dy.shape[1])}")
    if dx.shape[0] != rows or dx.shape[1] != N:
        raise ValueError(f"dx must have shape {(rows, N)}, got {(dx.shape[0], dx.shape[1])}")
    if rows == 0 or N == 0:
        return
    with nogil:
        _softmax_rows_backward(&y[0, 0], &dy[0, 0], &dx[0, 0], rows, N, scale)


"""Matrix products of the layers, on the thread team.

:func:`matmul` is ``op(a) @ op(b)`` for float32/float64 matrices through the team's
GEMM (:func:`nn_core._kernels._team.gemm`): the product is cut into blocks that depend
on the shape only, each block one single-threaded BLAS call, the blocks shared out over
the team.  So a layer's output and gradients have the same bits at any thread count,
and OpenBLAS's own threads never run beside the team.
"""
from __future__ import annotations

import numpy as np

from ._kernels import _team

__all__ = ["matmul"]


def _rows_contiguous(x):
    """``x`` as a matrix whose rows are contiguous (a copy only when they are not)."""
    rows, item = x.strides
    if item != x.itemsize or rows < item * x.shape[1] or rows % item:
        return np.ascontiguousarray(x)
    return x


def matmul(a, b, *, trans_a=False, trans_b=False, out=None, accumulate=False):
    """``op(a) @ op(b)`` (``op`` transposes when its flag is set) of two 2-D arrays of
    one float dtype, on the thread team.

    ``out``: a C-contiguous ``[m, n]`` array to write (``accumulate``: add to) instead
    of a new one.  Returns the result.  Other dtypes, or mixed ones, fall back to
    NumPy's ``@``.
    """
    dt = a.dtype
    if dt not in (np.float32, np.float64) or b.dtype != dt or a.ndim != 2 or b.ndim != 2:
        y = (a.T if trans_a else a) @ (b.T if trans_b else b)
        if out is None:
            return y
        if accumulate:
            out += y
        else:
            out[...] = y
        return out
    a, b = _rows_contiguous(a), _rows_contiguous(b)
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    if out is None:
        out = np.empty((m, n), dt)
        accumulate = False
    elif not out.flags.c_contiguous:
        y = matmul(a, b, trans_a=trans_a, trans_b=trans_b)
        if accumulate:
            out += y
        else:
            out[...] = y
        return out
    return _team.gemm(a, b, out, trans_a, trans_b, 1.0, 1.0 if accumulate else 0.0)

"""Collectives over the ranks of :func:`~nn_core.distributed.init`: the in-place
all-reduce, scalar and dict sums, broadcasts of arrays, objects and parameters.  On the
size-1 stand-in each is a no-op that returns its input."""
from __future__ import annotations

import numbers

import numpy as np

from ..module import Module
from ._world import world

_OPS = ("sum", "max", "min")


def _check_op(op):
    if op not in _OPS:
        raise ValueError(f"op must be one of {_OPS}, got {op!r}")


def barrier() -> None:
    """Wait until every rank has arrived."""
    w = world()
    if w.size > 1:
        w.comm.Barrier()


def _check_buffer(array):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array must be a numpy array, got {type(array).__name__}")
    if not (array.flags.c_contiguous and array.flags.writeable):
        raise ValueError("array must be C-contiguous and writeable (it is updated in place)")


def all_reduce(array, op="sum"):
    """Reduce ``array`` over all ranks **in place** (``op``: ``"sum"``, ``"max"``,
    ``"min"``) and return it; every rank passes an array of the same shape and dtype.
    ``array`` must be a C-contiguous, writeable NumPy array."""
    _check_op(op)
    _check_buffer(array)
    w = world()
    if w.size > 1:
        w.comm.Allreduce(w.mpi.IN_PLACE, array, op=getattr(w.mpi, op.upper()))
    return array


def allreduce_scalar(value, op="sum"):
    """``value`` reduced over all ranks: a float, or an int when ``value`` is an int."""
    _check_op(op)
    as_int = isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool)
    w = world()
    if w.size == 1:
        return int(value) if as_int else float(value)
    buf = np.array([value], dtype=np.int64 if as_int else np.float64)
    all_reduce(buf, op)
    return int(buf[0]) if as_int else float(buf[0])


def all_sum(values: dict) -> dict:
    """Sum a dict of numbers over all ranks in one call (e.g. loss sums, token and
    sample counts for a progress line).  Every rank must pass the same keys; values
    are summed in float64 and ints come back as ints (exact below 2**53)."""
    w = world()
    if not isinstance(values, dict):
        raise TypeError(f"values must be a dict of numbers, got {type(values).__name__}")
    keys = sorted(values)
    for k in keys:
        v = values[k]
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.integer, np.floating)):
            raise TypeError(f"values[{k!r}] must be a number, got {type(v).__name__}")
    ints = {k for k in keys if isinstance(values[k], (numbers.Integral, np.integer))}
    if w.size > 1:
        buf = np.array([float(values[k]) for k in keys], dtype=np.float64)
        all_reduce(buf)
        summed = dict(zip(keys, buf.tolist()))
    else:
        summed = {k: values[k] for k in keys}
    return {k: (int(round(summed[k])) if k in ints else float(summed[k])) for k in values}


def broadcast(array, root=0):
    """Overwrite ``array`` (C-contiguous, writeable, same shape on every rank) with the
    root's, in place; returns it."""
    _check_buffer(array)
    w = world()
    if w.size > 1:
        w.comm.Bcast(array, root=root)
    return array


def broadcast_object(obj, root=0):
    """The root's ``obj`` on every rank (pickled; for configurations, optimizer
    state dicts, metrics)."""
    w = world()
    return w.comm.bcast(obj, root=root) if w.size > 1 else obj


def broadcast_parameters(module, root=0) -> None:
    """Copy the root's parameters into every rank's ``module`` (in place).

    One ``Bcast`` of the flat parameter buffer when the module has one
    (:meth:`~nn_core.Module.flat_parameters`), else one per parameter, in
    :meth:`~nn_core.Module.parameters` order."""
    if not isinstance(module, Module):
        raise TypeError(f"module must be an nn_core Module, got {type(module).__name__}")
    w = world()
    if w.size == 1:
        return
    flat = module._flat_buffers()
    for p in ([flat[0]] if flat is not None else module.parameters().values()):
        w.comm.Bcast(p, root=root)

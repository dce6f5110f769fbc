"""Each rank's contiguous part of a global batch."""
from __future__ import annotations

import numpy as np

from ._world import world


def _rank_size(rank_, size_):
    if rank_ is None or size_ is None:
        w = world()
        rank_ = w.rank if rank_ is None else rank_
        size_ = w.size if size_ is None else size_
    rank_, size_ = int(rank_), int(size_)
    if size_ < 1 or not 0 <= rank_ < size_:
        raise ValueError(f"rank must be in [0, size): got rank {rank_}, size {size_}")
    return rank_, size_


def shard_slice(n, rank=None, size=None) -> slice:
    """Rows ``[n*r//size, n*(r+1)//size)`` of ``n``: this rank's contiguous part
    (sizes differ by at most one).  ``ValueError`` when ``n < size`` (a rank would
    get nothing to train on)."""
    r, s = _rank_size(rank, size)
    n = int(n)
    if n < s:
        raise ValueError(f"a batch of {n} rows cannot be shared by {s} ranks; use a "
                         f"global batch of at least {s}")
    return slice(n * r // s, n * (r + 1) // s)


def shard(batch, rank=None, size=None):
    """This rank's part of a global ``batch``: every array (``ndim >= 1``) is cut
    along axis 0 by :func:`shard_slice`, inside tuples, lists and dicts alike; other
    values (ints, ``None``) pass through.  All arrays must have the same length.

    >>> import numpy as np
    >>> src, lens = shard((np.arange(10).reshape(5, 2), np.arange(5)), rank=1, size=2)
    >>> lens
    array([2, 3, 4])
    """
    r, s = _rank_size(rank, size)
    lengths = set()

    def collect(x):
        if isinstance(x, np.ndarray) and x.ndim >= 1:
            lengths.add(len(x))
        elif isinstance(x, (tuple, list)):
            for v in x:
                collect(v)
        elif isinstance(x, dict):
            for v in x.values():
                collect(v)

    collect(batch)
    if not lengths:
        raise ValueError("batch holds no array to shard")
    if len(lengths) > 1:
        raise ValueError(f"every array of the batch must have the same length along axis "
                         f"0, got lengths {sorted(lengths)}")
    rows = shard_slice(lengths.pop(), r, s)

    def cut(x):
        if isinstance(x, np.ndarray) and x.ndim >= 1:
            return x[rows]
        if isinstance(x, tuple):
            return type(x)(*map(cut, x)) if hasattr(x, "_fields") else tuple(map(cut, x))
        if isinstance(x, list):
            return [cut(v) for v in x]
        if isinstance(x, dict):
            return {k: cut(v) for k, v in x.items()}
        return x

    return cut(batch)

"""Memory for NumPy arrays: a caching allocator for training loops, an allocation
budget, and the scratch workspaces modules reuse across calls.

A training step allocates the same arrays step after step.  With the system
allocator, every large array of every step is fresh memory: the kernel maps new pages
and zero-fills them on first touch (a *page fault* per 4 KiB page), which can cost more
than the arithmetic.  Inside :func:`caching_allocator`, NumPy arrays of at least 32 KiB
come from free lists kept by size class instead (at most 12.5 % slack): after the first
step, a step reuses the memory of the previous one and touches no new page.

The allocator is NumPy's own hook (NEP 49) and is scoped: it applies to arrays created
in the ``with`` block on the current thread (or asyncio task); arrays remember their
allocator and free through it whenever they die.  The cache holds at most
:func:`cache_limit` bytes; :func:`release_cache` gives it back.
:func:`nn_core.training.train` and the ``nn-core`` command train inside it.

The limit is sized from the training steps themselves unless :func:`set_cache_limit`
fixed it: after each step the trainer calls :func:`fit_cache_to_step`, which sets the
limit to twice the largest working set of a step so far (the most bytes of cached
size alive at once), so that the blocks a step reuses stay cached and no more.
Outside a training loop the limit starts at 1 GiB.

:class:`allocation_budget` is the same hook used the other way: NumPy allocations
inside it fail with ``MemoryError`` once they hold more than a fixed number of bytes
(``nn_core.checkpoint.load`` rebuilds modules under one).  A :class:`Workspace`
keeps a module's large scratch buffers from one call to the next (the recurrent
cells' gate and state buffers, the attention probabilities).

Examples
--------
>>> import numpy as np
>>> from nn_core.memory import caching_allocator, memory_stats
>>> with caching_allocator():
...     for _ in range(3):
...         a = np.ones(1 << 20)          # the 2nd and 3rd reuse the 1st's memory
...         del a
>>> memory_stats()["hits"] >= 2
True
"""
from __future__ import annotations

import contextlib

import numpy as np

from ._kernels import _alloc
from ._validation import check_int

__all__ = ["caching_allocator", "allocation_budget", "Workspace", "memory_stats",
           "cache_limit", "set_cache_limit", "release_cache", "fit_cache_to_step"]

#: the cache limit before any step sized it
DEFAULT_CACHE_LIMIT = 1 << 30
#: ``None``: the limit follows the steps (:func:`fit_cache_to_step`); else the bytes
#: :func:`set_cache_limit` fixed, and the largest step's working set seen so far
_fixed = None
_largest_step = 0


class caching_allocator(contextlib.ContextDecorator):
    """Context manager (and decorator): NumPy arrays created inside come from the
    caching allocator.  Nested uses are fine; ``caching_allocator(False)`` turns it
    off inside an enclosing block.  Usable bare (``@caching_allocator``) or called
    (``@caching_allocator()``); each call of a decorated function enters afresh, so
    one decorated function may run on several threads."""

    def __new__(cls, enabled: bool = True):
        if callable(enabled):                      # used bare: @caching_allocator
            return cls()(enabled)
        return super().__new__(cls)

    def __init__(self, enabled: bool = True):
        self.enabled = bool(enabled)
        self._saved = []

    def _recreate_cm(self):
        return type(self)(self.enabled)

    def __enter__(self):
        handler = _alloc.CACHING if self.enabled else _DEFAULT
        self._saved.append(_alloc.set_handler(handler))
        return self

    def __exit__(self, *exc):
        _alloc.set_handler(self._saved.pop())
        return False


class allocation_budget:
    """Context manager: NumPy allocations inside hold at most ``nbytes`` at a time.

    An allocation that would go past the budget fails (NumPy raises
    ``MemoryError``); frees give the bytes back.  Arrays created before the block do
    not count.  After the block, :attr:`exceeded` tells whether some allocation was
    refused, which separates a refused allocation from a genuine out-of-memory.
    Applies to the current thread (or asyncio task), as :class:`caching_allocator`.

    Examples
    --------
    >>> budget = allocation_budget(1 << 20)
    >>> try:
    ...     with budget:
    ...         big = np.empty(1 << 22)
    ... except MemoryError:
    ...     pass
    >>> budget.exceeded
    True
    """

    def __init__(self, nbytes: int) -> None:
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        self.nbytes = nbytes
        self._handler = None
        self._saved = None

    def __enter__(self):
        if self._saved is not None:
            raise RuntimeError("allocation_budget is already in use (one block at a time)")
        self._handler = _alloc.budget_handler(self.nbytes)
        self._saved = _alloc.set_handler(self._handler)
        return self

    def __exit__(self, *exc):
        _alloc.set_handler(self._saved)
        self._saved = None
        return False

    @property
    def exceeded(self) -> bool:
        """Whether an allocation inside the (last) block was refused."""
        return self._handler is not None and bool(_alloc.budget_exceeded(self._handler))


class Workspace:
    """Scratch buffers one owner reuses across calls, at most one spare per name.

    :meth:`take` hands out the spare kept under a name when its shape and dtype fit
    (the caller then owns it), or a new uninitialised array; :meth:`give` keeps an
    array as that name's spare for the next :meth:`take`, replacing the previous
    one.  A buffer handed out twice before it comes back is simply a second array,
    so pending forwards never share one.  Reusing the same memory spares the page
    faults of fresh large arrays (see :func:`caching_allocator`, which does the same
    for every array of a training step).  Not thread-safe: one owner, one thread.

    Parameters
    ----------
    max_bytes : int, optional
        Larger arrays are not kept (None: no limit).
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self._spares = {}

    def take(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """The spare of ``name`` if it has ``shape`` and ``dtype`` (uninitialised
        contents), else a new empty array."""
        spare = self._spares.pop(name, None)
        if spare is None or spare.shape != shape or spare.dtype != dtype:
            spare = np.empty(shape, dtype)
        return spare

    def give(self, name: str, array: np.ndarray) -> None:
        """Keep ``array`` (no longer used by the caller) as the spare of ``name``;
        empty arrays and arrays over ``max_bytes`` are not kept."""
        if array.size == 0 or (self.max_bytes is not None and array.nbytes > self.max_bytes):
            return
        self._spares[name] = array

    def clear(self) -> None:
        """Drop every spare."""
        self._spares.clear()

    @property
    def nbytes(self) -> int:
        """Bytes held by the spares."""
        return sum(a.nbytes for a in self._spares.values())

    def spares(self) -> dict:
        """``{name: array}`` of the spares held now (a copy of the mapping)."""
        return dict(self._spares)

    def __len__(self) -> int:
        return len(self._spares)

    def __repr__(self) -> str:
        return f"Workspace({len(self)} spares, {self.nbytes} bytes)"


_DEFAULT = _alloc.get_handler()         # NumPy's own handler (this module imports first)


def memory_stats() -> dict:
    """The caching allocator's counters: ``hits`` and ``misses`` (requests served from
    the cache or not), ``released`` (blocks freed past the limit), ``cached_bytes``
    (held for reuse now), ``limit_bytes``, ``in_use_bytes`` (live arrays of cached size)
    and ``peak_bytes`` (their most since the last :func:`fit_cache_to_step`)."""
    return _alloc.cache_stats()


def cache_limit() -> int:
    """Most bytes the cache keeps for reuse."""
    return int(_alloc.cache_stats()["limit_bytes"])


def set_cache_limit(nbytes) -> None:
    """Keep at most ``nbytes`` for reuse (0: free every block at once); ``None``: size
    the limit from the training steps again (the default, see the module docstring)."""
    global _fixed, _largest_step
    if nbytes is None:
        _fixed, _largest_step = None, 0
        _alloc.set_cache_limit(DEFAULT_CACHE_LIMIT)
        return
    nbytes = check_int(nbytes, "nbytes", 0)
    _fixed = nbytes
    _alloc.set_cache_limit(nbytes)


def fit_cache_to_step() -> int:
    """End of a training step: unless :func:`set_cache_limit` fixed the limit, set it
    to twice the largest working set of a step so far (the peak bytes of cached size
    alive at once since the previous call), then start the next step's peak.  Returns
    the limit."""
    global _largest_step
    stats = _alloc.cache_stats()
    _alloc.reset_peak()
    if _fixed is not None:
        return _fixed
    _largest_step = max(_largest_step, int(stats["peak_bytes"]))
    limit = 2 * _largest_step
    _alloc.set_cache_limit(limit)
    return limit


def release_cache() -> int:
    """Give every cached block back to the system; returns the bytes released.  The
    steps seen so far no longer size the limit (:func:`fit_cache_to_step`)."""
    global _largest_step
    _largest_step = 0
    freed = int(_alloc.release_cache())
    _alloc.reset_peak()
    return freed

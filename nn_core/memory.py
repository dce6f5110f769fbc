"""Memory for NumPy arrays: a caching allocator for training loops.

A training step allocates the same arrays step after step.  With the system
allocator, every large array of every step is fresh memory: the kernel maps new pages
and zero-fills them on first touch (a *page fault* per 4 KiB page), which can cost more
than the arithmetic.  Inside :func:`caching_allocator`, NumPy arrays of at least 32 KiB
come from free lists kept by size class instead (at most 12.5 % slack): after the first
step, a step reuses the memory of the previous one and touches no new page.

The allocator is NumPy's own hook (NEP 49) and is scoped: it applies to arrays created
in the ``with`` block on the current thread (or asyncio task); arrays remember their
allocator and free through it whenever they die.  The cache holds at most
:func:`cache_limit` bytes (1 GiB by default); :func:`release_cache` gives it back.
:func:`nn_core.training.train` and the ``nn-core`` command train inside it.

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

import functools

from ._kernels import _alloc

__all__ = ["caching_allocator", "memory_stats", "cache_limit", "set_cache_limit",
           "release_cache"]


class caching_allocator:
    """Context manager (and decorator): NumPy arrays created inside come from the
    caching allocator.  Nested uses are fine; ``caching_allocator(False)`` turns it
    off inside an enclosing block."""

    def __init__(self, enabled: bool = True):
        if callable(enabled):                      # used bare: @caching_allocator
            fn, self.enabled = enabled, True
            self.__wrapped__ = fn
            functools.update_wrapper(self, fn)
        else:
            self.enabled = bool(enabled)
        self._saved = []

    def __enter__(self):
        handler = _alloc.CACHING if self.enabled else _DEFAULT
        self._saved.append(_alloc.set_handler(handler))
        return self

    def __exit__(self, *exc):
        _alloc.set_handler(self._saved.pop())
        return False

    def __call__(self, *args, **kwargs):
        fn = getattr(self, "__wrapped__", None)
        if fn is not None:
            with caching_allocator(self.enabled):
                return fn(*args, **kwargs)
        (fn,) = args

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            with caching_allocator(self.enabled):
                return fn(*a, **kw)
        return wrapper


_DEFAULT = _alloc.get_handler()         # NumPy's own handler (this module imports first)


def memory_stats() -> dict:
    """The caching allocator's counters: ``hits`` and ``misses`` (requests served from
    the cache or not), ``released`` (blocks freed past the limit), ``cached_bytes``
    (held for reuse now) and ``limit_bytes``."""
    return _alloc.cache_stats()


def cache_limit() -> int:
    """Most bytes the cache keeps for reuse."""
    return int(_alloc.cache_stats()["limit_bytes"])


def set_cache_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` for reuse (0: free every block at once)."""
    nbytes = int(nbytes)
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    _alloc.set_cache_limit(nbytes)


def release_cache() -> int:
    """Give every cached block back to the system; returns the bytes released."""
    return int(_alloc.release_cache())

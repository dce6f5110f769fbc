"""The preallocated key/value cache of incremental decoding (``module.new_kv_cache``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._validation import check_positive_int

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import DTypeLike

__all__ = ["KVCache"]


class KVCache:
    """Preallocated key/value cache for incremental decoding.

    Made by ``module.new_kv_cache(batch_size, max_len, window=None)``.  A forward with
    ``kv_cache=`` writes the new positions by slice and advances ``length``.

    Without ``window`` it holds ``keys`` and ``values`` buffers of shape
    ``[B, g, max_len, d_k]`` (``g`` = the module's K/V groups).  With ``window=w`` the
    attention is the causal band of width ``w`` (each position sees itself and the
    ``w - 1`` before it) and the buffers are a ring of ``min(w, max_len)`` positions:
    position ``t`` lives in slot ``t % w``, so a generation of any length up to
    ``max_len`` holds at most ``w`` positions.

    Attributes
    ----------
    length : int
        Positions appended so far.
    max_len : int
        Positions that may be appended in all; past it ``RuntimeError``.
    window : int or None
        The band width of a ring cache.
    capacity : int
        Positions the buffers hold (``max_len``, or ``min(window, max_len)``).
    held : int
        Positions held now (``min(length, capacity)``).
    nbytes : int
        Bytes of the preallocated K and V buffers
        (``= module.get_kv_cache_size(batch_size, max_len, window=window)``).
    """

    def __init__(self, batch_size: int, max_len: int, num_kv_groups: int, head_dim: int,
                 dtype: DTypeLike, window: int | None = None) -> None:
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.max_len = check_positive_int(max_len, "max_len")
        self.window = None if window is None else check_positive_int(window, "window")
        self.num_kv_groups = int(num_kv_groups)
        self.head_dim = int(head_dim)
        self.dtype = np.dtype(dtype)
        self.capacity = self.max_len if window is None else min(self.window, self.max_len)
        shape = (self.batch_size, self.num_kv_groups, self.capacity, self.head_dim)
        self._k = np.zeros(shape, dtype=self.dtype)     # (B, g, capacity, d_k)
        self._v = np.zeros(shape, dtype=self.dtype)
        self.length = 0

    @property
    def nbytes(self) -> int:
        return int(self._k.nbytes + self._v.nbytes)

    @property
    def held(self) -> int:
        return min(self.length, self.capacity)

    def _ordered(self, buf, n):
        """The last ``n <= held`` positions of ``buf`` in position order (a view
        without a window; a copy when the ring wraps)."""
        if self.window is None:
            return buf[:, :, self.length - n:self.length]
        slots = np.arange(self.length - n, self.length) % self.capacity
        start = slots[0] if n else 0
        if n == 0 or slots[-1] >= start:                  # contiguous in the ring
            return buf[:, :, start:start + n]
        return buf[:, :, slots]

    @property
    def keys(self) -> np.ndarray:
        """Read-only keys of the held positions in order ``[B, g, held, d_k]``."""
        v = self._ordered(self._k, self.held)
        v.flags.writeable = False
        return v

    @property
    def values(self) -> np.ndarray:
        """Read-only values of the held positions in order ``[B, g, held, d_k]``."""
        v = self._ordered(self._v, self.held)
        v.flags.writeable = False
        return v

    def reset(self) -> None:
        """Forget every cached position (``length = 0``); the buffers are kept."""
        self.length = 0

    def check_room(self, n: int) -> None:
        """RuntimeError unless ``n`` more positions fit (checked before any write)."""
        if self.length + n > self.max_len:
            raise RuntimeError(
                f"kv_cache overflow: {self.length} cached + {n} new positions exceeds "
                f"max_len={self.max_len}; allocate a larger cache or reset() it"
            )

    def append(self, k_heads: np.ndarray,
               v_heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write ``[B, g, n, d_k]`` new keys/values at ``length`` and advance it.

        Returns the keys and values the new positions attend over, in position
        order: every position so far ``[B, g, length, d_k]`` (writable views) without
        a window; with one, the ``window - 1`` positions before the new ones (or as
        many as there are) followed by the new ones.  RuntimeError (nothing written)
        when the ``n`` positions do not fit.
        """
        n = k_heads.shape[2]
        self.check_room(n)
        if self.window is None:
            end = self.length + n
            self._k[:, :, self.length:end] = k_heads
            self._v[:, :, self.length:end] = v_heads
            self.length = end
            return self._k[:, :, :end], self._v[:, :, :end]
        before = min(self.held, self.window - 1)
        keys = np.concatenate((self._ordered(self._k, before), k_heads), axis=2)
        values = np.concatenate((self._ordered(self._v, before), v_heads), axis=2)
        keep = min(n, self.capacity)                 # only the last ones stay in the ring
        slots = np.arange(self.length + n - keep, self.length + n) % self.capacity
        self._k[:, :, slots] = k_heads[:, :, n - keep:]
        self._v[:, :, slots] = v_heads[:, :, n - keep:]
        self.length += n
        return keys, values

    def __repr__(self) -> str:
        win = "" if self.window is None else f", window={self.window}"
        return (f"KVCache(batch_size={self.batch_size}, num_kv_groups={self.num_kv_groups}, "
                f"head_dim={self.head_dim}, length={self.length}, max_len={self.max_len}"
                f"{win}, dtype={self.dtype}, nbytes={self.nbytes})")

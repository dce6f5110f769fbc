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

    Made by ``module.new_kv_cache(batch_size, max_len)``.  Holds ``keys`` and
    ``values`` buffers of shape ``[B, g, max_len, d_k]`` (``g`` = the module's K/V
    groups); a forward with ``kv_cache=`` writes the new positions by slice at
    ``length`` and advances ``length``.

    Attributes
    ----------
    length : int
        Positions filled so far.
    max_len : int
        Capacity; appending past it raises ``RuntimeError``.
    nbytes : int
        Bytes of the preallocated K and V buffers
        (``= module.get_kv_cache_size(batch_size, max_len)``).
    """

    def __init__(self, batch_size: int, max_len: int, num_kv_groups: int, head_dim: int,
                 dtype: DTypeLike) -> None:
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.max_len = check_positive_int(max_len, "max_len")
        self.num_kv_groups = int(num_kv_groups)
        self.head_dim = int(head_dim)
        self.dtype = np.dtype(dtype)
        shape = (self.batch_size, self.num_kv_groups, self.max_len, self.head_dim)
        self._k = np.zeros(shape, dtype=self.dtype)     # (B, g, max_len, d_k)
        self._v = np.zeros(shape, dtype=self.dtype)
        self.length = 0

    @property
    def nbytes(self) -> int:
        return int(self._k.nbytes + self._v.nbytes)

    @property
    def keys(self) -> np.ndarray:
        """Read-only view of the cached keys ``[B, g, length, d_k]``."""
        v = self._k[:, :, : self.length]
        v.flags.writeable = False
        return v

    @property
    def values(self) -> np.ndarray:
        """Read-only view of the cached values ``[B, g, length, d_k]``."""
        v = self._v[:, :, : self.length]
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

        Returns the filled (writable) views ``[B, g, length, d_k]`` of the keys and
        values; RuntimeError (nothing written) when the ``n`` positions do not fit.
        """
        n = k_heads.shape[2]
        self.check_room(n)
        end = self.length + n
        self._k[:, :, self.length:end] = k_heads
        self._v[:, :, self.length:end] = v_heads
        self.length = end
        return self._k[:, :, :end], self._v[:, :, :end]

    def __repr__(self) -> str:
        return (f"KVCache(batch_size={self.batch_size}, num_kv_groups={self.num_kv_groups}, "
                f"head_dim={self.head_dim}, length={self.length}, max_len={self.max_len}, "
                f"dtype={self.dtype}, nbytes={self.nbytes})")

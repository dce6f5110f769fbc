"""The key of a counter-based dropout mask, shared by every kernel that applies one.

A mask is not stored: it is a pure function of a key and of each element's flat
index, so a backward regenerates the forward's mask from the key alone.
:class:`nn_core.layers.Dropout` and the tiled attention kernel (dropout on the
attention weights) draw their keys here, one per forward.
"""
from __future__ import annotations

import numpy as np

__all__ = ["dropout_key"]


def dropout_key(rng: np.random.Generator, p: float) -> tuple[int, int, int, float]:
    """``(k0, k1, threshold, scale)`` of one dropout mask with drop probability ``p``.

    ``k0, k1`` are two 32-bit numbers drawn from ``rng``; an element is dropped when
    its 32-bit counter hash is below ``threshold = round(p * 2**32)``; survivors are
    multiplied by ``scale = 1 / (1 - p)``.  ``p`` must be in ``[0, 1)`` (checked by
    the caller).
    """
    k0, k1 = (int(v) for v in rng.integers(0, 1 << 32, 2, dtype=np.uint64))
    return k0, k1, min(int(round(p * 2.0 ** 32)), (1 << 32) - 1), 1.0 / (1.0 - p)

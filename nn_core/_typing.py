"""Type aliases of the public signatures (for type checkers; nothing here runs)."""
from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

__all__ = ["ArrayLike", "DTypeLike", "RNGLike", "StateLike", "State"]

#: ``None`` (fresh entropy), an ``int`` seed or a ``np.random.Generator``
RNGLike = Union[None, int, np.random.Generator]
#: a recurrent state as returned: ``h``, or ``(h, c)`` for an LSTM (bidirectional and
#: stacked layers nest these per direction)
State = Union[np.ndarray, Tuple[Any, ...]]
#: a recurrent state as accepted: the above, array-likes, or ``None`` for zeros
StateLike = Union[ArrayLike, Tuple[Any, ...], None]

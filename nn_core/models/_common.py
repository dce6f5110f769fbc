"""Helpers the recurrent models share: cell look-up and final-state plumbing."""
from __future__ import annotations

import numpy as np

from ..recurrent import GRUCell, LSTMCell, RNNCell

__all__ = ["cell_class", "final_h", "state_grad"]

_CELLS = {"gru": GRUCell, "lstm": LSTMCell, "rnn": RNNCell}


def cell_class(cell):
    """``"gru"`` / ``"lstm"`` / ``"rnn"`` -> the cell class from :mod:`nn_core.recurrent`."""
    if cell not in _CELLS:
        raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
    return _CELLS[cell]


def final_h(state):
    """``h`` of a final state that is ``h`` (RNN/GRU) or ``(h, c)`` (LSTM)."""
    return state[0] if isinstance(state, tuple) else state


def state_grad(cell, grad_h):
    """Gradient of a final state given only ``grad_h`` (``(grad_h, 0)`` for LSTM)."""
    if cell == "lstm":
        return (grad_h, np.zeros_like(grad_h))
    return grad_h

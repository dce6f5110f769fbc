"""Helpers the recurrent models share: the cell of a name, and final-state plumbing."""
from __future__ import annotations

import numpy as np

from .._validation import check_choice
from ..recurrent import cell_class

__all__ = ["recurrent_cell", "final_h", "state_grad"]

#: the cells a model's ``cell`` argument may name
CELLS = ("gru", "lstm", "rnn")


def recurrent_cell(cell):
    """``"gru"`` / ``"lstm"`` / ``"rnn"`` -> the cell class (``ValueError`` naming
    ``cell`` otherwise)."""
    return cell_class(check_choice(cell, "cell", CELLS))


def final_h(state):
    """``h`` of a final state that is ``h`` (RNN/GRU) or ``(h, c)`` (LSTM)."""
    return state[0] if isinstance(state, tuple) else state


def state_grad(cell, grad_h):
    """Gradient of a final state given only ``grad_h`` (``(grad_h, 0)`` for LSTM)."""
    if cell == "lstm":
        return (grad_h, np.zeros_like(grad_h))
    return grad_h

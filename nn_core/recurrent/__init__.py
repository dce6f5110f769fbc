"""Recurrent cells and layers (README "Recurrent layers") over compiled BPTT kernels.

Cells: ``RNNCell``, ``LSTMCell``, ``GRUCell`` (one-step and whole-sequence APIs; the
kernels are ``nn_core._kernels._recurrent``).  Layers, composed from the cells' public
sequence API: ``StackedLSTM``, ``BidirectionalWrapper``, ``BidirectionalRNNCell``,
``BidirectionalGRU``, ``StackedBidirectional``.

Import graph (no cycles): ``_base`` <- ``stacked`` <- ``bidirectional`` <- the cell
modules (``rnn_cell``, ``gru_cell`` define the bidirectional convenience classes,
``lstm_cell`` the stacked LSTM).
"""
from ._base import RecurrentCell
from .bidirectional import BidirectionalWrapper, StackedBidirectional
from .gru_cell import BidirectionalGRU, GRUCell
from .lstm_cell import LSTMCell, StackedLSTM
from .rnn_cell import BidirectionalRNNCell, RNNCell

__all__ = ["RecurrentCell", "RNNCell", "LSTMCell", "GRUCell", "StackedLSTM",
           "BidirectionalWrapper", "BidirectionalRNNCell", "BidirectionalGRU",
           "StackedBidirectional"]

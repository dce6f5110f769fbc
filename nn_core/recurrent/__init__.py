"""Recurrent cells and layers (docs/guide/tour.md, "Recurrent layers") over compiled BPTT kernels.

Cells: ``RNNCell``, ``LSTMCell``, ``GRUCell`` (one-step and whole-sequence APIs; the
kernels are ``nn_core._kernels._recurrent``).  Layers, composed from the cells' public
sequence API: ``StackedLSTM``, ``BidirectionalWrapper``, ``BidirectionalRNNCell``,
``BidirectionalGRU``, ``StackedBidirectional``.

``base`` is the public module of :class:`RecurrentCell`, the sequence driver the
cells share and the layer-building API the layers use, and of ``cell_class`` (a cell
class by name).  Import graph (no cycles): ``base`` <- ``stacked`` <- ``bidirectional`` <- the cell
modules (``rnn_cell``, ``gru_cell`` define the bidirectional convenience classes,
``lstm_cell`` the stacked LSTM).
"""
from .base import RecurrentCell, cell_class
from .bidirectional import BidirectionalWrapper, StackedBidirectional
from .gru_cell import BidirectionalGRU, GRUCell
from .lstm_cell import LSTMCell, StackedLSTM
from .rnn_cell import BidirectionalRNNCell, RNNCell

__all__ = ["RecurrentCell", "RNNCell", "LSTMCell", "GRUCell", "StackedLSTM",
           "BidirectionalWrapper", "BidirectionalRNNCell", "BidirectionalGRU",
           "StackedBidirectional", "cell_class"]

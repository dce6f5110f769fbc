"""Recurrent cells and layers (API.md §3) over compiled BPTT kernels.

``RNNCell``, ``LSTMCell``, ``GRUCell`` (one-step and whole-sequence APIs) and
``StackedLSTM``; the kernels are ``nn_core._kernels._recurrent``.
"""
from ._base import RecurrentCell
from .gru_cell import GRUCell
from .lstm_cell import LSTMCell, StackedLSTM
from .rnn_cell import RNNCell

__all__ = ["RecurrentCell", "RNNCell", "LSTMCell", "GRUCell", "StackedLSTM"]

# Bidirectional layers (issue 5)
from .bidirectional import BidirectionalWrapper, StackedBidirectional  # noqa: E402
from .gru_cell import BidirectionalGRU  # noqa: E402
from .rnn_cell import BidirectionalRNNCell  # noqa: E402

__all__ += ["BidirectionalWrapper", "BidirectionalRNNCell", "BidirectionalGRU",
            "StackedBidirectional"]

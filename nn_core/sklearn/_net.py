"""The network behind :class:`RecurrentRegressor` and :class:`RecurrentClassifier`."""
from __future__ import annotations

import numpy as np

from ..layers import Linear
from ..models._common import final_h, recurrent_cell, state_grad
from ..module import Module

__all__ = ["SequenceNet"]


class SequenceNet(Module):
    r"""A recurrent cell over a padded batch of sequences; its state after each sequence's
    last real step goes through a linear read-out.

    Parameters
    ----------
    input_size : int
        ``D``, features per step.
    hidden_size : int
        ``H``.
    output_size : int
        ``O``: outputs (regression) or classes (logits).
    cell : {"gru", "lstm", "rnn"}
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only

    * ``forward(x [B, T, D], lengths=None) -> [B, O]`` (``lengths [B]``: real steps of each
      sequence, the rest is padding; default: all ``T``);
    * ``backward(grad [B, O]) -> (grad_x [B, T, D], None)``.

    Notes
    -----
    ``y = h(s) W + b`` with ``s`` the cell's final state (``h`` its hidden part); the
    backward runs the read-out, then BPTT from the final state only
    (``backward_sequence(None, grad_state)``).

    Examples
    --------
    >>> net = SequenceNet(2, 8, 3, rng=0)
    >>> x = np.zeros((4, 5, 2), np.float32)
    >>> net(x, lengths=np.array([5, 1, 3, 2])).shape
    (4, 3)
    """

    def __init__(self, input_size, hidden_size, output_size, cell="gru", *, dtype=np.float32,
                 rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.cell_type = cell
        self.rnn = recurrent_cell(cell)(input_size, hidden_size, batch_first=True, dtype=dtype,
                                    rng=self.rng)
        self.head = Linear(hidden_size, output_size, dtype=dtype, rng=self.rng)

    def forward(self, x, lengths=None):
        _, state = self.rnn.forward_sequence(np.asarray(x, dtype=self.dtype), lengths=lengths)
        self._save_cache(True)
        return self.head(final_h(state))

    def backward(self, grad_output):
        self._pop_cache()
        gh = self.head.backward(grad_output)
        gx, _ = self.rnn.backward_sequence(None, state_grad(self.cell_type, gh))
        return gx, None

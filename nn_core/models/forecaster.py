"""A recurrent one-shot forecaster (the ``forecast`` task's model)."""
from __future__ import annotations

import numpy as np

from .._validation import check_grad_output
from ..layers import Linear
from ..module import Module
from ._common import final_h, recurrent_cell, state_grad

__all__ = ["Forecaster"]


class Forecaster(Module):
    r"""Recurrent forecaster: a window of observations -> the observation ``k`` steps on.

    A recurrent cell reads the window; a linear read-out of its final hidden state is
    added to the last observation, so the model starts close to persistence
    (``y = x_{W-1}``) and learns the change.  The horizon ``k`` is whatever the
    training targets are; the model does not see it.

    Parameters
    ----------
    input_size : int, default 3
        ``D``, features per observation (3 for the Lorenz system).
    hidden_size : int, default 64
        ``H``.
    cell : {"gru", "lstm", "rnn"}, default "gru"
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only
        Draws the cell's weights, then the read-out's.

    Shapes: ``B`` batch, ``W`` window length.

    Interface
    ---------
    * ``forward(x [B, W, D]) -> y [B, D]``;
    * ``backward(grad_y [B, D]) -> grad_x [B, W, D]``.

    Parameters of the module: ``rnn.W_ih, rnn.W_hh, rnn.b_ih, rnn.b_hh`` and
    ``head.W [H, D], head.b [D]``; ``head.W`` is initialised at a tenth of the usual
    scale.

    Notes
    -----
    Forward::

        (_, s_W) = rnn.forward_sequence(x^T)          x^T: (W, B, D), time-major
        y = x[:, W-1] + h(s_W) A + a                  A = head.W, a = head.b

    Backward, with ``g = dloss/dy``::

        g_h = g A^T                                    (dA += h^T g, da += sum_b g)
        g_x = rnn.backward_sequence(None, g_h)         (LSTM: grad_c = 0)
        g_x[:, W-1] += g                               (the residual path)

    Examples
    --------
    >>> import numpy as np
    >>> from nn_core.models import Forecaster
    >>> model = Forecaster(input_size=3, hidden_size=8, cell="lstm", rng=0)
    >>> x = np.random.default_rng(0).standard_normal((4, 16, 3))
    >>> y = model(x)
    >>> y.shape, y.dtype
    ((4, 3), dtype('float32'))
    >>> model.backward(np.ones_like(y)).shape
    (4, 16, 3)
    """

    def __init__(self, input_size=3, hidden_size=64, cell="gru", *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        self.cell_type = cell
        self.rnn = recurrent_cell(cell)(input_size, hidden_size, dtype=dtype, rng=self.rng)
        self.head = Linear(hidden_size, input_size, dtype=dtype, rng=self.rng)
        self.head.params["W"] *= 0.1        # start close to persistence

    def forward(self, x):
        x = np.asarray(x, dtype=self.dtype)
        _, state = self.rnn.forward_sequence(np.ascontiguousarray(x.transpose(1, 0, 2)))
        self._save_cache(x.shape)
        return x[:, -1] + self.head(final_h(state))

    def backward(self, grad_output):
        shape = self._peek_cache()
        g = check_grad_output(grad_output, (shape[0], shape[2]), self.dtype)
        self._pop_cache()
        gh = self.head.backward(g)
        gx, _ = self.rnn.backward_sequence(None, state_grad(self.cell_type, gh))
        gx = np.ascontiguousarray(gx.transpose(1, 0, 2))
        gx[:, -1] += g
        return gx

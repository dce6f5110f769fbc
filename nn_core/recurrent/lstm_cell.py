"""Long short-term memory (Hochreiter & Schmidhuber, 1997) cell and stacked layer."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._kernels import _recurrent as _K
from .._validation import check_positive_int, check_probability
from ..module import ModuleList
from .base import RecurrentCell
from .rnn_cell import _SHARED_DOC
from .stacked import _Stack

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import DTypeLike, RNGLike

__all__ = ["LSTMCell", "StackedLSTM"]


class LSTMCell(RecurrentCell, cell_type="lstm"):
    __doc__ = """LSTM cell, gate order ``(i, f, g, o)``; the state is ``(h, c)``.
""" + _SHARED_DOC.format(G="4", step_out="(h_t [B, H], c_t [B, H])",
                         step_grad="grad_h, grad_c=None",
                         step_ret="(grad_x, grad_h_prev, grad_c_prev)", own="""\
    forget_bias : float, default 1.0
        Added to the forget-gate block ``b_ih[H:2H]`` at initialisation
        (Jozefowicz et al., 2015); ``0.0`` gives PyTorch's initialisation exactly.
        Ignored when ``bias=False``.
""") + """

    Notes
    -----
    Forward (Hochreiter & Schmidhuber, 1997; Gers et al., 2000)::

        [a_i, a_f, a_g, a_o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
        i, f, o = sigma(a_i), sigma(a_f), sigma(a_o);  g = tanh(a_g)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

    Backward (``dh_t``, ``dc_t`` = upstream + carried)::

        do = dh_t tanh(c_t);   dc = dc_t + dh_t o (1 - tanh(c_t)^2)
        da_i = dc g i(1-i),  da_f = dc c_{t-1} f(1-f),  da_g = dc i (1-g^2),
        da_o = do o(1-o)
        dc_{t-1} = dc f,  dh_{t-1} = W_hh^T da,  dx_t = W_ih^T da
        dW_ih += da x_t^T,  dW_hh += da h_{t-1}^T,  db_ih = db_hh += da

    Examples
    --------
    >>> cell = LSTMCell(3, 4, dtype=np.float64, rng=0)
    >>> out, (h, c) = cell.forward_sequence(np.ones((5, 2, 3)), lengths=[5, 2])
    >>> gx, (gh0, gc0) = cell.backward_sequence(np.ones_like(out))
"""

    _GATES = 4
    _HAS_CELL_STATE = True

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 forget_bias: float = 1.0, *, batch_first: bool = False,
                 recurrent_init: str = "uniform", dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(input_size, hidden_size, bias, batch_first=batch_first,
                         recurrent_init=recurrent_init, dtype=dtype, rng=rng)
        self.forget_bias = float(forget_bias)
        if self.bias:
            H = self.hidden_size
            self.params["b_ih"][H:2 * H] += self.dtype.type(self.forget_bias)

    def _kind(self):
        return _K.LSTM


class StackedLSTM(_Stack):
    """``num_layers`` LSTMCells, layer ``k > 0`` reading layer ``k-1``'s output.

    Parameters
    ----------
    input_size, hidden_size : int
        ``D`` and ``H``.
    num_layers : int
        ``L >= 1``.
    dropout : float in [0, 1), default 0.0
        Inverted dropout on the output of every layer but the last, in training mode
        only (PyTorch's ``nn.LSTM(dropout=...)``).
    bias, forget_bias, recurrent_init
        Passed to every :class:`LSTMCell`.
    batch_first : bool, keyword-only
        ``x`` / ``output`` are ``[B, T, *]``; states stay ``[L, B, H]``.
    dtype, rng : keyword-only

    Methods
    -------
    forward(x [T, B, D], state=None, lengths=None)
        ``-> (output [T, B, H], (h_n [L, B, H], c_n [L, B, H]))``; ``state`` is
        ``(h_0, c_0)`` of shape ``[L, B, H]`` each (zeros when None); ``lengths`` as in
        :class:`LSTMCell`.
    backward(grad_output, grad_state=None)
        ``-> (grad_x, (grad_h0 [L, B, H], grad_c0 [L, B, H]))``; ``grad_output`` may
        be None, ``grad_state`` is ``(grad_h_n, grad_c_n)`` (entries may be None).

    Parameters ``layers.{k}.W_ih``, ``layers.{k}.W_hh``, ``layers.{k}.b_ih``,
    ``layers.{k}.b_hh`` (``W_ih`` of layer ``k > 0`` is ``[4H, H]``).

    Notes
    -----
    Forward: ``y^0 = x``; ``y^k, (h^k_n, c^k_n) = LSTM_k(m^{k-1} * y^{k-1}, (h^k_0, c^k_0))``
    with ``m`` a Bernoulli(1-p)/(1-p) mask (identity in eval mode and for the last
    layer).  Backward runs the layers in reverse order:
    ``g^{k-1} = m^{k-1} * dx^k``, each layer by BPTT (see :class:`LSTMCell`); the
    loops are :class:`~nn_core.recurrent.stacked._Stack`'s, shared with
    :class:`~nn_core.recurrent.StackedBidirectional`.
    Reference: Graves (2013), Zaremba et al. (2014) for dropout between layers.

    Examples
    --------
    >>> net = StackedLSTM(3, 4, 2, dtype=np.float64, rng=0)
    >>> out, (h, c) = net(np.ones((5, 2, 3)))
    >>> gx, (gh0, gc0) = net.backward(np.ones_like(out))
    >>> h.shape, gh0.shape
    ((2, 2, 4), (2, 2, 4))
    """

    cell_class = LSTMCell
    _STATE_PARTS = ("h_0", "c_0")
    _GRAD_PARTS = ("h_n", "c_n")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0, *,
                 bias: bool = True, forget_bias: float = 1.0, batch_first: bool = False,
                 recurrent_init: str = "uniform", dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        self.dropout = check_probability(dropout, "dropout")
        self.batch_first = bool(batch_first)
        self.layers = ModuleList(dtype=dtype)
        for k in range(self.num_layers):
            self.layers.append(LSTMCell(self.input_size if k == 0 else self.hidden_size,
                                        self.hidden_size, bias, forget_bias,
                                        recurrent_init=recurrent_init, dtype=dtype,
                                        rng=self.rng))
        self.output_size = self.hidden_size

"""Elman RNN cell, ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, and the
bidirectional layer over two of them."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._kernels import _recurrent as _K
from .._validation import make_rng
from .base import RecurrentCell, spawn_rng
from .bidirectional import BidirectionalWrapper

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import DTypeLike, RNGLike

__all__ = ["RNNCell", "BidirectionalRNNCell"]

_SHARED_DOC = """
    Parameters
    ----------
    input_size : int
        ``D``, features per time step.
    hidden_size : int
        ``H``, size of the hidden state.
    bias : bool, default True
        Learn ``b_ih`` and ``b_hh``.
    batch_first : bool, keyword-only, default False
        ``forward_sequence`` takes ``[B, T, D]`` and returns ``[B, T, H]``.
    recurrent_init : {{"uniform", "orthogonal"}}, keyword-only, default "uniform"
        ``"uniform"``: every parameter ~ ``U(-1/sqrt(H), 1/sqrt(H))`` (PyTorch).
        ``"orthogonal"``: each gate's ``[H, H]`` block of ``W_hh`` is a random
        orthogonal matrix (Saxe et al., 2014); the rest stays uniform.
    dtype : {{np.float32, np.float64}}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only
{own}
    Interface
    ---------
    Shapes: ``T`` time, ``B`` batch, ``D`` input size, ``H`` hidden size,
    ``G`` gates ({G}).

    One step (pushes a cache; BPTT = ``backward`` in reverse order):

    * ``forward(x_t [B, D], state=None) -> {step_out}``
    * ``backward({step_grad}) -> {step_ret}``; ``reset()`` drops pushed caches.

    Whole sequence (one compiled kernel call, GIL released):

    * ``forward_sequence(x [T, B, D], state=None, lengths=None)
      -> (output [T, B, H], final_state)``. ``lengths`` is an int ``[B]`` with
      ``1 <= lengths[b] <= T`` or a boolean prefix mask ``[T, B]`` (``[B, T]`` with
      ``batch_first``); positions ``t >= lengths[b]`` output 0 and leave the state
      unchanged, so ``final_state`` is each sequence's state after its last real step.
      ``reverse=True`` runs right to left from each sequence's last real step.
    * ``backward_sequence(grad_output [T, B, H] or None, grad_final_state=None)
      -> (grad_x [T, B, D], grad_initial_state)``.  Gradients of the initial state are
      always arrays (zeros' gradient when ``state=None``).

    Parameters (PyTorch's layout): ``W_ih [G*H, D]``, ``W_hh [G*H, H]``, ``b_ih [G*H]``,
    ``b_hh [G*H]``.

    Raises
    ------
    ValueError
        Wrong input rank or size, state of the wrong shape, lengths out of range.
    TypeError
        Non-real inputs.
    RuntimeError
        ``backward`` without a matching forward.
"""


class RNNCell(RecurrentCell, cell_type="rnn"):
    __doc__ = """Elman recurrent cell with a tanh or ReLU nonlinearity.
""" + _SHARED_DOC.format(G="1", step_out="h_t [B, H]", step_grad="grad_h",
                         step_ret="(grad_x, grad_h_prev)", own="""\
    nonlinearity : {"tanh", "relu"}, default "tanh"
""") + """
    Notes
    -----
    Forward (Elman, 1990)::

        a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
        h_t = tanh(a_t)   or   relu(a_t)

    Backward, with ``dh_t`` = upstream + carried gradient::

        da_t     = dh_t * (1 - h_t^2)         (tanh)   or   dh_t * [h_t > 0]  (relu)
        dh_{t-1} = W_hh^T da_t,   dx_t = W_ih^T da_t
        dW_ih += sum_t da_t x_t^T,  dW_hh += sum_t da_t h_{t-1}^T,
        db_ih += sum_t da_t,        db_hh += sum_t da_t

    Examples
    --------
    >>> cell = RNNCell(3, 4, dtype=np.float64, rng=0)
    >>> out, h = cell.forward_sequence(np.ones((5, 2, 3)))
    >>> out.shape, h.shape
    ((5, 2, 4), (2, 4))
    >>> gx, gh0 = cell.backward_sequence(np.ones_like(out))
"""

    _GATES = 1

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh",
                 bias: bool = True, *, batch_first: bool = False, recurrent_init: str = "uniform",
                 dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, batch_first=batch_first,
                         recurrent_init=recurrent_init, dtype=dtype, rng=rng)

    def _kind(self):
        return _K.RNN_TANH if self.nonlinearity == "tanh" else _K.RNN_RELU


class BidirectionalRNNCell(BidirectionalWrapper):
    """:class:`BidirectionalWrapper` over two independently initialised :class:`RNNCell`.

    Parameters
    ----------
    input_size, hidden_size : int
        ``D`` and ``H`` of both cells.
    merge_mode : {"concat", "sum", "mean", "mul"}, keyword-only, default "concat"
    nonlinearity : {"tanh", "relu"}, keyword-only, default "tanh"
    bias : bool, keyword-only, default True
    batch_first : bool, keyword-only, default False
    recurrent_init : {"uniform", "orthogonal"}, keyword-only, default "uniform"
    concurrent : bool or None, keyword-only, default None
        Run the two sweeps on two threads (default: when more than one core is free).
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only
        Same seed, same weights (both directions drawn from independent child streams).

    Interface
    ---------
    ``forward(x [T, B, D], state=None, lengths=None) -> (output [T, B, H_out],
    (h_fw [B, H], h_bw [B, H]))`` and ``backward(grad_output, grad_state=None) ->
    (grad_x, (grad_h0_fw, grad_h0_bw))``; ``H_out = 2H`` (concat) or ``H``.  See
    :class:`BidirectionalWrapper` for the equations and :class:`RNNCell` for the cell.
    Parameters ``fw.W_ih, fw.W_hh, fw.b_ih, fw.b_hh`` and ``bw.*`` (torch's
    ``*_l0`` and ``*_l0_reverse``).

    Examples
    --------
    >>> layer = BidirectionalRNNCell(3, 4, nonlinearity="relu", dtype=np.float64, rng=0)
    >>> out, (h_fw, h_bw) = layer(np.ones((5, 2, 3)))
    >>> out.shape
    (5, 2, 8)
    """

    def __init__(self, input_size: int, hidden_size: int, *, merge_mode: str = "concat",
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 recurrent_init: str = "uniform", concurrent: bool | None = None,
                 dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        gen = make_rng(rng)
        cells = [RNNCell(input_size, hidden_size, nonlinearity, bias, batch_first=batch_first,
                         recurrent_init=recurrent_init, dtype=dtype, rng=spawn_rng(gen))
                 for _ in range(2)]
        super().__init__(cells[0], cells[1], merge_mode, concurrent=concurrent, rng=gen)

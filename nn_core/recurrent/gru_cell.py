"""Gated recurrent unit (Cho et al., 2014), both reset placements, and the
bidirectional layer over two of them."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .._kernels import _recurrent as _K
from .._validation import make_rng
from .base import RecurrentCell, spawn_rng
from .bidirectional import BidirectionalWrapper
from .rnn_cell import _SHARED_DOC

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import DTypeLike, RNGLike

__all__ = ["GRUCell", "BidirectionalGRU"]


class GRUCell(RecurrentCell, cell_type="gru"):
    __doc__ = """GRU cell, gate order ``(r, z, n)``.
""" + _SHARED_DOC.format(G="3", step_out="h_t [B, H]", step_grad="grad_h",
                         step_ret="(grad_x, grad_h_prev)", own="""\
    reset_after : bool, default False
        ``False``: the paper's equation, the reset gate is applied to ``h`` before
        the recurrent product, ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``.
        ``True``: PyTorch/cuDNN's form, ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``
        (load torch GRU weights only into this form).
""") + """

    Notes
    -----
    Forward (``W_ir`` = rows ``0:H`` of ``W_ih``, ``W_iz`` rows ``H:2H``,
    ``W_in`` rows ``2H:3H``; likewise ``W_hh`` and the biases)::

        r = sigma(W_ir x + b_ir + W_hr h + b_hr)
        z = sigma(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)            reset_after=False
        n = tanh(W_in x + b_in + r*(W_hn h + b_hn))            reset_after=True
        h' = (1 - z)*n + z*h

    Backward (``dh'`` upstream + carried; ``a_*`` pre-activations)::

        da_n = dh' (1 - z)(1 - n^2),   da_z = dh' (h - n) z (1 - z)
        reset_after=False: d(rh) = W_hn^T da_n,  da_r = d(rh) h r(1-r),
            dh = dh' z + d(rh) r + W_hr^T da_r + W_hz^T da_z,  dW_hn += da_n (r h)^T
        reset_after=True:  hn = W_hn h + b_hn,  da_r = da_n hn r(1-r),
            dh = dh' z + W_hr^T da_r + W_hz^T da_z + W_hn^T (r da_n),
            dW_hn += (r da_n) h^T,  db_hn += r da_n
        dx = W_ih^T [da_r, da_z, da_n],  dW_ih += [da_r, da_z, da_n] x^T

    Examples
    --------
    >>> cell = GRUCell(3, 4, reset_after=True, dtype=np.float64, rng=0)
    >>> h = cell.forward(np.ones((2, 3)))
    >>> gx, gh = cell.backward(np.ones_like(h))
"""

    _GATES = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 reset_after: bool = False, *, batch_first: bool = False,
                 recurrent_init: str = "uniform", dtype: DTypeLike = np.float32,
                 rng: RNGLike = None) -> None:
        self.reset_after = bool(reset_after)
        super().__init__(input_size, hidden_size, bias, batch_first=batch_first,
                         recurrent_init=recurrent_init, dtype=dtype, rng=rng)

    def _kind(self):
        return _K.GRU_RA if self.reset_after else _K.GRU


class BidirectionalGRU(BidirectionalWrapper):
    """:class:`BidirectionalWrapper` over two independently initialised :class:`GRUCell`.

    Parameters
    ----------
    input_size, hidden_size : int
        ``D`` and ``H`` of both cells.
    merge_mode : {"concat", "sum", "mean", "mul"}, keyword-only, default "concat"
    bias : bool, keyword-only, default True
    reset_after : bool, keyword-only, default False
        ``True`` for PyTorch's GRU (needed to load ``nn.GRU`` weights).
    batch_first : bool, keyword-only, default False
    recurrent_init : {"uniform", "orthogonal"}, keyword-only, default "uniform"
    concurrent : bool or None, keyword-only, default None
        Run the two sweeps on two threads (default: when more than one core is free).
    dtype : {np.float32, np.float64}, keyword-only
    rng : None, int or numpy.random.Generator, keyword-only

    Interface
    ---------
    ``forward(x [T, B, D], state=None, lengths=None) -> (output [T, B, H_out],
    (h_fw [B, H], h_bw [B, H]))`` and ``backward(grad_output, grad_state=None) ->
    (grad_x, (grad_h0_fw, grad_h0_bw))``; ``H_out = 2H`` (concat) or ``H``.  See
    :class:`BidirectionalWrapper` for the equations and :class:`GRUCell` for the cell.

    Examples
    --------
    >>> layer = BidirectionalGRU(3, 4, reset_after=True, dtype=np.float64, rng=0)
    >>> out, (h_fw, h_bw) = layer(np.ones((5, 2, 3)), lengths=[5, 3])
    >>> gx, (g_fw, g_bw) = layer.backward(np.ones_like(out))
    """

    def __init__(self, input_size: int, hidden_size: int, *, merge_mode: str = "concat",
                 bias: bool = True, reset_after: bool = False, batch_first: bool = False,
                 recurrent_init: str = "uniform", concurrent: bool | None = None,
                 dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        gen = make_rng(rng)
        cells = [GRUCell(input_size, hidden_size, bias, reset_after, batch_first=batch_first,
                         recurrent_init=recurrent_init, dtype=dtype, rng=spawn_rng(gen))
                 for _ in range(2)]
        super().__init__(cells[0], cells[1], merge_mode, concurrent=concurrent, rng=gen)

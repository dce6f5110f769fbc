"""Helpers the recurrent models share: cell look-up, final-state plumbing, and the
bidirectional encoder."""
from __future__ import annotations

import numpy as np

from ..module import Module

__all__ = ["cell_class", "BidirectionalEncoder", "final_h"]


def cell_class(cell):
    """``"gru"`` / ``"lstm"`` / ``"rnn"`` -> the cell class from :mod:`nn_core.recurrent`."""
    from .. import recurrent

    names = {"gru": "GRUCell", "lstm": "LSTMCell", "rnn": "RNNCell"}
    if cell not in names:
        raise ValueError(f"cell must be one of {sorted(names)}, got {cell!r}")
    return getattr(recurrent, names[cell])


def final_h(state):
    """``h`` of a final state that is ``h`` (RNN/GRU) or ``(h, c)`` (LSTM)."""
    return state[0] if isinstance(state, tuple) else state


def state_grad(cell, grad_h):
    """Gradient of a final state given only ``grad_h`` (``(grad_h, 0)`` for LSTM)."""
    if cell == "lstm":
        return (grad_h, np.zeros_like(grad_h))
    return grad_h


def _reverse_index(lengths, T):
    """Time index ``[T, B]`` reversing each sequence within its length (padding fixed)."""
    t = np.arange(T)[:, None]
    L = np.asarray(lengths)[None, :]
    return np.where(t < L, L - 1 - t, t)


class BidirectionalEncoder(Module):
    """Bidirectional recurrent layer over time-major ``[T, B, D]`` with lengths.

    Uses :class:`nn_core.recurrent.BidirectionalWrapper` when it is available;
    otherwise runs the two cells' ``forward_sequence`` itself, the backward cell on
    each sequence reversed within its own length.  Either way the parameters are
    ``fw.*`` and ``bw.*`` and the numbers are the same.

    ``forward(x [T, B, D], lengths [B]) -> (output [T, B, 2H], (final_fw, final_bw))``;
    ``backward(grad_output, grad_state=None) -> (grad_x, (grad_state_fw, grad_state_bw))``.
    """

    def __init__(self, cell, input_size, hidden_size, *, dtype=np.float32, rng=None):
        super().__init__(dtype=dtype, rng=rng)
        cls = cell_class(cell)
        self.cell = cell
        self.hidden_size = hidden_size
        fw = cls(input_size, hidden_size, dtype=dtype, rng=self.rng)
        bw = cls(input_size, hidden_size, dtype=dtype, rng=self.rng)
        try:
            from ..recurrent import BidirectionalWrapper
        except ImportError:
            BidirectionalWrapper = None
        # not registered as a child: the cells are registered directly below, so the
        # parameter names are fw.* / bw.* with or without the wrapper
        wrapper = (BidirectionalWrapper(fw, bw, merge_mode="concat")
                   if BidirectionalWrapper is not None else None)
        object.__setattr__(self, "_wrapper", wrapper)
        self.fw = fw
        self.bw = bw

    @property
    def uses_wrapper(self) -> bool:
        return self._wrapper is not None

    def forward(self, x, lengths):
        if self._wrapper is not None:
            self._cache = True
            self._wrapper.training = self.training
            return self._wrapper.forward(x, lengths=lengths)
        T = x.shape[0]
        idx = _reverse_index(lengths, T)
        cols = np.arange(x.shape[1])[None, :]
        out_f, fin_f = self.fw.forward_sequence(x, lengths=lengths)
        out_b_rev, fin_b = self.bw.forward_sequence(x[idx, cols], lengths=lengths)
        out = np.concatenate([out_f, out_b_rev[idx, cols]], axis=-1)
        self._cache = (idx, cols)
        return out, (fin_f, fin_b)

    def backward(self, grad_output, grad_state=None):
        cache = self._pop_cache()
        if self._wrapper is not None:
            return self._wrapper.backward(grad_output, grad_state)
        idx, cols = cache
        H = self.hidden_size
        gs_f, gs_b = grad_state if grad_state is not None else (None, None)
        gx_f, g0_f = self.fw.backward_sequence(np.ascontiguousarray(grad_output[..., :H]), gs_f)
        g_b = np.ascontiguousarray(grad_output[..., H:][idx, cols])
        gx_b_rev, g0_b = self.bw.backward_sequence(g_b, gs_b)
        return gx_f + gx_b_rev[idx, cols], (g0_f, g0_b)

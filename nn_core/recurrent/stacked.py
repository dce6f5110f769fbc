"""The one stacked recurrent layer: layer ``k > 0`` reads layer ``k - 1``'s output.

:class:`_Stack` owns the forward loop over the layers, the inverted dropout between
them, the backward loop and the stacked state format; :class:`StackedLSTM`
(layers: :class:`LSTMCell`) and :class:`StackedBidirectional` (layers:
:class:`BidirectionalWrapper`) are thin definitions on it.

A layer of a stack is anything with the cells' layer-building API
(:class:`~nn_core.recurrent.base.RecurrentCell`): ``has_cell_state``,
``check_sequence`` and the low-level pair ``run_sequence(x, h0, c0, lengths) ->
(out, final, cache)`` / ``run_sequence_backward(cache, grad_out, grad_h, grad_c) ->
(grad_x, grad_h0, grad_c0)``.  A cell's states are ``[B, H]``; a bidirectional
layer's carry a leading direction index (``h0[0]`` forward, ``h0[1]`` backward), so
the stacked state is ``[L, B, H]`` or ``[L, 2, B, H]`` and layer ``k``'s part is
``h[k]`` either way.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from .._validation import as_float_array, check_shape
from ..module import Module
from .base import time_major_grad, user_layout

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import ArrayLike, StateLike

__all__ = []


@dataclass
class _StackCache:
    """What :meth:`_Stack.backward` needs from one forward (time-major)."""

    layers: list           # each layer's run_sequence cache, first layer first
    masks: list            # dropout mask [T, B, F] applied to layer k's output, or None
    T: int
    B: int


class _Stack(Module):
    """Base of the stacked layers (not used directly).

    A subclass's ``__init__`` calls ``Module.__init__`` and sets ``layers`` (a
    :class:`~nn_core.module.ModuleList`), ``num_layers``, ``hidden_size``,
    ``output_size`` (features of the last layer's output), ``dropout``,
    ``batch_first`` and ``cell_class``.  Class attributes name the parts of the
    states in error messages and give the number of directions of a layer.

    Notes
    -----
    Forward, with ``y^0 = x`` and ``m^k ~ Bernoulli(1 - p) / (1 - p)`` drawn afresh
    for every forward in training mode (identity in eval mode and after the last
    layer)::

        y^{k+1}, final^k = layer_k(y^k, state[k]);   y^{k+1} <- m^k * y^{k+1}

    Backward walks the layers from the last to the first: the gradient of ``y^k``
    is ``m^{k-1} * grad_x^k``, each layer by its own BPTT.
    """

    _DIRECTIONS = 1                 # 2: states carry a direction index after the layer
    _STATE_PARTS = ("h", "c")       # how messages name the parts of state ...
    _GRAD_PARTS = ("h", "c")        # ... and of grad_state

    @property
    def has_cell_state(self) -> bool:
        """``True`` when states are ``(h, c)`` (LSTM cells), ``False`` when ``h``."""
        return self.layers[0].has_cell_state

    def _state_shape(self, B):
        """``(L, B, H)`` or ``(L, 2, B, H)``."""
        dirs = (2,) if self._DIRECTIONS == 2 else ()
        return (self.num_layers, *dirs, B, self.hidden_size)

    def _check_states(self, state, B, name, parts, grad):
        """``(h, c)`` stacked arrays (``None`` for a part not given) from a user
        ``state`` (or ``grad_state`` when ``grad``), checked once."""
        if state is None:
            return None, None
        shape = self._state_shape(B)
        dims = ", ".join(str(d) for d in shape[:-2]) + ", B, H"
        if self.has_cell_state:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                pair = ", ".join(f"grad_{p}" if grad else p for p in parts)
                raise ValueError(f"{name} must be a tuple ({pair}) of [{dims}] arrays or "
                                 f"None, got {type(state).__name__}")
            given = ((state[0], f"{name} {parts[0]}"), (state[1], f"{name} {parts[1]}"))
        else:
            if isinstance(state, (tuple, list)):
                raise ValueError(f"{name} must be one [{dims}] array for "
                                 f"{self.cell_class.__name__} cells, got a "
                                 f"{type(state).__name__}")
            given = ((state, name), (None, None))
        out = []
        for arr, label in given:
            if arr is not None:
                arr = as_float_array(arr, label, self.dtype)
                check_shape(arr, label, shape)
            out.append(arr)
        return out[0], out[1]

    # ------------------------------------------------------------- forward
    def forward(self, x: ArrayLike, state: StateLike = None,
                lengths: ArrayLike | None = None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """All layers in order; see the class docstring for shapes."""
        x, lens = self.layers[0].check_sequence(x, lengths, batch_first=self.batch_first)
        T, B, _ = x.shape
        has_c, dt = self.has_cell_state, self.dtype
        h0, c0 = self._check_states(state, B, "state", self._STATE_PARTS, grad=False)
        shape = self._state_shape(B)
        h0 = np.zeros(shape, dt) if h0 is None else np.ascontiguousarray(h0)
        if has_c:
            c0 = np.zeros(shape, dt) if c0 is None else np.ascontiguousarray(c0)
        p = self.dropout
        drop = self.training and p > 0
        keep = self.keeps_cache()
        caches, masks, h_n, c_n = [], [], [], []
        y = x                                           # (T, B, F_k)
        for k, layer in enumerate(self.layers):
            y, final, cache = layer.run_sequence(y, h0[k], c0[k] if has_c else None, lens)
            if keep:
                caches.append(cache)
            else:                                       # eval / inference: nothing kept
                layer.release(cache)
            h, c = final if has_c else (final, None)
            h_n.append(h)
            c_n.append(c)
            mask = None
            if drop and k < self.num_layers - 1:
                mask = (self.rng.random(y.shape) >= p).astype(dt)
                mask *= dt.type(1.0 / (1.0 - p))       # inverted dropout
                y *= mask
            masks.append(mask)
        self._save_cache(_StackCache(caches, masks, T, B))
        h_n = np.stack(h_n)
        return user_layout(y, self.batch_first), ((h_n, np.stack(c_n)) if has_c else h_n)

    # ------------------------------------------------------------ backward
    def backward(self, grad_output: ArrayLike,
                 grad_state: StateLike = None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """BPTT through every layer, last first; returns ``(grad_x, grad_state_0)``."""
        cache = self._peek_cache()
        T, B = cache.T, cache.B
        g = time_major_grad(grad_output, self.dtype, self.batch_first, T, B,
                            self.output_size)
        gh, gc = self._check_states(grad_state, B, "grad_state", self._GRAD_PARTS, grad=True)
        self._pop_cache()
        if g is not None:
            g = np.ascontiguousarray(g)
        has_c = self.has_cell_state
        shape = self._state_shape(B)
        gh0 = np.empty(shape, self.dtype)
        gc0 = np.empty(shape, self.dtype) if has_c else None
        for k in range(self.num_layers - 1, -1, -1):
            g, gh0[k], gc_k = self.layers[k].run_sequence_backward(
                cache.layers[k], g, None if gh is None else gh[k],
                None if gc is None else gc[k])
            if has_c:
                gc0[k] = gc_k
            if k > 0 and cache.masks[k - 1] is not None:
                g *= cache.masks[k - 1]
        return user_layout(g, self.batch_first), ((gh0, gc0) if has_c else gh0)

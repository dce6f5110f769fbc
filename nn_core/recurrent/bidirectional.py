"""Bidirectional recurrent layers: :class:`BidirectionalWrapper` and
:class:`StackedBidirectional` (API.md §3 "Layers", §4).

A bidirectional layer runs one cell left to right and a second, independent cell
right to left over the same input and merges the two output sequences
(Schuster & Paliwal, 1997; Graves & Schmidhuber, 2005).  Both sweeps are single calls
of the compiled sequence kernel (:meth:`RecurrentCell.run_sequence`): the reverse sweep
is the kernel's ``reverse=True`` mode, in which every sequence of a padded batch starts
at its *own* last real step (``tau = lengths[b] - 1 - s``) -- reversal is an index
computation inside the kernel, with no copy of the input and no Python loop over the
batch.

The two sweeps are independent, so with two cores and a thread budget of two
(:mod:`nn_core._parallel`) they run concurrently: the forward sweep on the calling
thread, the reverse sweep on nn_core's worker pool, both inside kernels that release the
GIL for their whole loop.  While they run, BLAS is held to one thread per sweep, so the
two sweeps do not fight over the BLAS thread pool.  Concurrent and sequential runs give
the same numbers bit for bit when BLAS computes the same with one thread as with
several (OpenBLAS does not promise that: builds differ in the last place).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import (
    as_float_array,
    check_choice,
    check_positive_int,
    check_probability,
    check_shape,
    make_rng,
    require_forward,
)
from .. import _parallel
from ..module import Module, ModuleList
from ._base import RecurrentCell, resolve_lengths, time_major_grad

__all__ = ["BidirectionalWrapper", "StackedBidirectional", "MERGE_MODES"]

MERGE_MODES = ("concat", "sum", "mean", "mul")


# ---------------------------------------------------------------- helpers
def _fresh_like(cell, rng):
    """A new cell of ``cell``'s class and configuration with weights drawn from ``rng``."""
    args, kwargs = getattr(cell, "_init_args", ((), {}))
    kwargs = dict(kwargs)
    kwargs["rng"] = rng
    return type(cell)(*args, **kwargs)


def _child_rng(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator derived from ``rng`` (deterministic for a seeded one)."""
    try:
        return rng.spawn(1)[0]
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - old numpy
        return np.random.default_rng(rng.integers(2 ** 63))


def _split_state(state, name):
    """``(state_fw, state_bw)`` from a user ``state`` (``None`` -> ``(None, None)``)."""
    if state is None:
        return None, None
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise ValueError(f"{name} must be a pair (state_fw, state_bw) or None, got "
                         f"{type(state).__name__}"
                         + (f" of length {len(state)}" if isinstance(state, (tuple, list))
                            else ""))
    return state[0], state[1]


def _pack_state(cell, h, c):
    return (h, c) if cell._HAS_CELL_STATE else h


def _time_major_grad(layer, grad_output, T, B):
    """``grad_output`` checked against the layer's output shape, as ``[T, B, F]`` (or None)."""
    return time_major_grad(grad_output, layer.dtype, layer.batch_first, T, B,
                           layer.output_size)


@dataclass
class _Cache:
    cache_fw: object
    cache_bw: object
    out_fw: np.ndarray | None      # kept for merge_mode="mul"
    out_bw: np.ndarray | None
    T: int
    B: int


# ---------------------------------------------------------------- the wrapper
class BidirectionalWrapper(Module):
    """Run two recurrent cells over a sequence in opposite directions and merge them.

    Parameters
    ----------
    forward_cell : RNNCell, LSTMCell or GRUCell
        Runs left to right.  Its ``batch_first`` and ``dtype`` are the layer's.
    backward_cell : same kind of cell, optional
        Runs right to left.  Default: a fresh cell of ``forward_cell``'s class and
        configuration with newly drawn weights (never a copy of ``forward_cell``'s).
        Must have the same ``input_size``, ``dtype`` and ``batch_first``.
    merge_mode : {"concat", "sum", "mean", "mul"}, default "concat"
        How the two output sequences are combined: ``[y_fw, y_bw]`` on the last axis
        (``2H`` features), ``y_fw + y_bw``, ``(y_fw + y_bw) / 2`` or ``y_fw * y_bw``
        (``H`` features; both cells must then have the same ``hidden_size``).
    concurrent : bool or None, keyword-only, default None
        Run the two sweeps on two threads.  ``None`` or ``True``: when two cores are
        available and the thread budget is at least two (:mod:`nn_core._parallel`;
        ``threadpool_limits(1)`` or ``nn-core --threads 1`` keep one thread).
        ``False``: one after the other on the calling thread.
    rng : None, int or numpy.random.Generator, keyword-only
        Source of the default backward cell's weights; default: a generator spawned
        from ``forward_cell.rng`` (so a seeded forward cell gives reproducible,
        but different, backward weights).

    Shapes: ``T`` time, ``B`` batch, ``D`` input size, ``H`` hidden size,
    ``H_out`` = ``2H`` (concat) or ``H``.  With ``batch_first`` the sequences are
    ``[B, T, *]`` instead of ``[T, B, *]``.

    * ``forward(x [T, B, D], state=None, lengths=None)
      -> (output [T, B, H_out], (final_fw, final_bw))``.  ``state`` is ``None`` or
      ``(state_fw, state_bw)``, each ``h [B, H]`` or, for LSTM cells, ``(h, c)``
      (a ``None`` part means zeros).  ``lengths`` is an int ``[B]``
      (``1 <= lengths[b] <= T``) or a boolean prefix mask ``[T, B]`` (``[B, T]``
      with ``batch_first``).
    * ``backward(grad_output [T, B, H_out] or None, grad_state=None)
      -> (grad_x [T, B, D], (grad_state_fw, grad_state_bw))``.  ``grad_state`` is
      ``None`` or ``(grad_final_fw, grad_final_bw)`` in the final state's format; the
      returned initial-state gradients are always arrays.

    Parameters of the module: ``fw.W_ih, fw.W_hh, fw.b_ih, fw.b_hh`` and the same
    under ``bw.``.

    Notes
    -----
    Forward, for sequence ``b`` of length ``L = lengths[b]`` (``T`` when unpadded)::

        h^f_t = cell_f(x_t, h^f_{t-1}),   t = 0 .. L-1,        h^f_{-1} = state_fw
        h^b_t = cell_b(x_t, h^b_{t+1}),   t = L-1 .. 0,        h^b_L    = state_bw
        y_t   = merge(h^f_t, h^b_t)  for t < L,    y_t = 0 for t >= L
        final_fw = h^f_{L-1},  final_bw = h^b_0

    so the reverse sweep reads ``x_{L-1}`` first -- never the padding -- exactly what
    PyTorch computes on a packed sequence.  Merges: concat ``[h^f, h^b]``,
    sum ``h^f + h^b``, mean ``(h^f + h^b)/2``, mul ``h^f * h^b``.

    Backward, with ``g_t = dloss/dy_t``::

        concat: g^f = g[..., :H],  g^b = g[..., H:]
        sum:    g^f = g^b = g      mean: g^f = g^b = g/2
        mul:    g^f = g * h^b,     g^b = g * h^f

    each direction then runs BPTT in its own sweep order (the reverse cell from
    ``t = 0`` up to ``L - 1``), and ``grad_x = grad_x^f + grad_x^b``.  Padded positions
    (``t >= L``) get no gradient in either direction.  The two forward sweeps, and
    the two backward sweeps, run concurrently (see ``concurrent``).

    References: M. Schuster and K. K. Paliwal, "Bidirectional recurrent neural
    networks", IEEE Trans. Signal Processing 45(11), 1997; A. Graves and
    J. Schmidhuber, "Framewise phoneme classification with bidirectional LSTM and
    other neural network architectures", Neural Networks 18(5-6), 2005.

    Raises
    ------
    TypeError
        A cell that is not an nn_core recurrent cell; non-real inputs.
    ValueError
        Unknown ``merge_mode``; cells that do not match; wrong input rank or size;
        a state of the wrong structure or shape; lengths out of range.
    RuntimeError
        ``backward`` without a matching ``forward``.

    Examples
    --------
    >>> from nn_core.recurrent import LSTMCell
    >>> layer = BidirectionalWrapper(LSTMCell(3, 4, dtype=np.float64, rng=0))
    >>> out, (fin_fw, fin_bw) = layer(np.ones((5, 2, 3)), lengths=[5, 2])
    >>> out.shape, fin_fw[0].shape
    ((5, 2, 8), (2, 4))
    >>> gx, (gs_fw, gs_bw) = layer.backward(np.ones_like(out))
    """

    def __init__(self, forward_cell, backward_cell=None, merge_mode="concat", *,
                 concurrent=None, rng=None):
        if not isinstance(forward_cell, RecurrentCell):
            raise TypeError("forward_cell must be an nn_core recurrent cell (RNNCell, "
                            f"LSTMCell or GRUCell), got {type(forward_cell).__name__}")
        check_choice(merge_mode, "merge_mode", MERGE_MODES)
        gen = _child_rng(forward_cell.rng) if rng is None else make_rng(rng)
        super().__init__(dtype=forward_cell.dtype, rng=gen)
        if backward_cell is None:
            backward_cell = _fresh_like(forward_cell, _child_rng(self.rng))
        elif not isinstance(backward_cell, RecurrentCell):
            raise TypeError("backward_cell must be an nn_core recurrent cell or None, "
                            f"got {type(backward_cell).__name__}")
        for attr in ("input_size", "dtype", "batch_first"):
            a, b = getattr(forward_cell, attr), getattr(backward_cell, attr)
            if a != b:
                raise ValueError(f"backward_cell.{attr} must equal forward_cell.{attr}: "
                                 f"expected {a}, got {b}")
        if merge_mode != "concat" and forward_cell.hidden_size != backward_cell.hidden_size:
            raise ValueError(
                f"merge_mode={merge_mode!r} needs equal hidden sizes: forward_cell has "
                f"{forward_cell.hidden_size}, backward_cell {backward_cell.hidden_size}")
        self.fw = forward_cell
        self.bw = backward_cell
        self.merge_mode = merge_mode
        self.concurrent = concurrent

    # ------------------------------------------------------------- properties
    @property
    def input_size(self) -> int:
        return self.fw.input_size

    @property
    def hidden_size(self) -> int:
        return self.fw.hidden_size

    @property
    def output_size(self) -> int:
        """Features of the merged output: ``H_fw + H_bw`` (concat) or ``H``."""
        if self.merge_mode == "concat":
            return self.fw.hidden_size + self.bw.hidden_size
        return self.fw.hidden_size

    @property
    def batch_first(self) -> bool:
        return self.fw.batch_first

    def _use_threads(self) -> bool:
        if self.fw is self.bw or self.concurrent is False:   # one cell twice would race
            return False
        return _parallel.available_cores() > 1 and _parallel.blas_threads() > 1

    # ---------------------------------------------------------- public API
    def forward(self, x, state=None, lengths=None):
        """Both sweeps and the merge; see the class docstring for shapes."""
        x = self.fw._check_input(x, "x", 3)
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        x = np.ascontiguousarray(x)                     # (T, B, D)
        T, B, _ = x.shape
        lens = resolve_lengths(lengths, T, B, self.batch_first)   # int64 [B]
        out, finals = self._forward_tm(x, state, lens, "state")
        if self.batch_first:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))
        return out, finals

    def backward(self, grad_output, grad_state=None):
        """BPTT of both sweeps; returns ``(grad_x, (grad_state_fw, grad_state_bw))``."""
        cache = self._cache
        require_forward(cache, self)
        T, B = cache.T, cache.B
        go = _time_major_grad(self, grad_output, T, B)
        gs = self._check_grad_state(grad_state, B, "grad_state")
        gx, gstate = self._backward_tm(go, gs)
        if self.batch_first:
            gx = np.ascontiguousarray(gx.transpose(1, 0, 2))
        return gx, gstate

    # ------------------------------------------- time-major core (for stacks)
    def _initial_state(self, state, B, name):
        s_fw, s_bw = _split_state(state, name)
        return (self.fw._state_arrays(s_fw, B, f"{name}[0]"),
                self.bw._state_arrays(s_bw, B, f"{name}[1]"))

    def _forward_tm(self, x, state, lens, name="state"):
        """Forward on a checked time-major contiguous ``x [T, B, D]``; int64 ``lens``.

        ``state`` is a user state pair (validated here).  Keeps the cache.
        """
        T, B, _ = x.shape
        (h0f, c0f), (h0b, c0b) = self._initial_state(state, B, name)
        fw, bw = self.fw, self.bw
        (out_f, fin_f, cache_f), (out_b, fin_b, cache_b) = _parallel.run_pair(
            lambda: fw.run_sequence(x, h0f, c0f, lens, False),
            lambda: bw.run_sequence(x, h0b, c0b, lens, True),
            self._use_threads())
        mode = self.merge_mode
        if mode == "concat":
            out = np.concatenate((out_f, out_b), axis=2)        # (T, B, H_fw + H_bw)
        elif mode == "sum":
            out = out_f + out_b
        elif mode == "mean":
            out = out_f + out_b
            out *= self.dtype.type(0.5)
        else:
            out = out_f * out_b
        keep = mode == "mul"
        self._cache = _Cache(cache_f, cache_b, out_f if keep else None,
                             out_b if keep else None, T, B)
        return out, (fin_f, fin_b)

    def _check_grad_state(self, grad_state, B, name):
        g_fw, g_bw = _split_state(grad_state, name)
        return (self._grad_parts(self.fw, g_fw, B, f"{name}[0]"),
                self._grad_parts(self.bw, g_bw, B, f"{name}[1]"))

    @staticmethod
    def _grad_parts(cell, g, B, name):
        """``(grad_h, grad_c)`` (either may be None) of one direction's final state."""
        if g is None:
            return None, None
        if cell._HAS_CELL_STATE:
            if not isinstance(g, (tuple, list)) or len(g) != 2:
                raise ValueError(f"{name} must be a tuple (grad_h, grad_c) of [B, H] "
                                 f"arrays or None, got {type(g).__name__}")
            return (cell._grad_state_part(g[0], f"{name} h", B),
                    cell._grad_state_part(g[1], f"{name} c", B))
        if isinstance(g, (tuple, list)):
            raise ValueError(f"{name} must be one [B, H] array for "
                             f"{type(cell).__name__}, got a {type(g).__name__}")
        return cell._grad_state_part(g, name, B), None

    def _backward_tm(self, go, gs):
        """Backward from a time-major ``go [T, B, H_out]`` (or None) and checked
        ``gs = ((gh_fw, gc_fw), (gh_bw, gc_bw))``.  Consumes the cache."""
        cache = self._cache
        require_forward(cache, self)
        self._cache = None
        H_f = self.fw.hidden_size
        dt = self.dtype
        if go is None:
            go_f = go_b = None
        elif self.merge_mode == "concat":
            go_f = np.ascontiguousarray(go[:, :, :H_f])
            go_b = np.ascontiguousarray(go[:, :, H_f:])
        elif self.merge_mode == "sum":
            go_f = go_b = np.ascontiguousarray(go)
        elif self.merge_mode == "mean":
            go_f = go_b = np.multiply(go, dt.type(0.5), dtype=dt, order="C")
        else:
            go_f = np.multiply(go, cache.out_bw, dtype=dt, order="C")
            go_b = np.multiply(go, cache.out_fw, dtype=dt, order="C")
        (gh_f, gc_f), (gh_b, gc_b) = gs
        fw, bw = self.fw, self.bw
        (gx_f, gh0f, gc0f), (gx_b, gh0b, gc0b) = _parallel.run_pair(
            lambda: fw.run_sequence_backward(cache.cache_fw, go_f, gh_f, gc_f),
            lambda: bw.run_sequence_backward(cache.cache_bw, go_b, gh_b, gc_b),
            self._use_threads())
        gx_f += gx_b
        return gx_f, (_pack_state(fw, gh0f, gc0f), _pack_state(bw, gh0b, gc0b))


# ------------------------------------------------------------ stacked layers
def _resolve_cell_type(cell_type):
    if isinstance(cell_type, str):
        from .gru_cell import GRUCell
        from .lstm_cell import LSTMCell
        from .rnn_cell import RNNCell
        table = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}
        key = cell_type.lower()
        if key not in table:
            raise ValueError(f"cell_type must be 'rnn', 'lstm', 'gru' or a cell class, "
                             f"got {cell_type!r}")
        return table[key]
    if isinstance(cell_type, type) and issubclass(cell_type, RecurrentCell):
        return cell_type
    raise TypeError(f"cell_type must be 'rnn', 'lstm', 'gru' or a cell class, got "
                    f"{cell_type!r}")


class StackedBidirectional(Module):
    """``num_layers`` bidirectional layers, each consuming the previous merged output.

    Parameters
    ----------
    cell_type : {"rnn", "lstm", "gru"} or a cell class
        The cell of every direction of every layer.
    input_size : int
        ``D``, features of the input.
    hidden_size : int
        ``H``, hidden size of every cell.
    num_layers : int
        ``L >= 1``.  Layer 0 reads ``D`` features, layer ``k > 0`` the
        ``H_out`` = ``2H`` (concat) or ``H`` merged features of layer ``k - 1``.
    merge_mode : {"concat", "sum", "mean", "mul"}, default "concat"
    dropout : float in [0, 1), default 0.0
        Inverted dropout on the output of every layer but the last, in training mode
        only (PyTorch's ``nn.LSTM(dropout=...)``).
    **cell_kwargs
        Passed by keyword to every cell: ``bias``, ``nonlinearity`` (RNN),
        ``reset_after`` (GRU), ``forget_bias`` (LSTM), ``recurrent_init``,
        ``batch_first``, ``dtype``, ``rng``; and ``concurrent`` (see
        :class:`BidirectionalWrapper`).

    Shapes (``batch_first`` swaps the first two axes of ``x`` and ``output``):

    * ``forward(x [T, B, D], state=None, lengths=None)
      -> (output [T, B, H_out], final_state)``;
    * ``backward(grad_output [T, B, H_out] or None, grad_state=None)
      -> (grad_x [T, B, D], grad_initial_state)``.

    ``state``, ``final_state``, ``grad_state`` and ``grad_initial_state`` are
    ``h [L, 2, B, H]`` (index ``[k, 0]`` forward, ``[k, 1]`` backward direction of
    layer ``k``), or for LSTM cells a tuple ``(h, c)`` of two such arrays.  The torch
    layout ``h_n [L * 2, B, H]`` is ``h.reshape(L * 2, B, H)``.  Initial-state
    gradients are always arrays (the gradient of the zero state for ``state=None``).

    Parameters of the module: ``layers.{k}.fw.W_ih``, ``layers.{k}.bw.W_hh``, ...

    Notes
    -----
    Forward, with ``y^0 = x``::

        y^{k+1}, (h^k_fw, h^k_bw) = Bidirectional_k(y^k, state[k])
        y^{k+1} <- y^{k+1} * m^k / (1 - p)   for k < L-1, training, m^k ~ Bernoulli(1-p)

    Backward walks the layers from the last to the first: the gradient of ``y^k`` is
    layer ``k``'s ``grad_x``, times the same dropout mask over ``1 - p``.  Each layer is
    a :class:`BidirectionalWrapper` (two concurrent compiled sweeps).

    Examples
    --------
    >>> m = StackedBidirectional("gru", 3, 4, num_layers=2, reset_after=True,
    ...                          dtype=np.float64, rng=0)
    >>> out, h_n = m(np.ones((5, 2, 3)))
    >>> out.shape, h_n.shape
    ((5, 2, 8), (2, 2, 2, 4))
    >>> gx, gh0 = m.backward(np.ones_like(out))
    """

    def __init__(self, cell_type, input_size, hidden_size, num_layers, merge_mode="concat",
                 dropout=0.0, **cell_kwargs):
        cls = _resolve_cell_type(cell_type)
        dtype = cell_kwargs.pop("dtype", np.float32)
        rng = cell_kwargs.pop("rng", None)
        concurrent = cell_kwargs.pop("concurrent", None)
        super().__init__(dtype=dtype, rng=rng)
        self.cell_class = cls
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        check_choice(merge_mode, "merge_mode", MERGE_MODES)
        self.merge_mode = merge_mode
        self.dropout = check_probability(dropout, "dropout")
        self.batch_first = bool(cell_kwargs.get("batch_first", False))
        H = self.hidden_size
        out_size = 2 * H if merge_mode == "concat" else H
        layers = []
        for k in range(self.num_layers):
            d_in = self.input_size if k == 0 else out_size
            fw = cls(d_in, H, dtype=self.dtype, rng=_child_rng(self.rng), **cell_kwargs)
            bw = cls(d_in, H, dtype=self.dtype, rng=_child_rng(self.rng), **cell_kwargs)
            layers.append(BidirectionalWrapper(fw, bw, merge_mode, concurrent=concurrent,
                                               rng=_child_rng(self.rng)))
        self.layers = ModuleList(layers, dtype=self.dtype)
        self.output_size = out_size
        self._has_c = bool(cls._HAS_CELL_STATE)

    @property
    def concurrent(self):
        return self.layers[0].concurrent

    @concurrent.setter
    def concurrent(self, value):
        for layer in self.layers:
            layer.concurrent = value

    # ----------------------------------------------------------------- state
    def _state_parts(self, state, B, name):
        """Per layer ``((h_fw, c_fw), (h_bw, c_bw))`` as a pair-of-states list."""
        L, H = self.num_layers, self.hidden_size
        if state is None:
            return [None] * L
        if self._has_c:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(f"{name} must be a tuple (h, c) of [{L}, 2, B, H] arrays "
                                 f"or None, got {type(state).__name__}")
            h, c = state
        else:
            if isinstance(state, (tuple, list)):
                raise ValueError(f"{name} must be one [{L}, 2, B, H] array for "
                                 f"{self.cell_class.__name__} cells, got a "
                                 f"{type(state).__name__}")
            h, c = state, None
        parts = []
        for arr, label in ((h, "h"), (c, "c")):
            if arr is None:
                parts.append(None)
                continue
            lab = f"{name} {label}" if self._has_c else name
            arr = as_float_array(arr, lab, self.dtype)
            check_shape(arr, lab, (L, 2, B, H))
            parts.append(arr)
        h, c = parts
        out = []
        for k in range(L):
            if self._has_c:
                out.append(tuple((None if h is None else h[k, d],
                                  None if c is None else c[k, d]) for d in (0, 1)))
            else:
                out.append((None if h is None else h[k, 0], None if h is None else h[k, 1]))
        return out

    def _stack(self, per_layer):
        """``[(s_fw, s_bw)] * L`` -> ``h [L, 2, B, H]`` (or ``(h, c)``)."""
        if self._has_c:
            h = np.stack([np.stack((f[0], b[0])) for f, b in per_layer])
            c = np.stack([np.stack((f[1], b[1])) for f, b in per_layer])
            return h, c
        return np.stack([np.stack((f, b)) for f, b in per_layer])

    # ------------------------------------------------------------ forward
    def forward(self, x, state=None, lengths=None):
        """All layers; see the class docstring for shapes."""
        first = self.layers[0].fw
        x = first._check_input(x, "x", 3)
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        y = np.ascontiguousarray(x)                    # (T, B, D)
        T, B, _ = y.shape
        lens = resolve_lengths(lengths, T, B, self.batch_first)
        states = self._state_parts(state, B, "state")
        finals, masks = [], []
        use_dropout = self.training and self.dropout > 0 and self.num_layers > 1
        for k, layer in enumerate(self.layers):
            y, fin = layer._forward_tm(y, states[k], lens, f"state[layer {k}]")
            finals.append(fin)
            if use_dropout and k < self.num_layers - 1:
                keep = self.dtype.type(1.0 - self.dropout)
                mask = (self.rng.random(y.shape) < keep).astype(self.dtype)
                mask /= keep                            # (T, B, H_out)
                y *= mask
                masks.append(mask)
            else:
                masks.append(None)
        self._cache = (T, B, masks)
        out = np.ascontiguousarray(y.transpose(1, 0, 2)) if self.batch_first else y
        return out, self._stack(finals)

    def backward(self, grad_output, grad_state=None):
        """BPTT through every layer; returns ``(grad_x, grad_initial_state)``."""
        cache = self._cache
        require_forward(cache, self)
        T, B, masks = cache
        go = _time_major_grad(self, grad_output, T, B)
        gstates = self._state_parts(grad_state, B, "grad_state")
        checked = []
        for k, layer in enumerate(self.layers):
            checked.append(layer._check_grad_state(gstates[k], B,
                                                   f"grad_state[layer {k}]"))
        self._cache = None
        g = go
        grads0 = [None] * self.num_layers
        for k in range(self.num_layers - 1, -1, -1):
            g, grads0[k] = self.layers[k]._backward_tm(g, checked[k])
            if k > 0 and masks[k - 1] is not None:
                g *= masks[k - 1]
        if self.batch_first:
            g = np.ascontiguousarray(g.transpose(1, 0, 2))
        return g, self._stack(grads0)

"""Bidirectional recurrent layers: :class:`BidirectionalWrapper` and
:class:`StackedBidirectional` (docs/guide/tour.md, "Recurrent layers").

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

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from .._validation import check_choice, check_positive_int, check_probability, make_rng
from .. import _parallel
from ..module import Module, ModuleList
from .base import RecurrentCell, cell_class, spawn_rng, time_major_grad, user_layout
from .stacked import _Stack

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import ArrayLike, RNGLike, State, StateLike
    from typing import Any

__all__ = ["BidirectionalWrapper", "StackedBidirectional", "MERGE_MODES"]

MERGE_MODES = ("concat", "sum", "mean", "mul")


# ---------------------------------------------------------------- helpers
def _fresh_like(cell, rng):
    """A new cell of ``cell``'s class and configuration with weights drawn from ``rng``."""
    args, kwargs = getattr(cell, "_init_args", ((), {}))
    kwargs = dict(kwargs)
    kwargs["rng"] = rng
    return type(cell)(*args, **kwargs)


def _split_pair(state, name):
    """``(state_fw, state_bw)`` from a user ``state`` (``None`` -> ``(None, None)``)."""
    if state is None:
        return None, None
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise ValueError(f"{name} must be a pair (state_fw, state_bw) or None, got "
                         f"{type(state).__name__}"
                         + (f" of length {len(state)}" if isinstance(state, (tuple, list))
                            else ""))
    return state[0], state[1]


@dataclass
class _Cache:
    """What :meth:`BidirectionalWrapper.run_sequence_backward` needs (time-major)."""

    cache_fw: object               # the cells' SequenceCache
    cache_bw: object
    out_fw: np.ndarray | None      # [T, B, H] outputs, kept for merge_mode="mul"
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

    Interface
    ---------
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

    The wrapper offers the cells' layer-building API (``has_cell_state``,
    ``check_sequence``, ``state_arrays``, ``check_grad_state``, ``run_sequence``,
    ``run_sequence_backward``; see :class:`~nn_core.recurrent.base.RecurrentCell`)
    with a leading direction index on every state, so stacks compose wrappers as they
    compose cells.

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

    def __init__(self, forward_cell: Module, backward_cell: Module | None = None,
                 merge_mode: str = "concat", *, concurrent: bool | None = None,
                 rng: RNGLike = None) -> None:
        if not isinstance(forward_cell, RecurrentCell):
            raise TypeError("forward_cell must be an nn_core recurrent cell (RNNCell, "
                            f"LSTMCell or GRUCell), got {type(forward_cell).__name__}")
        check_choice(merge_mode, "merge_mode", MERGE_MODES)
        gen = spawn_rng(forward_cell.rng) if rng is None else make_rng(rng)
        super().__init__(dtype=forward_cell.dtype, rng=gen)
        if backward_cell is None:
            backward_cell = _fresh_like(forward_cell, spawn_rng(self.rng))
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

    @property
    def has_cell_state(self) -> bool:
        """``True`` when the cells' states are ``(h, c)`` (LSTM cells)."""
        return self.fw.has_cell_state or self.bw.has_cell_state

    def _use_threads(self) -> bool:
        if self.fw is self.bw or self.concurrent is False:   # one cell twice would race
            return False
        return _parallel.available_cores() > 1 and _parallel.blas_threads() > 1

    def release(self, cache):
        """Give both sweeps' work buffers back to their cells, for a
        :meth:`run_sequence` cache that no backward will consume."""
        self.fw.release(cache.cache_fw)
        self.bw.release(cache.cache_bw)

    def _per_direction(self, h, c):
        """Low-level ``h = (h_fw, h_bw)``, ``c`` -> the user's ``(state_fw, state_bw)``."""
        s_fw = (h[0], c[0]) if self.fw.has_cell_state else h[0]
        s_bw = (h[1], c[1]) if self.bw.has_cell_state else h[1]
        return s_fw, s_bw

    # ---------------------------------------------------------- public API
    def forward(self, x: ArrayLike, state: StateLike = None,
                lengths: ArrayLike | None = None) -> tuple[np.ndarray, State]:
        """Both sweeps and the merge; see the class docstring for shapes."""
        x, lens = self.check_sequence(x, lengths)               # (T, B, D), int64 [B]
        h0, c0 = self.state_arrays(state, x.shape[1])
        out, final, cache = self.run_sequence(x, h0, c0, lens)
        self._save_cache(cache)
        if not self.keeps_cache():
            self.release(cache)
        h, c = final if self.has_cell_state else (final, None)
        return user_layout(out, self.batch_first), self._per_direction(h, c)

    def backward(self, grad_output: ArrayLike,
                 grad_state: StateLike = None) -> tuple[np.ndarray, State]:
        """BPTT of both sweeps; returns ``(grad_x, (grad_state_fw, grad_state_bw))``."""
        cache = self._peek_cache()
        go = time_major_grad(grad_output, self.dtype, self.batch_first, cache.T, cache.B,
                             self.output_size)
        gh, gc = self.check_grad_state(grad_state, cache.B)
        self._pop_cache()
        gx, gh0, gc0 = self.run_sequence_backward(cache, go, gh, gc)
        return user_layout(gx, self.batch_first), self._per_direction(gh0, gc0)

    # ------------------------------------------------- layer-building API
    # The cells' API (RecurrentCell) with a leading direction index on every state:
    # h0 = (h0_fw, h0_bw), c0 = (c0_fw, c0_bw); a [2, B, H] array is such a pair.
    def check_sequence(self, x, lengths=None, *, batch_first=None):
        """``(x [T, B, D], lengths int64 [B])`` checked and kernel-ready
        (:meth:`RecurrentCell.check_sequence`)."""
        return self.fw.check_sequence(x, lengths, batch_first=batch_first)

    def state_arrays(self, state, batch_size, name="state"):
        """Kernel initial states ``(h0, c0)`` from a user ``(state_fw, state_bw)``.

        ``h0`` is the pair ``(h0_fw, h0_bw)`` of contiguous ``[B, H]`` arrays
        (zeros for ``None``), ``c0`` the same for the cell states or ``None``
        without them.  Errors name ``{name}[0]`` / ``{name}[1]``.
        """
        s_fw, s_bw = _split_pair(state, name)
        h0f, c0f = self.fw.state_arrays(s_fw, batch_size, f"{name}[0]")
        h0b, c0b = self.bw.state_arrays(s_bw, batch_size, f"{name}[1]")
        return (h0f, h0b), ((c0f, c0b) if self.has_cell_state else None)

    def check_grad_state(self, grad_state, batch_size, name="grad_state"):
        """``(grad_h, grad_c)`` pairs (entries may be None; ``grad_c`` None without cell
        states) from a user ``(grad_final_fw, grad_final_bw)``."""
        g_fw, g_bw = _split_pair(grad_state, name)
        ghf, gcf = self.fw.check_grad_state(g_fw, batch_size, f"{name}[0]")
        ghb, gcb = self.bw.check_grad_state(g_bw, batch_size, f"{name}[1]")
        return (ghf, ghb), ((gcf, gcb) if self.has_cell_state else None)

    def run_sequence(self, x, h0, c0=None, lengths=None):
        """Both sweeps and the merge on kernel-ready arrays; keeps no cache.

        Parameters
        ----------
        x : ndarray ``[T, B, D]``
            C-contiguous, module dtype (from :meth:`check_sequence`).
        h0 : pair ``(h0_fw [B, H_fw], h0_bw [B, H_bw])`` of C-contiguous arrays
        c0 : pair of the same or None
            Initial cell states (LSTM cells).
        lengths : int64 ndarray ``[B]`` or None

        Returns
        -------
        out : ndarray ``[T, B, H_out]``
        final : ``h_n`` or ``(h_n, c_n)``
            Each a pair ``(fw, bw)`` of ``[B, H]`` arrays.
        cache : object
            For :meth:`run_sequence_backward` (consume it once).
        """
        T, B, _ = x.shape
        fw, bw = self.fw, self.bw
        c0f, c0b = (None, None) if c0 is None else c0
        (out_f, fin_f, cache_f), (out_b, fin_b, cache_b) = _parallel.run_pair(
            lambda: fw.run_sequence(x, h0[0], c0f, lengths, False),
            lambda: bw.run_sequence(x, h0[1], c0b, lengths, True),
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
        cache = _Cache(cache_f, cache_b, out_f if keep else None, out_b if keep else None,
                       T, B)
        has_f, has_b = fw.has_cell_state, bw.has_cell_state
        h_f, c_f = fin_f if has_f else (fin_f, None)
        h_b, c_b = fin_b if has_b else (fin_b, None)
        final = ((h_f, h_b), (c_f, c_b)) if (has_f or has_b) else (h_f, h_b)
        return out, final, cache

    def run_sequence_backward(self, cache, grad_out=None, grad_h=None, grad_c=None):
        """BPTT of both sweeps; accumulates both cells' parameter gradients.

        Parameters
        ----------
        cache : from :meth:`run_sequence` (consumed)
        grad_out : ndarray ``[T, B, H_out]`` or None
            Time-major, module dtype (checked by ``time_major_grad``).
        grad_h, grad_c : pairs ``(fw, bw)`` of ``[B, H]`` arrays (entries may be None),
            or None: gradients of the final states.

        Returns
        -------
        grad_x : ndarray ``[T, B, D]``
        grad_h0 : pair ``(fw, bw)`` of ``[B, H]`` arrays
        grad_c0 : pair or None
            None without cell states.
        """
        H_f = self.fw.hidden_size
        dt = self.dtype
        go = grad_out
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
        gh_f, gh_b = (None, None) if grad_h is None else grad_h
        gc_f, gc_b = (None, None) if grad_c is None else grad_c
        fw, bw = self.fw, self.bw
        (gx_f, gh0f, gc0f), (gx_b, gh0b, gc0b) = _parallel.run_pair(
            lambda: fw.run_sequence_backward(cache.cache_fw, go_f, gh_f, gc_f),
            lambda: bw.run_sequence_backward(cache.cache_bw, go_b, gh_b, gc_b),
            self._use_threads())
        gx_f += gx_b
        return gx_f, (gh0f, gh0b), ((gc0f, gc0b) if self.has_cell_state else None)


# ------------------------------------------------------------ stacked layers
class StackedBidirectional(_Stack):
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

    Interface
    ---------
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
    a :class:`BidirectionalWrapper` (two concurrent compiled sweeps); the loops are
    :class:`~nn_core.recurrent.stacked._Stack`'s, shared with :class:`StackedLSTM`.

    Examples
    --------
    >>> m = StackedBidirectional("gru", 3, 4, num_layers=2, reset_after=True,
    ...                          dtype=np.float64, rng=0)
    >>> out, h_n = m(np.ones((5, 2, 3)))
    >>> out.shape, h_n.shape
    ((5, 2, 8), (2, 2, 2, 4))
    >>> gx, gh0 = m.backward(np.ones_like(out))
    """

    _DIRECTIONS = 2

    def __init__(self, cell_type: str | type, input_size: int, hidden_size: int, num_layers: int,
                 merge_mode: str = "concat", dropout: float = 0.0, **cell_kwargs: Any) -> None:
        cls = cell_class(cell_type)
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
            fw = cls(d_in, H, dtype=self.dtype, rng=spawn_rng(self.rng), **cell_kwargs)
            bw = cls(d_in, H, dtype=self.dtype, rng=spawn_rng(self.rng), **cell_kwargs)
            layers.append(BidirectionalWrapper(fw, bw, merge_mode, concurrent=concurrent,
                                               rng=spawn_rng(self.rng)))
        self.layers = ModuleList(layers, dtype=self.dtype)
        self.output_size = out_size

    @property
    def concurrent(self):
        return self.layers[0].concurrent

    @concurrent.setter
    def concurrent(self, value):
        for layer in self.layers:
            layer.concurrent = value

"""The sequence driver shared by RNNCell, LSTMCell and GRUCell.

:class:`RecurrentCell` owns the parameters ``W_ih [G*H, D]``, ``W_hh [G*H, H]``,
``b_ih [G*H]``, ``b_hh [G*H]`` and both levels of the API (docs/guide/tour.md,
"Recurrent layers"):

* the **one-step** API ``forward(x_t, state)`` / ``backward(grad_h[, grad_c])`` keeps a
  LIFO of step caches (BPTT is ``backward`` in reverse order, ``reset()`` drops them);
* the **sequence** API ``forward_sequence`` / ``backward_sequence`` runs the whole
  sequence in one call of the compiled kernel ``nn_core._kernels._recurrent``.

A step is the sequence kernel with ``T = 1``, so both levels compute the same numbers
by construction.

Layers built on cells (:class:`~nn_core.recurrent.BidirectionalWrapper`, the stacks)
use only the cells' public layer-building API (see :class:`RecurrentCell`).  Its
low-level pair :meth:`RecurrentCell.run_sequence` / :meth:`~RecurrentCell.run_sequence_backward`
keeps no cache on the module (it returns it) and releases the GIL for the whole kernel
loop, so two cells can run on two Python threads.  A cell recycles its work buffers
through its :class:`~nn_core.memory.Workspace`, so one cell must not run two
sequences concurrently.

A sweep of fewer than ``MIN_SPLIT_ROWS`` rows whose step loops run on the packed
``W_hh`` (``_K.step_mode``) is one job of nn_core's thread team (:func:`team_threads`):
the input projection, ``grad_x`` and the weight gradients in fixed pieces, the step
loops split by hidden units with a barrier per step; the same bits on any number of
threads.  A sweep over ``B >= MIN_SPLIT_ROWS`` rows runs on two threads itself when
the budget allows:
batch rows never interact, so the kernels' phases (input projection by rows of
``T*B``, step loops by batch rows, ``grad_x`` by rows, weight gradients by gate rows)
each run as two halves, one per thread, with BLAS on one thread each
(:func:`row_halves`; :func:`fixed_split` keeps the same cut on one thread).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass

import numpy as np

from .._kernels import _recurrent as _K
from .._validation import (
    as_float_array,
    as_lengths,
    check_positive_int,
    check_shape,
    lengths_from_mask,
    require_forward,
)
from .. import _parallel
from ..memory import Workspace
from ..module import Module

if TYPE_CHECKING:  # names used in annotations only
    from nn_core._typing import ArrayLike, DTypeLike, RNGLike, State, StateLike

__all__ = ["RecurrentCell", "SequenceCache", "cell_class", "resolve_lengths",
           "time_major_grad", "user_layout", "spawn_rng", "row_halves", "team_threads"]

# Batch-row split of one sweep: each half keeps at least 32 rows (smaller halves lose
# more to the thread hand-off than they gain; docs/performance.md).
ROW_SPLIT = True          # module switch (tests compare split and unsplit runs)
MIN_SPLIT_ROWS = 64


# The step loops of a sweep (``_K.STEP_MODES``): "auto" takes the kernel's per-shape
# rule (``_K.step_mode``: W_hh packed once per call, or one BLAS call per step);
# "blas" / "packed" force one (tests and benchmarks).
STEP_MODE = "auto"


def row_halves(B: int, lengths=None):
    """``((0, h), (h, B))`` when a sweep over ``B`` rows should run as two half batches
    on two threads, else ``None``: only with ``ROW_SPLIT`` on, ``B >= MIN_SPLIT_ROWS``,
    two cores and a thread budget of two, and not inside another parallel region (a
    bidirectional layer's concurrent sweeps, or a worker thread).  With ``lengths``
    (sorted longest first) ``h`` splits the real steps, not the rows, in halves."""
    if (not ROW_SPLIT or B < MIN_SPLIT_ROWS or _parallel.in_parallel_region()
            or _parallel.available_cores() < 2 or _parallel.blas_threads() < 2):
        return None
    if lengths is None or lengths[0] == lengths[-1]:
        return _parallel.halves(B)
    h = int(np.searchsorted(np.cumsum(lengths), lengths.sum() / 2)) + 1
    h = min(max(h, 1), B - 1)
    return (0, h), (h, B)


def team_threads(kind: int, B: int, H: int, dtype) -> int | None:
    """Threads for a sweep that runs as one job of the thread team (its GEMM phases in
    fixed pieces, its step loops split by hidden units; the same bits on any number of
    threads), or None when it takes the row split of :func:`row_halves` instead: a
    batch the row split cuts (:func:`fixed_split`: two half batches need no barrier
    per step), and step loops whose products are BLAS calls (``STEP_MODE``,
    ``_K.step_mode``).  The budget (:func:`nn_core._parallel.blas_threads`), 1 inside
    a parallel region."""
    if fixed_split(B):
        return None
    mode = _K.STEP_MODES[STEP_MODE]
    if mode == _K.STEP_MODES["auto"]:
        mode = _K.step_mode(kind, B, H, np.dtype(dtype) == np.float64)
    if mode != _K.STEP_MODES["packed"]:
        return None
    return 1 if _parallel.in_parallel_region() else _parallel.blas_threads()


def fixed_split(B: int) -> bool:
    """True when a sweep over ``B`` rows cuts its input projection, ``grad_x`` and
    weight gradients into the halves :func:`row_halves` runs on two threads, whatever
    the thread count (BLAS may sum a half-sized product in another order)."""
    return ROW_SPLIT and B >= MIN_SPLIT_ROWS


def _run_in_order(job, ranges):
    """``job(r0, r1)`` for every range of ``ranges``, on this thread."""
    for r0, r1 in ranges:
        job(r0, r1)


def length_order(lengths):
    """The rows sorted longest first (stable), or None when they already are."""
    if lengths is None or not (np.diff(lengths) > 0).any():
        return None
    return np.argsort(-lengths, kind="stable")


def _unsort(a, order, axis):
    """``a`` with its sorted rows (``axis``) put back in the caller's order."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return np.take(a, inverse, axis=axis)

_RECURRENT_INITS = ("uniform", "orthogonal")


@dataclass
class SequenceCache:
    """What the backward kernel needs from one sequence forward (time-major)."""

    x: np.ndarray          # [T, B, D] (contiguous; rows in sweep order)
    lengths: np.ndarray    # [B] int64 (all T when unpadded; sweep order)
    reverse: bool
    gates: np.ndarray      # [T, B, G*H] post-activation gates (time order)
    hs: np.ndarray         # [T+1, B, H] states (step order; hs[0] = initial state)
    cs: np.ndarray         # [T+1, B, H] LSTM cell states, else a [1, 1, 1] dummy
    aux: np.ndarray        # [T, B, H] tanh(c) / r*h / W_hn h + b_hn, or a dummy
    W_ih: np.ndarray       # the weights used (live arrays)
    W_hh: np.ndarray
    W_hhT: np.ndarray      # W_hh^T [H, G*H] contiguous (per-step GEMM layout)
    order: np.ndarray | None = None   # sweep row i is the caller's row order[i]


def resolve_lengths(lengths, T, B, batch_first=False):
    """int64 ``[B]`` lengths from ``None`` (all ``T``), an int ``[B]`` array or a
    boolean prefix mask ``[T, B]`` (``[B, T]`` when ``batch_first``)."""
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    if np.asarray(lengths).dtype == np.bool_:
        return lengths_from_mask(lengths, "lengths", T, B, batch_first)
    return np.ascontiguousarray(as_lengths(lengths, "lengths", B, T))


def time_major_grad(grad_output, dtype, batch_first, T, B, F):
    """``grad_output`` checked against the output shape ``[T, B, F]`` (``[B, T, F]``
    when ``batch_first``) and returned time-major (a view; ``None`` stays ``None``)."""
    if grad_output is None:
        return None
    go = as_float_array(grad_output, "grad_output", dtype, ndim=3)
    check_shape(go, "grad_output", (B, T, F) if batch_first else (T, B, F))
    return go.transpose(1, 0, 2) if batch_first else go


def user_layout(a, batch_first):
    """A time-major ``[T, B, F]`` result in the user's layout: a contiguous
    ``[B, T, F]`` copy when ``batch_first``, else ``a`` itself."""
    return np.ascontiguousarray(a.transpose(1, 0, 2)) if batch_first else a


def spawn_rng(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator derived from ``rng`` (deterministic for a seeded one):
    how a layer gives each of its cells its own weight stream."""
    try:
        return rng.spawn(1)[0]
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - old numpy
        return np.random.default_rng(rng.integers(2 ** 63))


# "rnn" / "lstm" / "gru" -> cell class; each cell class registers itself when its
# module is imported (``class LSTMCell(RecurrentCell, cell_type="lstm")``), so layers
# look cells up by name without importing the cell modules.
_CELL_TYPES: dict = {}


def cell_class(cell_type):
    """The cell class of ``cell_type``: ``"rnn"``, ``"lstm"``, ``"gru"`` (any case) or
    a :class:`RecurrentCell` subclass (returned as is).

    Raises
    ------
    ValueError
        An unknown name.
    TypeError
        Neither a name nor a cell class.
    """
    if isinstance(cell_type, str):
        cls = _CELL_TYPES.get(cell_type.lower())
        if cls is None:
            raise ValueError(f"cell_type must be 'rnn', 'lstm', 'gru' or a cell class, "
                             f"got {cell_type!r}")
        return cls
    if isinstance(cell_type, type) and issubclass(cell_type, RecurrentCell):
        return cell_type
    raise TypeError(f"cell_type must be 'rnn', 'lstm', 'gru' or a cell class, got "
                    f"{cell_type!r}")


def _orthogonal(rng, n, dtype):
    """An ``n x n`` orthogonal matrix drawn uniformly (QR of a Gaussian, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(dtype)


class RecurrentCell(Module):
    """Base class of the three cells (not used directly).

    Subclasses set ``_GATES`` (and ``_HAS_CELL_STATE`` for a ``(h, c)`` state),
    implement :meth:`_kind` (the kernel's cell code) and register a name for
    :func:`cell_class` with ``class XCell(RecurrentCell, cell_type="x")``.

    Layers built on cells use the layer-building API below and nothing else:
    :attr:`has_cell_state`, :meth:`check_sequence`, :meth:`state_arrays`,
    :meth:`check_grad_state`, :meth:`run_sequence` and :meth:`run_sequence_backward`.
    A layer's public ``forward`` checks its arguments once with the first four and
    runs the kernels with the last two; its ``backward`` checks ``grad_output``
    (:func:`time_major_grad`) and the final-state gradient before consuming its cache.

    Examples
    --------
    A one-direction layer in a few lines (what ``forward_sequence`` does):

    >>> from nn_core.recurrent import LSTMCell
    >>> cell = LSTMCell(3, 4, dtype=np.float64, rng=0)
    >>> x, lengths = cell.check_sequence(np.ones((5, 2, 3)), [5, 2])
    >>> h0, c0 = cell.state_arrays(None, x.shape[1])
    >>> out, (h, c), cache = cell.run_sequence(x, h0, c0, lengths)
    >>> gh, gc = cell.check_grad_state((np.ones((2, 4)), None), x.shape[1])
    >>> grad_x, grad_h0, grad_c0 = cell.run_sequence_backward(cache, None, gh, gc)
    """

    _TRANSIENT = {"_work": Workspace, "_steps": list, "_inference_steps": None}

    _GATES = 1
    _HAS_CELL_STATE = False

    def __init_subclass__(cls, cell_type=None, **kwargs):
        super().__init_subclass__(**kwargs)
        if cell_type is not None:
            _CELL_TYPES[cell_type] = cls

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 batch_first: bool = False, recurrent_init: str = "uniform",
                 dtype: DTypeLike = np.float32, rng: RNGLike = None) -> None:
        super().__init__(dtype=dtype, rng=rng)
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        if recurrent_init not in _RECURRENT_INITS:
            raise ValueError(f"recurrent_init must be one of {_RECURRENT_INITS}, "
                             f"got {recurrent_init!r}")
        self.recurrent_init = recurrent_init
        D, H, G = self.input_size, self.hidden_size, self._GATES
        k = 1.0 / np.sqrt(H)
        # PyTorch's initialisation: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)),
        # drawn in torch's order (weight_ih, weight_hh, bias_ih, bias_hh).
        self.add_param("W_ih", self.rng.uniform(-k, k, (G * H, D)))
        W_hh = self.rng.uniform(-k, k, (G * H, H))
        if recurrent_init == "orthogonal":
            W_hh = np.concatenate([_orthogonal(self.rng, H, np.float64) for _ in range(G)])
        self.add_param("W_hh", W_hh)
        if self.bias:
            self.add_param("b_ih", self.rng.uniform(-k, k, G * H))
            self.add_param("b_hh", self.rng.uniform(-k, k, G * H))
        self._steps = []
        self._work = Workspace()

    # ------------------------------------------------------------ kernel glue
    # Work buffers are recycled through the cell's workspace: a forward takes its
    # gate/state buffers from it and the matching backward gives them back, together
    # with its own scratch, which spares the page faults of fresh large arrays.
    # ``reset()`` empties it.
    def _take(self, name, shape):
        return self._work.take(name, shape, self.dtype)

    def _kind(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _kernel_bias(self):
        """``(bx [GH], bhn [H])``: the additive bias of each gate pre-activation and,
        for the reset-after GRU, ``b_hn`` (applied inside ``r * (W_hn h + b_hn)``)."""
        H, GH = self.hidden_size, self._GATES * self.hidden_size
        if not self.bias:
            return np.zeros(GH, self.dtype), np.zeros(H, self.dtype)
        b_ih, b_hh = self.params["b_ih"], self.params["b_hh"]
        if self._kind() == _K.GRU_RA:
            bx = b_ih.copy()
            bx[:2 * H] += b_hh[:2 * H]
            return bx, np.ascontiguousarray(b_hh[2 * H:])
        return b_ih + b_hh, np.zeros(H, self.dtype)

    def _dummy(self):
        return np.zeros((1, 1, 1), self.dtype)

    # ------------------------------------------------- layer-building API
    @property
    def has_cell_state(self) -> bool:
        """``True`` when the state is ``(h, c)`` (LSTM), ``False`` when it is ``h``."""
        return self._HAS_CELL_STATE

    def _check_input(self, x, name, ndim):
        x = as_float_array(x, name, self.dtype, ndim=ndim)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{name}.shape[-1] must equal input_size: expected "
                             f"{self.input_size}, got {x.shape[-1]}")
        return x

    def check_sequence(self, x, lengths=None, *, batch_first=None):
        """Check a user input sequence and make it kernel-ready.

        Parameters
        ----------
        x : array_like ``[T, B, D]`` (``[B, T, D]`` when ``batch_first``)
            Real values of any dtype (cast to the cell's).
        lengths : None, int array_like ``[B]`` or bool array ``[T, B]`` (``[B, T]``)
            ``None``: every sequence has ``T`` steps.  Ints need
            ``1 <= lengths[b] <= T``; a boolean prefix mask marks the real steps.
        batch_first : bool, keyword-only, optional
            Layout of ``x`` (and of a mask); default the cell's ``batch_first``.
            A layer with a layout of its own passes it here.

        Returns
        -------
        x : ndarray ``[T, B, D]``
            Time-major, C-contiguous, in the cell's dtype (the caller's array is
            never modified; it may be returned when it already fits).
        lengths : int64 ndarray ``[B]``

        Raises
        ------
        ValueError, TypeError
            ``x`` not ``[*, *, input_size]`` or not real; bad lengths or mask.
        """
        bf = self.batch_first if batch_first is None else bool(batch_first)
        x = self._check_input(x, "x", 3)
        if bf:
            x = x.transpose(1, 0, 2)
        x = np.ascontiguousarray(x)
        T, B, _ = x.shape
        if T == 0 or B == 0:
            raise ValueError(f"x must hold at least one step and one sequence, got "
                             f"{'[B, T, D]' if bf else '[T, B, D]'} = "
                             f"{(B, T, x.shape[2]) if bf else x.shape}")
        return x, resolve_lengths(lengths, T, B, bf)

    def state_arrays(self, state, batch_size, name="state"):
        """Kernel initial-state arrays from a user state.

        Parameters
        ----------
        state : None, ``h [B, H]`` or, with :attr:`has_cell_state`, ``(h, c)``
            ``None`` (or a ``None`` part) means zeros.
        batch_size : int
        name : str
            How errors name the argument (e.g. ``"state[0]"``).

        Returns
        -------
        h0 : ndarray ``[B, H]``
            C-contiguous, cell dtype.
        c0 : ndarray ``[B, H]`` or None
            ``None`` without a cell state.

        Raises
        ------
        ValueError, TypeError
            Wrong structure (``h`` for ``(h, c)`` or the reverse) or shape; non-real.
        """
        B, H = batch_size, self.hidden_size
        if self._HAS_CELL_STATE:
            if state is None:
                return np.zeros((B, H), self.dtype), np.zeros((B, H), self.dtype)
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise ValueError(f"{name} must be a tuple (h, c) of two [B, H] arrays, "
                                 f"got {type(state).__name__}")
            out = []
            for part, label in zip(state, ("h", "c")):
                if part is None:
                    out.append(np.zeros((B, H), self.dtype))
                    continue
                arr = as_float_array(part, f"{name} {label}", self.dtype)
                check_shape(arr, f"{name} {label}", (B, H))
                out.append(np.ascontiguousarray(arr))
            return out[0], out[1]
        if state is None:
            return np.zeros((B, H), self.dtype), None
        if isinstance(state, tuple):       # a list is array-like (nested rows), as in NumPy
            raise ValueError(f"{name} must be one [B, H] array h for "
                             f"{type(self).__name__}, got a {type(state).__name__}")
        arr = as_float_array(state, name, self.dtype)
        check_shape(arr, name, (B, H))
        return np.ascontiguousarray(arr), None

    def _grad_part(self, g, name, B):
        if g is None:
            return None
        arr = as_float_array(g, name, self.dtype)
        check_shape(arr, name, (B, self.hidden_size))
        return arr

    def check_grad_state(self, grad_state, batch_size, name="grad_state"):
        """Check the gradient of a final state (the user format of the state).

        Parameters
        ----------
        grad_state : None, ``grad_h [B, H]`` or, with :attr:`has_cell_state`,
            ``(grad_h, grad_c)`` (either part may be None).
        batch_size : int
        name : str
            How errors name the argument.

        Returns
        -------
        grad_h, grad_c : ndarray ``[B, H]`` or None
            In the cell's dtype (``grad_c`` is None without a cell state); ready for
            :meth:`run_sequence_backward`.

        Raises
        ------
        ValueError, TypeError
            Wrong structure or shape; non-real values.
        """
        if grad_state is None:
            return None, None
        B = batch_size
        if self._HAS_CELL_STATE:
            if not isinstance(grad_state, (tuple, list)) or len(grad_state) != 2:
                raise ValueError(f"{name} must be a tuple (grad_h, grad_c) of [B, H] "
                                 f"arrays or None, got {type(grad_state).__name__}")
            return (self._grad_part(grad_state[0], f"{name} h", B),
                    self._grad_part(grad_state[1], f"{name} c", B))
        if isinstance(grad_state, tuple):
            raise ValueError(f"{name} must be one [B, H] array for "
                             f"{type(self).__name__}, got a {type(grad_state).__name__}")
        return self._grad_part(grad_state, name, B), None

    # ---------------------------------------------------- low-level sequences
    def run_sequence(self, x, h0, c0=None, lengths=None, reverse=False):
        """Run the forward kernel on checked, time-major, contiguous arrays.

        Nothing is validated here: pass what :meth:`check_sequence` and
        :meth:`state_arrays` return.  No cache is kept on the module.

        Parameters
        ----------
        x : ndarray ``[T, B, D]``
            C-contiguous, cell dtype.
        h0 : ndarray ``[B, H]``
            C-contiguous initial hidden state.
        c0 : ndarray ``[B, H]`` or None
            Initial cell state (required with :attr:`has_cell_state`, else ignored).
        lengths : int64 ndarray ``[B]`` or None
            Real steps per sequence (None: all ``T``).
        reverse : bool
            Run right to left; each sequence starts at its own last real step.

        Returns
        -------
        out : ndarray ``[T, B, H]``
            Hidden states in time order, 0 at padded positions.
        final : ``h [B, H]`` or ``(h, c)``
            State after each sequence's last real step (fresh arrays).
        cache : SequenceCache
            Everything :meth:`run_sequence_backward` needs; consume it once.
        """
        T, B, _ = x.shape
        H, GH = self.hidden_size, self._GATES * self.hidden_size
        dt = self.dtype
        if lengths is None:
            lengths = np.full(B, T, dtype=np.int64)
        elif lengths.min() < T:
            # Padded positions take no part in the result, but grad_W_ih = dG^T x
            # multiplies their (zero) gate gradients with x: NaN/inf padding would
            # leak in as 0 * inf.  Zero such padding in a private copy.
            pad = np.arange(T)[:, None] >= lengths[None, :]
            if not np.isfinite(x[pad]).all():
                x = x.copy()
                x[pad] = 0
        # The sweep runs on the rows sorted longest first, so that the rows still
        # running at any step are a prefix of the batch (the kernel's products shrink
        # to it); the outputs go back to the caller's order.
        order = length_order(lengths)
        if order is not None:
            x, lengths = np.take(x, order, axis=1), lengths[order]
            h0 = h0[order]
            if c0 is not None:
                c0 = c0[order]
        kind = self._kind()
        W_ih = np.ascontiguousarray(self.params["W_ih"])
        W_hh = np.ascontiguousarray(self.params["W_hh"])
        W_hhT = np.ascontiguousarray(W_hh.T)
        bx, bhn = self._kernel_bias()
        gates = self._take("gates", (T, B, GH))
        hs = self._take("hs", (T + 1, B, H))
        hs[0] = h0
        if self._HAS_CELL_STATE:
            cs = self._take("cs", (T + 1, B, H))
            cs[0] = c0
        else:
            cs = self._dummy()
        aux = self._take("aux", (T, B, H)) if kind >= _K.LSTM else self._dummy()
        out = np.empty((T, B, H), dt)
        hh = self._take("hh", (B, GH))
        sweep = _K.ForwardSweep(kind, bool(reverse), x=x, lengths=lengths, W_ih=W_ih,
                                W_hh=W_hh, W_hhT=W_hhT, gates=gates, hs=hs, cs=cs, aux=aux,
                                bx=bx, bhn=bhn, out=out, hh=hh, rows=order)
        mode = _K.STEP_MODES[STEP_MODE]
        team = team_threads(kind, B, H, dt)
        halves = None if team is not None else row_halves(B, lengths)
        if team is not None:
            _K.rnn_forward(sweep, mode=mode, threads=team)
        elif halves is None and fixed_split(B):
            # the split's partition on this thread, so that the bits do not depend on
            # the thread count
            _run_in_order(lambda a, b: _K.rnn_forward(sweep, _K.PHASE_PROJ, a, b),
                          _parallel.halves(T * B))
            _K.rnn_forward(sweep, _K.PHASE_STEPS, mode=mode)
        elif halves is None:
            _K.rnn_forward(sweep, mode=mode)
        else:
            # two threads, BLAS on one thread each: the input projection split by
            # rows of T*B, then the step loops of the two half batches
            _parallel.run_rows(lambda a, b: _K.rnn_forward(sweep, _K.PHASE_PROJ, a, b),
                              _parallel.halves(T * B))
            _parallel.run_rows(lambda a, b: _K.rnn_forward(sweep, _K.PHASE_STEPS, a, b,
                                                           mode=mode), halves,
                               cancel=_K.cancel_sweeps)
        self._work.give("hh", hh)
        cache = SequenceCache(x, lengths, bool(reverse), gates, hs, cs, aux, W_ih, W_hh,
                              W_hhT, order)
        final = (hs[T].copy(), cs[T].copy()) if self._HAS_CELL_STATE else hs[T].copy()
        if order is not None:                # (out is written in the caller's order)
            final = (tuple(_unsort(f, order, 0) for f in final)
                     if self._HAS_CELL_STATE else _unsort(final, order, 0))
        return out, final, cache

    def run_sequence_backward(self, cache, grad_out=None, grad_h=None, grad_c=None):
        """BPTT through ``cache``; accumulates parameter gradients into ``grads``.

        Nothing is validated here: pass a ``grad_out`` checked by
        :func:`time_major_grad` and the parts :meth:`check_grad_state` returns.
        ``cache`` is consumed (its buffers go back to the cell's pool).

        Parameters
        ----------
        cache : SequenceCache
            From :meth:`run_sequence`.
        grad_out : ndarray ``[T, B, H]`` or None
            Time-major, C-contiguous, cell dtype; None: the output gets no gradient.
        grad_h, grad_c : ndarray ``[B, H]`` or None
            Gradients of the final state (None: zero).

        Returns
        -------
        grad_x : ndarray ``[T, B, D]``
        grad_h0 : ndarray ``[B, H]``
        grad_c0 : ndarray ``[B, H]`` or None
            None without a cell state.
        """
        x, order = cache.x, cache.order
        T, B, _ = x.shape
        H, dt = self.hidden_size, self.dtype
        if order is not None:                 # into the sweep's row order (not grad_out)
            grad_h = None if grad_h is None else grad_h[order]
            grad_c = None if grad_c is None else grad_c[order]
        dh = np.zeros((B, H), dt) if grad_h is None else np.array(grad_h, dt, order="C")
        if self._HAS_CELL_STATE:
            dc = np.zeros((B, H), dt) if grad_c is None else np.array(grad_c, dt, order="C")
        else:
            dc = None
        grad_x = np.empty_like(x)
        kind = self._kind()
        GH = self._GATES * H
        dGs = self._take("dGs", (T, B, GH))
        dGt = self._take("dGt", (T, B, GH)) if (cache.reverse or kind == _K.GRU_RA) else None
        fuse = not cache.reverse and kind <= _K.LSTM
        D = x.shape[2]
        xh = self._take("xh", (T * B, D + H)) if fuse else None
        gw = self._take("gw", (GH, D + H)) if fuse else None
        sweep = _K.BackwardSweep(
            kind, cache.reverse, x=x, lengths=cache.lengths, W_ih=cache.W_ih,
            W_hh=cache.W_hh, W_hhT=cache.W_hhT, gates=cache.gates, hs=cache.hs,
            cs=cache.cs, aux=cache.aux, grad_out=grad_out, dh=dh, dc=dc, grad_x=grad_x,
            grad_W_ih=self.grads["W_ih"], grad_W_hh=self.grads["W_hh"],
            grad_b_ih=self.grads["b_ih"] if self.bias else None,
            grad_b_hh=self.grads["b_hh"] if self.bias else None,
            dGs=dGs, dGt=dGt, xh=xh, gw=gw, rows=order)
        mode = _K.STEP_MODES[STEP_MODE]
        team = team_threads(kind, B, H, dt)
        halves = None if team is not None else row_halves(B, cache.lengths)
        if team is not None:
            _K.rnn_backward(sweep, mode=mode, threads=team)
        elif halves is None and fixed_split(B):
            # the split's partition on this thread (see run_sequence)
            run = _K.rnn_backward
            run(sweep, _K.PHASE_STEPS, mode=mode)
            _run_in_order(lambda a, b: run(sweep, _K.PHASE_GRAD_X, a, b),
                          _parallel.halves(T * B))
            _run_in_order(lambda a, b: run(sweep, _K.PHASE_WGRAD, a, b),
                          _parallel.halves(GH, align=16))
        elif halves is None:
            _K.rnn_backward(sweep, mode=mode)
        else:
            # two threads, BLAS on one thread each: BPTT of the two half batches, then
            # grad_x split by rows of T*B, then the parameter gradients by gate rows
            run = _K.rnn_backward
            _parallel.run_rows(lambda a, b: run(sweep, _K.PHASE_STEPS, a, b, mode=mode),
                              halves, cancel=_K.cancel_sweeps)
            _parallel.run_rows(lambda a, b: run(sweep, _K.PHASE_GRAD_X, a, b),
                              _parallel.halves(T * B))
            _parallel.run_rows(lambda a, b: run(sweep, _K.PHASE_WGRAD, a, b),
                              _parallel.halves(GH, align=16))
        given = set()
        for name, arr in (("dGs", dGs), ("dGt", dGt), ("xh", xh), ("gw", gw),
                          ("gates", cache.gates),
                          ("hs", cache.hs), ("cs", cache.cs), ("aux", cache.aux)):
            if arr is not None and arr.size > 1 and id(arr) not in given:
                given.add(id(arr))
                self._work.give(name, arr)
        if order is not None:
            grad_x, dh = _unsort(grad_x, order, 1), _unsort(dh, order, 0)
            dc = None if dc is None else _unsort(dc, order, 0)
        return grad_x, dh, (dc if self._HAS_CELL_STATE else None)

    # -------------------------------------------------------------- one step
    def forward(self, x_t: ArrayLike, state: StateLike = None) -> State:
        """One time step (pushes its cache; see the class docstring)."""
        x = self._check_input(x_t, "x_t", 2)
        B = x.shape[0]
        if B == 0:
            raise ValueError(f"x_t must hold at least one sequence, got [B, D] = {x.shape}")
        h0, c0 = self.state_arrays(state, B)
        x3 = np.ascontiguousarray(x)[None]
        _, final, cache = self.run_sequence(x3, h0, c0)
        self._inference_steps = not self.keeps_cache()
        if self._inference_steps:               # eval / inference_mode: nothing to keep
            self.release(cache)
        else:
            self._steps.append(cache)
        return final

    def backward(self, grad_h: ArrayLike,
                 grad_c: ArrayLike | None = None) -> tuple[np.ndarray, ...]:
        """Backward of the newest pushed step (pops it).

        Returns ``(grad_x, grad_h_prev)`` or, for the LSTM,
        ``(grad_x, grad_h_prev, grad_c_prev)``.
        """
        if not self._steps:
            if getattr(self, "_inference_steps", False):
                raise RuntimeError(f"{type(self).__name__}.backward is not available: "
                                   "forwards in eval() or inference_mode() keep no cache "
                                   "(run them in train() or inside nn_core.enable_backward())")
            require_forward(None, self)
        cache = self._steps[-1]
        B = cache.x.shape[1]
        gh = self._grad_part(grad_h, "grad_h", B)
        gc = self._grad_part(grad_c, "grad_c", B) if self._HAS_CELL_STATE else None
        if not self._HAS_CELL_STATE and grad_c is not None:
            raise ValueError(f"grad_c must be None for {type(self).__name__} "
                             f"(it has no cell state)")
        self._steps.pop()
        gx, gh0, gc0 = self.run_sequence_backward(cache, None, gh, gc)
        if self._HAS_CELL_STATE:
            return gx[0], gh0, gc0
        return gx[0], gh0

    def release(self, cache):
        """Give the work buffers of a :meth:`run_sequence` cache back to this cell's pool,
        for a cache that no backward will consume (eval / inference forwards)."""
        for name in ("gates", "hs", "cs", "aux"):
            arr = getattr(cache, name)
            if arr.size > 1:
                self._work.give(name, arr)

    @property
    def num_pending(self) -> int:
        """Pending sequence forwards plus pushed one-step caches."""
        return super().num_pending + len(self._steps)

    def _clear_own_pending(self) -> None:
        super()._clear_own_pending()
        self._steps.clear()

    def reset(self):
        """Drop every pushed step cache (and a pending sequence cache)."""
        self._steps.clear()
        self.clear_pending()
        self._work.clear()

    # -------------------------------------------------------- whole sequence
    def forward_sequence(self, x: ArrayLike, state: StateLike = None,
                         lengths: ArrayLike | None = None,
                         reverse: bool = False) -> tuple[np.ndarray, State]:
        """Whole sequence in one kernel call (see the class docstring)."""
        x, lens = self.check_sequence(x, lengths)
        h0, c0 = self.state_arrays(state, x.shape[1])
        out, final, cache = self.run_sequence(x, h0, c0, lens, reverse)
        self._save_cache(cache)
        if not self.keeps_cache():
            self.release(cache)
        return user_layout(out, self.batch_first), final

    def backward_sequence(self, grad_output: ArrayLike,
                          grad_final_state: StateLike = None) -> tuple[np.ndarray, State]:
        """BPTT of the last :meth:`forward_sequence` (one backward per forward)."""
        cache = self._peek_cache()
        T, B, _ = cache.x.shape
        go = time_major_grad(grad_output, self.dtype, self.batch_first, T, B,
                             self.hidden_size)
        gh, gc = self.check_grad_state(grad_final_state, B, "grad_final_state")
        self._pop_cache()
        if go is not None:
            go = np.ascontiguousarray(go)
        gx, gh0, gc0 = self.run_sequence_backward(cache, go, gh, gc)
        return user_layout(gx, self.batch_first), ((gh0, gc0) if self._HAS_CELL_STATE
                                                   else gh0)

"""The sequence driver shared by RNNCell, LSTMCell and GRUCell.

:class:`RecurrentCell` owns the parameters ``W_ih [G*H, D]``, ``W_hh [G*H, H]``,
``b_ih [G*H]``, ``b_hh [G*H]`` and both levels of the API (API.md §3):

* the **one-step** API ``forward(x_t, state)`` / ``backward(grad_h[, grad_c])`` keeps a
  LIFO of step caches (BPTT is ``backward`` in reverse order, ``reset()`` drops them);
* the **sequence** API ``forward_sequence`` / ``backward_sequence`` runs the whole
  sequence in one call of the compiled kernel ``nn_core._kernels._recurrent``.

A step is the sequence kernel with ``T = 1``, so both levels compute the same numbers
by construction.  The low-level pair :meth:`RecurrentCell.run_sequence` /
:meth:`RecurrentCell.run_sequence_backward` works on time-major contiguous arrays, keeps
no cache on the module (it returns it) and accepts ``reverse=True`` (each sequence starts
at its own last real step): the bidirectional layers build on it; the kernels release
the GIL for their whole loop, so two directions (two cells) can run on two Python
threads.  A cell recycles its work buffers through a private pool, so one cell must not
run two sequences concurrently.

With more than one core (and BLAS allowed more than one thread) a sweep over
``B >= _threads.MIN_SPLIT_ROWS`` rows runs on two threads itself: batch rows never
interact, so the kernels' phases (input projection by rows of ``T*B``, step loops by
batch rows, ``grad_x`` by rows, weight gradients by gate rows) each run as two halves,
one on the calling thread and one on the worker thread of :mod:`._threads`, with BLAS
on one thread each.  The numbers equal the one-thread sweep's up to the summation
order BLAS picks for a half-sized operand.
"""
from __future__ import annotations

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
from ..module import Module
from . import _threads

__all__ = ["RecurrentCell", "SequenceCache", "resolve_lengths", "time_major_grad"]

_RECURRENT_INITS = ("uniform", "orthogonal")


@dataclass
class SequenceCache:
    """What the backward kernel needs from one sequence forward (time-major)."""

    x: np.ndarray          # [T, B, D] (contiguous)
    lengths: np.ndarray    # [B] int64 (all T when unpadded)
    reverse: bool
    gates: np.ndarray      # [T, B, G*H] post-activation gates (time order)
    hs: np.ndarray         # [T+1, B, H] states (step order; hs[0] = initial state)
    cs: np.ndarray         # [T+1, B, H] LSTM cell states, else a [1, 1, 1] dummy
    aux: np.ndarray        # [T, B, H] tanh(c) / r*h / W_hn h + b_hn, or a dummy
    W_ih: np.ndarray       # the weights used (live arrays)
    W_hh: np.ndarray
    W_hhT: np.ndarray      # W_hh^T [H, G*H] contiguous (per-step GEMM layout)


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


def _orthogonal(rng, n, dtype):
    """An ``n x n`` orthogonal matrix drawn uniformly (QR of a Gaussian, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(dtype)


class RecurrentCell(Module):
    """Base class of the three cells (not used directly).

    Subclasses set ``_GATES`` and implement :meth:`_kind` (the kernel's cell code).
    """

    _GATES = 1
    _HAS_CELL_STATE = False

    def __init__(self, input_size, hidden_size, bias=True, *, batch_first=False,
                 recurrent_init="uniform", dtype=np.float32, rng=None):
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
        self._pool = {}

    # ------------------------------------------------------------ kernel glue
    # Work buffers are recycled through a small per-module pool: a forward takes
    # its gate/state buffers from it and the matching backward gives them back,
    # together with its own scratch.  Fresh multi-megabyte arrays every call cost
    # page faults (~15% of an S-shape LSTM step in perf); the pool holds at most
    # one spare per shape, like a caching allocator.  ``reset()`` empties it.
    def _take(self, name, shape, fill=None):
        spare = self._pool.pop((name, shape), None)
        if spare is None:
            spare = np.empty(shape, self.dtype)
            if fill is not None:
                spare.fill(fill)
        elif fill is not None and name not in ("ones", "zrow"):
            spare.fill(fill)
        return spare

    def _give(self, name, arr):
        if arr.ndim and arr.shape[0] > 0:
            self._pool[(name, arr.shape)] = arr

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

    # --------------------------------------------------------- validation glue
    def _check_input(self, x, name, ndim):
        x = as_float_array(x, name, self.dtype, ndim=ndim)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{name}.shape[-1] must equal input_size: expected "
                             f"{self.input_size}, got {x.shape[-1]}")
        return x

    def _state_arrays(self, state, B, name="state"):
        """``(h0, c0)`` as contiguous ``[B, H]`` arrays (zeros for ``None``)."""
        H = self.hidden_size
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
        if isinstance(state, (tuple, list)):
            raise ValueError(f"{name} must be one [B, H] array h for "
                             f"{type(self).__name__}, got a {type(state).__name__}")
        arr = as_float_array(state, name, self.dtype)
        check_shape(arr, name, (B, H))
        return np.ascontiguousarray(arr), None

    def _lengths(self, lengths, T, B):
        return resolve_lengths(lengths, T, B, self.batch_first)

    # ---------------------------------------------------- low-level sequences
    def run_sequence(self, x, h0, c0=None, lengths=None, reverse=False):
        """Run the kernel on checked, time-major, contiguous arrays.

        Parameters
        ----------
        x : ndarray ``[T, B, D]``, C-contiguous, module dtype.
        h0, c0 : ndarray ``[B, H]`` (``c0`` LSTM only).
        lengths : int64 ndarray ``[B]`` or None (all ``T``).
        reverse : bool
            Run right to left; each sequence starts at its last real step.

        Returns
        -------
        out : ndarray ``[T, B, H]`` (time order, 0 at padded positions)
        final : ``h [B, H]`` or ``(h, c)``
        cache : SequenceCache
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
                                bx=bx, bhn=bhn, out=out, hh=hh)
        halves = _threads.row_halves(B)
        if halves is None:
            _K.rnn_forward(sweep)
        else:
            # two threads, BLAS on one thread each: the input projection split by
            # rows of T*B, then the step loops of the two half batches
            _threads.run_rows(lambda a, b: _K.rnn_forward(sweep, _K.PHASE_PROJ, a, b),
                              _threads.halves(T * B))
            _threads.run_rows(lambda a, b: _K.rnn_forward(sweep, _K.PHASE_STEPS, a, b),
                              halves)
        self._give("hh", hh)
        cache = SequenceCache(x, lengths, bool(reverse), gates, hs, cs, aux, W_ih, W_hh,
                              W_hhT)
        final = (hs[T].copy(), cs[T].copy()) if self._HAS_CELL_STATE else hs[T].copy()
        return out, final, cache

    def run_sequence_backward(self, cache, grad_out=None, grad_h=None, grad_c=None):
        """BPTT through ``cache``; accumulates parameter gradients into ``grads``.

        ``grad_out [T, B, H]`` (time-major, contiguous, module dtype) or None;
        ``grad_h``, ``grad_c`` ``[B, H]`` gradients of the final state or None.
        Returns ``(grad_x [T, B, D], grad_h0 [B, H], grad_c0 [B, H] or None)``.
        """
        x = cache.x
        T, B, _ = x.shape
        H, dt = self.hidden_size, self.dtype
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
            dGs=dGs, dGt=dGt, xh=xh, gw=gw)
        halves = _threads.row_halves(B)
        if halves is None:
            _K.rnn_backward(sweep)
        else:
            # two threads, BLAS on one thread each: BPTT of the two half batches, then
            # grad_x split by rows of T*B, then the parameter gradients by gate rows
            run = _K.rnn_backward
            _threads.run_rows(lambda a, b: run(sweep, _K.PHASE_STEPS, a, b), halves)
            _threads.run_rows(lambda a, b: run(sweep, _K.PHASE_GRAD_X, a, b),
                              _threads.halves(T * B))
            _threads.run_rows(lambda a, b: run(sweep, _K.PHASE_WGRAD, a, b),
                              _threads.halves(GH, align=16))
        given = set()
        for name, arr in (("dGs", dGs), ("dGt", dGt), ("xh", xh), ("gw", gw),
                          ("gates", cache.gates),
                          ("hs", cache.hs), ("cs", cache.cs), ("aux", cache.aux)):
            if arr is not None and arr.size > 1 and id(arr) not in given:
                given.add(id(arr))
                self._give(name, arr)
        return grad_x, dh, (dc if self._HAS_CELL_STATE else None)

    # -------------------------------------------------------------- one step
    def forward(self, x_t, state=None):
        """One time step (pushes its cache; see the class docstring)."""
        x = self._check_input(x_t, "x_t", 2)
        B = x.shape[0]
        h0, c0 = self._state_arrays(state, B)
        x3 = np.ascontiguousarray(x)[None]
        _, final, cache = self.run_sequence(x3, h0, c0)
        self._steps.append(cache)
        return final

    def backward(self, grad_h, grad_c=None):
        """Backward of the newest pushed step (pops it).

        Returns ``(grad_x, grad_h_prev)`` or, for the LSTM,
        ``(grad_x, grad_h_prev, grad_c_prev)``.
        """
        if not self._steps:
            require_forward(None, self)
        cache = self._steps[-1]
        B = cache.x.shape[1]
        gh = self._grad_state_part(grad_h, "grad_h", B)
        gc = self._grad_state_part(grad_c, "grad_c", B) if self._HAS_CELL_STATE else None
        if not self._HAS_CELL_STATE and grad_c is not None:
            raise ValueError(f"grad_c must be None for {type(self).__name__} "
                             f"(it has no cell state)")
        self._steps.pop()
        gx, gh0, gc0 = self.run_sequence_backward(cache, None, gh, gc)
        if self._HAS_CELL_STATE:
            return gx[0], gh0, gc0
        return gx[0], gh0

    def reset(self):
        """Drop every pushed step cache (and a pending sequence cache)."""
        self._steps.clear()
        self._cache = None
        self._pool.clear()

    def _grad_state_part(self, g, name, B):
        if g is None:
            return None
        arr = as_float_array(g, name, self.dtype)
        check_shape(arr, name, (B, self.hidden_size))
        return arr

    # -------------------------------------------------------- whole sequence
    def forward_sequence(self, x, state=None, lengths=None, reverse=False):
        """Whole sequence in one kernel call (see the class docstring)."""
        x = self._check_input(x, "x", 3)
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        x = np.ascontiguousarray(x)
        T, B, _ = x.shape
        lens = self._lengths(lengths, T, B)
        h0, c0 = self._state_arrays(state, B)
        out, final, cache = self.run_sequence(x, h0, c0, lens, reverse)
        self._cache = cache
        if self.batch_first:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))
        return out, final

    def backward_sequence(self, grad_output, grad_final_state=None):
        """BPTT of the last :meth:`forward_sequence` (one backward per forward)."""
        cache = self._cache
        require_forward(cache, self)
        T, B, _ = cache.x.shape
        H = self.hidden_size
        go = time_major_grad(grad_output, self.dtype, self.batch_first, T, B, H)
        if go is not None:
            go = np.ascontiguousarray(go)
        gh = gc = None
        if grad_final_state is not None:
            if self._HAS_CELL_STATE:
                if not isinstance(grad_final_state, (tuple, list)) or len(grad_final_state) != 2:
                    raise ValueError("grad_final_state must be a tuple (grad_h, grad_c)")
                gh = self._grad_state_part(grad_final_state[0], "grad_final_state h", B)
                gc = self._grad_state_part(grad_final_state[1], "grad_final_state c", B)
            else:
                gh = self._grad_state_part(grad_final_state, "grad_final_state", B)
        self._cache = None
        gx, gh0, gc0 = self.run_sequence_backward(cache, go, gh, gc)
        if self.batch_first:
            gx = np.ascontiguousarray(gx.transpose(1, 0, 2))
        return gx, ((gh0, gc0) if self._HAS_CELL_STATE else gh0)

"""Sequence kernels (forward and BPTT) shared by RNNCell, LSTMCell and GRUCell.

One loop design for all cells (``kind``)::

    0 RNN_TANH  h = tanh(a),  a = W_ih x + b_ih + W_hh h_prev + b_hh            G = 1
    1 RNN_RELU  h = relu(a)
    2 LSTM      i,f,o = sigma(.), g = tanh(.); c = f*c_prev + i*g; h = o*tanh(c)  G = 4
    3 GRU       (reset_after=False) r,z = sigma(.); n = tanh(W_in x + b_in
                                    + W_hn (r*h_prev) + b_hn)                   G = 3
    4 GRU_RA    (reset_after=True)  n = tanh(W_in x + b_in + r*(W_hn h_prev + b_hn))
    both GRUs: h = (1 - z)*n + z*h_prev

Layout (all C-contiguous, time-major): ``x [T, B, D]``, ``W_ih [GH, D]``,
``W_hh [GH, H]`` (``GH = G*H``), gates ``[T, B, GH]``, states ``hs, cs [T+1, B, H]``.

Forward
-------
1. one GEMM for the input projection of every step: ``gates = x @ W_ih^T`` (written
   into the gates buffer, which then holds post-activation gates in place);
2. per step ``s``: one GEMM ``hh = h_{s} @ W_hh^T`` (GRU: two, ``[r, z]`` then
   ``(r*h) @ W_hn^T``), then one fused C pass over the step's ``[B, GH]`` block that
   adds the biases, applies the gate nonlinearities (vectorised exp-based
   sigmoid/tanh from ``_vmath.h``) and writes the new state to ``hs[s+1]``.

Backward (BPTT, ``s = T-1 .. 0``): one fused pass computes the pre-activation gate
gradients ``dG[s]`` from the post-activation gates (``y(1-y)``, ``1-y^2``), then one
GEMM ``dh_{s} = dG[s] @ W_hh`` (+ the direct path ``z*dh`` of the GRU).  After the
loop: ``grad_x = dG @ W_ih``, ``grad_W_ih += dG^T x``, ``grad_W_hh += dG^T h`` and the
bias gradients (column sums through GEMV) as single large BLAS calls.

Variable lengths and direction
------------------------------
``lengths [B]`` (``1 <= lengths[b] <= T``, all ``T`` when the batch is not padded).
The recurrence runs in *step* order ``s = 0..T-1``; step ``s`` of sequence ``b`` reads
and writes time position ``tau(s, b)``::

    tau = s                    forward direction
    tau = lengths[b] - 1 - s   reverse (starts at each sequence's last real step)
    tau = s                    for padded steps s >= lengths[b] (either direction)

Padded steps copy the state unchanged (``hs[s+1, b] = hs[s, b]``), write 0 to
``out[s, b]`` and receive no gradient (``dG = 0``, ``dh`` passes through), so
``hs[T]`` is every sequence's state after its last real step.  Reversal costs no
copies: it is only an index computation per row inside the fused passes.  ``hs``,
``cs``, ``aux`` and ``dG_step`` are indexed by step, ``gates``, ``out``, ``x``,
``grad_x`` and ``dG_time`` by time (they coincide in the forward direction).

Files: this module validates (the sweep objects) and runs (the entry points);
the ``nogil`` loops are in ``_rnn_loops.pxd`` (one forward step loop and one BPTT
loop for both step forms, the per-step product with ``W_hh`` -- one BLAS call or the
packed micro-kernel of ``_rnn_pack.h`` -- being the difference), the per-row gate
passes in ``_rnn_gates.h`` (fused wrappers: ``_rnn_gates.pxd``).

Kernel API
----------
A :class:`ForwardSweep` / :class:`BackwardSweep` is built once per sweep: its
constructor checks every buffer (dtype, C-contiguity, shape, writability, lengths
in range) with the GIL held and keeps them alive.  ``rnn_forward(sweep, phase, r0,
r1)`` / ``rnn_backward(sweep, phase, r0, r1)`` check only the range and then run
the whole loop (BLAS included) in one ``nogil`` block, so two directions can run
concurrently on two Python threads.  ``phase`` splits one sweep for two threads: the
input projection and ``grad_x`` by rows of ``T*B``, the step loops by batch rows
(rows never interact), the weight gradients by gate rows; disjoint ranges of one
phase may run concurrently.  ``PHASE_ALL`` (default) does everything, as one job of
nn_core's thread team on up to ``threads`` threads (``_rnn_loops.pxd``, "team
sweeps": the GEMM phases in fixed pieces, the packed step loops split by hidden
units; the same bits on any number of threads).
"""
from cython cimport floating
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import threading

import numpy as np

from cpython.pyport cimport PY_SSIZE_T_MAX

from _rnn_loops cimport (K_GRU, K_GRU_RA, K_LSTM, PH_ALL, PH_GRAD_X, PH_PROJ, PH_STEPS,
                         PH_WGRAD, STEP_AUTO, STEP_BLAS, STEP_PACKED, PackedJob, RnnSweep,
                         TeamSweep, nn_team, nn_team_import, sweep_piece,
                         packed_loc_size, scratch_size, step_mode as _step_mode,
                         team_plan, team_want)
from _rnn_pack cimport NN_NR_D, NN_NR_F
from _vmath cimport bind_simd

cdef extern from "_interrupt.h":
    void nn_stop_init(unsigned long main_ident)
    void nn_stop_cancel(int on)
    int nn_stop_raise() except -1     # re-raises a signal handler's exception from a sweep

nn_stop_init(threading.main_thread().ident)
nn_team_import()


def cancel_sweeps(bint on):
    """Stop (``True``) the sweeps running on threads other than the main one within a
    step, each then raising ``KeyboardInterrupt``; ``False`` allows them again.  The
    main thread calls it while it waits for the other half of a split sweep after an
    interrupt."""
    nn_stop_cancel(on)

bind_simd(__name__)

RNN_TANH, RNN_RELU, LSTM, GRU, GRU_RA = 0, 1, 2, 3, 4
GATES = (1, 1, 4, 3, 3)
PHASE_ALL, PHASE_PROJ, PHASE_STEPS, PHASE_GRAD_X, PHASE_WGRAD = 0, 1, 2, 3, 4
#: how the step loops compute their products: the per-shape rule, BLAS, packed W_hh
STEP_MODES = {"auto": STEP_AUTO, "blas": STEP_BLAS, "packed": STEP_PACKED}


def step_mode(int kind, Py_ssize_t B, Py_ssize_t H, bint double):
    """The step mode ``STEP_MODES["auto"]`` resolves to for ``kind``, ``B`` rows, ``H``
    units and the dtype (``STEP_MODES["blas"]`` or ``["packed"]``)."""
    return _step_mode(kind, B, H, not double)


# ------------------------------------------------------------------ validation --
cdef int _shape(object a, str name, tuple shape) except -1:
    if a is None:
        raise ValueError(f"{name} is required, got None")
    got = tuple(a.shape[:len(shape)])
    if got != shape:
        raise ValueError(f"{name} must have shape {shape}, got {got}")
    return 0


cdef bint _is_double(object x) except -1:
    dt = np.asarray(x).dtype
    if dt != np.float32 and dt != np.float64:
        raise TypeError(f"x must be float32 or float64, got {dt}")
    return dt == np.float64


cdef class _Sweep:
    """The validated sizes and buffers of one sweep (``RnnSweep``) and the memoryviews
    that keep those buffers alive."""
    cdef RnnSweep s
    cdef bint ready, double
    cdef list pins

    @property
    def shape(self):
        """``(T, B, D, H)``."""
        return self.s.T, self.s.B, self.s.D, self.s.H


cdef int _fill_rows(_Sweep sw, object rows) except -1:
    """``rows``: None, or a permutation of ``0..B-1`` (int64): the row of ``out`` and
    ``grad_out`` that each sweep row writes and reads."""
    cdef const int64_t[::1] r
    cdef Py_ssize_t B = sw.s.B, b
    if rows is None:
        return 0
    r = rows
    _shape(r, "rows", (B,))
    seen = np.zeros(B, np.bool_)
    for b in range(B):
        if r[b] < 0 or r[b] >= B or seen[r[b]]:
            raise ValueError(f"rows must be a permutation of 0..{B - 1}, got {np.asarray(r)}")
        seen[r[b]] = True
    sw.s.rows = &r[0]
    sw.pins.append(r)
    return 0


cdef int _fill_common(_Sweep sw, int kind, bint reverse, const floating[:, :, ::1] x,
                      const int64_t[::1] lengths, const floating[:, ::1] W_ih,
                      const floating[:, ::1] W_hh, const floating[:, ::1] W_hhT,
                      const floating[:, :, ::1] gates, const floating[:, :, ::1] hs,
                      object cs, object aux) except -1:
    """What forward and backward share: sizes, lengths, weights and the stored
    gates and states (``cs`` LSTM only, ``aux`` not for the RNN: else ignored)."""
    cdef RnnSweep* s = &sw.s
    cdef Py_ssize_t T, B, D, H, GH, b
    cdef const floating[:, :, ::1] cs_v
    cdef const floating[:, :, ::1] aux_v
    if kind < 0 or kind > 4:
        raise ValueError(f"kind must be in 0..4, got {kind}")
    if x is None or hs is None:
        raise ValueError(f"{'x' if x is None else 'hs'} is required, got None")
    T, B, D, H = x.shape[0], x.shape[1], x.shape[2], hs.shape[2]
    if T < 1 or B < 1 or D < 1 or H < 1:
        raise ValueError(f"empty dimensions are not supported: T={T}, B={B}, D={D}, H={H}")
    GH = GATES[kind] * H
    _shape(W_ih, "W_ih", (GH, D))
    _shape(W_hh, "W_hh", (GH, H))
    _shape(W_hhT, "W_hhT", (H, GH))
    _shape(lengths, "lengths", (B,))
    for b in range(B):
        if lengths[b] < 1 or lengths[b] > T:
            raise ValueError(f"lengths must satisfy 1 <= lengths[b] <= {T}, "
                             f"got {lengths[b]}")
    _shape(gates, "gates", (T, B, GH))
    _shape(hs, "hs", (T + 1, B, H))
    s.kind, s.reverse, s.T, s.B, s.D, s.H, s.GH = kind, reverse, T, B, D, H, GH
    s.lengths, s.x = &lengths[0], &x[0, 0, 0]
    s.W_ih, s.W_hh, s.W_hhT = &W_ih[0, 0], &W_hh[0, 0], &W_hhT[0, 0]
    s.gates, s.hs = <void*> &gates[0, 0, 0], <void*> &hs[0, 0, 0]
    sw.pins += [x, lengths, W_ih, W_hh, W_hhT, gates, hs]
    if kind == K_LSTM:
        cs_v = cs
        _shape(cs_v, "cs", (T + 1, B, H))
        s.cs = <void*> &cs_v[0, 0, 0]
        sw.pins.append(cs_v)
    if kind >= K_LSTM:
        aux_v = aux
        _shape(aux_v, "aux", (T, B, H))
        s.aux = <void*> &aux_v[0, 0, 0]
        sw.pins.append(aux_v)
    return 0


# ---------------------------------------------------------------------- forward --
cdef int _fill_forward(_Sweep sw, floating[:, :, ::1] gates, floating[:, :, ::1] hs,
                       object cs, object aux, const floating[::1] bx, object bhn,
                       floating[:, :, ::1] out, floating[:, ::1] hh) except -1:
    cdef RnnSweep* s = &sw.s
    cdef Py_ssize_t T = s.T, B = s.B, H = s.H, GH = s.GH
    cdef floating[:, :, ::1] cs_v
    cdef floating[:, :, ::1] aux_v
    cdef const floating[::1] bhn_v
    if s.kind == K_LSTM:
        cs_v = cs                                  # writable
    if s.kind >= K_LSTM:
        aux_v = aux
    _shape(bx, "bx", (GH,))
    _shape(out, "out", (T, B, H))
    _shape(hh, "hh", (B, GH))
    s.bx, s.out, s.hh = &bx[0], <void*> &out[0, 0, 0], <void*> &hh[0, 0]
    sw.pins += [bx, out, hh]
    if s.kind == K_GRU_RA:
        bhn_v = bhn
        _shape(bhn_v, "bhn", (H,))
        s.bhn = &bhn_v[0]
        sw.pins.append(bhn_v)
    return 0


cdef class ForwardSweep(_Sweep):
    """One forward sweep: fills ``gates``, ``hs[1:]``, ``cs[1:]``, ``aux``, ``out``.

    ``kind`` (``RNN_TANH`` .. ``GRU_RA``), ``reverse`` (each sequence starts at its
    last real step).  ``x [T, B, D]``; ``lengths`` int64 ``[B]``; ``W_ih [GH, D]``,
    ``W_hh [GH, H]``, ``W_hhT = W_hh^T [H, GH]``.  ``hs [T+1, B, H]`` with ``hs[0]``
    the initial state; ``cs`` likewise for the LSTM (ignored otherwise); ``aux
    [T, B, H]``: LSTM ``tanh(c)``, GRU ``r*h``, GRU_RA ``W_hn h + b_hn`` (ignored
    for the RNN).  ``gates [T, B, GH]`` receives the post-activation gates, ``out
    [T, B, H]`` the output.  ``bx [GH]`` is the additive bias of every gate
    pre-activation (``b_ih + b_hh``; GRU_RA: ``b_in`` alone in the ``n`` block);
    ``bhn [H]`` is ``b_hn`` for GRU_RA (ignored otherwise).  ``hh [B, GH]`` scratch.
    All float32 or all float64, C-contiguous.  ``rows`` (int64 ``[B]``, a
    permutation) or None: sweep row ``b`` writes row ``rows[b]`` of ``out`` (the
    sweep's rows sorted longest first, ``out`` in the caller's order).
    """

    def __init__(self, int kind, bint reverse, x, lengths, W_ih, W_hh, W_hhT, gates, hs,
                 cs, aux, bx, bhn, out, hh, rows=None):
        self.ready, self.pins = False, []
        memset(&self.s, 0, sizeof(RnnSweep))
        self.double = _is_double(x)
        if self.double:
            _fill_common[double](self, kind, reverse, x, lengths, W_ih, W_hh, W_hhT, gates,
                                 hs, cs, aux)
            _fill_forward[double](self, gates, hs, cs, aux, bx, bhn, out, hh)
        else:
            _fill_common[float](self, kind, reverse, x, lengths, W_ih, W_hh, W_hhT, gates,
                                hs, cs, aux)
            _fill_forward[float](self, gates, hs, cs, aux, bx, bhn, out, hh)
        _fill_rows(self, rows)
        self.ready = True


cdef int _check_ready(_Sweep sweep) except -1:
    if not sweep.ready:
        raise ValueError(f"the {type(sweep).__name__} was not initialised")
    return 0


cdef Py_ssize_t _check_range(int phase, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                             str what) except -1:
    """The range ``[r0, r1)`` of a phase (``r1 == -1``: ``n``), checked against ``n``."""
    if r1 == -1:
        r1 = n
    if r0 < 0 or r1 < r0 or r1 > n:
        raise ValueError(f"phase {phase}: the range must satisfy 0 <= r0 <= r1 <= {n} "
                         f"({what}), got r0={r0}, r1={r1}")
    return r1


cdef int _check_all(Py_ssize_t r0, Py_ssize_t r1) except -1:
    if r0 != 0 or r1 != -1:
        raise ValueError(f"PHASE_ALL covers everything: r0 must be 0 and r1 -1, got "
                         f"r0={r0}, r1={r1}")
    return 0


cdef int _check_mode(int mode) except -1:
    if mode not in (STEP_AUTO, STEP_BLAS, STEP_PACKED):
        raise ValueError(f"mode must be one of {sorted(STEP_MODES.values())} "
                         f"({', '.join(STEP_MODES)}), got {mode}")
    return 0


cdef void* _packed_job(PackedJob* job, _Sweep sw, bint backward, int phase, Py_ssize_t r0,
                       Py_ssize_t r1, int mode, int threads) except? NULL:
    """For a step phase (``PH_ALL`` or ``PH_STEPS`` rows ``[r0, r1)``) that ``mode``
    resolves to ``STEP_PACKED``: fill ``job`` and allocate its buffers (one block,
    returned; the caller frees it), with a slot (products, row plan) for each of up
    to ``threads`` team threads.  Else NULL."""
    cdef RnnSweep* s = &sw.s
    if phase == PH_ALL:
        r0, r1 = 0, s.B
    elif phase != PH_STEPS or r1 <= r0:
        return NULL
    if mode == STEP_AUTO:
        mode = _step_mode(s.kind, s.B, s.H, not sw.double)
    if mode != STEP_PACKED:
        return NULL
    cdef Py_ssize_t isz = 8 if sw.double else 4
    cdef Py_ssize_t NR = NN_NR_D if sw.double else NN_NR_F
    cdef Py_ssize_t NQ = (s.H + NR - 1) // NR, G = s.GH // s.H, nbr = r1 - r0
    cdef Py_ssize_t npack = NQ * NR * s.GH
    cdef Py_ssize_t nloc = 0 if backward else packed_loc_size(nbr, G, NQ, NR)
    cdef Py_ssize_t nslots = threads
    cdef Py_ssize_t slot = nloc * isz + (nbr // 4 + 3 + 63) // 64 * 64
    cdef size_t nbytes = npack * isz + nslots * slot + 64
    cdef char* block = <char*> malloc(nbytes)
    if block == NULL:
        raise MemoryError(f"cannot allocate {nbytes} bytes for the packed recurrence")
    cdef char* base = <char*> ((<size_t> block + 63) & ~(<size_t> 63))
    memset(job, 0, sizeof(PackedJob))
    job.sw, job.double, job.b0, job.b1, job.NQ = s, sw.double, r0, r1, NQ
    job.pack = base
    job.slots, job.slot_size, job.loc_size = base + npack * isz, slot, nloc * isz
    job.one = nbr == 1
    return block


# the team rule (team_plan): flops per GEMM piece at least, flops per step at least
# for a step loop split over the team, pieces per GEMM phase at most
cdef double _PIECE_FLOPS = 1 << 22
cdef double _STEP_FLOPS = 1 << 20
cdef Py_ssize_t _MAX_PIECES = 2


def _set_team_rule(double piece_flops, double step_flops, Py_ssize_t max_pieces=2):
    """Testing and tuning hook: the team rule (flops per GEMM piece, flops per step for
    a split step loop, pieces per GEMM phase at most); returns the previous triple."""
    global _PIECE_FLOPS, _STEP_FLOPS, _MAX_PIECES
    if max_pieces < 1:
        raise ValueError(f"max_pieces must be >= 1, got {max_pieces}")
    old = (_PIECE_FLOPS, _STEP_FLOPS, _MAX_PIECES)
    _PIECE_FLOPS, _STEP_FLOPS, _MAX_PIECES = piece_flops, step_flops, max_pieces
    return old


def team_rule(Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H, int kind, bint double,
              int mode=STEP_AUTO):
    """``(rows_pieces, cols_pieces, split_steps)`` of a whole sweep of this shape: the
    fixed pieces of its ``T*B`` rows (input projection, ``grad_x``) and of its gate
    columns (weight gradients), and whether its step loop is split by unit blocks."""
    cdef RnnSweep s
    cdef TeamSweep ts
    cdef PackedJob job
    cdef Py_ssize_t NR = NN_NR_D if double else NN_NR_F
    memset(&s, 0, sizeof(RnnSweep))
    s.T, s.B, s.D, s.H, s.GH, s.kind = T, B, D, H, GATES[kind] * H, kind
    if mode == STEP_AUTO:
        mode = _step_mode(kind, B, H, not double)
    memset(&job, 0, sizeof(PackedJob))
    job.NQ = (H + NR - 1) // NR
    memset(&ts, 0, sizeof(TeamSweep))
    ts.sw, ts.phase, ts.job = &s, PH_ALL, &job if mode == STEP_PACKED else NULL
    team_plan(&ts, _PIECE_FLOPS, _STEP_FLOPS, _MAX_PIECES)
    return ts.rows_pieces, ts.cols_pieces, not ts.solo_steps


cdef int _check_threads(int threads) except -1:
    """``threads`` checked, then at most the team's size (a job never runs on more)."""
    cdef int size = nn_team.available()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return threads if threads < size else (size if size > 1 else 1)


cdef void _team_sweep(TeamSweep* ts, _Sweep sw, bint backward, int phase, Py_ssize_t r0,
                      Py_ssize_t r1, PackedJob* job, void* scr) noexcept:
    memset(ts, 0, sizeof(TeamSweep))
    ts.sw, ts.backward, ts.double, ts.phase, ts.r0, ts.r1 = (
        &sw.s, backward, sw.double, phase, r0, r1)
    ts.job, ts.scr, ts.stop = job, scr, PY_SSIZE_T_MAX
    team_plan(ts, _PIECE_FLOPS, _STEP_FLOPS, _MAX_PIECES)


def rnn_forward(ForwardSweep sweep not None, int phase=PH_ALL, Py_ssize_t r0=0,
                Py_ssize_t r1=-1, int mode=STEP_AUTO, int threads=1):
    """Run ``sweep`` (or one phase of it; ``r1 = -1``: to the end).

    ``PHASE_PROJ``: the input projection for rows ``[r0, r1)`` of ``T*B``;
    ``PHASE_STEPS``: the recurrence for batch rows ``[r0, r1)``, reading their
    projection from ``gates`` (so after every ``PHASE_PROJ`` range).

    ``mode`` (``STEP_MODES``): how the step loop computes its products -- the
    per-shape rule (``step_mode``), one BLAS call per step, or ``W_hh`` packed once
    per call and the micro-kernel of ``_rnn_pack.h`` (no BLAS calls in the loop; a
    row range gives the same bits as the whole batch).

    ``threads``: ``PHASE_ALL`` runs as one job of nn_core's thread team on up to
    this many threads (the input projection in fixed pieces, the packed step loop
    split by unit blocks; the same bits on any number).  Returns the threads the
    job ran on.
    """
    cdef RnnSweep* s = &sweep.s
    cdef bint double = sweep.double
    cdef PackedJob job
    cdef TeamSweep ts
    cdef void* block = NULL
    cdef int want, n = 1
    _check_ready(sweep)
    _check_mode(mode)
    threads = _check_threads(threads)
    if phase == PH_PROJ:
        r1 = _check_range(phase, r0, r1, s.T * s.B, "rows of T*B")
    elif phase == PH_STEPS:
        r1 = _check_range(phase, r0, r1, s.B, "batch rows")
    elif phase == PH_ALL:
        _check_all(r0, r1)
    else:
        raise ValueError(f"phase must be PHASE_ALL, PHASE_PROJ or PHASE_STEPS, got {phase}")
    block = _packed_job(&job, sweep, False, phase, r0, r1, mode, threads)
    cdef void* tmp = malloc(scratch_size(s, False) * (8 if double else 4))
    if tmp == NULL:
        free(block)
        raise MemoryError("rnn_forward: cannot allocate the per-step scratch")
    _team_sweep(&ts, sweep, False, phase, r0, r1, &job if block != NULL else NULL, tmp)
    want = team_want(&ts, threads)
    try:
        with nogil:
            n = nn_team.run(sweep_piece, &ts, want)
    finally:
        free(tmp)
        free(block)
    nn_stop_raise()                     # Ctrl-C stopped the step loop
    return n


# --------------------------------------------------------------------- backward --
cdef int _fill_backward(_Sweep sw, object grad_out, floating[:, ::1] dh, object dc,
                        floating[:, :, ::1] grad_x, floating[:, ::1] grad_W_ih,
                        floating[:, ::1] grad_W_hh, object grad_b_ih, object grad_b_hh,
                        floating[:, :, ::1] dGs, object dGt, object xh,
                        object gw) except -1:
    cdef RnnSweep* s = &sw.s
    cdef Py_ssize_t T = s.T, B = s.B, D = s.D, H = s.H, GH = s.GH
    cdef const floating[:, :, ::1] go_v
    cdef floating[:, ::1] dc_v
    cdef floating[::1] gbi_v
    cdef floating[::1] gbh_v
    cdef floating[:, :, ::1] dGt_v
    cdef floating[:, ::1] xh_v
    cdef floating[:, ::1] gw_v
    _shape(dh, "dh", (B, H))
    _shape(grad_x, "grad_x", (T, B, D))
    _shape(grad_W_ih, "grad_W_ih", (GH, D))
    _shape(grad_W_hh, "grad_W_hh", (GH, H))
    _shape(dGs, "dGs", (T, B, GH))
    s.dh, s.grad_x = <void*> &dh[0, 0], <void*> &grad_x[0, 0, 0]
    s.gW_ih, s.gW_hh = <void*> &grad_W_ih[0, 0], <void*> &grad_W_hh[0, 0]
    s.dGs = s.dGt = <void*> &dGs[0, 0, 0]
    sw.pins += [dh, grad_x, grad_W_ih, grad_W_hh, dGs]
    if grad_out is not None:
        go_v = grad_out
        _shape(go_v, "grad_out", (T, B, H))
        s.gout = &go_v[0, 0, 0]
        sw.pins.append(go_v)
    if s.kind == K_LSTM:
        dc_v = dc
        _shape(dc_v, "dc", (B, H))
        s.dc = <void*> &dc_v[0, 0]
        sw.pins.append(dc_v)
    if (grad_b_ih is None) != (grad_b_hh is None):
        raise ValueError("grad_b_ih and grad_b_hh must both be given or both be None")
    if grad_b_ih is not None:
        gbi_v, gbh_v = grad_b_ih, grad_b_hh
        _shape(gbi_v, "grad_b_ih", (GH,))
        _shape(gbh_v, "grad_b_hh", (GH,))
        s.gb_ih, s.gb_hh = <void*> &gbi_v[0], <void*> &gbh_v[0]
        sw.pins += [gbi_v, gbh_v]
    if dGt is not None:
        dGt_v = dGt
        _shape(dGt_v, "dGt", (T, B, GH))
        s.dGt = <void*> &dGt_v[0, 0, 0]
        sw.pins.append(dGt_v)
    if (s.reverse or s.kind == K_GRU_RA) and s.dGt == s.dGs:
        raise ValueError("dGt must be a separate buffer for reverse or GRU_RA")
    if (xh is None) != (gw is None):
        raise ValueError("xh and gw must both be given or both be None")
    if xh is not None:
        if s.reverse or s.kind >= K_GRU:
            raise ValueError("the fused weight gradient (xh, gw) needs the forward "
                             "direction and an RNN/LSTM kind")
        xh_v, gw_v = xh, gw
        _shape(xh_v, "xh", (T * B, D + H))
        _shape(gw_v, "gw", (GH, D + H))
        s.xh, s.gw = <void*> &xh_v[0, 0], <void*> &gw_v[0, 0]
        sw.pins += [xh_v, gw_v]
    return 0


cdef class BackwardSweep(_Sweep):
    """BPTT through what a :class:`ForwardSweep` stored.

    The first eleven arguments as for :class:`ForwardSweep` (the same arrays, after
    the forward).  ``grad_out [T, B, H]`` or None; ``dh [B, H]`` holds the gradient
    of the final state on entry and the gradient of the initial state on return
    (``dc`` likewise for the LSTM, ignored otherwise).  ``grad_x [T, B, D]`` is
    overwritten; ``grad_W_ih``, ``grad_W_hh`` and ``grad_b_ih``, ``grad_b_hh``
    (None when the cell has no bias) are accumulated into (``+=``).  Scratch: ``dGs
    [T, B, GH]``; ``dGt [T, B, GH]``, None to share ``dGs`` (not allowed for
    ``reverse`` or GRU_RA); ``xh [T*B, D+H]`` and ``gw [GH, D+H]``, or None: form
    both weight gradients in one GEMM (forward direction, RNN/LSTM only).  ``rows``:
    as for :class:`ForwardSweep`, the rows of ``grad_out`` read.
    """

    def __init__(self, int kind, bint reverse, x, lengths, W_ih, W_hh, W_hhT, gates, hs,
                 cs, aux, grad_out, dh, dc, grad_x, grad_W_ih, grad_W_hh, grad_b_ih,
                 grad_b_hh, dGs, dGt=None, xh=None, gw=None, rows=None):
        self.ready, self.pins = False, []
        memset(&self.s, 0, sizeof(RnnSweep))
        self.double = _is_double(x)
        if self.double:
            _fill_common[double](self, kind, reverse, x, lengths, W_ih, W_hh, W_hhT, gates,
                                 hs, cs, aux)
            _fill_backward[double](self, grad_out, dh, dc, grad_x, grad_W_ih, grad_W_hh,
                                   grad_b_ih, grad_b_hh, dGs, dGt, xh, gw)
        else:
            _fill_common[float](self, kind, reverse, x, lengths, W_ih, W_hh, W_hhT, gates,
                                hs, cs, aux)
            _fill_backward[float](self, grad_out, dh, dc, grad_x, grad_W_ih, grad_W_hh,
                                  grad_b_ih, grad_b_hh, dGs, dGt, xh, gw)
        _fill_rows(self, rows)
        self.ready = True


cdef void _fill_scratch(floating* scr, const RnnSweep* s) noexcept nogil:
    """``backward_sweep``'s scratch: zeros ``[H]`` and ones ``[T*B]`` after
    ``3*B*H`` free elements."""
    cdef Py_ssize_t i, z = 3 * s.B * s.H
    for i in range(s.H):
        scr[z + i] = 0
    for i in range(s.T * s.B):
        scr[z + s.H + i] = 1


def rnn_backward(BackwardSweep sweep not None, int phase=PH_ALL, Py_ssize_t r0=0,
                 Py_ssize_t r1=-1, int mode=STEP_AUTO, int threads=1):
    """Run ``sweep`` (or one phase of it; ``r1 = -1``: to the end), in this order:

    ``PHASE_STEPS``: BPTT for batch rows ``[r0, r1)`` (rows of ``dh``, ``dc`` outside
    the range are left alone); ``PHASE_GRAD_X``: ``grad_x`` (and the ``xh`` copy)
    for rows ``[r0, r1)`` of ``T*B``; ``PHASE_WGRAD``: the weight and bias gradients
    for gate columns ``[r0, r1)`` of ``G*H``.  ``mode``: the step loop, as in
    :func:`rnn_forward` (the same rule, so the backward takes the forward's mode).
    ``threads``: as for :func:`rnn_forward` (``grad_x`` and the weight gradients in
    fixed pieces).  Returns the threads the job ran on.
    """
    cdef RnnSweep* s = &sweep.s
    cdef bint double = sweep.double
    cdef PackedJob job
    cdef TeamSweep ts
    cdef void* block = NULL
    cdef int want, n = 1
    _check_ready(sweep)
    _check_mode(mode)
    threads = _check_threads(threads)
    if phase == PH_STEPS:
        r1 = _check_range(phase, r0, r1, s.B, "batch rows")
    elif phase == PH_GRAD_X:
        r1 = _check_range(phase, r0, r1, s.T * s.B, "rows of T*B")
    elif phase == PH_WGRAD:
        r1 = _check_range(phase, r0, r1, s.GH, "gate columns")
    elif phase == PH_ALL:
        _check_all(r0, r1)
    else:
        raise ValueError(f"phase must be PHASE_ALL, PHASE_STEPS, PHASE_GRAD_X or "
                         f"PHASE_WGRAD, got {phase}")
    block = _packed_job(&job, sweep, True, phase, r0, r1, mode, threads)
    cdef void* scr = malloc(scratch_size(s, True) * (8 if double else 4))
    if scr == NULL:
        free(block)
        raise MemoryError("rnn_backward: cannot allocate the scratch")
    _team_sweep(&ts, sweep, True, phase, r0, r1, &job if block != NULL else NULL, scr)
    want = team_want(&ts, threads)
    try:
        with nogil:
            if double:
                _fill_scratch(<double*> scr, s)
            else:
                _fill_scratch(<float*> scr, s)
            n = nn_team.run(sweep_piece, &ts, want)
    finally:
        free(scr)
        free(block)
    nn_stop_raise()
    return n

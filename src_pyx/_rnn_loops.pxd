# cython: language_level=3
"""The ``nogil`` loops of the sequence kernels over one validated :c:type:`RnnSweep`
(see ``_recurrent.pyx`` for the design and the layouts; header only)."""
from cpython.pyport cimport PY_SSIZE_T_MAX
from cython cimport floating
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from _blas cimport gemm, gemv
from _rnn_gates cimport (gru_bwd1, gru_bwd2, gru_fwd1, gru_fwd2, gru_ra_bwd, gru_ra_fwd,
                        lstm_bwd, lstm_fwd, rnn_bwd, rnn_fwd)
from _rnn_pack cimport nn_row_plan, pack_bwd, pack_fwd, panel_width, pgemm, pgemv
from _vmath cimport transpose

cdef extern from "_interrupt.h" nogil:
    int nn_stop_check(Py_ssize_t step)      # 1: a signal handler raised, stop the sweep
    int nn_stop_pending()

cdef extern from "_rnn_team.h" nogil:
    ctypedef void (*nn_team_fn)(void* arg, int t, int n) noexcept nogil
    ctypedef struct nn_team_api:
        int (*run)(nn_team_fn fn, void* arg, int want) noexcept nogil
        void (*barrier)(int n) noexcept nogil
        int (*available)() noexcept nogil
    const nn_team_api* nn_team
    int nn_team_import() except -1
    void nn_team_share(Py_ssize_t P, int t, int n, Py_ssize_t* p0, Py_ssize_t* p1) noexcept
    Py_ssize_t nn_rnn_load(const Py_ssize_t* p) noexcept
    void nn_rnn_store(Py_ssize_t* p, Py_ssize_t v) noexcept

cdef enum:
    K_RNN_TANH = 0
    K_RNN_RELU = 1
    K_LSTM = 2
    K_GRU = 3
    K_GRU_RA = 4


cdef enum:
    PH_ALL = 0      # the whole forward / backward
    PH_PROJ = 1     # forward: input projection for rows [r0, r1) of T*B
    PH_STEPS = 2    # forward / backward: the step loop for batch rows [r0, r1) of B
    PH_GRAD_X = 3   # backward: grad_x (and the x|h copy) for rows [r0, r1) of T*B
    PH_WGRAD = 4    # backward: weight and bias gradients for gate columns [r0, r1)


cdef struct RnnSweep:
    # One sequence sweep: sizes and the buffers of one dtype (``void*``: the loops
    # cast to their ``floating``), all C-contiguous, validated by _recurrent.pyx.
    # NULL where the cell kind or the direction does not use a buffer.
    int kind
    bint reverse
    Py_ssize_t T, B, D, H, GH
    const int64_t* lengths      # [B]
    const int64_t* rows         # [B] or NULL: the row of out / gout each row writes / reads
    const void* x               # [T, B, D]
    const void* W_ih            # [GH, D]
    const void* W_hh            # [GH, H]
    const void* W_hhT           # [H, GH]
    void* gates                 # [T, B, GH] post-activation gates (time order)
    void* hs                    # [T+1, B, H] (step order)
    void* cs                    # [T+1, B, H] LSTM
    void* aux                   # [T, B, H] LSTM tanh(c), GRU r*h, GRU_RA W_hn h + b_hn
    # forward
    const void* bx              # [GH]
    const void* bhn             # [H] GRU_RA
    void* out                   # [T, B, H]
    void* hh                    # [B, GH] per-step GEMM result
    # backward
    const void* gout            # [T, B, H] or NULL
    void* dh                    # [B, H] in: grad of the final state, out: of the initial
    void* dc                    # [B, H] LSTM, likewise
    void* grad_x                # [T, B, D]
    void* gW_ih                 # [GH, D] (+=)
    void* gW_hh                 # [GH, H] (+=)
    void* gb_ih                 # [GH] (+=) or NULL (no bias)
    void* gb_hh                 # [GH] (+=) or NULL
    void* dGs                   # [T, B, GH] gate gradients, step order
    void* dGt                   # [T, B, GH] time order (may be dGs: forward, not GRU_RA)
    void* xh                    # [T*B, D+H] or NULL: fused weight-gradient GEMM
    void* gw                    # [GH, D+H] or NULL


cdef inline Py_ssize_t scratch_size(const RnnSweep* sw, bint backward) noexcept nogil:
    """Elements of the scratch ``forward_sweep`` / ``backward_sweep`` take."""
    if backward:
        return 3 * sw.B * sw.H + sw.H + sw.T * sw.B
    return sw.B * sw.GH


cdef enum:
    REC_NN = 0      # h @ W^T as h @ WT (NN)
    REC_DOT = 1     # h @ W^T with W as stored (NT): the dot-product form
    REC_TR = 2      # the transposed product W h^T into scratch, transposed back


cdef inline int _rec_mode(Py_ssize_t B, Py_ssize_t H, bint single) noexcept nogil:
    """Per-step GEMM layout: ``REC_DOT`` for one row, ``REC_TR`` for float32 batches
    with ``H >= 256``, ``REC_NN`` otherwise -- the fastest form of each case with
    OpenBLAS (see ``_rec_fwd``)."""
    if B == 1:
        return REC_DOT
    return REC_TR if single and H >= 256 else REC_NN


cdef inline void _rec_fwd(int mode, Py_ssize_t B, Py_ssize_t N, Py_ssize_t H,
                          const floating* h, const floating* W, Py_ssize_t ldw,
                          const floating* WT, Py_ssize_t ldwt, floating* out,
                          Py_ssize_t ldo, floating* tmp) noexcept nogil:
    """``out[B, N] = h[B, H] @ W[N, H]^T``; ``WT = W^T [H, N]`` (same numbers);
    ``tmp [N*B]`` scratch for ``REC_TR``.

    ``REC_DOT`` (``h @ W^T``) streams ``W`` row by row, right for a single row;
    ``REC_NN`` (``h @ WT``) suits skinny batches; ``REC_TR`` computes ``out^T = W h^T``
    so that OpenBLAS packs the weight as its outer operand, then transposes the
    small ``[N, B]`` result back.
    """
    if mode == REC_DOT:
        gemm(False, True, <int> B, <int> N, <int> H, <floating> 1, h, <int> H,
             W, <int> ldw, <floating> 0, out, <int> ldo)
    elif mode == REC_TR:
        gemm(False, True, <int> N, <int> B, <int> H, <floating> 1, W, <int> ldw,
             h, <int> H, <floating> 0, tmp, <int> B)
        transpose(tmp, B, N, B, out, ldo, False)
    else:
        gemm(False, False, <int> B, <int> N, <int> H, <floating> 1, h, <int> H,
             WT, <int> ldwt, <floating> 0, out, <int> ldo)


cdef inline void _rec_bwd(int mode, Py_ssize_t B, Py_ssize_t H, Py_ssize_t N,
                          const floating* dG, Py_ssize_t ldg, const floating* W,
                          Py_ssize_t ldw, const floating* WT, Py_ssize_t ldwt,
                          floating beta, floating* out, floating* tmp) noexcept nogil:
    """``out[B, H] = dG[B, N] @ W[N, H] + beta * out`` (``beta`` 0 or 1); same layout
    rule as ``_rec_fwd`` (``REC_TR``: ``out^T = WT @ dG^T`` into ``tmp [H*B]``)."""
    if mode == REC_DOT:
        gemm(False, True, <int> B, <int> H, <int> N, <floating> 1, dG, <int> ldg,
             WT, <int> ldwt, beta, out, <int> H)
    elif mode == REC_TR:
        gemm(False, True, <int> H, <int> B, <int> N, <floating> 1, WT, <int> ldwt,
             dG, <int> ldg, <floating> 0, tmp, <int> B)
        transpose(tmp, B, H, B, out, H, beta != 0)
    else:
        gemm(False, False, <int> B, <int> H, <int> N, <floating> 1, dG, <int> ldg,
             W, <int> ldw, beta, out, <int> H)


cdef inline Py_ssize_t _tau(bint reverse, Py_ssize_t s, Py_ssize_t L) noexcept nogil:
    if reverse and s < L:
        return L - 1 - s
    return s


cdef inline Py_ssize_t active_end(const int64_t* lengths, Py_ssize_t b0, Py_ssize_t b1,
                                  Py_ssize_t s) noexcept nogil:
    """One past the last row of ``[b0, b1)`` still running at step (or time) ``s``
    (``b0`` when none is).  With lengths sorted longest first the running rows are
    exactly ``[b0, end)``; otherwise padded rows inside are handled as padding."""
    while b1 > b0 and lengths[b1 - 1] <= s:
        b1 -= 1
    return b1


cdef inline Py_ssize_t next_run(const int64_t* lengths, Py_ssize_t T, Py_ssize_t B,
                                Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t* t,
                                Py_ssize_t* start) noexcept nogil:
    """The next run of real rows of ``[T*B]`` within ``[r0, r1)`` from time ``*t`` on:
    returns its end and sets ``*start`` (0 rows left: returns ``*start``).  Times
    whose rows are all real join the next time's rows into one run, so an unpadded
    batch is a single run."""
    cdef Py_ssize_t a, e
    start[0] = r1
    while t[0] < T:
        a = t[0] * B
        e = a + active_end(lengths, 0, B, t[0])
        if a < r0:
            a = r0
        if e > r1:
            e = r1
        t[0] += 1
        if e <= a:
            if t[0] * B >= r1:
                break
            continue
        start[0] = a
        while e == t[0] * B and t[0] < T and e < r1:     # full time: extend
            e = t[0] * B + active_end(lengths, 0, B, t[0])
            if e > r1:
                e = r1
            t[0] += 1
        return e
    return start[0]


cdef enum:
    GATHER_ROWS = 256     # short runs of real rows are gathered into GEMMs of this many


cdef inline void _flush(bint tw, Py_ssize_t nb, Py_ssize_t K, const floating* W,
                        Py_ssize_t N, floating* abuf, floating* cbuf, Py_ssize_t* runs,
                        Py_ssize_t nr, floating* C) noexcept nogil:
    cdef Py_ssize_t i, r, k = 0
    if nb == 0:
        return
    gemm(False, tw, <int> nb, <int> N, <int> K, <floating> 1, abuf, <int> K, W,
         <int> (K if tw else N), <floating> 0, cbuf, <int> N)
    for i in range(nr):
        for r in range(runs[2 * i], runs[2 * i + 1]):
            memcpy(C + r * N, cbuf + k * N, N * sizeof(floating))
            k += 1


cdef inline void real_rows_gemm(const RnnSweep* sw, bint tw, Py_ssize_t r0, Py_ssize_t r1,
                                const floating* A, Py_ssize_t K, const floating* W,
                                Py_ssize_t N, floating* C, bint zero_pad) noexcept nogil:
    """``C[r] = A[r] @ op(W)`` for the real rows ``r`` of ``[r0, r1)`` of ``T*B`` (``A
    [*, K]``, ``C [*, N]``; ``op(W)``: ``W^T``, ``W [N, K]``, when ``tw``, else ``W
    [K, N]``).  A run of at least ``GATHER_ROWS`` rows is one GEMM in place; shorter
    runs are gathered into GEMMs of about ``GATHER_ROWS`` rows, as one GEMM per short
    run would repack ``W`` each time.  ``zero_pad``: padded rows of ``C`` are set to 0."""
    cdef Py_ssize_t a, e, r, t = 0, done = r0, nb = 0, nr = 0, cap = 2 * GATHER_ROWS
    cdef floating* abuf = <floating*> malloc(cap * (K + N) * sizeof(floating)
                                             + cap * sizeof(Py_ssize_t))
    cdef floating* cbuf = abuf + cap * K
    cdef Py_ssize_t* runs = <Py_ssize_t*> (cbuf + cap * N)
    while True:
        e = next_run(sw.lengths, sw.T, sw.B, r0, r1, &t, &a)
        if zero_pad and a > done:
            memset(C + done * N, 0, (a - done) * N * sizeof(floating))
        if e <= a:
            break
        done = e
        if e - a >= GATHER_ROWS or abuf == NULL:
            gemm(False, tw, <int> (e - a), <int> N, <int> K, <floating> 1, A + a * K,
                 <int> K, W, <int> (K if tw else N), <floating> 0, C + a * N, <int> N)
            continue
        memcpy(abuf + nb * K, A + a * K, (e - a) * K * sizeof(floating))
        runs[2 * nr], runs[2 * nr + 1] = a, e
        nb += e - a
        nr += 1
        if nb >= GATHER_ROWS:
            _flush(tw, nb, K, W, N, abuf, cbuf, runs, nr, C)
            nb = nr = 0
    if abuf != NULL:
        _flush(tw, nb, K, W, N, abuf, cbuf, runs, nr, C)
        free(abuf)


# ---------------------------------------------------------------- packed steps --
# STEP_PACKED: W_hh packed once per sweep (_rnn_pack.h) and each step's product
# computed by the micro-kernel unit block by unit block (NQ = ceil(H/NR) blocks of NR
# units, the columns of every gate for those units): in the forward each block's
# products are followed by its gate pass while they are in cache (_fwd_segment), BPTT
# runs its gate passes NR units at a time before the product (_bwd_prod).  The step
# loops themselves (_fwd_steps, _bptt) are those of STEP_BLAS, through StepProduct.
# Every element of a product is one chain of multiply-adds over k in order, whatever
# the row block, so a sweep over a row range gives the same bits as the whole sweep.

cdef enum:
    STEP_AUTO = -1      # the rule below
    STEP_BLAS = 0       # one BLAS product per step (layout: _rec_mode)
    STEP_PACKED = 1     # packed W_hh and the micro-kernel


cdef struct PackedJob:
    # One packed sweep (forward or backward) of batch rows [b0, b1) of ``sw``; in a
    # team each thread runs on its own copy (loc and plan in its slot).
    const RnnSweep* sw
    bint double
    Py_ssize_t b0, b1
    Py_ssize_t NQ                 # unit blocks of NR (panel width) units
    void* pack                    # the packed panels (32-byte aligned)
    void* loc                     # forward: the products of one unit block (all rows)
    unsigned char* plan           # row blocks of b1 - b0 rows (nn_row_plan)
    int nb
    bint one                      # the sweep has one row: matrix-vector products
    void* slots                   # per thread of a team: its loc, then its plan
    Py_ssize_t slot_size          # bytes per slot (a multiple of 64)
    Py_ssize_t loc_size           # bytes of a slot's loc


cdef inline int step_mode(int kind, Py_ssize_t B, Py_ssize_t H, bint single) noexcept nogil:
    """``STEP_PACKED`` or ``STEP_BLAS`` for a sweep of ``B`` rows and ``H`` units: the
    faster of the two on one thread, measured per shape (docs/performance.md).  It
    does not depend on the thread count, so a sweep gives the same numbers on any.
    One row: always packed (OpenBLAS's one-row GEMM runs far below its rate).
    Batches: packed, except the Elman cell's float32 ``H >= 256`` and float64 GRU and
    Elman cells with ``H < 256``, where BLAS was as fast or faster."""
    if B == 1:
        return STEP_PACKED
    if kind == K_RNN_TANH or kind == K_RNN_RELU:
        if single and H >= 256:
            return STEP_BLAS
    if not single and kind != K_LSTM and H < 256:
        return STEP_BLAS
    return STEP_PACKED


cdef inline Py_ssize_t packed_loc_size(Py_ssize_t nbr, Py_ssize_t G, Py_ssize_t NQ,
                                       Py_ssize_t NR) noexcept nogil:
    """Elements of the forward scratch of a packed sweep over ``nbr`` rows."""
    cdef Py_ssize_t n = (NQ if NQ > nbr else nbr) * G * NR
    return (n + 15) // 16 * 16


cdef struct StepProduct:
    # The per-step product with W_hh in one of its two forms (the only difference
    # between the step loops of STEP_BLAS and STEP_PACKED): one BLAS call per product,
    # or the micro-kernel on W_hh packed once per sweep (the forward then runs each
    # unit block's gate pass right after its product, BPTT its gate passes one panel
    # of units at a time).
    int form                # STEP_BLAS or STEP_PACKED
    int layout              # STEP_BLAS: the GEMM layout (_rec_mode)
    void* tmp               # STEP_BLAS: the scratch of REC_TR
    PackedJob* job          # STEP_PACKED: the job, W_hh packed in job.pack
    Py_ssize_t width        # BPTT: units per gate-pass call (H, or one panel)
    Py_ssize_t q0, q1       # STEP_PACKED: the unit blocks whose products this thread runs
    Py_ssize_t u0, u1       # the units whose gates, states and gradients it owns
    int t, nth              # thread t of the nth of a team job (nth 1: alone)
    Py_ssize_t* stop        # nth > 1: the job's stop word (_stopped; PY_SSIZE_T_MAX: none)


cdef inline void _sync(const StepProduct* sp) noexcept nogil:
    """Wait for the job's other threads (alone: nothing to wait for)."""
    if sp.nth > 1:
        nn_team.barrier(sp.nth)


cdef inline bint _stopped(const StepProduct* sp, Py_ssize_t i) noexcept nogil:
    """True when the step loop must leave before its ``i``-th step (Ctrl-C).  In a
    team only thread 0 runs the signal handlers; it publishes the stop as the step
    count after which every thread leaves, so all threads leave at the same step
    (``_rnn_team.h``)."""
    if sp.nth <= 1:
        return nn_stop_check(i) != 0
    if sp.t == 0 and nn_rnn_load(sp.stop) == PY_SSIZE_T_MAX and nn_stop_check(i):
        nn_rnn_store(sp.stop, i + 1)
    return nn_rnn_load(sp.stop) <= i


cdef inline void _units(floating* row, const floating* src, Py_ssize_t G, Py_ssize_t H,
                        Py_ssize_t u0, Py_ssize_t u1) noexcept nogil:
    """Units ``[u0, u1)`` of each of the ``G`` gates of a ``[G*H]`` row: copied from
    ``src``, or set to 0 when ``src`` is NULL."""
    cdef Py_ssize_t g
    cdef size_t n = (u1 - u0) * sizeof(floating)
    if u0 == 0 and u1 == H:
        n *= G
        G = 1
    for g in range(G):
        if src == NULL:
            memset(row + g * H + u0, 0, n)
        else:
            memcpy(row + g * H + u0, src + g * H + u0, n)


cdef inline Py_ssize_t _step_rows(const StepProduct* sp, const int64_t* lengths,
                                  Py_ssize_t b0, Py_ssize_t b1, Py_ssize_t s) noexcept nogil:
    """The end of the rows of ``[b0, b1)`` running at step ``s`` (``active_end``); a
    packed job's row plan follows it.  A BLAS product keeps at least two rows (a
    padded row's result is unused), as one-row GEMMs may take another summation
    order inside BLAS."""
    cdef Py_ssize_t e = active_end(lengths, b0, b1, s)
    cdef PackedJob* job = sp.job
    if sp.form == STEP_PACKED:
        if e != job.b1 and not job.one:
            job.b1 = e
            if e > b0:
                job.nb = nn_row_plan(e - b0, job.plan)
        return e
    if e == b0 + 1 and b1 - b0 > 1:
        return b0 + 2
    return e


cdef inline void _fwd_gates(const RnnSweep* sw, Py_ssize_t s, Py_ssize_t b0, Py_ssize_t b1,
                            Py_ssize_t u, Py_ssize_t nu, const floating* hr, Py_ssize_t ldr,
                            Py_ssize_t R, bint second) noexcept nogil:
    """Gate pass of units ``[u, u+nu)`` for rows ``[b0, b1)`` of step ``s``; ``hr`` is row
    ``b0``'s product (``ldr`` between rows, gate stride ``R``); ``second``: the GRU's
    second pass (``n`` and ``h``)."""
    cdef int kind = sw.kind
    cdef Py_ssize_t B = sw.B, H = sw.H, GH = sw.GH, b, L, tau
    cdef const int64_t* lengths = sw.lengths
    cdef floating* gates = <floating*> sw.gates
    cdef floating* hp = <floating*> sw.hs + s * B * H
    cdef floating* hn = hp + B * H
    cdef floating* cs = <floating*> sw.cs
    cdef floating* aux = <floating*> sw.aux
    cdef floating* out = <floating*> sw.out
    cdef const int64_t* rows = sw.rows
    cdef Py_ssize_t ob
    cdef const floating* bx = <const floating*> sw.bx + u
    cdef const floating* bhn = <const floating*> sw.bhn
    cdef size_t nbytes = nu * sizeof(floating)
    cdef floating* a
    cdef floating* o
    cdef const floating* r
    for b in range(b0, b1):
        L = lengths[b]
        if s >= L:                            # padding: carry the state, output 0
            if second:
                continue
            memcpy(hn + b * H + u, hp + b * H + u, nbytes)
            if kind == K_LSTM:
                memcpy(cs + ((s + 1) * B + b) * H + u, cs + (s * B + b) * H + u, nbytes)
            if kind == K_GRU:
                memset(aux + (s * B + b) * H + u, 0, nbytes)
            ob = rows[b] if rows != NULL else b
            memset(out + (s * B + ob) * H + u, 0, nbytes)
            continue
        tau = _tau(sw.reverse, s, L)
        a = gates + (tau * B + b) * GH + u
        ob = rows[b] if rows != NULL else b
        o = out + (tau * B + ob) * H + u
        r = hr + (b - b0) * ldr
        if second:
            gru_fwd2(a, r, bx, hp + b * H + u, hn + b * H + u, o, nu, H)
        elif kind == K_LSTM:
            lstm_fwd(a, r, bx, cs + (s * B + b) * H + u, cs + ((s + 1) * B + b) * H + u,
                     aux + (s * B + b) * H + u, hn + b * H + u, o, nu, H, R)
        elif kind == K_RNN_TANH or kind == K_RNN_RELU:
            rnn_fwd(a, r, bx, hn + b * H + u, o, nu, kind == K_RNN_RELU)
        elif kind == K_GRU_RA:
            gru_ra_fwd(a, r, bx, bhn + u, hp + b * H + u, aux + (s * B + b) * H + u,
                       hn + b * H + u, o, nu, H, R)
        else:
            gru_fwd1(a, r, bx, hp + b * H + u, aux + (s * B + b) * H + u, nu, H, R)


cdef inline void _fwd_segment(PackedJob* job, const floating* A, const floating* P,
                              Py_ssize_t first, Py_ssize_t Gs, Py_ssize_t s, Py_ssize_t q0,
                              Py_ssize_t q1, floating* loc, bint second) noexcept nogil:
    """Products of the ``Gs`` gates whose panels start at ``first`` (``Gs`` per unit
    block) for unit blocks ``[q0, q1)``, each followed by its gate pass.  ``A``: row
    ``b0`` of the left operand (``h`` or ``r*h``, row stride ``H``)."""
    cdef const RnnSweep* sw = job.sw
    cdef Py_ssize_t H = sw.H, NR = panel_width(A), psz = sw.H * panel_width(A)
    cdef Py_ssize_t b0 = job.b0, b1 = job.b1, q, g, u, nu
    if job.one:
        # one row: a matrix-vector product over all own panels, then the gate passes
        if q1 > q0:
            pgemv((q1 - q0) * Gs, H, A, P + (first + q0 * Gs) * psz, psz, loc, NR, False)
        for q in range(q0, q1):
            u = q * NR
            nu = NR if H - u > NR else H - u
            _fwd_gates(job.sw, s, b0, b1, u, nu, loc + (q - q0) * Gs * NR, 0, NR, second)
        return
    for q in range(q0, q1):
        for g in range(Gs):
            pgemm(job.plan, job.nb, H, A, H, P + (first + q * Gs + g) * psz, loc + g * NR,
                  Gs * NR, NR, False)
        u = q * NR
        nu = NR if H - u > NR else H - u
        _fwd_gates(job.sw, s, b0, b1, u, nu, loc, Gs * NR, NR, second)


cdef inline void _fwd_product(const StepProduct* sp, const RnnSweep* sw, const floating* A,
                              Py_ssize_t gate0, Py_ssize_t Gs, Py_ssize_t s, Py_ssize_t b0,
                              Py_ssize_t b1, floating* hr, bint second) noexcept nogil:
    """Step ``s``'s product ``A[b0:b1] @ W_hh[gate0*H:(gate0+Gs)*H]^T`` (``A``: row 0 of
    a ``[B, H]`` array; the ``Gs`` gates from ``gate0`` on) with its gate passes
    (``second``: the GRU's second pass).  BLAS: one call into ``hr [B, Gs*H]``, then
    the gate pass; packed: unit block by unit block (``_fwd_segment``)."""
    cdef Py_ssize_t H = sw.H, N = Gs * sw.H
    if sp.form == STEP_PACKED:
        _fwd_segment(sp.job, A + b0 * H, <const floating*> sp.job.pack, gate0 * sp.job.NQ,
                     Gs, s, sp.q0, sp.q1, <floating*> sp.job.loc, second)
        return
    _rec_fwd(sp.layout, b1 - b0, N, H, A + b0 * H, <const floating*> sw.W_hh + gate0 * H * H,
             H, <const floating*> sw.W_hhT + gate0 * H, sw.GH, hr + b0 * N, N,
             <floating*> sp.tmp)
    _fwd_gates(sw, s, b0, b1, 0, H, hr + b0 * N, N, H, second)


cdef inline void _fwd_steps(const RnnSweep* sw, const StepProduct* sp, floating* hh,
                            Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    """The forward step loop of batch rows ``[b0, b1)``, both forms: per step the
    recurrence product and the fused gate pass (the GRU: ``r, z`` and ``r*h`` first,
    then ``(r*h) W_hn^T``, ``n`` and ``h``).  ``hh``: ``sw.hh``, the BLAS products.
    In a team each thread runs the products and gate passes of its own units, and
    waits for the others once per step (the GRU: also before ``(r*h) W_hn^T``)."""
    cdef Py_ssize_t T = sw.T, B = sw.B, H = sw.H, s, e, u0 = sp.u0, nu = sp.u1 - sp.u0
    cdef Py_ssize_t G1 = 2 if sw.kind == K_GRU else sw.GH // sw.H
    cdef floating* hs = <floating*> sw.hs
    cdef floating* aux = <floating*> sw.aux
    for s in range(T):
        if _stopped(sp, s):
            return
        # rows [b0, e) still run: the products and gate passes cover only them
        e = _step_rows(sp, sw.lengths, b0, b1, s)
        if e < b1 and nu > 0:                  # the rest carry their state
            _fwd_gates(sw, s, e, b1, u0, nu, hh, 0, H, False)
        if e > b0:
            _fwd_product(sp, sw, hs + s * B * H, 0, G1, s, b0, e, hh, False)
            if sw.kind == K_GRU:               # every unit of r*h before (r*h) W_hn^T
                _sync(sp)
                _fwd_product(sp, sw, aux + s * B * H, G1, 1, s, b0, e, hh + B * G1 * H,
                             True)
        if s + 1 < T:                          # every unit of h_{s+1} before step s+1
            _sync(sp)


cdef inline void _bwd_prod(PackedJob* job, const floating* A, Py_ssize_t koff, Py_ssize_t K,
                           const floating* P, Py_ssize_t q0, Py_ssize_t q1, floating* C,
                           bint acc) noexcept nogil:
    """``C[b0:b1, own units] (+)= A[b0:b1, koff:koff+K] @ W_hh[koff:koff+K, own units]``
    (``A``, ``C``: row 0 of ``[B, G*H]`` / ``[B, H]`` arrays)."""
    cdef const RnnSweep* sw = job.sw
    cdef Py_ssize_t H = sw.H, GH = sw.GH, NR = panel_width(A), psz = sw.GH * panel_width(A)
    cdef Py_ssize_t b0 = job.b0, q, nu
    if q1 <= q0:
        return
    if job.one:
        nu = H - (q1 - 1) * NR              # columns of the last own panel
        if nu > NR:
            nu = NR
        pgemv(q1 - q0, K, A + b0 * GH + koff, P + q0 * psz + koff * NR, psz,
              C + b0 * H + q0 * NR, nu, acc)
        return
    for q in range(q0, q1):
        nu = NR if H - q * NR > NR else H - q * NR
        pgemm(job.plan, job.nb, K, A + b0 * GH + koff, GH, P + q * psz + koff * NR,
              C + b0 * H + q * NR, H, nu, acc)


# ------------------------------------------------------------------ team sweeps --
# A sweep (or one phase of it) runs as one job of the thread team (_team_api.h):
# the input projection, grad_x and the weight gradients in fixed pieces (gemm_pieces:
# cut by shape only, one single-threaded BLAS call per run of rows in a piece), the
# pieces shared out over the job's threads; the packed step loops split by unit
# blocks (thread t of n: blocks [NQ*t/n, NQ*(t+1)/n), the columns of every gate for
# those units), each thread packing, multiplying and running the gate passes of its
# own units.  Every element is computed by one thread in the same order whatever n
# is, so a sweep gives the same bits on any number of threads.  The BLAS step loop
# runs on thread 0 alone.

cdef struct TeamSweep:
    # One sweep's job: the sweep, the phase and its range, the step form and the
    # buffers the threads share.
    const RnnSweep* sw
    bint backward, double
    int phase
    Py_ssize_t r0, r1           # the phase's range (PH_ALL: unused)
    PackedJob* job              # STEP_PACKED: the template job (all step rows), else NULL
    void* scr                   # forward: the REC_TR scratch; backward: scratch_size's
    Py_ssize_t rows_pieces      # PH_ALL: pieces of the T*B rows (projection, grad_x)
    Py_ssize_t cols_pieces      # PH_ALL: pieces of the G*H gate columns (weight grads)
    bint solo_steps             # the step loop on thread 0 alone (a step too small)
    Py_ssize_t stop             # the stop word (_stopped; PY_SSIZE_T_MAX: none)


cdef inline Py_ssize_t gemm_pieces(Py_ssize_t extent, Py_ssize_t align, double flops,
                                   double piece_flops, Py_ssize_t most) noexcept nogil:
    """Fixed pieces of a GEMM phase over ``extent`` rows or columns: a power of two up
    to ``most``, each of at least ``piece_flops`` and ``align`` rows (the shape alone
    decides, never the thread count)."""
    cdef Py_ssize_t p = 1
    while p * 2 <= most and p * 2 <= extent // align and flops >= p * 2 * piece_flops:
        p *= 2
    return p


cdef inline void piece_range(Py_ssize_t extent, Py_ssize_t pieces, Py_ssize_t align,
                             Py_ssize_t p, Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Piece ``p`` of ``pieces`` of ``[0, extent)``: blocks of a multiple of ``align``."""
    cdef Py_ssize_t block = (extent + pieces - 1) // pieces
    block = (block + align - 1) // align * align
    lo[0] = p * block if p * block < extent else extent
    hi[0] = lo[0] + block if lo[0] + block < extent else extent


cdef inline void team_plan(TeamSweep* ts, double piece_flops, double step_flops,
                           Py_ssize_t most) noexcept nogil:
    """The job's fixed pieces (at most ``most``, of at least ``piece_flops`` each) and
    whether its step loop runs on thread 0 alone (a BLAS step loop, or steps of fewer
    than ``step_flops``: too small to gain from a barrier per step): by shape only."""
    cdef const RnnSweep* sw = ts.sw
    cdef double rows = <double> sw.T * sw.B
    ts.rows_pieces = gemm_pieces(sw.T * sw.B, 1, 2.0 * rows * sw.D * sw.GH, piece_flops,
                                 most)
    ts.cols_pieces = gemm_pieces(sw.GH, 16, 2.0 * rows * (sw.D + sw.H) * sw.GH,
                                 piece_flops, most)
    ts.solo_steps = (ts.job == NULL or ts.job.NQ < 2
                     or 2.0 * sw.B * sw.GH * sw.H < step_flops)


cdef inline int team_want(const TeamSweep* ts, int threads) noexcept nogil:
    """Threads to ask the team for (at most ``threads``): 1 for a phase with a range;
    else as many as the pieces and the unit blocks can use."""
    cdef Py_ssize_t most = ts.rows_pieces
    if ts.backward and ts.cols_pieces > most:
        most = ts.cols_pieces
    if not ts.solo_steps and ts.job.NQ > most:
        most = ts.job.NQ
    if ts.phase != PH_ALL or threads <= 1:
        return 1
    return <int> (threads if threads < most else most)


cdef inline void _team_steps(TeamSweep* ts, int t, int n, const floating* like) noexcept nogil:
    """Thread ``t`` of ``n``: its part of the step loop of the job's step rows."""
    cdef const RnnSweep* sw = ts.sw
    cdef PackedJob* tpl = ts.job
    cdef PackedJob own
    cdef StepProduct sp
    cdef Py_ssize_t H = sw.H, G = sw.GH // sw.H, B = sw.B, NR = panel_width(like), b0, b1
    cdef floating* scr = <floating*> ts.scr
    if ts.phase == PH_ALL:
        b0, b1 = 0, B
    else:
        b0, b1 = ts.r0, ts.r1
    if b1 <= b0:
        return
    memset(&sp, 0, sizeof(StepProduct))
    if ts.solo_steps:                        # thread 0 alone, every unit block
        if t != 0:
            return
        n = 1
    sp.t, sp.nth, sp.stop, sp.u0, sp.u1 = t, n, &ts.stop, 0, H
    if tpl == NULL:                          # one BLAS product per step
        sp.form, sp.layout, sp.tmp = STEP_BLAS, _rec_mode(b1 - b0, H, floating is float), scr
        sp.width = H
    else:                                    # the micro-kernel on own packed panels
        own = tpl[0]
        own.loc = <char*> tpl.slots + t * tpl.slot_size
        own.plan = <unsigned char*> own.loc + tpl.loc_size
        own.nb = nn_row_plan(b1 - b0, own.plan)
        nn_team_share(tpl.NQ, t, n, &sp.q0, &sp.q1)
        sp.u0 = sp.q0 * NR if sp.q0 * NR < H else H
        sp.u1 = sp.q1 * NR if sp.q1 * NR < H else H
        sp.form, sp.job, sp.width = STEP_PACKED, &own, NR
        if ts.backward:
            pack_bwd(<const floating*> sw.W_hh, H, sw.GH, sp.q0, sp.q1,
                     <floating*> tpl.pack)
        else:
            pack_fwd(<const floating*> sw.W_hh, H, G, 2 if sw.kind == K_GRU else G,
                     sp.q0, sp.q1, <floating*> tpl.pack)
    if ts.backward:
        _bptt(sw, &sp, scr + B * H, scr + 2 * B * H, scr + 3 * B * H, b0, b1)
    else:
        _fwd_steps(sw, &sp, <floating*> sw.hh, b0, b1)


cdef inline bint _team_stopped(TeamSweep* ts, int t, int n) noexcept nogil:
    """After a step loop: whether it was stopped, the same answer on every thread
    (thread 0's interrupt state, published before a barrier)."""
    if t == 0 and nn_stop_pending():
        nn_rnn_store(&ts.stop, 0)
    if n > 1:
        nn_team.barrier(n)
    return nn_rnn_load(&ts.stop) != PY_SSIZE_T_MAX


# --------------------------------------------------------------------- forward --
cdef inline void forward_sweep(TeamSweep* ts, int t, int n, const floating* like) noexcept nogil:
    """Thread ``t`` of ``n`` of a forward job.  ``phase`` (``PH_*``): ``PH_PROJ`` the
    input projection for rows ``[r0, r1)`` of ``T*B``; ``PH_STEPS`` the recurrence
    for batch rows ``[r0, r1)`` only (rows never interact, so two row ranges can run
    concurrently; every array keeps its full-batch layout); ``PH_ALL`` both over
    everything (the projection in its fixed pieces first).  With a packed job the
    recurrence runs on the packed ``W_hh``."""
    cdef const RnnSweep* sw = ts.sw
    cdef Py_ssize_t TB = sw.T * sw.B, p, p0, p1, lo, hi
    cdef const floating* x = <const floating*> sw.x
    cdef const floating* W_ih = <const floating*> sw.W_ih
    cdef floating* gates = <floating*> sw.gates

    # 1. input projection of the real steps: gates[t, b] = W_ih x[t, b], one GEMM
    #    per run of real rows of T*B (the gates of padded steps are never read)
    if ts.phase == PH_PROJ:
        if t == 0:
            real_rows_gemm(sw, True, ts.r0, ts.r1, x, sw.D, W_ih, sw.GH, gates, False)
        return
    if ts.phase == PH_ALL:
        nn_team_share(ts.rows_pieces, t, n, &p0, &p1)
        for p in range(p0, p1):
            piece_range(TB, ts.rows_pieces, 1, p, &lo, &hi)
            real_rows_gemm(sw, True, lo, hi, x, sw.D, W_ih, sw.GH, gates, False)
        if n > 1:
            nn_team.barrier(n)
    # 2. the step loop
    _team_steps(ts, t, n, like)


# -------------------------------------------------------------------- backward --
cdef inline void _bwd_product(const StepProduct* sp, const RnnSweep* sw, const floating* dG,
                              Py_ssize_t koff, Py_ssize_t K, floating* C, bint acc,
                              Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    """``C[b0:b1] (+)= dG[b0:b1, koff:koff+K] @ W_hh[koff:koff+K]`` (``dG``, ``C``:
    row 0 of ``[B, G*H]`` / ``[B, H]`` arrays; ``acc``: add to ``C``)."""
    cdef Py_ssize_t H = sw.H, GH = sw.GH
    if sp.form == STEP_PACKED:
        _bwd_prod(sp.job, dG, koff, K, <const floating*> sp.job.pack, sp.q0, sp.q1, C, acc)
    else:
        _rec_bwd(sp.layout, b1 - b0, H, K, dG + b0 * GH + koff, GH,
                 <const floating*> sw.W_hh + koff * H, H, <const floating*> sw.W_hhT + koff,
                 GH, <floating> (1 if acc else 0), C + b0 * H, <floating*> sp.tmp)


cdef inline void _bptt(const RnnSweep* sw, const StepProduct* sp, floating* dh2,
                       floating* drh, const floating* zrow, Py_ssize_t b0,
                       Py_ssize_t b1) noexcept nogil:
    """BPTT of batch rows ``[b0, b1)``: per step (last to first), the gate gradients
    ``dG`` and the direct part of ``grad h_prev``, then ``grad h_prev += dG @ W_hh``
    (the GRU: ``d(r*h) = dn @ W_hn`` first, then r's gradient, then the ``r, z``
    product).  ``dh2``, ``drh``: ``[B, H]`` scratch; ``zrow``: zeros ``[H]``.  In a
    team each thread runs the gate passes and products of its own units and waits for
    the others before the products (the GRU: also before the ``r, z`` product)."""
    cdef int kind = sw.kind
    cdef bint reverse = sw.reverse
    cdef Py_ssize_t T = sw.T, B = sw.B, H = sw.H, GH = sw.GH, H2 = 2 * sw.H
    cdef Py_ssize_t G = sw.GH // sw.H, u0 = sp.u0, u1 = sp.u1
    cdef Py_ssize_t w = sp.width, s, b, u, nu, L, tau, e
    cdef const int64_t* lengths = sw.lengths
    cdef const floating* gates = <const floating*> sw.gates
    cdef const floating* hs = <const floating*> sw.hs
    cdef const floating* cs = <const floating*> sw.cs
    cdef const floating* aux = <const floating*> sw.aux
    cdef const floating* gout = <const floating*> sw.gout
    cdef floating* dGs = <floating*> sw.dGs
    cdef floating* dGt = <floating*> sw.dGt
    cdef floating* dc = <floating*> sw.dc
    cdef floating* dh = <floating*> sw.dh
    cdef floating* dh_out = dh
    cdef bint sep = dGt != dGs
    cdef const floating* g
    cdef const floating* go
    cdef const floating* hp
    cdef floating* dst
    cdef floating* dgr
    cdef floating* dgx
    cdef floating* dgs
    cdef floating* tmp
    cdef size_t own = (u1 - u0) * sizeof(floating)

    for s in range(T - 1, -1, -1):
        if _stopped(sp, T - 1 - s):
            return
        dgs = dGs + s * B * GH
        e = _step_rows(sp, lengths, b0, b1, s)    # the products cover rows [b0, e)
        # 1. gate gradients (and the direct part of grad h_prev), w units per call
        for b in range(b0, b1):
            if u1 <= u0:
                break
            L = lengths[b]
            dst = dh2 + b * H
            dgr = dgs + b * GH
            if s >= L:                     # padding: no gradient, dh passes through
                _units(dgr, <const floating*> NULL, G, H, u0, u1)
                if sep:
                    _units(dGt + (s * B + b) * GH, <const floating*> NULL, G, H, u0, u1)
                memcpy(dst + u0, dh + b * H + u0, own)
                if kind == K_GRU:
                    memset(drh + b * H + u0, 0, own)
                continue
            tau = _tau(reverse, s, L)
            g = gates + (tau * B + b) * GH
            dgx = dGt + (tau * B + b) * GH
            go = (gout + (tau * B + (sw.rows[b] if sw.rows != NULL else b)) * H
                  if gout != NULL else zrow)
            hp = hs + (s * B + b) * H
            u = u0
            while u < u1:
                nu = w if u1 - u > w else u1 - u
                if kind == K_LSTM:
                    lstm_bwd(g + u, aux + (s * B + b) * H + u, cs + (s * B + b) * H + u,
                             dh + b * H + u, go + u, dc + b * H + u, dgr + u, nu, H)
                elif kind == K_RNN_TANH or kind == K_RNN_RELU:
                    rnn_bwd(g + u, dh + b * H + u, go + u, dgr + u, nu, kind == K_RNN_RELU)
                elif kind == K_GRU_RA:
                    gru_ra_bwd(g + u, aux + (s * B + b) * H + u, hp + u, dh + b * H + u,
                               go + u, dgx + u, dgr + u, dst + u, nu, H)
                else:                           # K_GRU, first pass: z and n
                    gru_bwd1(g + u, hp + u, dh + b * H + u, go + u, dgr + u, dst + u, nu, H)
                u += nu
            if kind <= K_LSTM:
                memset(dst + u0, 0, own)
        # 2. the products with W_hh, once every gate gradient of the step is there
        if e > b0:
            _sync(sp)
        if e == b0:
            pass
        elif kind == K_GRU:
            # d(r*h) = dn @ W_hn; then r's gradient and the r*h path to h_prev
            _bwd_product(sp, sw, dgs, H2, H, drh, False, b0, e)
            for b in range(b0, e):
                L = lengths[b]
                if s >= L:
                    continue
                tau = _tau(reverse, s, L)
                g = gates + (tau * B + b) * GH
                hp = hs + (s * B + b) * H
                u = u0
                while u < u1:
                    nu = w if u1 - u > w else u1 - u
                    gru_bwd2(g + u, hp + u, drh + b * H + u, dgs + b * GH + u,
                             dh2 + b * H + u, nu)
                    u += nu
            _sync(sp)                               # every r gradient
            _bwd_product(sp, sw, dgs, 0, H2, dh2, True, b0, e)
        else:
            _bwd_product(sp, sw, dgs, 0, GH, dh2, True, b0, e)
        if sep and kind != K_GRU_RA and u1 > u0:
            for b in range(b0, b1):
                L = lengths[b]
                if s < L:
                    tau = _tau(reverse, s, L)
                    _units(dGt + (tau * B + b) * GH, dgs + b * GH, G, H, u0, u1)
        tmp = dh
        dh = dh2
        dh2 = tmp
    if dh != dh_out and u1 > u0:
        for b in range(b0, b1):
            memcpy(dh_out + b * H + u0, dh + b * H + u0, own)


cdef inline void _input_grads(const RnnSweep* sw, const floating* x, const floating* W_ih,
                              const floating* hs, const floating* dGt, floating* grad_x,
                              floating* xh, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """``grad_x = dG_time @ W_ih`` for rows ``[r0, r1)`` of ``T*B`` (0 at padding; one
    GEMM per run of real rows), and (when ``xh`` is given) the copy of the real rows
    of ``[x | h_prev]`` for the fused weight GEMM."""
    cdef Py_ssize_t D = sw.D, H = sw.H, DH = sw.D + sw.H, r, a, e, t = 0
    real_rows_gemm(sw, False, r0, r1, dGt, sw.GH, W_ih, D, grad_x, True)
    if xh == NULL:
        return
    while True:
        e = next_run(sw.lengths, sw.T, sw.B, r0, r1, &t, &a)
        if e <= a:
            break
        for r in range(a, e):
            memcpy(xh + r * DH, x + r * D, D * sizeof(floating))
            memcpy(xh + r * DH + D, hs + r * H, H * sizeof(floating))


cdef struct WgradRows:
    # One block of real rows for the weight gradients: row 0 of each operand and its
    # row stride (the arrays in place for a long run, gathered copies otherwise); the
    # gate-gradient pointers already at column g0.
    Py_ssize_t n
    const void* dgs
    const void* dgt
    Py_ssize_t ldg
    const void* x
    Py_ssize_t ldx
    const void* h
    const void* aux


cdef inline void _wgrad_block(const RnnSweep* sw, const WgradRows* r, floating* gW_ih,
                              floating* gW_hh, floating* gw, floating* v, floating* gb_ih,
                              floating* gb_hh, const floating* ones, bint fused,
                              bint first, Py_ssize_t g0, Py_ssize_t g1) noexcept nogil:
    """The weight and bias gradients' products over one block of real rows (``+=``;
    ``gw`` and ``v`` are set by the first block)."""
    cdef int kind = sw.kind, n = <int> r.n
    cdef Py_ssize_t D = sw.D, H = sw.H, H2 = 2 * sw.H, ng = g1 - g0, lo, hi
    cdef const floating* dgs = <const floating*> r.dgs
    cdef const floating* dgt = <const floating*> r.dgt
    cdef const floating* x = <const floating*> r.x
    cdef const floating* h = <const floating*> r.h
    cdef const floating* aux = <const floating*> r.aux
    cdef int ldg = <int> r.ldg, ldx = <int> r.ldx
    cdef floating beta = 0 if first else 1
    if fused:
        # one GEMM for both weight gradients: [gW_ih | gW_hh] = dG^T [x | h_prev]
        # (forward direction, RNN/LSTM only: there dG_time is dG_step)
        gemm(True, False, <int> ng, <int> (D + H), n, <floating> 1, dgs, ldg, x, ldx, beta,
             gw + g0 * (D + H), <int> (D + H))
    else:
        gemm(True, False, <int> ng, <int> D, n, <floating> 1, dgt, ldg, x, ldx,
             <floating> 1, gW_ih + g0 * D, <int> D)
        if kind == K_GRU:
            # rows [0, 2H) (r, z) multiply h_prev, rows [2H, 3H) (n) multiply r*h_prev
            lo, hi = g0, (g1 if g1 < H2 else H2)
            if hi > lo:
                gemm(True, False, <int> (hi - lo), <int> H, n, <floating> 1, dgs, ldg,
                     h, <int> H, <floating> 1, gW_hh + lo * H, <int> H)
            lo, hi = (g0 if g0 > H2 else H2), g1
            if hi > lo:
                gemm(True, False, <int> (hi - lo), <int> H, n, <floating> 1,
                     dgs + (lo - g0), ldg, aux, <int> H, <floating> 1, gW_hh + lo * H,
                     <int> H)
        else:
            gemm(True, False, <int> ng, <int> H, n, <floating> 1, dgs, ldg, h, <int> H,
                 <floating> 1, gW_hh + g0 * H, <int> H)
    if v != NULL:
        gemv(True, n, <int> ng, <floating> 1, dgs, ldg, ones, beta, v)
    elif gb_ih != NULL:
        gemv(True, n, <int> ng, <floating> 1, dgt, ldg, ones, <floating> 1, gb_ih + g0)
        gemv(True, n, <int> ng, <floating> 1, dgs, ldg, ones, <floating> 1, gb_hh + g0)


cdef inline void _weight_grads(const RnnSweep* sw, const floating* x, const floating* hs,
                               const floating* aux, const floating* dGs,
                               const floating* dGt, floating* gW_ih, floating* gW_hh,
                               floating* gb_ih, floating* gb_hh, const floating* ones,
                               floating* xh, floating* gw, Py_ssize_t g0,
                               Py_ssize_t g1) noexcept nogil:
    """Weight and bias gradients for gate rows ``[g0, g1)`` of ``G*H`` over the real
    rows of ``T*B`` (accumulated into, ``+=``): a long run of them in place, shorter
    runs gathered into blocks of about ``GATHER_ROWS`` rows (as for ``real_rows_gemm``:
    a product per short run would read and write the whole gradient each time)."""
    cdef int kind = sw.kind
    cdef Py_ssize_t D = sw.D, H = sw.H, GH = sw.GH, ng = g1 - g0, i, j, r, a, e, t = 0
    cdef bint fused = xh != NULL, sep = dGt != dGs, gru = kind == K_GRU, first = True
    cdef Py_ssize_t DX = D + H if xh != NULL else D, cap = 2 * GATHER_ROWS, nb = 0
    cdef const floating* xs = xh if fused else x
    cdef floating* v = NULL
    cdef WgradRows blk
    # gathered blocks: dG_step, dG_time (when separate), x or [x | h], h, r*h (GRU)
    cdef Py_ssize_t width = ng * (2 if sep else 1) + DX + (0 if fused else H) + \
        (H if gru else 0)
    cdef floating* buf = <floating*> malloc(cap * width * sizeof(floating))
    cdef floating* bdgs = buf
    cdef floating* bdgt = bdgs + cap * ng if sep else bdgs
    cdef floating* bx = bdgs + cap * ng * (2 if sep else 1)
    cdef floating* bh = bx + cap * DX
    cdef floating* baux = bh + (0 if fused else cap * H)
    if gb_ih != NULL and kind != K_GRU_RA:
        # b_ih and b_hh enter every pre-activation the same way, so their gradients
        # are the same column sums of dG (dG_time is a row permutation of dG_step):
        # one pass over dG instead of two.
        v = <floating*> malloc(ng * sizeof(floating))
    while True:
        e = next_run(sw.lengths, sw.T, sw.B, 0, sw.T * sw.B, &t, &a)
        if e > a and (e - a >= GATHER_ROWS or buf == NULL):
            blk.n, blk.dgs, blk.dgt, blk.ldg = e - a, dGs + a * GH + g0, dGt + a * GH + g0, GH
            blk.x, blk.ldx, blk.h, blk.aux = xs + a * DX, DX, hs + a * H, aux + a * H
            _wgrad_block(sw, &blk, gW_ih, gW_hh, gw, v, gb_ih, gb_hh, ones, fused, first,
                         g0, g1)
            first = False
            continue
        if e > a:
            for r in range(a, e):
                memcpy(bdgs + nb * ng, dGs + r * GH + g0, ng * sizeof(floating))
                if sep:
                    memcpy(bdgt + nb * ng, dGt + r * GH + g0, ng * sizeof(floating))
                memcpy(bx + nb * DX, xs + r * DX, DX * sizeof(floating))
                if not fused:
                    memcpy(bh + nb * H, hs + r * H, H * sizeof(floating))
                if gru:
                    memcpy(baux + nb * H, aux + r * H, H * sizeof(floating))
                nb += 1
        if nb > 0 and (nb >= GATHER_ROWS or e <= a):
            blk.n, blk.dgs, blk.dgt, blk.ldg = nb, bdgs, bdgt, ng
            blk.x, blk.ldx, blk.h, blk.aux = bx, DX, bh, baux
            _wgrad_block(sw, &blk, gW_ih, gW_hh, gw, v, gb_ih, gb_hh, ones, fused, first,
                         g0, g1)
            first, nb = False, 0
        if e <= a:
            break
    free(buf)
    if not first and fused:
        for i in range(g0, g1):
            for j in range(D):
                gW_ih[i * D + j] += gw[i * DX + j]
            for j in range(H):
                gW_hh[i * H + j] += gw[i * DX + D + j]
    if v != NULL:
        if not first:
            for i in range(ng):
                gb_ih[g0 + i] += v[i]
                gb_hh[g0 + i] += v[i]
        free(v)


cdef inline void backward_sweep(TeamSweep* ts, int t, int n, const floating* like) noexcept nogil:
    """Thread ``t`` of ``n`` of a backward job.  ``phase`` (``PH_*``): ``PH_STEPS``
    BPTT for batch rows ``[r0, r1)`` (independent of the other rows, like the
    forward); ``PH_GRAD_X`` ``grad_x`` for rows ``[r0, r1)`` of ``T*B``; ``PH_WGRAD``
    the weight and bias gradients for gate columns ``[r0, r1)`` -- the last two need
    every row's gate gradients, so they run after all ``PH_STEPS`` ranges; ``PH_ALL``
    everything in that order (``grad_x`` and the weight gradients in their fixed
    pieces).  With a packed job BPTT runs on the packed ``W_hh``."""
    cdef const RnnSweep* sw = ts.sw
    cdef Py_ssize_t T = sw.T, B = sw.B, H = sw.H, GH = sw.GH, p, p0, p1, lo, hi
    cdef int phase = ts.phase
    cdef const floating* x = <const floating*> sw.x
    cdef const floating* hs = <const floating*> sw.hs
    cdef const floating* aux = <const floating*> sw.aux
    cdef floating* dGs = <floating*> sw.dGs
    cdef floating* dGt = <floating*> sw.dGt
    cdef floating* xh = <floating*> sw.xh
    # scr: [tmp | dh2 | drh] (B*H each), zrow [H] (zeros), ones [T*B]
    cdef floating* ones = <floating*> ts.scr + 3 * B * H + H
    if phase == PH_ALL or phase == PH_STEPS:
        _team_steps(ts, t, n, like)
        if phase == PH_STEPS or _team_stopped(ts, t, n):
            return
    if phase == PH_GRAD_X and t == 0:
        _input_grads(sw, x, <const floating*> sw.W_ih, hs, dGt, <floating*> sw.grad_x,
                     xh, ts.r0, ts.r1)
    if phase == PH_WGRAD and t == 0:
        _weight_grads(sw, x, hs, aux, dGs, dGt, <floating*> sw.gW_ih, <floating*> sw.gW_hh,
                      <floating*> sw.gb_ih, <floating*> sw.gb_hh, ones, xh,
                      <floating*> sw.gw, ts.r0, ts.r1)
    if phase != PH_ALL:
        return
    nn_team_share(ts.rows_pieces, t, n, &p0, &p1)
    for p in range(p0, p1):
        piece_range(T * B, ts.rows_pieces, 1, p, &lo, &hi)
        _input_grads(sw, x, <const floating*> sw.W_ih, hs, dGt, <floating*> sw.grad_x,
                     xh, lo, hi)
    if n > 1:
        nn_team.barrier(n)                  # the fused weight GEMM reads [x | h]
    nn_team_share(ts.cols_pieces, t, n, &p0, &p1)
    for p in range(p0, p1):
        piece_range(GH, ts.cols_pieces, 16, p, &lo, &hi)
        if hi > lo:
            _weight_grads(sw, x, hs, aux, dGs, dGt, <floating*> sw.gW_ih,
                          <floating*> sw.gW_hh, <floating*> sw.gb_ih, <floating*> sw.gb_hh,
                          ones, xh, <floating*> sw.gw, lo, hi)


cdef inline void sweep_piece(void* arg, int t, int n) noexcept nogil:
    """The team job of a sweep (``nn_team_fn``): thread ``t`` of ``n``."""
    cdef TeamSweep* ts = <TeamSweep*> arg
    if ts.backward and ts.double:
        backward_sweep(ts, t, n, <const double*> NULL)
    elif ts.backward:
        backward_sweep(ts, t, n, <const float*> NULL)
    elif ts.double:
        forward_sweep(ts, t, n, <const double*> NULL)
    else:
        forward_sweep(ts, t, n, <const float*> NULL)

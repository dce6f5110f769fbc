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

``rnn_forward`` and ``rnn_backward`` validate everything with the GIL held and then
run their whole loop (BLAS included) inside one ``nogil`` block, so two directions
can run concurrently on two Python threads.  Their ``phase`` argument splits one sweep
for two threads: the input projection and ``grad_x`` by rows of ``T*B``, the step
loops by batch rows (rows never interact), the weight gradients by gate rows.
"""
from cython cimport floating
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

import numpy as np

from _blas cimport gemm, gemv
from _rnn_gates cimport (gru_bwd1, gru_bwd2, gru_fwd1, gru_fwd2, gru_ra_bwd, gru_ra_fwd,
                        lstm_bwd, lstm_fwd, rnn_bwd, rnn_fwd)
from _vmath cimport bind_simd, transpose

bind_simd(__name__)


RNN_TANH = 0
RNN_RELU = 1
LSTM = 2
GRU = 3
GRU_RA = 4
GATES = (1, 1, 4, 3, 3)

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

PHASE_ALL, PHASE_PROJ, PHASE_STEPS, PHASE_GRAD_X, PHASE_WGRAD = 0, 1, 2, 3, 4


cdef enum:
    REC_NN = 0      # h @ W^T as h @ WT (NN)
    REC_DOT = 1     # h @ W^T with W as stored (NT): the dot-product form
    REC_TR = 2      # the transposed product W h^T into scratch, transposed back


cdef inline int _rec_mode(Py_ssize_t B, Py_ssize_t H, bint single) noexcept nogil:
    """Per-step GEMM layout (measured, see ``_rec_fwd``): ``REC_DOT`` for ``B == 1``,
    ``REC_TR`` for float32 batches with ``H >= 256`` (measured faster at the M and L
    shapes, H = 256 and 512; slower at S, H = 64), ``REC_NN`` otherwise (float64
    keeps its previous layout)."""
    if B == 1:
        return REC_DOT
    return REC_TR if single and H >= 256 else REC_NN


cdef inline void _rec_fwd(int mode, Py_ssize_t B, Py_ssize_t N, Py_ssize_t H,
                          const floating* h, const floating* W, Py_ssize_t ldw,
                          const floating* WT, Py_ssize_t ldwt, floating* out,
                          Py_ssize_t ldo, floating* tmp) noexcept nogil:
    """``out[B, N] = h[B, H] @ W[N, H]^T``; ``WT = W^T [H, N]`` (same numbers);
    ``tmp [N*B]`` scratch for ``REC_TR``.

    The layout is chosen by measurement (SciPy's OpenBLAS 0.3.30, SkylakeX kernels, on
    this machine): for a single row (``B == 1``) the dot-product form ``h @ W^T``
    streams ``W`` row by row and is ~2x faster than ``h @ WT``.  For ``B > 1`` the
    NN form ``h @ WT`` is ~2.5x faster than ``h @ W^T`` (NT) on skinny shapes (table
    in nn_core/bench/recurrent.py), and in float32 the transposed product
    ``out^T [N, B] = W @ h^T`` is faster still: OpenBLAS then packs the weight as its
    outer operand (``oncopy``) instead of re-packing it with the slower ``itcopy``
    every step (CPU time, 1 thread: [32,256]@[256,1024] 183 vs 243 us,
    [64,512]@[512,2048] 1398 vs 1590 us); the small ``[N, B]`` result is transposed
    back with AVX 8x8 tiles.
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


# --------------------------------------------------------------------- forward --
cdef void _forward(int kind, bint reverse, Py_ssize_t T, Py_ssize_t B, Py_ssize_t D,
                   Py_ssize_t H, const floating* x, const floating* W_ih,
                   const floating* W_hh, const floating* W_hhT, const floating* bx,
                   const floating* bhn, const int64_t* lengths, floating* gates,
                   floating* hs, floating* cs, floating* aux, floating* out,
                   floating* hh, floating* tmp, int phase, Py_ssize_t r0,
                   Py_ssize_t r1) noexcept nogil:
    """``phase`` (``PH_*``): ``PH_PROJ`` the input projection for rows ``[r0, r1)`` of
    ``T*B``; ``PH_STEPS`` the recurrence for batch rows ``[r0, r1)`` only (rows
    never interact, so two row ranges can run concurrently; every array keeps its
    full-batch layout); ``PH_ALL`` both over everything."""
    cdef Py_ssize_t G = 4 if kind == K_LSTM else (3 if kind >= K_GRU else 1)
    cdef Py_ssize_t GH = G * H, H2 = 2 * H
    cdef Py_ssize_t s, b, L, tau
    cdef Py_ssize_t b0 = r0 if phase == PH_STEPS else 0
    cdef Py_ssize_t b1 = r1 if phase == PH_STEPS else B
    cdef Py_ssize_t nb = b1 - b0
    cdef floating* a
    cdef floating* hr
    cdef const floating* hp
    cdef floating* hn
    cdef floating* o
    cdef floating* hn2
    cdef size_t row = H * sizeof(floating)
    cdef int mode = _rec_mode(nb, H, floating is float)

    # 1. input projection of all T steps: gates[t, b] = W_ih x[t, b]
    if phase == PH_ALL:
        gemm(False, True, <int> (T * B), <int> GH, <int> D, <floating> 1, x, <int> D,
             W_ih, <int> D, <floating> 0, gates, <int> GH)
    elif phase == PH_PROJ:
        if r1 > r0:
            gemm(False, True, <int> (r1 - r0), <int> GH, <int> D, <floating> 1, x + r0 * D,
                 <int> D, W_ih, <int> D, <floating> 0, gates + r0 * GH, <int> GH)
        return
    if nb < 1:
        return

    for s in range(T):
        hp = hs + s * B * H
        hn = hs + (s + 1) * B * H
        # 2. recurrence GEMM on rows b0..b1 (GRU reset_after=False: the r, z blocks)
        if kind == K_GRU:
            _rec_fwd(mode, nb, H2, H, hp + b0 * H, W_hh, H, W_hhT, GH, hh + b0 * H2, H2,
                     tmp)
        else:
            _rec_fwd(mode, nb, GH, H, hp + b0 * H, W_hh, H, W_hhT, GH, hh + b0 * GH, GH,
                     tmp)
        # 3. fused gate pass over the step's rows
        for b in range(b0, b1):
            L = lengths[b]
            if s >= L:                        # padding: carry the state, output 0
                memcpy(hn + b * H, hp + b * H, row)
                if kind == K_LSTM:
                    memcpy(cs + ((s + 1) * B + b) * H, cs + (s * B + b) * H, row)
                if kind == K_GRU:
                    memset(aux + (s * B + b) * H, 0, row)
                memset(out + (s * B + b) * H, 0, row)
                continue
            tau = _tau(reverse, s, L)
            a = gates + (tau * B + b) * GH
            o = out + (tau * B + b) * H
            hr = hh + b * (H2 if kind == K_GRU else GH)
            if kind == K_LSTM:
                lstm_fwd(a, hr, bx, cs + (s * B + b) * H, cs + ((s + 1) * B + b) * H,
                         aux + (s * B + b) * H, hn + b * H, o, H)
            elif kind == K_RNN_TANH or kind == K_RNN_RELU:
                rnn_fwd(a, hr, bx, hn + b * H, o, H, kind == K_RNN_RELU)
            elif kind == K_GRU_RA:
                gru_ra_fwd(a, hr, bx, bhn, hp + b * H, aux + (s * B + b) * H,
                           hn + b * H, o, H)
            else:                              # K_GRU, first pass: r, z and r*h
                gru_fwd1(a, hr, bx, hp + b * H, aux + (s * B + b) * H, H)
        if kind == K_GRU:
            # (r*h) @ W_hn^T, then the second pass: n and h
            hn2 = hh + B * H2
            _rec_fwd(mode, nb, H, H, aux + (s * B + b0) * H, W_hh + H2 * H, H, W_hhT + H2,
                     GH, hn2 + b0 * H, H, tmp)
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                tau = _tau(reverse, s, L)
                a = gates + (tau * B + b) * GH
                o = out + (tau * B + b) * H
                gru_fwd2(a, hn2 + b * H, bx, hp + b * H, hn + b * H, o, H)


# -------------------------------------------------------------------- backward --
cdef void _backward(int kind, bint reverse, Py_ssize_t T, Py_ssize_t B, Py_ssize_t D,
                    Py_ssize_t H, const floating* x, const floating* W_ih,
                    const floating* W_hh, const floating* W_hhT, const int64_t* lengths,
                    const floating* gates, const floating* hs, const floating* cs,
                    const floating* aux, const floating* gout, floating* dh,
                    floating* dc, floating* dh2, floating* drh, floating* dGs,
                    floating* dGt, floating* grad_x, floating* gW_ih, floating* gW_hh,
                    floating* gb_ih, floating* gb_hh, const floating* ones,
                    const floating* zrow, floating* xh, floating* gw,
                    floating* scr, int phase, Py_ssize_t r0,
                    Py_ssize_t r1) noexcept nogil:
    """``phase`` (``PH_*``): ``PH_STEPS`` BPTT for batch rows ``[r0, r1)`` (independent
    of the other rows, like the forward); ``PH_GRAD_X`` ``grad_x`` for rows ``[r0, r1)``
    of ``T*B``; ``PH_WGRAD`` the weight and bias gradients for gate columns
    ``[r0, r1)`` -- the last two need every row's gate gradients, so they run after
    all ``PH_STEPS`` ranges; ``PH_ALL`` everything in that order."""
    cdef Py_ssize_t GH = (4 if kind == K_LSTM else (3 if kind >= K_GRU else 1)) * H
    if phase == PH_ALL or phase == PH_STEPS:
        if phase == PH_ALL:
            r0, r1 = 0, B
        if r1 > r0:
            _bptt(kind, reverse, T, B, H, W_hh, W_hhT, lengths, gates, hs, cs, aux, gout,
                  dh, dc, dh2, drh, dGs, dGt, zrow, scr, r0, r1)
    if phase == PH_ALL or phase == PH_GRAD_X:
        if phase == PH_ALL:
            r0, r1 = 0, T * B
        if r1 > r0:
            _input_grads(T, B, D, H, GH, x, W_ih, hs, dGt, grad_x, xh, r0, r1)
    if phase == PH_ALL or phase == PH_WGRAD:
        if phase == PH_ALL:
            r0, r1 = 0, GH
        if r1 > r0:
            _weight_grads(kind, T, B, D, H, x, hs, aux, dGs, dGt, gW_ih, gW_hh, gb_ih,
                          gb_hh, ones, xh, gw, r0, r1)


cdef void _bptt(int kind, bint reverse, Py_ssize_t T, Py_ssize_t B, Py_ssize_t H,
                const floating* W_hh, const floating* W_hhT, const int64_t* lengths,
                const floating* gates, const floating* hs, const floating* cs,
                const floating* aux, const floating* gout, floating* dh, floating* dc,
                floating* dh2, floating* drh, floating* dGs, floating* dGt,
                const floating* zrow, floating* scr, Py_ssize_t b0,
                Py_ssize_t b1) noexcept nogil:
    cdef Py_ssize_t G = 4 if kind == K_LSTM else (3 if kind >= K_GRU else 1)
    cdef Py_ssize_t GH = G * H, H2 = 2 * H
    cdef Py_ssize_t s, b, L, tau, nb = b1 - b0
    cdef bint sep = dGt != dGs
    cdef const floating* g
    cdef const floating* go
    cdef const floating* hp
    cdef const floating* dhb
    cdef floating* dst
    cdef floating* dgr
    cdef floating* dgx
    cdef floating* dgs
    cdef floating* tmp
    cdef floating* dh_out = dh
    cdef size_t row = H * sizeof(floating)
    cdef size_t grow = GH * sizeof(floating)
    cdef int mode = _rec_mode(nb, H, floating is float)

    for s in range(T - 1, -1, -1):
        dgs = dGs + s * B * GH
        for b in range(b0, b1):
            L = lengths[b]
            dst = dh2 + b * H
            dhb = dh + b * H
            dgr = dgs + b * GH
            if s >= L:                     # padding: no gradient, dh passes through
                memset(dgr, 0, grow)
                if sep:
                    memset(dGt + (s * B + b) * GH, 0, grow)
                memcpy(dst, dhb, row)
                if kind == K_GRU:
                    memset(drh + b * H, 0, row)
                continue
            tau = _tau(reverse, s, L)
            g = gates + (tau * B + b) * GH
            dgx = dGt + (tau * B + b) * GH
            go = gout + (tau * B + b) * H if gout != NULL else zrow
            hp = hs + (s * B + b) * H
            if kind == K_LSTM:
                lstm_bwd(g, aux + (s * B + b) * H, cs + (s * B + b) * H, dhb, go,
                         dc + b * H, dgr, H)
                memset(dst, 0, row)
            elif kind == K_RNN_TANH or kind == K_RNN_RELU:
                rnn_bwd(g, dhb, go, dgr, H, kind == K_RNN_RELU)
                memset(dst, 0, row)
            elif kind == K_GRU_RA:
                gru_ra_bwd(g, aux + (s * B + b) * H, hp, dhb, go, dgx, dgr, dst, H)
            else:                               # K_GRU, first pass: z and n
                gru_bwd1(g, hp, dhb, go, dgr, dst, H)
        if kind == K_GRU:
            # d(r*h) = dn_pre @ W_hn; then r's gradient and the r*h path to h_prev
            _rec_bwd(mode, nb, H, H, dgs + b0 * GH + H2, GH, W_hh + H2 * H, H, W_hhT + H2,
                     GH, <floating> 0, drh + b0 * H, scr)
            for b in range(b0, b1):
                L = lengths[b]
                if s >= L:
                    continue
                tau = _tau(reverse, s, L)
                g = gates + (tau * B + b) * GH
                hp = hs + (s * B + b) * H
                dgr = dgs + b * GH
                dst = dh2 + b * H
                gru_bwd2(g, hp, drh + b * H, dgr, dst, H)
            _rec_bwd(mode, nb, H, H2, dgs + b0 * GH, GH, W_hh, H, W_hhT, GH, <floating> 1,
                     dh2 + b0 * H, scr)
        else:
            _rec_bwd(mode, nb, H, GH, dgs + b0 * GH, GH, W_hh, H, W_hhT, GH, <floating> 1,
                     dh2 + b0 * H, scr)
        if sep and kind != K_GRU_RA:
            for b in range(b0, b1):
                L = lengths[b]
                if s < L:
                    tau = _tau(reverse, s, L)
                    memcpy(dGt + (tau * B + b) * GH, dgs + b * GH, grow)
        tmp = dh
        dh = dh2
        dh2 = tmp
    if dh != dh_out:
        memcpy(dh_out + b0 * H, dh + b0 * H, nb * row)


cdef void _input_grads(Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H,
                       Py_ssize_t GH, const floating* x, const floating* W_ih,
                       const floating* hs, const floating* dGt, floating* grad_x,
                       floating* xh, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """``grad_x = dG_time @ W_ih`` for rows ``[r0, r1)`` of ``T*B``, and (when ``xh`` is
    given) the copy of those rows of ``[x | h_prev]`` for the fused weight GEMM."""
    cdef Py_ssize_t DH = D + H, r
    gemm(False, False, <int> (r1 - r0), <int> D, <int> GH, <floating> 1, dGt + r0 * GH,
         <int> GH, W_ih, <int> D, <floating> 0, grad_x + r0 * D, <int> D)
    if xh != NULL:
        for r in range(r0, r1):
            memcpy(xh + r * DH, x + r * D, D * sizeof(floating))
            memcpy(xh + r * DH + D, hs + r * H, H * sizeof(floating))


cdef void _weight_grads(int kind, Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H,
                        const floating* x, const floating* hs, const floating* aux,
                        const floating* dGs, const floating* dGt, floating* gW_ih,
                        floating* gW_hh, floating* gb_ih, floating* gb_hh,
                        const floating* ones, floating* xh, floating* gw,
                        Py_ssize_t g0, Py_ssize_t g1) noexcept nogil:
    """Weight and bias gradients for gate rows ``[g0, g1)`` of ``G*H``: one BLAS call
    each over all ``T*B`` rows (accumulated into, ``+=``)."""
    cdef Py_ssize_t G = 4 if kind == K_LSTM else (3 if kind >= K_GRU else 1)
    cdef Py_ssize_t GH = G * H, H2 = 2 * H, ng = g1 - g0
    cdef int TB = <int> (T * B)
    cdef Py_ssize_t DH = D + H, i, j, lo, hi
    if xh != NULL:
        # one GEMM for both weight gradients: [gW_ih | gW_hh] = dG^T [x | h_prev]
        # (same A operand, packed once; ~12% faster than two GEMMs at the M shape
        # even with the copy into xh, made by _input_grads).  Forward direction,
        # RNN/LSTM only (there dG_time is dG_step).
        gemm(True, False, <int> ng, <int> DH, TB, <floating> 1, dGs + g0, <int> GH, xh,
             <int> DH, <floating> 0, gw + g0 * DH, <int> DH)
        for i in range(g0, g1):
            for j in range(D):
                gW_ih[i * D + j] += gw[i * DH + j]
            for j in range(H):
                gW_hh[i * H + j] += gw[i * DH + D + j]
    else:
        gemm(True, False, <int> ng, <int> D, TB, <floating> 1, dGt + g0, <int> GH, x,
             <int> D, <floating> 1, gW_ih + g0 * D, <int> D)
        if kind == K_GRU:
            # rows [0, 2H) (r, z) multiply h_prev, rows [2H, 3H) (n) multiply r*h_prev
            lo, hi = g0, (g1 if g1 < H2 else H2)
            if hi > lo:
                gemm(True, False, <int> (hi - lo), <int> H, TB, <floating> 1, dGs + lo,
                     <int> GH, hs, <int> H, <floating> 1, gW_hh + lo * H, <int> H)
            lo, hi = (g0 if g0 > H2 else H2), g1
            if hi > lo:
                gemm(True, False, <int> (hi - lo), <int> H, TB, <floating> 1, dGs + lo,
                     <int> GH, aux, <int> H, <floating> 1, gW_hh + lo * H, <int> H)
        else:
            gemm(True, False, <int> ng, <int> H, TB, <floating> 1, dGs + g0, <int> GH, hs,
                 <int> H, <floating> 1, gW_hh + g0 * H, <int> H)
    if gb_ih == NULL:
        return
    cdef floating* v = NULL
    if kind != K_GRU_RA:
        # b_ih and b_hh enter every pre-activation the same way, so their gradients
        # are the same column sums of dG (dG_time is a row permutation of dG_step):
        # one pass over dG instead of two.
        v = <floating*> malloc(ng * sizeof(floating))
    if v != NULL:
        gemv(True, TB, <int> ng, <floating> 1, dGs + g0, <int> GH, ones, <floating> 0, v)
        for i in range(ng):
            gb_ih[g0 + i] += v[i]
            gb_hh[g0 + i] += v[i]
        free(v)
    else:
        gemv(True, TB, <int> ng, <floating> 1, dGt + g0, <int> GH, ones, <floating> 1,
             gb_ih + g0)
        gemv(True, TB, <int> ng, <floating> 1, dGs + g0, <int> GH, ones, <floating> 1,
             gb_hh + g0)


# ---------------------------------------------------------------- entry points --
cdef int _check3(object a, str name, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t d2) except -1:
    if a.shape[0] != d0 or a.shape[1] != d1 or a.shape[2] != d2:
        raise ValueError(f"{name} must have shape {(d0, d1, d2)}, got "
                         f"{tuple(a.shape[:3])}")
    return 0


cdef int _check2(object a, str name, Py_ssize_t d0, Py_ssize_t d1) except -1:
    if a.shape[0] != d0 or a.shape[1] != d1:
        raise ValueError(f"{name} must have shape {(d0, d1)}, got {tuple(a.shape[:2])}")
    return 0


cdef int _check1(object a, str name, Py_ssize_t d0) except -1:
    if a.shape[0] != d0:
        raise ValueError(f"{name} must have shape ({d0},), got ({a.shape[0]},)")
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


cdef int _check_common(int kind, Py_ssize_t T, Py_ssize_t B, Py_ssize_t D, Py_ssize_t H,
                       object W_ih, object W_hh, const int64_t[::1] lengths) except -1:
    cdef Py_ssize_t b
    if kind < 0 or kind > 4:
        raise ValueError(f"kind must be in 0..4, got {kind}")
    if T < 1 or B < 1 or D < 1 or H < 1:
        raise ValueError(f"empty dimensions are not supported: T={T}, B={B}, D={D}, H={H}")
    _check2(W_ih, "W_ih", GATES[kind] * H, D)
    _check2(W_hh, "W_hh", GATES[kind] * H, H)
    _check1(lengths, "lengths", B)
    for b in range(B):
        if lengths[b] < 1 or lengths[b] > T:
            raise ValueError(f"lengths must satisfy 1 <= lengths[b] <= {T}, "
                             f"got {lengths[b]}")
    return 0


def rnn_forward(int kind, bint reverse, const floating[:, :, ::1] x,
                const floating[:, ::1] W_ih, const floating[:, ::1] W_hh,
                const floating[:, ::1] W_hhT,
                const floating[::1] bx, const floating[::1] bhn,
                const int64_t[::1] lengths, floating[:, :, ::1] gates,
                floating[:, :, ::1] hs, floating[:, :, ::1] cs,
                floating[:, :, ::1] aux, floating[:, :, ::1] out,
                floating[:, ::1] hh, int phase=PH_ALL, Py_ssize_t r0=0,
                Py_ssize_t r1=-1):
    """Run a whole sequence; fills ``gates``, ``hs[1:]``, ``cs[1:]``, ``aux``, ``out``.

    ``x [T, B, D]``; ``bx [GH]`` the additive bias of every gate pre-activation
    (``b_ih + b_hh``; GRU_RA: ``b_in`` alone in the ``n`` block); ``bhn [H]`` is
    ``b_hn`` for GRU_RA (ignored otherwise).  ``hs [T+1, B, H]`` with ``hs[0]`` the
    initial state on entry; ``cs`` likewise for the LSTM (any ``[1, 1, 1]`` array
    otherwise); ``aux [T, B, H]``: LSTM ``tanh(c)``, GRU ``r*h``, GRU_RA
    ``W_hn h + b_hn`` (any ``[1, 1, 1]`` array for the RNN).  ``gates [T, B, GH]``
    receives the post-activation gates, ``out [T, B, H]`` the output; ``hh [B, GH]``
    is scratch.  Releases the GIL for the whole computation.

    ``phase`` splits the work for two threads (``r1 = -1``: the end): ``PHASE_PROJ``
    computes the input projection for rows ``[r0, r1)`` of ``T*B``;
    ``PHASE_STEPS`` runs the recurrence for batch rows ``[r0, r1)`` only, reading their
    projection from ``gates`` (so after every ``PHASE_PROJ`` range).  Disjoint ranges
    of one phase may run concurrently; ``PHASE_ALL`` (default) does everything.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t H = hs.shape[2]
    _check_common(kind, T, B, D, H, W_ih, W_hh, lengths)
    cdef Py_ssize_t GH = GATES[kind] * H
    if phase == PH_PROJ:
        r1 = _check_range(phase, r0, r1, T * B, "rows of T*B")
    elif phase == PH_STEPS:
        r1 = _check_range(phase, r0, r1, B, "batch rows")
    elif phase == PH_ALL:
        _check_all(r0, r1)
    else:
        raise ValueError(f"phase must be PHASE_ALL, PHASE_PROJ or PHASE_STEPS, got {phase}")
    _check2(W_hhT, "W_hhT", H, GH)
    _check1(bx, "bx", GH)
    if kind == K_GRU_RA:
        _check1(bhn, "bhn", H)
    _check3(gates, "gates", T, B, GH)
    _check3(hs, "hs", T + 1, B, H)
    _check3(out, "out", T, B, H)
    if kind == K_LSTM:
        _check3(cs, "cs", T + 1, B, H)
    if kind >= K_LSTM:
        _check3(aux, "aux", T, B, H)
    _check2(hh, "hh", B, GH)
    cdef floating* tmp = <floating*> malloc(B * GH * sizeof(floating))
    if tmp == NULL:
        raise MemoryError("rnn_forward: cannot allocate the per-step scratch")
    try:
        with nogil:
            _forward(kind, reverse, T, B, D, H, &x[0, 0, 0], &W_ih[0, 0], &W_hh[0, 0],
                     &W_hhT[0, 0], &bx[0], &bhn[0], &lengths[0], &gates[0, 0, 0],
                     &hs[0, 0, 0], &cs[0, 0, 0], &aux[0, 0, 0], &out[0, 0, 0], &hh[0, 0],
                     tmp, phase, r0, r1)
    finally:
        free(tmp)


def rnn_backward(int kind, bint reverse, const floating[:, :, ::1] x,
                 const floating[:, ::1] W_ih, const floating[:, ::1] W_hh,
                 const floating[:, ::1] W_hhT,
                 const int64_t[::1] lengths, const floating[:, :, ::1] gates,
                 const floating[:, :, ::1] hs, const floating[:, :, ::1] cs,
                 const floating[:, :, ::1] aux, const floating[:, :, ::1] grad_out,
                 bint has_grad_out, floating[:, ::1] dh, floating[:, ::1] dc,
                 floating[:, :, ::1] grad_x, floating[:, ::1] gW_ih,
                 floating[:, ::1] gW_hh, floating[::1] gb_ih, floating[::1] gb_hh,
                 bint has_bias, floating[:, :, ::1] dGs, floating[:, :, ::1] dGt,
                 floating[:, ::1] dh2, floating[:, ::1] drh, const floating[::1] ones,
                 const floating[::1] zrow, floating[:, ::1] xh, floating[:, ::1] gw,
                 bint fuse_wgrad, int phase=PH_ALL, Py_ssize_t r0=0, Py_ssize_t r1=-1):
    """BPTT through what ``rnn_forward`` stored.

    ``grad_out [T, B, H]`` (ignored unless ``has_grad_out``); ``dh [B, H]`` holds the
    gradient of the final state on entry and the gradient of the initial state on
    return (``dc`` likewise for the LSTM, any ``[1, 1]`` array otherwise).
    ``grad_x [T, B, D]`` is overwritten; ``gW_ih``, ``gW_hh`` and (when
    ``has_bias``) ``gb_ih``, ``gb_hh`` are accumulated into (``+=``).
    Scratch: ``dGs [T, B, GH]``; ``dGt [T, B, GH]`` (may be the same array as ``dGs``
    unless ``reverse`` or GRU_RA); ``dh2``, ``drh`` ``[B, H]``; ``ones [T*B]`` (all 1);
    ``zrow [H]`` (all 0).  ``fuse_wgrad`` (forward direction, RNN/LSTM only): form
    both weight gradients in one GEMM through the scratch ``xh [T*B, D+H]`` and
    ``gw [GH, D+H]`` (any ``[1, 1]`` arrays otherwise).  Releases the GIL for the whole computation.

    ``phase`` splits the work for two threads (``r1 = -1``: the end), in this order:
    ``PHASE_STEPS`` BPTT for batch rows ``[r0, r1)`` (``dh``, ``dc`` rows outside the
    range are left alone); ``PHASE_GRAD_X`` ``grad_x`` (and the ``xh`` copy) for rows
    ``[r0, r1)`` of ``T*B``; ``PHASE_WGRAD`` the weight and bias gradients for gate
    columns ``[r0, r1)`` of ``G*H``.  Disjoint ranges of one phase may run
    concurrently; ``PHASE_ALL`` (default) does everything.
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], D = x.shape[2]
    cdef Py_ssize_t H = hs.shape[2]
    _check_common(kind, T, B, D, H, W_ih, W_hh, lengths)
    cdef Py_ssize_t GH = GATES[kind] * H
    if phase == PH_STEPS:
        r1 = _check_range(phase, r0, r1, B, "batch rows")
    elif phase == PH_GRAD_X:
        r1 = _check_range(phase, r0, r1, T * B, "rows of T*B")
    elif phase == PH_WGRAD:
        r1 = _check_range(phase, r0, r1, GH, "gate columns")
    elif phase == PH_ALL:
        _check_all(r0, r1)
    else:
        raise ValueError(f"phase must be PHASE_ALL, PHASE_STEPS, PHASE_GRAD_X or "
                         f"PHASE_WGRAD, got {phase}")
    _check2(W_hhT, "W_hhT", H, GH)
    _check3(gates, "gates", T, B, GH)
    _check3(hs, "hs", T + 1, B, H)
    if has_grad_out:
        _check3(grad_out, "grad_out", T, B, H)
    _check2(dh, "dh", B, H)
    if kind == K_LSTM:
        _check3(cs, "cs", T + 1, B, H)
        _check2(dc, "dc", B, H)
    if kind >= K_LSTM:
        _check3(aux, "aux", T, B, H)
    _check3(grad_x, "grad_x", T, B, D)
    _check2(gW_ih, "gW_ih", GH, D)
    _check2(gW_hh, "gW_hh", GH, H)
    if has_bias:
        _check1(gb_ih, "gb_ih", GH)
        _check1(gb_hh, "gb_hh", GH)
    _check3(dGs, "dGs", T, B, GH)
    _check3(dGt, "dGt", T, B, GH)
    if (reverse or kind == K_GRU_RA) and &dGt[0, 0, 0] == &dGs[0, 0, 0]:
        raise ValueError("dGt must be a separate buffer for reverse or GRU_RA")
    _check2(dh2, "dh2", B, H)
    _check2(drh, "drh", B, H)
    _check1(ones, "ones", T * B)
    _check1(zrow, "zrow", H)
    if fuse_wgrad:
        if reverse or kind >= K_GRU:
            raise ValueError("fuse_wgrad needs the forward direction and an RNN/LSTM kind")
        _check2(xh, "xh", T * B, D + H)
        _check2(gw, "gw", GH, D + H)
    cdef floating* tmp = <floating*> malloc(B * H * sizeof(floating))
    if tmp == NULL:
        raise MemoryError("rnn_backward: cannot allocate the per-step scratch")
    try:
        with nogil:
            _backward(kind, reverse, T, B, D, H, &x[0, 0, 0], &W_ih[0, 0], &W_hh[0, 0],
                      &W_hhT[0, 0], &lengths[0], &gates[0, 0, 0], &hs[0, 0, 0], &cs[0, 0, 0],
                      &aux[0, 0, 0], &grad_out[0, 0, 0] if has_grad_out else NULL,
                      &dh[0, 0], &dc[0, 0], &dh2[0, 0], &drh[0, 0], &dGs[0, 0, 0],
                      &dGt[0, 0, 0], &grad_x[0, 0, 0], &gW_ih[0, 0], &gW_hh[0, 0],
                      &gb_ih[0] if has_bias else NULL, &gb_hh[0] if has_bias else NULL,
                      &ones[0], &zrow[0], &xh[0, 0] if fuse_wgrad else NULL,
                      &gw[0, 0] if fuse_wgrad else NULL, tmp, phase, r0, r1)
    finally:
        free(tmp)


/*
 * _rnn_gates.h -- fused per-row gate passes of the recurrent kernels (_recurrent.pyx).
 *
 * One function per cell and direction processes one batch row of one time step:
 * bias add, gate nonlinearities (exp-based sigmoid/tanh from _vmath.h, inlined), state
 * update and output in the forward; pre-activation gate gradients from the stored
 * post-activation gates in the backward.  Written in C (not in the .pyx) so that the
 * pointers can be `restrict` and every loop is a single vectorisable pass; compiled
 * for baseline x86-64 and AVX2+FMA and dispatched through _simd.h.  Fused-type
 * wrappers (one name per pass): _rnn_gates.pxd.
 *
 * Notation per row: `n` units j = 0..n-1 (a row of H units, or a block of it: the
 * pointers then start at the block's first unit), H the gate stride of the [G*H] rows,
 * R the gate stride of `hr`; `a` the gate row [G*H] (in: x-projection,
 * out: post-activation gates), `hr` the recurrent GEMM row, `bx` the additive bias
 * [G*H], `hp`/`hn` previous/new h, `cp`/`cn` previous/new c, `tc` tanh(c_new),
 * `o` the output row.  Backward: `dh` carried grad of h, `go` grad of the output
 * (zeros when absent), `dgr` gate-gradient row (recurrent side), `dgx` gate-gradient
 * row (input side; GRU_RA only), `dst` the direct part of grad h_prev, `dc` carried
 * grad of c (updated in place).
 */
#ifndef NN_CORE_RNN_GATES_H
#define NN_CORE_RNN_GATES_H

#include "_vmath.h"

#define NN_DEFINE_GATE_ROWS(T, S, SIG, TANH, V, A)                                         \
/* LSTM forward: i,f,g,o; c = f*cp + i*g; h = o*tanh(c) */                                 \
A static void nn_lstm_fwd_##S##V(T *NN_RESTRICT a, const T *NN_RESTRICT hr,                \
        const T *NN_RESTRICT bx, const T *NN_RESTRICT cp, T *NN_RESTRICT cn,              \
        T *NN_RESTRICT tc, T *NN_RESTRICT hn, T *NN_RESTRICT o, ptrdiff_t n, ptrdiff_t H, \
        ptrdiff_t R)                                                                       \
{                                                                                          \
    for (ptrdiff_t j = 0; j < n; j++) {                                                    \
        T i = SIG(a[j] + hr[j] + bx[j]);                                                   \
        T f = SIG(a[H + j] + hr[R + j] + bx[H + j]);                                       \
        T g = TANH(a[2 * H + j] + hr[2 * R + j] + bx[2 * H + j]);                          \
        T q = SIG(a[3 * H + j] + hr[3 * R + j] + bx[3 * H + j]);                           \
        T c = f * cp[j] + i * g;                                                           \
        T t = TANH(c);                                                                     \
        T h = q * t;                                                                       \
        a[j] = i; a[H + j] = f; a[2 * H + j] = g; a[3 * H + j] = q;                        \
        cn[j] = c; tc[j] = t; hn[j] = h; o[j] = h;                                         \
    }                                                                                      \
}                                                                                          \
/* Elman forward: h = tanh(a) or relu(a) */                                                \
A static void nn_rnn_fwd_##S##V(T *NN_RESTRICT a, const T *NN_RESTRICT hr,                 \
        const T *NN_RESTRICT bx, T *NN_RESTRICT hn, T *NN_RESTRICT o, ptrdiff_t n,        \
        int relu)                                                                          \
{                                                                                          \
    if (relu) {                                                                            \
        for (ptrdiff_t j = 0; j < n; j++) {                                                \
            T v = a[j] + hr[j] + bx[j];                                                    \
            v = v < 0 ? (T)0 : v;                                                          \
            a[j] = v; hn[j] = v; o[j] = v;                                                 \
        }                                                                                  \
    } else {                                                                               \
        for (ptrdiff_t j = 0; j < n; j++) {                                                \
            T v = TANH(a[j] + hr[j] + bx[j]);                                              \
            a[j] = v; hn[j] = v; o[j] = v;                                                 \
        }                                                                                  \
    }                                                                                      \
}                                                                                          \
/* GRU reset_after=True forward; hw = W_hn h + b_hn is written to `hw` */                  \
A static void nn_gru_ra_fwd_##S##V(T *NN_RESTRICT a, const T *NN_RESTRICT hr,              \
        const T *NN_RESTRICT bx, const T *NN_RESTRICT bhn, const T *NN_RESTRICT hp,       \
        T *NN_RESTRICT hw, T *NN_RESTRICT hn, T *NN_RESTRICT o, ptrdiff_t n, ptrdiff_t H, \
        ptrdiff_t R)                                                                       \
{                                                                                          \
    for (ptrdiff_t j = 0; j < n; j++) {                                                    \
        T r = SIG(a[j] + hr[j] + bx[j]);                                                   \
        T z = SIG(a[H + j] + hr[R + j] + bx[H + j]);                                       \
        T w = hr[2 * R + j] + bhn[j];                                                      \
        T m = TANH(a[2 * H + j] + bx[2 * H + j] + r * w);                                  \
        T h = m + z * (hp[j] - m);                                                         \
        a[j] = r; a[H + j] = z; a[2 * H + j] = m;                                          \
        hw[j] = w; hn[j] = h; o[j] = h;                                                    \
    }                                                                                      \
}                                                                                          \
/* GRU reset_after=False forward, pass 1: r, z and rh = r*hp (hr is [2H]) */               \
A static void nn_gru_fwd1_##S##V(T *NN_RESTRICT a, const T *NN_RESTRICT hr,                \
        const T *NN_RESTRICT bx, const T *NN_RESTRICT hp, T *NN_RESTRICT rh, ptrdiff_t n, \
        ptrdiff_t H, ptrdiff_t R)                                                          \
{                                                                                          \
    for (ptrdiff_t j = 0; j < n; j++) {                                                    \
        T r = SIG(a[j] + hr[j] + bx[j]);                                                   \
        a[j] = r;                                                                          \
        a[H + j] = SIG(a[H + j] + hr[R + j] + bx[H + j]);                                  \
        rh[j] = r * hp[j];                                                                 \
    }                                                                                      \
}                                                                                          \
/* GRU reset_after=False forward, pass 2: n (hr = (r*h) W_hn^T, [H]) and h */              \
A static void nn_gru_fwd2_##S##V(T *NN_RESTRICT a, const T *NN_RESTRICT hr,                \
        const T *NN_RESTRICT bx, const T *NN_RESTRICT hp, T *NN_RESTRICT hn,              \
        T *NN_RESTRICT o, ptrdiff_t n, ptrdiff_t H)                                        \
{                                                                                          \
    for (ptrdiff_t j = 0; j < n; j++) {                                                    \
        T m = TANH(a[2 * H + j] + hr[j] + bx[2 * H + j]);                                  \
        T z = a[H + j];                                                                    \
        T h = m + z * (hp[j] - m);                                                         \
        a[2 * H + j] = m; hn[j] = h; o[j] = h;                                             \
    }                                                                                      \
}                                                                                          \
/* LSTM backward */                                                                        \
A static void nn_lstm_bwd_##S##V(const T *NN_RESTRICT g, const T *NN_RESTRICT tc,          \
        const T *NN_RESTRICT cp, const T *NN_RESTRICT dh, const T *NN_RESTRICT go,        \
        T *NN_RESTRICT dc, T *NN_RESTRICT dgr, ptrdiff_t n, ptrdiff_t H)                  \
{                                                                                          \
    for (ptrdiff_t j = 0; j < n; j++) {                                                    \
        T d = dh[j] + go[j];                                                               \
        T i = g[j], f = g[H + j], gg = g[2 * H + j], q = g[3 * H + j], t = tc[j];          \
        T c = dc[j] + d * q * (1 - t * t);                                                 \
        dgr[j] = c * gg * i * (1 - i);                                                     \
        dgr[H + j] = c * cp[j] * f * (1 - f);                                              \
        dgr[2 * H + j] = c * i * (1 - gg * gg);                                            \
        dgr[3 * H + j] = d * t * q * (1 - q);                                              \
        dc[j] = c * f;                                                                     \
    }                                                                                      \
}                                                                                          \
/* Elman backward */                                                                       \
A static void nn_rnn_bwd_##S##V(const T *NN_RESTRICT g, const T *NN_RESTRICT dh,           \
        const T *NN_RESTRICT go, T *NN_RESTRICT dgr, ptrdiff_t n, int relu)               \
{                                                                                          \
    if (relu) {                                                                            \
        for (ptrdiff_t j = 0; j < n; j++)                                                  \
            dgr[j] = g[j] > 0 ? dh[j] + go[j] : (T)0;                                      \
    } else {                                                                               \
        for (ptrdiff_t j = 0; j < n; j++)                                                  \
            dgr[j] = (dh[j] + go[j]) * (1 - g[j] * g[j]);                                  \
    }                                                                                      \
}                                                                                          \
/* GRU reset_after=True backward (hw = W_hn h + b_hn from the forward) */                  \
A static void nn_gru_ra_bwd_##S##V(const T *NN_RESTRICT g, const T *NN_RESTRICT hw,        \
        const T *NN_RESTRICT hp, const T *NN_RESTRICT dh, const T *NN_RESTRICT go,        \
        T *NN_RESTRICT dgx, T *NN_RESTRICT dgr, T *NN_RESTRICT dst, ptrdiff_t n,          \
        ptrdiff_t H)                                                                       \
{                                                                                          \
    for (ptrdiff_t j = 0; j < n; j++) {                                                    \
        T d = dh[j] + go[j];                                                               \
        T r = g[j], z = g[H + j], m = g[2 * H + j];                                        \
        T an = d * (1 - z) * (1 - m * m);                                                  \
        T ar = an * hw[j] * r * (1 - r);                                                   \
        T az = d * (hp[j] - m) * z * (1 - z);                                              \
        dgx[j] = ar; dgx[H + j] = az; dgx[2 * H + j] = an;                                 \
        dgr[j] = ar; dgr[H + j] = az; dgr[2 * H + j] = an * r;                             \
        dst[j] = d * z;                                                                    \
    }                                                                                      \
}                                                                                          \
/* GRU reset_after=False backward, pass 1: z and n */                                      \
A static void nn_gru_bwd1_##S##V(const T *NN_RESTRICT g, const T *NN_RESTRICT hp,          \
        const T *NN_RESTRICT dh, const T *NN_RESTRICT go, T *NN_RESTRICT dgr,             \
        T *NN_RESTRICT dst, ptrdiff_t n, ptrdiff_t H)                                      \
{                                                                                          \
    for (ptrdiff_t j = 0; j < n; j++) {                                                    \
        T d = dh[j] + go[j];                                                               \
        T z = g[H + j], m = g[2 * H + j];                                                  \
        dgr[2 * H + j] = d * (1 - z) * (1 - m * m);                                        \
        dgr[H + j] = d * (hp[j] - m) * z * (1 - z);                                        \
        dst[j] = d * z;                                                                    \
    }                                                                                      \
}                                                                                          \
/* GRU reset_after=False backward, pass 2: r and the r*h path (drh = d(r*h)) */            \
A static void nn_gru_bwd2_##S##V(const T *NN_RESTRICT g, const T *NN_RESTRICT hp,          \
        const T *NN_RESTRICT drh, T *NN_RESTRICT dgr, T *NN_RESTRICT dst, ptrdiff_t n)    \
{                                                                                          \
    for (ptrdiff_t j = 0; j < n; j++) {                                                    \
        T r = g[j];                                                                        \
        dgr[j] = drh[j] * hp[j] * r * (1 - r);                                             \
        dst[j] += drh[j] * r;                                                              \
    }                                                                                      \
}

NN_DEFINE_GATE_ROWS(float, f, nn_sigmoidf, nn_tanhf, _base, )
NN_DEFINE_GATE_ROWS(double, d, nn_sigmoid, nn_tanh, _base, )
#if NN_X86_DISPATCH
NN_DEFINE_GATE_ROWS(float, f, nn_sigmoidf, nn_tanhf, _avx2, NN_TARGET_AVX2)
NN_DEFINE_GATE_ROWS(double, d, nn_sigmoid, nn_tanh, _avx2, NN_TARGET_AVX2)
#endif

#define NN_GATE_WRAP(S, T)                                                                 \
static inline void nn_lstm_fwd_##S(T *a, const T *hr, const T *bx, const T *cp, T *cn,    \
        T *tc, T *hn, T *o, ptrdiff_t n, ptrdiff_t H, ptrdiff_t R)                         \
{ NN_PICK(nn_lstm_fwd_##S, (a, hr, bx, cp, cn, tc, hn, o, n, H, R)); }                      \
static inline void nn_rnn_fwd_##S(T *a, const T *hr, const T *bx, T *hn, T *o,            \
        ptrdiff_t n, int relu)                                                             \
{ NN_PICK(nn_rnn_fwd_##S, (a, hr, bx, hn, o, n, relu)); }                                   \
static inline void nn_gru_ra_fwd_##S(T *a, const T *hr, const T *bx, const T *bhn,        \
        const T *hp, T *hw, T *hn, T *o, ptrdiff_t n, ptrdiff_t H, ptrdiff_t R)            \
{ NN_PICK(nn_gru_ra_fwd_##S, (a, hr, bx, bhn, hp, hw, hn, o, n, H, R)); }                   \
static inline void nn_gru_fwd1_##S(T *a, const T *hr, const T *bx, const T *hp, T *rh,    \
        ptrdiff_t n, ptrdiff_t H, ptrdiff_t R)                                             \
{ NN_PICK(nn_gru_fwd1_##S, (a, hr, bx, hp, rh, n, H, R)); }                                 \
static inline void nn_gru_fwd2_##S(T *a, const T *hr, const T *bx, const T *hp, T *hn,    \
        T *o, ptrdiff_t n, ptrdiff_t H)                                                    \
{ NN_PICK(nn_gru_fwd2_##S, (a, hr, bx, hp, hn, o, n, H)); }                                 \
static inline void nn_lstm_bwd_##S(const T *g, const T *tc, const T *cp, const T *dh,     \
        const T *go, T *dc, T *dgr, ptrdiff_t n, ptrdiff_t H)                              \
{ NN_PICK(nn_lstm_bwd_##S, (g, tc, cp, dh, go, dc, dgr, n, H)); }                           \
static inline void nn_rnn_bwd_##S(const T *g, const T *dh, const T *go, T *dgr,           \
        ptrdiff_t n, int relu)                                                             \
{ NN_PICK(nn_rnn_bwd_##S, (g, dh, go, dgr, n, relu)); }                                     \
static inline void nn_gru_ra_bwd_##S(const T *g, const T *hw, const T *hp, const T *dh,   \
        const T *go, T *dgx, T *dgr, T *dst, ptrdiff_t n, ptrdiff_t H)                     \
{ NN_PICK(nn_gru_ra_bwd_##S, (g, hw, hp, dh, go, dgx, dgr, dst, n, H)); }                   \
static inline void nn_gru_bwd1_##S(const T *g, const T *hp, const T *dh, const T *go,     \
        T *dgr, T *dst, ptrdiff_t n, ptrdiff_t H)                                          \
{ NN_PICK(nn_gru_bwd1_##S, (g, hp, dh, go, dgr, dst, n, H)); }                              \
static inline void nn_gru_bwd2_##S(const T *g, const T *hp, const T *drh, T *dgr,         \
        T *dst, ptrdiff_t n)                                                               \
{ NN_PICK(nn_gru_bwd2_##S, (g, hp, drh, dgr, dst, n)); }

NN_GATE_WRAP(f, float)
NN_GATE_WRAP(d, double)

#endif /* NN_CORE_RNN_GATES_H */

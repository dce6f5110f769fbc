/*
 * _rnn_pack.h -- the recurrence product with W_hh packed once per sweep.
 *
 * The per-step products of a recurrent sweep are small and skinny (h [B, H] times
 * W_hh^T [H, G*H]); BLAS packs W_hh again at every step.  Here W_hh is packed once per
 * sweep into panels of NR columns (NR = 16 floats / 8 doubles: two AVX2 vectors) and a
 * register-blocked micro-kernel multiplies a few rows of the left operand with one
 * panel:
 *
 *     C[mr, NR] (+)= A[mr, K] @ P[K, NR],   mr = 1..6 rows (12 accumulators at 6)
 *
 * Every element of C is one chain of fused multiply-adds over k = 0, 1, ..., K-1
 * (starting from 0, or from C with `acc`), whatever the row block or the panel group
 * that computes it.  So the result does not depend on how rows and panels are cut: a
 * step loop over a range of batch rows gives the same bits as over the whole batch.
 * (The baseline build, without FMA, rounds each product: also a fixed order.)
 *
 * Panel layouts (P[p][k][c] is element c of row k of panel p; columns past H are 0):
 *   forward   the gate rows of W_hh [G*H, H] for unit block q = columns q*NR .. q*NR+NR-1
 *             of each gate: P[p][k][c] = W_hh[g*H + q*NR + c, k], K = H.  Panel order:
 *             the first G1 gates unit block by unit block (p = q*G1 + g), then the
 *             remaining G - G1 gates likewise (the GRU's n gate, whose product waits
 *             for r*h): nn_fwd_panel().
 *   backward  the columns of W_hh for unit block q: P[q][n][c] = W_hh[n, q*NR + c],
 *             K = G*H (dh_prev = dG @ W_hh).
 * nn_pack_fwd / nn_pack_bwd pack the panels of unit blocks [q0, q1).
 *
 * Fused-type front: _rnn_pack.pxd.
 */
#ifndef NN_CORE_RNN_PACK_H
#define NN_CORE_RNN_PACK_H

#include <stddef.h>
#include <string.h>

#include "_simd.h"
#if NN_X86_DISPATCH
#include <immintrin.h>
#endif

#define NN_NR_F 16
#define NN_NR_D 8
#define NN_MR 6

/* Panel index of gate g, unit block q (NQ blocks; the first G1 gates come first). */
static inline ptrdiff_t nn_fwd_panel(ptrdiff_t q, ptrdiff_t g, ptrdiff_t NQ, ptrdiff_t G,
                                     ptrdiff_t G1)
{
    return g < G1 ? q * G1 + g : G1 * NQ + q * (G - G1) + (g - G1);
}

/* Row blocks of a product over B rows: 6-row blocks; a remainder of 1-3 rows borrows
 * one 6-row block (7 = 4+3, 8 = 4+4, 9 = 5+4).  Writes the block sizes to `plan`
 * (at most B / 4 + 2 entries); returns how many. */
static inline int nn_row_plan(ptrdiff_t B, unsigned char *plan)
{
    ptrdiff_t n6 = B / 6, r = B % 6;
    int nb = 0;
    if (r >= 1 && r <= 3 && n6 >= 1) {
        n6--;
        r += 6;
    }
    for (ptrdiff_t i = 0; i < n6; i++)
        plan[nb++] = 6;
    if (r == 7) { plan[nb++] = 4; plan[nb++] = 3; }
    else if (r == 8) { plan[nb++] = 4; plan[nb++] = 4; }
    else if (r == 9) { plan[nb++] = 5; plan[nb++] = 4; }
    else if (r) plan[nb++] = (unsigned char)r;
    return nb;
}

/* ------------------------------------------------------------------ packing -- */
#define NN_DEFINE_PACK(T, S, NR)                                                           \
/* Forward panels of unit blocks [q0, q1) (all gates) from Wm [G*H, H]. */                  \
static void nn_pack_fwd_##S(const T *Wm, ptrdiff_t H, ptrdiff_t G, ptrdiff_t G1,            \
                            ptrdiff_t q0, ptrdiff_t q1, T *P)                              \
{                                                                                          \
    ptrdiff_t NQ = (H + NR - 1) / NR;                                                      \
    for (ptrdiff_t q = q0; q < q1; q++)                                                    \
        for (ptrdiff_t g = 0; g < G; g++) {                                                \
            T *p = P + nn_fwd_panel(q, g, NQ, G, G1) * H * NR;                             \
            for (ptrdiff_t c = 0; c < NR; c++) {                                           \
                ptrdiff_t j = q * NR + c;                                                  \
                if (j < H) {                                                               \
                    const T *w = Wm + (g * H + j) * H;                                      \
                    for (ptrdiff_t k = 0; k < H; k++)                                      \
                        p[k * NR + c] = w[k];                                              \
                } else {                                                                   \
                    for (ptrdiff_t k = 0; k < H; k++)                                      \
                        p[k * NR + c] = 0;                                                 \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
}                                                                                          \
/* Backward panels of unit blocks [q0, q1) from Wm [GH, H]: P[q][n][c] = Wm[n, q*NR+c]. */   \
static void nn_pack_bwd_##S(const T *Wm, ptrdiff_t H, ptrdiff_t GH, ptrdiff_t q0,           \
                            ptrdiff_t q1, T *P)                                            \
{                                                                                          \
    for (ptrdiff_t q = q0; q < q1; q++) {                                                  \
        T *p = P + q * GH * NR;                                                            \
        ptrdiff_t j0 = q * NR, nc = H - j0 < NR ? H - j0 : NR;                             \
        for (ptrdiff_t n = 0; n < GH; n++) {                                               \
            memcpy(p + n * NR, Wm + n * H + j0, (size_t)nc * sizeof(T));                    \
            for (ptrdiff_t c = nc; c < NR; c++)                                            \
                p[n * NR + c] = 0;                                                         \
        }                                                                                  \
    }                                                                                      \
}

NN_DEFINE_PACK(float, f, NN_NR_F)
NN_DEFINE_PACK(double, d, NN_NR_D)

/* ------------------------------------------------------- portable kernel -- */
/* C[MR, nc] (+)= A[MR, K] @ P[K, NR]; one accumulator per element. */
#define NN_DEFINE_TILE_BASE(T, S, NR, MR)                                                  \
static void nn_tile##MR##_##S##_base(ptrdiff_t K, const T *A, ptrdiff_t lda,               \
                                     const T *P, T *C, ptrdiff_t ldc, int nc, int acc)     \
{                                                                                          \
    T c[MR][NR];                                                                           \
    for (int r = 0; r < MR; r++)                                                           \
        for (int j = 0; j < NR; j++)                                                       \
            c[r][j] = (acc && j < nc) ? C[r * ldc + j] : (T)0;                             \
    for (ptrdiff_t k = 0; k < K; k++) {                                                    \
        const T *p = P + k * NR;                                                           \
        for (int r = 0; r < MR; r++) {                                                     \
            T a = A[r * lda + k];                                                          \
            for (int j = 0; j < NR; j++)                                                   \
                c[r][j] += a * p[j];                                                       \
        }                                                                                  \
    }                                                                                      \
    for (int r = 0; r < MR; r++)                                                           \
        for (int j = 0; j < nc; j++)                                                       \
            C[r * ldc + j] = c[r][j];                                                      \
}

#define NN_DEFINE_TILES_BASE(T, S, NR)                                                     \
NN_DEFINE_TILE_BASE(T, S, NR, 1)                                                           \
NN_DEFINE_TILE_BASE(T, S, NR, 2)                                                           \
NN_DEFINE_TILE_BASE(T, S, NR, 3)                                                           \
NN_DEFINE_TILE_BASE(T, S, NR, 4)                                                           \
NN_DEFINE_TILE_BASE(T, S, NR, 5)                                                           \
NN_DEFINE_TILE_BASE(T, S, NR, 6)                                                           \
static void nn_tile_##S##_base(int mr, ptrdiff_t K, const T *A, ptrdiff_t lda,             \
                               const T *P, T *C, ptrdiff_t ldc, int nc, int acc)           \
{                                                                                          \
    switch (mr) {                                                                          \
    case 1: nn_tile1_##S##_base(K, A, lda, P, C, ldc, nc, acc); break;                     \
    case 2: nn_tile2_##S##_base(K, A, lda, P, C, ldc, nc, acc); break;                     \
    case 3: nn_tile3_##S##_base(K, A, lda, P, C, ldc, nc, acc); break;                     \
    case 4: nn_tile4_##S##_base(K, A, lda, P, C, ldc, nc, acc); break;                     \
    case 5: nn_tile5_##S##_base(K, A, lda, P, C, ldc, nc, acc); break;                     \
    default: nn_tile6_##S##_base(K, A, lda, P, C, ldc, nc, acc); break;                    \
    }                                                                                      \
}                                                                                          \
/* one row times np panels (stride ps) into np*NR contiguous outputs (the last panel:   \
 * nc columns) */                                                                          \
static void nn_gemv_##S##_base(ptrdiff_t np, ptrdiff_t K, const T *a, const T *P,          \
                               ptrdiff_t ps, T *C, int nc, int acc)                        \
{                                                                                          \
    for (ptrdiff_t p = 0; p < np; p++)                                                     \
        nn_tile1_##S##_base(K, a, K, P + p * ps, C + p * NR, 0,                            \
                            p == np - 1 ? nc : NR, acc);                                   \
}

NN_DEFINE_TILES_BASE(float, f, NN_NR_F)
NN_DEFINE_TILES_BASE(double, d, NN_NR_D)

/* ----------------------------------------------------------- AVX2 kernel -- */
#if NN_X86_DISPATCH
/* Named accumulators (two vectors per row) so that they live in registers; rows past
 * MR compile away.  Partial tiles (nc < NR) go through a small buffer. */
#define NN_ROW_DECL(V, r) V c##r##a, c##r##b;
#define NN_ROW_INIT(r)                                                                     \
    if (MR > r) {                                                                          \
        if (acc) { c##r##a = NN_VLOADU(Cin + r * ldi); c##r##b = NN_VLOADU(Cin + r * ldi + NN_VW); } \
        else { c##r##a = NN_VZERO(); c##r##b = NN_VZERO(); }                                     \
    }
#define NN_ROW_FMA(r)                                                                      \
    if (MR > r) {                                                                          \
        NN_VT a_ = NN_VBCAST(A + r * lda + k);                                                   \
        c##r##a = NN_VFMA(a_, b0, c##r##a);                                                   \
        c##r##b = NN_VFMA(a_, b1, c##r##b);                                                   \
    }
#define NN_ROW_STORE(r)                                                                    \
    if (MR > r) { NN_VSTOREU(Co + r * ldo, c##r##a); NN_VSTOREU(Co + r * ldo + NN_VW, c##r##b); }
#define NN_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define NN_ROWS_V(X, V) X(V, 0) X(V, 1) X(V, 2) X(V, 3) X(V, 4) X(V, 5)

#define NN_DEFINE_TILE_AVX2(T, S, NR)                                                      \
NN_TARGET_AVX2 static inline __attribute__((always_inline)) void                           \
nn_tile_##S##_avx2_body(const int MR, ptrdiff_t K, const T *A, ptrdiff_t lda,              \
                        const T *P, T *C, ptrdiff_t ldc, int nc, int acc)                  \
{                                                                                          \
    T buf[NN_MR * NR];                                                                     \
    const T *Cin = C;                                                                      \
    T *Co = C;                                                                             \
    ptrdiff_t ldi = ldc, ldo = ldc;                                                        \
    NN_ROWS_V(NN_ROW_DECL, NN_VT)                                                             \
    if (nc < NR) {                                                                         \
        for (int r = 0; r < MR; r++)                                                       \
            for (int j = 0; j < NR; j++)                                                   \
                buf[r * NR + j] = (acc && j < nc) ? C[r * ldc + j] : (T)0;                 \
        Cin = Co = buf;                                                                    \
        ldi = ldo = NR;                                                                    \
    }                                                                                      \
    NN_ROWS(NN_ROW_INIT)                                                                   \
    ptrdiff_t k = 0;                                                                       \
    for (; k + 4 <= K; k += 4) {                                                           \
        _mm_prefetch((const char *)(P + (k + 8) * NR), _MM_HINT_T0);                       \
        for (int u = 0; u < 4; u++, k++) {                                                 \
            NN_VT b0 = NN_VLOAD(P + k * NR), b1 = NN_VLOAD(P + k * NR + NN_VW);                         \
            NN_ROWS(NN_ROW_FMA)                                                            \
        }                                                                                  \
        k -= 4;                                                                            \
    }                                                                                      \
    for (; k < K; k++) {                                                                   \
        NN_VT b0 = NN_VLOAD(P + k * NR), b1 = NN_VLOAD(P + k * NR + NN_VW);                             \
        NN_ROWS(NN_ROW_FMA)                                                                \
    }                                                                                      \
    NN_ROWS(NN_ROW_STORE)                                                                  \
    if (nc < NR)                                                                           \
        for (int r = 0; r < MR; r++)                                                       \
            for (int j = 0; j < nc; j++)                                                   \
                C[r * ldc + j] = buf[r * NR + j];                                          \
}                                                                                          \
NN_TARGET_AVX2 static void nn_tile_##S##_avx2(int mr, ptrdiff_t K, const T *A,             \
        ptrdiff_t lda, const T *P, T *C, ptrdiff_t ldc, int nc, int acc)                   \
{                                                                                          \
    switch (mr) {                                                                          \
    case 1: nn_tile_##S##_avx2_body(1, K, A, lda, P, C, ldc, nc, acc); break;              \
    case 2: nn_tile_##S##_avx2_body(2, K, A, lda, P, C, ldc, nc, acc); break;              \
    case 3: nn_tile_##S##_avx2_body(3, K, A, lda, P, C, ldc, nc, acc); break;              \
    case 4: nn_tile_##S##_avx2_body(4, K, A, lda, P, C, ldc, nc, acc); break;              \
    case 5: nn_tile_##S##_avx2_body(5, K, A, lda, P, C, ldc, nc, acc); break;              \
    default: nn_tile_##S##_avx2_body(6, K, A, lda, P, C, ldc, nc, acc); break;             \
    }                                                                                      \
}                                                                                          \
/* One row times up to 4 panels at a time (8 independent chains): the matrix-vector    \
 * product of a one-row batch. */                                                          \
NN_TARGET_AVX2 static inline __attribute__((always_inline)) void                           \
nn_gemv4_##S##_avx2_body(const int NP, ptrdiff_t K, const T *a, const T *P, ptrdiff_t ps,  \
                         T *C, int acc)                                                    \
{                                                                                          \
    NN_VT c0, c1, c2, c3, c4, c5, c6, c7;                                                     \
    c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = NN_VZERO();                                       \
    if (acc) {                                                                             \
        c0 = NN_VLOADU(C); c1 = NN_VLOADU(C + NN_VW);                                                \
        if (NP > 1) { c2 = NN_VLOADU(C + NR); c3 = NN_VLOADU(C + NR + NN_VW); }                      \
        if (NP > 2) { c4 = NN_VLOADU(C + 2 * NR); c5 = NN_VLOADU(C + 2 * NR + NN_VW); }              \
        if (NP > 3) { c6 = NN_VLOADU(C + 3 * NR); c7 = NN_VLOADU(C + 3 * NR + NN_VW); }              \
    }                                                                                      \
    for (ptrdiff_t k = 0; k < K; k++) {                                                    \
        NN_VT x = NN_VBCAST(a + k);                                                              \
        const T *p = P + k * NR;                                                           \
        c0 = NN_VFMA(x, NN_VLOAD(p), c0); c1 = NN_VFMA(x, NN_VLOAD(p + NN_VW), c1);                        \
        if (NP > 1) { c2 = NN_VFMA(x, NN_VLOAD(p + ps), c2); c3 = NN_VFMA(x, NN_VLOAD(p + ps + NN_VW), c3); } \
        if (NP > 2) { c4 = NN_VFMA(x, NN_VLOAD(p + 2 * ps), c4);                                 \
                      c5 = NN_VFMA(x, NN_VLOAD(p + 2 * ps + NN_VW), c5); }                           \
        if (NP > 3) { c6 = NN_VFMA(x, NN_VLOAD(p + 3 * ps), c6);                                 \
                      c7 = NN_VFMA(x, NN_VLOAD(p + 3 * ps + NN_VW), c7); }                           \
    }                                                                                      \
    NN_VSTOREU(C, c0); NN_VSTOREU(C + NN_VW, c1);                                                    \
    if (NP > 1) { NN_VSTOREU(C + NR, c2); NN_VSTOREU(C + NR + NN_VW, c3); }                          \
    if (NP > 2) { NN_VSTOREU(C + 2 * NR, c4); NN_VSTOREU(C + 2 * NR + NN_VW, c5); }                  \
    if (NP > 3) { NN_VSTOREU(C + 3 * NR, c6); NN_VSTOREU(C + 3 * NR + NN_VW, c7); }                  \
}                                                                                          \
NN_TARGET_AVX2 static void nn_gemv_##S##_avx2(ptrdiff_t np, ptrdiff_t K, const T *a,       \
        const T *P, ptrdiff_t ps, T *C, int nc, int acc)                                   \
{                                                                                          \
    /* full panels in groups of 4 (3, 2, 1 at the end); a partial last panel alone */     \
    ptrdiff_t full = nc < NR ? np - 1 : np, p = 0;                                         \
    for (; p + 4 <= full; p += 4)                                                          \
        nn_gemv4_##S##_avx2_body(4, K, a, P + p * ps, ps, C + p * NR, acc);                \
    if (full - p == 3)                                                                     \
        nn_gemv4_##S##_avx2_body(3, K, a, P + p * ps, ps, C + p * NR, acc);                \
    else if (full - p == 2)                                                                \
        nn_gemv4_##S##_avx2_body(2, K, a, P + p * ps, ps, C + p * NR, acc);                \
    else if (full - p == 1)                                                                \
        nn_gemv4_##S##_avx2_body(1, K, a, P + p * ps, ps, C + p * NR, acc);                \
    if (full < np)                                                                         \
        nn_tile_##S##_avx2_body(1, K, a, K, P + full * ps, C + full * NR, 0, nc, acc);     \
}

#define NN_VT __m256
#define NN_VW 8
#define NN_VLOAD _mm256_load_ps
#define NN_VLOADU _mm256_loadu_ps
#define NN_VSTOREU _mm256_storeu_ps
#define NN_VBCAST _mm256_broadcast_ss
#define NN_VFMA _mm256_fmadd_ps
#define NN_VZERO _mm256_setzero_ps
NN_DEFINE_TILE_AVX2(float, f, NN_NR_F)
#undef NN_VT
#undef NN_VW
#undef NN_VLOAD
#undef NN_VLOADU
#undef NN_VSTOREU
#undef NN_VBCAST
#undef NN_VFMA
#undef NN_VZERO
#define NN_VT __m256d
#define NN_VW 4
#define NN_VLOAD _mm256_load_pd
#define NN_VLOADU _mm256_loadu_pd
#define NN_VSTOREU _mm256_storeu_pd
#define NN_VBCAST _mm256_broadcast_sd
#define NN_VFMA _mm256_fmadd_pd
#define NN_VZERO _mm256_setzero_pd
NN_DEFINE_TILE_AVX2(double, d, NN_NR_D)
#undef NN_VT
#undef NN_VW
#undef NN_VLOAD
#undef NN_VLOADU
#undef NN_VSTOREU
#undef NN_VBCAST
#undef NN_VFMA
#undef NN_VZERO
#endif /* NN_X86_DISPATCH */

/* ------------------------------------------------------------ the drivers -- */
/*
 * nn_pgemm: C[B, nc] (+)= A[B, K] @ P[K, NR] for one panel, over the row blocks of
 * `plan` (nn_row_plan).  nn_pgemv: one row times np panels (stride ps) into np*NR
 * contiguous outputs (the last panel: nc).  P must be 32-byte aligned.
 */
#define NN_DEFINE_DRIVERS(T, S)                                                            \
static void nn_pgemm_##S(const unsigned char *plan, int nb, ptrdiff_t K, const T *A,       \
                         ptrdiff_t lda, const T *P, T *C, ptrdiff_t ldc, int nc, int acc)  \
{                                                                                          \
    int avx2 = NN_X86_DISPATCH && nn_simd_level() >= 1;                                    \
    for (int i = 0; i < nb; i++) {                                                         \
        int mr = plan[i];                                                                  \
        if (avx2) NN_AVX2_CALL(nn_tile_##S, (mr, K, A, lda, P, C, ldc, nc, acc));          \
        else nn_tile_##S##_base(mr, K, A, lda, P, C, ldc, nc, acc);                        \
        A += mr * lda;                                                                     \
        C += mr * ldc;                                                                     \
    }                                                                                      \
}                                                                                          \
static void nn_pgemv_##S(ptrdiff_t np, ptrdiff_t K, const T *a, const T *P, ptrdiff_t ps,  \
                         T *C, int nc, int acc)                                            \
{                                                                                          \
    NN_PICK(nn_gemv_##S, (np, K, a, P, ps, C, nc, acc));                                   \
}

#if NN_X86_DISPATCH
#define NN_AVX2_CALL(name, args) name##_avx2 args
#else
#define NN_AVX2_CALL(name, args) name##_base args
#endif

NN_DEFINE_DRIVERS(float, f)
NN_DEFINE_DRIVERS(double, d)

#endif /* NN_CORE_RNN_PACK_H */

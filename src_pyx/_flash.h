/*
 * _flash.h -- the row passes of the tiled ("flash") attention kernel, _flash_attention.pyx.
 *
 * The kernel never materialises the [L_q, L_k] probabilities: it works on score tiles
 * S = scale * Q[r0:r1] K[c0:c0+w]^T of at most block_q x block_k entries, and these
 * functions do everything between the GEMMs on one tile, row by row.
 *
 * Forward (online softmax; Milakov & Gimelshein, 2018; Dao et al., 2022, 2023):
 * row r keeps a running max m and sum l of the keys seen so far, and its output
 * row o (unnormalised).  A new tile raises the max to m' = max(m, max_j s_j), turns
 * the tile into p_j = exp(s_j - m') and rescales what was accumulated:
 *     l <- l exp(m - m') + sum_j p_j,     o <- o exp(m - m')
 * (the caller then adds p V[c0:c0+w] to o).  After the last tile o / l is the output
 * and m + log(l) the log-sum-exp that the backward keeps instead of the probabilities.
 *
 * Backward: p_j = exp(s_j - lse) recomputes the probabilities of a tile exactly as the
 * forward normalised them, and dS = P * (dP - D) with D = rowsum(dO * O).
 *
 * Rows, limits and masks, in every function here:
 *   row r of the tile may use its first n(r) entries: n(r) = w, or with `causal`
 *   clamp(lim + r, 0, w) (the bottom-right causal limit relative to the tile);
 *   mk: 0 no mask, 1 bool (bm[r*mrs + j*mcs] != 0: attend), 2 additive (fm[..] is added);
 *   entries at or beyond n(r), and bool-masked ones, get p = 0 exactly.
 *   A row with no allowed entry so far has m = -inf (its o and p stay 0); a NaN score
 *   among the allowed entries makes the row NaN (the max is NaN-sticky), as in
 *   _softmax_row.pxd.
 *
 * Dropout (optional, `drop` non-NULL): the counter-based mask of _layers.h,
 * element (row, key) of the flat [P, L_q, L_k] score tensor being counter
 * drop->off + r * drop->row + j, so the backward (and a NumPy reference) regenerate
 * exactly the forward's mask from the key alone.
 *
 * Each loop is compiled for baseline x86-64 and AVX2+FMA and picked through _simd.h;
 * the exp pass is _vmath.h's nn_vexp_sum at the loop's level.
 */
#ifndef NN_CORE_FLASH_H
#define NN_CORE_FLASH_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>

#include "_vmath.h"
#include "_layers.h"     /* nn_dropout_*: the counter-based dropout generator */

/* One dropout mask: keep element c iff hash(c; k0, k1) >= threshold, survivors
 * scaled; off: counter of the tile's (row 0, column 0); row: counter step per row
 * (L_k).  ones/keep: scratch rows of >= w entries (ones all 1). */
typedef struct {
    uint64_t off, row;
    uint32_t k0, k1, threshold;
    double scale;
    const void *ones;
    void *keep;
} nn_fa_drop;

NN_INLINE ptrdiff_t nn_fa_limit(int causal, ptrdiff_t lim, ptrdiff_t r, ptrdiff_t w)
{
    ptrdiff_t n = causal ? lim + r : w;
    return n < 0 ? 0 : (n > w ? w : n);
}

/* ---------------------------------------------- NaN-sticky max, one pass (AVX2) -- */
#if NN_X86_DISPATCH
#include <immintrin.h>
NN_TARGET_AVX2 static float nn_fa_max_f_avx2(const float *x, ptrdiff_t n)
{
    __m256 a0 = _mm256_set1_ps(-INFINITY), a1 = a0, bad = _mm256_setzero_ps();
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        a0 = _mm256_max_ps(a0, v0);
        a1 = _mm256_max_ps(a1, v1);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(v0, v1, _CMP_UNORD_Q));
    }
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        a0 = _mm256_max_ps(a0, v);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    a0 = _mm256_max_ps(a0, a1);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    float m = _mm_cvtss_f32(h);
    int nan = _mm256_movemask_ps(bad);
    for (; i < n; i++) {
        float v = x[i];
        nan |= v != v;
        m = v > m ? v : m;
    }
    return nan ? NAN : m;
}

NN_TARGET_AVX2 static double nn_fa_max_d_avx2(const double *x, ptrdiff_t n)
{
    __m256d a0 = _mm256_set1_pd(-INFINITY), a1 = a0, bad = _mm256_setzero_pd();
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256d v0 = _mm256_loadu_pd(x + i), v1 = _mm256_loadu_pd(x + i + 4);
        a0 = _mm256_max_pd(a0, v0);
        a1 = _mm256_max_pd(a1, v1);
        bad = _mm256_or_pd(bad, _mm256_cmp_pd(v0, v1, _CMP_UNORD_Q));
    }
    for (; i + 4 <= n; i += 4) {
        __m256d v = _mm256_loadu_pd(x + i);
        a0 = _mm256_max_pd(a0, v);
        bad = _mm256_or_pd(bad, _mm256_cmp_pd(v, v, _CMP_UNORD_Q));
    }
    a0 = _mm256_max_pd(a0, a1);
    __m128d h = _mm_max_pd(_mm256_castpd256_pd128(a0), _mm256_extractf128_pd(a0, 1));
    h = _mm_max_sd(h, _mm_unpackhi_pd(h, h));
    double m = _mm_cvtsd_f64(h);
    int nan = _mm256_movemask_pd(bad);
    for (; i < n; i++) {
        double v = x[i];
        nan |= v != v;
        m = v > m ? v : m;
    }
    return nan ? (double)NAN : m;
}
#endif
#define nn_fa_max_f_base nn_vmax_f_base
#define nn_fa_max_d_base nn_vmax_d_base

/* -------------------------------------------------------------- tile passes -- */
/*
 * nn_fa_mask_S(x, n, mk, b, f, mcs): x[j] = b[j*mcs] ? x[j] : -inf (bool) or
 *     x[j] += f[j*mcs] (additive), j < n.
 * nn_fa_fwd_tile_S(s, lds, rows, w, causal, lim, mk, bm, fm, mrs, mcs, m, l, o, ldo, dv,
 *                  drop): the forward step above; s becomes the (dropped-out) p.
 * nn_fa_bwd_p_S(s, lds, rows, w, causal, lim, mk, bm, fm, mrs, mcs, lse):
 *     s becomes p = exp(s + mask - lse) (0 where not allowed; a row whose lse is +inf,
 *     i.e. that had no allowed key in the forward, is all 0).
 * nn_fa_bwd_ds_S(p, dp, ld, rows, w, causal, lim, lse, D, drop): dp becomes
 *     dS = p * (dp * z - D[r]) and p becomes p * z, with z the dropout multiplier (1
 *     without dropout); exact zeros beyond n(r) and in rows whose lse is +inf.
 */
#define NN_FA_DEFINE(T, S, EXP, V, A)                                                 \
A static void nn_fa_mask_##S##V(T *x, ptrdiff_t n, int mk, const uint8_t *b,         \
                                const T *f, ptrdiff_t mcs)                           \
{                                                                                    \
    if (mk == 1) {                                                                   \
        if (mcs == 1)                                                                \
            for (ptrdiff_t j = 0; j < n; j++)                                        \
                x[j] = b[j] ? x[j] : (T)-INFINITY;                                   \
        else                                                                         \
            for (ptrdiff_t j = 0; j < n; j++)                                        \
                x[j] = b[j * mcs] ? x[j] : (T)-INFINITY;                             \
    } else if (mk == 2) {                                                            \
        if (mcs == 1)                                                                \
            for (ptrdiff_t j = 0; j < n; j++)                                        \
                x[j] += f[j];                                                        \
        else                                                                         \
            for (ptrdiff_t j = 0; j < n; j++)                                        \
                x[j] += f[j * mcs];                                                  \
    }                                                                                \
}                                                                                    \
A static void nn_fa_keep_##S##V(const nn_fa_drop *d, ptrdiff_t r, ptrdiff_t w)      \
{                                                                                    \
    nn_dropout_##S##V((T *)d->keep, (const T *)d->ones, w, d->off + (uint64_t)r * d->row, \
                      d->k0, d->k1, d->threshold, (T)d->scale);                      \
}                                                                                    \
A static void nn_fa_fwd_tile_##S##V(T *s, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t w, \
        int causal, ptrdiff_t lim, int mk, const uint8_t *bm, const T *fm,            \
        ptrdiff_t mrs, ptrdiff_t mcs, T *m, T *l, T *o, ptrdiff_t ldo, ptrdiff_t dv,  \
        const nn_fa_drop *drop)                                                      \
{                                                                                    \
    for (ptrdiff_t r = 0; r < rows; r++) {                                           \
        T *x = s + r * lds, *orow = o + r * ldo;                                     \
        ptrdiff_t n = nn_fa_limit(causal, lim, r, w);                                \
        nn_fa_mask_##S##V(x, n, mk, bm + r * mrs, fm + r * mrs, mcs);                \
        T mo = m[r], mt = nn_fa_max_##S##V(x, n);                                    \
        T mn = (mt > mo || mt != mt) ? mt : mo;        /* NaN-sticky */              \
        if (mn == (T)-INFINITY) {                      /* nothing allowed yet */     \
            memset(x, 0, (size_t)w * sizeof(T));                                     \
            continue;                                                                \
        }                                                                            \
        T sum = nn_vexp_sum_##S##V(x, x, mn, n);                                      \
        if (n < w)                                                                   \
            memset(x + n, 0, (size_t)(w - n) * sizeof(T));                           \
        if (!(mn == mo)) {                             /* the max rose (or NaN) */   \
            if (mo == (T)-INFINITY) {                  /* first allowed key */       \
                memset(orow, 0, (size_t)dv * sizeof(T));                             \
                l[r] = sum;                                                          \
            } else {                                                                 \
                T alpha = EXP(mo - mn);                                              \
                l[r] = l[r] * alpha + sum;                                           \
                for (ptrdiff_t j = 0; j < dv; j++)                                   \
                    orow[j] *= alpha;                                                \
            }                                                                        \
            m[r] = mn;                                                               \
        } else {                                                                     \
            l[r] += sum;                                                             \
        }                                                                            \
        if (drop) {                                                                  \
            const T *z = (const T *)drop->keep;                                      \
            nn_fa_keep_##S##V(drop, r, n);                                           \
            for (ptrdiff_t j = 0; j < n; j++)                                        \
                x[j] *= z[j];                                                        \
        }                                                                            \
    }                                                                                \
}                                                                                    \
A static void nn_fa_bwd_p_##S##V(T *s, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t w,    \
        int causal, ptrdiff_t lim, int mk, const uint8_t *bm, const T *fm,            \
        ptrdiff_t mrs, ptrdiff_t mcs, const T *lse)                                  \
{                                                                                    \
    for (ptrdiff_t r = 0; r < rows; r++) {                                           \
        T *x = s + r * lds;                                                          \
        ptrdiff_t n = nn_fa_limit(causal, lim, r, w);                                \
        if (lse[r] == (T)INFINITY)                     /* no allowed key at all */   \
            n = 0;                                                                   \
        nn_fa_mask_##S##V(x, n, mk, bm + r * mrs, fm + r * mrs, mcs);                \
        nn_vexp_sum_##S##V(x, x, lse[r], n);                                          \
        if (n < w)                                                                   \
            memset(x + n, 0, (size_t)(w - n) * sizeof(T));                           \
    }                                                                                \
}                                                                                    \
A static void nn_fa_bwd_ds_##S##V(T *p, T *dp, ptrdiff_t ld, ptrdiff_t rows,          \
        ptrdiff_t w, int causal, ptrdiff_t lim, const T *lse, const T *D,             \
        const nn_fa_drop *drop)                                                      \
{                                                                                    \
    for (ptrdiff_t r = 0; r < rows; r++) {                                           \
        T *pr = p + r * ld, *gr = dp + r * ld, dr = D[r];                            \
        ptrdiff_t n = nn_fa_limit(causal, lim, r, w);                                \
        if (lse[r] == (T)INFINITY)                     /* dS = 0, whatever dP is */  \
            n = 0;                                                                   \
        if (drop) {                                                                  \
            const T *z = (const T *)drop->keep;                                      \
            nn_fa_keep_##S##V(drop, r, n);                                           \
            for (ptrdiff_t j = 0; j < n; j++) {                                      \
                T pj = pr[j];                                                        \
                gr[j] = pj * (gr[j] * z[j] - dr);                                    \
                pr[j] = pj * z[j];                                                   \
            }                                                                        \
        } else {                                                                     \
            for (ptrdiff_t j = 0; j < n; j++)                                        \
                gr[j] = pr[j] * (gr[j] - dr);                                        \
        }                                                                            \
        if (n < w)                 /* beyond the causal limit: exact zeros */         \
            memset(gr + n, 0, (size_t)(w - n) * sizeof(T));                          \
    }                                                                                \
}

NN_FA_DEFINE(float, f, nn_expf, _base, )
NN_FA_DEFINE(double, d, nn_exp, _base, )
#if NN_X86_DISPATCH
NN_FA_DEFINE(float, f, nn_expf, _avx2, NN_TARGET_AVX2)
NN_FA_DEFINE(double, d, nn_exp, _avx2, NN_TARGET_AVX2)
#endif

/* ------------------------------------------------------- dispatched entries -- */
static inline void nn_fa_fwd_tile_f(float *s, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t w,
        int causal, ptrdiff_t lim, int mk, const uint8_t *bm, const float *fm,
        ptrdiff_t mrs, ptrdiff_t mcs, float *m, float *l, float *o, ptrdiff_t ldo,
        ptrdiff_t dv, const nn_fa_drop *drop)
{ NN_PICK(nn_fa_fwd_tile_f, (s, lds, rows, w, causal, lim, mk, bm, fm, mrs, mcs, m, l, o,
                             ldo, dv, drop)); }
static inline void nn_fa_fwd_tile_d(double *s, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t w,
        int causal, ptrdiff_t lim, int mk, const uint8_t *bm, const double *fm,
        ptrdiff_t mrs, ptrdiff_t mcs, double *m, double *l, double *o, ptrdiff_t ldo,
        ptrdiff_t dv, const nn_fa_drop *drop)
{ NN_PICK(nn_fa_fwd_tile_d, (s, lds, rows, w, causal, lim, mk, bm, fm, mrs, mcs, m, l, o,
                             ldo, dv, drop)); }
static inline void nn_fa_bwd_p_f(float *s, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t w,
        int causal, ptrdiff_t lim, int mk, const uint8_t *bm, const float *fm,
        ptrdiff_t mrs, ptrdiff_t mcs, const float *lse)
{ NN_PICK(nn_fa_bwd_p_f, (s, lds, rows, w, causal, lim, mk, bm, fm, mrs, mcs, lse)); }
static inline void nn_fa_bwd_p_d(double *s, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t w,
        int causal, ptrdiff_t lim, int mk, const uint8_t *bm, const double *fm,
        ptrdiff_t mrs, ptrdiff_t mcs, const double *lse)
{ NN_PICK(nn_fa_bwd_p_d, (s, lds, rows, w, causal, lim, mk, bm, fm, mrs, mcs, lse)); }
static inline void nn_fa_bwd_ds_f(float *p, float *dp, ptrdiff_t ld, ptrdiff_t rows,
        ptrdiff_t w, int causal, ptrdiff_t lim, const float *lse, const float *D,
        const nn_fa_drop *drop)
{ NN_PICK(nn_fa_bwd_ds_f, (p, dp, ld, rows, w, causal, lim, lse, D, drop)); }
static inline void nn_fa_bwd_ds_d(double *p, double *dp, ptrdiff_t ld, ptrdiff_t rows,
        ptrdiff_t w, int causal, ptrdiff_t lim, const double *lse, const double *D,
        const nn_fa_drop *drop)
{ NN_PICK(nn_fa_bwd_ds_d, (p, dp, ld, rows, w, causal, lim, lse, D, drop)); }

#endif /* NN_CORE_FLASH_H */

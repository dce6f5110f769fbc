/*
 * _attn_gemm.h -- the small GEMMs of attention, read where the operands lie.
 *
 *     C[m, n] = alpha * op(A)[m, k] @ B[k, n]        (acc: C += alpha * op(A) @ B)
 *
 * op(A) = A reads A[i*lda + p]; with `ta`, op(A) = A^T reads A[p*lda + i].  B is
 * row-major with row stride ldb, C with ldc.  These are the six attention products
 * (S = Q K^T with K^T stored, O = P V, dP = dO V^T, dQ = dS K; dV = P^T dO and
 * dK = dS^T Q with `ta`): B's rows are already the row panel a broadcast-A
 * micro-kernel wants, so nothing is packed.
 *
 * Micro-kernel: MR rows of op(A) times one panel of NR = 2 vectors of B columns,
 * 2*MR accumulators in registers; panels outer, row blocks inner (the B panel stays
 * in L1); the last MR+1 .. 2MR-1 rows go in two halves.  A partial last panel uses
 * masked loads.  Every element of C is one chain
 * of (fused) multiply-adds over p = 0, 1, ..., k-1 from 0, then scaled by alpha (and
 * added to C with `acc`), whatever the sizes of the blocks around it: a row computed
 * in a block of 6 or of 1 has the same bits.  SIMD level 2 (AVX-512F): NR = 32 floats /
 * 16 doubles, MR = 8; level 1 (AVX2+FMA): NR = 16 / 8, MR = 6; level 0: plain C (each
 * product rounded, the same order).
 *
 * nn_agemm_nt: C[m, n] = alpha * A[m, k] @ B[n, k]^T, both read by rows: the scores of
 * a few query rows (KV-cache decoding) straight from the rows of K, without storing
 * K^T.  Each element is a dot product of vector partial sums over p = j, j + W, ...
 * (W the vector width) reduced in a fixed order: the same bits for any m and n.
 *
 * Fused-type front: _attn_gemm.pxd.
 */
#ifndef NN_CORE_ATTN_GEMM_H
#define NN_CORE_ATTN_GEMM_H

#include <stddef.h>

#include "_simd.h"
#if NN_X86_DISPATCH
#include <immintrin.h>
#endif

/* ------------------------------------------------------- portable kernel -- */
#define NN_AG_BASE_CHUNK 64
#define NN_DEFINE_AGEMM_BASE(T, S)                                                         \
static void nn_agemm_##S##_base(int ta, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, T alpha,    \
                                const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb,      \
                                int acc, T *C, ptrdiff_t ldc)                              \
{                                                                                          \
    T c[NN_AG_BASE_CHUNK];                                                                 \
    for (ptrdiff_t j0 = 0; j0 < n; j0 += NN_AG_BASE_CHUNK) {                               \
        ptrdiff_t nc = n - j0 < NN_AG_BASE_CHUNK ? n - j0 : NN_AG_BASE_CHUNK;              \
        for (ptrdiff_t i = 0; i < m; i++) {                                                \
            for (ptrdiff_t j = 0; j < nc; j++)                                             \
                c[j] = 0;                                                                  \
            for (ptrdiff_t p = 0; p < k; p++) {                                            \
                T a = ta ? A[p * lda + i] : A[i * lda + p];                                \
                const T *b = B + p * ldb + j0;                                             \
                for (ptrdiff_t j = 0; j < nc; j++)                                         \
                    c[j] += a * b[j];                                                      \
            }                                                                              \
            T *o = C + i * ldc + j0;                                                       \
            for (ptrdiff_t j = 0; j < nc; j++)                                             \
                o[j] = acc ? o[j] + alpha * c[j] : alpha * c[j];                           \
        }                                                                                  \
    }                                                                                      \
}

#define NN_DEFINE_AGEMM_NT_BASE(T, S)                                                      \
static void nn_agemm_nt_##S##_base(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, T alpha,         \
                                   const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb,   \
                                   T *C, ptrdiff_t ldc)                                    \
{                                                                                          \
    for (ptrdiff_t i = 0; i < m; i++)                                                      \
        for (ptrdiff_t j = 0; j < n; j++) {                                                \
            T c = 0;                                                                       \
            for (ptrdiff_t p = 0; p < k; p++)                                              \
                c += A[i * lda + p] * B[j * ldb + p];                                      \
            C[i * ldc + j] = alpha * c;                                                    \
        }                                                                                  \
}

NN_DEFINE_AGEMM_BASE(float, f)
NN_DEFINE_AGEMM_BASE(double, d)
NN_DEFINE_AGEMM_NT_BASE(float, f)
NN_DEFINE_AGEMM_NT_BASE(double, d)

/* ----------------------------------------------------------- SIMD kernels -- */
#if NN_X86_DISPATCH
/* Named accumulators (two vectors per row) so that they stay in registers; rows past
 * MR compile away.  AG_A(r): element (i0 + r, p) of op(A). */
#define AG_A(r) (TA ? A + p * lda + (r) : A + (r) * lda + p)
#define AG_DECL(r) AG_VT c##r##a = AG_ZERO(), c##r##b = AG_ZERO();
#define AG_FMA(r)                                                                          \
    if (MR > r) {                                                                          \
        AG_VT a_ = AG_BCAST(AG_A(r));                                                      \
        c##r##a = AG_VFMA(a_, b0, c##r##a);                                                \
        c##r##b = AG_VFMA(a_, b1, c##r##b);                                                \
    }
#define AG_STORE(r)                                                                        \
    if (MR > r) {                                                                          \
        __typeof__(*C) *o = C + (r) * ldc;                                                        \
        if (PART) {                                                                        \
            AG_VT x = AG_MUL(al, c##r##a), y = AG_MUL(al, c##r##b);                        \
            if (acc) {                                                                     \
                x = AG_VFMA(al, c##r##a, AG_LOADM(o, m0));                                 \
                y = AG_VFMA(al, c##r##b, AG_LOADM(o + AG_W, m1));                          \
            }                                                                              \
            AG_STOREU(buf, x);                                                             \
            AG_STOREU(buf + AG_W, y);                                                      \
            for (int j = 0; j < nc; j++)                                                   \
                o[j] = buf[j];                                                             \
        } else if (acc) {                                                                  \
            AG_STOREU(o, AG_VFMA(al, c##r##a, AG_LOADU(o)));                               \
            AG_STOREU(o + AG_W, AG_VFMA(al, c##r##b, AG_LOADU(o + AG_W)));                 \
        } else {                                                                           \
            AG_STOREU(o, AG_MUL(al, c##r##a));                                             \
            AG_STOREU(o + AG_W, AG_MUL(al, c##r##b));                                      \
        }                                                                                  \
    }
#define AG_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

/* One tile: rows i0..i0+MR-1 of op(A) (A points at row i0 / column i0 with TA) times
 * the panel of B starting at column j0 (B, C point there); nc valid columns. */
#define NN_DEFINE_AGEMM_SIMD(T, S, ISA, TARGET, MRMAX)                                     \
TARGET static inline __attribute__((always_inline)) void                                   \
nn_ag_tile_##S##_##ISA##_body(const int MR, const int TA, const int PART, ptrdiff_t k,     \
                              T alpha, const T *A, ptrdiff_t lda, const T *B,              \
                              ptrdiff_t ldb, int acc, T *C, ptrdiff_t ldc, int nc)         \
{                                                                                          \
    AG_ROWS(AG_DECL)                                                                       \
    AG_MT m0 = AG_MASK(nc), m1 = AG_MASK(nc - AG_W);                                       \
    T buf[2 * AG_W];                                                                       \
    for (ptrdiff_t p = 0; p < k; p++) {                                                    \
        const T *b = B + p * ldb;                                                          \
        AG_VT b0, b1;                                                                      \
        if (PART) { b0 = AG_LOADM(b, m0); b1 = AG_LOADM(b + AG_W, m1); }                   \
        else { b0 = AG_LOADU(b); b1 = AG_LOADU(b + AG_W); }                                \
        AG_ROWS(AG_FMA)                                                                    \
    }                                                                                      \
    AG_VT al = AG_SET1(alpha);                                                             \
    AG_ROWS(AG_STORE)                                                                      \
}                                                                                          \
TARGET static void nn_ag_tile_##S##_##ISA(int mr, int ta, int part, ptrdiff_t k, T alpha,  \
        const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb, int acc, T *C,               \
        ptrdiff_t ldc, int nc)                                                             \
{                                                                                          \
    _Static_assert(MRMAX <= 8, "at most 8 rows");                                          \
    /* TA and PART as compile-time constants of each instance */                          \
    switch (mr * 4 + ta * 2 + part) {                                                      \
    AG_CASES_##MRMAX(S, ISA)                                                               \
    }                                                                                      \
}                                                                                          \
TARGET static void nn_agemm_##S##_##ISA(int ta, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,     \
        T alpha, const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb, int acc, T *C,      \
        ptrdiff_t ldc)                                                                     \
{                                                                                          \
    for (ptrdiff_t j0 = 0; j0 < n; j0 += 2 * AG_W) {                                       \
        int nc = n - j0 < 2 * AG_W ? (int)(n - j0) : 2 * AG_W;                             \
        int mr;                                                                            \
        for (ptrdiff_t i0 = 0; i0 < m; i0 += mr) {                                         \
            /* the last MRMAX+1 .. 2*MRMAX-1 rows in two halves (few accumulators are      \
             * latency-bound) */                                                           \
            ptrdiff_t left = m - i0;                                                       \
            mr = left >= 2 * MRMAX ? MRMAX : (left > MRMAX ? (int)((left + 1) / 2) : (int)left); \
            nn_ag_tile_##S##_##ISA(mr, ta, nc < 2 * AG_W, k, alpha,                        \
                                   ta ? A + i0 : A + i0 * lda, lda, B + j0, ldb, acc,      \
                                   C + i0 * ldc + j0, ldc, nc);                            \
        }                                                                                  \
    }                                                                                      \
}

/* Four keys at a time: four vector partial sums over p, reduced by AG_HSUM4. */
#define NN_DEFINE_AGEMM_NT_SIMD(T, S, ISA, TARGET)                                         \
TARGET static void nn_agemm_nt_##S##_##ISA(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, T alpha, \
        const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb, T *C, ptrdiff_t ldc)         \
{                                                                                          \
    ptrdiff_t kf = k - k % AG_W;                                                           \
    AG_MT mt = AG_MASK((int)(k - kf));                                                     \
    T out[4];                                                                              \
    for (ptrdiff_t i = 0; i < m; i++) {                                                    \
        const T *a = A + i * lda;                                                          \
        for (ptrdiff_t j = 0; j < n; j += 4) {                                             \
            ptrdiff_t nj = n - j < 4 ? n - j : 4;                                          \
            const T *b0 = B + j * ldb, *b1 = b0 + (nj > 1) * ldb,                          \
                    *b2 = b0 + (nj > 2) * 2 * ldb, *b3 = b0 + (nj > 3) * 3 * ldb;          \
            AG_VT s0 = AG_ZERO(), s1 = AG_ZERO(), s2 = AG_ZERO(), s3 = AG_ZERO(), x;       \
            for (ptrdiff_t p = 0; p < kf; p += AG_W) {                                     \
                x = AG_LOADU(a + p);                                                       \
                s0 = AG_VFMA(x, AG_LOADU(b0 + p), s0);                                     \
                s1 = AG_VFMA(x, AG_LOADU(b1 + p), s1);                                     \
                s2 = AG_VFMA(x, AG_LOADU(b2 + p), s2);                                     \
                s3 = AG_VFMA(x, AG_LOADU(b3 + p), s3);                                     \
            }                                                                              \
            if (kf < k) {                                                                  \
                x = AG_LOADM(a + kf, mt);                                                  \
                s0 = AG_VFMA(x, AG_LOADM(b0 + kf, mt), s0);                                \
                s1 = AG_VFMA(x, AG_LOADM(b1 + kf, mt), s1);                                \
                s2 = AG_VFMA(x, AG_LOADM(b2 + kf, mt), s2);                                \
                s3 = AG_VFMA(x, AG_LOADM(b3 + kf, mt), s3);                                \
            }                                                                              \
            AG_HSUM4(s0, s1, s2, s3, out);                                                 \
            for (ptrdiff_t t = 0; t < nj; t++)                                             \
                C[i * ldc + j + t] = alpha * out[t];                                       \
        }                                                                                  \
    }                                                                                      \
}

#define AG_CASE(S, ISA, MR, TA, PART)                                                      \
    case MR * 4 + TA * 2 + PART:                                                           \
        nn_ag_tile_##S##_##ISA##_body(MR, TA, PART, k, alpha, A, lda, B, ldb, acc, C,      \
                                      ldc, nc);                                            \
        break;
#define AG_CASES_ROW(S, ISA, MR)                                                           \
    AG_CASE(S, ISA, MR, 0, 0) AG_CASE(S, ISA, MR, 0, 1)                                    \
    AG_CASE(S, ISA, MR, 1, 0) AG_CASE(S, ISA, MR, 1, 1)
#define AG_CASES_6(S, ISA)                                                                 \
    AG_CASES_ROW(S, ISA, 1) AG_CASES_ROW(S, ISA, 2) AG_CASES_ROW(S, ISA, 3)                \
    AG_CASES_ROW(S, ISA, 4) AG_CASES_ROW(S, ISA, 5) AG_CASES_ROW(S, ISA, 6)
#define AG_CASES_8(S, ISA)                                                                 \
    AG_CASES_6(S, ISA) AG_CASES_ROW(S, ISA, 7) AG_CASES_ROW(S, ISA, 8)

/* AVX2 + FMA */
#define AG_VT __m256
#define AG_MT __m256i
#define AG_W 8
#define AG_LOADU _mm256_loadu_ps
#define AG_STOREU _mm256_storeu_ps
#define AG_LOADM(p, msk) _mm256_maskload_ps(p, msk)
#define AG_MASK(cnt) _mm256_cmpgt_epi32(_mm256_set1_epi32(cnt),                          \
                                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define AG_BCAST _mm256_broadcast_ss
#define AG_VFMA _mm256_fmadd_ps
#define AG_MUL _mm256_mul_ps
#define AG_SET1 _mm256_set1_ps
#define AG_ZERO _mm256_setzero_ps
#define AG_HSUM4(a, b, c, d, out)                                                          \
    do {                                                                                   \
        __m256 h_ = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));            \
        _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h_),                          \
                                      _mm256_extractf128_ps(h_, 1)));                      \
    } while (0)
NN_DEFINE_AGEMM_SIMD(float, f, avx2, NN_TARGET_AVX2, 6)
NN_DEFINE_AGEMM_NT_SIMD(float, f, avx2, NN_TARGET_AVX2)
#include "_attn_gemm_undef.h"
#define AG_VT __m256d
#define AG_MT __m256i
#define AG_W 4
#define AG_LOADU _mm256_loadu_pd
#define AG_STOREU _mm256_storeu_pd
#define AG_LOADM(p, msk) _mm256_maskload_pd(p, msk)
#define AG_MASK(cnt) _mm256_cmpgt_epi64(_mm256_set1_epi64x(cnt),                         \
                                        _mm256_setr_epi64x(0, 1, 2, 3))
#define AG_BCAST _mm256_broadcast_sd
#define AG_VFMA _mm256_fmadd_pd
#define AG_MUL _mm256_mul_pd
#define AG_SET1 _mm256_set1_pd
#define AG_ZERO _mm256_setzero_pd
#define AG_HSUM4(a, b, c, d, out)                                                          \
    do {                                                                                   \
        __m256d ab_ = _mm256_hadd_pd(a, b), cd_ = _mm256_hadd_pd(c, d);                    \
        _mm256_storeu_pd(out, _mm256_add_pd(_mm256_permute2f128_pd(ab_, cd_, 0x20),        \
                                            _mm256_permute2f128_pd(ab_, cd_, 0x31)));      \
    } while (0)
NN_DEFINE_AGEMM_SIMD(double, d, avx2, NN_TARGET_AVX2, 6)
NN_DEFINE_AGEMM_NT_SIMD(double, d, avx2, NN_TARGET_AVX2)
#include "_attn_gemm_undef.h"

#if NN_HAVE_AVX512
/* AVX-512F: 32 vector registers, so 8 rows (16 accumulators) */
#define AG_KMASK(cnt, W) ((cnt) <= 0 ? 0u : ((cnt) >= (W) ? (1u << (W)) - 1u : (1u << (cnt)) - 1u))
#define AG_VT __m512
#define AG_MT __mmask16
#define AG_W 16
#define AG_LOADU _mm512_loadu_ps
#define AG_STOREU _mm512_storeu_ps
#define AG_LOADM(p, msk) _mm512_maskz_loadu_ps(msk, p)
#define AG_MASK(cnt) ((__mmask16)AG_KMASK(cnt, 16))
#define AG_BCAST(p) _mm512_set1_ps(*(p))
#define AG_VFMA _mm512_fmadd_ps
#define AG_MUL _mm512_mul_ps
#define AG_SET1 _mm512_set1_ps
#define AG_ZERO _mm512_setzero_ps
#define AG_HSUM4(a, b, c, d, out)                                                          \
    do {                                                                                   \
        out[0] = _mm512_reduce_add_ps(a); out[1] = _mm512_reduce_add_ps(b);                \
        out[2] = _mm512_reduce_add_ps(c); out[3] = _mm512_reduce_add_ps(d);                \
    } while (0)
NN_DEFINE_AGEMM_SIMD(float, f, avx512, NN_TARGET_AVX512, 8)
NN_DEFINE_AGEMM_NT_SIMD(float, f, avx512, NN_TARGET_AVX512)
#include "_attn_gemm_undef.h"
#define AG_VT __m512d
#define AG_MT __mmask8
#define AG_W 8
#define AG_LOADU _mm512_loadu_pd
#define AG_STOREU _mm512_storeu_pd
#define AG_LOADM(p, msk) _mm512_maskz_loadu_pd(msk, p)
#define AG_MASK(cnt) ((__mmask8)AG_KMASK(cnt, 8))
#define AG_BCAST(p) _mm512_set1_pd(*(p))
#define AG_VFMA _mm512_fmadd_pd
#define AG_MUL _mm512_mul_pd
#define AG_SET1 _mm512_set1_pd
#define AG_ZERO _mm512_setzero_pd
#define AG_HSUM4(a, b, c, d, out)                                                          \
    do {                                                                                   \
        out[0] = _mm512_reduce_add_pd(a); out[1] = _mm512_reduce_add_pd(b);                \
        out[2] = _mm512_reduce_add_pd(c); out[3] = _mm512_reduce_add_pd(d);                \
    } while (0)
NN_DEFINE_AGEMM_SIMD(double, d, avx512, NN_TARGET_AVX512, 8)
NN_DEFINE_AGEMM_NT_SIMD(double, d, avx512, NN_TARGET_AVX512)
#include "_attn_gemm_undef.h"
#endif /* NN_HAVE_AVX512 */
#endif /* NN_X86_DISPATCH */

/* ------------------------------------------------------------ the driver -- */
#define NN_DEFINE_AGEMM(T, S)                                                              \
static void nn_agemm_##S(int ta, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, T alpha,           \
                         const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb, int acc,    \
                         T *C, ptrdiff_t ldc)                                              \
{                                                                                          \
    if (m <= 0 || n <= 0)                                                                  \
        return;                                                                            \
    NN_AG_DISPATCH(S, (ta, m, n, k, alpha, A, lda, B, ldb, acc, C, ldc));                  \
}

#if NN_X86_DISPATCH && NN_HAVE_AVX512
#define NN_AG_DISPATCH(S, args)                                                            \
    do {                                                                                   \
        int lv_ = nn_simd_level();                                                         \
        if (lv_ >= 2) nn_agemm_##S##_avx512 args;                                          \
        else if (lv_ >= 1) nn_agemm_##S##_avx2 args;                                       \
        else nn_agemm_##S##_base args;                                                     \
    } while (0)
#elif NN_X86_DISPATCH
#define NN_AG_DISPATCH(S, args)                                                            \
    do {                                                                                   \
        if (nn_simd_level() >= 1) nn_agemm_##S##_avx2 args;                                \
        else nn_agemm_##S##_base args;                                                     \
    } while (0)
#else
#define NN_AG_DISPATCH(S, args) nn_agemm_##S##_base args
#endif

#define NN_DEFINE_AGEMM_NT(T, S)                                                           \
static void nn_agemm_nt_##S(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, T alpha, const T *A,    \
                            ptrdiff_t lda, const T *B, ptrdiff_t ldb, T *C, ptrdiff_t ldc) \
{                                                                                          \
    if (m <= 0 || n <= 0)                                                                  \
        return;                                                                            \
    NN_AG_DISPATCH(nt_##S, (m, n, k, alpha, A, lda, B, ldb, C, ldc));                      \
}

NN_DEFINE_AGEMM(float, f)
NN_DEFINE_AGEMM(double, d)
NN_DEFINE_AGEMM_NT(float, f)
NN_DEFINE_AGEMM_NT(double, d)

#endif /* NN_CORE_ATTN_GEMM_H */

/*
 * _vmath.h -- vectorisable element-wise math and the small transpose of the kernels.
 *
 * C's expf/exp are scalar library calls, and GCC vectorises them only with
 * -ffast-math, which the project forbids (it breaks -inf masking and NaN checks).
 * The functions here are branch-free polynomial forms that GCC auto-vectorises at
 * -O3; the array loops are compiled for baseline x86-64 and AVX2+FMA and dispatched
 * through _simd.h.  The softmax exp-sum is written with intrinsics at AVX2 (float)
 * and AVX-512F (float and double).
 *
 * Accuracy (tests/test_vmath.py, tests/test_vmath_gates.py):
 *   nn_expf: Cephes expf polynomial, <= 2 ulp on [-87.3, 88]; x < -87.3 -> 0
 *            (the subnormal range is flushed), -inf -> 0, NaN -> NaN.
 *   nn_exp:  Cephes exp Pade form, <= 2 ulp on [-708.3, 709]; x < -708.3 -> 0,
 *            -inf -> 0, NaN -> NaN.
 *   sigmoid, tanh: a few ulp.
 *   nn_core only calls exp on x <= 0 (max-subtracted scores, -2|x| in tanh, -|x| in
 *   sigmoid), where overflow cannot happen.
 *
 * Reductions (sum, max) use a fixed number of independent accumulators in a fixed
 * order: the result is deterministic for a given n and SIMD level, and does not
 * depend on threading.
 */
#ifndef NN_CORE_VMATH_H
#define NN_CORE_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>

#include "_simd.h"

/* ---------------------------------------------------------------- scalars -- */

NN_INLINE float nn_expf(float x)
{
    const float hi = 88.0f, lo = -87.33654475f;
    float xc = x > hi ? hi : (x < lo ? lo : x);
    /* n = round(x / ln 2) with the 1.5 * 2^23 trick (no roundf: SSE2 has none) */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    float y = p * s;
    y = x < lo ? 0.0f : y;
    y = x > hi ? INFINITY : y;
    return x != x ? x : y;
}

NN_INLINE double nn_exp(double x)
{
    const double hi = 709.0, lo = -708.3964185322641;
    double xc = x > hi ? hi : (x < lo ? lo : x);
    /* n = round(x / ln 2); t holds n in its low mantissa bits (1.5 * 2^52 trick) */
    const double magic = 6755399441055744.0;
    double t = xc * 1.4426950408889634 + magic;
    double n = t - magic;
    double r = xc - n * 6.93145751953125e-1;
    r = r - n * 1.42860682030941723212e-6;
    double rr = r * r;
    double px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr
                     + 9.99999999999999999910e-1);
    double qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr
                 + 2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
    double p = 1.0 + 2.0 * (px / (qx - px));
    int64_t tb, mb;
    memcpy(&tb, &t, sizeof tb);
    memcpy(&mb, &magic, sizeof mb);
    int64_t bits = (tb - mb + 1023) << 52;
    double s;
    memcpy(&s, &bits, sizeof s);
    double y = p * s;
    y = x < lo ? 0.0 : y;
    y = x > hi ? (double)INFINITY : y;
    return x != x ? x : y;
}

/*
 * sigmoid(x) = 1 / (1 + e)  (x >= 0),  e / (1 + e)  (x < 0),  e = exp(-|x|):
 *              never overflows, no clipping; -inf -> 0, +inf -> 1, NaN -> NaN.
 * tanh(x)    = sign(x) * (1 - e) / (1 + e), e = exp(-2|x|), for |x| >= 0.625; below
 *              0.625 the Cephes odd polynomial (float) / rational form (double),
 *              which avoids the cancellation in 1 - e near 0.
 */
NN_INLINE float nn_sigmoidf(float x)
{
    float e = nn_expf(-fabsf(x));
    float s = 1.0f / (1.0f + e);
    return x < 0.0f ? e * s : s;
}

NN_INLINE double nn_sigmoid(double x)
{
    double e = nn_exp(-fabs(x));
    double s = 1.0 / (1.0 + e);
    return x < 0.0 ? e * s : s;
}

NN_INLINE float nn_tanhf(float x)
{
    float ax = fabsf(x);
    float e = nn_expf(-2.0f * ax);
    float big = (1.0f - e) / (1.0f + e);
    float z = ax * ax;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z
                     - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z
                   - 3.33332819422e-1f) * z * ax + ax;
    float r = ax < 0.625f ? small : big;
    return copysignf(r, x);
}

NN_INLINE double nn_tanh(double x)
{
    double ax = fabs(x);
    double e = nn_exp(-2.0 * ax);
    double big = (1.0 - e) / (1.0 + e);
    double z = ax * ax;
    double p = (-9.64399179425052238628e-1 * z - 9.92877231001918586564e1) * z
               - 1.61468768441708447952e3;
    double q = ((z + 1.12811678491632931402e2) * z + 2.23548839060100448583e3) * z
               + 4.84406305325125486048e3;
    double small = ax + ax * z * (p / q);
    double r = ax < 0.625 ? small : big;
    return copysign(r, x);
}

/* ----------------------------------------------------------------- arrays -- */

/*
 * One macro body per loop family, instantiated per type and SIMD level (T element
 * type, S suffix f/d, V level suffix _base/_avx2, A its target attribute; I, ABS,
 * INF: same-size signed integer, |x| bit mask, bits of +inf).
 *   nn_vexp_sum_S(y, x, shift, n): y[i] = exp(x[i] - shift), returns sum(y); y may alias x.
 *   nn_vexp_S(y, x, n):            y[i] = exp(x[i]).
 *   nn_vmax_S(x, n):               max(x), -inf for n == 0, NaN if any x[i] is NaN
 *                                  (NaN-sticky like np.max, so a NaN score makes its
 *                                  softmax row NaN instead of being skipped).  The max
 *                                  is the plain vectorised select; NaN is detected by
 *                                  a second vectorised pass, the signed-integer max
 *                                  of |bits(x)| (a fused NaN-sticky float select does
 *                                  not vectorise with GCC).
 *   nn_vdot_S(x, y, n):            sum(x[i] * y[i]).
 *   nn_vsigmoid_S(y, x, n), nn_vtanh_S(y, x, n): element-wise, y may alias x.
 */
#define NN_SUM8(acc) (((acc)[0] + (acc)[4]) + ((acc)[1] + (acc)[5])) + \
                     (((acc)[2] + (acc)[6]) + ((acc)[3] + (acc)[7]))

#define NN_DEFINE_EXP_SUM(T, S, EXP, V, A)                                        \
A static T nn_vexp_sum_##S##V(T *y, const T *x, T shift, ptrdiff_t n)          \
{                                                                                   \
    T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                            \
    ptrdiff_t i = 0, j;                                                             \
    for (; i + 8 <= n; i += 8)                                                      \
        for (j = 0; j < 8; j++) {                                                   \
            T e = EXP(x[i + j] - shift);                                            \
            y[i + j] = e;                                                           \
            acc[j] += e;                                                            \
        }                                                                           \
    for (j = 0; i < n; i++, j++) {                                                  \
        T e = EXP(x[i] - shift);                                                    \
        y[i] = e;                                                                   \
        acc[j] += e;                                                                \
    }                                                                               \
    return NN_SUM8(acc);                                                            \
}

#define NN_DEFINE_ARRAY_OPS(T, S, EXP, V, A, I, ABS, INF)                         \
A static void nn_vexp_##S##V(T *y, const T *x, ptrdiff_t n)                    \
{                                                                                   \
    for (ptrdiff_t i = 0; i < n; i++)                                               \
        y[i] = EXP(x[i]);                                                           \
}                                                                                   \
A static T nn_vmax_##S##V(const T *x, ptrdiff_t n)                             \
{                                                                                   \
    T acc[8];                                                                       \
    I mb[8];                                                                        \
    ptrdiff_t i = 0, j;                                                             \
    for (j = 0; j < 8; j++)                                                         \
        acc[j] = -INFINITY;                                                         \
    for (; i + 8 <= n; i += 8)                                                      \
        for (j = 0; j < 8; j++)                                                     \
            acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];                         \
    for (j = 0; i < n; i++, j++)                                                    \
        acc[j] = x[i] > acc[j] ? x[i] : acc[j];                                     \
    for (j = 1; j < 8; j++)                                                         \
        acc[0] = acc[j] > acc[0] ? acc[j] : acc[0];                                 \
    /* NaN check: max |bits(x)| as a signed integer exceeds bits(inf) iff a NaN  */ \
    for (j = 0; j < 8; j++)                                                         \
        mb[j] = 0;                                                                  \
    for (i = 0; i + 8 <= n; i += 8)                                                 \
        for (j = 0; j < 8; j++) {                                                   \
            I u;                                                                    \
            memcpy(&u, x + i + j, sizeof u);                                        \
            u &= ABS;                                                               \
            mb[j] = u > mb[j] ? u : mb[j];                                          \
        }                                                                           \
    for (j = 0; i < n; i++, j++) {                                                  \
        I u;                                                                        \
        memcpy(&u, x + i, sizeof u);                                                \
        u &= ABS;                                                                   \
        mb[j] = u > mb[j] ? u : mb[j];                                              \
    }                                                                               \
    for (j = 1; j < 8; j++)                                                         \
        mb[0] = mb[j] > mb[0] ? mb[j] : mb[0];                                      \
    return mb[0] > INF ? (T)NAN : acc[0];                                           \
}                                                                                   \
A static T nn_vdot_##S##V(const T *x, const T *y, ptrdiff_t n)                 \
{                                                                                   \
    T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                            \
    ptrdiff_t i = 0, j;                                                             \
    for (; i + 8 <= n; i += 8)                                                      \
        for (j = 0; j < 8; j++)                                                     \
            acc[j] += x[i + j] * y[i + j];                                          \
    for (j = 0; i < n; i++, j++)                                                    \
        acc[j] += x[i] * y[i];                                                      \
    return NN_SUM8(acc);                                                            \
}

#define NN_DEFINE_ACT_OPS(T, S, SIG, TANH, V, A)                                   \
A static void nn_vsigmoid_##S##V(T *y, const T *x, ptrdiff_t n)                     \
{                                                                                   \
    for (ptrdiff_t i = 0; i < n; i++)                                               \
        y[i] = SIG(x[i]);                                                           \
}                                                                                   \
A static void nn_vtanh_##S##V(T *y, const T *x, ptrdiff_t n)                        \
{                                                                                   \
    for (ptrdiff_t i = 0; i < n; i++)                                               \
        y[i] = TANH(x[i]);                                                          \
}

/* I, ABS, INF: signed integer type of the element's size, |x| bit mask, bits of +inf */
#define NN_F_BITS int32_t, INT32_C(0x7fffffff), INT32_C(0x7f800000)
#define NN_D_BITS int64_t, INT64_C(0x7fffffffffffffff), INT64_C(0x7ff0000000000000)
#define NN_DEFINE_ARRAY_OPS_X(...) NN_DEFINE_ARRAY_OPS(__VA_ARGS__)   /* expands *_BITS */

NN_DEFINE_EXP_SUM(float, f, nn_expf, _base, )
NN_DEFINE_EXP_SUM(double, d, nn_exp, _base, )
NN_DEFINE_ARRAY_OPS_X(float, f, nn_expf, _base, , NN_F_BITS)
NN_DEFINE_ARRAY_OPS_X(double, d, nn_exp, _base, , NN_D_BITS)
NN_DEFINE_ACT_OPS(float, f, nn_sigmoidf, nn_tanhf, _base, )
NN_DEFINE_ACT_OPS(double, d, nn_sigmoid, nn_tanh, _base, )
#if NN_X86_DISPATCH
NN_DEFINE_EXP_SUM(double, d, nn_exp, _avx2, NN_TARGET_AVX2)   /* float: below */
NN_DEFINE_ARRAY_OPS_X(float, f, nn_expf, _avx2, NN_TARGET_AVX2, NN_F_BITS)
NN_DEFINE_ARRAY_OPS_X(double, d, nn_exp, _avx2, NN_TARGET_AVX2, NN_D_BITS)
NN_DEFINE_ACT_OPS(float, f, nn_sigmoidf, nn_tanhf, _avx2, NN_TARGET_AVX2)
NN_DEFINE_ACT_OPS(double, d, nn_sigmoid, nn_tanh, _avx2, NN_TARGET_AVX2)
#endif

/* ---------------------------------------------------- AVX2 float exp-sum (level 1) -- */
/*
 * The softmax exp pass, 16 floats a step, written with intrinsics: GCC's version of
 * the generic NN_DEFINE_EXP_SUM loop keeps its accumulator in memory (a
 * store-to-load chain per 8 elements).  Two register accumulators in a fixed order:
 * deterministic for a given n.  double keeps the generic loop.
 */
#if NN_X86_DISPATCH
#include <immintrin.h>

/* exp(x) for 8 floats: nn_expf's reduction and polynomial, same clamps, 0 below its
 * range, +inf above, NaN kept. */
NN_TARGET_AVX2 static inline __m256 nn_exp8_avx2(__m256 x)
{
    const __m256 hi = _mm256_set1_ps(88.0f), lo = _mm256_set1_ps(-87.33654475f);
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f),
                                             magic), magic);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n),
                                                      _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
    y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

/* y[i] = exp(x[i] - shift), returns sum(y); y may alias x. */
NN_TARGET_AVX2 static float nn_vexp_sum_f_avx2(float *y, const float *x, float shift,
                                                ptrdiff_t n)
{
    __m256 sh = _mm256_set1_ps(shift), a0 = _mm256_setzero_ps(), a1 = a0;
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 e0 = nn_exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
        __m256 e1 = nn_exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), sh));
        _mm256_storeu_ps(y + i, e0);
        _mm256_storeu_ps(y + i + 8, e1);
        a0 = _mm256_add_ps(a0, e0);
        a1 = _mm256_add_ps(a1, e1);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 e0 = nn_exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), sh));
        _mm256_storeu_ps(y + i, e0);
        a0 = _mm256_add_ps(a0, e0);
    }
    a0 = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    float sum = _mm_cvtss_f32(h);
    for (; i < n; i++) {
        float e = nn_expf(x[i] - shift);
        y[i] = e;
        sum += e;
    }
    return sum;
}
#endif

/* ------------------------------------------------ AVX-512F exp-sum (level 2) -- */
/*
 * One 16-float / 8-double intrinsic loop for the softmax exp pass.  float: nn_expf's
 * Cephes reduction and polynomial (<= 2 ulp); double: nn_exp's two-constant
 * reduction and a degree-13 Taylor polynomial on |r| <= ln2/2 (truncation < 1e-17
 * relative, ~1 ulp overall).  2^n is applied with vscalef (exact).  x below the
 * underflow bound -> 0, -inf -> 0, NaN -> NaN.  One vector accumulator in a fixed
 * order: deterministic for a given n.
 */
#if NN_HAVE_AVX512
#include <immintrin.h>

/* exp(x) for 16 floats: Cephes expf reduction/polynomial (as nn_expf), 2^n by scalef.
 * x < -87.34 -> 0, NaN -> NaN; callers pass x <= 0 (max-subtracted scores). */
NN_TARGET_AVX512 static inline __m512 nn_exp16_avx512(__m512 x)
{
    const __m512 lo = _mm512_set1_ps(-87.33654475f), hi = _mm512_set1_ps(88.0f);
    __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512 y = _mm512_scalef_ps(p, n);
    y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ), _mm512_setzero_ps());
    return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

/* exp(x) for 8 doubles: reduction as nn_exp, degree-13 Taylor polynomial on
 * |r| <= ln2/2 (truncation < 1e-17 relative), 2^n by scalef. */
NN_TARGET_AVX512 static inline __m512d nn_exp8_avx512(__m512d x)
{
    const __m512d lo = _mm512_set1_pd(-708.3964185322641), hi = _mm512_set1_pd(709.0);
    __m512d xc = _mm512_min_pd(_mm512_max_pd(x, lo), hi);
    __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(xc, _mm512_set1_pd(1.4426950408889634)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93145751953125e-1), xc);
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.42860682030941723212e-6), r);
    __m512d p = _mm512_set1_pd(1.0 / 6227020800.0);          /* 1/13! */
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 479001600.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 39916800.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 3628800.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 362880.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 40320.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 5040.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 720.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 120.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 24.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 6.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0.5));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0));
    __m512d y = _mm512_scalef_pd(p, n);
    y = _mm512_mask_mov_pd(y, _mm512_cmp_pd_mask(x, lo, _CMP_LT_OQ), _mm512_setzero_pd());
    return _mm512_mask_mov_pd(y, _mm512_cmp_pd_mask(x, x, _CMP_UNORD_Q), x);
}

/* y[i] = exp(x[i] - shift), returns sum(y); y may alias x. */
NN_TARGET_AVX512 static float nn_vexp_sum_f_avx512(float *y, const float *x, float shift,
                                                ptrdiff_t n)
{
    __m512 acc = _mm512_setzero_ps(), s = _mm512_set1_ps(shift);
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = nn_exp16_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
        _mm512_storeu_ps(y + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        __m512 e = nn_exp16_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s));
        _mm512_mask_storeu_ps(y + i, m, e);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
    }
    return _mm512_reduce_add_ps(acc);
}

NN_TARGET_AVX512 static double nn_vexp_sum_d_avx512(double *y, const double *x, double shift,
                                                  ptrdiff_t n)
{
    __m512d acc = _mm512_setzero_pd(), s = _mm512_set1_pd(shift);
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m512d e = nn_exp8_avx512(_mm512_sub_pd(_mm512_loadu_pd(x + i), s));
        _mm512_storeu_pd(y + i, e);
        acc = _mm512_add_pd(acc, e);
    }
    if (i < n) {
        __mmask8 m = (__mmask8)((1u << (n - i)) - 1u);
        __m512d e = nn_exp8_avx512(_mm512_sub_pd(_mm512_maskz_loadu_pd(m, x + i), s));
        _mm512_mask_storeu_pd(y + i, m, e);
        acc = _mm512_add_pd(acc, _mm512_maskz_mov_pd(m, e));
    }
    return _mm512_reduce_add_pd(acc);
}
#endif

/* ------------------------------------------------------- dispatched entries -- */

static inline float nn_vexp_sum_f(float *y, const float *x, float shift, ptrdiff_t n)
{
#if NN_HAVE_AVX512
    if (nn_simd_level() >= 2)
        return nn_vexp_sum_f_avx512(y, x, shift, n);
#endif
    return NN_PICK(nn_vexp_sum_f, (y, x, shift, n));
}
static inline double nn_vexp_sum_d(double *y, const double *x, double shift, ptrdiff_t n)
{
#if NN_HAVE_AVX512
    if (nn_simd_level() >= 2)
        return nn_vexp_sum_d_avx512(y, x, shift, n);
#endif
    return NN_PICK(nn_vexp_sum_d, (y, x, shift, n));
}
static inline void nn_vexp_f(float *y, const float *x, ptrdiff_t n)
{ NN_PICK(nn_vexp_f, (y, x, n)); }
static inline void nn_vexp_d(double *y, const double *x, ptrdiff_t n)
{ NN_PICK(nn_vexp_d, (y, x, n)); }
static inline float nn_vmax_f(const float *x, ptrdiff_t n)
{ return NN_PICK(nn_vmax_f, (x, n)); }
static inline double nn_vmax_d(const double *x, ptrdiff_t n)
{ return NN_PICK(nn_vmax_d, (x, n)); }
static inline float nn_vdot_f(const float *x, const float *y, ptrdiff_t n)
{ return NN_PICK(nn_vdot_f, (x, y, n)); }
static inline double nn_vdot_d(const double *x, const double *y, ptrdiff_t n)
{ return NN_PICK(nn_vdot_d, (x, y, n)); }
static inline void nn_vsigmoid_f(float *y, const float *x, ptrdiff_t n)
{ NN_PICK(nn_vsigmoid_f, (y, x, n)); }
static inline void nn_vsigmoid_d(double *y, const double *x, ptrdiff_t n)
{ NN_PICK(nn_vsigmoid_d, (y, x, n)); }
static inline void nn_vtanh_f(float *y, const float *x, ptrdiff_t n)
{ NN_PICK(nn_vtanh_f, (y, x, n)); }
static inline void nn_vtanh_d(double *y, const double *x, ptrdiff_t n)
{ NN_PICK(nn_vtanh_d, (y, x, n)); }

/* ---------------------------------------------------------------- transpose -- */
/*
 * nn_transpose_S(src, lds, R, C, dst, ldd, add):
 *     dst[c*ldd + r] = src[r*lds + c]   (add: +=)   for r < R, c < C.
 * src and dst must not overlap.  Baseline (and double): 16x16 blocks, so both sides
 * stay in cache; float at level >= 1: AVX 8x8 register tiles, scalar edges.
 */
#define NN_TRANSPOSE_EDGE(r_lo, r_hi, c_lo, c_hi)                                    \
    for (ptrdiff_t r = (r_lo); r < (r_hi); r++)                                     \
        for (ptrdiff_t c = (c_lo); c < (c_hi); c++) {                               \
            if (add) dst[c * ldd + r] += src[r * lds + c];                          \
            else dst[c * ldd + r] = src[r * lds + c];                               \
        }

#define NN_DEFINE_TRANSPOSE_BLOCKED(T, NAME)                                          \
static void NAME(const T *NN_RESTRICT src, ptrdiff_t lds, ptrdiff_t R, ptrdiff_t C,  \
                 T *NN_RESTRICT dst, ptrdiff_t ldd, int add)                          \
{                                                                                    \
    for (ptrdiff_t r0 = 0; r0 < R; r0 += 16) {                                       \
        ptrdiff_t r1 = r0 + 16 < R ? r0 + 16 : R;                                    \
        for (ptrdiff_t c0 = 0; c0 < C; c0 += 16) {                                   \
            ptrdiff_t c1 = c0 + 16 < C ? c0 + 16 : C;                                \
            NN_TRANSPOSE_EDGE(r0, r1, c0, c1)                                        \
        }                                                                            \
    }                                                                                \
}

NN_DEFINE_TRANSPOSE_BLOCKED(float, nn_transpose_f_base)
NN_DEFINE_TRANSPOSE_BLOCKED(double, nn_transpose_d)

#if NN_X86_DISPATCH
#include <immintrin.h>
NN_TARGET_AVX2 static void nn_transpose_f_avx2(const float *NN_RESTRICT src, ptrdiff_t lds,
        ptrdiff_t R, ptrdiff_t C, float *NN_RESTRICT dst, ptrdiff_t ldd, int add)
{
    ptrdiff_t R8 = R & ~(ptrdiff_t)7, C8 = C & ~(ptrdiff_t)7;
    for (ptrdiff_t r0 = 0; r0 < R8; r0 += 8) {
        for (ptrdiff_t c0 = 0; c0 < C8; c0 += 8) {
            const float *s = src + r0 * lds + c0;
            __m256 r_0 = _mm256_loadu_ps(s), r_1 = _mm256_loadu_ps(s + lds);
            __m256 r_2 = _mm256_loadu_ps(s + 2 * lds), r_3 = _mm256_loadu_ps(s + 3 * lds);
            __m256 r_4 = _mm256_loadu_ps(s + 4 * lds), r_5 = _mm256_loadu_ps(s + 5 * lds);
            __m256 r_6 = _mm256_loadu_ps(s + 6 * lds), r_7 = _mm256_loadu_ps(s + 7 * lds);
            __m256 t0 = _mm256_unpacklo_ps(r_0, r_1), t1 = _mm256_unpackhi_ps(r_0, r_1);
            __m256 t2 = _mm256_unpacklo_ps(r_2, r_3), t3 = _mm256_unpackhi_ps(r_2, r_3);
            __m256 t4 = _mm256_unpacklo_ps(r_4, r_5), t5 = _mm256_unpackhi_ps(r_4, r_5);
            __m256 t6 = _mm256_unpacklo_ps(r_6, r_7), t7 = _mm256_unpackhi_ps(r_6, r_7);
            __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
            __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
            __m256 v[8];
            v[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
            v[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
            v[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
            v[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
            v[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
            v[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
            v[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
            v[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
            for (int i = 0; i < 8; i++) {
                float *d = dst + (c0 + i) * ldd + r0;
                _mm256_storeu_ps(d, add ? _mm256_add_ps(_mm256_loadu_ps(d), v[i]) : v[i]);
            }
        }
        NN_TRANSPOSE_EDGE(r0, r0 + 8, C8, C)
    }
    NN_TRANSPOSE_EDGE(R8, R, 0, C)
}
#endif

static inline void nn_transpose_f(const float *src, ptrdiff_t lds, ptrdiff_t R, ptrdiff_t C,
                                  float *dst, ptrdiff_t ldd, int add)
{ NN_PICK(nn_transpose_f, (src, lds, R, C, dst, ldd, add)); }

#endif /* NN_CORE_VMATH_H */

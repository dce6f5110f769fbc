/*
 * _attention_simd.h -- AVX-512 exp-and-sum for the fused attention softmax.
 *
 * Why: _vmath.h's exp loops are compiled for AVX2 (8 floats per step, with the
 * selects spelt out by the compiler); on CPUs with AVX-512 the softmax's exp pass
 * is ~1/4 of the attention forward.  This header adds one 16-float / 8-double
 * intrinsic loop, selected at run time with __builtin_cpu_supports (the build
 * stays baseline x86-64, no -march=native, no -ffast-math); without AVX-512 the
 * kernel keeps using _vmath.h's vexp_sum.
 *
 * Accuracy: float uses nn_expf's Cephes reduction and polynomial (<= 2 ulp);
 * double uses nn_exp's two-constant reduction and a degree-13 Taylor polynomial on
 * |r| <= ln2/2 (truncation < 1e-17 relative, ~1 ulp overall).  2^n is applied with
 * vscalef, which is exact.  x below the underflow bound -> 0, -inf -> 0,
 * NaN -> NaN.  The sum uses one vector accumulator in a fixed order: the result is
 * deterministic for a given n.
 */
#ifndef NN_CORE_ATTENTION_SIMD_H
#define NN_CORE_ATTENTION_SIMD_H

#include <stddef.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define ATT_HAVE_512 1
static int att_has_avx512(void)
{
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f");
    }
    return cached;
}

/* exp(x) for 16 floats: Cephes expf reduction/polynomial (as nn_expf), 2^n by scalef.
 * x < -87.34 -> 0, NaN -> NaN; callers pass x <= 0 (max-subtracted scores). */
__attribute__((target("avx512f"))) static inline __m512 att_exp16(__m512 x)
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
__attribute__((target("avx512f"))) static inline __m512d att_exp8(__m512d x)
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
__attribute__((target("avx512f"))) static float att_exp_sum_f512(float *y, const float *x,
                                                                  float shift, ptrdiff_t n)
{
    __m512 acc = _mm512_setzero_ps(), s = _mm512_set1_ps(shift);
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = att_exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
        _mm512_storeu_ps(y + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        __m512 e = att_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s));
        _mm512_mask_storeu_ps(y + i, m, e);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, e));
    }
    return _mm512_reduce_add_ps(acc);
}

__attribute__((target("avx512f"))) static double att_exp_sum_d512(double *y, const double *x,
                                                                   double shift, ptrdiff_t n)
{
    __m512d acc = _mm512_setzero_pd(), s = _mm512_set1_pd(shift);
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m512d e = att_exp8(_mm512_sub_pd(_mm512_loadu_pd(x + i), s));
        _mm512_storeu_pd(y + i, e);
        acc = _mm512_add_pd(acc, e);
    }
    if (i < n) {
        __mmask8 m = (__mmask8)((1u << (n - i)) - 1u);
        __m512d e = att_exp8(_mm512_sub_pd(_mm512_maskz_loadu_pd(m, x + i), s));
        _mm512_mask_storeu_pd(y + i, m, e);
        acc = _mm512_add_pd(acc, _mm512_maskz_mov_pd(m, e));
    }
    return _mm512_reduce_add_pd(acc);
}
#else
#define ATT_HAVE_512 0
static int att_has_avx512(void) { return 0; }
static float att_exp_sum_f512(float *y, const float *x, float s, ptrdiff_t n)
{ (void)y; (void)x; (void)s; (void)n; return 0; }
static double att_exp_sum_d512(double *y, const double *x, double s, ptrdiff_t n)
{ (void)y; (void)x; (void)s; (void)n; return 0; }
#endif
#endif /* NN_CORE_ATTENTION_SIMD_H */

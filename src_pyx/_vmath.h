/*
 * _vmath.h -- vectorisable element-wise math for the nn_core kernels.
 *
 * Why this file exists: C's expf/exp are scalar library calls (~3 ns/element for
 * expf, more for exp) and GCC only vectorises them with -ffast-math, which the
 * project forbids (it breaks -inf masking and NaN checks).  The functions here are
 * branch-free polynomial forms that GCC auto-vectorises at -O3.  The array-level
 * loops are compiled twice (AVX2+FMA, and the x86-64 baseline) and the right
 * version is picked at run time, so the extension still runs on any x86-64 CPU.
 *
 * Accuracy (checked against float64 NumPy in tests/test_vmath.py):
 *   nn_expf: Cephes expf polynomial, <= 2 ulp on [-87.3, 88]; x < -87.3 -> 0
 *            (the subnormal range is flushed), -inf -> 0, NaN -> NaN.
 *   nn_exp:  Cephes exp Pade form, <= 2 ulp on [-708.3, 709]; x < -708.3 -> 0,
 *            -inf -> 0, NaN -> NaN.
 *   nn_core only calls them on x <= 0 (max-subtracted scores, -2|x| in tanh,
 *   -|x| in sigmoid), where overflow cannot happen.
 *
 * Reductions (sum, max) use 8 independent accumulators in a fixed order, so the
 * result is deterministic for a given n and does not depend on threading.
 */
#ifndef NN_CORE_VMATH_H
#define NN_CORE_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>

/* Each array loop is compiled twice: for AVX2+FMA and for the build's baseline ISA;
 * nn_has_avx2_fma() picks one at run time (the answer is cached). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define NN_X86_DISPATCH 1
#define NN_TARGET_AVX2 __attribute__((target("avx2,fma")))
static int nn_has_avx2_fma(void)
{
    static int cached = -1;   /* benign race: every thread writes the same value */
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return cached;
}
#else
#define NN_X86_DISPATCH 0
#define NN_TARGET_AVX2
#endif
#if defined(__GNUC__)
#define NN_INLINE static inline __attribute__((always_inline))
#else
#define NN_INLINE static inline
#endif

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

/* ----------------------------------------------------------------- arrays -- */

/*
 * The array loops are the same algorithm for float and double; one macro body is
 * instantiated per type (T = element type, S = suffix f/d, EXP = scalar exp; I, ABS,
 * INF = same-size signed integer, |x| bit mask, bits of +inf).
 *   nn_vexp_sum_S(y, x, shift, n): y[i] = exp(x[i] - shift), returns sum(y); y may alias x.
 *   nn_vexp_S(y, x, n):            y[i] = exp(x[i]).
 *   nn_vmax_S(x, n):               max(x), -inf for n == 0, NaN if any x[i] is NaN
 *                                  (NaN-sticky, like np.max / torch.max, so that a NaN
 *                                  score reaches the softmax and makes its row NaN
 *                                  instead of being skipped).  A fused NaN-sticky
 *                                  select does not vectorise with GCC (scalar, ~4x
 *                                  slower), so the max is the plain vectorised select
 *                                  and NaN is detected by a second vectorised pass:
 *                                  the signed-integer max of |bits(x)|, which exceeds
 *                                  bits(+inf) iff some x is NaN (softmax of 4096x512,
 *                                  1 thread: +1-3 % float32, +8-15 % float64; a float
 *                                  `x != x` select pass cost +25-40 %).
 *   nn_vdot_S(x, y, n):            sum(x[i] * y[i]).
 */
#define NN_SUM8(acc) (((acc)[0] + (acc)[4]) + ((acc)[1] + (acc)[5])) + \
                     (((acc)[2] + (acc)[6]) + ((acc)[3] + (acc)[7]))

#define NN_DEFINE_ARRAY_OPS(T, S, EXP, V, A, I, ABS, INF)                         \
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
}                                                                                   \
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
    /* NaN check: the largest |bits(x)| as a signed integer exceeds bits(inf)    */ \
    /* iff some x is NaN (integer max: vectorises, unlike any float NaN select)  */ \
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

/* I, ABS, INF: signed integer type of the element's size, |x| bit mask, bits of +inf */
#define NN_F_BITS int32_t, INT32_C(0x7fffffff), INT32_C(0x7f800000)
#define NN_D_BITS int64_t, INT64_C(0x7fffffffffffffff), INT64_C(0x7ff0000000000000)
#define NN_DEFINE_ARRAY_OPS_X(...) NN_DEFINE_ARRAY_OPS(__VA_ARGS__)   /* expands *_BITS */

NN_DEFINE_ARRAY_OPS_X(float, f, nn_expf, _base, , NN_F_BITS)
NN_DEFINE_ARRAY_OPS_X(double, d, nn_exp, _base, , NN_D_BITS)
#if NN_X86_DISPATCH
NN_DEFINE_ARRAY_OPS_X(float, f, nn_expf, _avx2, NN_TARGET_AVX2, NN_F_BITS)
NN_DEFINE_ARRAY_OPS_X(double, d, nn_exp, _avx2, NN_TARGET_AVX2, NN_D_BITS)
#define NN_PICK(name, args) (nn_has_avx2_fma() ? name##_avx2 args : name##_base args)
#else
#define NN_PICK(name, args) (name##_base args)
#endif

static inline float nn_vexp_sum_f(float *y, const float *x, float shift, ptrdiff_t n)
{ return NN_PICK(nn_vexp_sum_f, (y, x, shift, n)); }
static inline double nn_vexp_sum_d(double *y, const double *x, double shift, ptrdiff_t n)
{ return NN_PICK(nn_vexp_sum_d, (y, x, shift, n)); }
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


/* ------------------------------------------ sigmoid / tanh (recurrent gates) -- */
/*
 * Appended for the recurrent kernels (src_pyx/_recurrent.pyx).  Built on nn_expf /
 * nn_exp with the same AVX2/baseline dispatch; no libm tanh (C tanhf ~20 ns/element).
 *   sigmoid(x) = 1 / (1 + e)  (x >= 0),  e / (1 + e)  (x < 0),  e = exp(-|x|):
 *                never overflows, no clipping; -inf -> 0, +inf -> 1, NaN -> NaN.
 *   tanh(x)    = sign(x) * (1 - e) / (1 + e), e = exp(-2|x|), for |x| >= 0.625;
 *                below 0.625 the Cephes odd polynomial (float) / rational form
 *                (double), which avoids the cancellation in 1 - e near 0.
 * Accuracy (tests/test_vmath_gates.py, against float64/longdouble NumPy): a few ulp.
 *   nn_vsigmoid_S(y, x, n), nn_vtanh_S(y, x, n): element-wise, y may alias x.
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

#define NN_DEFINE_GATE_OPS(T, S, SIG, TANH, V, A)                                   \
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

NN_DEFINE_GATE_OPS(float, f, nn_sigmoidf, nn_tanhf, _base, )
NN_DEFINE_GATE_OPS(double, d, nn_sigmoid, nn_tanh, _base, )
#if NN_X86_DISPATCH
NN_DEFINE_GATE_OPS(float, f, nn_sigmoidf, nn_tanhf, _avx2, NN_TARGET_AVX2)
NN_DEFINE_GATE_OPS(double, d, nn_sigmoid, nn_tanh, _avx2, NN_TARGET_AVX2)
#endif

static inline void nn_vsigmoid_f(float *y, const float *x, ptrdiff_t n)
{ NN_PICK(nn_vsigmoid_f, (y, x, n)); }
static inline void nn_vsigmoid_d(double *y, const double *x, ptrdiff_t n)
{ NN_PICK(nn_vsigmoid_d, (y, x, n)); }
static inline void nn_vtanh_f(float *y, const float *x, ptrdiff_t n)
{ NN_PICK(nn_vtanh_f, (y, x, n)); }
static inline void nn_vtanh_d(double *y, const double *x, ptrdiff_t n)
{ NN_PICK(nn_vtanh_d, (y, x, n)); }

#endif /* NN_CORE_VMATH_H */

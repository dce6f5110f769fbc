/*
 * _layers.h -- fused element-wise and row kernels of the toolkit layers:
 * GELU (exact erf form and tanh form), LayerNorm, softmax cross-entropy,
 * Adam/AdamW/SGD updates and the dropout mask generator.
 *
 * Every array loop is written once per element type through a macro and compiled for
 * the baseline x86-64 and for AVX2+FMA (picked at run time, _simd.h); the bodies
 * are branch-free so GCC vectorises them without -ffast-math.
 *
 * Accuracy (tests/test_layer_kernels.py, against float64 / long double references):
 *   GELU: float32 within one ulp (its Phi is evaluated in double), float64 within
 *   ~1e-15 relative, over the whole range (no cancellation in the left tail: Phi is
 *   computed from erfc).
 */
#ifndef NN_CORE_LAYERS_H
#define NN_CORE_LAYERS_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#include <stddef.h>

#include "_vmath.h"

/* ------------------------------------------------------------------ Phi(x) -- */
/*
 * Phi(x) = 0.5 erfc(-x / sqrt2), phi(x) = exp(-x^2/2) / sqrt(2 pi).  float64, with
 * a = |x|/sqrt2:
 *   a < 1:  erf(a) = a S(a^2)                       (S: minimax polynomial)
 *   a >= 1: erfc(a) = exp(-a^2) P(a) / Q(a)         (Hart / Cephes rational forms; R(a)/S(a)
 *                                                    from a = 8)
 * exp(-x^2/2) is split as exp(-m^2/2) exp(-(m + f/2) f), m = |x| rounded to 1/16, so
 * the rounding of x^2 never reaches the exponent (it would cost ~100 ulp in the tail).
 * Phi of x < 0 is 0.5 erfc(a) directly: no 1 - (1 - small) cancellation.
 * S fitted with mpmath (Chebyshev minimax).  float: nn_phi_fd below.
 */
static const double NN_PHI_S_D[12] = {
    -7.7958988270021422416e-10, 1.3720064546777685604e-8, -1.6208483801871705902e-7,
    1.644742470331736241e-6, -1.4924736907419660338e-5, 1.2055294904839707917e-4,
    -8.5483259753896920806e-4, 5.2239776071164227321e-3, -2.686617064323777036e-2,
    1.1283791670945006266e-1, -3.7612638903183540438e-1, 1.1283791670955125665};
/* erfc(a) exp(a^2) = P(a) / Q(a), 1 <= a: Hart et al. (1968) / Cephes ndtr.c */
static const double NN_PHI_P_D[9] = {
    2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
    4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
    9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2};
/* erfc(a) exp(a^2) = R(a) / S(a), a >= 8 (same source) */
static const double NN_PHI_R_D[6] = {
    5.64189583547755073984e-1, 1.27536670759978104416e0, 5.01905042251180477414e0,
    6.16021097993053585195e0, 7.40974269950448939160e0, 2.97886665372100240670e0};
static const double NN_PHI_S2_D[7] = {
    1.0, 2.26052863220117276590e0, 9.39603524938001434673e0, 1.20489539808096656605e1,
    1.70814450747565897222e1, 9.60896809063285878198e0, 3.36907645100081516050e0};
static const double NN_PHI_Q_D[9] = {
    1.0, 1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
    9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
    1.65666309194161350182e3, 5.57535340817727675546e2};

/* Phi(x) and *pdf = phi(x) of a float x, evaluated in double to ~3e-8 relative, so that
 * x Phi(x) rounded to float is within one ulp.  With a = |x| / sqrt2 and t = 1 / (1 + 0.3 a):
 *   Phi(-|x|) = erfc(a) / 2 = exp(-x^2/2) E(t) / 2,  E(t) ~ erfcx(a) = exp(a^2) erfc(a)
 * (E: degree-9 polynomial, relative error 2.1e-8 on a in [0, 20/sqrt2], fitted here with
 * SciPy's erfcx); x^2 of a float is exact in double, and exp is a degree-7 Taylor
 * polynomial after the ln 2 reduction (relative error 6e-9).  One polynomial, one exp, one
 * division, no branches: it vectorises, 4 lanes (AVX2) or 8 (AVX-512). */
static const double NN_PHI_E_F[10] = {
    -0.13099177556525013, 0.49358361048873867, -0.53125670996135566, 0.57321512901828164,
    -0.11603568197441023, 0.22651767050011296, 0.14428674362156702, 0.1715947399894841,
    0.16908064294819367, 5.6095370095553819e-06};

NN_INLINE double nn_phi_fd(double x, double *pdf)
{
    double ax = fabs(x);
    ax = ax > 20.0 ? 20.0 : ax;                /* Phi is exactly 0 / 1 beyond (keeps NaN) */
    double t = 1.0 / (1.0 + 0.3 * 0.70710678118654752440 * ax);
    double p = 0.0;
#pragma GCC unroll 10
    for (int k = 0; k < 10; k++)
        p = p * t + NN_PHI_E_F[k];
    /* exp(z), z = -x^2/2 in [-200, 0]: z = n ln2 + r, |r| <= ln2/2 (n in t2's low bits) */
    const double magic = 6755399441055744.0;
    double z = -0.5 * ax * ax;
    double t2 = z * 1.4426950408889634 + magic;
    double n = t2 - magic;
    double r = z - n * 6.93145751953125e-1;
    r = r - n * 1.42860682030941723212e-6;
    double q = 1.0 / 5040.0;
    q = q * r + 1.0 / 720.0;
    q = q * r + 1.0 / 120.0;
    q = q * r + 1.0 / 24.0;
    q = q * r + 1.0 / 6.0;
    q = q * r + 0.5;
    q = q * r + 1.0;
    q = q * r + 1.0;
    int64_t tb, mb;
    memcpy(&tb, &t2, sizeof tb);
    memcpy(&mb, &magic, sizeof mb);
    int64_t bits = (tb - mb + 1023) << 52;
    double s;
    memcpy(&s, &bits, sizeof s);
    double e = q * s;                                           /* exp(-x^2/2) */
    double tail = ax < 20.0 ? 0.5 * e * p : 0.0;     /* Phi(-|x|); exactly 0 for -inf, as float */
    *pdf = e * 0.39894228040143267794;
    return x < 0.0 ? tail : 1.0 - tail;
}

NN_INLINE double nn_phi_d(double x, double *pdf)
{
    double ax = fabs(x);
    ax = ax > 40.0 ? 40.0 : ax;                /* Phi is exactly 0 / 1 beyond (keeps NaN) */
    double a = ax * 0.70710678118654752440;
    double u = a * a, s = 0.0, pn = 0.0, qd = 0.0, rn = 0.0, sd = 0.0;
#pragma GCC unroll 12
    for (int k = 0; k < 12; k++)
        s = s * u + NN_PHI_S_D[k];
#pragma GCC unroll 9
    for (int k = 0; k < 9; k++) {
        pn = pn * a + NN_PHI_P_D[k];
        qd = qd * a + NN_PHI_Q_D[k];
    }
#pragma GCC unroll 6
    for (int k = 0; k < 6; k++)
        rn = rn * a + NN_PHI_R_D[k];
#pragma GCC unroll 7
    for (int k = 0; k < 7; k++)
        sd = sd * a + NN_PHI_S2_D[k];
    double m = floor(ax * 16.0 + 0.5) * 0.0625, f = ax - m;
    double e = nn_exp(-0.5 * m * m) * nn_exp(-(m + 0.5 * f) * f);
    double tail = 0.5 * e * (a < 8.0 ? pn / qd : rn / sd);
    double near = 0.5 * a * s;
    int small = a < 1.0;
    double lo = small ? 0.5 - near : tail;
    double hi = small ? 0.5 + near : 1.0 - tail;
    *pdf = e * 0.39894228040143267794;
    return x < 0.0 ? lo : hi;
}

/* tanh form: u = sqrt(2/pi) (x + 0.044715 x^3), y = x (1 + tanh u) / 2 */
#define NN_GELU_C0 0.7978845608028654
#define NN_GELU_C1 0.044715

/* T: the array type; W, PHI: the type and function of the exact form's arithmetic */
#define NN_DEFINE_GELU(T, S, W, PHI, TANH, V, A)                                       \
A static void nn_gelu_fwd_##S##V(T *y, const T *x, ptrdiff_t n, int approx)          \
{                                                                                     \
    if (approx) {                                                                     \
        for (ptrdiff_t i = 0; i < n; i++) {                                           \
            T v = x[i];                                                               \
            T t = TANH((T)NN_GELU_C0 * (v + (T)NN_GELU_C1 * v * v * v));              \
            y[i] = (T)0.5 * v * ((T)1 + t);                                           \
        }                                                                             \
    } else {                                                                          \
        for (ptrdiff_t i = 0; i < n; i++) {                                           \
            W v = x[i], pdf;                                                          \
            y[i] = (T)(v * PHI(v, &pdf));                                             \
        }                                                                             \
    }                                                                                 \
}                                                                                     \
A static void nn_gelu_bwd_##S##V(T *dx, const T *x, const T *dy, ptrdiff_t n,        \
                                 int approx)                                          \
{                                                                                     \
    if (approx) {                                                                     \
        for (ptrdiff_t i = 0; i < n; i++) {                                           \
            T v = x[i];                                                               \
            T t = TANH((T)NN_GELU_C0 * (v + (T)NN_GELU_C1 * v * v * v));              \
            T du = (T)NN_GELU_C0 * ((T)1 + (T)(3 * NN_GELU_C1) * v * v);              \
            dx[i] = dy[i] * ((T)0.5 * ((T)1 + t) + (T)0.5 * v * ((T)1 - t * t) * du); \
        }                                                                             \
    } else {                                                                          \
        for (ptrdiff_t i = 0; i < n; i++) {                                           \
            W v = x[i], pdf;                                                          \
            W c = PHI(v, &pdf);                                                       \
            dx[i] = (T)((W)dy[i] * (c + v * pdf));                                    \
        }                                                                             \
    }                                                                                 \
}

NN_DEFINE_GELU(float, f, double, nn_phi_fd, nn_tanhf, _base, )
NN_DEFINE_GELU(double, d, double, nn_phi_d, nn_tanh, _base, )
#if NN_X86_DISPATCH
NN_DEFINE_GELU(float, f, double, nn_phi_fd, nn_tanhf, _avx2, NN_TARGET_AVX2)
NN_DEFINE_GELU(double, d, double, nn_phi_d, nn_tanh, _avx2, NN_TARGET_AVX2)
#endif
#if NN_HAVE_AVX512
/* 8 double lanes: the float exact form runs in double, so it gains the most */
#define NN_TARGET_GELU512 __attribute__((target("avx512f,avx2,fma")))
NN_DEFINE_GELU(float, f, double, nn_phi_fd, nn_tanhf, _avx512, NN_TARGET_GELU512)
NN_DEFINE_GELU(double, d, double, nn_phi_d, nn_tanh, _avx512, NN_TARGET_GELU512)
#define NN_PICK_GELU(name, args)                                                      \
    (nn_simd_level() >= 2 ? name##_avx512 args : NN_PICK(name, args))
#else
#define NN_PICK_GELU(name, args) NN_PICK(name, args)
#endif

static inline void nn_gelu_fwd_f(float *y, const float *x, ptrdiff_t n, int approx)
{ NN_PICK_GELU(nn_gelu_fwd_f, (y, x, n, approx)); }
static inline void nn_gelu_fwd_d(double *y, const double *x, ptrdiff_t n, int approx)
{ NN_PICK_GELU(nn_gelu_fwd_d, (y, x, n, approx)); }
static inline void nn_gelu_bwd_f(float *dx, const float *x, const float *dy, ptrdiff_t n,
                                 int approx)
{ NN_PICK_GELU(nn_gelu_bwd_f, (dx, x, dy, n, approx)); }
static inline void nn_gelu_bwd_d(double *dx, const double *x, const double *dy, ptrdiff_t n,
                                 int approx)
{ NN_PICK_GELU(nn_gelu_bwd_d, (dx, x, dy, n, approx)); }

/* ------------------------------------------------------- vector reductions -- */
/* Row reductions use GCC vector types (32-byte lanes, split in two on the baseline
 * ISA): the scalar 8-accumulator form gets vectorised across iterations with
 * permutes, several times slower.  Lane sums are added in a fixed order. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float nn_vf __attribute__((vector_size(32)));
typedef double nn_vd __attribute__((vector_size(32)));
#define NN_LANES_f 8
#define NN_LANES_d 4
#define NN_VLOAD(VT, p) ({ VT v_; memcpy(&v_, (p), sizeof v_); v_; })
#define NN_HSUM_f(v) ((((v)[0] + (v)[4]) + ((v)[1] + (v)[5])) + (((v)[2] + (v)[6]) + ((v)[3] + (v)[7])))
#define NN_HSUM_d(v) (((v)[0] + (v)[2]) + ((v)[1] + (v)[3]))

/* --------------------------------------------------------------- LayerNorm -- */
/*
 * Rows of width D.  Forward: mean, then the variance about it (two passes over a row
 * that stays in L1: no cancellation as in E[x^2] - E[x]^2), rstd = 1/sqrt(var + eps),
 * y = (x - mean) rstd gamma + beta; mean and rstd are kept per row.  Backward, with
 * xh = (x - mean) rstd and g = dy gamma:
 *   dx = rstd (g - mean(g) - xh mean(g xh)),  dgamma += sum_rows dy xh,  dbeta += sum_rows dy.
 * gamma == NULL: no affine part (g = dy, no parameter gradients).
 */
#define NN_DEFINE_LAYERNORM(T, S, VT, SQRT, V, A)                                      \
A static void nn_layernorm_fwd_##S##V(const T *NN_RESTRICT x, T *NN_RESTRICT y,        \
                                      T *mean, T *rstd, const T *NN_RESTRICT gamma,    \
                                      const T *NN_RESTRICT beta, ptrdiff_t N,          \
                                      ptrdiff_t D, T eps)                              \
{                                                                                      \
    const ptrdiff_t L = NN_LANES_##S;                                                  \
    for (ptrdiff_t r = 0; r < N; r++) {                                                \
        const T *xr = x + r * D;                                                       \
        T *yr = y + r * D;                                                             \
        VT acc = {0};                                                                  \
        ptrdiff_t j = 0;                                                               \
        for (; j + L <= D; j += L)                                                     \
            acc += NN_VLOAD(VT, xr + j);                                               \
        T sum = NN_HSUM_##S(acc);                                                      \
        for (; j < D; j++)                                                             \
            sum += xr[j];                                                              \
        T mu = sum / (T)D;                                                             \
        VT sq = {0};                                                                   \
        for (j = 0; j + L <= D; j += L) {                                              \
            VT c = NN_VLOAD(VT, xr + j) - mu;                                          \
            sq += c * c;                                                               \
        }                                                                              \
        T ss = NN_HSUM_##S(sq);                                                        \
        for (; j < D; j++)                                                             \
            ss += (xr[j] - mu) * (xr[j] - mu);                                         \
        T rs = (T)1 / SQRT(ss / (T)D + eps);                                           \
        mean[r] = mu;                                                                  \
        rstd[r] = rs;                                                                  \
        if (gamma != NULL) {                                                           \
            for (j = 0; j < D; j++)                                                    \
                yr[j] = (xr[j] - mu) * rs * gamma[j] + beta[j];                        \
        } else {                                                                       \
            for (j = 0; j < D; j++)                                                    \
                yr[j] = (xr[j] - mu) * rs;                                             \
        }                                                                              \
    }                                                                                  \
}                                                                                      \
A static void nn_layernorm_bwd_##S##V(const T *NN_RESTRICT x, const T *NN_RESTRICT dy,  \
                                      const T *mean, const T *rstd,                    \
                                      const T *NN_RESTRICT gamma, T *NN_RESTRICT dx,   \
                                      T *NN_RESTRICT dgamma, T *NN_RESTRICT dbeta,     \
                                      ptrdiff_t N, ptrdiff_t D)                        \
{                                                                                      \
    const ptrdiff_t L = NN_LANES_##S;                                                  \
    for (ptrdiff_t r = 0; r < N; r++) {                                                \
        const T *xr = x + r * D, *gr = dy + r * D;                                     \
        T *dxr = dx + r * D;                                                           \
        T mu = mean[r], rs = rstd[r];                                                  \
        VT s1 = {0}, s2 = {0};                                                         \
        ptrdiff_t j = 0;                                                               \
        for (; j + L <= D; j += L) {                                                   \
            VT g = NN_VLOAD(VT, gr + j);                                               \
            if (gamma != NULL)                                                         \
                g *= NN_VLOAD(VT, gamma + j);                                          \
            s1 += g;                                                                   \
            s2 += g * ((NN_VLOAD(VT, xr + j) - mu) * rs);                              \
        }                                                                              \
        T t1 = NN_HSUM_##S(s1), t2 = NN_HSUM_##S(s2);                                  \
        for (; j < D; j++) {                                                           \
            T g = gamma != NULL ? gr[j] * gamma[j] : gr[j];                            \
            t1 += g;                                                                   \
            t2 += g * ((xr[j] - mu) * rs);                                             \
        }                                                                              \
        T m1 = t1 / (T)D, m2 = t2 / (T)D;                                              \
        if (gamma != NULL) {                                                           \
            for (j = 0; j < D; j++) {                                                  \
                T xh = (xr[j] - mu) * rs;                                              \
                dxr[j] = rs * (gr[j] * gamma[j] - m1 - xh * m2);                       \
                dgamma[j] += gr[j] * xh;                                               \
                dbeta[j] += gr[j];                                                     \
            }                                                                          \
        } else {                                                                       \
            for (j = 0; j < D; j++)                                                    \
                dxr[j] = rs * (gr[j] - m1 - ((xr[j] - mu) * rs) * m2);                 \
        }                                                                              \
    }                                                                                  \
}

NN_DEFINE_LAYERNORM(float, f, nn_vf, sqrtf, _base, )
NN_DEFINE_LAYERNORM(double, d, nn_vd, sqrt, _base, )
#if NN_X86_DISPATCH
NN_DEFINE_LAYERNORM(float, f, nn_vf, sqrtf, _avx2, NN_TARGET_AVX2)
NN_DEFINE_LAYERNORM(double, d, nn_vd, sqrt, _avx2, NN_TARGET_AVX2)
#endif

static inline void nn_layernorm_fwd_f(const float *x, float *y, float *mean, float *rstd,
                                      const float *gamma, const float *beta, ptrdiff_t N,
                                      ptrdiff_t D, float eps)
{ NN_PICK(nn_layernorm_fwd_f, (x, y, mean, rstd, gamma, beta, N, D, eps)); }
static inline void nn_layernorm_fwd_d(const double *x, double *y, double *mean, double *rstd,
                                      const double *gamma, const double *beta, ptrdiff_t N,
                                      ptrdiff_t D, double eps)
{ NN_PICK(nn_layernorm_fwd_d, (x, y, mean, rstd, gamma, beta, N, D, eps)); }
static inline void nn_layernorm_bwd_f(const float *x, const float *dy, const float *mean,
                                      const float *rstd, const float *gamma, float *dx,
                                      float *dgamma, float *dbeta, ptrdiff_t N, ptrdiff_t D)
{ NN_PICK(nn_layernorm_bwd_f, (x, dy, mean, rstd, gamma, dx, dgamma, dbeta, N, D)); }
static inline void nn_layernorm_bwd_d(const double *x, const double *dy, const double *mean,
                                      const double *rstd, const double *gamma, double *dx,
                                      double *dgamma, double *dbeta, ptrdiff_t N, ptrdiff_t D)
{ NN_PICK(nn_layernorm_bwd_d, (x, dy, mean, rstd, gamma, dx, dgamma, dbeta, N, D)); }

/* ------------------------------------------------- softmax cross-entropy -- */
/*
 * Logits z [N, C], integer targets t [N].  Per row with t != ignore:
 *   lse = max z + log sum exp(z - max z),  loss = lse - z_t,
 *   grad = (softmax(z) - onehot(t)) * w            (w: the row's weight, e.g. 1/M)
 * Ignored rows: loss 0, grad 0.  Returns the number of kept rows.  A target outside
 * [0, C) of a kept row stops the kernel and returns -1 - row (the caller checked them
 * already; this keeps memory safe whatever it is given).
 */
#define NN_DEFINE_XENT(T, S, LOG, V, A)                                                \
A static ptrdiff_t nn_xent_##S##V(const T *NN_RESTRICT z, const int64_t *t,           \
                                  T *NN_RESTRICT loss, T *NN_RESTRICT grad,            \
                                  ptrdiff_t N, ptrdiff_t C, int64_t ignore, T w)       \
{                                                                                      \
    ptrdiff_t kept = 0;                                                                \
    for (ptrdiff_t r = 0; r < N; r++) {                                                \
        const T *zr = z + r * C;                                                       \
        T *gr = grad + r * C;                                                          \
        int64_t tr = t[r];                                                             \
        if (tr == ignore) {                                                            \
            loss[r] = 0;                                                               \
            memset(gr, 0, (size_t)C * sizeof(T));                                      \
            continue;                                                                  \
        }                                                                              \
        if (tr < 0 || tr >= C)                                                         \
            return -1 - r;                                                             \
        T mx = -INFINITY;                                                              \
        for (ptrdiff_t j = 0; j < C; j++)                                              \
            mx = zr[j] > mx ? zr[j] : mx;                                              \
        T s = 0;                                                                       \
        for (ptrdiff_t j = 0; j < C; j++) {                                            \
            T e = nn_exp_##S(zr[j] - mx);                                              \
            gr[j] = e;                                                                 \
            s += e;                                                                    \
        }                                                                              \
        T inv = w / s;                                                                 \
        for (ptrdiff_t j = 0; j < C; j++)                                              \
            gr[j] *= inv;                                                              \
        gr[tr] -= w;                                                                   \
        loss[r] = mx + LOG(s) - zr[tr];                                                \
        kept++;                                                                        \
    }                                                                                  \
    return kept;                                                                       \
}
#define nn_exp_f nn_expf
#define nn_exp_d nn_exp

NN_DEFINE_XENT(float, f, logf, _base, )
NN_DEFINE_XENT(double, d, log, _base, )
#if NN_X86_DISPATCH
NN_DEFINE_XENT(float, f, logf, _avx2, NN_TARGET_AVX2)
NN_DEFINE_XENT(double, d, log, _avx2, NN_TARGET_AVX2)
#endif

static inline ptrdiff_t nn_xent_f(const float *z, const int64_t *t, float *loss, float *grad,
                                  ptrdiff_t N, ptrdiff_t C, int64_t ignore, float w)
{ return NN_PICK(nn_xent_f, (z, t, loss, grad, N, C, ignore, w)); }
static inline ptrdiff_t nn_xent_d(const double *z, const int64_t *t, double *loss, double *grad,
                                  ptrdiff_t N, ptrdiff_t C, int64_t ignore, double w)
{ return NN_PICK(nn_xent_d, (z, t, loss, grad, N, C, ignore, w)); }

/* ------------------------------------------------- embedding scatter-add -- */
/* gW[ids[n]] += g[n] for every n with ids[n] != skip (skip < 0: none); ids checked
 * by the caller, and again here (an id out of range returns -1 - n). */
#define NN_DEFINE_SCATTER(T, S, V, A)                                                  \
A static ptrdiff_t nn_scatter_add_##S##V(T *NN_RESTRICT gW, const int64_t *ids,       \
                                         const T *NN_RESTRICT g, ptrdiff_t N,          \
                                         ptrdiff_t E, ptrdiff_t rows, int64_t skip)    \
{                                                                                      \
    for (ptrdiff_t n = 0; n < N; n++) {                                                \
        int64_t id = ids[n];                                                           \
        if (id == skip)                                                                \
            continue;                                                                  \
        if (id < 0 || id >= rows)                                                      \
            return -1 - n;                                                             \
        T *dst = gW + id * E;                                                          \
        const T *src = g + n * E;                                                      \
        for (ptrdiff_t j = 0; j < E; j++)                                              \
            dst[j] += src[j];                                                          \
    }                                                                                  \
    return 0;                                                                          \
}

NN_DEFINE_SCATTER(float, f, _base, )
NN_DEFINE_SCATTER(double, d, _base, )
#if NN_X86_DISPATCH
NN_DEFINE_SCATTER(float, f, _avx2, NN_TARGET_AVX2)
NN_DEFINE_SCATTER(double, d, _avx2, NN_TARGET_AVX2)
#endif

static inline ptrdiff_t nn_scatter_add_f(float *gW, const int64_t *ids, const float *g,
                                         ptrdiff_t N, ptrdiff_t E, ptrdiff_t rows, int64_t skip)
{ return NN_PICK(nn_scatter_add_f, (gW, ids, g, N, E, rows, skip)); }
static inline ptrdiff_t nn_scatter_add_d(double *gW, const int64_t *ids, const double *g,
                                         ptrdiff_t N, ptrdiff_t E, ptrdiff_t rows, int64_t skip)
{ return NN_PICK(nn_scatter_add_d, (gW, ids, g, N, E, rows, skip)); }

/* --------------------------------------------------------- optimizer steps -- */
/*
 * Adam (Kingma & Ba) with PyTorch's arithmetic, one pass over p, g, m, v:
 *   decoupled (AdamW): p *= 1 - lr wd;   else (Adam, wd > 0): g += wd p
 *   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
 *   p -= step (m / (sqrt(v) / sqrt_bc2 + eps)),   step = lr / (1 - b1^t)
 * SGD with momentum / dampening / Nesterov / L2 as torch.optim.SGD; first marks the
 * first step (the buffer starts as g).
 */
#define NN_DEFINE_OPTIM(T, S, SQRT, V, A)                                              \
A static void nn_adam_##S##V(T *NN_RESTRICT p, const T *NN_RESTRICT g,                \
                             T *NN_RESTRICT m, T *NN_RESTRICT v, ptrdiff_t n,          \
                             T b1, T b2, T step, T sqrt_bc2, T eps, T wd,              \
                             T decay, int decoupled)                                   \
{                                                                                      \
    for (ptrdiff_t i = 0; i < n; i++) {                                                \
        T gi = g[i], pi = p[i];                                                        \
        if (decoupled)                                                                 \
            pi = pi * decay;                                                           \
        else                                                                           \
            gi = gi + wd * pi;                                                         \
        T mi = m[i] * b1 + ((T)1 - b1) * gi;                                           \
        T vi = v[i] * b2 + ((T)1 - b2) * (gi * gi);                                    \
        m[i] = mi;                                                                     \
        v[i] = vi;                                                                     \
        p[i] = pi - step * (mi / (SQRT(vi) / sqrt_bc2 + eps));                         \
    }                                                                                  \
}                                                                                      \
A static void nn_sgd_##S##V(T *NN_RESTRICT p, const T *NN_RESTRICT g,                 \
                            T *NN_RESTRICT buf, ptrdiff_t n, T lr, T mom, T damp,       \
                            T wd, int nesterov, int first)                              \
{                                                                                      \
    for (ptrdiff_t i = 0; i < n; i++) {                                                \
        T gi = g[i] + wd * p[i];                                                       \
        if (buf != NULL) {                                                             \
            T b = first ? gi : buf[i] * mom + ((T)1 - damp) * gi;                      \
            buf[i] = b;                                                                \
            gi = nesterov ? gi + mom * b : b;                                          \
        }                                                                              \
        p[i] -= lr * gi;                                                               \
    }                                                                                  \
}

NN_DEFINE_OPTIM(float, f, sqrtf, _base, )
NN_DEFINE_OPTIM(double, d, sqrt, _base, )
#if NN_X86_DISPATCH
NN_DEFINE_OPTIM(float, f, sqrtf, _avx2, NN_TARGET_AVX2)
NN_DEFINE_OPTIM(double, d, sqrt, _avx2, NN_TARGET_AVX2)
#endif

static inline void nn_adam_f(float *p, const float *g, float *m, float *v, ptrdiff_t n,
                             float b1, float b2, float step, float sqrt_bc2, float eps,
                             float wd, float decay, int decoupled)
{ NN_PICK(nn_adam_f, (p, g, m, v, n, b1, b2, step, sqrt_bc2, eps, wd, decay, decoupled)); }
static inline void nn_adam_d(double *p, const double *g, double *m, double *v, ptrdiff_t n,
                             double b1, double b2, double step, double sqrt_bc2, double eps,
                             double wd, double decay, int decoupled)
{ NN_PICK(nn_adam_d, (p, g, m, v, n, b1, b2, step, sqrt_bc2, eps, wd, decay, decoupled)); }
static inline void nn_sgd_f(float *p, const float *g, float *buf, ptrdiff_t n, float lr,
                            float mom, float damp, float wd, int nesterov, int first)
{ NN_PICK(nn_sgd_f, (p, g, buf, n, lr, mom, damp, wd, nesterov, first)); }
static inline void nn_sgd_d(double *p, const double *g, double *buf, ptrdiff_t n, double lr,
                            double mom, double damp, double wd, int nesterov, int first)
{ NN_PICK(nn_sgd_d, (p, g, buf, n, lr, mom, damp, wd, nesterov, first)); }

/* ---------------------------------------------------------------- dropout -- */
/*
 * A counter-based generator: element i of a mask with key (k0, k1) keeps its value
 * iff hash(i) >= threshold, hash = fmix32(fmix32(lo32(i) ^ k0) ^ k1 ^ hi32(i) * c)
 * (MurmurHash3's finaliser).  The same key regenerates the same mask (the backward
 * needs no stored mask) and any sub-range can be generated alone (thread splits).
 * threshold = round(p * 2^32): the drop probability is p within 2^-32.
 */
NN_INLINE uint32_t nn_fmix32(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

NN_INLINE uint32_t nn_mask_hash(uint64_t i, uint32_t k0, uint32_t k1)
{
    uint32_t lo = (uint32_t)i, hi = (uint32_t)(i >> 32);
    return nn_fmix32(nn_fmix32(lo ^ k0) ^ k1 ^ (hi * 0x9e3779b9u));
}

/* y[i] = keep(off + i) ? x[i] * scale : 0 */
#define NN_DEFINE_DROPOUT(T, S, V, A)                                                  \
A static void nn_dropout_##S##V(T *NN_RESTRICT y, const T *NN_RESTRICT x, ptrdiff_t n,\
                                uint64_t off, uint32_t k0, uint32_t k1,                \
                                uint32_t threshold, T scale)                           \
{                                                                                      \
    for (ptrdiff_t i = 0; i < n; i++) {                                                \
        uint32_t h = nn_mask_hash(off + (uint64_t)i, k0, k1);                          \
        y[i] = h >= threshold ? x[i] * scale : (T)0;                                   \
    }                                                                                  \
}

NN_DEFINE_DROPOUT(float, f, _base, )
NN_DEFINE_DROPOUT(double, d, _base, )
#if NN_X86_DISPATCH
NN_DEFINE_DROPOUT(float, f, _avx2, NN_TARGET_AVX2)
NN_DEFINE_DROPOUT(double, d, _avx2, NN_TARGET_AVX2)
#endif

static inline void nn_dropout_f(float *y, const float *x, ptrdiff_t n, uint64_t off,
                                uint32_t k0, uint32_t k1, uint32_t threshold, float scale)
{ NN_PICK(nn_dropout_f, (y, x, n, off, k0, k1, threshold, scale)); }
static inline void nn_dropout_d(double *y, const double *x, ptrdiff_t n, uint64_t off,
                                uint32_t k0, uint32_t k1, uint32_t threshold, double scale)
{ NN_PICK(nn_dropout_d, (y, x, n, off, k0, k1, threshold, scale)); }

#pragma GCC diagnostic pop

#endif /* NN_CORE_LAYERS_H */

/*
 * _simd.h -- the one CPU-feature probe and SIMD switch of the nn_core kernels.
 *
 * The build targets the x86-64 baseline (no -march=native).  Hot loops are compiled
 * again for AVX2+FMA (and the exp-sum for AVX-512F) with __attribute__((target)) and
 * picked at run time from one level:
 *     0  baseline (also every non-x86 build)
 *     1  AVX2 + FMA
 *     2  AVX-512F (and level 1)
 * nn_simd_level() = min(what the CPU supports, the switch).  The switch is one int
 * per process, owned by nn_core._kernels._simd; every kernel module shares it
 * through a capsule (bind_simd in _vmath.pxd, at import), so lowering it reaches
 * every dispatch (tests use this to run the baseline and AVX2 paths).
 */
#ifndef NN_CORE_SIMD_H
#define NN_CORE_SIMD_H

#include <stddef.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define NN_X86_DISPATCH 1
#define NN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define NN_X86_DISPATCH 0
#define NN_TARGET_AVX2
#endif
#if defined(__GNUC__) && defined(__x86_64__)
#define NN_HAVE_AVX512 1
#define NN_TARGET_AVX512 __attribute__((target("avx512f")))
#else
#define NN_HAVE_AVX512 0
#endif
#if defined(__GNUC__)
#define NN_INLINE static inline __attribute__((always_inline))
#else
#define NN_INLINE static inline
#endif
#define NN_RESTRICT __restrict__

#define NN_LEVEL_MAX 2

/* The probe: what this CPU supports (cached; benign race, every thread writes the
 * same value). */
static int nn_cpu_level(void)
{
    static int cached = -1;
    if (cached < 0) {
        int level = 0;
#if NN_X86_DISPATCH
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            level = 1;
#if NN_HAVE_AVX512
            if (__builtin_cpu_supports("avx512f"))
                level = 2;
#endif
        }
#endif
        cached = level;
    }
    return cached;
}

/* The switch (highest level allowed): this module's own copy until nn_simd_bind
 * points it at the process-wide one. */
static int nn_simd_own_switch = NN_LEVEL_MAX;
static int *nn_simd_switch = &nn_simd_own_switch;

#define NN_SIMD_CAPSULE "nn_core._kernels._simd.switch"
static inline void nn_simd_bind(int *shared) { nn_simd_switch = shared; }

static inline int nn_simd_level(void)
{
    int cpu = nn_cpu_level(), cap = *nn_simd_switch;
    return cpu < cap ? cpu : cap;
}

/* Sets the switch (clamped to 0..NN_LEVEL_MAX); returns the level now in use. */
static inline int nn_simd_set_switch(int level)
{
    *nn_simd_switch = level < 0 ? 0 : (level > NN_LEVEL_MAX ? NN_LEVEL_MAX : level);
    return nn_simd_level();
}

/* Call name##_avx2 or name##_base with the parenthesised args. */
#if NN_X86_DISPATCH
#define NN_PICK(name, args) (nn_simd_level() >= 1 ? name##_avx2 args : name##_base args)
#else
#define NN_PICK(name, args) (name##_base args)
#endif

#endif /* NN_CORE_SIMD_H */

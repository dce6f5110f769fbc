"""Owner of the process-wide SIMD switch of the kernels (see ``_simd.h``).

Levels: 0 baseline x86-64 (or a non-x86 build), 1 AVX2+FMA, 2 AVX-512F.  Every
kernel module binds its dispatch to the one switch here at import
(``_vmath.bind_simd``), so the switch reaches all of them; ``_testing`` lowers it.
"""
from cpython.pycapsule cimport PyCapsule_New

cdef extern from "_simd.h" nogil:
    int NN_LEVEL_MAX
    const char* NN_SIMD_CAPSULE
    int nn_cpu_level() noexcept
    int nn_simd_level() noexcept
    void nn_simd_bind(int* shared) noexcept

LEVELS = ("baseline", "avx2+fma", "avx512f")

cdef int _switch = NN_LEVEL_MAX
nn_simd_bind(&_switch)
_capsule = PyCapsule_New(&_switch, NN_SIMD_CAPSULE, NULL)
_bound = []


def register(str module):
    """The switch's capsule, for ``module``'s dispatch (recorded in :func:`bound_modules`)."""
    if module not in _bound:
        _bound.append(module)
    return _capsule


def bound_modules():
    """Names of the kernel modules whose dispatch follows the switch."""
    return tuple(_bound)


def cpu_level():
    """The highest SIMD level this CPU supports (0, 1 or 2; see :data:`LEVELS`)."""
    return nn_cpu_level()


def simd_level():
    """The SIMD level in use: ``min(cpu_level(), switch)``."""
    return nn_simd_level()

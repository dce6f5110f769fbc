"""Test and benchmark hooks of the kernels: Python-callable twins of the ``nogil``
primitives, and the SIMD switch.  Nothing in ``nn_core`` imports this module."""
from _vmath cimport bind_simd, nn_simd_set_switch

bind_simd(__name__)


def set_simd_level(int level):
    """Cap the SIMD level of every kernel module (0 baseline, 1 AVX2+FMA, 2 AVX-512F;
    process-wide); returns the level now in use (capped by the CPU)."""
    return nn_simd_set_switch(level)

"""Running a test at each SIMD level of the kernels (``src_pyx/_simd.h``): 0 baseline,
1 AVX2+FMA, 2 AVX-512F.  A level the CPU lacks skips the test; the best level the
CPU has comes back afterwards."""
import contextlib

import pytest

from nn_core._kernels import _testing

NAMES = ("baseline", "avx2", "avx512")


@contextlib.contextmanager
def at_level(level):
    """Run the block at SIMD ``level`` (skip the test if the CPU lacks it)."""
    got = _testing.set_simd_level(level)
    try:
        if got != level:
            pytest.skip(f"this CPU has no SIMD level {level}")
        yield level
    finally:
        _testing.set_simd_level(2)


def level_fixture(*levels, doc=None):
    """A fixture running its tests at each of ``levels`` in turn."""
    @pytest.fixture(params=levels, ids=[NAMES[v] for v in levels])
    def fixture(request):
        with at_level(request.param):
            yield request.param
    fixture.__doc__ = doc
    return fixture

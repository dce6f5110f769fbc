"""Build script: cythonize ``src_pyx/*.pyx`` into ``nn_core._kernels.*``.

Compiler directives live here and only here.  ``NN_CORE_DEBUG=1`` turns bounds,
wraparound and initialisation checks on (and optimisation off) for debugging a kernel.
No ``-ffast-math``: the kernels rely on IEEE ``-inf`` masking and NaN propagation.
``-fno-trapping-math`` only tells GCC that floating-point operations raise no traps
(nothing here installs FP trap handlers); it keeps IEEE results, infinities and NaNs
exactly, and lets GCC if-convert the selects in the vectorised math so it can vectorise.
``-fno-math-errno``: the kernels never read ``errno``; without it ``sqrt`` stays a
scalar library call (it may set ``errno``) and loops around it do not vectorise.
No ``-march=native``: the vectorised loops (``src_pyx/_vmath.h``, ``_rnn_gates.h``) are
compiled for baseline x86-64 and again for AVX2+FMA / AVX-512F
(``__attribute__((target))``); ``src_pyx/_simd.h`` picks one at run time.
"""
import os
from glob import glob

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("NN_CORE_DEBUG", "0") not in ("", "0")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-trapping-math", "-fno-math-errno"]

extensions = [
    Extension(
        "nn_core._kernels." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=["src_pyx", numpy.get_include()],
        extra_compile_args=CFLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for path in sorted(glob(os.path.join("src_pyx", "*.pyx")))
]

setup(
    ext_modules=cythonize(
        extensions, compiler_directives=DIRECTIVES, include_path=["src_pyx"]
    ),
)
